"""ABXI (Bian et al., WWW 2025, arXiv 2501.15118): invariant interest adaptation for task-guided CDSR.

Shape legend: B batch, L sequence length, D hidden size, R LoRA rank, N items of a domain, S sampled negatives.

Three views of a history go through ONE shared encoder (self-attention block + SwiGLU feed-forward): the merged
sequence X and the two single-domain sequences A and B. What differs per view is a low-rank adapter beside the
shared feed-forward (the domain LoRA, "dLoRA", Sec. 3.3). The merged state then goes through a shared invariant
projector plus a per-target-domain invariant LoRA ("iLoRA", Sec. 3.4), and the target domain's representation
is the sum of that projected cross-domain interest and the target domain's own single-domain interest:

    h_X  = LN(enc(X) + FFN(enc(X)) + dLoRA_X(enc(X)))                        shared FFN, one LoRA per view
    h_d  = LN(enc(S_d) + FFN(enc(S_d)) + dLoRA_d(enc(S_d)))                  d = the target's domain
    z_d  = LN(h_X + Proj_I(h_X) + iLoRA_d(h_X)) + LN(h_d + Proj_d(h_d))      scored against item embeddings

Task-guided alignment (Sec. 3.2): in training, the single-domain sequence fed at the position that predicts an
item of domain d holds the latest domain-d item before it, so the causal encoder sees exactly the domain-d
history preceding that target; at evaluation it is the domain-d items of the history, oldest first. The loss is
InfoNCE over the target and sampled negatives of both domains with temperature tau (Sec. 3.5), averaged per
sequence and per target domain. Every reading of the paper and of the official code is in docs/DESIGN.md, "ABXI".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from temarec.config import ModelConfig
from temarec.models.base import ModelContext, SequentialModel, domain_of_ids
from temarec.models.attention import CausalSelfAttention, attention_mask
from temarec.models.dropout import Dropout


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class ABXISettings:
    """``model.abxi.*``; defaults are the official code's (main.py; ranks from demo.sh's Food-Kitchen line)."""

    dim: int = 256  # --d_embed
    heads: int = 2  # --n_head
    dropout: float = 0.5  # --dropout (embeddings, residual branches; not the attention weights)
    ffn_dim: int = 680  # SwiGLU inner size (encoders.FeedForward's d_ffn)
    domain_rank: int = 16  # --rd, rank of the domain LoRAs (demo.sh, afk; main.py's default is 8)
    invariant_rank: int = 64  # --ri, rank of the invariant LoRAs (demo.sh, afk; main.py's default is 8)
    temperature: float = 0.75  # --temp, InfoNCE temperature
    negatives_per_domain: int = 128  # --n_neg: per training sequence, this many from EACH domain

    def __post_init__(self) -> None:
        _check(self.dim >= 1 and self.heads >= 1 and self.dim % self.heads == 0,
               f"model.abxi.dim ({self.dim}) must be a positive multiple of model.abxi.heads ({self.heads})")
        _check(0.0 <= self.dropout < 1.0, f"model.abxi.dropout must be in [0, 1), got {self.dropout}")
        _check(self.ffn_dim >= 1, f"model.abxi.ffn_dim must be >= 1, got {self.ffn_dim}")
        _check(self.domain_rank >= 1, f"model.abxi.domain_rank must be >= 1 (a LoRA rank), got {self.domain_rank}")
        _check(self.invariant_rank >= 1,
               f"model.abxi.invariant_rank must be >= 1 (a LoRA rank), got {self.invariant_rank}")
        _check(self.temperature > 0, f"model.abxi.temperature must be > 0, got {self.temperature}")
        _check(self.negatives_per_domain >= 1,
               f"model.abxi.negatives_per_domain must be >= 1, got {self.negatives_per_domain}")


class LoRA(nn.Module):
    """A rank-R linear map x -> x (down up): ``down`` starts at zero, so each adapter starts as the zero map."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.down = nn.Parameter(torch.zeros(dim, rank))  # the official B^T (its B starts at zero) ...
        self.up = nn.Parameter(torch.randn(rank, dim) / 50)  # ... and A^T, N(0, 1) / 50

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.down) @ self.up  # (..., D) via (..., R)


class SwiGLU(nn.Module):
    """Feed-forward W3 (SiLU(x W2) * x W1), no biases: the official code's FFN, projector and Proj_d."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate, self.value = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.out = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.silu(self.gate(x)) * self.value(x))  # (..., D)


class SharedAttention(nn.Module):
    """Post-LN causal self-attention: LN(x + Dropout(MHA(x))) * valid; SASRec's attention, ABXI's placement."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn = CausalSelfAttention(dim, heads, dropout=0.0)  # nn.MultiheadAttention's default: no attn dropout
        self.ln = nn.LayerNorm(dim)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), valid (B, L) -> (B, L, D), zero at padding."""
        y = self.ln(x + self.drop(self.attn(x, attention_mask(valid))))
        return y * valid[..., None].to(y.dtype)


def positions_from_right(valid: torch.Tensor) -> torch.Tensor:
    """valid (B, L) -> (B, L) 1 for the most recent real item, 2 for the one before, ...; 0 at padding."""
    v = valid.long()
    return v.flip(1).cumsum(1).flip(1) * v


def latest_before(x: torch.Tensor, in_domain: torch.Tensor) -> torch.Tensor:
    """x (B, L) ids, in_domain (B, L) -> (B, L): at each position t, the latest x[:, s <= t] in the domain; 0 if none."""
    L = x.size(1)
    where = torch.where(in_domain, torch.arange(L, device=x.device), -1)  # (B, L) own index or -1
    last = where.cummax(dim=1).values  # (B, L) index of the latest in-domain item so far
    return torch.where(last >= 0, x.gather(1, last.clamp(min=0)), 0)


def compact_domain(x: torch.Tensor, in_domain: torch.Tensor) -> torch.Tensor:
    """x (B, L) left-padded ids -> (B, L) the in-domain items only, oldest first, left-padded with 0."""
    order = torch.argsort(in_domain.int(), dim=1, stable=True)  # others first, in-domain items last, in order
    return torch.where(in_domain.gather(1, order), x.gather(1, order), 0)


class ABXI(SequentialModel):
    """Shared encoder + domain LoRAs over X, A, B; invariant projector + invariant LoRAs; InfoNCE loss."""

    name = "abxi"
    not_factorizable = ("has a user state that depends on the target domain (its single-domain view and invariant "
                        "LoRA), which one state vector per history cannot express; the exporter does not write that "
                        "form yet")
    settings_class = ABXISettings

    settings: ABXISettings

    def __init__(self, cfg: ModelConfig, ctx: ModelContext):
        super().__init__(cfg, ctx)
        s = self.settings
        if min(ctx.domain_sizes) < 1:
            raise ValueError(f"ABXI needs items in both domains, got sizes {dict(zip(ctx.domains, ctx.domain_sizes))}")
        D = s.dim
        self.item_emb = nn.Embedding(1 + ctx.n_items, D, padding_idx=0)  # row 0 = padding, row idx+1 = item idx
        self.pos_emb = nn.Embedding(ctx.max_len + 1, D, padding_idx=0)  # row 1 = most recent item, 0 = padding
        self.drop = Dropout(s.dropout)
        self.attn = SharedAttention(D, s.heads, s.dropout)  # Sec. 3.3: one encoder for the three views
        self.ffn = SwiGLU(D, s.ffn_dim)
        self.domain_lora = nn.ModuleList(LoRA(D, s.domain_rank) for _ in range(3))  # views X, A, B
        self.ln_view = nn.ModuleList(nn.LayerNorm(D) for _ in range(3))
        self.proj_inv = SwiGLU(D, s.ffn_dim)  # Sec. 3.4: invariant projector, shared by both targets
        self.inv_lora = nn.ModuleList(LoRA(D, s.invariant_rank) for _ in range(2))  # per target domain
        self.proj_dom = nn.ModuleList(SwiGLU(D, s.ffn_dim) for _ in range(2))  # per domain, on its own view
        self.ln_inv = nn.ModuleList(nn.LayerNorm(D) for _ in range(2))
        self.ln_dom = nn.ModuleList(nn.LayerNorm(D) for _ in range(2))
        self._init_weights()

    @classmethod
    def describe_sources(cls, dataset: Any, cfg: Any) -> dict[str, str]:
        return {"encoders": "none (ID-only model)", "tags": "none (model uses no tags)"}

    @classmethod
    def describe_training(cls, dataset: Any, cfg: Any) -> str:
        s = cfg.model.specific.get(cls.name) or ABXISettings()
        return (f"InfoNCE (tau {s.temperature}) over {s.negatives_per_domain} + {s.negatives_per_domain} sampled "
                "negatives of the two domains per sequence (model.loss does not apply)")

    def _init_weights(self) -> None:
        """As the official code: linears N(0, 0.02), biases 0; embeddings truncated N(0, 0.02) in [-0.04, 0.04]."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
                with torch.no_grad():
                    m.weight[0].zero_()

    def view(self, seqs: torch.Tensor, v: int) -> torch.Tensor:
        """seqs (B, L) ids of view v (0 = X, 1 = A, 2 = B) -> (B, L, D): embed, shared encoder, view's dLoRA.

        Padding positions come out as zeros; the feed-forward part runs on the real positions only (P of them),
        which changes nothing but the cost (about half the positions of a batch are padding).
        """
        if seqs.size(1) > self.ctx.max_len:
            raise ValueError(f"sequence length {seqs.size(1)} exceeds the positional table (ctx.max_len = "
                             f"{self.ctx.max_len}); keep the most recent max_len items")
        valid = seqs > 0  # (B, L)
        x = self.item_emb(seqs) + self.pos_emb(positions_from_right(valid))  # (B, L, D); padding rows are zero
        h = self.attn(self.drop(x), valid)  # (B, L, D)
        hv = h[valid]  # (P, D)
        out = torch.zeros_like(h)
        out[valid] = self.ln_view[v](hv + self.drop(self.ffn(hv)) + self.drop(self.domain_lora[v](hv)))  # Sec. 3.3
        return out

    def fuse(self, h_x: torch.Tensor, h_d: torch.Tensor, d: int, inv: torch.Tensor | None = None) -> torch.Tensor:
        """h_x, h_d (..., D) merged and domain-d states -> (..., D) the representation that scores domain d.

        ``inv``: Proj_I(h_x) when already computed (it does not depend on d).
        """
        inv = self.proj_inv(h_x) if inv is None else inv
        shared = self.ln_inv[d](h_x + self.drop(inv) + self.drop(self.inv_lora[d](h_x)))  # Sec. 3.4
        own = self.ln_dom[d](h_d + self.drop(self.proj_dom[d](h_d)))
        return shared + own

    def training_loss(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs (B, L+1) -> scalar: per target domain, InfoNCE averaged over each sequence's targets, then over B."""
        inputs, targets = seqs[:, :-1], seqs[:, 1:]  # (B, L) each
        n0 = self.ctx.domain_sizes[0]
        tgt_dom, in_dom = domain_of_ids(targets, n0), domain_of_ids(inputs, n0)  # (B, L) each
        h_x = self.view(inputs, 0)  # (B, L, D)
        scored = (inputs > 0) & (targets > 0)  # (B, L) as the official code: a first item is never a target
        inv = torch.zeros_like(h_x)
        inv[scored] = self.proj_inv(h_x[scored])  # (B, L, D) Proj_I once for both target domains
        negatives = self._sample_negatives(seqs)  # (B, S) ids of both domains
        neg_emb = self.item_emb(negatives)  # (B, S, D)
        hit = (negatives[:, :, None] == seqs[:, None, :]).any(-1)  # (B, S) a negative the user interacted with
        total = h_x.sum() * 0.0  # connected to the graph, so a batch without targets still backpropagates
        for d in (0, 1):
            mask = scored & (tgt_dom == d)  # (B, L) positions whose target is in domain d
            aligned = torch.where(mask, latest_before(inputs, (inputs > 0) & (in_dom == d)), 0)  # Sec. 3.2
            h_d = self.view(aligned, 1 + d)  # (B, L, D)
            z = torch.zeros_like(h_x)
            z[mask] = self.fuse(h_x[mask], h_d[mask], d, inv[mask])  # (B, L, D), zero off the mask
            pos = (z * self.item_emb(targets)).sum(-1, keepdim=True)  # (B, L, 1)
            neg = torch.einsum("bld,bsd->bls", z, neg_emb).masked_fill(hit[:, None, :], float("-inf"))  # (B, L, S)
            nll = -F.log_softmax(torch.cat([pos, neg], dim=-1) / self.settings.temperature, dim=-1)[..., 0]  # (B, L)
            per_seq = (nll * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B,) mean over the sequence's targets
            total = total + per_seq.mean()
        return total

    def _sample_negatives(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, 2S) ids: S uniform draws from each domain per sequence, shared by its positions (docs/DESIGN.md)."""
        S, (n0, n1) = self.settings.negatives_per_domain, self.ctx.domain_sizes
        shape = (seqs.size(0), S)
        a = torch.randint(1, n0 + 1, shape, device=seqs.device)
        b = torch.randint(n0 + 1, n0 + n1 + 1, shape, device=seqs.device)
        return torch.cat([a, b], dim=1)

    def score_domain(self, history: torch.Tensor, domain: int) -> torch.Tensor:
        """history (B, L) -> (B, N_domain): z_d from the merged history and its domain-d items, dot item embeddings."""
        n0 = self.ctx.domain_sizes[0]
        in_d = (history > 0) & (domain_of_ids(history, n0) == domain)
        h_x = self.view(history, 0)[:, -1]  # (B, D) state after the most recent item
        h_d = self.view(compact_domain(history, in_d), 1 + domain)[:, -1]  # (B, D) after the latest domain-d item
        z = self.fuse(h_x, h_d, domain)  # (B, D)
        return z @ self.item_emb.weight[self.ctx.domain_slice(domain)].T  # (B, N)
