"""Import a C2DSR-format folder (the leak-corrected split the TEMA-LLM paper follows).

Files (either name of each pair)::

    items_a.txt | Alist.txt             orig_id \\t ASIN \\t local_id      first domain's items
    items_b.txt | Blist.txt             orig_id \\t ASIN \\t local_id      second domain's items
    userlist.txt                        reviewerID \\t user_id
    val_new.txt | validdata_new.txt     user_id \\t seq_id \\t item|unix_ts|date| \\t item|unix_ts|date| ...
    test_new.txt | testdata_new.txt     (same)
    train_new.txt | traindata_new.txt   (same; optional)

Item ids in the sequence files are global: the first domain's local id, or the first domain's item count
plus the second domain's local id. That global id is exactly our internal index (first domain first).

Lines are not stored in time order. Each line is sorted by timestamp with a stable sort (ties keep file
order); the last item is the target and its domain is the line's domain; everything before it is the history.
Without a training file the training sequences are rebuilt from these histories (``train_source``
"histories"), as the public release lacks ``traindata_new.txt``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd

from temarec.config import DataConfig
from temarec.data.dataset import DataError, eval_frame, train_frame, write_dataset
from temarec.data.prepare import (Flag, check_timestamp, find_file, iter_lines, register_importer, source_manifest,
                                  start_folder_import, title_lookup)

logger = logging.getLogger(__name__)

ITEM_FILES = (("items_a.txt", "Alist.txt"), ("items_b.txt", "Blist.txt"))
VALID_FILES = ("val_new.txt", "validdata_new.txt")
TEST_FILES = ("test_new.txt", "testdata_new.txt")
TRAIN_FILES = ("train_new.txt", "traindata_new.txt")

Line = tuple[str, list[int], list[int]]  # (user, items in time order, timestamps)


def import_c2dsr(input_dir: str | Path, domains: str | Sequence[str], out: str | Path,
                 titles: str | Path | None = None, *, cfg: DataConfig | None = None,
                 overwrite: bool = False) -> Path:
    """Read a C2DSR folder and write the dataset folder ``out``; returns its path."""
    cfg, folder, names = start_folder_import(input_dir, domains, out, overwrite, cfg)
    hint = _format_hint(folder)
    files = {
        "items_a": find_file(folder, ITEM_FILES[0], f"{names[0]} items", hint),
        "items_b": find_file(folder, ITEM_FILES[1], f"{names[1]} items", hint),
        "userlist": find_file(folder, ("userlist.txt",), "user list", hint),
        "valid": find_file(folder, VALID_FILES, "validation", hint),
        "test": find_file(folder, TEST_FILES, "test", hint),
        "train": next((folder / f for f in TRAIN_FILES if (folder / f).is_file()), None),
    }
    asins = [_read_items(files["items_a"]), _read_items(files["items_b"])]
    _check_disjoint(asins, files)
    n_first, n_items = len(asins[0]), len(asins[0]) + len(asins[1])
    users = _read_userlist(files["userlist"])

    valid = [_read_line(where, line, users, n_items) for where, line in _nonempty(files["valid"])]
    test = [_read_line(where, line, users, n_items) for where, line in _nonempty(files["test"])]
    if files["train"] is not None:
        train_rows = [_read_line(where, line, users, n_items) for where, line in _nonempty(files["train"])]
        train_source = "train_file"
    else:
        # the public release has no training file: train on every evaluation line's history
        train_rows = [(u, seq[:-1], ts[:-1]) for u, seq, ts in valid + test]
        train_source = "histories"
        logger.info("no training file in %s: training sequences are the valid/test histories", folder)

    lookup = title_lookup(titles)
    items = pd.DataFrame({
        "item": asins[0] + asins[1],
        "domain": [names[0]] * n_first + [names[1]] * len(asins[1]),
        "title": [lookup(a, names[0]) for a in asins[0]] + [lookup(a, names[1]) for a in asins[1]],
        "description": [None] * n_items,
        "image": [None] * n_items,
    })
    return write_dataset(
        out, items=items, train=train_frame(train_rows),
        valid=_eval_frame(valid, n_first), test=_eval_frame(test, n_first),
        domains=names, train_source=train_source,
        source=source_manifest("c2dsr", {**files, "titles": Path(titles) if titles else None}),
        num_negatives=cfg.num_negatives, negative_seed=cfg.negative_seed, overwrite=overwrite)


def _format_hint(folder: Path) -> str:
    """A pointer to the right --format when the folder holds another format's files."""
    if (folder / "afk_50_preprocessed.txt").exists() or any(folder.glob("map_item_*.txt")):
        return "; it looks like an ABXI folder: use --format abxi"
    return ""


def _nonempty(path: Path) -> Iterator[tuple[tuple[Path, int], str]]:
    """((file, line number), line) of each non-blank line."""
    for lineno, line in iter_lines(path):
        if line.strip():
            yield (path, lineno), line


def _read_items(path: Path) -> list[str]:
    """``orig_id \\t ASIN \\t local_id`` lines -> ASINs indexed by local id (ids must be 0..N-1)."""
    by_local: dict[int, str] = {}
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise DataError(f"expected 'orig_id <tab> ASIN <tab> local_id', got {len(fields)} field(s): {line[:80]!r}",
                            path, lineno)
        asin, local = fields[1].strip(), fields[2].strip()
        if not local.isdigit():
            raise DataError(f"local_id {local!r} is not a non-negative integer", path, lineno)
        if int(local) in by_local:
            raise DataError(f"local_id {local} appears twice", path, lineno)
        by_local[int(local)] = asin
    if not by_local:
        raise DataError("no items: the domain is empty", path)
    n = len(by_local)
    if max(by_local) != n - 1:
        missing = min(set(range(n)) - set(by_local))
        raise DataError(f"local ids must run 0..{n - 1} without gaps; {missing} is missing", path)
    return [by_local[i] for i in range(n)]


def _check_disjoint(asins: list[list[str]], files: dict[str, Path | None]) -> None:
    for d, key in enumerate(("items_a", "items_b")):
        seen: set[str] = set()
        for local, asin in enumerate(asins[d]):
            if asin in seen:
                raise DataError(f"ASIN {asin} appears twice (local id {local})", files[key])
            seen.add(asin)
    both = set(asins[0]) & set(asins[1])
    if both:
        raise DataError(f"{len(both)} ASIN(s) are in both domains, e.g. {sorted(both)[0]}; "
                        "an item must belong to one domain", files["items_b"])


def _read_userlist(path: Path) -> dict[str, str]:
    """``reviewerID \\t user_id`` -> {user_id: reviewerID}."""
    users: dict[str, str] = {}
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[1].strip().isdigit():
            raise DataError(f"expected 'reviewerID <tab> user_id', got {line[:80]!r}", path, lineno)
        users[fields[1].strip()] = fields[0].strip()
    return users


def _read_line(where: tuple[Path, int], line: str, users: dict[str, str], n_items: int) -> Line:
    """One sequence line -> (reviewerID, items sorted by time (stable), their timestamps)."""
    path, lineno = where
    fields = [f for f in line.split("\t") if f.strip()]
    if len(fields) < 4:
        raise DataError("expected 'user_id <tab> seq_id <tab> item|timestamp|date| ...' with at least two items, "
                        f"got {line[:80]!r}", path, lineno)
    user = fields[0].strip()
    if user not in users:
        raise DataError(f"user_id {user} is not in userlist.txt", path, lineno)
    pairs: list[tuple[int, int]] = []
    for token in fields[2:]:
        parts = token.split("|")
        try:
            item, ts = int(parts[0]), int(parts[1])
        except (ValueError, IndexError):
            raise DataError(f"cannot read {token.strip()[:40]!r} as item|timestamp|date|", path, lineno) from None
        if not 0 <= item < n_items:
            raise DataError(f"item id {item} is out of range [0, {n_items}) of the two item files", path, lineno)
        pairs.append((item, check_timestamp(ts, path, lineno)))
    pairs.sort(key=lambda p: p[1])  # stable: ties keep file order
    return users[user], [p[0] for p in pairs], [p[1] for p in pairs]


def _eval_frame(lines: list[Line], n_first: int) -> pd.DataFrame:
    """Last item of each (time-sorted) line = target; everything before it = history."""
    return eval_frame([(u, seq[:-1], ts[:-1], seq[-1], ts[-1], int(seq[-1] >= n_first)) for u, seq, ts in lines])


register_importer("c2dsr", import_c2dsr,
                  Flag("--input", "input_dir", "raw folder of C2DSR's files", required=True, metavar="DIR"),
                  Flag("--titles", "titles", "TSV with header 'asin  domain  title'"))
