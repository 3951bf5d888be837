"""ONNX export: onnxruntime gives PyTorch's top-k; models without an encoder say so clearly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from temarec.cli import main
from temarec.serve.onnx import ExportError, OnnxRecommender, export_onnx

pytest.importorskip("onnxruntime")

HISTORIES = [["F00001", "K01002", "F01003", "K01004"], ["K03005"], ["F00002"] * 25,
             ["F07001", "K06002", "K06003", "F04001", "K00001", "F00004", "K07007", "F06006", "K05005", "F03003",
              "K02002", "F02002"]]


def check_parity(export_dir, rec) -> None:
    onnx = OnnxRecommender(export_dir)
    for domain in rec.domains:
        assert onnx.item_ids[domain] == rec.item_ids(domain)
        got = onnx.scores(HISTORIES, domain)  # (B, N)
        for row, history in enumerate(HISTORIES):
            want = rec.recommend(history, domain, k=10, exclude_seen=False)
            np.testing.assert_allclose(got[row][[onnx.item_ids[domain].index(i) for i in want.item_ids]],
                                       [r["score"] for r in want], rtol=1e-4, atol=1e-5)
            assert onnx.top_k(history, domain, k=10) == want.item_ids


def test_sasrec_onnx_export_gives_the_same_top_k_as_pytorch(trained_run, recommender, tmp_path):
    out = export_onnx(trained_run("sasrec"), tmp_path / "sasrec")
    meta = json.loads((out / "export.json").read_text())
    assert meta["model"] == "sasrec" and meta["history_length"] == 10 and meta["dim"] == 16
    assert np.load(out / "items_Kitchen.npy").shape == (len(recommender("sasrec").item_ids("Kitchen")), 16)
    check_parity(out, recommender("sasrec"))
    onnx = OnnxRecommender(out)  # shorter left padding, same state
    tokens = onnx.tokens(HISTORIES[:2])
    full = onnx.session.run(["state"], {"history": tokens})[0]
    short = onnx.session.run(["state"], {"history": tokens[:, -4:]})[0]
    np.testing.assert_allclose(full, short, rtol=1e-4, atol=1e-5)


def test_gru4rec_export_through_the_cli_gives_the_same_top_k(trained_run, recommender, tmp_path, capsys):
    assert main(["export-model", "--run", str(trained_run("gru4rec")), "--out", str(tmp_path / "gru")]) == 0
    check_parity(tmp_path / "gru", recommender("gru4rec"))


@pytest.mark.parametrize("model, reason", [("pop", "no sequence encoder"), ("random", "no sequence encoder"),
                                           ("tema", "not supported")])
def test_models_without_one_state_vector_are_refused_with_the_reason(trained_run, tmp_path, model, reason):
    with pytest.raises(ExportError, match=reason):
        export_onnx(trained_run(model), tmp_path / model)
    assert not (tmp_path / model).exists()


def test_export_into_a_non_empty_folder_is_refused_and_leaves_it_untouched(trained_run, recommender, tmp_path,
                                                                           capsys):
    """Issue 17 #8: export-model --out DIR overwrote files inside an existing non-empty DIR."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "encoder.onnx").write_text("my own file")
    code = main(["export-model", "--run", str(trained_run("sasrec")), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "exists and is not empty" in err and "--overwrite" in err and "Traceback" not in err
    assert [p.name for p in out.iterdir()] == ["encoder.onnx"] and (out / "encoder.onnx").read_text() == "my own file"
    assert main(["export-model", "--run", str(trained_run("sasrec")), "--out", str(out), "--overwrite"]) == 0
    check_parity(out, recommender("sasrec"))
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary sibling left
