"""``mined`` vocabulary: an offline, data-driven stand-in for the LLM of eq. (1).

Each of the R "responses" T_d^(r) is mined from a bootstrap resample of the domain's item texts, so Algorithm 1's
vote over R responses keeps its meaning (a tag survives if it is found in most resamples):

1. candidate key phrases: 1-3 word n-grams inside punctuation-delimited segments of the texts, made only of
   alphabetic non-stopword tokens and not of listing noise (units, pack sizes, colours); plural-folded, shown
   in their most frequent surface form;
2. informativeness: document frequency in the domain, times the square root of the phrase's share in this domain
   against the other one (size-corrected), so that both "coffee" and "baking" rank high in their domain and words
   used everywhere drop; phrases that open most of the titles they occur in are taken for brands and dropped;
3. deduplication and clustering with the sentence encoder: greedy, in rank order, a phrase within cosine
   ``cluster_cos`` of a kept phrase joins its cluster;
4. clusters ranked by coverage (resampled items that contain any member); the N best are the response, each with
   s = coverage / best coverage in [0, 1].
"""

from __future__ import annotations

import html
import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import sparse

from temarec.tags.backends.base import CallStats
from temarec.tags.encoder import Encoder
from temarec.tags.text import STOPWORDS, stem, tokens

log = logging.getLogger(__name__)

_NON = re.compile(r"\bnon-(?=[a-z])", re.IGNORECASE)
_SEGMENT = re.compile(r"[,;:()\[\]{}|/!?\"+*]|\s[-\u2013\u2014]+\s|\.\s")
# Listing noise: units, counts, sizes, colours, packaging and marketing words, not semantic tags.
NOISE = frozenset("""
oz ounce ounces fl lb lbs pound pounds g gram grams kg mg ml l liter liters litre quart quarts qt gallon gallons
inch inches in cm mm ft feet foot pack packs pk count ct piece pieces pc pcs set sets box boxes case cases pair pairs
size sizes small medium large mini jumbo extra xl xxl x value bulk total each new improved edition version
black white red blue green yellow orange pink purple brown gray grey silver gold beige ivory clear natural color
colors colour assorted various variety multi multicolor one two three four five six eight ten twelve dozen
gift brand model item product products style design premium quality original classic best great perfect
discontinued manufacturer amazon usa made inc co ltd amp quot nbsp twin queen king part
""".split())
# Allowed inside a phrase ("tea bags", "food storage") but too vague to be a tag alone.
WEAK_ALONE = frozenset("""
bag can package packaging bottle jar pouch container tin carton packet wrapper cup pk
whole dark hot cold raw pure mix blend flavor flavored food home good collection international round air full
instant fresh kitchen free light double finish easy sweet replacement cook brewer
""".split())


_WEAK_STEMS = frozenset(stem(w) for w in WEAK_ALONE)


@dataclass
class PhraseTable:
    """The candidate phrases of one domain and which texts contain them."""

    keys: list[str]  # plural-folded form, the identity of a phrase
    names: list[str]  # display form of each phrase (its most frequent surface form)
    docs: sparse.csc_matrix  # (n_texts, P) 1 if the text contains the phrase
    at_start: sparse.csc_matrix  # (n_texts, P) 1 if the text starts with it
    other_df: np.ndarray  # (P,) document frequency in the other domain(s), scaled to this domain's size
    redundant: np.ndarray  # (P,) bool: a word that mostly occurs inside one longer phrase ("stainless")


def _phrases(text: str, max_n: int = 3) -> tuple[dict[str, str], set[str]]:
    """Stem key -> surface form of the n-grams of one text, and the keys that open the text."""
    found: dict[str, str] = {}
    opening: set[str] = set()
    first = True
    for segment in _SEGMENT.split(_NON.sub("non", html.unescape(text))):  # "Non-Stick" = "nonstick"
        words = tokens(segment)
        good = [w.isalpha() and len(w) > 1 and w not in STOPWORDS and w not in NOISE
                if "'" not in w else w.split("'")[0].isalpha() for w in words]
        for i in range(len(words)):
            for n in range(1, max_n + 1):
                if i + n > len(words) or not all(good[i:i + n]):
                    break
                key = " ".join(stem(w) for w in words[i:i + n])
                if n == 1 and key in _WEAK_STEMS:
                    continue
                found.setdefault(key, " ".join(words[i:i + n]))
                if first and i == 0:
                    opening.add(key)
        if words:
            first = False
    return found, opening


def _matrix(rows: list[list[int]], n_cols: int, keep: np.ndarray) -> sparse.csc_matrix:
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.fromiter((j for r in rows for j in r), dtype=np.int64, count=int(indptr[-1]))
    m = sparse.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(rows), n_cols))
    return m.tocsc()[:, keep]


def phrase_table(texts: Sequence[str], other_texts: Sequence[str], min_df: int,
                 contained_share: float = 0.8) -> PhraseTable:
    keys: dict[str, int] = {}
    surfaces: dict[str, Counter] = defaultdict(Counter)
    rows: list[list[int]] = []
    starts: list[list[int]] = []
    for text in texts:
        found, opening = _phrases(text)
        rows.append([keys.setdefault(k, len(keys)) for k in found])
        starts.append([keys[k] for k in opening])
        for k, surface in found.items():
            surfaces[k][surface] += 1
    all_keys = list(keys)
    df = np.bincount(np.fromiter((j for r in rows for j in r), dtype=np.int64), minlength=len(all_keys))
    keep = np.flatnonzero(df >= min_df)
    kept = [all_keys[j] for j in keep]
    index = {k: i for i, k in enumerate(kept)}
    other = np.zeros(len(kept))
    for text in other_texts:
        for k in _phrases(text)[0]:
            if k in index:
                other[index[k]] += 1
    kept_df = df[keep]
    redundant = np.zeros(len(kept), dtype=bool)
    for i, k in enumerate(kept):  # "stainless" -> "stainless steel": the longer phrase says it better
        for word in set(k.split()) if " " in k else ():
            j = index.get(word)
            if j is not None and kept_df[i] >= contained_share * kept_df[j]:
                redundant[j] = True
    return PhraseTable(keys=kept, names=[surfaces[k].most_common(1)[0][0] for k in kept],
                       docs=_matrix(rows, len(all_keys), keep), at_start=_matrix(starts, len(all_keys), keep),
                       other_df=other * len(texts) / max(len(other_texts), 1), redundant=redundant)


class MinedVocab:
    """Vocabulary backend: R bootstrap-mined tag lists per domain (see the module docstring)."""

    def __init__(self, encoder: Encoder, seed: int = 0, candidates_per_tag: int = 4, cluster_cos: float = 0.75,
                 brand_share: float = 0.5):
        self.encoder = encoder
        self.seed = seed
        self.candidates_per_tag = candidates_per_tag
        self.cluster_cos = cluster_cos
        self.brand_share = brand_share
        self.stats = CallStats()

    def describe(self) -> str:
        return f"mined vocabulary (key phrases of the item texts, clustered with {self.encoder.name}, bootstrap vote)"

    def propose(self, domain: str, corpus: Mapping[str, Sequence[str]], n: int, rounds: int) -> list[list[tuple[str, float]]]:
        """R responses for ``domain``; ``corpus`` maps every domain to its item texts (the others are background)."""
        texts = [t for t in corpus[domain] if t]
        if not texts:
            raise ValueError(f"domain {domain!r} has no item text to mine a vocabulary from")
        others = [t for d, ts in corpus.items() if d != domain for t in ts if t]
        min_df = max(3, int(0.001 * len(texts)))
        table = phrase_table(texts, others, min_df)
        if not table.keys:
            raise ValueError(f"domain {domain!r}: no phrase occurs in {min_df}+ item texts; too little text to mine")
        rng = np.random.default_rng([self.seed, *domain.encode()])
        weights = [np.bincount(rng.integers(0, len(texts), len(texts)), minlength=len(texts)).astype(np.float32)
                   for _ in range(rounds)]  # bootstrap multiplicities, one resample per round
        ranked = [self._rank(table, w)[: self.candidates_per_tag * n] for w in weights]
        pool = sorted(set(j for r in ranked for j in r))
        vecs = self.encoder.encode([table.names[j] for j in pool])  # (|pool|, D), cached across rounds and runs
        emb = {j: vecs[i] for i, j in enumerate(pool)}
        return [self._cluster(table, emb, order, w, n) for order, w in zip(ranked, weights)]

    def _rank(self, table: PhraseTable, weight: np.ndarray) -> list[int]:
        df = table.docs.T @ weight  # (P,) resampled document frequency
        start = table.at_start.T @ weight
        score = df * np.sqrt(df / np.maximum(df + table.other_df, 1e-9))
        score[start > self.brand_share * np.maximum(df, 1e-9)] = 0.0  # brand-like: opens most titles it is in
        score[table.redundant] = 0.0
        return [int(j) for j in np.argsort(-score, kind="stable") if score[j] > 0]

    def _cluster(self, table: PhraseTable, emb: Mapping[int, np.ndarray], order: list[int], weight: np.ndarray,
                 n: int) -> list[tuple[str, float]]:
        reps: list[int] = []
        members: dict[int, list[int]] = {}
        for j in order:
            if reps:
                sims = np.stack([emb[r] for r in reps]) @ emb[j]
                best = int(np.argmax(sims))
                if sims[best] >= self.cluster_cos:
                    members[reps[best]].append(j)
                    continue
            reps.append(j)
            members[j] = [j]
        coverage = np.array([weight @ (table.docs[:, members[r]].sum(axis=1).A1 > 0) for r in reps])
        best = sorted(range(len(reps)), key=lambda i: (-coverage[i], table.keys[reps[i]]))[:n]
        top = float(coverage[best[0]]) if best else 1.0
        return [(table.names[reps[i]], round(float(coverage[i]) / top, 4)) for i in best]
