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
import math
import os
import random
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.nn  # noqa: F401  (imported before any process group exists: see Distributed)
from tqdm.auto import tqdm

from temarec.checkpoint import load_state, load_weights, save_state, save_weights, set_weights, weight_tensors
from temarec.config import Config
from temarec.data.batches import pad_histories
from temarec.data.dataset import Dataset
from temarec.evaluation import evaluate, selection_score
from temarec.models.base import SequentialModel
from temarec.tracking import Tracker, open_tracker

log = logging.getLogger(__name__)

STATE = "last_state.pt"  # the resumable state of the last finished epoch (temarec.checkpoint.save_state)
LOG = "metrics.jsonl"  # one line per finished epoch


def train_sequences(dataset: Dataset, max_len: int) -> torch.Tensor:
    """(S, max_len + 1) left-padded training sequences with at least one next-item target."""
    seqs = [s for s in dataset.train["items"] if len(s) >= 2]
    return pad_histories(seqs, max_len + 1)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def rng_states() -> dict[str, Any]:
    """Every global random state training draws from (dropout, sampled negatives, ...), as tensors and plain
    values (``torch.load(weights_only=True)`` reads them back): a resumed run continues the same streams."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": random.getstate()}


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Distributed:
    """World info for torchrun; a no-op for a single process.

    torch.distributed.nn is imported with this module, before init_process_group: on its first import it binds
    ``group.WORLD`` into its functions' defaults (DDP and a model's first forward import it), and bound to a live
    group that pins the group past destroy_process_group; its gloo worker threads then outlive the run, and one
    still releasing its last collective's tensors as the interpreter shuts down aborts the process (SIGABRT,
    "terminate called without an active exception"). Imported first, the defaults hold None.
    """

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
         resume: bool) -> tuple[dict[str, Any], list[float], float]:
    """Train ``model`` epoch by epoch (resuming from the run folder's state when ``resume``); returns the best
    epoch's record, every epoch's training seconds, and the wall-clock seconds earlier processes spent on it."""
    seqs = train_sequences(dataset, cfg.data.max_len)
    if len(seqs) == 0:
        raise ValueError(f"{dataset.root}: no training sequence has two or more items")
    wrapped = dist.wrap(model)
    opt_cls = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    best: dict[str, Any] = {"score": -1.0, "epoch": 0, "valid": None}
    start_epoch, bad_epochs, epoch_times, earlier_s = 1, 0, [], 0.0
    if resume and (out / STATE).is_file():
        state = load_state(out / STATE)
        if "model" in state:
            set_weights(model, state["model"], out / STATE)
        else:  # written by temarec 0.1.0: weights in last.safetensors, no RNG states, no log length
            log.warning("%s was written by temarec 0.1.0: resuming without its RNG states (not bit-identical to "
                        "an uninterrupted run)", out / STATE)
            load_weights(model, out / "last.safetensors")
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, bad_epochs, epoch_times = state["epoch"] + 1, state["bad_epochs"], list(state["epoch_times"])
        earlier_s = float(state.get("elapsed_s", sum(epoch_times)))  # states before elapsed_s: epochs only
        best = {"score": state["best_score"], "epoch": state["best_epoch"], "valid": None}
        if "log_bytes" in state:
            _truncate_log(out / LOG, state["log_bytes"])
        if "rng" in state:
            set_rng_states(state["rng"])
        log.info("resuming after epoch %d (best validation MRR %.4f at epoch %d)", state["epoch"], best["score"],
                 best["epoch"])
        if bad_epochs >= cfg.train.patience:  # it had stopped early (a larger train.patience trains on)
            log.info("the run had stopped early (no validation improvement for %d epochs): no more epochs",
                     bad_epochs)
            start_epoch = cfg.train.epochs + 1
    elif resume:
        log.info("%s holds no finished epoch: training from epoch 1", out)
        (out / LOG).unlink(missing_ok=True)
    t_start = time.perf_counter()
    tracker = open_tracker(cfg.train.tracker, out, cfg.to_dict(), cfg.train.tracking_uri) if dist.is_main \
        else Tracker()
    try:
        for epoch in range(start_epoch, cfg.train.epochs + 1):
            t, cpu = time.perf_counter(), time.process_time()
            loss = _train_epoch(wrapped, optimizer, seqs, cfg, dist, epoch)
            epoch_times.append(time.perf_counter() - t)
            cpu = time.process_time() - cpu  # this process's CPU-seconds, all threads: fairer than wall under load
            stop = False
            if dist.is_main:
                stop, bad_epochs = _after_epoch(model, dataset, cfg, out, optimizer, epoch, loss, epoch_times, cpu,
                                                best, bad_epochs, time.perf_counter() - t_start, earlier_s, tracker)
            if dist.broadcast_flag(stop):
                break
    finally:
        tracker.close()
    if dist.is_main:
        save_weights(model, out / "last.safetensors")
    return best, epoch_times, earlier_s


def _truncate_log(path: Path, size: int) -> None:
    """Drop what was appended to metrics.jsonl after the state a run resumes from (a kill between the epoch's
    log line and its state would otherwise list that epoch twice)."""
    if path.is_file() and path.stat().st_size > size:
        with open(path, "r+b") as fh:
            fh.truncate(size)


def _after_epoch(model: SequentialModel, dataset: Dataset, cfg: Config, out: Path,
                 optimizer: torch.optim.Optimizer, epoch: int, loss: float, epoch_times: list[float],
                 epoch_cpu_s: float, best: dict[str, Any], bad_epochs: int, elapsed: float, earlier_s: float,
                 tracker: Tracker) -> tuple[bool, int]:
    """Rank 0: validate, keep the best checkpoint, write the resumable state; returns (stop, bad_epochs).
    ``elapsed``: this process's seconds (what train.max_train_s bounds); ``earlier_s``: earlier processes'."""
    record: dict[str, Any] = {"epoch": epoch, "loss": loss, "epoch_s": round(epoch_times[-1], 3),
                              "epoch_cpu_s": round(epoch_cpu_s, 3)}
    learned = model.learned_summary()
    if learned:
        record["learned"] = learned
    if epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs:
        valid = evaluate(model, dataset, "valid", cfg.eval, cfg.data.max_len)
        score = selection_score(valid)
        record.update({"valid_mrr": score, "valid": valid})
        if not math.isfinite(score):
            log.warning("epoch %d: validation MRR is %s (did the loss diverge? loss %s); no checkpoint from it",
                        epoch, score, loss)
        if score > best["score"]:
            best.update(score=score, epoch=epoch, valid=valid)
            bad_epochs = 0
            save_weights(model, out / "model.safetensors")
        else:
            bad_epochs += 1
        log.info("epoch %d  loss %.4f  valid MRR %.4f  (best %.4f @ %d)  %.1fs", epoch, loss, score,
                 best["score"], best["epoch"], epoch_times[-1])
    with open(out / LOG, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    tracker.log_epoch(record)
    # one atomic file is the epoch's commit point: weights, optimizer, counters, RNG streams and how long the log
    # was, together (separate weight and state files could be caught half-updated by a kill between the two)
    state = {"model": weight_tensors(model), "optimizer": optimizer.state_dict(), "epoch": epoch,
             "bad_epochs": bad_epochs, "best_score": best["score"], "best_epoch": best["epoch"],
             "epoch_times": epoch_times, "elapsed_s": earlier_s + elapsed, "log_bytes": (out / LOG).stat().st_size,
             "rng": rng_states()}
    save_state(out / STATE, state)
    over_budget = cfg.train.max_train_s > 0 and elapsed >= cfg.train.max_train_s
    if over_budget:
        log.info("stopping: train.max_train_s = %.0f s reached", cfg.train.max_train_s)
    if bad_epochs >= cfg.train.patience:
        log.info("early stopping: no validation improvement for %d epochs", bad_epochs)
    return bad_epochs >= cfg.train.patience or over_budget, bad_epochs
