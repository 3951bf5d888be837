"""What drawing dropout masks as ``rand >= p`` (``temarec.models.dropout``) saves against torch's Bernoulli draw.

    python benchmarks/bench_dropout.py [--dataset DIR] [--models tema,sasrec] [--steps 10] [--repeats 3]

One thread, CPU milliseconds (``time.process_time``). Side by side in one process:
  1. dropout alone, forward + backward, on a (9, 64, 48, 64) tensor (TEMA's nine encoders, a batch group of 64
     histories of 48 items, D = 64): ``torch.nn.functional.dropout`` against ``temarec.models.dropout.dropout``;
  2. self-attention with dropout 0.3 on the weights, forward + backward, over the same (9 x 64) sequences: the
     code before this change (``F.scaled_dot_product_attention`` with ``dropout_p``, q, k, v taken by indexing
     a permuted copy of the packed map) against ``temarec.models.attention.self_attention``;
  3. with ``--dataset``: CPU-seconds per training step of each model of ``--models`` (sampled softmax, 1024
     negatives, batches of 256, paper defaults otherwise), torch's dropout patched back in against ours,
     alternating ``--repeats`` times; the median is printed.
``--profile``: instead of 3, the first model's steps under ``torch.profiler`` with torch's dropout, then with
ours: each op's share of the CPU time, the largest first (where ``aten::bernoulli_`` showed up).
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn.functional as F

from bench_lora_linear import cpu_ms  # forward + backward after a warm-up round (this folder is on sys.path)
from temarec.models import attention as attention_module
from temarec.models import dropout as dropout_module


def torch_attention(qkv: torch.Tensor, heads: int, mask: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """The self-attention before ``temarec.models.attention.self_attention`` (the reference of rows 2 and 3)."""
    N, L, D3 = qkv.shape
    q, k, v = qkv.view(N, L, 3, heads, D3 // (3 * heads)).permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p if training else 0.0)
    return y.transpose(1, 2).reshape(N, L, D3 // 3)


def torch_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    return F.dropout(x, p, training)


def use_torch(yes: bool) -> None:
    """Patch torch's dropout and attention into the models (yes) or restore ours."""
    dropout_module.dropout = torch_dropout if yes else ours_dropout  # Dropout.forward looks it up at call time
    attention_module.self_attention = torch_attention if yes else ours_attention


ours_dropout, ours_attention = dropout_module.dropout, attention_module.self_attention


def training_step_s(dataset: str, model_name: str, steps: int, profiled: bool = False, loss: str = "sampled") -> float:
    from temarec.config import load_config
    from temarec.data.dataset import Dataset
    from temarec.runs import build_model
    from temarec.train import train_sequences

    torch.manual_seed(0)
    ds = Dataset.load(dataset)
    cfg = load_config(None, [f"model.name={model_name}", f"model.loss={loss}", "model.num_sampled=1024"])
    model = build_model(ds, cfg).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    seqs = train_sequences(ds, cfg.data.max_len)
    order = torch.randperm(len(seqs), generator=torch.Generator().manual_seed(0))
    batches = [seqs[order[s:s + 256]] for s in range(0, 256 * (steps + 2), 256)]

    def step(batch: torch.Tensor) -> None:
        opt.zero_grad()
        model.training_loss(batch).backward()
        opt.step()

    for batch in batches[:2]:
        step(batch)
    t = time.process_time()
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if profiled else nullcontext()
    with profiler as prof:
        for batch in batches[2:]:
            step(batch)
    if prof is not None:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
    return (time.process_time() - t) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="")
    p.add_argument("--models", default="tema,sasrec")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="profile the first model's steps instead of timing them")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(9, 64, 48, 64)

    def drop(fn: Callable[..., torch.Tensor]) -> Callable[[], torch.Tensor]:
        return lambda: fn(x.clone().requires_grad_(True), 0.3, True)

    print("one thread, CPU ms per forward + backward (torch -> ours)")
    print(f"dropout p = 0.3 on (9, 64, 48, 64): {cpu_ms(drop(torch_dropout), 20):.1f} -> "
          f"{cpu_ms(drop(ours_dropout), 20):.1f}")
    qkv = torch.randn(9 * 64, 48, 3 * 64)
    mask = torch.ones(48, 48, dtype=torch.bool).tril()[None, None]

    def attend(fn: Callable[..., torch.Tensor]) -> Callable[[], torch.Tensor]:
        return lambda: fn(qkv.clone().requires_grad_(True), 1, mask, 0.3, True)

    print(f"self-attention, dropout 0.3 on the weights, 576 sequences of 48, D = 64: "
          f"{cpu_ms(attend(torch_attention), 10):.1f} -> {cpu_ms(attend(ours_attention), 10):.1f}")
    if not args.dataset:
        return
    if args.profile:
        for torch_side in (True, False):
            use_torch(torch_side)
            print(f"{args.models.split(',')[0]} with {'torch' if torch_side else 'our'} dropout:")
            training_step_s(args.dataset, args.models.split(",")[0], args.steps, profiled=True)
        use_torch(False)
        return
    for name in args.models.split(","):
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.repeats):
            for torch_side in (True, False):
                use_torch(torch_side)
                times[torch_side].append(training_step_s(args.dataset, name, args.steps))
        use_torch(False)
        before, after = statistics.median(times[True]), statistics.median(times[False])
        print(f"{name}: CPU-s per training step {before:.3f} -> {after:.3f} ({after / before:.2f}x; "
              f"runs {', '.join(f'{t:.3f}' for t in times[True])} -> {', '.join(f'{t:.3f}' for t in times[False])})")


if __name__ == "__main__":
    main()
