"""π-Net (Ma et al., SIGIR 2019): a parallel information-sharing network for shared-account cross-domain
sequential recommendation, over the merged two-domain history of one user.

Shape legend: B batch, L sequence length, D hidden size, K latent members of an account, N items of a domain.

Four parts, per domain d with e the other domain:
- sequence encoder: a GRU over d's own items (its sub-sequence of the merged history);
- shared account filter unit (SFU, d -> e): a recurrent unit that walks d's timeline and, for each of K latent
  members, gates how much of d's current state is worth passing to e, given e's state at the same moment;
  the member states are averaged;
- cross-domain transfer unit (CTU, d -> e): a GRU over the SFU outputs;
- hybrid prediction for domain e: softmax(W_e [h_e; h_{d->e}] + b_e), e's own encoder state next to what
  was transferred from d.

"Shared account" here: our histories are one user each; the K latent members stay, and model that user's
distinct roles/interests (docs/DESIGN.md). Every state is read "as of" a merged position t (the last item of
that kind at or before t, zero when there is none), so one pass predicts every next item of a training
sequence, each with the encoder/transfer state of the target's domain.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from temarec.config import ModelConfig
from temarec.models.base import ModelContext, SequentialModel, domain_of_ids, next_item_loss
from temarec.models.dropout import Dropout
from temarec.models.gru4rec import GRUEncoder


@dataclass(frozen=True)
class PiNetSettings:
    """The official code's defaults (PiNet.py, Train2.py)."""

    dim: int = 100  # item embedding and hidden size (embedding_size = hidden_size = 100)
    members: int = 4  # K latent members per account (num_members = 4)
    dropout: float = 0.2  # keep_prob = 0.8 on the recurrent units' inputs/outputs and the prediction input
    grad_clip: float = 5.0  # every gradient clipped by value to [-5, 5]; 0 = off

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"model.pinet.dim must be >= 1, got {self.dim}")
        if self.members < 1:
            raise ValueError(f"model.pinet.members must be >= 1, got {self.members}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.pinet.dropout must be in [0, 1), got {self.dropout}")
        if self.grad_clip < 0:
            raise ValueError(f"model.pinet.grad_clip must be >= 0 (0 = off), got {self.grad_clip}")


def as_of(states: torch.Tensor, count: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """states (B, L, D) over a left-padded sub-sequence of ``length`` (B,) items; count (B, T) items of it seen up
    to each merged position -> (B, T, D) the state after the count-th item, zero when count = 0."""
    L = states.size(1)
    col = (L - length[:, None] + count - 1).clamp(min=0)  # (B, T) column of the count-th item
    picked = states.gather(1, col[..., None].expand(-1, -1, states.size(2)))  # (B, T, D)
    return picked * (count > 0)[..., None]


class SharedAccountFilter(nn.Module):
    """SFU d -> e: for member k, f_k = σ(W_f [h_d; h_e; s] + V_f r_k + b_f), c_k = tanh(W_s [h_d; s] + V_s r_k + b_s),
    s_k = f_k ⊙ s + (1 - f_k) ⊙ c_k; the new state s is the mean of the s_k (as the official FilterCell)."""

    def __init__(self, dim: int, members: int):
        super().__init__()
        self.members = nn.Parameter(torch.empty(members, dim))  # r_k, one embedding per latent member
        self.gate = nn.Linear(3 * dim, dim)  # W_f, b_f
        self.gate_member = nn.Linear(dim, dim, bias=False)  # V_f
        self.cand = nn.Linear(2 * dim, dim)  # W_s, b_s
        self.cand_member = nn.Linear(dim, dim, bias=False)  # V_s
        for w in (self.members, self.gate.weight, self.gate_member.weight, self.cand.weight, self.cand_member.weight):
            nn.init.xavier_normal_(w)
        nn.init.ones_(self.gate.bias)  # official code: the filter's biases start at 1
        nn.init.ones_(self.cand.bias)

    def forward(self, own: torch.Tensor, other: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """own (B, L, D) d's encoder states on d's left-padded timeline; other (B, L, D) e's state at the same
        moments; valid (B, L) -> (B, L, D) filtered states (zero through the left padding)."""
        gm = self.gate_member(self.members)  # (K, D)
        cm = self.cand_member(self.members)  # (K, D)
        s = own.new_zeros(own.size(0), own.size(2))  # (B, D)
        out = []
        for i in range(own.size(1)):
            f = torch.sigmoid(self.gate(torch.cat([own[:, i], other[:, i], s], -1))[:, None] + gm)  # (B, K, D)
            c = torch.tanh(self.cand(torch.cat([own[:, i], s], -1))[:, None] + cm)  # (B, K, D)
            new = (f * s[:, None] + (1 - f) * c).mean(1)  # (B, D) member states averaged
            s = torch.where(valid[:, i, None], new, s)
            out.append(s)
        return torch.stack(out, 1)  # (B, L, D)


class PiNet(SequentialModel):
    """Per-domain GRU encoders, SFU and CTU in both directions, and a per-domain output layer over [h_e; h_{d->e}]."""

    name = "pinet"
    settings_class = PiNetSettings
    train_defaults = {"batch_size": 128}  # the official code's 128 per step (docs/DESIGN.md)
    not_factorizable = "scores each domain from a different state ([h_e; h_{d->e}]), not one state vector"

    settings: PiNetSettings

    def __init__(self, cfg: ModelConfig, ctx: ModelContext):
        super().__init__(cfg, ctx)  # sets self.settings: the config section model.pinet
        D, st = self.settings.dim, self.settings
        # rows of domain 0 form E_A, rows of domain 1 E_B: the two embedding tables of the paper, in one matrix
        self.item_emb = nn.Embedding(1 + ctx.n_items, D, padding_idx=0)
        self.encoders = nn.ModuleList(GRUEncoder(D, 1, 0.0) for _ in range(2))  # index d: d's own items
        self.filters = nn.ModuleList(SharedAccountFilter(D, st.members) for _ in range(2))  # index d: d -> e
        self.transfers = nn.ModuleList(GRUEncoder(D, 1, 0.0) for _ in range(2))  # CTU, index d: d -> e
        self.drop = Dropout(st.dropout)
        # the two output layers (W_e, b_e) as rows per item: [W | b], scored against [h_e; h_{d->e}; 1]
        self.out = nn.Parameter(torch.zeros(1 + ctx.n_items, 2 * D + 1))
        nn.init.xavier_normal_(self.item_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
            for d in (0, 1):
                nn.init.xavier_normal_(self.out[ctx.domain_slice(d), :-1])
        if st.grad_clip > 0:  # tf.clip_by_value on every gradient before the Adam step (official code)
            for w in self.parameters():
                w.register_hook(lambda g, c=st.grad_clip: g.clamp(-c, c))

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L) left-padded merged ids -> (2, B, L, 2D + 1): for a next item of domain e after position t,
        row e holds [h_e(t); h_{d->e}(t); 1], the input of e's output layer."""
        B, L = x.shape
        pos = torch.arange(L, device=x.device)
        valid = x > 0  # (B, L)
        dom = domain_of_ids(x, self.ctx.domain_sizes[0])  # (B, L)
        own, order, length, count = [], [], [], []
        for d in (0, 1):
            mine = valid & (dom == d)  # (B, L)
            n = mine.sum(1)  # (B,)
            # d's items, in order, moved to the right end: d's own left-padded timeline
            idx = torch.argsort(torch.where(mine, L + pos, pos), dim=1, stable=True)  # (B, L)
            sub = torch.where(pos[None, :] >= L - n[:, None], x.gather(1, idx), 0)  # (B, L)
            h = self.encoders[d](self.drop(self.item_emb(sub)), n) * (sub > 0)[..., None]  # (B, L, D)
            own.append(self.drop(h))
            order.append(idx)
            length.append(n)
            count.append(mine.long().cumsum(1))  # (B, L) d's items up to each merged position
        rows = []
        for e in (0, 1):
            d = 1 - e
            # e's state at the moment of each of d's items (its merged position), on d's timeline
            other_then = as_of(own[e], count[e], length[e]).gather(
                1, order[d][..., None].expand(-1, -1, own[e].size(2)))  # (B, L, D)
            sub_valid = pos[None, :] >= L - length[d][:, None]  # (B, L)
            filtered = self.drop(self.filters[d](own[d], other_then, sub_valid))  # (B, L, D) SFU d -> e
            transfer = self.transfers[d](filtered, length[d]) * sub_valid[..., None]  # (B, L, D) CTU d -> e
            h_e = as_of(own[e], count[e], length[e])  # (B, L, D) e's encoder state as of each merged position
            h_de = as_of(transfer, count[d], length[d])  # (B, L, D) transferred from d as of each position
            ones = torch.ones(B, L, 1, device=x.device)
            rows.append(torch.cat([self.drop(torch.cat([h_e, h_de], -1)), ones], -1))  # (B, L, 2D + 1)
        return torch.stack(rows)  # (2, B, L, 2D + 1)

    def training_loss(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs (B, L+1) -> scalar: every next item, scored by its own domain's output layer."""
        inputs, targets = seqs[:, :-1], seqs[:, 1:]  # (B, L) each
        h = self.hidden(inputs)  # (2, B, L, 2D + 1)
        target_dom = domain_of_ids(targets, self.ctx.domain_sizes[0])  # (B, L)
        h = torch.where(target_dom[..., None] == 0, h[0], h[1])  # (B, L, 2D + 1)
        mask = targets > 0
        return next_item_loss(h[mask], targets[mask], self.out, self.ctx, self.cfg)

    def score_domain(self, history: torch.Tensor, domain: int) -> torch.Tensor:
        """history (B, L) -> (B, N_domain) from the state after the most recent item."""
        h = self.hidden(history)[domain, :, -1]  # (B, 2D + 1)
        return h @ self.out[self.ctx.domain_slice(domain)].T  # (B, N)
