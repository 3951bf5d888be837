"""Text features (all-MiniLM-L6-v2) over the 36,298 Food-Kitchen titles: items/s, cold and cached.

Builds a throwaway dataset folder around ``../shared/data/amazon-titles/food_kitchen_titles.tsv`` (items only carry
titles; the splits are a two-user stub that the features stage never reads) under ``--work``, a temporary folder
by default, so the data is never copied into the repository. Each cold run starts from an empty feature cache;
one warm rerun then measures the cache path. Prints a markdown summary.

    python benchmarks/bench_features.py                    # 3 cold runs (1 when the first takes > 3 min)
    python benchmarks/bench_features.py --runs 1 --batch-size 128 --device cpu
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from temarec.config import FeaturesConfig
from temarec.data.dataset import eval_frame, train_frame, write_dataset
from temarec.features import run_features

REPO = Path(__file__).resolve().parents[1]
TITLES = REPO.parent / "shared" / "data" / "amazon-titles" / "food_kitchen_titles.tsv"
DOMAINS = ("Food", "Kitchen")
LONG_RUN_S = 180.0  # one cold run longer than this: report it alone instead of a median

log = logging.getLogger("bench_features")


def titles_dataset(tsv: Path, root: Path) -> Path:
    """A dataset folder whose items are the TSV's titles, Food first (the splits are a minimal valid stub)."""
    raw = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    raw = raw.drop_duplicates("asin")
    raw["order"] = raw["domain"].map({d: i for i, d in enumerate(DOMAINS)})
    raw = raw.sort_values("order", kind="stable")
    items = pd.DataFrame({"item": raw["asin"], "domain": raw["domain"], "title": raw["title"],
                          "description": None, "image": None}).reset_index(drop=True)
    n0 = int((items["domain"] == DOMAINS[0]).sum())
    train = train_frame([(f"u{u}", [u, n0 + u], [1, 2]) for u in range(2)])
    valid = eval_frame([(f"u{u}", [u, n0 + u], [1, 2], u + 2, 3, 0) for u in range(2)])
    test = eval_frame([(f"u{u}", [u, n0 + u, u + 2], [1, 2, 3], n0 + u + 2, 4, 1) for u in range(2)])
    return write_dataset(root, items=items, train=train, valid=valid, test=test, domains=DOMAINS,
                         train_source="stub", source={"format": "bench_features", "titles": str(tsv)},
                         num_negatives=1, overwrite=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--titles", type=Path, default=TITLES)
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary folder, removed after)")
    parser.add_argument("--runs", type=int, default=3, help="cold runs; median reported (default 3)")
    parser.add_argument("--batch-size", type=int, default=FeaturesConfig.batch_size)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--encoder", default=FeaturesConfig.text_encoder)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-features-"))
    try:
        root = titles_dataset(args.titles, work / "titles")
        cfg = FeaturesConfig(text_encoder=args.encoder, batch_size=args.batch_size, device=args.device)
        cold: list[float] = []
        cpu: list[float] = []  # process CPU seconds: comparable across machines shared with other jobs
        loads = [os.getloadavg()[0]]
        for run in range(args.runs):
            shutil.rmtree(root / "features", ignore_errors=True)
            t, c = time.perf_counter(), time.process_time()
            summary = run_features(root, cfg)
            cold.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            loads.append(os.getloadavg()[0])
            log.info("cold run %d: %.1f s wall, %.1f s CPU", run + 1, cold[-1], cpu[-1])
            if cold[-1] > LONG_RUN_S:
                log.info("cold run took > %.0f s: reporting it alone", LONG_RUN_S)
                break
        t = time.perf_counter()
        warm_summary = run_features(root, cfg)
        warm = time.perf_counter() - t
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    n = summary["n_items"]
    txt = summary["modalities"]["txt"]
    median = statistics.median(cold)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    print("\n".join([
        f"# Text features: {txt['encoder']} ({txt['dim']}-d) over {n:,} Food-Kitchen titles", "",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, device {device}"
        + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else "")
        + f"; torch {torch.__version__}, {torch.get_num_threads()} threads; batch size {cfg.batch_size}",
        f"- distinct texts encoded: {summary['run']['txt']['encoded']:,} of {txt['items']:,} items with text",
        f"- 1-minute load average at start and after each cold run: {', '.join(f'{x:.1f}' for x in loads)}",
        "",
        "| run | wall s | items/s | CPU s |",
        "|---|---:|---:|---:|",
        *(f"| cold {i + 1} | {s:.1f} | {n / s:,.0f} | {c:.0f} |" for i, (s, c) in enumerate(zip(cold, cpu))),
        *([f"| cold, median of {len(cold)} | {median:.1f} | {n / median:,.0f} | {statistics.median(cpu):.0f} |"]
          if len(cold) > 1 else []),
        f"| warm (all cached: {warm_summary['run']['txt']['from_cache']:,}) | {warm:.1f} | {n / warm:,.0f} | |",
        "",
        "Cold runs include loading the encoder and writing the cache; the warm rerun loads no model. "
        "A load average above the CPU count means other jobs shared the CPUs: wall times are then inflated.",
    ]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
