"""The shared next-item softmax (temarec.models.softmax): negatives drawn by popularity with the log-Q correction
(``model.negative_power``), against the exact softmax it stands in for."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from temarec.models.softmax import draw_negatives, full_log_prob, log_normaliser, negative_log_q, sampled_log_prob

COUNTS = np.array([50.0, 20, 9, 4, 1, 0, 0, 3])  # a long tail: two items never seen in training


def test_negative_log_q_is_uniform_at_power_0_and_by_count_plus_one_at_1():
    assert negative_log_q(COUNTS, 0.0) is None  # None: the uniform draws of model.negative_power's default
    q = negative_log_q(COUNTS, 1.0).exp()
    torch.testing.assert_close(q, torch.as_tensor((COUNTS + 1) / (COUNTS + 1).sum(), dtype=torch.float32))
    half = negative_log_q(COUNTS, 0.5).exp()
    assert float(half.sum()) == pytest.approx(1.0) and half[0] < q[0] and half[5] > q[5]  # flatter than by count


def test_popularity_draws_follow_q():
    torch.manual_seed(0)
    log_q = negative_log_q(COUNTS, 1.0)
    draws = draw_negatives(len(COUNTS), 200_000, log_q, torch.device("cpu"))
    freq = torch.bincount(draws, minlength=len(COUNTS)).double() / len(draws)
    torch.testing.assert_close(freq, log_q.exp().double(), atol=3e-3, rtol=0)


def test_a_bias_adds_to_each_candidates_logit_with_its_gradient():
    g = torch.Generator().manual_seed(0)
    hs = torch.randn(2, 1, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)  # (V, M, P, D)
    cand = torch.randn(1, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)  # (M, C, D)
    bias = torch.randn(5, generator=g, dtype=torch.float64)
    hits = (torch.tensor([0, 2]), torch.tensor([1, 4]))  # (position, candidate) left out
    got = log_normaliser(hs, cand, hits, bias=bias)
    z = (hs @ cand.transpose(1, 2)[None]) + bias  # (V, M, P, C)
    z[:, :, hits[0], hits[1]] = float("-inf")
    want = z.logsumexp(-1)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), (hs, cand)), torch.autograd.grad(want.sum(), (hs, cand)))


def _problem(n: int = 8, p: int = 3, d: int = 4):
    g = torch.Generator().manual_seed(1)
    hs = torch.randn(1, 1, p, d, generator=g, dtype=torch.float64)  # (V, M, P, D)
    items = torch.randn(1 + n, d, generator=g, dtype=torch.float64)  # padded ids: row 0 is padding
    target = torch.tensor([0, 3, 6])  # local indices, a popular, a middling and a never-seen item
    return hs, items, target


def test_the_uncorrected_sampled_loss_is_the_softmax_over_logits_minus_log_sq():
    hs, items, target = _problem()
    log_q, s = negative_log_q(COUNTS, 1.0), 6
    torch.manual_seed(3)
    got = sampled_log_prob(hs, lambda ids: items[ids][None], target, len(COUNTS), 1, s, correction=False,
                           log_q=log_q)
    torch.manual_seed(3)
    neg = draw_negatives(len(COUNTS), s, log_q, torch.device("cpu"))  # the same draws
    adjust = -(math.log(s) + log_q.double())
    for row, t in enumerate(target.tolist()):
        logits = [float(hs[0, 0, row] @ items[1 + t]) + float(adjust[t])]
        logits += [float(hs[0, 0, row] @ items[1 + j]) + float(adjust[j]) for j in neg.tolist() if j != t]
        want = logits[0] - torch.logsumexp(torch.tensor(logits, dtype=torch.float64), 0)
        assert float(got[0, 0, row]) == pytest.approx(float(want), abs=1e-9)


def test_the_calibrated_sampled_probability_estimates_the_exact_one_under_popularity_draws():
    """With ``correction`` each negative counts for 1 / (S q) items: many draws give the exact log P. Treating the
    same popularity draws as uniform ones (the uniform path's shift) does not: the correction is what does it."""
    hs, items, target = _problem()
    rows = lambda ids: items[ids][None]  # noqa: E731
    exact = full_log_prob(hs, items[1:][None], target)
    log_q, s, n = negative_log_q(COUNTS, 1.0), 400_000, len(COUNTS)
    torch.manual_seed(0)
    got = sampled_log_prob(hs, rows, target, n, 1, s, correction=True, log_q=log_q)
    torch.testing.assert_close(got, exact, atol=5e-3, rtol=0)
    torch.manual_seed(0)
    neg = draw_negatives(n, s, log_q, torch.device("cpu"))
    z = (hs[0, 0] @ items[1 + neg].T)  # (P, S) the same draws, weighted as if uniform
    z[neg[None, :] == target[:, None]] = float("-inf")
    pos = (hs[0, 0] * items[1 + target]).sum(-1)
    naive = pos - torch.logaddexp(pos, z.logsumexp(-1) + math.log((n - 1) / s))
    assert float((naive - exact[0, 0]).abs().max()) > 0.1


def test_a_context_computes_each_domains_log_q_once_from_that_domains_counts():
    from temarec.models.base import ModelContext

    ctx = ModelContext(domain_sizes=(3, 5), item_counts=COUNTS)  # idx 0-2 Food, 3-7 Kitchen
    kitchen = ctx.negative_log_q(1, 1.0)
    torch.testing.assert_close(kitchen, negative_log_q(COUNTS[3:], 1.0))
    assert ctx.negative_log_q(1, 1.0) is kitchen  # the loss asks at every step: one computation per domain
    assert ctx.negative_log_q(1, 0.0) is None and len(ctx.negative_log_q(0, 0.5)) == 3
