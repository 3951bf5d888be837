"""Where a served request's CPU goes, without HTTP: the model's parts and the rest of ``Recommender.answer``.

    python benchmarks/serve_profile.py --run RUN [--requests 256] [--batch-sizes 1,16] [--repeats 3] [--json out.json]

Requests replay the test split of the run's dataset (as load_test.py's), k = 10, explanations on. For each batch
size, CPU ms per request (``time.process_time``, one torch thread; median over ``--repeats`` passes) of the whole
``Recommender.answer`` and of its parts on the same rows, each timed alone:

* SASRec / GRU4Rec: ``encoder`` (the state module), ``products`` (state @ item matrix), ``top-k``;
* TEMA, for both ways of scoring it, ``score_parts`` (the model's, served before serve/fused.py) and ``fused``
  (serve/fused.py): ``encoders`` (``final_states``), ``products`` (the heads' (rows, D) @ (D, N) products alone:
  nine per batch for score_parts, three for fused), ``normalisers`` (the rest of the heads: softmax normalisers
  and the fused log-score), ``top-k``, ``explanations`` (``explain`` reusing the scoring pass);
* ``other``: the rest of ``answer``: resolving ids, padding, masking seen items, building the answer dicts.

HTTP (uvicorn, FastAPI, JSON) is not in here: load_test.py's server CPU per request minus this total is its cost.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import sample_requests  # noqa: E402

log = logging.getLogger("serve_profile")


def head_products(model, history, domain: int, per_modality: bool) -> None:
    """The heads' products alone: one per (view, modality) as ``score_parts``, or one per modality as fused."""
    h = model.scaled(model.final_states(history))  # (V, M, B, D), outside the timing below
    cand = model.domain_candidates(domain)  # (M, N, D)
    log_w = model.log_head_weights(domain)  # (V, M)
    heads = [[v for v in range(h.shape[0]) if log_w[v, m] > -math.inf] for m in range(h.shape[1])]
    c = time.process_time()
    for m, views in enumerate(heads):
        if per_modality and views:
            h[views, m].reshape(-1, h.shape[-1]) @ cand[m].T
        elif not per_modality:
            for v in views:
                h[v, m] @ cand[m].T
    return time.process_time() - c


def profile_pass(rec, reqs: list[dict], batch: int, path: str) -> dict[str, float]:
    """CPU ms per request of ``answer`` and its parts, batches of ``batch`` requests; ``path`` is ``fused`` or
    ``score_parts`` for TEMA, ``factorized`` for SASRec / GRU4Rec."""
    import torch

    from temarec.serve.recommender import Query

    model, cpu, total = rec.model, {}, 0.0
    fused = rec._fused

    def timed(name: str, f, *args, **kwargs):
        c = time.process_time()
        out = f(*args, **kwargs)
        cpu[name] = cpu.get(name, 0.0) + time.process_time() - c
        return out

    if path == "score_parts":
        rec._fused = None  # answer() then scores through the model's own score_parts, as before serve/fused.py
    try:
        for s in range(0, len(reqs), batch):
            chunk = reqs[s:s + batch]
            c = time.process_time()
            rec.answer([Query(r["history"], r["domain"], r["k"]) for r in chunk])
            total += time.process_time() - c
            for d, name in enumerate(rec.domains):
                rows = [h for h in (rec._resolve(r["history"], False)[0] for r in chunk if r["domain"] == name) if h]
                if not rows:
                    continue
                hist = rec._history_tensor(rows)
                with torch.inference_mode():
                    if path == "factorized":
                        state = timed("encoders", rec._fact.state, hist)
                        scores = timed("products", torch.matmul, state, rec._fact.items[d].T)
                        timed("top-k", torch.topk, scores, chunk[0]["k"], dim=1)
                        continue
                    timed("encoders", model.final_states, hist)
                    score = fused if path == "fused" else model.score_parts
                    scores, parts = timed("heads", score, hist, d)
                    cpu["products"] = cpu.get("products", 0.0) + head_products(model, hist, d, path == "fused")
                    local = timed("top-k", torch.topk, scores, chunk[0]["k"], dim=1).indices.tolist()
                    timed("explanations", model.explain, hist, d, local, parts=parts)
    finally:
        rec._fused = fused
    if "heads" in cpu:  # the heads' time holds their own encoder pass and products
        cpu["normalisers"] = cpu.pop("heads") - cpu["encoders"] - cpu["products"]
    per = {k: 1000 * v / len(reqs) for k, v in cpu.items()}
    per["other"] = 1000 * total / len(reqs) - sum(per.values())
    per["total"] = 1000 * total / len(reqs)
    return per


def profile(rec, reqs: list[dict], batch: int, path: str, repeats: int) -> dict[str, float]:
    passes = [profile_pass(rec, reqs, batch, path) for _ in range(repeats)]
    return {k: round(statistics.median(p[k] for p in passes), 3) for k in passes[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from temarec.serve.recommender import Recommender

    torch.set_num_threads(1)
    rec = Recommender.load(args.run, threads=1)
    paths = ["factorized"] if rec._fact is not None else ["score_parts", "fused"] if rec._fused else []
    if not paths:
        raise SystemExit(f"{rec.model_name} is served through score_domain; this script profiles SASRec / GRU4Rec "
                         "(factorized) and TEMA")
    reqs = sample_requests(args.run, args.requests + 16, args.k)
    result = {"run": args.run, "model": rec.model_name, "data": rec.dataset_name, "requests": args.requests,
              "load_average_start": os.getloadavg(), "cpu_ms_per_request": {}}
    for path in paths:
        profile_pass(rec, reqs[:16], 16, path)  # warm-up: caches, allocator
    for b in (int(x) for x in args.batch_sizes.split(",")):
        for path in paths:
            figures = profile(rec, reqs[16:], b, path, args.repeats)
            result["cpu_ms_per_request"][f"{path}/{b}"] = figures
            print(f"{rec.model_name} ({path}), batches of {b}: CPU ms per request "
                  + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    result["load_average_end"] = os.getloadavg()
    print(f"load average {' '.join(f'{x:.1f}' for x in result['load_average_start'])} -> "
          f"{' '.join(f'{x:.1f}' for x in result['load_average_end'])} on {os.cpu_count()} CPUs")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
