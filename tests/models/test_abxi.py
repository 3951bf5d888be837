"""ABXI: alignment of the single-domain views, shapes, invariants of scoring, learning, settings, run folder."""

from __future__ import annotations

import json

import pytest
import torch

from model_checks import (CTX, DOMAIN_SIZES, HISTORY, assert_empty_histories_give_finite_scores,
                          assert_left_padding_leaves_scores_unchanged, assert_losses_halve,
                          assert_scores_cover_the_domain)
from temarec.config import ModelConfig
from temarec.models.abxi import ABXI, ABXISettings, compact_domain, latest_before, positions_from_right
from temarec.models.base import ModelContext

SMALL = {"dim": 16, "heads": 2, "dropout": 0.1, "ffn_dim": 24, "domain_rank": 2, "invariant_rank": 4,
         "negatives_per_domain": 4}


def make_model(**overrides) -> ABXI:
    return _build({**SMALL, **overrides})


def _build(settings: dict) -> ABXI:
    torch.manual_seed(0)
    return ABXI(ModelConfig(name="abxi", specific={"abxi": ABXISettings(**settings)}), CTX).eval()


def test_training_alignment_feeds_each_target_the_latest_item_of_its_domain_before_it():
    # merged input 1(F) 8(K) 2(F) 9(K) 10(K) predicting 8 2 9 10 3: the Kitchen view at the positions that predict
    # Kitchen items (t = 0, 2, 3) holds the latest Kitchen item so far (none, 8, 9); Food view at t = 1, 4: 1, 2
    inputs = torch.tensor([[1, 8, 2, 9, 10]])
    targets = torch.tensor([[8, 2, 9, 10, 3]])
    kitchen = (inputs > 7)
    aligned_k = torch.where(targets > 7, latest_before(inputs, kitchen), 0)
    aligned_f = torch.where((targets > 0) & (targets <= 7), latest_before(inputs, ~kitchen), 0)
    assert aligned_k.tolist() == [[0, 0, 8, 9, 0]] and aligned_f.tolist() == [[0, 1, 0, 0, 2]]
    # the causal view at the last Kitchen position therefore sees Kitchen items 8, 9: all Kitchen items before 10


def test_evaluation_view_keeps_the_domain_items_oldest_first_and_positions_count_from_the_right():
    x = torch.tensor([[0, 3, 9, 1, 12, 4]])
    assert compact_domain(x, (x > 0) & (x <= 7)).tolist() == [[0, 0, 0, 3, 1, 4]]
    assert compact_domain(x, x > 7).tolist() == [[0, 0, 0, 0, 9, 12]]
    assert positions_from_right(torch.tensor([[False, True, False, True]])).tolist() == [[0, 2, 0, 1]]


@pytest.mark.parametrize("domain, n", DOMAIN_SIZES)
def test_score_shapes(domain, n, one_thread):
    assert_scores_cover_the_domain(make_model(), domain, n)


def test_extra_left_padding_and_other_domain_order_leave_scores_unchanged(one_thread):
    model = make_model()
    assert_left_padding_leaves_scores_unchanged(model)
    with torch.no_grad():
        # the most recent item changes the merged view, hence the scores of both domains
        changed = HISTORY.clone()
        changed[:, -1] = 5
        assert not torch.allclose(model.score_domain(changed, 1), model.score_domain(HISTORY, 1))


def test_empty_history_gives_finite_scores(one_thread):
    assert_empty_histories_give_finite_scores(make_model(), lengths=(6,))


def test_training_loss_is_the_infonce_of_the_aligned_representation(one_thread):
    """With one negative per domain and a fixed draw, the loss equals a hand-built InfoNCE over the fused states."""
    model = make_model(negatives_per_domain=1, dropout=0.0)
    seqs = torch.tensor([[0, 1, 8, 2, 9]])  # predicts 8 (K), 2 (F), 9 (K) from 1, 8, 2, 9's prefixes
    torch.manual_seed(3)
    loss = model.training_loss(seqs)
    torch.manual_seed(3)
    neg = model._sample_negatives(seqs)[0]  # (2,) one Food, one Kitchen item
    inputs = seqs[:, :-1]
    h_x = model.view(inputs, 0)[0]  # (L, D)
    tau = model.settings.temperature
    expected = []
    for d, targets in ((0, [(2, 2)]), (1, [(1, 8), (3, 9)])):
        in_d = (inputs > 0) & ((inputs > 7) == bool(d))
        mask = (seqs[:, 1:] > 0) & ((seqs[:, 1:] > 7) == bool(d))
        z = model.fuse(h_x, model.view(torch.where(mask, latest_before(inputs, in_d), 0), 1 + d)[0], d)
        terms = []
        for t, target in targets:
            logits = [z[t] @ model.item_emb.weight[target]]
            logits += [z[t] @ model.item_emb.weight[n] for n in neg if n not in seqs[0]]
            terms.append(-torch.log_softmax(torch.stack(logits) / tau, 0)[0])
        expected.append(torch.stack(terms).mean())
    torch.testing.assert_close(loss, sum(expected))


def test_loss_decreases_when_overfitting(overfit, one_thread):
    losses = overfit(_build({**SMALL, "dropout": 0.0}).train(), lr=1e-2, steps=60)  # fixture in tests/conftest.py
    assert_losses_halve(losses)


def test_a_small_model_learns_a_tiny_fixed_dataset(overfit, one_thread):
    """After overfitting, each next item outranks every item of its domain the user has not interacted with
    (the candidates of the abxi negatives preset; the loss never contrasts a target with the user's own items)."""
    model = _build({**SMALL, "dropout": 0.0, "negatives_per_domain": 6}).train()
    overfit(model, lr=1e-2, steps=150)
    model.eval()
    seqs = overfit.seqs[:2]  # Food 1..7 and Kitchen 8..12 interleaved
    with torch.no_grad():
        for row in range(2):
            seen = set(seqs[row].tolist())
            for cut in range(3, seqs.size(1)):
                target = int(seqs[row, cut])
                d = int(target > 7)
                scores = model.score_domain(seqs[row:row + 1, :cut], d)[0]  # (N,)
                first = 1 + (7 if d else 0)
                others = [i - first for i in range(first, first + scores.numel()) if i not in seen]
                assert (scores[target - first] > scores[others]).all(), (row, cut)


@pytest.mark.parametrize("key, value, message", [("domain_rank", 0, "domain_rank must be >= 1"),
                                                 ("invariant_rank", -1, "invariant_rank must be >= 1"),
                                                 ("dim", 15, "multiple of model.abxi.heads")])
def test_bad_settings_are_one_clear_error(key, value, message):
    with pytest.raises(ValueError, match=message):
        ABXISettings(**{key: value})


def test_a_missing_domain_is_one_clear_error():
    with pytest.raises(ValueError, match="both domains"):
        ABXI(ModelConfig(name="abxi"), ModelContext(domain_sizes=(7, 0), domains=("Food", "Kitchen")))


TINY_RUN = ["model.name=abxi", "train.epochs=1", "data.max_len=10", "train.batch_size=64", "eval.batch_size=256",
            "train.threads=1", *(f"model.abxi.{k}={v}" for k, v in SMALL.items())]


def test_train_resume_and_recommend_on_the_generated_world(generated_dataset, tmp_path, one_thread):
    from temarec.config import load_config
    from temarec.serve.recommender import Recommender
    from temarec.runs import train_run

    out = tmp_path / "run"
    cfg = load_config(None, TINY_RUN)
    first = train_run(generated_dataset, cfg, out)
    assert first["protocol"]["model"] == "abxi" and first["timing"]["epochs"] == 1
    assert "InfoNCE (tau 0.75) over 4 + 4" in first["protocol"]["training"]  # named in every report; model.abxi.*
    assert "model.loss does not apply" in first["protocol"]["training"]  # reached the model
    m = train_run(generated_dataset, cfg.replace(**{"train.epochs": "2"}), out, resume=True)
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    for domain in ("Food", "Kitchen"):
        assert 0.0 < m["test"]["full"][domain]["mrr"] <= 1.0
    rec = Recommender.load(out)
    result = rec.recommend(["F00001", "K01002", "F01003"], domain="Kitchen", k=5)
    kitchen = set(rec.item_ids("Kitchen"))
    assert len(result) == 5 and all(r["item"] in kitchen for r in result)
    scores = [r["score"] for r in result]
    assert scores == sorted(scores, reverse=True)



def test_cli_rejects_a_bad_lora_rank_in_one_line(generated_dataset, tmp_path, capsys):
    from temarec.cli import main

    code = main(["train", "--dataset", str(generated_dataset), "--model", "abxi", "--out", str(tmp_path / "r"),
                 "--set", "model.abxi.invariant_rank=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "invariant_rank must be >= 1" in err
    assert not (tmp_path / "r").exists()
