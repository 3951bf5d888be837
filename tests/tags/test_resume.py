"""Kill-and-resume: SIGKILL a real subprocess mid-run, restart it, and get byte-identical outputs."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tag_data import make_dataset
from temarec.config import TagsConfig
from temarec.tags import run_tags

OUTPUTS = ("vocab.json", "scores.parquet", "meta.json")
RUNNER = """
import sys
from temarec.config import TagsConfig
from temarec.tags import run_tags
run_tags(sys.argv[1], TagsConfig(**eval(sys.argv[2])))
"""


def cached_rows(path: Path) -> int:
    try:
        with sqlite3.connect(path, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM kv").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def run_killed_then_resumed(root: Path, kwargs: dict, kill_at_rows: int, timeout_s: float = 600,
                            after_kill=lambda: None) -> int:
    """Start the stage in a subprocess, SIGKILL it once the cache holds ``kill_at_rows`` rows, then run it again
    to the end; returns the rows cached at the kill."""
    cache = root / "tags" / "cache.sqlite"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(root), repr(kwargs)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    while cached_rows(cache) < kill_at_rows:
        assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    at_kill = cached_rows(cache)
    after_kill()
    done = subprocess.run([sys.executable, "-c", RUNNER, str(root), repr(kwargs)], env=env, capture_output=True,
                          timeout=timeout_s)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return at_kill


def many_items(n: int) -> list[tuple]:
    words = ["coffee", "tea", "chocolate", "snack", "knife", "storage", "cookware", "mug", "glass", "baking"]
    rows = [(f"F{i}", "Food", f"Product {i} {words[i % 10]} {words[(i * 7) % 10]}", None) for i in range(n)]
    rows += [(f"K{i}", "Kitchen", f"Thing {i} {words[(i * 3) % 10]} set", None) for i in range(n)]
    rows[5] = ("F5", "Food", None, None)
    return rows


def test_sigkill_mid_match_then_resume_is_byte_identical_and_redoes_nothing(tmp_path, server):
    rows = many_items(30)
    kwargs = dict(vocab_backend="openai", match_backend="openai", base_url=server.url, model="m", tags_per_domain=4,
                  rounds=3, tags_per_request=2, concurrency=2, retry_backoff_s=0.01)
    reference = make_dataset(tmp_path / "ref", rows)
    run_tags(reference, TagsConfig(**kwargs))
    total = len(server.requests)  # 6 vocabulary + 59 distinct items x 4 requests
    assert total == 6 + 59 * 4

    server.requests.clear()
    server.delay_s = 0.03
    killed = make_dataset(tmp_path / "killed", rows)
    before_restart = []
    at_kill = run_killed_then_resumed(killed, kwargs, kill_at_rows=60,
                                      after_kill=lambda: before_restart.append(len(server.requests)))
    assert 60 <= at_kill < total
    for name in OUTPUTS:
        assert (killed / "tags" / name).read_bytes() == (reference / "tags" / name).read_bytes(), name
    # each answer is committed as it arrives: the restarted run asks exactly for what the cache lacks
    assert len(server.requests) - before_restart[0] == total - at_kill
    # and the killed run lost at most the requests in flight
    assert before_restart[0] - at_kill <= kwargs["concurrency"]


@pytest.mark.slow
def test_sigkill_mid_embedding_then_resume_is_byte_identical(tmp_path):
    rows = many_items(300)  # 599 distinct texts: three encoder chunks of 256
    kwargs = dict(tags_per_domain=8, rounds=3)
    reference = make_dataset(tmp_path / "ref", rows)
    run_tags(reference, TagsConfig(**kwargs))
    with sqlite3.connect(reference / "tags" / "cache.sqlite") as db:
        total = db.execute("SELECT COUNT(*) FROM kv").fetchone()[0]
    killed = make_dataset(tmp_path / "killed", rows)
    at_kill = run_killed_then_resumed(killed, kwargs, kill_at_rows=total - 200)  # after the 2nd chunk of items
    assert at_kill < total
    for name in OUTPUTS:
        assert (killed / "tags" / name).read_bytes() == (reference / "tags" / name).read_bytes(), name
