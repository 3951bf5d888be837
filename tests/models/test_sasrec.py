"""SASRec specifics: the attention mask and the position table bound (shared invariants: test_tied_models.py)."""

from __future__ import annotations

import pytest
import torch

from temarec.config import ModelConfig
from temarec.models.base import ModelContext
from temarec.models.attention import attention_mask
from temarec.models.sasrec import SASRec

CTX = ModelContext(domain_sizes=(7, 5), domains=("Food", "Kitchen"), max_len=12)


def make_model(**overrides) -> SASRec:
    torch.manual_seed(0)
    cfg = ModelConfig(name="sasrec", heads=2, dim=16, layers=2, dropout=0.1, **overrides)
    return SASRec(cfg, CTX).eval()


def test_attention_mask_is_causal_skips_padding_keys_and_never_empty():
    mask = attention_mask(torch.tensor([[False, True, True], [False, False, False]]))[:, 0]  # (B, L, L)
    expected_first = torch.tensor([[True, False, False],  # a padding query sees only itself
                                   [False, True, False],
                                   [False, True, True]])
    assert torch.equal(mask[0], expected_first)
    assert torch.equal(mask[1], torch.eye(3, dtype=torch.bool))
    assert mask.any(-1).all()


def test_sequence_longer_than_max_len_is_rejected():
    with pytest.raises(ValueError, match="max_len"):
        make_model().score_domain(torch.ones(1, CTX.max_len + 1, dtype=torch.long), 0)


def test_weights_of_the_sasrec_before_the_shared_encoder_load_with_the_same_scores():
    """Run folders written before SASRec ran on StackedEncoders (commit b4e8897) keep working: their weights are
    renamed on load, and the scores the old code computed are reproduced."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    from temarec.config import ModelConfig
    from temarec.models.base import ModelContext

    fixtures = Path(__file__).parent / "fixtures"
    old = json.loads((fixtures / "sasrec_v0.json").read_text())
    ctx = ModelContext(domain_sizes=(7, 5), domains=("Food", "Kitchen"), max_len=8)
    model = SASRec(ModelConfig(name="sasrec", dim=8, layers=2, heads=2, dropout=0.1), ctx).eval()
    state = load_file(fixtures / "sasrec_v0.safetensors")
    assert "pos_emb.weight" in state and "encoder.pos" not in state  # really the old layout
    model.load_state_dict(state)
    history = torch.tensor(old["history"])
    with torch.no_grad():
        for d in (0, 1):
            torch.testing.assert_close(model.score_domain(history, d), torch.tensor(old["scores"][str(d)]))
