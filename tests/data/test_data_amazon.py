from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from temarec.config import DataConfig
from temarec.data.importers.amazon import import_amazon
from temarec.data.dataset import DataError, Dataset

CFG = DataConfig(min_user_interactions=4, min_user_per_domain=2, num_negatives=3)


def _jsonl_gz(path: Path, records: list) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for r in records:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def _reviews_2018(users: int = 4) -> list[dict]:
    return [{"reviewerID": f"U{u}", "asin": f"F{(u + k) % 3}", "unixReviewTime": 1000 * u + 10 * k, "overall": 5.0}
            for u in range(users) for k in range(3)]


def _reviews_2023(users: int = 4) -> list[dict]:
    # timestamps in ms; user U0's two Kitchen reviews fall in the same second, in reverse file order
    recs = [{"user_id": f"U{u}", "parent_asin": f"K{(u + k) % 3}", "asin": "variant",
             "timestamp": (1000 * u + 10 * k + 5) * 1000, "rating": 4} for u in range(users) for k in range(3)]
    recs[0]["timestamp"], recs[1]["timestamp"] = 5_900, 5_100
    return recs


def test_2018_and_2023_files_with_metadata(tmp_path: Path) -> None:
    a = _jsonl_gz(tmp_path / "Food.jsonl.gz", _reviews_2018())
    b = _jsonl_gz(tmp_path / "Kitchen.jsonl.gz", _reviews_2023())
    am = _jsonl_gz(tmp_path / "Food_meta.jsonl.gz", [
        {"asin": "F0", "title": "Tea", "description": ["Green", " tea "], "image": ["http://img/f0.jpg"]},
        {"asin": "F1", "title": "Rice", "description": "Long grain"},
        {"asin": "Z9", "title": "never reviewed"},
    ])
    bm = _jsonl_gz(tmp_path / "Kitchen_meta.jsonl.gz", [
        {"parent_asin": "K0", "title": "Pan", "description": [],
         "images": [{"thumb": "t.jpg", "large": "http://img/k0.jpg", "hi_res": None}]},
    ])
    ds = Dataset.load(import_amazon([a, b], "Food,Kitchen", tmp_path / "out", meta=[am, bm], cfg=CFG))
    items = ds.items.set_index("item")
    assert list(items.index) == ["F0", "F1", "F2", "K0", "K1", "K2"]
    assert items.loc["F0", "title"] == "Tea" and items.loc["F0", "description"] == "Green tea"
    assert items.loc["F0", "image"] == "http://img/f0.jpg" and items.loc["K0", "image"] == "http://img/k0.jpg"
    assert items.loc["F1", "description"] == "Long grain" and items.loc["K0", "title"] == "Pan"
    u0 = ds.test.set_index("user").loc["U0"]
    # U0: F0 (0 s), then K1 (5.1 s) before K0 (5.9 s) although K1 is later in the file: ms decide the order
    timeline = u0["history"].tolist() + [u0["target"]]
    assert timeline[:3] == [0, 4, 3]
    assert u0["history_ts"].tolist()[:3] == [0, 5, 5]  # stored as unix seconds
    assert ds.manifest["source"]["format"] == "amazon"
    assert set(ds.manifest["source"]["files"]) == {"reviews_Food", "reviews_Kitchen", "meta_Food", "meta_Kitchen"}


def test_2014_files_and_items_in_both_categories(tmp_path: Path) -> None:
    food = _reviews_2018()
    kitchen = [{"reviewerID": f"U{u}", "asin": f"K{(u + k) % 3}", "unixReviewTime": 1000 * u + 10 * k + 5}
               for u in range(4) for k in range(3)]
    kitchen += [{"reviewerID": f"U{u}", "asin": "F0", "unixReviewTime": 1} for u in range(4)]  # F0 in both
    a = _jsonl_gz(tmp_path / "a.json.gz", food)
    b = tmp_path / "b.json"  # plain, not gzipped
    b.write_text("".join(json.dumps(r) + "\n" for r in kitchen))
    meta = _jsonl_gz(tmp_path / "m.json.gz", [{"asin": "F1", "title": "Rice", "imUrl": "http://img/f1.jpg"}])
    ds = Dataset.load(import_amazon(f"{a},{b}", "Food,Kitchen", tmp_path / "out", meta=[meta, meta], cfg=CFG))
    assert "F0" not in set(ds.items["item"])
    assert ds.items.set_index("item").loc["F1", "image"] == "http://img/f1.jpg"


@pytest.mark.parametrize("bad, message", [
    ('{"reviewerID": "U0", "asin": "F0"', "line 2: cannot read a review record"),
    ('{"rating": 5, "text": "nice"}', "line 2: not an Amazon review record"),
    ('{"user_id": "U0", "parent_asin": "K0", "timestamp": "soon"}', "line 2: cannot read a review record"),
])
def test_bad_review_line(tmp_path: Path, bad: str, message: str) -> None:
    a = _jsonl_gz(tmp_path / "a.jsonl.gz", _reviews_2018())
    b = _jsonl_gz(tmp_path / "b.jsonl.gz", [_reviews_2023()[0], bad])
    with pytest.raises(DataError, match=re.escape(f"{b}, {message}")):
        import_amazon([a, b], "Food,Kitchen", tmp_path / "out", cfg=CFG)
    assert not (tmp_path / "out").exists()


def test_python_literal_metadata_is_refused_with_advice(tmp_path: Path) -> None:
    a = _jsonl_gz(tmp_path / "a.jsonl.gz", _reviews_2018())
    b = _jsonl_gz(tmp_path / "b.jsonl.gz", _reviews_2023())
    meta = _jsonl_gz(tmp_path / "meta.json.gz", ["{'asin': 'F0', 'title': 'Tea'}"])
    with pytest.raises(DataError, match="line 1: .*convert them to JSON lines"):
        import_amazon([a, b], "Food,Kitchen", tmp_path / "out", meta=[meta, meta], cfg=CFG)


def test_empty_domain_file(tmp_path: Path) -> None:
    a = _jsonl_gz(tmp_path / "a.jsonl.gz", _reviews_2018())
    b = _jsonl_gz(tmp_path / "b.jsonl.gz", [])
    with pytest.raises(DataError, match="domain 'Kitchen' is empty"):
        import_amazon([a, b], "Food,Kitchen", tmp_path / "out", cfg=CFG)
