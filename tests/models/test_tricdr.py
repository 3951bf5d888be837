"""Tri-CDR: shapes, padding, no peeking at later items, TCL's pieces, it learns, settings."""

from __future__ import annotations

import pytest
import torch

from model_checks import (CTX, DOMAIN_SIZES, HISTORY, assert_left_padding_leaves_scores_unchanged, assert_losses_halve,
                          assert_scores_cover_the_domain)
from temarec.config import ModelConfig
from temarec.models.tricdr import TriCDR, TriCDRSettings, info_nce, segment_softmax


def make_model(**overrides) -> TriCDR:
    torch.manual_seed(0)
    return TriCDR(ModelConfig(name="tricdr", dim=16, dropout=0.1, **overrides), CTX).eval()


@pytest.mark.parametrize("domain, n", DOMAIN_SIZES)
def test_scores_are_scaled_cosines_over_the_domains_items(domain, n):
    scores = assert_scores_cover_the_domain(make_model(), domain, n)
    assert scores.abs().max() <= TriCDRSettings().scale + 1e-5


def test_extra_left_padding_leaves_scores_unchanged():
    assert_left_padding_leaves_scores_unchanged(make_model())


def test_read_outs_at_a_position_ignore_later_items():
    model = make_model()
    changed = HISTORY.clone()
    changed[:, -1] = 5
    rows, times = torch.arange(3), torch.full((3,), HISTORY.size(1) - 2)
    with torch.no_grad():
        for domain in (0, 1):
            a = model.read_out(model.encode(HISTORY), rows, times, domain)
            b = model.read_out(model.encode(changed), rows, times, domain)
            for role in a:
                torch.testing.assert_close(a[role], b[role])


def test_segment_softmax_normalises_within_each_segment():
    w = segment_softmax(torch.tensor([0.0, 0.0, 1.0, 5.0]), torch.tensor([0, 0, 2, 2]), 3)
    torch.testing.assert_close(w[:2], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(w[2:].sum(), torch.tensor(1.0))
    assert w[3] > w[2]


def test_info_nce_prefers_aligned_pairs():
    a = torch.eye(4)
    assert info_nce(a, a, 0.1) < info_nce(a, a.roll(1, dims=0), 0.1)
    assert info_nce(a[:1], a[:1], 0.1) == 0.0  # one pair: no negatives, no loss


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_loss_decreases_when_overfitting(overfit, loss, one_thread):
    losses = overfit(make_model(loss=loss, num_sampled=4), lr=1e-2, steps=40)  # fixture in tests/conftest.py
    assert_losses_halve(losses)


@pytest.mark.parametrize("field, value", [("scale", 0.0), ("infonce_temperature", -1.0),
                                          ("pair_weights", (0.0, 0.0, 0.0)), ("attention_hidden", (80,))])
def test_bad_settings_are_one_line_errors(field, value):
    with pytest.raises(ValueError, match=f"model.tricdr.{field}"):
        TriCDRSettings(**{field: value})
