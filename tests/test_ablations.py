"""Ablations: the variant grid, the keyword-tags copy of the dataset, and the paper-layout tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

import temarec.ablations as ablations
from temarec.config import Config
from tests.test_significance import _frames as significance_frames


def test_variants_are_distinct_valid_configs_covering_every_table_and_the_lambda_grid():
    variants = dict(ablations.variants())
    assert len(variants) == len(ablations.variants())
    for name, overrides in variants.items():
        cfg = Config().replace(**overrides)
        assert cfg.model.name == "tema", name
    names = {v for table in (ablations.TABLE4, ablations.TABLE5, ablations.TABLE6) for v, _, _ in table}
    assert names - set(variants) == {ablations.KEYWORD_ROW}
    grid = {ablations.lambda_name(a, b) for a in ablations.LAMBDA1 for b in ablations.LAMBDA2}
    assert len(grid) == 16 and grid <= set(variants) and "tema" in grid
    assert Config().replace(**variants["lambda-0.5-0.05"]).model.settings.lambdas == (0.5, 0.05)
    merged = Config().replace(**variants["base-id-merged"]).model.settings
    assert merged.modalities == ("id",) and merged.views == "merged"
    assert Config().replace(**variants["tags-onehot"]).tags.representation == "onehot"


def _fake_result(valid: float, test: float) -> dict:
    per = lambda x: {"sampled": {"Food": {"mrr": x}, "Kitchen": {"mrr": x / 2}}}  # noqa: E731
    return {"mean": {"valid": per(valid), "test": per(test)}, "seeds": {"0": {}}}


def test_run_ablations_writes_the_tables_and_selects_lambdas_on_validation(tmp_path, monkeypatch):
    dataset = tmp_path / "data"
    (dataset / "tags").mkdir(parents=True)
    for name in ("items.parquet", "manifest.json"):
        (dataset / name).write_text("x")
    (dataset / "tags" / "vocab.json").write_text("{}")
    (dataset / "tags" / "meta.json").write_text("{}")
    calls = []

    def fake_grid(dataset_dir, variants, seeds, out_dir, base_cfg, jobs=1):
        calls.append((str(dataset_dir), [v for v, _ in variants]))
        valid = {v: 0.01 for v, _ in variants}
        valid["lambda-0.4-0.15"] = 0.05  # the best on validation
        return {"results": {v: _fake_result(valid[v], 0.02) for v, _ in variants},
                "protocol": {v: {"tags": "fake tags", "data": "fake data"} for v, _ in variants}}

    def fake_tags(dataset_dir, cfg, steps):
        assert cfg.match_backend == "keyword" and tuple(steps) == ("match",)
        assert (dataset_dir / "tags" / "vocab.json").is_file()  # the same vocabulary, copied
        (dataset_dir / "tags" / "scores.parquet").write_text("x")

    monkeypatch.setattr(ablations, "run_grid", fake_grid)
    monkeypatch.setattr("temarec.tags.run_tags", fake_tags)
    summary = ablations.run_ablations(dataset, [0], tmp_path / "abl", Config())

    keyword_dir = tmp_path / "abl" / "keyword" / "dataset"
    assert calls[1] == (str(keyword_dir), [ablations.KEYWORD_ROW])
    assert (keyword_dir / "items.parquet").is_symlink() and not (keyword_dir / "tags").is_symlink()
    assert summary["lambda_selected"] == "0.4,0.15"
    assert [r["variant"] for r in summary["table4"]] == [v for v, _, _ in ablations.TABLE4]
    assert summary["table4"][0]["test_mrr"] == pytest.approx({"Food": 2.0, "Kitchen": 1.0, "mean": 1.5})
    md = (tmp_path / "abl" / "ablations.md").read_text()
    for paper in ("5.03", "5.56", "5.89", "6.41", "6.13", "6.30", "6.29", "6.14"):
        assert paper in md
    assert "Selected on validation: lambda1, lambda2 = 0.4,0.15" in md
    assert json.loads((tmp_path / "abl" / "ablations.json").read_text())["lambda_selected"] == "0.4,0.15"


def test_ablations_need_a_tag_vocabulary(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(ValueError, match="temarec tags --dataset"):
        ablations.keyword_dataset(tmp_path / "data", tmp_path / "kw", Config())


def test_tables_select_their_variants_and_share_the_full_model():
    table4 = [v for v, _ in ablations.variants(("4",))]
    assert table4 == ["base-id-merged", "tag-matched-merged", "tag-matched-multi", "tema"]
    both = [v for v, _ in ablations.variants(("5", "6"))]
    assert both == ["tags-onehot", "tags-multihot", "tema", "tags-topr", "tags-threshold"]
    assert len(ablations.variants(("lambda",))) == 16
    with pytest.raises(ValueError, match="choose among 4, 5, 6, lambda"):
        ablations.variants(("7",))


def test_later_calls_add_their_tables_to_the_earlier_ones(tmp_path, monkeypatch):
    dataset = tmp_path / "data"
    (dataset / "tags").mkdir(parents=True)
    (dataset / "tags" / "vocab.json").write_text("{}")
    (dataset / "tags" / "meta.json").write_text("{}")
    done: dict = {}

    def fake_grid(dataset_dir, variants, seeds, out_dir, base_cfg, jobs=1):
        done.setdefault(str(out_dir), set()).update(v for v, _ in variants)
        return fake_summary(out_dir)

    def fake_summary(out_dir):
        names = done.get(str(out_dir), set())
        return {"results": {v: _fake_result(0.01, 0.02) for v in names},
                "protocol": {v: {"tags": "t", "data": "d"} for v in names}}

    def fake_tags(dataset_dir, cfg, steps):
        (dataset_dir / "tags" / "scores.parquet").write_text("x")

    def keyword_runs(out_dir):  # what summarise finds on disk
        return fake_summary(out_dir)

    monkeypatch.setattr(ablations, "run_grid", fake_grid)
    monkeypatch.setattr(ablations, "summarise", keyword_runs)
    monkeypatch.setattr("temarec.tags.run_tags", fake_tags)
    first = ablations.run_ablations(dataset, [0], tmp_path / "abl", Config(), tables=("4",))
    assert [r["variant"] for r in first["table4"]] == [v for v, _, _ in ablations.TABLE4]
    # Table V holds the full model only (it belongs to every table): no table, as no lambda grid
    assert first["table5"] == [] and first["table6"] == [] and first["lambda_selected"] is None
    text = (tmp_path / "abl" / "ablations.md").read_text()
    assert "Table IV" in text and "Table V:" not in text and "Table VI" not in text
    # the keyword row's finished run is found again by a call that does not train it
    metrics = tmp_path / "abl" / "keyword" / "grid" / "runs" / ablations.KEYWORD_ROW / "seed0" / "metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text("{}")
    second = ablations.run_ablations(dataset, [0], tmp_path / "abl", Config(), tables=("5",))
    assert [r["variant"] for r in second["table5"]] == [v for v, _, _ in ablations.TABLE5]
    assert [r["variant"] for r in second["table4"]] == [v for v, _, _ in ablations.TABLE4]


def _frames(ranks_by_seed: dict[int, list[int]]) -> dict:
    """Per-instance ranks of one variant: both domains' test instances get the same ranks."""
    n = len(next(iter(ranks_by_seed.values())))
    return significance_frames({seed: ranks + ranks for seed, ranks in ranks_by_seed.items()},
                               domain=np.repeat([0, 1], n))


def test_rows_and_the_selected_lambdas_are_tested_against_the_full_model():
    rng = np.random.default_rng(0)
    full = {s: rng.integers(2, 50, 400).tolist() for s in (0, 1)}
    better = {s: [max(1, r - 1) for r in full[s]] for s in (0, 1)}  # one rank better on every instance
    same = {s: list(full[s]) for s in (0, 1)}
    results = {"tema": _fake_result(0.01, 0.02), "tags-onehot": _fake_result(0.01, 0.02),
               "tags-multihot": _fake_result(0.01, 0.02), "lambda-0.4-0.15": _fake_result(0.05, 0.02)}
    results["tema"]["seeds"] = {"0": {}, "1": {}}  # the paper's cell has two seeds, the others one
    frames = {"tema": _frames(full), "tags-onehot": _frames(better), "tags-multihot": _frames(same),
              "lambda-0.4-0.15": _frames({0: better[0]})}
    protocols = {v: {"tags": "t", "data": "d"} for v in results}
    summary = ablations.summarise_ablations(results, protocols, frames)

    onehot, multihot, full_row = summary["table5"]
    # across seeds: each instance's reciprocal rank averaged over the seeds, then the mean difference
    expected = float(np.mean(np.mean([[1 / b for b in better[s]] for s in (0, 1)], axis=0)
                             - np.mean([[1 / f for f in full[s]] for s in (0, 1)], axis=0)))
    food = onehot["vs_full"]["Food"]
    assert food["mean_diff"] == pytest.approx(expected) and food["seeds"] == [0, 1]
    assert food["ci95"][0] > 0 and food["p"] < 1e-3
    assert multihot["vs_full"]["Kitchen"]["mean_diff"] == 0 and multihot["vs_full"]["Kitchen"]["p"] == 1.0
    assert full_row["vs_full"] is None  # the full model is the reference
    versus = summary["lambda_selected_vs_paper"]
    assert summary["lambda_selected"] == "0.4,0.15" and versus["Food"]["seeds"] == [0]  # the one seed both ran
    assert summary["lambda_grid_seeds"] == {"0.3,0.1": 2, "0.4,0.15": 1}

    md = ablations.format_ablations(summary)
    assert "Food: Δ vs full" in md
    assert f"| {100 * food['mean_diff']:+.2f} [" in md and "p < 0.001" in md
    assert "| 0.3 |  | 0.75 (s0,1) |  |  |" in md and "| 0.4 |  |  | 3.75 (s0) |  |" in md  # mean of the domains
    assert "(sN,M): the seeds a cell holds" in md
    assert "Against the paper's lambdas, same test instances, seeds 0: Food +" in md

    results["tema"] = _fake_result(0.09, 0.02)  # now the paper's own cell validates best
    summary = ablations.summarise_ablations(results, protocols, frames)
    assert summary["lambda_selected"] == "0.3,0.1" and summary["lambda_selected_vs_paper"] is None
    md = ablations.format_ablations(summary)
    assert "validation picks the full model itself" in md and "Against the paper's lambdas" not in md


def test_without_per_instance_ranks_the_tables_carry_no_test_column():
    results = {"tema": _fake_result(0.01, 0.02), "tags-onehot": _fake_result(0.01, 0.02)}
    summary = ablations.summarise_ablations(results, {v: {"tags": "t", "data": "d"} for v in results})
    assert summary["table5"][0]["vs_full"] is None
    assert "Δ vs full |" not in ablations.format_ablations(summary)


def test_a_missing_dataset_leaves_no_ablation_folder(tmp_path):
    with pytest.raises(ValueError, match="not a temarec dataset folder"):
        ablations.run_ablations(tmp_path / "nowhere", [0], tmp_path / "out" / "ablations", Config(), tables=("lambda",))
    assert not (tmp_path / "out").exists()


def test_a_lambda_grid_of_the_callers_values_keeps_the_full_model_as_its_reference():
    names = dict(ablations.variants(("lambda",), lambda1=(0.3,), lambda2=(0.2, 0.3)))
    assert list(names) == ["tema", "lambda-0.3-0.2", "lambda-0.3-0.3"]  # the paper's cell, though not asked for
    assert Config().replace(**names["lambda-0.3-0.3"]).model.settings.lambdas == (0.3, 0.3)
    assert [ablations.lambda_cell(n) for n in names] == [(0.3, 0.1), (0.3, 0.2), (0.3, 0.3)]
    assert ablations.lambda_cell("tags-onehot") is None and ablations.lambda_cell("lambda-a-b-c") is None
    assert ablations.lambda_cell(ablations.lambda_name(0.0001, 25)) == (0.0001, 25.0)  # every allowed value reads back


@pytest.mark.parametrize("text, why", [("0.1,x", "comma list of numbers"), ("-0.1", "each 0 or between"),
                                       ("0.00001", "each 0 or between"), ("0.1,0.1", "distinct"), ("", "numbers")])
def test_lambda_values_name_what_is_wrong(text, why):
    with pytest.raises(ValueError, match=why):
        ablations.lambda_values(text, "--lambda2")


def test_the_grid_table_shows_every_cell_the_folder_holds_beyond_the_papers_grid():
    valid = {"tema": 0.01, "lambda-0.3-0.2": 0.02, "lambda-0.3-0.3": 0.04, "lambda-0.5-0.05": 0.03}
    results = {v: _fake_result(x, 0.02) for v, x in valid.items()}
    summary = ablations.summarise_ablations(results, {v: {"tags": "t", "data": "d"} for v in results})
    assert summary["lambda_selected"] == "0.3,0.3"  # beyond the paper's lambda2 = 0.2 edge
    assert list(summary["lambda_grid_valid_mrr"]) == ["0.3,0.1", "0.3,0.2", "0.3,0.3", "0.5,0.05"]
    md = ablations.format_ablations(summary)
    assert "| lambda1 \\ lambda2 | 0.05 | 0.1 | 0.15 | 0.2 | 0.3 |" in md  # the paper's axes, extended
    assert "| 0.3 |  | 0.75 |  | 1.50 | 3.00 |" in md and "| 0.5 | 2.25 |  |  |  |  |" in md  # mean of domains
    assert "| 0.2 |  |  |  |  |  |" in md


def test_the_report_says_which_protocol_preset_encoders_and_tag_sources_produced_it():
    results = {v: _fake_result(0.01, 0.02) for v in ("tema", "tags-onehot", ablations.KEYWORD_ROW)}
    common = {"data": "d", "negatives": 999, "negatives_preset": "abxi", "training": "sampled softmax, 1024",
              "encoders": "text: all-MiniLM-L6-v2 (384-d), image: none"}
    protocols = {v: {**common, "tags": "mined + embedding matching"} for v in results}
    protocols[ablations.KEYWORD_ROW]["tags"] = "mined + keyword matching"
    md = ablations.format_ablations(ablations.summarise_ablations(results, protocols))
    assert "- protocol, sampled: the target against 999 stored negatives of its domain, negatives preset abxi" in md
    assert "- training: sampled softmax, 1024; encoders text: all-MiniLM-L6-v2 (384-d), image: none" in md
    assert "- tags, full model: mined + embedding matching" in md
    assert "- tags, Table IV's keyword row: mined + keyword matching" in md


def test_grid_cells_of_as_many_but_different_seeds_are_marked_with_their_seeds():
    results = {"tema": _fake_result(0.01, 0.02), "lambda-0.2-0.2": _fake_result(0.02, 0.02),
               "lambda-0.4-0.15": _fake_result(0.03, 0.02)}
    results["tema"]["seeds"] = {"2": {}}
    results["lambda-0.2-0.2"]["seeds"] = {"2": {}}
    results["lambda-0.4-0.15"]["seeds"] = {"1": {}}  # one seed like the others, but another one
    summary = ablations.summarise_ablations(results, {v: {"tags": "t", "data": "d"} for v in results})
    assert summary["lambda_grid_seed_lists"] == {"0.2,0.2": [2], "0.3,0.1": [2], "0.4,0.15": [1]}
    md = ablations.format_ablations(summary)
    assert "| 0.4 |  |  | 2.25 (s1) |  |" in md and "| 0.2 |  |  |  | 1.50 (s2) |" in md
    results["lambda-0.4-0.15"]["seeds"] = {"2": {}}
    md = ablations.format_ablations(ablations.summarise_ablations(results, {v: {"tags": "t", "data": "d"} for v in results}))
    assert "| 0.4 |  |  | 2.25 |  |" in md and "Seeds of every cell: 2." in md
