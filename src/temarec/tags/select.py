"""Tag selection (Table VI) and tag-vector representation (Table V) over an item-tag score matrix.

Shapes: N items, T tags. ``scores`` is (N, T) on the paper's 1-100 scale, 0 where a pair has no score (keyword
matching without a match, items without text or that the LLM failed on): such pairs are never selected.
Ties are broken by vocabulary order (a stable sort), so every strategy is deterministic.

Every representation row sums to 1 (or is all zero when nothing is selected), so that eq. (3),
e_tag = sum_i w_i E_tag[i], is an average of tag embeddings whichever the strategy (the paper's "weighted
average pooling"); the Table V ablation then changes only how the weight is spread:
  onehot    1 on the best selected tag;
  multihot  1/k on each of the k selected tags (equal weights);
  weighted  s_i / sum_j s_j over the selected tags (normalised relevance scores).
"""

from __future__ import annotations

import numpy as np

SELECTIONS = ("topr", "threshold", "hybrid")
REPRESENTATIONS = ("onehot", "multihot", "weighted")


def ranks(scores: np.ndarray) -> np.ndarray:
    """(N, T) int: 0 for each item's best tag, 1 for the next, ...; ties in vocabulary order."""
    order = np.argsort(-scores.astype(np.int16), axis=1, kind="stable")
    out = np.empty_like(order)
    np.put_along_axis(out, order, np.arange(scores.shape[1])[None, :].repeat(len(scores), axis=0), axis=1)
    return out


def select(scores: np.ndarray, strategy: str, top_r: int = 5, theta: float = 70.0,
           max_tags: int = 10) -> np.ndarray:
    """(N, T) bool mask of the selected tags.

    topr       the R best-scored tags;
    threshold  every tag scored >= theta (variable count, possibly none);
    hybrid     the R best, then any further tag >= theta, up to ``max_tags`` in all.
    """
    scored = scores > 0
    rank = ranks(scores)
    if strategy == "topr":
        return scored & (rank < top_r)
    if strategy == "threshold":
        return scores >= theta
    if strategy == "hybrid":
        return scored & ((rank < top_r) | ((scores >= theta) & (rank < max_tags)))
    raise ValueError(f"unknown selection {strategy!r}; expected one of {SELECTIONS}")


def represent(scores: np.ndarray, mask: np.ndarray, representation: str) -> np.ndarray:
    """(N, T) float32 tag vectors w_v (rows sum to 1, or 0 without a selected tag)."""
    if representation == "onehot":
        best = np.where(mask, scores.astype(np.int16), -1).argmax(axis=1)  # the first of tied best tags
        out = np.zeros(scores.shape, dtype=np.float32)
        has = mask.any(axis=1)
        out[np.flatnonzero(has), best[has]] = 1.0
        return out
    if representation == "multihot":
        weight = mask.astype(np.float64)
    elif representation == "weighted":
        weight = np.where(mask, scores.astype(np.float64), 0.0)
    else:
        raise ValueError(f"unknown representation {representation!r}; expected one of {REPRESENTATIONS}")
    total = weight.sum(axis=1, keepdims=True)
    return np.divide(weight, total, out=np.zeros_like(weight), where=total > 0).astype(np.float32)


def tag_vectors(scores: np.ndarray, selection: str = "hybrid", representation: str = "weighted", top_r: int = 5,
                theta: float = 70.0, max_tags: int = 10) -> np.ndarray:
    return represent(scores, select(scores, selection, top_r, theta, max_tags), representation)
