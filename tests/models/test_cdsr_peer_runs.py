"""MAN and Tri-CDR through the harness on the generated world: train, resume, evaluate, recommend."""

from __future__ import annotations

import json

import pytest

from temarec.cli import main
from temarec.config import load_config
from temarec.data.dataset import Dataset
from temarec.serve import Recommender
from temarec.runs import train_run


@pytest.mark.parametrize("model", ["man", "tricdr"])
def test_train_resume_and_recommend(model, generated_dataset, tmp_path, tiny, one_thread, capsys):
    out = tmp_path / model
    cfg = load_config(None, tiny(**{"model.name": model, "train.epochs": "1", "model.loss": "sampled",
                                    "model.num_sampled": "16"}))
    train_run(generated_dataset, cfg, out)
    train_run(generated_dataset, cfg.replace(**{"train.epochs": "2"}), out, resume=True)
    epochs = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"]["model"] == model
    assert all(0.0 < metrics["test"]["sampled"][d]["mrr"] <= 1.0 for d in ("Food", "Kitchen"))

    rec = Recommender.load(out)
    history = [str(i) for i in Dataset.load(generated_dataset).items["item"].tolist()[:3]]
    result = rec.recommend(history, domain="Kitchen", k=5)
    assert len(result) == 5 and all(r["domain"] == "Kitchen" for r in result)
    assert main(["recommend", "--run", str(out), "--history", ",".join(history), "--domain", "Food", "-k", "3",
                 "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["items"]) == 3
