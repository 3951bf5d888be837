from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from temarec.data.importers.abxi import import_abxi
from temarec.data.dataset import DataError, Dataset


def test_items_renumbered_food_first_and_users_split_leave_one_out(abxi_dir: Path, tmp_path: Path) -> None:
    ds = Dataset.load(import_abxi(abxi_dir, "Food,Kitchen", tmp_path / "out"))
    assert ds.items["item"].tolist() == ["F2", "F4", "K1", "K3", "K5"]
    assert ds.domain_sizes == (2, 3)
    train = dict(zip(ds.train["user"], (s.tolist() for s in ds.train["items"])))
    assert train == {"RA": [0, 2, 1], "RB": [4]}
    valid, test = ds.valid.set_index("user"), ds.test.set_index("user")
    assert valid.loc["RA", "target"] == 3 and valid.loc["RA", "history"].tolist() == [0, 2, 1]
    assert test.loc["RA", "target"] == 4 and test.loc["RA", "history"].tolist() == [0, 2, 1, 3]
    assert valid.loc["RB", "target"] == 1 and valid.loc["RB", "domain"] == 0
    assert test.loc["RB", "target"] == 3 and test.loc["RB", "target_ts"] == 3
    assert ds.manifest["train_source"] == "leave_one_out"
    assert ds.manifest["users"] == 2 and ds.manifest["interactions"] == 8


@pytest.mark.parametrize("file, content, message", [
    ("afk_50_preprocessed.txt", "0 2|10 9|20 4|30\n", "line 1: item id 9 is not in map_item_50.txt"),
    ("afk_50_preprocessed.txt", "0 2|10 1|20 4|20\n7 2|1 1|2 4|3\n", "line 2: user_id 7 is not in map_user_50.txt"),
    ("afk_50_preprocessed.txt", "0 2|10 1|x 4|20\n", "line 1: every token after the user id must be item|timestamp"),
    ("afk_50_preprocessed.txt", "0 2|10 1|20\n", "line 1: user_id 0 has 2 interactions"),
    ("afk_50_preprocessed.txt", "0\t7\t2|10|d|\t1|20|d|\t4|20|d|\n", "space separated"),
    ("map_item_50.txt", '{"F2": [2, 0], "K1": [1, 1]', "not valid JSON"),
    ("map_item_50.txt", '{"F2": [2, 0], "K1": [1, 2]}', "expected [item_id >= 0, domain 0 or 1]"),
    ("map_item_50.txt", '{"F2": [2, 0], "F4": [4, 0]}', "domain 1 ('Kitchen') has no items"),
])
def test_bad_input_is_one_clear_error(abxi_dir: Path, tmp_path: Path, file: str, content: str, message: str) -> None:
    (abxi_dir / file).write_text(content)
    with pytest.raises(DataError, match=re.escape(message)) as info:
        import_abxi(abxi_dir, "Food,Kitchen", tmp_path / "out")
    assert file in str(info.value)
    assert not (tmp_path / "out").exists()


def test_c2dsr_folder_given_as_abxi_points_to_the_right_format(c2dsr_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="looks like a C2DSR folder: use --format c2dsr"):
        import_abxi(c2dsr_dir, "Food,Kitchen", tmp_path / "out")


@pytest.mark.shared_data
def test_real_abxi_food_kitchen(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "abxi-food-kitchen"
    ds = Dataset.load(import_abxi(folder, "Food,Kitchen", tmp_path / "afk",
                                  titles=shared_data / "amazon-titles" / "food_kitchen_titles.tsv"))
    m = ds.manifest
    assert m["items"] == {"Food": 11837, "Kitchen": 16258}
    assert m["users"] == 7144 and m["interactions"] == 173548
    assert m["splits"]["valid"] == {"Food": 2837, "Kitchen": 4307}
    assert m["splits"]["test"] == {"Food": 2419, "Kitchen": 4725}
    # the map's item 1 is its first Food item and stays first; Kitchen starts right after Food
    first = min(json.loads((folder / "map_item_50.txt").read_text()).items(), key=lambda kv: kv[1][0])[0]
    assert ds.items["item"].iloc[0] == first and ds.items["domain"].iloc[11837] == "Kitchen"
    assert m["titles_coverage"]["Kitchen"] > 0.9


def test_any_abxi_release_name_is_accepted(abxi_dir: Path, tmp_path: Path) -> None:
    # ABXI ships every domain pair in the same format: NAME_N_preprocessed.txt with map_item_N / map_user_N
    (abxi_dir / "afk_50_preprocessed.txt").rename(abxi_dir / "abe_20_preprocessed.txt")
    for kind in ("item", "user"):
        (abxi_dir / f"map_{kind}_50.txt").rename(abxi_dir / f"map_{kind}_20.txt")
    ds = Dataset.load(import_abxi(abxi_dir, "Art,Beauty", tmp_path / "out"))
    assert ds.domains == ("Art", "Beauty") and ds.domain_sizes == (2, 3)


def test_abxi_folder_with_two_releases_or_a_missing_map_is_one_clear_error(abxi_dir: Path, tmp_path: Path) -> None:
    (abxi_dir / "map_user_50.txt").rename(abxi_dir / "map_user_49.txt")
    with pytest.raises(DataError, match="no map_user_50.txt beside afk_50_preprocessed.txt"):
        import_abxi(abxi_dir, "Food,Kitchen", tmp_path / "out")
    (abxi_dir / "abe_50_preprocessed.txt").write_text("")
    with pytest.raises(DataError, match="several ABXI interaction files"):
        import_abxi(abxi_dir, "Food,Kitchen", tmp_path / "out")
    assert not (tmp_path / "out").exists()
