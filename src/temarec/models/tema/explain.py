"""What TEMA tells a user besides scores: why an item was recommended, and what a report says about a run.

Shape legend (all of models/tema/): B batch, L sequence length, D hidden size (q in the paper), N items of a
domain, M modalities, V views (S^{first}, S^{second}, S^{first+second}), E = V*M encoders, T tags, e a frozen
feature's size, P scored positions, S sampled negatives, U distinct items of a batch.
"""

from __future__ import annotations

from typing import Any

import torch

from temarec.models.tema.heads import HeadParts, modality_weights
from temarec.models.tema.items import CONTENT, MODALITIES, usable_modalities


@torch.no_grad()
def explain(model: Any, history: torch.Tensor, domain: int, local_item_ids: list[list[int]],
            top_tags: int = 5, parts: HeadParts | None = None) -> list[list[dict[str, Any]]]:
    """Why each item was recommended after each history (B, L): tags linking it to the history, modality shares.

    ``local_item_ids[b]`` are the recommended items of row b (local indices of ``domain``); one list of
    explanations per row. Tag contribution = w_item[t] * sum over history items of w[t] (shared tags,
    weighted). Modality share = that modality's part of the fused score sum_V w_V alpha_m P_m^V(item); absent
    modalities read 0. ``parts``: ``TEMA.score_parts``' second value for these rows, so that the shares cost K
    dot products per head instead of another pass of the encoders and the heads over the whole domain.
    """
    K = max(len(ids) for ids in local_item_ids)
    local = torch.tensor([ids + [0] * (K - len(ids)) for ids in local_item_ids], dtype=torch.long,
                         device=history.device)  # (B, K), padded with item 0 (ignored below)
    if parts is None:
        parts = model.score_parts(history, domain)[1]
    items = model.domain_candidates(domain)[:, local]  # (M, B, K, D)
    z = torch.einsum("vmbd,mbkd->vmbk", parts.states, items)  # (V, M, B, K) Sim / tau, eq. (12)
    log_p = z - parts.log_norm[..., None] + model.log_head_weights(domain)[:, :, None, None]  # eqs. (13), (16)
    probs = log_p.exp().sum(0)  # (M, B, K) sum over views of w_V alpha_m P_m^V
    shares = (probs / probs.sum(0).clamp(min=1e-30)).tolist()
    names = model.ctx.extras.get("tag_names", [])
    top_values = top_indices = None
    if "tag" in model.modalities:
        hist = model.items.tag_w[history].sum(1)  # (B, T) tag mass of each history
        contrib = model.items.tag_w[model.ctx.domain_slice(domain).start + local] * hist[:, None]  # (B, K, T)
        top = torch.topk(contrib, min(top_tags, contrib.shape[-1]), dim=-1)  # (B, K, top_tags)
        top_values, top_indices = top.values.tolist(), top.indices.tolist()
    out = []
    for b, ids in enumerate(local_item_ids):
        row = []
        for k in range(len(ids)):
            share = {m: 0.0 for m in ("id", "txt", "img", "tag")}
            share.update({m: shares[i][b][k] for i, m in enumerate(model.modalities)})
            tags: list[dict[str, Any]] = []
            if top_values is not None:
                tags = [{"tag": names[t] if t < len(names) else str(t), "weight": c}
                        for c, t in zip(top_values[b][k], top_indices[b][k]) if c > 0]
            row.append({"tags": tags, "modality_share": share})
        out.append(row)
    return out


def describe_sources(dataset: Any, cfg: Any) -> dict[str, str]:
    m = cfg.model.specific["tema"]
    mods = usable_modalities(dataset, m.modalities)
    encoders = "none (no text or image modality)"
    if any(x in CONTENT for x in mods):
        encoders = dataset.features_source()
    tags = "none (tag modality off)"
    if "tag" in mods:
        tags = f"{dataset.tag_source()}; selection {cfg.tags.selection}, representation {cfg.tags.representation}"
    weights = modality_weights(m.alpha, mods)
    notes = ["modality weights " + ", ".join(f"{k} {v:.2f}" for k, v in weights.items())]
    dropped = [x for x in m.modalities if x not in mods]
    if dropped or len(mods) < len(MODALITIES):
        notes[0] += f" (renormalised: {', '.join(x for x in MODALITIES if x not in mods)} not used"
        notes[0] += f"; {', '.join(dropped)} requested but missing)" if dropped else ")"
    d0, d1 = dataset.domains
    if m.views == "multi":
        reading = ("X = the target's domain, Y = the other" if m.view_reading == "target"
                   else f"X = {d0} always, Y = {d1}")
        notes.append(f"views S^{d0}, S^{d1}, S^{d0}+{d1} ({reading}; lambdas {m.lambdas[0]}, {m.lambdas[1]})")
    else:
        notes.append(f"one merged view S^{d0}+{d1} (ablation)")
    if m.fusion == "learned":
        notes.append("fusion learned (view and modality weights per target domain, softmax, initialised at the "
                     "weights above and trained on the likelihood of the eq. (16) mixture; trained values under "
                     "'learned', not the paper's fixed weights)")
    if m.head_loss == "separate" and len(mods) > 1:
        notes.append("head loss separate (alpha-weighted sum of each modality's NLL, not the paper's mixture)")
    temp = "learned" if m.learn_temperature else "fixed"
    sim = "cosine" if m.similarity == "cosine" else "dot-product (not the paper's cosine)"
    notes.append(f"{sim} similarity, temperature {m.temperature} ({temp}, per view and modality)")
    return {"encoders": encoders, "tags": tags, "notes": "; ".join(notes)}
