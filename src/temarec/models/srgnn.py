"""SR-GNN (Wu et al., AAAI 2019): a session graph of the merged two-domain history, a gated graph neural network
over it, and a soft-attention read-out that combines the last item with the whole session.

Shape legend: B batch, L sequence length, D hidden size, N items of a domain, P encoded prefixes (sessions),
Q (prefix, position) pairs, E (pair, edge) incidences, K = L - 1 transitions of a history.

The paper trains on every prefix of a session (its preprocessing "sequence augmentation": [v1] -> v2, [v1, v2] -> v3, ...)
and builds each prefix's graph from that prefix alone: the graph of a longer prefix holds edges the shorter one
must not see (the out-edge of its last item points at its target). So a training sequence of n items is n - 1
graphs. They are encoded together without materialising one adjacency matrix per prefix:

- A node of a prefix's graph is a distinct item; we carry one state per (prefix end t, position p <= t), so
  positions holding the same item carry the same state (same embedding, same neighbours, by induction).
- Transition k (position k -> k + 1) is an edge of every prefix that ends at t >= k + 1. Edges are binary, as in
  the official code: a transition repeated in a history is counted once (its first occurrence).
- The in-neighbours of (t, p) are the sources of the first-occurrence transitions k <= t - 1 whose target is
  the item at p; out-neighbours symmetrically. Messages are averaged over them (A^in, A^out of eq. (1), each
  row normalised by its degree). Incidences are listed once (``nonzero``) and summed with ``index_add_``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from temarec.config import ModelConfig
from temarec.models.base import ModelContext, SequentialModel, next_item_loss


@dataclass(frozen=True)
class SRGNNSettings:
    """The paper's defaults (its parameter set-up and the official code's main.py)."""

    dim: int = 100  # d, the latent dimension of items and sessions
    steps: int = 1  # GNN propagation steps per graph (official code: --step 1)
    l2: float = 1e-5  # L2 penalty on all parameters (added to the loss; Adam's weight_decay)
    hybrid: bool = True  # s_h = W3 [s_l; s_g] (eq. (7)); False = global preference s_g alone

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"model.srgnn.dim must be >= 1, got {self.dim}")
        if self.steps < 1:
            raise ValueError(f"model.srgnn.steps must be >= 1, got {self.steps}")
        if self.l2 < 0:
            raise ValueError(f"model.srgnn.l2 must be >= 0, got {self.l2}")


class Propagation(NamedTuple):
    """Who sends to whom in one propagation step: T receivers, messages read from rows of the states h."""

    own: torch.Tensor  # (T,) row of h holding each receiver's own state v^{t-1}
    in_to: torch.Tensor  # (E_in,) receiver of a message along an in-edge
    in_from: torch.Tensor  # (E_in,) row of h of its sender, the edge's source
    out_to: torch.Tensor  # (E_out,)
    out_from: torch.Tensor  # (E_out,) row of h of the edge's target
    in_degree: torch.Tensor  # (T, 1) float, at least 1
    out_degree: torch.Tensor  # (T, 1)


class SessionGraphs(NamedTuple):
    """The graphs of P prefixes of one batch of histories, as index lists (built without gradients)."""

    first: Propagation  # step 1: receivers are node versions, senders are positions (rows of the embedded history)
    pairs: Propagation  # steps >= 2: receivers and senders are (prefix, position) pairs
    pair_version: torch.Tensor  # (Q,) node version of each pair
    pair_prefix: torch.Tensor  # (Q,) which prefix (0..P-1) the pair belongs to
    last_pair: torch.Tensor  # (P,) the pair holding each prefix's last item


@torch.no_grad()
def session_graphs(x: torch.Tensor, ends: torch.Tensor) -> SessionGraphs:
    """x (B, L) left-padded ids; ends (B, L) bool, the prefixes to encode (their end t must hold an item).

    Prefixes are numbered in ``ends.nonzero()`` order (row-major), the order of ``targets[ends]``.
    """
    B, L = x.shape
    dev = x.device
    valid = x > 0  # (B, L)
    ends = ends & valid
    upto = torch.ones(L, L, dtype=torch.bool, device=dev).tril()  # (t, p): p <= t
    pairs = ends[:, :, None] & valid[:, None, :] & upto  # (B, L, L) position p inside the prefix ending at t
    Q = int(pairs.sum())
    pair_id = torch.full((B, L, L), -1, dtype=torch.long, device=dev)
    pair_id[pairs] = torch.arange(Q, device=dev)
    prefix_id = torch.full((B, L), -1, dtype=torch.long, device=dev)
    prefix_id[ends] = torch.arange(int(ends.sum()), device=dev)
    b, t, p = pairs.nonzero(as_tuple=True)  # (Q,) each, in pair_id order
    eb, et = ends.nonzero(as_tuple=True)  # (P,)
    position = b * L + p  # (Q,) row of the flattened (B * L) history

    src, dst = x[:, :-1], x[:, 1:]  # (B, K) transition k: position k -> k + 1
    is_edge = src > 0  # left padding: a real source has a real target
    same = (src[:, :, None] == src[:, None, :]) & (dst[:, :, None] == dst[:, None, :])  # (B, K, K)
    earlier = torch.ones(L - 1, L - 1, dtype=torch.bool, device=dev).tril(-1)  # (k, k'): k' < k
    first = is_edge & ~(same & earlier).any(-1)  # (B, K) first occurrence of each distinct transition
    steps = torch.arange(L, device=dev)

    def incidences(endpoint: torch.Tensor, other_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        # (pair, edge) where the edge's ``endpoint`` (B, K) is the pair's item and both the edge (k + 1 <= t) and
        # the position (p <= t) lie inside the prefix; the neighbour sits at position k + other_offset
        mb, mp, mk = (first[:, None, :] & (endpoint[:, None, :] == x[:, :, None]) & valid[:, :, None]).nonzero(
            as_tuple=True)  # (M,) each: (row, position, edge) with the same item
        inside = ends[mb] & (steps[None, :] >= torch.maximum(mk + 1, mp)[:, None])  # (M, L) prefixes t holding both
        j, mt = inside.nonzero(as_tuple=True)
        return pair_id[mb[j], mt, mp[j]], pair_id[mb[j], mt, mk[j] + other_offset]

    in_pair, in_from = incidences(dst, 0)  # in-edge: the pair's item is the target, the source is at k
    out_pair, out_from = incidences(src, 1)  # out-edge: the pair's item is the source, the target at k + 1
    n_in, n_out = torch.bincount(in_pair, minlength=Q), torch.bincount(out_pair, minlength=Q)  # (Q,) each
    in_degree, out_degree = n_in.clamp(min=1).float()[:, None], n_out.clamp(min=1).float()[:, None]
    pair_step = Propagation(torch.arange(Q, device=dev), in_pair, in_from, out_pair, out_from, in_degree, out_degree)

    # After one step a node's state depends only on its item and the edges at it that the prefix holds; those
    # grow with t one edge at a time, so (row, item, number of edges at it) names the state: a "node version".
    # Step 1 runs once per version (~3n per history) instead of once per pair (n (n + 1) / 2).
    key = (b * (int(x.max()) + 1) + x[b, p]) * (2 * L) + n_in + n_out  # (Q,)
    _, version = torch.unique(key, return_inverse=True)  # (Q,)
    V = int(version.max()) + 1 if Q else 0
    rep = torch.empty(V, dtype=torch.long, device=dev).scatter_(0, version, torch.arange(Q, device=dev))  # (V,)
    is_rep = torch.zeros(Q, dtype=torch.bool, device=dev)
    is_rep[rep] = True
    keep_in, keep_out = is_rep[in_pair], is_rep[out_pair]
    version_step = Propagation(position[rep], version[in_pair[keep_in]], position[in_from[keep_in]],
                               version[out_pair[keep_out]], position[out_from[keep_out]],
                               in_degree[rep], out_degree[rep])
    return SessionGraphs(version_step, pair_step, version, prefix_id[b, t], pair_id[eb, et, et])


class GatedGraphLayer(nn.Module):
    """One propagation step, eqs. (1)-(5): a = [A^in V H_in, A^out V H_out] + b, then a GRU update of each node.

    Linear maps commute with the degree-normalised sums of eq. (1), so every matrix product runs on the rows of
    ``h`` and only sums and the gate arithmetic run per receiver.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.edge_in = nn.Linear(dim, dim, bias=False)  # H of eq. (1), the incoming half
        self.edge_out = nn.Linear(dim, dim, bias=False)  # ... and the outgoing half
        self.bias = nn.Parameter(torch.zeros(2 * dim))  # b of eq. (1)
        # W_z, W_r, W_o (on a) and U_z, U_r, U_o (on v) of eqs. (2)-(4), held as a GRU cell's weights
        self.gru = nn.GRUCell(2 * dim, dim)

    def forward(self, h: torch.Tensor, m: Propagation) -> torch.Tensor:
        """h (R, D) states -> (T, D) the new state of each receiver of ``m``."""
        D = h.size(1)
        w_in, w_out = self.gru.weight_ih[:, :D], self.gru.weight_ih[:, D:]  # (3D, D) each
        send_in = self.edge_in(h) @ w_in.T  # (R, 3D) W [H_in v_u] for every possible sender u
        send_out = self.edge_out(h) @ w_out.T
        gate_a = self.gru.bias_ih + self.bias @ self.gru.weight_ih.T  # (3D,) W b + b_ih, the same for every node
        T = len(m.own)
        gi = (h.new_zeros(T, 3 * D).index_add_(0, m.in_to, send_in[m.in_from]) / m.in_degree
              + h.new_zeros(T, 3 * D).index_add_(0, m.out_to, send_out[m.out_from]) / m.out_degree
              + gate_a)  # (T, 3D) W a_{s,i} of eqs. (2)-(4)
        gh = (h @ self.gru.weight_hh.T + self.gru.bias_hh)[m.own]  # (T, 3D) U v^{t-1}
        r_i, z_i, n_i = gi.chunk(3, dim=1)
        r_h, z_h, n_h = gh.chunk(3, dim=1)
        r = torch.sigmoid(r_i + r_h)  # reset gate, eq. (3)
        keep = torch.sigmoid(z_i + z_h)  # 1 - z_s of eq. (2) in the paper's naming (torch's GRU convention)
        cand = torch.tanh(n_i + r * n_h)  # candidate, eq. (4); the reset gate acts on U_o v (as nn.GRUCell)
        return keep * h[m.own] + (1 - keep) * cand  # (T, D) eq. (5)


class SRGNN(SequentialModel):
    """Item embedding -> ``steps`` gated graph layers per prefix graph -> attention read-out -> dot product with
    the item embedding (eq. (8)); softmax within the target's domain."""

    name = "srgnn"
    settings_class = SRGNNSettings
    train_defaults = {"batch_size": 100}  # the official code's --batchSize 100 (docs/DESIGN.md)
    not_factorizable = ("builds a graph per history with data-dependent shapes (nonzero, unique), which an ONNX "
                        "trace cannot follow")

    settings: SRGNNSettings

    def __init__(self, cfg: ModelConfig, ctx: ModelContext):
        super().__init__(cfg, ctx)  # sets self.settings: the config section model.srgnn
        D = self.settings.dim
        self.item_emb = nn.Embedding(1 + ctx.n_items, D, padding_idx=0)  # row 0 = padding, row idx+1 = item idx
        self.layers = nn.ModuleList(GatedGraphLayer(D) for _ in range(self.settings.steps))
        self.att_last = nn.Linear(D, D)  # W1 and c of eq. (6)
        self.att_item = nn.Linear(D, D, bias=False)  # W2 of eq. (6)
        self.att_q = nn.Linear(D, 1, bias=False)  # q of eq. (6)
        # W3 of eq. (7); the bias (official code) gives an empty history a learned session vector, not all ties
        self.combine = nn.Linear(2 * D, D)
        bound = D ** -0.5  # official code: every parameter ~ U(-1/sqrt(d), 1/sqrt(d))
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def sessions(self, x: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """x (B, L) ids; ends (B, L) prefixes to encode -> (P, D) session vectors s_h, in ``ends.nonzero()`` order."""
        g = session_graphs(x, ends)
        h = self.layers[0](self.item_emb(x).flatten(0, 1), g.first)  # (V, D) v^1, one per node version
        rows = g.pair_version  # (Q,) the row of h holding each pair's state
        if len(self.layers) > 1:  # later steps read neighbours' states, which differ per prefix: one per pair
            h, rows = h[rows], torch.arange(len(rows), device=x.device)
            for layer in self.layers[1:]:
                h = layer(h, g.pairs)  # (Q, D)
        s_last = h[rows[g.last_pair]]  # (P, D) s_l: the last item of each prefix
        v = h[rows]  # (Q, D)
        alpha = self.att_q(torch.sigmoid(self.att_last(s_last)[g.pair_prefix] + self.att_item(h)[rows]))  # eq. (6)
        s_global = torch.zeros_like(s_last).index_add_(0, g.pair_prefix, alpha * v)  # (P, D) s_g, over positions
        if not self.settings.hybrid:
            return s_global
        return self.combine(torch.cat([s_last, s_global], dim=-1))  # (P, D) s_h, eq. (7)

    def training_loss(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs (B, L+1): every non-empty prefix predicts its next item (eqs. (9)-(10)) + the L2 penalty."""
        inputs, targets = seqs[:, :-1], seqs[:, 1:]  # (B, L) each
        ends = (targets > 0) & (inputs > 0)  # (B, L) prefixes with an item and a target
        s = self.sessions(inputs, ends)  # (P, D)
        loss = next_item_loss(s, targets[ends], self.item_emb.weight, self.ctx, self.cfg)
        if self.settings.l2 > 0:  # d/dθ of l2/2 |θ|^2 is l2 θ, what Adam(weight_decay=l2) adds in the official code
            loss = loss + 0.5 * self.settings.l2 * sum(w.pow(2).sum() for w in self.parameters())
        return loss

    def score_domain(self, history: torch.Tensor, domain: int) -> torch.Tensor:
        """history (B, L) -> (B, N_domain): the whole history is one session graph."""
        B, L = history.shape
        ends = torch.zeros_like(history, dtype=torch.bool)
        ends[:, -1] = history[:, -1] > 0  # an empty history has no graph
        s = self.sessions(history, ends)  # (P, D)
        if not self.settings.hybrid:
            full = torch.zeros(B, s.size(1), device=history.device)
        else:  # an empty history: s_l = s_g = 0
            full = self.combine(torch.zeros(B, 2 * s.size(1), device=history.device))  # (B, D)
        full = full.index_put((ends[:, -1].nonzero(as_tuple=True)[0],), s)  # (B, D)
        return full @ self.item_emb.weight[self.ctx.domain_slice(domain)].T  # (B, N)
