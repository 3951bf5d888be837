"""Frozen text and image encoders and the feature store (DIR/features/): eqs. (5)-(6) of the paper."""

from temarec.features.build import run_features
from temarec.features.store import features_source, load_features

__all__ = ["run_features", "load_features", "features_source"]
