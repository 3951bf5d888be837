"""The offline backends (mined vocabulary, embedding and keyword matching), the CLI and the loaders."""

import json

import numpy as np
import pandas as pd
import pytest

from tag_data import TITLES, make_dataset
from temarec.cli import main
from temarec.config import TagsConfig
from temarec.tags import load_scores, load_tag_vectors, read_vocabulary, run_tags, tag_source
from temarec.tags.backends.embedding import calibrate
from temarec.data.dataset import Dataset
from temarec.fileio import sha256_file, write_json_atomic


def write_vocab(root, shared):
    """A hand-made vocabulary, as the vocab step would write it."""
    from temarec.tags.stage import _update_meta

    out = root / "tags"
    write_json_atomic(out / "vocab.json", {"source": "hand-made", "domains": {}, "shared": shared}, sort_keys=True)
    _update_meta(Dataset.load(root, splits=False), "vocab", {"source": "hand-made", "sha256": sha256_file(out / "vocab.json")},
                 TagsConfig())


def test_keyword_matching_assigns_tags_whose_words_all_occur(dataset):
    write_vocab(dataset, ["chocolate", "tea bags", "coffee", "baking sheet", "cookie", "storage"])
    summary = run_tags(dataset, TagsConfig(match_backend="keyword"), steps=("match",))
    scores, tags = load_scores(dataset)
    got = {i: [t for t, s in zip(tags, row) if s] for i, row in enumerate(scores)}
    assert got == {0: ["chocolate"], 1: ["tea bags"], 2: ["coffee"], 3: [], 4: [], 5: ["chocolate", "cookie"],
                   6: [], 7: ["storage"], 8: ["coffee"], 9: [], 10: ["baking sheet"], 11: []}
    assert set(scores[scores > 0].tolist()) == {100}
    assert summary["match"]["items_without_text"] == 2
    assert tag_source(dataset) == "hand-made + keyword matching (all of a tag's words in the item text -> 100)"
    w, _ = load_tag_vectors(dataset, "hybrid", "weighted")
    assert w[5].tolist() == [0.5, 0, 0, 0, 0.5, 0] and not w[4].any()  # matches only, equal weights


def test_calibration_is_the_documented_linear_map():
    cos = np.array([-0.5, 0.10, 0.325, 0.41, 0.55, 0.9])
    assert calibrate(cos, 0.10, 0.55).tolist() == [1, 1, 51, 69, 100, 100]


def test_stale_scores_are_refused(dataset):
    write_vocab(dataset, ["coffee"])
    run_tags(dataset, TagsConfig(match_backend="keyword"), steps=("match",))
    write_vocab(dataset, ["coffee", "tea"])
    with pytest.raises(ValueError, match="another vocabulary"):
        load_tag_vectors(dataset)


def test_mined_vocabulary_and_embedding_matching_offline(dataset, caplog):
    rows = [(f"F{i}", "Food", t, None) for i, t in enumerate(
        ["Organic Green Tea Bags", "Green Tea Bags, Jasmine", "Dark Chocolate Bar", "Milk Chocolate Bar",
         "Whole Bean Coffee", "Ground Coffee, Dark Roast", "Organic Coffee Beans", "Herbal Tea Bags",
         "Chocolate Chip Cookies", "Butter Cookies Tin", "", "Peppermint Tea Bags"] * 3)]
    rows += [(f"K{i}", "Kitchen", t, None) for i, t in enumerate(
        ["Stainless Steel Chef Knife", "Paring Knife Set", "Glass Food Storage Containers", "Plastic Storage Bins",
         "Ceramic Coffee Mug", "Travel Coffee Mug", "Nonstick Baking Sheet", "Silicone Baking Mat",
         "Bread Knife, Serrated", "Storage Jars with Lids", "Coffee Mug Set", "Baking Pan, Nonstick"] * 3)]
    root = make_dataset(dataset.parent / "mined", rows)
    cfg = TagsConfig(tags_per_domain=5, rounds=3)
    with caplog.at_level("INFO"):
        summary = run_tags(root, cfg)
    vocab = read_vocabulary(root)
    assert {"tea bags", "chocolate", "coffee"} <= {t["tag"] for t in vocab["domains"]["Food"]}  # all tea is bagged
    kitchen = {t["tag"] for t in vocab["domains"]["Kitchen"]}
    assert {"knife", "storage"} <= kitchen and any("mug" in t for t in kitchen)
    assert all(t["votes"] >= 2 for d in vocab["domains"].values() for t in d)
    scores, tags = load_scores(root)
    assert scores.shape == (72, len(tags)) and (scores[[10, 22, 34]] == 0).all()  # items without text
    assert ((scores > 0) | (np.arange(72)[:, None] % 12 == 10)).all()  # embedding scores every pair
    assert tags[int(scores[4].argmax())] == "coffee" and tags[int(scores[36].argmax())] == "knife"
    for selection in ("topr", "threshold", "hybrid"):
        for representation in ("onehot", "multihot", "weighted"):
            w, _ = load_tag_vectors(root, selection, representation)
            assert w.shape == scores.shape and w.dtype == np.float32
            sums = w.sum(axis=1)
            assert np.allclose(sums[sums > 0], 1.0, atol=1e-6) and (sums[[10, 22, 34]] == 0).all()
    assert tag_source(root).startswith("mined vocabulary (") and "embedding matching (all-MiniLM-L6-v2" in \
        tag_source(root)
    assert summary["match"]["items_without_text"] == 3
    assert "of tagged items have no tag >= 70" in caplog.text
    first = {n: (root / "tags" / n).read_bytes() for n in ("vocab.json", "scores.parquet", "meta.json")}
    run_tags(root, cfg)  # all from the cache: same bytes
    assert {n: (root / "tags" / n).read_bytes() for n in first} == first


def test_cli_tags_show_prompts_and_steps(dataset, capsys):
    assert main(["tags", "--show-prompts"]) == 0
    out = capsys.readouterr().out
    assert "===== prompts/vocab.txt" in out and "$domain" in out and "===== prompts/match.txt" in out
    write_vocab(dataset, ["coffee", "tea"])
    assert main(["tags", "--dataset", str(dataset), "match", "--set", "tags.match_backend=keyword"]) == 0
    assert "keyword matching" in capsys.readouterr().out
    meta = json.loads((dataset / "tags" / "meta.json").read_text())
    assert meta["config"]["match_backend"] == "keyword" and meta["match"]["items_tagged"] == 10
    assert main(["tags", "--dataset", str(dataset), "everything"]) == 2


def test_cli_reports_a_down_endpoint_without_traceback(dataset, capsys):
    args = ["tags", "--dataset", str(dataset), "--set", "tags.vocab_backend=openai", "--set", "tags.model=m",
            "--set", "tags.base_url=http://127.0.0.1:9/v1", "--set", "tags.max_retries=0"]
    assert main(args) == 1
    assert "cannot reach http://127.0.0.1:9/v1" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not TITLES.is_file(), reason="needs ../shared/data/amazon-titles (not in a fresh checkout)")
def test_real_titles_sample(tmp_path):
    raw = pd.read_csv(TITLES, sep="\t", dtype=str, keep_default_na=False)
    raw = pd.concat([raw[raw["domain"] == d].iloc[::40] for d in ("Food", "Kitchen")])  # about 900 titles
    root = make_dataset(tmp_path / "real", list(zip(raw["asin"], raw["domain"], raw["title"], [None] * len(raw))))
    run_tags(root, TagsConfig(tags_per_domain=20))
    vocab = read_vocabulary(root)
    assert {"coffee", "tea", "chocolate"} <= {t["tag"] for t in vocab["domains"]["Food"]}
    assert "knife" in {t["tag"] for t in vocab["domains"]["Kitchen"]}
    scores, tags = load_scores(root)
    titles = raw["title"].tolist()
    coffee = [i for i, t in enumerate(titles) if "Coffee" in t and raw["domain"].iloc[i] == "Food"]
    top = np.argsort(-scores[coffee].astype(int), axis=1)[:, :3]
    assert np.mean([tags.index("coffee") in row for row in top]) > 0.7
