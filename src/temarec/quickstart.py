"""``temarec quickstart``: the whole pipeline on the built-in generated world, in a few minutes on 2 cores.

prepare (generate) -> tags (mined vocabulary + embedding matching) -> features (MiniLM text) ->
train + evaluate pop, gru4rec, sasrec and tema -> one table. The data is generated, and the table says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

from temarec.config import Config, load_config, parse_overrides, read_yaml

log = logging.getLogger(__name__)

QUICK_MODELS = ("pop", "gru4rec", "sasrec", "tema")
# Small enough for 2 CPU cores in a few minutes (the paper's settings are the Config defaults); applied before
# the user's --config/--set, so those still win.
QUICK_OVERRIDES = [
    "data.max_len=20",
    "model.dim=64",
    "train.epochs=12",
    "train.patience=3",
    "tags.tags_per_domain=24",
    "tags.rounds=3",
]


def quickstart_config(config_path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """The quickstart's small settings, then the user's YAML file and --set overrides on top."""
    raw = load_config(None, QUICK_OVERRIDES).to_dict()
    if config_path is not None:
        for section, values in read_yaml(config_path).items():
            if not isinstance(values, dict) or section not in raw:
                raise ValueError(f"{config_path}: {section!r} is not a config section; valid: {sorted(raw)}")
            raw[section].update(values)
    cfg = Config.from_dict(raw)
    return cfg.replace(**parse_overrides(overrides)) if overrides else cfg


def run_quickstart(out: str | Path, cfg: Config | None = None, models: tuple[str, ...] = QUICK_MODELS,
                   seeds: tuple[int, ...] = (0,)) -> Path:
    """Runs every stage into ``out`` with ``cfg`` (default: ``quickstart_config()``); returns results.md."""
    from temarec.grid import run_grid
    from temarec.data.synthetic import write_synthetic
    from temarec.features import run_features
    from temarec.tags import run_tags

    out = Path(out)
    cfg = cfg or quickstart_config()
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
