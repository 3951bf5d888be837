"""The run layer: which model a name means, how a model is built from a dataset, and the run folder format.

``train_run`` creates a run folder (driving the loop of :mod:`temarec.train`), ``load_run`` and ``evaluate_run``
read one. The CLI, benchmarks, the quickstart and serving go through this module, never through the training
loop itself. A run folder holds::

    config.json         the resolved config (JSON, never pickle); a model's own settings as model.<name>
    run.json            model name, dataset path and manifest, protocol (sources of features/tags), resumptions
    item_ids.json       internal idx -> the data's item id, and the domains (the id maps a served model needs)
    model.safetensors   the selected (best-on-validation) weights
    last.safetensors    weights after the last finished epoch, + last_state.pt (optimizer, counters) for --resume
    metrics.jsonl       one line per epoch (loss, validation metrics, seconds)
    metrics.json        protocol, valid and test metrics of the selected checkpoint, timing

Run folders written before model-specific config sections existed (TEMA's settings as flat ``model.*`` keys)
load unchanged: ``read_config`` moves those keys to ``model.tema`` (``temarec.config.upgrade_config``).
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from temarec.checkpoint import load_weights, save_weights
from temarec.config import RESUMABLE_SETTINGS, Config, upgrade_config
from temarec.data.dataset import NEGATIVE_PRESETS, Dataset, missing_target_domains
from temarec.evaluation import evaluate, evaluate_with_ranks
from temarec.fileio import write_json_atomic, write_parquet_atomic
from temarec.models.base import ModelContext, SequentialModel
from temarec.models.registry import model_class, model_names
from temarec.significance import RANKS_FILE
from temarec.train import Distributed, fit, peak_rss_mb, seed_everything

__all__ = ["model_class", "model_names", "item_counts", "build_model", "protocol_info", "write_run_files",
           "read_config", "train_run", "load_run", "evaluate_run"]

log = logging.getLogger(__name__)


def item_counts(dataset: Dataset) -> np.ndarray:
    """Training interactions per internal idx (every item of every training sequence)."""
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in dataset.train["items"]] or [np.empty(0, np.int64)])
    return np.bincount(flat, minlength=dataset.n_items).astype(np.float64)


def build_model(dataset: Dataset, cfg: Config) -> SequentialModel:
    """The model ``cfg.model.name`` for ``dataset``: sizes, training counts and its content inputs."""
    cls = model_class(cfg.model.name)
    ctx = ModelContext(domain_sizes=dataset.domain_sizes, domains=dataset.domains, max_len=cfg.data.max_len,
                       item_counts=item_counts(dataset))
    ctx.extras.update(cls.context_extras(dataset, cfg))
    model = cls(cfg.model, ctx)
    model.fit_statistics(ctx.item_counts)
    return model


def protocol_info(dataset: Dataset, cfg: Config, model: SequentialModel) -> dict[str, Any]:
    """What every report names: model, data, negatives, selection rule, encoders, tag source, notes."""
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


def write_run_files(out: Path, dataset: Dataset, cfg: Config, info: dict[str, Any],
                    resumes: list[dict[str, Any]]) -> None:
    """config.json, item_ids.json and run.json of a run folder."""
    write_json_atomic(out / "config.json", cfg.to_dict())
    write_json_atomic(out / "item_ids.json", {"domains": list(dataset.domains),
                                              "domain_sizes": list(dataset.domain_sizes),
                                              "items": dataset.items["item"].tolist()})
    write_json_atomic(out / "run.json", {"model": cfg.model.name, "dataset_dir": str(dataset.root.resolve()),
                                         "manifest": dataset.manifest, "protocol": info, "resumes": resumes})


def read_config(run: Path) -> dict[str, Any]:
    """A run folder's config.json as a dict in today's layout (older layouts upgraded)."""
    return upgrade_config(json.loads((run / "config.json").read_text()))


def train_run(dataset_dir: str | Path, cfg: Config, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg.model.name`` on a dataset folder, select on validation, test once; returns metrics.json."""
    dataset = Dataset.load(dataset_dir)
    out = Path(out_dir)
    _check_device(cfg.train.device)
    _check_validation_domains(dataset)
    dist = Distributed(cfg.train.device)
    if dist.is_main:
        _prepare_run_dir(out, resume)
    resumes = _resume_record(out, cfg) if resume else []
    seed_everything(cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    model = build_model(dataset, cfg).to(cfg.train.device)
    info = protocol_info(dataset, cfg, model)
    if dist.is_main:
        write_run_files(out, dataset, cfg, info, resumes)
    t0 = time.perf_counter()
    epoch_times: list[float] = []
    best: dict[str, Any] = {"score": -1.0, "epoch": 0, "valid": None}
    if model.trainable:
        best, epoch_times = fit(model, dataset, cfg, out, dist, resume)
    if not dist.is_main:
        dist.close()
        return {}
    if model.trainable:
        load_weights(model, out / "model.safetensors")
    else:
        save_weights(model, out / "model.safetensors")
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
                   "epochs": len(epoch_times), "peak_rss_mb": round(peak_rss_mb(), 1),
                   "world_size": dist.world, "threads": torch.get_num_threads()},
    }
    write_json_atomic(out / "metrics.json", metrics)
    dist.close()
    return metrics


def _check_validation_domains(dataset: Dataset) -> None:
    """Model selection averages the domains' validation MRR: a domain without validation targets makes it NaN."""
    missing = missing_target_domains(dataset.valid, dataset.domains)
    if missing:
        raise ValueError(f"{dataset.root}: the valid split has no {missing[0]!r} target, so validation MRR (model "
                         f"selection) is undefined; {missing[0]!r} needs users whose second-to-last interaction is "
                         "in it: add data, or prepare with a looser filter (--set data.KEY=VALUE)")


def _check_device(device: str) -> None:
    """A device this torch build can use, or a ValueError that says so (torch's own error is a traceback)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device={device}, but this torch build sees no CUDA device "
                         f"(torch {torch.__version__}); use --set train.device=cpu")
    if device.startswith("cuda:") and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise ValueError(f"train.device={device}, but only {torch.cuda.device_count()} CUDA device(s) exist")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("train.device=mps, but MPS is not available here; use --set train.device=cpu")


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
    changed = cfg.changed_from(read_config(out))
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


def load_run(run_dir: str | Path) -> tuple[SequentialModel, Dataset, Config]:
    """Rebuild a trained model from its run folder (weights via safetensors; no pickle)."""
    run = Path(run_dir)
    for name in ("config.json", "run.json", "model.safetensors"):
        if not (run / name).is_file():
            raise ValueError(f"{run} is not a finished temarec run folder (missing {name}); run `temarec train`")
    cfg = Config.from_dict(read_config(run))
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
