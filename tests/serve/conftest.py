"""Fixtures of the serving tests: one small generated world with tags and two cold items, and a trained run of
every model on it (trained on first use, once per session)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
import torch

from temarec.config import Config, DataConfig, TagsConfig
from temarec.data.dataset import Dataset, write_dataset
from temarec.data.synthetic import GENRES, write_synthetic

TINY = {"train.epochs": "1", "model.dim": "16", "data.max_len": "10", "train.batch_size": "64",
        "eval.batch_size": "256", "model.tema.modalities": "id,tag", "tags.match_backend": "keyword"}
# Kitchen items that no training sequence contains: only their text (and so their tags) describes them
COLD = {"KCOLD-tea": ("Cast iron teapot with tea tin", "Part of the tea kitchen range."),
        "KCOLD-bbq": ("Smoker box with grill brush and tongs", "Part of the bbq kitchen range.")}


@pytest.fixture(autouse=True)
def _serve_tests_use_one_thread(one_thread):
    """Every serving test runs with tests/conftest.py's one_thread."""


def _write_genre_tags(root: Path) -> None:
    """A hand-written vocabulary (the genre names, which every item description contains) + keyword matching.

    The vocabulary step of ``temarec tags`` loads a sentence encoder; the serving tests only need tags to exist.
    """
    from temarec.tags import run_tags
    from temarec.data.content import META, VOCAB, tags_dir
    from temarec.fileio import sha256_file, write_json_atomic

    out = tags_dir(root)
    genres = list(GENRES)
    per_domain = {d: [{"tag": g, "votes": 1, "mean_score": 100.0} for g in genres] for d in ("Food", "Kitchen")}
    write_json_atomic(out / VOCAB, {"source": "genre names (test vocabulary)", "domains": per_domain, "shared": genres})
    write_json_atomic(out / META, {"vocab": {"source": "genre names (test vocabulary)", "sha256": sha256_file(out / VOCAB),
                                      "sizes": {d: len(genres) for d in per_domain}, "shared": len(genres)}})
    run_tags(root, TagsConfig(match_backend="keyword"), steps=("match",))


@pytest.fixture(scope="session")
def serve_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = Dataset.load(write_synthetic(tmp_path_factory.mktemp("world") / "base", DataConfig(num_negatives=50),
                                        n_users=200, items_per_genre=10))
    cold = pd.DataFrame([{"item": i, "domain": "Kitchen", "title": t, "description": d, "image": None}
                         for i, (t, d) in COLD.items()])
    items = pd.concat([base.items, cold], ignore_index=True)  # appended last: no internal index moves
    root = write_dataset(base.root.parent / "data", items=items, train=base.train, valid=base.valid,
                         test=base.test, domains=base.domains, train_source="leave_one_out",
                         source={"format": "synthetic", "generated": True}, num_negatives=50, name="served-world")
    _write_genre_tags(root)
    return root


@pytest.fixture(scope="session")
def trained_run(serve_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """trained_run("sasrec") -> a finished run folder of that model on ``serve_dataset``."""
    from temarec.runs import train_run

    runs: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("runs")

    def get(model: str) -> Path:
        if model not in runs:
            cfg = Config().replace(**TINY, **{"model.name": model})
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                train_run(serve_dataset, cfg, root / model)
            finally:
                torch.set_num_threads(before)
            runs[model] = root / model
        return runs[model]

    return get


@pytest.fixture(scope="session")
def recommender(trained_run: Callable[[str], Path]):
    """recommender("sasrec") -> a loaded Recommender of that model (cached)."""
    from temarec.serve.recommender import Recommender

    loaded: dict[str, Recommender] = {}

    def get(model: str) -> Recommender:
        if model not in loaded:
            loaded[model] = Recommender.load(trained_run(model))
        return loaded[model]

    return get


@pytest.fixture(scope="session")
def client(recommender):
    """client("sasrec") -> a FastAPI TestClient over that model (max_k 50, max_history 200, 64 KiB bodies)."""
    from fastapi.testclient import TestClient

    from temarec.serve.app import Limits, create_app

    clients: dict[str, TestClient] = {}

    def get(model: str) -> TestClient:
        if model not in clients:
            limits = Limits(max_k=50, max_history=200, max_batch=8, max_body_bytes=64 * 1024)
            # entered once: one event loop thread for the session, not one per request
            clients[model] = TestClient(create_app(recommender(model), limits=limits)).__enter__()
        return clients[model]

    yield get
    for c in clients.values():
        c.__exit__(None, None, None)
