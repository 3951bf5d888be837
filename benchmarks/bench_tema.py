"""TEMA's training cost against SASRec, and TEMA's sampled against its full softmax, on one dataset folder.

    python benchmarks/bench_tema.py --dataset DIR --out OUT [--timing-epochs 2] [--epochs 10] [--seeds 0,1]
                                    [--threads 4] [--set section.key=value ...]

Every run is a ``temarec train`` in its own process (so peak RSS, ``ru_maxrss``, is that run's own) into
OUT/runs/NAME; finished runs are reused. Figures, written to OUT/bench_tema.json and OUT/bench_tema.md:

- epoch time: median training seconds per epoch (evaluation excluded) of TEMA and SASRec with the same data,
  batch size, threads and ``--set`` overrides, and their ratio (target: TEMA <= 3x SASRec);
- peak RSS of each training process (target: TEMA < 6 GiB);
- TEMA validation MRR (sampled protocol, mean over domains, best epoch) with ``model.loss=full`` and
  ``model.loss=sampled``, per seed, after the same epochs: sampled should match full within seed noise.

The dataset folder needs ``temarec features`` and ``temarec tags`` outputs for TEMA's default modalities
(or pass ``--set model.tema.modalities=id,txt`` and the like).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("bench_tema")


def train(dataset: str, out: Path, settings: list[str]) -> dict[str, Any]:
    """One ``temarec train`` run in a fresh process (reused when finished); returns its metrics.json."""
    metrics = out / "metrics.json"
    if not metrics.is_file():
        if out.exists():
            raise SystemExit(f"{out} exists but is unfinished; delete it and rerun")
        cmd = [sys.executable, "-m", "temarec", "train", "--dataset", dataset, "--out", str(out)]
        for s in settings:
            cmd += ["--set", s]
        log.info("training %s", out.name)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{out.name} failed:\n{done.stderr[-4000:]}")
    return json.loads(metrics.read_text())


def valid_mrr(metrics: dict[str, Any]) -> float:
    values = [m["mrr"] for m in metrics["valid"]["sampled"].values()]
    return 100 * sum(values) / len(values)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--timing-epochs", type=int, default=2, help="epochs of the timing runs (median reported)")
    p.add_argument("--epochs", type=int, default=10, help="epochs of the sampled-vs-full runs")
    p.add_argument("--seeds", default="0,1", help="seeds of the sampled-vs-full runs")
    p.add_argument("--threads", type=int, default=0, help="train.threads (0 = torch default)")
    p.add_argument("--skip-loss", action="store_true", help="timing and memory only")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override for every run")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    common = [f"train.threads={args.threads}", *args.set]

    timing = {}
    for model in ("sasrec", "tema"):
        m = train(args.dataset, out / "runs" / f"timing-{model}",
                  [f"model.name={model}", f"train.epochs={args.timing_epochs}", "train.patience=1000", *common])
        timing[model] = {"epoch_s": m["timing"]["epoch_s_median"], "peak_rss_mb": m["timing"]["peak_rss_mb"],
                         "valid_mrr": valid_mrr(m), "notes": m["protocol"].get("notes", "")}
    ratio = timing["tema"]["epoch_s"] / max(timing["sasrec"]["epoch_s"], 1e-9)
    result: dict[str, Any] = {"dataset": str(Path(args.dataset).resolve()), "settings": common, "timing": timing,
                              "epoch_ratio_tema_over_sasrec": round(ratio, 2)}

    if not args.skip_loss:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        losses: dict[str, dict[int, dict[str, Any]]] = {"full": {}, "sampled": {}}
        for loss in losses:
            for seed in seeds:
                m = train(args.dataset, out / "runs" / f"loss-{loss}-seed{seed}",
                          ["model.name=tema", f"model.loss={loss}", f"train.epochs={args.epochs}",
                           f"train.seed={seed}", *common])
                losses[loss][seed] = {"valid_mrr": valid_mrr(m), "epoch_s": m["timing"]["epoch_s_median"],
                                      "selected_epoch": m["selected_epoch"]}
        result["loss"] = losses
    (out / "bench_tema.json").write_text(json.dumps(result, indent=2))
    (out / "bench_tema.md").write_text(format_md(result))
    print(format_md(result), end="")
    return 0


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def format_md(result: dict[str, Any]) -> str:
    t = result["timing"]
    lines = [f"dataset: {result['dataset']}; overrides: {' '.join(result['settings'])}", "",
             "| model | epoch s (median) | peak RSS MB | valid MRR % (after the timing epochs) |", "|---|---|---|---|"]
    for model, row in t.items():
        lines.append(f"| {model} | {row['epoch_s']:.2f} | {row['peak_rss_mb']:.0f} | {row['valid_mrr']:.2f} |")
    lines += ["", f"TEMA / SASRec epoch time: {result['epoch_ratio_tema_over_sasrec']:.2f}x (target <= 3x); "
                  f"TEMA notes: {t['tema']['notes']}"]
    if "loss" in result:
        lines += ["", "| TEMA loss | valid MRR % per seed | mean ± std | epoch s | selected epochs |",
                  "|---|---|---|---|---|"]
        for loss, by_seed in result["loss"].items():
            mrrs = [r["valid_mrr"] for r in by_seed.values()]
            lines.append(f"| {loss} | {', '.join(f'{v:.2f}' for v in mrrs)} | {_mean_std(mrrs)} | "
                         f"{statistics.median(r['epoch_s'] for r in by_seed.values()):.2f} | "
                         f"{', '.join(str(r['selected_epoch']) for r in by_seed.values())} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
