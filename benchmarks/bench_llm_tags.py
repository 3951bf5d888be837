"""What the LLM tag stage's plumbing costs on real engines (figures for docs/TAGS.md, "What a run costs").

    python benchmarks/bench_llm_tags.py [--work DIR] [--items-per-genre 60] [--sample N] [--only inprocess,server1]

The generated world (8 genres x 2 domains x items-per-genre items, titles only) gets the offline mined vocabulary
(real words, about 100 tags), then every item (or an evenly spaced sample of N items, with the same vocabulary) is
matched by the tiny random GGUF model of the test suite (tests/tags/tiny_gguf.py, 25 tags per request), cold cache
each time:

inprocess  the llamacpp backend (llama-cpp-python in this process)
server1    the openai backend against llama-cpp-python's OpenAI-compatible server, 1 request in flight
server4    the same, 4 in flight (the server answers one at a time; this shows what concurrency does not buy)

Reported: wall and CPU seconds (this process, and the server's), requests, the tokens the engine counted (the
tiny model's tokenizer), and the same per 1,000 items. This is the cost of the plumbing around a model (prompts,
grammar, parsing, cache, HTTP) plus a 2-block model's compute, not of a real model: see docs/TAGS.md for the formula.
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
sys.path.insert(0, str(ROOT / "tests" / "tags"))

from llama_server import start_llama_server, stop  # noqa: E402
from tiny_gguf import write_tiny_llama  # noqa: E402


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/bench_llm_tags")
    parser.add_argument("--items-per-genre", type=int, default=60)
    parser.add_argument("--sample", type=int, default=0, help="match only this many items (0: all)")
    parser.add_argument("--only", default="inprocess,server1,server4")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import pandas as pd

    from temarec.config import TagsConfig
    from temarec.data.synthetic import write_synthetic
    from temarec.tags import run_tags
    from temarec.tags.templates import NAMES, load_prompt

    work = Path(args.work)
    root = work / "data"
    if not (root / "items.parquet").is_file():  # kept between runs: the mined vocabulary is read from the cache
        write_synthetic(root, n_users=100, items_per_genre=args.items_per_genre)
    items = pd.read_parquet(root / "items.parquet")
    model = write_tiny_llama(work / "tiny.gguf", [load_prompt(n) for n in NAMES] + items["title"].tolist())
    base = TagsConfig(tags_per_domain=50, rounds=5, tags_per_request=25)
    run_tags(root, base, steps=("vocab",))  # mined: offline, real words
    n_tags = len(json.loads((root / "tags" / "vocab.json").read_text())["shared"])
    if args.sample:
        sample = work / "sample"
        shutil.rmtree(sample, ignore_errors=True)
        (sample / "tags").mkdir(parents=True)
        items.iloc[:: max(1, len(items) // args.sample)][: args.sample].to_parquet(sample / "items.parquet")
        for name in ("manifest.json", "tags/vocab.json", "tags/meta.json"):
            shutil.copy(root / name, sample / name)
        root = sample
    n_items = len(pd.read_parquet(root / "items.parquet"))

    results = {"items": n_items, "tags": n_tags, "tags_per_request": 25, "load_before": os.getloadavg()}
    for name in args.only.split(","):
        cache = work / f"cache-{name}.sqlite"
        cache.unlink(missing_ok=True)
        server = None
        if name == "inprocess":
            cfg = TagsConfig(**{**base.__dict__, "match_backend": "llamacpp", "gguf_path": str(model),
                                "cache_path": str(cache), "concurrency": 1})
        else:
            server, url = start_llama_server(model, work / f"{name}.log")
            cfg = TagsConfig(**{**base.__dict__, "match_backend": "openai", "base_url": url, "model": "tiny",
                                "cache_path": str(cache), "concurrency": int(name[-1])})
        server_cpu = process_cpu_s(server.pid) if server else 0.0
        wall, cpu = time.perf_counter(), time.process_time()
        summary = run_tags(root, cfg, steps=("match",))["match"]
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if server:
            server_cpu = process_cpu_s(server.pid) - server_cpu
            stop(server)
        calls = summary["calls"]
        row = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "server_cpu_s": round(server_cpu, 1),
               "requests": calls["calls"], "retried": calls["retried"], "failed": calls["failed"],
               "prompt_tokens": calls["prompt_tokens"], "completion_tokens": calls["completion_tokens"],
               "per_1000_items": {"wall_s": round(1000 * wall / n_items, 1),
                                  "requests": round(1000 * calls["calls"] / n_items),
                                  "prompt_tokens": round(1000 * calls["prompt_tokens"] / n_items),
                                  "completion_tokens": round(1000 * calls["completion_tokens"] / n_items)},
               "load_after": os.getloadavg()}
        results[name] = row
        print(name, json.dumps(row), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
