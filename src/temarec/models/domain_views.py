"""Per-domain views of a merged history, and the SASRec encoder the cross-domain peers (MAN, Tri-CDR) run on them.

Shape legend: B batch, L sequence length, D hidden size.

A merged history holds both domains' items in time order. A domain's *view* keeps only that domain's items,
right-aligned in a (B, L) tensor like any history, and remembers for every merged position t where the latest
item of the domain at or before t sits in the view (``latest``), so a model that reads the view at time t sees
only the past. Positions inside an encoder are counted from the oldest item of the row (0, 1, 2, ...): counting
from the most recent item, as our SASRec does, would tell a view's early states how many items of the domain
come later in the training window, including whether the next target is one of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from temarec.config import ModelConfig
from temarec.models.base import ModelContext, domain_of_ids
from temarec.models.attention import Block, attention_mask
from temarec.models.dropout import Dropout


@dataclass
class DomainView:
    """One domain's items of merged histories (B, L), right-aligned, with their times.

    ids:    (B, L) the domain's ids in time order, left-padded with 0 (merged ids, idx + 1)
    time:   (B, L) merged position of each view item (meaningless where ids == 0)
    latest: (B, L) for each merged position t, the view index of the latest domain item at or before t; where
            there is none yet, a padding slot of the view (whose encoder state is a learned "nothing yet")
    """

    ids: torch.Tensor
    time: torch.Tensor
    latest: torch.Tensor

    @property
    def valid(self) -> torch.Tensor:
        return self.ids > 0


def domain_view(seqs: torch.Tensor, domain: int, n_first: int) -> DomainView:
    """seqs (B, L) merged left-padded ids -> the ``domain`` view (see DomainView)."""
    L = seqs.size(1)
    keep = (seqs > 0) & (domain_of_ids(seqs, n_first) == domain)  # (B, L)
    pos = torch.arange(L, device=seqs.device).expand_as(seqs)  # (B, L)
    order = torch.argsort(torch.where(keep, pos + L, pos), dim=1, stable=True)  # kept items last, in time order
    ids = torch.where(keep.gather(1, order), seqs.gather(1, order), torch.zeros_like(seqs))  # (B, L)
    count = keep.sum(1, keepdim=True)  # (B, 1) domain items in the row
    seen = keep.long().cumsum(1)  # (B, L) domain items at or before t
    # seen == 0 gives L - count - 1 >= 0: a padding slot (count == L implies seen >= 1 everywhere)
    latest = L - count + seen - 1  # (B, L)
    return DomainView(ids=ids, time=order, latest=latest)


def local_ids(ids: torch.Tensor, domain: int, n_first: int) -> torch.Tensor:
    """Merged ids of one domain (0 = pad) -> rows of that domain's own table (1..n_domain, 0 = pad)."""
    return (ids - n_first).clamp(min=0) if domain == 1 else ids


def gather_time(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, L, D), index (B, T) -> (B, T, D): x[b, index[b, t]]."""
    return x.gather(1, index[..., None].expand(-1, -1, x.size(-1)))


def prefix_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """x (B, L, D), valid (B, L) -> (B, L, D): mean of the valid rows at or before each position (0 if none)."""
    w = valid.to(x.dtype)[..., None]  # (B, L, 1)
    return (x * w).cumsum(1) / w.cumsum(1).clamp(min=1.0)


class SequenceEncoder(nn.Module):
    """SASRec over one kind of sequence (a domain view or the merged history), with its own item table.

    Item ids are rows of this encoder's table (0 = pad). Same blocks as models/sasrec.py (pre-LN causal
    self-attention + FFN, final LayerNorm, embeddings scaled by sqrt(D)); positions from the oldest item.
    """

    def __init__(self, n_rows: int, dim: int, layers: int, heads: int, dropout: float, max_len: int):
        super().__init__()
        self.dim, self.max_len = dim, max_len
        self.item_emb = nn.Embedding(n_rows, dim, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.drop = Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.ln_final = nn.LayerNorm(dim)
        for emb in (self.item_emb, self.pos_emb):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, L) left-padded table rows -> (states (B, L, D), inputs (B, L, D): item + position embedding)."""
        L = ids.size(1)
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds the positional table (ctx.max_len = {self.max_len}); "
                             "keep the most recent max_len items")
        valid = ids > 0
        pos = (valid.long().cumsum(1) - 1).clamp(min=0)  # (B, L) 0 = oldest item of the row
        inputs = self.item_emb(ids) * self.dim ** 0.5 + self.pos_emb(pos)  # (B, L, D)
        x = self.drop(inputs)
        mask = attention_mask(valid)  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_final(x), inputs


def view_encoders(cfg: ModelConfig, ctx: ModelContext) -> tuple[SequenceEncoder, nn.ModuleList]:
    """One ``SequenceEncoder`` over the merged history (every item's row) and one per domain view (its own items'),
    built in that order, at the shared ``model`` sizes."""
    args = (cfg.dim, cfg.layers, cfg.heads, cfg.dropout, ctx.max_len)
    merged = SequenceEncoder(1 + ctx.n_items, *args)
    return merged, nn.ModuleList(SequenceEncoder(1 + n, *args) for n in ctx.domain_sizes)
