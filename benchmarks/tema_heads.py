"""Which of TEMA's heads predict: validation MRR of the fused score, of each view, of each modality, of each head.

    python benchmarks/tema_heads.py --run RUN_DIR [--split valid] [--out heads.json]

RUN_DIR is a finished ``temarec train --model tema`` run. Each row ranks the split's instances (the stored
negatives, the sampled protocol; and the full ranking) with one part of eq. (16):

- ``fused``: the model's own score, sum_V w_V sum_m alpha_m P_m^V;
- ``view V``: sum_m alpha_m P_m^V, one view's mixture over modalities;
- ``modality m``: sum_V w_V P_m^V, one modality's heads over the views;
- ``head V/m``: P_m^V alone;
- with ``--view-weights own:other:merged,...`` instead of the view/modality/head rows: the fused score with other
  view weights than the config's (1, lambda1, lambda2), the trained model re-weighted at inference only.

A diagnostic for researchers (is the ID head as good as SASRec? does the merged view carry the signal?), not a
benchmark of speed. Use the validation split for decisions; the test split is for reporting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from temarec.evaluation import evaluate
from temarec.models.tema import TEMA, view_weights
from temarec.runs import load_run


class HeadMix(torch.nn.Module):
    """Scores with sum over the kept (view, modality) heads of weight * P_m^V; the weights of the rest are 0."""

    name = "tema-heads"

    def __init__(self, model: TEMA, keep_views: list[int], keep_modalities: list[int],
                 reweight: tuple[float, float, float] | None = None):
        super().__init__()
        self.model, self.keep_views, self.keep_modalities = model, keep_views, keep_modalities
        self.reweight = reweight  # (own, other, merged) replacing (1, lambda1, lambda2)

    def score_domain(self, history: torch.Tensor, domain: int) -> torch.Tensor:
        heads = self.model.head_log_probs(history, domain)  # (V, M, B, N)
        weights = None
        if self.reweight:
            own, other, merged = self.reweight
            weights = view_weights("multi", "target", (other, merged), domain, x_weight=own)
        return self.model.fuse_heads(heads, domain, self.keep_views, self.keep_modalities, weights)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="finished `temarec train --model tema` run folder")
    p.add_argument("--split", default="valid", choices=["valid", "test"])
    p.add_argument("--out", help="also write the rows as JSON here")
    p.add_argument("--view-weights", help="instead of the per-head rows: the fused score with these view weights, "
                                          "own:other:merged triples separated by commas, e.g. 1:0.3:0.1,0:0:1")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model, dataset, cfg = load_run(args.run)
    if not isinstance(model, TEMA):
        raise SystemExit(f"{args.run} is a {model.name} run; this diagnostic needs a tema run")
    views = ["X (own domain)", "Y (other domain)", "X+Y (merged)"] if model.n_views == 3 else ["X+Y (merged)"]
    all_v, all_m = list(range(model.n_views)), list(range(len(model.modalities)))
    parts: list[tuple[str, list[int], list[int], Any]] = [("fused", all_v, all_m, None)]
    if args.view_weights:
        if model.n_views != 3 or model.cfg.view_reading != "target":
            raise SystemExit("--view-weights needs a three-view run with model.tema.view_reading=target")
        try:
            triples = [tuple(float(x) for x in t.split(":")) for t in args.view_weights.split(",")]
        except ValueError:
            triples = []
        if not triples or any(len(t) != 3 or min(t) < 0 or max(t) <= 0 for t in triples):
            raise SystemExit(f"--view-weights wants own:other:merged triples of weights >= 0, not all 0, "
                             f"separated by commas (e.g. 1:0.3:0.1,0:0:1); got {args.view_weights!r}")
        parts += [(f"views own:other:merged = {':'.join(f'{x:g}' for x in t)}", all_v, all_m, t) for t in triples]
    else:
        parts += [(f"view {views[v]}", [v], all_m, None) for v in all_v]
        parts += [(f"modality {name}", all_v, [i], None) for i, name in enumerate(model.modalities)]
        parts += [(f"head {views[v]} / {name}", [v], [i], None)
                  for v in all_v for i, name in enumerate(model.modalities)]
    rows: list[dict[str, Any]] = []
    print(f"# {args.run}: {args.split} MRR (%), sampled protocol / full ranking; {cfg.model.settings.view_reading} reading")
    print("| part | " + " | ".join(f"{d} sampled | {d} full" for d in dataset.domains) + " |")
    print("|---|" + "---:|" * (2 * len(dataset.domains)))
    for label, keep_v, keep_m, weights in parts:
        metrics = evaluate(HeadMix(model, keep_v, keep_m, weights), dataset, args.split, cfg.eval, cfg.data.max_len)
        row = {"part": label, **{f"{d} {proto}": 100 * metrics[proto][d]["mrr"]
                                 for d in dataset.domains for proto in ("sampled", "full")}}
        rows.append(row)
        print(f"| {label} | " + " | ".join(f"{row[f'{d} sampled']:.2f} | {row[f'{d} full']:.2f}"
                                         for d in dataset.domains) + " |", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"run": str(args.run), "split": args.split, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
