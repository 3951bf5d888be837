"""Scoring as ``user state @ item matrix``: the split that serving caches and ONNX export writes out.

Shape legend: B batch, L sequence length, D hidden size, N items of a domain.

A model whose class sets ``factorizable`` (SASRec and GRU4Rec: ``encode(history)[:, -1] @ item_emb[domain].T``)
gives its state module and item matrix; serving keeps each domain's slice of the item matrix as one contiguous
(N, D) matrix, so a request costs one encoder pass and one matrix product. Every other model (random, pop, TEMA)
is scored through its own ``score_domain``.
A factorization is trusted only after it reproduces ``score_domain`` on a probe batch.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from temarec.models.base import SequentialModel

log = logging.getLogger(__name__)


class Factorized:
    """A model scored as ``state(history) @ items[domain].T`` with the item matrices cached."""

    def __init__(self, state: nn.Module, items: tuple[torch.Tensor, torch.Tensor]):
        self.state = state
        self.items = items  # per domain: (N, D) float32, contiguous

    def __call__(self, history: torch.Tensor, domain: int) -> torch.Tensor:
        return self.state(history) @ self.items[domain].T  # (B, N)


def item_matrices(model: SequentialModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's item matrix split by domain: two (N_domain, D) contiguous float32 matrices."""
    weight = model.item_matrix().detach()
    return tuple(weight[model.ctx.domain_slice(d)].float().contiguous() for d in (0, 1))  # type: ignore[return-value]


def factorize(model: SequentialModel, exportable: bool = False) -> Factorized | None:
    """``Factorized`` for a model whose class is ``factorizable`` (checked against ``score_domain``), else None.

    ``exportable`` asks for a state module that ONNX can trace (GRU4Rec's differs from its serving one).
    """
    if not model.factorizable:
        return None
    state = model.state_module(exportable)
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
