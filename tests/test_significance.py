"""Paired tests on reciprocal ranks and the cold/warm, own-domain-history slices, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from temarec.significance import (against_reference, best_other, bootstrap_mean_diff, compare, instance_frame,
                                  significance_report, slice_mrr, verdict, wilcoxon_rr)


def test_identical_ranks_have_nothing_to_test():
    out = wilcoxon_rr(np.array([1, 2, 3]), np.array([1, 2, 3]))
    assert out == {"n": 3, "n_nonzero": 0, "mean_diff": 0.0, "p": 1.0}


def test_six_wins_out_of_six_is_the_exact_two_sided_p():
    # every pair favours a, all |differences| distinct: the exact null puts 1/2^6 on each tail
    a = np.array([1, 1, 1, 1, 1, 1])
    b = np.array([2, 3, 4, 5, 6, 7])
    out = wilcoxon_rr(a, b)
    assert out["p"] == pytest.approx(2 / 2 ** 6)
    assert out["mean_diff"] == pytest.approx(np.mean(1 - 1 / b))
    swapped = wilcoxon_rr(b, a)
    assert swapped["p"] == pytest.approx(out["p"]) and swapped["mean_diff"] == pytest.approx(-out["mean_diff"])


def test_unpaired_shapes_are_refused():
    with pytest.raises(ValueError, match="same instances"):
        wilcoxon_rr(np.array([1, 2]), np.array([1, 2, 3]))


def test_bootstrap_interval_of_a_constant_difference_is_that_difference():
    a, b = np.full(40, 1), np.full(40, 4)  # every pair differs by 1 - 1/4
    assert bootstrap_mean_diff(a, b) == pytest.approx((0.75, 0.75))


def test_bootstrap_interval_is_about_the_mean_not_the_median():
    # 900 pairs favour a by 0.01, 100 favour b by 0.5: Wilcoxon sees a shift towards a, the mean favours b
    a = np.concatenate([np.full(900, 1 / 0.51), np.full(100, 1 / 0.01)])
    b = np.concatenate([np.full(900, 2.0), np.full(100, 1 / 0.51)])
    mean_diff = np.mean(1 / a - 1 / b)
    assert mean_diff < 0
    assert wilcoxon_rr(a, b)["p"] < 1e-3  # a "significant" shift the other way
    low, high = bootstrap_mean_diff(a, b)
    assert low < mean_diff < high < 0
    # the interval is paired and seeded: swapping the sides mirrors it, and a second call repeats it
    assert bootstrap_mean_diff(b, a) == pytest.approx((-high, -low))
    assert bootstrap_mean_diff(a, b) == (low, high)


def test_bootstrap_interval_covers_zero_without_a_difference():
    rng = np.random.default_rng(1)
    a = rng.integers(1, 100, size=3000)
    low, high = bootstrap_mean_diff(a, rng.permutation(a))
    assert low < 0 < high
    with pytest.raises(ValueError, match="same instances"):
        bootstrap_mean_diff(np.array([1, 2]), np.array([1]))


def _frames(ranks_by_seed, domain=None, cold=None, own=None):
    out = {}
    for seed, ranks in ranks_by_seed.items():
        n = len(ranks)
        out[seed] = instance_frame("test", np.zeros(n, int) if domain is None else domain, ranks, ranks,
                                   np.zeros(n, bool) if cold is None else cold,
                                   np.ones(n, bool) if own is None else own)
    return out


def test_compare_pairs_seeds_and_averages_across_them():
    rng = np.random.default_rng(0)
    worse = {s: rng.integers(5, 50, size=200) for s in (0, 1)}
    better = {s: np.maximum(1, worse[s] // 4) for s in (0, 1)}
    out = compare(_frames(better), _frames(worse), domain=0, protocol="sampled")
    assert out["seeds"] == [0, 1]
    assert all(r["p"] < 1e-6 and r["mean_diff"] > 0 for r in out["per_seed"].values())
    across = out["across_seeds"]
    expected = np.mean([1 / better[s] for s in (0, 1)], axis=0) - np.mean([1 / worse[s] for s in (0, 1)], axis=0)
    assert across["mean_diff"] == pytest.approx(expected.mean()) and across["p"] < 1e-6
    assert 0 < across["ci95"][0] < across["mean_diff"] < across["ci95"][1]


def test_compare_needs_a_common_seed():
    with pytest.raises(ValueError, match="share no seed"):
        compare(_frames({0: np.array([1])}), _frames({1: np.array([1])}), domain=0, protocol="sampled")


def test_slices_split_cold_from_warm_and_own_domain_history():
    ranks = np.array([1, 2, 4, 5])
    frames = _frames({0: ranks}, cold=np.array([True, False, False, True]),
                     own=np.array([True, True, False, False]))
    out = slice_mrr(frames, domain=0, protocol="full")
    assert out["cold"] == {"n": 2, "mrr": pytest.approx((1 + 1 / 5) / 2)}
    assert out["warm"] == {"n": 2, "mrr": pytest.approx((1 / 2 + 1 / 4) / 2)}
    assert out["own-domain history"]["mrr"] == pytest.approx((1 + 1 / 2) / 2)
    assert out["no own-domain history"]["mrr"] == pytest.approx((1 / 4 + 1 / 5) / 2)


def test_empty_slice_is_none_not_an_error():
    out = slice_mrr(_frames({0: np.array([1, 2])}), domain=1, protocol="full")
    assert out["cold"] == {"n": 0, "mrr": None}


def test_report_tests_each_model_against_the_best_other():
    frames = {"a": _frames({0: np.full(60, 1)}), "b": _frames({0: np.full(60, 3)}), "c": _frames({0: np.full(60, 9)})}
    mean = {"sampled": {"Food": {"a": 1.0, "b": 1 / 3, "c": 1 / 9}}}
    out = significance_report(frames, mean, ["Food"], protocols=("sampled",))["sampled"]["Food"]
    assert out["a"]["against"] == "b" and out["b"]["against"] == "a" and out["c"]["against"] == "a"
    assert out["a"]["across_seeds"]["mean_diff"] > 0 > out["c"]["across_seeds"]["mean_diff"]
    assert best_other({"a": 0.1}, "a") is None


def test_report_pairs_a_model_only_with_models_that_share_a_seed():
    """Old runs without ranks for some seeds: a model is tested against the best other it has a seed in common with."""
    frames = {"a": _frames({2: np.full(60, 1)}), "b": _frames({0: np.full(60, 3)}), "c": _frames({0: np.full(60, 9)})}
    mean = {"sampled": {"Food": {"a": 1.0, "b": 1 / 3, "c": 1 / 9}}}
    out = significance_report(frames, mean, ["Food"], protocols=("sampled",))["sampled"]["Food"]
    assert "a" not in out  # no other model ran seed 2
    assert out["b"]["against"] == "c" and out["c"]["against"] == "b"  # not a, the best overall


def test_against_reference_tests_every_other_model_that_shares_a_seed():
    frames = {"pop": _frames({0: np.full(60, 5)}), "a": _frames({0: np.full(60, 1)}),
              "b": _frames({0: np.full(60, 9)}), "c": _frames({1: np.full(60, 1)})}
    out = against_reference(frames, "pop", ["Food"], protocols=("sampled",))["sampled"]["Food"]
    assert set(out) == {"a", "b"}  # not pop itself, not c (no seed in common)
    assert verdict(out["a"]["across_seeds"]["ci95"]) == "above"
    assert verdict(out["b"]["across_seeds"]["ci95"]) == "below"
    assert verdict((-0.1, 0.2)) == "not shown"
