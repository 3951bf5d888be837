"""``temarec`` command line: one subcommand per stage, each calling one stage function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from temarec import __version__
from temarec.config import explicit_keys, load_config, read_yaml
from temarec.models.registry import model_names

log = logging.getLogger("temarec")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with config sections (data, tags, features, model, train, eval)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set train.lr=3e-4 (repeatable)")


def _port(text: str) -> int:
    port = _positive(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 1..65535, got {port}")
    return port


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _config(args: argparse.Namespace):
    return load_config(args.config, args.set)


def cmd_train(args: argparse.Namespace) -> int:
    from temarec.runs import resumed_config, train_run

    overrides = [*(args.set or []), *([f"model.name={args.model}"] if args.model else [])]
    cfg = resumed_config(args.out, overrides) if args.resume and args.config is None else None
    metrics = train_run(args.dataset, cfg or load_config(args.config, overrides), args.out, resume=args.resume)
    from temarec.evaluation import format_report

    if metrics:  # under torchrun only rank 0 returns metrics
        print(format_report(metrics))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from temarec.evaluation import format_report
    from temarec.runs import evaluate_run

    metrics = evaluate_run(args.run, split=args.split, negatives=args.negatives)
    print(json.dumps(metrics, indent=2) if args.json else format_report(metrics))
    return 0


def cmd_refit(args: argparse.Namespace) -> int:
    from temarec.config import parse_overrides
    from temarec.evaluation import format_report
    from temarec.runs import refit_run

    if not args.set:
        raise ValueError("refit needs at least one --set, e.g. --set model.tema.fusion=validated")
    print(format_report(refit_run(args.run, args.out, parse_overrides(args.set))))
    return 0


def cmd_negatives(args: argparse.Namespace) -> int:
    from temarec.data.dataset import write_negatives

    written = write_negatives(args.dataset, [p.strip() for p in args.presets.split(",") if p.strip()])
    print(f"{args.dataset}: stored {', '.join(written)}" if written else f"{args.dataset}: all presets already stored")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from temarec.grid import model_variants, row_variant, run_grid, seed_list, summarise

    out = Path(args.out)
    if args.summarise:
        summarise(out)
        print((out / "results.md").read_text(), end="")
        return 0
    if not args.dataset:
        raise ValueError("--dataset is required (unless --summarise)")
    cfg = load_config(args.config, args.set, model_defaults=False)  # each row adds its model's own
    seeds = seed_list(args.seeds)
    lambdas = _lambda_grid(args)  # checked before anything trains
    default = "" if args.ablations or args.row else "pop,gru4rec,sasrec"
    models = args.models if args.models is not None else default
    if models or args.row:
        explicit = explicit_keys(read_yaml(args.config) if args.config else {}, args.set)
        rows = model_variants(models, explicit) if models else []
        rows += [row_variant(spec, explicit) for spec in args.row or []]
        run_grid(args.dataset, rows, seeds, out, cfg, args.jobs)
        print((out / "results.md").read_text(), end="")
    if args.ablations:
        from temarec.ablations import run_ablations

        run_ablations(args.dataset, seeds, out / "ablations", cfg, tables=tuple(args.tables.split(",")),
                      jobs=args.jobs, lambda1=lambdas[0], lambda2=lambdas[1])
        print((out / "ablations" / "ablations.md").read_text(), end="")
    return 0


def _lambda_grid(args: argparse.Namespace) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``--lambda1`` / ``--lambda2`` (the paper's grid where not given); they apply to the ablations' lambda grid only."""
    from temarec.ablations import LAMBDA1, LAMBDA2, lambda_values

    given = [flag for flag, value in (("--lambda1", args.lambda1), ("--lambda2", args.lambda2)) if value is not None]
    if given and not (args.ablations and "lambda" in args.tables.split(",")):
        raise ValueError(f"{' and '.join(given)} set the lambda grid of --ablations: add --ablations (with lambda "
                         "in --tables) or drop them")
    return (LAMBDA1 if args.lambda1 is None else lambda_values(args.lambda1, "--lambda1"),
            LAMBDA2 if args.lambda2 is None else lambda_values(args.lambda2, "--lambda2"))


def cmd_prepare(args: argparse.Namespace) -> int:
    from temarec.data.dataset import Dataset
    from temarec.data.prepare import importers, prepare

    known = importers()
    importer = known[args.format]
    kwargs = {}
    for flag in importer.flags:
        value = getattr(args, _flag_dest(flag.flag))
        if flag.required and not value:
            raise ValueError(f"--format {args.format} needs {flag.flag} {flag.metavar or ''}".rstrip())
        kwargs[flag.param] = value
    own = {f.flag for f in importer.flags}
    for other in {f.flag for imp in known.values() for f in imp.flags} - own:
        if getattr(args, _flag_dest(other)):
            raise ValueError(f"{other} does not apply to --format {args.format}; its flags: {', '.join(sorted(own))}")
    path = prepare(args.format, args.out, _config(args).data, domains=args.domains, overwrite=args.overwrite,
                   **kwargs)
    print(Dataset.load(path).describe())
    return 0


def _flag_dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _add_importer_flags(p: argparse.ArgumentParser) -> None:
    """--format's choices and every importer's own flags (a flag several importers share is added once)."""
    from temarec.data.prepare import importers

    known = importers()
    p.add_argument("--format", required=True, choices=list(known))
    flags = {f.flag: f for imp in known.values() for f in imp.flags}
    for name, flag in flags.items():
        formats = [fmt for fmt, imp in known.items() if any(f.flag == name for f in imp.flags)]
        p.add_argument(name, dest=_flag_dest(name), metavar=flag.metavar, help=f"{flag.help} ({', '.join(formats)})")


def cmd_download(args: argparse.Namespace) -> int:
    from temarec.data.download import download

    print(download(args.name, out=args.out, mirror=args.mirror))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from temarec.data.recbole import export

    print(export(args.dataset, args.format, args.out, overwrite=args.overwrite))
    return 0


def cmd_tags(args: argparse.Namespace) -> int:
    from temarec.tags import run_tags
    from temarec.tags.templates import show_prompts

    if args.show_prompts:
        print(show_prompts(), end="")
        return 0
    if not args.dataset:
        raise ValueError("--dataset is required (unless --show-prompts)")
    from temarec.tags.backends.base import TagsError

    try:
        summary = run_tags(args.dataset, _config(args).tags, steps=tuple(args.steps) or ("vocab", "match"))
    except (TagsError, ImportError) as exc:  # endpoint down, too many failures, missing extra: no traceback
        print(f"temarec tags: error: {exc}", file=sys.stderr)
        return 1
    print(f"tags: {summary['tag_source']}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from temarec.features import features_source, run_features

    summary = run_features(args.dataset, _config(args).features)
    print(features_source(args.dataset))
    for modality, meta in summary["modalities"].items():
        run = summary["run"][modality]
        failed = f", {meta['failures']} image failures" if "failures" in meta else ""
        print(f"{modality}: {meta['items']}/{summary['n_items']} items ({run['encoded']} encoded, "
              f"{run['from_cache']} from cache{failed})")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from temarec.quickstart import QUICK_MODELS, quickstart_config, run_quickstart

    models = tuple(m.strip() for m in args.models.split(",")) if args.models else QUICK_MODELS
    results = run_quickstart(args.out, quickstart_config(args.config, args.set), models=models)
    print("GENERATED DATA (the built-in two-domain world), not real recommendations data.\n")
    print(results.read_text())
    print(f"\nrun folders, results.json and plots: {results.parent}")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from temarec.serve.recommender import Recommender, default_threads

    rec = Recommender.load(args.run, threads=default_threads())
    if args.input or args.output:
        return _recommend_file(rec, args)
    if args.domain is None:
        raise ValueError("--domain is required (the domain to recommend from), unless --input gives one per row")
    history = [h.strip() for h in args.history.split(",") if h.strip()] if args.history else []
    result = rec.recommend(history, args.domain, k=args.k, exclude_seen=not args.include_seen, strict=args.strict)
    if args.json:
        print(json.dumps({"model": rec.model_name, "data": rec.dataset_name, "tags": rec.tag_source,
                          **result.to_dict()}, indent=2))
        return 0
    print(f"model: {rec.model_name}\ndata:  {rec.dataset_name}\ntags:  {rec.tag_source}")
    note = f"history: {result.history_used} item(s) read"
    if result.unknown_items:
        note += f"; unknown ids skipped: {', '.join(result.unknown_items)}"
    if result.fallback:
        note += f"; no known item in the history: {result.fallback} fallback"
    elif not result.items:
        note += f"; every {args.domain} item is in the history: nothing left to recommend (--include-seen allows them)"
    print(note + "\n")
    width = max([len("item")] + [len(r["item"]) for r in result])
    print(f"{'rank':>4}  {'item':<{width}}  {'score':>10}  title")
    for rank, r in enumerate(result, 1):
        print(f"{rank:>4}  {r['item']:<{width}}  {r['score']:>10.4f}  {r['title'] or ''}")
        why = r.get("explanation")
        if why and why.get("tags"):
            print(f"{'':>4}  {'':<{width}}  {'':>10}  tags: {', '.join(t['tag'] for t in why['tags'])}")
    return 0


def _recommend_file(rec, args: argparse.Namespace) -> int:
    from temarec.serve.batch import recommend_file

    if not (args.input and args.output):
        raise ValueError("--input and --output go together: recommend for every row of --input into --output")
    if args.history or args.domain or args.json:
        raise ValueError("--input takes each row's history and domain from the file; drop --history/--domain/--json")
    report = recommend_file(rec, args.input, args.output, k=args.k, exclude_seen=not args.include_seen,
                            strict=args.strict, batch_size=args.batch_size)
    print(report.summary(Path(args.output)))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from temarec.serve.app import Limits, serve
    from temarec.serve.batching import BatchingConfig

    serve(args.run, host=args.host, port=args.port, threads=args.threads, access_log=args.access_log,
          limits=Limits(max_k=args.max_k, max_history=args.max_history, max_batch=args.max_batch,
                        max_body_bytes=args.max_body_bytes),
          batching=BatchingConfig(window_ms=args.batch_window_ms, max_rows=args.batch_max_rows),
          workers=args.workers)
    return 0


def cmd_export_model(args: argparse.Namespace) -> int:
    from temarec.serve.onnx import export_onnx

    print(export_onnx(args.run, args.out, overwrite=args.overwrite))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="temarec", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"temarec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download", help="fetch a public raw data set (sha256-checked) into OUT/NAME")
    p.add_argument("name", help="abxi-food-kitchen | c2dsr-food-kitchen | amazon-titles")
    p.add_argument("--out", default="data/raw", help="folder receiving NAME/FILE (default data/raw)")
    p.add_argument("--mirror", help="local folder or base URL laid out as NAME/FILE, instead of the publishers'")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("prepare", help="import raw data into a dataset folder (items, splits, negatives)")
    p.add_argument("--domains", required=True, help="the two domain names, first domain first, e.g. Food,Kitchen")
    _add_importer_flags(p)
    p.add_argument("--out", required=True, help="dataset folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    _add_config_args(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("export", help="write a dataset folder in another library's format (RecBole)")
    p.add_argument("--dataset", required=True, help="dataset folder written by `temarec prepare`")
    p.add_argument("--format", required=True, choices=["recbole"])
    p.add_argument("--out", required=True, help="folder to create; its name is RecBole's dataset name")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("tags", help="semantic tags: vocabulary (Algorithm 1) and item-tag matching into DATASET/tags/")
    p.add_argument("steps", nargs="*", metavar="STEP", help="vocab and/or match: run only these steps (default both)")
    p.add_argument("--dataset", help="dataset folder written by `temarec prepare`")
    p.add_argument("--show-prompts", action="store_true", help="print the prompt templates and exit")
    _add_config_args(p)
    p.set_defaults(func=cmd_tags)

    p = sub.add_parser("features", help="frozen text/image encoder features into DATASET/features/")
    p.add_argument("--dataset", required=True, help="dataset folder written by `temarec prepare`")
    _add_config_args(p)
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("quickstart", help="the whole pipeline on the built-in generated world (a few minutes)")
    p.add_argument("--out", default="runs/quickstart", help="folder for data, runs and the results table")
    p.add_argument("--models", help=f"comma list among {','.join(model_names())} (default: pop,gru4rec,sasrec,tema)")
    _add_config_args(p)
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("train", help="train one model on a dataset folder; writes a run folder")
    p.add_argument("--dataset", required=True, help="dataset folder written by `temarec prepare`")
    p.add_argument("--model", help=f"{' | '.join(model_names())} (same as --set model.name=...)")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="re-score a trained run on valid or test (both protocols)")
    p.add_argument("--run", required=True, help="run folder written by `temarec train`")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.add_argument("--negatives", help="negatives preset of the sampled protocol (c2dsr | abxi); default: the run's")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("refit", help="re-fit what a trained run fits on validation (TEMA's fusion weights) under "
                                     "changed settings, into a new run folder, without retraining")
    p.add_argument("--run", required=True, help="finished run folder written by `temarec train`")
    p.add_argument("--out", required=True, help="new run folder to write")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="model.tema.fusion=validated and/or model.tema.fusion_fit=likelihood|mrr (repeatable)")
    p.set_defaults(func=cmd_refit)

    p = sub.add_parser("negatives", help="store the sampled protocol's negatives presets a dataset folder lacks")
    p.add_argument("--dataset", required=True, help="dataset folder written by `temarec prepare`")
    p.add_argument("--presets", default="c2dsr,abxi", help="comma list of presets to store (default c2dsr,abxi)")
    p.set_defaults(func=cmd_negatives)

    p = sub.add_parser("bench", help="train models x seeds; mean ± std tables (results.md) and plots")
    p.add_argument("--dataset", help="dataset folder written by `temarec prepare`")
    p.add_argument("--models", help=f"comma list among {','.join(model_names())}, one table row each (default "
                                    "pop,gru4rec,sasrec; none with --ablations or --row)")
    p.add_argument("--row", action="append", metavar="'NAME MODEL [KEY=VALUE ...] [FILE.yaml]'",
                   help="one more table row, after --models': MODEL with settings of its own that win over --set, "
                        "e.g. --row 'pinet-full pinet model.loss=full' --row 'tema-best tema configs/tema-best.yaml' "
                        "(repeatable)")
    p.add_argument("--seeds", default="3",
                   help="a count N = seeds 0..N-1 (default 3 = 0,1,2), or a comma list (0,5,7; seed 0 alone: 0,)")
    p.add_argument("--out", required=True, help="bench folder; finished runs in it are reused (resumable)")
    p.add_argument("--ablations", action="store_true", help="also run the ablation grid into OUT/ablations")
    p.add_argument("--tables", default="4,5,6,lambda",
                   help="with --ablations: which of Tables 4, 5, 6 and the lambda grid to run (default all)")
    p.add_argument("--lambda1", help="with --ablations: the lambda grid's lambda1 values, a comma list (default "
                                     "the paper's, 0.2,0.3,0.4,0.5)")
    p.add_argument("--lambda2", help="with --ablations: the lambda grid's lambda2 values, a comma list (default "
                                     "the paper's, 0.05,0.1,0.15,0.2)")
    p.add_argument("--summarise", action="store_true", help="only rebuild results and plots from OUT's runs")
    p.add_argument("--jobs", type=_positive, default=1,
                   help="runs trained at once, each in its own process (default 1); with --set train.threads=T, "
                        "keep jobs x T <= the cores")
    _add_config_args(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("recommend", help="top-k items of a domain after a history of the data's item ids")
    p.add_argument("--run", required=True, help="run folder written by `temarec train`")
    p.add_argument("--history", default="", help="comma-separated item ids, oldest first (empty: popularity)")
    p.add_argument("--domain", help="domain to recommend from, by its data name (e.g. Kitchen)")
    p.add_argument("-k", type=_positive, default=10, help="number of items (default 10)")
    p.add_argument("--include-seen", action="store_true", help="allow items already in the history")
    p.add_argument("--strict", action="store_true", help="fail on unknown item ids instead of skipping them (with "
                   "--input: also on the first bad row, instead of skipping and reporting it)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--input", help="many histories: .jsonl / .csv / .tsv / .parquet with user, history, domain "
                                   "(and optionally k) per row")
    p.add_argument("--output", help="with --input: .jsonl (one object per row) or .csv / .parquet (one row per "
                                    "recommended item); written whole or not at all")
    p.add_argument("--batch-size", type=_positive, default=256, help="with --input: rows scored together (256)")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("serve", help="HTTP service over a trained run (FastAPI; pip install 'temarec[serve]')")
    p.add_argument("--run", required=True, help="run folder written by `temarec train`")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8000, help="TCP port, 1..65535 (default 8000)")
    p.add_argument("--threads", type=_positive, help="torch intra-op threads (default 1: fastest for single requests)")
    p.add_argument("--max-k", type=_positive, default=100, help="largest k a request may ask for (default 100)")
    p.add_argument("--max-history", type=_positive, default=1000, help="most items per history (default 1000)")
    p.add_argument("--max-batch", type=_positive, default=256, help="most histories per batch request (default 256)")
    p.add_argument("--max-body-bytes", type=_positive, default=1 << 20, help="largest request body (default 1 MiB)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--batch-window-ms", type=float, default=2.0,
                   help="how long a request waits for others to be scored with it in one forward pass "
                        "(default 2 ms; 0 = score whatever is queued at once)")
    p.add_argument("--batch-max-rows", type=int, default=256, help="most histories scored in one pass (default 256)")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes on the port, each loading the run once (default 1)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export-model", help="a trained run's encoder as ONNX + item matrices as .npy "
                                            "(sasrec, gru4rec; pip install 'temarec[export]')")
    p.add_argument("--run", required=True, help="run folder written by `temarec train`")
    p.add_argument("--out", required=True, help="folder to write encoder.onnx, items_<Domain>.npy, export.json")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    p.set_defaults(func=cmd_export_model)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"temarec {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError) as exc:
        # the known failures: bad input (ValueError and its kin: DataError, RecommendError, ...), files that cannot
        # be read or written, a missing extra. Anything else escaping a command is a bug and keeps its traceback.
        log.debug("failure", exc_info=True)
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"temarec {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
