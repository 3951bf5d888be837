"""Time ``temarec prepare`` on the two shared real data sets; prints a markdown table for docs/BENCHMARKS.md.

    python benchmarks/bench_prepare.py [--shared ../shared/data] [--runs 3]

Each run is a fresh process (so peak RSS, ``resource.getrusage(RUSAGE_SELF)`` at its end, is that run's
own). ``prepare()`` is timed inside it: parse, split, join titles, draw the 999 negatives per evaluation
instance, write Parquet; the process column adds interpreter start-up and imports. Medians over ``--runs``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RUN = """
import resource, sys, time
from temarec.data.prepare import prepare
fmt, folder, titles, out = sys.argv[1:]
start = time.perf_counter()
prepare(fmt, out, input_dir=folder, domains="Food,Kitchen", titles=titles, overwrite=True)
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def time_one(fmt: str, folder: Path, titles: Path, out: Path) -> tuple[float, float, float]:
    """(prepare() wall s, whole process wall s incl. start-up and imports, peak RSS MiB) of one child run."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUN, fmt, str(folder), str(titles), str(out)], check=True,
                          capture_output=True, text=True)
    total = time.perf_counter() - start
    wall, rss_kib = done.stdout.split()
    return float(wall), total, float(rss_kib) / 1024  # ru_maxrss is KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    titles = args.shared / "amazon-titles" / "food_kitchen_titles.tsv"
    sets = [("c2dsr", "c2dsr-food-kitchen"), ("abxi", "abxi-food-kitchen")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, name in sets:
            folder = args.shared / name
            if not folder.is_dir():
                print(f"skipping {name}: {folder} not found", file=sys.stderr)
                continue
            results = [time_one(fmt, folder, titles, Path(tmp) / name) for _ in range(args.runs)]
            rows.append((name, fmt, statistics.median(r[0] for r in results), min(r[0] for r in results),
                         max(r[0] for r in results), statistics.median(r[1] for r in results),
                         max(r[2] for r in results)))
    print(f"prepare on {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"median of {args.runs} runs (fresh process each, titles joined, 999 negatives drawn)\n")
    print("| data set | format | prepare() median (s) | min-max (s) | whole process (s) | peak RSS (MiB) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, fmt, med, lo, hi, total, rss in rows:
        print(f"| {name} | {fmt} | {med:.2f} | {lo:.2f}-{hi:.2f} | {total:.2f} | {rss:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
