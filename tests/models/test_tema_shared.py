"""model.tema.encoders = shared: one encoder's linear weights shared by the V*M encoders, each adapted by its own
LoRA term (models/attention.py's SharedLoRALinear). At initialisation every encoder is the shared one; the adapters
are exactly a per-encoder weight W + (alpha / r) A_e B_e; they train, and the model trains, saves and loads."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from temarec.cli import main
from temarec.config import load_config
from temarec.data.batches import pad_histories
from temarec.models.attention import Block, SharedLoRALinear, StackedEncoders, StackedLinear, attention_mask
from temarec.models.tema import TemaSettings
from temarec.runs import load_run, train_run

from model_checks import assert_losses_halve
from test_tema import make_model  # tests/models/test_tema.py: the tiny two-domain context

E, B, L, D, HEADS, LAYERS, RANK, ALPHA = 4, 3, 7, 16, 2, 2, 4, 8.0
LINEARS = ("qkv", "out", "ffn_in", "ffn_out")

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in tests/conftest.py


def _shared(seed: int = 0) -> StackedEncoders:
    """Shared encoders with every parameter moved off its initial value, B_e kept at zero; the per-encoder
    positions and LayerNorms moved alike, so they stay equal across encoders as they start."""
    torch.manual_seed(seed)
    enc = StackedEncoders(E, D, HEADS, LAYERS, dropout=0.0, max_len=L, lora=(RANK, ALPHA))
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name.endswith("lora_b"):
                continue
            per_encoder = name == "pos" or ".ln_" in name or name.startswith("ln_final")  # (E, ...)
            p.add_(0.1 * torch.randn_like(p[:1] if per_encoder else p))
    return enc


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([[7, 3, 0], [1, 5, 7], [2, 2, 6], [0, 7, 4]])  # (E, B) a different padding per encoder
    valid = torch.arange(L)[None, None, :] >= (L - lengths)[..., None]  # (E, B, L) right-aligned items
    return torch.randn(E, B, L, D), valid


def _as_separate(shared: StackedEncoders) -> StackedEncoders:
    """Separate stacked encoders whose encoder e holds W + (alpha / r) A_e B_e and the shared biases."""
    sep = StackedEncoders(E, D, HEADS, LAYERS, dropout=0.0, max_len=L)
    sep.load_state_dict({k: v for k, v in shared.state_dict().items() if not any(f".{n}." in k for n in LINEARS)},
                        strict=False)  # positions and LayerNorms
    with torch.no_grad():
        for sb, b in zip(shared.blocks, sep.blocks):
            for name in LINEARS:
                lin, out = getattr(sb, name), getattr(b, name)
                out.weight.copy_(lin.weight + lin.scale * lin.lora_a @ lin.lora_b)  # (E, i, o)
                out.bias.copy_(lin.bias.expand_as(out.bias))
    return sep


def test_shared_encoders_with_zero_b_are_one_encoder_applied_to_each_input():
    enc = _shared()
    assert all(bool((getattr(b, n).lora_a != 0).any()) for b in enc.blocks for n in LINEARS)  # A is not what hides
    block_of = []  # SASRec's own Block holding the shared weights, encoder 0's LayerNorms (all equal at init)
    for sb in enc.blocks:
        block = Block(D, HEADS, dropout=0.0)
        with torch.no_grad():
            for ln, sln in ((block.ln_attn, sb.ln_attn), (block.ln_ffn, sb.ln_ffn)):
                ln.weight.copy_(sln.weight[0])
                ln.bias.copy_(sln.bias[0])
            for lin, slin in ((block.attn.qkv, sb.qkv), (block.attn.out, sb.out), (block.ffn.net[0], sb.ffn_in),
                              (block.ffn.net[3], sb.ffn_out)):
                lin.weight.copy_(slin.weight.T)
                lin.bias.copy_(slin.bias)
        block_of.append(block.eval())
    x, valid = _inputs()
    out = enc(x, valid)  # (E, B, L, D)
    for e in range(E):  # positions from each row's oldest item, as the encoders count them
        rank = (torch.arange(L) - (L - valid[e].sum(-1, keepdim=True))).clamp(min=0)  # (B, L)
        h, mask = x[e] + enc.pos[0][rank], attention_mask(valid[e])
        for block in block_of:
            h = block(h, mask)
        ref = nn.functional.layer_norm(h, (D,)) * enc.ln_final.weight[0] + enc.ln_final.bias[0]
        torch.testing.assert_close(out[e], ref, rtol=1e-5, atol=1e-5)
    same = x[:1].expand(E, -1, -1, -1)  # one input for all encoders: E equal outputs
    shared_out = enc(same, valid[:1].expand(E, -1, -1))
    for e in range(1, E):
        torch.testing.assert_close(shared_out[e], shared_out[0])


def test_lora_terms_are_exactly_a_per_encoder_weight_forward_and_backward():
    enc = _shared()
    with torch.no_grad():
        for b in enc.blocks:
            for n in LINEARS:
                getattr(b, n).lora_b.normal_(0.0, 0.3)
    sep = _as_separate(enc)
    x, valid = _inputs()
    out = enc(x, valid)
    ref = sep(x, valid)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(out)
    (out * grad_out).sum().backward()
    (ref * grad_out).sum().backward()
    for sb, b in zip(enc.blocks, sep.blocks):  # dL/dW_shared is the sum of the separate encoders' dL/dW_e
        for n in LINEARS:
            torch.testing.assert_close(getattr(sb, n).weight.grad, getattr(b, n).weight.grad.sum(0),
                                       rtol=1e-4, atol=1e-5)
            lin, g = getattr(sb, n), getattr(b, n).weight.grad  # dL/dB_e = (alpha / r) A_e^T dL/dW_e
            torch.testing.assert_close(lin.lora_b.grad, lin.scale * lin.lora_a.transpose(1, 2) @ g,
                                       rtol=1e-4, atol=1e-5)


def test_gradients_reach_b_first_then_a_and_the_encoders_differ_after_a_step():
    enc = _shared()
    x, valid = _inputs()
    same, same_valid = x[:1].expand(E, -1, -1, -1), valid[:1].expand(E, -1, -1)
    target = torch.randn(E, B, L, D)  # a different target per encoder
    opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
    before = enc(same, same_valid)
    for e in range(1, E):
        torch.testing.assert_close(before[e], before[0])
    for step in range(2):
        opt.zero_grad()
        ((enc(same, same_valid) - target) ** 2).mean().backward()
        for b in enc.blocks:
            for n in LINEARS:
                lin = getattr(b, n)
                assert lin.lora_b.grad.abs().sum() > 0
                # with B = 0 the adapter's A gets no gradient (x A B: dL/dA = x^T g B^T), as in LoRA; after a step it does
                assert (lin.lora_a.grad.abs().sum() > 0) == (step > 0)
        opt.step()
    with torch.no_grad():
        after = enc(same, same_valid)
    assert all(not torch.allclose(after[e], after[0], atol=1e-4) for e in range(1, E))


def test_shared_tema_has_fewer_parameters_and_the_same_state_at_start():
    sep, shared = make_model(), make_model(encoders="shared", lora_rank=RANK)
    count = {name: sum(p.numel() for p in m.encoders.parameters()) for name, m in (("sep", sep), ("sh", shared))}
    Ed, layers = sep.encoders.pos.shape[0], len(sep.encoders.blocks)  # 3 views x 4 modalities, dim 16
    linear = 3 * D * D + D * D + 2 * D * D  # qkv, out, ffn_in, ffn_out weights
    lora = RANK * (D + 3 * D) + 3 * RANK * (D + D)
    assert count["sep"] - count["sh"] == layers * ((Ed - 1) * (linear + 6 * D) - Ed * lora)
    assert sum(p.numel() for p in shared.parameters()) < sum(p.numel() for p in sep.parameters())
    assert isinstance(shared.encoders.blocks[0].qkv, SharedLoRALinear)
    torch.testing.assert_close(shared.encoders.pos, shared.encoders.pos[:1].expand_as(shared.encoders.pos))


def test_separate_stays_the_default_with_its_weights_and_names():
    assert TemaSettings().encoders == "separate"
    model = make_model()
    assert isinstance(model.encoders.blocks[0].qkv, StackedLinear)
    assert not any("lora" in k for k in model.state_dict())
    torch.manual_seed(0)  # separate encoders draw what they drew before the shared variant existed
    fresh = StackedEncoders(12, D, HEADS, LAYERS, dropout=0.1, max_len=12).state_dict()
    torch.manual_seed(0)  # the draws of that constructor, replayed: positions, then each block's four linears
    replay = {"pos": torch.randn(12, 12, D) * 0.02}
    for layer in range(LAYERS):
        for name, d_out in zip(LINEARS, (3 * D, D, D, D)):
            bound = D ** -0.5
            replay[f"blocks.{layer}.{name}.weight"] = torch.empty(12, D, d_out).uniform_(-bound, bound)
            replay[f"blocks.{layer}.{name}.bias"] = torch.empty(12, d_out).uniform_(-bound, bound)
    for key, value in replay.items():
        torch.testing.assert_close(fresh[key], value, rtol=0, atol=0)


def test_shared_tema_trains_on_the_overfit_sequences(overfit):
    model = make_model(encoders="shared", lora_rank=RANK, dropout=0.0)
    assert_losses_halve(overfit(model, lr=1e-2, steps=40))
    assert all(getattr(b, n).lora_b.abs().sum() > 0 for b in model.encoders.blocks for n in LINEARS)


@pytest.mark.parametrize("override, message", [
    ("model.tema.lora_rank=0", "model.tema.lora_rank must be >= 1, got 0"),
    ("model.tema.lora_rank=17", r"model.tema.lora_rank \(17\) must be <= model.dim \(16\)"),
    ("model.tema.encoders=tied", "model.tema.encoders must be separate or shared, got 'tied'"),
    ("model.tema.lora_alpha=0", "model.tema.lora_alpha must be > 0"),
])
def test_bad_shared_settings_are_refused_when_the_config_is_read(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, ["model.name=tema", "model.dim=16", "model.tema.encoders=shared", override])


def test_a_rank_above_dim_is_fine_for_separate_encoders_and_one_cli_line_for_shared(capsys, tmp_path):
    load_config(None, ["model.name=tema", "model.dim=4", "model.heads=1"])  # default rank 8 > 4, unused
    assert main(["train", "--dataset", str(tmp_path), "--out", str(tmp_path / "r"), "--model", "tema",
                 "--set", "model.dim=4", "--set", "model.heads=1", "--set", "model.tema.encoders=shared"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.tema.lora_rank (8) must be <= model.dim (4)" in err[0]
    assert not (tmp_path / "r").exists()


def test_shared_tema_resumes_and_loads_with_the_same_scores(generated_dataset, tmp_path, tiny):
    out = tmp_path / "run"
    sets = tiny(**{"model.name": "tema", "model.tema.modalities": "id", "model.tema.encoders": "shared",
                   "model.tema.lora_rank": "4", "train.epochs": "1"})
    train_run(generated_dataset, load_config(None, sets), out)
    train_run(generated_dataset, load_config(None, [*sets, "train.epochs=2"]), out, resume=True)
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    model, ds, cfg = load_run(out)
    assert cfg.model.settings.encoders == "shared" and cfg.model.settings.lora_rank == 4
    assert any(getattr(b, n).lora_b.abs().sum() > 0 for b in model.encoders.blocks for n in LINEARS)
    hist = pad_histories(ds.test["history"].tolist()[:8], cfg.data.max_len)
    again, _, _ = load_run(out)
    with torch.no_grad():
        torch.testing.assert_close(again.score_domain(hist, 0), model.score_domain(hist, 0))
    state = model.state_dict()  # a state dict round trip into a freshly built shared model
    torch.manual_seed(123)
    fresh = type(model)(model.cfg, model.ctx).eval()
    fresh.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(fresh.score_domain(hist, 1), model.score_domain(hist, 1))
