"""Export a trained run for serving outside temarec: the sequence encoder as ONNX, the item matrices as .npy.

Written to ``OUT/`` (``pip install 'temarec[export]'``)::

    encoder.onnx         input "history" (B, L) int64 token ids, left-padded with 0, L <= history_length
                         -> output "state" (B, D) float32
    items_<Domain>.npy   (N_domain, D) float32, one row per item of the domain
    items_<Domain>.json  the data's item ids of those rows, in row order
    vocab.json           the data's item ids in token order: the token of vocab[i] is i + 1 (0 = padding)
    export.json          model, data, domains, L, D, and how to score

Scores of a domain are ``state @ items_<Domain>.T``; the highest scores are the recommendations. Histories
keep their most recent ``history_length`` items (the run's data.max_len); padding changes no score. Supported: sasrec and gru4rec. random and pop have
no encoder; TEMA scores a domain by combining several sequence views and modalities, which one state vector
cannot express, so it is not exported (serve it with ``temarec serve``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from temarec.extras import require
from temarec.fileio import atomic_dir
from temarec.serve.recommender import Recommender
from temarec.runs import model_class, model_names
from temarec.serve.scoring import Factorized, factorize, probe_histories

log = logging.getLogger(__name__)

OPSET = 18


class ExportError(ValueError):
    """The run cannot be exported; the message says why and what to use instead."""


def _unsupported(model_name: str) -> ExportError:
    why = model_class(model_name).not_factorizable
    exportable = [n for n in model_names() if model_class(n).factorizable]
    return ExportError(f"cannot export {model_name}: it {why}; exportable models: {', '.join(exportable)}. "
                       "Serve any model with `temarec serve`.")


def export_onnx(run_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write encoder.onnx, the item matrices and id lists of ``run_dir`` to ``out_dir``; returns ``out_dir``.

    The files are written into a temporary sibling folder that then becomes ``out_dir``: an existing non-empty
    ``out_dir`` is refused unless ``overwrite`` (and then replaced whole, never mixed with the new files).
    """
    out = Path(out_dir)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not empty; choose another --out or pass --overwrite to replace it")
    rec = Recommender.load(run_dir)
    fact = factorize(rec.model, exportable=True)
    if fact is None:
        raise _unsupported(rec.model_name)
    with atomic_dir(out) as tmp:
        _export_encoder(fact.state, probe_histories(rec.model), tmp / "encoder.onnx")
        _write_items(rec, fact, tmp)
        meta = _export_meta(rec, fact, rec.max_len)
        (tmp / "export.json").write_text(json.dumps(meta, indent=2))
    log.info("exported %s: encoder.onnx + item matrices of %s to %s", rec.model_name, ", ".join(rec.domains), out)
    return out


def _export_encoder(state: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """history (B, L) -> state (B, D) to ONNX; B and L dynamic.

    Uses torch's TorchScript-based exporter (``dynamo=False``): it writes SASRec in under a second and nn.GRU as
    one ONNX GRU op, where the torch.export-based exporter takes 10-60 s on 2 cores, unrolls the GRU step by step
    and needs onnxscript. Two rewrites of its output keep onnxruntime working (below); parity with PyTorch is
    tested in tests/serve/test_export.py.
    """
    onnx = require("onnx", "export", "ONNX export")
    chatter = io.StringIO()  # the exporter prints notes to stdout; keep them for --verbose
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
        # the exporter's deprecation notice, and tracer notes on nn.GRU's input-size checks
        for category in (DeprecationWarning, UserWarning, FutureWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        torch.onnx.export(state, (example,), str(path), dynamo=False, input_names=["history"],
                          output_names=["state"], dynamic_axes={"history": {0: "batch", 1: "length"}},
                          opset_version=OPSET)
    log.debug("torch.onnx.export:\n%s", chatter.getvalue())
    model = onnx.load(str(path))
    changed = _float_eye(model)
    changed = _ascending_ranges(model) or changed
    if changed:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        _replace_nodes(model, lambda n: [] if n.op_type == "Constant" and n.output[0] not in used else None)
        onnx.save(model, str(path))
    onnx.checker.check_model(model)


def _replace_nodes(model: Any, rewrite: Any) -> bool:
    """Replace each node for which ``rewrite(node)`` returns a list of nodes; returns whether any was replaced."""
    nodes, changed = [], False
    for node in model.graph.node:
        new = rewrite(node)
        changed = changed or new is not None
        nodes.extend(new if new is not None else [node])
    if changed:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return changed


def _float_eye(model: Any) -> bool:
    """Boolean EyeLike -> float EyeLike + Cast.

    SASRec's attention mask holds a boolean identity (``torch.eye(L, dtype=bool)``), which ONNX allows but
    onnxruntime has no kernel for.
    """
    from onnx import TensorProto, helper, shape_inference

    types = {v.name: v.type.tensor_type.elem_type for v in shape_inference.infer_shapes(model).graph.value_info}

    def rewrite(node: Any) -> list | None:
        if node.op_type != "EyeLike" or types.get(node.output[0]) != TensorProto.BOOL:
            return None
        as_float, eye = f"{node.name}_input_float", f"{node.name}_float"
        return [helper.make_node("Cast", [node.input[0]], [as_float], to=TensorProto.FLOAT),
                helper.make_node("EyeLike", [as_float], [eye], dtype=TensorProto.FLOAT),
                helper.make_node("Cast", [eye], [node.output[0]], to=TensorProto.BOOL)]

    return _replace_nodes(model, rewrite)


def _ascending_ranges(model: Any) -> bool:
    """Range(s, -1, -1) -> s - Range(0, s + 1, 1): the same positions s, s-1, ..., 0.

    SASRec counts positions from the right (``arange(L - 1, -1, -1)``). onnxruntime's GatherToSliceFusion turns
    Gather(table, Range(s, -1, -1)) into Slice(table, s, -1, -1), whose end -1 reads as "the last row": the
    slice comes out empty and the session fails. An ascending Range behind a Sub is not fused.
    """
    from onnx import helper, numpy_helper

    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    consts.update({i.name: numpy_helper.to_array(i) for i in model.graph.initializer})

    def rewrite(node: Any) -> list | None:
        if node.op_type != "Range" or any(i not in consts or consts[i].size != 1 or int(consts[i]) != -1
                                          for i in node.input[1:]):
            return None
        start, name = node.input[0], node.name or node.output[0]
        dtype = consts[node.input[2]].dtype
        one, zero = f"{name}_one", f"{name}_zero"
        return [helper.make_node("Constant", [], [one], value=numpy_helper.from_array(np.array(1, dtype))),
                helper.make_node("Constant", [], [zero], value=numpy_helper.from_array(np.array(0, dtype))),
                helper.make_node("Add", [start, one], [f"{name}_stop"]),
                helper.make_node("Range", [zero, f"{name}_stop", one], [f"{name}_up"]),
                helper.make_node("Sub", [start, f"{name}_up"], [node.output[0]])]

    return _replace_nodes(model, rewrite)


def _write_items(rec: Recommender, fact: Factorized, out: Path) -> None:
    (out / "vocab.json").write_text(json.dumps(rec.item_ids()))
    for d, name in enumerate(rec.domains):
        np.save(out / f"items_{name}.npy", fact.items[d].numpy().astype(np.float32))
        (out / f"items_{name}.json").write_text(json.dumps(rec.item_ids(name)))


def _export_meta(rec: Recommender, fact: Factorized, L: int) -> dict[str, Any]:
    return {
        "model": rec.model_name, "data": rec.dataset_name, "domains": list(rec.domains),
        "history_length": L, "dim": int(fact.items[0].shape[1]), "opset": OPSET,
        "inputs": {"history": f"(B, L) int64, L <= {L}: token ids from vocab.json (item vocab[i] -> i + 1), "
                              "most recent item last, left-padded with 0"},
        "outputs": {"state": "(B, D) float32"},
        "scoring": "scores = state @ items_<Domain>.npy.T; row r is the item items_<Domain>.json[r]",
    }


class OnnxRecommender:
    """Scores with an exported folder through onnxruntime (the parity check, and an example of use)."""

    def __init__(self, export_dir: str | Path):
        ort = require("onnxruntime", "export", "running the export")
        root = Path(export_dir)
        self.meta = json.loads((root / "export.json").read_text())
        self.session = ort.InferenceSession(str(root / "encoder.onnx"), providers=["CPUExecutionProvider"])
        self.token = {item: i + 1 for i, item in enumerate(json.loads((root / "vocab.json").read_text()))}
        self.items = {d: np.load(root / f"items_{d}.npy") for d in self.meta["domains"]}
        self.item_ids = {d: json.loads((root / f"items_{d}.json").read_text()) for d in self.meta["domains"]}

    def tokens(self, histories: list[list[str]]) -> np.ndarray:
        """Histories of the data's ids (unknown ids skipped) -> (B, L) left-padded token ids."""
        L = self.meta["history_length"]
        out = np.zeros((len(histories), L), dtype=np.int64)
        for row, hist in enumerate(histories):
            toks = [self.token[i] for i in hist if i in self.token][-L:]
            out[row, L - len(toks):] = toks
        return out

    def scores(self, histories: list[list[str]], domain: str) -> np.ndarray:
        state = self.session.run(["state"], {"history": self.tokens(histories)})[0]  # (B, D)
        return state @ self.items[domain].T  # (B, N)

    def top_k(self, history: list[str], domain: str, k: int = 10) -> list[str]:
        s = self.scores([history], domain)[0]
        return [self.item_ids[domain][j] for j in np.argsort(-s, kind="stable")[:k]]
