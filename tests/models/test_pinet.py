"""π-Net: the batched merged-history pass against a one-history-at-a-time reference, shapes, padding, causality,
learning, gradient clipping, settings, and a train -> resume -> reload round trip on the generated world."""

from __future__ import annotations

import pytest
import torch

import model_checks
from model_checks import (CTX, DOMAIN_SIZES, assert_a_later_item_changes_only_the_last_state,
                          assert_empty_histories_give_finite_scores, assert_left_padding_leaves_scores_unchanged,
                          assert_losses_halve, assert_ranks_each_next_item_first, assert_scores_cover_the_domain,
                          assert_train_resume_reload)
from temarec.config import ModelConfig
from temarec.models.pinet import PiNet, PiNetSettings

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors on a shared machine

HISTORY = torch.cat([model_checks.HISTORY, torch.tensor([[9, 10, 8, 1, 2, 3]])])  # + one opening with Kitchen


def make_model(**settings) -> PiNet:
    torch.manual_seed(0)
    cfg = ModelConfig(name="pinet", specific={"pinet": PiNetSettings(**{"dim": 8, **settings})})
    return PiNet(cfg, CTX).eval()


def reference_hidden(model: PiNet, seq: list[int], e: int) -> torch.Tensor:
    """[h_e; h_{d->e}; 1] after the last item of ``seq`` (real ids, oldest first), one history at a time: split by
    domain, encode each part, walk d's items through the filter with e's state at that moment, then the CTU."""
    D = model.settings.dim
    dom = [int(i > CTX.domain_sizes[0]) for i in seq]

    def gru(module: torch.nn.Module, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(module.gru(torch.stack(xs)[None])[0][0]) if xs else []

    enc = {d: gru(model.encoders[d], [model.item_emb.weight[i] for i, di in zip(seq, dom) if di == d]) for d in (0, 1)}

    def e_state_at(m: int) -> torch.Tensor:  # e's encoder state after its last item among seq[:m + 1]
        seen = sum(1 for di in dom[:m + 1] if di == e)
        return enc[e][seen - 1] if seen else torch.zeros(D)

    d, unit = 1 - e, model.filters[1 - e]
    s, filtered, j = torch.zeros(D), [], 0
    for m, di in enumerate(dom):
        if di != d:
            continue
        own = enc[d][j]
        j += 1
        f = torch.sigmoid(unit.gate(torch.cat([own, e_state_at(m), s])) + unit.gate_member(unit.members))  # (K, D)
        c = torch.tanh(unit.cand(torch.cat([own, s])) + unit.cand_member(unit.members))
        s = (f * s + (1 - f) * c).mean(0)
        filtered.append(s)
    transferred = gru(model.transfers[d], filtered)
    h_e = enc[e][-1] if enc[e] else torch.zeros(D)
    h_de = transferred[-1] if transferred else torch.zeros(D)
    return torch.cat([h_e, h_de, torch.ones(1)])



def test_every_position_matches_the_one_history_reference():
    model = make_model()
    with torch.no_grad():
        h = model.hidden(HISTORY)  # (2, B, L, 2D + 1)
        for b, row in enumerate(HISTORY):
            for t in range(len(row)):
                if row[t] == 0:
                    continue
                seq = [int(i) for i in row[:t + 1] if i > 0]
                for e in (0, 1):
                    torch.testing.assert_close(h[e, b, t], reference_hidden(model, seq, e))


@pytest.mark.parametrize("domain, n", DOMAIN_SIZES)
def test_score_shapes(domain, n):
    assert_scores_cover_the_domain(make_model(), domain, n, HISTORY)


def test_extra_left_padding_leaves_scores_unchanged():
    assert_left_padding_leaves_scores_unchanged(make_model(), HISTORY, extra=3)


def test_changing_a_later_item_leaves_earlier_states_unchanged():
    assert_a_later_item_changes_only_the_last_state(make_model().hidden, dim=2, history=HISTORY)  # (2, B, L, 2D+1)


def test_empty_history_gives_finite_scores():
    assert_empty_histories_give_finite_scores(make_model(), lengths=(5,))


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_loss_decreases_when_overfitting(overfit, loss):
    model = make_model()
    model.cfg = ModelConfig(name="pinet", loss=loss, num_sampled=4, specific={"pinet": model.settings})
    losses = overfit(model, lr=3e-2, steps=50)
    assert_losses_halve(losses)


def test_overfitting_a_fixed_dataset_ranks_each_next_item_first(overfit):
    model = make_model(dropout=0.0)
    overfit(model, lr=3e-2, steps=150)
    model.eval()
    seq = overfit.seqs[1]  # Food and Kitchen alternate: 4 12 5 11 6 10 7
    assert_ranks_each_next_item_first(model, seq, start=1)


def test_gradients_are_clipped_by_value():
    model = make_model(grad_clip=0.5)
    (model.training_loss(torch.tensor([[0, 1, 8, 2, 9]])) * 1e4).backward()
    grads = torch.cat([w.grad.flatten() for w in model.parameters() if w.grad is not None])
    assert grads.abs().max() == pytest.approx(0.5)


@pytest.mark.parametrize("field, value", [("dim", 0), ("members", 0), ("dropout", 1.0), ("grad_clip", -1.0)])
def test_bad_settings_are_one_line_errors(field, value):
    with pytest.raises(ValueError, match=f"model.pinet.{field}"):
        PiNetSettings(**{field: value})


def test_train_resume_and_reload(generated_dataset, tmp_path, tiny):
    assert_train_resume_reload(generated_dataset, tmp_path / "run", tiny, "pinet", PiNetSettings(dim=16), domain=1)
