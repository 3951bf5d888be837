"""model.tema.fusion = validated: the paper's weights in training, then eq. (16)'s weights fitted per target domain
on the validation split (docs/DESIGN.md, "Validated fusion")."""

from __future__ import annotations

import json
import math

import pytest
import torch

from temarec.config import load_config
from temarec.evaluation import evaluate
from temarec.models.tema.model import simplex_grid
from temarec.runs import load_run, train_run

from tests.models.test_tema_fusion import HISTORY, make_model

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in tests/conftest.py


NEGATIVES = torch.tensor([[1, 2, 3], [1, 1, 3], [0, 3, 2], [4, 0, 3]])  # (B, C) local indices, read by fusion_fit=mrr


def _batches(targets_by_domain):
    return [(HISTORY, d, t, NEGATIVES) for d, t in targets_by_domain.items()]


def test_fixed_and_learned_fit_nothing():
    for fusion in ("fixed", "learned"):
        model = make_model(fusion=fusion)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        assert model.fit_on_validation(_batches({0: torch.tensor([0, 1, 2, 3]), 1: torch.tensor([0, 1, 2, 3])})) is False
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_fit_raises_the_validation_likelihood_it_maximises_and_moves_only_that_domains_weights():
    model = make_model(fusion="validated", views="merged")
    targets = torch.tensor([0, 4, 2, 1])
    heads = model.target_head_log_probs(HISTORY, 1, targets)  # (V, M, B) log P_m(target)
    with torch.no_grad():  # each head's full-catalogue log-softmax at the target
        full = model.head_log_probs(HISTORY, 1)  # (V, M, B, N)
    torch.testing.assert_close(heads, full.gather(-1, targets.expand(*full.shape[:2], -1)[..., None])[..., 0])

    def likelihood():
        with torch.no_grad():
            log_w, log_a = model.fusion(1)
            return float(((log_w[:, None] + log_a[None, :])[:, :, None] + heads).logsumexp((0, 1)).mean()
                         - model.fusion.log_total[1])

    food_before = model.log_head_weights(0).clone()
    kitchen_before, start = model.log_head_weights(1).clone(), likelihood()
    assert model.fit_on_validation([(HISTORY, 1, targets, NEGATIVES)]) is True
    assert likelihood() > start + 1e-4
    assert not torch.allclose(model.log_head_weights(1), kitchen_before)
    torch.testing.assert_close(model.log_head_weights(0), food_before)  # no Food target: Food's weights unchanged
    # the optimum of a mixture likelihood: each weight equals its head's mean responsibility for the targets
    with torch.no_grad():
        log_w, log_a = model.fusion(1)
        resp = ((log_w[:, None] + log_a[None, :])[:, :, None] + heads).flatten(0, 1).softmax(0).mean(1)  # (V*M,)
        torch.testing.assert_close(resp, log_a.exp(), rtol=1e-3, atol=1e-3)


def test_a_validated_run_saves_the_fitted_weights_and_tests_with_them(generated_dataset, tmp_path, tiny):
    out = tmp_path / "run"
    cfg = load_config(None, tiny(**{"model.name": "tema", "model.tema.modalities": "id",
                                    "model.tema.head_loss": "separate", "model.tema.fusion": "validated"}))
    m = train_run(generated_dataset, cfg, out)
    views = m["learned"]["fusion"]["Food target"]["views"]  # three views, on the paper's scale 1 + 0.3 + 0.1
    paper = {"Food": 1.0, "Kitchen": 0.3, "Food+Kitchen": 0.1}
    assert set(views) == set(paper) and any(not math.isclose(views[k], paper[k], abs_tol=1e-3) for k in paper)
    assert math.isclose(sum(views.values()), 1.4, abs_tol=1e-3)
    model, ds, loaded_cfg = load_run(out)
    assert model.learned_summary() == m["learned"]
    assert evaluate(model, ds, "test", loaded_cfg.eval, loaded_cfg.data.max_len) == m["test"]


def test_the_fit_starts_from_the_papers_weights_whatever_the_checkpoint_holds():
    model = make_model(fusion="validated", views="merged")
    batch = [(HISTORY, 1, torch.tensor([0, 4, 2, 1]), NEGATIVES)]
    model.fit_on_validation(batch)
    fitted = model.log_head_weights(1).clone()
    with torch.no_grad():  # e.g. weights saved under another parametrisation, or an earlier fit
        model.fusion.alpha_logits.mul_(-3.0)
    model.fit_on_validation(batch)
    torch.testing.assert_close(model.log_head_weights(1), fitted)


def test_simplex_grid_holds_every_point_step_apart():
    grid = simplex_grid(3, 0.1)
    assert len(grid) == 66 and len(set(grid)) == 66
    assert all(math.isclose(sum(p), 1.0) and min(p) >= 0 for p in grid)
    assert (0.2, 0.3, 0.5) in [tuple(round(x, 6) for x in p) for p in grid]
    assert simplex_grid(1, 0.1) == [(1.0,)]


def test_candidate_log_probs_are_each_heads_full_log_softmax_at_those_items():
    model = make_model(fusion="validated", fusion_fit="mrr")
    items = torch.cat([torch.tensor([0, 4, 2, 1])[:, None], NEGATIVES], 1)  # (B, 1 + C)
    got = model.candidate_head_log_probs(HISTORY, 1, items, rows=3)  # row chunks of 3: the seam is covered
    with torch.no_grad():
        full = model.head_log_probs(HISTORY, 1)  # (V, M, B, N)
    torch.testing.assert_close(got, full.gather(-1, items.expand(*full.shape[:2], -1, -1)))


def test_the_mrr_fit_finds_the_weights_that_rank_the_targets_first():
    """Heads built so that the paper's weights (ID 0.5) rank badly and more weight on text ranks every target first."""
    model = make_model(fusion="validated", views="merged", fusion_fit="mrr")
    B, K = 40, 11
    gen = torch.Generator().manual_seed(0)
    heads = torch.full((1, 3, B, K), -8.0)
    heads[0, 0, :, 1] = 0.0  # ID: sure of a negative
    heads[0, 0, :, 0] = -12.0
    heads[0, 1, :, 0] = -0.1  # text: sure of the target
    heads[0, 2] = -3.0 + 0.1 * torch.randn(B, K, generator=gen)  # tags: noise
    jitter = torch.zeros(B, K)

    def mrr(log_w, log_a):
        score = (log_w[:, None, None, None] + log_a[None, :, None, None] + heads).flatten(0, 1).logsumexp(0)
        return float((1.0 / (1 + (score[:, 1:] > score[:, :1]).sum(1))).mean())

    with torch.no_grad():
        before = mrr(*model.fusion(1))
        food = model.log_head_weights(0).clone()
        model._fit_fusion_mrr(1, heads, jitter)
        after = mrr(*model.fusion(1))
        log_a = model.fusion(1)[1]
    assert before == 0.5 and after == 1.0  # the paper's weights put the negative ID is sure of first
    assert log_a[1] > log_a[0]  # text now outweighs ID
    torch.testing.assert_close(model.log_head_weights(0), food)  # only the fitted target domain moved


def test_an_mrr_validated_run_never_ranks_validation_worse_than_the_papers_weights(generated_dataset, tmp_path, tiny):
    settings = {"model.name": "tema", "model.tema.modalities": "id", "model.tema.head_loss": "separate"}  # 3 views
    fixed = train_run(generated_dataset, load_config(None, tiny(**settings)), tmp_path / "fixed")
    fitted = train_run(generated_dataset, load_config(None, tiny(**settings, **{"model.tema.fusion": "validated",
                                                                                "model.tema.fusion_fit": "mrr"})),
                       tmp_path / "mrr")
    assert fitted["selected_epoch"] == fixed["selected_epoch"]  # validated trains as fixed: the same checkpoint
    for domain in ("Food", "Kitchen"):  # the fit only moves a domain's weights for a strictly better sampled MRR
        assert fitted["valid"]["sampled"][domain]["mrr"] >= fixed["valid"]["sampled"][domain]["mrr"] - 1e-9
    assert "fusion" in fitted["learned"]


def test_fusion_fit_mrr_needs_validated_fusion():
    with pytest.raises(ValueError, match="fusion_fit=mrr chooses the weights of fusion=validated"):
        load_config(None, ["model.name=tema", "model.tema.fusion_fit=mrr"])
    with pytest.raises(ValueError, match="fusion_fit must be likelihood or mrr"):
        load_config(None, ["model.name=tema", "model.tema.fusion=validated", "model.tema.fusion_fit=auc"])


def test_refit_turns_a_fixed_run_into_a_validated_one_without_retraining(generated_dataset, tmp_path, tiny, capsys):
    from temarec.cli import main

    settings = {"model.name": "tema", "model.tema.modalities": "id", "model.tema.head_loss": "separate"}
    fixed = train_run(generated_dataset, load_config(None, tiny(**settings)), tmp_path / "fixed")
    trained = train_run(generated_dataset, load_config(None, tiny(**settings, **{"model.tema.fusion": "validated",
                                                                                 "model.tema.fusion_fit": "mrr"})),
                        tmp_path / "trained")
    out = tmp_path / "refit"
    assert main(["refit", "--run", str(tmp_path / "fixed"), "--out", str(out), "--set", "model.tema.fusion=validated",
                 "--set", "model.tema.fusion_fit=mrr"]) == 0
    refit = json.loads((out / "metrics.json").read_text())
    # validated trains as fixed, so fitting afterwards gives what fitting at the end of training gave
    assert refit["learned"] == trained["learned"] and refit["test"] == trained["test"]
    assert refit["selected_epoch"] == fixed["selected_epoch"]
    assert refit["protocol"]["dataset_dir"] == fixed["protocol"]["dataset_dir"]  # the data it came from
    assert refit["timing"] == fixed["timing"]  # the training's figures: a refit trains nothing
    model, _, cfg = load_run(out)
    assert cfg.model.settings.fusion == "validated" and model.learned_summary() == trained["learned"]
    assert json.loads((out / "run.json").read_text())["refit"]["changed"] == {"model.tema.fusion": "validated",
                                                                              "model.tema.fusion_fit": "mrr"}
    assert json.loads((tmp_path / "fixed" / "metrics.json").read_text()) == fixed  # the source run is untouched
    capsys.readouterr()
    for argv, message in ((["--set", "train.lr=0.1"], "refit may change only"),
                          (["--set", "model.tema.fusion=learned"], "cannot make fusion=learned"),
                          ([], "needs at least one --set"),
                          (["--set", "model.tema.fusion_fit=likelihood"], "fits nothing on validation")):
        assert main(["refit", "--run", str(tmp_path / "fixed"), "--out", str(tmp_path / "x"), *argv]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "x").exists()
    assert main(["refit", "--run", str(tmp_path / "fixed"), "--out", str(out), "--set",
                 "model.tema.fusion=validated"]) == 2  # an existing folder is never overwritten
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("fit", ["likelihood", "mrr"])
def test_the_fit_keeps_no_graph_of_the_heads(fit, monkeypatch):
    """The heads are constants of the fit: computing them with autograd on kept every batch's graph alive (18 GB on
    C2DSR's 64k items with nine heads)."""
    model = make_model(fusion="validated", fusion_fit=fit)
    seen = []
    for name in ("candidate_head_log_probs", "target_head_log_probs"):
        original = getattr(model, name)
        monkeypatch.setattr(model, name, lambda *a, _f=original, **k: seen.append(_f(*a, **k)) or seen[-1])
    with torch.enable_grad():
        model.fit_on_validation(_batches({1: torch.tensor([0, 4, 2, 1])}))
    assert seen and all(not t.requires_grad and t.grad_fn is None for t in seen)
