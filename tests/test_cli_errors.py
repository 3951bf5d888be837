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
