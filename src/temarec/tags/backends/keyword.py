"""``keyword`` matching: the static keyword assignment of the Table IV ablation ("fixed tag embeddings").

A tag is assigned (score 100) when every content word of the tag occurs in the item's text, after lower-casing
and light plural folding ("tea bags" matches "Tea Bag, 100 count"); otherwise the pair has no score at all.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from temarec.tags.backends.base import CallStats, Item, MatchResult, Progress
from temarec.tags.text import content_stems


class KeywordMatch:
    def __init__(self) -> None:
        self.stats = CallStats()

    def describe(self) -> str:
        return "keyword matching (all of a tag's words in the item text -> 100)"

    def score(self, items: Sequence[Item], tags: Sequence[str], progress: Progress) -> MatchResult:
        postings: dict[str, set[int]] = {}
        for i, item in enumerate(items):
            for s in set(content_stems(item.text)):
                postings.setdefault(s, set()).add(i)
        scores = np.zeros((len(items), len(tags)), dtype=np.uint8)
        for j, tag in enumerate(tags):
            words = set(content_stems(tag))
            if not words:
                continue
            hit = set.intersection(*(postings.get(w, set()) for w in words))
            scores[sorted(hit), j] = 100
        progress.update(len(items))
        return MatchResult(scores=scores, failed=np.zeros(len(items), dtype=bool))
