"""TEMA's item side, eqs. (3)-(9): one D-wide vector per modality and the fused item embedding e_item.

Shape legend (all of models/tema/): B batch, L sequence length, D hidden size (q in the paper), N items of a
domain, M modalities, V views (S^{first}, S^{second}, S^{first+second}), E = V*M encoders, T tags, e a frozen
feature's size, P scored positions, S sampled negatives, U distinct items of a batch.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from temarec.models.base import ModelContext

log = logging.getLogger(__name__)

MODALITIES = ("id", "img", "txt", "tag")  # the order of alpha1 (id), alpha2 (img), alpha3 (txt); tag gets the rest
CONTENT = ("img", "txt")  # frozen feature matrices, eqs. (5)-(6)
# Initial std of the ID table E_id, as SASRec's. Adam moves every entry by about lr per step whatever the
# gradient's scale, so a row's direction (all that a cosine sees) turns at a rate ~ lr / ||row||: at std D^-0.5
# (rows of norm 1) TEMA's ID head learned several times more slowly per epoch on ABXI (docs/BENCHMARKS.md)
ID_STD = 0.02


class ItemEmbeddings(nn.Module):
    """Per-modality item vectors e_m (eqs. 3-7), each of size D, and the fused item embedding (eq. 9).

    ``id``: learnable rows, zeroed for items never seen in training (cold start: content only) unless
    ``zero_cold`` is off (then they keep their rows, as SASRec's item embedding does).
    ``img``/``txt``: frozen features (non-persistent buffers, reloaded from the dataset folder), projected to D
    without bias, so an item without the feature gets a zero vector. ``tag``: w_v @ E_tag with learnable E_tag.
    """

    def __init__(self, dim: int, ctx: ModelContext, modalities: tuple[str, ...], fuse: bool = True,
                 zero_cold: bool = True):
        super().__init__()
        n, self.modalities = ctx.n_items, modalities
        raw_dims = []
        if "id" in modalities:
            self.id_emb = nn.Embedding(1 + n, dim, padding_idx=0)  # eq. (4), row 0 = padding
            nn.init.normal_(self.id_emb.weight, std=ID_STD)
            with torch.no_grad():
                self.id_emb.weight[0].zero_()  # padding
            counts = ctx.item_counts if ctx.item_counts is not None and zero_cold else [1.0] * n
            known = torch.cat([torch.zeros(1), (torch.as_tensor(counts, dtype=torch.float32) > 0).float()])
            self.register_buffer("id_known", known)  # (1 + n,)
            self.zero_cold = zero_cold
            raw_dims.append(dim)
        self.proj = nn.ModuleDict()
        for m in CONTENT:
            if m in modalities:
                matrix, mask = ctx.extras["features"][m]  # (n, e), (n,)
                table = torch.zeros(1 + n, matrix.shape[1])
                table[1:] = torch.as_tensor(matrix, dtype=torch.float32) * torch.as_tensor(mask)[:, None]
                self.register_buffer(f"{m}_raw", table, persistent=False)  # eqs. (5)-(6), frozen
                self.proj[m] = nn.Linear(matrix.shape[1], dim, bias=False)
                raw_dims.append(matrix.shape[1])
        if "tag" in modalities:
            w = torch.as_tensor(ctx.extras["tag_vectors"], dtype=torch.float32)  # (n, T)
            self.register_buffer("tag_w", torch.cat([torch.zeros(1, w.shape[1]), w]), persistent=False)
            # E_tag, eqs. (3)/(7): rows of norm ~1, so that at initialisation items sharing tags are already
            # similar (a random projection of the multi-hot vectors); unlike random ID rows they carry a prior
            self.tag_emb = nn.Parameter(torch.randn(w.shape[1], dim) * dim ** -0.5)
            raw_dims.append(dim)
        # eq. (9): two-layer GELU MLP over [e_id ⊕ e_img ⊕ e_tex ⊕ e_tag] (raw sizes) to the model's size q = D;
        # without ``fuse`` (model.tema.item_fusion off) every encoder reads its own modality's vector only
        self.fuse = nn.Sequential(nn.Linear(sum(raw_dims), dim), nn.GELU(), nn.Linear(dim, dim)) if fuse else None

    def forward(self, ids: torch.Tensor, fuse: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ids (*) -> (modality vectors (M, *, D), fused embedding (*, D), or None without ``fuse`` or without eq. 9's
        MLP); zero at padding."""
        vecs, raws = [], []
        for m in self.modalities:
            if m == "id":
                v = self.id_emb(ids) * self.id_known[ids, None] if self.zero_cold else self.id_emb(ids)  # eq. (4)
                raw = v
            elif m == "tag":
                v = raw = self.tag_w[ids] @ self.tag_emb  # eq. (7): sum_i w_i E_tag[i]
            else:
                raw = getattr(self, f"{m}_raw")[ids]  # eqs. (5)-(6)
                v = self.proj[m](raw)
            vecs.append(v)
            raws.append(raw)
        if not fuse or self.fuse is None:  # scoring needs the per-modality matrices E_m only (eqs. 12-13)
            return torch.stack(vecs), None
        fused = self.fuse(torch.cat(raws, -1)) * (ids > 0)[..., None]  # eq. (9)
        return torch.stack(vecs), fused


def usable_modalities(dataset: Any, requested: tuple[str, ...], log_drop: bool = False) -> tuple[str, ...]:
    """``requested`` minus "img" when the feature store has no image features (logged); errors name the command."""
    mods = [m for m in MODALITIES if m in requested]
    root = dataset.root
    if any(m in CONTENT for m in mods):
        try:
            available = dataset.feature_meta()["modalities"]
        except FileNotFoundError as exc:
            raise ValueError(f"model.tema.modalities includes {[m for m in mods if m in CONTENT]} but {root} has no "
                             f"features; run `temarec features --dataset {root}` (or set model.tema.modalities to "
                             "leave them out)") from exc
        if "txt" in mods and "txt" not in available:
            raise ValueError(f"model.tema.modalities includes txt but {root}/features has no text features; run "
                             f"`temarec features --dataset {root}` with a text encoder")
        if "img" in mods and "img" not in available:
            if log_drop:
                log.info("no image features in %s/features: TEMA drops the image modality and renormalises the "
                         "modality weights", root)
            mods.remove("img")
    if not mods:
        raise ValueError(f"no usable modality left of {requested}; add id or compute features")
    return tuple(mods)
