"""Cold start through the serving path: items no training sequence contains are served from their content (TEMA)."""

from __future__ import annotations

TEA_HISTORY = ["F02001", "K02003", "F02004", "K02000", "F02005"]  # genre 2 = tea
BBQ_HISTORY = ["F05001", "K05003", "F05004", "K05000", "F05005"]  # genre 5 = bbq


def scores_of(rec, history, items):
    n = len(rec.item_ids("Kitchen"))
    ranked = {r["item"]: r["score"] for r in rec.recommend(history, "Kitchen", k=n, exclude_seen=False)}
    return [ranked[i] for i in items]


def test_cold_items_are_known_and_ranked_by_their_tags(recommender):
    rec = recommender("tema")
    for cold in ("KCOLD-tea", "KCOLD-bbq"):
        item = rec.item(cold)
        assert item["train_interactions"] == 0 and item["tags"]
    tea_after_tea, bbq_after_tea = scores_of(rec, TEA_HISTORY, ["KCOLD-tea", "KCOLD-bbq"])
    tea_after_bbq, bbq_after_bbq = scores_of(rec, BBQ_HISTORY, ["KCOLD-tea", "KCOLD-bbq"])
    assert tea_after_tea > bbq_after_tea and bbq_after_bbq > tea_after_bbq
    # a cold item in the history is read, not skipped as unknown
    assert rec.recommend(["KCOLD-tea"], "Food", k=3).unknown_items == []
