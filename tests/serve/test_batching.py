"""Micro-batching in the HTTP service: concurrent requests scored together answer as if scored one by one, a bad
request fails alone, and /health and /metadata answer while a batch is being scored."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from temarec.cli import main
from temarec.serve.app import Limits, create_app
from temarec.serve.batching import BatchingConfig

HISTORY = ["F00001", "K01002", "F01003", "K01004"]
# requests of both domains with different k and flags, an empty history (popularity), unknown ids, events
REQUESTS = [
    {"history": HISTORY, "domain": "Kitchen", "k": 5},
    {"history": HISTORY[:2], "domain": "Food", "k": 3},
    {"history": [], "domain": "Food", "k": 4},
    {"history": ["nope", "F02001", "K02003", "F02004"], "domain": "Kitchen", "k": 7},
    {"history": HISTORY, "domain": "Kitchen", "k": 5, "exclude_seen": False},
    {"history": HISTORY * 5, "domain": "Food", "k": 10, "explain": False},
    {"history": [{"item": "K01004", "ts": 4}, {"item": "F00001", "ts": 1}], "domain": "Food", "k": 2},
    {"history": ["K00003"], "domain": "Kitchen", "k": 1},
]
STRICT_UNKNOWN = {"history": ["F00001", "bad-1"], "domain": "Food", "strict": True}


def _client(app, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30.0)


def _one_by_one(rec, body: dict) -> dict:
    history = body["history"]
    if history and isinstance(history[0], dict):
        history = [(e["item"], e["ts"]) for e in history]
    return rec.recommend(history, body["domain"], k=body["k"], exclude_seen=body.get("exclude_seen", True),
                         explain=body.get("explain", True)).to_dict()


def _assert_same_answer(got: dict, expected: dict) -> None:
    assert [i["item"] for i in got["items"]] == [i["item"] for i in expected["items"]]
    assert [i["score"] for i in got["items"]] == pytest.approx([i["score"] for i in expected["items"]],
                                                               rel=1e-5, abs=1e-5)
    for g, e in zip(got["items"], expected["items"]):
        assert ("explanation" in g) == ("explanation" in e)
        if "explanation" in e:
            assert [t["tag"] for t in g["explanation"]["tags"]] == [t["tag"] for t in e["explanation"]["tags"]]
            assert g["explanation"]["modality_share"] == pytest.approx(e["explanation"]["modality_share"], abs=1e-5)
    assert {k: got[k] for k in ("domain", "unknown_items", "fallback", "history_used")} == \
        {k: expected[k] for k in ("domain", "unknown_items", "fallback", "history_used")}


@pytest.mark.parametrize("model", ["sasrec", "gru4rec", "pop", "tema"])
def test_concurrent_requests_scored_together_answer_as_one_by_one(recommender, model):
    rec = recommender(model)
    # a long window: every request below arrives before the first batch is scored
    app = create_app(rec, limits=Limits(max_history=200), batching=BatchingConfig(window_ms=300))
    batch_body = {"requests": REQUESTS[:3]}

    async def fire():
        async with _client(app) as c:
            return await asyncio.gather(*(c.post("/recommend", json=b) for b in [*REQUESTS, STRICT_UNKNOWN,
                                                                                   batch_body]))

    try:
        *singles, strict, batch = asyncio.run(fire())
    finally:
        app.state.batcher.close()
    assert max(app.state.batcher.batch_sizes) > 1  # they were scored together
    for body, r in zip(REQUESTS, singles):
        assert r.status_code == 200, r.text
        _assert_same_answer(r.json(), _one_by_one(rec, body))
    assert strict.status_code == 404 and strict.json()["unknown_items"] == ["bad-1"]  # fails alone
    assert batch.status_code == 200, batch.text
    for body, got in zip(batch_body["requests"], batch.json()["results"]):
        _assert_same_answer(got, _one_by_one(rec, body))


def test_health_and_metadata_answer_while_a_batch_is_scored(recommender, monkeypatch):
    rec = recommender("sasrec")
    app = create_app(rec, batching=BatchingConfig(window_ms=0))
    scoring, release = threading.Event(), threading.Event()
    answer = rec.answer

    def held_answer(queries):  # the batch stays in the worker thread until the test releases it
        scoring.set()
        assert release.wait(30), "the test never released the batch"
        return answer(queries)

    monkeypatch.setattr(rec, "answer", held_answer)

    async def scenario():
        async with _client(app) as c:
            pending = asyncio.ensure_future(c.post("/recommend", json=REQUESTS[0]))
            assert await asyncio.to_thread(scoring.wait, 30)
            health, meta = await c.get("/health"), await c.get("/metadata")
            still_scoring = not pending.done()
            release.set()
            return health, meta, still_scoring, await pending

    try:
        health, meta, still_scoring, recommended = asyncio.run(scenario())
    finally:
        release.set()
        app.state.batcher.close()
    assert still_scoring
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert meta.status_code == 200 and meta.json()["model"] == "sasrec"
    assert recommended.status_code == 200, recommended.text


def test_a_failing_batch_is_a_500_for_its_requests_and_the_next_batch_answers(recommender, monkeypatch):
    rec = recommender("sasrec")
    app = create_app(rec, batching=BatchingConfig(window_ms=0))
    answer, calls = rec.answer, []

    def flaky(queries):
        calls.append(len(queries))
        if len(calls) == 1:
            raise RuntimeError("simulated scoring failure")
        return answer(queries)

    monkeypatch.setattr(rec, "answer", flaky)

    async def scenario():
        async with _client(app, raise_app_exceptions=False) as c:
            return await c.post("/recommend", json=REQUESTS[0]), await c.post("/recommend", json=REQUESTS[0])

    try:
        first, second = asyncio.run(scenario())
    finally:
        app.state.batcher.close()
    assert first.status_code == 500 and second.status_code == 200, second.text
    assert len(calls) == 2


@pytest.mark.parametrize("flags, message", [
    (["--batch-window-ms", "-1"], "batch window must be 0..1000 ms"),
    (["--batch-max-rows", "0"], "max_rows must be >= 1"),
    (["--workers", "0"], "workers must be >= 1"),
])
def test_bad_serve_flags_are_one_line_and_exit_2(trained_run, capsys, flags, message):
    assert main(["serve", "--run", str(trained_run("pop")), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="counts worker processes through /proc")
def test_serve_with_two_workers_answers_from_two_processes(trained_run):
    from test_server import free_port, wait_healthy  # tests/serve is on sys.path (pytest rootdir conftest)

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "temarec", "serve", "--run", str(trained_run("sasrec")),
                             "--port", str(port), "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ,
                                                                                   "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, timeout_s=300.0)  # two processes load the run: slow on a busy machine
        with httpx.Client(base_url=url, timeout=30.0) as c:
            answers = [c.post("/recommend", json=REQUESTS[0]) for _ in range(6)]
        workers = [p for p in _children(proc.pid) if "temarec" in Path(f"/proc/{p}/cmdline").read_text()
                   or "multiprocessing" in Path(f"/proc/{p}/cmdline").read_text()]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert all(a.status_code == 200 for a in answers), answers[0].text
    assert all(a.json() == answers[0].json() for a in answers)
    assert len(workers) >= 2, workers
