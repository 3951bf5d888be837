"""`temarec prepare --format recbole`: RecBole atomic files in, the same split as the folder they were exported from."""

from __future__ import annotations

from pathlib import Path

import pytest

from temarec.cli import main
from temarec.data.dataset import DataError, Dataset
from temarec.data.importers.recbole import import_recbole


def _leave_one_out_world(tmp_path: Path) -> Path:
    """A generated world re-imported through the generic importer, so it is split leave-one-out (exportable)."""
    from temarec.data.synthetic import write_synthetic

    return write_synthetic(tmp_path / "world")


def test_export_then_import_gives_the_same_split(tmp_path, capsys):
    world = _leave_one_out_world(tmp_path)
    assert main(["export", "--dataset", str(world), "--format", "recbole", "--out", str(tmp_path / "rb" / "w")]) == 0
    assert main(["prepare", "--format", "recbole", "--input", str(tmp_path / "rb" / "w"),
                 "--domains", "Food,Kitchen", "--out", str(tmp_path / "back"),
                 # the generated world is not filtered: keep every user and item on the way back
                 "--set", "data.min_item_count=1", "--set", "data.min_user_per_domain=0"]) == 0
    capsys.readouterr()
    a, b = Dataset.load(world), Dataset.load(tmp_path / "back")
    assert a.domain_sizes == b.domain_sizes and a.items["item"].tolist() == b.items["item"].tolist()
    assert a.items["title"].tolist() == b.items["title"].tolist()
    for split in ("valid", "test"):
        fa = a.split(split).set_index("user").sort_index()
        fb = b.split(split).set_index("user").sort_index()
        assert fa["target"].tolist() == fb["target"].tolist()
        assert [h.tolist() for h in fa["history"]] == [h.tolist() for h in fb["history"]]
    assert b.manifest["source"]["format"] == "recbole"


def _write(folder: Path, inter: str, item: str | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "d.inter").write_text(inter)
    if item is not None:
        (folder / "d.item").write_text(item)
    return folder


HEAD = "user_id:token\titem_id:token\ttimestamp:float\n"
ROWS = "".join(f"u{u}\t{i}\t{t}\n" for u in range(3) for t, i in enumerate(["F1", "K1", "F2", "K2", "F1"]))


@pytest.mark.parametrize("inter, item, message", [
    (HEAD + ROWS, None, "no domain column"),
    (HEAD + ROWS, "item_id:token\tdomain:token\nF1\tFood\nK1\tKitchen\nF2\tFood\n", "item_id 'K2' is not in d.item"),
    ("user:token\titem_id:token\ttimestamp:float\n", "item_id:token\tdomain:token\n", "no column(s) user_id"),
    (HEAD + ROWS, "item_id:token\tdomain:token\nF1\tFood\nK1\tGarden\nF2\tFood\nK2\tKitchen\n",
     "is not one of --domains"),
])
def test_bad_recbole_input_is_one_clear_error(tmp_path, inter, item, message):
    folder = _write(tmp_path / "in", inter, item)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_recbole(folder, "Food,Kitchen", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_folder_without_one_inter_file_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="expected one NAME.inter file"):
        import_recbole(tmp_path / "empty", "Food,Kitchen", tmp_path / "out")
