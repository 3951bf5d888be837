"""TEMA's prediction side, eqs. (12)-(16): modality and view weights and the heads' log-normaliser.

Each (view, modality) head scores the target domain's items by Sim(h, E_m) / tau (eqs. 12-13); the fused score
weights head V, m by w_V alpha_m (eqs. 13, 15-16). The normaliser of a head's softmax is its costliest part and
runs through ``ChunkedLogSumExp``, a custom autograd function that never holds all the logits.

Shape legend (all of models/tema/): B batch, L sequence length, D hidden size (q in the paper), N items of a
domain, M modalities, V views (S^{first}, S^{second}, S^{first+second}), E = V*M encoders, T tags, e a frozen
feature's size, P scored positions, S sampled negatives, U distinct items of a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from temarec.models.tema.items import MODALITIES

MIN_TEMPERATURE = 0.01  # logit scale <= 100, as CLIP clamps it
LOGIT_CHUNK = 1 << 19  # logits held at once by a head's normaliser (2 MB in float32: stays in cache)
MIN_CHUNK_ROWS = 64  # ... but never fewer rows per matmul than this


@dataclass(frozen=True)
class HeadParts:
    """What scoring a domain computed that explaining its top items reuses (``TEMA.score_parts``)."""

    states: torch.Tensor  # (V, M, B, D) final states, scaled as the query side of eqs. (12)-(13)
    log_norm: torch.Tensor  # (V, M, B) each head's log-normaliser over the domain's items (0 for heads left out)

    def rows(self, index: list[int]) -> "HeadParts":
        return HeadParts(self.states[:, :, index], self.log_norm[:, :, index])


def modality_weights(alpha: tuple[float, float, float], modalities: tuple[str, ...]) -> dict[str, float]:
    """eq. (13) fusion weights of the modalities in use, renormalised to sum to 1 when some are absent."""
    raw = {"id": alpha[0], "img": alpha[1], "txt": alpha[2], "tag": 1.0 - sum(alpha)}
    kept = {m: raw[m] for m in MODALITIES if m in modalities}
    total = sum(kept.values())
    if total <= 0:
        raise ValueError(f"model.tema.alpha {tuple(alpha)} gives zero weight to every modality in use {modalities}; "
                         "raise the weight of one of them")
    return {m: w / total for m, w in kept.items()}


def view_weights(views: str, reading: str, lambdas: tuple[float, float], domain: int,
                 x_weight: float = 1.0) -> list[float]:
    """eqs. (15)-(16): weights of the views (first-domain, second-domain, merged) when ``domain`` is the target:
    X gets ``x_weight`` (1 in the paper), Y lambda1, X+Y lambda2.

    ``target`` reading: X is the target's own domain, Y the other one. ``fixed``: X is always the first domain.
    With ``views = merged`` there is one view, S^{X+Y}, with weight 1.
    """
    if views == "merged":
        return [1.0]
    x = domain if reading == "target" else 0
    weights = [0.0, 0.0, lambdas[1]]
    weights[x], weights[1 - x] = x_weight, lambdas[0]
    return weights


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


def log_normaliser(hs: torch.Tensor, cand: torch.Tensor,
                    left_out: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """hs (V, M, P, D), cand (M, C, D) -> (V, M, P) log sum_c exp(h . e_c) per head, through ChunkedLogSumExp.

    ``left_out``: (position, candidate) index pairs excluded from every view's sum (accidental hits).
    """
    V, M, P, D = hs.shape
    x = hs.transpose(0, 1).reshape(M, V * P, D)  # (M, R, D), R = V * P rows: each view's positions
    rows, cols = left_out if left_out is not None else (hs.new_empty(0, dtype=torch.long),) * 2
    rows = (rows + torch.arange(V, device=hs.device)[:, None] * P).flatten()  # the same pairs in every view
    chunk = max(MIN_CHUNK_ROWS, LOGIT_CHUNK // (M * cand.shape[1]))  # ~LOGIT_CHUNK logits per chunk
    lse = ChunkedLogSumExp.apply(x, cand, chunk, rows, cols.repeat(V))  # (M, R)
    return lse.view(M, V, P).transpose(0, 1)
