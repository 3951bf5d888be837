"""Is a difference real? Per-instance ranks of a run, paired tests between models, and slices of the test set.

Every run keeps the rank of each validation and test instance (``ranks.parquet``, written by training), so two
models scored on the same split can be compared instance by instance:

- **Paired test**: Wilcoxon signed-rank on the reciprocal ranks of the same instances (two-sided, zero differences
  dropped: ``zero_method="wilcox"``). Per seed (the runs of one seed of each model) and across seeds (each
  instance's reciprocal rank averaged over the seeds both models have), per domain and protocol.
- **Slices**: cold targets (the target item never occurs in the training sequences) against warm ones, and
  histories that hold at least one item of the target's domain against histories that hold none.

The reciprocal rank is the per-instance term of MRR, so a test on it asks "does MRR differ?" without assuming the
differences are normal (they are not: most are 0 or tiny, a few are near 1). Wilcoxon's null is that the paired
differences are symmetric about zero, so on thousands of instances it finds a consistent shift of the typical
difference even where the *mean* difference (the MRR difference itself) is a few hundredths of a point. Beside its p,
the across-seeds comparison carries a **paired bootstrap 95% interval of the mean difference** (instances resampled
with replacement, fixed seed): the size of the MRR difference and how sure we are of it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

RANKS_FILE = "ranks.parquet"
RANK_COLUMNS = ("split", "row", "domain", "sampled", "full", "cold", "own_domain_history")
SLICES = {  # name -> (column, value): the instances a slice keeps
    "cold": ("cold", True),
    "warm": ("cold", False),
    "no own-domain history": ("own_domain_history", False),
    "own-domain history": ("own_domain_history", True),
}


def instance_frame(split: str, domain: np.ndarray, sampled: np.ndarray, full: np.ndarray, cold: np.ndarray,
                   own_domain_history: np.ndarray) -> pd.DataFrame:
    """One split's per-instance ranks in the split's row order, in the layout of ``ranks.parquet``."""
    return pd.DataFrame({
        "split": split, "row": np.arange(len(domain), dtype=np.int64), "domain": np.asarray(domain, np.int8),
        "sampled": np.asarray(sampled, np.int64), "full": np.asarray(full, np.int64),
        "cold": np.asarray(cold, bool), "own_domain_history": np.asarray(own_domain_history, bool)})


def read_ranks(run_dir: str | Path) -> pd.DataFrame | None:
    """A run's per-instance ranks, or None for a run written before runs kept them."""
    path = Path(run_dir) / RANKS_FILE
    if not path.is_file():
        return None
    frame = pd.read_parquet(path)
    missing = set(RANK_COLUMNS) - set(frame.columns)
    if missing:
        raise ValueError(f"{path} lacks column(s) {sorted(missing)}; retrain the run or delete the file")
    return frame


def wilcoxon_rr(ranks_a: np.ndarray, ranks_b: np.ndarray) -> dict[str, float]:
    """Paired two-sided Wilcoxon signed-rank test on reciprocal ranks (a against b, same instances in order).

    Returns n (pairs), n_nonzero (pairs that differ), mean_diff (MRR(a) - MRR(b)) and p (1.0 when no pair differs:
    nothing to test). Uses the normal approximation beyond 50 differing pairs, the exact distribution below.
    """
    from scipy.stats import wilcoxon

    a = 1.0 / np.asarray(ranks_a, dtype=np.float64)
    b = 1.0 / np.asarray(ranks_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a paired test needs the same instances on both sides; got {a.shape} and {b.shape}")
    diff = a - b
    nonzero = int(np.count_nonzero(diff))
    out = {"n": int(len(a)), "n_nonzero": nonzero, "mean_diff": float(diff.mean()) if len(a) else math.nan}
    if nonzero == 0:
        out["p"] = 1.0
    else:
        out["p"] = float(wilcoxon(a, b, zero_method="wilcox", alternative="two-sided",
                                  method="exact" if nonzero <= 50 else "approx").pvalue)
    return out


def bootstrap_mean_diff(ranks_a: np.ndarray, ranks_b: np.ndarray, n_boot: int = 2000, level: float = 0.95,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile interval of MRR(a) - MRR(b) from a paired bootstrap over instances (same instances in order).

    Each resample draws len(a) instance indices with replacement and takes the mean of the reciprocal-rank
    differences at them; the interval is the (1 - level) / 2 and (1 + level) / 2 quantiles of those means. The
    generator is seeded, so a report is reproducible.
    """
    a = np.asarray(ranks_a, dtype=np.float64)
    b = np.asarray(ranks_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a paired bootstrap needs the same instances on both sides; got {a.shape} and {b.shape}")
    diff = 1.0 / a - 1.0 / b
    if len(diff) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // len(diff))  # resamples per draw: bounds the index array to ~16 MB
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        means[start:stop] = diff[rng.integers(0, len(diff), size=(stop - start, len(diff)))].mean(axis=1)
    tail = (1.0 - level) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def _rr_by_seed(frames: dict[int, pd.DataFrame], split: str, domain: int, protocol: str) -> dict[int, np.ndarray]:
    out = {}
    for seed, frame in frames.items():
        part = frame[(frame["split"] == split) & (frame["domain"] == domain)].sort_values("row")
        out[seed] = part[protocol].to_numpy()
    return out


def compare(frames_a: dict[int, pd.DataFrame], frames_b: dict[int, pd.DataFrame], domain: int,
            protocol: str, split: str = "test") -> dict[str, Any]:
    """Model a against model b in one domain: the paired test per common seed and across the common seeds."""
    seeds = sorted(set(frames_a) & set(frames_b))
    if not seeds:
        raise ValueError("the two models share no seed with per-instance ranks; run both with the same --seeds")
    ra = _rr_by_seed({s: frames_a[s] for s in seeds}, split, domain, protocol)
    rb = _rr_by_seed({s: frames_b[s] for s in seeds}, split, domain, protocol)
    per_seed = {str(s): wilcoxon_rr(ra[s], rb[s]) for s in seeds}
    # across seeds: each instance's reciprocal rank averaged over seeds, back on the rank scale for wilcoxon_rr
    mean_rr_a = np.mean([1.0 / ra[s] for s in seeds], axis=0)
    mean_rr_b = np.mean([1.0 / rb[s] for s in seeds], axis=0)
    across = wilcoxon_rr(1.0 / mean_rr_a, 1.0 / mean_rr_b)
    across["ci95"] = list(bootstrap_mean_diff(1.0 / mean_rr_a, 1.0 / mean_rr_b))
    return {"seeds": seeds, "per_seed": per_seed, "across_seeds": across}


def slice_mrr(frames: dict[int, pd.DataFrame], domain: int, protocol: str, split: str = "test"
              ) -> dict[str, dict[str, float]]:
    """{slice: {"n", "mrr"}}: MRR of one domain's instances in each slice, mean over the seeds (None if empty)."""
    out = {}
    for name, (column, value) in SLICES.items():
        values, n = [], 0
        for frame in frames.values():
            part = frame[(frame["split"] == split) & (frame["domain"] == domain) & (frame[column] == value)]
            n = len(part)
            if n:
                values.append(float(np.mean(1.0 / part[protocol].to_numpy())))
        out[name] = {"n": n, "mrr": float(np.mean(values)) if values else None}  # None: JSON has no NaN
    return out


def best_other(mean_mrr: dict[str, float], model: str) -> str | None:
    """The model with the highest mean MRR among the others (None when there is no other)."""
    others = {name: v for name, v in mean_mrr.items() if name != model and not math.isnan(v)}
    return max(others, key=others.get) if others else None


def significance_report(frames: dict[str, dict[int, pd.DataFrame]], mean_mrr: dict[str, dict[str, float]],
                        domains: Iterable[str], protocols: Iterable[str] = ("sampled", "full")) -> dict[str, Any]:
    """For every model with per-instance ranks, each domain and protocol: the paired test against the best other.

    ``frames``: {model: {seed: ranks frame}}; ``mean_mrr``: {protocol: {domain name: {model: mean test MRR}}}
    picks the best other model per domain and protocol, among those with ranks of a seed in common (a paired test
    needs the same seeds). Models without ranks (old runs) are left out.
    """
    out: dict[str, Any] = {}
    for protocol in protocols:
        for d, domain in enumerate(domains):
            scores = {m: v for m, v in mean_mrr[protocol][domain].items() if m in frames}
            for model in scores:
                paired = {m: v for m, v in scores.items() if m == model or set(frames[m]) & set(frames[model])}
                other = best_other(paired, model)
                if other is None:
                    continue
                result = compare(frames[model], frames[other], d, protocol)
                out.setdefault(protocol, {}).setdefault(domain, {})[model] = {"against": other, **result}
    return out


def against_reference(frames: dict[str, dict[int, pd.DataFrame]], reference: str, domains: Iterable[str],
                      protocols: Iterable[str] = ("sampled", "full")) -> dict[str, Any]:
    """{protocol: {domain: {model: compare(model, reference)}}} for every other model sharing a seed with
    ``reference`` (issue 13's bar: every method must beat popularity in both domains)."""
    out: dict[str, Any] = {}
    for protocol in protocols:
        for d, domain in enumerate(domains):
            for model, by_seed in frames.items():
                if model != reference and set(by_seed) & set(frames[reference]):
                    out.setdefault(protocol, {}).setdefault(domain, {})[model] = compare(
                        by_seed, frames[reference], d, protocol)
    return out


def verdict(interval: Iterable[float]) -> str:
    """'above' / 'below' when a bootstrap interval of a difference excludes 0, 'not shown' when it covers it."""
    low, high = interval
    return "above" if low > 0 else "below" if high < 0 else "not shown"


def slices_report(frames: dict[str, dict[int, pd.DataFrame]], domains: Iterable[str],
                  protocols: Iterable[str] = ("sampled", "full")) -> dict[str, Any]:
    """{protocol: {domain: {model: {slice: {"n", "mrr"}}}}} over the test split."""
    return {protocol: {domain: {model: slice_mrr(by_seed, d, protocol) for model, by_seed in frames.items()}
                       for d, domain in enumerate(domains)} for protocol in protocols}


def format_p(p: float) -> str:
    return "n/a" if p is None or math.isnan(p) else ("< 0.001" if p < 1e-3 else f"{p:.3f}")
