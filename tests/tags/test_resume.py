"""Kill-and-resume: SIGKILL a real subprocess mid-run, restart it, and get byte-identical outputs."""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tag_data import make_dataset
from temarec.cache import Cache
from temarec.config import TagsConfig
from temarec.tags import run_tags
from temarec.tags.backends.base import CallStats, Item
from temarec.tags.backends.llm import Answer, Chat, LLMMatcher

OUTPUTS = ("vocab.json", "scores.parquet", "meta.json")
RUNNER = """
import sys, time
from temarec.cache import Cache
from temarec.config import TagsConfig
from temarec.tags import run_tags
pause_at_rows = int(sys.argv[3])
if pause_at_rows:  # stop making progress once the cache holds that many rows, and wait for the kill there
    commit = Cache.put_many
    def commit_then_pause(self, items):
        commit(self, items)
        if len(self) >= pause_at_rows:
            time.sleep(3600)
    Cache.put_many = commit_then_pause
run_tags(sys.argv[1], TagsConfig(**eval(sys.argv[2])))
"""


def cached_rows(path: Path) -> int:
    try:
        with sqlite3.connect(path, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM kv").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def run_killed_then_resumed(root: Path, kwargs: dict, kill_at_rows: int, timeout_s: float = 600,
                            after_kill=lambda: None, pause: bool = False) -> int:
    """Start the stage in a subprocess, SIGKILL it once the cache holds ``kill_at_rows`` rows, then run it again
    to the end; returns the rows cached at the kill. With ``pause`` the subprocess stops after the commit that
    reaches ``kill_at_rows`` and waits for the kill there (without it, the kill lands wherever the run is when
    this process next looks: a test whose kill must land before a given commit cannot leave that to the
    scheduler)."""
    cache = root / "tags" / "cache.sqlite"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(root), repr(kwargs), str(kill_at_rows * pause)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
    done = subprocess.run([sys.executable, "-c", RUNNER, str(root), repr(kwargs), "0"], env=env,
                          capture_output=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return at_kill


def assert_same_outputs(killed: Path, reference: Path) -> None:
    """Byte-identical tags outputs. A Parquet file names the pyarrow that wrote it, so where scores.parquet differs
    the message says whether its table does too (once the only difference was that name: installing mlflow had
    downgraded the shared environment's pyarrow between the reference run and the subprocess)."""
    for name in OUTPUTS:
        a, b = killed / "tags" / name, reference / "tags" / name
        if name.endswith(".parquet") and a.read_bytes() != b.read_bytes():
            same = pq.read_table(a).equals(pq.read_table(b))
            writers = [pq.read_metadata(p).created_by for p in (a, b)]
            pytest.fail(f"{name}: {'same table' if same else 'another table'}, written by {writers[0]} (killed, "
                        f"resumed) and {writers[1]} (reference)")
        assert a.read_bytes() == b.read_bytes(), name


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

    def count_the_killed_runs_requests() -> None:
        server.settle()  # a request sent just before the kill may still be on its way into server.requests
        before_restart.append(len(server.requests))

    at_kill = run_killed_then_resumed(killed, kwargs, kill_at_rows=60, after_kill=count_the_killed_runs_requests)
    assert 60 <= at_kill < total
    assert_same_outputs(killed, reference)
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
    # killed after the 2nd chunk of items is committed, before the 3rd is (the subprocess waits there: the 3rd
    # chunk takes about a second, and a kill that comes later finds nothing left to resume)
    at_kill = run_killed_then_resumed(killed, kwargs, kill_at_rows=total - 200, pause=True)
    assert at_kill == total - 87
    assert_same_outputs(killed, reference)


def test_a_kill_loses_at_most_the_requests_in_flight_however_late_the_main_thread_comes_back():
    """Each answer is committed by the worker that got it: while the thread that hands out the work is away (here:
    a slow progress bar; under load: the scheduler), workers finishing requests must not pile up answers that
    only it would commit (its window holds 2 x concurrency requests)."""
    concurrency = 2
    cache = Cache(":memory:")
    uncommitted: list[int] = []  # at each request sent: requests sent so far, this one included, minus cached answers

    class Transport:
        name, model = "fake", "m"
        lock = threading.Lock()
        sent = 0

        def describe(self) -> str:
            return "fake"

        def complete(self, messages, schema, max_tokens) -> Answer:
            with self.lock:
                self.sent += 1
                uncommitted.append(self.sent - len(cache))
            time.sleep(0.01)
            return Answer(json.dumps({"scores": {t: 50 for t in re.findall(r"^- (.+)$", messages[1]["content"],
                                                                              re.M)}}))

    class SlowProgress:
        def update(self, n: int) -> None:
            time.sleep(0.1)

    matcher = LLMMatcher(Chat(Transport(), 0, 0.0, CallStats()), cache, tags_per_request=2, concurrency=concurrency)
    items = [Item("Food", f"Product {i}", "", f"Product {i}") for i in range(8)]
    result = matcher.score(items, ["coffee", "tea", "snack", "mug"], SlowProgress())
    assert (result.scores == 50).all() and len(cache) == 16 == len(uncommitted)
    assert max(uncommitted) <= concurrency, uncommitted
