"""`temarec recommend --input F --output G`: many histories file to file, bad rows reported by line, all or nothing."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest

from temarec.cli import main

GOOD = [{"user": "u1", "history": ["F00001", "K01002"], "domain": "Kitchen"},
        {"user": "u2", "history": [{"item": "K01004", "ts": 2}, {"item": "F01003", "ts": 1}], "domain": "Food", "k": 2},
        {"user": "u3", "history": [], "domain": "Food"}]


def _lines(path, rows):
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_rows_get_the_same_answers_as_one_by_one_and_bad_rows_are_reported(trained_run, recommender, tmp_path,
                                                                                 capsys):
    src = _lines(tmp_path / "in.jsonl", [GOOD[0], "{not json\n", {"user": "x", "history": ["F00001"]},
                                         GOOD[1], {"history": "F00001", "domain": "Garden"}, "\n",
                                         {"history": 5, "domain": "Food"}, {"domain": "Food", "k": 0}, GOOD[2]])
    out = tmp_path / "out.jsonl"
    assert main(["recommend", "--run", str(trained_run("sasrec")), "--input", str(src), "--output", str(out),
                 "-k", "3", "--batch-size", "2"]) == 0
    said = capsys.readouterr().out
    assert "recommendations for 3 row(s)" in said and "skipped 5 bad row(s)" in said
    for fragment in ("line 2: not valid JSON", "line 3: no domain", "line 5: unknown domain 'Garden'",
                     "line 7: history must be a list", "line 8: k must be a positive integer"):
        assert fragment in said
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["user"], r["line"]) for r in rows] == [("u1", 1), ("u2", 4), ("u3", 9)]
    rec = recommender("sasrec")
    expected = [rec.recommend(["F00001", "K01002"], "Kitchen", k=3),
                rec.recommend([("K01004", 2), ("F01003", 1)], "Food", k=2),
                rec.recommend([], "Food", k=3)]
    for row, want in zip(rows, expected):
        assert [i["item"] for i in row["items"]] == want.item_ids
        assert row["fallback"] == want.fallback


def test_csv_and_parquet_in_and_out_are_one_row_per_recommended_item(trained_run, recommender, tmp_path):
    run = str(trained_run("sasrec"))
    src_csv = tmp_path / "in.csv"
    with open(src_csv, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["user", "history", "domain", "k"])
        w.writerow(["u1", "F00001 K01002", "Kitchen", "4"])
        w.writerow(["u2", "", "Food", ""])
    assert main(["recommend", "--run", run, "--input", str(src_csv), "--output", str(tmp_path / "o.csv"),
                 "-k", "2"]) == 0
    table = pd.read_csv(tmp_path / "o.csv")
    assert list(table.columns) == ["user", "line", "domain", "rank", "item", "score", "title"]
    rec = recommender("sasrec")
    assert table[table.user == "u1"]["item"].tolist() == rec.recommend(["F00001", "K01002"], "Kitchen", k=4).item_ids
    assert table[table.user == "u2"]["rank"].tolist() == [1, 2] and set(table["line"]) == {2, 3}

    src_pq = tmp_path / "in.parquet"
    pd.DataFrame({"user": ["a", "b"], "history": [["F00001"], ["K01002", "F01003"]],
                  "domain": ["Food", "Kitchen"]}).to_parquet(src_pq)
    assert main(["recommend", "--run", run, "--input", str(src_pq), "--output", str(tmp_path / "o.parquet"),
                 "-k", "3"]) == 0
    out = pd.read_parquet(tmp_path / "o.parquet")
    assert out[out.user == "b"]["item"].tolist() == rec.recommend(["K01002", "F01003"], "Kitchen", k=3).item_ids
    assert out["line"].tolist() == [1, 1, 1, 2, 2, 2]


def test_strict_stops_at_the_first_bad_row_and_writes_nothing(trained_run, tmp_path, capsys):
    run = str(trained_run("sasrec"))
    out = tmp_path / "out.jsonl"
    bad_row = _lines(tmp_path / "a.jsonl", [GOOD[0], GOOD[1], {"history": [], "domain": "Nowhere"}])
    assert main(["recommend", "--run", run, "--input", str(bad_row), "--output", str(out), "--strict",
                 "--batch-size", "1"]) == 2
    assert "line 3: unknown domain 'Nowhere'" in capsys.readouterr().err
    unknown_id = _lines(tmp_path / "b.jsonl", [GOOD[0], {"history": ["F00001", "not-an-item"], "domain": "Food"}])
    assert main(["recommend", "--run", run, "--input", str(unknown_id), "--output", str(out), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "line 2:" in err and "not-an-item" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl"]  # no output, no temporary file


@pytest.mark.parametrize("argv, message", [
    (["--input", "in.jsonl"], "--input and --output go together"),
    (["--input", "in.jsonl", "--output", "o.xlsx"], "unknown format '.xlsx'"),
    (["--input", "in.txt", "--output", "o.jsonl"], "unknown format '.txt'"),
    (["--input", "missing.jsonl", "--output", "o.jsonl"], "is not a file"),
    (["--input", "in.jsonl", "--output", "o.jsonl", "--domain", "Food"], "drop --history/--domain/--json"),
])
def test_bad_batch_arguments_are_one_line(trained_run, tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    _lines(tmp_path / "in.jsonl", [GOOD[0]])
    (tmp_path / "in.txt").write_text("x")
    assert main(["recommend", "--run", str(trained_run("sasrec")), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
