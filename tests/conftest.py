"""Shared fixtures: a small generated dataset folder (session-wide) and the location of the real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def one_thread():
    """Tiny tensors on a shared machine: one intra-op thread is fastest (two can be 10x slower under load)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def overfit():
    """overfit(model, lr, steps) -> the training losses of ``steps`` Adam steps on three fixed sequences
    (Food ids 1..7, Kitchen 8..12, left-padded, one all-padding row, which must not break the loss)."""
    import torch

    seqs = torch.tensor([[0, 0, 1, 8, 2, 9, 3],
                         [4, 12, 5, 11, 6, 10, 7],
                         [0, 0, 0, 0, 0, 0, 0]])

    def run(model, lr: float, steps: int) -> list[float]:
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        losses = []
        for _ in range(steps):
            opt.zero_grad()
            value = model.training_loss(seqs)
            value.backward()
            opt.step()
            losses.append(float(value.detach()))
        return losses

    run.seqs = seqs  # type: ignore[attr-defined]  # for other tests over the same sequences
    return run


@pytest.fixture(scope="session")
def generated_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated two-domain world (300 users, 240 items), written once per test session."""
    from temarec.data.synthetic import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("world") / "data", n_users=300, items_per_genre=15)


@pytest.fixture
def tiny():
    """tiny(**overrides) -> --set arguments that make any model train in seconds."""

    def overrides(**extra: str) -> list[str]:
        base = {"train.epochs": "2", "model.dim": "16", "data.max_len": "10", "train.batch_size": "64",
                "eval.batch_size": "256"}
        base.update(extra)
        return [f"{k}={v}" for k, v in base.items()]

    return overrides
