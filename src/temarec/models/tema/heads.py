"""TEMA's prediction side, eqs. (12)-(16): modality and view weights, and what scoring hands to explanations.

Each (view, modality) head scores the target domain's items by Sim(h, E_m) / tau (eqs. 12-13); the fused score
weights head V, m by w_V alpha_m (eqs. 13, 15-16). A head's softmax is ``temarec.models.softmax``, the one
SASRec trains with.

Shape legend (all of models/tema/): B batch, L sequence length, D hidden size (q in the paper), N items of a
domain, M modalities, V views (S^{first}, S^{second}, S^{first+second}), E = V*M encoders, T tags, e a frozen
feature's size, P scored positions, S sampled negatives, U distinct items of a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from temarec.models.tema.items import MODALITIES

MIN_TEMPERATURE = 0.01  # logit scale <= 100, as CLIP clamps it


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
