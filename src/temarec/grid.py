"""``temarec bench``: a grid of (variant, seed) training runs, their mean ± std, the paper-style tables and plots.

A bench folder holds::

    bench.json                 dataset, the variants (name + config overrides) in table order, the seeds
    runs/{variant}/seed{s}/    one ``temarec train`` run folder per variant and seed
    results.json               {"protocol": {variant: ...}, "results": {variant: {"seeds", "mean", "std",
                               "timing"}}}; mean/std are {split: {protocol: {domain: {metric: value}}}}
    results.md                 Tables II/III layout: rows = variants; MRR, NDCG@5, NDCG@10, HR@10 per domain, in %,
                               mean ± std over seeds; one table per protocol (sampled, full)
    metrics.png                test MRR per variant and domain, std error bars (one panel per protocol)
    curves.png                 validation MRR and training loss per epoch, one line per run

A run whose ``metrics.json`` exists is skipped, so an interrupted bench resumes where it stopped (a run with a
``last_state.pt`` continues from its last epoch). std is the sample standard deviation (ddof = 1) over seeds;
with one seed it is undefined (null in JSON, left out of the tables). Peak RSS is the process's peak so far
(``ru_maxrss``): with ``jobs`` > 1 (``temarec bench --jobs``) every run has a process of its own, and so its own
peak; one at a time, later runs of one process report the largest so far.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import shutil
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from temarec.config import RUNTIME_SETTINGS, Config, flatten, model_train_defaults, read_yaml
from temarec.data.dataset import Dataset
from temarec.evaluation import PROTOCOLS
from temarec.fileio import atomic_write, write_text_atomic
from temarec.significance import (SLICES, against_reference, format_p, read_ranks, significance_report,
                                  slices_report, verdict)

log = logging.getLogger(__name__)

TABLE_METRICS = ("mrr", "ndcg@5", "ndcg@10", "hr@10")  # the paper's Tables II/III columns, and HR@10 (issue 13)
AGG_METRICS = ("mrr", "ndcg@5", "ndcg@10", "hr@1", "hr@5", "hr@10")
SPLITS = ("valid", "test")

Variant = tuple[str, dict[str, str]]


def seed_list(spec: str | int) -> list[int]:
    """``3`` -> [0, 1, 2] (the first N seeds); ``"0,5,7"`` -> [0, 5, 7]."""
    text = str(spec).strip()
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise ValueError(f"--seeds expects a count (3 = seeds 0,1,2) or a comma list (0,5,7), got {spec!r}") from None
    if not seeds:
        raise ValueError(f"--seeds {spec!r} is a count of zero seeds; give a count >= 1, or a comma list for "
                         "chosen seeds (seed 0 alone: --seeds 0, or --seeds 1)")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds needs distinct seeds >= 0; got {spec!r}")
    return seeds


def model_variants(models: str | Sequence[str], explicit: frozenset[str] = frozenset()) -> list[Variant]:
    """``"pop,srgnn"`` -> [("pop", {"model.name": "pop"}), ("srgnn", {"model.name": "srgnn", "train.batch_size":
    "100"})]: each row with its model's training defaults, less the settings the user gave (``explicit``)."""
    names = [m.strip() for m in models.split(",")] if isinstance(models, str) else [str(m).strip() for m in models]
    names = [n for n in names if n]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"--models needs one or more distinct model names (e.g. pop,gru4rec,sasrec), got {models!r}")
    return [(n, {"model.name": n, **model_train_defaults(n, explicit)}) for n in names]


def row_variant(spec: str, explicit: frozenset[str] = frozenset()) -> Variant:
    """``--row "NAME MODEL [section.key=value ...] [FILE.yaml ...]"`` -> (NAME, overrides): a table row of MODEL
    with settings of its own, on top of the bench's config (a row's setting wins over ``--set``). A YAML file's
    sections are read as that many overrides (``configs/tema-best.yaml``); its ``model.name``, if any, must be
    MODEL. The row keeps its model's training defaults unless it, the config or ``--set`` names them."""
    tokens = spec.split()
    if len(tokens) < 2:
        raise ValueError(f"--row expects 'NAME MODEL [section.key=value ...] [FILE.yaml ...]', e.g. --row "
                         f"'pinet-full pinet model.loss=full'; got {spec!r}")
    name, model, overrides = tokens[0], tokens[1], {}
    for token in tokens[2:]:
        if token.endswith((".yaml", ".yml")) and "=" not in token:
            overrides.update(flatten(read_yaml(token)))
        elif "=" in token:
            key, value = token.split("=", 1)
            overrides[key] = value
        else:
            raise ValueError(f"--row {name}: {token!r} is neither section.key=value nor a .yaml file")
    if overrides.get("model.name", model) != model:
        raise ValueError(f"--row {name}: model {model!r}, but its settings say model.name={overrides['model.name']!r}")
    overrides["model.name"] = model
    return name, {**model_train_defaults(model, explicit | frozenset(overrides)), **overrides}


def run_dir(out_dir: str | Path, variant: str, seed: int) -> Path:
    return Path(out_dir) / "runs" / variant / f"seed{seed}"


def run_grid(dataset_dir: str | Path, variants: list[Variant], seeds: list[int], out_dir: str | Path,
             base_cfg: Config, jobs: int = 1) -> dict[str, Any]:
    """Train every variant for every seed under ``out_dir/runs`` (skipping finished runs), then summarise.

    ``variants`` are (name, config overrides), e.g. ``("sasrec", {"model.name": "sasrec"})``; each run uses
    ``base_cfg`` with the overrides and ``train.seed = seed``. ``jobs`` > 1 trains that many runs at once, each
    in a fresh process (``train_parallel``). Returns the results.json object.
    """
    from temarec.runs import train_run

    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1 (runs trained at once), got {jobs}")
    out = Path(out_dir)
    names = [name for name, _ in variants]
    if len(set(names)) != len(names) or not all(names) or any("/" in n for n in names):
        raise ValueError(f"variant names must be distinct, non-empty and contain no '/': {names}")
    Dataset.load(dataset_dir)  # a missing or damaged dataset folder fails here, before OUT is created
    for name, overrides in variants:  # ... and so does a row's bad setting, before any row trains
        try:
            base_cfg.replace(**overrides)
        except ValueError as exc:
            raise ValueError(f"row {name}: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    _record_grid(out, dataset_dir, variants, seeds)
    pending: list[Job] = []
    for name, overrides in variants:
        for seed in seeds:
            cfg = base_cfg.replace(**{**overrides, "train.seed": str(seed)})
            run = run_dir(out, name, seed)
            if (run / "metrics.json").is_file():
                _check_same_config(run, cfg)
                log.info("%s seed %d: finished run found in %s, skipped", name, seed, run)
                continue
            resume = (run / "last_state.pt").is_file()
            if resume:
                _check_same_config(run, cfg)
            elif run.exists():
                log.warning("%s seed %d: removing unfinished run folder %s (no checkpoint to resume)", name, seed, run)
                shutil.rmtree(run)
            pending.append(Job(f"{name} seed {seed}", str(dataset_dir), cfg, str(run), resume))
    if jobs > 1 and len(pending) > 1:
        train_parallel(pending, jobs)
    else:
        for job in pending:
            log.info("%s: training into %s%s", job.label, job.run, " (resuming)" if job.resume else "")
            train_run(job.dataset_dir, job.cfg, job.run, resume=job.resume)
    return summarise(out)


@dataclass(frozen=True)
class Job:
    """One training run of a grid: what ``train_run`` is given, and how logs name it."""
    label: str
    dataset_dir: str
    cfg: Config
    run: str
    resume: bool


def train_parallel(pending: list[Job], jobs: int) -> None:
    """Train ``pending`` runs ``jobs`` at a time, each in a fresh process (its peak RSS is its own), log lines
    prefixed with the run. Each run is what it would be alone: same seed, same data, its own process. Give each
    run ``train.threads`` so that jobs x threads fits the cores (threads 0, torch's default, uses them all in
    every job). A failed run stops the grid once the runs already started have ended (they resume)."""
    threads = pending[0].cfg.train.threads
    cores = os.cpu_count() or 1
    if threads == 0 or jobs * threads > cores:
        log.warning("--jobs %d with train.threads=%d asks for more threads than the %d cores; set train.threads so "
                    "that jobs x threads <= cores", jobs, threads, cores)
    context = multiprocessing.get_context("spawn")  # no forked torch state; each run starts clean
    level = logging.getLogger().getEffectiveLevel()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, max_tasks_per_child=1) as pool:
        futures = {pool.submit(_train_job, job, level): job for job in pending}
        for future in as_completed(futures):
            error = future.exception()
            if error is None:
                continue
            for other in futures:
                other.cancel()  # the runs not started yet
            if isinstance(error, BrokenProcessPool):  # a worker died (killed, out of memory) before it could report
                raise ChildProcessError(f"a training process of {futures[future].label} ended without a result "
                                        "(killed? out of memory?); finished runs are kept: rerun the same command "
                                        "to resume, with fewer --jobs if memory is short") from None
            log.error("%s failed; the runs already started finish first", futures[future].label)
            raise error


def _train_job(job: Job, level: int) -> None:
    """In a worker process: log as the CLI does, each line naming the run, then train."""
    from temarec.runs import train_run

    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s [{job.label}] %(name)s: %(message)s",
                        datefmt="%H:%M:%S", force=True)
    log.info("training into %s%s", job.run, " (resuming)" if job.resume else "")  # the prefix names the run
    train_run(job.dataset_dir, job.cfg, job.run, resume=job.resume)


def _record_grid(out: Path, dataset_dir: str | Path, variants: list[Variant], seeds: list[int]) -> None:
    """bench.json keeps the variants of every call on this folder, first call first (the tables' row order)."""
    path = out / "bench.json"
    known = json.loads(path.read_text()) if path.is_file() else {"variants": [], "seeds": []}
    dataset = str(Path(dataset_dir).resolve())
    if known.get("dataset_dir", dataset) != dataset:
        raise ValueError(f"{out} benches dataset {known['dataset_dir']}, not {dataset}; use another --out")
    old = {v["name"]: v["overrides"] for v in known["variants"]}
    for name, overrides in variants:
        if name in old and old[name] != overrides:
            raise ValueError(f"{out}: variant {name!r} was benched with overrides {old[name]}, now {overrides}; "
                             "use another --out or another variant name")
        if name not in old:
            known["variants"].append({"name": name, "overrides": dict(overrides)})
    known["seeds"] = sorted(set(known["seeds"]) | set(seeds))
    known["dataset_dir"] = dataset
    write_text_atomic(path, json.dumps(known, indent=2))


def _check_same_config(run: Path, cfg: Config) -> None:
    path = run / "config.json"
    if not path.is_file():
        return
    from temarec.runs import read_config  # (torch is imported only where a run is read)

    diff = [k for k in cfg.changed_from(read_config(run)) if k not in RUNTIME_SETTINGS]
    if diff:
        raise ValueError(f"{run} was trained with a different config ({', '.join(diff)}); "
                         "bench into another --out, or delete that run folder to retrain it")


def summarise(out_dir: str | Path) -> dict[str, Any]:
    """(Re)build results.json, results.md and the plots from the finished runs under ``out_dir/runs``."""
    out = Path(out_dir)
    runs = _finished_runs(out)
    if not runs:
        raise ValueError(f"{out} holds no finished runs (runs/VARIANT/seedN/metrics.json); run `temarec bench`")
    from temarec.runs import read_run_info

    results: dict[str, Any] = {"protocol": {}, "results": {}}
    for name, by_seed in runs.items():
        metrics = {seed: read_run_info(path)[1] for seed, path in by_seed.items()}
        results["protocol"][name] = _variant_protocol(name, metrics)
        results["results"][name] = aggregate(metrics)
        results["results"][name]["still_improving_seeds"] = [s for s, path in by_seed.items()
                                                             if _stopped_while_improving(path, metrics[s])]
    results.update(_significance(runs, results))
    write_text_atomic(out / "results.json", json.dumps(results, indent=2))
    write_text_atomic(out / "results.md", format_results(results))
    plot_metrics(results, out / "metrics.png")
    plot_curves(runs, out / "curves.png")
    log.info("wrote %s, %s and plots", out / "results.json", out / "results.md")
    return results


def _stopped_while_improving(run: Path, metrics: dict[str, Any]) -> bool:
    """True when training ended (epoch cap or time budget) before early stopping could: its best validation
    epoch lies within ``train.patience`` of its last epoch, so more epochs might still have helped."""
    epochs = metrics.get("timing", {}).get("epochs", 0)
    if not epochs or not (run / "config.json").is_file():
        return False
    from temarec.runs import read_config

    patience = read_config(run)["train"]["patience"]
    return epochs - int(metrics.get("selected_epoch") or 0) < patience


def rank_frames(out_dir: str | Path) -> dict[str, dict[int, Any]]:
    """{variant: {seed: per-instance ranks}} of the finished runs under ``out_dir/runs`` that kept their ranks."""
    return _rank_frames(_finished_runs(Path(out_dir)))


def _rank_frames(runs: dict[str, dict[int, Path]]) -> dict[str, dict[int, Any]]:
    frames = {}
    for name, by_seed in runs.items():
        kept = {seed: read_ranks(path) for seed, path in by_seed.items()}
        kept = {seed: f for seed, f in kept.items() if f is not None}
        if kept:
            frames[name] = kept
    return frames


def _significance(runs: dict[str, dict[int, Path]], results: dict[str, Any]) -> dict[str, Any]:
    """The paired tests against the best other model and the test-set slices, over runs that kept their ranks."""
    frames = _rank_frames(runs)
    if not frames:
        return {}
    first = next(iter(results["results"].values()))["mean"]["test"]
    domains = list(first["sampled"])
    mean_mrr = {p: {d: {name: r["mean"]["test"][p][d]["mrr"] for name, r in results["results"].items()}
                    for d in domains} for p in PROTOCOLS}
    out = {"significance": significance_report(frames, mean_mrr, domains, PROTOCOLS),
           "slices": slices_report(frames, domains, PROTOCOLS)}
    pop = _popularity_variant(runs, frames)
    if pop is not None:
        out["against_pop"] = {"reference": pop, "tests": against_reference(frames, pop, domains, PROTOCOLS)}
    return out


def _popularity_variant(runs: dict[str, dict[int, Path]], frames: dict[str, Any]) -> str | None:
    """The row that ran ``--model pop`` (the floor every method must clear), if one kept its ranks."""
    from temarec.runs import read_config

    for name in frames:
        if read_config(next(iter(runs[name].values())))["model"]["name"] == "pop":
            return name
    return None


def _finished_runs(out: Path) -> dict[str, dict[int, Path]]:
    """{variant: {seed: run folder}} of runs with a metrics.json, variants in bench.json order."""
    order = []
    if (out / "bench.json").is_file():
        order = [v["name"] for v in json.loads((out / "bench.json").read_text())["variants"]]
    found: dict[str, dict[int, Path]] = {}
    for metrics in sorted((out / "runs").glob("*/seed*/metrics.json")):
        variant, seed_dir = metrics.parent.parent.name, metrics.parent.name
        if seed_dir[4:].isdigit():
            found.setdefault(variant, {})[int(seed_dir[4:])] = metrics.parent
    ranked = sorted(found, key=lambda v: (order.index(v) if v in order else len(order), v))
    return {v: dict(sorted(found[v].items())) for v in ranked}


def _variant_protocol(name: str, metrics: dict[int, dict[str, Any]]) -> dict[str, Any]:
    protocols = [m["protocol"] for m in metrics.values()]
    first = protocols[0]
    if any(p != first for p in protocols[1:]):
        log.warning("%s: seeds report different protocol info (data, encoders or tags differ); "
                    "results.json keeps the first seed's", name)
    return first


def aggregate(metrics: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per-seed metrics.json objects -> {"seeds", "mean", "std", "timing"} of one variant."""
    seeds = {str(s): {split: m[split] for split in SPLITS} for s, m in metrics.items()}
    mean: dict[str, Any] = {}
    std: dict[str, Any] = {}
    first = next(iter(metrics.values()))
    for split in SPLITS:
        for protocol in PROTOCOLS:
            for domain in first[split][protocol]:
                for metric in AGG_METRICS:
                    values = [m[split][protocol][domain][metric] for m in metrics.values()]
                    mean.setdefault(split, {}).setdefault(protocol, {}).setdefault(domain, {})[metric] = \
                        statistics.fmean(values)
                    std.setdefault(split, {}).setdefault(protocol, {}).setdefault(domain, {})[metric] = \
                        statistics.stdev(values) if len(values) > 1 else None
    timing = [m.get("timing", {}) for m in metrics.values()]
    return {"seeds": seeds, "mean": mean, "std": std, "timing": {
        "epochs_mean": statistics.fmean(t.get("epochs", 0) for t in timing),
        "epoch_s_median": statistics.median(t.get("epoch_s_median", 0.0) for t in timing),
        "train_s_mean": statistics.fmean(t.get("train_s", 0.0) for t in timing),
        "peak_rss_mb_max": max(t.get("peak_rss_mb", 0.0) for t in timing),
        "selected_epochs": [m.get("selected_epoch") for m in metrics.values()],
    }}


def _cell(mean: float, std: float | None) -> str:
    if mean is None or math.isnan(mean):
        return "nan"
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def format_table(results: dict[str, Any], split: str, protocol: str) -> str:
    """Markdown table: one row per variant; MRR, NDCG@5, NDCG@10, HR@10 of each domain in %, mean ± std."""
    variants = results["results"]
    domains = list(next(iter(variants.values()))["mean"][split][protocol])
    cols = [f"{d} {m.upper()}" for d in domains for m in TABLE_METRICS]
    lines = ["| model | seeds | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, r in variants.items():
        cells = [_cell(r["mean"][split][protocol][d][m], r["std"][split][protocol][d][m])
                 for d in domains for m in TABLE_METRICS]
        mark = " †" if r.get("still_improving_seeds") else ""
        lines.append(f"| {name}{mark} | {len(r['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_results(results: dict[str, Any]) -> str:
    """results.md: a header saying what produced the numbers, the test tables per protocol, validation, timing."""
    protocols = results["protocol"]
    variants = results["results"]
    first = next(iter(protocols.values()))
    datas = sorted({p["data"] for p in protocols.values()})
    seed_sets = sorted({tuple(sorted(int(s) for s in r["seeds"])) for r in variants.values()})
    seeds_line = "; ".join(f"{len(s)} ({', '.join(map(str, s))})" for s in seed_sets)
    n_test = _split_sizes(variants, "test")
    lines = [
        "# Benchmark results",
        "",
        f"- data: {'; '.join(datas)}",
        f"- test instances: {', '.join(f'{d} {n:,}' for d, n in n_test.items())}",
        f"- protocol, sampled: the target against {first['negatives']} stored negatives of its domain, "
        f"negatives preset {presets(protocols)} (drawn once with seed {first['negative_seed']})",
        "- protocol, full: the target's rank among all items of its domain",
        f"- model selection: {first['selection']}; test scored once for the selected checkpoint",
        f"- seeds: {seeds_line}; cells are mean ± sample std over seeds, metrics in %",
        "- training loss, encoders and tag source per model:",
    ]
    for name, p in protocols.items():
        training = f"trained with {p['training']}; " if p.get("training") else ""
        note = f"; notes: {p['notes']}" if p.get("notes") else ""
        lines.append(f"  - {name}: {training}encoders {p['encoders']}; tags {p['tags']}{note}")
    titles = {"sampled": f"sampled protocol ({first['negatives']} negatives, preset {presets(protocols)})",
              "full": "full ranking"}
    for protocol in PROTOCOLS:
        lines += ["", f"## Test, {titles[protocol]}", "", format_table(results, "test", protocol)]
    for protocol in PROTOCOLS:
        lines += ["", f"## Validation, {titles[protocol]}", "", format_table(results, "valid", protocol)]
    improving = {n: r["still_improving_seeds"] for n, r in variants.items() if r.get("still_improving_seeds")}
    if improving:
        lines += ["", "† still improving when training ended (epoch cap or time budget before early stopping: the "
                  "best validation epoch lies within train.patience of the last one), seeds: "
                  + "; ".join(f"{n} {', '.join(map(str, s))}" for n, s in improving.items())
                  + ". Its row understates what longer training gives."]
    lines += _format_significance(results)
    lines += ["", "## Timing", "", "| model | epochs (mean) | selected epochs | epoch s (median) | train s (mean) "
              "| peak RSS MB (max) |", "|---|---|---|---|---|---|"]
    for name, r in variants.items():
        t = r["timing"]
        lines.append(f"| {name} | {t['epochs_mean']:.1f} | {', '.join(map(str, t['selected_epochs']))} "
                     f"| {t['epoch_s_median']:.2f} | {t['train_s_mean']:.1f} | {t['peak_rss_mb_max']:.0f} |")
    return "\n".join(lines) + "\n"


def _format_significance(results: dict[str, Any]) -> list[str]:
    """The paired tests and the slices of results.json as markdown sections (empty without per-instance ranks)."""
    if not results.get("significance"):
        return []
    lines = ["", "## Is the difference real? (test split)", "",
             "Each model against the best other model of the domain (highest mean test MRR): paired two-sided "
             "Wilcoxon signed-rank test on per-instance reciprocal ranks, per seed and across seeds (each "
             "instance's reciprocal rank averaged over the seeds both ran). ΔMRR = model − other, in points, with "
             "its paired bootstrap 95% interval (instances resampled). Wilcoxon asks whether the paired differences "
             "sit symmetrically about zero, so on thousands of instances it can give a small p for a mean "
             "difference of a few hundredths of a point: read p beside the interval, which is on the MRR "
             "difference itself.", "",
             "| protocol | domain | model | against | ΔMRR (across seeds) | 95% interval | p (across seeds) "
             "| p per seed |",
             "|---|---|---|---|---:|---:|---:|---|"]
    for protocol, domain, model, r in _by_protocol_domain_model(results["significance"]):
        a = r["across_seeds"]
        per = ", ".join(f"{s}: {format_p(v['p'])}" for s, v in r["per_seed"].items())
        lines.append(f"| {protocol} | {domain} | {model} | {r['against']} | {100 * a['mean_diff']:+.2f} "
                     f"| {interval_text(a)} | {format_p(a['p'])} | {per} |")
    lines += _format_against_pop(results.get("against_pop"))
    slices = results["slices"]
    names = list(SLICES)
    lines += ["", "## Test MRR by slice (%, mean over seeds; n = instances)", "",
              "cold: the target never occurs in training; own-domain history: the history holds an item of the "
              "target's domain.", "",
              "| protocol | domain | model | " + " | ".join(names) + " |", "|---|---|---|" + "---:|" * len(names)]
    for protocol, domain, model, cells in _by_protocol_domain_model(slices):
        row = " | ".join(f"{_pct(cells[n]['mrr'])} (n={cells[n]['n']:,})" for n in names)
        lines.append(f"| {protocol} | {domain} | {model} | {row} |")
    return lines


def _by_protocol_domain_model(nested: dict[str, Any]):
    """(protocol, domain, model, value) over a report's {protocol: {domain: {model: value}}}."""
    for protocol, by_domain in nested.items():
        for domain, by_model in by_domain.items():
            for model, value in by_model.items():
                yield protocol, domain, model, value


def interval_text(across: dict[str, Any]) -> str:
    """A comparison's bootstrap interval in points ("—" in results.json written before intervals existed)."""
    low, high = across.get("ci95", (None, None))
    return "—" if low is None else f"[{100 * low:+.2f}, {100 * high:+.2f}]"


def _format_against_pop(against: dict[str, Any] | None) -> list[str]:
    """Every model against the popularity row: ΔMRR, its bootstrap interval, Wilcoxon's p and the verdict."""
    if not against:
        return []
    lines = ["", f"## Above popularity? (test split, against `{against['reference']}`)", "",
             "Every method should beat popularity in every domain. above / below: the paired bootstrap 95% "
             "interval of ΔMRR (across seeds) excludes 0; not shown: it covers 0.", "",
             "| protocol | domain | model | ΔMRR vs pop | 95% interval | p (Wilcoxon) | ΔMRR per seed | verdict |",
             "|---|---|---|---:|---:|---:|---|---|"]
    for protocol, domain, model, r in _by_protocol_domain_model(against["tests"]):
        a = r["across_seeds"]
        per = ", ".join(f"{s}: {100 * v['mean_diff']:+.2f}" for s, v in r["per_seed"].items())
        lines.append(f"| {protocol} | {domain} | {model} | {100 * a['mean_diff']:+.2f} | {interval_text(a)} "
                     f"| {format_p(a['p'])} | {per} | {verdict(a['ci95'])} |")
    return lines


def _pct(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def presets(protocols: dict[str, Any]) -> str:
    """The negatives preset(s) of the variants (runs from before presets existed used c2dsr)."""
    return " / ".join(sorted({p.get("negatives_preset", "c2dsr") for p in protocols.values()}))


def _split_sizes(variants: dict[str, Any], split: str) -> dict[str, int]:
    one_seed = next(iter(next(iter(variants.values()))["seeds"].values()))
    return {d: int(m["n"]) for d, m in one_seed[split]["sampled"].items()}


def plot_metrics(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: test MRR (%) per variant, one bar per domain, std error bars; one panel per protocol."""
    plt = _pyplot()
    import numpy as np

    variants = list(results["results"])
    domains = list(results["results"][variants[0]]["mean"]["test"]["sampled"])
    fig, axes = plt.subplots(1, len(PROTOCOLS), figsize=(max(6.0, 1.4 * len(variants) * len(PROTOCOLS)), 4.0))
    x = np.arange(len(variants))
    width = 0.8 / len(domains)
    for ax, protocol in zip(axes, PROTOCOLS):
        for k, domain in enumerate(domains):
            means = [100 * results["results"][v]["mean"]["test"][protocol][domain]["mrr"] for v in variants]
            stds = [100 * (results["results"][v]["std"]["test"][protocol][domain]["mrr"] or 0.0) for v in variants]
            ax.bar(x + (k - (len(domains) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=domain)
        ax.set_xticks(x, variants, rotation=30 if len(variants) > 4 else 0, ha="right" if len(variants) > 4 else "center")
        ax.set_ylabel("test MRR (%)")
        ax.set_title(f"{protocol} protocol")
        ax.legend()
    fig.tight_layout()
    _save_figure(fig, path)


def _read_curve(run: Path) -> list[dict[str, Any]]:
    """metrics.jsonl records by epoch; a resumed run may repeat an epoch, the last record wins."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    by_epoch = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def plot_curves(runs: dict[str, dict[int, Path]], path: Path) -> None:
    """Validation MRR (sampled, mean over domains) and training loss per epoch; one line per run."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (ax_mrr, ax_loss) = plt.subplots(1, 2, figsize=(10.0, 4.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = 0
    for i, (name, by_seed) in enumerate(runs.items()):
        for j, (seed, run) in enumerate(by_seed.items()):
            curve = _read_curve(run)
            if not curve:
                continue
            label = name if j == 0 else None
            color = colors[i % len(colors)]
            scored = [r for r in curve if "valid_mrr" in r]
            ax_mrr.plot([r["epoch"] for r in scored], [100 * r["valid_mrr"] for r in scored], color=color,
                        marker=".", alpha=0.8, label=label)
            ax_loss.plot([r["epoch"] for r in curve], [r["loss"] for r in curve], color=color, alpha=0.8, label=label)
            drawn += 1
    ax_mrr.set(xlabel="epoch", ylabel="validation MRR, sampled (%)", title="validation MRR (mean over domains)")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss")
    for ax in (ax_mrr, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if drawn:
        ax_mrr.legend()
        ax_loss.legend()
    else:
        for ax in (ax_mrr, ax_loss):
            ax.text(0.5, 0.5, "no per-epoch logs\n(no trained model in this bench)", ha="center", va="center",
                    transform=ax.transAxes)
    fig.tight_layout()
    _save_figure(fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    _pyplot().close(fig)
