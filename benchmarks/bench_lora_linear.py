"""How to compute SharedLoRALinear: adapted weights first, or one shared matmul plus a low-rank term per row.

    python benchmarks/bench_lora_linear.py [--encoders 9] [--rows 1920] [--dim 64] [--rank 8] [--repeats 20]

``model.tema.encoders = shared`` computes x_e (W + s A_e B_e) for E encoders. Two ways, same result:
``merged`` (temarec's): form the E adapted weights (E i r o multiply-adds per call), then one batched matmul, so a
row costs i o as with separate weights; ``rows``: one matmul of the shared W over all E*N rows, plus
(x_e A_e) B_e per row, (i + o) r more per row. Both are timed against the separate encoders' batched matmul
(``stacked``), forward + backward, one thread, CPU-seconds per call, for the attention's qkv (D -> 3D) and a
D -> D map, and for whole encoders (2 layers of StackedEncoders, rows = batch 64 x length 30). No data needed.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from temarec.models.attention import ALL, SharedLoRALinear, StackedEncoders


class RowsLoRALinear(SharedLoRALinear):
    """The other way: one matmul of the shared weight over all E*N rows, then each row's low-rank term."""

    def forward(self, x: torch.Tensor, part: slice = ALL) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(shape[0], -1, shape[-1])  # (E, N, i)
        base = torch.addmm(self.bias, rows.reshape(-1, shape[-1]), self.weight)  # (E*N, o)
        down = torch.bmm(rows, self.lora_a[part])  # (E, N, r)
        y = torch.baddbmm(base.view(shape[0], -1, base.shape[-1]), down, self.lora_b[part], alpha=self.scale)
        return y.view(*shape[:-1], -1)


def cpu_ms(step: Callable[[], torch.Tensor], repeats: int) -> float:
    """CPU milliseconds of forward + backward, after one warm-up round."""
    for _ in range(2):
        t = time.process_time()
        for _ in range(repeats):
            step().sum().backward()
        elapsed = time.process_time() - t
    return 1000 * elapsed / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoders", type=int, default=9)
    p.add_argument("--rows", type=int, default=64 * 30)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    E, N, D, r = args.encoders, args.rows, args.dim, args.rank
    x = torch.randn(E, N, D, requires_grad=True)
    print(f"E = {E} encoders, {N} rows each, D = {D}, rank {r}; CPU ms per forward + backward, one thread")
    for d_out in (3 * D, D):
        stacked = StackedEncoders(E, D, 1, 1, 0.0, 1).blocks[0].qkv if d_out == 3 * D else \
            StackedEncoders(E, D, 1, 1, 0.0, 1).blocks[0].out
        merged, rows = SharedLoRALinear(E, D, d_out, r, float(r)), RowsLoRALinear(E, D, d_out, r, float(r))
        with torch.no_grad():
            merged.lora_b.normal_()
            rows.load_state_dict(merged.state_dict())
        torch.testing.assert_close(merged(x), rows(x), rtol=1e-4, atol=1e-4)  # the same map
        times = {name: cpu_ms(lambda m=m: m(x), args.repeats)
                 for name, m in (("stacked", stacked), ("merged", merged), ("rows", rows))}
        print(f"linear {D} -> {d_out}: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    h = torch.randn(E, 64, N // 64, D)
    valid = torch.ones(E, 64, N // 64, dtype=torch.bool)
    times = {}
    for name in ("stacked", "merged", "rows"):
        torch.manual_seed(0)
        enc = StackedEncoders(E, D, 1, 2, 0.3, N // 64, lora=None if name == "stacked" else (r, float(r)))
        if name == "rows":
            for block in enc.blocks:
                for key in ("qkv", "out", "ffn_in", "ffn_out"):
                    old = getattr(block, key)
                    new = RowsLoRALinear(E, old.weight.shape[0], old.weight.shape[1], r, float(r))
                    new.load_state_dict(old.state_dict())
                    setattr(block, key, new)
        times[name] = cpu_ms(lambda enc=enc: enc(h, valid), max(1, args.repeats // 2))
    print("encoders (2 layers): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))


if __name__ == "__main__":
    main()
