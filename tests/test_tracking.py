"""Experiment tracking: every epoch's numbers reach TensorBoard event files or a local MLflow store."""

from __future__ import annotations

import json

import pytest

from temarec.config import Config
from temarec.data.synthetic import write_synthetic
from temarec.config import flatten
from temarec.tracking import local_store, scalars
from temarec.runs import train_run

TINY = {"train.epochs": "2", "model.dim": "16", "data.max_len": "10", "train.threads": "1",
        "train.batch_size": "512", "model.name": "sasrec"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data") / "world")


def test_scalars_flatten_a_metrics_record():
    record = {"epoch": 3, "loss": 2.5, "epoch_s": 1.0, "valid_mrr": 0.2,
              "valid": {"sampled": {"Food": {"mrr": 0.2, "n": 10}}, "ties": {"share_rank_gt_ne_ge": 0.0}}}
    assert scalars(record) == {"loss": 2.5, "epoch_s": 1.0, "valid/mrr": 0.2, "valid/sampled/Food/mrr": 0.2}
    assert scalars({"epoch": 1, "loss": 1.0, "epoch_s": 0.5}) == {"loss": 1.0, "epoch_s": 0.5}
    assert flatten({"train": {"lr": 0.1}, "x": 1}) == {"train.lr": 0.1, "x": 1}


def test_unknown_tracker_is_a_config_error():
    with pytest.raises(ValueError, match="train.tracker must be none, tensorboard or mlflow"):
        Config().replace(**{"train.tracker": "wandb"})


def _epochs(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_event_files_hold_every_epoch(world, tmp_path):
    pytest.importorskip("tensorboard", reason="pip install 'temarec[track]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train_run(world, Config().replace(**TINY, **{"train.tracker": "tensorboard"}), run)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("loss")]
    assert losses == [(r["epoch"], pytest.approx(r["loss"])) for r in _epochs(run)]
    assert [e.value for e in events.Scalars("valid/mrr")] == pytest.approx([r["valid_mrr"] for r in _epochs(run)])
    assert "valid/full/Kitchen/ndcg@10" in events.Tags()["scalars"]


def test_mlflow_local_store_holds_params_and_every_epoch(world, tmp_path):
    mlflow = pytest.importorskip("mlflow", reason="pip install 'temarec[track]'")

    run = tmp_path / "run"
    train_run(world, Config().replace(**TINY, **{"train.tracker": "mlflow"}), run)
    client = mlflow.tracking.MlflowClient(tracking_uri=local_store(run))
    (found,) = client.search_runs([client.get_experiment_by_name("temarec").experiment_id])
    assert found.data.params["train.lr"] == "0.001" and found.data.params["model.name"] == "sasrec"
    history = client.get_metric_history(found.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(r["epoch"], pytest.approx(r["loss"])) for r in _epochs(run)]
    assert found.info.status == "FINISHED"
