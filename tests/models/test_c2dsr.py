"""C2DSR: item graphs (golden values), view helpers, shapes, padding invariance, the cached inference tables,
bad settings, overfitting a tiny dataset with either loss, and train -> resume -> recommend on the generated world."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model_checks import (DOMAIN_SIZES, HISTORY, assert_empty_histories_give_finite_scores,
                          assert_left_padding_leaves_scores_unchanged, assert_losses_halve,
                          assert_scores_cover_the_domain)
from temarec.config import ModelConfig, load_config
from temarec.models.base import ModelContext
from temarec.models.c2dsr import (C2DSR, C2DSRSettings, forward_fill, item_graphs, masked_mean, next_in_domain,
                                  transition_graph)

SIZES = (7, 5)  # ids 1..7 are Food, 8..12 Kitchen; 0 = padding
TRAIN = [np.array([0, 7, 1, 8, 2]), np.array([3, 11, 4, 10, 5, 9, 6]), np.array([0, 1, 0])]  # internal idx


def make_ctx(train=TRAIN, sizes=SIZES) -> ModelContext:
    ctx = ModelContext(domain_sizes=sizes, domains=("Food", "Kitchen"), max_len=12)
    ctx.extras["c2dsr_graphs"] = item_graphs(train, sizes)
    return ctx


def make_model(settings: C2DSRSettings | None = None, **overrides) -> C2DSR:
    torch.manual_seed(0)
    cfg = ModelConfig(name="c2dsr", dim=16, layers=2, heads=2, dropout=0.1, **overrides,
                      specific={"c2dsr": settings or C2DSRSettings()})
    return C2DSR(cfg, make_ctx()).eval()


def dense(graph) -> torch.Tensor:
    return torch.sparse_coo_tensor(graph.index, graph.weight, (graph.size, graph.size), check_invariants=True).to_dense()


def test_transition_graph_counts_repeats_and_normalises_rows():
    adj = dense(transition_graph(np.array([[1, 2], [1, 2], [1, 3], [2, 1]]), 4))
    expected = torch.tensor([[0, 0, 0, 0], [0, 0, 2 / 3, 1 / 3], [0, 1, 0, 0], [0, 0, 0, 0]])
    torch.testing.assert_close(adj, expected)


def test_item_graphs_link_consecutive_items_merged_and_within_each_domain():
    merged, food, kitchen = item_graphs([np.array([0, 7, 1, 8, 2])], SIZES)  # Food 1, Kitchen 8, Food 2, ...
    assert merged.size == 13 and food.size == 8 and kitchen.size == 6
    m = dense(merged)
    assert m[1, 8] == 1 and m[8, 2] == 1 and m[2, 9] == 1 and m[9, 3] == 1 and m.sum() == 4
    f = dense(food)  # Food's own order 1 -> 2 -> 3 (ids 1..7), the Kitchen items in between skipped
    assert f[1, 2] == 1 and f[2, 3] == 1 and f.sum() == 2
    k = dense(kitchen)  # Kitchen local ids: idx 7 -> 1, idx 8 -> 2
    assert k[1, 2] == 1 and k.sum() == 1


def test_next_in_domain_and_forward_fill():
    seqs = torch.tensor([[0, 1, 9, 2, 10, 3]])
    food = (seqs > 0) & (seqs <= 7)
    assert next_in_domain(seqs, food).tolist() == [[1, 2, 2, 3, 3, 0]]
    states = torch.arange(6.0).view(1, 6, 1)
    assert forward_fill(states, ~food & (seqs > 0))[0, :, 0].tolist() == [0, 0, 2, 2, 4, 4]
    torch.testing.assert_close(masked_mean(states, food), torch.tensor([[(1 + 3 + 5) / 3]]))


@pytest.mark.parametrize("domain, n", DOMAIN_SIZES)
def test_score_shapes(domain, n):
    assert_scores_cover_the_domain(make_model(), domain, n)


def test_extra_left_padding_leaves_scores_unchanged():
    assert_left_padding_leaves_scores_unchanged(make_model())


def test_an_item_of_the_other_domain_moves_only_the_merged_state():
    """The Kitchen view ignores Food items, so appending a Food item changes Kitchen scores through the merged
    encoder only: with the merged encoder's output fixed, they would be equal."""
    model = make_model()
    longer = torch.cat([HISTORY[:, 1:], torch.full((3, 1), 2)], 1)  # + Food item 2, same length
    with torch.no_grad():
        x_local, y_local, _ = model.views(longer)
        assert torch.equal(y_local[:, :-1], model.views(HISTORY)[1][:, 1:]) and (y_local[:, -1] == 0).all()
        assert not torch.allclose(model.score_domain(longer, 1), model.score_domain(HISTORY, 1))


def test_all_padding_history_gives_finite_scores():
    assert_empty_histories_give_finite_scores(make_model())


def test_graph_tables_are_computed_once_in_eval_mode_and_refreshed_after_an_update():
    model = make_model()
    first = model.item_tables()
    assert model.item_tables()[0] is first[0]  # cached: serving and evaluation reuse them
    with torch.no_grad():
        model.emb[0].weight[1] += 1.0  # an optimizer step or load_state_dict changes a parameter in place
    refreshed = model.item_tables()
    assert refreshed[0] is not first[0] and not torch.equal(refreshed[0], first[0])
    model.train()
    assert model.item_tables()[0].requires_grad  # training never uses the cache


def test_bad_settings_and_missing_domain_get_one_line_errors():
    with pytest.raises(ValueError, match="model.c2dsr.lam must be in"):
        C2DSRSettings(lam=1.5)
    with pytest.raises(ValueError, match="gnn_layers"):
        C2DSRSettings(gnn_layers=-1)
    with pytest.raises(ValueError, match="needs items in both domains"):
        C2DSR(ModelConfig(name="c2dsr", dim=16), make_ctx(train=[np.array([0, 1, 2])], sizes=(7, 0)))
    with pytest.raises(ValueError, match="no training sequence has two Kitchen items"):
        C2DSR(ModelConfig(name="c2dsr", dim=16), make_ctx(train=[np.array([0, 1, 7, 2])]))


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_loss_decreases_when_overfitting(overfit, one_thread, loss):
    torch.manual_seed(0)
    seqs = overfit.seqs
    train = [np.array([i - 1 for i in row if i > 0]) for row in seqs.tolist() if any(row)]
    ctx = ModelContext(domain_sizes=SIZES, domains=("Food", "Kitchen"), max_len=12)
    ctx.extras["c2dsr_graphs"] = item_graphs(train, SIZES)
    model = C2DSR(ModelConfig(name="c2dsr", dim=16, dropout=0.1, loss=loss, num_sampled=4), ctx)
    losses = overfit(model, lr=3e-2, steps=60)
    assert_losses_halve(losses)
    model.eval()
    with torch.no_grad():  # learned: after "Food 1, Kitchen 8, Food 2" comes Kitchen 9, after "... 9" Food 3
        assert model.score_domain(seqs[:1, :5], 1).argmax(1).item() == 9 - 8
        assert model.score_domain(seqs[:1, :6], 0).argmax(1).item() == 3 - 1


def test_infomax_alone_trains_the_discriminators(one_thread):
    model = make_model(C2DSRSettings(lam=0.0)).train()
    loss = model.training_loss(torch.cat([HISTORY, torch.tensor([[2], [5], [3]])], 1))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.discriminators.parameters())


def test_train_resume_and_recommend_on_the_generated_world(generated_dataset, tmp_path, tiny, one_thread):
    from temarec.serve.recommender import Recommender
    from temarec.runs import train_run

    out = tmp_path / "run"
    cfg = load_config(None, tiny(**{"model.name": "c2dsr", "train.epochs": "1"}))
    train_run(generated_dataset, cfg, out)
    metrics = train_run(generated_dataset, cfg.replace(**{"train.epochs": "2"}), out, resume=True)
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert metrics["protocol"]["model"] == "c2dsr"
    rec = Recommender.load(out)
    food = rec.item_ids("Food")
    result = rec.recommend(food[:3], domain="Kitchen", k=4)
    assert len(result) == 4 and all(r["domain"] == "Kitchen" for r in result)
    again = rec.recommend(food[:3], domain="Kitchen", k=4)
    assert [r["item"] for r in again] == [r["item"] for r in result]
