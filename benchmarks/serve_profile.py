"""Where a served request's CPU goes, without HTTP: the model's parts and the rest of ``Recommender.answer``.

    python benchmarks/serve_profile.py --run RUN [--requests 256] [--batch-sizes 1,16] [--json out.json]

Requests replay the test split of the run's dataset (as load_test.py's). For each batch size, the CPU time per
request (``time.process_time``, one torch thread) of the whole ``Recommender.answer`` path and of its parts on the
same rows: for TEMA the encoders (``final_states``), the heads (``score_parts`` minus the encoders) and the
explanations (``explain`` reusing the scoring pass); for SASRec / GRU4Rec the encoder and the ``state @ items``
product. "other" is the rest: resolving ids, padding, top-k, building the answer. Also prints this machine's
single-thread float32 matmul rate (2048^3), the peak that the scoring products are measured against.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import sample_requests  # noqa: E402

log = logging.getLogger("serve_profile")


def peak_gflops(n: int = 2048, reps: int = 3) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    c = time.process_time()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.process_time() - c) / 1e9


def profile(rec, reqs: list[dict], batch: int) -> dict[str, float]:
    import torch

    from temarec.serve.recommender import Query

    model, parts_cpu, total = rec.model, {}, 0.0

    def timed(name: str, f, *args, **kwargs):
        c = time.process_time()
        out = f(*args, **kwargs)
        parts_cpu[name] = parts_cpu.get(name, 0.0) + time.process_time() - c
        return out

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
                if rec._fact is not None:
                    state = timed("encoder", rec._fact.state, hist)
                    timed("state @ items", torch.matmul, state, rec._fact.items[d].T)
                elif hasattr(model, "score_parts"):
                    timed("encoders", model.final_states, hist)
                    scores, parts = timed("heads", model.score_parts, hist, d)
                    local = torch.topk(scores, chunk[0]["k"], dim=1).indices.tolist()
                    timed("explanations", model.explain, hist, d, local, parts=parts)
                else:
                    timed("score_domain", model.score_domain, hist, d)
    if "heads" in parts_cpu:
        parts_cpu["heads"] -= parts_cpu["encoders"]  # score_parts runs the encoders itself
    per = {k: 1000 * v / len(reqs) for k, v in parts_cpu.items()}
    per["other"] = 1000 * total / len(reqs) - sum(per.values())
    per["total"] = 1000 * total / len(reqs)
    return {k: round(v, 3) for k, v in per.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from temarec.serve.recommender import Recommender

    torch.set_num_threads(1)
    rec = Recommender.load(args.run, threads=1)
    reqs = sample_requests(args.run, args.requests + 16, args.k)
    profile(rec, reqs[:16], 16)  # warm-up: caches, allocator
    result = {"run": args.run, "model": rec.model_name, "data": rec.dataset_name, "requests": args.requests,
              "peak_gflops_1_thread": round(peak_gflops(), 1), "cpu_ms_per_request": {}}
    for b in (int(x) for x in args.batch_sizes.split(",")):
        result["cpu_ms_per_request"][b] = profile(rec, reqs[16:], b)
        print(f"{rec.model_name}, batches of {b}: CPU ms per request {result['cpu_ms_per_request'][b]}")
    result["load_average"] = os.getloadavg()
    print(f"single-thread matmul peak {result['peak_gflops_1_thread']} GFLOP/s; load average "
          f"{' '.join(f'{x:.1f}' for x in result['load_average'])} on {os.cpu_count()} CPUs")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
