"""``embedding`` matching (offline default): cosine between item text and tag under a sentence encoder, on 1-100.

Calibration (documented in docs/TAGS.md): a fixed linear map of the cosine c,
``score = clip(round(1 + 99 * (c - lo) / (hi - lo)), 1, 100)`` with (lo, hi) = ``tags.embed_cos_range``.
The defaults (0.10, 0.55) for all-MiniLM-L6-v2, read off the Food-Kitchen titles against their mined vocabulary:
a random title-tag pair has median cosine 0.13 (score about 7); a tag naming the product type sits at 0.45-0.65
("coconut" for a coconut milk 0.56, "cookware" for a cookware set 0.63); theta = 70 falls at cosine 0.41, near the
median best tag of an item (0.43).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from temarec.tags.backends.base import CallStats, Item, MatchResult, Progress
from temarec.tags.encoder import Encoder


def calibrate(cos: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Cosine -> integer score 1-100 (uint8), linear between ``lo`` (score 1) and ``hi`` (score 100)."""
    score = 1.0 + 99.0 * (cos.astype(np.float64) - lo) / (hi - lo)
    return np.clip(np.floor(score + 0.5), 1, 100).astype(np.uint8)


class EmbeddingMatch:
    def __init__(self, encoder: Encoder, cos_range: tuple[float, float]):
        self.encoder = encoder
        self.lo, self.hi = cos_range
        self.stats = CallStats()

    def describe(self) -> str:
        return f"embedding matching ({self.encoder.name}, cosine {self.lo:g}..{self.hi:g} -> 1..100)"

    def score(self, items: Sequence[Item], tags: Sequence[str], progress: Progress) -> MatchResult:
        tag_vecs = self.encoder.encode(list(tags))  # (T, D)
        item_vecs = self.encoder.encode([it.text for it in items], on_chunk=progress.update)  # (N, D)
        scores = calibrate(item_vecs @ tag_vecs.T, self.lo, self.hi) if len(items) else \
            np.zeros((0, len(tags)), dtype=np.uint8)
        return MatchResult(scores=scores, failed=np.zeros(len(items), dtype=bool))
