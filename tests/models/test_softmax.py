"""The shared next-item softmax (temarec.models.softmax): negatives drawn by popularity with the log-Q correction
(``model.negative_power``), against the exact softmax it stands in for."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from temarec.models.softmax import (distinct_rows, draw_negatives, full_log_prob, log_normaliser, negative_log_q,
                                    sampled_log_prob)

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


def test_distinct_rows_merge_rows_equal_in_every_head_but_not_rows_with_their_own_exclusions():
    torch.manual_seed(0)
    base = torch.randn(2, 3, 4)  # (M, 3 distinct rows, D)
    x = base[:, [0, 1, 0, 2, 1, 0]]  # rows 0, 2, 5 equal, 1 and 4 equal
    x[1, 3] = x[1, 1]  # row 3 equals row 1 in head 1 only: still distinct
    left = torch.tensor([5, 5])  # row 5 leaves out two candidates: it stays its own row
    rows, inverse, left_mapped = distinct_rows(x, left)
    assert rows.shape == (2, 4, 4)  # {0, 2}, {1, 4}, {3}, {5}
    torch.testing.assert_close(rows[:, inverse], x, rtol=0, atol=0)
    assert inverse[0] == inverse[2] != inverse[5] and inverse[1] == inverse[4] != inverse[3]
    assert (left_mapped == inverse[5]).all() and (inverse == inverse[5]).sum() == 1


@pytest.mark.parametrize("bias", [False, True])
def test_the_normaliser_over_distinct_rows_gives_the_same_values_and_gradients(bias):
    torch.manual_seed(1)
    states = torch.randn(2, 5, 8)  # (M, 5 distinct states, D)
    pick = torch.tensor([[0, 1, 2, 3, 4, 0], [4, 4, 4, 2, 2, 1], [0, 0, 3, 3, 3, 3]])  # (V, P): views repeat states
    cand = torch.randn(2, 40, 8)
    left_out = (torch.tensor([1, 4]), torch.tensor([7, 30]))  # positions 1 and 4 leave a candidate out
    b = torch.randn(40) if bias else None
    grads, values = [], []
    for distinct in (False, True):
        s, c = states.clone().requires_grad_(True), cand.clone().requires_grad_(True)
        hs = torch.stack([s[:, p] for p in pick])  # (V, M, P, D), duplicates gathered from one state
        lse = log_normaliser(hs, c, left_out, bias=b, distinct=distinct)
        (lse * torch.linspace(0.5, 2.0, lse.numel()).view_as(lse)).sum().backward()
        values.append(lse.detach())
        grads.append((s.grad, c.grad))
    torch.testing.assert_close(values[1], values[0], rtol=1e-6, atol=1e-6)
    for g_distinct, g_each in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_distinct, g_each, rtol=1e-5, atol=1e-6)
    # the left-out pairs are honoured: position 1's row differs from the same state's row at position 0's view 0
    assert not torch.allclose(values[1][1, :, 1], log_normaliser(states[None, :, [4]], cand, bias=b)[0, :, 0])
