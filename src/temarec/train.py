"""The training loop: batches, early stopping on validation, checkpoints, resume, multi-process (DDP).

:func:`temarec.runs.train_run` builds the model and the run folder (described there) and calls :func:`fit`,
which trains, validates every ``train.eval_every`` epochs and keeps the best checkpoint. Model selection uses validation only; the test split
is scored once, for the selected checkpoint. Multi-process: started with ``torchrun --nproc_per_node=K -m temarec
train ...``; each rank takes an equal share of every global batch (``train.batch_size`` is the global batch),
gradients are averaged by DDP, and rank 0 alone evaluates, logs and writes checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from temarec.checkpoint import load_weights, save_weights
from temarec.config import Config
from temarec.data.batches import pad_histories
from temarec.data.dataset import Dataset
from temarec.evaluation import evaluate, selection_score
from temarec.fileio import atomic_write
from temarec.models.base import SequentialModel
from temarec.tracking import Tracker, open_tracker

log = logging.getLogger(__name__)


def train_sequences(dataset: Dataset, max_len: int) -> torch.Tensor:
    """(S, max_len + 1) left-padded training sequences with at least one next-item target."""
    seqs = [s for s in dataset.train["items"] if len(s) >= 2]
    return pad_histories(seqs, max_len + 1)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Distributed:
    """World info for torchrun; a no-op for a single process."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            torch.distributed.init_process_group(backend=backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: SequentialModel) -> torch.nn.Module:
        if self.world == 1:
            return model
        return torch.nn.parallel.DistributedDataParallel(model)

    def broadcast_flag(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)])
        torch.distributed.broadcast(t, src=0)
        return bool(t.item())

    def mean(self, value: float) -> float:
        """The mean of ``value`` over ranks (every rank gets it), e.g. the epoch loss of the whole global batch."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _loss(model: torch.nn.Module, seqs: torch.Tensor) -> torch.Tensor:
    # DDP only syncs gradients through its own forward(); SequentialModel.forward is training_loss.
    return model(seqs)


def _train_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, seqs: torch.Tensor, cfg: Config,
                 dist: Distributed, epoch: int) -> float:
    model.train()
    g = torch.Generator().manual_seed(cfg.train.seed * 1000 + epoch)
    order = torch.randperm(len(seqs), generator=g)
    losses = []
    batches = range(0, len(order), cfg.train.batch_size)
    for start in tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=not dist.is_main or None):
        rows = order[start:start + cfg.train.batch_size][dist.rank::dist.world]  # this rank's share
        batch = seqs[rows].to(cfg.train.device)
        loss = _loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return dist.mean(float(np.mean(losses)) if losses else float("nan"))  # over ranks: the global batch's loss


def fit(model: SequentialModel, dataset: Dataset, cfg: Config, out: Path, dist: Distributed,
         resume: bool) -> tuple[dict[str, Any], list[float]]:
    seqs = train_sequences(dataset, cfg.data.max_len)
    if len(seqs) == 0:
        raise ValueError(f"{dataset.root}: no training sequence has two or more items")
    wrapped = dist.wrap(model)
    opt_cls = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    best: dict[str, Any] = {"score": -1.0, "epoch": 0, "valid": None}
    start_epoch, bad_epochs, epoch_times = 1, 0, []
    if resume:
        state = torch.load(out / "last_state.pt", weights_only=True)
        load_weights(model, out / "last.safetensors")
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, bad_epochs, epoch_times = state["epoch"] + 1, state["bad_epochs"], list(state["epoch_times"])
        best = {"score": state["best_score"], "epoch": state["best_epoch"], "valid": None}
        log.info("resuming after epoch %d (best validation MRR %.4f at epoch %d)", state["epoch"], best["score"],
                 best["epoch"])
    t_start = time.perf_counter()
    tracker = open_tracker(cfg.train.tracker, out, cfg.to_dict(), cfg.train.tracking_uri) if dist.is_main \
        else Tracker()
    try:
        for epoch in range(start_epoch, cfg.train.epochs + 1):
            t = time.perf_counter()
            loss = _train_epoch(wrapped, optimizer, seqs, cfg, dist, epoch)
            epoch_times.append(time.perf_counter() - t)
            stop = False
            if dist.is_main:
                stop, bad_epochs = _after_epoch(model, dataset, cfg, out, optimizer, epoch, loss, epoch_times,
                                                best, bad_epochs, time.perf_counter() - t_start, tracker)
            if dist.broadcast_flag(stop):
                break
    finally:
        tracker.close()
    return best, epoch_times


def _after_epoch(model: SequentialModel, dataset: Dataset, cfg: Config, out: Path,
                 optimizer: torch.optim.Optimizer, epoch: int, loss: float, epoch_times: list[float],
                 best: dict[str, Any], bad_epochs: int, elapsed: float, tracker: Tracker) -> tuple[bool, int]:
    """Rank 0: validate, keep the best checkpoint, write the resumable state; returns (stop, bad_epochs)."""
    record: dict[str, Any] = {"epoch": epoch, "loss": loss, "epoch_s": round(epoch_times[-1], 3)}
    if epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs:
        valid = evaluate(model, dataset, "valid", cfg.eval, cfg.data.max_len)
        score = selection_score(valid)
        record.update({"valid_mrr": score, "valid": valid})
        if score > best["score"]:
            best.update(score=score, epoch=epoch, valid=valid)
            bad_epochs = 0
            save_weights(model, out / "model.safetensors")
        else:
            bad_epochs += 1
        log.info("epoch %d  loss %.4f  valid MRR %.4f  (best %.4f @ %d)  %.1fs", epoch, loss, score,
                 best["score"], best["epoch"], epoch_times[-1])
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    tracker.log_epoch(record)
    save_weights(model, out / "last.safetensors")
    state = {"optimizer": optimizer.state_dict(), "epoch": epoch, "bad_epochs": bad_epochs,
             "best_score": best["score"], "best_epoch": best["epoch"], "epoch_times": epoch_times}
    atomic_write(out / "last_state.pt", lambda tmp: torch.save(state, tmp))
    over_budget = cfg.train.max_train_s > 0 and elapsed >= cfg.train.max_train_s
    if over_budget:
        log.info("stopping: train.max_train_s = %.0f s reached", cfg.train.max_train_s)
    if bad_epochs >= cfg.train.patience:
        log.info("early stopping: no validation improvement for %d epochs", bad_epochs)
    return bad_epochs >= cfg.train.patience or over_budget, bad_epochs
