"""temarec: TEMA-LLM and its peers for cross-domain sequential recommendation.

The public API, importable from the top level (each loaded on first use, so ``import temarec`` stays light)::

    from temarec import Config, load_config, train_run, load_run, evaluate_run, Recommender, prepare

- ``Config`` / ``load_config``: the typed, frozen configuration (``Config().replace(**{"train.lr": "3e-4"})``).
- ``prepare``: import raw data into a dataset folder (the ``temarec prepare`` formats).
- ``train_run(dataset_dir, cfg, out_dir)``: train one model, select on validation, test once; a run folder.
- ``load_run`` / ``evaluate_run``: read a run folder back; re-score it.
- ``Recommender``: a trained run ready to answer requests (``Recommender.load(run_dir).recommend(...)``).
- ``model_names()``: every model the registry knows.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {  # name -> module that defines it
    "Config": "temarec.config",
    "load_config": "temarec.config",
    "prepare": "temarec.data.prepare",
    "train_run": "temarec.runs",
    "load_run": "temarec.runs",
    "evaluate_run": "temarec.runs",
    "model_names": "temarec.runs",
    "Recommender": "temarec.serve.recommender",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'temarec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
