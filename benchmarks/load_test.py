"""Throughput and latency of the HTTP service under concurrent load.

    python benchmarks/load_test.py --run runs/sasrec [--requests 10000] [--concurrency 16] [--threads 1]
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --run runs/sasrec   # a server already running
    python benchmarks/load_test.py --run runs/sasrec --baseline-src ../old/src --serve-args "--workers 2"

Starts ``temarec serve`` on a free port (a separate process), waits for /health, then sends ``--requests``
POST /recommend from this process with ``--concurrency`` requests in flight (asyncio). Bodies replay the
test split of the run's dataset (see bench_serve.py).

``--client raw`` (default) writes each request's bytes on one of ``--concurrency`` keep-alive HTTP/1.1
connections and reads the status line, the headers and the whole body (Content-Length); a request counts as an
error unless the status is 200. It costs ~0.1 ms of CPU per request, where ``--client httpx`` costs ~1.4 ms: on a
2-core machine httpx's client took most of a core at 700 req/s and its own queueing showed up as server latency. Prints requests/s, p50/p90/p99 latency and the error count
(any status other than 200, or a transport error), the server's and this client's CPU time per request, and the
machine's load average.

``--baseline-src DIR`` (repeatable) first serves the same run from another source tree (``PYTHONPATH=DIR``, e.g. a
checkout of an older commit) with the same bodies, so that the paths are measured side by side in one invocation;
``--serve-args`` are extra ``temarec serve`` flags of the current tree's server only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shlex
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


def start_server(run: str, port: int, threads: int | None, src: str | None = None,
                 extra: list[str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "temarec", "serve", "--run", run, "--port", str(port), *(extra or [])]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = str(Path(src).resolve())
    log.info("starting %s%s", f"PYTHONPATH={src} " if src else "", " ".join(cmd))
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (Linux /proc): the server's cost per request
    (``--workers N`` servers score in child processes)."""
    total = 0.0
    for p in [pid, *_descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        out += children
        todo += children
    return out


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


async def load(url: str, bodies: list[bytes], concurrency: int, client: str = "raw") -> tuple[list[float], int, float]:
    """(latencies in ms, errors, seconds) of POSTing every body to /recommend, ``concurrency`` in flight."""
    if client == "raw":
        return await load_raw(url, bodies, concurrency)
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


async def load_raw(url: str, bodies: list[bytes], concurrency: int) -> tuple[list[float], int, float]:
    """``load`` over plain keep-alive HTTP/1.1 connections (asyncio streams): the least client CPU per request."""
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    latencies: list[float] = []
    errors = 0
    next_index = 0
    head = f"POST /recommend HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n".encode()

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> bool:
        writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        header = await reader.readuntil(b"\r\n\r\n")
        lines = header.split(b"\r\n")
        length = next((int(v) for k, _, v in (line.partition(b":") for line in lines[1:])
                       if k.strip().lower() == b"content-length"), None)
        if length is None:  # every answer of the service has a Content-Length
            raise ConnectionError(f"no Content-Length in {header[:200]!r}")
        await reader.readexactly(length)
        return lines[0].split(b" ", 2)[1] == b"200"

    async def worker() -> None:
        nonlocal errors, next_index
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while next_index < len(bodies):
                body = bodies[next_index]
                next_index += 1
                t = time.perf_counter()
                try:
                    ok = await asyncio.wait_for(one(reader, writer, body), timeout=30.0)  # httpx's timeout
                except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                    log.debug("request failed: %s", exc)
                    ok = False
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                latencies.append((time.perf_counter() - t) * 1000)
                errors += not ok
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - t0


def run_async(coro):
    """``asyncio.run`` on uvloop when it is installed (the server's loop too), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def measure(label: str, args: argparse.Namespace, bodies: list[bytes], src: str | None = None,
            extra: list[str] | None = None) -> dict:
    """Start one server (or use ``--url``), warm it up, load it, stop it; the figures of that server."""
    proc, mean_batch = None, None
    url = args.url
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(args.run, port, args.threads, src, extra)
    try:
        wait_healthy(url, proc)
        run_async(load(url, bodies[:args.warmup], min(args.concurrency, args.warmup), args.client))
        cpu0 = cpu_seconds(proc.pid) if proc is not None else None
        client0 = time.process_time()
        latencies, errors, elapsed = run_async(load(url, bodies[args.warmup:], args.concurrency, args.client))
        client_cpu = time.process_time() - client0
        server_cpu = cpu_seconds(proc.pid) - cpu0 if proc is not None else None
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                _, stderr = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                stderr = b""
            # the server logs "scored Q queries in B micro-batches (M per batch)" on shutdown: keep the mean
            batched = re.findall(rb"micro-batches \(([0-9.]+) per batch\)", stderr)
            mean_batch = float(batched[-1]) if batched else None
    result = {"label": label, "url": url, "run": str(args.run), "src": src, "serve_args": extra or [],
              "client": args.client, "mean_batch": mean_batch,
              "requests": len(latencies), "concurrency": args.concurrency,
              "errors": errors, "seconds": round(elapsed, 2), "rps": round(len(latencies) / elapsed, 1),
              "cpus": os.cpu_count(), "load_average": os.getloadavg(),
              "server_cpu_ms_per_request": round(1000 * server_cpu / len(latencies), 3) if server_cpu else None,
              "client_cpu_ms_per_request": round(1000 * client_cpu / len(latencies), 3),
              **{k: round(v, 2) for k, v in percentiles(latencies).items()}}
    print(f"[{label}] {result['requests']} requests, {args.concurrency} concurrent, {args.client} client, against {url}: "
          f"{result['rps']:.0f} req/s, p50 {result['p50_ms']:.1f} ms  p90 {result['p90_ms']:.1f} ms  "
          f"p99 {result['p99_ms']:.1f} ms, {errors} errors, {elapsed:.1f} s")
    if result["server_cpu_ms_per_request"]:
        print(f"[{label}] CPU time per request: server {result['server_cpu_ms_per_request']:.2f} ms, client "
              f"{result['client_cpu_ms_per_request']:.2f} ms; {mean_batch or '?'} requests per micro-batch; load average "
              f"{' '.join(f'{x:.1f}' for x in result['load_average'])} on {os.cpu_count()} CPUs")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder (served, and the source of request bodies)")
    parser.add_argument("--url", help="load an already running server instead of starting one")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, help="the server's torch intra-op threads")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="raw: keep-alive HTTP/1.1 over asyncio streams (~0.1 ms CPU per request); httpx: "
                             "httpx.AsyncClient (~1.4 ms), the client of the earlier figures")
    parser.add_argument("--baseline-src", action="append", default=[],
                        help="first serve the run from this source tree (PYTHONPATH), same load; repeatable")
    parser.add_argument("--serve-args", default="", help="extra `temarec serve` flags of the current server")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request would load the client
    if args.url and args.baseline_src:
        raise SystemExit("--baseline-src starts its own server; leave out --url")

    bodies = [json.dumps(r).encode() for r in sample_requests(args.run, args.requests + args.warmup, args.k)]
    results = []
    for i, src in enumerate(args.baseline_src):
        label = "baseline" if len(args.baseline_src) == 1 else f"baseline {i + 1}"
        results.append(measure(label, args, bodies, src=src))
    results.append(measure("current", args, bodies, extra=shlex.split(args.serve_args)))
    if args.json:
        Path(args.json).write_text(json.dumps(results if len(results) > 1 else results[0], indent=2))


if __name__ == "__main__":
    main()
