"""Baselines (pop, GRU4Rec, SASRec) x seeds on ABXI and C2DSR Food-Kitchen: the figures of docs/BENCHMARKS.md.

Prepares the two dataset folders from ``../shared/data`` (once; reused after), then runs ``temarec bench`` once per
(dataset, model) in its own process, so each model's peak RSS is its own (``ru_maxrss`` only grows within a
process), and prints a markdown summary: test tables under both protocols, epoch time, peak RSS, wall time.
Everything lands under ``--out``; an interrupted run resumes (finished runs are skipped).

    python benchmarks/bench_baselines.py --out /tmp/bench-baselines                 # full: 3 seeds, config epochs
    python benchmarks/bench_baselines.py --out /tmp/bb --seeds 1 --epochs 2         # smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from temarec.grid import format_table, summarise

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TITLES = "amazon-titles/food_kitchen_titles.tsv"
DATASETS = {  # name -> (prepare --format, raw folder under shared/data)
    "abxi-food-kitchen": ("abxi", "abxi-food-kitchen"),
    "c2dsr-food-kitchen": ("c2dsr", "c2dsr-food-kitchen"),
}

log = logging.getLogger("bench_baselines")


def temarec(*args: str, stdout_to: Path | None = None) -> float:
    """Run ``python -m temarec ARGS`` in a child process (its log on stderr); returns its wall time in seconds."""
    t = time.perf_counter()
    if stdout_to is None:
        subprocess.run([sys.executable, "-m", "temarec", *args], check=True)
    else:
        stdout_to.parent.mkdir(parents=True, exist_ok=True)
        with open(stdout_to, "w") as fh:
            subprocess.run([sys.executable, "-m", "temarec", *args], check=True, stdout=fh)
    return time.perf_counter() - t


def prepare(name: str, shared: Path, data_dir: Path) -> Path:
    fmt, raw = DATASETS[name]
    out = data_dir / name
    if (out / "manifest.json").is_file():
        log.info("%s: dataset folder %s exists, reused", name, out)
        return out
    temarec("prepare", "--format", fmt, "--input", str(shared / raw), "--domains", "Food,Kitchen",
            "--titles", str(shared / TITLES), "--out", str(out))
    return out


def summary(results_by_dataset: dict[str, dict], wall: dict[tuple[str, str], float], args: argparse.Namespace) -> str:
    lines = ["# Baselines on Food-Kitchen", "",
             f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
             f"torch {torch.__version__}; python {platform.python_version()}",
             f"- seeds: {args.seeds}; epochs: {args.epochs or 'config default'} "
             f"(early stopping on validation MRR); extra settings: {' '.join(args.set) or 'none'}",
             "- metrics in %, mean ± sample std over seeds; test split, checkpoint selected on validation"]
    for name, results in results_by_dataset.items():
        first = next(iter(results["protocol"].values()))
        lines += ["", f"## {name}", "", f"data: {first['data']}", "",
                  f"### Test, sampled protocol ({first['negatives']} negatives)", "",
                  format_table(results, "test", "sampled"), "",
                  "### Test, full ranking (all items of the target's domain)", "",
                  format_table(results, "test", "full"), "",
                  "### Cost", "",
                  "| model | epochs (mean) | epoch s (median) | train s (mean) | peak RSS MB | bench wall s |",
                  "|---|---|---|---|---|---|"]
        for model, r in results["results"].items():
            t = r["timing"]
            w = wall.get((name, model))
            lines.append(f"| {model} | {t['epochs_mean']:.1f} | {t['epoch_s_median']:.2f} | {t['train_s_mean']:.1f} "
                         f"| {t['peak_rss_mb_max']:.0f} | {'%.0f' % w if w is not None else '—'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the dataset folders, bench folders and SUMMARY.md")
    p.add_argument("--models", default="pop,gru4rec,sasrec")
    p.add_argument("--seeds", default="3", help="a count N = seeds 0..N-1, or a comma list")
    p.add_argument("--epochs", type=int, help="train.epochs (default: the config's)")
    p.add_argument("--datasets", default=",".join(DATASETS), help=f"comma list of {', '.join(DATASETS)}")
    p.add_argument("--shared", type=Path, default=SHARED, help="the shared raw data folder")
    p.add_argument("--config", help="YAML config passed to every bench")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="passed to every bench")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    out = Path(args.out)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = set(names) - set(DATASETS)
    if unknown:
        p.error(f"unknown dataset(s) {sorted(unknown)}; choose from {list(DATASETS)}")
    settings = list(args.set) + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    extra = [a for kv in settings for a in ("--set", kv)] + (["--config", args.config] if args.config else [])
    results, wall = {}, {}
    for name in names:
        dataset = prepare(name, args.shared, out / "data")
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            log.info("%s: benching %s, seeds %s", name, model, args.seeds)
            wall[(name, model)] = temarec("bench", "--dataset", str(dataset), "--models", model,
                                          "--seeds", args.seeds, "--out", str(out / name), *extra,
                                          stdout_to=out / "logs" / f"{name}-{model}.md")
        results[name] = summarise(out / name)
    text = summary(results, wall, args)
    (out / "SUMMARY.md").write_text(text)
    (out / "wall_s.json").write_text(json.dumps({f"{d}/{m}": round(s, 1) for (d, m), s in wall.items()}, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
