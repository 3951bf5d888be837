"""SASRec (Kang & McAuley, ICDM 2018) over the merged two-domain sequence, scoring one domain's items.

Shape legend: B batch, L sequence length, D hidden size, H heads, N items of a domain.

As in the paper, each sub-layer is x + Dropout(g(LayerNorm(x))) (Sec. III-C) and scores reuse the item embedding
(Sec. III-D, shared item embedding). From SASRec.pytorch: item embeddings scaled by sqrt(D) and a final LayerNorm.
Our one change: positions are counted from the right, so the most recent item always has position 0 and adding
left padding changes nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from temarec.config import ModelConfig
from temarec.models.attention import StackedEncoders
from temarec.models.base import ModelContext, TiedItemModel


class SASRec(TiedItemModel):
    """Item embedding -> ``cfg.layers`` causal blocks (positions counted from the right) -> final LayerNorm;
    scores with the item embedding.

    The encoder is ``StackedEncoders`` with one encoder: the implementation TEMA runs its V*M encoders with. A
    TEMA restricted to the ID modality, the merged view and a plain dot-product head (configs/tema-as-sasrec.yaml)
    computes exactly this model: same parameters from the same seed, same losses, same metrics
    (tests/models/test_tema_as_sasrec.py).
    """

    name = "sasrec"

    def __init__(self, cfg: ModelConfig, ctx: ModelContext):
        super().__init__(cfg, ctx)
        D = cfg.dim
        self.item_emb = nn.Embedding(1 + ctx.n_items, D, padding_idx=0)  # row 0 = padding, row idx+1 = item idx
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.register_buffer("input_scale", torch.tensor([D ** 0.5]), persistent=False)  # (1,) Sec. III-A
        self.encoder = StackedEncoders(1, D, cfg.heads, cfg.layers, cfg.dropout, ctx.max_len, positions="newest")
        self._register_load_state_dict_pre_hook(_upgrade_state_dict)

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        """seqs (B, L) left-padded ids, L <= ctx.max_len -> (B, L, D) state at each position."""
        if torch.jit.is_tracing():  # ONNX export: unique's data-dependent shapes would freeze L; same values
            x = self.item_emb(seqs)[None] * self.input_scale[:, None, None]  # (1, B, L, D)
        else:  # each distinct item looked up once, as TEMA does: the same gradient, summed in the same order
            uniq, inv = torch.unique(seqs, return_inverse=True)
            x = (self.item_emb(uniq)[None] * self.input_scale[:, None, None])[:, inv]  # (1, B, L, D) e * sqrt(D)
        return self.encoder(x, (seqs > 0)[None])[0]  # (B, L, D)


# run folders written before SASRec ran on StackedEncoders: nn.Linear (out, in) -> stacked (1, in, out)
_OLD_BLOCK = {"ln_attn": "ln_attn", "ln_ffn": "ln_ffn", "attn.qkv": "qkv", "attn.out": "out",
              "ffn.net.0": "ffn_in", "ffn.net.3": "ffn_out"}


def _upgrade_state_dict(state: dict[str, Any], prefix: str, *args: Any) -> None:
    """Rename an old SASRec's weights (pos_emb, blocks.i.*, ln_final) in place to the encoder's layout."""
    if prefix + "pos_emb.weight" not in state:
        return
    state[prefix + "encoder.pos"] = state.pop(prefix + "pos_emb.weight")[None]
    for key in [k for k in state if k.startswith(prefix + "blocks.") or k.startswith(prefix + "ln_final.")]:
        value = state.pop(key)
        rest = key[len(prefix):]
        if rest.startswith("ln_final."):
            state[prefix + "encoder." + rest] = value[None]
            continue
        _, layer, *part = rest.split(".")
        module, kind = ".".join(part[:-1]), part[-1]
        new = f"{prefix}encoder.blocks.{layer}.{_OLD_BLOCK[module]}.{kind}"
        state[new] = value.T[None].contiguous() if value.dim() == 2 else value[None]
