"""The Python API over a trained run: the data's item ids in, ranked item ids of one domain out.

    rec = Recommender.load("runs/sasrec")
    result = rec.recommend(["F00012", "K00345"], domain="Kitchen", k=10)
    for r in result:  # dicts: item, score, title, domain (+ explanation for models that explain)
        print(r["item"], r["title"])

A history is a list of the data's item ids in time order, or of ``(item id, timestamp)`` pairs, which are
sorted by timestamp (stable: ties keep the given order). Ids the run's dataset does not know are skipped and
listed in ``result.unknown_items`` (``strict=True`` raises instead). A history with no known item is answered
from training popularity and says so (``result.fallback == "popularity"``). Internal indices never leave
this module.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from temarec.config import Config
from temarec.data.dataset import Dataset
from temarec.models.base import SequentialModel
from temarec.runs import item_counts, load_run, read_run_info
from temarec.serve.fused import FusedScorer, fused_scorer
from temarec.serve.scoring import Factorized, factorize

log = logging.getLogger(__name__)

POPULARITY = "popularity"


class RecommendError(ValueError):
    """A request the recommender cannot answer; the message says what to change."""


class UnknownItemsError(RecommendError):
    def __init__(self, items: Sequence[str]):
        self.items = list(items)
        shown = ", ".join(repr(i) for i in self.items[:10]) + (" ..." if len(self.items) > 10 else "")
        super().__init__(f"{len(self.items)} unknown item id(s) in the history: {shown} "
                         "(pass strict=False to skip them)")


@dataclass(frozen=True)
class Query:
    """One request: a history (the data's ids, or (id, timestamp) pairs), its domain, k and flags."""

    history: Sequence[Any]
    domain: str
    k: int = 10
    exclude_seen: bool = True
    strict: bool = False
    explain: bool = True


@dataclass
class Recommendations:
    """One domain's top-k for one history. Iterating yields the recommended items as dicts."""

    domain: str
    items: list[dict[str, Any]]
    unknown_items: list[str] = field(default_factory=list)
    fallback: str | None = None  # "popularity" when the history held no known item
    history_used: int = 0  # known items of the history that the model read (at most max_len)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]

    @property
    def item_ids(self) -> list[str]:
        return [r["item"] for r in self.items]

    def to_dict(self) -> dict[str, Any]:
        return {"domain": self.domain, "items": self.items, "unknown_items": self.unknown_items,
                "fallback": self.fallback, "history_used": self.history_used}


def default_threads() -> int:
    """Intra-op threads for serving: 1.

    One request is one short encoder pass and one (1, D) @ (D, N) product, about a millisecond on one core; a
    second thread buys little and, when the cores are busy (the HTTP server, its clients, other work), OpenMP's
    waiting threads make latency far worse (measured on 2 busy cores, SASRec on 64k items: p50 ~25 ms with one
    thread, ~240 ms with two). Raise it with ``--threads`` for large batches on an otherwise idle machine.
    """
    return 1


class Recommender:
    """A trained model with its item tables, ready to answer requests (CPU, ``torch.inference_mode``)."""

    def __init__(self, model: SequentialModel, dataset: Dataset, cfg: Config, run_info: dict[str, Any] | None = None,
                 metrics: dict[str, Any] | None = None, threads: int | None = None):
        if threads:  # process-wide; the CLI passes default_threads(), library callers keep their own setting
            torch.set_num_threads(threads)
        self.model = model.eval()
        self.cfg = cfg
        self.max_len = cfg.data.max_len
        self.domains: tuple[str, str] = dataset.domains
        self.dataset_name = dataset.describe()
        self.dataset_dir = dataset.root
        self.run_info = run_info or {}
        self.metrics = metrics or {}
        items = dataset.items
        self._ids: list[str] = [str(i) for i in items["item"].tolist()]
        self._index: dict[str, int] = {item: i for i, item in enumerate(self._ids)}
        self._titles: list[str | None] = [_text_or_none(t) for t in items["title"].tolist()]
        self._domain_names: list[str] = [str(d) for d in items["domain"].tolist()]
        self._offsets = dataset.domain_offsets
        self._sizes = dataset.domain_sizes
        self._counts = item_counts(dataset)
        self._search_keys: list[str] | None = None
        self._popular = [self._popularity_order(d) for d in (0, 1)]  # local indices, most popular first
        self._tags = ItemTags.load(dataset, cfg)
        self._explains = callable(getattr(model, "explain", None))
        with torch.inference_mode():
            self._fact: Factorized | None = factorize(model)
        self._fused: FusedScorer | None = None if self._fact else fused_scorer(model)
        log.info("serving %s on %s (%s)", self.model_name, self.dataset_name,
                 "cached item matrices" if self._fact else "fused heads" if self._fused else "score_domain")

    @classmethod
    def load(cls, run_dir: str | Path, threads: int | None = None) -> "Recommender":
        """Load a run folder written by ``temarec train`` (weights via safetensors, no pickle)."""
        model, dataset, cfg = load_run(run_dir)
        run_info, metrics = read_run_info(run_dir)
        return cls(model, dataset, cfg, run_info=run_info, metrics=metrics, threads=threads)

    # --- what the service reports about itself -------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.cfg.model.name

    @property
    def tag_source(self) -> str:
        return str(self.run_info.get("protocol", {}).get("tags", "none (model uses no tags)"))

    def metadata(self) -> dict[str, Any]:
        protocol = self.run_info.get("protocol", {})
        return {"model": self.model_name, "data": self.dataset_name, "domains": list(self.domains),
                "items": {d: int(n) for d, n in zip(self.domains, self._sizes)},
                "max_len": self.max_len, "protocol": protocol, "tags": self.tag_source,
                "explanations": self._explains, "test": self.metrics.get("test"),
                "selected_epoch": self.metrics.get("selected_epoch")}

    def item_ids(self, domain: str | None = None) -> list[str]:
        """The data's item ids of ``domain`` (all items when None), in the order of the model's item rows."""
        if domain is None:
            return list(self._ids)
        d = self._domain_index(domain)
        lo = self._offsets[d]
        return self._ids[lo:lo + self._sizes[d]]

    def search(self, query: str = "", domain: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Items whose title or id contains ``query`` (case-insensitive), most trained-on first; an empty query
        lists the most popular items. ``domain`` restricts to one domain."""
        _check_k(limit)
        wanted = None if domain is None else self._domain_index(domain)
        needle = str(query).strip().lower()
        if self._search_keys is None:  # built on first use: one lower-cased "id title" string per item
            self._search_keys = [f"{i} {t or ''}".lower() for i, t in zip(self._ids, self._titles)]
        order = np.argsort(-self._counts, kind="stable")  # ties: item table order
        out: list[dict[str, Any]] = []
        for idx in order:
            if wanted is not None and not self._offsets[wanted] <= idx < self._offsets[wanted] + self._sizes[wanted]:
                continue
            if needle and needle not in self._search_keys[idx]:
                continue
            out.append({"item": self._ids[idx], "title": self._titles[idx], "domain": self._domain_names[idx],
                        "train_interactions": int(self._counts[idx])})
            if len(out) == limit:
                break
        return out

    def item(self, item_id: str) -> dict[str, Any]:
        """One of the data's ids -> title, domain, training interactions, and its tags when the dataset has tags."""
        idx = self._index.get(str(item_id))
        if idx is None:
            raise UnknownItemsError([str(item_id)])
        row: dict[str, Any] = {"item": self._ids[idx], "title": self._titles[idx], "domain": self._domain_names[idx],
                               "train_interactions": int(self._counts[idx])}
        if self._tags is not None:
            row["tags"] = self._tags.of(idx)
        return row

    # --- requests ---------------------------------------------------------------------------------------------

    def recommend(self, history: Sequence[Any], domain: str, k: int = 10, exclude_seen: bool = True,
                  strict: bool = False, explain: bool = True) -> Recommendations:
        """Top-``k`` items of ``domain`` after ``history`` (the data's ids, or (id, timestamp) pairs)."""
        return self.recommend_batch([history], domain, k=k, exclude_seen=exclude_seen, strict=strict,
                                    explain=explain)[0]

    def recommend_batch(self, histories: Sequence[Sequence[Any]], domains: str | Sequence[str], k: int = 10,
                        exclude_seen: bool = True, strict: bool = False,
                        explain: bool = True) -> list[Recommendations]:
        """One ``Recommendations`` per history; ``domains`` is one name for all rows or one name per row.

        Rows that share a domain are scored in one forward pass. The first bad row raises its ``RecommendError``.
        """
        if isinstance(histories, (str, bytes)) or not isinstance(histories, Sequence):
            raise RecommendError("histories must be a list of histories (lists of item ids)")
        if isinstance(domains, str):
            domains = [domains] * len(histories)
        if len(domains) != len(histories):
            raise RecommendError(f"got {len(domains)} domains for {len(histories)} histories; "
                                 "pass one domain name, or one per history")
        for d in domains:
            self._domain_index(d)
        _check_k(k)
        answers = self.answer([Query(h, d, k, exclude_seen, strict, explain) for h, d in zip(histories, domains)])
        for a in answers:
            if isinstance(a, RecommendError):
                raise a
        return answers  # type: ignore[return-value]

    def answer(self, queries: Sequence[Query]) -> list[Recommendations | RecommendError]:
        """Each query's answer, or the ``RecommendError`` that says what is wrong with it (the others still answer).

        The queries of one domain are scored in one forward pass whatever their k and flags: the service's
        micro-batches (serve/batching.py) mix requests of many users.
        """
        out: list[Recommendations | RecommendError | None] = [None] * len(queries)
        resolved: list[tuple[int, list[int], list[str]] | None] = []
        for q, query in enumerate(queries):
            try:
                d = self._domain_index(query.domain)
                _check_k(query.k)
                resolved.append((d, *self._resolve(query.history, query.strict)))
            except RecommendError as exc:
                out[q] = exc
                resolved.append(None)
        for d in (0, 1):
            rows = [q for q, r in enumerate(resolved) if r is not None and r[0] == d and r[1]]
            if rows:
                histories = [resolved[q][1] for q in rows]  # type: ignore[index]
                ranked = self._rank(d, histories, [queries[q] for q in rows])
                for q, rec in zip(rows, ranked):
                    out[q] = rec
        for q, r in enumerate(resolved):
            if r is None:
                continue
            # an empty answer is an answer: a history that already holds every item of the domain leaves nothing
            # to recommend once seen items go; only a history with no known item falls back to popularity
            rec = out[q] if out[q] is not None else self._popular_top(r[0], queries[q].k)
            rec.unknown_items = r[2]  # type: ignore[union-attr]
            out[q] = rec
        return out  # type: ignore[return-value]

    # --- internals --------------------------------------------------------------------------------------------

    def _domain_index(self, name: Any) -> int:
        if not isinstance(name, str) or name not in self.domains:
            raise RecommendError(f"unknown domain {name!r}; this model serves {list(self.domains)}")
        return self.domains.index(name)

    def _resolve(self, history: Any, strict: bool) -> tuple[list[int], list[str]]:
        """A history (ids or (id, ts) pairs) -> (internal idx in time order, unknown ids in given order)."""
        if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
            raise RecommendError("a history must be a list of item ids or of (item id, timestamp) pairs, "
                                 f"got {type(history).__name__}")
        pairs = [isinstance(h, (tuple, list)) for h in history]
        if any(pairs):
            if not all(pairs) or any(len(h) != 2 for h in history):
                raise RecommendError("a history mixes plain ids with (id, timestamp) pairs; use one form")
            stamps = [_timestamp(ts) for _, ts in history]
            order = sorted(range(len(history)), key=stamps.__getitem__)  # sorted() is stable: ties keep order
            ids = [history[i][0] for i in order]
        else:
            ids = list(history)
        known, unknown = [], []
        for item in ids:
            if isinstance(item, bool) or not isinstance(item, (str, int, np.integer)):
                raise RecommendError(f"item ids are strings (or integers), got {type(item).__name__}: {item!r}")
            idx = self._index.get(str(item))
            if idx is None:
                unknown.append(str(item))
            else:
                known.append(idx)
        if unknown and strict:
            raise UnknownItemsError(unknown)
        return known, unknown

    def _history_tensor(self, histories: list[list[int]]) -> torch.Tensor:
        """(B, L) left-padded ids (idx + 1); L is the longest history of the batch (at most max_len).

        SASRec and GRU4Rec give the same scores whatever the left padding, so the factorized path pads only to the
        batch's longest row; other models get the full max_len they were trained with.
        """
        L = min(self.max_len, max(len(h) for h in histories)) if self._fact else self.max_len
        out = np.zeros((len(histories), L), dtype=np.int64)
        for row, hist in enumerate(histories):
            tail = np.asarray(hist[-L:], dtype=np.int64)
            out[row, L - len(tail):] = tail + 1
        return torch.from_numpy(out)

    @torch.inference_mode()
    def _rank(self, d: int, histories: list[list[int]], queries: list[Query]) -> list[Recommendations]:
        """One forward pass for the histories of domain ``d``; each row keeps its own k and flags."""
        hist = self._history_tensor(histories)  # (B, L)
        parts = None  # what the model's explain can reuse from scoring (TEMA: states and head normalisers)
        if self._fact:
            scores = self._fact(hist, d)  # (B, N)
        elif self._fused is not None:
            scores, parts = self._fused(hist, d)  # (B, N), what explain reuses
        elif self._explains and hasattr(self.model, "score_parts") and any(q.explain for q in queries):
            scores, parts = self.model.score_parts(hist, d)
        else:
            scores = self.model.score_domain(hist, d)
        lo, n = self._offsets[d], self._sizes[d]
        if any(q.exclude_seen for q in queries):
            # a model's scores may be a view of its own buffers (pop expands one row): mask a copy
            scores = scores.float() if self._fact or self._fused is not None else scores.float().clone()
            for row, (h, q) in enumerate(zip(histories, queries)):
                seen = [i - lo for i in h if lo <= i < lo + n] if q.exclude_seen else []
                if seen:
                    scores[row, seen] = -math.inf
        top_scores, top_local = torch.topk(scores, min(max(q.k for q in queries), n), dim=1)  # (B, k_max)
        locals_, items_ = [], []
        for row, q in enumerate(queries):
            keep = torch.isfinite(top_scores[row, :q.k])
            local = top_local[row, :q.k][keep].tolist()
            locals_.append(local)
            items_.append([self._entry(lo + j, s, d) for j, s in zip(local, top_scores[row, :q.k][keep].tolist())])
        explained = [row for row, q in enumerate(queries) if q.explain and self._explains and items_[row]]
        if explained:
            reuse = {} if parts is None else {"parts": parts.rows(explained)}
            whys = self.model.explain(hist[explained], d, [locals_[row] for row in explained], **reuse)
            for row, why in zip(explained, whys):
                for item, w in zip(items_[row], why):
                    item["explanation"] = w
        return [Recommendations(domain=self.domains[d], items=items, history_used=min(len(h), self.max_len))
                for items, h in zip(items_, histories)]

    def _entry(self, idx: int, score: float, d: int) -> dict[str, Any]:
        return {"item": self._ids[idx], "score": float(score), "title": self._titles[idx], "domain": self.domains[d]}

    def _popularity_order(self, d: int) -> np.ndarray:
        lo, n = self._offsets[d], self._sizes[d]
        return np.argsort(-self._counts[lo:lo + n], kind="stable")  # ties: item table order

    def _popular_top(self, d: int, k: int) -> Recommendations:
        lo = self._offsets[d]
        items = [self._entry(lo + int(j), float(self._counts[lo + int(j)]), d) for j in self._popular[d][:k]]
        return Recommendations(domain=self.domains[d], items=items, fallback=POPULARITY, history_used=0)


def _check_k(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise RecommendError(f"k must be a positive integer, got {k!r}")


def _timestamp(ts: Any) -> float:
    if isinstance(ts, bool) or not isinstance(ts, (int, float, np.integer, np.floating)) or not math.isfinite(ts):
        raise RecommendError(f"timestamps must be finite numbers, got {ts!r}")
    return float(ts)


def _text_or_none(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


class ItemTags:
    """The selected tags of each item (the run's tags.selection x representation), read from DATASET/tags/."""

    def __init__(self, vectors: np.ndarray, names: list[str]):
        self.vectors, self.names = vectors, names  # (n_items, T) float32 w_v, rows = internal idx

    @classmethod
    def load(cls, dataset: Dataset, cfg: Config) -> "ItemTags | None":
        """None when the dataset folder has no (current) tags: items are then served without them."""
        if not dataset.tag_meta():
            return None
        from temarec.tags import load_tag_vectors

        try:
            vectors, names = load_tag_vectors(dataset, cfg.tags.selection, cfg.tags.representation)
        except (FileNotFoundError, ValueError) as exc:
            log.warning("serving items without tags: %s", exc)
            return None
        return cls(vectors, list(names))

    def of(self, idx: int) -> list[dict[str, Any]]:
        row = self.vectors[idx]
        order = np.flatnonzero(row)[np.argsort(-row[np.flatnonzero(row)], kind="stable")]
        return [{"tag": self.names[t], "weight": float(row[t])} for t in order]
