"""bench: the grid trains every (model, seed), aggregates correctly, writes tables and plots, and resumes."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from temarec import grid as bench
from temarec.cli import main
from temarec.config import Config
from temarec.data.synthetic import write_synthetic

MODELS = ("pop", "sasrec")
SEEDS = (0, 1)
TINY = ["train.epochs=2", "model.dim=16", "data.max_len=10", "train.threads=1", "train.batch_size=512"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_config() -> Config:
    return Config().replace(**dict(kv.split("=", 1) for kv in TINY))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("data") / "world")


@pytest.fixture(scope="module")
def benched(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "b"
    argv = ["bench", "--dataset", str(world), "--models", ",".join(MODELS), "--seeds", str(len(SEEDS)),
            "--out", str(out)]
    for kv in TINY:
        argv += ["--set", kv]
    assert main(argv) == 0
    return out


def test_seed_list_and_model_variants():
    assert bench.seed_list(3) == [0, 1, 2]
    assert bench.seed_list("3") == [0, 1, 2]
    assert bench.seed_list("0,5,7") == [0, 5, 7]
    assert bench.seed_list("0,") == [0]
    with pytest.raises(ValueError, match="seed 0 alone: --seeds 0,"):
        bench.seed_list("0")
    for bad in ("0", "x", "1,1", "-1,2"):
        with pytest.raises(ValueError, match="--seeds"):
            bench.seed_list(bad)
    assert bench.model_variants("pop, sasrec") == [("pop", {"model.name": "pop"}), ("sasrec", {"model.name": "sasrec"})]
    with pytest.raises(ValueError, match="--models"):
        bench.model_variants("pop,pop")
    # a row trains with its model's own training defaults (SR-GNN's batch of 100) unless the user set them
    assert bench.model_variants("srgnn,pinet") == [("srgnn", {"model.name": "srgnn", "train.batch_size": "100"}),
                                                   ("pinet", {"model.name": "pinet", "train.batch_size": "128"})]
    assert bench.model_variants("srgnn", frozenset({"train.batch_size"})) == [("srgnn", {"model.name": "srgnn"})]


def test_every_model_and_seed_has_a_run_folder(benched):
    for model in MODELS:
        for seed in SEEDS:
            run = bench.run_dir(benched, model, seed)
            assert (run / "metrics.json").is_file()
            assert json.loads((run / "config.json").read_text())["train"]["seed"] == seed
            assert json.loads((run / "config.json").read_text())["model"]["name"] == model


def test_results_json_mean_and_std_recomputed_from_the_runs(benched):
    results = json.loads((benched / "results.json").read_text())
    assert list(results["results"]) == list(MODELS)
    assert set(results["protocol"]) == set(MODELS)
    assert results["protocol"]["sasrec"]["model"] == "sasrec"
    for model in MODELS:
        r = results["results"][model]
        assert set(r["seeds"]) == {str(s) for s in SEEDS}
        runs = [json.loads((bench.run_dir(benched, model, s) / "metrics.json").read_text()) for s in SEEDS]
        for split in ("valid", "test"):
            for protocol in ("sampled", "full"):
                assert set(r["mean"][split][protocol]) == {"Food", "Kitchen"}
                for domain in ("Food", "Kitchen"):
                    for metric in ("mrr", "ndcg@5", "ndcg@10", "hr@10"):
                        values = [m[split][protocol][domain][metric] for m in runs]
                        assert r["mean"][split][protocol][domain][metric] == pytest.approx(sum(values) / len(values))
                        assert r["std"][split][protocol][domain][metric] == pytest.approx(statistics.stdev(values))
                        assert [r["seeds"][str(s)][split][protocol][domain][metric] for s in SEEDS] == values
    # seeds change SASRec's initialisation, so its numbers differ between seeds
    sasrec = results["results"]["sasrec"]["seeds"]
    assert sasrec["0"]["test"]["sampled"]["Food"]["mrr"] != sasrec["1"]["test"]["sampled"]["Food"]["mrr"]


def test_results_md_has_both_protocol_tables_every_model_and_domain(benched):
    md = (benched / "results.md").read_text()
    assert "## Test, sampled protocol" in md and "## Test, full ranking" in md
    assert "generated-world" in md and "seeds: 2 (0, 1)" in md and "encoders" in md and "tags" in md
    assert "negatives preset c2dsr" in md and "preset c2dsr)" in md  # the sampled tables name their preset
    for model in MODELS:
        assert f"| {model} | 2 |" in md or f"| {model} † | 2 |" in md
    for domain in ("Food", "Kitchen"):
        for metric in ("MRR", "NDCG@5", "NDCG@10"):
            assert f"{domain} {metric}" in md
    results = json.loads((benched / "results.json").read_text())["results"]
    m = results["sasrec"]["mean"]["test"]["sampled"]["Food"]["mrr"]
    s = results["sasrec"]["std"]["test"]["sampled"]["Food"]["mrr"]
    assert f"{100 * m:.2f} ± {100 * s:.2f}" in md


def test_plots_are_png_files(benched):
    import matplotlib.image

    for name in ("metrics.png", "curves.png"):
        path = benched / name
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert matplotlib.image.imread(path).shape[0] > 100
    assert not list(benched.glob("*.tmp"))


def test_rerun_skips_finished_runs(benched, world, monkeypatch):
    stamps = {p: p.stat().st_mtime_ns for p in benched.glob("runs/*/seed*/metrics.json")}
    assert len(stamps) == len(MODELS) * len(SEEDS)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("temarec.runs.train_run", no_training)
    results = bench.run_grid(world, bench.model_variants(MODELS), list(SEEDS), benched, tiny_config())
    assert list(results["results"]) == list(MODELS)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_summarise_rebuilds_reports_from_runs(benched):
    (benched / "results.md").unlink()
    (benched / "metrics.png").unlink()
    results = bench.summarise(benched)
    assert (benched / "results.md").is_file() and (benched / "metrics.png").is_file()
    assert results == json.loads((benched / "results.json").read_text())
    (benched / "curves.png").unlink()
    assert main(["bench", "--out", str(benched), "--summarise"]) == 0
    assert (benched / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_changed_config_is_refused_not_mixed(benched, world):
    other = tiny_config().replace(**{"train.epochs": "3"})
    with pytest.raises(ValueError, match="different config"):
        bench.run_grid(world, bench.model_variants(["sasrec"]), [0], benched, other)
    with pytest.raises(ValueError, match="overrides"):
        bench.run_grid(world, [("sasrec", {"model.name": "gru4rec"})], [0], benched, tiny_config())


def test_unfinished_run_is_replaced_and_new_seed_added(world, tmp_path):
    out = tmp_path / "b"
    partial = bench.run_dir(out, "pop", 0)
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("{}")  # crashed before writing metrics.json, nothing to resume
    bench.run_grid(world, bench.model_variants(["pop", "random"]), [0], out, tiny_config())
    assert (partial / "metrics.json").is_file()
    results = bench.run_grid(world, bench.model_variants(["pop"]), [0, 1], out, tiny_config())
    assert set(results["results"]["pop"]["seeds"]) == {"0", "1"}
    assert set(results["results"]["random"]["seeds"]) == {"0"}  # kept from the first call
    md = (out / "results.md").read_text()
    assert "seeds: 1 (0); 2 (0, 1)" in md


def test_runs_keep_per_instance_ranks_that_reproduce_their_metrics(benched):
    from temarec.significance import read_ranks

    run = bench.run_dir(benched, "sasrec", 0)
    ranks = read_ranks(run)
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("valid", "test"):
        for d, (domain, m) in enumerate(metrics[split]["sampled"].items()):
            part = ranks[(ranks["split"] == split) & (ranks["domain"] == d)]
            assert len(part) == m["n"]
            assert (1.0 / part["sampled"]).mean() == pytest.approx(m["mrr"])
            assert (1.0 / part["full"]).mean() == pytest.approx(metrics[split]["full"][domain]["mrr"])


def test_results_carry_the_paired_test_against_the_best_other_model(benched):
    results = json.loads((benched / "results.json").read_text())
    for protocol in ("sampled", "full"):
        for domain, by_model in results["significance"][protocol].items():
            best = max(MODELS, key=lambda m: results["results"][m]["mean"]["test"][protocol][domain]["mrr"])
            other = next(m for m in MODELS if m != best)
            assert by_model[best]["against"] == other and by_model[other]["against"] == best
            assert by_model[best]["seeds"] == list(SEEDS)
            assert 0.0 <= by_model[best]["across_seeds"]["p"] <= 1.0
            across = by_model[best]["across_seeds"]
            assert across["mean_diff"] == pytest.approx(-by_model[other]["across_seeds"]["mean_diff"])
            low, high = across["ci95"]
            assert low <= across["mean_diff"] <= high
            slices = results["slices"][protocol][domain][best]
            assert slices["cold"]["n"] + slices["warm"]["n"] == \
                results["results"][best]["seeds"]["0"]["test"][protocol][domain]["n"]
    md = (benched / "results.md").read_text()
    assert "## Is the difference real? (test split)" in md and "## Test MRR by slice" in md
    assert "| 95% interval |" in md


def test_every_model_is_tested_against_the_popularity_row(benched):
    results = json.loads((benched / "results.json").read_text())
    against = results["against_pop"]
    assert against["reference"] == "pop"
    for protocol in ("sampled", "full"):
        for domain, by_model in against["tests"][protocol].items():
            assert set(by_model) == {"sasrec"}  # every row but pop itself
            r = by_model["sasrec"]["across_seeds"]
            mean = results["results"]
            expected = (mean["sasrec"]["mean"]["test"][protocol][domain]["mrr"]
                        - mean["pop"]["mean"]["test"][protocol][domain]["mrr"])
            assert r["mean_diff"] == pytest.approx(expected)  # same seeds, same instances: the table's gap
            assert r["ci95"][0] <= r["mean_diff"] <= r["ci95"][1]
    md = (benched / "results.md").read_text()
    assert "## Above popularity? (test split, against `pop`)" in md


def test_runs_capped_while_improving_are_marked(benched):
    # two epochs with patience 10: early stopping never had a chance, so every trained run is marked
    results = json.loads((benched / "results.json").read_text())
    assert results["results"]["sasrec"]["still_improving_seeds"] == list(SEEDS)
    assert results["results"]["pop"]["still_improving_seeds"] == []
    assert "| sasrec † |" in (benched / "results.md").read_text()


def test_a_row_of_its_own_settings_wins_over_set_and_reads_a_config_file(tmp_path):
    yaml_file = tmp_path / "best.yaml"
    yaml_file.write_text("model:\n  name: tema\n  tema:\n    views: merged\n    modalities: [id]\n")
    assert bench.row_variant("pinet-full pinet model.loss=full") == (
        "pinet-full", {"train.batch_size": "128", "model.loss": "full", "model.name": "pinet"})
    assert bench.row_variant("p pinet train.batch_size=64") == (
        "p", {"train.batch_size": "64", "model.name": "pinet"})  # the row's own value, not π-Net's default
    name, overrides = bench.row_variant(f"best tema {yaml_file} model.dim=32")
    assert name == "best" and overrides == {"model.name": "tema", "model.tema.views": "merged",
                                            "model.tema.modalities": ["id"], "model.dim": "32"}
    cfg = tiny_config().replace(**{"model.loss": "sampled"}).replace(**overrides)
    assert cfg.model.specific["tema"].views == "merged" and cfg.model.dim == 32 and cfg.model.loss == "sampled"
    for bad, message in [("pinet", "--row expects 'NAME MODEL"), ("x pinet full", "neither section.key=value"),
                         (f"x sasrec {yaml_file}", "model 'sasrec', but its settings say model.name='tema'"),
                         (f"x tema {tmp_path / 'missing.yaml'}", "does not exist")]:
        with pytest.raises(ValueError, match=message):
            bench.row_variant(bad)


def test_bench_rows_train_with_their_own_settings_and_bad_ones_fail_before_training(world, tmp_path, capsys):
    out = tmp_path / "b"
    argv = ["bench", "--dataset", str(world), "--models", "pop", "--row", "sas-sampled sasrec model.loss=sampled "
            "model.num_sampled=8", "--seeds", "0,", "--out", str(out), *[a for kv in TINY for a in ("--set", kv)]]
    assert main(argv) == 0
    row = json.loads((bench.run_dir(out, "sas-sampled", 0) / "metrics.json").read_text())
    assert row["protocol"]["training"].startswith("sampled softmax: 8 shared negatives")
    assert "| sas-sampled |" in (out / "results.md").read_text()
    assert [v["name"] for v in json.loads((out / "bench.json").read_text())["variants"]] == ["pop", "sas-sampled"]
    bad = tmp_path / "bad"
    assert main(["bench", "--dataset", str(world), "--models", "pop", "--row", "x sasrec model.loss=fast",
                 "--out", str(bad), *[a for kv in TINY for a in ("--set", kv)]]) == 2
    err = capsys.readouterr().err
    assert "row x: model.loss must be full or sampled" in err and len(err.strip().splitlines()) == 1
    assert not (bad / "runs").exists()  # pop, the first row, did not train either


def test_jobs_train_runs_at_once_in_their_own_processes_with_the_same_results(benched, world, tmp_path, capsys):
    """--jobs 2: every run is the run it would be alone (the sequential bench's metrics, digit for digit), each
    trained in a process of its own."""
    out = tmp_path / "b"
    argv = ["bench", "--dataset", str(world), "--models", ",".join(MODELS), "--seeds", str(len(SEEDS)),
            "--out", str(out), "--jobs", "2"]
    for kv in TINY:
        argv += ["--set", kv]
    assert main(argv) == 0
    for model in MODELS:
        for seed in SEEDS:
            alone = json.loads((bench.run_dir(benched, model, seed) / "metrics.json").read_text())
            together = json.loads((bench.run_dir(out, model, seed) / "metrics.json").read_text())
            assert together["test"] == alone["test"] and together["valid"] == alone["valid"]
    assert "jobs" not in json.loads((out / "bench.json").read_text())  # how many at once is not part of a bench
    capsys.readouterr()
    argv[argv.index("--jobs") + 1] = "0"
    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == 2 and "--jobs: expected a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="the failing run needs a device this machine lacks")
def test_a_run_failing_in_its_process_ends_the_grid_with_its_error(world, tmp_path):
    """The error of a run trained in a worker process (here: a device this machine lacks, found by train_run)
    reaches the caller as itself, so the CLI prints its one line; the other run still finishes."""
    variants = [("sasrec", {"model.name": "sasrec"}), ("elsewhere", {"model.name": "pop", "train.device": "mps"})]
    with pytest.raises(ValueError, match="MPS is not available"):
        bench.run_grid(world, variants, [0], tmp_path / "b", tiny_config(), jobs=2)
    assert (bench.run_dir(tmp_path / "b", "sasrec", 0) / "metrics.json").is_file()
    assert not (bench.run_dir(tmp_path / "b", "elsewhere", 0) / "metrics.json").exists()
