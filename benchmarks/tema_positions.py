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
1024 negatives, batches of 256, paper defaults otherwise; ``bench_dropout.training_step_s``), each view encoded
at its own length (``temarec.models.tema.view_starts``, the code's way) against every view at the merged
view's length, alternating ``--repeats`` times; the medians are printed.
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

    if args.time_steps:
        time_views(args.dataset, args.time_steps, args.repeats)


def time_views(dataset: str, steps: int, repeats: int) -> None:
    """CPU-s per TEMA training step, views at their own lengths against every view at the merged length."""
    from bench_dropout import training_step_s  # this folder is on sys.path

    from temarec.models import tema

    torch.set_num_threads(1)
    own = tema.model.view_starts
    times: dict[str, list[float]] = {"merged length": [], "own length": []}
    for _ in range(repeats):
        for name, starts in (("merged length", lambda ids, pad: [0] * ids.shape[0]), ("own length", own)):
            tema.model.view_starts = starts  # position_states looks it up at call time
            times[name].append(training_step_s(dataset, "tema", steps))
    tema.model.view_starts = own
    before, after = (statistics.median(times[k]) for k in ("merged length", "own length"))
    print(f"TEMA CPU-s per training step, views at the merged length -> at their own: {before:.3f} -> {after:.3f} "
          f"({after / before:.2f}x; runs {', '.join(f'{t:.3f}' for t in times['merged length'])} -> "
          f"{', '.join(f'{t:.3f}' for t in times['own length'])})")


if __name__ == "__main__":
    main()
