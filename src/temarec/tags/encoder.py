"""The sentence encoder of the offline tag backends (``mined`` vocabulary, ``embedding`` matching).

It is the text encoder of the features stage (:class:`temarec.embeddings.TextEncoder`: offline model resolution,
one loaded copy per process) with its vectors in the tags cache (DATASET/tags/cache.sqlite, or tags.cache_path).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from temarec.cache import Cache
from temarec.embeddings import EmbeddingCache, TextEncoder, content_key, embed

CHUNK = 256  # texts per encode call and per cache transaction; fixed so a resumed run batches identically


class Encoder:
    """L2-normalised sentence embeddings, cached per (encoder, text)."""

    def __init__(self, name: str, cache: Cache | None = None, batch_size: int = 64):
        self.name = name
        self.text = TextEncoder(name, device="cpu", batch_size=batch_size)
        self.cache = EmbeddingCache(cache if cache is not None else Cache(":memory:"))

    def encode(self, texts: Sequence[str], on_chunk: Callable[[int], None] | None = None) -> np.ndarray:
        """(len(texts), D) float32, unit norm. Work is done in fixed chunks of the given order, each committed to
        the cache in one transaction, so a killed run resumes chunk by chunk with identical batches."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        texts = list(texts)
        matrix, _, _ = embed(self.text, [content_key(t) for t in texts], texts.__getitem__, self.cache, CHUNK,
                             progress=on_chunk or (lambda n: None))
        return matrix
