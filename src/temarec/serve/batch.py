"""Recommendations for many users at once, file to file: ``temarec recommend --run RUN --input F --output G``.

Input (by extension), one history per row:
- ``.jsonl``: ``{"user": "u1", "history": ["F02001", "K02003"], "domain": "Kitchen"}``; ``history`` may also be
  ``[{"item": ..., "ts": ...}]`` events; optional ``"k"``.
- ``.csv`` / ``.tsv``: columns ``user``, ``history`` (item ids separated by spaces), ``domain``, optional ``k``.
- ``.parquet``: the same columns, ``history`` a list of ids.

Output (by extension): ``.jsonl`` one object per input row (``user``, ``line``, ``domain``, ``items``,
``unknown_items``, ``fallback``); ``.csv`` or ``.parquet`` one row per recommended item (``user``, ``line``,
``domain``, ``rank``, ``item``, ``score``, ``title``). ``line`` is the row's line in the input file (JSONL, CSV) or
its 1-based row number (Parquet).

Rows are read and scored in batches (one forward pass per domain per batch), with a progress bar on a terminal.
A bad row (not JSON, no domain, an unknown domain, a history that is not a list, a bad k) is skipped and reported
with its line; with ``strict`` the first bad row — or a history naming an unknown item — ends the command instead.
The output is written to a temporary file and renamed at the end: an interrupted or failed run leaves none.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm

from temarec.fileio import atomic_write
from temarec.serve.recommender import Query, Recommendations, RecommendError, Recommender

INPUT_FORMATS = (".jsonl", ".csv", ".tsv", ".parquet")
OUTPUT_FORMATS = (".jsonl", ".csv", ".parquet")
LONG_COLUMNS = ("user", "line", "domain", "rank", "item", "score", "title")


class BadRow(ValueError):
    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass
class Row:
    line: int
    user: Any
    history: list[Any]
    domain: str
    k: int


@dataclass
class BatchReport:
    rows: int = 0  # rows answered
    bad: list[str] = field(default_factory=list)  # "line N: what is wrong", in input order

    def summary(self, output: Path) -> str:
        text = f"wrote recommendations for {self.rows:,} row(s) to {output}"
        if self.bad:
            shown = "; ".join(self.bad[:10]) + (f"; ... {len(self.bad) - 10} more" if len(self.bad) > 10 else "")
            text += f"; skipped {len(self.bad):,} bad row(s): {shown}"
        return text


def _suffix(path: Path, allowed: tuple[str, ...], what: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise ValueError(f"{what} {path}: unknown format {suffix or '(no extension)'!r}; use one of "
                         f"{', '.join(allowed)}")
    return suffix


def _count_rows(path: Path, suffix: str) -> int | None:
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return None


def _parse(line: int, raw: dict[str, Any], default_k: int) -> Row:
    if not isinstance(raw, dict):
        raise BadRow(line, "expected an object with user, history and domain")
    domain = raw.get("domain")
    if not isinstance(domain, str) or not domain:
        raise BadRow(line, "no domain (the domain to recommend from, by its data name)")
    history = raw.get("history", [])
    if history is None or (isinstance(history, float) and math.isnan(history)):
        history = []
    if isinstance(history, str):  # CSV: ids separated by spaces
        history = history.split()
    if hasattr(history, "tolist"):  # Parquet: a numpy array
        history = history.tolist()
    if not isinstance(history, list):
        raise BadRow(line, f"history must be a list of item ids, got {type(history).__name__}")
    if any(isinstance(h, dict) for h in history):  # [{"item": ..., "ts": ...}] events -> (id, ts) pairs
        if not all(isinstance(h, dict) and set(h) == {"item", "ts"} for h in history):
            raise BadRow(line, 'history events must each be {"item": ..., "ts": ...}, not mixed with plain ids')
        history = [(h["item"], h["ts"]) for h in history]
    k = raw.get("k", default_k)
    if k is None or (isinstance(k, float) and math.isnan(k)):
        k = default_k
    if isinstance(k, float) and k.is_integer():
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise BadRow(line, f"k must be a positive integer, got {k!r}")
    user = raw.get("user")
    if isinstance(user, float) and math.isnan(user):
        user = None
    return Row(line, user, history, domain, k)


def _read_rows(path: Path, suffix: str, default_k: int) -> Iterator[Row | BadRow]:
    """Every input row, parsed, or the BadRow saying what is wrong with it."""
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as fh:
            for n, text in enumerate(fh, 1):
                if not text.strip():
                    continue
                try:
                    yield _parse(n, json.loads(text), default_k)
                except json.JSONDecodeError as exc:
                    yield BadRow(n, f"not valid JSON ({exc.msg})")
                except BadRow as exc:
                    yield exc
    elif suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            missing = {"history", "domain"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{path}: no column(s) {', '.join(sorted(missing))}; the header needs user, "
                                 "history (ids separated by spaces), domain and optionally k")
            for raw in reader:
                raw = dict(raw)
                if raw.get("k") not in (None, ""):
                    try:
                        raw["k"] = int(raw["k"])
                    except ValueError:
                        pass  # _parse reports it
                else:
                    raw.pop("k", None)
                try:
                    yield _parse(reader.line_num, raw, default_k)
                except BadRow as exc:
                    yield exc
    else:
        import pyarrow.parquet as pq

        source = pq.ParquetFile(path)
        missing = {"history", "domain"} - set(source.schema_arrow.names)
        if missing:
            raise ValueError(f"{path}: no column(s) {', '.join(sorted(missing))}; it needs user, history (a list "
                             "of ids), domain and optionally k")
        n = 0
        for batch in source.iter_batches(batch_size=4096):
            for raw in batch.to_pylist():
                n += 1
                try:
                    yield _parse(n, raw, default_k)
                except BadRow as exc:
                    yield exc


class _Writer:
    """Streams answers into the temporary output file in the chosen format."""

    def __init__(self, tmp: str, suffix: str):
        self.suffix = suffix
        self.parquet = None
        if suffix == ".parquet":
            self.path = tmp
        else:
            self.fh = open(tmp, "w", encoding="utf-8", newline="")
            if suffix == ".csv":
                self.csv = csv.writer(self.fh)
                self.csv.writerow(LONG_COLUMNS)

    def write(self, rows: list[Row], answers: list[Recommendations]) -> None:
        if self.suffix == ".jsonl":
            for row, a in zip(rows, answers):
                self.fh.write(json.dumps({"user": row.user, "line": row.line, "domain": a.domain,
                                          "items": [{k: r[k] for k in ("item", "score", "title")} for r in a],
                                          "unknown_items": a.unknown_items, "fallback": a.fallback},
                                         allow_nan=False) + "\n")
            return
        long = [(row.user, row.line, a.domain, rank, r["item"], r["score"], r["title"])
                for row, a in zip(rows, answers) for rank, r in enumerate(a, 1)]
        if self.suffix == ".csv":
            self.csv.writerows(long)
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = _long_schema()
        table = pa.Table.from_pylist([dict(zip(LONG_COLUMNS, t)) for t in long], schema=schema)
        if self.parquet is None:
            self.parquet = pq.ParquetWriter(self.path, schema)
        self.parquet.write_table(table)

    def close(self) -> None:
        if self.suffix == ".parquet":
            if self.parquet is None:  # no answer at all: still a valid, empty table
                import pyarrow.parquet as pq

                pq.write_table(_long_schema().empty_table(), self.path)
            else:
                self.parquet.close()
        else:
            self.fh.close()


def _long_schema():
    """The Parquet output's columns: one row per recommended item."""
    import pyarrow as pa

    return pa.schema([("user", pa.string()), ("line", pa.int64()), ("domain", pa.string()), ("rank", pa.int64()),
                      ("item", pa.string()), ("score", pa.float64()), ("title", pa.string())])


def recommend_file(rec: Recommender, input_path: str | Path, output_path: str | Path, *, k: int = 10,
                   exclude_seen: bool = True, strict: bool = False, batch_size: int = 256,
                   progress: bool | None = None) -> BatchReport:
    """Recommend for every row of ``input_path`` into ``output_path`` (formats by extension; module docstring)."""
    src, dst = Path(input_path), Path(output_path)
    in_suffix = _suffix(src, INPUT_FORMATS, "--input")
    out_suffix = _suffix(dst, OUTPUT_FORMATS, "--output")
    if not src.is_file():
        raise FileNotFoundError(f"--input {src} is not a file")
    if dst.resolve() == src.resolve():
        raise ValueError("--output must not be the --input file")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    report = BatchReport()

    def flush(writer: _Writer, rows: list[Row]) -> None:
        queries = [Query(r.history, r.domain, r.k, exclude_seen, strict, False) for r in rows]
        answers = rec.answer(queries)
        good_rows, good = [], []
        for row, answer in zip(rows, answers):
            if isinstance(answer, RecommendError):
                if strict:
                    raise ValueError(f"{src}: line {row.line}: {answer}")
                report.bad.append(f"line {row.line}: {answer}")
            else:
                good_rows.append(row)
                good.append(answer)
        writer.write(good_rows, good)
        report.rows += len(good)

    def fill(tmp: str) -> None:
        writer = _Writer(tmp, out_suffix)
        try:
            pending: list[Row] = []
            bar = tqdm(_read_rows(src, in_suffix, k), total=_count_rows(src, in_suffix), unit="row",
                       desc="recommend", disable=None if progress is None else not progress)
            for row in bar:
                if isinstance(row, BadRow):
                    if strict:
                        raise ValueError(f"{src}: {row}")
                    report.bad.append(str(row))
                    continue
                if row.user is not None:
                    row.user = str(row.user)
                pending.append(row)
                if len(pending) >= batch_size:
                    flush(writer, pending)
                    pending = []
            if pending:
                flush(writer, pending)
        finally:
            writer.close()

    atomic_write(dst, fill)
    return report
