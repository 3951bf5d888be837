"""The encoder positions a TEMA epoch computes, against SASRec's, counted on a dataset's training batches.

    python benchmarks/tema_positions.py --dataset DIR [--batch-size 256] [--max-len 50] [--seed 0]

Batches as training draws them (shuffled, ``--batch-size`` sequences of ``max_len + 1``), split into TEMA's length
groups and trimmed as ``TEMA.training_loss`` does. Prints, per modality: the positions the stacked encoders compute
(3 views x group rows x group length), the positions if each view were trimmed to its own longest row in the group,
the positions holding an item, and SASRec's (every sequence padded to max_len); and the attention's L^2 terms.
No model is built: this is the arithmetic behind docs/BENCHMARKS.md, "Epoch time and memory".
"""

from __future__ import annotations

import argparse

import torch

from temarec.data.dataset import Dataset
from temarec.models.attention import first_used_column, length_groups
from temarec.train import train_sequences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ds = Dataset.load(args.dataset)
    seqs = train_sequences(ds, args.max_len)  # (S, max_len + 1)
    n_first = ds.domain_sizes[0]
    order = torch.randperm(len(seqs), generator=torch.Generator().manual_seed(args.seed))
    stacked = trimmed = holding = sasrec = attn_stacked = attn_trimmed = 0
    for s in range(0, len(seqs), args.batch_size):
        batch = seqs[order[s:s + args.batch_size]]
        sasrec += batch[:, :-1].numel()
        for rows in length_groups(batch):
            group = batch[rows]
            inputs = group[:, max(0, first_used_column(group) - 1):][:, :-1]  # as TEMA.training_loss
            B, L = inputs.shape
            real, second = inputs > 0, inputs > n_first
            stacked, attn_stacked = stacked + 3 * B * L, attn_stacked + 3 * B * L * L
            for count in ((real & ~second).sum(1), (real & second).sum(1), real.sum(1)):  # views X, Y, X+Y
                Lv = int(count.max())
                trimmed, attn_trimmed, holding = trimmed + B * Lv, attn_trimmed + B * Lv * Lv, holding + int(count.sum())
    print(f"encoder positions per modality and epoch: stacked {stacked:,}; each view trimmed to its own longest row "
          f"{trimmed:,} ({trimmed / stacked:.2f}x); holding an item {holding:,} ({holding / stacked:.2f}x); "
          f"SASRec {sasrec:,} (TEMA's stacked / SASRec per modality: {stacked / sasrec:.2f}x)")
    print(f"attention L^2 terms: stacked {attn_stacked:,}; views trimmed {attn_trimmed:,} "
          f"({attn_trimmed / attn_stacked:.2f}x)")


if __name__ == "__main__":
    main()
