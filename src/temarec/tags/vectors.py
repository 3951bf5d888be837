"""Read the tags stage's outputs: the shared vocabulary, the score matrix, tag vectors w_v and the tag source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from temarec.tags.select import tag_vectors
from temarec.tags.store import META, SCORES, VOCAB, read_json, read_scores, sha256_bytes, tags_dir


def _need(path: Path, step: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `temarec tags --dataset {path.parent.parent} {step}`")
    return path


def read_vocabulary(dataset_dir: str | Path) -> dict:
    """vocab.json: {"domains": {name: [{"tag", "votes", "mean_score"}...]}, "shared": [tag, ...], ...}."""
    return read_json(_need(tags_dir(dataset_dir) / VOCAB, "vocab"))


def load_scores(dataset_dir: str | Path) -> tuple[np.ndarray, list[str]]:
    """(n_items, |T|) uint8 scores 1-100 (0 = no score), rows = items.parquet rows, and the tag names."""
    folder = tags_dir(dataset_dir)
    vocab_path = _need(folder / VOCAB, "vocab")
    meta = read_json(folder / META)
    if meta.get("match", {}).get("vocab_sha256") != sha256_bytes(vocab_path):
        raise ValueError(f"{folder / SCORES} was matched against another vocabulary (or is missing): "
                         f"rerun `temarec tags --dataset {dataset_dir} match`")
    tags = read_json(vocab_path)["shared"]
    items = pd.read_parquet(Path(dataset_dir) / "items.parquet", columns=["item"])["item"]
    return read_scores(_need(folder / SCORES, "match"), items, tags), tags


def load_tag_vectors(dataset_dir: str | Path, selection: str = "hybrid", representation: str = "weighted", *,
                     top_r: int | None = None, theta: float | None = None,
                     max_tags: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Tag vectors w_v, (n_items, |T|) float32 aligned with items.parquet rows, and the tag names.

    Rows sum to 1 (all zero for items without text or without a selected tag); see ``temarec.tags.select``.
    ``top_r``, ``theta`` and ``max_tags`` default to the values of the tags config the scores were made with.
    """
    scores, tags = load_scores(dataset_dir)
    params = read_json(tags_dir(dataset_dir) / META)["match"]["selection_params"]
    vectors = tag_vectors(scores, selection, representation,
                          top_r=params["top_r"] if top_r is None else top_r,
                          theta=params["theta"] if theta is None else theta,
                          max_tags=params["max_tags"] if max_tags is None else max_tags)
    return vectors, tags


def tag_source(dataset_dir: str | Path) -> str:
    """One line naming where the tags come from, for every report, e.g.
    'mined vocabulary (...) + embedding matching (all-MiniLM-L6-v2, ...)'."""
    meta = read_json(tags_dir(dataset_dir) / META)
    if "tag_source" not in meta:
        raise FileNotFoundError(f"no tags in {tags_dir(dataset_dir)}: run `temarec tags --dataset {dataset_dir}`")
    return meta["tag_source"]
