from __future__ import annotations

import re
from pathlib import Path

import pytest

from temarec.data.importers.c2dsr import import_c2dsr
from temarec.data.dataset import DataError, Dataset


def test_lines_sorted_stably_and_split_into_history_and_target(c2dsr_dir: Path, tmp_path: Path) -> None:
    ds = Dataset.load(import_c2dsr(c2dsr_dir, "Food,Kitchen", tmp_path / "out"))
    assert ds.items["item"].tolist() == ["F0", "F1", "F2", "K0", "K1", "K2", "K3"]  # by local id, Food first
    assert ds.items["domain"].tolist() == ["Food"] * 3 + ["Kitchen"] * 4
    valid = ds.valid.set_index("user")
    assert valid.loc["RA", "history"].tolist() == [3, 0, 5]  # tie at t=200 keeps file order: 0 before 5
    assert valid.loc["RA", "target"] == 1 and valid.loc["RA", "domain"] == 0
    assert valid.loc["RA", "history_ts"].tolist() == [100, 200, 200]
    assert valid.loc["RB", "target"] == 6 and valid.loc["RB", "domain"] == 1
    test = ds.test.set_index("user")
    assert test.loc["RC", "history"].tolist() == [0, 1] and test.loc["RC", "target"] == 4
    assert [s.tolist() for s in ds.train["items"]] == [[3, 0, 5], [2], [0, 1]]
    assert ds.manifest["train_source"] == "histories"
    assert ds.manifest["splits"]["valid"] == {"Food": 1, "Kitchen": 1}
    assert ds.manifest["source"]["format"] == "c2dsr"
    assert set(ds.manifest["source"]["files"]) == {"items_a", "items_b", "userlist", "valid", "test"}


def test_training_file_is_used_whole_when_present(c2dsr_dir: Path, tmp_path: Path, write) -> None:
    write(c2dsr_dir / "traindata_new.txt", ["0\t1\t2|5|d|\t0|1|d|\t4|3|d|"])
    ds = Dataset.load(import_c2dsr(c2dsr_dir, "Food,Kitchen", tmp_path / "out"))
    assert ds.manifest["train_source"] == "train_file"
    assert [s.tolist() for s in ds.train["items"]] == [[0, 4, 2]]
    assert "train" in ds.manifest["source"]["files"]


def test_titles_joined_by_asin(c2dsr_dir: Path, tmp_path: Path, write) -> None:
    titles = write(tmp_path / "t.tsv", ["asin\tdomain\ttitle", "F1\tFood\tGreen tea", "K2\tOther\tA pan"])
    ds = Dataset.load(import_c2dsr(c2dsr_dir, "Food,Kitchen", tmp_path / "out", titles=titles))
    by_item = dict(zip(ds.items["item"], ds.items["title"]))
    assert by_item["F1"] == "Green tea" and by_item["K2"] == "A pan"
    assert by_item["F0"] is None or by_item["F0"] != by_item["F0"]  # missing (None or NaN)


@pytest.mark.parametrize("file, lines, message", [
    ("val_new.txt", ["0\t7\t1|300|d|\t99|1|d|"], "line 1: item id 99 is out of range [0, 7)"),
    ("val_new.txt", ["0\t7\t1|300|d|\t0|1|d|", "1\t8\t2|x|d|\t6|60|d|"], "line 2: cannot read '2|x|d|'"),
    ("val_new.txt", ["5\t7\t1|300|d|\t0|1|d|"], "user_id 5 is not in userlist.txt"),
    ("val_new.txt", ["0 1|300 0|1"], "expected 'user_id <tab> seq_id"),
    ("items_b.txt", ["20\tK0\t0", "21\tK1\t2"], "local ids must run 0..1 without gaps"),
    ("items_b.txt", ["20\tF0\t0"], "in both domains"),
])
def test_bad_input_names_file_line_and_problem(c2dsr_dir: Path, tmp_path: Path, write, file: str,
                                               lines: list[str], message: str) -> None:
    write(c2dsr_dir / file, lines)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=re.escape(message)) as info:
        import_c2dsr(c2dsr_dir, "Food,Kitchen", out)
    assert file in str(info.value)
    assert not out.exists() and list(tmp_path.glob(".out.*")) == []  # nothing half-written


def test_abxi_folder_given_as_c2dsr_points_to_the_right_format(abxi_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="looks like an ABXI folder: use --format abxi"):
        import_c2dsr(abxi_dir, "Food,Kitchen", tmp_path / "out")


def test_existing_output_needs_overwrite(c2dsr_dir: Path, tmp_path: Path) -> None:
    out = import_c2dsr(c2dsr_dir, "Food,Kitchen", tmp_path / "out")
    with pytest.raises(DataError, match="--overwrite"):
        import_c2dsr(c2dsr_dir, "Food,Kitchen", out)
    import_c2dsr(c2dsr_dir, "Food,Kitchen", out, overwrite=True)


@pytest.mark.shared_data
def test_real_c2dsr_food_kitchen_matches_the_paper(shared_data: Path, tmp_path: Path) -> None:
    """Table I item counts and the C2DSR split's per-domain target counts, exactly."""
    ds = Dataset.load(import_c2dsr(shared_data / "c2dsr-food-kitchen", "Food,Kitchen", tmp_path / "fk",
                                   titles=shared_data / "amazon-titles" / "food_kitchen_titles.tsv"))
    m = ds.manifest
    assert m["items"] == {"Food": 29207, "Kitchen": 34886}
    assert len(ds.valid) == 8173 and m["splits"]["valid"] == {"Food": 2722, "Kitchen": 5451}
    assert len(ds.test) == 8406 and m["splits"]["test"] == {"Food": 2747, "Kitchen": 5659}
    assert m["train_source"] == "histories" and len(ds.train) == 8173 + 8406
    assert ds.items["item"].iloc[29207] == "B001802PIQ"  # items_b.txt local id 0 = global 29207
    assert 0.2 < m["titles_coverage"]["Food"] < 1 and 0.2 < m["titles_coverage"]["Kitchen"] < 1
