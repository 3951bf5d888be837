"""Start llama-cpp-python's OpenAI-compatible server on a free loopback port (tests and benchmarks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(model: Path, log_path: Path, alias: str = "tiny",
                       timeout_s: float = 60.0) -> tuple[subprocess.Popen, str]:
    """(the server process, its base URL .../v1) once it answers GET /v1/models; its output goes to ``log_path``."""
    port = free_port()
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model),
                                 "--model_alias", alias, "--host", "127.0.0.1", "--port", str(port),
                                 "--n_ctx", "4096", "--seed", "0", "--verbose", "False"],
                                stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + "/models", timeout=1):
                return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {log_path.read_text()[-2000:]}") from None
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the server did not answer within {timeout_s:g} s") from None
            time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
