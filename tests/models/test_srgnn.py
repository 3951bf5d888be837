"""SR-GNN: the batched prefix graphs against a one-session-at-a-time reference, shapes, padding, learning,
settings, and a train -> resume -> reload round trip on the generated world."""

from __future__ import annotations

import pytest
import torch

from model_checks import (CTX, DOMAIN_SIZES, assert_empty_histories_give_finite_scores,
                          assert_left_padding_leaves_scores_unchanged, assert_losses_halve,
                          assert_ranks_each_next_item_first, assert_scores_cover_the_domain,
                          assert_train_resume_reload)
from temarec.config import ModelConfig
from temarec.models.srgnn import SRGNN, SRGNNSettings

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors on a shared machine

# ids 1..7 Food, 8..12 Kitchen; 0 = padding. Row 1 repeats the transition 2 -> 8, row 3 has a self-loop (4 -> 4).
HISTORY = torch.tensor([[0, 0, 0, 3, 9, 1],
                        [2, 8, 12, 2, 8, 10],
                        [0, 0, 0, 0, 0, 11],
                        [0, 5, 4, 4, 9, 5]])


def make_model(steps: int = 1, l2: float = 1e-5, **overrides) -> SRGNN:
    torch.manual_seed(0)
    cfg = ModelConfig(name="srgnn", specific={"srgnn": SRGNNSettings(dim=8, steps=steps, l2=l2)}, **overrides)
    return SRGNN(cfg, CTX).eval()


def reference_session(model: SRGNN, session: list[int]) -> torch.Tensor:
    """One session, written as the paper states it: distinct items are nodes, A^in / A^out binary and
    normalised by degree (eq. (1)), GRU updates (eqs. (2)-(5)), soft attention over positions (eqs. (6)-(7))."""
    nodes = sorted(set(session))
    at = {v: i for i, v in enumerate(nodes)}
    adj = torch.zeros(len(nodes), len(nodes))
    for a, b in zip(session, session[1:]):
        adj[at[a], at[b]] = 1.0
    a_in = adj.T / adj.sum(0).clamp(min=1)[:, None]  # row i: i's in-neighbours, 1 / in-degree each
    a_out = adj / adj.sum(1).clamp(min=1)[:, None]
    h = model.item_emb(torch.tensor(nodes))
    for layer in model.layers:
        a = torch.cat([a_in @ layer.edge_in(h), a_out @ layer.edge_out(h)], -1) + layer.bias
        h = layer.gru(a, h)
    v = h[[at[s] for s in session]]  # (n, D) per position
    s_last = v[-1]
    alpha = model.att_q(torch.sigmoid(model.att_last(s_last) + model.att_item(v)))
    return model.combine(torch.cat([s_last, (alpha * v).sum(0)]))


@pytest.mark.parametrize("steps", [1, 2])
def test_every_prefix_matches_the_one_session_reference(steps):
    model = make_model(steps)
    ends = HISTORY > 0
    with torch.no_grad():
        batched = model.sessions(HISTORY, ends)
        expected = torch.stack([reference_session(model, [int(i) for i in row[:t + 1] if i > 0])
                                for row in HISTORY for t in range(len(row)) if row[t] > 0])
    torch.testing.assert_close(batched, expected)


def test_score_domain_scores_the_whole_history_as_one_session():
    model = make_model()
    with torch.no_grad():
        s = reference_session(model, [2, 8, 12, 2, 8, 10])
        torch.testing.assert_close(model.score_domain(HISTORY[1:2], 1)[0], model.item_emb.weight[8:13] @ s)


@pytest.mark.parametrize("domain, n", DOMAIN_SIZES)
def test_score_shapes(domain, n):
    assert_scores_cover_the_domain(make_model(), domain, n, HISTORY)


def test_extra_left_padding_and_a_later_item_do_not_change_a_prefix():
    model = make_model()
    assert_left_padding_leaves_scores_unchanged(model, HISTORY, extra=3)
    with torch.no_grad():
        changed = HISTORY.clone()
        changed[:, -1] = 6
        ends = torch.zeros_like(HISTORY, dtype=torch.bool)
        ends[:, -2] = HISTORY[:, -2] > 0
        torch.testing.assert_close(model.sessions(changed, ends), model.sessions(HISTORY, ends))


def test_empty_history_gives_finite_scores_that_are_not_all_tied():
    scores = assert_empty_histories_give_finite_scores(make_model(), domain=0, lengths=(5,))
    assert scores[0].unique().numel() > 1


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_loss_decreases_when_overfitting(overfit, loss):
    losses = overfit(make_model(loss=loss, num_sampled=4), lr=3e-2, steps=50)
    assert_losses_halve(losses)


def test_overfitting_a_fixed_dataset_ranks_each_next_item_first(overfit):
    model = make_model(l2=0.0)
    overfit(model, lr=3e-2, steps=150)
    model.eval()
    seq = overfit.seqs[1]  # Food and Kitchen alternate: 4 12 5 11 6 10 7
    assert_ranks_each_next_item_first(model, seq, start=2)


@pytest.mark.parametrize("field, value, message", [("dim", 0, "model.srgnn.dim"), ("steps", 0, "model.srgnn.steps"),
                                                   ("l2", -1.0, "model.srgnn.l2")])
def test_bad_settings_are_one_line_errors(field, value, message):
    with pytest.raises(ValueError, match=message):
        SRGNNSettings(**{field: value})


def test_train_resume_and_reload(generated_dataset, tmp_path, tiny):
    assert_train_resume_reload(generated_dataset, tmp_path / "run", tiny, "srgnn", SRGNNSettings(dim=12), domain=0)
