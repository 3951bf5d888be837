import json

import pytest
import torch

from temarec.checkpoint import load_state, save_state
from temarec.cli import main
from temarec.config import load_config
from temarec.evaluation import METRIC_ORDER
from temarec.data.batches import pad_histories
from temarec.runs import load_run, train_run
from temarec.train import STATE


@pytest.fixture(scope="module")
def sasrec_run(generated_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "sasrec"
    cfg = load_config(None, ["train.epochs=3", "model.dim=16", "data.max_len=10", "train.batch_size=64",
                             "model.name=sasrec"])
    train_run(generated_dataset, cfg, out)
    return out


def test_metrics_json_has_the_documented_shape(sasrec_run):
    m = json.loads((sasrec_run / "metrics.json").read_text())
    assert set(m) >= {"protocol", "valid", "test", "timing"}
    for split in ("valid", "test"):
        for protocol in ("sampled", "full"):
            for domain in ("Food", "Kitchen"):
                values = m[split][protocol][domain]
                assert set(METRIC_ORDER) <= set(values)
                assert all(0.0 <= values[k] <= 1.0 for k in METRIC_ORDER)
    assert set(m["timing"]) >= {"train_s", "epoch_s_median", "peak_rss_mb"}
    assert m["protocol"]["negatives"] == 999 and "generated-world" in m["protocol"]["data"]
    lines = (sasrec_run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    # the selected checkpoint is the best validation epoch
    best = max(lines, key=lambda x: json.loads(x)["valid_mrr"])
    assert m["selected_epoch"] == json.loads(best)["epoch"]


def test_save_load_gives_the_same_scores(sasrec_run, generated_dataset):
    model, ds, cfg = load_run(sasrec_run)
    hist = pad_histories(ds.test["history"].tolist()[:16], cfg.data.max_len)
    with torch.no_grad():
        a = model.score_domain(hist, 1)
    model2, _, _ = load_run(sasrec_run)
    with torch.no_grad():
        b = model2.score_domain(hist, 1)
    assert torch.equal(a, b)
    valid_before = json.loads((sasrec_run / "metrics.json").read_text())["test"]
    assert main(["evaluate", "--run", str(sasrec_run), "--json"]) == 0
    # re-evaluation of the saved checkpoint reproduces the recorded test metrics
    from temarec.runs import evaluate_run

    again = evaluate_run(sasrec_run)["test"]
    assert again["sampled"]["Food"]["mrr"] == pytest.approx(valid_before["sampled"]["Food"]["mrr"])


def test_resume_continues_after_the_last_epoch(generated_dataset, tmp_path, tiny):
    out = tmp_path / "run"
    cfg = load_config(None, tiny(**{"model.name": "gru4rec", "train.epochs": "1"}))
    train_run(generated_dataset, cfg, out)
    cfg2 = cfg.replace(**{"train.epochs": "3"})
    train_run(generated_dataset, cfg2, out, resume=True)
    epochs = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    assert json.loads((out / "run.json").read_text())["resumes"] == [
        {"after_epoch": 1, "changed": {"train.epochs": [1, 3]}}]


def test_a_resumed_runs_training_time_counts_the_earlier_processes(generated_dataset, tmp_path, tiny):
    out = tmp_path / "run"
    cfg = load_config(None, tiny(**{"model.name": "gru4rec", "train.epochs": "1"}))
    train_run(generated_dataset, cfg, out)
    state = load_state(out / STATE)
    assert state["elapsed_s"] > 0
    state["elapsed_s"] += 1000.0  # as if the first process had run 1000 s longer
    save_state(out / STATE, state)
    train_s = train_run(generated_dataset, cfg.replace(**{"train.epochs": "2"}), out, resume=True)["timing"]["train_s"]
    assert 1000.0 < train_s < 1000.0 + 600.0


def test_resume_refuses_settings_that_change_the_model(generated_dataset, tmp_path, tiny):
    out = tmp_path / "run"
    cfg = load_config(None, tiny(**{"model.name": "gru4rec", "train.epochs": "1"}))
    train_run(generated_dataset, cfg, out)
    before = (out / "config.json").read_text()
    other = cfg.replace(**{"train.epochs": "3", "model.dim": "32", "train.lr": "0.1"})
    with pytest.raises(ValueError, match=r"model.dim 16 -> 32, train.lr 0.001 -> 0.1.*--config") as err:
        train_run(generated_dataset, other, out, resume=True)
    assert "train.epochs" in str(err.value)  # named among what may change
    assert (out / "config.json").read_text() == before
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_early_stopping_respects_patience(generated_dataset, tmp_path, tiny):
    cfg = load_config(None, tiny(**{"model.name": "sasrec", "train.epochs": "50", "train.patience": "1",
                                               "train.lr": "1e-9"}))
    m = train_run(generated_dataset, cfg, tmp_path / "run")
    assert m["timing"]["epochs"] < 50


def test_pop_beats_random_and_cli_end_to_end(generated_dataset, tmp_path, capsys):
    for model in ("random", "pop"):
        assert main(["train", "--dataset", str(generated_dataset), "--model", model, "--out",
                     str(tmp_path / model)]) == 0
    out = capsys.readouterr().out
    assert "protocol:" in out and "encoders:" in out and "tags:" in out and "data:" in out
    assert "training:  none: fitted from the training interactions" in out
    mrr = {m: json.loads((tmp_path / m / "metrics.json").read_text())["test"]["sampled"]["Kitchen"]["mrr"]
           for m in ("random", "pop")}
    assert mrr["pop"] > 2 * mrr["random"]


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["train", "--dataset", str(tmp_path), "--model", "pop", "--out", str(tmp_path / "r")]) == 2
    assert "temarec prepare" in capsys.readouterr().err
    assert main(["train", "--dataset", str(tmp_path), "--model", "bert", "--out", str(tmp_path / "r")]) == 2
    assert "model.name must be one of" in capsys.readouterr().err


def test_every_report_names_the_negatives_preset(tmp_path, tiny, capsys):
    from temarec.config import DataConfig
    from temarec.data.synthetic import write_synthetic
    from temarec.evaluation import format_report
    from temarec.runs import evaluate_run

    data = write_synthetic(tmp_path / "data", DataConfig(num_negatives=50), n_users=120, items_per_genre=10)
    out = tmp_path / "run"
    m = train_run(data, load_config(None, tiny(**{"model.name": "pop", "eval.negatives": "abxi"})), out)
    assert m["protocol"]["negatives_preset"] == "abxi" and "distinct" in m["protocol"]["negatives_rule"]
    assert "preset abxi" in format_report(m)
    again = evaluate_run(out, negatives="c2dsr")
    assert again["protocol"]["negatives_preset"] == "c2dsr"
    assert again["test"]["sampled"] != m["test"]["sampled"]  # other candidates, other ranks
    assert main(["evaluate", "--run", str(out), "--negatives", "abxi"]) == 0
    assert "preset abxi" in capsys.readouterr().out
    assert main(["evaluate", "--run", str(out), "--negatives", "nope"]) == 2
    assert capsys.readouterr().err.strip().endswith("eval.negatives must be c2dsr or abxi, got 'nope'")
