"""The README's front door: its two set-up commands, and the quickstart they run (with tiny settings)."""

import re
from pathlib import Path

from temarec.cli import main
from temarec.quickstart import quickstart_config

ROOT = Path(__file__).resolve().parents[1]


def test_readme_setup_is_exactly_two_make_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", setup, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make quickstart", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^quickstart:", makefile, flags=re.M) and re.search(r"^test:", makefile, flags=re.M)
    assert "torch==2.13.0" in makefile  # the CPU wheel first, before anything that depends on torch
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_user_overrides_win_over_the_quickstart_settings(tmp_path):
    assert quickstart_config().train.epochs == 12
    assert quickstart_config(None, ["train.epochs=1"]).train.epochs == 1
    yaml = tmp_path / "c.yaml"
    yaml.write_text("train:\n  epochs: 2\n")
    cfg = quickstart_config(yaml)
    assert cfg.train.epochs == 2 and cfg.model.dim == 64  # the file's value wins, the rest stays quick


def test_quickstart_runs_every_stage_and_labels_the_data(tmp_path, capsys):
    out = tmp_path / "qs"
    args = ["quickstart", "--out", str(out), "--models", "pop,sasrec,tema",
            "--set", "train.epochs=1", "--set", "model.dim=16", "--set", "tags.tags_per_domain=8"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "GENERATED DATA" in printed
    for model in ("pop", "sasrec", "tema"):
        assert f"| {model} |" in printed
        assert (out / "bench" / "runs" / model / "seed0" / "metrics.json").is_file()
    assert (out / "data" / "tags" / "vocab.json").is_file() and (out / "data" / "features" / "text.npy").is_file()
    assert "all-MiniLM-L6-v2" in printed  # the report names the encoder and the tag source
