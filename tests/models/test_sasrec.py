"""SASRec specifics: the attention mask and the position table bound (shared invariants: test_tied_models.py)."""

from __future__ import annotations

import pytest
import torch

from temarec.config import ModelConfig
from temarec.models.base import ModelContext
from temarec.models.sasrec import SASRec, attention_mask

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
