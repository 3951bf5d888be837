"""Regressions of issue 17 in the data stage: overflowing timestamps, splits without a domain, damaged dataset
folders, folder permissions. Each failure is one line naming the file (and line), with exit code 2."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from temarec.cli import main
from temarec.config import DataConfig
from temarec.data.dataset import DataError, Dataset
from temarec.data.prepare import prepare

LOOSE = ["--set", "data.min_user_interactions=3", "--set", "data.min_user_per_domain=0",
         "--set", "data.num_negatives=1"]


def _rows(n_users: int = 3) -> list[tuple]:
    """Users alternate which domain comes last, so both splits hold both domains."""
    return [(f"u{u}", f"{d[0]}{(u + k) % 4}", 10 * k + ((5 if u % 2 == 0 else -5) if d == "Kitchen" else 0), d)
            for u in range(n_users) for k in range(3) for d in ("Food", "Kitchen")]


def _csv(path: Path, rows: list[tuple]) -> Path:
    pd.DataFrame(rows, columns=["user", "item", "timestamp", "domain"]).to_csv(path, index=False)
    return path


def _error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.startswith("temarec prepare: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("timestamp", ["1e30", "-1e30", "inf", "18446744073709551615", "9.3e18"])
def test_a_timestamp_beyond_int64_is_refused_naming_file_and_line_not_stored_wrapped(tmp_path, capsys, timestamp):
    """Issue 17 #7: 1e30 was stored as -9223372036854775808 and prepare exited 0."""
    rows = _rows()
    rows[4] = (*rows[4][:2], timestamp, rows[4][3])
    source = _csv(tmp_path / "log.csv", rows)
    code = main(["prepare", "--format", "interactions", "--interactions", str(source), "--domains", "Food,Kitchen",
                 "--out", str(tmp_path / "out"), *LOOSE])
    line = _error(capsys, code)
    assert f"{source}, line 6:" in line and "out of range" in line
    assert not (tmp_path / "out").exists()


def test_an_overflowing_timestamp_in_the_abxi_and_c2dsr_files_is_one_line(abxi_dir, c2dsr_dir, tmp_path):
    abxi_file = abxi_dir / "afk_50_preprocessed.txt"
    lines = abxi_file.read_text().splitlines()
    first = lines[0].split()
    item = first[1].split("|")[0]
    lines[0] = " ".join([first[0], f"{item}|{10**30}", *first[2:]])
    abxi_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{abxi_file.name}, line 1: timestamp 10+ is out of range"):
        prepare("abxi", tmp_path / "a", DataConfig(num_negatives=1), input_dir=abxi_dir, domains="Food,Kitchen")
    val = c2dsr_dir / "val_new.txt"
    val.write_text(val.read_text().replace("1|300|d|", f"1|{10**30}|d|", 1))
    with pytest.raises(DataError, match=r"val_new.txt, line 1: timestamp 10+ is out of range"):
        prepare("c2dsr", tmp_path / "c", DataConfig(num_negatives=1), input_dir=c2dsr_dir, domains="Food,Kitchen")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_an_amazon_review_time_beyond_int64_is_one_line(tmp_path):
    reviews = []
    for d, name in enumerate(("a", "b")):
        path = tmp_path / f"{name}.jsonl"
        recs = [{"reviewerID": f"u{u}", "asin": f"{name}{k}", "unixReviewTime": 100 * u + k} for u in range(3)
                for k in range(3)]
        recs[1]["unixReviewTime"] = 1e30 if d == 0 else recs[1]["unixReviewTime"]
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
        reviews.append(path)
    with pytest.raises(DataError, match=r"a.jsonl, line 2: timestamp \d+ is out of range"):
        prepare("amazon", tmp_path / "out", DataConfig(num_negatives=1, min_user_per_domain=0),
                reviews=",".join(map(str, reviews)), domains="Food,Kitchen")


def test_prepare_warns_of_a_split_without_a_domain_and_train_refuses_it_before_writing(tmp_path, capsys, caplog):
    """Issue 17 #3: validation MRR was NaN every epoch, no checkpoint was saved, and training failed only at the
    end with "No such file or directory: .../model.safetensors"."""
    rows = [(f"u{u}", item, t, d) for u in range(3)  # every user: ..., Food, Food: no Kitchen valid/test target
            for t, (item, d) in enumerate([(f"K{u}", "Kitchen"), (f"K{u + 1}", "Kitchen"), (f"F{u}", "Food"),
                                           (f"F{u + 1}", "Food")])]
    source = _csv(tmp_path / "log.csv", rows)
    data = tmp_path / "data"
    assert main(["prepare", "--format", "interactions", "--interactions", str(source), "--domains", "Food,Kitchen",
                 "--out", str(data), *LOOSE]) == 0
    assert "the valid split has no 'Kitchen' target" in caplog.text
    capsys.readouterr()
    run = tmp_path / "run"
    code = main(["train", "--dataset", str(data), "--model", "pop", "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "the valid split has no 'Kitchen' target" in err
    assert not run.exists()


@pytest.mark.parametrize("damage", ["manifest_not_json", "manifest_a_list", "parquet_truncated", "parquet_missing",
                                    "negatives_truncated"])
def test_a_damaged_dataset_folder_is_named_in_the_error(generated_dataset, tmp_path, damage):
    """Issue 17 #9: a corrupt manifest.json ended in a JSONDecodeError that did not name the file."""
    import shutil

    root = Path(shutil.copytree(generated_dataset, tmp_path / "data"))
    target = {"manifest_not_json": root / "manifest.json", "manifest_a_list": root / "manifest.json",
              "parquet_truncated": root / "train.parquet", "parquet_missing": root / "test.parquet",
              "negatives_truncated": next((root / "negatives").rglob("valid.npy"))}[damage]
    if damage == "manifest_a_list":
        target.write_text("[1, 2]")
    elif damage == "parquet_missing":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[:40])
    with pytest.raises(ValueError, match=str(target)):
        Dataset.load(root).negatives("valid")


def test_dataset_and_run_folders_get_the_same_ordinary_permissions(generated_dataset, tmp_path):
    """Issue 17 #9: dataset folders were created 0700 (mkdtemp), run folders 0755."""
    from temarec.config import Config
    from temarec.runs import train_run

    umask = os.umask(0o022)
    try:
        source = _csv(tmp_path / "log.csv", _rows())
        data = prepare("interactions", tmp_path / "data", DataConfig(num_negatives=1, min_user_per_domain=0,
                                                                      min_user_interactions=3),
                       interactions=source, domains="Food,Kitchen")
        run = tmp_path / "run"
        train_run(data, Config().replace(**{"model.name": "pop"}), run)
    finally:
        os.umask(umask)
    for folder in (data, run):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder
        for path in folder.rglob("*"):
            assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path
