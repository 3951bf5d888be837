from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from temarec.cli import main
from temarec.data.importers.abxi import import_abxi
from temarec.data.importers.c2dsr import import_c2dsr
from temarec.data.dataset import DataError, Dataset
from temarec.data.recbole import export


def _recbole_leave_one_out(inter: pd.DataFrame, seed: int) -> dict[str, tuple[list[str], str, str]]:
    """What RecBole does with order TO + LS valid_and_test: sort by time (rows shuffled, unstable sort), group
    by user keeping that order, last = test, one before = valid. Returns user -> (train items, valid, test)."""
    shuffled = inter.sample(frac=1.0, random_state=seed)
    ordered = shuffled.sort_values("timestamp:float", kind="quicksort")
    out = {}
    for user, rows in ordered.groupby("user_id:token", sort=False):
        items = rows["item_id:token"].tolist()
        out[user] = (items[:-2], items[-2], items[-1])
    return out


def test_recbole_split_reproduces_ours(abxi_dir: Path, tmp_path: Path) -> None:
    ds = Dataset.load(import_abxi(abxi_dir, "Food,Kitchen", tmp_path / "ds"))
    out = export(ds.root, "recbole", tmp_path / "rb" / "fk")
    assert sorted(p.name for p in out.iterdir()) == ["fk.inter", "fk.item", "fk.yaml"]
    inter = pd.read_csv(out / "fk.inter", sep="\t", dtype=str)
    assert list(inter.columns) == ["user_id:token", "item_id:token", "timestamp:float"]
    # RA has K1 and F4 both at t=20: written 20.000 and 20.001, so any time sort keeps our order
    ra = inter[inter["user_id:token"] == "RA"]
    assert ra["timestamp:float"].tolist() == ["10.000", "20.000", "20.001", "30.000", "40.000"]
    inter["timestamp:float"] = inter["timestamp:float"].astype(float)
    items = ds.items["item"].to_numpy()
    ours = {u: (items[t].tolist(), items[v], items[s]) for u, t, v, s in
            zip(ds.train["user"], ds.train["items"], ds.valid["target"], ds.test["target"])}
    for seed in range(5):
        assert _recbole_leave_one_out(inter, seed) == ours
    item_file = pd.read_csv(out / "fk.item", sep="\t", dtype=str, keep_default_na=False)
    assert list(item_file.columns) == ["item_id:token", "title:token_seq", "domain:token"]
    assert item_file["item_id:token"].tolist() == ["F2", "F4", "K1", "K3", "K5"]
    assert item_file["domain:token"].tolist() == ["Food", "Food", "Kitchen", "Kitchen", "Kitchen"]
    yaml_text = (out / "fk.yaml").read_text()
    assert "dataset: fk" in yaml_text and "split: {LS: valid_and_test}" in yaml_text and "order: TO" in yaml_text


def test_titles_are_single_field_token_sequences(abxi_dir: Path, tmp_path: Path, write) -> None:
    titles = write(tmp_path / "t.tsv", ["asin\tdomain\ttitle", "F2\tFood\tGreen  tea\t(tin)"])
    ds = import_abxi(abxi_dir, "Food,Kitchen", tmp_path / "ds", titles=titles)
    out = export(ds, "recbole", tmp_path / "rb")
    line = (out / "rb.item").read_text().splitlines()[1]
    assert line == "F2\tGreen tea (tin)\tFood"


def test_c2dsr_split_is_refused(c2dsr_dir: Path, tmp_path: Path) -> None:
    ds = import_c2dsr(c2dsr_dir, "Food,Kitchen", tmp_path / "ds")
    with pytest.raises(DataError, match="train_source is 'histories'"):
        export(ds, "recbole", tmp_path / "rb")
    assert not (tmp_path / "rb").exists()


def test_cli_export(abxi_dir: Path, tmp_path: Path) -> None:
    ds = import_abxi(abxi_dir, "Food,Kitchen", tmp_path / "ds")
    assert main(["export", "--dataset", str(ds), "--format", "recbole", "--out", str(tmp_path / "rb")]) == 0
    assert main(["export", "--dataset", str(ds), "--format", "recbole", "--out", str(tmp_path / "rb")]) == 2
    assert main(["export", "--dataset", str(ds), "--format", "recbole", "--out", str(tmp_path / "rb"),
                 "--overwrite"]) == 0
    assert np.loadtxt(tmp_path / "rb" / "rb.inter", dtype=str, skiprows=1).shape == (8, 3)
