"""The model registry: every model class registers itself under its ``name``; nothing else lists models.

A model is one module under ``temarec.models`` (or a subpackage such as ``temarec.models.tema``) whose class
sets ``name = "..."``; ``SequentialModel.__init_subclass__`` calls :func:`register`. The first lookup imports
every module of the package (pkgutil), so a new file is found without being named anywhere else. This module
imports no model itself at import time, so the config layer can ask it for names and settings classes.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

_CLASSES: dict[str, type] = {}
_discovered = False


def register(cls: type) -> None:
    """Called by ``SequentialModel.__init_subclass__`` for every class that sets a non-empty ``name``."""
    name = cls.name  # type: ignore[attr-defined]
    known = _CLASSES.get(name)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"two models are named {name!r}: {known.__module__}.{known.__qualname__} and "
                         f"{cls.__module__}.{cls.__qualname__}; rename one (the class attribute `name`)")
    _CLASSES[name] = cls


def _discover() -> None:
    """Import every module of the ``temarec.models`` package once (subpackages included)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module("temarec.models")
    for info in pkgutil.walk_packages(package.__path__, prefix="temarec.models."):
        importlib.import_module(info.name)


def model_names() -> list[str]:
    """Every registered model name, sorted."""
    _discover()
    return sorted(_CLASSES)


def model_class(name: str) -> Any:
    """The class registered as ``name``; ValueError naming the choices otherwise."""
    _discover()
    if name not in _CLASSES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(_CLASSES))}")
    return _CLASSES[name]


def settings_class(name: str) -> type | None:
    """The frozen dataclass of a model's own settings (config section ``model.<name>``), or None."""
    return getattr(model_class(name), "settings_class", None)
