"""The run layer: which model a name means, how a model is built from a dataset, and the run folder format.

``train_run`` creates a run folder (driving the loop of :mod:`temarec.train`), ``load_run`` and ``evaluate_run``
read one. The CLI, benchmarks, the quickstart and serving go through this module, never through the training
loop itself. A run folder holds::

    config.json         the resolved config (JSON, never pickle); a model's own settings as model.<name>
    run.json            model name, dataset path and manifest, protocol (sources of features/tags), resumptions
    item_ids.json       internal idx -> the data's item id, and the domains (the id maps a served model needs)
    model.safetensors   the selected (best-on-validation) weights
    last.safetensors    weights after the last epoch, written when training ends
    last_state.pt       --resume's state after each finished epoch, in one atomic file: weights, optimizer,
                        counters, the RNG states (dropout, sampled negatives) and the length of metrics.jsonl,
                        so a run killed at any point resumes to the same result as an uninterrupted one
    metrics.jsonl       one line per epoch (loss, validation metrics, seconds)
    metrics.json        protocol, valid and test metrics of the selected checkpoint, timing
    ranks.parquet       each validation/test instance's rank (temarec.significance)
    README.md           the model card: data, protocol, encoders, tag source, config, metrics
    dataset/            the run's own copy of the dataset folder it was trained on (caches left out), hard-linked
                        where the file system allows (no extra space), copied otherwise

A run folder is portable: copy it anywhere and serve, recommend or evaluate from it with the original dataset
folder gone. run.json names ``dataset`` relative to the run; runs written before runs kept their copy name the
dataset folder by absolute path and need it.

Run folders written before model-specific config sections existed (TEMA's settings as flat ``model.*`` keys)
load unchanged: ``read_config`` moves those keys to ``model.tema`` (``temarec.config.upgrade_config``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

from temarec.checkpoint import load_file_tensors, load_state, load_weights, save_weights, set_weights
from temarec.config import RESUMABLE_SETTINGS, Config, parse_overrides, upgrade_config
from temarec.data.dataset import NEGATIVE_PRESETS, Dataset, missing_target_domains
from temarec.evaluation import evaluate, evaluate_with_ranks, format_report, split_batches
from temarec.fileio import atomic_dir, read_json, write_json_atomic, write_parquet_atomic, write_text_atomic
from temarec.models.base import ModelContext, SequentialModel
from temarec.models.registry import model_class, model_names
from temarec.significance import RANKS_FILE
from temarec.train import STATE, Distributed, fit, peak_rss_mb, seed_everything

__all__ = ["model_class", "model_names", "item_counts", "build_model", "protocol_info", "write_run_files",
           "read_config", "train_run", "load_run", "read_run_info", "evaluate_run"]

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
    """What every report names: model, data, negatives, selection rule, training loss, encoders, tag source,
    notes."""
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
        "training": type(model).describe_training(dataset, cfg),
        "encoders": sources["encoders"],
        "tags": sources["tags"],
        "notes": sources.get("notes", ""),
    }


RUN_DATASET = "dataset"  # the run's copy of its dataset folder, relative to the run


def write_run_files(out: Path, dataset: Dataset, cfg: Config, info: dict[str, Any],
                    resumes: list[dict[str, Any]]) -> None:
    """config.json, item_ids.json, run.json and the dataset copy of a run folder."""
    write_json_atomic(out / "config.json", cfg.to_dict())
    write_json_atomic(out / "item_ids.json", {"domains": list(dataset.domains),
                                              "domain_sizes": list(dataset.domain_sizes),
                                              "items": dataset.items["item"].tolist()})
    if not (out / RUN_DATASET).is_dir():  # a resumed run keeps the copy it started with
        snapshot_dataset(dataset.root, out / RUN_DATASET)
    write_json_atomic(out / "run.json", {"model": cfg.model.name, "dataset_dir": RUN_DATASET,
                                         "source_dataset_dir": str(dataset.root.resolve()),
                                         "manifest": dataset.manifest, "protocol": info, "resumes": resumes})


def snapshot_dataset(src: Path, dst: Path) -> None:
    """Every file of the dataset folder ``src`` except caches, hard-linked (or copied) into ``dst``, atomically."""
    with atomic_dir(dst) as tmp:
        for path in sorted(src.rglob("*")):
            if not path.is_file() or ".sqlite" in path.name:  # caches (tags, features) are not needed to score
                continue
            target = tmp / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:  # another file system, or links not allowed
                shutil.copy2(path, target)


def dataset_root(run: Path) -> Path:
    """The dataset folder a run reads: its own copy, or (runs from before copies) the absolute path it names."""
    meta = read_json(run / "run.json", _DAMAGED)
    root = Path(meta["dataset_dir"])
    root = root if root.is_absolute() else run / root
    if not (root / "manifest.json").is_file():
        raise ValueError(f"{run}: its dataset folder {root} is gone; this run predates portable runs (which keep "
                         "their own copy): put the dataset folder back there, or retrain")
    return root


def read_config(run: Path) -> dict[str, Any]:
    """A run folder's config.json as a dict in today's layout (older layouts upgraded)."""
    return upgrade_config(read_json(run / "config.json", _DAMAGED))


_DAMAGED = "the run folder is damaged: train the run again into a new --out"


def resumed_config(run: str | Path, overrides: list[str] | None = None) -> Config | None:
    """``train --resume`` without ``--config``: the run's own config.json (read_config) <- ``--set`` overrides, so
    only the settings a resume may change need giving. None when the folder holds no config.json (training then
    says why it cannot resume)."""
    if not (Path(run) / "config.json").is_file():
        return None
    cfg = Config.from_dict(read_config(Path(run)))
    return cfg.replace(**parse_overrides(overrides)) if overrides else cfg


def check_run_items(run: Path, dataset: Dataset) -> None:
    """The run's item_ids.json against the dataset folder it loads: a run serves or resumes only on the items it
    was trained on (same ids, same order, same domains). Runs older than item_ids.json are not checked."""
    path = run / "item_ids.json"
    if not path.is_file():
        log.debug("%s has no item_ids.json: its items cannot be checked against %s", run, dataset.root)
        return
    saved = read_json(path, _DAMAGED)
    items, now = list(saved.get("items", [])), dataset.items["item"].tolist()
    problem = ""
    if list(saved.get("domains", [])) != list(dataset.domains):
        problem = f"domains {saved.get('domains')} at training, {list(dataset.domains)} now"
    elif len(items) != len(now):
        problem = f"{len(items):,} items at training, {len(now):,} now"
    elif items != now:
        row = next(i for i, (a, b) in enumerate(zip(items, now)) if a != b)
        problem = f"item {row} was {items[row]!r} at training, is {now[row]!r} now"
    if problem:
        raise ValueError(f"{run} was trained on other items than the dataset folder {dataset.root} holds now "
                         f"({problem}); point the run at the dataset it was trained on (run.json: source_dataset_dir), "
                         "or train again on this one")


def train_run(dataset_dir: str | Path, cfg: Config, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg.model.name`` on a dataset folder, select on validation, test once; returns metrics.json."""
    dataset = Dataset.load(dataset_dir)
    out = Path(out_dir)
    _check_device(cfg.train.device)
    _check_validation_domains(dataset)
    dist = Distributed(cfg.train.device)
    made = [folder for folder in out.absolute().parents if not folder.exists()]  # made for this run, deepest first
    fresh = dist.is_main and _prepare_run_dir(out, resume)
    try:
        return _train(dataset, cfg, out, dist, resume)
    except BaseException:
        if fresh and not (out / STATE).is_file():  # nothing to resume from: leave no half-made run behind
            _remove_run_files(out)
            for folder in made:
                try:
                    folder.rmdir()  # only if empty: another run of a grid may have made it its parent too
                except OSError:
                    break
        raise


def _train(dataset: Dataset, cfg: Config, out: Path, dist: Distributed, resume: bool) -> dict[str, Any]:
    if resume:
        check_run_items(out, dataset)
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
    earlier_s = 0.0  # what the processes this run resumes from spent
    best: dict[str, Any] = {"score": -1.0, "epoch": 0, "valid": None}
    if model.trainable:
        best, epoch_times, earlier_s = fit(model, dataset, cfg, out, dist, resume)
    if not dist.is_main:
        dist.close()
        return {}
    if model.trainable:
        if not (out / "model.safetensors").is_file():
            raise ValueError(f"{out}: no epoch gave a finite validation MRR, so no checkpoint was selected (the "
                             "loss diverged? see metrics.jsonl); train again with a lower train.lr")
        load_weights(model, out / "model.safetensors")
        if model.fit_on_validation(validation_batches(dataset, cfg)):
            save_weights(model, out / "model.safetensors")  # the selected checkpoint, with what it fitted
    else:
        save_weights(model, out / "model.safetensors")
    train_s = earlier_s + time.perf_counter() - t0
    timing = {"train_s": round(train_s, 2),
              "epoch_s_median": round(statistics.median(epoch_times), 3) if epoch_times else 0.0,
              "epochs": len(epoch_times), "world_size": dist.world, "threads": torch.get_num_threads()}
    metrics = score_run(model, dataset, cfg, out, info, best["epoch"], timing)
    dist.close()
    return metrics


def score_run(model: SequentialModel, dataset: Dataset, cfg: Config, out: Path, info: dict[str, Any],
              selected_epoch: int, timing: dict[str, Any]) -> dict[str, Any]:
    """Score the selected checkpoint on validation and, once, on test; write ranks.parquet, metrics.json and the
    model card into the run folder ``out``. ``timing`` is completed with this process's peak RSS unless it holds
    one (a refit keeps its training's)."""
    valid, valid_ranks = evaluate_with_ranks(model, dataset, "valid", cfg.eval, cfg.data.max_len)
    test, test_ranks = evaluate_with_ranks(model, dataset, "test", cfg.eval, cfg.data.max_len)
    write_parquet_atomic(out / RANKS_FILE, pd.concat([valid_ranks, test_ranks], ignore_index=True))
    metrics = {"protocol": info, "selected_epoch": selected_epoch, **learned_info(model), "valid": valid,
               "test": test, "timing": {"peak_rss_mb": round(peak_rss_mb(), 1), **timing}}
    write_json_atomic(out / "metrics.json", metrics)
    write_text_atomic(out / "README.md", model_card(cfg, dataset, metrics))
    return metrics


# what `refit` may change: settings of what a model fits on validation after training, not of what it trained
REFIT_SETTINGS = frozenset({"model.tema.fusion", "model.tema.fusion_fit"})


def refit_run(run_dir: str | Path, out_dir: str | Path, overrides: dict[str, str]) -> dict[str, Any]:
    """A finished run, re-fitted on validation under changed ``REFIT_SETTINGS`` (TEMA's fusion: ``fixed`` ->
    ``validated``, or another ``fusion_fit``), written as a new run folder ``out_dir`` without retraining: the
    selected checkpoint's weights, parameters the new settings add at their initial values (validated fusion
    starts at the paper's weights), ``fit_on_validation``, then valid and test scored as after training."""
    run, out = Path(run_dir), Path(out_dir)
    if not (run / "metrics.json").is_file():
        raise ValueError(f"{run} is not a finished run (no metrics.json); refit needs a trained run")
    if out.exists():  # the run itself included
        raise ValueError(f"--out {out} exists; refit writes a new run folder, give another path")
    fixed = sorted(k for k in overrides if k not in REFIT_SETTINGS)
    if fixed:
        raise ValueError(f"refit may change only {', '.join(sorted(REFIT_SETTINGS))} (what a model fits on "
                         f"validation after training), not {', '.join(fixed)}: train a new run for those")
    old = Config.from_dict(read_config(run))
    cfg = old.replace(**overrides)
    if getattr(cfg.model.settings, "fusion", None) == "learned":
        raise ValueError("refit cannot make fusion=learned: those weights are trained with the model; use "
                         "model.tema.fusion=validated")
    dataset = Dataset.load(dataset_root(run))
    check_run_items(run, dataset)
    model = build_model(dataset, cfg)
    tensors = load_file_tensors(run / "model.safetensors")
    fresh = model.state_dict()
    added = [k for k in fresh if k not in tensors]
    tensors = {k: v for k, v in tensors.items() if k in fresh or k.startswith("extra.")}
    tensors.update({k: fresh[k] for k in added})
    set_weights(model, tensors, run / "model.safetensors")
    model.eval()
    meta, metrics_before = read_run_info(run)
    with atomic_dir(out) as tmp:
        for item in run.iterdir():
            if item.name not in {"metrics.json", RANKS_FILE, "model.safetensors", "README.md", "last_state.pt",
                                 "last.safetensors"}:
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        write_json_atomic(tmp / "config.json", cfg.to_dict())
        write_json_atomic(tmp / "run.json", {**meta, "refit": {"from": str(run.resolve()),
                                                               "changed": dict(sorted(overrides.items()))}})
        if not model.fit_on_validation(validation_batches(dataset, cfg)):
            raise ValueError(f"{cfg.model.name} fits nothing on validation with these settings, so a refit would "
                             "copy the run: refit re-fits TEMA's fusion (--set model.tema.fusion=validated)")
        save_weights(model, tmp / "model.safetensors")
        timing = metrics_before.get("timing", {})  # the training's: a refit trains nothing
        info = protocol_info(dataset, cfg, model)  # read from the run's copy of its data: name the data it came from
        info["dataset_dir"] = metrics_before.get("protocol", {}).get("dataset_dir", info["dataset_dir"])
        metrics = score_run(model, dataset, cfg, tmp, info, metrics_before.get("selected_epoch", 0), timing)
    return metrics


def validation_batches(dataset: Dataset, cfg: Config) -> Iterator[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]]:
    """What ``SequentialModel.fit_on_validation`` reads: the validation split's (histories (B, L), target domain,
    targets (B,), the sampled protocol's stored negatives (B, C)), indices local to the domain, on the device."""
    negatives = dataset.negatives("valid", cfg.eval.negatives)
    device = cfg.train.device
    for b, hist, d, tgt in split_batches(dataset, "valid", cfg.eval.batch_size, cfg.data.max_len, device):
        local = torch.from_numpy(negatives[b].astype(np.int64) - dataset.domain_offsets[d])
        yield hist, d, tgt.to(device), local.to(device)


def learned_info(model: SequentialModel) -> dict[str, Any]:
    """{"learned": ...} for a model with learned quantities a report shows (logged too), else {}."""
    learned = model.learned_summary()
    if learned:
        log.info("learned: %s", json.dumps(learned))
    return {"learned": learned} if learned else {}


def model_card(cfg: Config, dataset: Dataset, metrics: dict[str, Any]) -> str:
    """README.md of a run folder: what was trained on what, how it was scored, and how to use it."""
    t = metrics["timing"]
    lines = [f"# {cfg.model.name} on {dataset.manifest.get('name', dataset.root.name)}", "",
             "A temarec run folder: copy it anywhere, it carries its data (`dataset/`).", "",
             "```", format_report(metrics), "```", "",
             f"- selected epoch {metrics['selected_epoch']} of {t['epochs']} (validation MRR, mean over domains); "
             f"median {t['epoch_s_median']:.2f} s per epoch, {t['train_s']:.0f} s in all, peak RSS "
             f"{t['peak_rss_mb']:.0f} MB, {t['threads']} thread(s), world size {t['world_size']}",
             f"- data: {dataset.describe()}",
             "", "## Use it", "", "```bash",
             f"temarec recommend --run RUN --history ID1,ID2 --domain {dataset.domains[1]} -k 10",
             "temarec serve --run RUN --port 8000",
             "temarec evaluate --run RUN --split test",
             "```", "", "## Config (resolved)", "", "```json", json.dumps(cfg.to_dict(), indent=2), "```", ""]
    return "\n".join(lines)


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


def _prepare_run_dir(out: Path, resume: bool) -> bool:
    """Check (and create) the run folder; True when this call starts it from nothing.

    --resume on a folder whose run never finished an epoch (killed, or failed, in epoch 1) starts it over under
    the same settings: such a folder holds config.json but no last_state.pt, and must not block both ways.
    """
    if resume:
        if not (out / "config.json").is_file():
            raise ValueError(f"--resume: {out} is not a run folder (no config.json); train without --resume")
        _remove_temporaries(out)
        return False
    if out.exists() and any(out.iterdir()):
        hint = "--resume it" if (out / "config.json").is_file() else "remove it"
        raise ValueError(f"run folder {out} exists and is not empty; choose another --out or {hint}")
    out.mkdir(parents=True, exist_ok=True)
    return True


RUN_FILES = ("config.json", "run.json", "item_ids.json", "model.safetensors", "last.safetensors", STATE,
             "metrics.jsonl", "metrics.json", RANKS_FILE, "README.md")


def _remove_temporaries(out: Path) -> None:
    """Half-written siblings (``.NAME.xxxx``) that a kill during an atomic write left behind."""
    for path in out.iterdir():
        if path.is_file() and any(path.name.startswith(f".{name}.") for name in RUN_FILES):
            path.unlink()
        elif path.is_dir() and path.name.startswith(f".{RUN_DATASET}."):  # an unfinished dataset copy
            shutil.rmtree(path)


def _remove_run_files(out: Path) -> None:
    """Undo a run that failed before its first epoch finished: the files it wrote, then the folder if empty."""
    if not out.is_dir():
        return
    _remove_temporaries(out)
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / RUN_DATASET, ignore_errors=True)
    if not any(out.iterdir()):
        out.rmdir()


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
                         f"only {', '.join(sorted(RESUMABLE_SETTINGS))}. Resume without --config (the run's own "
                         f"settings are then the base) and --set only those, or train into a new --out")
    done = int(load_state(out / STATE)["epoch"]) if (out / STATE).is_file() else 0
    earlier = read_json(out / "run.json", _DAMAGED).get("resumes", []) if (out / "run.json").is_file() else []
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
    meta = read_json(run / "run.json", _DAMAGED)
    if not isinstance(meta.get("dataset_dir"), str):
        raise ValueError(f"{run / 'run.json'}: names no dataset_dir; {_DAMAGED}")
    dataset = Dataset.load(dataset_root(run))
    check_run_items(run, dataset)
    model = build_model(dataset, cfg)
    load_weights(model, run / "model.safetensors")
    model.eval()
    return model, dataset, cfg


def read_run_info(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run folder's run.json and metrics.json (``{}`` where training has not written metrics.json yet)."""
    run = Path(run_dir)
    metrics = run / "metrics.json"
    return read_json(run / "run.json", _DAMAGED), read_json(metrics, _DAMAGED) if metrics.is_file() else {}


def evaluate_run(run_dir: str | Path, split: str = "test", negatives: str | None = None) -> dict[str, Any]:
    """Re-score a run on ``split``; ``negatives`` names another negatives preset than the run's own."""
    model, dataset, cfg = load_run(run_dir)
    if negatives is not None:
        cfg = cfg.replace(**{"eval.negatives": negatives})
    return {"protocol": protocol_info(dataset, cfg, model), **learned_info(model),
            split: evaluate(model, dataset, split, cfg.eval, cfg.data.max_len)}
