"""Where a TEMA training process's memory and CPU go, epoch by epoch, under one allocator setting.

    python benchmarks/tema_memory.py --dataset DIR [--mode none|trim|steptrim|mmap] [--epochs 3]
                                     [--set section.key=value ...]
    python benchmarks/tema_memory.py --eval-run RUN     # one validation pass of a trained run

Training mode: trains TEMA (config defaults plus ``--set``, one thread) for ``--epochs`` epochs, validating after
each, and prints per epoch the training wall and CPU seconds (user, system), the minor page faults, the RSS read
after every step (its maximum), the RSS after validation and ``ru_maxrss``. Modes (glibc only):

- ``none``: the default allocator;
- ``trim``: ``malloc_trim(0)`` after each epoch's validation (prints the RSS it leaves);
- ``steptrim``: ``malloc_trim(0)`` after every training step;
- ``mmap``: ``mallopt`` fixes the mmap threshold at 1 MiB, as ``MALLOC_MMAP_THRESHOLD_=1048576`` does.

Eval mode: the wall, CPU seconds, page faults and peak RSS of scoring the validation split once with a finished
run's checkpoint (``temarec.evaluation.evaluate``), and its MRR. Figures: docs/BENCHMARKS.md, "Epoch time and
memory". Run each mode in its own process: ``ru_maxrss`` never falls.
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import time

import torch

from temarec.config import load_config
from temarec.data.dataset import Dataset
from temarec.evaluation import evaluate
from temarec.runs import build_model, load_run
from temarec.train import train_sequences

M_MMAP_THRESHOLD, M_TRIM_THRESHOLD = -3, -1  # glibc mallopt parameters


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def usage_delta(before: resource.struct_rusage) -> str:
    after = resource.getrusage(resource.RUSAGE_SELF)
    return (f"user {after.ru_utime - before.ru_utime:.1f} s  sys {after.ru_stime - before.ru_stime:.1f} s  "
            f"minor faults {(after.ru_minflt - before.ru_minflt) / 1e6:.2f} M  maxrss {after.ru_maxrss / 1024:.0f} MB")


def train_epochs(args: argparse.Namespace, libc: ctypes.CDLL) -> None:
    if args.mode == "mmap":
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 20)
    cfg = load_config(None, ["model.name=tema", "train.threads=1", *args.set])
    torch.manual_seed(cfg.train.seed)
    torch.set_num_threads(1)
    dataset = Dataset.load(args.dataset)
    model = build_model(dataset, cfg)
    seqs = train_sequences(dataset, cfg.data.max_len)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    print(f"mode {args.mode}: start RSS {rss_mb():.0f} MB")
    for epoch in range(1, args.epochs + 1):
        before, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        model.train()
        order = torch.randperm(len(seqs), generator=torch.Generator().manual_seed(epoch))
        step_peak = 0.0
        for start in range(0, len(order), cfg.train.batch_size):
            loss = model(seqs[order[start:start + cfg.train.batch_size]])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step_peak = max(step_peak, rss_mb())
            if args.mode == "steptrim":
                libc.malloc_trim(0)
        line = f"epoch {epoch}: train {time.perf_counter() - t:.0f} s wall, {usage_delta(before)}"
        evaluate(model, dataset, "valid", cfg.eval, cfg.data.max_len)
        line += f"; RSS max over steps {step_peak:.0f} MB, after validation {rss_mb():.0f} MB"
        if args.mode == "trim":
            libc.malloc_trim(0)
            line += f", after trim {rss_mb():.0f} MB"
        print(line, flush=True)


def eval_once(run: str) -> None:
    torch.set_num_threads(1)
    model, dataset, cfg = load_run(run)
    before, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    metrics = evaluate(model, dataset, "valid", cfg.eval, cfg.data.max_len)
    print(f"validation of {run}: {time.perf_counter() - t:.1f} s wall, {usage_delta(before)}")
    print("sampled MRR " + ", ".join(f"{d} {100 * m['mrr']:.2f}" for d, m in metrics["sampled"].items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", help="dataset folder with TEMA's features and tags (training mode)")
    p.add_argument("--mode", default="none", choices=["none", "trim", "steptrim", "mmap"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--set", action="append", default=[], help="config override, section.key=value")
    p.add_argument("--eval-run", help="finished TEMA run folder: time one validation pass instead of training")
    args = p.parse_args(argv)
    if bool(args.dataset) == bool(args.eval_run):
        p.error("give either --dataset (training mode) or --eval-run RUN (one validation pass)")
    if args.eval_run:
        eval_once(args.eval_run)
        return 0
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError as exc:
        raise SystemExit(f"this benchmark needs glibc (libc.so.6) for malloc_trim/mallopt: {exc}") from exc
    train_epochs(args, libc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
