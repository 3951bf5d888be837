"""Shared by the tags benchmarks: a tags-only dataset folder (items.parquet + manifest.json) from the titles TSV."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

TITLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon-titles" / "food_kitchen_titles.tsv"


def titles_dataset(out: Path, tsv: Path = TITLES, limit: int | None = None) -> Path:
    """Write OUT/items.parquet (Food first, then Kitchen) and OUT/manifest.json; enough for `temarec tags`."""
    if not tsv.is_file():
        raise SystemExit(f"{tsv} not found: the amazon-titles data lives in ../shared/data (see its README)")
    raw = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    raw = pd.concat([raw[raw["domain"] == d] for d in ("Food", "Kitchen")], ignore_index=True)
    if limit:
        raw = raw.groupby("domain", sort=False).head(limit).reset_index(drop=True)
    items = pd.DataFrame({"item": raw["asin"], "domain": raw["domain"], "title": raw["title"],
                          "description": None, "image": None})
    out.mkdir(parents=True, exist_ok=True)
    items.to_parquet(out / "items.parquet", index=False)
    sizes = items["domain"].value_counts()
    (out / "manifest.json").write_text(json.dumps({"format_version": 1, "name": "amazon-titles-food-kitchen",
                                                   "domains": ["Food", "Kitchen"],
                                                   "items": {d: int(sizes[d]) for d in ("Food", "Kitchen")}}))
    return out
