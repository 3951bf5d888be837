"""``temarec quickstart``: the whole pipeline on the built-in generated world, in a few minutes on 2 cores.

prepare (generate) -> tags (mined vocabulary + embedding matching) -> features (MiniLM text) ->
train + evaluate pop, gru4rec, sasrec and tema -> one table. The data is generated, and the table says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

from temarec.config import Config

log = logging.getLogger(__name__)

QUICK_MODELS = ("pop", "gru4rec", "sasrec", "tema")
# Small enough for 2 CPU cores in a few minutes; the paper's settings are the Config defaults.
QUICK_OVERRIDES = {
    "data.max_len": "20",
    "model.dim": "64",
    "train.epochs": "12",
    "train.patience": "3",
    "tags.tags_per_domain": "24",
    "tags.rounds": "3",
}


def run_quickstart(out: str | Path, cfg: Config | None = None, models: tuple[str, ...] = QUICK_MODELS,
                   seeds: tuple[int, ...] = (0,)) -> Path:
    """Runs every stage into ``out``; returns the path of the results table (results.md)."""
    from temarec.bench import run_grid
    from temarec.data.synthetic import write_synthetic
    from temarec.features import run_features
    from temarec.tags import run_tags

    out = Path(out)
    cfg = (cfg or Config()).replace(**QUICK_OVERRIDES)
    data_dir = out / "data"
    if not (data_dir / "manifest.json").is_file():
        log.info("generating the built-in two-domain world into %s", data_dir)
        write_synthetic(data_dir, cfg.data)
    if "tema" in models:
        log.info("tags: %s vocabulary + %s matching", cfg.tags.vocab_backend, cfg.tags.match_backend)
        run_tags(data_dir, cfg.tags)
        log.info("features: text encoder %s", cfg.features.text_encoder)
        run_features(data_dir, cfg.features)
    variants = [(m, {"model.name": m}) for m in models]
    run_grid(data_dir, variants, list(seeds), out / "bench", cfg)
    return out / "bench" / "results.md"
