"""What the model tests share: a tiny two-domain context and history, and the checks every model is held to on
them (shapes, left padding, causality, empty histories, a train -> resume -> reload round trip). Each test file
imports this module by name; what is particular to one model stays in its own file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from temarec.config import load_config
from temarec.data.batches import pad_histories
from temarec.models.base import ModelContext
from temarec.runs import load_run, train_run

# training counts (skewed, one item never seen): read only by popularity-drawn negatives (model.negative_power)
CTX = ModelContext(domain_sizes=(7, 5), domains=("Food", "Kitchen"), max_len=12,
                   item_counts=np.array([9.0, 1, 0, 4, 2, 2, 1, 6, 0, 3, 1, 1]))
HISTORY = torch.tensor([[0, 0, 0, 3, 9, 1],  # ids 1..7 are Food, 8..12 Kitchen; 0 = padding
                        [2, 8, 12, 4, 4, 10],
                        [0, 0, 0, 0, 0, 11]])  # no Food item at all
DOMAIN_SIZES = [(0, 7), (1, 5)]  # (domain, items of that domain in CTX), for parametrize("domain, n", ...)


def assert_scores_cover_the_domain(model: Any, domain: int, n: int, history: torch.Tensor = HISTORY) -> torch.Tensor:
    """One finite score per history and item of the domain; returns the (B, n) scores for further checks."""
    with torch.no_grad():
        scores = model.score_domain(history, domain)
    assert scores.shape == (len(history), n) and torch.isfinite(scores).all()
    return scores


def assert_left_padding_leaves_scores_unchanged(model: Any, history: torch.Tensor = HISTORY, extra: int = 4,
                                                domains: tuple[int, ...] = (0, 1)) -> None:
    """Padding is no information: ``extra`` more padding columns on the left give the same scores."""
    padded = torch.cat([torch.zeros(len(history), extra, dtype=torch.long), history], dim=1)
    with torch.no_grad():
        for domain in domains:
            torch.testing.assert_close(model.score_domain(padded, domain), model.score_domain(history, domain))


def assert_a_later_item_changes_only_the_last_state(states: Callable[[torch.Tensor], torch.Tensor], dim: int,
                                                    history: torch.Tensor = HISTORY, item: int = 5) -> None:
    """Causality: another item in the last position leaves the states at every earlier position as they were
    (``dim`` is the position axis of what ``states`` returns), and does change the last one."""
    changed = history.clone()
    changed[:, -1] = item
    with torch.no_grad():
        h, h_changed = states(history), states(changed)
    last = h.size(dim) - 1
    torch.testing.assert_close(h.narrow(dim, 0, last), h_changed.narrow(dim, 0, last))
    assert not torch.allclose(h.select(dim, last), h_changed.select(dim, last))


def assert_empty_histories_give_finite_scores(model: Any, domain: int = 1, lengths: tuple[int, ...] = (1, 6),
                                              rows: int = 2) -> torch.Tensor:
    """Histories of padding only (a user with no item yet) still get finite scores; returns the last scores."""
    with torch.no_grad():
        for length in lengths:
            scores = model.score_domain(torch.zeros(rows, length, dtype=torch.long), domain)
            assert torch.isfinite(scores).all()
    return scores


def assert_train_resume_reload(dataset: Path, out: Path, tiny: Callable[..., list[str]], name: str, settings: Any,
                               domain: int) -> None:
    """Train model ``name`` one epoch, resume to two, reload: its settings section model.<name> (``settings``, whose
    ``dim`` is set on the command line) travels with the run, two loads score alike, the test MRR is a real one."""
    cfg = load_config(None, tiny(**{"model.name": name, f"model.{name}.dim": str(settings.dim),
                                    "train.epochs": "1"}))
    train_run(dataset, cfg, out)
    train_run(dataset, cfg.replace(**{"train.epochs": "2"}), out, resume=True)
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    model, ds, cfg = load_run(out)
    assert model.settings == settings
    hist = pad_histories(ds.test["history"].tolist()[:8], cfg.data.max_len)
    with torch.no_grad():
        assert torch.equal(model.score_domain(hist, domain), load_run(out)[0].score_domain(hist, domain))
    assert 0.0 < metrics["test"]["sampled"][ds.domains[domain]]["mrr"] <= 1.0


def assert_losses_halve(losses: list[float]) -> None:
    """It learns: finite losses, the last five steps' under half the first five's (from tests/conftest.py's
    ``overfit``)."""
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])


def assert_ranks_each_next_item_first(model: Any, seq: torch.Tensor, start: int = 1) -> None:
    """After overfitting ``seq`` (real ids, oldest first), every prefix from ``start`` items on ranks the item
    that follows it first in that item's domain."""
    with torch.no_grad():
        for t in range(start, len(seq)):
            target = int(seq[t])
            domain = int(target > CTX.domain_sizes[0])
            scores = model.score_domain(seq[None, :t], domain)[0]
            assert int(scores.argmax()) == target - CTX.domain_slice(domain).start
