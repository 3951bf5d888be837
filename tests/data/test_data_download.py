from __future__ import annotations

import functools
import os
import pickle
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from temarec.cli import main
from temarec.data.dataset import DataError
from temarec.fileio import sha256_file
from temarec.data.download import PUBLIC_SETS, download, safe_unpickle_dict


@pytest.fixture
def http_mirror(shared_data: Path) -> Iterator[str]:
    """A local web server over ../shared/data, standing in for the publishers' servers."""
    handler = functools.partial(_QuietHandler, directory=str(shared_data))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.shared_data
def test_pinned_digests_match_the_shared_mirror(shared_data: Path) -> None:
    for name, spec in PUBLIC_SETS.items():
        for file, digest in spec.files.items():
            assert sha256_file(shared_data / name / file) == digest, f"{name}/{file}"


@pytest.mark.shared_data
def test_download_over_http_then_reuses_verified_files(http_mirror: str, tmp_path: Path) -> None:
    folder = download("abxi-food-kitchen", out=tmp_path, mirror=http_mirror)
    assert folder == tmp_path / "abxi-food-kitchen"
    assert sorted(p.name for p in folder.iterdir()) == sorted(PUBLIC_SETS["abxi-food-kitchen"].files)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    download("abxi-food-kitchen", out=tmp_path, mirror=http_mirror + "/")
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


@pytest.mark.shared_data
def test_cli_download_from_a_local_mirror_folder(shared_data: Path, tmp_path: Path) -> None:
    assert main(["download", "amazon-titles", "--mirror", str(shared_data), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "amazon-titles" / "food_kitchen_titles.tsv").is_file()


@pytest.mark.shared_data
def test_http_404_is_a_clear_error(http_mirror: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="HTTP 404"):
        download("abxi-food-kitchen", out=tmp_path, mirror=http_mirror + "/nowhere")


def test_digest_mismatch_keeps_nothing(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror" / "amazon-titles"
    mirror.mkdir(parents=True)
    (mirror / "food_kitchen_titles.tsv").write_text("asin\tdomain\ttitle\nX\tFood\ttampered\n")
    with pytest.raises(DataError, match="sha256 mismatch"):
        download("amazon-titles", out=tmp_path / "out", mirror=tmp_path / "mirror")
    assert not (tmp_path / "out" / "amazon-titles").exists()  # no partial file, no empty folder


def test_failure_keeps_a_folder_that_already_held_files(tmp_path: Path) -> None:
    kept = tmp_path / "out" / "c2dsr-food-kitchen" / "notes.txt"
    kept.parent.mkdir(parents=True)
    kept.write_text("mine")
    with pytest.raises(DataError, match="not found in the mirror"):
        download("c2dsr-food-kitchen", out=tmp_path / "out", mirror=tmp_path / "empty-mirror")
    assert kept.read_text() == "mine"


def test_missing_mirror_file_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found in the mirror"):
        download("c2dsr-food-kitchen", out=tmp_path / "out", mirror=tmp_path)
    with pytest.raises(ValueError, match="available: abxi-food-kitchen"):
        download("movielens", out=tmp_path)
    with pytest.raises(DataError, match="no upstream URL"):
        download("amazon-titles", out=tmp_path)


def test_safe_unpickle_reads_plain_dicts(tmp_path: Path) -> None:
    path = tmp_path / "titles.pkl"
    value = {"B00": "Green tea", 7: ["a", 1.5, (2, 3)], "nested": {"x": None, "y": True}}
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        path.write_bytes(pickle.dumps(value, protocol=protocol))
        assert safe_unpickle_dict(path) == value


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_safe_unpickle_refuses_code_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"title": _Exploit(marker)}))
    with pytest.raises(DataError, match=r"refusing to load (posix|os|nt)\.system"):
        safe_unpickle_dict(path)
    assert not marker.exists()


def test_safe_unpickle_wants_a_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps(["a", "b"]))
    with pytest.raises(DataError, match="expected a pickled dict, got list"):
        safe_unpickle_dict(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="pickle"):
        safe_unpickle_dict(path)
