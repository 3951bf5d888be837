"""model.tema.fusion: the paper's fixed weights, or learned ones that start there (docs/DESIGN.md, "Learned fusion")."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from temarec.cli import main
from temarec.config import ModelConfig, load_config
from temarec.data.batches import pad_histories
from temarec.models.base import ModelContext
from temarec.models.tema import TEMA, TemaSettings, view_weights
from temarec.runs import load_run, train_run

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in tests/conftest.py

N0, N1 = 7, 5  # ids 1..7 are Food, 8..12 Kitchen; 0 = padding
HISTORY = torch.tensor([[0, 0, 0, 3, 9, 1],
                        [2, 8, 12, 4, 4, 10],
                        [0, 0, 0, 0, 0, 11],
                        [0, 0, 0, 0, 0, 0]])


def make_model(**overrides) -> TEMA:
    """A small TEMA with text features and tags (as tests/models/test_tema.py builds it), in eval mode."""
    rng = np.random.default_rng(0)
    n = N0 + N1
    extras = {"features": {"txt": (rng.normal(size=(n, 6)).astype(np.float32), np.ones(n, bool))},
              "tag_vectors": (rng.random((n, 3)) * (rng.random((n, 3)) < 0.6)).astype(np.float32),
              "tag_names": ["spicy", "baking", "tea"], "modalities": ("id", "txt", "tag")}
    ctx = ModelContext(domain_sizes=(N0, N1), domains=("Food", "Kitchen"), max_len=12, item_counts=np.ones(n),
                       extras=extras)
    torch.manual_seed(0)
    own = {k: overrides.pop(k) for k in list(overrides) if k in TemaSettings.__dataclass_fields__}
    cfg = ModelConfig(**{"name": "tema", "dim": 16, "heads": 2, "layers": 2, "dropout": 0.1, "loss": "full",
                         **overrides}, specific={"tema": TemaSettings(**own)})
    return TEMA(cfg, ctx).eval()


def paper_and_learned(**overrides):
    return make_model(**overrides), make_model(fusion="learned", **overrides)


@pytest.mark.parametrize("views", ["multi", "merged"])
def test_learned_weights_start_at_the_papers_so_scores_and_explanations_start_equal(views):
    fixed, learned = paper_and_learned(views=views)
    learned.load_state_dict(fixed.state_dict(), strict=False)  # the same model apart from the fusion weights
    with torch.no_grad():
        for domain in (0, 1):
            torch.testing.assert_close(learned.log_head_weights(domain), fixed.log_head_weights(domain))
            torch.testing.assert_close(learned.score_domain(HISTORY, domain), fixed.score_domain(HISTORY, domain))
    ex_fixed, ex_learned = fixed.explain(HISTORY, 1, [[0, 2]] * 4), learned.explain(HISTORY, 1, [[0, 2]] * 4)
    for row_f, row_l in zip(ex_fixed, ex_learned):
        for f, item in zip(row_f, row_l):
            assert item["modality_share"] == pytest.approx(f["modality_share"], rel=1e-5)


def test_learned_loss_is_the_papers_plus_the_nll_of_the_normalised_eq16_mixture():
    fixed, learned = paper_and_learned(dropout=0.0)
    learned.load_state_dict(fixed.state_dict(), strict=False)
    seqs = torch.tensor([[1, 8, 2]])  # targets 8 (Kitchen, after [1]) and 2 (Food, after [1, 8])
    alpha = fixed.log_alpha.exp()[None, :]  # (1, M)
    with torch.no_grad():
        fused_nll = 0.0
        for t, target in ((1, 8), (2, 2)):
            d = int(target > N0)
            p = fixed.logits(fixed.final_states(seqs[:, :t]), fixed.domain_items(d)).softmax(-1)  # (V, M, 1, N)
            w = torch.tensor(view_weights("multi", "target", (0.3, 0.1), d))  # (V,)
            p_target = (w[:, None] * alpha * p[:, :, 0, target - 1 - d * N0]).sum() / w.sum()  # eq. (16), normalised
            fused_nll -= math.log(float(p_target))
        assert float(learned.training_loss(seqs)) == pytest.approx(float(fixed.training_loss(seqs)) + fused_nll / 2,
                                                                     rel=1e-5)


def test_the_mixture_term_trains_only_the_weights():
    """At the start alpha is the paper's, so every other parameter gets fixed's gradient; the weights get one."""
    fixed, learned = paper_and_learned(dropout=0.0)
    learned.load_state_dict(fixed.state_dict(), strict=False)
    seqs = torch.tensor([[0, 0, 1, 8, 2, 9, 3], [4, 12, 5, 11, 6, 10, 7]])
    fixed.training_loss(seqs).backward()
    learned.training_loss(seqs).backward()
    grads = dict(learned.named_parameters())
    for name, p in fixed.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-4, atol=1e-7)
    assert learned.fusion.view_logits.grad.abs().sum() > 0 and learned.fusion.alpha_logits.grad.abs().sum() > 0


def test_learned_weights_move_when_overfitting_and_the_scores_follow_them(overfit):
    model = make_model(fusion="learned", lambdas=(0.3, 0.0))  # the merged view's weight 0 must stay 0
    start = {k: v.detach().clone() for k, v in model.fusion.named_parameters()}
    losses = overfit(model, lr=1e-2, steps=40)  # fixture in tests/conftest.py
    assert all(math.isfinite(v) for v in losses) and np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    moved = {k: float((v.detach() - start[k]).abs().max()) for k, v in model.fusion.named_parameters()}
    assert min(moved.values()) > 0.05, moved
    model.eval()
    with torch.no_grad():
        for d in (0, 1):
            log_w, log_a = model.fusion(d)
            assert log_w[2] == -math.inf and float(log_w.exp().sum()) == pytest.approx(1.3)  # paper's total kept
            assert float(log_a.exp().sum()) == pytest.approx(1.0)
            heads = model.head_log_probs(HISTORY, d)  # (V, M, B, N)
            mixture = (log_w.exp()[:, None, None, None] * log_a.exp()[None, :, None, None] * heads.exp()).sum((0, 1))
            torch.testing.assert_close(model.score_domain(HISTORY, d) - model.domain_tie_break(d), mixture.log())
    summary = model.learned_summary()["fusion"]
    assert set(summary) == {"Food target", "Kitchen target"}
    assert summary["Food target"]["views"]["Food+Kitchen"] == 0.0
    assert list(summary["Kitchen target"]["modalities"]) == list(model.modalities)
    assert make_model().learned_summary() == {}


def test_bad_fusion_settings_are_one_line_errors(generated_dataset, tmp_path, capsys):
    with pytest.raises(ValueError, match="fusion must be fixed, learned or validated"):
        TemaSettings(fusion="gate")
    with pytest.raises(ValueError, match="no weight to learn"):
        TemaSettings(fusion="learned", views="merged", modalities=("id",))
    with pytest.raises(ValueError, match="no weight to learn"):
        TemaSettings(fusion="validated", views="merged", modalities=("id",))
    code = main(["train", "--dataset", str(generated_dataset), "--model", "tema", "--out", str(tmp_path / "r"),
                 "--set", "model.tema.fusion=mixed"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "model.tema.fusion must be fixed, learned or validated" in err
    assert not (tmp_path / "r").exists()


def test_a_learned_run_reports_its_weights_resumes_them_and_reloads_them(generated_dataset, tmp_path, tiny):
    out = tmp_path / "run"
    cfg = load_config(None, tiny(**{"model.name": "tema", "model.tema.modalities": "id", "train.epochs": "1",
                                    "model.tema.fusion": "learned", "train.lr": "0.01"}))
    first = train_run(generated_dataset, cfg, out)
    m = train_run(generated_dataset, cfg.replace(**{"train.epochs": "2"}), out, resume=True)
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    views = [r["learned"]["fusion"]["Food target"]["views"] for r in log]
    assert views[0] != {"Food": 1.0, "Kitchen": 0.3, "Food+Kitchen": 0.1} and views[1] != views[0]  # trained on
    assert first["learned"]["fusion"]["Food target"]["views"] == views[0]
    assert m["learned"]["fusion"]["Food target"]["views"] == views[m["selected_epoch"] - 1]
    assert "learned:   fusion, Kitchen target, views: Food" in (out / "README.md").read_text()
    assert "fusion learned" in m["protocol"]["notes"]
    model, ds, _ = load_run(out)  # the selected checkpoint holds the weights
    assert model.learned_summary() == m["learned"]
    hist = pad_histories(ds.test["history"].tolist()[:8], cfg.data.max_len)
    with torch.no_grad():
        scores = model.score_domain(hist, 0)
        model.fusion.view_logits.zero_()  # other weights give other scores: scoring reads the learned ones
        assert not torch.allclose(model.score_domain(hist, 0), scores)


def test_serving_fused_scorer_reads_the_learned_weights():
    from temarec.serve.fused import fused_scorer

    model = make_model(fusion="learned")
    with torch.no_grad():
        model.fusion.view_logits.add_(torch.tensor([[0.2, -0.1, 0.3], [-0.2, 0.1, 0.25]]))
        model.fusion.alpha_logits.add_(torch.tensor([[0.1, -0.2, 0.0], [0.0, 0.15, -0.1]]))
        scorer = fused_scorer(model)
        assert scorer is not None  # it reproduced score_parts on its probe histories
        for d in (0, 1):
            torch.testing.assert_close(scorer(HISTORY, d)[0], model.score_domain(HISTORY, d), atol=1e-4, rtol=1e-4)
