"""Invariants shared by the two tied-embedding baselines (GRU4Rec, SASRec): shapes, left-padding invariance,
causality, finite scores on empty histories, and that they learn with either loss."""

from __future__ import annotations

import pytest
import torch

from temarec.config import ModelConfig
from temarec.models.base import ModelContext
from temarec.models.gru4rec import GRU4Rec
from temarec.models.sasrec import SASRec

CTX = ModelContext(domain_sizes=(7, 5), domains=("Food", "Kitchen"), max_len=12)
HISTORY = torch.tensor([[0, 0, 0, 3, 9, 1],  # ids 1..7 are Food, 8..12 Kitchen; 0 = padding
                        [2, 8, 12, 4, 4, 10],
                        [0, 0, 0, 0, 0, 11]])
MODELS = {"gru4rec": (GRU4Rec, {}), "sasrec": (SASRec, {"heads": 2})}


@pytest.fixture(params=sorted(MODELS))
def make_model(request):
    cls, extra = MODELS[request.param]

    def build(**overrides):
        torch.manual_seed(0)
        cfg = ModelConfig(name=request.param, dim=16, layers=2, dropout=0.1, **extra, **overrides)
        return cls(cfg, CTX).eval()

    return build


@pytest.mark.parametrize("domain, n", [(0, 7), (1, 5)])
def test_score_shapes(make_model, domain, n):
    assert make_model().score_domain(HISTORY, domain).shape == (3, n)


def test_extra_left_padding_leaves_scores_unchanged(make_model):
    model = make_model()
    padded = torch.cat([torch.zeros(3, 4, dtype=torch.long), HISTORY], dim=1)
    with torch.no_grad():
        for domain in (0, 1):
            torch.testing.assert_close(model.score_domain(padded, domain), model.score_domain(HISTORY, domain))


def test_changing_a_later_item_leaves_earlier_states_unchanged(make_model):
    model = make_model()
    changed = HISTORY.clone()
    changed[:, -1] = 5
    with torch.no_grad():
        h, h_changed = model.encode(HISTORY), model.encode(changed)
    torch.testing.assert_close(h[:, :-1], h_changed[:, :-1])
    assert not torch.allclose(h[:, -1], h_changed[:, -1])


def test_all_padding_history_gives_finite_scores(make_model):
    model = make_model()
    with torch.no_grad():
        for length in (1, 6):
            assert torch.isfinite(model.score_domain(torch.zeros(2, length, dtype=torch.long), 1)).all()


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_loss_decreases_when_overfitting(make_model, overfit, loss):
    losses = overfit(make_model(loss=loss, num_sampled=4), lr=3e-2, steps=50)  # fixture in tests/conftest.py
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
