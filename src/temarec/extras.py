"""Optional dependencies: imported inside the function that needs them, through ``require``.

A missing one ends the command with one line that names the extra to install (``pip install 'temarec[serve]'``),
never an ImportError traceback: ``MissingExtra`` is a ValueError, which the CLI reports as ``error: ...`` with
exit code 2. ``pip install 'temarec[all]'`` installs every extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {  # extra -> what it is for (the extras themselves are declared in pyproject.toml)
    "text": "the offline text encoder (sentence-transformers + all-MiniLM-L6-v2)",
    "image": "image features (Pillow, transformers' CLIP)",
    "serve": "the HTTP service (FastAPI, uvicorn)",
    "export": "ONNX export (onnx, onnxruntime)",
    "llamacpp": "LLM tagging in-process or behind its server (llama-cpp-python, gguf)",
    "track": "experiment tracking (TensorBoard, MLflow)",
}


class MissingExtra(ValueError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module`` or raise MissingExtra: "<purpose> needs <package>: pip install 'temarec[<extra>]'"."""
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}; known: {sorted(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise MissingExtra(f"{purpose} needs {package}, which is not installed: pip install 'temarec[{extra}]' "
                           f"(or 'temarec[all]')") from exc
