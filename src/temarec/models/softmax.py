"""The next-item softmax every tied model trains with: exact over a domain, or over sampled negatives.

Shape legend: V, M leading head dimensions (TEMA's views and modalities; 1, 1 for SASRec), P scored positions,
D hidden size, N items of a domain, C candidates, S sampled negatives, K item rows asked for.

One implementation for SASRec, GRU4Rec, the peers' next-item losses and each of TEMA's heads: the normaliser runs
through ``ChunkedLogSumExp``, a custom autograd function that never holds all the logits.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

LOGIT_CHUNK = 1 << 19  # logits held at once by a head's normaliser (2 MB in float32: stays in cache)
MIN_CHUNK_ROWS = 64  # ... but never fewer rows per matmul than this


class ChunkedLogSumExp(torch.autograd.Function):
    """log sum_c exp(x_r . w_c) for M heads at once, chunk by chunk, never holding all the logits.

    x (M, R, D) rows, w (M, C, D) candidates, rows per chunk, and (row, column) index pairs of logits left out
    (-inf: a sampled negative that is the row's own target) -> (M, R) log-normalisers. Forward keeps only
    those; backward recomputes each chunk's logits once and forms the softmax in place. Against autograd over
    the stored (M, R, C) logits (a logsumexp or cross-entropy) this saves their memory and several passes over
    them; small chunks stay in cache. It is most of TEMA's head cost: one CPU thread spends more time on the
    nine heads' normalisers than on the nine encoders (docs/DESIGN.md, "Cost").
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, rows: int, drop_r: torch.Tensor,
                drop_c: torch.Tensor) -> torch.Tensor:
        M, R, _ = x.shape
        lse = x.new_empty(M, R)
        for s in range(0, R, rows):
            lse[:, s:s + rows] = _chunk_logits(x, w, s, rows, drop_r, drop_c).logsumexp(-1)
        ctx.save_for_backward(x, w, drop_r, drop_c, lse)
        ctx.rows = rows
        return lse

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w, drop_r, drop_c, lse = ctx.saved_tensors
        lse = lse.masked_fill(lse == float("-inf"), 0.0)  # a row with every logit left out has no gradient
        grad_x, grad_w = torch.empty_like(x), torch.zeros_like(w)
        for s in range(0, x.shape[1], ctx.rows):
            # d lse / d z = softmax(z), times the incoming gradient
            dz = _chunk_logits(x, w, s, ctx.rows, drop_r, drop_c).sub_(lse[:, s:s + ctx.rows, None]).exp_()
            dz.mul_(grad[:, s:s + ctx.rows, None])  # (M, r, C)
            grad_x[:, s:s + ctx.rows] = torch.bmm(dz, w)
            grad_w.baddbmm_(dz.transpose(1, 2), x[:, s:s + ctx.rows])
        return grad_x, grad_w, None, None, None


def _chunk_logits(x: torch.Tensor, w: torch.Tensor, start: int, rows: int, drop_r: torch.Tensor,
                  drop_c: torch.Tensor) -> torch.Tensor:
    """(M, r, C) logits x[:, start:start + rows] @ w^T, -inf at the left-out (row, column) pairs of the chunk."""
    z = torch.bmm(x[:, start:start + rows], w.transpose(1, 2))
    if len(drop_r):
        inside = (drop_r >= start) & (drop_r < start + rows)
        z[:, drop_r[inside] - start, drop_c[inside]] = float("-inf")
    return z


def distinct_rows(x: torch.Tensor, left_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (M, R, D) rows of M heads -> (its distinct rows (M, U, D), inverse (R,) with x = distinct[:, inverse],
    ``left_rows`` as distinct rows). A row is a duplicate when it equals another in every head; a row with a
    left-out pair (``left_rows``) stays its own, since what it leaves out is its own. Rows are compared by value:
    TEMA's duplicates are one encoder output gathered at several positions; rows equal otherwise come from the
    same computation on the same inputs (two identical histories, no dropout), so routing their gradients through
    one of them leaves the weights' gradients as they were."""
    M, R, D = x.shape
    dtype = torch.promote_types(x.dtype, torch.float32)  # compared exactly; the tag exact below 2^24 rows
    tag = torch.zeros(R, 1, dtype=dtype, device=x.device)
    tag[left_rows] = 1.0 + left_rows.to(dtype)[:, None]  # a distinct value per such row
    key = torch.cat([x.detach().transpose(0, 1).reshape(R, M * D).to(dtype), tag], dim=1)  # (R, M * D + 1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)  # (R,)
    first = torch.full((int(inverse.max()) + 1 if R else 0,), R, dtype=torch.long, device=x.device)
    first.scatter_reduce_(0, inverse, torch.arange(R, device=x.device), "amin")  # each distinct row's first copy
    return x[:, first], inverse, inverse[left_rows]


def log_normaliser(hs: torch.Tensor, cand: torch.Tensor,
                    left_out: tuple[torch.Tensor, torch.Tensor] | None = None,
                    bias: torch.Tensor | None = None, distinct: bool = False) -> torch.Tensor:
    """hs (V, M, P, D), cand (M, C, D) -> (V, M, P) log sum_c exp(h . e_c + bias_c) per head, through
    ChunkedLogSumExp.

    ``left_out``: (position, candidate) index pairs excluded from every view's sum (accidental hits).
    ``bias`` (C,): a constant added to each candidate's logit (the log-Q correction), carried as one more
    dimension: a column of ones on the states against the bias on the candidates.
    ``distinct``: compute the normaliser once per distinct (view, position) row (``distinct_rows``) and copy it
    to the row's duplicates; the same values and gradients (a duplicate's gradient reaches the state through its
    first copy). For TEMA, whose view of the other domain repeats one state over a run of the target domain's
    items (docs/DESIGN.md, "Cost").
    """
    if bias is not None:
        hs = torch.cat([hs, hs.new_ones(*hs.shape[:-1], 1)], dim=-1)
        cand = torch.cat([cand, bias.to(cand.dtype).expand(cand.shape[0], -1)[..., None]], dim=-1)
    V, M, P, D = hs.shape
    x = hs.transpose(0, 1).reshape(M, V * P, D)  # (M, R, D), R = V * P rows: each view's positions
    rows, cols = left_out if left_out is not None else (hs.new_empty(0, dtype=torch.long),) * 2
    rows = (rows + torch.arange(V, device=hs.device)[:, None] * P).flatten()  # the same pairs in every view
    if distinct:
        x, inverse, rows = distinct_rows(x, rows)  # (M, U, D)
    chunk = max(MIN_CHUNK_ROWS, LOGIT_CHUNK // (M * cand.shape[1]))  # ~LOGIT_CHUNK logits per chunk
    lse = ChunkedLogSumExp.apply(x, cand, chunk, rows, cols.repeat(V))  # (M, R) or (M, U)
    if distinct:
        lse = lse[:, inverse]  # (M, R)
    return lse.view(M, V, P).transpose(0, 1)


def full_log_prob(hs: torch.Tensor, cand: torch.Tensor, target: torch.Tensor, distinct: bool = False) -> torch.Tensor:
    """Exact softmax: hs (V, M, P, D) query states, cand (M, N, D) the domain's item rows, target (P,) local
    indices -> log P(target) (V, M, P). ``distinct``: as ``log_normaliser``'s."""
    picked = (hs * cand[None, :, target]).sum(-1)  # (V, M, P) the target's logit
    return picked - log_normaliser(hs, cand, distinct=distinct)


def sampled_log_prob(hs: torch.Tensor, item_rows: Callable[[torch.Tensor], torch.Tensor], target: torch.Tensor,
                     n: int, start: int, num_sampled: int, correction: bool,
                     log_q: torch.Tensor | None = None, distinct: bool = False) -> torch.Tensor:
    """Softmax over the target and ``num_sampled`` shared negatives drawn from its domain.

    hs (V, M, P, D) query states; ``item_rows(ids (K,)) -> (M, K, D)`` candidate rows of padded item ids;
    target (P,) local indices in a domain of ``n`` items whose first padded id is ``start`` -> (V, M, P).
    Accidental hits (the target drawn as one of its own negatives) are left out of the normaliser.
    ``log_q`` (n,): the log-probability of drawing each item (``negative_log_q``); None draws uniformly.
    ``distinct``: as ``log_normaliser``'s.
    ``correction``: each negative stands for (n - 1) / S items (uniform), 1 / (S q) items in general, so the sum
    estimates the full normaliser and the probability stays calibrated (TEMA mixes probabilities); without it,
    the plain softmax over target + negatives (SASRec's sampled loss; with uniform draws the log-Q correction is
    a constant that cancels, with ``log_q`` every logit, the target's too, gets -log(S q)).
    """
    P = len(target)
    neg = draw_negatives(n, num_sampled, log_q, hs.device)  # (S,)
    uniq, inv = torch.unique(torch.cat([target, neg]) + start, return_inverse=True)
    cand = item_rows(uniq)[:, inv]  # (M, P + S, D): the items this batch needs, each looked up once
    pos = (hs * cand[None, :, :P]).sum(-1)  # (V, M, P)
    hits = (neg[None, :] == target[:, None]).nonzero(as_tuple=True)  # (position, negative) pairs
    if log_q is None:
        lse = log_normaliser(hs, cand[:, P:].contiguous(), hits, distinct=distinct)  # (V, M, P)
        shift = math.log((n - 1) / num_sampled) if correction else 0.0
        return pos - torch.logaddexp(pos, lse + shift)  # (V, M, P)
    adjust = log_q_correction(log_q, num_sampled)  # (n,)
    lse = log_normaliser(hs, cand[:, P:].contiguous(), hits, bias=adjust[neg], distinct=distinct)  # (V, M, P)
    if not correction:
        pos = pos + adjust[target]
    return pos - torch.logaddexp(pos, lse)  # (V, M, P)


def log_q_correction(log_q: torch.Tensor, num_sampled: int) -> torch.Tensor:
    """(n,) -log(S q) of each item: what a logit gets when negatives are drawn from q (sampled softmax)."""
    return -(math.log(num_sampled) + log_q)


def draw_negatives(n: int, num_sampled: int, log_q: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """``num_sampled`` local indices of a domain of ``n`` items: uniform, or with replacement from exp(log_q)."""
    if log_q is None:
        return torch.randint(0, n, (num_sampled,), device=device)
    return torch.multinomial(log_q.exp(), num_sampled, replacement=True).to(device)


def negative_log_q(counts: np.ndarray | None, power: float) -> torch.Tensor | None:
    """counts (n,) training interactions of a domain's items -> (n,) log q, q ∝ (count + 1) ** power, or None
    (uniform draws) for power 0 (``model.negative_power``)."""
    if power == 0.0 or counts is None:
        return None
    log_w = power * torch.log1p(torch.as_tensor(counts, dtype=torch.float64))
    return (log_w - log_w.logsumexp(0)).float()


def describe_loss(loss: str, num_sampled: int, negative_power: float, domain_sizes: tuple[int, int],
                  calibrated: bool = False) -> str:
    """The training softmax in words, for every report (``protocol.training``)."""
    if loss == "full" or num_sampled >= max(domain_sizes):
        return "full softmax over the target's domain" + ("" if loss == "full" else
                                                          f" (model.loss sampled, but num_sampled {num_sampled} "
                                                          "covers every domain)")
    draw = ("uniformly" if negative_power == 0.0 else
            f"with probability ∝ (training count + 1)^{negative_power:g}, log-Q corrected")
    return (f"sampled softmax: {num_sampled} shared negatives of the target's domain drawn {draw}"
            + (", normaliser calibrated" if calibrated else ""))
