"""Model weights as safetensors (never pickle): parameters, buffers and a model's ``extra_state``; and the
resumable training state (``last_state.pt``: weights, optimizer, counters, RNG states; tensors and plain values
only, loaded with ``weights_only=True``).

A damaged or foreign file is a ``ValueError`` that names it and says what to do, never a traceback from deep
inside safetensors or torch.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from temarec.fileio import atomic_write
from temarec.models.base import SequentialModel


def weight_tensors(model: SequentialModel) -> dict[str, torch.Tensor]:
    """``state_dict`` plus ``extra_state`` (keys prefixed ``extra.``), on the CPU."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in model.extra_state().items()})
    return tensors


def save_weights(model: SequentialModel, path: Path) -> None:
    """The model's weight tensors as safetensors, written atomically."""
    tensors = weight_tensors(model)
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def load_weights(model: SequentialModel, path: Path) -> None:
    set_weights(model, load_file_tensors(path), path)


def load_file_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors weights file, or a ValueError that says the file is damaged."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read these weights ({exc}); the file is damaged or cut short: retrain "
                         "with `temarec train`, or resume the run if its last_state.pt is intact") from exc


def set_weights(model: SequentialModel, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Load weight tensors (as ``weight_tensors`` returns them) into ``model``; ``source`` names them in errors."""
    extra = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    try:
        model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("extra.")})
        model.load_extra_state(extra)
    except (RuntimeError, KeyError, ValueError) as exc:  # missing keys, size mismatches
        first = " ".join(str(exc).split())[:300]
        raise ValueError(f"{source}: these weights do not fit the model the run's config.json describes on this "
                         f"dataset ({first}); was the run folder or its dataset folder changed?") from exc


def save_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path}: cannot read this training state ({' '.join(str(exc).split())[:200]}); the file "
                         "is damaged or cut short, so the run cannot resume: train it again into a new --out") from exc
    if not isinstance(state, dict) or "epoch" not in state:
        raise ValueError(f"{path}: not a temarec training state; train the run again into a new --out")
    return state
