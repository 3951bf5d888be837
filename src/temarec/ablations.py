"""``temarec bench --ablations``: TEMA's ablations (paper Tables IV-VI) and its lambda grid, on one dataset folder.

Every variant is a TEMA config override trained by :func:`temarec.grid.run_grid`, on the same split and the
same stored negatives as everything else. An ablation folder holds::

    grid/                   the main grid (bench.json, runs/, results.md): every variant but one
    keyword/dataset/        the dataset folder again (symlinks) with tags/ from keyword matching
    keyword/grid/           Table IV's "tag embeddings, static keyword assignment" row, trained on keyword/dataset
    ablations.json          the tables' numbers; ablations.md the tables in the paper's layout

The paper reports MRR on its Movie domain only; we report both domains' MRR (test, sampled protocol: the paper's)
and their mean, with the paper's numbers beside for reference. They are not comparable (other data). Each row and
the lambdas selected on validation are tested against the full model (the paper's lambdas) on the same test
instances, over the seeds both ran: the paired bootstrap interval of the MRR difference and Wilcoxon's p.

The lambda grid is the paper's (LAMBDA1 x LAMBDA2) unless the caller gives other values (``--lambda1``,
``--lambda2``); its table spans the paper's values and every other one the folder holds, so grids run by
separate calls accumulate.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from temarec.grid import Variant, interval_text, presets, rank_frames, run_grid, summarise
from temarec.config import Config
from temarec.fileio import write_json_atomic, write_text_atomic
from temarec.significance import against_reference, format_p

log = logging.getLogger(__name__)

PAPER_LAMBDAS = (0.3, 0.1)  # the full model's


def lambda_text(l1: float, l2: float) -> str:
    """"0.3,0.1": a grid cell as ``model.tema.lambdas`` takes it and as the reports key it."""
    return f"{l1:g},{l2:g}"


FULL = {"model.name": "tema", "model.tema.modalities": "id,img,txt,tag", "model.tema.views": "multi",
        "tags.selection": "hybrid", "tags.representation": "weighted",
        "model.tema.lambdas": lambda_text(*PAPER_LAMBDAS)}
MERGED_ID_TAG = {**FULL, "model.tema.modalities": "id,tag", "model.tema.views": "merged"}
KEYWORD_ROW = "tag-keyword-merged"

# Table IV: (variant, label, paper MRR on Movie or None); the keyword row is trained on keyword/dataset
TABLE4 = [
    ("base-id-merged", "base: ID only, one merged-sequence encoder", 5.03),
    (KEYWORD_ROW, "+ tag embeddings, static keyword assignment", 5.56),
    ("tag-matched-merged", "+ matched tags (embedding matching)", 5.89),
    ("tag-matched-multi", "+ multi-attention (3 views; ID and tags only)", None),
    ("tema", "full TEMA (+ text, image where available; 3 views)", 6.41),
]
TABLE5 = [("tags-onehot", "One-hot tag vector (single tag)", 6.13),
          ("tags-multihot", "Unweighted multi-hot (equal weights)", 6.30),
          ("tema", "Weighted multi-hot (ours)", 6.41)]
TABLE6 = [("tags-topr", "Top-R only", 6.29),
          ("tags-threshold", "Threshold-theta only", 6.14),
          ("tema", "Top-R + Threshold-theta (hybrid)", 6.41)]
LAMBDA1 = (0.2, 0.3, 0.4, 0.5)
LAMBDA2 = (0.05, 0.1, 0.15, 0.2)
TABLES = ("4", "5", "6", "lambda")  # what ``--tables`` selects: Tables IV, V, VI and the lambda grid
LAMBDA_PREFIX = "lambda-"


def lambda_name(l1: float, l2: float) -> str:
    return "tema" if (l1, l2) == PAPER_LAMBDAS else f"{LAMBDA_PREFIX}{l1:g}-{l2:g}"


def lambda_values(text: str, flag: str) -> tuple[float, ...]:
    """``--lambda1`` / ``--lambda2``: a comma list of distinct weights, each 0 or in [0.0001, 100] (so that the
    run names written by :func:`lambda_name` read back: no exponent)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{flag} needs a comma list of numbers, e.g. 0.1,0.2,0.3; got {text!r}") from None
    bad = [v for v in values if not (v == 0 or 1e-4 <= v <= 100)]
    if bad or len(set(values)) != len(values):
        raise ValueError(f"{flag} needs distinct weights, each 0 or between 0.0001 and 100; got {text!r}")
    return values


def lambda_cell(name: str) -> tuple[float, float] | None:
    """(lambda1, lambda2) of a grid variant's name, None for any other name (another table's variant)."""
    if name == "tema":
        return PAPER_LAMBDAS
    if not name.startswith(LAMBDA_PREFIX):
        return None
    try:
        l1, l2 = name[len(LAMBDA_PREFIX):].split("-")
        return float(l1), float(l2)
    except ValueError:
        return None


def variants(tables: tuple[str, ...] = TABLES, lambda1: tuple[float, ...] = LAMBDA1,
             lambda2: tuple[float, ...] = LAMBDA2) -> list[Variant]:
    """The main grid's variants for ``tables`` (their rows but the keyword one), each a full set of TEMA
    overrides; the full model ("tema") belongs to every table, the lambda grid (``lambda1`` x ``lambda2``)
    included: the selected lambdas are tested against it."""
    unknown = [t for t in tables if t not in TABLES]
    if unknown or not tables:
        raise ValueError(f"unknown ablation tables {unknown or list(tables)}; choose among {', '.join(TABLES)}")
    rows = {
        "base-id-merged": {**FULL, "model.tema.modalities": "id", "model.tema.views": "merged"},
        "tag-matched-merged": MERGED_ID_TAG,
        "tag-matched-multi": {**FULL, "model.tema.modalities": "id,tag"},
        "tema": FULL,
        "tags-onehot": {**FULL, "tags.representation": "onehot"},
        "tags-multihot": {**FULL, "tags.representation": "multihot"},
        "tags-topr": {**FULL, "tags.selection": "topr"},
        "tags-threshold": {**FULL, "tags.selection": "threshold"},
    }
    grid = {lambda_name(l1, l2): {**FULL, "model.tema.lambdas": lambda_text(l1, l2)} for l1 in lambda1 for l2 in lambda2}
    wanted = {"4": [v for v, _, _ in TABLE4 if v != KEYWORD_ROW], "5": [v for v, _, _ in TABLE5],
              "6": [v for v, _, _ in TABLE6], "lambda": ["tema", *(v for v in grid if v != "tema")]}
    overrides = {**rows, **grid}
    out: dict[str, dict[str, str]] = {}
    for table in (t for t in TABLES if t in tables):
        out.update({name: overrides[name] for name in wanted[table]})
    return list(out.items())


def keyword_dataset(dataset_dir: str | Path, out: Path, base_cfg: Config) -> Path:
    """``out``: the dataset folder again (symlinks: same items, splits, negatives, features) with tags/ from
    keyword matching against the *same* vocabulary (Table IV's static keyword assignment)."""
    from temarec.tags import run_tags
    from temarec.data.content import META, SCORES, VOCAB, tags_dir

    src = Path(dataset_dir).resolve()
    if not (tags_dir(src) / VOCAB).is_file():
        raise ValueError(f"{src} has no tag vocabulary; run `temarec tags --dataset {src}` before the ablations")
    if (tags_dir(out) / SCORES).is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        if entry.name != "tags" and not (out / entry.name).exists():
            os.symlink(entry, out / entry.name)
    tags_dir(out).mkdir(exist_ok=True)
    for name in (VOCAB, META):
        shutil.copyfile(tags_dir(src) / name, tags_dir(out) / name)
    cfg = base_cfg.replace(**{"tags.match_backend": "keyword", "tags.cache_path": ""})
    log.info("Table IV keyword row: matching %s against the same vocabulary by keywords", out)
    run_tags(out, cfg.tags, steps=("match",))
    return out


def run_ablations(dataset_dir: str | Path, seeds: list[int], out_dir: str | Path, base_cfg: Config,
                  tables: tuple[str, ...] = TABLES, jobs: int = 1, lambda1: tuple[float, ...] = LAMBDA1,
                  lambda2: tuple[float, ...] = LAMBDA2) -> dict[str, Any]:
    """Train the variants of ``tables`` for every seed (finished runs are reused), ``jobs`` runs at once; write
    ablations.md/.json. ``lambda1`` x ``lambda2``: the lambda grid's cells (default the paper's).

    The tables show every finished run of the folder, so tables run by separate calls accumulate.
    """
    rows = variants(tables, lambda1, lambda2)  # an unknown table fails here, before OUT is created
    out = Path(out_dir)
    main = run_grid(dataset_dir, rows, seeds, out / "grid", base_cfg, jobs)
    results, protocols = dict(main["results"]), dict(main["protocol"])
    keyword_grid = out / "keyword" / "grid"
    keyword = None
    if "4" in tables:
        keyword_dir = keyword_dataset(dataset_dir, out / "keyword" / "dataset", base_cfg)
        keyword = run_grid(keyword_dir, [(KEYWORD_ROW, MERGED_ID_TAG)], seeds, keyword_grid, base_cfg, jobs)
    elif any(keyword_grid.glob("runs/*/seed*/metrics.json")):  # Table IV's keyword row from an earlier call
        keyword = summarise(keyword_grid)
    frames = rank_frames(out / "grid")
    if keyword:
        results.update(keyword["results"])
        protocols.update(keyword["protocol"])
        frames.update(rank_frames(keyword_grid))
    summary = summarise_ablations(results, protocols, frames)
    write_json_atomic(out / "ablations.json", summary)
    write_text_atomic(out / "ablations.md", format_ablations(summary))
    log.info("wrote %s", out / "ablations.md")
    return summary


def _mrr(result: dict[str, Any], split: str) -> dict[str, float]:
    """{domain: MRR in %, "mean": ...} of one variant (mean over seeds), sampled protocol."""
    per = {d: 100 * m["mrr"] for d, m in result["mean"][split]["sampled"].items()}
    per["mean"] = sum(per.values()) / len(per)
    return per


def against_full(frames: dict[str, dict[int, Any]], domains: list[str]) -> dict[str, dict[str, Any]]:
    """{variant: {domain: test-MRR comparison with the full model "tema"}} (sampled protocol, across the seeds
    both ran: mean_diff, ci95, p, seeds); empty without the full model's per-instance ranks."""
    if "tema" not in frames:
        return {}
    tests = against_reference(frames, "tema", domains, ("sampled",)).get("sampled", {})
    out: dict[str, dict[str, Any]] = {}
    for domain, by_variant in tests.items():
        for variant, r in by_variant.items():
            out.setdefault(variant, {})[domain] = {**r["across_seeds"], "seeds": r["seeds"]}
    return out


def summarise_ablations(results: dict[str, Any], protocols: dict[str, Any],
                        frames: dict[str, dict[int, Any]] | None = None) -> dict[str, Any]:
    """The tables' rows (test MRR, %), the lambda grid (validation MRR, %) and the lambdas selected on validation;
    with ``frames`` (per-instance ranks, :func:`temarec.grid.rank_frames`) each row and the selected lambdas
    against the full model."""
    domains = [d for d in next(iter(results.values()))["mean"]["test"]["sampled"]]
    versus = against_full(frames or {}, domains)

    def rows(table: list[tuple[str, str, float | None]]) -> list[dict[str, Any]]:
        if not any(v in results for v, _, _ in table if v != "tema"):  # the full model alone is no table
            return []
        return [{"variant": v, "label": label, "paper_movie_mrr": paper, "test_mrr": _mrr(results[v], "test"),
                 "valid_mrr": _mrr(results[v], "valid"), "seeds": len(results[v]["seeds"]),
                 "tags": protocols[v]["tags"], "vs_full": versus.get(v)} for v, label, paper in table if v in results]

    found = {cell: name for name in results if (cell := lambda_cell(name))}
    cells = {lambda_text(l1, l2): found[l1, l2] for l1, l2 in sorted(found)}
    if set(cells.values()) <= {"tema"}:  # the full model alone is no grid
        cells = {}
    grid = {key: _mrr(results[name], "valid")["mean"] for key, name in cells.items()}
    seed_lists = {key: sorted(int(s) for s in results[name]["seeds"]) for key, name in cells.items()}
    best = max(grid, key=grid.get) if grid else None
    return {"domains": domains, "table4": rows(TABLE4), "table5": rows(TABLE5), "table6": rows(TABLE6),
            "lambda_grid_valid_mrr": grid,
            "lambda_grid_seeds": {key: len(seeds) for key, seeds in seed_lists.items()},
            "lambda_grid_seed_lists": seed_lists,
            "lambda_selected": best,
            "lambda_selected_test_mrr": _mrr(results[cells[best]], "test") if best else None,
            "lambda_selected_vs_paper": versus.get(cells[best]) if best else None,
            "data": protocols["tema"]["data"] if "tema" in protocols else "",
            "sources": _sources(protocols)}


def _sources(protocols: dict[str, Any]) -> dict[str, str]:
    """What produced the numbers, over every variant: negatives, preset, training loss, encoders; the tag source
    of the full model and of Table IV's keyword row (the one row whose tags come from elsewhere)."""
    every = lambda key: " / ".join(sorted({str(p.get(key, "")) for p in protocols.values()}))  # noqa: E731
    tags = {name: protocols[name]["tags"] for name in ("tema", KEYWORD_ROW) if name in protocols}
    return {"negatives": every("negatives"), "preset": presets(protocols), "training": every("training"),
            "encoders": every("encoders"), "tags": tags}


def _versus(test: dict[str, Any] | None) -> str:
    """One comparison with the full model: ΔMRR in points, its 95% interval and Wilcoxon's p."""
    if not test:
        return "—"
    return f"{100 * test['mean_diff']:+.2f} {interval_text(test)}, p {format_p(test['p'])}"


def _table(title: str, rows: list[dict[str, Any]], domains: list[str]) -> list[str]:
    tested = any(r.get("vs_full") for r in rows)
    versus = [f"{d}: Δ vs full" for d in domains] if tested else []
    head = ("| variant | " + " | ".join(f"{d} MRR" for d in domains) + " | mean MRR | seeds | "
            + "".join(f"{v} | " for v in versus) + "paper (Movie) MRR |")
    lines = [f"## {title}", "", head, "|---|" + "---|" * (len(domains) + 3 + len(versus))]
    for r in rows:
        cells = " | ".join(f"{r['test_mrr'][d]:.2f}" for d in domains)
        paper = f"{r['paper_movie_mrr']:.2f}" if r["paper_movie_mrr"] is not None else "—"
        tests = "".join(f"{_versus((r.get('vs_full') or {}).get(d))} | " for d in domains) if tested else ""
        lines.append(f"| {r['label']} | {cells} | {r['test_mrr']['mean']:.2f} | {r['seeds']} | {tests}{paper} |")
    return lines + [""]


def format_ablations(summary: dict[str, Any]) -> str:
    domains = summary["domains"]
    lines = ["# TEMA ablations", "",
             f"- data: {summary['data']}",
             "- test MRR in %, sampled protocol (the paper's), mean over seeds; the paper's column is its Movie "
             "domain (Movie-Book data), for reference only"]
    sources = summary.get("sources")
    if sources:  # what produced the numbers
        label = {"tema": "full model", KEYWORD_ROW: "Table IV's keyword row"}
        lines += [f"- protocol, sampled: the target against {sources['negatives']} stored negatives of its domain, "
                  f"negatives preset {sources['preset']}",
                  f"- training: {sources['training']}; encoders {sources['encoders']}",
                  *(f"- tags, {label[name]}: {text}" for name, text in sources["tags"].items())]
    lines += ["- rows 1-3 of Table IV use one merged-sequence encoder; the keyword row is trained on a copy of the "
              "dataset whose tags come from keyword matching against the same vocabulary",
              "- Δ vs full: the row's test MRR minus the full model's (points), on the same test instances over the "
              "seeds both ran (each instance's reciprocal rank averaged over them), with the paired bootstrap 95% "
              "interval and the Wilcoxon signed-rank p", ""]
    for title, key in (("Table IV: core modules", "table4"), ("Table V: tag representation", "table5"),
                       ("Table VI: tag selection", "table6")):
        lines += _table(title, summary[key], domains) if summary[key] else []
    grid = summary["lambda_grid_valid_mrr"]
    if grid:
        pairs = [tuple(key.split(",")) for key in grid]  # axes: the paper's values and every other one held
        rows = sorted({l1 for l1, _ in pairs} | {f"{v:g}" for v in LAMBDA1}, key=float)
        columns = sorted({l2 for _, l2 in pairs} | {f"{v:g}" for v in LAMBDA2}, key=float)
        lines += ["## lambda grid (validation MRR, mean over domains, %)", "",
                  "| lambda1 \\ lambda2 | " + " | ".join(columns) + " |",
                  "|---|" + "---|" * len(columns)]
        # the seeds of each cell: cells holding different seeds (not only different counts) are marked with theirs
        seeds = {k: ",".join(map(str, v)) for k, v in summary.get("lambda_grid_seed_lists", {}).items()}
        uneven = len(set(seeds.values())) > 1
        for l1 in rows:
            keys = [f"{l1},{l2}" for l2 in columns]
            cells = [(f"{grid[k]:.2f}" + (f" (s{seeds[k]})" if uneven else "")) if k in grid else "" for k in keys]
            lines.append(f"| {l1} | " + " | ".join(cells) + " |")
        lines += ["", "(sN,M): the seeds a cell holds, where the cells differ; its figure is their mean, so cells of "
                  "different seeds compare less well than cells of the same ones." if uneven
                  else f"Seeds of every cell: {next(iter(seeds.values()))}." if seeds else ""]
        test = summary["lambda_selected_test_mrr"]
        paper = lambda_text(*PAPER_LAMBDAS)
        lines += ["", f"Selected on validation: lambda1, lambda2 = {summary['lambda_selected']} (paper: {paper.replace(',', ', ')}); "
                  "its test MRR: " + ", ".join(f"{d} {test[d]:.2f}" for d in domains) + f", mean {test['mean']:.2f}."]
        versus = summary.get("lambda_selected_vs_paper")
        if summary["lambda_selected"] == paper:
            lines.append("These are the paper's lambdas: validation picks the full model itself.")
        elif versus:
            used = next(iter(versus.values()))["seeds"]
            lines.append("Against the paper's lambdas, same test instances, seeds " + ", ".join(map(str, used))
                         + ": " + "; ".join(f"{d} {_versus(versus.get(d))}" for d in domains) + ".")
    return "\n".join(lines) + "\n"
