"""The one interface every model implements, and the losses they share.

Shape legend: B batch, L sequence length, D hidden size, N items of a domain, P scored positions.

Item tensors hold ``internal idx + 1``; 0 is padding. Histories are left-padded (most recent item last),
so position L-1 always holds the latest item. Domain 0's items are idx [0, n0), domain 1's [n0, n0 + n1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from temarec.config import ModelConfig
from temarec.models.attention import last_states, next_item_states
from temarec.models.registry import register
from temarec.models.softmax import describe_loss, full_log_prob, negative_log_q, sampled_log_prob


@dataclass
class ModelContext:
    """What a model may know about the data besides histories: sizes, and content artifacts for TEMA."""

    domain_sizes: tuple[int, int]
    domains: tuple[str, str] = ("X", "Y")
    max_len: int = 50
    item_counts: np.ndarray | None = None  # training frequency per internal idx (pop, log-Q)
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. features, tag vectors (TEMA)
    _log_q: dict[tuple, torch.Tensor | None] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n_items(self) -> int:
        return self.domain_sizes[0] + self.domain_sizes[1]

    def domain_slice(self, domain: int) -> slice:
        """Rows of the (padded) item matrix that belong to ``domain``: idx + 1 for pad at row 0."""
        start = 1 + (0 if domain == 0 else self.domain_sizes[0])
        return slice(start, start + self.domain_sizes[domain])

    def negative_log_q(self, domain: int, power: float, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """(N_domain,) log-probability of drawing each item of ``domain`` as a sampled negative
        (``model.negative_power``), from its training count, on ``device``; None: uniform draws. Computed once
        per (domain, power, device): the loss asks for it at every step."""
        key = (domain, power, str(device))
        if key not in self._log_q:
            sl = self.domain_slice(domain)
            counts = None if self.item_counts is None else self.item_counts[sl.start - 1:sl.stop - 1]
            log_q = negative_log_q(counts, power)
            self._log_q[key] = None if log_q is None else log_q.to(device)
        return self._log_q[key]


class SequentialModel(nn.Module):
    """Histories in, one domain's item scores out.

    Subclasses set ``name`` (which registers them: ``temarec train --model NAME`` then finds them, nothing else
    lists models) and implement ``training_loss`` and ``score_domain``. Models with no parameters to learn
    (random, pop) set ``trainable = False`` and are fitted in ``fit_statistics``. A model with settings of its own
    sets ``settings_class`` to a frozen dataclass (validated in its ``__post_init__``); the user sets them in the
    config section ``model.<name>`` and the model reads them as ``self.settings``. ``train_defaults`` holds the
    ``train.*`` values a model trains with unless the user sets them (its paper's batch size, say): config files
    and ``--set`` still win (``config.model_train_defaults``).
    """

    name: ClassVar[str] = ""
    trainable: ClassVar[bool] = True
    settings_class: ClassVar[type | None] = None
    train_defaults: ClassVar[dict[str, Any]] = {}
    # serving: True when scores are state(history) @ item matrix (see ``state_module``); else why not, for users
    factorizable: ClassVar[bool] = False
    not_factorizable: ClassVar[str] = "has no state @ item-matrix form"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            register(cls)

    def __init__(self, cfg: ModelConfig, ctx: ModelContext):
        super().__init__()
        self.cfg = cfg
        self.ctx = ctx
        # the section model.<name> of the config (cfg.specific[name]), or the settings class's defaults
        self.settings = cfg.specific.get(self.name) if self.settings_class is not None else None
        if self.settings_class is not None and self.settings is None:
            self.settings = self.settings_class()

    @classmethod
    def context_extras(cls, dataset: Any, cfg: Any) -> dict[str, Any]:
        """Content a model needs beyond histories (features, tag vectors), read from the dataset folder."""
        return {}

    @classmethod
    def describe_sources(cls, dataset: Any, cfg: Any) -> dict[str, str]:
        """What produced the model's inputs, for every report: encoders, tag source, notes."""
        return {"encoders": "none (ID-only model)", "tags": "none (model uses no tags)"}

    @classmethod
    def describe_training(cls, dataset: Any, cfg: Any) -> str:
        """How the model was trained, for every report: the next-item softmax of ``model.loss`` unless the model
        trains otherwise (then it says so here)."""
        if not cls.trainable:
            return "none: fitted from the training interactions"
        m = cfg.model
        return describe_loss(m.loss, m.num_sampled, m.negative_power, tuple(dataset.domain_sizes))

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """The training loss, so DistributedDataParallel sees it through forward()."""
        return self.training_loss(seqs)

    def fit_statistics(self, item_counts: np.ndarray) -> None:
        """Called once before training with per-item training counts (internal idx order)."""

    def training_loss(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs (B, L+1) left-padded training sequences; predict seqs[:, 1:] from seqs[:, :-1]."""
        raise NotImplementedError(f"{type(self).__name__} has no training loss (trainable = False)")

    def score_domain(self, history: torch.Tensor, domain: int) -> torch.Tensor:
        """history (B, L) -> scores (B, N_domain) over all items of ``domain`` (higher = better)."""
        raise NotImplementedError

    def learned_summary(self) -> dict[str, Any]:
        """Small learned quantities a report should show (e.g. TEMA's learned fusion weights); {} for none."""
        return {}

    def fit_on_validation(self, batches: Any) -> bool:
        """After training, with the selected checkpoint: fit what a model fits on held-out data (TEMA's validated
        fusion weights). ``batches`` yields (histories (B, L), target domain, targets (B,), the sampled protocol's
        stored negatives (B, C)) of the validation split, indices local to the domain. Returns whether anything
        changed (the run layer then saves the weights again)."""
        return False

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Non-parameter tensors to checkpoint (e.g. popularity counts)."""
        return {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of ``extra_state``."""

    def state_module(self, exportable: bool = False) -> nn.Module:
        """Factorizable models: a module history (B, L) -> (B, D) whose product with ``item_matrix`` rows gives
        ``score_domain``; ``exportable`` asks for one that ONNX can trace."""
        raise NotImplementedError(f"{self.name} {self.not_factorizable}")

    def item_matrix(self) -> torch.Tensor:
        """Factorizable models: (1 + n_items, D) item vectors, row 0 = padding, scored against ``state_module``."""
        raise NotImplementedError(f"{self.name} {self.not_factorizable}")


class TiedItemModel(SequentialModel):
    """A sequence encoder whose states score items through the item embedding itself (GRU4Rec, SASRec).

    Subclasses define ``self.item_emb`` (an ``nn.Embedding`` of 1 + n_items rows, row 0 = padding) and
    ``encode(seqs (B, L)) -> (B, L, D)``, the state after each position.
    """

    item_emb: nn.Embedding
    factorizable = True

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state_module(self, exportable: bool = False) -> nn.Module:
        return LastState(self)

    def item_matrix(self) -> torch.Tensor:
        return self.item_emb.weight

    def training_loss(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs (B, L+1) -> scalar: next-item cross-entropy, softmax within each target's domain.

        Histories are encoded in groups of similar length (``next_item_states``): exact, as the encoders ignore
        left padding."""
        h, targets = next_item_states(seqs, lambda inputs, scored: self.encode(inputs)[scored])  # (P, D), (P,)
        return next_item_loss(h, targets, self.item_emb, self.ctx, self.cfg)

    def score_domain(self, history: torch.Tensor, domain: int) -> torch.Tensor:
        """history (B, L) -> (B, N_domain) scores from the state after the most recent item."""
        h = last_states(history, lambda group, last: self.encode(group)[last])  # (B, D)
        return h @ self.item_emb.weight[self.ctx.domain_slice(domain)].T  # (B, N)


class LastState(nn.Module):
    """history (B, L) ids -> (B, D) a tied model's state at the most recent position."""

    def __init__(self, model: TiedItemModel):
        super().__init__()
        self.model = model

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        return self.model.encode(history)[:, -1]  # (B, D)


def domain_of_ids(ids: torch.Tensor, n_first: int) -> torch.Tensor:
    """ids (any shape, idx + 1, 0 = pad) -> 0/1 domain of each id (pad reads as domain 0)."""
    return (ids > n_first).long()


def next_item_loss(h: torch.Tensor, targets: torch.Tensor, items: torch.Tensor | nn.Module, ctx: ModelContext,
                   cfg: ModelConfig) -> torch.Tensor:
    """Cross-entropy of the next item, softmax restricted to the target's own domain.

    h (P, D) states at scored positions; targets (P,) ids (idx + 1, no padding); ``items`` the item rows: a
    matrix (1 + N_all, D) with the padding row at 0, or a module looking rows up by id (an ``nn.Embedding``).
    ``cfg.loss`` ``full``: exact softmax over every item of the target's domain. ``sampled``: per domain,
    ``cfg.num_sampled`` shared negatives drawn from that domain, uniformly (``cfg.negative_power`` 0: the log-Q
    correction is a constant per domain and cancels, so only accidental hits of the target are masked) or by
    training count with the log-Q correction. Both are ``temarec.models.softmax``, the softmax of TEMA's heads
    (SASRec = TEMA's ID-only merged head).
    """
    def rows_of(ids: torch.Tensor) -> torch.Tensor:  # (K,) padded ids -> (1, K, D)
        return (items(ids) if isinstance(items, nn.Module) else items[ids])[None]

    dom = domain_of_ids(targets, ctx.domain_sizes[0])
    total = h.sum() * 0.0  # connected to the graph, so a batch without targets still backpropagates
    for d in (0, 1):
        rows = torch.nonzero(dom == d, as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        sl, n = ctx.domain_slice(d), ctx.domain_sizes[d]
        hs, local = h[rows][None, None], targets[rows] - sl.start  # (1, 1, P_d, D), (P_d,) index within the domain
        if cfg.loss == "full" or cfg.num_sampled >= n:  # sampling all items: exact is cheaper
            log_p = full_log_prob(hs, rows_of(torch.arange(sl.start, sl.stop, device=h.device)), local)
        else:
            log_p = sampled_log_prob(hs, rows_of, local, n, sl.start, cfg.num_sampled, correction=False,
                                     log_q=ctx.negative_log_q(d, cfg.negative_power, h.device))
        total = total - log_p.sum()
    return total / max(1, targets.numel())
