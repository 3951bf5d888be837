"""Tri-CDR (Ma et al., "Triple Sequence Learning for Cross-domain Recommendation", TOIS 2024, arXiv 2304.05027).

Shape legend: B batch, L sequence length, D hidden size, N items of a domain, P scored positions, K keys.

Three sequences of one user are encoded independently: the *mixed* sequence (both domains, merged), the
*source* sequence (the other domain's items) and the *target* sequence (the target domain's items); each has its
own SASRec and item table. Triple cross-domain attention (TCA) reads each of the three with a DIN-style
attention whose query is the latest target-domain state and whose MLP also sees the mean of the mixed states (the
user's global preference); the three read-outs are fused by an MLP into the user vector, scored against the
target domain's item table by scaled cosine. Triple contrastive learning (TCL) adds, on each row's last
position, InfoNCE between the three projected read-outs (coarse-grained similarity) and a triplet loss that puts
the mixed read-out closer to the source one than the target read-out is (fine-grained distinction).

Tri-CDR is one-directional (source -> target). Here both domains are targets: the three encoders are shared (one
per domain, one mixed) and each target domain has its own TCA, fusion and TCL projection heads. Every reading
we had to make is in docs/DESIGN.md ("Tri-CDR").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from temarec.config import ModelConfig
from temarec.models.base import ModelContext, SequentialModel, domain_of_ids, next_item_loss
from temarec.models.domain_views import domain_view, local_ids, prefix_mean, view_encoders


@dataclass(frozen=True)
class TriCDRSettings:
    """``model.tricdr.*``; defaults are the official code's (Tri_CDR.py argparse)."""

    scale: float = 5.0  # logits = scale * cos(user, item) (official --temperature 5)
    cl_weight: float = 1.0  # weight of TCL's InfoNCE part (official --cl_weight)
    triplet_weight: float = 1.0  # weight of TCL's triplet part (official --triplet_weight)
    triplet_margin: float = 1.0  # (official --triplet_margin)
    infonce_temperature: float = 0.1  # (official --info_NCE_temperature)
    # InfoNCE pair weights mixed-source, mixed-target, source-target, normalised to sum 1 (official --rate_*)
    pair_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    attention_hidden: tuple[int, int] = (80, 40)  # TCA's DIN MLP: 5D -> 80 -> 40 -> 1 (PReLU)

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ValueError(f"model.tricdr.scale must be > 0, got {self.scale}")
        if self.cl_weight < 0 or self.triplet_weight < 0 or self.triplet_margin < 0:
            raise ValueError("model.tricdr.cl_weight, triplet_weight and triplet_margin must be >= 0")
        if self.infonce_temperature <= 0:
            raise ValueError(f"model.tricdr.infonce_temperature must be > 0, got {self.infonce_temperature}")
        if len(self.pair_weights) != 3 or min(self.pair_weights) < 0 or sum(self.pair_weights) <= 0:
            raise ValueError(f"model.tricdr.pair_weights needs three non-negative weights, not all 0; "
                             f"got {self.pair_weights}")
        if len(self.attention_hidden) != 2 or min(self.attention_hidden) < 1:
            raise ValueError(f"model.tricdr.attention_hidden needs two sizes >= 1, got {self.attention_hidden}")


class DINAttention(nn.Module):
    """TCA's attention over one sequence: score(k) = MLP([k, q, k * q, q - k, m]), softmax over the allowed keys,
    read-out = sum of weight * k (the official code's DINAttentionLayer_withmixattn).

    Only allowed (query, key) pairs are scored (on ABXI about a quarter of the dense grid), with a softmax per
    query over its pairs. The first layer acts on the concatenation; it is applied piecewise (k, q, k*q, q-k and
    m through their own column blocks of the same weight), the key-only part once per key, not once per pair.
    """

    def __init__(self, dim: int, hidden: tuple[int, int]):
        super().__init__()
        self.dim = dim
        self.first = nn.Linear(5 * dim, hidden[0])
        self.second = nn.Linear(hidden[0], hidden[1])
        self.out = nn.Linear(hidden[1], 1)
        self.slopes = nn.Parameter(torch.full((2,), 0.25))  # the two PReLUs (one slope each, torch's default)

    def forward(self, q: torch.Tensor, m: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor,
                allowed: torch.Tensor) -> torch.Tensor:
        """q, m (P, D); keys (B, K, D) of the batch; rows (P,) each query's batch row; allowed (P, K) -> (P, D).

        A query with no allowed key (e.g. no source-domain item yet) reads out zeros.
        """
        w_k, w_q, w_kq, w_diff, w_m = self.first.weight.split(self.dim, dim=1)  # (H, D) each
        pair_q, pair_k = torch.nonzero(allowed, as_tuple=True)  # (E,) each: the scored pairs
        key = keys[rows[pair_q], pair_k]  # (E, D)
        per_key = (keys @ (w_k - w_diff).T)[rows[pair_q], pair_k]  # (E, H)
        per_query = q @ (w_q + w_diff).T + m @ w_m.T + self.first.bias  # (P, H)
        h = per_key + per_query[pair_q] + (key * q[pair_q]) @ w_kq.T  # (E, H) = first([k, q, k*q, q-k, m])
        h = self.second(prelu(h, self.slopes[0]))
        score = self.out(prelu(h, self.slopes[1])).squeeze(-1)  # (E,)
        weight = segment_softmax(score, pair_q, q.size(0))  # (E,)
        return torch.zeros_like(q).index_add(0, pair_q, weight[:, None] * key)  # (P, D)


def prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """PReLU with one slope (torch's own PReLU backward is ~5x slower on CPU here)."""
    return x.clamp(min=0) + slope * x.clamp(max=0)


def segment_softmax(score: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
    """score (E,) of pairs grouped by segment (E,) in [0, n) -> softmax within each segment, (E,)."""
    top = torch.full((n,), float("-inf"), dtype=score.dtype, device=score.device)
    top = top.scatter_reduce(0, segment, score.detach(), reduce="amax")  # (n,) a shift for stability only
    e = torch.exp(score - top[segment])  # (E,)
    total = torch.zeros(n, dtype=score.dtype, device=score.device).index_add(0, segment, e)  # (n,)
    return e / total[segment]


def projector(dim: int) -> nn.Module:
    """TCL's projection of one read-out (official map_*_cl1: Linear -> ReLU -> Linear)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))


class TargetHead(nn.Module):
    """Everything Tri-CDR owns for one target domain: TCA over the three sequences, fusion, TCL projectors."""

    def __init__(self, dim: int, hidden: tuple[int, int]):
        super().__init__()
        self.attend = nn.ModuleDict({role: DINAttention(dim, hidden) for role in ("mixed", "source", "target")})
        # official log_feat_map1/2: [mixed, source, target] (3D) -> D -> LeakyReLU -> D
        self.fuse = nn.Sequential(nn.Linear(3 * dim, dim), nn.LeakyReLU(), nn.Linear(dim, dim))
        self.project = nn.ModuleDict({role: projector(dim) for role in ("mixed", "source", "target")})


@dataclass
class Encoded:
    """Encoder states of a batch of merged histories: mixed (B, L, D) and each domain's view."""

    mixed: torch.Tensor
    mixed_valid: torch.Tensor
    mixed_mean: torch.Tensor  # (B, L, D) mean of the mixed states at or before each position
    views: list  # per domain: DomainView
    states: list  # per domain: (B, L, D) view states


class TriCDR(SequentialModel):
    """Mixed / per-domain SASRec encoders -> TCA read-outs -> fusion -> scaled cosine with the target's items."""

    name = "tricdr"
    settings_class = TriCDRSettings
    not_factorizable = "scores with a user vector computed per target domain by its own TCA head"

    def __init__(self, cfg: ModelConfig, ctx: ModelContext):
        super().__init__(cfg, ctx)
        D, s = cfg.dim, self.settings
        self.mixed, self.domain_encoders = view_encoders(cfg, ctx)
        self.heads = nn.ModuleList(TargetHead(D, s.attention_hidden) for _ in range(2))

    def encode(self, seqs: torch.Tensor) -> Encoded:
        """seqs (B, L) merged histories -> the three encoders' states."""
        n_first = self.ctx.domain_sizes[0]
        mixed, _ = self.mixed(seqs)  # (B, L, D)
        views = [domain_view(seqs, d, n_first) for d in (0, 1)]
        states = [self.domain_encoders[d](local_ids(v.ids, d, n_first))[0] for d, v in enumerate(views)]
        valid = seqs > 0
        return Encoded(mixed=mixed, mixed_valid=valid, mixed_mean=prefix_mean(mixed, valid), views=views,
                       states=states)

    def read_out(self, enc: Encoded, rows: torch.Tensor, times: torch.Tensor, domain: int
                 ) -> dict[str, torch.Tensor]:
        """TCA at merged positions (rows, times) (P,) each, for target ``domain`` -> {role: (P, D)}."""
        head = self.heads[domain]
        tgt_view, src_view = enc.views[domain], enc.views[1 - domain]
        tgt_at = tgt_view.latest[rows, times]  # (P,) view index of the latest target-domain item
        src_at = src_view.latest[rows, times]  # (P,)
        q = enc.states[domain][rows, tgt_at]  # (P, D) the latest target-domain state
        m = enc.mixed_mean[rows, times]  # (P, D) the user's global preference
        idx = torch.arange(enc.mixed.size(1), device=rows.device)  # (K,)
        allowed = {
            "mixed": enc.mixed_valid[rows] & (idx <= times[:, None]),  # (P, K) the past, this item included
            "source": src_view.valid[rows] & (idx <= src_at[:, None]),
            "target": tgt_view.valid[rows] & (idx <= tgt_at[:, None]),
        }
        keys = {"mixed": enc.mixed, "source": enc.states[1 - domain], "target": enc.states[domain]}  # (B, K, D)
        return {role: head.attend[role](q, m, keys[role], rows, allowed[role]) for role in ("mixed", "source", "target")}

    def user_vector(self, parts: dict[str, torch.Tensor], domain: int) -> torch.Tensor:
        """{role: (P, D)} -> (P, D) scaled unit user vectors (official: cos * temperature)."""
        u = self.heads[domain].fuse(torch.cat([parts["mixed"], parts["source"], parts["target"]], dim=-1))
        return self.settings.scale * F.normalize(u, dim=-1)

    def item_matrix_normalised(self) -> torch.Tensor:
        """(1 + n_items, D): row 0 zero, then each domain's items from its own encoder's table, unit length."""
        pad = self.domain_encoders[0].item_emb.weight[:1] * 0.0
        rows = [F.normalize(enc.item_emb.weight[1:], dim=-1) for enc in self.domain_encoders]
        return torch.cat([pad, *rows], dim=0)

    def training_loss(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs (B, L+1): next-item loss at every position (target's domain head) + TCL on each row's last one."""
        inputs, targets = seqs[:, :-1], seqs[:, 1:]  # (B, L) each
        enc = self.encode(inputs)
        dom = domain_of_ids(targets, self.ctx.domain_sizes[0])  # (B, L)
        L = targets.size(1)
        users, wanted, tcl, n_last = [], [], inputs.new_zeros((), dtype=torch.float), 0
        for d in (0, 1):
            rows, times = torch.nonzero((targets > 0) & (dom == d), as_tuple=True)  # (P_d,) each
            if rows.numel() == 0:
                continue
            parts = self.read_out(enc, rows, times, d)
            users.append(self.user_vector(parts, d))
            wanted.append(targets[rows, times])
            last = times == L - 1
            if last.any():
                tcl = tcl + self.contrastive_loss({r: p[last] for r, p in parts.items()}, d) * int(last.sum())
                n_last += int(last.sum())
        if not users:
            return sum(p.sum() for p in self.parameters()) * 0.0  # connected, so backward still runs
        rec = next_item_loss(torch.cat(users), torch.cat(wanted), self.item_matrix_normalised(), self.ctx, self.cfg)
        return rec + tcl / max(1, n_last)

    def contrastive_loss(self, parts: dict[str, torch.Tensor], domain: int) -> torch.Tensor:
        """TCL over n rows' read-outs {role: (n, D)} -> scalar."""
        s = self.settings
        z = {role: self.heads[domain].project[role](p) for role, p in parts.items()}  # (n, D) each
        w = torch.tensor(s.pair_weights, dtype=z["mixed"].dtype, device=z["mixed"].device)
        w = w / w.sum()
        pairs = (("mixed", "source"), ("mixed", "target"), ("source", "target"))
        infonce = sum(w[i] * info_nce(z[a], z[b], s.infonce_temperature) for i, (a, b) in enumerate(pairs))
        # official: TripletMarginLoss(anchor=source, positive=mixed, negative=target)
        triplet = F.triplet_margin_loss(z["source"], z["mixed"], z["target"], margin=s.triplet_margin)
        return s.cl_weight * infonce + s.triplet_weight * triplet

    def score_domain(self, history: torch.Tensor, domain: int) -> torch.Tensor:
        """history (B, L) -> (B, N_domain) scaled cosines of the user vector at the last position."""
        enc = self.encode(history)
        B, L = history.shape
        rows = torch.arange(B, device=history.device)
        u = self.user_vector(self.read_out(enc, rows, torch.full_like(rows, L - 1), domain), domain)  # (B, D)
        items = F.normalize(self.domain_encoders[domain].item_emb.weight[1:], dim=-1)  # (N, D)
        return u @ items.T


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR) between paired rows of a and b (n, D): each row's pair against the other 2n - 2 rows.

    The official NTXentLoss: unit vectors, exp(cos / t) summed over every other row (the pair included) as the
    denominator; cross-entropy over those logits is the same quantity. Zero for n < 2 (no negatives).
    """
    n = a.size(0)
    if n < 2:
        return a.sum() * 0.0
    z = F.normalize(torch.cat([a, b]), dim=-1)  # (2n, D)
    logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))  # (2n, 2n) a row is not its own negative
    pair = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(a.device)  # (2n,)
    return F.cross_entropy(logits, pair)
