"""The feature store: the files ``temarec features`` writes and every later stage reads.

Layout of ``DIR/features/`` (each file written atomically: temporary sibling, then ``os.replace``)::

    text.npy            (n_items, e) float32, row i = internal idx i of items.parquet; unit length, zeros if masked
    text_mask.npy       (n_items,) bool, True where the item had text
    image.npy           (n_items, e) float32, only when an image encoder was given
    image_mask.npy      (n_items,) bool, True where the image was found, decoded and encoded
    meta.json           encoders, dims, counts per modality, image failures; written last
    image_failures.json [{item, source, reason}] for every image that could not be used
    cache.sqlite        per-vector cache keyed by (encoder fingerprint, sha256 of the text / image bytes)
    image_cache/        downloaded images, one file per sha256(URL)
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from temarec.fileio import atomic_write, write_json_atomic

FEATURES_DIR = "features"
FORMAT_VERSION = 1
# Modality names as the model config spells them (model.tema.modalities) -> file stem.
MODALITY_FILES = {"txt": "text", "img": "image"}


def features_dir(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / FEATURES_DIR


def items_digest(item_ids: Iterable[str]) -> str:
    """sha256 of the item id column, so features can be checked against the items table they were built for."""
    h = hashlib.sha256()
    for item in item_ids:
        h.update(str(item).encode())
        h.update(b"\n")
    return h.hexdigest()


def _save_npy(tmp: str, array: np.ndarray) -> None:
    with open(tmp, "wb") as fh:  # an open file: np.save would append ".npy" to a bare temporary name
        np.save(fh, array, allow_pickle=False)


def save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda tmp: _save_npy(tmp, array))


def save_json(path: Path, obj: Any) -> None:
    write_json_atomic(path, obj)


class EmbeddingCache:
    """SQLite table of float32 vectors keyed by (encoder cache key, content sha256)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS vectors (encoder TEXT NOT NULL, key TEXT NOT NULL, "
                        "vec BLOB NOT NULL, PRIMARY KEY (encoder, key)) WITHOUT ROWID")

    def get(self, encoder: str, keys: Sequence[str], chunk: int = 500) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), chunk):
            part = list(keys[start:start + chunk])
            rows = self.db.execute(
                f"SELECT key, vec FROM vectors WHERE encoder = ? AND key IN ({','.join('?' * len(part))})",
                [encoder, *part])
            for key, blob in rows:
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put(self, encoder: str, keys: Sequence[str], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
                                [(encoder, k, v.tobytes()) for k, v in zip(keys, vectors)])

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "EmbeddingCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_meta(dataset_dir: str | Path) -> dict[str, Any]:
    path = features_dir(dataset_dir) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; compute features with `temarec features --dataset "
                                f"{dataset_dir}`")
    meta = json.loads(path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: feature format {meta.get('format_version')} is not {FORMAT_VERSION}; "
                         "re-run `temarec features`")
    return meta


def load_features(dataset_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Modality ("txt", "img") -> ((n_items, e) float32 matrix, (n_items,) bool mask), rows aligned with items.

    Raises when the features were computed for a different items table (re-run ``temarec features``).
    """
    root = Path(dataset_dir)
    meta = read_meta(root)
    items = pd.read_parquet(root / "items.parquet", columns=["item"])["item"]
    if len(items) != meta["n_items"] or items_digest(items) != meta["items_sha256"]:
        raise ValueError(f"{features_dir(root)} was computed for another items table ({meta['n_items']} items, "
                         f"now {len(items)}); re-run `temarec features --dataset {root}`")
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for modality in meta["modalities"]:
        stem = MODALITY_FILES[modality]
        matrix = np.load(features_dir(root) / f"{stem}.npy", allow_pickle=False)
        mask = np.load(features_dir(root) / f"{stem}_mask.npy", allow_pickle=False)
        out[modality] = (matrix, mask)
    return out


def features_source(dataset_dir: str | Path) -> str:
    """One line naming the feature encoders, for reports: "text: all-MiniLM-L6-v2 (384-d), image: none"."""
    try:
        meta = read_meta(dataset_dir)
    except FileNotFoundError:
        return "text: none, image: none (no features computed)"
    parts = []
    for modality, label in (("txt", "text"), ("img", "image")):
        m = meta["modalities"].get(modality)
        parts.append(f"{label}: {m['encoder']} ({m['dim']}-d)" if m else f"{label}: none")
    return ", ".join(parts)
