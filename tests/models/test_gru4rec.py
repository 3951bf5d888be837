"""GRU4Rec specifics: the per-row shift behind its padding handling (shared invariants: test_tied_models.py)."""

from __future__ import annotations

import torch

from temarec.models.gru4rec import roll_rows


def test_roll_rows_matches_torch_roll():
    x = torch.arange(12).view(3, 4)
    shifts = torch.tensor([0, 1, -2])
    expected = torch.stack([torch.roll(x[i], int(s)) for i, s in enumerate(shifts)])
    assert torch.equal(roll_rows(x, shifts), expected)
