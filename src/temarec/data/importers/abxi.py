"""Import an ABXI-format folder (the ABXI paper's Amazon releases; Food-Kitchen is our primary benchmark).

Files (NAME is the domain pair, e.g. afk = Food-Kitchen; N the length cap the release was cut at, 50)::

    NAME_N_preprocessed.txt   user_id item|unix_ts item|unix_ts ...   one user per line, time order
    map_item_N.txt            JSON {ASIN: [item_id, domain]}         domain 0 = first domain; ids 1..N over both
    map_user_N.txt            JSON {reviewerID: user_id}

Items are renumbered so the first domain's come first (each domain in its original id order). Each user's
timeline is split chronologically, leave-one-out: last item = test target, the one before = valid target,
the rest = training sequence (``train_source`` "leave_one_out").
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from temarec.config import DataConfig
from temarec.data.dataset import DataError, leave_one_out, write_dataset
from temarec.data.prepare import (Flag, check_timestamp, iter_lines, open_text, register_importer, source_manifest,
                                  start_folder_import, title_lookup)

logger = logging.getLogger(__name__)

INTERACTIONS = re.compile(r"^(?P<name>.+)_(?P<n>\d+)_preprocessed\.txt$")


def import_abxi(input_dir: str | Path, domains: str | Sequence[str], out: str | Path,
                titles: str | Path | None = None, *, cfg: DataConfig | None = None,
                overwrite: bool = False) -> Path:
    """Read an ABXI folder and write the dataset folder ``out``; returns its path."""
    cfg, folder, names = start_folder_import(input_dir, domains, out, overwrite, cfg)
    files = find_files(folder)

    asins, old_to_new, n_first = _read_item_map(files["item_map"], names)
    user_names = _read_user_map(files["user_map"])
    timelines = _read_timelines(files["interactions"], user_names, old_to_new, files)
    timelines.attrs["n_first"] = n_first
    train, valid, test = leave_one_out(timelines)

    lookup = title_lookup(titles)
    domain_of = [names[0]] * n_first + [names[1]] * (len(asins) - n_first)
    items = pd.DataFrame({
        "item": asins,
        "domain": domain_of,
        "title": [lookup(a, d) for a, d in zip(asins, domain_of)],
        "description": [None] * len(asins),
        "image": [None] * len(asins),
    })
    return write_dataset(
        out, items=items, train=train, valid=valid, test=test, domains=names, train_source="leave_one_out",
        source=source_manifest("abxi", {**files, "titles": Path(titles) if titles else None}),
        num_negatives=cfg.num_negatives, negative_seed=cfg.negative_seed, overwrite=overwrite)


def find_files(folder: Path) -> dict[str, Path]:
    """The interactions file (``NAME_N_preprocessed.txt``, exactly one) and the id maps of the same N."""
    found = sorted(p for p in folder.iterdir() if p.is_file() and INTERACTIONS.match(p.name))
    if not found:
        hint = ""
        if (folder / "items_a.txt").exists() or (folder / "Alist.txt").exists():
            hint = "; it looks like a C2DSR folder: use --format c2dsr"
        raise DataError(f"no NAME_N_preprocessed.txt interactions file (e.g. afk_50_preprocessed.txt) in this "
                        f"folder{hint}", folder)
    if len(found) > 1:
        raise DataError(f"several ABXI interaction files ({', '.join(p.name for p in found)}): give --input a "
                        "folder holding one domain pair", folder)
    n = INTERACTIONS.match(found[0].name)["n"]
    files = {"interactions": found[0]}
    for key, name in (("item_map", f"map_item_{n}.txt"), ("user_map", f"map_user_{n}.txt")):
        if not (folder / name).is_file():
            raise DataError(f"no {name} beside {found[0].name} in this folder", folder)
        files[key] = folder / name
    return files


def _read_json(path: Path) -> Any:
    with open_text(path) as fh:
        try:
            return json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            line = getattr(exc, "lineno", None)
            raise DataError(f"not valid JSON ({exc})", path, line) from exc


def _read_item_map(path: Path, domains: tuple[str, str]) -> tuple[list[str], "IdMap", int]:
    """{ASIN: [item_id, domain]} -> (ASINs in internal order, old id -> internal idx, n_first)."""
    raw = _read_json(path)
    if not isinstance(raw, dict) or not raw:
        raise DataError('expected a non-empty JSON object {"ASIN": [item_id, domain], ...}', path)
    entries = []
    for asin, value in raw.items():
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                or value[1] not in (0, 1) or not 0 <= value[0] < 2**62):
            raise DataError(f"entry {asin!r}: expected [item_id >= 0, domain 0 or 1], got {value!r}", path)
        entries.append((value[1], value[0], asin))
    entries.sort()  # first domain first, each domain in its original id order
    ids = [e[1] for e in entries]
    if len(set(ids)) != len(ids):
        raise DataError("an item_id is used by two ASINs", path)
    n_first = sum(1 for e in entries if e[0] == 0)
    if n_first in (0, len(entries)):
        d = 0 if n_first == 0 else 1
        raise DataError(f"domain {d} ({domains[d]!r}) has no items", path)
    return [e[2] for e in entries], IdMap(np.asarray(ids, dtype=np.int64)), n_first


class IdMap:
    """The map's item ids -> internal idx (their position in ``old_ids``), for ids of any size (no dense table)."""

    def __init__(self, old_ids: np.ndarray):
        self.order = np.argsort(old_ids, kind="stable")
        self.sorted = old_ids[self.order]

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """Internal idx of each id; -1 for an id the map does not hold."""
        pos = np.clip(np.searchsorted(self.sorted, ids), 0, len(self.sorted) - 1)
        return np.where(self.sorted[pos] == ids, self.order[pos], -1)


def _read_user_map(path: Path) -> dict[str, str]:
    """{reviewerID: user_id} -> {str(user_id): reviewerID}."""
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise DataError('expected a JSON object {"reviewerID": user_id, ...}', path)
    return {str(uid): name for name, uid in raw.items()}


def _read_timelines(path: Path, user_names: dict[str, str], old_to_new: IdMap,
                    files: dict[str, Path]) -> pd.DataFrame:
    users, items, stamps = [], [], []
    seen: set[str] = set()
    for lineno, line in iter_lines(path):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2 or "\t" in line:
            raise DataError(f"expected 'user_id item|timestamp item|timestamp ...' (space separated), got "
                            f"{line[:80]!r}", path, lineno)
        uid = fields[0]
        if uid not in user_names:
            raise DataError(f"user_id {uid} is not in {files['user_map'].name}", path, lineno)
        if uid in seen:
            raise DataError(f"user_id {uid} has a second line", path, lineno)
        seen.add(uid)
        try:
            pairs = [tuple(map(int, tok.split("|"))) for tok in fields[1:]]
        except ValueError:
            pairs = []
        if not pairs or any(len(p) != 2 for p in pairs):
            raise DataError("every token after the user id must be item|timestamp (two integers)", path, lineno)
        if len(pairs) < 3:
            raise DataError(f"user_id {uid} has {len(pairs)} interactions; leave-one-out needs at least 3",
                            path, lineno)
        for item, ts in pairs:
            if not 0 <= item < 2**62:
                raise DataError(f"item id {item} is not in {files['item_map'].name}", path, lineno)
            check_timestamp(ts, path, lineno)
        seq = np.array([p[0] for p in pairs], dtype=np.int64)
        ts = np.array([p[1] for p in pairs], dtype=np.int64)
        new = old_to_new(seq)
        if (new < 0).any():
            raise DataError(f"item id {seq[new < 0][0]} is not in {files['item_map'].name}", path, lineno)
        order = np.argsort(ts, kind="stable")  # the file is in time order already; ties keep file order
        users.append(user_names[uid])
        items.append(new[order])
        stamps.append(ts[order])
    if not users:
        raise DataError("no interactions", path)
    return pd.DataFrame({"user": users, "items": items, "ts": stamps})


register_importer("abxi", import_abxi,
                  Flag("--input", "input_dir", "raw folder of ABXI's files", required=True, metavar="DIR"),
                  Flag("--titles", "titles", "TSV with header 'asin  domain  title'"))
