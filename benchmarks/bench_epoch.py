"""Training cost of several models side by side: seconds and CPU-seconds per epoch, peak RSS.

    python benchmarks/bench_epoch.py --dataset DIR --out OUT --models sasrec,c2dsr [--epochs 2]
                                     [--set section.key=value ...]
                                     [--variant NAME=MODEL,section.key=value,... ...]

Each model is one ``temarec train`` of ``--epochs`` epochs in its own process (so peak RSS, ``ru_maxrss``, is that
run's own), one after the other with the same ``--set`` overrides, into OUT/runs/MODEL. ``--variant`` (repeatable)
adds a row NAME after the models: MODEL trained with the ``--set`` overrides plus its own (a value may hold commas,
``model.tema.lambdas=[0.3,0.1]``), into OUT/runs/NAME; e.g. ``--variant tema-shared=tema,model.tema.encoders=shared``
times two TEMA configurations in one call. Reported per row, in OUT/bench_epoch.json and OUT/bench_epoch.md: the
median wall seconds and the median CPU-seconds of a training epoch (evaluation excluded, from metrics.jsonl; the
CPU-seconds are the fairer ratio on a loaded machine, where the wall clock depends on the share a process got),
the process's CPU-seconds (user + system, start-up and evaluation included) per epoch, its peak RSS, and the load
average before and after, because on a shared machine wall times are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("bench_epoch")


def parse_variant(text: str) -> tuple[str, str, list[str]]:
    """'NAME=MODEL,section.key=value,...' -> (NAME, MODEL, settings); commas inside a value stay in it."""
    name, sep, rest = text.partition("=")
    parts = re.split(r",(?=[A-Za-z_]+\.[A-Za-z_.]+=)", rest)
    if not name or not sep or not parts[0] or "=" in parts[0] or "/" in name:
        raise SystemExit(f"--variant {text!r}: expected NAME=MODEL[,section.key=value,...], "
                         "e.g. tema-shared=tema,model.tema.encoders=shared")
    return name, parts[0], parts[1:]


def train(dataset: str, model: str, out: Path, epochs: int, settings: list[str],
          name: str | None = None) -> dict[str, Any]:
    """One timed ``temarec train`` in a fresh process."""
    if out.exists():
        raise SystemExit(f"{out} exists; delete it or choose another --out")
    cmd = [sys.executable, "-m", "temarec", "train", "--dataset", dataset, "--model", model, "--out", str(out),
           "--set", f"train.epochs={epochs}"]
    for s in settings:
        cmd += ["--set", s]
    load_before = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    log.info("training %s (%s) for %d epochs", name or model, model, epochs)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{model} failed:\n{done.stderr[-4000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    metrics = json.loads((out / "metrics.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epoch_s = [r["epoch_s"] for r in records]
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"model": name or model, "trains": model, "settings": settings, "epochs": len(epoch_s),
            "epoch_s_median": round(statistics.median(epoch_s), 2),
            "epoch_cpu_s_median": round(statistics.median(r["epoch_cpu_s"] for r in records), 2),
            "cpu_s_per_epoch": round(cpu_s / len(epoch_s), 2), "peak_rss_mb": metrics["timing"]["peak_rss_mb"],
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--models", default="sasrec,c2dsr")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--set", action="append", default=[], dest="settings", metavar="SECTION.KEY=VALUE")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=MODEL,SECTION.KEY=VALUE,...",
                   help="one more row: MODEL with its own settings on top of --set (repeatable)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    jobs = [(m, m, []) for m in args.models.split(",") if m] + [parse_variant(v) for v in args.variant]
    names = [name for name, _, _ in jobs]
    if not jobs or len(set(names)) < len(names):
        raise SystemExit(f"row names must be given and distinct, got {names}")
    rows = [train(args.dataset, model, out / "runs" / name, args.epochs, [*args.settings, *own], name)
            for name, model, own in jobs]
    base = rows[0]

    def ratio(r: dict[str, Any], key: str) -> str:
        return f" ({r[key] / base[key]:.1f}x)" if r is not base and base[key] > 0 else ""

    lines = ["| model | epochs | s/epoch (training) | CPU-s/epoch (training) | CPU-s/epoch (process: start-up and "
             "evaluation included) | peak RSS (MB) | load before/after |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['epochs']} | {r['epoch_s_median']}{ratio(r, 'epoch_s_median')} | "
                     f"{r['epoch_cpu_s_median']}{ratio(r, 'epoch_cpu_s_median')} | {r['cpu_s_per_epoch']} | "
                     f"{r['peak_rss_mb']:.0f} | {r['load_before']} / {r['load_after']} |")
    (out / "bench_epoch.json").write_text(json.dumps({"dataset": args.dataset, "settings": args.settings,
                                                      "variants": args.variant, "rows": rows}, indent=2))
    (out / "bench_epoch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
