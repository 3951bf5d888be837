"""TEMA's prediction side, eqs. (12)-(16): modality and view weights, and what scoring hands to explanations.

Each (view, modality) head scores the target domain's items by Sim(h, E_m) / tau (eqs. 12-13); the fused score
weights head V, m by w_V alpha_m (eqs. 13, 15-16). A head's softmax is ``temarec.models.softmax``, the one
SASRec trains with.

Shape legend (all of models/tema/): B batch, L sequence length, D hidden size (q in the paper), N items of a
domain, M modalities, V views (S^{first}, S^{second}, S^{first+second}), E = V*M encoders, T tags, e a frozen
feature's size, P scored positions, S sampled negatives, U distinct items of a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from temarec.models.tema.items import MODALITIES

MIN_TEMPERATURE = 0.01  # logit scale <= 100, as CLIP clamps it
# learned fusion logits are stored divided by this, so Adam moves them this many times faster than the network's
# weights: at lr 1e-3 a logit otherwise needs ~1000 steps per factor of e (docs/DESIGN.md, "Learned fusion")
FUSION_SPEED = 10.0


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


class LearnedFusion(nn.Module):
    """``model.tema.fusion = learned`` (our addition, not the paper's): eq. (16)'s view weights w_V and eq. (13)'s
    modality weights alpha_m as softmaxes over learned logits, one set per target domain.

    views (2, V) the paper's w_V for each target domain (eqs. 15-16), alpha (M,) its alpha_m (eq. 13). The logits
    start at their logs, so the weights start at the paper's; the view weights are the softmax times the paper's
    total s_d = sum_V w_V (1 + lambda1 + lambda2), so the scores start equal to ``fixed``'s, not only the ranks
    (which never depend on s_d). A weight the paper sets to 0 (a lambda of 0, a residual tag weight of 0) stays 0.
    How they are trained: docs/DESIGN.md, "Learned fusion".
    """

    def __init__(self, views: torch.Tensor, alpha: torch.Tensor):
        super().__init__()
        self.register_buffer("view_off", views <= 0, persistent=False)  # (2, V)
        self.register_buffer("alpha_off", (alpha <= 0).expand(2, -1).clone(), persistent=False)  # (2, M)
        self.register_buffer("log_total", views.sum(1).log(), persistent=False)  # (2,) log s_d
        # (2, V) and (2, M) logits / FUSION_SPEED
        self.view_logits = nn.Parameter(views.clamp(min=1e-30).log().masked_fill(self.view_off, 0.0) / FUSION_SPEED)
        self.alpha_logits = nn.Parameter(alpha.clamp(min=1e-30).log().masked_fill(alpha <= 0, 0.0)
                                         .expand(2, -1) / FUSION_SPEED)

    def forward(self, domain: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> log w_V (V,) on the paper's scale (they sum to s_d) and log alpha_m (M,), for target ``domain``."""
        views = FUSION_SPEED * self.view_logits[domain]  # (V,)
        alpha = FUSION_SPEED * self.alpha_logits[domain]  # (M,)
        log_w = views.masked_fill(self.view_off[domain], -math.inf).log_softmax(-1)
        log_a = alpha.masked_fill(self.alpha_off[domain], -math.inf).log_softmax(-1)
        return log_w + self.log_total[domain], log_a
