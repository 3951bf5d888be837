"""Import generic interaction logs, and the filter + chronological split shared with the Amazon importer.

Interactions file (CSV, TSV, Parquet or JSON lines; text formats may be gzipped), one row per interaction::

    user, item, timestamp, domain        timestamp: integer unix seconds or a date/time string;
                                         domain: one of the two --domains names

Items file (optional, same formats): ``item`` plus any of ``domain, title, description, image``.

Steps, in order:

1. exact duplicate rows (same user, item and timestamp) are dropped;
2. the paper's filter, repeated until nothing changes (dropping items can push a user under a threshold
   and vice versa): items with fewer than ``data.min_item_count`` interactions go, then users with fewer
   than ``data.min_user_interactions`` (at least 3) interactions or fewer than ``data.min_user_per_domain`` in either
   domain go;
3. each user's interactions are sorted by timestamp with a stable sort (ties keep file order) and split
   leave-one-out (last = test target, the one before = valid target, the rest = training sequence).
   The full history is kept; models truncate to ``data.max_len``.

Items are ordered first domain first, each domain by item id (string order), and users by user id (string order),
so the order of the file's rows changes nothing but the order of equal timestamps. The file is read whole
(pandas); for raw Amazon dumps too large for that, use the streaming Amazon importer.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from temarec.config import DataConfig
from temarec.data.dataset import ITEM_COLUMNS, DataError, leave_one_out, write_dataset
from temarec.data.prepare import (MAX_TIMESTAMP_S, Flag, check_out, iter_lines, nul_byte_line, parse_domains,
                                  register_importer, source_manifest)

logger = logging.getLogger(__name__)

INTERACTION_COLUMNS = ("user", "item", "timestamp", "domain")
Meta = dict[str, tuple[str | None, str | None, str | None]]  # item -> (title, description, image)


@dataclass
class Interactions:
    """Compact interaction log: integer codes into ``user_names`` / ``item_names``."""
    user: np.ndarray  # (n,) int64 code into user_names
    item: np.ndarray  # (n,) int64 code into item_names
    ts: np.ndarray  # (n,) int64 sort key, in file order
    user_names: np.ndarray  # (U,) str
    item_names: np.ndarray  # (I,) str
    item_domain: np.ndarray  # (I,) int8: 0 or 1


def import_interactions(interactions: str | Path, domains: str | Sequence[str], out: str | Path,
                        items: str | Path | None = None, *, cfg: DataConfig | None = None,
                        overwrite: bool = False) -> Path:
    """Read an interactions file (and optional items file) and write the dataset folder ``out``."""
    cfg = cfg or DataConfig()
    names = parse_domains(domains)
    check_out(out, overwrite)
    path = Path(interactions)
    frame = read_table(path, required=INTERACTION_COLUMNS)
    if frame.empty:
        raise DataError("no interactions: the file holds no rows", path)
    log = _encode(frame, path, names)
    meta_frame = read_table(Path(items), required=("item",)) if items is not None else None

    def meta(keep: set[str]) -> Meta:
        return _items_meta(meta_frame, Path(items), keep, log, names) if meta_frame is not None else {}

    return filter_split_write(log, names, out, meta, cfg=cfg, overwrite=overwrite, inputs=str(path),
                              source=source_manifest("interactions", {"interactions": path,
                                                                      "items": Path(items) if items else None}))


def filter_split_write(log: Interactions, domains: tuple[str, str], out: str | Path,
                       meta: Callable[[set[str]], Meta], *, cfg: DataConfig, source: dict,
                       overwrite: bool, ts_divisor: int = 1, inputs: str | None = None) -> Path:
    """Dedupe, filter, split and write. ``meta(surviving item ids)`` supplies titles etc.; stored
    timestamps are the sort key // ``ts_divisor`` (the Amazon importer sorts on milliseconds); ``inputs`` names
    the input file(s) in errors."""
    log = _dedupe(log)
    keep = filter_mask(log, cfg, inputs)
    user, item, ts = log.user[keep], log.item[keep], log.ts[keep]
    for d, name in enumerate(domains):
        if not (log.item_domain[item] == d).any():
            raise DataError(f"no interaction of domain {name!r} survives the filter (min_user_interactions="
                            f"{cfg.min_user_interactions}, min_user_per_domain={cfg.min_user_per_domain}, "
                            f"min_item_count={cfg.min_item_count}); loosen it with --set data.KEY=VALUE", inputs)
    logger.info("filter kept %d of %d interactions, %d users, %d items", len(user), len(log.user),
                len(np.unique(user)), len(np.unique(item)))

    # internal order: first domain first, each domain by item id
    codes = np.unique(item)
    codes = codes[np.lexsort((log.item_names[codes], log.item_domain[codes]))]
    idx_of = np.full(len(log.item_names), -1, dtype=np.int64)
    idx_of[codes] = np.arange(len(codes))
    n_first = int((log.item_domain[codes] == 0).sum())

    # by user name, then time; ties keep file order. Users in name order, not file order: the splits (and the
    # negatives drawn row by row over them) are the same whatever order the file lists its rows in
    user_rank = np.empty(len(log.user_names), dtype=np.int64)
    user_rank[np.argsort(log.user_names.astype(str), kind="stable")] = np.arange(len(log.user_names))
    user = user_rank[user]
    order = np.lexsort((np.arange(len(user)), ts, user))
    user, item, ts = user[order], idx_of[item[order]], ts[order] // ts_divisor
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    names_in_order = log.user_names[np.argsort(user_rank)]
    timelines = pd.DataFrame({
        "user": names_in_order[user[starts]],
        "items": np.split(item, starts[1:]),
        "ts": np.split(ts, starts[1:]),
    })
    timelines.attrs["n_first"] = n_first
    train, valid, test = leave_one_out(timelines)

    item_ids = log.item_names[codes].tolist()
    info = meta(set(item_ids))
    rows = [(i, domains[int(log.item_domain[c])], *info.get(i, (None, None, None))) for i, c in zip(item_ids, codes)]
    items = pd.DataFrame(rows, columns=list(ITEM_COLUMNS))
    try:
        return write_dataset(out, items=items, train=train, valid=valid, test=test, domains=domains,
                             train_source="leave_one_out", source=source, num_negatives=cfg.num_negatives,
                             negative_seed=cfg.negative_seed, overwrite=overwrite)
    except DataError as exc:
        if exc.path is not None or inputs is None:
            raise
        raise DataError(str(exc), inputs) from exc  # a problem of the data as a whole: name what was read


def filter_mask(log: Interactions, cfg: DataConfig, inputs: str | None = None) -> np.ndarray:
    """The paper's user/item filter, iterated to a fixed point; returns a keep-mask over interactions."""
    keep = np.ones(len(log.user), dtype=bool)
    min_total = max(cfg.min_user_interactions, 3)  # leave-one-out needs a train, a valid and a test item
    n_users, n_items = len(log.user_names), len(log.item_names)
    for rounds in range(1, 1000):
        item_count = np.bincount(log.item[keep], minlength=n_items)
        ok = keep & (item_count[log.item] >= cfg.min_item_count)
        dom = log.item_domain[log.item]
        total = np.bincount(log.user[ok], minlength=n_users)
        per_domain = [np.bincount(log.user[ok & (dom == d)], minlength=n_users) for d in (0, 1)]
        good_user = ((total >= min_total) & (per_domain[0] >= cfg.min_user_per_domain)
                     & (per_domain[1] >= cfg.min_user_per_domain))
        ok &= good_user[log.user]
        if np.array_equal(ok, keep):
            logger.debug("filter reached a fixed point after %d round(s)", rounds)
            break
        keep = ok
    if not keep.any():
        raise DataError(f"no user passes the filter (>= {cfg.min_user_interactions} interactions, >= "
                        f"{cfg.min_user_per_domain} per domain, items >= {cfg.min_item_count}); "
                        "loosen it with --set data.KEY=VALUE", inputs)
    return keep


def _dedupe(log: Interactions) -> Interactions:
    key = pd.DataFrame({"u": log.user, "i": log.item, "t": log.ts})
    dup = key.duplicated().to_numpy()
    if dup.any():
        logger.info("dropped %d exact duplicate interaction(s) (same user, item and timestamp)", int(dup.sum()))
        return Interactions(log.user[~dup], log.item[~dup], log.ts[~dup], log.user_names, log.item_names,
                            log.item_domain)
    return log


# --- generic table files -----------------------------------------------------------------------------


def read_table(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """CSV / TSV / Parquet / JSON lines (by extension, ``.gz`` allowed for text) -> DataFrame of strings."""
    if not path.is_file():
        raise DataError("file not found", path)
    suffixes = [s.lower() for s in path.suffixes]
    kind = suffixes[-2] if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1 else (suffixes or [""])[-1]
    try:
        if kind in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif kind in (".csv", ".tsv", ".tab", ".txt"):
            nul = nul_byte_line(path)
            if nul is not None:
                raise DataError("a NUL byte: this line is not text (a corrupt or binary file?)", path, nul)
            # header=None: the header line fixes the field count, so a data row with an extra field is a parser
            # error naming its line (with the header as header, pandas takes an extra field in the first data
            # row as an implicit index column and shifts every cell of the file)
            frame = pd.read_csv(path, sep="," if kind == ".csv" else "\t", dtype=str, keep_default_na=False,
                                na_values=[""], header=None)
            header = ["" if pd.isna(c) else c for c in frame.iloc[0]] if len(frame) else []
            frame = frame.iloc[1:].reset_index(drop=True)
            frame.columns = header
        elif kind in (".jsonl", ".json", ".ndjson"):
            frame = pd.read_json(path, lines=True, dtype=False)
        else:
            raise DataError("unknown file type; expected .csv, .tsv, .parquet or .jsonl (optionally .gz)", path)
    except DataError:
        raise
    except ValueError as exc:  # pandas' ParserError and UnicodeDecodeError among them
        raise DataError(f"cannot read as {kind.lstrip('.')} ({exc})", path, _bad_line(path, kind, exc)) from exc
    except Exception as exc:  # pandas/pyarrow raise many types for malformed files
        raise DataError(f"cannot read as {kind.lstrip('.')} ({type(exc).__name__}: {exc})", path) from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"missing column(s) {missing}; found {list(frame.columns)}; "
                        f"needed {list(required)}", path)
    frame.attrs["first_row_line"] = 2 if kind in (".csv", ".tsv", ".tab", ".txt") else 1
    return frame


def _bad_line(path: Path, kind: str, exc: ValueError) -> int | None:
    """The file line a reader's error is about, when it can be told."""
    if isinstance(exc, UnicodeDecodeError):
        for _ in iter_lines(path):  # raises a DataError naming the first line that is not UTF-8
            pass
        return None
    if kind in (".jsonl", ".json", ".ndjson"):
        return _first_bad_json_line(path)
    found = re.search(r"\bline (\d+)", str(exc))  # pandas' C parser counts file lines from 1
    if found:
        return int(found.group(1))
    found = re.search(r"starting at row (\d+)", str(exc))  # ... and rows of the file from 0
    return int(found.group(1)) + 1 if found else None


def _first_bad_json_line(path: Path) -> int | None:
    """The first line that is not a JSON object, or holds an integer pandas cannot read (beyond 64 bits), at any
    depth: pandas' reader refuses one inside a list or an object too."""
    for lineno, line in iter_lines(path):
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError:
                return lineno
            if not isinstance(record, dict) or any(not -2**63 <= v < 2**64 for v in _json_ints(record)):
                return lineno
    return None


def _json_ints(value: Any) -> Iterator[int]:
    """Every integer in a parsed JSON value, nested ones included."""
    if isinstance(value, int):
        yield value
    elif isinstance(value, (list, dict)):
        for inner in value.values() if isinstance(value, dict) else value:
            yield from _json_ints(inner)


def _line(frame: pd.DataFrame, row: int) -> int:
    """File line of a row (header counted for CSV/TSV; row number for Parquet)."""
    return int(row) + frame.attrs.get("first_row_line", 1)


# what a cell of a typed file (JSON lines, Parquet) may hold; CSV/TSV cells are text
CELL_TYPES = {"user": (str, int, np.integer), "item": (str, int, np.integer), "domain": (str,),
              "timestamp": (str, int, float, np.integer, np.floating, pd.Timestamp)}


def _encode(frame: pd.DataFrame, path: Path, domains: tuple[str, str]) -> Interactions:
    for col in INTERACTION_COLUMNS:
        null = frame[col].isna().to_numpy()
        if null.any():
            raise DataError(f"empty {col!r}", path, _line(frame, np.flatnonzero(null)[0]))
        if not pd.api.types.is_numeric_dtype(frame[col]):  # object (JSON values) or str cells
            for row, value in enumerate(frame[col]):
                if isinstance(value, (bool, np.bool_)) or not isinstance(value, CELL_TYPES[col]):
                    kind = "a string" if col == "domain" else "a string or an integer" if col != "timestamp" \
                        else "unix seconds or a date/time string"
                    raise DataError(f"{col!r} must be {kind}, got {json.dumps(value, default=str)}", path,
                                    _line(frame, row))
                if isinstance(value, str) and not value.strip():
                    raise DataError(f"empty {col!r}", path, _line(frame, row))
    domain = frame["domain"].astype(str).str.strip()
    dom_code = np.where(domain == domains[0], 0, np.where(domain == domains[1], 1, -1))
    if (dom_code < 0).any():
        row = np.flatnonzero(dom_code < 0)[0]
        raise DataError(f"domain {domain.iloc[row]!r} is not one of --domains {list(domains)}", path, _line(frame, row))
    ts = _timestamps(frame["timestamp"], frame, path)
    user_codes, user_names = pd.factorize(frame["user"].astype(str).str.strip())
    item_codes, item_names = pd.factorize(frame["item"].astype(str).str.strip())
    item_domain = np.full(len(item_names), -1, dtype=np.int8)
    item_domain[item_codes] = dom_code  # last write wins; checked just below
    clash = item_domain[item_codes] != dom_code
    if clash.any():
        row = np.flatnonzero(clash)[0]
        raise DataError(f"item {item_names[item_codes[row]]!r} appears in both domains; an item must belong "
                        "to one domain", path, _line(frame, row))
    return Interactions(user_codes.astype(np.int64), item_codes.astype(np.int64), ts,
                        np.asarray(user_names, dtype=object), np.asarray(item_names, dtype=object), item_domain)


def _timestamps(col: pd.Series, frame: pd.DataFrame, path: Path) -> np.ndarray:
    """Integer unix seconds, or date/time strings converted to unix seconds."""
    numeric = pd.to_numeric(col, errors="coerce")
    is_numeric = numeric.notna().any()  # a numeric column with a few bad cells reports those cells
    parsed = numeric if is_numeric else pd.to_datetime(col, errors="coerce", utc=True, format="mixed")
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = np.flatnonzero(bad)[0]
        raise DataError(f"timestamp {col.iloc[row]!r} is neither unix seconds nor a date/time",
                        path, _line(frame, row))
    if is_numeric:
        values = numeric.to_numpy(dtype=np.float64)  # inf, 1e30 and uint64 beyond int64 would wrap in astype
        out_of_range = ~(np.abs(values) <= MAX_TIMESTAMP_S)
        if out_of_range.any():
            row = np.flatnonzero(out_of_range)[0]
            raise DataError(f"timestamp {col.iloc[row]!r} is out of range (unix seconds within "
                            f"+-{MAX_TIMESTAMP_S:.3g}); a corrupt value?", path, _line(frame, row))
        return numeric.to_numpy().astype(np.int64)
    return ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy().astype(np.int64)


def _items_meta(frame: pd.DataFrame, path: Path, keep: set[str], log: Interactions,
                domains: tuple[str, str]) -> Meta:
    """Titles/descriptions/images for the surviving items; a domain that contradicts the log is an error."""
    domain_of = dict(zip(log.item_names.tolist(), (domains[d] for d in log.item_domain)))
    out: Meta = {}
    ids = frame["item"].astype(str).str.strip()

    def column(name: str) -> list[str | None]:
        if name not in frame.columns:
            return [None] * len(frame)
        return [None if pd.isna(v) or str(v).strip() == "" else str(v).strip() for v in frame[name]]

    titles, descriptions, images, doms = column("title"), column("description"), column("image"), column("domain")
    for row, item in enumerate(ids):
        if item not in keep:
            continue
        if doms[row] is not None and doms[row] != domain_of[item]:
            raise DataError(f"item {item!r} has domain {doms[row]!r} here but {domain_of[item]!r} in the "
                            "interactions", path, _line(frame, row))
        out[item] = (titles[row], descriptions[row], images[row])
    logger.info("items file describes %d of %d surviving items", len(out), len(keep))
    return out


register_importer("interactions", import_interactions,
                  Flag("--interactions", "interactions",
                       "CSV/TSV/Parquet/JSONL with user, item, timestamp, domain", required=True, metavar="FILE"),
                  Flag("--items", "items", "items file: item [, domain, title, description, image]"))
