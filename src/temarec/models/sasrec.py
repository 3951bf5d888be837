"""SASRec (Kang & McAuley, ICDM 2018) over the merged two-domain sequence, scoring one domain's items.

Shape legend: B batch, L sequence length, D hidden size, H heads, N items of a domain.

As in the paper, each sub-layer is x + Dropout(g(LayerNorm(x))) (Sec. III-C) and scores reuse the item embedding
(Sec. III-D, shared item embedding). From SASRec.pytorch: item embeddings scaled by sqrt(D) and a final LayerNorm.
Our one change: positions are counted from the right, so the most recent item always has position 0 and adding
left padding changes nothing.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from temarec.config import ModelConfig
from temarec.models.base import ModelContext, TiedItemModel


def attention_mask(valid: torch.Tensor) -> torch.Tensor:
    """valid (B, L) non-padding flags -> (B, 1, L, L) boolean mask, True = query may attend to key.

    Causal (key <= query) and no padding keys. Every query also sees itself, so a padding query (and an
    all-padding row) never has a fully masked row, which would make softmax return NaN.
    """
    L = valid.size(1)
    causal = torch.ones(L, L, dtype=torch.bool, device=valid.device).tril()  # (L, L)
    eye = torch.eye(L, dtype=torch.bool, device=valid.device)  # (L, L)
    return (causal & (valid[:, None, :] | eye))[:, None]  # (B, 1, L, L)


class CausalSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention under a given mask (Sec. III-B)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, L, D/H)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, L, D/H)
        return self.out(y.transpose(1, 2).reshape(B, L, D))  # (B, L, D)


class FeedForward(nn.Module):
    """Point-wise feed-forward network (Sec. III-B): ReLU(x W1 + b1) W2 + b2 with W1, W2 in R^{D x D}."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, L, D)


class Block(nn.Module):
    """One self-attention block: x + Dropout(attn(LN(x))), then x + Dropout(FFN(LN(x))) (Sec. III-C)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.ln_attn, self.ln_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.ffn = FeedForward(dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_attn(x), mask))  # (B, L, D)
        return x + self.drop(self.ffn(self.ln_ffn(x)))  # (B, L, D)


class SASRec(TiedItemModel):
    """Item + position embedding -> ``cfg.layers`` causal blocks -> LayerNorm; scores with the item embedding."""

    name = "sasrec"

    def __init__(self, cfg: ModelConfig, ctx: ModelContext):
        super().__init__(cfg, ctx)
        D = cfg.dim
        self.item_emb = nn.Embedding(1 + ctx.n_items, D, padding_idx=0)  # row 0 = padding, row idx+1 = item idx
        self.pos_emb = nn.Embedding(ctx.max_len, D)  # row 0 = most recent item
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(D, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.ln_final = nn.LayerNorm(D)
        for emb in (self.item_emb, self.pos_emb):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs (B, L) left-padded ids, L <= ctx.max_len -> (B, L, D) state at each position."""
        L = seqs.size(1)
        if L > self.ctx.max_len:
            raise ValueError(f"sequence length {L} exceeds the positional table (ctx.max_len = {self.ctx.max_len}); "
                             "keep the most recent max_len items")
        pos = torch.arange(L - 1, -1, -1, device=seqs.device)  # (L,) distance from the most recent item
        x = self.item_emb(seqs) * self.cfg.dim ** 0.5 + self.pos_emb(pos)  # (B, L, D), Sec. III-A
        x = self.drop(x)
        mask = attention_mask(seqs > 0)  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, mask)  # (B, L, D)
        return self.ln_final(x)  # (B, L, D)
