"""The top-level command line: version and the files a release ships."""

from __future__ import annotations

from pathlib import Path

import pytest

import temarec
from temarec.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_version_flag_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"temarec {temarec.__version__}"


def test_release_files_exist_and_agree_with_pyproject():
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert 'license = {text = "Apache-2.0"}' in (ROOT / "pyproject.toml").read_text()
    assert (ROOT / "src" / "temarec" / "py.typed").exists()
    assert f"## [{temarec.__version__}]" in (ROOT / "CHANGELOG.md").read_text()


def test_public_api_is_importable_from_the_top_level_with_docstrings():
    for name in temarec.__all__:
        obj = getattr(temarec, name)
        assert name == "__version__" or (obj.__doc__ or "").strip(), f"temarec.{name} has no docstring"
    assert temarec.Recommender.__module__ == "temarec.serve.recommender"
    assert "sasrec" in temarec.model_names()
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        temarec.nope  # noqa: B018


def test_importing_temarec_does_not_load_torch():
    import subprocess
    import sys

    code = "import sys, temarec; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
