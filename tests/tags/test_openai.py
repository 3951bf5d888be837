"""The ``openai`` backend end to end against a real local chat-completions server (tests/tags/chat_server.py)."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from chat_server import TAGS, match_score
from temarec.config import TagsConfig
from temarec.tags import load_scores, load_tag_vectors, read_vocabulary, run_tags, tag_source
from temarec.tags.backends.base import TagsError


def llm_cfg(server, **kw) -> TagsConfig:
    base = dict(vocab_backend="openai", match_backend="openai", base_url=server.url, model="test-model",
                tags_per_domain=4, rounds=3, tags_per_request=3, concurrency=2, timeout_s=server.client_timeout_s,
                max_retries=3, retry_backoff_s=0.01)
    base.update(kw)
    return TagsConfig(**base)


def test_vocab_and_match_end_to_end(dataset, server):
    summary = run_tags(dataset, llm_cfg(server))
    vocab = read_vocabulary(dataset)
    assert [t["tag"] for t in vocab["domains"]["Food"]] == TAGS["Food"][:4]
    assert vocab["domains"]["Food"][0] == {"tag": "coffee", "votes": 3, "mean_score": 1.0}
    assert vocab["shared"] == ["coffee", "tea", "chocolate", "snack", "cookware", "knife", "storage"]
    # eq. (1): R = 3 queries per domain, at temperature 0, with a JSON schema
    vocab_requests = [r for r in server.requests if "List exactly" in r["messages"][1]["content"]]
    assert len(vocab_requests) == 6 and all(r["temperature"] == 0 for r in server.requests)
    assert vocab_requests[0]["response_format"]["type"] == "json_schema"

    scores, tags = load_scores(dataset)
    items = pd.read_parquet(dataset / "items.parquet")
    assert scores.shape == (12, 7)
    for i, title in enumerate(items["title"]):
        if isinstance(title, str) and title:
            assert scores[i].tolist() == [match_score(title, t) for t in tags]
        else:
            assert not scores[i].any()  # items without text keep their row, with no score
    assert summary["match"]["items_without_text"] == 2 and summary["match"]["items_tagged"] == 10
    # 10 distinct items x ceil(7 tags / 3 per request) = 30 requests
    assert server.match_requests() == 30

    w, names = load_tag_vectors(dataset)
    assert names == tags and w.dtype == np.float32 and w.shape == (12, 7)
    np.testing.assert_allclose(w[[0, 1, 2, 4, 5, 6, 7, 8, 10, 11]].sum(axis=1), 1.0, rtol=1e-6)
    assert not w[[3, 9]].any()
    assert tag_source(dataset) == ("LLM vocabulary (openai-compatible test-model at " + server.url + ") + "
                                   "LLM matching (openai-compatible test-model at " + server.url +
                                   ", 3 tags per request)")


def test_batching_cuts_requests_per_item(dataset, server):
    run_tags(dataset, llm_cfg(server), steps=("vocab",))
    counts = {}
    for k in (1, 3, 25):
        before = server.match_requests()
        run_tags(dataset, llm_cfg(server, tags_per_request=k, cache_path=str(dataset / f"c{k}.sqlite")),
                 steps=("match",))
        counts[k] = (server.match_requests() - before) / 10
    assert counts == {1: 7.0, 3: math.ceil(7 / 3), 25: 1.0}


def test_rerun_is_served_from_the_cache(dataset, server):
    run_tags(dataset, llm_cfg(server))
    first = (dataset / "tags" / "scores.parquet").read_bytes()
    n = len(server.requests)
    summary = run_tags(dataset, llm_cfg(server))
    assert len(server.requests) == n
    assert summary["match"]["calls"]["from_cache"] == 30
    assert (dataset / "tags" / "scores.parquet").read_bytes() == first


@pytest.mark.parametrize("fault", ["malformed", "500", "timeout", "truncated", "bad_tag", "range", "429", "fenced"])
def test_faults_are_retried_and_the_result_is_unchanged(dataset, server, fault, tmp_path):
    reference = tmp_path / "ref"
    from tag_data import make_dataset

    make_dataset(reference)
    run_tags(reference, llm_cfg(server))
    server.requests.clear()
    server.faults.extend([fault] * 2)  # the first two requests (vocabulary) and, for timeout, a match one too
    summary = run_tags(dataset, llm_cfg(server))
    assert load_scores(dataset)[0].tolist() == load_scores(reference)[0].tolist()
    assert read_vocabulary(dataset)["shared"] == read_vocabulary(reference)["shared"]
    if fault != "fenced":  # a fenced answer is valid: parsed tolerantly, no retry
        assert summary["vocab"]["calls"]["retried"] >= 1


def test_a_retry_after_invalid_output_says_what_was_wrong(dataset, server):
    server.faults.append("bad_tag")
    run_tags(dataset, llm_cfg(server, rounds=1), steps=("vocab",))
    retry = server.requests[1]["messages"]
    assert retry[2]["role"] == "assistant" and "not valid" in retry[3]["content"]


@pytest.mark.parametrize("fault", ["schema400", "schema422", "schema500"])
def test_structured_output_falls_back_when_the_server_rejects_json_schema(dataset, server, fault):
    server.always = fault
    run_tags(dataset, llm_cfg(server))
    kinds = [r.get("response_format", {}).get("type") for r in server.requests]
    # one step down per backend (vocabulary, matching), the requests already in flight included
    assert kinds[0] == "json_schema" and kinds[-1] == "json_object" and kinds.count("json_schema") <= 1 + 2
    assert "schema" in server.requests[-1]["response_format"]  # llama-cpp-python's server turns it into a grammar
    assert load_scores(dataset)[0].any()


def test_permanent_failure_is_reported_and_finished_work_is_kept(dataset, server):
    cfg = llm_cfg(server, max_retries=1)
    run_tags(dataset, cfg, steps=("vocab",))
    server.faults.extend([None] * 12)  # 12 match requests succeed (4 items), then the endpoint breaks
    server.always = "500"
    with pytest.raises(TagsError, match="requests in a row failed.*HTTP 500.*rerun to resume"):
        run_tags(dataset, cfg, steps=("match",))
    assert not (dataset / "tags" / "scores.parquet").exists()
    server.always = None
    server.requests.clear()
    run_tags(dataset, cfg, steps=("match",))
    assert server.match_requests() == 30 - 12  # the finished requests came from the cache


def test_accepted_failures_leave_the_item_untagged(dataset, server):
    cfg = llm_cfg(server, max_retries=0, concurrency=1, max_failed_share=0.2)
    run_tags(dataset, cfg, steps=("vocab",))
    server.faults.append("500")  # the first match request (item F1) fails for good
    summary = run_tags(dataset, cfg, steps=("match",))
    assert summary["match"]["items_failed"] == 1 and summary["match"]["calls"]["failed"] == 1
    assert not load_scores(dataset)[0][0].any()
    assert json.loads((dataset / "tags" / "meta.json").read_text())["match"]["items_failed"] == 1


def test_endpoint_down_is_reported_clearly(dataset, server):
    url = server.url
    server.close()
    cfg = TagsConfig(vocab_backend="openai", match_backend="openai", base_url=url, model="m", max_retries=1,
                     retry_backoff_s=0.01, timeout_s=0.5, tags_per_domain=4, rounds=1)
    with pytest.raises(TagsError, match="cannot reach"):
        run_tags(dataset, cfg)


def test_bad_credentials_stop_the_run(dataset, server):
    server.always = "401"
    with pytest.raises(TagsError, match="HTTP 401.*API key"):
        run_tags(dataset, llm_cfg(server))
    assert len(server.requests) == 1  # not retried
