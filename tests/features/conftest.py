"""Tiny fixtures for the features stage: a 20-item dataset folder, a random CLIP, a local image server."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pandas as pd
import pytest

from temarec.data.dataset import eval_frame, train_frame, write_dataset

DOMAINS = ("Food", "Kitchen")


def items_table(overrides: dict[int, dict] | None = None, n: int = 20) -> pd.DataFrame:
    """n items, half per domain; row i has item id f"i{i}". ``overrides[i]`` replaces columns of row i."""
    rows = []
    for i in range(n):
        rows.append({"item": f"i{i}", "domain": DOMAINS[int(i >= n // 2)], "title": f"Item number {i} of the shop",
                     "description": f"A plain description of product {i}." if i % 3 == 0 else None, "image": None})
    for i, columns in (overrides or {}).items():
        rows[i].update(columns)
    return pd.DataFrame(rows)


def write_items(root: Path, items: pd.DataFrame, overwrite: bool = False) -> Path:
    """A valid dataset folder around ``items`` (3 users; splits only need to be well-formed)."""
    n0 = int((items["domain"] == DOMAINS[0]).sum())
    train = train_frame([(f"u{u}", [u, n0 + u], [1, 2]) for u in range(3)])
    valid = eval_frame([(f"u{u}", [u, n0 + u], [1, 2], u + 3, 3, 0) for u in range(3)])
    test = eval_frame([(f"u{u}", [u, n0 + u, u + 3], [1, 2, 3], n0 + u + 3, 4, 1) for u in range(3)])
    return write_dataset(root, items=items, train=train, valid=valid, test=test, domains=DOMAINS,
                         train_source="test", source={"format": "test"}, num_negatives=3, overwrite=overwrite)


@pytest.fixture
def make_dataset():
    """make_dataset(root, {row: {column: value}}) -> a 20-item dataset folder at root with those rows changed."""

    def make(root: Path, overrides: dict[int, dict]) -> Path:
        return write_items(root, items_table(overrides))

    return make


@pytest.fixture
def rewrite_items():
    """Rewrite a dataset folder's items (write_dataset replaces the folder), keeping its features/ folder."""

    def rewrite(root: Path, items: pd.DataFrame) -> None:
        kept = (root / "features").rename(root.parent / "features-kept")
        write_items(root, items, overwrite=True)
        kept.rename(root / "features")

    return rewrite


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    items = items_table({4: {"title": None, "description": None},  # no text at all
                         5: {"title": "  ", "description": "Only a description here."},
                         7: {"title": "Item number 6 of the shop",
                             "description": "A plain description of product 6."}})  # same text as i6
    return write_items(tmp_path / "data", items)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised CLIP (e = 16, 32 px images) saved the way a downloaded one is, processor included."""
    import torch
    import transformers
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                         vocab_size=99, max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(path)
    processor_cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    processor_cls(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def image_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """(base URL, served folder, list of requested paths) of an http.server on 127.0.0.1."""
    served = tmp_path / "served"
    served.mkdir()
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    requests: list[str] = []
    handler = type("Handler", (_QuietHandler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served, requests
    finally:
        server.shutdown()
        server.server_close()
