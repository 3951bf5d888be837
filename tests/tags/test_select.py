import numpy as np
import pytest

from temarec.tags.select import ranks, represent, select, tag_vectors

# 3 items x 6 tags on the 1-100 scale; 0 = no score (keyword matching: no match)
S = np.array([
    [90, 80, 75, 40, 20, 10],
    [50, 71, 30, 71, 0, 5],
    [0, 0, 100, 0, 0, 0],
], dtype=np.uint8)


def test_ranks_break_ties_in_vocabulary_order():
    assert ranks(S)[1].tolist() == [2, 0, 3, 1, 5, 4]


def test_topr_threshold_hybrid_on_hand_computed_example():
    top2 = select(S, "topr", top_r=2)
    assert top2.astype(int).tolist() == [[1, 1, 0, 0, 0, 0], [0, 1, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0]]
    thr = select(S, "threshold", theta=70)
    assert thr.astype(int).tolist() == [[1, 1, 1, 0, 0, 0], [0, 1, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0]]
    # hybrid: top-1, then further tags >= 70, at most 2 in all
    hyb = select(S, "hybrid", top_r=1, theta=70, max_tags=2)
    assert hyb.astype(int).tolist() == [[1, 1, 0, 0, 0, 0], [0, 1, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0]]
    hyb = select(S, "hybrid", top_r=2, theta=70, max_tags=5)
    assert hyb.astype(int).tolist() == [[1, 1, 1, 0, 0, 0], [0, 1, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0]]
    hyb = select(S, "hybrid", top_r=4, theta=99, max_tags=5)  # top-R alone when nothing else passes theta
    assert hyb.astype(int).tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0], [0, 0, 1, 0, 0, 0]]


def test_unscored_pairs_are_never_selected():
    assert not select(S, "topr", top_r=6)[2, [0, 1, 3, 4, 5]].any()
    assert not select(S, "hybrid", top_r=6, max_tags=6)[1, 4]


def test_representations_on_hand_computed_example():
    mask = select(S, "topr", top_r=2)
    one = represent(S, mask, "onehot")
    assert one.tolist() == [[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]]  # tie 71/71 -> first
    multi = represent(S, mask, "multihot")
    assert multi.tolist() == [[0.5, 0.5, 0, 0, 0, 0], [0, 0.5, 0, 0.5, 0, 0], [0, 0, 1, 0, 0, 0]]
    w = represent(S, mask, "weighted")
    np.testing.assert_allclose(w[0], [90 / 170, 80 / 170, 0, 0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(w[1], [0, 0.5, 0, 0.5, 0, 0], rtol=1e-6)
    assert w.dtype == np.float32


def test_items_without_a_selected_tag_get_a_zero_row():
    scores = np.array([[60, 50], [0, 0]], dtype=np.uint8)
    for representation in ("onehot", "multihot", "weighted"):
        v = tag_vectors(scores, "threshold", representation, theta=70)
        assert v.tolist() == [[0, 0], [0, 0]]
        v = tag_vectors(scores, "topr", representation, top_r=5)
        assert v[1].tolist() == [0, 0] and v[0].sum() == pytest.approx(1.0)


def test_unknown_strategy_names_the_valid_ones():
    with pytest.raises(ValueError, match="topr"):
        select(S, "top5")
    with pytest.raises(ValueError, match="weighted"):
        represent(S, S > 0, "soft")
