"""TEMA's fused scores (eqs. 12-13, 16) computed for serving: the same numbers as ``TEMA.score_parts``, for less CPU.

Shape legend: V views, M modalities, B batch, D hidden size, N items of the domain, r rows of one chunk.

``score_parts`` sums its nine heads one by one in log space: one (r, D) @ (D, N) product per head, so each
modality's (N, D) item matrix is read from memory once per view, then a log-softmax and a ``logaddexp`` per head,
two transcendental functions per item and head. Serving a micro-batch here:

* one product per modality, the views' states stacked: (V r, D) @ (D, N) reads each item matrix once;
* each head's softmax normaliser from e = exp(z - max z), and the fused probability
  sum_{V,m} w_V alpha_m e / sum(e) from the same e: one exp per item and head, one log per item.

Summing probabilities underflows where every head gives an item less than float32's smallest normal number
(1.2e-38), which needs logits spread over more than ~87 (temperatures below ~0.02; trained runs sit near 0.1).
Rows where that happens are scored by the model's own log-space ``score_parts`` instead. A scorer is trusted only
after it reproduces ``score_parts`` on a probe batch (``fused_scorer``), as serve/scoring.py's factorization is.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from temarec.models.tema.heads import HeadParts
from temarec.serve.scoring import probe_histories

log = logging.getLogger(__name__)

ROWS = 16  # histories scored at once: (V, ROWS, N) float32 logits of one modality, ~7 MB on a 35k-item domain


class FusedScorer:
    """``TEMA.score_parts`` (scores (B, N) and the ``HeadParts`` that ``explain`` reuses) with one product per
    modality and one exp per item and head."""

    def __init__(self, model: Any):
        self.model = model

    @torch.inference_mode()
    def __call__(self, history: torch.Tensor, domain: int) -> tuple[torch.Tensor, HeadParts]:
        model = self.model
        h = model.scaled(model.final_states(history))  # (V, M, B, D) query side of eqs. (12)-(13)
        cand = model.domain_candidates(domain)  # (M, N, D) item side
        log_w = model.log_head_weights(domain)  # (V, M) log(w_V alpha_m), -inf for heads left out
        log_norm = h.new_zeros(h.shape[:3])  # (V, M, B) as score_parts: 0 for heads left out
        heads = (log_w > -math.inf).nonzero().tolist()  # [(v, m)] the heads in use
        if len(heads) == 1:  # one head: score_parts ranks by Sim / tau itself (same order, no normaliser)
            (v, m), = heads
            z = h[v, m] @ cand[m].T  # (B, N)
            log_norm[v, m] = z.logsumexp(-1)
            return z + model.domain_tie_break(domain), HeadParts(h, log_norm)
        scores = torch.cat([self._log_prob(h[:, :, s:s + ROWS], cand, log_w, log_norm[:, :, s:s + ROWS])
                            for s in range(0, h.shape[2], ROWS)])  # (B, N)
        scores += model.domain_tie_break(domain)
        # an item no head gives a normal float32 probability: redo its rows in log space (the model's own way)
        low = (scores < math.log(torch.finfo(scores.dtype).tiny) + 1).any(1).nonzero().flatten().tolist()
        if low:
            exact, exact_parts = model.score_parts(history[low], domain)
            scores[low], log_norm[:, :, low] = exact, exact_parts.log_norm
        return scores, HeadParts(h, log_norm)

    @staticmethod
    def _log_prob(h: torch.Tensor, cand: torch.Tensor, log_w: torch.Tensor, log_norm: torch.Tensor) -> torch.Tensor:
        """h (V, M, r, D) -> (r, N) log sum_{V,m} w_V alpha_m P_m^V (eqs. 13, 16); fills log_norm (V, M, r)."""
        prob = None  # (r, N)
        for m in range(h.shape[1]):
            views = (log_w[:, m] > -math.inf).nonzero().flatten()  # this modality's heads in use
            if not len(views):
                continue
            q = h[views, m]  # (k, r, D)
            z = (q.reshape(-1, q.shape[-1]) @ cand[m].T).view(*q.shape[:2], -1)  # (k, r, N) Sim / tau, eq. (12)
            top = z.amax(-1, keepdim=True)  # (k, r, 1)
            e = z.sub_(top).exp_()  # (k, r, N) exp(z - max z), in place
            log_sum = e.sum(-1, keepdim=True).log_()  # (k, r, 1)
            log_norm[views, m] = (top + log_sum).squeeze(-1)  # log sum_c exp(z_c), eq. (13)
            weight = (log_w[views, m][:, None, None] - log_sum).exp_()  # (k, r, 1) w_V alpha_m / sum(e)
            for j in range(len(views)):
                prob = e[j].mul_(weight[j]) if prob is None else prob.addcmul_(e[j], weight[j])
        assert prob is not None, "more than one head is in use"
        return prob.log_()


def fused_scorer(model: Any) -> FusedScorer | None:
    """A ``FusedScorer`` for a model with TEMA's scoring interface whose scores it reproduces, else None."""
    needed = ("score_parts", "scaled", "final_states", "domain_candidates", "log_head_weights", "domain_tie_break")
    if not all(callable(getattr(model, name, None)) for name in needed):
        return None
    scorer = FusedScorer(model)
    with torch.inference_mode():
        hist = probe_histories(model)
        for d in (0, 1):
            got, got_parts = scorer(hist, d)
            want, want_parts = model.score_parts(hist, d)
            if not (torch.allclose(got, want, atol=1e-4, rtol=1e-4)
                    and torch.allclose(got_parts.log_norm, want_parts.log_norm, atol=1e-4, rtol=1e-4)):
                log.warning("%s: the serving scorer does not reproduce score_parts; serving through score_parts",
                            model.name)
                return None
    return scorer
