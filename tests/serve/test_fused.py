"""Serving TEMA through serve/fused.py gives the model's own scores, parts and answers (the path before it)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from temarec.data.batches import pad_histories
from temarec.serve.fused import FusedScorer, fused_scorer

HISTORIES = [[1, 100, 3], [], list(range(0, 160, 7)), [150], [2, 4, 6, 8, 10, 120, 130]]


def _assert_same_scores_and_parts(scorer, model, hist) -> None:
    with torch.inference_mode():
        for d in (0, 1):
            got, got_parts = scorer(hist, d)
            want, want_parts = model.score_parts(hist, d)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got_parts.log_norm, want_parts.log_norm, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got_parts.states, want_parts.states)
            assert torch.equal(got.topk(10).indices, want.topk(10).indices)


def test_fused_scores_are_the_models_score_parts(recommender):
    rec = recommender("tema")
    assert isinstance(rec._fused, FusedScorer)
    hist = pad_histories(HISTORIES * 4, rec.max_len)  # 20 rows: two chunks of ROWS
    _assert_same_scores_and_parts(rec._fused, rec.model, hist)


def test_rows_whose_probabilities_underflow_are_scored_in_log_space(recommender):
    model = copy.deepcopy(recommender("tema").model)
    scaled = model.scaled
    model.scaled = lambda h: scaled(h) * 50  # logits spread over hundreds: exp(z - max z) underflows for many items
    hist = pad_histories(HISTORIES, model.ctx.max_len)
    with torch.inference_mode():
        want = model.score_parts(hist, 1)[0]
    assert (want < math.log(torch.finfo(torch.float32).tiny)).any(), "the probe must reach the underflow"
    _assert_same_scores_and_parts(FusedScorer(model), model, hist)


def test_a_single_head_is_ranked_by_its_similarity_as_score_parts_does(recommender):
    model = copy.deepcopy(recommender("tema").model)
    weights = model.log_head_weights
    only = torch.full_like(weights(0), -math.inf)
    only[2, 0] = 0.0  # the merged view's ID head alone (configs/tema-as-sasrec.yaml's TEMA)
    model.log_head_weights = lambda domain, *args, **kwargs: only
    _assert_same_scores_and_parts(FusedScorer(model), model, pad_histories(HISTORIES, model.ctx.max_len))


def test_models_without_tema_heads_get_no_fused_scorer(recommender):
    assert fused_scorer(recommender("sasrec").model) is None
    assert recommender("pop")._fused is None


@pytest.mark.parametrize("explain", [True, False])
def test_answers_are_those_of_the_path_before(recommender, monkeypatch, explain):
    rec = recommender("tema")
    histories = [["F00001", "K01002", "F01003", "K01004"], ["K00003"], ["F02001", "K02003", "F02004"] * 3, []]
    domains = ["Kitchen", "Food", "Kitchen", "Food"]
    fused = rec.recommend_batch(histories, domains, k=8, explain=explain)
    monkeypatch.setattr(rec, "_fused", None)  # score_parts / score_domain, as served before serve/fused.py
    before = rec.recommend_batch(histories, domains, k=8, explain=explain)
    for got, want in zip(fused, before):
        assert got.item_ids == want.item_ids and got.fallback == want.fallback
        assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], abs=1e-5)
        for g, w in zip(got, want):
            explained = explain and got.fallback is None  # the empty history's popularity answer has none
            assert ("explanation" in g) == ("explanation" in w) == explained
            if explained:
                tags, tags_before = g["explanation"]["tags"], w["explanation"]["tags"]
                assert [t["tag"] for t in tags] == [t["tag"] for t in tags_before]
                assert [t["weight"] for t in tags] == pytest.approx([t["weight"] for t in tags_before], abs=1e-6)
                assert g["explanation"]["modality_share"] == pytest.approx(w["explanation"]["modality_share"],
                                                                          abs=1e-5)
