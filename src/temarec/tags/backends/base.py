"""The two backend roles and what they exchange.

A vocabulary backend answers eq. (1): R tag lists T_d^(r) of N (tag, score) pairs for a domain. A matching
backend scores items against the tags of the shared vocabulary on the paper's 1-100 scale.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence

import numpy as np


class TagsError(RuntimeError):
    """A tagging run could not finish (endpoint down, too many failures); finished work stays in the cache."""


@dataclass(frozen=True)
class Item:
    """One distinct item text to score; ``text`` is title and description joined (never empty)."""

    domain: str
    title: str
    description: str
    text: str

    def render(self) -> str:
        """The item as an LLM reads it."""
        lines = [f"Title: {self.title}"] if self.title else []
        if self.description:
            lines.append(f"Description: {self.description}")
        return "\n".join(lines) or self.text


@dataclass
class CallStats:
    """Counters of a run's backend calls (LLM requests), shared by worker threads."""

    calls: int = 0  # requests sent, retries included
    retried: int = 0  # retries (each failed attempt that was tried again)
    failed: int = 0  # requests that failed after all retries
    from_cache: int = 0  # units of work read back from the cache
    prompt_tokens: int = 0  # tokens the model read and wrote, as it reports them (answers that parsed or not)
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        return {"calls": self.calls, "retried": self.retried, "failed": self.failed, "from_cache": self.from_cache,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


@dataclass
class MatchResult:
    scores: np.ndarray  # (n_items, T) uint8: 1-100, or 0 where the pair has no score (keyword: no match)
    failed: np.ndarray  # (n_items,) bool: the backend gave up on the item (it gets no tags)
    errors: list[str] = field(default_factory=list)  # a few failure messages for the report


class VocabBackend(Protocol):
    stats: CallStats

    def describe(self) -> str: ...

    def propose(self, domain: str, corpus: Mapping[str, Sequence[str]], n: int,
                rounds: int) -> list[list[tuple[str, float]]]: ...


class MatchBackend(Protocol):
    stats: CallStats

    def describe(self) -> str: ...

    def score(self, items: Sequence[Item], tags: Sequence[str], progress: "Progress") -> MatchResult: ...


class Progress(Protocol):
    def update(self, n: int = 1) -> object: ...
