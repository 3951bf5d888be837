"""Every CLI command against bad input: one line on stderr naming what is wrong, exit code 2, no traceback, and
nothing half-written left behind (issue 17)."""

from __future__ import annotations

import pytest
import torch

from temarec.cli import main


def _one_line_error(capsys: pytest.CaptureFixture, code: int, command: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"temarec {command}: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_on_a_device_torch_cannot_use_is_one_line_and_no_run_folder(generated_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--dataset", str(generated_dataset), "--model", "pop", "--out", str(out),
                 "--set", "train.device=cuda"])
    assert "sees no CUDA device" in _one_line_error(capsys, code, "train")
    assert not out.exists()


def test_a_run_failing_before_its_first_epoch_leaves_none_of_the_folders_it_made(generated_dataset, tmp_path, capsys):
    (tmp_path / "bench").mkdir()  # there before: kept
    out = tmp_path / "bench" / "runs" / "tema" / "seed0"
    code = main(["train", "--dataset", str(generated_dataset), "--model", "tema", "--out", str(out),
                 "--set", "model.tema.modalities=id,txt"])  # the generated world has no text features
    assert "data has no features" in _one_line_error(capsys, code, "train")
    assert list((tmp_path / "bench").iterdir()) == []


def _damaged_dataset(generated_dataset, tmp_path, name: str):
    """A copy of the generated dataset folder whose file ``name`` is cut short (as by a full disk)."""
    import shutil

    root = shutil.copytree(generated_dataset, tmp_path / "damaged")
    damaged = root / name
    damaged.write_bytes(damaged.read_bytes()[:50])
    return root, damaged


DATASET_COMMANDS = {
    "export": lambda data, tmp: ["export", "--dataset", data, "--format", "recbole", "--out", f"{tmp}/new"],
    "tags": lambda data, tmp: ["tags", "match", "--dataset", data, "--set", "tags.match_backend=keyword"],
    "features": lambda data, tmp: ["features", "--dataset", data],
    "train": lambda data, tmp: ["train", "--dataset", data, "--model", "pop", "--out", f"{tmp}/new"],
    "negatives": lambda data, tmp: ["negatives", "--dataset", data],
    "bench": lambda data, tmp: ["bench", "--dataset", data, "--models", "pop", "--seeds", "1", "--out", f"{tmp}/new"],
}


@pytest.mark.parametrize("command", sorted(DATASET_COMMANDS))
def test_every_command_reading_a_dataset_folder_names_its_damaged_file(command, generated_dataset, tmp_path,
                                                                       capsys):
    # the features stage reads only the items table
    root, damaged = _damaged_dataset(generated_dataset, tmp_path,
                                     "items.parquet" if command == "features" else "manifest.json")
    line = _one_line_error(capsys, main(DATASET_COMMANDS[command](str(root), str(tmp_path))), command)
    assert str(damaged) in line and ("not valid JSON" in line or "cannot read this Parquet file" in line)
    assert not (tmp_path / "new").exists() and not (root / "tags").exists() and not (root / "features").exists()


def test_prepare_download_and_quickstart_name_their_corrupt_input(tmp_path, capsys):
    log = tmp_path / "log.csv"
    log.write_bytes(b"user,item,timestamp,domain\nu1,F1,1,Food\nu1,F2,\xff,Food\n")
    code = main(["prepare", "--format", "interactions", "--interactions", str(log), "--domains", "Food,Kitchen",
                 "--out", str(tmp_path / "data")])
    assert f"{log}, line 3:" in _one_line_error(capsys, code, "prepare")
    mirror = tmp_path / "mirror" / "abxi-food-kitchen"
    mirror.mkdir(parents=True)
    from temarec.data.download import PUBLIC_SETS

    for name in PUBLIC_SETS["abxi-food-kitchen"].files:
        (mirror / name).write_text("not the published file")
    code = main(["download", "abxi-food-kitchen", "--out", str(tmp_path / "raw"), "--mirror", str(tmp_path / "mirror")])
    assert "sha256 mismatch" in _one_line_error(capsys, code, "download")
    config = tmp_path / "bad.yaml"
    config.write_text("train: [1, 2\n")
    code = main(["quickstart", "--out", str(tmp_path / "qs"), "--config", str(config)])
    assert str(config) in _one_line_error(capsys, code, "quickstart")
    assert not (tmp_path / "data").exists() and not (tmp_path / "qs").exists()


def test_bench_with_an_unknown_ablation_table_is_one_line_and_writes_nothing(generated_dataset, tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", "--dataset", str(generated_dataset), "--ablations", "--tables", "5,7", "--seeds", "0,",
                 "--out", str(out)])
    assert "unknown ablation tables ['7']" in _one_line_error(capsys, code, "bench")
    assert not out.exists()


@pytest.mark.parametrize("args, why", [
    (["--ablations", "--lambda2", "0.1,-0.3"], "--lambda2 needs distinct weights"),
    (["--ablations", "--lambda1", ""], "--lambda1 needs a comma list of numbers"),
    (["--ablations", "--tables", "5", "--lambda1", "0.2"], "--lambda1 set the lambda grid of --ablations"),
    (["--models", "pop", "--lambda1", "0.2", "--lambda2", "0.3"], "--lambda1 and --lambda2 set the lambda grid"),
])
def test_bench_with_a_bad_lambda_grid_is_one_line_and_trains_nothing(args, why, generated_dataset, tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", "--dataset", str(generated_dataset), "--seeds", "0,", "--out", str(out), *args])
    assert why in _one_line_error(capsys, code, "bench")
    assert not out.exists()  # checked before the models' rows train
