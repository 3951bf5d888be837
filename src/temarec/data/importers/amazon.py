"""Import raw Amazon review files of two categories (McAuley et al. 2014, 2018 or 2023 releases).

Reviews, JSON lines (optionally gzipped), one file per domain; the release is detected per record::

    2014 / 2018   {"reviewerID": ..., "asin": ..., "unixReviewTime": seconds, ...}
    2023          {"user_id": ..., "parent_asin": ..., "timestamp": milliseconds, ...}

Metadata, JSON lines (optional, one file per domain): ``title``; ``description`` (a string or a list of
strings, joined with spaces); one image URL: 2014 ``imUrl``, 2018 ``image`` (list), 2023 ``images``
(list of {"large", "hi_res", ...}; "large" preferred). The 2014 metadata files are Python literals, not
JSON: convert them to JSON lines first.

Streaming: a review file is read line by line and only compact (user, item, time) integer arrays are kept;
metadata are read afterwards, for the items that survive the filter only. The filter and split are the
generic importer's (:mod:`temarec.data.importers.interactions`). Items are keyed by ``asin`` (2014/2018) or
``parent_asin`` (2023). An item listed in both categories has no single domain and is dropped (logged).
Ties in time keep file order; timestamps are stored as unix seconds.
"""

from __future__ import annotations

import json
import logging
from array import array
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from temarec.config import DataConfig
from temarec.data.dataset import DataError
from temarec.data.importers.interactions import Interactions, Meta, filter_split_write
from temarec.data.prepare import (Flag, check_out, check_timestamp, iter_lines, parse_domains, register_importer,
                                  source_manifest)

logger = logging.getLogger(__name__)


def import_amazon(reviews: str | Sequence[str | Path], domains: str | Sequence[str], out: str | Path,
                  meta: str | Sequence[str | Path] | None = None, *, cfg: DataConfig | None = None,
                  overwrite: bool = False) -> Path:
    """Read two categories' review (and optional metadata) files and write the dataset folder ``out``."""
    cfg = cfg or DataConfig()
    names = parse_domains(domains)
    review_paths = _two_paths(reviews, "--reviews")
    meta_paths = _two_paths(meta, "--meta") if meta else None
    check_out(out, overwrite)
    for p in review_paths + (meta_paths or []):
        if not p.is_file():
            raise DataError("file not found", p)

    log = _read_reviews(review_paths, names)

    def read_meta(keep: set[str]) -> Meta:
        return _read_meta(meta_paths, keep) if meta_paths else {}

    files = {f"reviews_{names[0]}": review_paths[0], f"reviews_{names[1]}": review_paths[1]}
    if meta_paths:
        files.update({f"meta_{names[0]}": meta_paths[0], f"meta_{names[1]}": meta_paths[1]})
    return filter_split_write(log, names, out, read_meta, cfg=cfg, overwrite=overwrite,
                              inputs=",".join(str(p) for p in review_paths),
                              source=source_manifest("amazon", files), ts_divisor=1000)


def _two_paths(value: str | Sequence[str | Path], flag: str) -> list[Path]:
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else [str(p) for p in value]
    if len(parts) != 2 or not all(parts):
        raise DataError(f"{flag} needs two files, first domain first (A,B); got {value!r}")
    return [Path(p) for p in parts]


def _review_fields(rec: Any) -> tuple[str, str, int] | None:
    """(user, item, time in ms) of one review record, or None when it is no known release's review."""
    if not isinstance(rec, dict):
        return None
    if "reviewerID" in rec and "asin" in rec and "unixReviewTime" in rec:
        return str(rec["reviewerID"]), str(rec["asin"]), int(rec["unixReviewTime"]) * 1000
    if "user_id" in rec and "timestamp" in rec and ("parent_asin" in rec or "asin" in rec):
        return str(rec["user_id"]), str(rec.get("parent_asin") or rec["asin"]), int(rec["timestamp"])
    return None


def _read_reviews(paths: list[Path], domains: tuple[str, str]) -> Interactions:
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    item_domain = array("b")
    user_col, item_col, ts_col = array("q"), array("q"), array("q")
    for d, path in enumerate(paths):
        before = len(ts_col)
        for lineno, line in iter_lines(path):
            if not line.strip():
                continue
            try:
                fields = _review_fields(json.loads(line))
            except (ValueError, TypeError, OverflowError) as exc:  # OverflowError: int(inf)
                raise DataError(f"cannot read a review record from this line ({exc})", path, lineno) from None
            if fields is None:
                raise DataError("not an Amazon review record: expected reviewerID/asin/unixReviewTime (2014/2018) "
                                "or user_id/parent_asin/timestamp (2023)", path, lineno)
            user, item, ms = fields
            check_timestamp(ms, path, lineno, unit="ms")
            code = items.setdefault(item, len(items))
            if code == len(item_domain):
                item_domain.append(d)
            elif item_domain[code] != d:
                item_domain[code] = -1  # listed in both categories: dropped below
            user_col.append(users.setdefault(user, len(users)))
            item_col.append(code)
            ts_col.append(ms)
        if len(ts_col) == before:
            raise DataError(f"no reviews: domain {domains[d]!r} is empty", path)
        logger.info("read %d %s reviews from %s", len(ts_col) - before, domains[d], path)

    item_dom = np.frombuffer(item_domain, dtype=np.int8).copy()
    user_arr, item_arr, ts_arr = (np.frombuffer(a, dtype=np.int64) for a in (user_col, item_col, ts_col))
    both = item_dom[item_arr] < 0
    if both.any():
        logger.warning("dropped %d item(s) listed in both categories (%d reviews): no single domain",
                       int((item_dom < 0).sum()), int(both.sum()))
        user_arr, item_arr, ts_arr = user_arr[~both], item_arr[~both], ts_arr[~both]
        item_dom[item_dom < 0] = 0  # unreferenced now; any valid code keeps the arrays well formed
    return Interactions(user_arr, item_arr, ts_arr, np.array(list(users), dtype=object),
                        np.array(list(items), dtype=object), item_dom)


def _read_meta(paths: list[Path], keep: set[str]) -> Meta:
    out: Meta = {}
    for path in paths:
        for lineno, line in iter_lines(path):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise DataError(f"not a JSON metadata record ({exc}); 2014 metadata files are Python literals: "
                                "convert them to JSON lines first", path, lineno) from None
            if not isinstance(rec, dict):
                raise DataError("a metadata record must be a JSON object", path, lineno)
            item = str(rec.get("parent_asin") or rec.get("asin") or "")
            if item in keep and item not in out:
                out[item] = (_text(rec.get("title")), _text(rec.get("description")), _image(rec))
    logger.info("metadata found for %d of %d items", len(out), len(keep))
    return out


def _text(value: Any) -> str | None:
    if isinstance(value, list):
        value = " ".join(str(v).strip() for v in value if str(v).strip())
    if value is None:
        return None
    value = " ".join(str(value).split())
    return value or None


def _image(rec: dict) -> str | None:
    if isinstance(rec.get("imUrl"), str):  # 2014
        return rec["imUrl"] or None
    images = rec.get("images") or rec.get("image")  # 2023: list of dicts; 2018: list of URLs
    if isinstance(images, list) and images:
        first = images[0]
        if isinstance(first, dict):
            return first.get("large") or first.get("hi_res") or first.get("thumb") or None
        if isinstance(first, str):
            return first or None
    return None


register_importer("amazon", import_amazon,
                  Flag("--reviews", "reviews", "two review files A,B (JSON lines, .gz allowed)", required=True,
                       metavar="A,B"),
                  Flag("--meta", "meta", "two metadata files A,B (JSON lines, .gz allowed)"))
