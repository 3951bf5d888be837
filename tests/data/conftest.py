"""Fixtures for the data-stage tests: the shared real data (skipped when absent) and tiny raw folders."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (the real Amazon Food-Kitchen files), or skip: a fresh machine has no copy."""
    if not (SHARED_DATA / "c2dsr-food-kitchen").is_dir() or not (SHARED_DATA / "abxi-food-kitchen").is_dir():
        pytest.skip(f"real data not available at {SHARED_DATA} (only on developer machines and CI)")
    return SHARED_DATA


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def write() -> Callable[[Path, list[str]], Path]:
    """``write(path, lines)``: a text file of those lines (tests may not import conftest by name)."""
    return write_lines


@pytest.fixture
def c2dsr_dir(tmp_path: Path) -> Path:
    """Three Food items (global 0-2) and four Kitchen items (global 3-6); lines out of time order, with ties."""
    d = tmp_path / "c2dsr"
    d.mkdir()
    write_lines(d / "items_a.txt", ["10\tF0\t0", "11\tF2\t2", "12\tF1\t1"])
    write_lines(d / "items_b.txt", ["20\tK0\t0", "21\tK1\t1", "22\tK2\t2", "23\tK3\t3"])
    write_lines(d / "userlist.txt", ["RA\t0", "RB\t1", "RC\t2"])
    # user 0: sorted by time -> 3(100) 0(200) 5(200) 1(300): ties keep file order (0 before 5); target 1 = Food
    write_lines(d / "val_new.txt", [
        "0\t7\t1|300|d|\t0|200|d|\t3|100|d|\t5|200|d|",
        "1\t8\t2|50|d|\t6|60|d|",
    ])
    # user 2: target 4 (Kitchen, latest)
    write_lines(d / "test_new.txt", ["2\t9\t4|900|d|\t0|10|d|\t1|20|d|"])
    return d


@pytest.fixture
def abxi_dir(tmp_path: Path) -> Path:
    """ABXI layout: item ids interleave the domains, so renumbering is visible."""
    import json

    d = tmp_path / "abxi"
    d.mkdir()
    # domain 0 (Food): ids 2, 4; domain 1 (Kitchen): ids 1, 3, 5
    (d / "map_item_50.txt").write_text(json.dumps(
        {"K1": [1, 1], "F2": [2, 0], "K3": [3, 1], "F4": [4, 0], "K5": [5, 1]}))
    (d / "map_user_50.txt").write_text(json.dumps({"RA": 0, "RB": 1}))
    write_lines(d / "afk_50_preprocessed.txt", [
        "0 2|10 1|20 4|20 3|30 5|40",
        "1 5|1 4|2 3|3",
    ])
    return d
