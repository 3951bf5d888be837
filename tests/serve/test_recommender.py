"""The Python API: the data's ids in and out, exclude_seen, unknown ids, popularity fallback, batches."""

from __future__ import annotations

import pytest
import torch

from temarec.data.batches import pad_histories
from temarec.models.registry import model_class, model_names
from temarec.serve.recommender import RecommendError, UnknownItemsError

MODELS = model_names()  # every registered model: a new one is served here without editing this file

HISTORY = ["F00001", "K01002", "F01003", "K01004"]  # baking items of both domains


@pytest.mark.parametrize("model", MODELS)
def test_recommend_returns_the_datas_item_ids_of_the_domain_best_first(recommender, model):
    rec = recommender(model)
    result = rec.recommend(HISTORY, domain="Kitchen", k=7)
    kitchen = set(rec.item_ids("Kitchen"))
    assert len(result) == 7 and result.fallback is None and result.unknown_items == []
    assert all(r["item"] in kitchen and r["domain"] == "Kitchen" and r["title"] for r in result)
    scores = [r["score"] for r in result]
    assert scores == sorted(scores, reverse=True)
    assert result.history_used == len(HISTORY)
    assert ("explanation" in result[0]) == callable(getattr(model_class(model), "explain", None))


def test_exclude_seen_leaves_out_history_items_of_the_domain(recommender):
    rec = recommender("sasrec")
    n = len(rec.item_ids("Kitchen"))
    ranked = rec.recommend(HISTORY, "Kitchen", k=n, exclude_seen=False).item_ids
    filtered = rec.recommend(HISTORY, "Kitchen", k=n).item_ids
    assert len(ranked) == n and len(filtered) == n - 2  # two Kitchen items of the history are seen
    assert "K01002" in ranked and "K01002" not in filtered and "K01004" not in filtered
    assert filtered == [i for i in ranked if i not in HISTORY]


def test_unknown_ids_are_reported_and_skipped_or_rejected_under_strict(recommender):
    rec = recommender("gru4rec")
    plain = rec.recommend(HISTORY, "Food", k=5)
    noisy = rec.recommend(["nope", *HISTORY[:2], "F99999", *HISTORY[2:]], "Food", k=5)
    assert noisy.unknown_items == ["nope", "F99999"]
    assert noisy.item_ids == plain.item_ids
    with pytest.raises(UnknownItemsError, match="'nope'") as err:
        rec.recommend(["nope", *HISTORY], "Food", k=5, strict=True)
    assert err.value.items == ["nope"]


@pytest.mark.parametrize("history", [[], ["unknown-1", "unknown-2"]])
def test_a_history_without_known_items_falls_back_to_training_popularity(recommender, history):
    rec = recommender("sasrec")
    result = rec.recommend(history, "Food", k=5)
    assert result.fallback == "popularity" and result.history_used == 0
    assert result.unknown_items == history
    assert result.item_ids == recommender("pop").recommend([], "Food", k=5).item_ids
    counts = [rec.item(i)["train_interactions"] for i in result.item_ids]
    assert counts == sorted(counts, reverse=True) and counts == [r["score"] for r in result]


@pytest.mark.parametrize("model", MODELS)
def test_a_history_holding_every_item_of_the_domain_gets_an_empty_answer_not_seen_items(recommender, model):
    """Issue 17 #1: nothing is left once seen items go; that is the answer, not a popularity fallback that
    recommends items of the history and says the history held no known item."""
    rec = recommender(model)
    kitchen = rec.item_ids("Kitchen")
    result = rec.recommend(["F00001", *kitchen], "Kitchen", k=5)
    assert result.item_ids == [] and result.fallback is None
    assert result.history_used == min(len(kitchen) + 1, rec.max_len)
    nearly = rec.recommend(kitchen[1:], "Kitchen", k=5)  # one item left: that one, from the model
    assert nearly.item_ids == [kitchen[0]] and nearly.fallback is None
    batch = rec.recommend_batch([kitchen, [], kitchen], "Kitchen", k=3)
    assert [r.item_ids for r in batch][::2] == [[], []] and [r.fallback for r in batch] == [None, "popularity", None]


def test_timestamped_history_is_sorted_by_time_and_ties_keep_their_order(recommender):
    rec = recommender("sasrec")
    events = [("F01003", 30), ("F00001", 10), ("K01002", 20), ("K01004", 30)]  # F01003 and K01004 tie at 30
    expected = rec.recommend(HISTORY, "Kitchen", k=10)
    got = rec.recommend(events, "Kitchen", k=10)
    assert got.item_ids == expected.item_ids
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected])


def test_batch_equals_one_request_at_a_time(recommender):
    rec = recommender("gru4rec")
    histories = [HISTORY, [], ["K00003"], HISTORY[:1] * 30, ["zzz", "F02002"]]
    domains = ["Kitchen", "Food", "Food", "Kitchen", "Kitchen"]
    batch = rec.recommend_batch(histories, domains, k=6)
    for h, d, got in zip(histories, domains, batch):
        one = rec.recommend(h, d, k=6)
        assert got.item_ids == one.item_ids
        assert [r["score"] for r in got] == pytest.approx([r["score"] for r in one], abs=1e-5)
        assert (got.fallback, got.unknown_items, got.domain) == (one.fallback, one.unknown_items, d)
    assert len(rec.recommend_batch(histories, "Food", k=2)) == len(histories)


@pytest.mark.parametrize("model", ["sasrec", "gru4rec"])
def test_cached_item_matrices_give_the_models_own_scores(recommender, model):
    rec = recommender(model)
    assert rec._fact is not None
    hist = pad_histories([[1, 100, 3], [], list(range(0, 160, 7))], rec.max_len)
    with torch.inference_mode():
        for d in (0, 1):
            torch.testing.assert_close(rec._fact(hist, d), rec.model.score_domain(hist, d), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("call, message", [
    (lambda r: r.recommend(HISTORY, "Garden"), "unknown domain 'Garden'"),
    (lambda r: r.recommend(HISTORY, "Food", k=0), "k must be a positive integer"),
    (lambda r: r.recommend("F00001", "Food"), "a history must be a list"),
    (lambda r: r.recommend(["F00001", ("F00002", 3)], "Food"), "mixes plain ids"),
    (lambda r: r.recommend([("F00001", float("nan"))], "Food"), "finite numbers"),
    (lambda r: r.recommend([{"item": "F00001"}], "Food"), "item ids are strings"),
    (lambda r: r.recommend_batch([HISTORY, HISTORY], ["Food"]), "one per history"),
])
def test_bad_requests_raise_a_recommend_error_that_says_what_to_fix(recommender, call, message):
    with pytest.raises(RecommendError, match=message):
        call(recommender("pop"))


def test_tema_explains_each_recommendation_with_tags_and_modality_shares(recommender):
    result = recommender("tema").recommend(["F02001", "K02003", "F02004"], "Kitchen", k=3)  # tea items
    for r in result:
        why = r["explanation"]
        assert set(why["modality_share"]) >= {"id", "tag"}
        assert sum(why["modality_share"].values()) == pytest.approx(1.0, abs=1e-4)
        assert all({"tag", "weight"} <= set(t) for t in why["tags"])
    assert recommender("tema").recommend(HISTORY, "Kitchen", k=3, explain=False)[0].get("explanation") is None


def test_item_lookup_gives_title_domain_count_and_tags(recommender):
    rec = recommender("pop")
    item = rec.item("K02003")
    assert item["domain"] == "Kitchen" and item["title"] and item["train_interactions"] >= 0
    assert [t["tag"] for t in item["tags"]] == ["tea"]
    with pytest.raises(UnknownItemsError):
        rec.item("nope")


def test_metadata_names_model_data_and_test_metrics(recommender):
    meta = recommender("sasrec").metadata()
    assert meta["model"] == "sasrec" and "served-world" in meta["data"]
    assert meta["domains"] == ["Food", "Kitchen"] and set(meta["test"]["sampled"]) == {"Food", "Kitchen"}
