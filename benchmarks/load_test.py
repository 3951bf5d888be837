"""Throughput and latency of the HTTP service under concurrent load.

    python benchmarks/load_test.py --run runs/sasrec [--requests 10000] [--concurrency 16] [--threads 1]
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --run runs/sasrec   # a server already running

Starts ``temarec serve`` on a free port (a separate process), waits for /health, then sends ``--requests``
POST /recommend from this process with ``--concurrency`` requests in flight (httpx, asyncio). Bodies replay the
test split of the run's dataset (see bench_serve.py). Prints requests/s, p50/p90/p99 latency and the error count
(any status other than 200, or a transport error).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import percentiles, sample_requests  # noqa: E402

log = logging.getLogger("load_test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: str, port: int, threads: int | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "temarec", "serve", "--run", run, "--port", str(port)]
    if threads:
        cmd += ["--threads", str(threads)]
    log.info("starting %s", " ".join(cmd))
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to report the server's cost per request."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout_s: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}:\n{proc.stderr.read().decode()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"no healthy server at {url} after {timeout_s:.0f} s")


async def load(url: str, bodies: list[bytes], concurrency: int) -> tuple[list[float], int, float]:
    import httpx

    latencies: list[float] = []
    errors = 0
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors, next_index
        while next_index < len(bodies):
            body = bodies[next_index]
            next_index += 1
            t = time.perf_counter()
            try:
                r = await client.post("/recommend", content=body, headers=headers)
                ok = r.status_code == 200
            except httpx.HTTPError as exc:
                log.debug("request failed: %s", exc)
                ok = False
            latencies.append((time.perf_counter() - t) * 1000)
            errors += not ok

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return latencies, errors, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder (served, and the source of request bodies)")
    parser.add_argument("--url", help="load an already running server instead of starting one")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, help="the server's torch intra-op threads")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request would load the client

    bodies = [json.dumps(r).encode() for r in sample_requests(args.run, args.requests + args.warmup, args.k)]
    proc = None
    url = args.url
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(args.run, port, args.threads)
    try:
        wait_healthy(url, proc)
        asyncio.run(load(url, bodies[:args.warmup], min(args.concurrency, args.warmup)))
        cpu0 = cpu_seconds(proc.pid) if proc is not None else None
        latencies, errors, elapsed = asyncio.run(load(url, bodies[args.warmup:], args.concurrency))
        server_cpu = cpu_seconds(proc.pid) - cpu0 if proc is not None else None
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    result = {"url": url, "run": str(args.run), "requests": len(latencies), "concurrency": args.concurrency,
              "errors": errors, "seconds": round(elapsed, 2), "rps": round(len(latencies) / elapsed, 1),
              "cpus": os.cpu_count(), "load_average": os.getloadavg()[0],
              "server_cpu_ms_per_request": round(1000 * server_cpu / len(latencies), 3) if server_cpu else None,
              **{k: round(v, 2) for k, v in percentiles(latencies).items()}}
    print(f"{result['requests']} requests, {args.concurrency} concurrent, against {url}: {result['rps']:.0f} req/s, "
          f"p50 {result['p50_ms']:.1f} ms  p90 {result['p90_ms']:.1f} ms  p99 {result['p99_ms']:.1f} ms, "
          f"{errors} errors, {elapsed:.1f} s")
    if result["server_cpu_ms_per_request"]:
        print(f"server CPU time per request: {result['server_cpu_ms_per_request']:.2f} ms; "
              f"machine load average {result['load_average']:.1f} on {os.cpu_count()} CPUs")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
