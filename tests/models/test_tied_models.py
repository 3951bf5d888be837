"""Invariants shared by the two tied-embedding baselines (GRU4Rec, SASRec): shapes, left-padding invariance,
causality, finite scores on empty histories, and that they learn with either loss."""

from __future__ import annotations

import pytest
import torch

from model_checks import (CTX, DOMAIN_SIZES, assert_a_later_item_changes_only_the_last_state,
                          assert_empty_histories_give_finite_scores, assert_left_padding_leaves_scores_unchanged,
                          assert_losses_halve, assert_scores_cover_the_domain)
from temarec.config import ModelConfig
from temarec.models.gru4rec import GRU4Rec
from temarec.models.sasrec import SASRec

MODELS = {"gru4rec": (GRU4Rec, {}), "sasrec": (SASRec, {"heads": 2})}


@pytest.fixture(params=sorted(MODELS))
def make_model(request):
    cls, extra = MODELS[request.param]

    def build(**overrides):
        torch.manual_seed(0)
        cfg = ModelConfig(name=request.param, dim=16, layers=2, dropout=0.1, **extra, **overrides)
        return cls(cfg, CTX).eval()

    return build


@pytest.mark.parametrize("domain, n", DOMAIN_SIZES)
def test_score_shapes(make_model, domain, n):
    assert_scores_cover_the_domain(make_model(), domain, n)


def test_extra_left_padding_leaves_scores_unchanged(make_model):
    assert_left_padding_leaves_scores_unchanged(make_model())


def test_changing_a_later_item_leaves_earlier_states_unchanged(make_model):
    assert_a_later_item_changes_only_the_last_state(make_model().encode, dim=1)  # (B, L, D)


def test_all_padding_history_gives_finite_scores(make_model):
    assert_empty_histories_give_finite_scores(make_model())


@pytest.mark.parametrize("loss, power", [("full", 0.0), ("sampled", 0.0), ("sampled", 1.0)])
def test_loss_decreases_when_overfitting(make_model, overfit, loss, power):
    """power 1: the sampled loss's negatives drawn by training count, log-Q corrected (model.negative_power)."""
    losses = overfit(make_model(loss=loss, num_sampled=4, negative_power=power), lr=3e-2, steps=50)  # tests/conftest.py
    assert_losses_halve(losses)
