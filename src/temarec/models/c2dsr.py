"""C2DSR (Cao et al., CIKM 2022, "Contrastive Cross-Domain Sequential Recommendation") over two domains.

Shape legend: B batch, L sequence length, D hidden size, N items of a domain, I all items + 1 (padding row 0),
E graph edges, P scored positions.

Four parts, top to bottom (docs/DESIGN.md, "C2DSR", records every reading of the paper and its official code):

1. Item graphs from the training sequences: one over both domains (consecutive items of the merged sequence),
   one per domain (consecutive items of that domain only), each row-normalised. A GCN without weights
   (propagation + bias, layer outputs averaged) turns each ID table into graph-aware item vectors.
2. Three SASRec encoders over the merged sequence (X+Y) and the two single-domain views (X, Y). The views keep
   the merged positions, with the other domain's items as padding, so position t of every view sees the same
   prefix of the history.
3. Two objectives per domain d: the cross-domain one predicts the next item from the merged state, the
   single-domain one predicts the next item of d from (merged state + d's state) at d's positions. Heads are
   linear classifiers over d's items (weights and a bias per item), softmax within d.
4. The contrastive infomax term: a bilinear discriminator tells the user's single-domain X representation
   paired with the merged representation pooled over the user's Y positions (real) from the same pairing
   with a corrupted merged sequence whose X items were replaced by random X items (fake); and symmetrically.
   loss = lam * (cross + single) + (1 - lam) * (infomax X + infomax Y).

Scoring domain d: head_d(merged state after the last item + d's state at the user's last item of d).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from temarec.config import ModelConfig
from temarec.models.base import ModelContext, SequentialModel, domain_of_ids, next_item_loss
from temarec.models.attention import Block, attention_mask
from temarec.models.dropout import Dropout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class C2DSRSettings:
    """``model.c2dsr.*``; defaults are the official code's (train_rec.py, trainer.py)."""

    gnn_layers: int = 1  # --GNN 1
    lam: float = 0.7  # --lambda: weight of the next-item losses; the infomax terms get 1 - lam
    loss_positions: int = 10  # trainer.py `used = 10`: next-item losses on the most recent positions; 0 = all

    def __post_init__(self) -> None:
        if self.gnn_layers < 0:
            raise ValueError(f"model.c2dsr.gnn_layers must be >= 0 (0 = no graph), got {self.gnn_layers}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"model.c2dsr.lam must be in [0, 1], got {self.lam}")
        if self.loss_positions < 0:
            raise ValueError(f"model.c2dsr.loss_positions must be >= 0 (0 = every position), got {self.loss_positions}")


# ---------------------------------------------------------------------------------------------------------------
# 1. Item graphs


@dataclass(frozen=True)
class ItemGraph:
    """A row-normalised sparse adjacency over ``size`` nodes (node 0 = padding, never connected)."""

    index: torch.Tensor  # (2, E) rows = source item, cols = the item that followed it
    weight: torch.Tensor  # (E,) transition count / out-degree of the source
    size: int


def transition_graph(pairs: np.ndarray, size: int) -> ItemGraph:
    """(E', 2) (from, to) node pairs, repeats allowed -> D^-1 A with A[i, j] = #times j directly followed i."""
    if len(pairs) == 0:
        return ItemGraph(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), size)
    a = torch.sparse_coo_tensor(torch.as_tensor(pairs.T, dtype=torch.long), torch.ones(len(pairs)),
                                (size, size), check_invariants=True).coalesce()  # repeats summed into counts
    rows, counts = a.indices(), a.values()
    degree = torch.zeros(size).index_add_(0, rows[0], counts)  # (size,) out-degree
    return ItemGraph(rows, counts / degree[rows[0]], size)


def item_graphs(sequences: Iterable[np.ndarray], domain_sizes: tuple[int, int]) -> tuple[ItemGraph, ...]:
    """Training sequences (internal idx, oldest first) -> (merged graph over ids idx + 1, X graph over X's
    local ids 1..N_X, Y graph over Y's local ids 1..N_Y)."""
    n_first = domain_sizes[0]
    merged, single = [], ([], [])
    for seq in sequences:
        ids = np.asarray(seq, dtype=np.int64) + 1  # 0 stays padding
        merged.append(np.stack([ids[:-1], ids[1:]], 1))
        for d, local in enumerate((ids[ids <= n_first], ids[ids > n_first] - n_first)):
            single[d].append(np.stack([local[:-1], local[1:]], 1))
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)  # noqa: E731
    return (transition_graph(cat(merged), 1 + sum(domain_sizes)),
            transition_graph(cat(single[0]), 1 + domain_sizes[0]),
            transition_graph(cat(single[1]), 1 + domain_sizes[1]))


class GraphConv(nn.Module):
    """``layers`` rounds of h <- A dropout(h) + b, the outputs of every round (and the input) averaged.

    The official GraphConvolution declares a weight matrix but never multiplies by it: propagation plus a bias.
    """

    def __init__(self, dim: int, layers: int, dropout: float):
        super().__init__()
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(dim)) for _ in range(layers))
        self.dropout = dropout

    def forward(self, emb: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        h, total = emb, emb  # (I, D) each
        for bias in self.biases:
            h = torch.sparse.mm(adj, F.dropout(h, self.dropout, self.training)) + bias  # (I, D)
            total = total + h
        return total / (len(self.biases) + 1)  # (I, D)


# ---------------------------------------------------------------------------------------------------------------
# 2. Encoders


class SequenceEncoder(nn.Module):
    """SASRec over one view: (graph vector + ID vector) * sqrt(D) + position -> blocks -> LayerNorm.

    Positions count the view's own items from the most recent one (0), so left padding and the other domain's
    items (padding in a single-domain view) change nothing.
    """

    def __init__(self, cfg: ModelConfig, max_len: int):
        super().__init__()
        self.pos_emb = nn.Embedding(max_len, cfg.dim)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.ln_final = nn.LayerNorm(cfg.dim)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x (B, L, D) item vectors, valid (B, L) real-item flags -> (B, L, D) state after each position."""
        if x.size(1) > self.pos_emb.num_embeddings:
            raise ValueError(f"sequence length {x.size(1)} exceeds the positional table ({self.pos_emb.num_embeddings}); "
                             "keep the most recent max_len items")
        pos = valid.flip(1).cumsum(1).flip(1) - 1  # (B, L) items of the view after this one
        x = self.drop(x * x.size(-1) ** 0.5 + self.pos_emb(pos.clamp(min=0)))  # (B, L, D)
        mask = attention_mask(valid)  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_final(x)  # (B, L, D)


class Discriminator(nn.Module):
    """Bilinear critic of (cross-domain, single-domain) representation pairs; official init (Xavier, zero bias)."""

    def __init__(self, dim: int):
        super().__init__()
        self.bilinear = nn.Bilinear(dim, dim, 1)
        nn.init.xavier_uniform_(self.bilinear.weight)
        nn.init.zeros_(self.bilinear.bias)

    def forward(self, cross: torch.Tensor, single: torch.Tensor) -> torch.Tensor:
        return self.bilinear(cross, single)[:, 0]  # (B,) logits


def forward_fill(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """states (B, L, D), mask (B, L) -> at each t, the state at the last masked position <= t (zeros if none)."""
    L = mask.size(1)
    pos = torch.arange(L, device=mask.device).expand_as(mask)  # (B, L)
    last = torch.where(mask, pos, -1).cummax(1).values  # (B, L) last masked position so far, -1 = none
    out = states.gather(1, last.clamp(min=0)[..., None].expand_as(states))  # (B, L, D)
    return out * (last >= 0)[..., None]


def next_in_domain(seqs: torch.Tensor, in_domain: torch.Tensor) -> torch.Tensor:
    """seqs (B, T), in_domain (B, T) -> (B, T) the next in-domain id after each position (0 if none)."""
    T = seqs.size(1)
    pos = torch.where(in_domain, torch.arange(T, device=seqs.device), T)  # (B, T) own position or T (none)
    after = pos.flip(1).cummin(1).values.flip(1)  # (B, T) first in-domain position >= t
    after = torch.cat([after[:, 1:], torch.full_like(after[:, :1], T)], 1)  # (B, T) first one > t
    padded = torch.cat([seqs, torch.zeros_like(seqs[:, :1])], 1)  # (B, T + 1), column T = none
    return padded.gather(1, after)


# ---------------------------------------------------------------------------------------------------------------
# The model


class C2DSR(SequentialModel):
    """Graph-aware item tables -> merged / X / Y encoders -> per-domain linear heads; + contrastive infomax."""

    name = "c2dsr"
    settings_class = C2DSRSettings
    not_factorizable = ("scores a domain with two encoders (merged and single-domain) and a per-item bias; the "
                        "exporter does not write that form yet")

    settings: C2DSRSettings

    def __init__(self, cfg: ModelConfig, ctx: ModelContext):
        super().__init__(cfg, ctx)
        n_x, n_y = ctx.domain_sizes
        if min(n_x, n_y) < 1:
            raise ValueError(f"c2dsr needs items in both domains, got {ctx.domains[0]} {n_x} / {ctx.domains[1]} {n_y}; "
                             "it is a cross-domain model: use sasrec for single-domain data")
        graphs = ctx.extras.get("c2dsr_graphs")
        if graphs is None:
            raise ValueError("c2dsr needs its item graphs in ctx.extras['c2dsr_graphs'] (built from the training "
                             "sequences by C2DSR.context_extras or item_graphs())")
        for d, graph in zip(ctx.domains, graphs[1:]):
            if graph.index.size(1) == 0:
                raise ValueError(f"c2dsr: no training sequence has two {d} items, so {d} has no item graph; "
                                 "it needs training histories in both domains")
        D, s = cfg.dim, self.settings
        self.graph_size = tuple(g.size for g in graphs)
        for name, graph in zip(("merged", "x", "y"), graphs):
            self.register_buffer(f"adj_{name}_index", graph.index, persistent=False)
            self.register_buffer(f"adj_{name}_weight", graph.weight.float(), persistent=False)
        # ID tables: merged over every item (row 0 = padding), X and Y over their own items (local ids)
        self.emb = nn.ModuleList(nn.Embedding(size, D, padding_idx=0) for size in self.graph_size)
        self.gnn = nn.ModuleList(GraphConv(D, s.gnn_layers, cfg.dropout) for _ in range(3))
        self.encoders = nn.ModuleList(SequenceEncoder(cfg, ctx.max_len) for _ in range(3))  # merged, X, Y
        # heads: one linear classifier per item (weight row + bias), rows by idx + 1 like every item matrix
        self.head = nn.Embedding(1 + ctx.n_items, D + 1, padding_idx=0)
        self.discriminators = nn.ModuleList(Discriminator(D) for _ in range(2))  # D_X, D_Y
        for emb in (*self.emb, self.head):
            nn.init.normal_(emb.weight, std=0.02)
            with torch.no_grad():
                emb.weight[0].zero_()
        self._cache: tuple[Any, tuple[torch.Tensor, ...]] | None = None

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "C2DSR":
        self._cache = None  # .to(device) / .float() replace the tensors the cache was computed from
        return super()._apply(fn, *args, **kwargs)

    @classmethod
    def context_extras(cls, dataset: Any, cfg: Any) -> dict[str, Any]:
        return {"c2dsr_graphs": item_graphs(dataset.train["items"], dataset.domain_sizes)}

    @classmethod
    def describe_sources(cls, dataset: Any, cfg: Any) -> dict[str, str]:
        return {"encoders": "none (ID-only model; item graphs from the training sequences)",
                "tags": "none (model uses no tags)"}

    # --- item vectors ------------------------------------------------------------------------------------------

    def _adjacency(self, view: int) -> torch.Tensor:
        name = ("merged", "x", "y")[view]
        index, weight = getattr(self, f"adj_{name}_index"), getattr(self, f"adj_{name}_weight")
        size = self.graph_size[view]
        return torch.sparse_coo_tensor(index, weight, (size, size), is_coalesced=True,
                                       check_invariants=False)  # built by transition_graph: valid

    def item_tables(self) -> tuple[torch.Tensor, ...]:
        """(merged (I, D), X (1 + N_X, D), Y (1 + N_Y, D)): graph vector + ID vector per item, row 0 = padding.

        In eval mode the tables are computed once and reused until a parameter changes (serving, evaluation).
        """
        if self.training:
            self._cache = None
            return self._compute_tables()
        key = tuple(p._version for p in (*self.emb.parameters(), *self.gnn.parameters()))  # bumped by every update
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self._compute_tables())
        return self._cache[1]

    def _compute_tables(self) -> tuple[torch.Tensor, ...]:
        tables = []
        for view in range(3):
            emb = self.emb[view].weight  # (size, D)
            graph = self.gnn[view](emb, self._adjacency(view))  # (size, D)
            tables.append(torch.cat([torch.zeros_like(emb[:1]), (graph + emb)[1:]]))  # padding stays zero
        return tuple(tables)

    # --- encoders ------------------------------------------------------------------------------------------------

    def views(self, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """seqs (B, L) merged ids -> the X and Y views in local ids (B, L) each, and the domain mask (B, L)."""
        n_x = self.ctx.domain_sizes[0]
        is_y = domain_of_ids(seqs, n_x).bool()
        x_local = torch.where(is_y, 0, seqs)  # (B, L) X ids are already 1..N_X
        y_local = torch.where(is_y, seqs - n_x, 0)  # (B, L)
        return x_local, y_local, is_y

    def encode_merged(self, seqs: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """seqs (B, L) -> (B, L, D) merged-sequence states."""
        return self.encoders[0](F.embedding(seqs, table), seqs > 0)

    def encode_single(self, local: torch.Tensor, domain: int, table: torch.Tensor) -> torch.Tensor:
        """local (B, L) one view's local ids (0 elsewhere) -> (B, L, D) its states (meaningful at its items)."""
        return self.encoders[1 + domain](F.embedding(local, table), local > 0)

    # --- training ------------------------------------------------------------------------------------------------

    def training_loss(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs (B, L+1) -> lam * (cross-domain + single-domain next-item CE) + (1 - lam) * infomax."""
        inputs, targets = seqs[:, :-1], seqs[:, 1:]  # (B, L) each
        merged_t, x_t, y_t = self.item_tables()
        h = self.encode_merged(inputs, merged_t)  # (B, L, D)
        x_local, y_local, is_y = self.views(inputs)
        h_single = (self.encode_single(x_local, 0, x_t), self.encode_single(y_local, 1, y_t))  # (B, L, D) each
        recent = torch.zeros_like(inputs, dtype=torch.bool)  # (B, L) positions the next-item losses use
        recent[:, -self.settings.loss_positions if self.settings.loss_positions else 0:] = True
        # cross-domain objective: the merged state predicts the next item, whatever its domain
        cross_mask = recent & (targets > 0)
        # single-domain objective: at each item of domain d, merged + d's state predict d's next item
        single_states, single_labels = [], []
        seq_is_y = domain_of_ids(seqs, self.ctx.domain_sizes[0]).bool()  # (B, L+1)
        for d, in_d in enumerate(((seqs > 0) & ~seq_is_y, seq_is_y)):
            nxt = next_in_domain(seqs, in_d)[:, :-1]  # (B, L) d's next item after each input position
            m = recent & in_d[:, :-1] & (nxt > 0)
            single_states.append((h + h_single[d])[m])
            single_labels.append(nxt[m])
        matrix = self.head.weight
        rec = (self._head_loss(h[cross_mask], targets[cross_mask], matrix)
               + self._head_loss(torch.cat(single_states), torch.cat(single_labels), matrix))
        if self.settings.lam == 1.0:
            return rec
        return self.settings.lam * rec + (1 - self.settings.lam) * self.infomax(inputs, h, h_single, is_y, merged_t)

    def _head_loss(self, states: torch.Tensor, labels: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """states (P, D) -> next-item CE over the label's domain; the head's last column is the item's bias."""
        ones = torch.ones_like(states[:, :1])
        return next_item_loss(torch.cat([states, ones], 1), labels, matrix, self.ctx, self.cfg)

    def infomax(self, inputs: torch.Tensor, h: torch.Tensor, h_single: tuple[torch.Tensor, torch.Tensor],
                is_y: torch.Tensor, merged_t: torch.Tensor) -> torch.Tensor:
        """The contrastive cross-domain infomax term (BCE of the two discriminators), over rows with both domains.

        For domain X: the single-domain X representation (X states averaged over the user's X items) against the
        merged representation averaged over the user's Y items (real), and the same average computed on the
        merged sequence whose X items were replaced by uniformly drawn X items (fake). Symmetric for Y.
        """
        n_x, n_y = self.ctx.domain_sizes
        valid = inputs > 0
        masks = (valid & ~is_y, valid & is_y)  # (B, L) each
        both = masks[0].any(1) & masks[1].any(1)  # (B,) rows with both domains
        if not both.any():
            return h.sum() * 0.0
        total = h.sum() * 0.0
        for d in (0, 1):
            other = 1 - d
            # corrupt domain d: its items become random items of d; the other domain's items stay
            random_d = torch.randint(1, 1 + (n_x, n_y)[d], inputs.shape, device=inputs.device) + (0, n_x)[d]
            corrupted = torch.where(masks[d], random_d, inputs)  # (B, L)
            fake = self.encode_merged(corrupted, merged_t)  # (B, L, D)
            single = masked_mean(h_single[d], masks[d])  # (B, D)
            real_cross, fake_cross = masked_mean(h, masks[other]), masked_mean(fake, masks[other])  # (B, D) each
            disc = self.discriminators[d]
            real_logit, fake_logit = disc(real_cross[both], single[both]), disc(fake_cross[both], single[both])
            total = total + F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit)) \
                + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
        return total

    # --- scoring -------------------------------------------------------------------------------------------------

    def score_domain(self, history: torch.Tensor, domain: int) -> torch.Tensor:
        """history (B, L) -> (B, N_domain): head_d(merged state at the end + d's state at the last item of d)."""
        merged_t, x_t, y_t = self.item_tables()
        h = self.encode_merged(history, merged_t)[:, -1]  # (B, D)
        local = self.views(history)[domain]  # (B, L)
        single = self.encode_single(local, domain, (x_t, y_t)[domain])  # (B, L, D)
        state = h + forward_fill(single, local > 0)[:, -1]  # (B, D); no item of the domain: merged state alone
        head = self.head.weight[self.ctx.domain_slice(domain)]  # (N, D + 1)
        return state @ head[:, :-1].T + head[:, -1]  # (B, N)


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """states (B, L, D), mask (B, L) -> (B, D) mean over masked positions (zeros for an empty row)."""
    m = mask[..., None].to(states.dtype)
    return (states * m).sum(1) / m.sum(1).clamp(min=1.0)
