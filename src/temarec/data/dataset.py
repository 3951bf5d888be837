"""The dataset folder: the artifact every importer writes and every later stage reads.

Layout (all written atomically: into a temporary sibling folder, then renamed)::

    DIR/manifest.json        domains, counts, splits, train_source, titles_coverage, source (see README)
    DIR/items.parquet        item (str, the data's id), domain (str), title, description, image (str or null)
                             row i is internal index i; the first domain's items come first
    DIR/train.parquet        user, items (list<int32> internal idx, time order), ts (list<int64>)
    DIR/valid.parquet        user, history (list<int32>), history_ts (list<int64>), target (int32),
    DIR/test.parquet         target_ts (int64), domain (int8: 0 or 1, the target's domain)
    DIR/negatives/PRESET/valid.npy  (n_valid, num_negatives) int32: the sampled protocol's negatives of one
    DIR/negatives/PRESET/test.npy   preset (c2dsr, abxi; see NEGATIVE_PRESETS), drawn once, both stored

A folder written before the presets existed holds only ``negatives/{valid,test}.npy``: those are read as the
``c2dsr`` preset, and the ``abxi`` preset is drawn in memory on first use (``temarec negatives`` stores it).

Internal indices never leave the library: public APIs speak the ``item`` column.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from temarec.data import content
from temarec.fileio import atomic_dir, read_json, write_json_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# eval.negatives: how the sampled protocol's negatives of a valid/test instance are drawn
NEGATIVE_PRESETS = {
    "c2dsr": "uniform over the target's domain, with replacement, excluding only the target (C2DSR)",
    "abxi": "distinct items of the target's domain, none of them the target or in the user's history (ABXI)",
}
SPLITS = ("train", "valid", "test")
EVAL_SPLITS = ("valid", "test")
ITEM_COLUMNS = ("item", "domain", "title", "description", "image")
EVAL_COLUMNS = ("user", "history", "history_ts", "target", "target_ts", "domain")


class DataError(ValueError):
    """Bad input data: the message names the file, the line (when known) and the problem."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path, self.line = path, line
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)


@dataclass
class Dataset:
    """A dataset folder: the one object that reads it (manifest, items, splits, negatives, tags, features).

    Stages and models receive what they need from here; the content sub-folders
    (``features/``, ``tags/``; layout in :mod:`temarec.data.content`) on every call, so a rerun stage is seen.
    """

    root: Path
    manifest: dict[str, Any]
    items: pd.DataFrame
    frames: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)  # splits read so far
    drawn_negatives: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def train(self) -> pd.DataFrame:
        return self.split("train")

    @property
    def valid(self) -> pd.DataFrame:
        return self.split("valid")

    @property
    def test(self) -> pd.DataFrame:
        return self.split("test")

    @property
    def domains(self) -> tuple[str, str]:
        return tuple(self.manifest["domains"])  # type: ignore[return-value]

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def domain_sizes(self) -> tuple[int, int]:
        return tuple(int(self.manifest["items"][d]) for d in self.domains)  # type: ignore[return-value]

    @property
    def domain_offsets(self) -> tuple[int, int]:
        """Internal idx range of domain d is [offsets[d], offsets[d] + sizes[d])."""
        return (0, self.domain_sizes[0])

    def domain_index(self, name: str) -> int:
        """Domain name ('Food') -> 0/1; raises with the valid names."""
        if name not in self.domains:
            raise ValueError(f"unknown domain {name!r}; this dataset has {list(self.domains)}")
        return self.domains.index(name)

    def domain_of(self, idx: np.ndarray) -> np.ndarray:
        return (np.asarray(idx) >= self.domain_sizes[0]).astype(np.int8)

    def split(self, name: str) -> pd.DataFrame:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        if name not in self.frames:
            self.frames[name] = _read_parquet(self.root / f"{name}.parquet")
        return self.frames[name]

    def negatives(self, split: str, preset: str = "c2dsr") -> np.ndarray:
        """(n_split, num_negatives) internal idx: the stored negatives of ``preset`` for ``split``.

        A folder without the preset stored (written before presets existed) gets it drawn in memory once per
        Dataset object, from the same seed, so the draw equals what ``temarec negatives`` would store.
        """
        if split not in EVAL_SPLITS:
            raise ValueError(f"negatives exist for {EVAL_SPLITS}, not {split!r}")
        check_negative_preset(preset)
        for path in (self.root / "negatives" / preset / f"{split}.npy",
                     *([self.root / "negatives" / f"{split}.npy"] if preset == "c2dsr" else [])):
            if path.is_file():
                try:
                    return np.load(path, allow_pickle=False)
                except (ValueError, OSError, EOFError) as exc:
                    raise DataError(f"cannot read these negatives ({exc}); the dataset folder is damaged: re-run "
                                    "`temarec prepare`", path) from exc
        if preset == "c2dsr":  # drawn in one stream over all rows by prepare: cannot be redrawn row by row
            raise DataError(f"no stored c2dsr negatives for {split}; re-run `temarec prepare`", self.root)
        if (split, preset) not in self.drawn_negatives:
            log.info("%s holds no %s negatives for %s; drawing them in memory (store them once with "
                     "`temarec negatives --dataset %s`)", self.root, preset, split, self.root)
            spec = self.manifest["negatives"]
            self.drawn_negatives[(split, preset)] = draw_abxi_negatives(
                self.split(split), split, self.domain_sizes, int(spec["per_instance"]), int(spec["seed"]))
        return self.drawn_negatives[(split, preset)]

    def item_lookup(self) -> dict[str, int]:
        """The data's item id -> internal idx."""
        return {item: i for i, item in enumerate(self.items["item"].tolist())}

    def describe(self) -> str:
        """One line naming the data, for every report."""
        m = self.manifest
        src = m.get("source", {}).get("format", "?")
        sizes = " / ".join(f"{d} {m['items'][d]:,} items" for d in self.domains)
        return f"{m.get('name', self.root.name)} ({src}; {sizes}; train from {m.get('train_source', '?')})"

    # ---- content sub-folders: features/ (temarec features) and tags/ (temarec tags) ----------------------------

    def feature_meta(self) -> dict[str, Any]:
        """features/meta.json: encoders, dims, counts per modality; FileNotFoundError naming the command if absent."""
        return content.read_feature_meta(self.root)

    def features(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Modality ("txt", "img") -> ((n_items, e) float32 matrix, (n_items,) bool mask), rows = internal idx."""
        return content.read_features(self.root, self.items["item"])

    def features_source(self) -> str:
        """One line naming the feature encoders, for every report."""
        return content.describe_features(self.root)

    def tag_meta(self) -> dict[str, Any]:
        """tags/meta.json ({} when the tags stage never ran)."""
        return content.read_tag_meta(self.root)

    def tag_vocabulary(self) -> dict[str, Any]:
        """tags/vocab.json: per-domain tags with votes, and the shared vocabulary T."""
        return content.read_vocabulary(self.root)

    def tag_scores(self) -> tuple[np.ndarray, list[str]]:
        """(n_items, |T|) uint8 item-tag scores 1-100 (0 = none), rows = internal idx, and the tag names."""
        return content.read_tag_scores(self.root, self.items["item"])

    def tag_source(self) -> str:
        """One line naming where the tags come from, for every report."""
        return content.describe_tags(self.root)

    @classmethod
    def load(cls, root: str | Path, splits: bool = True) -> "Dataset":
        """Open a dataset folder: manifest and items, and the three splits unless ``splits`` is False (the tags and
        features stages need items only; splits are then read on first use)."""
        root = Path(root)
        manifest_path = root / "manifest.json"
        if not manifest_path.is_file():
            raise DataError("not a temarec dataset folder (no manifest.json); create one with `temarec prepare`",
                            root)
        manifest = read_json(manifest_path, "the dataset folder is damaged: re-run `temarec prepare`")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise DataError(f"dataset format {manifest.get('format_version')} is not {FORMAT_VERSION}; "
                            "re-run `temarec prepare`", manifest_path)
        dataset = cls(root=root, manifest=manifest, items=_read_parquet(root / "items.parquet"))
        for name in SPLITS if splits else ():
            dataset.split(name)  # a damaged split is reported now, before any work
        return dataset


def _read_parquet(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError("missing: the dataset folder is incomplete; re-run `temarec prepare`", path)
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"cannot read this Parquet file ({type(exc).__name__}: {exc}); the dataset folder is "
                        "damaged: re-run `temarec prepare`", path) from exc


def draw_negatives(targets: np.ndarray, target_domains: np.ndarray, sizes: Sequence[int],
                   num: int, rng: np.random.Generator) -> np.ndarray:
    """C2DSR protocol: ``num`` negatives uniform over the target's domain, excluding only the target.

    Repeats and history items are allowed (as in C2DSR's sampler). Drawn as offset = 1 + U{0..N-2}
    added to the target's local id modulo N, which is uniform over the domain minus the target.
    """
    out = np.empty((len(targets), num), dtype=np.int32)
    offsets = np.array([0, sizes[0]])
    for d in (0, 1):
        rows = np.flatnonzero(target_domains == d)
        if len(rows) == 0:
            continue
        n = sizes[d]
        if n < 2:
            raise DataError(f"domain {d} has {n} item(s); the sampled protocol needs at least 2")
        local = targets[rows] - offsets[d]
        shift = rng.integers(1, n, size=(len(rows), num))
        out[rows] = ((local[:, None] + shift) % n + offsets[d]).astype(np.int32)
    return out


def check_negative_preset(preset: str) -> None:
    if preset not in NEGATIVE_PRESETS:
        raise ValueError(f"unknown negatives preset {preset!r}; choose one of {', '.join(NEGATIVE_PRESETS)} "
                         "(eval.negatives)")


def draw_abxi_negatives(frame: pd.DataFrame, split: str, sizes: Sequence[int], num: int, seed: int) -> np.ndarray:
    """ABXI protocol: ``num`` distinct items of the target's domain, none in the user's history or the target.

    Each row draws from its own generator, seeded by (seed, split, user, target), so the draw does not depend
    on the order of the rows (nor on the order of the input file they came from).
    """
    out = np.empty((len(frame), num), dtype=np.int32)
    offsets = (0, sizes[0])
    for row, (user, history, target, d) in enumerate(zip(frame["user"], frame["history"], frame["target"],
                                                          frame["domain"])):
        d = int(d)
        seen = np.asarray(history, dtype=np.int64) - offsets[d]
        seen = seen[(seen >= 0) & (seen < sizes[d])]  # the history's items of the target's domain (local ids)
        allowed = np.ones(sizes[d], dtype=bool)
        allowed[seen] = False
        allowed[int(target) - offsets[d]] = False
        candidates = np.flatnonzero(allowed)
        if len(candidates) < num:
            raise DataError(f"user {user!r} ({split}): only {len(candidates)} items of the target's domain are "
                            f"outside the history, the abxi preset needs {num} distinct negatives; lower "
                            "data.num_negatives or use eval.negatives=c2dsr")
        key = hashlib.sha256(f"{seed}|{split}|{user}|{int(target)}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(key[:16], "little"))
        out[row] = rng.choice(candidates, size=num, replace=False) + offsets[d]
    return out


def write_negatives(root: str | Path, presets: Sequence[str] = tuple(NEGATIVE_PRESETS)) -> list[str]:
    """Store the negatives of ``presets`` missing from a dataset folder (each file atomically); returns those
    written. The legacy ``negatives/{split}.npy`` of an older folder is copied to ``negatives/c2dsr/``."""
    ds = Dataset.load(root)
    written = []
    for preset in presets:
        check_negative_preset(preset)
        for split in EVAL_SPLITS:
            path = ds.root / "negatives" / preset / f"{split}.npy"
            if path.is_file():
                continue
            save_npy_atomic(path, ds.negatives(split, preset))
            written.append(f"{preset}/{split}")
    return written


def save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    from temarec.fileio import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to the temporary name
            np.save(fh, arr)

    atomic_write(path, write)


def write_dataset(root: str | Path, *, items: pd.DataFrame, train: pd.DataFrame, valid: pd.DataFrame,
                  test: pd.DataFrame, domains: Sequence[str], train_source: str, source: dict[str, Any],
                  num_negatives: int = 999, negative_seed: int = 2022, name: str | None = None,
                  overwrite: bool = False) -> Path:
    """Validate and write a dataset folder atomically; returns its path."""
    root = Path(root)
    if root.exists() and not overwrite and any(root.iterdir()):
        raise DataError("output folder exists and is not empty; pass --overwrite or choose another --out", root)
    _validate(items, train, valid, test, domains)
    sizes = [int((items["domain"] == d).sum()) for d in domains]
    rng = np.random.default_rng(negative_seed)
    negatives = {
        ("c2dsr", s): draw_negatives(frame["target"].to_numpy(), frame["domain"].to_numpy(), sizes, num_negatives,
                                     rng)
        for s, frame in (("valid", valid), ("test", test))
    }
    presets = dict(NEGATIVE_PRESETS)
    try:
        negatives.update({("abxi", s): draw_abxi_negatives(frame, s, sizes, num_negatives, negative_seed)
                          for s, frame in (("valid", valid), ("test", test))})
    except DataError as exc:  # a domain too small for distinct negatives outside the history: c2dsr only
        log.warning("abxi negatives not stored: %s", exc)
        presets["abxi"] = f"not available for this data: {exc}"
    has_text = items["title"].fillna("").str.strip().ne("") | items["description"].fillna("").str.strip().ne("")
    users = pd.concat([train["user"], valid["user"], test["user"]]).nunique()
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name or root.name,
        "domains": list(domains),
        "items": {d: n for d, n in zip(domains, sizes)},
        "users": int(users),
        "interactions": _count_interactions(train, valid, test),
        "splits": {
            "train": {d: int(_train_targets(train, sizes[0], i)) for i, d in enumerate(domains)},
            "valid": {d: int((valid["domain"] == i).sum()) for i, d in enumerate(domains)},
            "test": {d: int((test["domain"] == i).sum()) for i, d in enumerate(domains)},
        },
        "train_source": train_source,
        "titles_coverage": {d: round(float(has_text[items["domain"] == d].mean()), 4) for d in domains},
        "negatives": {"per_instance": num_negatives, "seed": negative_seed,
                      "rule": "uniform over the target's domain, excluding only the target",
                      "presets": presets},
        "source": source,
    }
    with atomic_dir(root) as tmp:
        items.reset_index(drop=True).to_parquet(tmp / "items.parquet", index=False)
        for s, frame in (("train", train), ("valid", valid), ("test", test)):
            frame.reset_index(drop=True).to_parquet(tmp / f"{s}.parquet", index=False)
        for (preset, s), arr in negatives.items():
            (tmp / "negatives" / preset).mkdir(parents=True, exist_ok=True)
            np.save(tmp / "negatives" / preset / f"{s}.npy", arr)
        write_json_atomic(tmp / "manifest.json", manifest)
    return root


def _train_targets(train: pd.DataFrame, n_first: int, d: int) -> int:
    """Training next-item targets of domain d (every position after the first)."""
    total = 0
    for seq in train["items"]:
        seq = np.asarray(seq)[1:]
        total += int(((seq >= n_first) == bool(d)).sum())
    return total


def _count_interactions(train: pd.DataFrame, valid: pd.DataFrame, test: pd.DataFrame) -> int:
    return int(sum(len(s) for s in train["items"]) + len(valid) + len(test))


def _validate(items: pd.DataFrame, train: pd.DataFrame, valid: pd.DataFrame, test: pd.DataFrame,
              domains: Sequence[str]) -> None:
    if len(domains) != 2 or domains[0] == domains[1]:
        raise DataError(f"need exactly two distinct domain names, got {list(domains)}")
    missing = set(ITEM_COLUMNS) - set(items.columns)
    if missing:
        raise DataError(f"items table lacks columns {sorted(missing)}")
    unknown = set(items["domain"]) - set(domains)
    if unknown:
        raise DataError(f"items have domains {sorted(unknown)} not in {list(domains)}")
    for d in domains:
        if (items["domain"] == d).sum() == 0:
            raise DataError(f"domain {d!r} has no items")
    first = items["domain"].to_numpy() == domains[0]
    n0 = int(first.sum())
    if not first[:n0].all():
        raise DataError(f"items of {domains[0]!r} must come first in the items table")
    if items["item"].duplicated().any():
        dup = items.loc[items["item"].duplicated(), "item"].iloc[0]
        raise DataError(f"item id {dup!r} appears twice in the items table")
    n = len(items)
    for name, frame in (("valid", valid), ("test", test)):
        missing = set(EVAL_COLUMNS) - set(frame.columns)
        if missing:
            raise DataError(f"{name} split lacks columns {sorted(missing)}")
        if len(frame) == 0:
            raise DataError(f"{name} split is empty")
        for domain in missing_target_domains(frame, domains):
            log.warning("the %s split has no %r target: %r metrics of %s will be undefined (NaN)%s", name, domain,
                        domain, name, "; `temarec train` refuses such a dataset (model selection averages the "
                        "domains' validation MRR)" if name == "valid" else "")
        t = frame["target"].to_numpy()
        if t.min() < 0 or t.max() >= n:
            raise DataError(f"{name} split has a target id out of range [0, {n})")
        if not np.array_equal((t >= n0).astype(np.int8), frame["domain"].to_numpy().astype(np.int8)):
            raise DataError(f"{name} split: a row's domain does not match its target's domain")
    for name, column, frame in (("train", "items", train), ("valid", "history", valid), ("test", "history", test)):
        flat = _flatten(frame[column])
        if len(flat) and (flat.min() < 0 or flat.max() >= n):
            raise DataError(f"{name} split has an item id out of range [0, {n})")


def missing_target_domains(frame: pd.DataFrame, domains: Sequence[str]) -> list[str]:
    """The domains of which a valid/test split holds no target (their metrics would be NaN)."""
    present = set(frame["domain"].astype(int).tolist())
    return [name for d, name in enumerate(domains) if d not in present]


def _flatten(column: Iterable[Any]) -> np.ndarray:
    arrays = [np.asarray(x, dtype=np.int64) for x in column]
    return np.concatenate(arrays) if arrays else np.empty(0, dtype=np.int64)


def leave_one_out(timelines: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Chronological leave-one-out per user: last = test target, the one before = valid target, rest = train.

    ``timelines``: user, items (list of internal idx, time order), ts (list), n_first (int, items of domain 0).
    The history of a valid/test instance is everything before its target.
    """
    n_first = int(timelines.attrs["n_first"])
    train_rows, valid_rows, test_rows = [], [], []
    for user, seq, ts in zip(timelines["user"], timelines["items"], timelines["ts"]):
        seq = list(seq)
        ts = list(ts)
        if len(seq) < 3:
            raise DataError(f"user {user!r} has {len(seq)} interactions; leave-one-out needs at least 3")
        train_rows.append((user, seq[:-2], ts[:-2]))
        valid_rows.append((user, seq[:-2], ts[:-2], seq[-2], ts[-2], int(seq[-2] >= n_first)))
        test_rows.append((user, seq[:-1], ts[:-1], seq[-1], ts[-1], int(seq[-1] >= n_first)))
    return (train_frame(train_rows), eval_frame(valid_rows), eval_frame(test_rows))


def train_frame(rows: list[tuple]) -> pd.DataFrame:
    """Rows of (user, items, ts) -> the train table."""
    return pd.DataFrame({
        "user": [str(r[0]) for r in rows],
        "items": [np.asarray(r[1], dtype=np.int32) for r in rows],
        "ts": [np.asarray(r[2], dtype=np.int64) for r in rows],
    })


def eval_frame(rows: list[tuple]) -> pd.DataFrame:
    """Rows of (user, history, history_ts, target, target_ts, domain) -> a valid/test table."""
    return pd.DataFrame({
        "user": [str(r[0]) for r in rows],
        "history": [np.asarray(r[1], dtype=np.int32) for r in rows],
        "history_ts": [np.asarray(r[2], dtype=np.int64) for r in rows],
        "target": np.asarray([r[3] for r in rows], dtype=np.int32),
        "target_ts": np.asarray([r[4] for r in rows], dtype=np.int64),
        "domain": np.asarray([r[5] for r in rows], dtype=np.int8),
    })

