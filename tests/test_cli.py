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


def test_train_and_bench_give_each_model_its_training_defaults_unless_set(monkeypatch, tmp_path):
    import temarec.grid
    import temarec.runs

    seen = []
    monkeypatch.setattr(temarec.runs, "train_run", lambda data, cfg, out, resume=False: seen.append(cfg) or {})
    assert main(["train", "--dataset", "D", "--model", "srgnn", "--out", str(tmp_path / "a")]) == 0
    assert main(["train", "--dataset", "D", "--model", "srgnn", "--out", str(tmp_path / "b"),
                 "--set", "train.batch_size=64"]) == 0
    assert [c.train.batch_size for c in seen] == [100, 64]

    rows = []
    monkeypatch.setattr(temarec.grid, "run_grid",
                        lambda data, variants, seeds, out, cfg, jobs: rows.append((variants, cfg)))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.md").write_text("")
    assert main(["bench", "--dataset", "D", "--models", "sasrec,pinet", "--out", str(tmp_path / "c")]) == 0
    variants, base = rows[0]
    assert variants == [("sasrec", {"model.name": "sasrec"}), ("pinet", {"model.name": "pinet", "train.batch_size": "128"})]
    assert base.train.batch_size == 256  # SASRec's row is not given π-Net's batch


def test_bench_ablations_prints_its_tables_and_passes_the_lambda_grid_on(monkeypatch, tmp_path, capsys):
    import temarec.ablations

    calls = []

    def fake_ablations(dataset, seeds, out, cfg, tables, jobs, lambda1, lambda2):
        calls.append((tables, lambda1, lambda2))
        out.mkdir(parents=True)
        (out / "ablations.md").write_text("# TEMA ablations\n(the tables)\n")

    monkeypatch.setattr(temarec.ablations, "run_ablations", fake_ablations)
    assert main(["bench", "--dataset", "D", "--ablations", "--tables", "lambda", "--lambda2", "0.2,0.3",
                 "--seeds", "0,", "--out", str(tmp_path / "b")]) == 0
    assert calls == [(("lambda",), temarec.ablations.LAMBDA1, (0.2, 0.3))]
    assert capsys.readouterr().out == "# TEMA ablations\n(the tables)\n"
