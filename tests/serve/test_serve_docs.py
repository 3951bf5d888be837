"""The README's "Serve your model" section, run as written: every fenced bash and python block, in order, in
one fresh folder.

Three substitutions keep it short and safe to run anywhere: `temarec train` gets tiny settings, port 8000 becomes
a free port, and the set-up lines (activate the venv, pip install) are skipped because the test already runs in
the installed environment. The generated data that `make quickstart` would leave in runs/quickstart/data is
written first, as the section assumes.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from temarec.config import DataConfig
from temarec.data.synthetic import write_synthetic

README = Path(__file__).resolve().parents[2] / "README.md"
TINY_TRAIN = " --set train.epochs=1 --set model.dim=16 --set data.max_len=10"
SETUP = re.compile(r"^\s*(\. \.venv/bin/activate|pip install )")


def blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"^```(bash|python)\n(.*?)^```", text, flags=re.S | re.M)


def serve_section(text: str) -> str:
    """From the "## Serve your model" heading to the next second-level heading."""
    start = text.index("## Serve your model")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def adapt(lang: str, code: str, port: int) -> str:
    code = code.replace("8000", str(port))
    if lang == "python":
        return code
    lines = [line for line in code.splitlines() if not SETUP.match(line)]
    return "\n".join(line + TINY_TRAIN if line.startswith("temarec train ") else line for line in lines)


def run_block(lang: str, code: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    cmd = ["bash", "-e", "-o", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # own process group: a server it started dies with it
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_every_command_of_the_serving_docs_runs(tmp_path):
    write_synthetic(tmp_path / "runs" / "quickstart" / "data", DataConfig(num_negatives=50), n_users=300,
                    items_per_genre=10)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    port = free_port()
    found = blocks(serve_section(README.read_text()))
    assert [lang for lang, _ in found].count("bash") >= 4 and any(lang == "python" for lang, _ in found)
    outputs = []
    for lang, code in found:
        result = run_block(lang, adapt(lang, code, port), tmp_path, env)
        assert result.returncode == 0, f"{lang} block failed:\n{code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        outputs.append(result.stdout)
    text = "\n".join(outputs)
    assert "model: sasrec" in text and "unknown ids skipped: not-an-item" in text and '"unknown_items":["not-an-item"]' in text and '"results"' in text
    assert (tmp_path / "exported" / "sasrec" / "encoder.onnx").is_file()
