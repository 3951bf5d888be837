"""Training cost of several models side by side: seconds and CPU-seconds per epoch, peak RSS.

    python benchmarks/bench_epoch.py --dataset DIR --out OUT --models sasrec,c2dsr [--epochs 2]
                                     [--set section.key=value ...]

Each model is one ``temarec train`` of ``--epochs`` epochs in its own process (so peak RSS, ``ru_maxrss``, is that
run's own), one after the other with the same ``--set`` overrides, into OUT/runs/MODEL. Reported per model, in
OUT/bench_epoch.json and OUT/bench_epoch.md: the median wall seconds of a training epoch (evaluation excluded,
from metrics.jsonl), the process's CPU-seconds (user + system, evaluation included) per epoch, its peak RSS, and
the load average before and after, because on a shared machine wall times are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("bench_epoch")


def train(dataset: str, model: str, out: Path, epochs: int, settings: list[str]) -> dict[str, Any]:
    """One timed ``temarec train`` in a fresh process."""
    if out.exists():
        raise SystemExit(f"{out} exists; delete it or choose another --out")
    cmd = [sys.executable, "-m", "temarec", "train", "--dataset", dataset, "--model", model, "--out", str(out),
           "--set", f"train.epochs={epochs}"]
    for s in settings:
        cmd += ["--set", s]
    load_before = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    log.info("training %s for %d epochs", model, epochs)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{model} failed:\n{done.stderr[-4000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    metrics = json.loads((out / "metrics.json").read_text())
    epoch_s = [json.loads(line)["epoch_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"model": model, "epochs": len(epoch_s), "epoch_s_median": round(statistics.median(epoch_s), 2),
            "cpu_s_per_epoch": round(cpu_s / len(epoch_s), 2), "peak_rss_mb": metrics["timing"]["peak_rss_mb"],
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--models", default="sasrec,c2dsr")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--set", action="append", default=[], dest="settings", metavar="SECTION.KEY=VALUE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    rows = [train(args.dataset, m, out / "runs" / m, args.epochs, args.settings) for m in args.models.split(",")]
    base = rows[0]
    lines = ["| model | epochs | s/epoch (training) | CPU-s/epoch (incl. validation) | peak RSS (MB) | load before/after |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        ratio = f" ({r['epoch_s_median'] / base['epoch_s_median']:.1f}x)" if r is not base else ""
        lines.append(f"| {r['model']} | {r['epochs']} | {r['epoch_s_median']}{ratio} | {r['cpu_s_per_epoch']} | "
                     f"{r['peak_rss_mb']:.0f} | {r['load_before']} / {r['load_after']} |")
    (out / "bench_epoch.json").write_text(json.dumps({"dataset": args.dataset, "settings": args.settings,
                                                      "rows": rows}, indent=2))
    (out / "bench_epoch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
