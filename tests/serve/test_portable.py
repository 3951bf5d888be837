"""A run folder carries its data: copied elsewhere with the dataset folder deleted, it still serves and recommends."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from temarec.cli import main
from temarec.config import Config
from temarec.data.synthetic import write_synthetic
from temarec.runs import train_run

TINY = {"train.epochs": "1", "model.dim": "16", "data.max_len": "10", "train.threads": "1", "model.name": "tema",
        "model.tema.modalities": "id,tag", "tags.match_backend": "keyword"}


@pytest.fixture
def moved_run(serve_dataset, tmp_path):
    """A TEMA run trained on a private copy of the serving world, moved away, the copy then deleted."""
    data = tmp_path / "data"
    shutil.copytree(serve_dataset, data)
    run = tmp_path / "run"
    metrics = train_run(data, Config().replace(**TINY), run)
    moved = tmp_path / "elsewhere" / "my-run"
    shutil.copytree(run, moved)
    shutil.rmtree(run)
    shutil.rmtree(data)
    return moved, metrics


def test_run_folder_holds_its_data_with_relative_paths_and_a_model_card(moved_run):
    run, metrics = moved_run
    meta = json.loads((run / "run.json").read_text())
    assert meta["dataset_dir"] == "dataset" and (run / "dataset" / "manifest.json").is_file()
    assert not list((run / "dataset").rglob("*.sqlite*"))  # caches stay behind
    card = (run / "README.md").read_text()
    assert card.startswith("# tema on ") and "protocol:" in card and "tags:" in card and "encoders:" in card
    assert f"{100 * metrics['test']['sampled']['Food']['mrr']:.2f}" in card and '"model": {' in card


def test_moved_run_serves_and_recommends_without_the_dataset_folder(moved_run, capsys):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from temarec.serve.app import create_app

    run, metrics = moved_run
    assert main(["recommend", "--run", str(run), "--history", "F00001,K01002", "--domain", "Kitchen", "-k", "3",
                 "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert len(cli["items"]) == 3 and cli["fallback"] is None
    with TestClient(create_app(run)) as client:
        body = client.post("/recommend", json={"history": ["F00001", "K01002"], "domain": "Kitchen", "k": 3}).json()
    assert [i["item"] for i in body["items"]] == [i["item"] for i in cli["items"]]
    assert main(["evaluate", "--run", str(run), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    for domain, m in metrics["test"]["sampled"].items():
        assert again["test"]["sampled"][domain] == pytest.approx(m)


def test_copy_shares_disk_with_the_dataset_through_hard_links(serve_dataset, tmp_path):
    run = tmp_path / "run"
    train_run(serve_dataset, Config().replace(**{**TINY, "model.name": "pop"}), run)
    original, copy = serve_dataset / "items.parquet", run / "dataset" / "items.parquet"
    assert os.stat(copy).st_ino == os.stat(original).st_ino  # same file system here: linked, not copied


def test_old_run_without_its_copy_says_what_to_do(serve_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    train_run(serve_dataset, Config().replace(**{**TINY, "model.name": "pop"}), run)
    shutil.rmtree(run / "dataset")
    meta = json.loads((run / "run.json").read_text())
    meta["dataset_dir"] = str(tmp_path / "gone")  # the layout of runs written before runs kept their data
    (run / "run.json").write_text(json.dumps(meta))
    assert main(["recommend", "--run", str(run), "--domain", "Food"]) == 2
    assert "predates portable runs" in capsys.readouterr().err
