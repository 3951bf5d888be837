"""Model weights as safetensors (never pickle): parameters, buffers and a model's ``extra_state``."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from temarec.fileio import atomic_write
from temarec.models.base import SequentialModel


def save_weights(model: SequentialModel, path: Path) -> None:
    """``state_dict`` plus ``extra_state`` (keys prefixed ``extra.``), written atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in model.extra_state().items()})
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def load_weights(model: SequentialModel, path: Path) -> None:
    tensors = load_file(str(path))
    extra = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("extra.")})
    model.load_extra_state(extra)
