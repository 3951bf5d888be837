"""temarec.models.dropout: the uniform-draw mask has nn.Dropout's distribution; ``attention.self_attention``, which
drops attention weights with it in training, computes scaled dot-product attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from temarec.models.attention import self_attention
from temarec.models.dropout import Dropout, dropout


def test_dropout_keeps_one_minus_p_and_scales_what_it_keeps():
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = dropout(x, 0.3)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.003)  # 4.5 standard errors
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)  # unbiased, as nn.Dropout


def test_dropout_gradient_is_the_mask():
    torch.manual_seed(1)
    x = torch.randn(50, 30, requires_grad=True)
    y = dropout(x, 0.5)
    y.sum().backward()
    assert torch.equal(x.grad, (y.detach() / x.detach()))  # d y / d x = 2 where kept, 0 where dropped


def test_dropout_off_in_eval_at_zero_and_everything_at_one():
    x = torch.randn(10)
    module = Dropout(0.3).eval()
    assert module(x) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros(10))
    assert Dropout(0.3).state_dict() == {}


def packed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(N, H, L, d_k) each -> (N, L, 3 H d_k), the layout of the qkv map's output."""
    return torch.cat([t.transpose(1, 2).flatten(2) for t in (q, k, v)], dim=-1)


def test_attention_training_path_is_sdpa_and_masks_keys():
    torch.manual_seed(2)
    q, k, v = (torch.randn(3, 2, 7, 8) for _ in range(3))  # N = 3, two heads of 8
    mask = torch.ones(7, 7, dtype=torch.bool).tril()[None, None].expand(3, 1, 7, 7).clone()
    mask[0, :, 1:, 0] = False  # row 0's first item is padding: no later query may attend to it
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(3, 7, 16)
    # p tiny: the written-out training path, nothing dropped at this size (~1e-9 chance per weight)
    assert torch.allclose(self_attention(packed(q, k, v), 2, mask, 1e-12, training=True), expected, atol=1e-6)
    assert torch.allclose(self_attention(packed(q, k, v), 2, mask, 0.3, training=False), expected, atol=1e-6)
    v2 = v.clone()
    v2[0, :, 0] += 100.0  # the padding key's value: no query but its own sees it
    out = self_attention(packed(q, k, v2), 2, mask, 1e-12, training=True)
    assert torch.allclose(out[0, 1:], expected[0, 1:], atol=1e-5)
    assert not torch.allclose(out[0, 0], expected[0, 0])


def test_attention_gradient_matches_sdpa():
    torch.manual_seed(4)
    x = torch.randn(4, 6, 3 * 16, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(6, 6, dtype=torch.bool).tril()[None, None]
    (self_attention(x, 2, mask, 1e-12, training=True) ** 2).sum().backward()
    mine, x.grad = x.grad, None
    (self_attention(x, 2, mask, 0.0, training=True) ** 2).sum().backward()  # the SDPA path
    assert torch.allclose(mine, x.grad)


def test_attention_dropout_drops_weights():
    torch.manual_seed(3)
    q, k = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)  # equal weights 1/4 on the four keys
    v = torch.eye(4)[None, None]  # output column j = the weight on key j
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    rows = torch.stack([self_attention(packed(q, k, v), 1, mask, 0.5, training=True) for _ in range(2000)])
    # each weight 1/4 is kept (as 1/2) or dropped, with probability 1/2 each; the mean stays 1/4
    assert set(torch.unique(rows).tolist()) <= {0.0, 0.5}
    assert rows.mean().item() == pytest.approx(0.25, abs=0.01)
