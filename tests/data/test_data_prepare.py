from __future__ import annotations

import json
from pathlib import Path

import pytest

from temarec.cli import main
from temarec.config import DataConfig
from temarec.data.dataset import DataError, Dataset
from temarec.fileio import sha256_file
from temarec.data.prepare import prepare, read_titles


def test_prepare_dispatches_and_records_the_source(c2dsr_dir: Path, tmp_path: Path) -> None:
    out = prepare("c2dsr", tmp_path / "out", DataConfig(num_negatives=2), input_dir=c2dsr_dir,
                  domains=("Food", "Kitchen"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["format"] == "c2dsr"
    entry = manifest["source"]["files"]["valid"]
    assert entry["path"] == str((c2dsr_dir / "val_new.txt").resolve())
    assert entry["sha256"] == sha256_file(c2dsr_dir / "val_new.txt")
    assert manifest["negatives"]["per_instance"] == 2


def test_unknown_format_and_bad_domains(c2dsr_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected one of abxi, amazon, c2dsr, interactions"):
        prepare("movielens", tmp_path / "out", input_dir=c2dsr_dir, domains="Food,Kitchen")
    with pytest.raises(DataError, match="two distinct names"):
        prepare("c2dsr", tmp_path / "out", input_dir=c2dsr_dir, domains="Food,Food")


def test_titles_file_needs_its_header(tmp_path: Path, write) -> None:
    with pytest.raises(DataError, match="line 1: a titles file needs"):
        read_titles(write(tmp_path / "t.tsv", ["F0\tFood\tTea"]))
    by_domain, by_asin = read_titles(write(tmp_path / "t.tsv", ["asin\tdomain\ttitle", "F0\tFood\tTea\twith tab"]))
    assert by_domain[("F0", "Food")] == "Tea\twith tab" and by_asin["F0"] == "Tea\twith tab"


def test_cli_prepare_end_to_end(abxi_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ds"
    rc = main(["prepare", "--format", "abxi", "--input", str(abxi_dir), "--domains", "Food,Kitchen",
               "--out", str(out), "--set", "data.num_negatives=4"])
    assert rc == 0 and "Food 2 items / Kitchen 3 items" in capsys.readouterr().out
    assert Dataset.load(out).negatives("test").shape == (2, 4)
    # a second run without --overwrite refuses; a wrong format is one clear line on stderr, exit code 2
    assert main(["prepare", "--format", "abxi", "--input", str(abxi_dir), "--domains", "Food,Kitchen",
                 "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["prepare", "--format", "c2dsr", "--input", str(abxi_dir), "--domains", "Food,Kitchen",
                 "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "use --format abxi" in err and "Traceback" not in err
    assert not (tmp_path / "other").exists()


def test_cli_prepare_needs_the_format_inputs(tmp_path: Path, capsys) -> None:
    assert main(["prepare", "--format", "amazon", "--domains", "A,B", "--out", str(tmp_path / "o")]) == 2
    assert "--format amazon needs --reviews" in capsys.readouterr().err
