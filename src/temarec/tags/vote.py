"""Algorithm 1, step 2: frequency-based majority vote over R tag lists (eq. 2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from temarec.tags.text import normalize_tag

Response = Sequence[tuple[str, float]]  # one T_d^(r): N (tag, score) pairs, score in [0, 1]


@dataclass(frozen=True)
class VotedTag:
    tag: str
    votes: int  # number of the R responses that contain the tag
    mean_score: float  # mean relevance score over those responses
    mean_rank: float  # mean 0-based position in those responses (tie-break)


def majority(rounds: int) -> int:
    """Votes needed by default: more than half of the R responses."""
    return rounds // 2 + 1


def vote(responses: Sequence[Response], n: int, min_votes: int | None = None) -> list[VotedTag]:
    """T*_d = Vote({T_d^(r)}): tags named in at least ``min_votes`` responses (default: a majority), ranked by
    votes, then mean score, then mean position, then name; at most ``n``. Tags are compared after
    ``normalize_tag``; a tag repeated inside one response counts once (its best score, first position)."""
    if not responses:
        raise ValueError("the vote needs at least one response")
    need = majority(len(responses)) if not min_votes else min_votes
    scores: dict[str, list[float]] = {}
    ranks: dict[str, list[int]] = {}
    for response in responses:
        seen: dict[str, tuple[float, int]] = {}
        for rank, (tag, score) in enumerate(response):
            key = normalize_tag(tag)
            if not key:
                continue
            best, first = seen.get(key, (float("-inf"), rank))
            seen[key] = (max(best, float(score)), first)
        for key, (score, rank) in seen.items():
            scores.setdefault(key, []).append(score)
            ranks.setdefault(key, []).append(rank)
    voted = [VotedTag(tag=t, votes=len(s), mean_score=round(sum(s) / len(s), 6),
                      mean_rank=round(sum(ranks[t]) / len(ranks[t]), 6))
             for t, s in scores.items() if len(s) >= need]
    voted.sort(key=lambda v: (-v.votes, -v.mean_score, v.mean_rank, v.tag))
    return voted[:n]
