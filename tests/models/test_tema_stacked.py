"""TEMA's E encoders run as one batched operation (stacked weights, batched matmuls) compute exactly what E
independent SASRec-style encoders run one after another would: same outputs, same gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from temarec.models.attention import Block, attention_mask
from temarec.models.attention import StackedEncoders

E, B, L, D, HEADS, LAYERS = 4, 3, 7, 16, 2, 2


def _loop_of_encoders(stacked: StackedEncoders) -> list[nn.ModuleDict]:
    """E separate encoders built from SASRec's own Block and nn.LayerNorm, holding copies of the stacked weights."""
    encoders = []
    for e in range(E):
        blocks = nn.ModuleList()
        for sb in stacked.blocks:
            block = Block(D, HEADS, dropout=0.0)
            with torch.no_grad():
                for ln, sln in ((block.ln_attn, sb.ln_attn), (block.ln_ffn, sb.ln_ffn)):
                    ln.weight.copy_(sln.weight[e])
                    ln.bias.copy_(sln.bias[e])
                for lin, slin in ((block.attn.qkv, sb.qkv), (block.attn.out, sb.out), (block.ffn.net[0], sb.ffn_in),
                                  (block.ffn.net[3], sb.ffn_out)):
                    lin.weight.copy_(slin.weight[e].T)  # stacked (E, in, out) vs nn.Linear's (out, in)
                    lin.bias.copy_(slin.bias[e])
            blocks.append(block)
        ln_final = nn.LayerNorm(D)
        with torch.no_grad():
            ln_final.weight.copy_(stacked.ln_final.weight[e])
            ln_final.bias.copy_(stacked.ln_final.bias[e])
        encoders.append(nn.ModuleDict({"blocks": blocks, "ln_final": ln_final,
                                       "pos": nn.Embedding.from_pretrained(stacked.pos[e].detach().clone(),
                                                                           freeze=False)}))
    return encoders


def _run_one(enc: nn.ModuleDict, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """x (B, L, D), valid (B, L) -> (B, L, D): one encoder, positions counted from each row's oldest item."""
    first = L - valid.sum(-1, keepdim=True)  # (B, 1)
    rank = (torch.arange(L) - first).clamp(min=0)  # (B, L)
    h = x + enc["pos"](rank)
    mask = attention_mask(valid)
    for block in enc["blocks"]:
        h = block(h, mask)
    return enc["ln_final"](h)


def test_stacked_encoders_equal_a_loop_of_independent_encoders_forward_and_backward():
    torch.manual_seed(0)
    stacked = StackedEncoders(E, D, HEADS, LAYERS, dropout=0.0, max_len=L)
    with torch.no_grad():  # non-trivial LayerNorm parameters, so a mix-up of encoders would show
        for p in stacked.parameters():
            p.add_(0.1 * torch.randn_like(p))
    loop = _loop_of_encoders(stacked)
    lengths = torch.tensor([[7, 3, 0], [1, 5, 7], [2, 2, 6], [0, 7, 4]])  # (E, B) a different padding per encoder
    valid = torch.arange(L)[None, None, :] >= (L - lengths)[..., None]  # (E, B, L) right-aligned items
    x = torch.randn(E, B, L, D, requires_grad=True)
    x_loop = x.detach().clone().requires_grad_(True)

    out = stacked(x, valid)  # (E, B, L, D) one batched pass
    ref = torch.stack([_run_one(loop[e], x_loop[e], valid[e]) for e in range(E)])  # one encoder after another
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)

    grad_out = torch.randn_like(out)
    (out * grad_out).sum().backward()
    (ref * grad_out).sum().backward()
    torch.testing.assert_close(x.grad, x_loop.grad, rtol=1e-4, atol=1e-5)
    for e in range(E):
        for sb, block in zip(stacked.blocks, loop[e]["blocks"]):
            torch.testing.assert_close(sb.qkv.weight.grad[e], block.attn.qkv.weight.grad.T, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(sb.out.bias.grad[e], block.attn.out.bias.grad, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(sb.ffn_in.weight.grad[e], block.ffn.net[0].weight.grad.T, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(sb.ffn_out.weight.grad[e], block.ffn.net[3].weight.grad.T, rtol=1e-4,
                                       atol=1e-5)
            torch.testing.assert_close(sb.ln_attn.weight.grad[e], block.ln_attn.weight.grad, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(sb.ln_ffn.bias.grad[e], block.ln_ffn.bias.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(stacked.ln_final.weight.grad[e], loop[e]["ln_final"].weight.grad, rtol=1e-4,
                                   atol=1e-5)
        torch.testing.assert_close(stacked.pos.grad[e], loop[e]["pos"].weight.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("lora", [None, (4, 4.0)])
@pytest.mark.parametrize("positions", ["oldest", "newest"])
def test_a_part_of_the_stack_computes_what_those_encoders_compute_in_the_whole_stack(lora, positions):
    """``part`` (TEMA encodes one view's encoders at a time) selects encoders, not just a count of them."""
    torch.manual_seed(0)
    stacked = StackedEncoders(E, D, HEADS, LAYERS, dropout=0.0, max_len=L, positions=positions, lora=lora)
    with torch.no_grad():  # every encoder different, the adapters included
        for p in stacked.parameters():
            p.add_(0.1 * torch.randn_like(p))
    lengths = torch.tensor([[7, 3, 1], [1, 5, 7], [2, 2, 6], [3, 7, 4]])  # (E, B)
    valid = torch.arange(L)[None, None, :] >= (L - lengths)[..., None]
    x = torch.randn(E, B, L, D)
    whole = stacked(x, valid)
    torch.testing.assert_close(stacked(x[1:3], valid[1:3], slice(1, 3)), whole[1:3], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stacked(x[3:], valid[3:], slice(3, 4)), whole[3:], rtol=1e-5, atol=1e-6)
