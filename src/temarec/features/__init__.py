"""Frozen text and image encoders and the features stage (DIR/features/): eqs. (5)-(6) of the paper."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from temarec.data.dataset import Dataset
from temarec.features.build import run_features


def load_features(dataset: Dataset | str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Modality ("txt", "img") -> ((n_items, e) float32 matrix, (n_items,) bool mask), rows = internal idx."""
    return (dataset if isinstance(dataset, Dataset) else Dataset.load(dataset, splits=False)).features()


def features_source(dataset: Dataset | str | Path) -> str:
    """One line naming the feature encoders, for reports: "text: all-MiniLM-L6-v2 (384-d), image: none"."""
    return (dataset if isinstance(dataset, Dataset) else Dataset.load(dataset, splits=False)).features_source()


__all__ = ["run_features", "load_features", "features_source"]
