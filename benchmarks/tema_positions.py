"""The encoder positions a TEMA epoch computes, against SASRec's, counted on a dataset's training batches.

    python benchmarks/tema_positions.py --dataset DIR [--batch-size 256] [--max-len 50] [--seed 0]
                                        [--dim 64] [--layers 2] [--modalities 3] [--num-sampled 1024]

Batches as training draws them (shuffled, ``--batch-size`` sequences of ``max_len + 1``), split into the length
groups and trimmed as ``TEMA.training_loss`` and SASRec's loss do (both encode through ``next_item_states``).
Prints, per modality: the positions the stacked encoders would compute at the group's length (3 views x group
rows x group length), those TEMA computes (each view at its own length in the group, ``view_starts``), the
positions holding an item, and SASRec's (its one encoder over the same groups); the attention's L^2 terms; and
the forward multiply-adds of an epoch's encoders at the group's length (the four linear maps, 6 D^2 per position and layer, and the attention's 2 D per L^2 term and
layer) and sampled heads ((S + 1) D per scored position and head), TEMA (3 views x ``--modalities`` encoders and
heads) against SASRec (one of each). Weight sharing (``model.tema.encoders = shared``) changes none of these: E
encoders' products cost the same FLOPs whether their weights are shared or not. No model is built: this is the
arithmetic behind docs/BENCHMARKS.md, "Epoch time and memory".

``--time-steps N``: then the measured side: CPU-seconds per TEMA training step (one thread, sampled softmax with
1024 negatives or, ``--time-loss full``, the full one, batches of 256, paper defaults otherwise;
``bench_dropout.training_step_s``) with every view
encoded at the merged view's length, with each view at its own (``temarec.models.tema.view_starts``), and with
that and the heads' normaliser computed once per distinct state (``temarec.models.softmax.distinct_rows``; the
code's way), alternating ``--repeats`` times; the medians are printed. The script also counts, per target
domain, how many of the other domain's view states are distinct.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from temarec.data.dataset import Dataset
from temarec.models.attention import first_used_column, length_groups
from temarec.models.tema import view_gather, view_starts
from temarec.train import train_sequences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--modalities", type=int, default=3, help="TEMA's M (ABXI without images: id, txt, tag)")
    parser.add_argument("--num-sampled", type=int, default=1024)
    parser.add_argument("--time-steps", type=int, default=0, help="also time this many TEMA training steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--time-loss", choices=("sampled", "full"), default="sampled",
                        help="the training softmax of the timed steps")
    args = parser.parse_args()
    ds = Dataset.load(args.dataset)
    seqs = train_sequences(ds, args.max_len)  # (S, max_len + 1)
    n_first = ds.domain_sizes[0]
    order = torch.randperm(len(seqs), generator=torch.Generator().manual_seed(args.seed))
    stacked = trimmed = holding = sasrec = attn_stacked = attn_trimmed = scored = 0
    for s in range(0, len(seqs), args.batch_size):
        batch = seqs[order[s:s + args.batch_size]]
        for rows in length_groups(batch):
            group = batch[rows]
            group = group[:, max(0, first_used_column(group) - 1):]  # as next_item_states
            inputs = group[:, :-1]
            B, L = inputs.shape
            sasrec, scored = sasrec + B * L, scored + int((group[:, 1:] > 0).sum())
            real, second = inputs > 0, inputs > n_first
            stacked, attn_stacked = stacked + 3 * B * L, attn_stacked + 3 * B * L * L
            keeps = (real & ~second, real & second, real)  # views X, Y, X+Y
            starts = view_starts(torch.stack([view_gather(inputs, keep)[0] for keep in keeps]), False)  # TEMA's
            for keep, start in zip(keeps, starts):
                Lv = L - start
                trimmed, attn_trimmed, holding = trimmed + B * Lv, attn_trimmed + B * Lv * Lv, holding + int(keep.sum())
    print(f"encoder positions per modality and epoch: stacked {stacked:,}; each view at its own length (TEMA) "
          f"{trimmed:,} ({trimmed / stacked:.2f}x); holding an item {holding:,} ({holding / stacked:.2f}x); "
          f"SASRec {sasrec:,} (TEMA's stacked / SASRec per modality: {stacked / sasrec:.2f}x)")
    print(f"attention L^2 terms: stacked {attn_stacked:,}; views trimmed {attn_trimmed:,} "
          f"({attn_trimmed / attn_stacked:.2f}x)")
    D, layers, M, S = args.dim, args.layers, args.modalities, args.num_sampled
    enc = {"SASRec": sasrec * layers * 6 * D * D + attn_stacked // 3 * layers * 2 * D,
           "TEMA": M * (stacked * layers * 6 * D * D + attn_stacked * layers * 2 * D)}
    heads = {"SASRec": scored * (S + 1) * D, "TEMA": 3 * M * scored * (S + 1) * D}
    for name in ("SASRec", "TEMA"):
        print(f"{name}: forward multiply-adds per epoch: encoders {enc[name] / 1e9:.1f} G, sampled heads "
              f"{heads[name] / 1e9:.1f} G, together {(enc[name] + heads[name]) / 1e9:.1f} G")
    print(f"TEMA / SASRec: encoders {enc['TEMA'] / enc['SASRec']:.2f}x, heads {heads['TEMA'] / heads['SASRec']:.2f}x, "
          f"together {(enc['TEMA'] + heads['TEMA']) / (enc['SASRec'] + heads['SASRec']):.2f}x "
          f"({scored:,} scored positions)")

    inputs, targets = seqs[:, :-1], seqs[:, 1:]
    for d, name in enumerate(ds.domains):  # the other domain's view at the positions whose target is in d
        at = (targets > 0) & ((targets > n_first) if d else (targets <= n_first))
        other = (inputs > 0) & ((inputs <= n_first) if d else (inputs > n_first))
        state = other.long().cumsum(1)  # which of that view's states each position reads: its items so far
        rows, cols = at.nonzero(as_tuple=True)
        n_distinct = len(torch.unique(rows * (inputs.shape[1] + 1) + state[rows, cols]))
        print(f"targets in {name}: {len(rows):,} positions; the other domain's view holds {n_distinct:,} distinct "
              f"states there ({n_distinct / len(rows):.2f}x)")
    if args.time_steps:
        time_views(args.dataset, args.time_steps, args.repeats, args.time_loss)


def time_views(dataset: str, steps: int, repeats: int, loss: str) -> None:
    """CPU-s per TEMA training step: every view at the merged length, each view at its own length, and that with
    the heads' normaliser computed once per distinct state (``softmax.distinct_rows``), alternating."""
    from bench_dropout import training_step_s  # this folder is on sys.path

    from temarec.models import softmax, tema

    torch.set_num_threads(1)
    own, distinct = tema.model.view_starts, softmax.distinct_rows
    every_row = lambda x, rows: (x, torch.arange(x.shape[1]), rows)  # noqa: E731 (each row normalised)
    merged_length = lambda ids, pad: [0] * ids.shape[0]  # noqa: E731
    variants = {"views at the merged length": (merged_length, every_row),
                "each view at its own length": (own, every_row),
                "+ each distinct state normalised once": (own, distinct)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (starts, rows) in variants.items():
            tema.model.view_starts, softmax.distinct_rows = starts, rows  # looked up at call time
            times[name].append(training_step_s(dataset, "tema", steps, loss=loss))
    tema.model.view_starts, softmax.distinct_rows = own, distinct
    first = statistics.median(next(iter(times.values())))
    print(f"TEMA CPU-s per training step, {loss} softmax (median; runs):")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"  {name}: {median:.3f} ({median / first:.2f}x; {', '.join(f'{t:.3f}' for t in runs)})")


if __name__ == "__main__":
    main()
