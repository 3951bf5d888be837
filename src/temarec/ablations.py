"""``temarec bench --ablations``: TEMA's ablations (paper Tables IV-VI) and its lambda grid, on one dataset folder.

Every variant is a TEMA config override trained by :func:`temarec.grid.run_grid`, on the same split and the
same stored negatives as everything else. An ablation folder holds::

    grid/                   the main grid (bench.json, runs/, results.md): every variant but one
    keyword/dataset/        the dataset folder again (symlinks) with tags/ from keyword matching
    keyword/grid/           Table IV's "tag embeddings, static keyword assignment" row, trained on keyword/dataset
    ablations.json          the tables' numbers; ablations.md the tables in the paper's layout

The paper reports MRR on its Movie domain only; we report both domains' MRR (test, sampled protocol: the paper's)
and their mean, with the paper's numbers beside for reference. They are not comparable (other data).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from temarec.grid import Variant, run_grid, summarise
from temarec.config import Config
from temarec.fileio import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

FULL = {"model.name": "tema", "model.tema.modalities": "id,img,txt,tag", "model.tema.views": "multi",
        "tags.selection": "hybrid", "tags.representation": "weighted", "model.tema.lambdas": "0.3,0.1"}
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


def lambda_name(l1: float, l2: float) -> str:
    return "tema" if (l1, l2) == (0.3, 0.1) else f"lambda-{l1:g}-{l2:g}"


def variants(tables: tuple[str, ...] = TABLES) -> list[Variant]:
    """The main grid's variants for ``tables`` (their rows but the keyword one), each a full set of TEMA
    overrides; the full model ("tema") belongs to every table."""
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
    grid = {lambda_name(l1, l2): {**FULL, "model.tema.lambdas": f"{l1:g},{l2:g}"} for l1 in LAMBDA1 for l2 in LAMBDA2}
    wanted = {"4": [v for v, _, _ in TABLE4 if v != KEYWORD_ROW], "5": [v for v, _, _ in TABLE5],
              "6": [v for v, _, _ in TABLE6], "lambda": list(grid)}
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
                  tables: tuple[str, ...] = TABLES, jobs: int = 1) -> dict[str, Any]:
    """Train the variants of ``tables`` for every seed (finished runs are reused), ``jobs`` runs at once; write
    ablations.md/.json.

    The tables show every finished run of the folder, so tables run by separate calls accumulate.
    """
    rows = variants(tables)  # an unknown table fails here, before OUT is created
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    main = run_grid(dataset_dir, rows, seeds, out / "grid", base_cfg, jobs)
    results, protocols = dict(main["results"]), dict(main["protocol"])
    keyword_grid = out / "keyword" / "grid"
    keyword = None
    if "4" in tables:
        keyword_dir = keyword_dataset(dataset_dir, out / "keyword" / "dataset", base_cfg)
        keyword = run_grid(keyword_dir, [(KEYWORD_ROW, MERGED_ID_TAG)], seeds, keyword_grid, base_cfg, jobs)
    elif any(keyword_grid.glob("runs/*/seed*/metrics.json")):  # Table IV's keyword row from an earlier call
        keyword = summarise(keyword_grid)
    if keyword:
        results.update(keyword["results"])
        protocols.update(keyword["protocol"])
    summary = summarise_ablations(results, protocols)
    write_json_atomic(out / "ablations.json", summary)
    write_text_atomic(out / "ablations.md", format_ablations(summary))
    log.info("wrote %s", out / "ablations.md")
    return summary


def _mrr(result: dict[str, Any], split: str) -> dict[str, float]:
    """{domain: MRR in %, "mean": ...} of one variant (mean over seeds), sampled protocol."""
    per = {d: 100 * m["mrr"] for d, m in result["mean"][split]["sampled"].items()}
    per["mean"] = sum(per.values()) / len(per)
    return per


def summarise_ablations(results: dict[str, Any], protocols: dict[str, Any]) -> dict[str, Any]:
    """The tables' rows (test MRR, %), the lambda grid (validation MRR, %) and the lambdas selected on validation."""
    def rows(table: list[tuple[str, str, float | None]]) -> list[dict[str, Any]]:
        if not any(v in results for v, _, _ in table if v != "tema"):  # the full model alone is no table
            return []
        return [{"variant": v, "label": label, "paper_movie_mrr": paper, "test_mrr": _mrr(results[v], "test"),
                 "valid_mrr": _mrr(results[v], "valid"), "seeds": len(results[v]["seeds"]),
                 "tags": protocols[v]["tags"]} for v, label, paper in table if v in results]

    grid = {f"{l1:g},{l2:g}": _mrr(results[lambda_name(l1, l2)], "valid")["mean"]
            for l1 in LAMBDA1 for l2 in LAMBDA2 if lambda_name(l1, l2) in results}
    if not any(v.startswith("lambda-") for v in results):  # the full model alone is no grid
        grid = {}
    best = max(grid, key=grid.get) if grid else None
    l1, l2 = (float(x) for x in best.split(",")) if best else (0.3, 0.1)
    domains = [d for d in next(iter(results.values()))["mean"]["test"]["sampled"]]
    return {"domains": domains, "table4": rows(TABLE4), "table5": rows(TABLE5), "table6": rows(TABLE6),
            "lambda_grid_valid_mrr": grid, "lambda_selected": best,
            "lambda_selected_test_mrr": _mrr(results[lambda_name(l1, l2)], "test") if best else None,
            "data": protocols["tema"]["data"] if "tema" in protocols else ""}


def _table(title: str, rows: list[dict[str, Any]], domains: list[str]) -> list[str]:
    head = "| variant | " + " | ".join(f"{d} MRR" for d in domains) + " | mean MRR | seeds | paper (Movie) MRR |"
    lines = [f"## {title}", "", head, "|---|" + "---|" * (len(domains) + 3)]
    for r in rows:
        cells = " | ".join(f"{r['test_mrr'][d]:.2f}" for d in domains)
        paper = f"{r['paper_movie_mrr']:.2f}" if r["paper_movie_mrr"] is not None else "—"
        lines.append(f"| {r['label']} | {cells} | {r['test_mrr']['mean']:.2f} | {r['seeds']} | {paper} |")
    return lines + [""]


def format_ablations(summary: dict[str, Any]) -> str:
    domains = summary["domains"]
    lines = ["# TEMA ablations", "",
             f"- data: {summary['data']}",
             "- test MRR in %, sampled protocol (the paper's), mean over seeds; the paper's column is its Movie "
             "domain (Movie-Book data), for reference only",
             "- rows 1-3 of Table IV use one merged-sequence encoder; the keyword row is trained on a copy of the "
             "dataset whose tags come from keyword matching against the same vocabulary", ""]
    for title, key in (("Table IV: core modules", "table4"), ("Table V: tag representation", "table5"),
                       ("Table VI: tag selection", "table6")):
        lines += _table(title, summary[key], domains) if summary[key] else []
    grid = summary["lambda_grid_valid_mrr"]
    if grid:
        lines += ["## lambda grid (validation MRR, mean over domains, %)", "",
                  "| lambda1 \\ lambda2 | " + " | ".join(f"{l2:g}" for l2 in LAMBDA2) + " |",
                  "|---|" + "---|" * len(LAMBDA2)]
        for l1 in LAMBDA1:
            cells = [f"{grid[f'{l1:g},{l2:g}']:.2f}" if f"{l1:g},{l2:g}" in grid else "" for l2 in LAMBDA2]
            lines.append(f"| {l1:g} | " + " | ".join(cells) + " |")
        test = summary["lambda_selected_test_mrr"]
        lines += ["", f"Selected on validation: lambda1, lambda2 = {summary['lambda_selected']} (paper: 0.3, 0.1); "
                  "its test MRR: " + ", ".join(f"{d} {test[d]:.2f}" for d in domains) + f", mean {test['mean']:.2f}."]
    return "\n".join(lines) + "\n"
