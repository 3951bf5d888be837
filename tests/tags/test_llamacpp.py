"""The LLM tag stage on real engines: llama-cpp-python in-process (``llamacpp``) and llama-cpp-python's own
OpenAI-compatible server (``openai``), both running a tiny random GGUF model (tiny_gguf.py) on the generated world.

The model's words are nonsense; what is tested is everything around them, for real: the prompts through the GGUF's
chat template, grammar-constrained generation from our JSON schemas, parsing, the vote, 1-100 scores, the cache,
a SIGKILLed run resuming to identical files, and the server path (its refusal of ``json_schema``, then schema-guided
``json_object``). Skipped where llama-cpp-python is not installed (``pip install -e '.[llamacpp]'``; CI installs it).
"""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install -e '.[llamacpp]'")
pytest.importorskip("gguf", reason="gguf is not installed: pip install -e '.[llamacpp]'")

from llama_server import start_llama_server, stop  # noqa: E402
from test_resume import OUTPUTS, run_killed_then_resumed  # noqa: E402
from tiny_gguf import write_tiny_llama  # noqa: E402

from temarec.cli import main  # noqa: E402
from temarec.config import TagsConfig  # noqa: E402
from temarec.data.synthetic import write_synthetic  # noqa: E402
from temarec.tags import load_scores, read_vocabulary, run_tags, tag_source  # noqa: E402
from temarec.tags.backends.llm import (MAX_TAG_CHARS, match_schema, parse_vocab, vocab_max_tokens,  # noqa: E402
                                       vocab_schema)
from temarec.tags.templates import NAMES, load_prompt, match_prompt, vocab_prompt  # noqa: E402

N_ITEMS, N_TAGS, ROUNDS, PER_REQUEST = 16, 2, 3, 3  # 2 x 2 tags -> up to 4 shared tags: 2 requests per item
VOCAB_REQUESTS = 2 * ROUNDS


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """The smallest generated world: 8 genres x 2 domains x 1 item = 16 items with titles."""
    return write_synthetic(tmp_path_factory.mktemp("llm-world") / "data", n_users=20, items_per_genre=1)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, world) -> Path:
    titles = pd.read_parquet(world / "items.parquet")["title"].tolist()
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf", [load_prompt(n) for n in NAMES] + titles)


def fresh_copy(world: Path, to: Path) -> Path:
    shutil.copytree(world, to, ignore=shutil.ignore_patterns("tags"))
    return to


def llamacpp_settings(model: Path) -> dict:
    return dict(vocab_backend="llamacpp", match_backend="llamacpp", gguf_path=str(model), tags_per_domain=N_TAGS,
                rounds=ROUNDS, tags_per_request=PER_REQUEST, concurrency=2, max_retries=2, retry_backoff_s=0.01)


def check_outputs(root: Path) -> tuple[dict, np.ndarray, list[str]]:
    """What any LLM run must produce: the vote of R identical greedy answers, and a 1-100 score for every pair."""
    vocab = read_vocabulary(root)
    for domain in ("Food", "Kitchen"):
        entries = vocab["domains"][domain]
        assert len(entries) == N_TAGS
        # temperature 0: the R rounds answer alike, so every tag has all R votes
        assert all(e["votes"] == ROUNDS and 0 <= e["mean_score"] <= 1 for e in entries)
        assert all(0 < len(e["tag"]) <= MAX_TAG_CHARS for e in entries)
    assert vocab["shared"] == list(dict.fromkeys(e["tag"] for d in ("Food", "Kitchen") for e in vocab["domains"][d]))
    scores, tags = load_scores(root)
    assert tags == vocab["shared"] and scores.shape == (N_ITEMS, len(tags))
    assert scores.min() >= 1 and scores.max() <= 100  # every item has a title: every pair is scored
    assert len(np.unique(scores)) > 5  # a model answered, not a constant
    meta = json.loads((root / "tags" / "meta.json").read_text())
    assert meta["match"]["items_tagged"] == N_ITEMS and meta["match"]["items_failed"] == 0
    return vocab, scores, tags


def match_requests(tags: list[str]) -> int:
    return N_ITEMS * -(-len(tags) // PER_REQUEST)


@pytest.fixture(scope="module")
def cli_run(world, tiny_gguf, tmp_path_factory):
    """``temarec tags`` with the llamacpp backends on a copy of the world: (dataset folder, CLI args, log text)."""
    root = fresh_copy(world, tmp_path_factory.mktemp("cli") / "ds")
    args = ["tags", "--dataset", str(root)]
    for key, value in llamacpp_settings(tiny_gguf).items():
        args += ["--set", f"tags.{key}={value}"]
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    lines: list[str] = []
    logger = logging.getLogger("temarec")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assert main(args) == 0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return root, args, "\n".join(lines)


def test_cli_tags_with_llamacpp_in_process(cli_run, tiny_gguf, caplog):
    root, args, log = cli_run
    _, scores, tags = check_outputs(root)
    # the grammar keeps every answer valid: no request was asked twice
    assert f"requests: {match_requests(tags)} sent, 0 retried, 0 failed, 0 from cache" in log
    assert tag_source(root) == ("LLM vocabulary (llama.cpp tiny.gguf) + LLM matching (llama.cpp tiny.gguf, "
                                f"{PER_REQUEST} tags per request)")

    # the stage stored the engine's own answer: ask llama.cpp directly for item 0's first tags
    from llama_cpp import Llama

    items = pd.read_parquet(root / "items.parquet")
    llm = Llama(model_path=str(tiny_gguf), n_ctx=4096, seed=0, verbose=False)
    group = tags[:PER_REQUEST]
    prompt = match_prompt("Food", f"Title: {items['title'][0]}", group)
    out = llm.create_chat_completion(
        messages=[{"role": "system", "content": load_prompt("system").strip()}, {"role": "user", "content": prompt}],
        temperature=0.0, max_tokens=512, response_format={"type": "json_object", "schema": match_schema(group)})
    direct = json.loads(out["choices"][0]["message"]["content"])["scores"]
    assert [direct[t] for t in group] == scores[0, :PER_REQUEST].tolist()

    first = {n: (root / "tags" / n).read_bytes() for n in OUTPUTS}
    with caplog.at_level(logging.INFO, logger="temarec"):
        assert main(args) == 0  # rerun: every answer from the cache, the same files
    assert f"requests: 0 sent, 0 retried, 0 failed, {match_requests(tags)} from cache" in caplog.text
    assert {n: (root / "tags" / n).read_bytes() for n in OUTPUTS} == first


def test_llamacpp_sigkill_mid_match_then_resume_is_byte_identical(cli_run, world, tiny_gguf, tmp_path):
    reference = cli_run[0]
    killed = fresh_copy(world, tmp_path / "killed")
    at_kill = run_killed_then_resumed(killed, llamacpp_settings(tiny_gguf), kill_at_rows=VOCAB_REQUESTS + 6)
    assert at_kill < VOCAB_REQUESTS + match_requests(read_vocabulary(reference)["shared"])
    for name in OUTPUTS:
        assert (killed / "tags" / name).read_bytes() == (reference / "tags" / name).read_bytes(), name


@pytest.fixture(scope="module")
def llama_server(tiny_gguf, tmp_path_factory):
    """llama-cpp-python's OpenAI-compatible server on a loopback port, serving the tiny model."""
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python's server extra is not installed: "
                                                       "pip install -e '.[llamacpp]'")
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    proc, url = start_llama_server(tiny_gguf, log_path)
    yield url, log_path
    stop(proc)


def test_openai_backend_against_llama_cpp_server(world, tiny_gguf, llama_server, tmp_path):
    url, log_path = llama_server
    kwargs = dict(llamacpp_settings(tiny_gguf), vocab_backend="openai", match_backend="openai", base_url=url,
                  model="tiny", timeout_s=30)
    root = fresh_copy(world, tmp_path / "ds")
    summary = run_tags(root, TagsConfig(**kwargs))
    vocab, scores, tags = check_outputs(root)
    assert summary["vocab"]["calls"]["retried"] == 0 and summary["match"]["calls"]["retried"] == 0
    assert summary["match"]["calls"]["calls"] == match_requests(tags)
    assert summary["match"]["calls"]["prompt_tokens"] > 0 and summary["match"]["calls"]["completion_tokens"] > 0
    # the server refuses response_format json_schema (a 500 quoting its validation error); the transport steps
    # down to json_object + schema, once per backend
    log = log_path.read_text()
    assert "Input should be 'text' or 'json_object'" in log
    # one refusal for the vocabulary, one or two (two requests in flight) for matching
    assert log.count('"POST /v1/chat/completions HTTP/1.1" 500') in (2, 3)
    # the server's answers are the engine's: llama.cpp in-process, asked the same, answers the same. The server
    # samples with its own default repeat_penalty=1.1 (the library's is 1.0, and an OpenAI client cannot set it),
    # so the two runs differ unless the in-process call uses it too (docs/TAGS.md)
    from llama_cpp import Llama

    llm = Llama(model_path=str(tiny_gguf), n_ctx=4096, seed=0, verbose=False)
    out = llm.create_chat_completion(
        messages=[{"role": "system", "content": load_prompt("system").strip()},
                  {"role": "user", "content": vocab_prompt("Food", N_TAGS)}],
        temperature=0.0, max_tokens=vocab_max_tokens(N_TAGS), repeat_penalty=1.1,
        response_format={"type": "json_object", "schema": vocab_schema(N_TAGS)})
    direct = parse_vocab(out["choices"][0]["message"]["content"], N_TAGS)
    assert [tag for tag, _ in direct] == [e["tag"] for e in vocab["domains"]["Food"]]

    killed = fresh_copy(world, tmp_path / "killed")
    run_killed_then_resumed(killed, kwargs, kill_at_rows=VOCAB_REQUESTS + 6)
    for name in OUTPUTS:
        assert (killed / "tags" / name).read_bytes() == (root / "tags" / name).read_bytes(), name
