"""The causal self-attention encoder every attention model of temarec is built from (Sec. III-B/C of SASRec).

Shape legend: B batch, L sequence length, D hidden size, H heads, E encoders run at once, P scored positions.

``StackedEncoders`` runs E independent pre-LN causal encoders as one batched operation (stacked weights,
batched matmuls): SASRec is the case E = 1, TEMA runs its V*M (view, modality) encoders with it, so an
ID-only, merged-view TEMA and SASRec share one implementation (docs/DESIGN.md, "TEMA as SASRec"). Built with
``shared=True``, its E encoders share one set of linear weights, each adapted by its own low-rank term
(``SharedLoRALinear``; TEMA's ``model.tema.encoders = shared``, docs/DESIGN.md, "Shared encoders").
``Block`` is the same block for one encoder with ``nn.Linear`` weights (C2DSR, the domain-view peers).
``length_groups`` / ``next_item_states`` / ``last_states`` encode histories in groups of similar length,
each trimmed to its own longest row: exact for every model whose states ignore left padding.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from temarec.models.dropout import Dropout, dropout

GROUP_ROWS = 64  # histories are encoded in groups of similar length, this many rows each
ALL = slice(None)  # every encoder of a stack; ``part`` selects a contiguous run of them
POSITIONS = ("oldest", "newest")


def attention_mask(valid: torch.Tensor) -> torch.Tensor:
    """valid (B, L) non-padding flags -> (B, 1, L, L) boolean mask, True = query may attend to key.

    Causal (key <= query) and no padding keys. Every query also sees itself, so a padding query (and an
    all-padding row) never has a fully masked row, which would make softmax return NaN.
    """
    L = valid.size(1)
    causal = torch.ones(L, L, dtype=torch.bool, device=valid.device).tril()  # (L, L)
    eye = torch.eye(L, dtype=torch.bool, device=valid.device)  # (L, L)
    return (causal & (valid[:, None, :] | eye))[:, None]  # (B, 1, L, L)


def self_attention(qkv: torch.Tensor, heads: int, mask: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_k)) V per head under a boolean mask (True = may attend), dropout p on the weights.

    qkv (N, L, 3D) the packed query, key and value maps, mask broadcastable to (N, heads, L, L) -> (N, L, D).
    Without dropout (evaluation, serving, ONNX export) this is ``F.scaled_dot_product_attention``; in training
    with p > 0 the same arithmetic written out, so that the weights' mask comes from ``dropout`` (cheaper than
    SDPA's own Bernoulli draw on a CPU, docs/BENCHMARKS.md, "Dropout's mask"). q, k, v are split with ``unbind``,
    whose backward stacks the three gradients into one tensor (indexing a permuted copy zero-filled it thrice).
    """
    N, L, D3 = qkv.shape
    q, k, v = (t.transpose(1, 2) for t in qkv.reshape(N, L, 3, heads, D3 // (3 * heads)).unbind(2))  # (N, H, L, d_k)
    if not training or p == 0.0:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        scores = (q @ k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5).masked_fill_(~mask, float("-inf"))
        y = dropout(torch.softmax(scores, dim=-1), p) @ v
    return y.transpose(1, 2).reshape(N, L, D3 // 3)  # (N, L, D)


class CausalSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention under a given mask (Sec. III-B)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.out(self_attention(self.qkv(x), self.heads, mask, self.dropout, self.training))  # (B, L, D)


class FeedForward(nn.Module):
    """Point-wise feed-forward network (Sec. III-B): ReLU(x W1 + b1) W2 + b2 with W1, W2 in R^{D x D}."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), Dropout(dropout), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, L, D)


class Block(nn.Module):
    """One self-attention block: x + Dropout(attn(LN(x))), then x + Dropout(FFN(LN(x))) (Sec. III-C)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.ln_attn, self.ln_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.ffn = FeedForward(dim, dropout)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_attn(x), mask))  # (B, L, D)
        return x + self.drop(self.ffn(self.ln_ffn(x)))  # (B, L, D)


class StackedLinear(nn.Module):
    """E independent linear maps applied as one batched matmul: x (E, *, i) -> (E, *, o)."""

    def __init__(self, n: int, d_in: int, d_out: int):
        super().__init__()
        bound = d_in ** -0.5  # nn.Linear's default initialisation, per encoder
        self.weight = nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, d_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, part: slice = ALL) -> torch.Tensor:
        shape = x.shape
        y = torch.baddbmm(self.bias[part, None], x.reshape(shape[0], -1, shape[-1]), self.weight[part])  # (E, *, o)
        return y.view(*shape[:-1], -1)


class SharedLoRALinear(nn.Module):
    """One linear map shared by E encoders, plus a low-rank adapter per encoder (LoRA, Hu et al. 2021, eq. 3):
    x_e (W + (alpha / r) A_e B_e) + b for encoder e, x (E, *, i) -> (E, *, o).

    W (i, o) and b are shared; A_e (i, r) starts like nn.Linear's weight and B_e (r, o) at zero, so every encoder
    starts as the shared one. The adapted weights are formed first (E i r o multiply-adds, once per call) and
    applied as one batched matmul, so a row costs i o as with separate weights. One shared matmul over all E*N
    rows plus x_e A_e B_e row by row costs (i + o) r more per row, and was 1.6-2.1x slower per map and 1.2x per
    encoder stack on one CPU thread, with no gain from the single matmul (benchmarks/bench_lora_linear.py).
    """

    def __init__(self, n: int, d_in: int, d_out: int, rank: int, alpha: float):
        super().__init__()
        bound = d_in ** -0.5  # nn.Linear's default initialisation
        self.weight = nn.Parameter(torch.empty(d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(d_out).uniform_(-bound, bound))
        self.lora_a = nn.Parameter(torch.empty(n, d_in, rank).uniform_(-bound, bound))  # (E, i, r)
        self.lora_b = nn.Parameter(torch.zeros(n, rank, d_out))  # (E, r, o)
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor, part: slice = ALL) -> torch.Tensor:
        shape = x.shape
        weight = torch.baddbmm(self.weight, self.lora_a[part], self.lora_b[part], alpha=self.scale)  # (E, i, o)
        y = torch.baddbmm(self.bias, x.reshape(shape[0], -1, shape[-1]), weight)  # (E, N, o)
        return y.view(*shape[:-1], -1)


class StackedLayerNorm(nn.Module):
    def __init__(self, n: int, dim: int):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(n, dim)), nn.Parameter(torch.zeros(n, dim))

    def forward(self, x: torch.Tensor, part: slice = ALL) -> torch.Tensor:  # x (E, B, L, D)
        dim = (int(self.weight.shape[1]),)  # a constant, also when traced for ONNX export
        return F.layer_norm(x, dim) * self.weight[part, None, None] + self.bias[part, None, None]


class StackedBlock(nn.Module):
    """One pre-LN self-attention block for E encoders at once: x + Drop(attn(LN x)), x + Drop(FFN(LN x)).

    Dropout as in our SASRec (and SASRec.pytorch): on each sub-layer's output, on the attention probabilities and
    on the FFN's hidden layer. With the sub-layer outputs only, TEMA's ID head overfitted ABXI from epoch ~25 and
    plateaued below SASRec (docs/BENCHMARKS.md, "Why TEMA lagged"). ``lora`` = (rank, alpha): the four linear maps
    are ``SharedLoRALinear`` (shared weights, a low-rank adapter per encoder); None: ``StackedLinear``.
    """

    def __init__(self, n: int, dim: int, heads: int, dropout: float, lora: tuple[int, float] | None = None):
        super().__init__()
        self.heads = heads

        def linear(d_in: int, d_out: int) -> nn.Module:
            return StackedLinear(n, d_in, d_out) if lora is None else SharedLoRALinear(n, d_in, d_out, *lora)

        self.ln_attn, self.ln_ffn = StackedLayerNorm(n, dim), StackedLayerNorm(n, dim)
        self.qkv, self.out = linear(dim, 3 * dim), linear(dim, dim)
        self.ffn_in, self.ffn_out = linear(dim, dim), linear(dim, dim)
        self.drop = Dropout(dropout)

    def attend(self, x: torch.Tensor, mask: torch.Tensor, part: slice = ALL) -> torch.Tensor:
        """eq. (10): softmax(Q K^T / sqrt(d_k)) V, x (E, B, L, D), mask (E*B, 1, L, L)."""
        E, B, L, D = x.shape
        y = self_attention(self.qkv(x, part).reshape(E * B, L, 3 * D), self.heads, mask, self.drop.p, self.training)
        return self.out(y.view(E, B, L, D), part)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, part: slice = ALL) -> torch.Tensor:
        """x (E, B, L, D) through the encoders ``part`` selects (E of them) -> (E, B, L, D)."""
        x = x + self.drop(self.attend(self.ln_attn(x, part), mask, part))
        return x + self.drop(self.ffn_out(self.drop(F.relu(self.ffn_in(self.ln_ffn(x, part), part))), part))


class StackedEncoders(nn.Module):
    """E independent causal encoders (TEMA's eqs. 10-11; SASRec with E = 1), run as batched tensor operations.

    ``lora`` None (``separate``): encoder e has its own positions, blocks and final LayerNorm; no weight is shared.
    ``lora`` = (rank, alpha) (``shared``): the blocks' linear maps are shared, each encoder adapting them with its own
    rank-r LoRA term (``SharedLoRALinear``); positions and LayerNorms stay per encoder (zero FLOPs, E x 2D or
    max_len x D parameters each) but start equal, so at initialisation all E encoders compute the same function
    (docs/DESIGN.md, "Shared encoders"). ``positions``:
    ``oldest`` (TEMA): an item's position is its rank among the sequence's items (0 = oldest kept), so the
    state after item k depends on items 0..k only, in training as at inference (docs/DESIGN.md);
    ``newest`` (SASRec, as SASRec.pytorch's left-padded window): the column counted from the right
    (0 = the most recent column). Left padding changes nothing either way.
    """

    def __init__(self, n: int, dim: int, heads: int, layers: int, dropout: float, max_len: int,
                 positions: str = "oldest", lora: tuple[int, float] | None = None):
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        if lora is not None and not 1 <= lora[0] <= dim:
            raise ValueError(f"the LoRA rank must be in [1, dim = {dim}], got {lora[0]}")
        self.positions = positions
        table = torch.randn(n if lora is None else 1, max_len, dim) * 0.02
        self.pos = nn.Parameter(table.expand(n, -1, -1).clone())  # (E, max_len, D)
        self.blocks = nn.ModuleList(StackedBlock(n, dim, heads, dropout, lora) for _ in range(layers))
        self.ln_final = StackedLayerNorm(n, dim)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, part: slice = ALL) -> torch.Tensor:
        """x (E, B, L, D) inputs, valid (E, B, L) non-padding (right-aligned) -> (E, B, L, D) states.

        ``part`` runs only those encoders of the stack (E = their number): TEMA encodes each view at its own
        length, one slice of its V*M encoders at a time."""
        E, B, L, D = x.shape
        if L > self.pos.shape[1]:
            raise ValueError(f"sequence length {L} exceeds the positional table (ctx.max_len = {self.pos.shape[1]}); "
                             "keep the most recent max_len items")
        if self.positions == "newest":
            pos = self.pos[part, torch.arange(L - 1, -1, -1, device=x.device)][:, None]  # (E, 1, L, D)
        else:
            first = L - valid.sum(-1, keepdim=True)  # (E, B, 1) slot of the oldest item
            rank = (torch.arange(L, device=x.device) - first).clamp(min=0)  # (E, B, L)
            pos = self.pos[part][torch.arange(E, device=x.device)[:, None, None], rank]  # (E, B, L, D)
        x = self.drop(x + pos)  # (E, B, L, D)
        mask = attention_mask(valid.reshape(E * B, L))  # (E*B, 1, L, L) causal, no padding keys
        for block in self.blocks:
            x = block(x, mask, part)
        return self.ln_final(x, part)


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


def next_item_states(seqs: torch.Tensor, states: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Training sequences seqs (B, L+1) -> (states at every position with a next item, those items (P,)).

    ``states(inputs (B_g, L_g), scored (B_g, L_g) bool) -> (..., P_g, D)`` gives the state after each scored
    position, with P_g along ``dim``; it is called per length group, each trimmed to its longest row plus one
    padding input, so the first item of a sequence is predicted "from nothing" (the state of that input).
    """
    hs, ts = [], []
    for rows in length_groups(seqs):
        group = seqs[rows]
        group = group[:, max(0, first_used_column(group) - 1):]  # keep one padding input: "first item from nothing"
        inputs, targets = group[:, :-1], group[:, 1:]  # (B_g, L_g) each
        scored = targets > 0
        hs.append(states(inputs, scored))
        ts.append(targets[scored])
    return torch.cat(hs, dim), torch.cat(ts)


def last_states(history: torch.Tensor, states: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                dim: int = 0) -> torch.Tensor:
    """history (B, L) -> the state after each row's most recent item, (..., B, D) with B along ``dim``.

    ``states`` as in ``next_item_states``; groups of similar length, each trimmed to its longest row.
    """
    groups = length_groups(history)
    out = []
    for rows in groups:
        group = history[rows][:, first_used_column(history[rows]):]
        last = torch.zeros_like(group, dtype=torch.bool)
        last[:, -1] = True
        out.append(states(group, last))
    order = torch.argsort(torch.cat(groups))  # back to the input's row order
    return torch.cat(out, dim).index_select(dim, order)
