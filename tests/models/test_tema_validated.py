"""model.tema.fusion = validated: the paper's weights in training, then eq. (16)'s weights fitted per target domain
on the validation split (docs/DESIGN.md, "Validated fusion")."""

from __future__ import annotations

import math

import pytest
import torch

from temarec.config import load_config
from temarec.evaluation import evaluate
from temarec.runs import load_run, train_run

from tests.models.test_tema_fusion import HISTORY, make_model

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in tests/conftest.py


def _batches(targets_by_domain):
    return [(HISTORY, d, t) for d, t in targets_by_domain.items()]


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
    assert model.fit_on_validation([(HISTORY, 1, targets)]) is True
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
    batch = [(HISTORY, 1, torch.tensor([0, 4, 2, 1]))]
    model.fit_on_validation(batch)
    fitted = model.log_head_weights(1).clone()
    with torch.no_grad():  # e.g. weights saved under another parametrisation, or an earlier fit
        model.fusion.alpha_logits.mul_(-3.0)
    model.fit_on_validation(batch)
    torch.testing.assert_close(model.log_head_weights(1), fitted)
