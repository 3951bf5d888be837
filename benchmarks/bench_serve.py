"""Latency of the Python API (``Recommender.recommend``) on a trained run, one request at a time.

    python benchmarks/bench_serve.py --run runs/sasrec [--requests 1000] [--k 10] [--threads 2] [--json out.json]

Requests replay the test split of the run's dataset: each history (the data's item ids, most recent last) asks for
the domain of its test target, as a served model would be asked. Prints p50/p90/p99/mean latency in ms, and the
throughput of the batch form (64 histories per call) for comparison.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("bench_serve")


def sample_requests(run_dir: str | Path, n: int, k: int = 10, seed: int = 0) -> list[dict]:
    """``n`` request bodies {history, domain, k} replayed from the test split of the run's dataset."""
    from temarec.runs import dataset_root

    root = dataset_root(Path(run_dir))
    items = pd.read_parquet(root / "items.parquet", columns=["item"])["item"].astype(str).to_numpy()
    test = pd.read_parquet(root / "test.parquet", columns=["history", "domain"])
    domains = json.loads((root / "manifest.json").read_text())["domains"]
    rows = np.random.default_rng(seed).integers(0, len(test), size=n)
    return [{"history": items[np.asarray(test["history"].iat[r], dtype=np.int64)].tolist(),
             "domain": domains[int(test["domain"].iat[r])], "k": k} for r in rows]


def percentiles(ms: list[float]) -> dict[str, float]:
    arr = np.asarray(ms)
    return {"p50_ms": float(np.percentile(arr, 50)), "p90_ms": float(np.percentile(arr, 90)),
            "p99_ms": float(np.percentile(arr, 99)), "mean_ms": float(arr.mean()), "max_ms": float(arr.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder written by `temarec train`")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default 1, as `temarec serve`)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from temarec.serve.recommender import Recommender, default_threads

    t0 = time.perf_counter()
    rec = Recommender.load(args.run, threads=args.threads or default_threads())
    load_s = time.perf_counter() - t0
    reqs = sample_requests(args.run, args.requests + args.warmup, args.k)
    for r in reqs[:args.warmup]:
        rec.recommend(r["history"], r["domain"], k=r["k"])
    latencies, cpu = [], []  # wall clock, and this thread's CPU time (what the request costs on an idle core)
    for r in reqs[args.warmup:]:
        t, c = time.perf_counter(), time.thread_time()
        rec.recommend(r["history"], r["domain"], k=r["k"])
        latencies.append((time.perf_counter() - t) * 1000)
        cpu.append((time.thread_time() - c) * 1000)
    batch, t = reqs[args.warmup:], time.perf_counter()
    for start in range(0, len(batch), 64):
        chunk = batch[start:start + 64]
        rec.recommend_batch([r["history"] for r in chunk], [r["domain"] for r in chunk], k=args.k)
    batch_rps = len(batch) / (time.perf_counter() - t)
    result = {"run": str(args.run), "model": rec.model_name, "data": rec.dataset_name,
              "items": dict(zip(rec.domains, (len(rec.item_ids(d)) for d in rec.domains))),
              "requests": len(latencies), "k": args.k, "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "load_s": round(load_s, 2),
              "history_len_mean": statistics.fmean(len(r["history"]) for r in batch),
              **{key: round(v, 3) for key, v in percentiles(latencies).items()},
              **{f"cpu_{key}": round(v, 3) for key, v in percentiles(cpu).items()},
              "load_average": os.getloadavg()[0],
              "single_rps": round(1000 / statistics.fmean(latencies), 1), "batch64_rps": round(batch_rps, 1)}
    print(f"{result['model']} on {result['data']}")
    print(f"{result['requests']} single requests (k={args.k}, {result['threads']} threads): "
          f"p50 {result['p50_ms']:.2f} ms  p90 {result['p90_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms  "
          f"mean {result['mean_ms']:.2f} ms  ({result['single_rps']:.0f}/s);  batches of 64: "
          f"{result['batch64_rps']:.0f} histories/s;  load {result['load_s']:.1f} s")
    print(f"CPU time per request (thread): p50 {result['cpu_p50_ms']:.2f} ms  p99 {result['cpu_p99_ms']:.2f} ms; "
          f"machine load average {result['load_average']:.1f} on {os.cpu_count()} CPUs")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
