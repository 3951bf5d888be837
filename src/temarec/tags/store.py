"""Writing DATASET/tags/ (the layout and its readers are in :mod:`temarec.data.content`): the score matrix as
Parquet, written atomically (a temporary sibling, then ``os.replace``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from temarec.fileio import atomic_write


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
