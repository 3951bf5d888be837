"""A missing optional dependency ends a command with one line naming the extra, never an ImportError traceback."""

from __future__ import annotations

import sys

import pytest

from temarec.cli import main
from temarec.extras import EXTRAS, MissingExtra, require


def test_require_returns_the_module_when_installed():
    assert require("json", "serve", "anything").dumps([1]) == "[1]"


def test_require_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # None in sys.modules: the import fails as if not installed
    with pytest.raises(MissingExtra, match=r"ONNX export needs onnx, which is not installed: "
                                           r"pip install 'temarec\[export\]'"):
        require("onnx", "export", "ONNX export")
    with pytest.raises(KeyError):
        require("onnx", "no-such-extra", "x")


def test_every_extra_is_declared_and_all_holds_them():
    import tomllib
    from pathlib import Path

    declared = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    optional = declared["project"]["optional-dependencies"]
    assert set(EXTRAS) <= set(optional)
    (entry,) = optional["all"]
    assert entry.startswith("temarec[") and set(entry[len("temarec["):-1].split(",")) == set(EXTRAS)


def test_serve_without_fastapi_is_one_line_exit_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    assert main(["serve", "--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["temarec serve: error: the HTTP service needs fastapi, which is not installed: "
                   "pip install 'temarec[serve]' (or 'temarec[all]')"]
