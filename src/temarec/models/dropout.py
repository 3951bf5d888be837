"""Dropout whose mask is one uniform draw per element compared with p, for every model of the package.

``torch.nn.Dropout`` draws its mask with ``bernoulli_``, slow on the CPU: dropout forward + backward on
(9, 64, 48, 64) floats, one thread, costs 2.5x what it does with a uniform draw, and the draws were 18% of a TEMA
training step's CPU time on ABXI (docs/BENCHMARKS.md, "Dropout's mask"; ``benchmarks/bench_dropout.py``).
``u >= p`` with u uniform on [0, 1) keeps an element with probability 1 - p, as ``bernoulli_(1 - p)`` does, and
kept elements are scaled by 1 / (1 - p): the same distribution of masks and the same expectation, from a different
random stream (a seed gives other masks than ``nn.Dropout`` gave). Outside training, or with p = 0, both return the
input itself.
"""

from __future__ import annotations

import torch
from torch import nn


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with the mask drawn as ``rand >= p`` (same distribution, cheaper on a CPU)."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    keep = torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))  # 1 / (1 - p) where kept, 0 where dropped
    return x * keep


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same p, same state dict: it holds none) through :func:`dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

