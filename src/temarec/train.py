"""The training loop: batches, early stopping on validation, checkpoints, resume, multi-process (DDP).

A run folder holds::

    config.json         the resolved config (JSON, never pickle)
    run.json            model name, dataset path and manifest, domains, best epoch, sources of features/tags
    item_ids.json       internal idx -> the data's item id, and the domains (the id maps a served model needs)
    model.safetensors   the selected (best-on-validation) weights
    last.safetensors    weights after the last finished epoch, + last_state.pt (optimizer, counters) for --resume
    metrics.jsonl       one line per epoch (loss, validation metrics, seconds)
    metrics.json        protocol, valid and test metrics of the selected checkpoint, timing

Model selection uses validation only; the test split is scored once, for the selected checkpoint.
Multi-process: started with ``torchrun --nproc_per_node=K -m temarec train ...``; each rank takes an equal
share of every global batch (``train.batch_size`` is the global batch), gradients are averaged by DDP,
and rank 0 alone evaluates, logs and writes checkpoints.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from temarec.config import RESUMABLE_SETTINGS, Config
from temarec.data.dataset import NEGATIVE_PRESETS, Dataset
from temarec.evaluation import evaluate, evaluate_with_ranks, selection_score
from temarec.fileio import atomic_write, write_json_atomic, write_parquet_atomic
from temarec.significance import RANKS_FILE
from temarec.tracking import Tracker, open_tracker
from temarec.models.base import ModelContext, SequentialModel, pad_histories

log = logging.getLogger(__name__)

MODELS = {
    "random": "temarec.models.pop:RandomModel",
    "pop": "temarec.models.pop:PopModel",
    "gru4rec": "temarec.models.gru4rec:GRU4Rec",
    "sasrec": "temarec.models.sasrec:SASRec",
    "tema": "temarec.models.tema:TEMA",
    "c2dsr": "temarec.models.c2dsr:C2DSR",
    "abxi": "temarec.models.abxi:ABXI",
}


def model_class(name: str) -> type[SequentialModel]:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    module, cls = MODELS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def item_counts(dataset: Dataset) -> np.ndarray:
    """Training interactions per internal idx (every item of every training sequence)."""
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in dataset.train["items"]] or [np.empty(0, np.int64)])
    return np.bincount(flat, minlength=dataset.n_items).astype(np.float64)


def build_model(dataset: Dataset, cfg: Config) -> SequentialModel:
    cls = model_class(cfg.model.name)
    ctx = ModelContext(domain_sizes=dataset.domain_sizes, domains=dataset.domains, max_len=cfg.data.max_len,
                       item_counts=item_counts(dataset))
    ctx.extras.update(cls.context_extras(dataset, cfg))
    model = cls(cfg.model, ctx)
    model.fit_statistics(ctx.item_counts)
    return model


def train_sequences(dataset: Dataset, max_len: int) -> torch.Tensor:
    """(S, max_len + 1) left-padded training sequences with at least one next-item target."""
    seqs = [s for s in dataset.train["items"] if len(s) >= 2]
    return pad_histories(seqs, max_len + 1)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Distributed:
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
                 dist: _Distributed, epoch: int) -> float:
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


def _state_tensors(model: SequentialModel) -> dict[str, torch.Tensor]:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in model.extra_state().items()})
    return tensors


def _save_atomic_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def load_weights(model: SequentialModel, path: Path) -> None:
    tensors = load_file(str(path))
    extra = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("extra.")})
    model.load_extra_state(extra)


def protocol_info(dataset: Dataset, cfg: Config, model: SequentialModel) -> dict[str, Any]:
    sources = type(model).describe_sources(dataset, cfg)
    return {
        "model": cfg.model.name,
        "data": dataset.describe(),
        "dataset_dir": str(dataset.root.resolve()),
        "negatives": dataset.manifest["negatives"]["per_instance"],
        "negatives_preset": cfg.eval.negatives,
        "negatives_rule": NEGATIVE_PRESETS[cfg.eval.negatives],
        "negative_seed": dataset.manifest["negatives"]["seed"],
        "selection": "best validation sampled MRR (mean over domains)",
        "encoders": sources["encoders"],
        "tags": sources["tags"],
        "notes": sources.get("notes", ""),
    }


def train_run(dataset_dir: str | Path, cfg: Config, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg.model.name`` on a dataset folder, select on validation, test once; returns metrics.json."""
    dataset = Dataset.load(dataset_dir)
    out = Path(out_dir)
    dist = _Distributed(cfg.train.device)
    if dist.is_main:
        _prepare_run_dir(out, resume)
    resumes = _resume_record(out, cfg) if resume else []
    _seed_everything(cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    model = build_model(dataset, cfg).to(cfg.train.device)
    info = protocol_info(dataset, cfg, model)
    if dist.is_main:
        write_json_atomic(out / "config.json", cfg.to_dict())
        write_json_atomic(out / "item_ids.json", {"domains": list(dataset.domains),
                                                  "domain_sizes": list(dataset.domain_sizes),
                                                  "items": dataset.items["item"].tolist()})
        write_json_atomic(out / "run.json", {"model": cfg.model.name, "dataset_dir": str(dataset.root.resolve()),
                                             "manifest": dataset.manifest, "protocol": info, "resumes": resumes})
    t0 = time.perf_counter()
    epoch_times: list[float] = []
    best: dict[str, Any] = {"score": -1.0, "epoch": 0, "valid": None}
    if model.trainable:
        best, epoch_times = _fit(model, dataset, cfg, out, dist, resume)
    if not dist.is_main:
        dist.close()
        return {}
    if model.trainable:
        load_weights(model, out / "model.safetensors")
    else:
        _save_atomic_tensors(_state_tensors(model), out / "model.safetensors")
    train_s = time.perf_counter() - t0
    valid, valid_ranks = evaluate_with_ranks(model, dataset, "valid", cfg.eval, cfg.data.max_len)
    # test: once, for the selected checkpoint
    test, test_ranks = evaluate_with_ranks(model, dataset, "test", cfg.eval, cfg.data.max_len)
    write_parquet_atomic(out / RANKS_FILE, pd.concat([valid_ranks, test_ranks], ignore_index=True))
    metrics = {
        "protocol": info,
        "selected_epoch": best["epoch"],
        "valid": valid,
        "test": test,
        "timing": {"train_s": round(train_s, 2),
                   "epoch_s_median": round(statistics.median(epoch_times), 3) if epoch_times else 0.0,
                   "epochs": len(epoch_times), "peak_rss_mb": round(_peak_rss_mb(), 1),
                   "world_size": dist.world, "threads": torch.get_num_threads()},
    }
    write_json_atomic(out / "metrics.json", metrics)
    dist.close()
    return metrics


def _prepare_run_dir(out: Path, resume: bool) -> None:
    if resume:
        if not (out / "last_state.pt").is_file():
            raise ValueError(f"--resume: {out} holds no last_state.pt to resume from; train without --resume")
        return
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"run folder {out} exists and is not empty; choose another --out or --resume it")
    out.mkdir(parents=True, exist_ok=True)


def _resume_record(out: Path, cfg: Config) -> list[dict[str, Any]]:
    """--resume: run.json's list of resumptions, this one appended with the settings it changes.

    Only RESUMABLE_SETTINGS (how long to train, threads, device, what evaluation reports) may change: anything
    else would make the run's config.json describe a model it did not train.
    """
    if not (out / "config.json").is_file():
        raise ValueError(f"--resume: {out} holds no config.json, so its settings are unknown; train into a new --out")
    changed = cfg.changed_from(json.loads((out / "config.json").read_text()))
    fixed = {k: v for k, v in changed.items() if k not in RESUMABLE_SETTINGS}
    if fixed:
        listing = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in fixed.items())
        raise ValueError(f"--resume: {out} was trained with other settings ({listing}); a resumed run may change "
                         f"only {', '.join(sorted(RESUMABLE_SETTINGS))}. Resume with the run's own settings "
                         f"(--config {out / 'config.json'}, plus --set for those) or train into a new --out")
    done = (out / "metrics.jsonl").read_text().count("\n") if (out / "metrics.jsonl").is_file() else 0
    earlier = json.loads((out / "run.json").read_text()).get("resumes", []) if (out / "run.json").is_file() else []
    if changed:
        log.info("resuming with changed settings: %s",
                 ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
    return earlier + [{"after_epoch": done, "changed": {k: list(v) for k, v in changed.items()}}]


def _fit(model: SequentialModel, dataset: Dataset, cfg: Config, out: Path, dist: _Distributed,
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
            _save_atomic_tensors(_state_tensors(model), out / "model.safetensors")
        else:
            bad_epochs += 1
        log.info("epoch %d  loss %.4f  valid MRR %.4f  (best %.4f @ %d)  %.1fs", epoch, loss, score,
                 best["score"], best["epoch"], epoch_times[-1])
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    tracker.log_epoch(record)
    _save_atomic_tensors(_state_tensors(model), out / "last.safetensors")
    state = {"optimizer": optimizer.state_dict(), "epoch": epoch, "bad_epochs": bad_epochs,
             "best_score": best["score"], "best_epoch": best["epoch"], "epoch_times": epoch_times}
    atomic_write(out / "last_state.pt", lambda tmp: torch.save(state, tmp))
    over_budget = cfg.train.max_train_s > 0 and elapsed >= cfg.train.max_train_s
    if over_budget:
        log.info("stopping: train.max_train_s = %.0f s reached", cfg.train.max_train_s)
    if bad_epochs >= cfg.train.patience:
        log.info("early stopping: no validation improvement for %d epochs", bad_epochs)
    return bad_epochs >= cfg.train.patience or over_budget, bad_epochs


def load_run(run_dir: str | Path) -> tuple[SequentialModel, Dataset, Config]:
    """Rebuild a trained model from its run folder (weights via safetensors; no pickle)."""
    run = Path(run_dir)
    for name in ("config.json", "run.json", "model.safetensors"):
        if not (run / name).is_file():
            raise ValueError(f"{run} is not a finished temarec run folder (missing {name}); run `temarec train`")
    cfg = Config.from_dict(json.loads((run / "config.json").read_text()))
    meta = json.loads((run / "run.json").read_text())
    dataset = Dataset.load(meta["dataset_dir"])
    model = build_model(dataset, cfg)
    load_weights(model, run / "model.safetensors")
    model.eval()
    return model, dataset, cfg


def evaluate_run(run_dir: str | Path, split: str = "test", negatives: str | None = None) -> dict[str, Any]:
    """Re-score a run on ``split``; ``negatives`` names another negatives preset than the run's own."""
    model, dataset, cfg = load_run(run_dir)
    if negatives is not None:
        cfg = cfg.replace(**{"eval.negatives": negatives})
    return {"protocol": protocol_info(dataset, cfg, model),
            split: evaluate(model, dataset, split, cfg.eval, cfg.data.max_len)}
