from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from temarec.config import DataConfig
from temarec.data.dataset import DataError, Dataset
from temarec.data.importers.interactions import Interactions, filter_mask, import_interactions

CFG = DataConfig(min_user_interactions=4, min_user_per_domain=2, min_item_count=1, num_negatives=3)


def _log() -> pd.DataFrame:
    """Four users x (3 Food + 3 Kitchen) interactions; u0 has k1 and f1 both at t=15, k1 first in the file."""
    rows = []
    for u in range(4):
        for k in range(3):
            rows.append((f"u{u}", f"f{(u + k) % 4}", 100 * u + 10 * k, "Food"))
            rows.append((f"u{u}", f"k{(u + k) % 4}", 100 * u + 10 * k + 5, "Kitchen"))
    rows[2], rows[3] = ("u0", "k1", 15, "Kitchen"), ("u0", "f1", 15, "Food")
    return pd.DataFrame(rows, columns=["user", "item", "timestamp", "domain"])


@pytest.mark.parametrize("suffix", [".csv", ".tsv.gz", ".parquet", ".jsonl"])
def test_every_file_type_gives_the_same_dataset(tmp_path: Path, suffix: str) -> None:
    frame = _log()
    path = tmp_path / f"log{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, sep="," if suffix == ".csv" else "\t", index=False)
    ds = Dataset.load(import_interactions(path, "Food,Kitchen", tmp_path / "out", cfg=CFG))
    assert ds.items["item"].tolist() == ["f0", "f1", "f2", "f3", "k0", "k1", "k2", "k3"]
    u0 = ds.test.set_index("user").loc["u0"]
    assert u0["history"].tolist() == [0, 4, 5, 1, 2]  # f0 k0 k1(15) f1(15) f2: the tie keeps file order
    assert u0["target"] == 6 and u0["domain"] == 1  # k2 at t=25
    assert ds.manifest["train_source"] == "leave_one_out" and ds.manifest["users"] == 4


def test_filter_iterates_to_a_fixed_point() -> None:
    # u2 has the only interaction with item 9 -> dropped (min_item_count=2) -> u2 falls below 4 -> u2 dropped
    # -> item 5 (shared by u2 and u3 only) falls to count 1 -> dropped -> u3 below 4 -> u3 dropped
    user = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])
    item = np.array([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 5, 9, 1, 2, 3, 5])
    dom = np.zeros(10, dtype=np.int8)
    log = Interactions(user, item, np.arange(16), np.array(["a", "b", "c", "d"], dtype=object),
                       np.array([str(i) for i in range(10)], dtype=object), dom)
    keep = filter_mask(log, DataConfig(min_user_interactions=4, min_user_per_domain=0, min_item_count=2))
    assert sorted(set(user[keep])) == [0, 1]


def test_users_below_per_domain_threshold_are_dropped(tmp_path: Path) -> None:
    frame = _log()
    frame = frame[~((frame["user"] == "u3") & (frame["domain"] == "Kitchen") & (frame["item"] != "k3"))]
    path = tmp_path / "log.csv"
    frame.to_csv(path, index=False)
    ds = Dataset.load(import_interactions(path, "Food,Kitchen", tmp_path / "out", cfg=CFG))
    assert sorted(ds.test["user"]) == ["u0", "u1", "u2"]


def test_items_file_supplies_text_and_optional_columns_may_be_missing(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    _log().to_csv(log, index=False)
    items = tmp_path / "items.csv"
    pd.DataFrame({"item": ["f0", "k1", "zz"], "title": ["Tea", "Pan", "unused"]}).to_csv(items, index=False)
    ds = Dataset.load(import_interactions(log, "Food,Kitchen", tmp_path / "out", items=items, cfg=CFG))
    titles = dict(zip(ds.items["item"], ds.items["title"]))
    assert titles["f0"] == "Tea" and titles["k1"] == "Pan" and "zz" not in titles
    assert ds.manifest["source"]["files"]["items"]["sha256"]


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.drop(columns=["domain"]), "missing column(s) ['domain']"),
    (lambda f: f.assign(domain=f["domain"].where(f.index != 3, "Toys")), "line 5: domain 'Toys' is not one of"),
    (lambda f: f.assign(item=f["item"].where(f.index != 1, "f0")), "line 3: item 'f0' appears in both domains"),
    (lambda f: f.assign(timestamp=f["timestamp"].astype(str).where(f.index != 6, "soon")),
     "line 8: timestamp 'soon' is neither"),
    (lambda f: f.assign(user=f["user"].where(f.index != 4, None)), "line 6: empty 'user'"),
    (lambda f: f[f["domain"] == "Food"], "no user passes the filter"),
])
def test_bad_rows_are_reported_with_their_line(tmp_path: Path, edit, message: str) -> None:
    path = tmp_path / "log.csv"
    edit(_log()).to_csv(path, index=False)
    with pytest.raises(DataError, match=re.escape(message)) as info:
        import_interactions(path, "Food,Kitchen", tmp_path / "out", cfg=CFG)
    assert str(path) in str(info.value) or "filter" in message
    assert not (tmp_path / "out").exists()


def test_bad_jsonl_line_is_located(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"user": "u", "item": "i", "timestamp": 1, "domain": "Food"}\n{"user": oops}\n')
    with pytest.raises(DataError, match=re.escape(f"{path}, line 2: cannot read as jsonl")):
        import_interactions(path, "Food,Kitchen", tmp_path / "out", cfg=CFG)


def test_date_strings_become_unix_seconds(tmp_path: Path) -> None:
    frame = _log()
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="s").dt.strftime("%Y-%m-%d %H:%M:%S")
    path = tmp_path / "log.csv"
    frame.to_csv(path, index=False)
    ds = Dataset.load(import_interactions(path, "Food,Kitchen", tmp_path / "out", cfg=CFG))
    assert ds.test.set_index("user").loc["u0", "target_ts"] == 25


def test_an_extra_field_in_the_first_data_row_is_named_not_taken_for_an_index(tmp_path: Path) -> None:
    # pandas reads a first data row with one field more than the header as an implicit index column, shifting
    # every cell of the file; the importer must name the row instead
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp,domain\nu1,i1,1,Food,extra\nu1,i2,2,Kitchen\n")
    with pytest.raises(DataError, match="line 2: cannot read as csv.*Expected 4 fields in line 2, saw 5"):
        import_interactions(path, "Food,Kitchen", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", [[-2**63 - 1], {"id": 2**64}, [[1, 2**70]]])
def test_an_integer_beyond_64_bits_inside_a_json_value_is_named_by_line(tmp_path: Path, value) -> None:
    # pandas' JSON reader refuses any integer beyond 64 bits, nested ones too ("Value is too small"); the line
    # finder looked only at top-level values (hypothesis found it)
    path = tmp_path / "log.jsonl"
    records = [{"user": "u1", "item": "i1", "timestamp": 1, "domain": "Food"},
               {"user": value, "item": "i2", "timestamp": 2, "domain": "Kitchen"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(DataError, match="line 2: cannot read as jsonl"):
        import_interactions(path, "Food,Kitchen", tmp_path / "out")
    assert not (tmp_path / "out").exists()
