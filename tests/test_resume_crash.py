"""Killed training resumes to the same result (issue 17 #2, #4, #9).

A child process trains and is killed (``os._exit``: no cleanup, no ``finally``, as with SIGKILL) at one write
point of epoch 2: after the epoch's metrics.jsonl line, after its state file, or halfway through writing a
checkpoint file. ``train --resume`` then finishes the run, which must end bit-identical to an uninterrupted one:
the same selected and last weights, the same metrics.json (timings aside) and the same metrics.jsonl lines, each
epoch once. Also: a damaged state or weights file is one line naming it, and a run that died in its first epoch
(or failed) does not block the folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from temarec.cli import main
from temarec.config import load_config
from temarec.runs import train_run

SETTINGS = ["model.name=sasrec", "train.epochs=3", "model.dim=16", "data.max_len=10", "train.batch_size=64",
            "eval.batch_size=256", "train.threads=1"]  # dropout 0.3 (the default): resuming must restore its RNG
KILLED = 17

# The child: patch one write point of the training loop so that epoch 2 dies there, then train.
CHILD = textwrap.dedent('''
    import io, os, sys
    import torch
    import temarec.checkpoint as checkpoint
    import temarec.tracking as tracking
    import temarec.train as train
    from temarec.config import load_config
    from temarec.runs import train_run

    point, data, out = sys.argv[1:4]
    settings = sys.argv[4:]
    epoch = {"now": 0}
    real_train_epoch, real_save_state, real_save_file = train._train_epoch, train.save_state, checkpoint.save_file

    def train_epoch(*args, **kwargs):
        epoch["now"] = args[-1]
        return real_train_epoch(*args, **kwargs)

    def die_after_log(self, record):  # the tracker is told right after the metrics.jsonl append
        if record["epoch"] == 2:
            os._exit(17)

    def save_state(path, state):
        if point == "during_state_write" and state["epoch"] == 2:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            checkpoint.atomic_write(path, lambda tmp: (open(tmp, "wb").write(buffer.getvalue()[:5000]), os._exit(17)))
        real_save_state(path, state)
        if point == "after_state_write" and state["epoch"] == 2:
            os._exit(17)

    def save_file(tensors, tmp):
        real_save_file(tensors, tmp)
        if epoch["now"] >= 2:  # the first best-checkpoint write from epoch 2 on: cut it short and die
            with open(tmp, "r+b") as fh:
                fh.truncate(os.path.getsize(tmp) // 2)
            os._exit(17)

    train._train_epoch = train_epoch
    train.save_state = save_state
    if point == "after_metrics_append":
        tracking.Tracker.log_epoch = die_after_log
    if point == "during_checkpoint_write":
        checkpoint.save_file = save_file
    train_run(data, load_config(None, settings), out)
    sys.exit(0)
''')

POINTS = ["after_metrics_append", "after_state_write", "during_checkpoint_write", "during_state_write"]


def _outcome(run: Path) -> dict:
    """What must not depend on an interruption: weights, metrics without timings, the epoch log without seconds."""
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("timing")
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record in log:
        record.pop("epoch_s")
        record.pop("epoch_cpu_s")
    return {"selected": load_file(str(run / "model.safetensors")), "last": load_file(str(run / "last.safetensors")),
            "metrics": metrics, "log": log}


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(generated_dataset, tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    train_run(generated_dataset, load_config(None, SETTINGS), run)
    return _outcome(run)


@pytest.mark.parametrize("point", POINTS)
def test_train_killed_at_each_write_point_resumes_bit_identical(point, generated_dataset, uninterrupted, tmp_path):
    run = tmp_path / "run"
    child = subprocess.run([sys.executable, "-c", CHILD, point, str(generated_dataset), str(run), *SETTINGS],
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == KILLED, child.stderr[-3000:]
    train_run(generated_dataset, load_config(None, SETTINGS), run, resume=True)
    resumed = _outcome(run)
    assert _same_weights(resumed["selected"], uninterrupted["selected"])
    assert _same_weights(resumed["last"], uninterrupted["last"])
    assert resumed["log"] == uninterrupted["log"]  # every epoch once, with the same loss and validation metrics
    assert resumed["metrics"] == uninterrupted["metrics"]
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no half-written temporary left
    assert json.loads((run / "run.json").read_text())["resumes"][-1]["after_epoch"] == (
        2 if point == "after_state_write" else 1)


def test_a_damaged_state_or_weights_file_is_one_line_naming_it(generated_dataset, tmp_path, capsys):
    """Issue 17 #2: a truncated model.safetensors or last_state.pt ended in a traceback that did not name it."""
    run = tmp_path / "run"
    train_run(generated_dataset, load_config(None, [*SETTINGS, "train.epochs=1"]), run)
    for name, command in (("last_state.pt", ["train", "--dataset", str(generated_dataset), "--out", str(run),
                                             "--resume", *[x for s in SETTINGS for x in ("--set", s)]]),
                          ("model.safetensors", ["evaluate", "--run", str(run)]),
                          ("model.safetensors", ["recommend", "--run", str(run), "--domain", "Food"]),
                          ("model.safetensors", ["export-model", "--run", str(run), "--out", str(tmp_path / "x")]),
                          ("model.safetensors", ["serve", "--run", str(run), "--port", "8765"])):
        path = run / name
        intact = path.read_bytes()
        path.write_bytes(intact[:len(intact) // 2])
        code = main(command)
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        lines = [line for line in err.splitlines() if line.startswith(f"temarec {command[0]}: error:")]
        assert len(lines) == 1 and str(path) in lines[0], err
        path.write_bytes(intact)
    assert not (tmp_path / "x").exists()


def test_a_run_that_died_in_its_first_epoch_can_be_resumed_or_leaves_nothing(generated_dataset, tmp_path,
                                                                            monkeypatch):
    """Issue 17 #4: a failed train left a folder that a plain retry called not empty and --resume called
    stateless. A failure now removes what the run wrote; a kill (no cleanup possible) leaves a folder that
    --resume starts over."""
    import temarec.train as train

    cfg = load_config(None, SETTINGS)
    run = tmp_path / "failed"

    def fail(*args, **kwargs):
        raise RuntimeError("out of memory, say")

    with monkeypatch.context() as patch:
        patch.setattr(train, "_train_epoch", fail)
        with pytest.raises(RuntimeError):
            train_run(generated_dataset, cfg, run)
    assert not run.exists()
    killed = tmp_path / "killed"
    child = subprocess.run([sys.executable, "-c", textwrap.dedent('''
        import os, sys
        import temarec.train as train
        from temarec.config import load_config
        from temarec.runs import train_run
        train._train_epoch = lambda *a, **k: os._exit(17)
        train_run(sys.argv[1], load_config(None, sys.argv[3:]), sys.argv[2])
    '''), str(generated_dataset), str(killed), *SETTINGS], capture_output=True, text=True, timeout=600)
    assert child.returncode == KILLED, child.stderr[-3000:]
    assert (killed / "config.json").is_file() and not (killed / "last_state.pt").exists()
    metrics = train_run(generated_dataset, cfg, killed, resume=True)
    assert metrics["timing"]["epochs"] == 3


def test_a_run_pointed_at_another_dataset_is_refused(generated_dataset, tmp_path, capsys):
    """Issue 17 #6: item_ids.json was written but never read: a run loaded on another dataset of the same size
    served that dataset's ids, and one of another size ended in a traceback."""
    import shutil

    import pandas as pd

    run = tmp_path / "run"
    train_run(generated_dataset, load_config(None, ["model.name=pop"]), run)
    other = Path(shutil.copytree(generated_dataset, tmp_path / "other"))
    items = pd.read_parquet(other / "items.parquet")
    items.loc[3, "item"] = "renamed-item"
    items.to_parquet(other / "items.parquet", index=False)
    meta = json.loads((run / "run.json").read_text())
    meta["dataset_dir"] = str(other)
    (run / "run.json").write_text(json.dumps(meta))
    code = main(["recommend", "--run", str(run), "--domain", "Food"])
    err = capsys.readouterr().err
    assert code == 2 and "trained on other items" in err and "'renamed-item'" in err and "Traceback" not in err


def test_no_finite_validation_mrr_is_a_clear_error_not_a_missing_file(generated_dataset, tmp_path, monkeypatch):
    """Issue 17 #3: with a NaN validation MRR every epoch no checkpoint was saved, and training failed at the end
    with "No such file or directory: .../model.safetensors"."""
    import temarec.train as train

    monkeypatch.setattr(train, "selection_score", lambda valid: float("nan"))
    with pytest.raises(ValueError, match="no epoch gave a finite validation MRR"):
        train_run(generated_dataset, load_config(None, [*SETTINGS, "train.epochs=1"]), tmp_path / "run")


@pytest.mark.parametrize("name", ["config.json", "run.json", "item_ids.json"])
def test_a_damaged_run_file_is_one_line_naming_it(name, generated_dataset, tmp_path, capsys):
    """Issue 17 #9: a corrupt config.json ended in a JSON error that did not name the file."""
    run = tmp_path / "run"
    train_run(generated_dataset, load_config(None, ["model.name=pop"]), run)
    path = run / name
    path.write_text(path.read_text()[:30])
    code = main(["recommend", "--run", str(run), "--domain", "Food"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and f"{path}: not valid JSON" in err, err


def test_a_state_written_by_temarec_0_1_still_resumes(generated_dataset, tmp_path):
    """0.1.0 kept the weights in last.safetensors and no RNG states in last_state.pt."""
    from safetensors.torch import save_file

    run = tmp_path / "run"
    train_run(generated_dataset, load_config(None, [*SETTINGS, "train.epochs=1"]), run)
    state = torch.load(run / "last_state.pt", weights_only=True)
    save_file(state.pop("model"), str(run / "last.safetensors"))
    for key in ("rng", "log_bytes"):
        state.pop(key)
    torch.save(state, run / "last_state.pt")
    metrics = train_run(generated_dataset, load_config(None, [*SETTINGS, "train.epochs=2"]), run, resume=True)
    assert metrics["timing"]["epochs"] == 2
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_resume_starts_from_the_runs_own_settings(generated_dataset, tmp_path, capsys):
    """A budget-cut run trained with non-default settings resumes with only --set for what may change: no
    --config, no repeating its settings (they used to be required, else "trained with other settings")."""
    run = tmp_path / "run"
    train_run(generated_dataset, load_config(None, [*SETTINGS, "train.epochs=1", "train.seed=3"]), run)
    code = main(["train", "--dataset", str(generated_dataset), "--out", str(run), "--resume",
                 "--set", "train.epochs=2"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((run / "metrics.json").read_text())["timing"]["epochs"] == 2
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["seed"] == 3 and config["model"]["dim"] == 16
    # a setting a resume may not change is still refused, in one line, and the run is left as it was
    code = main(["train", "--dataset", str(generated_dataset), "--out", str(run), "--resume",
                 "--set", "model.dim=32"])
    err = capsys.readouterr().err
    assert code == 2 and "model.dim 16 -> 32" in err and "Traceback" not in err, err
    assert json.loads((run / "metrics.json").read_text())["timing"]["epochs"] == 2
