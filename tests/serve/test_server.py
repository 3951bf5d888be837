"""`temarec serve` as a real uvicorn process: start, wait for /health, ask, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"no healthy server at {url} after {timeout_s} s")


@pytest.fixture(scope="module")
def server(trained_run):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "temarec", "serve", "--run", str(trained_run("sasrec")),
                             "--port", str(port), "--threads", "1", "--max-k", "20"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully on SIGINT
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_uvicorn_server_answers_and_refuses_bad_input(server):
    with httpx.Client(base_url=server, timeout=10.0) as c:
        r = c.post("/recommend", json={"history": ["F00001", "K01002"], "domain": "Kitchen", "k": 5})
        assert r.status_code == 200, r.text
        assert len(r.json()["items"]) == 5 and all(i["item"].startswith("K") for i in r.json()["items"])
        assert c.post("/recommend", json={"history": [], "domain": "Kitchen", "k": 21}).status_code == 422
        big = b'{"history": [' + b'"F00001",' * 200_000 + b'"F00001"], "domain": "Food"}'
        assert c.post("/recommend", content=big, headers={"content-type": "application/json"}).status_code == 413
        assert c.get("/metadata").json()["model"] == "sasrec"


def test_load_tests_raw_client_counts_answers_and_errors(server):
    """benchmarks/load_test.py's raw HTTP/1.1 client: every body answered, a non-200 answer is an error."""
    import asyncio
    import json
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        from load_test import load_raw
    finally:
        sys.path.pop(0)
    good = [json.dumps({"history": ["F00001", "K01002"], "domain": d, "k": k}).encode()
            for d in ("Food", "Kitchen") for k in (1, 5, 20)]
    bad = [b'{"history": [], "domain": "Kitchen", "k": 21}', b"not json"]  # 422 both
    latencies, errors, seconds = asyncio.run(load_raw(server, good + bad + good, 3))
    assert len(latencies) == 2 * len(good) + len(bad) and errors == len(bad) and seconds > 0
