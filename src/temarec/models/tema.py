"""TEMA-LLM (Sec. III-E/F): tag-enriched multimodal items, one causal encoder per (view, modality), fused predictions.

Shape legend: B batch, L sequence length, D hidden size (q in the paper), N items of a domain, M modalities,
V views (S^{first}, S^{second}, S^{first+second}), E = V*M encoders, T tags, e a frozen feature's size,
P scored positions, S sampled negatives, U distinct items of a batch.

The readings of the paper this file commits to (what F_m and E_m are, which view is X, how training sees the
views causally, the temperature, cold items) are argued in docs/DESIGN.md, section "TEMA model".
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from temarec.config import ModelConfig
from temarec.models.base import ModelContext, SequentialModel
from temarec.models.sasrec import attention_mask

log = logging.getLogger(__name__)

MODALITIES = ("id", "img", "txt", "tag")  # the order of alpha1 (id), alpha2 (img), alpha3 (txt); tag gets the rest
CONTENT = ("img", "txt")  # frozen feature matrices, eqs. (5)-(6)
MIN_TEMPERATURE = 0.01  # logit scale <= 100, as CLIP clamps it
TIE_BREAK_SEED, TIE_BREAK_SCALE = 2022, 1e-3  # log-score jitter ordering otherwise exactly tied items
GROUP_ROWS = 64  # histories are encoded in groups of similar length, this many rows each
# Initial std of the ID table E_id, as SASRec's. Adam moves every entry by about lr per step whatever the
# gradient's scale, so a row's direction (all that a cosine sees) turns at a rate ~ lr / ||row||: at std D^-0.5
# (rows of norm 1) TEMA's ID head learned several times more slowly per epoch on ABXI (docs/BENCHMARKS.md)
ID_STD = 0.02
LOGIT_CHUNK = 1 << 19  # logits held at once by a head's normaliser (2 MB in float32: stays in cache)
MIN_CHUNK_ROWS = 64  # ... but never fewer rows per matmul than this
SCORE_ROWS = 128  # histories score_domain sums the heads for at once ((rows, N) buffers of a few MB)


@dataclass(frozen=True)
class TemaSettings:
    """TEMA's own settings, the config section ``model.tema`` (Sec. III-E/F; readings in docs/DESIGN.md)."""

    alpha: tuple[float, float, float] = (0.4, 0.2, 0.2)  # ID, image, text; tag gets 1 - sum, eq. (13)
    lambdas: tuple[float, float] = (0.3, 0.1)  # lambda1 (other view), lambda2 (merged view), eqs. (15)-(16)
    temperature: float = 0.1  # softmax temperature over cosines, eqs. (12)-(13)
    learn_temperature: bool = True
    similarity: str = "cosine"  # Sim of eqs. (12)-(13): cosine (paper) | dot (h . e / tau, norms kept; opt-in)
    modalities: tuple[str, ...] = ("id", "img", "txt", "tag")
    views: str = "multi"  # multi = S^X, S^Y, S^{X+Y}; merged = one S^{X+Y} encoder (Table IV ablation)
    view_reading: str = "target"  # target: X = the target's domain (symmetric); fixed: X = first domain
    sampled_correction: bool = True  # sampled loss (model.loss): + log((N - 1) / S) on negatives (calibrated P_m)
    # what eq. (14) trains: mixture = log of the alpha-fused probability (paper); separate = alpha-weighted sum of
    # each modality head's own log-likelihood (every head fully trained; docs/DESIGN.md, "Training loss")
    head_loss: str = "mixture"

    def __post_init__(self) -> None:
        def check(condition: bool, message: str) -> None:
            if not condition:
                raise ValueError(message)

        check(len(self.alpha) == 3 and all(a >= 0 for a in self.alpha) and sum(self.alpha) <= 1.0 + 1e-9,
              f"model.tema.alpha needs three non-negative weights summing to <= 1, got {self.alpha}")
        check(len(self.lambdas) == 2 and all(v >= 0 for v in self.lambdas),
              f"model.tema.lambdas needs two non-negative weights, got {self.lambdas}")
        check(self.temperature > 0, "model.tema.temperature must be > 0")
        check(set(self.modalities) <= set(MODALITIES) and len(self.modalities) >= 1,
              f"model.tema.modalities must be a non-empty subset of id, img, txt, tag; got {self.modalities}")
        check(self.views in {"multi", "merged"}, f"model.tema.views must be multi or merged, got {self.views!r}")
        check(self.view_reading in {"target", "fixed"},
              f"model.tema.view_reading must be target or fixed, got {self.view_reading!r}")
        check(self.similarity in {"cosine", "dot"},
              f"model.tema.similarity must be cosine or dot, got {self.similarity!r}")
        check(self.head_loss in {"mixture", "separate"},
              f"model.tema.head_loss must be mixture or separate, got {self.head_loss!r}")


def modality_weights(alpha: tuple[float, float, float], modalities: tuple[str, ...]) -> dict[str, float]:
    """eq. (13) fusion weights of the modalities in use, renormalised to sum to 1 when some are absent."""
    raw = {"id": alpha[0], "img": alpha[1], "txt": alpha[2], "tag": 1.0 - sum(alpha)}
    kept = {m: raw[m] for m in MODALITIES if m in modalities}
    total = sum(kept.values())
    if total <= 0:
        raise ValueError(f"model.tema.alpha {tuple(alpha)} gives zero weight to every modality in use {modalities}; "
                         "raise the weight of one of them")
    return {m: w / total for m, w in kept.items()}


def view_weights(views: str, reading: str, lambdas: tuple[float, float], domain: int,
                 x_weight: float = 1.0) -> list[float]:
    """eqs. (15)-(16): weights of the views (first-domain, second-domain, merged) when ``domain`` is the target:
    X gets ``x_weight`` (1 in the paper), Y lambda1, X+Y lambda2.

    ``target`` reading: X is the target's own domain, Y the other one. ``fixed``: X is always the first domain.
    With ``views = merged`` there is one view, S^{X+Y}, with weight 1.
    """
    if views == "merged":
        return [1.0]
    x = domain if reading == "target" else 0
    weights = [0.0, 0.0, lambdas[1]]
    weights[x], weights[1 - x] = x_weight, lambdas[0]
    return weights


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


class ItemEmbeddings(nn.Module):
    """Per-modality item vectors e_m (eqs. 3-7), each of size D, and the fused item embedding (eq. 9).

    ``id``: learnable rows, zeroed for items never seen in training (cold start: content only).
    ``img``/``txt``: frozen features (non-persistent buffers, reloaded from the dataset folder), projected to D
    without bias, so an item without the feature gets a zero vector. ``tag``: w_v @ E_tag with learnable E_tag.
    """

    def __init__(self, dim: int, ctx: ModelContext, modalities: tuple[str, ...]):
        super().__init__()
        n, self.modalities = ctx.n_items, modalities
        raw_dims = []
        if "id" in modalities:
            self.id_emb = nn.Embedding(1 + n, dim, padding_idx=0)  # eq. (4), row 0 = padding
            nn.init.normal_(self.id_emb.weight, std=ID_STD)
            counts = ctx.item_counts if ctx.item_counts is not None else [1.0] * n
            known = torch.cat([torch.zeros(1), (torch.as_tensor(counts, dtype=torch.float32) > 0).float()])
            self.register_buffer("id_known", known)  # (1 + n,)
            raw_dims.append(dim)
        self.proj = nn.ModuleDict()
        for m in CONTENT:
            if m in modalities:
                matrix, mask = ctx.extras["features"][m]  # (n, e), (n,)
                table = torch.zeros(1 + n, matrix.shape[1])
                table[1:] = torch.as_tensor(matrix, dtype=torch.float32) * torch.as_tensor(mask)[:, None]
                self.register_buffer(f"{m}_raw", table, persistent=False)  # eqs. (5)-(6), frozen
                self.proj[m] = nn.Linear(matrix.shape[1], dim, bias=False)
                raw_dims.append(matrix.shape[1])
        if "tag" in modalities:
            w = torch.as_tensor(ctx.extras["tag_vectors"], dtype=torch.float32)  # (n, T)
            self.register_buffer("tag_w", torch.cat([torch.zeros(1, w.shape[1]), w]), persistent=False)
            # E_tag, eqs. (3)/(7): rows of norm ~1, so that at initialisation items sharing tags are already
            # similar (a random projection of the multi-hot vectors); unlike random ID rows they carry a prior
            self.tag_emb = nn.Parameter(torch.randn(w.shape[1], dim) * dim ** -0.5)
            raw_dims.append(dim)
        # eq. (9): two-layer GELU MLP over [e_id ⊕ e_img ⊕ e_tex ⊕ e_tag] (raw sizes) to the model's size q = D
        self.fuse = nn.Sequential(nn.Linear(sum(raw_dims), dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, ids: torch.Tensor, fuse: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ids (*) -> (modality vectors (M, *, D), fused embedding (*, D) or None without ``fuse``); zero at padding."""
        vecs, raws = [], []
        for m in self.modalities:
            if m == "id":
                v = self.id_emb(ids) * self.id_known[ids, None]  # eq. (4), cold items -> 0
                raw = v
            elif m == "tag":
                v = raw = self.tag_w[ids] @ self.tag_emb  # eq. (7): sum_i w_i E_tag[i]
            else:
                raw = getattr(self, f"{m}_raw")[ids]  # eqs. (5)-(6)
                v = self.proj[m](raw)
            vecs.append(v)
            raws.append(raw)
        if not fuse:  # scoring needs the per-modality matrices E_m only (eqs. 12-13)
            return torch.stack(vecs), None
        fused = self.fuse(torch.cat(raws, -1)) * (ids > 0)[..., None]  # eq. (9)
        return torch.stack(vecs), fused


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


class TEMA(SequentialModel):
    """Items (eqs. 3-9) -> three views x M modalities of causal encoders (eqs. 10-11) -> fused scores (12-17)."""

    name = "tema"
    settings_class = TemaSettings
    not_factorizable = ("combines several sequence views and modalities per domain, which one state vector and one "
                        "item matrix cannot express, so ONNX export is not supported")
    settings: TemaSettings

    def __init__(self, cfg: ModelConfig, ctx: ModelContext):
        super().__init__(cfg, ctx)
        s = self.settings
        self.modalities = tuple(m for m in MODALITIES if m in ctx.extras.get("modalities", s.modalities))
        missing = [m for m in self.modalities if (m in CONTENT and m not in ctx.extras.get("features", {}))
                   or (m == "tag" and "tag_vectors" not in ctx.extras)]
        if missing:
            raise ValueError(f"TEMA needs {missing} in ctx.extras (built by TEMA.context_extras from the dataset "
                             "folder); run `temarec features` / `temarec tags`, or drop them from model.tema.modalities")
        self.alpha = modality_weights(s.alpha, self.modalities)
        self.n_views = 3 if s.views == "multi" else 1
        V, M, D = self.n_views, len(self.modalities), cfg.dim
        self.register_buffer("log_alpha", torch.log(torch.tensor([self.alpha[m] for m in self.modalities])),
                             persistent=False)  # (M,)
        self.items = ItemEmbeddings(D, ctx, self.modalities)
        self._item_cache: dict[int, torch.Tensor] = {}  # domain -> (M, N, D) while frozen, see domain_items
        self.register_buffer("input_scale", torch.tensor([D ** 0.5 if m == "id" else 1.0 for m in self.modalities]),
                             persistent=False)  # (M,) see encode
        self.encoders = StackedEncoders(V * M, D, cfg.heads, cfg.layers, cfg.dropout, ctx.max_len)
        self.h_empty = nn.Parameter(torch.randn(V, M, D) * 0.02)  # state of a view with no item yet
        # Items that carry no information (never trained, no text, no tags) get identical scores; a fixed random
        # jitter (<= 0.1% of the probability) orders them at random instead, so that the sampled
        # protocol's ">" rank is not optimistic for them (as pop does; see docs/DESIGN.md, "Data and evaluation").
        g = torch.Generator().manual_seed(TIE_BREAK_SEED)
        self.register_buffer("tie_break", TIE_BREAK_SCALE * torch.rand(ctx.n_items, generator=g),
                             persistent=False)  # (n,) added to log-scores: a factor of at most 1.001
        log_tau = torch.full((V, M), math.log(s.temperature))  # one temperature per (view, modality)
        if s.learn_temperature:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)

    # ---- inputs --------------------------------------------------------------------------------------------
    def views(self, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sec. III-A/F: seqs (B, L) merged history -> view_ids, last, has, each (V, B, L) (see view_gather)."""
        real = seqs > 0
        second = seqs > self.ctx.domain_sizes[0]
        keeps = [real & ~second, real & second, real] if self.n_views == 3 else [real]  # S^X, S^Y, S^{X+Y}
        return tuple(torch.stack(t) for t in zip(*(view_gather(seqs, k) for k in keeps)))  # type: ignore[return-value]

    def encode(self, view_ids: torch.Tensor) -> torch.Tensor:
        """view_ids (V, B, L) -> h (V, M, B, L, D): every view's sequence through each modality's encoder."""
        V, B, L = view_ids.shape
        M = len(self.modalities)
        uniq, inv = torch.unique(view_ids, return_inverse=True)  # each distinct item embedded once
        vecs, fused = self.items(uniq)  # (M, U, D), (U, D)
        # F_m = e_m + e_item (eq. 9 feeds every encoder); e_id enters times sqrt(D), as SASRec's item embedding
        f = (vecs * self.input_scale[:, None, None] + fused)[:, inv]  # (M, V, B, L, D)
        x = f.transpose(0, 1).reshape(V * M, B, L, -1)  # (E, B, L, D)
        valid = (view_ids > 0)[:, None].expand(V, M, B, L).reshape(V * M, B, L)
        return self.encoders(x, valid).view(V, M, B, L, -1)  # eqs. (10)-(11)

    # ---- eqs. (12)-(13) ------------------------------------------------------------------------------------
    def scaled(self, h: torch.Tensor) -> torch.Tensor:
        """h (V, M, P, D) -> the query side of eqs. (12)-(13): h / (||h|| tau_{v,m}) for ``cosine`` (a dot product
        with a unit item vector is then cos / tau); h / tau_{v,m} for ``dot``."""
        tau = self.log_tau.exp().clamp(min=MIN_TEMPERATURE)[:, :, None, None]
        return (F.normalize(h, dim=-1) if self.settings.similarity == "cosine" else h) / tau

    def candidates(self, items: torch.Tensor) -> torch.Tensor:
        """The item side of eqs. (12)-(13): unit rows for ``cosine``, the vectors themselves for ``dot``."""
        return F.normalize(items, dim=-1) if self.settings.similarity == "cosine" else items

    def logits(self, h: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """Sim(h, E_m) over the temperature: h (V, M, P, D), cand (M, C, D) -> (V, M, P, C)."""
        return torch.einsum("vmpd,mcd->vmpc", self.scaled(h), self.candidates(cand))

    def domain_items(self, domain: int) -> torch.Tensor:
        """(M, N, D) per-modality item matrices E_m^{domain} of eqs. (12)-(13).

        Cached while the model is frozen (eval mode, no gradient): evaluation and serving score many histories
        against the same matrices. ``train()`` and loading weights clear the cache.
        """
        frozen = not self.training and not torch.is_grad_enabled()  # eval(), under no_grad or inference_mode
        if frozen and domain in self._item_cache:
            return self._item_cache[domain]
        sl = self.ctx.domain_slice(domain)
        matrix = self.items(torch.arange(sl.start, sl.stop, device=self.log_alpha.device), fuse=False)[0]
        if frozen:
            self._item_cache[domain] = matrix
        return matrix

    def train(self, mode: bool = True) -> "TEMA":
        self._item_cache.clear()
        return super().train(mode)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._item_cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "TEMA":  # .to(device), .double(), ...
        self._item_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def head_log_prob(self, log_p: torch.Tensor) -> torch.Tensor:
        """What eq. (14) maximises per view: log_p (V, M, P) log P_m^V(target) -> (V, P).

        ``mixture`` (the paper's eqs. 13-14): log sum_m alpha_m P_m, the log of the fused probability.
        ``separate``: sum_m alpha_m log P_m, each head's own log-likelihood weighted by alpha_m; a lower bound
        of the mixture's (Jensen), whose gradient reaches every head in full instead of in proportion to how
        well it already predicts the target (see docs/DESIGN.md, "Training loss"). Scores are eq. (16) either way.
        """
        if self.settings.head_loss == "separate":
            return (self.log_alpha.exp()[None, :, None] * log_p).sum(1)
        return torch.logsumexp(self.log_alpha[None, :, None] + log_p, dim=1)

    @staticmethod
    def _full_log_prob(hs: torch.Tensor, cand: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Exact: hs (V, M, P, D) scaled states, cand (M, N, D) item rows, target (P,) -> log P_m^V (V, M, P)."""
        picked = (hs * cand[None, :, target]).sum(-1)  # (V, M, P) the target's logit
        return picked - _log_normaliser(hs, cand)

    def _sampled_log_prob(self, h: torch.Tensor, target: torch.Tensor, domain: int) -> torch.Tensor:
        """Softmax over the target and S shared negatives drawn uniformly from its domain (see docs/DESIGN.md)."""
        n, start, P = self.ctx.domain_sizes[domain], self.ctx.domain_slice(domain).start, len(target)
        neg = torch.randint(0, n, (self.cfg.num_sampled,), device=h.device)  # (S,)
        uniq, inv = torch.unique(torch.cat([target, neg]) + start, return_inverse=True)
        cand = self.candidates(self.items(uniq, fuse=False)[0])[:, inv]  # (M, P + S, D): the items this batch needs
        hs = self.scaled(h)  # (V, M, P, D)
        pos = (hs * cand[None, :, :P]).sum(-1)  # (V, M, P)
        # accidental hits, the target drawn as one of its own negatives, are left out of the normaliser
        hits = (neg[None, :] == target[:, None]).nonzero(as_tuple=True)  # (position, negative) pairs
        lse = _log_normaliser(hs, cand[:, P:].contiguous(), hits)  # (V, M, P)
        # each negative stands for (N - 1) / S items, so the sum estimates the full softmax's normaliser and
        # P_m stays calibrated like the full softmax (eq. 13 mixes probabilities); model.tema.sampled_correction off
        # gives the plain softmax over target + negatives, as SASRec's sampled loss (docs/DESIGN.md)
        shift = math.log((n - 1) / len(neg)) if self.settings.sampled_correction else 0.0
        log_z = torch.logaddexp(pos, lse + shift)  # (V, M, P)
        return pos - log_z  # (V, M, P)

    # ---- eqs. (14)-(17) ------------------------------------------------------------------------------------
    def training_loss(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs (B, L+1) -> scalar: eq. (15) summed over every next-item position, divided by their number."""
        hs, ts = [], []
        for rows in _length_groups(seqs):
            group = seqs[rows]
            group = group[:, max(0, _first_used_column(group) - 1):]  # keep one padding input: "first item from nothing"
            inputs, targets = group[:, :-1], group[:, 1:]  # (B_g, L_g) each
            scored = targets > 0
            hs.append(self.position_states(inputs, scored))  # (V, M, P_g, D)
            ts.append(targets[scored])
        h, targets = torch.cat(hs, 2), torch.cat(ts)  # (V, M, P, D), (P,)
        total = h.sum() * 0.0  # keeps the graph connected when a batch has nothing to predict
        for d in (0, 1):
            rows = torch.nonzero(targets > self.ctx.domain_sizes[0] if d else targets <= self.ctx.domain_sizes[0],
                                 as_tuple=True)[0]
            if len(rows) == 0:
                continue
            local = targets[rows] - self.ctx.domain_slice(d).start  # (P_d,)
            log_p = self.head_log_prob(self._domain_log_prob(h[:, :, rows], local, d))  # (V, P_d)
            w = torch.tensor(view_weights(self.settings.views, self.settings.view_reading, self.settings.lambdas, d),
                             device=h.device)  # (V,) eq. (15): 1, lambda1, lambda2
            total = total - (w[:, None] * log_p).sum()  # eq. (14) per view
        return total / max(1, len(targets))

    def _domain_log_prob(self, h: torch.Tensor, local: torch.Tensor, domain: int) -> torch.Tensor:
        """h (V, M, P, D), local (P,) targets of ``domain`` -> log P_m^V(target) (V, M, P), full or sampled."""
        if self.cfg.loss == "sampled" and self.cfg.num_sampled < self.ctx.domain_sizes[domain]:
            return self._sampled_log_prob(h, local, domain)
        return self._full_log_prob(self.scaled(h), self.candidates(self.domain_items(domain)), local)

    def position_states(self, seqs: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """seqs (B, L), at (B, L) bool -> h (V, M, P, D): each view's state after the items up to each of the P
        positions where ``at`` is True, in row-major order (eq. 11).

        A view's encoder runs once over the view's own sequence; the state for merged position t is its output
        at the view's latest item at or before t (causal), or the learned empty state when there is none yet.
        """
        view_ids, last, has = self.views(seqs)  # (V, B, L)
        H = self.encode(view_ids)  # (V, M, B, L, D)
        V, M, B, L, D = H.shape
        b, t = at.nonzero(as_tuple=True)  # (P,) each
        slot = b * L + last[:, b, t]  # (V, P) the view's latest item at or before t, flattened over (B, L)
        h = H.reshape(V, M, B * L, D).gather(2, slot[:, None, :, None].expand(V, M, len(b), D))  # (V, M, P, D)
        return torch.where(has[:, b, t][:, None, :, None], h, self.h_empty[:, :, None])

    def final_states(self, history: torch.Tensor) -> torch.Tensor:
        """history (B, L) -> h (V, M, B, D): each view's state after the most recent item."""
        groups = _length_groups(history)
        states = []
        for rows in groups:
            group = history[rows][:, _first_used_column(history[rows]):]
            last = torch.zeros_like(group, dtype=torch.bool)
            last[:, -1] = True
            states.append(self.position_states(group, last))  # (V, M, B_g, D)
        return torch.cat(states, 2)[:, :, torch.argsort(torch.cat(groups))]  # back to the input's row order

    def modality_probs(self, history: torch.Tensor, domain: int, local: torch.Tensor | None = None) -> torch.Tensor:
        """(M, B, K) weighted sum over views of alpha_m P_m^V (eqs. 13, 16); K = all items, ``local`` (K,) items
        of every row, or ``local`` (B, K) items of each row."""
        terms = self.weighted_head_log_probs(self.head_log_probs(history, domain), domain)  # (V, M, B, N)
        if local is not None:
            terms = terms[..., local] if local.dim() == 1 else terms.gather(-1, local.expand(*terms.shape[:2], -1, -1))
        return terms.exp().sum(0)

    def score_domain(self, history: torch.Tensor, domain: int) -> torch.Tensor:
        """eqs. (16)-(17): log(P^X + lambda1 P^Y + lambda2 P^{X+Y}) over the target domain's items, (B, N).

        The log of the paper's score ranks identically, and computed as a log-sum-exp of log-softmaxes it does
        not underflow: sharp heads (learned temperatures) give many items a probability of exactly 0 in float32,
        which would tie them with the target and make the sampled protocol's ">" rank optimistic. The heads are
        summed one at a time over SCORE_ROWS histories at once: the same sum as ``fuse_heads(head_log_probs)``
        without its (V, M, B, N) tensors, which set the peak RSS and made C2DSR's validation slower than an epoch.
        """
        h = self.scaled(self.final_states(history))  # (V, M, B, D)
        cand = self.candidates(self.domain_items(domain))  # (M, N, D)
        log_w = self.log_head_weights(domain)  # (V, M)
        heads = [(v, m) for v in range(log_w.shape[0]) for m in range(log_w.shape[1]) if log_w[v, m] > -math.inf]
        tie = self.domain_tie_break(domain)  # (N,)
        rows = []
        for s in range(0, h.shape[2], SCORE_ROWS):
            total = None
            for v, m in heads:
                z = h[v, m, s:s + SCORE_ROWS] @ cand[m].T  # (r, N) Sim / tau, eq. (12)
                z = z - (z.logsumexp(-1, keepdim=True) - log_w[v, m])  # log(w_V alpha_m P_m^V), eqs. (13), (16)
                total = z if total is None else torch.logaddexp(total, z)
            rows.append(total + tie)  # type: ignore[operator]
        return torch.cat(rows)

    def log_head_weights(self, domain: int, views: list[int] | None = None, modalities: list[int] | None = None,
                         weights: list[float] | None = None) -> torch.Tensor:
        """(V, M) log(w_V alpha_m): the weight of each head in eq. (16), -inf for the heads left out.

        Views or modalities left out of ``views`` / ``modalities`` (indices; None = all) get weight 0.
        ``weights`` replaces the view weights w_V of the config (a diagnostic: re-weighting a trained model's views).
        """
        w = weights or view_weights(self.settings.views, self.settings.view_reading, self.settings.lambdas, domain)
        log_w = torch.tensor([math.log(x) if x > 0 and (views is None or v in views) else -math.inf
                              for v, x in enumerate(w)], device=self.log_alpha.device)  # (V,)
        log_a = self.log_alpha.masked_fill(torch.tensor([modalities is not None and m not in modalities
                                                         for m in range(len(self.modalities))],
                                                        device=self.log_alpha.device), -math.inf)  # (M,)
        return log_w[:, None] + log_a[None, :]

    def weighted_head_log_probs(self, heads: torch.Tensor, domain: int, views: list[int] | None = None,
                                modalities: list[int] | None = None,
                                weights: list[float] | None = None) -> torch.Tensor:
        """heads (V, M, B, N) log P_m^V -> log(w_V alpha_m P_m^V), the terms of eq. (16) (see log_head_weights)."""
        return heads + self.log_head_weights(domain, views, modalities, weights)[:, :, None, None]

    def fuse_heads(self, heads: torch.Tensor, domain: int, views: list[int] | None = None,
                   modalities: list[int] | None = None, weights: list[float] | None = None) -> torch.Tensor:
        """heads (V, M, B, N) -> (B, N) log sum over the kept heads of w_V alpha_m P_m^V, plus the tie-break."""
        terms = self.weighted_head_log_probs(heads, domain, views, modalities, weights)
        return terms.flatten(0, 1).logsumexp(0) + self.domain_tie_break(domain)  # (B, N)

    def domain_tie_break(self, domain: int) -> torch.Tensor:
        """(N,) the jitter added to ``domain``'s log-scores: it breaks exact ties among information-free items
        (float32 log-scores of size ~10-100 resolve ~1e-5)."""
        sl = self.ctx.domain_slice(domain)
        return self.tie_break[sl.start - 1:sl.stop - 1]

    def head_log_probs(self, history: torch.Tensor, domain: int) -> torch.Tensor:
        """log P_m^V over the target domain's items for every (view, modality) head, (V, M, B, N) (eqs. 12-13).

        What each of the V*M heads predicts on its own; ``benchmarks/tema_heads.py`` ranks with each of them.
        """
        h = self.final_states(history)  # (V, M, B, D)
        cand = self.domain_items(domain)  # (M, N, D)
        return torch.stack([self.logits(h[v:v + 1], cand)[0].log_softmax(-1) for v in range(self.n_views)])

    @torch.no_grad()
    def explain(self, history: torch.Tensor, domain: int, local_item_ids: list[list[int]],
                top_tags: int = 5) -> list[list[dict[str, Any]]]:
        """Why each item was recommended after each history (B, L): tags linking it to the history, modality shares.

        ``local_item_ids[b]`` are the recommended items of row b (local indices of ``domain``); one list of
        explanations per row. Tag contribution = w_item[t] * sum over history items of w[t] (shared tags,
        weighted). Modality share = that modality's part of the fused score sum_V w_V alpha_m P_m^V(item); absent
        modalities read 0. All rows are explained in one pass of the encoders and heads.
        """
        K = max(len(ids) for ids in local_item_ids)
        local = torch.tensor([ids + [0] * (K - len(ids)) for ids in local_item_ids], dtype=torch.long,
                             device=history.device)  # (B, K), padded with item 0 (ignored below)
        parts = self.modality_probs(history, domain, local)  # (M, B, K)
        shares = (parts / parts.sum(0).clamp(min=1e-30)).tolist()
        names = self.ctx.extras.get("tag_names", [])
        top_values = top_indices = None
        if "tag" in self.modalities:
            hist = self.items.tag_w[history].sum(1)  # (B, T) tag mass of each history
            contrib = self.items.tag_w[self.ctx.domain_slice(domain).start + local] * hist[:, None]  # (B, K, T)
            top = torch.topk(contrib, min(top_tags, contrib.shape[-1]), dim=-1)  # (B, K, top_tags)
            top_values, top_indices = top.values.tolist(), top.indices.tolist()
        out = []
        for b, ids in enumerate(local_item_ids):
            row = []
            for k in range(len(ids)):
                share = {m: 0.0 for m in ("id", "txt", "img", "tag")}
                share.update({m: shares[i][b][k] for i, m in enumerate(self.modalities)})
                tags: list[dict[str, Any]] = []
                if top_values is not None:
                    tags = [{"tag": names[t] if t < len(names) else str(t), "weight": c}
                            for c, t in zip(top_values[b][k], top_indices[b][k]) if c > 0]
                row.append({"tags": tags, "modality_share": share})
            out.append(row)
        return out

    # ---- what the model reads from the dataset folder ------------------------------------------------------
    @classmethod
    def context_extras(cls, dataset: Any, cfg: Any) -> dict[str, Any]:
        """Frozen features and tag vectors from the dataset folder; missing image features drop "img"."""
        root = dataset.root
        mods = _usable_modalities(dataset, cfg.model.specific["tema"].modalities, log_drop=True)
        extras: dict[str, Any] = {"modalities": mods}
        if any(m in CONTENT for m in mods):
            feats = dataset.features()
            extras["features"] = {m: feats[m] for m in CONTENT if m in mods}
        if "tag" in mods:
            from temarec.tags import load_tag_vectors

            try:
                vectors, names = load_tag_vectors(dataset, selection=cfg.tags.selection,
                                                  representation=cfg.tags.representation)
            except FileNotFoundError as exc:
                raise ValueError(f"model.tema.modalities includes tag but {root} has no tags ({exc}); run "
                                 f"`temarec tags --dataset {root}` or drop tag from model.tema.modalities") from exc
            extras["tag_vectors"], extras["tag_names"] = vectors, list(names)
        return extras

    @classmethod
    def describe_sources(cls, dataset: Any, cfg: Any) -> dict[str, str]:
        m = cfg.model.specific["tema"]
        mods = _usable_modalities(dataset, m.modalities)
        encoders = "none (no text or image modality)"
        if any(x in CONTENT for x in mods):
            encoders = dataset.features_source()
        tags = "none (tag modality off)"
        if "tag" in mods:
            tags = f"{dataset.tag_source()}; selection {cfg.tags.selection}, representation {cfg.tags.representation}"
        weights = modality_weights(m.alpha, mods)
        notes = ["modality weights " + ", ".join(f"{k} {v:.2f}" for k, v in weights.items())]
        dropped = [x for x in m.modalities if x not in mods]
        if dropped or len(mods) < len(MODALITIES):
            notes[0] += f" (renormalised: {', '.join(x for x in MODALITIES if x not in mods)} not used"
            notes[0] += f"; {', '.join(dropped)} requested but missing)" if dropped else ")"
        d0, d1 = dataset.domains
        if m.views == "multi":
            reading = ("X = the target's domain, Y = the other" if m.view_reading == "target"
                       else f"X = {d0} always, Y = {d1}")
            notes.append(f"views S^{d0}, S^{d1}, S^{d0}+{d1} ({reading}; lambdas {m.lambdas[0]}, {m.lambdas[1]})")
        else:
            notes.append(f"one merged view S^{d0}+{d1} (ablation)")
        loss, num_sampled = cfg.model.loss, cfg.model.num_sampled
        if loss == "full" or num_sampled >= max(dataset.domain_sizes):
            notes.append("loss full softmax" + ("" if loss == "full" else f" (model.loss sampled, but num_sampled "
                                                                          f"{num_sampled} covers every domain)"))
        else:
            notes.append(f"loss sampled softmax ({num_sampled} shared uniform negatives of the target's domain"
                         + ("" if m.sampled_correction else ", no log-Q correction") + ")")
        if m.head_loss == "separate" and len(mods) > 1:
            notes.append("head loss separate (alpha-weighted sum of each modality's NLL, not the paper's mixture)")
        temp = "learned" if m.learn_temperature else "fixed"
        sim = "cosine" if m.similarity == "cosine" else "dot-product (not the paper's cosine)"
        notes.append(f"{sim} similarity, temperature {m.temperature} ({temp}, per view and modality)")
        return {"encoders": encoders, "tags": tags, "notes": "; ".join(notes)}


class ChunkedLogSumExp(torch.autograd.Function):
    """log sum_c exp(x_r . w_c) for M heads at once, chunk by chunk, never holding all the logits.

    x (M, R, D) rows, w (M, C, D) candidates, rows per chunk, and (row, column) index pairs of logits left out
    (-inf: a sampled negative that is the row's own target) -> (M, R) log-normalisers. Forward keeps only
    those; backward recomputes each chunk's logits once and forms the softmax in place. Against autograd over
    the stored (M, R, C) logits (a logsumexp or cross-entropy) this saves their memory and several passes over
    them; small chunks stay in cache. It is most of TEMA's head cost: one CPU thread spends more time on the
    nine heads' normalisers than on the nine encoders (docs/DESIGN.md, "Cost").
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, rows: int, drop_r: torch.Tensor,
                drop_c: torch.Tensor) -> torch.Tensor:
        M, R, _ = x.shape
        lse = x.new_empty(M, R)
        for s in range(0, R, rows):
            lse[:, s:s + rows] = _chunk_logits(x, w, s, rows, drop_r, drop_c).logsumexp(-1)
        ctx.save_for_backward(x, w, drop_r, drop_c, lse)
        ctx.rows = rows
        return lse

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w, drop_r, drop_c, lse = ctx.saved_tensors
        lse = lse.masked_fill(lse == float("-inf"), 0.0)  # a row with every logit left out has no gradient
        grad_x, grad_w = torch.empty_like(x), torch.zeros_like(w)
        for s in range(0, x.shape[1], ctx.rows):
            # d lse / d z = softmax(z), times the incoming gradient
            dz = _chunk_logits(x, w, s, ctx.rows, drop_r, drop_c).sub_(lse[:, s:s + ctx.rows, None]).exp_()
            dz.mul_(grad[:, s:s + ctx.rows, None])  # (M, r, C)
            grad_x[:, s:s + ctx.rows] = torch.bmm(dz, w)
            grad_w.baddbmm_(dz.transpose(1, 2), x[:, s:s + ctx.rows])
        return grad_x, grad_w, None, None, None


def _chunk_logits(x: torch.Tensor, w: torch.Tensor, start: int, rows: int, drop_r: torch.Tensor,
                  drop_c: torch.Tensor) -> torch.Tensor:
    """(M, r, C) logits x[:, start:start + rows] @ w^T, -inf at the left-out (row, column) pairs of the chunk."""
    z = torch.bmm(x[:, start:start + rows], w.transpose(1, 2))
    if len(drop_r):
        inside = (drop_r >= start) & (drop_r < start + rows)
        z[:, drop_r[inside] - start, drop_c[inside]] = float("-inf")
    return z


def _log_normaliser(hs: torch.Tensor, cand: torch.Tensor,
                    left_out: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """hs (V, M, P, D), cand (M, C, D) -> (V, M, P) log sum_c exp(h . e_c) per head, through ChunkedLogSumExp.

    ``left_out``: (position, candidate) index pairs excluded from every view's sum (accidental hits).
    """
    V, M, P, D = hs.shape
    x = hs.transpose(0, 1).reshape(M, V * P, D)  # (M, R, D), R = V * P rows: each view's positions
    rows, cols = left_out if left_out is not None else (hs.new_empty(0, dtype=torch.long),) * 2
    rows = (rows + torch.arange(V, device=hs.device)[:, None] * P).flatten()  # the same pairs in every view
    chunk = max(MIN_CHUNK_ROWS, LOGIT_CHUNK // (M * cand.shape[1]))  # ~LOGIT_CHUNK logits per chunk
    lse = ChunkedLogSumExp.apply(x, cand, chunk, rows, cols.repeat(V))  # (M, R)
    return lse.view(M, V, P).transpose(0, 1)


def _length_groups(seqs: torch.Tensor) -> list[torch.Tensor]:
    """Row indices sorted by length, GROUP_ROWS at a time: each group is then trimmed to its own longest row.

    Exact (padding changes nothing); on ABXI Food-Kitchen it skips 44% of the positions of batches of 256.
    """
    return list(torch.argsort((seqs > 0).sum(1), stable=True).split(GROUP_ROWS))


def _first_used_column(seqs: torch.Tensor) -> int:
    """Leading columns that are padding in every row change nothing (positions count from the right): skip them.

    Returns the first column holding an item in some row (the last column when there is none).
    """
    used = (seqs > 0).any(0).nonzero()
    return int(used[0]) if len(used) else seqs.shape[1] - 1


def _usable_modalities(dataset: Any, requested: tuple[str, ...], log_drop: bool = False) -> tuple[str, ...]:
    """``requested`` minus "img" when the feature store has no image features (logged); errors name the command."""
    mods = [m for m in MODALITIES if m in requested]
    root = dataset.root
    if any(m in CONTENT for m in mods):
        try:
            available = dataset.feature_meta()["modalities"]
        except FileNotFoundError as exc:
            raise ValueError(f"model.tema.modalities includes {[m for m in mods if m in CONTENT]} but {root} has no "
                             f"features; run `temarec features --dataset {root}` (or set model.tema.modalities to "
                             "leave them out)") from exc
        if "txt" in mods and "txt" not in available:
            raise ValueError(f"model.tema.modalities includes txt but {root}/features has no text features; run "
                             f"`temarec features --dataset {root}` with a text encoder")
        if "img" in mods and "img" not in available:
            if log_drop:
                log.info("no image features in %s/features: TEMA drops the image modality and renormalises the "
                         "modality weights", root)
            mods.remove("img")
    if not mods:
        raise ValueError(f"no usable modality left of {requested}; add id or compute features")
    return tuple(mods)
