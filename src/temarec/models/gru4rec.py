"""GRU4Rec (Hidasi et al., ICLR 2016) over the merged two-domain sequence, scoring one domain's items.

Shape legend: B batch, L sequence length, D hidden size, N items of a domain.

Histories are left-padded (most recent item last). A GRU fed padding still moves its state (the biases act on
a zero input), so the encoder right-aligns each row, runs a packed GRU over the real items only, and moves the
outputs back to their left-padded positions. Adding left padding therefore leaves every real position's state
unchanged, and padding positions carry the "empty history" state.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from temarec.config import ModelConfig
from temarec.models.base import ModelContext, TiedItemModel
from temarec.models.dropout import Dropout


def roll_rows(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """x (B, L, ...) -> row b rolled right by shifts[b] along dim 1 (``torch.roll`` with one shift per row)."""
    B, L = x.shape[:2]
    idx = (torch.arange(L, device=x.device)[None, :] - shifts[:, None]) % L  # (B, L)
    idx = idx.view(B, L, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, idx)


class GRUEncoder(nn.Module):
    """(B, L, D) left-padded inputs + (B,) lengths -> (B, L, D) GRU outputs, zero at padding positions."""

    def __init__(self, dim: int, layers: int, dropout: float):
        super().__init__()
        self.gru = nn.GRU(dim, dim, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        L = x.size(1)
        x = roll_rows(x, lengths)  # (B, L, D) right-padded: real items first
        # pack wants lengths >= 1 on the CPU; an empty row runs one padding step, masked out by the caller
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=L)  # (B, L, D), zeros past each length
        return roll_rows(out, -lengths)  # (B, L, D) back to left padding


class GRU4Rec(TiedItemModel):
    """Item embedding -> dropout -> GRU -> dropout -> linear; scores are dot products with the item embedding."""

    name = "gru4rec"

    def __init__(self, cfg: ModelConfig, ctx: ModelContext):
        super().__init__(cfg, ctx)
        D = cfg.dim
        self.item_emb = nn.Embedding(1 + ctx.n_items, D, padding_idx=0)  # row 0 = padding, row idx+1 = item idx
        self.drop = Dropout(cfg.dropout)
        self.encoder = GRUEncoder(D, cfg.layers, cfg.dropout)
        self.proj = nn.Linear(D, D)  # GRU state -> item embedding space (embeddings are tied)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs (B, L) left-padded ids -> (B, L, D) state after each position (the prediction for the next)."""
        valid = seqs > 0  # (B, L)
        x = self.drop(self.item_emb(seqs))  # (B, L, D)
        out = self.encoder(x, valid.sum(1))  # (B, L, D)
        out = out * valid[..., None]  # padding positions (and all-padding rows) hold the empty state
        return self.proj(self.drop(out))  # (B, L, D)

    def state_module(self, exportable: bool = False) -> nn.Module:
        return GRUState(self) if exportable else super().state_module()


class GRUState(nn.Module):
    """GRU4Rec's last state without packed sequences, for ONNX export (packing does not trace).

    Rows are rolled so real items come first; a plain GRU then reads each row's items from the zero state,
    exactly as the packed GRU of ``GRU4Rec.encode`` does, and the output at position length - 1 is the state.
    Positions past a row's length read padding and are never used. An empty history gives the zero state, as
    ``encode`` does (it zeroes padding outputs before the projection).
    """

    def __init__(self, model: GRU4Rec):
        super().__init__()
        self.item_emb, self.gru, self.proj = model.item_emb, model.encoder.gru, model.proj

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        lengths = (history > 0).sum(1)  # (B,)
        x = roll_rows(self.item_emb(history), lengths)  # (B, L, D) real items first
        out, _ = self.gru(x)  # (B, L, D)
        last = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, out.size(-1))  # (B, 1, D) gather index
        h = out.gather(1, last)[:, 0] * (lengths > 0)[:, None].to(out.dtype)  # (B, D)
        return self.proj(h)  # (B, D)
