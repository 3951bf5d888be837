import pytest

from temarec.tags.vote import majority, vote


def test_majority_vote_on_hand_made_responses():
    responses = [
        [("Coffee", 0.9), ("tea", 0.8), ("snacks", 0.5)],
        [("coffee", 0.7), ("Tea.", 0.6), ("candy", 0.4)],
        [("tea", 1.0), ("chocolate", 0.9), ("coffee ", 0.5)],
        [("coffee", 0.9), ("candy", 0.3), ("spice", 0.2)],
        [("spice", 0.6), ("chocolate", 0.5), ("sauce", 0.1)],
    ]
    voted = vote(responses, n=10)  # R = 5: a tag needs 3 votes
    assert [(v.tag, v.votes) for v in voted] == [("coffee", 4), ("tea", 3)]
    assert voted[0].mean_score == pytest.approx((0.9 + 0.7 + 0.5 + 0.9) / 4)
    assert voted[1].mean_score == pytest.approx((0.8 + 0.6 + 1.0) / 3)


def test_vote_orders_by_votes_then_mean_score_and_cuts_to_n():
    responses = [[("a", 0.2), ("b", 0.9), ("c", 0.5)], [("a", 0.2), ("b", 0.9), ("c", 0.5)],
                 [("a", 0.2), ("c", 0.5)]]
    assert [v.tag for v in vote(responses, n=3, min_votes=2)] == ["c", "a", "b"]  # c, a: 3 votes; c scores higher
    assert [v.tag for v in vote(responses, n=1, min_votes=2)] == ["c"]
    assert [v.tag for v in vote(responses, n=5, min_votes=1)] == ["c", "a", "b"]


def test_a_tag_repeated_in_one_response_counts_once():
    voted = vote([[("tea", 0.5), ("Tea", 0.9)], [("coffee", 0.4)], [("coffee", 0.4)]], n=5, min_votes=1)
    assert [(v.tag, v.votes) for v in voted] == [("coffee", 2), ("tea", 1)]
    assert voted[1].mean_score == 0.9


def test_majority_and_identical_responses():
    assert [majority(r) for r in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    same = [[("x", 1.0), ("y", 0.5)]] * 5  # temperature 0: the usual case with a deterministic LLM
    assert [(v.tag, v.votes) for v in vote(same, n=2)] == [("x", 5), ("y", 5)]
    with pytest.raises(ValueError):
        vote([], n=3)
