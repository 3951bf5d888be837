"""TEMA's sequence side, Sec. III-F: the three views of a history. Their V*M causal encoders (eqs. 10-11) are
``temarec.models.attention.StackedEncoders``, the implementation SASRec uses too.

Shape legend (all of models/tema/): B batch, L sequence length, D hidden size (q in the paper), N items of a
domain, M modalities, V views (S^{first}, S^{second}, S^{first+second}), E = V*M encoders, T tags, e a frozen
feature's size, P scored positions, S sampled negatives, U distinct items of a batch.
"""

from __future__ import annotations

import torch


def view_gather(ids: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One view of left-padded histories: the kept items in order, left-padded again.

    ids, keep (B, L) -> view_ids (B, L); last (B, L) = slot in view_ids of the latest kept item at or before each
    position t; has (B, L) = whether there is one. ``view_ids[b, last[b, t]]`` is what view sees after time t.
    """
    B, L = ids.shape
    count = keep.sum(1, keepdim=True)  # (B, 1)
    seen = keep.long().cumsum(1)  # (B, L) kept items at or before t
    slot = L - count + seen - 1  # (B, L) right-aligned slot of the latest kept item so far
    dest = torch.where(keep, slot, torch.full_like(slot, L))  # dropped items go to a spill column
    view_ids = ids.new_zeros(B, L + 1).scatter_(1, dest, ids)[:, :L]
    return view_ids, slot.clamp(min=0), seen > 0


def view_starts(view_ids: torch.Tensor, keep_padding: bool) -> list[int]:
    """view_ids (V, B, L) right-aligned views -> per view, its first column to encode: every column before it is
    padding in every row. ``keep_padding`` keeps one padding column before the view's items (where the state of
    a view with no item yet is the encoder's padding state, ``empty_state = encoded``); a view with no item keeps
    one column. Each view is then encoded at its own length L - start, which is exact: TEMA's positions count from
    a sequence's oldest item and no query attends to padding. The single-domain views are shorter than the merged
    one, which saves 16% of the encoder positions and 26% of the attention terms of an epoch on ABXI
    Food-Kitchen (``benchmarks/tema_positions.py``).
    """
    L = view_ids.shape[-1]
    used = (view_ids > 0).any(1)  # (V, L) columns holding an item in some row
    first = torch.where(used, torch.arange(L, device=view_ids.device), L).min(1).values  # (V,) L: no item
    return [min(L - 1, max(0, int(c) - keep_padding)) for c in first]
