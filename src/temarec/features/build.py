"""The features stage: items.parquet -> frozen text (eq. 6) and image (eq. 5) embedding matrices.

The paper encodes both modalities with CLIP (e = 512); the default text encoder here is all-MiniLM-L6-v2
(e = 384), which ships offline. Any sentence-transformers model, a CLIP one included, can replace it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from temarec.config import FeaturesConfig
from temarec.data.dataset import DataError
from temarec.features.encoders import ImageEncoder, TextEncoder, encoder_meta
from temarec.features.images import locate_images, open_image, require_pillow
from temarec.features.store import (FORMAT_VERSION, MODALITY_FILES, EmbeddingCache, features_dir, items_digest,
                                    save_json, save_npy)

log = logging.getLogger(__name__)

FAILURE_EXAMPLES = 5  # meta.json keeps a few; image_failures.json has them all


def _clean(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return " ".join(str(value).split())


def item_text(title: Any, description: Any) -> str:
    """Title, then description, as one sentence-separated string; "" when the item has neither."""
    title, description = _clean(title), _clean(description)
    if title and description:
        sep = " " if title[-1] in ".!?:;" else ". "
        return title + sep + description
    return title or description


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def embed(encoder: TextEncoder | ImageEncoder, keys: Sequence[str | None], load: Callable[[int], Any],
          cache: EmbeddingCache, batch_size: int, order: Callable[[int], Any] | None = None,
          ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Rows with a content key -> (n, e) matrix + mask; vectors come from the cache or are encoded once per key.

    ``load(row)`` returns the encoder input for a row (a string or an image) and may raise OSError/ValueError,
    which masks every row with that key. ``order(row)`` sorts the work (longest text first wastes less padding).
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
    with tqdm(total=len(todo), desc=f"{encoder.modality} features", unit="item",
              disable=not sys.stderr.isatty()) as bar:
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
            bar.update(len(todo[start:start + batch_size]))
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


def _text_features(items: pd.DataFrame, cfg: FeaturesConfig,
                   cache: EmbeddingCache) -> tuple[np.ndarray, np.ndarray, dict[str, Any], dict[str, Any]]:
    encoder = TextEncoder(cfg.text_encoder, cfg.device)
    texts = [item_text(t, d) for t, d in zip(items["title"], items["description"])]
    keys = [_sha(t.encode()) if t else None for t in texts]
    matrix, mask, stats = embed(encoder, keys, texts.__getitem__, cache, cfg.batch_size,
                                order=lambda row: -len(texts[row]))
    meta = {**encoder_meta(encoder, stats["dim"]), "items": int(mask.sum()), "without_text": int((~mask).sum())}
    return matrix, mask, meta, stats


def _image_features(items: pd.DataFrame, root: Path, cfg: FeaturesConfig, cache: EmbeddingCache,
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any], dict[str, Any], list[dict[str, str]]]:
    require_pillow()
    encoder = ImageEncoder(cfg.image_encoder, cfg.device)
    sources = items["image"].tolist()
    files, failures = locate_images(sources, root, features_dir(root) / "image_cache", cfg.image_timeout_s)
    keys: list[str | None] = [None] * len(files)
    for row, path in enumerate(files):
        if path is not None:
            try:
                keys[row] = _sha(path.read_bytes())  # content-addressed: an edited image is encoded again
            except OSError as exc:
                failures[row] = f"{type(exc).__name__}: {exc}"
    matrix, mask, stats = embed(encoder, keys, lambda row: open_image(files[row]), cache, cfg.batch_size)
    for row, key in enumerate(keys):
        if key in stats["decode_failures"]:
            failures[row] = stats["decode_failures"][key]
    failure_list = [{"item": str(items["item"].iat[row]), "source": str(sources[row]), "reason": reason}
                    for row, reason in sorted(failures.items())]
    meta = {**encoder_meta(encoder, stats["dim"]), "kind": encoder.kind, "items": int(mask.sum()),
            "without_image": len(items) - int(mask.sum()) - len(failure_list),
            "failures": len(failure_list), "failure_examples": failure_list[:FAILURE_EXAMPLES]}
    return matrix, mask, meta, stats, failure_list


def run_features(dataset_dir: str | Path, cfg: FeaturesConfig) -> dict[str, Any]:
    """Compute DIR/features/ (see ``temarec.features.store``); returns meta.json's content plus run counts."""
    root = Path(dataset_dir)
    items_path = root / "items.parquet"
    if not items_path.is_file():
        raise DataError("not a temarec dataset folder (no items.parquet); create one with `temarec prepare`", root)
    try:
        items = pd.read_parquet(items_path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"cannot read this Parquet file ({type(exc).__name__}: {exc}); the dataset folder is "
                        "damaged: re-run `temarec prepare`", items_path) from exc
    out = features_dir(root)
    out.mkdir(exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # meta.json marks a finished run: no meta, no half-new features
    started = time.perf_counter()
    meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "n_items": len(items),
                            "items_sha256": items_digest(items["item"]), "normalised": "l2", "modalities": {}}
    run: dict[str, Any] = {}
    with EmbeddingCache(out / "cache.sqlite") as cache:
        if cfg.text_encoder:
            matrix, mask, meta["modalities"]["txt"], stats = _text_features(items, cfg, cache)
            save_npy(out / "text.npy", matrix)
            save_npy(out / "text_mask.npy", mask)
            run["txt"] = {"encoded": stats["encoded"], "from_cache": stats["from_cache"]}
        if cfg.image_encoder:
            matrix, mask, meta["modalities"]["img"], stats, failures = _image_features(items, root, cfg, cache)
            save_npy(out / "image.npy", matrix)
            save_npy(out / "image_mask.npy", mask)
            save_json(out / "image_failures.json", failures)
            run["img"] = {"encoded": stats["encoded"], "from_cache": stats["from_cache"]}
            if failures:
                log.warning("%d image(s) could not be used (e.g. %s: %s); see %s", len(failures),
                            failures[0]["source"], failures[0]["reason"], out / "image_failures.json")
    for modality, stem in MODALITY_FILES.items():  # drop a modality left from an earlier run with other settings
        if modality not in meta["modalities"]:
            for suffix in ("", "_mask"):
                (out / f"{stem}{suffix}.npy").unlink(missing_ok=True)
    if "img" not in meta["modalities"]:
        (out / "image_failures.json").unlink(missing_ok=True)
    save_json(out / "meta.json", meta)
    seconds = time.perf_counter() - started
    log.info("features for %d items in %.1f s -> %s", len(items), seconds, out)
    return {**meta, "run": run, "seconds": round(seconds, 3)}
