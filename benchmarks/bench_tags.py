"""Tags stage benchmarks (figures for docs/TAGS.md).

    python benchmarks/bench_tags.py [--work /tmp/bench_tags] [--threads 2] [--only mined,embedding,openai]

mined      the mined vocabulary (Algorithm 1 over R = 5 bootstrap rounds) of each domain of the Food-Kitchen
           titles, cold cache (target: under 2 minutes per domain)
embedding  embedding matching of the whole catalogue (36,298 titles) against the shared mined vocabulary
           (about 100 tags), cold cache (target: under 10 minutes on 2 cores), then a warm rerun
openai     the openai backend against the local test server (tests/tags/chat_server.py, 20 ms per answer,
           4 in flight), 50 titles x a 98-tag vocabulary: requests per item with 1, 5 and 25 tags per request

Wall and CPU seconds are both reported: on a shared machine wall time depends on the neighbours' load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "tags"))

from bench_tags_common import titles_dataset  # noqa: E402


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, round(time.perf_counter() - wall, 1), round(time.process_time() - cpu, 1)


def bench_mined(work: Path) -> dict:
    from temarec.cache import Cache
    from temarec.data.dataset import Dataset
    from temarec.tags.backends.mined import MinedVocab
    from temarec.tags.encoder import Encoder
    from temarec.tags.text import item_text
    from temarec.tags.vote import vote

    data = titles_dataset(work / "fk")
    items = Dataset.load(data, splits=False).items
    corpus = {d: [item_text(t, None) for t in items.loc[items["domain"] == d, "title"]] for d in ("Food", "Kitchen")}
    Encoder("all-MiniLM-L6-v2").text.model  # load once, outside the timings
    out = {}
    for domain in ("Food", "Kitchen"):
        cache_path = work / f"mined-{domain}.sqlite"
        cache_path.unlink(missing_ok=True)
        with Cache(cache_path) as cache:
            backend = MinedVocab(Encoder("all-MiniLM-L6-v2", cache))
            voted, wall, cpu = timed(lambda: vote(backend.propose(domain, corpus, 50, 5), 50))
        out[domain] = {"items": len(corpus[domain]), "tags": len(voted), "wall_s": wall, "cpu_s": cpu,
                       "sample": [v.tag for v in voted[:20]]}
        logging.info("mined %s: %s", domain, out[domain])
    return out


def bench_embedding(work: Path) -> dict:
    from temarec.config import TagsConfig
    from temarec.tags import run_tags

    data = titles_dataset(work / "fk")
    shutil.rmtree(data / "tags", ignore_errors=True)
    cfg = TagsConfig()
    run_tags(data, cfg, steps=("vocab",))
    # drop the cached item embeddings, keep the tag ones: time the matching cold
    cache = data / "tags" / "cache.sqlite"
    shutil.copy(cache, work / "vocab-cache.sqlite")
    summary, wall, cpu = timed(lambda: run_tags(data, cfg, steps=("match",)))
    _, wall_warm, cpu_warm = timed(lambda: run_tags(data, cfg, steps=("match",)))
    from temarec.tags import load_tag_vectors

    _, wall_load, _ = timed(lambda: load_tag_vectors(data))
    m = summary["match"]
    out = {"items": m["n_items"], "tags": m["n_tags"], "cold_wall_s": wall, "cold_cpu_s": cpu,
           "items_per_s": round(m["n_items"] / wall, 1), "warm_wall_s": wall_warm, "warm_cpu_s": cpu_warm,
           "load_tag_vectors_s": wall_load, "tags_per_item": m["tags_per_item"],
           "share_no_tag_ge_theta": m["share_no_tag_ge_theta"], "pairs": m["pairs"]}
    logging.info("embedding: %s", out)
    return out


def bench_openai(work: Path) -> dict:
    import pandas as pd

    from chat_server import ChatServer
    from conftest import make_dataset
    from temarec.config import TagsConfig
    from temarec.tags import run_tags

    fk = titles_dataset(work / "fk")
    items = pd.read_parquet(fk / "items.parquet")
    sample = pd.concat([items[items["domain"] == d].head(25) for d in ("Food", "Kitchen")])
    server = ChatServer()
    server.delay_s = 0.02
    out = {}
    try:
        root = make_dataset(work / "openai", list(zip(sample["item"], sample["domain"], sample["title"],
                                                      [None] * len(sample))))
        shutil.rmtree(root / "tags", ignore_errors=True)
        base = dict(vocab_backend="openai", match_backend="openai", base_url=server.url, model="stub",
                    tags_per_domain=50, rounds=5, concurrency=4)  # about 100 shared tags, as mined
        run_tags(root, TagsConfig(**base), steps=("vocab",))
        for k in (1, 5, 25):
            before = server.match_requests()
            summary, wall, _ = timed(lambda: run_tags(
                root, TagsConfig(**base, tags_per_request=k, cache_path=str(work / f"openai-{k}.sqlite")),
                steps=("match",)))
            (work / f"openai-{k}.sqlite").unlink()
            n_items = summary["match"]["items_tagged"]
            out[f"{k} tags/request"] = {"tags": summary["match"]["n_tags"], "items": n_items,
                                        "requests": server.match_requests() - before,
                                        "requests_per_item": round((server.match_requests() - before) / n_items, 2),
                                        "wall_s": wall}
            logging.info("openai %d tags/request: %s", k, out[f"{k} tags/request"])
    finally:
        server.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/bench_tags")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the target machine has 2 cores)")
    parser.add_argument("--only", default="mined,embedding,openai")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {"cpus": os.cpu_count(), "torch_threads": args.threads, "load_avg_at_start": os.getloadavg()}
    for name in args.only.split(","):
        results[name] = {"mined": bench_mined, "embedding": bench_embedding, "openai": bench_openai}[name](work)
    results["load_avg_at_end"] = os.getloadavg()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
