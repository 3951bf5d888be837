"""The tags stage: ``run_tags`` = vocabulary (Algorithm 1, eqs. 1-2) then item-tag matching, into DATASET/tags/."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from temarec.config import TagsConfig
from temarec.data.content import META, SCORES, VOCAB, tags_dir
from temarec.data.dataset import Dataset
from temarec.fileio import sha256_file, write_json_atomic
from temarec.tags.backends import make_match_backend, make_vocab_backend
from temarec.tags.backends.base import Item, TagsError
from temarec.cache import Cache
from temarec.tags.select import select
from temarec.tags.store import write_scores
from temarec.tags.text import item_text
from temarec.tags.vote import majority, vote

log = logging.getLogger(__name__)

STEPS = ("vocab", "match")


def run_tags(dataset_dir: str | Path, cfg: TagsConfig, steps: Sequence[str] = STEPS) -> dict[str, Any]:
    """Build the vocabulary and/or match every item against it; returns a summary (also logged).

    Every LLM answer and embedding is cached (DATASET/tags/cache.sqlite), so a killed run restarts where it
    stopped and ends with the same files as an uninterrupted one.
    """
    unknown = set(steps) - set(STEPS)
    if unknown or not steps:
        raise ValueError(f"tags steps must be among {STEPS}, got {list(steps)}")
    dataset = Dataset.load(dataset_dir, splits=False)
    out = tags_dir(dataset.root)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    with Cache(cfg.cache_path or out / "cache.sqlite") as cache:
        if "vocab" in steps:
            summary["vocab"] = build_vocabulary(dataset, cfg, cache)
        if "match" in steps:
            summary["match"] = match_items(dataset, cfg, cache)
    summary["tag_source"] = dataset.tag_meta().get("tag_source", "")
    return summary


def _texts(items: pd.DataFrame) -> list[str]:
    return [item_text(t, d) for t, d in zip(items["title"], items["description"])]


def _update_meta(dataset: Dataset, section: str, body: dict[str, Any], cfg: TagsConfig) -> dict[str, Any]:
    meta = dataset.tag_meta()
    meta[section] = body
    meta["config"] = asdict(cfg)
    vocab, match = meta.get("vocab"), meta.get("match")
    if vocab and match and match.get("vocab_sha256") == vocab["sha256"]:
        meta["tag_source"] = f"{vocab['source']} + {match['source']}"
    elif vocab:
        meta["tag_source"] = f"{vocab['source']} (not matched yet: run the match step)"
    write_json_atomic(tags_dir(dataset.root) / META, meta, sort_keys=True)
    return meta


def build_vocabulary(dataset: Dataset, cfg: TagsConfig, cache: Cache) -> dict[str, Any]:
    """Algorithm 1 for each domain, then the union T of the T*_d -> vocab.json."""
    start = time.perf_counter()
    items, domains, out = dataset.items, list(dataset.domains), tags_dir(dataset.root)
    texts = _texts(items)
    corpus = {d: [t for t, dom in zip(texts, items["domain"]) if dom == d] for d in domains}
    backend = make_vocab_backend(cfg, cache)
    need = cfg.min_votes or majority(cfg.rounds)
    per_domain = {}
    for d in domains:
        responses = backend.propose(d, corpus, cfg.tags_per_domain, cfg.rounds)  # eq. (1): R responses
        voted = vote(responses, cfg.tags_per_domain, need)  # eq. (2)
        if len(voted) < cfg.tags_per_domain:
            log.warning("%s: %d of %d tags reached %d/%d votes", d, len(voted), cfg.tags_per_domain, need, cfg.rounds)
        per_domain[d] = [{"tag": v.tag, "votes": v.votes, "mean_score": v.mean_score} for v in voted]
    shared = list(dict.fromkeys(t["tag"] for d in domains for t in per_domain[d]))
    if not shared:
        raise TagsError("the vocabulary is empty: no tag reached the vote threshold in any domain")
    write_json_atomic(out / VOCAB, {"source": backend.describe(), "tags_per_domain": cfg.tags_per_domain,
                                    "rounds": cfg.rounds, "min_votes": need, "domains": per_domain,
                                    "shared": shared}, sort_keys=True)
    sizes = {d: len(per_domain[d]) for d in domains}
    _update_meta(dataset, "vocab", {"source": backend.describe(), "sha256": sha256_file(out / VOCAB),
                                "sizes": sizes, "shared": len(shared)}, cfg)
    seconds = time.perf_counter() - start
    log.info("tags vocab: %s; %s; shared vocabulary %d tags (%.1f s)", backend.describe(),
             ", ".join(f"{d} {n}" for d, n in sizes.items()), len(shared), seconds)
    return {"sizes": sizes, "shared": len(shared), "calls": backend.stats.as_dict(), "seconds": round(seconds, 2)}


def match_items(dataset: Dataset, cfg: TagsConfig, cache: Cache) -> dict[str, Any]:
    """Score every item with text against the shared vocabulary -> scores.parquet, meta.json."""
    start = time.perf_counter()
    items, out = dataset.items, tags_dir(dataset.root)
    vocab_path = out / VOCAB
    tags = dataset.tag_vocabulary()["shared"]
    texts = _texts(items)
    unique: dict[tuple[str, str], int] = {}  # (domain, text) -> row of the distinct items
    distinct: list[Item] = []
    row_of = np.full(len(items), -1)
    for i, (text, dom, title, desc) in enumerate(zip(texts, items["domain"], items["title"], items["description"])):
        if not text:
            continue
        key = (dom, text)
        if key not in unique:
            unique[key] = len(distinct)
            distinct.append(Item(dom, title if isinstance(title, str) else "",
                                 desc if isinstance(desc, str) else "", text))
        row_of[i] = unique[key]
    backend = make_match_backend(cfg, cache)
    with tqdm(total=len(distinct), unit="item", desc="tags match", disable=not sys.stderr.isatty(),
              dynamic_ncols=True) as bar:
        result = backend.score(distinct, tags, bar)
    has_text = row_of >= 0
    scores = np.zeros((len(items), len(tags)), dtype=np.uint8)
    scores[has_text] = result.scores[row_of[has_text]]
    failed = np.zeros(len(items), dtype=bool)
    failed[has_text] = result.failed[row_of[has_text]]
    scores[failed] = 0
    calls = backend.stats.as_dict()
    n_failed = int(failed.sum())
    if n_failed > cfg.max_failed_share * len(items):
        raise TagsError(f"{n_failed} of {len(items)} items could not be tagged ({calls['failed']} requests failed "
                        f"after {cfg.max_retries} retries), more than tags.max_failed_share="
                        f"{cfg.max_failed_share:g}; e.g. {result.errors[:2]}. Finished work is cached: rerun to "
                        "resume, or raise tags.max_failed_share to accept the gaps")
    pairs = write_scores(out / SCORES, items["item"].to_numpy(), tags, scores)
    tagged = has_text & ~failed
    stats = _selection_stats(scores[tagged], cfg)
    body = {"source": backend.describe(), "vocab_sha256": sha256_file(vocab_path), "n_items": len(items),
            "n_tags": len(tags), "items_tagged": int(tagged.sum()), "items_without_text": int((~has_text).sum()),
            "items_failed": n_failed, "pairs": pairs,
            "selection_params": {"top_r": cfg.top_r, "theta": cfg.theta, "max_tags": cfg.max_tags},
            "default": {"selection": cfg.selection, "representation": cfg.representation}, **stats}
    meta = _update_meta(dataset, "match", body, cfg)
    seconds = time.perf_counter() - start
    summary = {**{k: v for k, v in body.items() if k not in ("vocab_sha256", "source")},
               "calls": calls, "seconds": round(seconds, 2)}
    tpi = stats["tags_per_item"]
    log.info("tags match: %s", meta["tag_source"])
    log.info("tags match: %d of %d items tagged (%d without text, %d failed) in %.1f s; tags per item under %s: "
             "mean %.2f, min %d, max %d; %.1f%% of tagged items have no tag >= %g; requests: %d sent, %d retried, "
             "%d failed, %d from cache; tokens: %d prompt, %d completion", summary["items_tagged"], len(items),
             body["items_without_text"], n_failed, seconds, cfg.selection, tpi["mean"], tpi["min"], tpi["max"],
             100 * stats["share_no_tag_ge_theta"], cfg.theta, calls["calls"], calls["retried"], calls["failed"],
             calls["from_cache"], calls["prompt_tokens"], calls["completion_tokens"])
    return summary


def _selection_stats(scores: np.ndarray, cfg: TagsConfig) -> dict[str, Any]:
    if len(scores) == 0:
        return {"tags_per_item": {"mean": 0.0, "min": 0, "max": 0}, "share_no_tag_ge_theta": 0.0}
    k = select(scores, cfg.selection, cfg.top_r, cfg.theta, cfg.max_tags).sum(axis=1)
    return {"tags_per_item": {"mean": round(float(k.mean()), 4), "min": int(k.min()), "max": int(k.max())},
            "share_no_tag_ge_theta": round(float((scores.max(axis=1) < cfg.theta).mean()), 4)}
