"""TEMA: views, batched encoders against a per-encoder loop, causality, padding, weights, learning, cold start."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from model_checks import assert_a_later_item_changes_only_the_last_state, assert_left_padding_leaves_scores_unchanged
from temarec.config import Config, ModelConfig
from temarec.data.dataset import Dataset
from temarec.models import tema
from temarec.models.base import ModelContext
from temarec.models.softmax import ChunkedLogSumExp
from temarec.models.tema import TEMA, TemaSettings, modality_weights, view_gather, view_weights

N0, N1 = 7, 5  # ids 1..7 are Food, 8..12 Kitchen; 0 = padding
HISTORY = torch.tensor([[0, 0, 0, 3, 9, 1],
                        [2, 8, 12, 4, 4, 10],
                        [0, 0, 0, 0, 0, 11],
                        [0, 0, 0, 0, 0, 0]])


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in tests/conftest.py


def make_ctx(counts: np.ndarray | None = None, **extras) -> ModelContext:
    rng = np.random.default_rng(0)
    n = N0 + N1
    base = {"features": {"txt": (rng.normal(size=(n, 6)).astype(np.float32), np.ones(n, bool)),
                         "img": (rng.normal(size=(n, 4)).astype(np.float32), np.arange(n) < n - 2)},
            "tag_vectors": (rng.random((n, 3)) * (rng.random((n, 3)) < 0.6)).astype(np.float32),
            "tag_names": ["spicy", "baking", "tea"]}
    base.update(extras)
    return ModelContext(domain_sizes=(N0, N1), domains=("Food", "Kitchen"), max_len=12,
                        item_counts=np.ones(n) if counts is None else counts, extras=base)


def make_model(ctx: ModelContext | None = None, **overrides) -> TEMA:
    torch.manual_seed(0)
    own = {k: overrides.pop(k) for k in list(overrides) if k in TemaSettings.__dataclass_fields__}
    cfg = ModelConfig(**{"name": "tema", "dim": 16, "heads": 2, "layers": 2, "dropout": 0.1, "loss": "full",
                         **overrides}, specific={"tema": TemaSettings(**own)})
    return TEMA(cfg, ctx or make_ctx()).eval()


def test_modality_weights_are_the_papers_and_renormalise_when_a_modality_is_absent():
    assert modality_weights((0.4, 0.2, 0.2), ("id", "img", "txt", "tag")) == pytest.approx(
        {"id": 0.4, "img": 0.2, "txt": 0.2, "tag": 0.2})
    assert modality_weights((0.4, 0.2, 0.2), ("id", "txt", "tag")) == pytest.approx(
        {"id": 0.5, "txt": 0.25, "tag": 0.25})
    assert modality_weights((0.4, 0.2, 0.2), ("id",)) == {"id": 1.0}
    with pytest.raises(ValueError, match="zero weight"):
        modality_weights((0.5, 0.5, 0.0), ("txt", "tag"))


def test_model_mixes_probabilities_with_the_renormalised_weights():
    ctx = make_ctx(modalities=("id", "txt", "tag"))
    model = make_model(ctx)
    assert model.modalities == ("id", "txt", "tag")
    torch.testing.assert_close(model.log_alpha.exp(), torch.tensor([0.5, 0.25, 0.25]))


@pytest.mark.parametrize("reading, domain, expected", [("target", 0, [1.0, 0.3, 0.1]), ("target", 1, [0.3, 1.0, 0.1]),
                                                       ("fixed", 0, [1.0, 0.3, 0.1]), ("fixed", 1, [1.0, 0.3, 0.1])])
def test_view_weights_follow_the_reading(reading, domain, expected):
    assert view_weights("multi", reading, (0.3, 0.1), domain) == pytest.approx(expected)
    assert view_weights("merged", reading, (0.3, 0.1), domain) == [1.0]


def test_views_of_a_hand_example_are_left_padded_and_point_at_the_latest_item_so_far():
    ids = torch.tensor([[0, 3, 9, 1, 8, 2]])  # Food 3, Kitchen 9, Food 1, Kitchen 8, Food 2
    food, last, has = view_gather(ids, (ids > 0) & (ids <= N0))
    assert food.tolist() == [[0, 0, 0, 3, 1, 2]]
    assert has.tolist() == [[False, True, True, True, True, True]]
    assert last[has].tolist() == [3, 3, 4, 4, 5]  # after 9 the latest Food item is still 3 (slot 3)
    view_ids, last, has = make_model().views(ids)
    assert view_ids.tolist() == [[[0, 0, 0, 3, 1, 2]], [[0, 0, 0, 0, 9, 8]], [[0, 3, 9, 1, 8, 2]]]
    assert last[1, 0, 2:].tolist() == [4, 4, 5, 5] and not has[1, 0, :2].any()


@pytest.mark.parametrize("views", ["multi", "merged"])
@pytest.mark.parametrize("domain, n", [(0, N0), (1, N1)])
def test_scores_are_probability_mixtures_of_the_right_shape(views, domain, n):
    model = make_model(views=views)
    with torch.no_grad():
        scores = model.score_domain(HISTORY, domain)
    assert scores.shape == (len(HISTORY), n) and torch.isfinite(scores).all()
    total = sum(view_weights(views, "target", (0.3, 0.1), domain))  # each view's mixture sums to 1
    torch.testing.assert_close(scores.exp().sum(1), torch.full((len(HISTORY),), total), rtol=1.1e-3, atol=0)
    with torch.no_grad():  # the log of eq. (16)'s sum of probabilities (up to the 0.1% tie-break jitter)
        torch.testing.assert_close(scores.exp(), model.modality_probs(HISTORY, domain).sum(0), rtol=1.1e-3, atol=1e-7)


def test_batched_encoders_equal_a_loop_over_each_encoder():
    model = make_model(dropout=0.0)
    enc = model.encoders
    torch.manual_seed(1)
    with torch.no_grad():
        for p in enc.parameters():
            p.normal_(0.0, 0.5)
    E, B, L, D = enc.pos.shape[0], 3, 5, model.cfg.dim
    x = torch.randn(E, B, L, D)
    valid = torch.ones(E, B, L, dtype=torch.bool)
    valid[:, 0, :2] = False  # left padding
    valid[3:, 2, :4] = False  # some encoders see one item only
    with torch.no_grad():
        batched = enc(x, valid)
        for e in range(E):
            torch.testing.assert_close(batched[e], _reference_encoder(enc, e, x[e], valid[e], model.cfg.heads))


def _reference_encoder(enc, e: int, x: torch.Tensor, valid: torch.Tensor, heads: int) -> torch.Tensor:
    """One encoder, written out plainly with its own slice of the stacked weights."""
    B, L, D = x.shape
    ln = lambda p, z: F.layer_norm(z, (D,), p.weight[e], p.bias[e])  # noqa: E731
    lin = lambda p, z: z @ p.weight[e] + p.bias[e]  # noqa: E731
    rank = (torch.arange(L) - (L - valid.sum(1, keepdim=True))).clamp(min=0)  # (B, L)
    h = x + enc.pos[e][rank]
    allowed = torch.ones(L, L, dtype=torch.bool).tril() & (valid[:, None, :] | torch.eye(L, dtype=torch.bool))
    for blk in enc.blocks:
        q, k, v = (t.view(B, L, heads, D // heads).transpose(1, 2) for t in lin(blk.qkv, ln(blk.ln_attn, h)).split(D, -1))
        att = (q @ k.transpose(-1, -2) / math.sqrt(D // heads)).masked_fill(~allowed[:, None], float("-inf"))
        h = h + lin(blk.out, (att.softmax(-1) @ v).transpose(1, 2).reshape(B, L, D))
        h = h + lin(blk.ffn_out, torch.relu(lin(blk.ffn_in, ln(blk.ln_ffn, h))))
    return ln(enc.ln_final, h)


def all_states(model: TEMA, seqs: torch.Tensor) -> torch.Tensor:
    """(V, M, B, L, D) states at every position."""
    h = model.position_states(seqs, torch.ones_like(seqs, dtype=torch.bool))
    return h.view(*h.shape[:2], *seqs.shape, -1)


def test_changing_a_later_item_leaves_earlier_states_unchanged():
    model = make_model()
    assert_a_later_item_changes_only_the_last_state(lambda seqs: all_states(model, seqs), dim=-2, history=HISTORY)


def test_training_states_at_each_position_equal_inference_on_that_prefix():
    model = make_model()
    with torch.no_grad():
        h = all_states(model, HISTORY)  # (V, M, B, L, D)
        for t in range(HISTORY.shape[1]):
            torch.testing.assert_close(h[..., t, :], model.final_states(HISTORY[:, :t + 1]))


def test_extra_left_padding_leaves_scores_unchanged():
    assert_left_padding_leaves_scores_unchanged(make_model(), HISTORY, extra=5)


def test_sequence_longer_than_max_len_is_rejected():
    with pytest.raises(ValueError, match="max_len"):
        make_model().score_domain(torch.ones(1, 13, dtype=torch.long), 0)


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_loss_decreases_when_overfitting(overfit, loss):
    losses = overfit(make_model(loss=loss, num_sampled=3), lr=1e-2, steps=40)  # fixture in tests/conftest.py
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])


@pytest.mark.parametrize("head_loss", ["mixture", "separate"])
def test_full_loss_is_the_weighted_nll_of_the_views(head_loss):
    model = make_model(dropout=0.0, head_loss=head_loss)
    seqs = torch.tensor([[1, 8, 2]])  # targets 8 (Kitchen, after [1]) and 2 (Food, after [1, 8])
    alpha = model.log_alpha.exp()[None, :]  # (1, M)
    with torch.no_grad():
        loss = model.training_loss(seqs)
        expected = 0.0
        for t, target in ((1, 8), (2, 2)):
            d = int(target > N0)
            p = model.logits(model.final_states(seqs[:, :t]), model.domain_items(d)).softmax(-1)  # (V, M, 1, N)
            p_target = p[:, :, 0, target - 1 - d * N0]  # (V, M) P_m^V(target)
            if head_loss == "mixture":
                log_p = (alpha * p_target).sum(1).log()  # (V,) eq. (13): log P^V(target)
            else:
                log_p = (alpha * p_target.log()).sum(1)  # (V,) sum_m alpha_m log P_m^V(target)
            w = torch.tensor(view_weights("multi", "target", (0.3, 0.1), d))
            expected -= float((w * log_p).sum())  # eq. (15)
    assert float(loss) == pytest.approx(expected / 2, rel=1e-5)
    if head_loss == "separate":  # Jensen: the separate loss bounds the mixture's from above
        with torch.no_grad():
            assert float(loss) > float(make_model(dropout=0.0).training_loss(seqs))


@pytest.mark.parametrize("rows", [1, 3, 100])  # one row per chunk, uneven chunks, one chunk
def test_chunked_log_sum_exp_matches_autograd_and_passes_gradcheck(rows):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 4, generator=g, dtype=torch.float64, requires_grad=True)  # (M, R, D)
    w = torch.randn(2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)  # (M, C, D)
    drop_r, drop_c = torch.tensor([0, 3, 3, 6]), torch.tensor([2, 0, 4, 1])  # logits left out
    got = ChunkedLogSumExp.apply(x, w, rows, drop_r, drop_c)
    z = torch.bmm(x, w.transpose(1, 2))
    keep = torch.ones(7, 5, dtype=torch.bool)
    keep[drop_r, drop_c] = False
    want = z.masked_fill(~keep, float("-inf")).logsumexp(-1)
    torch.testing.assert_close(got, want)
    weights = torch.randn(2, 7, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((got * weights).sum(), (x, w))
    torch.testing.assert_close(grads, torch.autograd.grad((want * weights).sum(), (x, w)))
    assert torch.autograd.gradcheck(lambda a, b: ChunkedLogSumExp.apply(a, b, rows, drop_r, drop_c), (x, w))


def test_a_row_with_every_logit_left_out_has_no_gradient():
    x = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
    lse = ChunkedLogSumExp.apply(x, w, 2, torch.tensor([1, 1]), torch.tensor([0, 1]))
    assert lse[0, 1] == float("-inf")
    torch.logaddexp(torch.zeros(2, dtype=torch.float64), lse[0]).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all() and float(x.grad[0, 1].abs().sum()) == 0


def test_cold_item_with_an_informative_title_ranks_high():
    """Food items 1-4 are genre A, 5-8 genre B (text = genre + noise); item 4 never occurs in training."""
    rng = np.random.default_rng(0)
    n0, n1 = 8, 4
    genre = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1])
    text = (np.eye(2)[genre] * 3 + rng.normal(scale=0.3, size=(12, 2))).astype(np.float32)
    text = np.concatenate([text, rng.normal(scale=0.3, size=(12, 4)).astype(np.float32)], 1)
    counts = np.ones(12)
    counts[3] = 0
    ctx = ModelContext(domain_sizes=(n0, n1), domains=("Food", "Kitchen"), max_len=8, item_counts=counts,
                       extras={"modalities": ("id", "txt"), "features": {"txt": (text, np.ones(12, bool))}})
    torch.manual_seed(0)
    model = TEMA(ModelConfig(name="tema", dim=16, heads=1, layers=1, dropout=0.0, loss="full"), ctx)
    assert float(model.items.id_known[4]) == 0.0  # idx 3 -> id 4
    a = [1, 9, 2, 10, 3, 9, 1, 10, 2]  # genre A: Food 1-3, Kitchen 9-10
    b = [5, 11, 6, 12, 7, 11, 8, 12, 5]
    seqs = torch.tensor([a, b, a[1:] + [3], b[1:] + [6]])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        model.training_loss(seqs).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        vecs, _ = model.items(torch.tensor([4]))
        assert torch.all(vecs[0] == 0)  # the ID part of a cold item is zero: content alone represents it
        scores = model.score_domain(torch.tensor([[1, 9, 2, 10]]), 0)[0]  # a genre-A history
    rank_of_cold = int((scores > scores[3]).sum()) + 1
    assert rank_of_cold <= 4, scores  # above every genre-B item


def test_explain_returns_tags_shared_with_the_history_and_modality_shares():
    model = make_model()
    [out] = model.explain(HISTORY[:1], 0, [[0, 2]])
    assert len(out) == 2
    for entry in out:
        assert set(entry["modality_share"]) == {"id", "txt", "img", "tag"}
        assert sum(entry["modality_share"].values()) == pytest.approx(1.0, abs=1e-5)
        assert all(t["tag"] in {"spicy", "baking", "tea"} and t["weight"] > 0 for t in entry["tags"])
    w = model.items.tag_w
    hist = w[HISTORY[0]].sum(0)
    top = torch.argmax(w[1] * hist)  # local item 0 = id 1
    if float((w[1] * hist).max()) > 0:
        assert out[0]["tags"][0]["tag"] == ["spicy", "baking", "tea"][int(top)]


def test_explain_reusing_the_scoring_pass_gives_the_modality_shares_of_the_heads():
    model = make_model()
    model.eval()
    local = [[0, 2], [1, 3], [3]]
    with torch.no_grad():
        scores, parts = model.score_parts(HISTORY[:3], 1)
        torch.testing.assert_close(scores, model.score_domain(HISTORY[:3], 1))
        reused = model.explain(HISTORY[:3], 1, local, parts=parts)
        probs = model.modality_probs(HISTORY[:3], 1)  # (M, B, N) from every head's full log-softmax
    for row, ids in enumerate(local):
        expected = probs[:, row, ids] / probs[:, row, ids].sum(0)  # (M, K)
        for k, why in enumerate(reused[row]):
            for i, m in enumerate(model.modalities):
                assert why["modality_share"][m] == pytest.approx(float(expected[i, k]), abs=1e-5)


def test_explaining_rows_together_gives_each_rows_own_explanations():
    model = make_model()
    local = [[0, 2], [1], [3, 0, 1]]  # a different number of items per row
    together = model.explain(HISTORY[:3], 0, local)
    for row, ids in enumerate(local):
        [alone] = model.explain(HISTORY[row:row + 1], 0, [ids])
        assert len(together[row]) == len(alone) == len(ids)
        for a, b in zip(together[row], alone):
            assert [t["tag"] for t in a["tags"]] == [t["tag"] for t in b["tags"]]
            assert [t["weight"] for t in a["tags"]] == pytest.approx([t["weight"] for t in b["tags"]])
            assert a["modality_share"] == pytest.approx(b["modality_share"], abs=1e-5)


def test_feature_and_tag_buffers_stay_out_of_the_checkpoint_and_reload_gives_the_same_scores():
    model = make_model()
    state = model.state_dict()
    assert not any(k.endswith(("txt_raw", "img_raw", "tag_w")) for k in state)
    torch.manual_seed(5)
    fresh = TEMA(model.cfg, make_ctx()).eval()
    fresh.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(fresh.score_domain(HISTORY, 1), model.score_domain(HISTORY, 1))


def test_similarity_is_cosine_or_dot_over_the_temperature():
    for similarity in ("cosine", "dot"):
        model = make_model(similarity=similarity)
        M = len(model.modalities)
        h, cand = torch.randn(3, M, 2, 16), torch.randn(M, 4, 16)  # (V, M, P, D), (M, C, D)
        tau = model.log_tau.exp()[:, :, None, None]  # (V, M, 1, 1)
        got = model.logits(h, cand)  # (V, M, P, C)
        if similarity == "cosine":
            want = F.cosine_similarity(h[:, :, :, None], cand[None, :, None], dim=-1) / tau
        else:
            want = torch.einsum("vmpd,mcd->vmpc", h, cand) / tau
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("views", ["multi", "merged"])
def test_score_domain_sums_the_heads_in_row_chunks_as_fuse_heads_does_at_once(views, monkeypatch):
    model = make_model(views=views)
    monkeypatch.setattr(tema.model, "SCORE_ROWS", 3)  # HISTORY's 4 rows: chunks of 3 and 1
    with torch.no_grad():
        for domain in (0, 1):
            want = model.fuse_heads(model.head_log_probs(HISTORY, domain), domain)
            torch.testing.assert_close(model.score_domain(HISTORY, domain), want)


def test_each_head_is_a_distribution_and_their_weighted_mixture_is_the_score():
    model = make_model()
    with torch.no_grad():
        heads = model.head_log_probs(HISTORY, 1)  # (V, M, B, N1)
        assert heads.shape == (3, len(model.modalities), len(HISTORY), N1)
        torch.testing.assert_close(heads.exp().sum(-1), torch.ones(heads.shape[:-1]))
        w = torch.tensor(view_weights("multi", "target", (0.3, 0.1), 1))[:, None, None, None]
        mixture = (w * model.log_alpha.exp()[:, None, None] * heads.exp()).sum((0, 1))  # eq. (16)
        torch.testing.assert_close(model.score_domain(HISTORY, 1) - model.tie_break[N0:], mixture.log())
        # other view weights (a diagnostic re-weighting): the same sum with those weights
        merged_only = model.fuse_heads(heads, 1, weights=[0.0, 0.0, 1.0])
        torch.testing.assert_close(merged_only, model.fuse_heads(heads, 1, views=[2]) - math.log(0.1))
        w2 = torch.tensor([0.5, 2.0, 1.0])[:, None, None, None]
        mixture2 = (w2 * model.log_alpha.exp()[:, None, None] * heads.exp()).sum((0, 1))
        torch.testing.assert_close(model.fuse_heads(heads, 1, weights=[0.5, 2.0, 1.0]) - model.tie_break[N0:],
                                   mixture2.log())


def test_item_matrices_are_cached_only_while_frozen_and_never_stale():
    model = make_model()  # eval mode
    with torch.no_grad():
        first = model.score_domain(HISTORY, 0)
        assert model.domain_items(0) is model.domain_items(0)  # cached
        other = make_model()
        with torch.no_grad():
            for p in other.parameters():
                p.add_(0.1 * torch.randn_like(p))
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(model.score_domain(HISTORY, 0), other.score_domain(HISTORY, 0))
        assert not torch.allclose(model.score_domain(HISTORY, 0), first)
    assert model.domain_items(0) is not model.domain_items(0)  # gradients on: no cache
    model.train()
    with torch.no_grad():
        assert model.domain_items(1) is not model.domain_items(1)  # training mode: no cache


def test_missing_modality_data_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="ctx.extras"):
        make_model(make_ctx(features={}))
    cfg = Config().replace(**{"model.name": "tema", "model.tema.modalities": "id,txt"})
    with pytest.raises(ValueError, match="temarec features --dataset"):
        TEMA.context_extras(Dataset(root=tmp_path, manifest={}, items=pd.DataFrame({"item": []})), cfg)


def test_missing_image_features_drop_the_image_modality(tmp_path):
    from temarec.data.content import FEATURES_FORMAT_VERSION, features_dir

    features_dir(tmp_path).mkdir(parents=True)
    (features_dir(tmp_path) / "meta.json").write_text(json.dumps(
        {"format_version": FEATURES_FORMAT_VERSION, "modalities": {"txt": {"encoder": "fake", "dim": 6}}}))
    from temarec.models.tema import usable_modalities

    dataset = Dataset(root=tmp_path, manifest={}, items=pd.DataFrame({"item": []}))
    assert usable_modalities(dataset, ("id", "img", "txt")) == ("id", "txt")


def test_encoding_in_length_groups_changes_nothing(monkeypatch, overfit):
    import temarec.models.attention as attention

    model = make_model(dropout=0.0)
    seqs = torch.cat([overfit.seqs, torch.tensor([[0, 0, 0, 0, 3, 9, 2], [0, 0, 0, 0, 0, 1, 8]])])
    with torch.no_grad():
        whole = [model.score_domain(HISTORY, d) for d in (0, 1)] + [model.training_loss(seqs)]
        monkeypatch.setattr(attention, "GROUP_ROWS", 2)
        grouped = [model.score_domain(HISTORY, d) for d in (0, 1)] + [model.training_loss(seqs)]
    for a, b in zip(whole, grouped):
        torch.testing.assert_close(a, b)


def test_describe_sources_names_weights_views_and_loss(tmp_path):
    cfg = Config().replace(**{"model.name": "tema", "model.tema.modalities": "id", "model.loss": "sampled",
                              "model.num_sampled": "100"})
    dataset = SimpleNamespace(root=tmp_path, domains=("Food", "Kitchen"), domain_sizes=(500, 50))
    sources = TEMA.describe_sources(dataset, cfg)
    assert sources["tags"].startswith("none") and sources["encoders"].startswith("none")
    notes = sources["notes"]
    assert "id 1.00 (renormalised: img, txt, tag not used)" in notes
    assert "X = the target's domain" in notes
    assert TEMA.describe_training(dataset, cfg).startswith("sampled softmax: 100 shared negatives")
    assert TEMA.context_extras(dataset, cfg) == {"modalities": ("id",)}


@pytest.mark.parametrize("correction", [True, False])
def test_sampled_loss_is_the_mixture_nll_over_target_and_reweighted_negatives(correction):
    model = make_model(dropout=0.0, loss="sampled", num_sampled=4, sampled_correction=correction)
    seqs = torch.tensor([[1, 2, 3]])  # two Food targets (2 after [1], 3 after [1, 2]); Food has 7 items
    alpha = model.log_alpha.exp()[None, :, None]  # (1, M, 1)
    w = torch.tensor(view_weights("multi", "target", (0.3, 0.1), 0))
    with torch.no_grad():
        torch.manual_seed(5)
        loss = model.training_loss(seqs)
        torch.manual_seed(5)
        neg = torch.randint(0, N0, (4,))
        assert set(neg.tolist()) >= {1, 2}  # both targets (local 1 and 2) are also drawn as negatives
        expected = 0.0
        for t, target in ((1, 2), (2, 3)):
            z = model.logits(model.final_states(seqs[:, :t]), model.domain_items(0))[:, :, 0]  # (V, M, 7)
            negz = z[..., neg].masked_fill(neg == target - 1, float("-inf"))  # accidental hits out
            shift = math.log((N0 - 1) / 4) if correction else 0.0
            log_z = torch.logaddexp(z[..., target - 1], negz.logsumexp(-1) + shift)
            per_view = (alpha * (z[..., target - 1] - log_z).exp()[..., None]).sum((1, 2))  # (V,)
            expected -= float((w * per_view.log()).sum())
    assert float(loss) == pytest.approx(expected / 2, rel=1e-5)


def test_items_without_any_information_do_not_tie_with_each_other():
    n = N0 + N1
    empty = {"features": {"txt": (np.zeros((n, 6), np.float32), np.zeros(n, bool))},
             "tag_vectors": np.zeros((n, 3), np.float32), "tag_names": ["a", "b", "c"]}
    model = make_model(make_ctx(np.zeros(n), **empty), modalities=("id", "txt", "tag"))
    with torch.no_grad():
        scores = model.score_domain(torch.tensor([[0, 0, 1, N0 + 1]]), 1)[0]  # (N1,)
    assert len(set(scores.tolist())) == N1  # distinct, so ">" ranks are not optimistic
    assert float(scores.max() - scores.min()) <= 1e-3  # and the jitter changes a probability by at most 0.1%


def test_scores_do_not_underflow_to_ties_with_sharp_heads(monkeypatch):
    model = make_model()
    logits = model.logits
    monkeypatch.setattr(model, "logits", lambda h, cand: logits(h, cand) * 1000)  # very confident heads
    with torch.no_grad():
        probs = model.modality_probs(HISTORY, 1).sum(0)
        scores = model.score_domain(HISTORY, 1)
    assert (probs == 0).any()  # the probability form underflows to exact ties at 0.0
    assert torch.isfinite(scores).all()
    assert all(len(set(row.tolist())) == N1 for row in scores)  # the log form keeps every item distinct


def test_each_views_heads_use_that_views_temperatures():
    """head_log_probs (the per-head diagnostics, fuse_heads) once scored every view with view 0's temperatures:
    equal only while the temperatures are all equal, as at initialisation."""
    model = make_model()
    with torch.no_grad():
        model.log_tau.copy_(torch.log(torch.rand(model.log_tau.shape, generator=torch.Generator().manual_seed(0)) * 0.3
                                      + 0.02))  # (V, M) a different temperature for every head
        for d in (0, 1):
            heads = model.head_log_probs(HISTORY, d)  # (V, M, B, N)
            direct = model.logits(model.final_states(HISTORY), model.domain_items(d)).log_softmax(-1)
            torch.testing.assert_close(heads, direct)
            torch.testing.assert_close(model.fuse_heads(heads, d), model.score_domain(HISTORY, d))


def _loss_and_grads(model: TEMA, seqs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss of ``seqs`` and every parameter's gradient, from zero; the same negatives each call."""
    model.zero_grad()
    torch.manual_seed(3)
    loss = model.train().training_loss(seqs)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_view_starts_skip_the_columns_no_row_of_a_view_uses():
    views = torch.tensor([[[0, 0, 0, 0, 3], [0, 0, 0, 2, 1]],  # view 0: items in the last 2 columns
                          [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0]],  # view 1: no item
                          [[0, 9, 8, 4, 3], [0, 0, 5, 2, 1]]])  # view 2: from column 1
    assert tema.view_starts(views, keep_padding=True) == [2, 4, 0]
    assert tema.view_starts(views, keep_padding=False) == [3, 4, 1]


@pytest.mark.parametrize("encoders", ["separate", "shared"])
def test_each_view_encoded_at_its_own_length_changes_no_state_loss_or_gradient(monkeypatch, encoders):
    """The single-domain views are encoded without the leading columns none of their rows uses; the states,
    the training loss and every gradient equal those of encoding every view at the merged view's length."""
    seqs = torch.tensor([[0, 0, 0, 0, 0, 0, 2, 9, 3, 11, 4],
                         [0, 0, 0, 0, 8, 1, 9, 10, 2, 12, 8],
                         [0, 0, 0, 0, 0, 0, 0, 0, 5, 6, 9],
                         [0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 10]])
    model = make_model(encoders=encoders, dropout=0.0)
    view_ids, _, _ = model.views(seqs[:, :-1])
    assert tema.view_starts(view_ids, False) == [8, 6, 4]  # the views are trimmed: the comparison can fail

    def run() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        states = model.eval().final_states(seqs).detach()
        return (states, *_loss_and_grads(model, seqs))

    states, loss, grads = run()
    monkeypatch.setattr(tema.model, "view_starts", lambda ids, pad: [0] * ids.shape[0])  # every view at full length
    full_states, full_loss, full_grads = run()
    torch.testing.assert_close(states, full_states, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, full_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == full_grads.keys() and any(k.startswith("encoders.") for k in grads)
    for name in grads:
        torch.testing.assert_close(grads[name], full_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_the_heads_normalise_each_distinct_state_once_with_the_same_loss_and_gradients(monkeypatch, loss):
    """The other domain's view repeats its state over a run of the target domain's items; its heads' normaliser
    is computed once per distinct state (softmax.distinct_rows), which changes no loss or gradient."""
    from temarec.models import softmax
    seqs = torch.tensor([[0, 0, 2, 3, 4, 9, 1, 2, 3, 11, 4],  # a run of Food items: the Kitchen view repeats
                         [0, 0, 0, 0, 8, 9, 10, 1, 12, 11, 8],
                         [0, 0, 0, 0, 0, 0, 0, 5, 6, 1, 9]])
    model = make_model(loss=loss, num_sampled=4, dropout=0.0)
    merged = []
    distinct = softmax.distinct_rows

    def spy(x, rows):
        out = distinct(x, rows)
        merged.append(x.shape[1] - out[0].shape[1])
        return out

    monkeypatch.setattr(softmax, "distinct_rows", spy)
    once, grads = _loss_and_grads(model, seqs)
    assert sum(merged) > 0  # some rows were duplicates, so the comparison can fail
    monkeypatch.setattr(softmax, "distinct_rows", lambda x, rows: (x, torch.arange(x.shape[1]), rows))
    each, each_grads = _loss_and_grads(model, seqs)
    torch.testing.assert_close(once, each, rtol=1e-6, atol=1e-6)
    assert grads.keys() == each_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], each_grads[name], rtol=1e-4, atol=1e-6, msg=name)
