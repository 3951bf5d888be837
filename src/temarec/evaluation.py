"""Evaluation: ranks under both protocols, metrics as small pure functions over ranks, and the report.

Protocols (both always reported):
- ``sampled``: the target against the dataset's stored 999 negatives from its domain, drawn by the preset
  ``eval.negatives`` (``c2dsr``, the paper's, or ``abxi``); rank = 1 + #(negative score > target score). The rank with >= is also computed and a warning is logged
  when the two disagree on more than ``eval.tie_warn_share`` of instances (a collapsed model scores ties).
- ``full``: the target's rank among all items of its domain, rank = 1 + #(other items scoring higher).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import pandas as pd
import torch

from temarec.config import EvalConfig
from temarec.data.batches import pad_histories
from temarec.data.dataset import NEGATIVE_PRESETS, Dataset
from temarec.significance import instance_frame

log = logging.getLogger(__name__)

PROTOCOLS = ("sampled", "full")
METRIC_ORDER = ("mrr", "ndcg@5", "ndcg@10", "hr@1", "hr@5", "hr@10")


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank, untruncated. ranks are 1-based."""
    return float(np.mean(1.0 / ranks)) if len(ranks) else float("nan")


def ndcg_at(ranks: np.ndarray, k: int) -> float:
    """NDCG@k with one relevant item: 1 / log2(rank + 1) when rank <= k, else 0."""
    if not len(ranks):
        return float("nan")
    gains = np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)
    return float(np.mean(gains))


def hit_at(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(ranks <= k)) if len(ranks) else float("nan")


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {"mrr": mrr(ranks)}
    out.update({f"ndcg@{k}": ndcg_at(ranks, k) for k in ks if k > 1})
    out.update({f"hr@{k}": hit_at(ranks, k) for k in ks})
    out["n"] = int(len(ranks))
    return out


def expected_random_mrr(num_candidates: int) -> float:
    """MRR of a random scorer among ``num_candidates``: H(n) / n (0.75% for 1,000)."""
    return sum(1.0 / r for r in range(1, num_candidates + 1)) / num_candidates


class Scorer(Protocol):
    """What evaluation needs of a model (every ``temarec.models.base.SequentialModel`` is one)."""

    name: str

    def eval(self) -> Any: ...

    def parameters(self) -> Iterator[torch.Tensor]: ...

    def score_domain(self, history: torch.Tensor, domain: int) -> torch.Tensor:
        """history (B, L) left-padded ids -> (B, N_domain) scores."""


@dataclass
class Ranks:
    """Per-instance ranks of one split, in the split's row order."""

    sampled: np.ndarray  # 1 + #(neg > target)
    sampled_ge: np.ndarray  # 1 + #(neg >= target)
    full: np.ndarray  # 1 + #(other items of the domain > target)
    domain: np.ndarray  # 0/1 target domain


def split_batches(dataset: Dataset, split: str, batch_size: int, max_len: int,
                  device: torch.device | str = "cpu") -> Iterator[tuple[np.ndarray, torch.Tensor, int, torch.Tensor]]:
    """The instances of ``split``, domain by domain: (rows of the split (B,), left-padded histories (B, L) on
    ``device``, target domain, targets (B,) as local indices within that domain)."""
    frame = dataset.split(split)
    domains, targets = frame["domain"].to_numpy(), frame["target"].to_numpy()
    histories = frame["history"].tolist()
    for d in (0, 1):
        rows = np.flatnonzero(domains == d)
        for start in range(0, len(rows), batch_size):
            b = rows[start:start + batch_size]
            hist = pad_histories([histories[i] for i in b], max_len).to(device)  # (B, L)
            yield b, hist, d, torch.from_numpy(targets[b].astype(np.int64) - dataset.domain_offsets[d])


@torch.no_grad()
def rank_split(model: Scorer, dataset: Dataset, split: str, cfg: EvalConfig, max_len: int) -> Ranks:
    """Score every instance of ``split`` once per domain and rank its target under both protocols."""
    frame = dataset.split(split)
    negatives = dataset.negatives(split, cfg.negatives)
    domains = frame["domain"].to_numpy()
    ranks = {name: np.zeros(len(frame), dtype=np.int64) for name in ("sampled", "sampled_ge", "full")}
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    for b, hist, d, tgt in split_batches(dataset, split, cfg.batch_size, max_len, device):
        offset = dataset.domain_offsets[d]
        scores = model.score_domain(hist, d).float().cpu()  # (B, N)
        if not torch.isfinite(scores).all():
            raise FloatingPointError(f"{model.name} produced non-finite scores on {split}; the model diverged")
        t_score = scores.gather(1, tgt[:, None])  # (B, 1)
        neg = scores.gather(1, torch.from_numpy(negatives[b].astype(np.int64) - offset))  # (B, 999)
        ranks["sampled"][b] = 1 + (neg > t_score).sum(1).numpy()
        ranks["sampled_ge"][b] = 1 + (neg >= t_score).sum(1).numpy()
        ranks["full"][b] = 1 + (scores > t_score).sum(1).numpy()
    return Ranks(domain=domains, **ranks)


def metrics_from_split_ranks(ranks: Ranks, domains: Sequence[str], cfg: EvalConfig) -> dict[str, Any]:
    """{"sampled": {domain: metrics}, "full": {...}, "ties": {...}} for one split."""
    out: dict[str, Any] = {}
    for protocol in PROTOCOLS:
        r = getattr(ranks, protocol)
        out[protocol] = {name: metrics_from_ranks(r[ranks.domain == d], cfg.ks) for d, name in enumerate(domains)}
    disagree = float(np.mean(ranks.sampled != ranks.sampled_ge))
    out["ties"] = {"share_rank_gt_ne_ge": disagree}
    if disagree > cfg.tie_warn_share:
        log.warning("ranks with > and >= disagree on %.1f%% of instances: there the target's score equals some "
                    "negatives' exactly, and the '>' rank counts those ties in its favour. A large share means "
                    "collapsed or constant scores; treat the sampled metrics with care", 100 * disagree)
    return out


def evaluate(model: Scorer, dataset: Dataset, split: str, cfg: EvalConfig, max_len: int) -> dict[str, Any]:
    return metrics_from_split_ranks(rank_split(model, dataset, split, cfg, max_len), dataset.domains, cfg)


def evaluate_with_ranks(model: Scorer, dataset: Dataset, split: str, cfg: EvalConfig,
                        max_len: int) -> tuple[dict[str, Any], pd.DataFrame]:
    """``evaluate``'s metrics and the per-instance ranks behind them (the layout of a run's ranks.parquet)."""
    ranks = rank_split(model, dataset, split, cfg, max_len)
    return metrics_from_split_ranks(ranks, dataset.domains, cfg), instance_ranks(ranks, dataset, split)


def instance_ranks(ranks: Ranks, dataset: Dataset, split: str) -> pd.DataFrame:
    """Per-instance ranks with what the significance slices need: is the target cold (absent from every
    training sequence), and does the history hold an item of the target's domain."""
    frame = dataset.split(split)
    seen = np.zeros(dataset.n_items, dtype=bool)
    for seq in dataset.train["items"]:
        seen[np.asarray(seq, dtype=np.int64)] = True
    cold = ~seen[frame["target"].to_numpy().astype(np.int64)]
    own = np.array([bool(np.any(dataset.domain_of(np.asarray(h, dtype=np.int64)) == d))
                    for h, d in zip(frame["history"], ranks.domain)], dtype=bool)
    return instance_frame(split, ranks.domain, ranks.sampled, ranks.full, cold, own)


def selection_score(split_metrics: dict[str, Any]) -> float:
    """Model selection criterion on validation: mean over domains of the sampled MRR."""
    values = [m["mrr"] for m in split_metrics["sampled"].values()]
    return float(np.mean(values))


def format_table(split_metrics: dict[str, Any], metrics: Sequence[str] = METRIC_ORDER) -> str:
    """Markdown table in %, one row per (protocol, domain)."""
    lines = ["| protocol | domain | n | " + " | ".join(m.upper() for m in metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]
    for protocol in PROTOCOLS:
        for domain, m in split_metrics[protocol].items():
            vals = " | ".join(_pct(m[k]) for k in metrics)
            lines.append(f"| {protocol} | {domain} | {m['n']:,} | {vals} |")
    return "\n".join(lines)


def _pct(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _flat_lines(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """Nested dicts with numbers at the leaves -> one line per innermost dict:
    {"fusion": {"Food target": {"views": {"Food": 1.0, "Kitchen": 0.3}}}} -> ["fusion, Food target, views: Food
    1.000, Kitchen 0.300"]."""
    if not any(isinstance(v, dict) for v in tree.values()):
        return [f"{prefix}: " + ", ".join(f"{k} {v:.3f}" for k, v in tree.items())] if tree else []
    return [line for k, v in tree.items() for line in _flat_lines(v if isinstance(v, dict) else {k: v},
                                                                    f"{prefix}, {k}" if prefix else k)]


def format_report(metrics: dict[str, Any]) -> str:
    """The printed report: what produced the numbers, then the test (and validation) tables."""
    p = metrics["protocol"]
    head = [
        f"model:     {p['model']}",
        f"data:      {p['data']}",
        f"protocol:  sampled = target vs {p['negatives']} stored negatives of its domain "
        f"(preset {p.get('negatives_preset', 'c2dsr')}: {p.get('negatives_rule', NEGATIVE_PRESETS['c2dsr'])}); "
        f"full = rank among all items of the domain; selection on validation ({p['selection']})",
        f"encoders:  {p['encoders']}",
        f"tags:      {p['tags']}",
    ]
    if p.get("training"):  # runs before the field existed do not have it
        head.append(f"training:  {p['training']}")
    if p.get("notes"):
        head.append(f"notes:     {p['notes']}")
    head += [f"learned:   {line}" for line in _flat_lines(metrics.get("learned", {}))]
    body = []
    for split in ("valid", "test"):
        if split in metrics:
            body += [f"\n{split} (metrics in %):", format_table(metrics[split])]
    return "\n".join(head + body)
