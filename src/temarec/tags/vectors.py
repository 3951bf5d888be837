"""The tags stage's outputs as models and reports use them: tag vectors w_v, scores, vocabulary, tag source.

Each function takes a :class:`temarec.data.dataset.Dataset` (or a dataset folder, opened as one): the Dataset
reads the files, this module turns scores into w_v (eq. 3) for a selection x representation (Tables V-VI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from temarec.data.dataset import Dataset
from temarec.tags.select import tag_vectors


def as_dataset(dataset: Dataset | str | Path) -> Dataset:
    return dataset if isinstance(dataset, Dataset) else Dataset.load(dataset, splits=False)


def read_vocabulary(dataset: Dataset | str | Path) -> dict[str, Any]:
    """vocab.json: {"domains": {name: [{"tag", "votes", "mean_score"}...]}, "shared": [tag, ...], ...}."""
    return as_dataset(dataset).tag_vocabulary()


def load_scores(dataset: Dataset | str | Path) -> tuple[np.ndarray, list[str]]:
    """(n_items, |T|) uint8 scores 1-100 (0 = no score), rows = items.parquet rows, and the tag names."""
    return as_dataset(dataset).tag_scores()


def load_tag_vectors(dataset: Dataset | str | Path, selection: str = "hybrid", representation: str = "weighted", *,
                     top_r: int | None = None, theta: float | None = None,
                     max_tags: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Tag vectors w_v, (n_items, |T|) float32 aligned with items.parquet rows, and the tag names.

    Rows sum to 1 (all zero for items without text or without a selected tag); see ``temarec.tags.select``.
    ``top_r``, ``theta`` and ``max_tags`` default to the values of the tags config the scores were made with.
    """
    dataset = as_dataset(dataset)
    scores, tags = dataset.tag_scores()
    params = dataset.tag_meta()["match"]["selection_params"]
    vectors = tag_vectors(scores, selection, representation,
                          top_r=params["top_r"] if top_r is None else top_r,
                          theta=params["theta"] if theta is None else theta,
                          max_tags=params["max_tags"] if max_tags is None else max_tags)
    return vectors, tags


def tag_source(dataset: Dataset | str | Path) -> str:
    """One line naming where the tags come from, for every report, e.g.
    'mined vocabulary (...) + embedding matching (all-MiniLM-L6-v2, ...)'."""
    return as_dataset(dataset).tag_source()
