"""Property tests of `temarec prepare` (issue 17): random valid interaction tables give the documented split;
random corruptions of them end either in that split or in one line naming the file (and the row, when one row is
corrupt), exit code 2 -- never a traceback, never a half-written folder."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from temarec.cli import main
from temarec.data.dataset import Dataset

DOMAINS = ("Food", "Kitchen")
# no filtering (every user has >= 3 interactions) and one negative: any table of this shape is a valid dataset
SETTINGS = ["--set", "data.min_user_interactions=3", "--set", "data.min_user_per_domain=0",
            "--set", "data.num_negatives=1"]
ITEMS = {d: [f"{d[0]}{i}" for i in range(8)] for d in DOMAINS}
# two users who between them name every item: both domains exist, and no history holds a whole domain
ANCHORS = [(f"anchor-{half}", item, 10 * i, d) for half in (0, 1) for d in DOMAINS
           for i, item in enumerate(ITEMS[d][4 * half:4 * half + 4])]

rows_of_user = st.lists(st.tuples(st.sampled_from(DOMAINS), st.integers(0, 7), st.integers(-50, 400)),
                        min_size=3, max_size=6)
tables = st.lists(rows_of_user, min_size=1, max_size=6).flatmap(
    lambda users: st.permutations([(f"user-{u}", ITEMS[d][i], ts, d)
                                   for u, rows in enumerate(users) for d, i, ts in rows] + ANCHORS))


def _documented_split(rows: list[tuple]) -> dict[str, list[str]]:
    """user -> item ids in time order: exact duplicates dropped, users left with under 3 interactions dropped
    (the anchors keep every item), ties in time keep file order (the importer's docstring)."""
    seen, timelines = set(), {}
    for user, item, ts, _ in rows:
        if (user, item, ts) not in seen:
            seen.add((user, item, ts))
            timelines.setdefault(user, []).append((ts, item))
    return {u: [item for _, item in sorted(events, key=lambda e: e[0])] for u, events in timelines.items()
            if len(events) >= 3}


def _csv(rows: list[tuple]) -> str:
    return "user,item,timestamp,domain\n" + "".join(f"{u},{i},{t},{d}\n" for u, i, t, d in rows)


def _prepare(folder: Path, source: Path, capsys) -> tuple[int, str]:
    code = main(["prepare", "--format", "interactions", "--interactions", str(source), "--domains", "Food,Kitchen",
                 "--out", str(folder / "out"), *SETTINGS])
    return code, capsys.readouterr().err


def _check_written_as_documented(out: Path, rows: list[tuple]) -> None:
    ds = Dataset.load(out)
    ids = ds.items["item"].tolist()
    domain_of = {item: d for _, item, _, d in rows}
    assert ids == sorted(i for i in ids if domain_of[i] == "Food") + sorted(i for i in ids if domain_of[i] != "Food")
    expected = _documented_split(rows)
    assert ds.test["user"].tolist() == sorted(expected)  # users in id order, whatever the file's order
    for train, valid, test in zip(ds.train.itertuples(), ds.valid.itertuples(), ds.test.itertuples()):
        seq = expected[test.user]
        assert [ids[i] for i in test.history] == seq[:-1] and ids[test.target] == seq[-1]
        assert [ids[i] for i in valid.history] == seq[:-2] and ids[valid.target] == seq[-2]
        assert [ids[i] for i in train.items] == seq[:-2]
        assert test.domain == (domain_of[seq[-1]] == "Kitchen") and valid.domain == (domain_of[seq[-2]] == "Kitchen")
    for split in ("valid", "test"):
        negatives = ds.negatives(split)
        assert negatives.shape == (len(expected), 1)


def _check_failed_cleanly(folder: Path, code: int, err: str, source: Path, line: int | None) -> None:
    assert code == 2 and "Traceback" not in err, err
    errors = [x for x in err.splitlines() if x.startswith("temarec prepare: error:")]
    assert len(errors) == 1, err
    assert str(source) in errors[0], errors[0]
    if line is not None:
        assert f", line {line}:" in errors[0], errors[0]
    assert sorted(p.name for p in folder.iterdir()) == [source.name]  # no folder, no temporary sibling


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=tables)
def test_a_valid_interaction_table_gives_the_documented_split(rows, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "log.csv"
        source.write_text(_csv(rows))
        code, err = _prepare(Path(tmp), source, capsys)
        assert code == 0, err
        _check_written_as_documented(Path(tmp) / "out", rows)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=tables, data=st.data())
def test_the_order_of_the_files_rows_changes_neither_the_split_nor_the_negatives(rows, data, capsys):
    """Issue 17 #9: the sampled negatives followed the file's row order. Rows with equal timestamps for one user
    keep their file order (documented), so those are given distinct times here."""
    rows = [(u, i, 1000 * n + t, d) for n, (u, i, t, d) in enumerate(rows)]
    shuffled = data.draw(st.permutations(rows), label="shuffled")
    with tempfile.TemporaryDirectory() as tmp:
        built = []
        for name, table in (("a", rows), ("b", shuffled)):
            (Path(tmp) / name).mkdir()
            source = Path(tmp) / name / "log.csv"
            source.write_text(_csv(table))
            assert _prepare(Path(tmp) / name, source, capsys)[0] == 0
            built.append(Dataset.load(Path(tmp) / name / "out"))
        a, b = built
        for split in ("valid", "test"):
            pd.testing.assert_frame_equal(a.split(split), b.split(split))
            for preset in ("c2dsr", "abxi"):
                assert np.array_equal(a.negatives(split, preset), b.negatives(split, preset))


@dataclass(frozen=True)
class Corruption:
    name: str
    row: int | None  # the data row it corrupts (file line = row + 2), when one row is corrupt
    text: str | None = None  # the new file, as text ...
    raw: bytes | None = None  # ... or as bytes


BAD_TIMESTAMPS = ["1e30", "-1e30", "inf", "-inf", "nan", "NaN", "9223372036854775808", "18446744073709551615",
                  "1e19", "abc", "12:61", "2024-13-45", "0x10", "1,5"]


@st.composite
def corruptions(draw, rows: list[tuple]) -> Corruption:
    """One corruption of one row (or of the file as a whole) of a valid table."""
    lines = _csv(rows).splitlines(keepends=True)
    r = draw(st.integers(0, len(rows) - 1), label="row")
    u, i, t, d = rows[r]
    kind = draw(st.sampled_from(["empty_cell", "bad_domain", "bad_timestamp", "other_domain", "missing_field",
                                 "extra_field", "bad_bytes", "unmatched_quote", "nul_byte", "duplicate_row",
                                 "missing_column", "header_only", "empty_file", "truncated"]), label="kind")

    def with_line(new: str) -> str:
        return "".join(lines[:r + 1] + [new] + lines[r + 2:])

    if kind == "empty_cell":
        cells = [u, i, str(t), d]
        cells[draw(st.integers(0, 3), label="column")] = ""
        return Corruption(kind, r, with_line(",".join(cells) + "\n"))
    if kind == "bad_domain":
        domain = draw(st.text(st.characters(codec="utf-8", exclude_characters=',"\r\n'), min_size=1, max_size=8)
                      .filter(lambda x: x.strip() and x.strip() not in DOMAINS), label="domain")
        return Corruption(kind, r, with_line(f"{u},{i},{t},{domain}\n"))
    if kind == "bad_timestamp":
        ts = draw(st.sampled_from(BAD_TIMESTAMPS), label="timestamp")
        cell = f'"{ts}"' if "," in ts else ts
        return Corruption(kind, r, with_line(f"{u},{i},{cell},{d}\n"))
    if kind == "other_domain":  # the item is then in both domains, unless this row is its only one
        return Corruption(kind, None, with_line(f"{u},{i},{t},{DOMAINS[1 - DOMAINS.index(d)]}\n"))
    if kind == "missing_field":
        return Corruption(kind, r, with_line(f"{u},{i},{t}\n"))
    if kind == "extra_field":
        return Corruption(kind, r, with_line(f"{u},{i},{t},{d},surplus\n"))
    if kind == "bad_bytes":
        text = "".join(lines)
        cut = len("".join(lines[:r + 1]).encode()) + 1
        raw = text.encode()
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82"]), label="bytes")
        return Corruption(kind, r, raw=raw[:cut] + bad + raw[cut:])
    if kind == "unmatched_quote":
        return Corruption(kind, r, with_line(f'{u},"{i},{t},{d}\n'))
    if kind == "nul_byte":
        return Corruption(kind, r, with_line(f"{u},{i}\x00,{t},{d}\n"))
    if kind == "duplicate_row":
        return Corruption(kind, None, "".join(lines[:r + 2] + [lines[r + 1]] + lines[r + 2:]))
    if kind == "missing_column":
        header = draw(st.sampled_from(["user,item,timestamp\n", "user,item,time,domain\n", "item,timestamp,domain\n"]))
        return Corruption(kind, None, header + "".join(lines[1:]))
    if kind == "header_only":
        return Corruption(kind, None, lines[0])
    if kind == "empty_file":
        return Corruption(kind, None, "")
    cut = draw(st.integers(1, len("".join(lines)) - 1), label="cut")
    return Corruption(kind, None, "".join(lines)[:cut])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=tables, data=st.data())
def test_a_corrupt_interaction_table_gives_the_split_or_one_line_naming_file_and_row(rows, data, capsys):
    corruption = data.draw(corruptions(rows), label="corruption")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = folder / "log.csv"
        if corruption.raw is not None:
            source.write_bytes(corruption.raw)
        else:
            source.write_text(corruption.text)
        code, err = _prepare(folder, source, capsys)
        if code == 0:  # a harmless corruption (a duplicate row, a cut at a row's end, a new domain of a lone item)
            assert corruption.name in ("duplicate_row", "truncated", "other_domain"), corruption
            parsed = pd.read_csv(source, dtype=str, keep_default_na=False)
            rows = [(u, i, int(t), d) for u, i, t, d in parsed.itertuples(index=False)]
            _check_written_as_documented(folder / "out", rows)
        else:
            line = corruption.row + 2 if corruption.row is not None else None
            _check_failed_cleanly(folder, code, err, source, line)


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
                        st.integers(-(10**30), 10**30), st.text(max_size=5), st.lists(st.integers(), max_size=2),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=tables, data=st.data())
def test_a_jsonl_table_with_a_wrongly_typed_or_broken_line_is_refused_in_one_line(rows, data, capsys):
    records = [{"user": u, "item": i, "timestamp": t, "domain": d} for u, i, t, d in rows]
    r = data.draw(st.integers(0, len(rows) - 1), label="row")
    field = data.draw(st.sampled_from(["user", "item", "timestamp", "domain", None]), label="field")
    lines = [json.dumps(rec) for rec in records]
    if field is None:
        lines[r] = lines[r][:data.draw(st.integers(1, len(lines[r]) - 1), label="cut")]  # a line cut short
    else:
        records[r][field] = data.draw(JSON_VALUES.filter(lambda v: not isinstance(v, str) or field == "timestamp"
                                                         or v.strip() not in DOMAINS), label="value")
        lines[r] = json.dumps(records[r])
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "log.jsonl"
        source.write_text("\n".join(lines) + "\n")
        code, err = _prepare(Path(tmp), source, capsys)
        if code == 0:  # the new value is a valid one: an integer id, a string id, a time string, a number of seconds
            value = records[r][field] if field else None
            assert field in ("user", "item", "timestamp") and not isinstance(value, bool), (field, value, err)
            assert isinstance(value, (int, str)) or (field == "timestamp" and isinstance(value, float)), (field, value)
            assert not isinstance(value, str) or value.strip(), (field, value)
            return
        _check_failed_cleanly(Path(tmp), code, err, source, r + 1)
