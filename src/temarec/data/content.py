"""The content sub-folders of a dataset folder and how to read them: ``features/`` and ``tags/``.

Writers live with their stages (``temarec.features``, ``temarec.tags``) and take the layout from here; readers are
called by :class:`temarec.data.dataset.Dataset` only, so one object answers every question about a dataset folder.

``DIR/features/`` (written by ``temarec features``)::

    text.npy            (n_items, e) float32, row i = internal idx i of items.parquet; unit length, zeros if masked
    text_mask.npy       (n_items,) bool, True where the item had text
    image.npy           (n_items, e) float32, only when an image encoder was given
    image_mask.npy      (n_items,) bool, True where the image was found, decoded and encoded
    meta.json           encoders, dims, counts per modality, image failures; written last
    image_failures.json [{item, source, reason}] for every image that could not be used
    cache.sqlite        the features' embedding cache (temarec.embeddings)
    image_cache/        downloaded images, one file per sha256(URL)

``DIR/tags/`` (written by ``temarec tags``)::

    vocab.json      per domain: tags with votes and mean scores (Algorithm 1's T*_d); "shared": the vocabulary T
    scores.parquet  item (str, the data's id), tag (str), score (uint8, 1-100): every scored pair, rows in
                    items.parquet order then vocabulary order; a pair without a score has no row
    meta.json       tag_source, what each step did (sources, counts, selection parameters), the tags config
    cache.sqlite    every LLM answer and embedding (tags.cache_path moves it)

Tag vectors are not stored: ``temarec.tags.load_tag_vectors`` computes them from scores.parquet for any selection x
representation in well under a second, so the ablations of Tables V-VI read one file and cannot go stale.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from temarec.fileio import read_json, sha256_file

FEATURES_DIR = "features"
FEATURES_FORMAT_VERSION = 1
# Modality names as the model config spells them (model.tema.modalities) -> file stem.
MODALITY_FILES = {"txt": "text", "img": "image"}
TAGS_DIR = "tags"
VOCAB = "vocab.json"
SCORES = "scores.parquet"
META = "meta.json"


def features_dir(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / FEATURES_DIR


def tags_dir(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / TAGS_DIR


def items_digest(item_ids: Iterable[str]) -> str:
    """sha256 of the item id column, so features can be checked against the items table they were built for."""
    h = hashlib.sha256()
    for item in item_ids:
        h.update(str(item).encode())
        h.update(b"\n")
    return h.hexdigest()


def read_json_or_empty(path: Path, fix: str) -> dict[str, Any]:
    """A JSON object, or {} when the file does not exist; a damaged file is a ValueError that says ``fix``."""
    return read_json(path, fix) if path.is_file() else {}


# ---- features/ --------------------------------------------------------------------------------------------------

def read_feature_meta(root: Path) -> dict[str, Any]:
    path = features_dir(root) / META
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; compute features with `temarec features --dataset {root}`")
    meta = read_json(path, "re-run `temarec features`")
    if meta.get("format_version") != FEATURES_FORMAT_VERSION:
        raise ValueError(f"{path}: feature format {meta.get('format_version')} is not {FEATURES_FORMAT_VERSION}; "
                         "re-run `temarec features`")
    return meta


def read_features(root: Path, item_ids: pd.Series) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Modality ("txt", "img") -> ((n_items, e) float32 matrix, (n_items,) bool mask), rows aligned with items.

    Raises when the features were computed for a different items table (re-run ``temarec features``).
    """
    meta = read_feature_meta(root)
    if len(item_ids) != meta["n_items"] or items_digest(item_ids) != meta["items_sha256"]:
        raise ValueError(f"{features_dir(root)} was computed for another items table ({meta['n_items']} items, "
                         f"now {len(item_ids)}); re-run `temarec features --dataset {root}`")
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for modality in meta["modalities"]:
        stem = MODALITY_FILES[modality]
        matrix = np.load(features_dir(root) / f"{stem}.npy", allow_pickle=False)
        mask = np.load(features_dir(root) / f"{stem}_mask.npy", allow_pickle=False)
        out[modality] = (matrix, mask)
    return out


def describe_features(root: Path) -> str:
    """One line naming the feature encoders, for reports: "text: all-MiniLM-L6-v2 (384-d), image: none"."""
    try:
        meta = read_feature_meta(root)
    except FileNotFoundError:
        return "text: none, image: none (no features computed)"
    parts = []
    for modality, label in (("txt", "text"), ("img", "image")):
        m = meta["modalities"].get(modality)
        parts.append(f"{label}: {m['encoder']} ({m['dim']}-d)" if m else f"{label}: none")
    return ", ".join(parts)


# ---- tags/ ------------------------------------------------------------------------------------------------------

def _need(path: Path, step: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `temarec tags --dataset {path.parent.parent} {step}`")
    return path


def read_vocabulary(root: Path) -> dict[str, Any]:
    """vocab.json: {"domains": {name: [{"tag", "votes", "mean_score"}...]}, "shared": [tag, ...], ...}."""
    return read_json(_need(tags_dir(root) / VOCAB, "vocab"), f"re-run `temarec tags --dataset {root} vocab`")


def read_scores(path: Path, item_ids: pd.Series, tags: list[str]) -> np.ndarray:
    """scores.parquet -> (N, T) uint8 aligned with ``item_ids`` (items.parquet order) and ``tags``."""
    frame = pq.read_table(path).to_pandas()
    rows = pd.Index(item_ids).get_indexer(frame["item"])
    tag = frame["tag"]
    if isinstance(tag.dtype, pd.CategoricalDtype):  # stored dictionary-encoded: map the dictionary once
        cols = pd.Index(tags).get_indexer(tag.cat.categories.astype(str))[tag.cat.codes.to_numpy()]
    else:
        cols = pd.Index(tags).get_indexer(tag.astype(str))
    if (rows < 0).any() or (cols < 0).any():
        raise ValueError(f"{path} names items or tags that items.parquet / vocab.json do not have; "
                         "rerun `temarec tags --dataset DIR match`")
    out = np.zeros((len(item_ids), len(tags)), dtype=np.uint8)
    out[rows, cols] = frame["score"].to_numpy()
    return out


def read_tag_scores(root: Path, item_ids: pd.Series) -> tuple[np.ndarray, list[str]]:
    """(n_items, |T|) uint8 scores 1-100 (0 = no score), rows = items.parquet rows, and the tag names."""
    folder = tags_dir(root)
    vocab_path = _need(folder / VOCAB, "vocab")
    meta = read_tag_meta(root)
    if meta.get("match", {}).get("vocab_sha256") != sha256_file(vocab_path):
        raise ValueError(f"{folder / SCORES} was matched against another vocabulary (or is missing): "
                         f"rerun `temarec tags --dataset {root} match`")
    tags = read_vocabulary(root)["shared"]
    return read_scores(_need(folder / SCORES, "match"), item_ids, tags), tags


def read_tag_meta(root: Path) -> dict[str, Any]:
    """tags/meta.json ({} when the tags stage never ran)."""
    return read_json_or_empty(tags_dir(root) / META, f"re-run `temarec tags --dataset {root}`")


def describe_tags(root: Path) -> str:
    """One line naming where the tags come from, for every report, e.g.
    'mined vocabulary (...) + embedding matching (all-MiniLM-L6-v2, ...)'."""
    meta = read_tag_meta(root)
    if "tag_source" not in meta:
        raise FileNotFoundError(f"no tags in {tags_dir(root)}: run `temarec tags --dataset {root}`")
    return meta["tag_source"]
