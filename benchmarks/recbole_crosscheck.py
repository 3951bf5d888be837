"""Helper of recbole_crosscheck.sh: RecBole's SASRec on temarec's exported split, ranked both ways; the comparison.

Two modes, each run by the interpreter that has its library:

``recbole`` (the throwaway RecBole venv)
    Trains RecBole 1.2.1's SASRec (full-ranking leave-one-out from the exported yaml), evaluates the best-on-
    validation checkpoint with RecBole's own evaluator, then scores every test user once and writes, per user,
    the target's rank (a) among all items of both domains, as RecBole ranks, and (b) among the items of the
    target's domain only, as temarec's ``full`` protocol ranks. Ranks count strictly higher scores, no
    history masking (RecBole masks no history for sequential models either).
``compare`` (temarec's venv)
    Checks that RecBole's test (user, target) pairs are temarec's, and prints one markdown table: RecBole as
    it reports itself, RecBole ranked per domain, and temarec's SASRec under its ``full`` protocol.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("recbole_crosscheck")

# RecBole SASRec settings chosen to match temarec's SASRec config given by the shell script
RECBOLE_SETTINGS = {
    "hidden_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 1,
    "hidden_dropout_prob": 0.3, "attn_dropout_prob": 0.3, "loss_type": "CE", "train_neg_sample_args": None,
    "learning_rate": 1e-3, "train_batch_size": 2048, "eval_batch_size": 1024,
    "metrics": ["MRR", "NDCG", "Hit"], "topk": [10], "valid_metric": "MRR@10", "stopping_step": 10,
    "show_progress": False, "reproducibility": True,
    # RecBole 1.2.1 cannot read an empty token_seq cell (items without a title: "'float' object has no
    # attribute 'split'"), and SASRec needs no title: load the domain only
    "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "domain"]},
}


def run_recbole(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    sys.argv = sys.argv[:1]  # RecBole's Config also parses the command line; ours is not for it
    settings = dict(RECBOLE_SETTINGS, epochs=args.epochs, seed=args.seed,
                    checkpoint_dir=str(Path(args.out).parent / "recbole_saved"))
    yaml = Path(args.yaml)
    config = Config(model="SASRec", dataset=yaml.stem, config_file_list=[str(yaml)], config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = SASRec(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)
    t0 = time.perf_counter()
    best_valid, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    train_s = time.perf_counter() - t0
    native = trainer.evaluate(test_data, load_best_model=True, show_progress=False)

    item_domain = dataset.item_feat["domain"].numpy()  # (n_items,) domain token id per RecBole item id
    domain_names = dataset.field2id_token["domain"]
    item_tokens, user_tokens = dataset.field2id_token["item_id"], dataset.field2id_token["user_id"]
    item_domain_t = torch.from_numpy(item_domain)
    rows = []
    model = trainer.model.eval()
    with torch.no_grad():
        for interaction, _, _, targets in test_data:
            scores = model.full_sort_predict(interaction.to(config["device"])).view(len(targets), -1).cpu()
            scores[:, 0] = -np.inf  # padding id
            t_score = scores.gather(1, targets[:, None])  # (B, 1)
            higher = scores > t_score  # (B, n_items)
            rank_all = 1 + higher.sum(1)
            same_domain = item_domain_t[None, :] == item_domain_t[targets][:, None]  # (B, n_items)
            rank_domain = 1 + (higher & same_domain).sum(1)
            for u, t, ra, rd in zip(interaction["user_id"].tolist(), targets.tolist(), rank_all.tolist(),
                                    rank_domain.tolist()):
                rows.append([user_tokens[u], item_tokens[t], domain_names[item_domain[t]], ra, rd])
    out = {"native_test": {k: float(v) for k, v in native.items()}, "best_valid_mrr@10": float(best_valid),
           "train_s": round(train_s, 1), "epochs_max": args.epochs, "settings": settings,
           "n_items": int(dataset.item_num - 1), "rows": rows}
    Path(args.out).write_text(json.dumps(out))
    log.info("wrote %d test ranks to %s", len(rows), args.out)


def compare(args: argparse.Namespace) -> None:
    import numpy as np

    from temarec.data.dataset import Dataset
    from temarec.evaluation import metrics_from_ranks

    rb = json.loads(Path(args.recbole).read_text())
    ours = json.loads((Path(args.ours_run) / "metrics.json").read_text())
    data = Dataset.load(args.dataset)
    items = data.items["item"].to_numpy()
    test = data.split("test")
    expected = {str(u): (items[t], data.domains[d]) for u, t, d in zip(test["user"], test["target"], test["domain"])}
    got = {r[0]: (r[1], r[2]) for r in rb["rows"]}
    same = sum(got.get(u) == v for u, v in expected.items())
    print(f"test targets: RecBole {len(got):,} users, temarec {len(expected):,}; identical (user, item, domain): "
          f"{same:,}{' (all)' if same == len(expected) == len(got) else ' -- SPLITS DIFFER'}")

    rows = np.array([(r[2], r[3], r[4]) for r in rb["rows"]], dtype=object)
    head = "| ranking | domain | n | MRR | NDCG@10 | HR@10 |"
    lines = [head, "|---|---|---|---|---|---|"]

    def line(name: str, domain: str, m: dict) -> None:
        lines.append(f"| {name} | {domain} | {m['n']:,} | {100 * m['mrr']:.2f} | {100 * m['ndcg@10']:.2f} "
                     f"| {100 * m['hr@10']:.2f} |")

    n = rb["native_test"]
    lines.append(f"| RecBole's own evaluator: all {rb['n_items']:,} items (MRR@10 truncated) | all | "
                 f"{len(rows):,} | {100 * n['mrr@10']:.2f} | {100 * n['ndcg@10']:.2f} | {100 * n['hit@10']:.2f} |")
    line("RecBole SASRec, all items of both domains", "all", metrics_from_ranks(rows[:, 1].astype(float)))
    for d in data.domains:
        sel = rows[:, 0] == d
        line("RecBole SASRec, all items of both domains", d, metrics_from_ranks(rows[sel, 1].astype(float)))
    for d in data.domains:
        sel = rows[:, 0] == d
        line("RecBole SASRec, items of the target's domain", d, metrics_from_ranks(rows[sel, 2].astype(float)))
    for d in data.domains:
        line("temarec SASRec, `full` protocol (target's domain)", d, ours["test"]["full"][d])
    for d in data.domains:
        line("temarec SASRec, `sampled` protocol (999 negatives)", d, ours["test"]["sampled"][d])
    print("\n".join(lines))
    print(f"\nRecBole: {rb['train_s']:.0f} s training (max {rb['epochs_max']} epochs, early stop on valid MRR@10); "
          f"temarec: {ours['timing']['train_s']:.0f} s, {ours['timing']['epochs']} epochs, "
          f"selected epoch {ours['selected_epoch']}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("recbole", help="train RecBole's SASRec and write its test ranks (RecBole venv)")
    r.add_argument("--yaml", required=True, help="NAME.yaml written by `temarec export --format recbole`")
    r.add_argument("--epochs", type=int, default=5)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", required=True, help="ranks JSON to write")
    c = sub.add_parser("compare", help="compare RecBole's ranks with a temarec run (temarec venv)")
    c.add_argument("--recbole", required=True, help="ranks JSON of the recbole mode")
    c.add_argument("--ours-run", required=True, help="temarec SASRec run folder on the same dataset")
    c.add_argument("--dataset", required=True, help="the temarec dataset folder that was exported")
    args = p.parse_args()
    run_recbole(args) if args.mode == "recbole" else compare(args)


if __name__ == "__main__":
    main()
