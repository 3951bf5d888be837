"""MAN (Lin et al., "Mixed Attention Network for Cross-domain Sequential Recommendation", WSDM 2024).

Shape legend: B batch, L sequence length, T scored positions per row, D hidden size, G user groups, N items of a
domain, C candidate items.

Local/global encoding layer: each domain's own items (the *local* sequence, domain-specific item table) and the
merged history (the *global* sequence, shared item table) each go through a SASRec encoder. Mixed attention layer,
for the target domain d: sequence-fusion attention (local states query the global ones), group-prototype
attention (G learned prototypes shared by both domains gather the local sequence; the user is matched against
them), and item-similarity attention (the candidate item attends over the history's local + global input
embeddings). Local/global prediction layer: a local tower over [local mean, fused mean, group] and a global tower
over the global mean give two user vectors scored against the local and global item tables; the final score is
local + global + item-similarity (the official code adds the local and global logits).

The official prediction layers are MLPs over [candidate embedding ⊕ user features] (a CTR model trained against
9 sampled negatives); ranking every item of a domain that way costs one MLP pass per (user, item). We read them as
towers whose output is dotted with the item tables, and keep the item-similarity term candidate-aware (one
attention per candidate). Every reading is in docs/DESIGN.md ("MAN").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from temarec.config import ModelConfig
from temarec.models.base import ModelContext, SequentialModel, domain_of_ids, next_item_loss
from temarec.models.domain_views import (DomainView, domain_view, gather_time, local_ids, prefix_mean,
                                         view_encoders)
from temarec.models.attention import FeedForward
from temarec.models.softmax import describe_loss, draw_negatives, log_q_correction


@dataclass(frozen=True)
class MANSettings:
    """``model.man.*``; defaults are the official code's (examples/00_quick_start/sequential.py)."""

    num_groups: int = 10  # user-group prototypes (official --num_groups 10)
    # the official fusion and group attentions read the encoders' states through tf.stop_gradient
    stop_gradient: bool = True
    # candidate-aware item-similarity attention (eval: every item of the domain; training: one position of each
    # row, see similarity_position, against model.num_sampled shared negatives; docs/DESIGN.md "MAN")
    item_similarity: bool = True
    # the item-similarity attention reads the most recent positions only (official max_seq_length 20): one
    # attention per (user, candidate) is the model's costliest part when every item of a domain is scored
    similarity_window: int = 20
    eval_chunk: int = 16_000_000  # rows x candidates x keys per item-similarity chunk when scoring (memory bound)
    # where each training row trains the full score (towers + item similarity): at one "random" position with a
    # target of the domain, drawn anew every step (the official code trains on every prefix), or at its "last"
    similarity_position: str = "random"
    # what the towers read of each sequence at the scored time: "mean" of the states so far (the official
    # hist_embedding_mean) or the "last" state there (SASRec's read-out); docs/DESIGN.md "MAN"
    readout: str = "mean"

    def __post_init__(self) -> None:
        if self.num_groups < 1:
            raise ValueError(f"model.man.num_groups must be >= 1, got {self.num_groups}")
        if self.similarity_window < 1:
            raise ValueError(f"model.man.similarity_window must be >= 1, got {self.similarity_window}")
        if self.eval_chunk < 1:
            raise ValueError(f"model.man.eval_chunk must be >= 1, got {self.eval_chunk}")
        if self.similarity_position not in ("random", "last"):
            raise ValueError(f"model.man.similarity_position must be random or last, got {self.similarity_position!r}")
        if self.readout not in ("mean", "last"):
            raise ValueError(f"model.man.readout must be mean or last, got {self.readout!r}")


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """q (..., Q, D), k/v (..., K, D), allowed (..., Q, K) -> (..., Q, D); a query with no allowed key reads 0."""
    scores = (q @ k.transpose(-1, -2)) / q.size(-1) ** 0.5  # (..., Q, K)
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)
    return weights @ v


class FusionAttention(nn.Module):
    """Sequence-fusion attention: each local state attends over the global states up to its own time, then an
    FFN; both with residuals (official _cross_choronological_modeling)."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.ln_q, self.ln_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.ffn = FeedForward(dim, dropout)

    def forward(self, local: torch.Tensor, glob: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """local (B, L, D) view states, glob (B, L, D) merged states, allowed (B, L, L) -> (B, L, D)."""
        a = self.ln_q(local)
        y = a + masked_attention(self.q(a), self.k(glob), self.v(glob), allowed)  # (B, L, D)
        return y + self.ffn(self.ln_ffn(y))


class GroupAttention(nn.Module):
    """Group-prototype attention (official _cross_group_modeling): the G prototypes gather the local sequence
    (construction), then the user's local summary is matched against the gathered groups (matching)."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.ln_proto, self.ln_user = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ln_build, self.ln_match = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.build_k, self.build_v = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.match_q, self.match_k, self.match_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.build_ffn, self.match_ffn = FeedForward(dim, dropout), FeedForward(dim, dropout)

    def forward(self, prototypes: torch.Tensor, local: torch.Tensor, valid: torch.Tensor, latest: torch.Tensor,
                user: torch.Tensor) -> torch.Tensor:
        """prototypes (G, D), local (B, L, D) view states, valid (B, L) view items, latest (B, T) the view index
        of the latest item at each scored time, user (B, T, D) the local summary there -> (B, T, D)."""
        p = self.ln_proto(prototypes)  # (G, D) queries as they are (official: no projection)
        groups = p + self.gather_past(p, self.build_k(local), self.build_v(local), valid, latest)  # (B, T, G, D)
        groups = groups + self.build_ffn(self.ln_build(groups))
        u = self.match_q(self.ln_user(user))[:, :, None]  # (B, T, 1, D)
        weights = torch.softmax((u * self.match_k(groups)).sum(-1) / u.size(-1) ** 0.5, dim=-1)  # (B, T, G)
        picked = (weights[..., None] * self.match_v(groups)).sum(2)  # (B, T, D)
        return picked + self.match_ffn(self.ln_match(picked))

    @staticmethod
    def gather_past(p: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor,
                    latest: torch.Tensor) -> torch.Tensor:
        """Each prototype's attention over the view items up to each scored time -> (B, T, G, D), zeros where
        there is none yet. The queries are fixed, so softmax over a growing prefix is a ratio of running sums
        (exact, up to exp(score - row max) underflowing for a prefix whose scores sit > 87 below the row's best,
        where the group reads 0)."""
        scores = (p @ keys.transpose(1, 2)) / p.size(-1) ** 0.5  # (B, G, L)
        scores = scores.masked_fill(~valid[:, None], float("-inf"))
        top = scores.amax(-1, keepdim=True).clamp(min=-1e30).detach()  # (B, G, 1); rows without items stay finite
        e = torch.exp(scores - top)  # (B, G, L), 0 at padding
        num = (e[..., None] * values[:, None]).cumsum(2)  # (B, G, L, D)
        den = e.cumsum(2)[..., None]  # (B, G, L, 1)
        mean = num / den.clamp(min=1e-30)  # (B, G, L, D)
        index = latest[:, None, :, None].expand(-1, p.size(0), -1, values.size(-1))  # (B, G, T, D)
        return mean.gather(2, index).transpose(1, 2)  # (B, T, G, D)


class ItemSimilarity(nn.Module):
    """Item-similarity attention: the candidate's local embedding queries the history's input embeddings
    (local + global item/position embeddings of each position, the official local_PE_emb + global_PE_emb);
    score(i) = sum_k softmax_k(q_i . k_k) (W_o x_k) . e_i."""

    def __init__(self, dim: int):
        super().__init__()
        self.q, self.k, self.o = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """x (B, L, D) key inputs, allowed (B, L), cand (C, D) shared or (B, C, D) per-row candidates -> (B, C)."""
        logits = (self.q(cand) @ self.k(x).transpose(1, 2)) / x.size(-1) ** 0.5  # (B, C, L)
        weights = torch.softmax(logits.masked_fill(~allowed[:, None], float("-inf")), dim=-1).nan_to_num(0.0)
        values = self.o(x) @ cand.transpose(-1, -2)  # (B, L, C) each key's vote for each candidate
        return (weights * values.transpose(1, 2)).sum(-1)  # (B, C)


@dataclass
class Features:
    """The user side at scored positions: local and global tower outputs, and the item-similarity keys."""

    local: torch.Tensor  # (B, T, D) local tower output for the target domain
    glob: torch.Tensor  # (B, T, D) global tower output
    keys: torch.Tensor  # (B, L, D) item-similarity key inputs for the target domain at every position
    key_valid: torch.Tensor  # (B, L) non-padding positions

    def window(self, rows: torch.Tensor, t: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys of rows ``rows`` (R,) over the ``width`` positions ending at ``t`` (R,) -> (R, W, D) keys,
        (R, W) valid (positions before the row's start are invalid)."""
        idx = t[:, None] - (width - 1) + torch.arange(width, device=t.device)  # (R, W)
        inside = idx >= 0
        idx = idx.clamp(min=0)
        return self.keys[rows[:, None], idx], self.key_valid[rows[:, None], idx] & inside


class MAN(SequentialModel):
    """Local/global SASRec encoders -> fusion, group and item-similarity attention -> local + global towers."""

    name = "man"
    settings_class = MANSettings
    not_factorizable = "scores each candidate with its own item-similarity attention"

    @classmethod
    def describe_training(cls, dataset: Any, cfg: Any) -> str:
        s = cfg.model.specific[cls.name]
        towers = super().describe_training(dataset, cfg)
        if not s.item_similarity:
            return f"towers: {towers}"
        m = cfg.model  # the item-similarity term is always sampled (one attention per candidate)
        sim = describe_loss("sampled", m.num_sampled, m.negative_power, tuple(dataset.domain_sizes))
        return f"towers: {towers}; full score at one position per row ({s.similarity_position}): {sim}"

    def __init__(self, cfg: ModelConfig, ctx: ModelContext):
        super().__init__(cfg, ctx)
        D, s = cfg.dim, self.settings
        self.global_encoder, self.local_encoders = view_encoders(cfg, ctx)
        self.prototypes = nn.Parameter(torch.randn(s.num_groups, D) * 0.02)  # shared by both domains
        self.fusion = nn.ModuleList(FusionAttention(D, cfg.dropout) for _ in range(2))
        self.groups = nn.ModuleList(GroupAttention(D, cfg.dropout) for _ in range(2))
        self.similarity = nn.ModuleList(ItemSimilarity(D) for _ in range(2))
        self.local_towers = nn.ModuleList(tower(3 * D, D) for _ in range(2))
        self.global_tower = tower(D, D)

    def features(self, seqs: torch.Tensor, at: torch.Tensor, domain: int,
                 encoded: tuple[torch.Tensor, torch.Tensor] | None = None) -> Features:
        """seqs (B, L) merged histories, at (B, T) merged positions to score -> the target ``domain``'s user side.
        ``encoded``: the global encoder's (states, inputs) of ``seqs`` when already computed."""
        n_first = self.ctx.domain_sizes[0]
        glob, glob_in = encoded if encoded is not None else self.global_encoder(seqs)  # (B, L, D) each
        view = domain_view(seqs, domain, n_first)
        local, local_in = self.local_encoders[domain](local_ids(view.ids, domain, n_first))  # (B, L, D) each
        read = (lambda x: x.detach()) if self.settings.stop_gradient else (lambda x: x)
        valid, latest = seqs > 0, view.latest.gather(1, at)  # (B, L), (B, T)
        local_mean = self.summary(local, view.valid, latest)  # (B, T, D)
        glob_mean = self.summary(glob, valid, at)  # (B, T, D)
        fused = self.fusion[domain](read(local), read(glob), self.fusion_mask(view, valid))  # (B, L, D)
        fused_mean = self.summary(fused, view.valid, latest)  # (B, T, D)
        group = self.groups[domain](self.prototypes, read(local), view.valid, latest, read(local_mean))  # (B, T, D)
        user_local = self.local_towers[domain](torch.cat([local_mean, fused_mean, group], dim=-1))
        keys = glob_in + torch.zeros_like(glob_in).scatter_add(  # local inputs back at their merged positions
            1, view.time[..., None].expand_as(local_in), local_in * view.valid[..., None])
        return Features(local=user_local, glob=self.global_tower(glob_mean), keys=keys, key_valid=valid)

    def summary(self, states: torch.Tensor, valid: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """states (B, L, D), valid (B, L), index (B, T) -> (B, T, D): the mean of the valid states up to each
        index, or the state at the index (``readout``); 0 where there is none yet (a padding slot's fused state
        may have read later keys, see fusion_mask)."""
        if self.settings.readout == "last":
            return gather_time(states * valid[..., None].to(states.dtype), index)
        return gather_time(prefix_mean(states, valid), index)

    @staticmethod
    def fusion_mask(view: DomainView, valid: torch.Tensor) -> torch.Tensor:
        """(B, L, L): view item j may attend merged key k when k is an item at or before j's time; a padding
        query sees every key (its output is never read, and an all-masked row would be NaN)."""
        idx = torch.arange(valid.size(1), device=valid.device)
        return (valid[:, None, :] & (idx <= view.time[..., None])) | ~view.valid[..., None]

    def local_table(self, domain: int) -> torch.Tensor:
        return self.local_encoders[domain].item_emb.weight[1:]  # (N, D)

    def global_table(self, domain: int) -> torch.Tensor:
        return self.global_encoder.item_emb.weight[self.ctx.domain_slice(domain)]  # (N, D)

    def training_loss(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs (B, L+1): the towers' next-item loss at every position + the full score's at one position of
        each row (``similarity_position``)."""
        inputs, targets = seqs[:, :-1], seqs[:, 1:]  # (B, L) each
        B, L = inputs.shape
        dom = domain_of_ids(targets, self.ctx.domain_sizes[0])  # (B, L)
        at = torch.arange(L, device=seqs.device).expand(B, L)
        users, wanted, sim_loss, n_sim = [], [], targets.new_zeros((), dtype=torch.float), 0
        encoded = self.global_encoder(inputs)  # (B, L, D) states and inputs, shared by both domains' features
        for d in (0, 1):
            feats = self.features(inputs, at, d, encoded)
            sel = (targets > 0) & (dom == d)  # (B, L)
            users.append(torch.cat([feats.local[sel], feats.glob[sel]], dim=-1))  # (P_d, 2D)
            wanted.append(targets[sel])
            if not self.settings.item_similarity:
                continue
            rows, t = self.similarity_positions(sel)
            if rows.numel():
                sim_loss = sim_loss + self.position_loss(feats, rows, t, targets[rows, t], d) * rows.numel()
                n_sim += rows.numel()
        pad = self.global_encoder.item_emb.weight.new_zeros(1, 2 * self.cfg.dim)
        items = torch.cat([pad, *[torch.cat([self.local_table(d), self.global_table(d)], dim=-1) for d in (0, 1)]])
        tower_loss = next_item_loss(torch.cat(users), torch.cat(wanted), items, self.ctx, self.cfg)
        return tower_loss + sim_loss / max(1, n_sim)

    def similarity_positions(self, sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sel (B, L) positions with a target of the domain -> rows (R,) and one position t (R,) of each: the last
        position where it is selected, or a uniform draw among the selected ones."""
        if self.settings.similarity_position == "last":
            rows = torch.nonzero(sel[:, -1], as_tuple=True)[0]
            return rows, torch.full_like(rows, sel.size(1) - 1)
        rows = torch.nonzero(sel.any(1), as_tuple=True)[0]
        draw = torch.rand(sel.shape, device=sel.device).masked_fill(~sel, -1.0)  # (B, L)
        return rows, draw[rows].argmax(1)

    def position_loss(self, feats: Features, rows: torch.Tensor, t: torch.Tensor, target: torch.Tensor,
                      domain: int) -> torch.Tensor:
        """Cross-entropy of the full score (towers + item similarity) of rows ``rows`` (R,) at positions ``t``
        (R,), target (R,) merged ids of ``domain``, against min(num_sampled, N) shared negatives, drawn as the
        harness loss draws them (``model.negative_power``; log-Q corrected when not uniform)."""
        n, start = self.ctx.domain_sizes[domain], self.ctx.domain_slice(domain).start
        log_q = self.ctx.negative_log_q(domain, self.cfg.negative_power, target.device)
        neg = draw_negatives(n, min(self.cfg.num_sampled, n), log_q, target.device)  # (S,) local indices
        cand = torch.cat([(target - start)[:, None], neg.expand(len(rows), -1)], dim=1)  # (R, 1 + S)
        local_e, glob_e = self.local_table(domain)[cand], self.global_table(domain)[cand]  # (R, 1 + S, D)
        u_l, u_g = feats.local[rows, t], feats.glob[rows, t]  # (R, D)
        logits = (local_e @ u_l[..., None] + glob_e @ u_g[..., None]).squeeze(-1)  # (R, 1 + S)
        keys, valid = feats.window(rows, t, self.settings.similarity_window)  # (R, W, D), (R, W)
        logits = logits + self.similarity[domain](keys, valid, local_e)
        if log_q is not None:
            logits = logits + log_q_correction(log_q, neg.numel())[cand]
        hit = cand[:, 1:] == cand[:, :1]  # a negative that is the target is not a negative
        logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(hit, float("-inf"))], dim=1)
        return F.cross_entropy(logits, torch.zeros(len(rows), dtype=torch.long, device=logits.device))

    def score_domain(self, history: torch.Tensor, domain: int) -> torch.Tensor:
        """history (B, L) -> (B, N_domain): local + global tower scores + item similarity at the last position."""
        B, L = history.shape
        feats = self.features(history, torch.full((B, 1), L - 1, device=history.device), domain)
        local_e, glob_e = self.local_table(domain), self.global_table(domain)  # (N, D)
        scores = feats.local[:, 0] @ local_e.T + feats.glob[:, 0] @ glob_e.T  # (B, N)
        if not self.settings.item_similarity:
            return scores
        keys, valid = feats.window(torch.arange(B, device=history.device),
                                   torch.full((B,), L - 1, device=history.device), self.settings.similarity_window)
        step = max(1, self.settings.eval_chunk // max(1, local_e.size(0) * keys.size(1)))  # rows per chunk
        sim = [self.similarity[domain](keys[i:i + step], valid[i:i + step], local_e) for i in range(0, B, step)]
        return scores + torch.cat(sim)


def tower(n_in: int, dim: int) -> nn.Module:
    """A prediction-layer tower: MLP n_in -> D -> ReLU -> D (official layer_sizes feed a logit; here a vector)."""
    return nn.Sequential(nn.Linear(n_in, dim), nn.ReLU(), nn.Linear(dim, dim))
