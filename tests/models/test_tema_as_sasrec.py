"""TEMA restricted to the ID modality, the merged view and a dot-product head (configs/tema-as-sasrec.yaml) is
SASRec: one encoder implementation, the same parameters from the same seed, the same loss and gradients, and the
same metrics after training, so every ablation row starts from the baseline it is compared with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from temarec.config import load_config
from temarec.runs import train_run

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tema-as-sasrec.yaml"
TRAIN = ["train.epochs=2", "train.threads=1", "train.batch_size=64", "model.dim=16", "model.heads=2"]


def _config(model: str, *extra: str):
    if model == "sasrec":
        return load_config(None, ["model.name=sasrec", *TRAIN, *extra])
    return load_config(CONFIG, [*TRAIN, *extra])


def _models(generated_dataset: Path, *extra: str):
    from temarec.data.dataset import Dataset
    from temarec.runs import build_model

    dataset = Dataset.load(generated_dataset)
    built = []
    for name in ("sasrec", "tema"):
        torch.manual_seed(7)
        built.append(build_model(dataset, _config(name, *extra)))
    return built


def test_same_seed_gives_the_same_parameters(generated_dataset):
    sasrec, tema = _models(generated_dataset)
    torch.testing.assert_close(tema.items.id_emb.weight, sasrec.item_emb.weight, rtol=0, atol=0)
    theirs = dict(sasrec.encoder.named_parameters())
    for name, p in tema.encoders.named_parameters():
        torch.testing.assert_close(p, theirs[name], rtol=0, atol=0)
    assert sum(p.numel() for p in tema.parameters() if p.requires_grad) == sum(p.numel() for p in sasrec.parameters())


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_same_loss_gradients_and_scores(generated_dataset, loss, one_thread):
    sasrec, tema = _models(generated_dataset, f"model.loss={loss}", "model.num_sampled=20")
    seqs = torch.tensor([[0, 0, 0, 3, 9, 1, 150], [2, 130, 12, 4, 4, 10, 200], [0, 0, 0, 0, 0, 11, 5]])
    grads = []
    for model in (sasrec, tema):
        model.train()
        torch.manual_seed(3)  # dropout masks and sampled negatives
        value = model.training_loss(seqs)
        value.backward()
        grads.append((value, model))
    (l_s, _), (l_t, _) = grads
    assert l_s.item() == l_t.item()
    torch.testing.assert_close(tema.items.id_emb.weight.grad, sasrec.item_emb.weight.grad, rtol=0, atol=0)
    theirs = dict(sasrec.encoder.named_parameters())
    for name, p in tema.encoders.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name].grad, rtol=0, atol=0)
    history = seqs[:, :-1]
    with torch.no_grad():
        for model in (sasrec, tema):
            model.eval()
        for d in (0, 1):
            torch.testing.assert_close(tema.score_domain(history, d), sasrec.score_domain(history, d), rtol=0, atol=0)


def test_trained_runs_give_identical_metrics(generated_dataset, tmp_path):
    metrics = {}
    for name in ("sasrec", "tema"):
        train_run(generated_dataset, _config(name, "model.loss=sampled", "model.num_sampled=30"), tmp_path / name)
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    s, t = metrics["sasrec"], metrics["tema"]
    assert s["test"] == t["test"] and s["valid"] == t["valid"]
    assert s["test"]["full"]["Food"]["mrr"] > 0 and s["test"]["sampled"]["Kitchen"]["n"] > 0  # a real report


@pytest.mark.parametrize("setting", ["model.tema.item_fusion=true", "model.tema.positions=oldest",
                                     "model.tema.cold_ids=zero", "model.tema.empty_state=learned",
                                     "model.tema.similarity=cosine", "model.tema.temperature=0.5",
                                     "model.tema.sampled_correction=true"])
def test_each_setting_of_the_config_is_needed(generated_dataset, setting, one_thread):
    """Turning any one of them back to TEMA's side changes the loss or the scores: the config is minimal and
    the equality above is not vacuous."""
    sasrec, tema = _models(generated_dataset, "model.loss=sampled", "model.num_sampled=20", setting)
    seqs = torch.tensor([[0, 0, 0, 3, 9, 1, 150], [2, 130, 12, 4, 4, 10, 200], [0, 0, 0, 0, 0, 11, 5]])
    outputs = []
    for model in (sasrec, tema):
        model.eval()
        torch.manual_seed(3)  # the same sampled negatives
        with torch.no_grad():
            outputs.append(torch.cat([model.training_loss(seqs)[None], model.score_domain(seqs[:, :-1], 1).flatten()]))
    assert not torch.equal(outputs[0], outputs[1])
