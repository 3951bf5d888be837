"""Histories as model input: internal item indices -> left-padded id tensors (idx + 1, 0 = padding)."""

from __future__ import annotations

import numpy as np
import torch


def pad_histories(histories: list, max_len: int) -> torch.Tensor:
    """Histories of internal idx (most recent last) -> (B, max_len) ids (idx + 1), left-padded with 0.

    Longer histories keep their ``max_len`` most recent items.
    """
    out = torch.zeros(len(histories), max_len, dtype=torch.long)
    for row, hist in enumerate(histories):
        hist = np.asarray(hist, dtype=np.int64)[-max_len:]
        if len(hist):
            out[row, max_len - len(hist):] = torch.from_numpy(hist + 1)
    return out
