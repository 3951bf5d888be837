"""MAN: shapes, padding, no peeking at later items, finite scores with an empty domain, it learns, settings."""

from __future__ import annotations

import pytest
import torch

from model_checks import (CTX, DOMAIN_SIZES, HISTORY, assert_left_padding_leaves_scores_unchanged, assert_losses_halve,
                          assert_scores_cover_the_domain)
from temarec.config import ModelConfig
from temarec.models.man import MAN, MANSettings


def make_model(**overrides) -> MAN:
    torch.manual_seed(0)
    return MAN(ModelConfig(name="man", dim=16, dropout=0.1, **overrides), CTX).eval()


@pytest.mark.parametrize("domain, n", DOMAIN_SIZES)
def test_scores_cover_the_domains_items_and_are_finite(domain, n):
    assert_scores_cover_the_domain(make_model(), domain, n)


def test_extra_left_padding_leaves_scores_unchanged():
    assert_left_padding_leaves_scores_unchanged(make_model())


@pytest.mark.parametrize("readout", ["mean", "last"])
def test_features_at_a_position_ignore_later_items(readout):
    model = make_model(specific={"man": MANSettings(readout=readout)})
    changed = HISTORY.clone()
    changed[:, -1] = 5  # a different (Food) item last
    at = torch.full((3, 1), HISTORY.size(1) - 2)
    with torch.no_grad():
        for domain in (0, 1):
            a, b = model.features(HISTORY, at, domain), model.features(changed, at, domain)
            torch.testing.assert_close(a.local, b.local)
            torch.testing.assert_close(a.glob, b.glob)
        assert not torch.allclose(model.score_domain(HISTORY, 0), model.score_domain(changed, 0))


def test_the_item_similarity_term_changes_the_scores_and_can_be_switched_off():
    with torch.no_grad():
        full = make_model().score_domain(HISTORY, 1)
        towers = make_model(specific={"man": MANSettings(item_similarity=False)}).score_domain(HISTORY, 1)
    assert not torch.allclose(full, towers)


def test_eval_chunks_give_the_same_scores():
    model = make_model()
    small = make_model(specific={"man": MANSettings(eval_chunk=1)})
    with torch.no_grad():
        torch.testing.assert_close(model.score_domain(HISTORY, 0), small.score_domain(HISTORY, 0))


@pytest.mark.parametrize("loss, power", [("full", 0.0), ("sampled", 0.0), ("sampled", 1.0)])
def test_loss_decreases_when_overfitting(overfit, loss, power, one_thread):
    """power 1: the towers' and the item-similarity term's negatives drawn by training count (log-Q corrected)."""
    losses = overfit(make_model(loss=loss, num_sampled=4, negative_power=power), lr=3e-2, steps=40)  # conftest.py
    assert_losses_halve(losses)


@pytest.mark.parametrize("field, value", [("num_groups", 0), ("similarity_window", 0), ("eval_chunk", 0),
                                          ("readout", "max"), ("similarity_position", "first")])
def test_bad_settings_are_one_line_errors(field, value):
    with pytest.raises(ValueError, match=f"model.man.{field}"):
        MANSettings(**{field: value})


def test_similarity_positions_last_and_random_pick_only_selected_positions():
    sel = torch.tensor([[False, True, False, True],
                        [True, False, False, False],
                        [False, False, False, False]])
    rows, t = make_model(specific={"man": MANSettings(similarity_position="last")}).similarity_positions(sel)
    assert rows.tolist() == [0] and t.tolist() == [3]
    model = make_model()  # random: every row with a selected position, each selected position drawn in time
    drawn = set()
    for _ in range(50):
        rows, t = model.similarity_positions(sel)
        assert rows.tolist() == [0, 1]
        assert sel[rows, t].all()
        drawn |= {(r, p) for r, p in zip(rows.tolist(), t.tolist())}
    assert drawn == {(0, 1), (0, 3), (1, 0)}


def test_the_full_score_loss_at_a_position_ignores_later_items():
    model = make_model()
    changed = HISTORY.clone()
    changed[:, -1] = 5
    rows, t = torch.tensor([0, 1]), torch.tensor([3, 2])  # Food targets 1 and 4 at positions 4 and 3 of HISTORY
    with torch.no_grad():
        losses = []
        for seqs in (HISTORY, changed):
            feats = model.features(seqs, torch.arange(seqs.size(1)).expand(3, -1), 0)
            torch.manual_seed(1)  # the same sampled negatives for both
            losses.append(model.position_loss(feats, rows, t, torch.tensor([1, 4]), 0))
    torch.testing.assert_close(losses[0], losses[1])
