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
