"""Fixtures of the tags tests: a tiny two-domain dataset folder and the local chat-completions server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from chat_server import ChatServer  # noqa: E402
from tag_data import ITEMS, TITLES, make_dataset  # noqa: E402,F401


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds")


@pytest.fixture
def server():
    s = ChatServer(client_timeout_s=1.0)
    yield s
    s.close()
