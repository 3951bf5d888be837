"""``temarec`` command line: one subcommand per stage, each calling one stage function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from temarec.config import load_config

log = logging.getLogger("temarec")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with config sections (data, tags, features, model, train, eval)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set train.lr=3e-4 (repeatable)")


def _config(args: argparse.Namespace):
    return load_config(args.config, args.set)


def cmd_train(args: argparse.Namespace) -> int:
    from temarec.train import train_run

    cfg = _config(args)
    if args.model:
        cfg = cfg.replace(**{"model.name": args.model})
    metrics = train_run(args.dataset, cfg, args.out, resume=args.resume)
    from temarec.evaluation import format_report

    print(format_report(metrics))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from temarec.evaluation import format_report
    from temarec.train import evaluate_run

    metrics = evaluate_run(args.run, split=args.split)
    print(json.dumps(metrics, indent=2) if args.json else format_report(metrics))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="temarec", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one model on a dataset folder; writes a run folder")
    p.add_argument("--dataset", required=True, help="dataset folder written by `temarec prepare`")
    p.add_argument("--model", help="random | pop | gru4rec | sasrec | tema (same as --set model.name=...)")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="re-score a trained run on valid or test (both protocols)")
    p.add_argument("--run", required=True, help="run folder written by `temarec train`")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.set_defaults(func=cmd_evaluate)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        log.debug("failure", exc_info=True)
        print(f"temarec {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
