"""The files of DATASET/tags/ (written atomically: a temporary sibling, then ``os.replace``)::

    vocab.json      per domain: tags with votes and mean scores (Algorithm 1's T*_d); "shared": the vocabulary T
    scores.parquet  item (str, the data's id), tag (str), score (uint8, 1-100): every scored pair, rows in
                    items.parquet order then vocabulary order; a pair without a score has no row
    meta.json       tag_source, what each step did (sources, counts, selection parameters), the tags config
    cache.sqlite    every LLM answer and embedding (tags.cache_path moves it)

Tag vectors are not stored: ``load_tag_vectors`` computes them from scores.parquet for any selection x
representation in well under a second, so the ablations of Tables V-VI read one file and cannot go stale.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from temarec.fileio import atomic_write, write_bytes_atomic

VOCAB = "vocab.json"
SCORES = "scores.parquet"
META = "meta.json"


def tags_dir(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / "tags"


def write_json(path: Path, obj: Any) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
    write_bytes_atomic(path, data)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def sha256_bytes(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_scores(path: Path, item_ids: np.ndarray, tags: list[str], scores: np.ndarray) -> int:
    """Write the scored pairs of an (N, T) uint8 matrix; returns the number of rows."""
    rows, cols = np.nonzero(scores)  # row-major: items.parquet order, then vocabulary order
    table = pa.table({
        "item": pa.array(np.asarray(item_ids, dtype=object)[rows], type=pa.string()),
        "tag": pa.DictionaryArray.from_arrays(pa.array(cols.astype(np.int32)), pa.array(tags, type=pa.string())),
        "score": pa.array(scores[rows, cols], type=pa.uint8()),
    })
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
    return len(rows)


def read_scores(path: Path, item_ids: pd.Series, tags: list[str]) -> np.ndarray:
    """scores.parquet -> (N, T) uint8 aligned with ``item_ids`` (items.parquet order) and ``tags``."""
    frame = pq.read_table(path).to_pandas()
    rows = pd.Index(item_ids).get_indexer(frame["item"])
    tag = frame["tag"]
    if isinstance(tag.dtype, pd.CategoricalDtype):  # stored dictionary-encoded: map the dictionary once
        cols = pd.Index(tags).get_indexer(tag.cat.categories.astype(str))[tag.cat.codes.to_numpy()]
    else:
        cols = pd.Index(tags).get_indexer(tag.astype(str))
    if (rows < 0).any() or (cols < 0).any():
        raise ValueError(f"{path} names items or tags that items.parquet / vocab.json do not have; "
                         "rerun `temarec tags --dataset DIR match`")
    out = np.zeros((len(item_ids), len(tags)), dtype=np.uint8)
    out[rows, cols] = frame["score"].to_numpy()
    return out
