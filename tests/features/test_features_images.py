from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from temarec.config import FeaturesConfig
from temarec.features import features_source, load_features, run_features
from temarec.features import encoders

pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")

GOOD_ROWS = [0, 1, 2, 3, 8]


def _png(path, colour, size=(48, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="PNG")
    return path


def _direct_clip(model_path, files):
    """The test's own CLIP image embedding: processor -> get_image_features -> unit length."""
    import torch
    from transformers import AutoImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(model_path).eval()
    images = [Image.open(f).convert("RGB") for f in files]
    pixels = AutoImageProcessor.from_pretrained(model_path)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels)
    out = getattr(out, "pooler_output", out).numpy()
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture
def image_dataset(tmp_path, image_server, make_dataset):
    """Items i0-i3 and i8 have usable images (absolute path, relative path, URLs; i8 shares i2's URL);
    i4 (HTTP 404), i5 (missing file) and i6 (not an image) fail; the rest have none."""
    base, served, requests = image_server
    absolute = _png(tmp_path / "pics" / "a.png", (220, 20, 20))
    _png(served / "c.png", (20, 20, 220))
    _png(served / "d.png", (240, 240, 240), size=(20, 64))
    garbage = tmp_path / "pics" / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    images = {0: str(absolute), 1: "pics/b.png", 2: f"{base}/c.png", 3: f"{base}/d.png", 8: f"{base}/c.png",
              4: f"{base}/missing.png", 5: str(tmp_path / "pics" / "nowhere.png"), 6: str(garbage)}
    root = make_dataset(tmp_path / "data", {i: {"image": v} for i, v in images.items()})
    _png(root / "pics" / "b.png", (20, 200, 20))  # relative paths are read from the dataset folder
    files = [absolute, root / "pics" / "b.png", served / "c.png", served / "d.png"]
    return root, files, base, requests


def test_clip_image_features_from_files_and_urls(image_dataset, tiny_clip, monkeypatch):
    root, files, base, requests = image_dataset
    cfg = FeaturesConfig(text_encoder="", image_encoder=str(tiny_clip), batch_size=2, device="cpu")
    summary = run_features(root, cfg)

    matrix, mask = load_features(root)["img"]
    assert matrix.shape == (20, 16) and matrix.dtype == np.float32
    assert np.flatnonzero(mask).tolist() == GOOD_ROWS
    assert not matrix[~mask].any()
    np.testing.assert_allclose(matrix[[0, 1, 2, 3]], _direct_clip(tiny_clip, files), atol=1e-5)
    np.testing.assert_array_equal(matrix[8], matrix[2])
    assert sorted(requests) == ["/c.png", "/d.png", "/missing.png"]  # a shared URL is fetched once
    assert (root / "features" / "image_cache" / hashlib.sha256(f"{base}/c.png".encode()).hexdigest()).is_file()

    meta = summary["modalities"]["img"]
    assert (meta["items"], meta["failures"], meta["without_image"], meta["dim"]) == (5, 3, 12, 16)
    reasons = {f["item"]: f["reason"] for f in json.loads((root / "features" / "image_failures.json").read_text())}
    assert set(reasons) == {"i4", "i5", "i6"} and reasons["i4"] == "HTTP 404" and "no such file" in reasons["i5"]
    assert "txt" not in summary["modalities"] and not (root / "features" / "text.npy").exists()
    assert features_source(root) == f"text: none, image: {tiny_clip} (16-d)"

    # Rerun: vectors come from the cache, images from the download cache; only the failed URL is tried again.
    requests.clear()

    def no_model(self):
        raise AssertionError("a fully cached rerun must not load the model")

    monkeypatch.setattr(encoders.ImageEncoder, "_load", no_model)
    again = run_features(root, cfg)
    assert again["run"]["img"] == {"encoded": 0, "from_cache": 4}
    assert requests == ["/missing.png"]
    np.testing.assert_array_equal(load_features(root)["img"][0], matrix)


def test_clip_loading_routes_agree(tmp_path, tiny_clip, make_dataset):
    """Saved processor, rebuilt processor and a sentence-transformers CLIP folder give the same vectors."""
    pics = [_png(tmp_path / "pics" / f"{i}.png", (30 * i, 255 - 20 * i, 90)) for i in range(3)]
    root = make_dataset(tmp_path / "data", {i: {"image": str(p)} for i, p in enumerate(pics)})
    no_processor = tmp_path / "clip-no-processor"
    shutil.copytree(tiny_clip, no_processor)
    (no_processor / "preprocessor_config.json").unlink()
    from sentence_transformers import SentenceTransformer

    st_folder = tmp_path / "clip-st"
    SentenceTransformer(str(tiny_clip), device="cpu").save(str(st_folder))

    results = {}
    for name, path in (("saved", tiny_clip), ("rebuilt", no_processor), ("st", st_folder)):
        summary = run_features(root, FeaturesConfig(text_encoder="", image_encoder=str(path), device="cpu"))
        results[name] = load_features(root)["img"][0][:3]
        assert summary["modalities"]["img"]["kind"] == ("sentence-transformers" if name == "st" else "transformers")
    np.testing.assert_allclose(results["rebuilt"], results["saved"], atol=1e-5)
    np.testing.assert_allclose(results["st"], results["saved"], atol=1e-5)
    np.testing.assert_allclose(results["saved"], _direct_clip(tiny_clip, pics), atol=1e-5)
