"""Scoring as ``user state @ item matrix``: the split that serving caches and ONNX export writes out.

Shape legend: B batch, L sequence length, D hidden size, N items of a domain.

SASRec and GRU4Rec score a domain as ``encode(history)[:, -1] @ item_emb[domain].T``. Serving keeps each
domain's slice of the tied item embedding as one contiguous (N, D) matrix, so a request costs one encoder pass
and one matrix product. Every other model (random, pop, TEMA) is scored through its own ``score_domain``.
A factorization is trusted only after it reproduces ``score_domain`` on a probe batch.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from temarec.models.base import SequentialModel
from temarec.models.gru4rec import roll_rows

log = logging.getLogger(__name__)

FACTORIZABLE = ("sasrec", "gru4rec")  # models whose scores are state @ tied item embedding


class LastState(nn.Module):
    """history (B, L) ids -> (B, D) the model's state at the most recent position."""

    def __init__(self, model: SequentialModel):
        super().__init__()
        self.model = model

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        return self.model.encode(history)[:, -1]  # (B, D)


class GRUState(nn.Module):
    """GRU4Rec's last state without packed sequences, for ONNX export (packing does not trace).

    Rows are rolled so real items come first; a plain GRU then reads each row's items from the zero state,
    exactly as the packed GRU of ``GRU4Rec.encode`` does, and the output at position length - 1 is the state.
    Positions past a row's length read padding and are never used. An empty history gives the zero state, as
    ``encode`` does (it zeroes padding outputs before the projection).
    """

    def __init__(self, model: SequentialModel):
        super().__init__()
        self.item_emb, self.gru, self.proj = model.item_emb, model.encoder.gru, model.proj

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        lengths = (history > 0).sum(1)  # (B,)
        x = roll_rows(self.item_emb(history), lengths)  # (B, L, D) real items first
        out, _ = self.gru(x)  # (B, L, D)
        last = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, out.size(-1))  # (B, 1, D) gather index
        h = out.gather(1, last)[:, 0] * (lengths > 0)[:, None].to(out.dtype)  # (B, D)
        return self.proj(h)  # (B, D)


class Factorized:
    """A model scored as ``state(history) @ items[domain].T`` with the item matrices cached."""

    def __init__(self, state: nn.Module, items: tuple[torch.Tensor, torch.Tensor]):
        self.state = state
        self.items = items  # per domain: (N, D) float32, contiguous

    def __call__(self, history: torch.Tensor, domain: int) -> torch.Tensor:
        return self.state(history) @ self.items[domain].T  # (B, N)


def item_matrices(model: SequentialModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The tied item embedding split by domain: two (N_domain, D) contiguous float32 matrices."""
    weight = model.item_emb.weight.detach()
    return tuple(weight[model.ctx.domain_slice(d)].float().contiguous() for d in (0, 1))  # type: ignore[return-value]


def factorize(model: SequentialModel, exportable: bool = False) -> Factorized | None:
    """``Factorized`` for SASRec / GRU4Rec (checked against ``score_domain``), else None.

    ``exportable`` picks a state module that ONNX can trace (GRU4Rec: :class:`GRUState`).
    """
    if model.name not in FACTORIZABLE:
        return None
    state: nn.Module = GRUState(model) if exportable and model.name == "gru4rec" else LastState(model)
    fact = Factorized(state.eval(), item_matrices(model))
    if not agrees(fact, model):
        log.warning("%s: state @ item matrix does not reproduce score_domain; serving through score_domain",
                    model.name)
        return None
    return fact


def probe_histories(model: SequentialModel, rows: int = 4) -> torch.Tensor:
    """(rows, max_len) left-padded ids of both domains, one row empty: the parity probe."""
    g = torch.Generator().manual_seed(0)
    L = model.ctx.max_len
    hist = torch.randint(1, model.ctx.n_items + 1, (rows, L), generator=g)
    lengths = torch.linspace(0, L, rows).long()  # 0 .. L real items per row
    pad = torch.arange(L)[None, :] < (L - lengths)[:, None]
    return hist.masked_fill(pad, 0)


@torch.inference_mode()
def agrees(fact: Callable[[torch.Tensor, int], torch.Tensor], model: SequentialModel, atol: float = 1e-4) -> bool:
    hist = probe_histories(model)
    return all(torch.allclose(fact(hist, d), model.score_domain(hist, d), atol=atol, rtol=1e-4) for d in (0, 1))
