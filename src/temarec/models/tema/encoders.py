"""TEMA's sequence side, Sec. III-F and eqs. (10)-(11): three views of a history, V*M causal encoders at once.

Shape legend (all of models/tema/): B batch, L sequence length, D hidden size (q in the paper), N items of a
domain, M modalities, V views (S^{first}, S^{second}, S^{first+second}), E = V*M encoders, T tags, e a frozen
feature's size, P scored positions, S sampled negatives, U distinct items of a batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from temarec.models.sasrec import attention_mask

GROUP_ROWS = 64  # histories are encoded in groups of similar length, this many rows each


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


class StackedLinear(nn.Module):
    """E independent linear maps applied as one batched matmul: x (E, *, i) -> (E, *, o)."""

    def __init__(self, n: int, d_in: int, d_out: int):
        super().__init__()
        bound = d_in ** -0.5  # nn.Linear's default initialisation, per encoder
        self.weight = nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, d_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.baddbmm(self.bias[:, None], x.reshape(shape[0], -1, shape[-1]), self.weight)  # (E, *, o)
        return y.view(*shape[:-1], -1)


class StackedLayerNorm(nn.Module):
    def __init__(self, n: int, dim: int):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(n, dim)), nn.Parameter(torch.zeros(n, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (E, B, L, D)
        return F.layer_norm(x, x.shape[-1:]) * self.weight[:, None, None] + self.bias[:, None, None]


class StackedBlock(nn.Module):
    """One pre-LN self-attention block for E encoders at once: x + Drop(attn(LN x)), x + Drop(FFN(LN x)).

    Dropout as in our SASRec (and SASRec.pytorch): on each sub-layer's output, on the attention probabilities and
    on the FFN's hidden layer. With the sub-layer outputs only, TEMA's ID head overfitted ABXI from epoch ~25 and
    plateaued below SASRec (docs/BENCHMARKS.md, "Why TEMA lagged").
    """

    def __init__(self, n: int, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln_attn, self.ln_ffn = StackedLayerNorm(n, dim), StackedLayerNorm(n, dim)
        self.qkv, self.out = StackedLinear(n, dim, 3 * dim), StackedLinear(n, dim, dim)
        self.ffn_in, self.ffn_out = StackedLinear(n, dim, dim), StackedLinear(n, dim, dim)
        self.drop = nn.Dropout(dropout)

    def attend(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """eq. (10): softmax(Q K^T / sqrt(d_k)) V, x (E, B, L, D), mask (E*B, 1, L, L)."""
        E, B, L, D = x.shape
        qkv = self.qkv(x).view(E * B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (EB, H, L, d_k)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask,
                                           dropout_p=self.drop.p if self.training else 0.0)  # (EB, H, L, d_k)
        return self.out(y.transpose(1, 2).reshape(E, B, L, D))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attend(self.ln_attn(x), mask))  # (E, B, L, D)
        return x + self.drop(self.ffn_out(self.drop(F.relu(self.ffn_in(self.ln_ffn(x))))))  # (E, B, L, D)


class StackedEncoders(nn.Module):
    """The E = V*M independent causal encoders of eqs. (10)-(11), run as batched tensor operations.

    Encoder e = v * M + m has its own positions, blocks and final LayerNorm; no weight is shared. An item's
    position is its rank among the sequence's items (0 = oldest kept), so left padding changes nothing and the
    state after item k depends on items 0..k only, in training as at inference (see docs/DESIGN.md).
    """

    def __init__(self, n: int, dim: int, heads: int, layers: int, dropout: float, max_len: int):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(n, max_len, dim) * 0.02)  # (E, max_len, D)
        self.blocks = nn.ModuleList(StackedBlock(n, dim, heads, dropout) for _ in range(layers))
        self.ln_final = StackedLayerNorm(n, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x (E, B, L, D) inputs, valid (E, B, L) non-padding (right-aligned) -> (E, B, L, D) states."""
        E, B, L, D = x.shape
        if L > self.pos.shape[1]:
            raise ValueError(f"sequence length {L} exceeds the positional table (ctx.max_len = {self.pos.shape[1]}); "
                             "keep the most recent max_len items")
        first = L - valid.sum(-1, keepdim=True)  # (E, B, 1) slot of the oldest item
        rank = (torch.arange(L, device=x.device) - first).clamp(min=0)  # (E, B, L)
        enc = torch.arange(E, device=x.device)[:, None, None]
        x = self.drop(x + self.pos[enc, rank])  # (E, B, L, D)
        mask = attention_mask(valid.reshape(E * B, L))  # (E*B, 1, L, L) causal, no padding keys
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_final(x)


def length_groups(seqs: torch.Tensor) -> list[torch.Tensor]:
    """Row indices sorted by length, GROUP_ROWS at a time: each group is then trimmed to its own longest row.

    Exact (padding changes nothing); on ABXI Food-Kitchen it skips 44% of the positions of batches of 256.
    """
    return list(torch.argsort((seqs > 0).sum(1), stable=True).split(GROUP_ROWS))


def first_used_column(seqs: torch.Tensor) -> int:
    """Leading columns that are padding in every row change nothing (positions count from the right): skip them.

    Returns the first column holding an item in some row (the last column when there is none).
    """
    used = (seqs > 0).any(0).nonzero()
    return int(used[0]) if len(used) else seqs.shape[1] - 1
