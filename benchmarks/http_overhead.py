"""The HTTP stack's own CPU per request: the service with every answer replaced by one precomputed answer.

    python benchmarks/http_overhead.py --run RUN [--requests 2000] [--concurrency 16]

Starts a server process on RUN (uvicorn, FastAPI, the micro-batcher: what ``temarec serve`` runs) whose
``Recommender.answer`` returns one answer computed at start-up for every query, so no model runs while it is loaded;
sends the requests of load_test.py (raw client) and prints the server's CPU time per request: parsing,
validation, routing, the hand-off to the batcher's thread, JSON and the HTTP response. load_test.py's server CPU per
request minus this is the model's part.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import sample_requests  # noqa: E402
from load_test import cpu_seconds, free_port, load_raw, run_async, wait_healthy  # noqa: E402

SERVER = """
import sys
import uvicorn
from temarec.serve.app import create_app
from temarec.serve.recommender import Recommender

run, port = sys.argv[1], int(sys.argv[2])
rec = Recommender.load(run, threads=1)
domain = rec.domains[1]
canned = rec.recommend([rec.item_ids(domain)[0]], domain, k=10)  # explanations included when the model gives them
rec.answer = lambda queries: [canned for _ in queries]
uvicorn.run(create_app(rec), host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-c", SERVER, args.run, str(port)], stderr=subprocess.PIPE)
    try:
        wait_healthy(url, proc)
        bodies = [json.dumps(r).encode() for r in sample_requests(args.run, args.requests + args.warmup, 10)]
        run_async(load_raw(url, bodies[:args.warmup], args.concurrency))
        cpu0 = cpu_seconds(proc.pid)
        latencies, errors, seconds = run_async(load_raw(url, bodies[args.warmup:], args.concurrency))
        cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    print(f"HTTP stack with a canned answer: {len(latencies) / seconds:.0f} req/s, server CPU "
          f"{1000 * cpu / len(latencies):.3f} ms per request, {errors} errors; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
