import json
from pathlib import Path

import pytest

from temarec.config import Config, load_config


def test_defaults_follow_the_paper():
    cfg = Config()
    tema = Config().replace(**{"model.name": "tema"}).model.settings
    assert tema.alpha == (0.4, 0.2, 0.2)
    assert tema.lambdas == (0.3, 0.1)
    assert cfg.train.batch_size == 256 and cfg.model.dropout == 0.3 and cfg.train.patience == 10
    assert cfg.tags.top_r == 5 and cfg.tags.theta == 70.0


def test_yaml_then_set_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.01\n  epochs: 5\nmodel:\n  name: gru4rec\n")
    cfg = load_config(path, ["train.lr=3e-4", "model.tema.alpha=[0.5, 0.2, 0.1]", "model.tema.modalities=id,tag"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.epochs == 5
    assert cfg.model.name == "gru4rec"
    assert cfg.model.specific["tema"].alpha == (0.5, 0.2, 0.1)
    assert cfg.model.specific["tema"].modalities == ("id", "tag")
    assert cfg.model.settings is None  # gru4rec has no settings of its own


def test_json_round_trip():
    cfg = load_config(None, ["train.seed=3", "model.tema.lambdas=[0.2,0.05]"])
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg


@pytest.mark.parametrize("override, message", [
    (["train.lrr=1"], "unknown key 'lrr'"),
    (["trian.lr=1"], "unknown config section"),
    (["train.lr=-1"], "train.lr must be a finite number > 0"),
    (["train.epochs=two"], "train.epochs must be an integer"),
    (["model.name=bert4rec"], "model.name must be one of"),
    (["model.negative_power=2"], r"model.negative_power must be in \[0, 1\], got 2.0"),
    (["model.tema.alpha=[0.6,0.3,0.3]"], "summing to <= 1"),
    (["model.dim=30", "model.heads=4"], "divisible"),
    (["lr=1"], "section.key=value"),
])
def test_bad_values_say_what_to_do(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, override)


@pytest.mark.parametrize("override, message", [
    ("train.device=tpu", "train.device must be cpu, cuda, cuda:N or mps, got 'tpu'"),
    ("train.threads=-3", "train.threads must be >= 0"),
    ("data.max_len=100000000", "data.max_len must be in 1..4096"),
    ("train.lr=inf", "train.lr must be a finite number"),
    ("train.lr=.nan", "train.lr must be a finite number"),
    ("train.lr=1e400", "train.lr must be a finite number"),
    ("train.max_train_s=inf", "train.max_train_s must be a finite number"),
    ("train.weight_decay=-1", "train.weight_decay must be a finite number >= 0"),
])
def test_settings_that_used_to_end_in_a_traceback_are_refused_when_the_config_is_read(override, message):
    """Issue 17 #5: each of these crashed inside torch (lr=inf only once training had started)."""
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_missing_or_bad_yaml(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)


def test_optimizer_is_adam_or_adamw():
    from temarec.config import load_config

    assert load_config(None, ["train.optimizer=adamw"]).train.optimizer == "adamw"
    with pytest.raises(ValueError, match="train.optimizer must be adam or adamw"):
        load_config(None, ["train.optimizer=sgd"])


def test_a_models_training_defaults_apply_unless_the_user_sets_them(tmp_path):
    assert load_config(None, ["model.name=pinet"]).train.batch_size == 128  # π-Net's code trains on 128 per step
    assert load_config(None, ["model.name=srgnn"]).train.batch_size == 100
    assert load_config(None, ["model.name=sasrec"]).train.batch_size == 256  # no defaults of its own
    assert load_config(None, ["model.name=pinet", "train.batch_size=256"]).train.batch_size == 256
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: pinet\ntrain:\n  batch_size: 256\n")
    assert load_config(path).train.batch_size == 256
    path.write_text("model:\n  name: pinet\n")
    assert load_config(path).train.batch_size == 128
    assert load_config(path, model_defaults=False).train.batch_size == 256


def test_every_shipped_config_loads():
    root = Path(__file__).resolve().parents[1] / "configs"
    shipped = sorted(root.glob("*.yaml"))
    assert {p.name for p in shipped} >= {"tema-best.yaml", "tema-as-sasrec.yaml"}
    for path in shipped:
        assert load_config(path).model.name == "tema", path
    best = load_config(root / "tema-best.yaml").model.settings
    assert (best.fusion, best.fusion_fit, best.views) == ("validated", "mrr", "merged")
