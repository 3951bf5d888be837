"""The features stage: items.parquet -> frozen text (eq. 6) and image (eq. 5) embedding matrices.

The paper encodes both modalities with CLIP (e = 512); the default text encoder here is all-MiniLM-L6-v2
(e = 384), which ships offline. Any sentence-transformers model, a CLIP one included, can replace it.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from temarec.cache import Cache
from temarec.config import FeaturesConfig
from temarec.data.content import FEATURES_FORMAT_VERSION, META, MODALITY_FILES, features_dir, items_digest
from temarec.data.dataset import Dataset
from temarec.embeddings import EmbeddingCache, content_key, embed
from temarec.features.encoders import ImageEncoder, TextEncoder, encoder_meta
from temarec.features.images import locate_images, open_image, require_pillow
from temarec.fileio import atomic_write, write_json_atomic

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


def _text_features(items: pd.DataFrame, cfg: FeaturesConfig,
                   cache: EmbeddingCache) -> tuple[np.ndarray, np.ndarray, dict[str, Any], dict[str, Any]]:
    encoder = TextEncoder(cfg.text_encoder, cfg.device)
    texts = [item_text(t, d) for t, d in zip(items["title"], items["description"])]
    keys = [content_key(t) if t else None for t in texts]
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
                keys[row] = content_key(path.read_bytes())  # content-addressed: an edited image is encoded again
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
    """Compute DIR/features/ (layout in ``temarec.data.content``); returns meta.json's content plus run counts."""
    root = Path(dataset_dir)
    items = Dataset.load(root, splits=False).items
    out = features_dir(root)
    out.mkdir(exist_ok=True)
    (out / META).unlink(missing_ok=True)  # meta.json marks a finished run: no meta, no half-new features
    started = time.perf_counter()
    meta: dict[str, Any] = {"format_version": FEATURES_FORMAT_VERSION, "n_items": len(items),
                            "items_sha256": items_digest(items["item"]), "normalised": "l2", "modalities": {}}
    run: dict[str, Any] = {}
    with Cache(out / "cache.sqlite") as store:
        cache = EmbeddingCache(store)
        if cfg.text_encoder:
            matrix, mask, meta["modalities"]["txt"], stats = _text_features(items, cfg, cache)
            save_npy(out / "text.npy", matrix)
            save_npy(out / "text_mask.npy", mask)
            run["txt"] = {"encoded": stats["encoded"], "from_cache": stats["from_cache"]}
        if cfg.image_encoder:
            matrix, mask, meta["modalities"]["img"], stats, failures = _image_features(items, root, cfg, cache)
            save_npy(out / "image.npy", matrix)
            save_npy(out / "image_mask.npy", mask)
            write_json_atomic(out / "image_failures.json", failures)
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
    write_json_atomic(out / META, meta)
    seconds = time.perf_counter() - started
    log.info("features for %d items in %.1f s -> %s", len(items), seconds, out)
    return {**meta, "run": run, "seconds": round(seconds, 3)}


def save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # an open file: np.save would append ".npy" to a bare temporary name
            np.save(fh, array, allow_pickle=False)

    atomic_write(path, write)
