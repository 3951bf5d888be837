"""GRU4Rec: shapes, left-padding invariance, causality, finite scores on empty histories, and that it learns."""

from __future__ import annotations

import pytest
import torch

from temarec.config import ModelConfig
from temarec.models.base import ModelContext
from temarec.models.gru4rec import GRU4Rec, roll_rows

CTX = ModelContext(domain_sizes=(7, 5), domains=("Food", "Kitchen"), max_len=12)
HISTORY = torch.tensor([[0, 0, 0, 3, 9, 1],  # ids 1..7 are Food, 8..12 Kitchen; 0 = padding
                        [2, 8, 12, 4, 4, 10],
                        [0, 0, 0, 0, 0, 11]])


def make_model(**overrides) -> GRU4Rec:
    torch.manual_seed(0)
    cfg = ModelConfig(name="gru4rec", dim=16, layers=2, dropout=0.1, **overrides)
    return GRU4Rec(cfg, CTX).eval()


def test_roll_rows_matches_torch_roll():
    x = torch.arange(12).view(3, 4)
    shifts = torch.tensor([0, 1, -2])
    expected = torch.stack([torch.roll(x[i], int(s)) for i, s in enumerate(shifts)])
    assert torch.equal(roll_rows(x, shifts), expected)


@pytest.mark.parametrize("domain, n", [(0, 7), (1, 5)])
def test_score_shapes(domain, n):
    assert make_model().score_domain(HISTORY, domain).shape == (3, n)


def test_extra_left_padding_leaves_scores_unchanged():
    model = make_model()
    padded = torch.cat([torch.zeros(3, 4, dtype=torch.long), HISTORY], dim=1)
    with torch.no_grad():
        for domain in (0, 1):
            torch.testing.assert_close(model.score_domain(padded, domain), model.score_domain(HISTORY, domain))


def test_changing_a_later_item_leaves_earlier_states_unchanged():
    model = make_model()
    changed = HISTORY.clone()
    changed[:, -1] = 5
    with torch.no_grad():
        h, h_changed = model.encode(HISTORY), model.encode(changed)
    torch.testing.assert_close(h[:, :-1], h_changed[:, :-1])
    assert not torch.allclose(h[:, -1], h_changed[:, -1])


def test_all_padding_history_gives_finite_scores():
    model = make_model()
    with torch.no_grad():
        for length in (1, 6):
            assert torch.isfinite(model.score_domain(torch.zeros(2, length, dtype=torch.long), 1)).all()


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_loss_decreases_when_overfitting(loss):
    model = make_model(loss=loss, num_sampled=4).train()
    seqs = torch.tensor([[0, 0, 1, 8, 2, 9, 3],
                         [4, 12, 5, 11, 6, 10, 7],
                         [0, 0, 0, 0, 0, 0, 0]])  # an all-padding row must not break the loss
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    losses = []
    for _ in range(50):
        opt.zero_grad()
        value = model.training_loss(seqs)
        value.backward()
        opt.step()
        losses.append(value.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
