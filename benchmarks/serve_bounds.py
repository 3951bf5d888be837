"""What the CPU allows serving at most: this machine's matmul rate and the least CPU time a request can cost.

    python benchmarks/serve_bounds.py [--items 64093,34886] [--dim 64] [--batches 1,16,64] [--json out.json]

Measured on random tensors of the serving shapes (no run needed), median of ``--repeats``:

* peak: float32 (2048 x 2048) @ (2048 x 2048), 1 and 2 torch threads (GFLOP/s by wall time, and by CPU time,
  which counts both threads' cycles: the cost that capacity is made of);
* the scoring product (b x D) @ (D x N) at each batch size b, item count N and thread count;
* the kernels a request cannot do without, on one thread: top-k over (b, N); for TEMA (V x M = 9 heads) the
  nine products, nine exponentials over (b, N) (each head's softmax normaliser needs every item's exp) and one log
  over (b, N) (the fused score is the log of a weighted sum of the heads' probabilities, eq. 16).

The floors per request: SASRec = product + top-k; TEMA = 9 products + 9 exps + 1 log + top-k, each divided by
b. The encoders are left out (on histories of ~9 items they are ~1 MFLOP per encoder, ~1% of the scoring
product's FLOPs); so are parsing, JSON and HTTP. A floor is what no implementation of these scores on this CPU
can beat; ``2 cores`` is 2000 ms / floor, the most requests per second both cores could answer doing nothing else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path

log = logging.getLogger("serve_bounds")

TEMA_HEADS = 9  # V views x M modalities (id, text, tag) of the C2DSR stand-in run


def timed(f, repeats: int, inner: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one call of ``f``: median over ``repeats`` timings of ``inner`` calls each."""
    f()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        for _ in range(inner):
            f()
        walls.append((time.perf_counter() - w) / inner)
        cpus.append((time.process_time() - c) / inner)
    return statistics.median(walls), statistics.median(cpus)


def peak(threads: int, repeats: int, n: int = 2048) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    wall, cpu = timed(lambda: a @ b, repeats, 2)
    return {"gflops_wall": 2 * n ** 3 / wall / 1e9, "gflops_cpu": 2 * n ** 3 / cpu / 1e9}


def scoring_product(b: int, dim: int, n: int, threads: int, repeats: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    h, items = torch.randn(b, dim), torch.randn(n, dim)
    wall, cpu = timed(lambda: h @ items.T, repeats, max(1, 64 // b))
    flops = 2 * b * dim * n
    return {"ms_wall": 1000 * wall, "ms_cpu": 1000 * cpu, "gflops_wall": flops / wall / 1e9,
            "gflops_cpu": flops / cpu / 1e9}


def kernels(b: int, dim: int, n: int, k: int, repeats: int) -> dict[str, float]:
    """CPU ms of one call of each kernel at batch ``b`` on one thread."""
    import torch

    torch.set_num_threads(1)
    h, items, z = torch.randn(b, dim), torch.randn(n, dim), torch.randn(b, n)
    out = torch.empty(b, n)
    inner = max(1, 64 // b)
    ms = {"product": timed(lambda: torch.matmul(h, items.T, out=out), repeats, inner)[1],
          "exp": timed(lambda: torch.exp(z, out=out), repeats, inner)[1],
          "log": timed(lambda: torch.log(z.abs(), out=out), repeats, inner)[1] - timed(
              lambda: torch.abs(z, out=out), repeats, inner)[1],
          "top-k": timed(lambda: torch.topk(z, k, dim=1), repeats, inner)[1]}
    return {name: 1000 * max(v, 0.0) for name, v in ms.items()}


def floors(kern: dict[str, float], b: int) -> dict[str, float]:
    """CPU ms per request of SASRec's and TEMA's scoring at batch ``b`` (see the module docstring)."""
    sasrec = kern["product"] + kern["top-k"]
    tema = TEMA_HEADS * (kern["product"] + kern["exp"]) + kern["log"] + kern["top-k"]
    return {"sasrec_ms": sasrec / b, "tema_ms": tema / b}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", default="64093,34886", help="item counts N (C2DSR: 64,093 in all, Kitchen 34,886)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ns = [int(x) for x in args.items.split(",")]
    bs = [int(x) for x in args.batches.split(",")]

    result: dict = {"cpus": os.cpu_count(), "load_average_start": os.getloadavg(), "dim": args.dim,
                    "peak": {t: peak(t, args.repeats) for t in (1, 2)}, "product": {}, "kernels": {}, "floors": {}}
    for t, p in result["peak"].items():
        log.info("peak (2048^3 float32), %d thread(s): %.1f GFLOP/s by wall time, %.1f GFLOP/s of CPU time", t,
                 p["gflops_wall"], p["gflops_cpu"])
    log.info("\n| N | b | threads | product ms (wall) | GFLOP/s (wall) | GFLOP/s (CPU) |\n|---:|---:|---:|---:|---:|---:|")
    for n in ns:
        for b in bs:
            for t in (1, 2):
                r = scoring_product(b, args.dim, n, t, args.repeats)
                result["product"][f"{n}/{b}/{t}"] = r
                log.info("| %d | %d | %d | %.3f | %.1f | %.1f |", n, b, t, r["ms_wall"], r["gflops_wall"],
                         r["gflops_cpu"])
    log.info("\n| N | b | product | exp | log | top-%d | SASRec floor / request | TEMA floor / request | "
             "2 cores: SASRec req/s | 2 cores: TEMA req/s |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             args.k)
    for n in ns:
        for b in bs:
            kern = kernels(b, args.dim, n, args.k, args.repeats)
            fl = floors(kern, b)
            result["kernels"][f"{n}/{b}"], result["floors"][f"{n}/{b}"] = kern, fl
            log.info("| %d | %d | %.3f | %.3f | %.3f | %.3f | %.3f ms | %.3f ms | %.0f | %.0f |", n, b,
                     kern["product"], kern["exp"], kern["log"], kern["top-k"], fl["sasrec_ms"], fl["tema_ms"],
                     2000 / fl["sasrec_ms"], 2000 / fl["tema_ms"])
    result["load_average_end"] = os.getloadavg()
    log.info("\nload average %s -> %s on %d CPUs (kernel times are CPU ms of one call, one thread)",
             " ".join(f"{x:.1f}" for x in result["load_average_start"]),
             " ".join(f"{x:.1f}" for x in result["load_average_end"]), os.cpu_count())
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
