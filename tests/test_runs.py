"""The run layer: the model registry, model-specific config sections, and run folders of older versions."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from temarec.cli import main
from temarec.config import LEGACY_TEMA_KEYS, Config, load_config, upgrade_config
from temarec.data.batches import pad_histories
from temarec.models import registry
from temarec.models.base import ModelContext
from temarec.models.pop import PopModel
from temarec.runs import load_run, model_class, model_names, read_run_info, train_run


def test_every_model_module_registers_itself_under_its_name():
    assert set(model_names()) >= {"random", "pop", "gru4rec", "sasrec", "tema"}
    for name in model_names():
        assert model_class(name).name == name
    with pytest.raises(ValueError, match="unknown model 'bert4rec'; choose one of"):
        model_class("bert4rec")


@dataclass(frozen=True)
class ToySettings:
    boost: float = 1.0
    modes: tuple[str, ...] = ("a",)

    def __post_init__(self) -> None:
        if self.boost <= 0:
            raise ValueError(f"model.toy.boost must be > 0, got {self.boost}")


@pytest.fixture
def toy_model():
    """A model declared in a test: registered by defining it, removed from the registry afterwards."""

    class Toy(PopModel):
        name = "toy"
        settings_class = ToySettings

    yield Toy
    registry._CLASSES.pop("toy")


def test_a_models_own_settings_are_its_config_section(toy_model, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: toy\n  toy:\n    boost: 2\n")
    cfg = load_config(path, ["model.toy.modes=a,b"])
    assert cfg.model.settings == ToySettings(boost=2.0, modes=("a", "b"))
    assert cfg.to_dict()["model"]["toy"] == {"boost": 2.0, "modes": ("a", "b")}
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg  # what config.json restores
    assert load_config(None, ["model.name=toy"]).model.settings == ToySettings()  # defaults when not given
    model = toy_model(cfg.model, ModelContext((3, 4)))
    assert model.settings == ToySettings(boost=2.0, modes=("a", "b"))
    # a setting of another model's section is kept (bench variants switch model.name over one base config)
    assert load_config(None, ["model.toy.boost=3", "model.name=pop"]).model.specific["toy"].boost == 3.0


@pytest.mark.parametrize("override, message", [
    (["model.toy.boost=0"], "model.toy.boost must be > 0"),
    (["model.toy.bost=1"], "unknown key 'bost' in section 'model.toy'"),
    (["model.toy.boost=fast"], "model.toy.boost must be a number"),
    (["model.boost=2"], r"model.boost is now model.toy.boost"),
    (["model.sasrec.dim=2"], "model sasrec has no settings of its own"),
    (["model.nomodel.x=1"], "'nomodel' is not a model"),
])
def test_bad_model_settings_are_one_line_errors(toy_model, override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, ["model.name=toy", *override])


def test_cli_reports_a_bad_model_setting_in_one_line(capsys, tmp_path):
    assert main(["train", "--dataset", str(tmp_path), "--out", str(tmp_path / "r"), "--model", "tema",
                 "--set", "model.tema.views=four"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.tema.views must be multi or merged" in err[0]


# The model section of a config.json written before model-specific sections (main at 5fffdd7), verbatim
LEGACY_TEMA_MODEL = {"name": "tema", "dim": 16, "layers": 2, "heads": 1, "dropout": 0.3, "alpha": [0.5, 0.2, 0.2],
                     "lambdas": [0.4, 0.1], "temperature": 0.1, "learn_temperature": True, "similarity": "cosine",
                     "modalities": ["id"], "views": "multi", "view_reading": "target", "loss": "full",
                     "num_sampled": 1024, "sampled_correction": True, "head_loss": "mixture"}


def test_legacy_flat_tema_keys_move_to_the_tema_section():
    cfg = Config.from_dict(upgrade_config({"model": LEGACY_TEMA_MODEL}))
    assert cfg.model.dim == 16 and cfg.model.settings.alpha == (0.5, 0.2, 0.2)
    assert cfg.model.settings.lambdas == (0.4, 0.1) and cfg.model.settings.modalities == ("id",)
    sasrec = Config.from_dict(upgrade_config({"model": {**LEGACY_TEMA_MODEL, "name": "sasrec"}}))
    assert sasrec.model.specific == {}  # TEMA's keys meant nothing to other models


def test_a_run_folder_of_the_old_layout_loads_with_its_settings(generated_dataset, tmp_path, tiny):
    out = tmp_path / "run"
    cfg = load_config(None, tiny(**{"model.name": "tema", "model.tema.modalities": "id", "train.epochs": "1",
                                    "model.tema.lambdas": "[0.4,0.1]"}))
    train_run(generated_dataset, cfg, out)
    model, ds, _ = load_run(out)
    hist = pad_histories(ds.test["history"].tolist()[:8], cfg.data.max_len)
    with torch.no_grad():
        before = model.score_domain(hist, 0)
    raw = json.loads((out / "config.json").read_text())
    tema = raw["model"].pop("tema")
    raw["model"].update({k: tema[k] for k in LEGACY_TEMA_KEYS})  # the flat layout of older versions (their keys)
    (out / "config.json").write_text(json.dumps(raw))
    old_model, _, old_cfg = load_run(out)
    assert old_cfg.model.settings.lambdas == (0.4, 0.1)
    with torch.no_grad():
        torch.testing.assert_close(old_model.score_domain(hist, 0), before)


def test_run_info_and_metrics_are_read_through_the_run_layer(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"model": "pop", "protocol": {"tags": "none"}}))
    assert read_run_info(run) == ({"model": "pop", "protocol": {"tags": "none"}}, {})  # no metrics.json yet
    (run / "metrics.json").write_text(json.dumps({"selected_epoch": 3}))
    assert read_run_info(run)[1] == {"selected_epoch": 3}
    (run / "metrics.json").write_text('{"selected_epoch": ')
    with pytest.raises(ValueError, match=r"metrics\.json: not valid JSON .*train the run again"):
        read_run_info(run)


def test_a_run_written_before_a_setting_existed_resumes(generated_dataset, tmp_path, tiny):
    """config.json of an older version lacks settings added since; they read as their defaults, so --resume
    accepts the run (it refused: "model.tema.encoders None -> 'separate'")."""
    out = tmp_path / "run"
    cfg = load_config(None, tiny(**{"model.name": "tema", "model.tema.modalities": "id", "train.epochs": "1"}))
    train_run(generated_dataset, cfg, out)
    raw = json.loads((out / "config.json").read_text())
    for key in ("encoders", "lora_rank", "lora_alpha", "fusion"):
        del raw["model"]["tema"][key]
    (out / "config.json").write_text(json.dumps(raw))
    assert cfg.changed_from(raw) == {}
    metrics = train_run(generated_dataset, cfg.replace(**{"train.epochs": "2"}), out, resume=True)
    assert metrics["timing"]["epochs"] == 2
    assert cfg.replace(**{"model.tema.fusion": "learned"}).changed_from(raw) == {"model.tema.fusion": ("fixed",
                                                                                                       "learned")}


def test_resuming_a_run_that_stopped_early_trains_no_more_epochs(generated_dataset, tmp_path, tiny):
    out = tmp_path / "run"
    cfg = load_config(None, tiny(**{"model.name": "sasrec", "train.epochs": "30", "train.patience": "1",
                                    "train.lr": "0.05"}))
    first = train_run(generated_dataset, cfg, out)
    epochs = first["timing"]["epochs"]
    assert epochs < 30  # stopped early (a large lr overfits the small world within a few epochs)
    again = train_run(generated_dataset, cfg, out, resume=True)
    assert again["timing"]["epochs"] == epochs and again["test"] == first["test"]
    longer = train_run(generated_dataset, cfg.replace(**{"train.patience": "2"}), out, resume=True)
    assert longer["timing"]["epochs"] > epochs  # a larger patience trains on


@pytest.mark.parametrize("overrides, expected", [
    ({"model.name": "sasrec", "model.loss": "full"}, "full softmax over the target's domain"),
    ({"model.name": "sasrec", "model.loss": "sampled", "model.num_sampled": "16"},
     "sampled softmax: 16 shared negatives of the target's domain drawn uniformly"),
    ({"model.name": "gru4rec", "model.loss": "sampled", "model.num_sampled": "16", "model.negative_power": "0.75"},
     "drawn with probability ∝ (training count + 1)^0.75, log-Q corrected"),
    ({"model.name": "tema", "model.tema.modalities": "id", "model.loss": "sampled", "model.num_sampled": "16"},
     "uniformly, normaliser calibrated"),
    ({"model.name": "man", "model.loss": "full", "model.num_sampled": "16"},
     "towers: full softmax over the target's domain; full score at one position per row (random): sampled softmax: "
     "16 shared negatives"),
    ({"model.name": "abxi"}, "InfoNCE (tau 0.75)"),
    ({"model.name": "pop"}, "none: fitted from the training interactions"),
])
def test_every_report_names_the_training_loss(generated_dataset, overrides, expected):
    """metrics.json's protocol.training, printed as 'training:' by `temarec train` and `evaluate` and per model by
    `temarec bench`: rows trained with different losses must say so."""
    from temarec.data.dataset import Dataset
    from temarec.runs import build_model, protocol_info

    dataset = Dataset.load(generated_dataset)
    cfg = load_config(None, [f"{k}={v}" for k, v in overrides.items()])
    assert expected in protocol_info(dataset, cfg, build_model(dataset, cfg))["training"]
