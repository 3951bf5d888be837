"""Non-learned baselines: ``random`` and ``pop`` (per-domain training popularity)."""

from __future__ import annotations

import numpy as np
import torch

from temarec.config import ModelConfig
from temarec.models.base import ModelContext, SequentialModel


def _seed(seed: int | None) -> int:
    """An explicit seed, or one drawn from torch's global generator (seeded from train.seed by the harness)."""
    return int(torch.randint(0, 2**31 - 1, ())) if seed is None else seed


class RandomModel(SequentialModel):
    """Uniform random scores: the floor every metric is read against (sampled MRR ~= H(1000)/1000)."""

    name = "random"
    trainable = False
    not_factorizable = "has no sequence encoder to export (its scores do not depend on the history)"

    def __init__(self, cfg: ModelConfig, ctx: ModelContext, seed: int | None = None):
        super().__init__(cfg, ctx)
        self.generator = torch.Generator().manual_seed(_seed(seed))

    def score_domain(self, history: torch.Tensor, domain: int) -> torch.Tensor:
        return torch.rand(history.shape[0], self.ctx.domain_sizes[domain], generator=self.generator)


class PopModel(SequentialModel):
    """Scores each item of a domain by its training count; history-independent.

    Ties (many items share a count) are broken by a fixed random jitter below 1, so equal counts do not
    all rank above or below the target (which would make the sampled protocol's ">" rank optimistic).
    """

    name = "pop"
    trainable = False
    not_factorizable = "has no sequence encoder to export (its scores do not depend on the history)"

    def __init__(self, cfg: ModelConfig, ctx: ModelContext, seed: int | None = None):
        super().__init__(cfg, ctx)
        g = torch.Generator().manual_seed(_seed(seed))
        self.register_buffer("counts", torch.zeros(ctx.n_items, dtype=torch.float64))
        self.register_buffer("jitter", 0.5 * torch.rand(ctx.n_items, generator=g, dtype=torch.float64))

    def fit_statistics(self, item_counts: np.ndarray) -> None:
        self.counts.copy_(torch.as_tensor(item_counts, dtype=torch.float64))

    def score_domain(self, history: torch.Tensor, domain: int) -> torch.Tensor:
        sl = self.ctx.domain_slice(domain)
        idx = slice(sl.start - 1, sl.stop - 1)  # buffers are indexed by internal idx, not idx + 1
        scores = self.counts[idx] + self.jitter[idx]  # (N,)
        return scores.float()[None, :].expand(history.shape[0], -1)
