"""Typed, frozen configuration: one dataclass per stage, loaded from YAML with ``--set section.key=value``.

The resolved config is written as JSON into every run folder and checkpoint (never pickled), and
``Config.from_dict`` reads it back, so a run can be reproduced from its own folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import yaml


def _check(condition: bool, message: str) -> None:
    """Raise ValueError (never ``assert``: it vanishes under ``python -O``)."""
    if not condition:
        raise ValueError(message)


# longest history a model may read: attention holds (B, L, L) scores per head, so beyond this a run only runs out
# of memory; histories longer than max_len keep their most recent items
MAX_LEN_LIMIT = 4096
_DEVICE = re.compile(r"cpu|cuda|cuda:\d+|mps")


@dataclass(frozen=True)
class DataConfig:
    max_len: int = 50  # longest history a model sees (most recent items kept)
    num_negatives: int = 999  # sampled protocol: negatives per valid/test instance (C2DSR: 999)
    negative_seed: int = 2022  # negatives are drawn once per dataset with this seed
    min_user_interactions: int = 10  # paper filter, for the interactions/amazon importers
    min_user_per_domain: int = 3
    min_item_count: int = 1

    def __post_init__(self) -> None:
        _check(1 <= self.max_len <= MAX_LEN_LIMIT, f"data.max_len must be in 1..{MAX_LEN_LIMIT}, got {self.max_len}")
        _check(self.num_negatives >= 1, f"data.num_negatives must be >= 1, got {self.num_negatives}")
        _check(self.min_user_interactions >= 3,
               "data.min_user_interactions must be >= 3 (one test target, one valid target, one to train on)")
        _check(self.min_user_per_domain >= 0, "data.min_user_per_domain must be >= 0")
        _check(self.min_item_count >= 1, "data.min_item_count must be >= 1")


@dataclass(frozen=True)
class TagsConfig:
    vocab_backend: str = "mined"  # mined | openai | llamacpp
    match_backend: str = "embedding"  # embedding | keyword | openai | llamacpp
    tags_per_domain: int = 50  # N in eq. (1)
    rounds: int = 5  # R in eq. (1) / Algorithm 1
    min_votes: int = 0  # votes a tag needs among the R responses (eq. 2); 0 = a majority, R // 2 + 1
    selection: str = "hybrid"  # topr | threshold | hybrid (Table VI)
    representation: str = "weighted"  # onehot | multihot | weighted (Table V)
    top_r: int = 5
    theta: float = 70.0
    max_tags: int = 10  # cap of the hybrid strategy
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    structured_output: str = "auto"  # auto (json_schema, falling back) | json_schema | json_object | none
    gguf_path: str = ""
    encoder: str = "all-MiniLM-L6-v2"
    embed_cos_range: tuple[float, float] = (0.10, 0.55)  # embedding matching: cosine lo -> score 1, hi -> 100
    seed: int = 0  # bootstrap resamples of the mined vocabulary
    concurrency: int = 4
    timeout_s: float = 60.0
    max_retries: int = 4
    retry_backoff_s: float = 1.0  # first wait before a retry; doubles each time
    tags_per_request: int = 25
    max_failed_share: float = 0.0  # share of items an LLM may fail on and the run still writes its outputs
    cache_path: str = ""  # SQLite cache of LLM answers and embeddings; empty = DATASET/tags/cache.sqlite

    def __post_init__(self) -> None:
        _check(self.vocab_backend in {"mined", "openai", "llamacpp"},
               f"tags.vocab_backend must be mined, openai or llamacpp, got {self.vocab_backend!r}")
        _check(self.match_backend in {"embedding", "keyword", "openai", "llamacpp"},
               f"tags.match_backend must be embedding, keyword, openai or llamacpp, got {self.match_backend!r}")
        _check(self.selection in {"topr", "threshold", "hybrid"},
               f"tags.selection must be topr, threshold or hybrid, got {self.selection!r}")
        _check(self.representation in {"onehot", "multihot", "weighted"},
               f"tags.representation must be onehot, multihot or weighted, got {self.representation!r}")
        _check(self.tags_per_domain >= 1 and self.rounds >= 1, "tags.tags_per_domain and tags.rounds must be >= 1")
        _check(0 <= self.min_votes <= self.rounds, f"tags.min_votes must be in 0..tags.rounds, got {self.min_votes}")
        _check(1 <= self.theta <= 100, f"tags.theta is on the 1-100 score scale, got {self.theta}")
        _check(self.top_r >= 1 and self.max_tags >= self.top_r, "need 1 <= tags.top_r <= tags.max_tags")
        _check(self.concurrency >= 1 and self.max_retries >= 0 and self.tags_per_request >= 1,
               "tags.concurrency and tags.tags_per_request must be >= 1, tags.max_retries >= 0")
        _check(self.structured_output in {"auto", "json_schema", "json_object", "none"},
               f"tags.structured_output must be auto, json_schema, json_object or none, got {self.structured_output!r}")
        _check(len(self.embed_cos_range) == 2 and -1 <= self.embed_cos_range[0] < self.embed_cos_range[1] <= 1,
               f"tags.embed_cos_range needs two cosines lo < hi in [-1, 1], got {self.embed_cos_range}")
        _check(self.timeout_s > 0 and self.retry_backoff_s >= 0, "tags.timeout_s must be > 0, tags.retry_backoff_s >= 0")
        _check(0 <= self.max_failed_share <= 1, f"tags.max_failed_share must be in [0, 1], got {self.max_failed_share}")


@dataclass(frozen=True)
class FeaturesConfig:
    text_encoder: str = "all-MiniLM-L6-v2"  # sentence-transformers name or local path (CLIP included); empty = none
    image_encoder: str = ""  # local CLIP path; empty = no image modality
    batch_size: int = 64
    image_timeout_s: float = 10.0  # per image URL fetch
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N | mps

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "features.batch_size must be >= 1")
        _check(self.image_timeout_s > 0, "features.image_timeout_s must be > 0")
        _check(bool(self.text_encoder or self.image_encoder),
               "features.text_encoder and features.image_encoder are both empty; set at least one")
        _check(self.device in {"auto", "cpu", "cuda", "mps"} or self.device.startswith("cuda:"),
               f"features.device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")


@dataclass(frozen=True)
class ModelConfig:
    """What every model uses. A model's own settings are its section ``model.<name>`` (its ``settings_class``,
    e.g. ``model.tema.alpha``), held in ``specific`` and read by the model as ``self.settings``."""

    name: str = "sasrec"  # a registered model (temarec.models.registry); `temarec train --help` lists them
    dim: int = 64  # hidden size D (paper, TEMA: q = 256)
    layers: int = 2
    heads: int = 1
    dropout: float = 0.3
    # full (exact, the default) | sampled (shared uniform negatives; cheaper on CPU, but measured below full's
    # validation MRR for TEMA, see docs/BENCHMARKS.md, so it is opt-in)
    loss: str = "full"
    num_sampled: int = 1024
    # sampled loss: negatives drawn with probability q ∝ (training count + 1) ** negative_power within the target's
    # domain, each logit corrected by -log(S q) (log-Q); 0 = uniform (the default), 1 = by popularity
    negative_power: float = 0.0
    # the model.<name> sections given, {model name: instance of its settings_class}; the selected model's own
    # section is always present (its defaults when none was given)
    specific: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from temarec.models.registry import model_names, settings_class

        names = model_names()
        _check(self.name in names, f"model.name must be one of {', '.join(names)}; got {self.name!r}")
        _check(self.dim >= 1 and self.layers >= 1 and self.heads >= 1, "model.dim/layers/heads must be >= 1")
        _check(self.dim % self.heads == 0, f"model.dim ({self.dim}) must be divisible by model.heads ({self.heads})")
        _check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")
        _check(self.loss in {"full", "sampled"}, f"model.loss must be full or sampled, got {self.loss!r}")
        _check(self.num_sampled >= 1, "model.num_sampled must be >= 1")
        _check(0.0 <= self.negative_power <= 1.0, f"model.negative_power must be in [0, 1], got {self.negative_power}")
        specific = dict(self.specific)
        for key, value in specific.items():
            _check(key in names, f"model.{key} is not a model's section; models: {', '.join(names)}")
            cls = settings_class(key)
            _check(cls is not None, f"model {key} has no settings of its own; remove the model.{key} section")
            _check(isinstance(value, cls), f"model.{key} must be a {cls.__name__}, got {type(value).__name__}")
        own = settings_class(self.name)
        if own is not None and self.name not in specific:
            specific[self.name] = own()
        if hasattr(specific.get(self.name), "check_with"):  # a model's settings checked against dim, layers, ...
            specific[self.name].check_with(self)
        object.__setattr__(self, "specific", specific)

    @property
    def settings(self) -> Any:
        """The selected model's own settings (an instance of its ``settings_class``), or None if it has none."""
        return self.specific.get(self.name)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"  # adam (weight decay added to the gradient, L2) | adamw (decoupled decay; ABXI's)
    patience: int = 10  # early stopping on validation MRR
    seed: int = 42
    device: str = "cpu"
    threads: int = 0  # torch intra-op threads; 0 = torch default
    eval_every: int = 1
    max_train_s: float = 0.0  # wall-clock budget; 0 = none
    tracker: str = "none"  # none | tensorboard | mlflow (pip install 'temarec[track]'); see temarec/tracking.py
    tracking_uri: str = ""  # mlflow: the store; empty = a local SQLite store RUN/mlflow.db

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _check(math.isfinite(self.lr) and self.lr > 0, f"train.lr must be a finite number > 0, got {self.lr}")
        _check(math.isfinite(self.weight_decay) and self.weight_decay >= 0,
               f"train.weight_decay must be a finite number >= 0, got {self.weight_decay}")
        _check(self.threads >= 0, f"train.threads must be >= 0 (0 = torch's default), got {self.threads}")
        _check(bool(_DEVICE.fullmatch(self.device)),
               f"train.device must be cpu, cuda, cuda:N or mps, got {self.device!r}")
        _check(self.optimizer in {"adam", "adamw"}, f"train.optimizer must be adam or adamw, got {self.optimizer!r}")
        _check(self.patience >= 1, f"train.patience must be >= 1, got {self.patience}")
        _check(self.eval_every >= 1, "train.eval_every must be >= 1")
        _check(math.isfinite(self.max_train_s) and self.max_train_s >= 0,
               f"train.max_train_s must be a finite number >= 0 (0 = no budget), got {self.max_train_s}")
        _check(self.tracker in {"none", "tensorboard", "mlflow"},
               f"train.tracker must be none, tensorboard or mlflow, got {self.tracker!r}")


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 512
    ks: tuple[int, ...] = (1, 5, 10)
    tie_warn_share: float = 0.01  # warn when ranks with > and >= differ on more than this share
    # sampled protocol's negatives: c2dsr (uniform, with replacement, history allowed) | abxi (distinct, outside
    # the user's history); both are stored in the dataset folder (docs/DESIGN.md, "Negatives presets")
    negatives: str = "c2dsr"

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "eval.batch_size must be >= 1")
        _check(self.negatives in {"c2dsr", "abxi"},
               f"eval.negatives must be c2dsr or abxi, got {self.negatives!r}")
        _check(all(k >= 1 for k in self.ks), f"eval.ks must be positive, got {self.ks}")


# Settings that change how fast a run goes, not what it computes (bench reuses runs that differ only in these) ...
RUNTIME_SETTINGS = frozenset({"train.device", "train.threads", "eval.batch_size", "train.tracker",
                              "train.tracking_uri"})
# ... and those a resumed run may also change: how long it trains and what evaluation reports
RESUMABLE_SETTINGS = RUNTIME_SETTINGS | {"train.epochs", "train.patience", "train.max_train_s", "train.eval_every",
                                         "eval.ks", "eval.tie_warn_share"}


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tags: TagsConfig = field(default_factory=TagsConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain sections; a model's own settings appear as the sub-section ``model.<name>``."""
        raw = dataclasses.asdict(self)
        raw["model"].update(raw["model"].pop("specific"))
        return raw

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def changed_from(self, old: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """{"section.key": (old value, this config's value)} for every setting that differs from ``old``, a
        config.json as written into a run folder (JSON values: tuples compare as lists); a model's own settings
        are compared key by key ("model.tema.alpha"). A setting added since ``old`` was written is read as its
        default (a new setting's default keeps the behaviour of the versions before it)."""
        try:
            old = json.loads(Config.from_dict(old).to_json())
        except ValueError:  # a config this version cannot build: compare what is there
            pass
        new, old = flatten(json.loads(self.to_json())), flatten(old)
        return {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Config":
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(raw) - set(sections)
        _check(not unknown, f"unknown config section(s) {sorted(unknown)}; valid sections: {sorted(sections)}")
        built = {}
        for f in dataclasses.fields(cls):
            section_cls = f.default_factory  # type: ignore[misc]
            build = _build_model_section if f.name == "model" else partial(_build_section, section_cls, f.name)
            built[f.name] = build(raw.get(f.name) or {})
        return cls(**built)

    def replace(self, **overrides: str) -> "Config":
        """``cfg.replace(**{"train.lr": "3e-4"})`` -> new Config, validated."""
        raw = self.to_dict()
        for key, value in overrides.items():
            _apply_override(raw, key, value)
        return Config.from_dict(raw)


def _build_section(section_cls: type, name: str, values: dict[str, Any]) -> Any:
    _check(isinstance(values, dict), f"config section {name!r} must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    unknown = set(values) - set(fields)
    _check(not unknown, f"unknown key(s) {sorted(unknown)} in config section {name!r}; valid keys: {sorted(fields)}")
    kwargs = {}
    for key, value in values.items():
        default = getattr(section_cls(), key)
        kwargs[key] = _coerce(value, default, f"{name}.{key}")
    return section_cls(**kwargs)


def _build_model_section(values: dict[str, Any]) -> ModelConfig:
    """The shared keys of ``model`` plus one sub-section per model with settings of its own (``model.tema``)."""
    from temarec.models.registry import model_names, settings_class

    _check(isinstance(values, dict), f"config section 'model' must be a mapping, got {type(values).__name__}")
    shared = {f.name for f in dataclasses.fields(ModelConfig)} - {"specific"}
    names = model_names()
    unknown = sorted(k for k in values if k not in shared and k not in names)
    _check(not unknown, f"unknown key(s) {unknown} in config section 'model'{_moved_hint(unknown)}; valid keys: "
                        f"{sorted(shared)}, or a model's own section (model.NAME.KEY)")
    specific = {}
    for key in (k for k in values if k not in shared):
        cls = settings_class(key)
        _check(cls is not None, f"model {key} has no settings of its own; remove the model.{key} section")
        specific[key] = _build_section(cls, f"model.{key}", values[key] or {})
    config = _build_section(ModelConfig, "model", {k: v for k, v in values.items() if k in shared})
    return dataclasses.replace(config, specific=specific)


def _moved_hint(keys: list[str]) -> str:
    """' (model.alpha is now model.tema.alpha)' for keys that belong to a model's own section."""
    from temarec.models.registry import model_names, settings_class

    moved = []
    for key in keys:
        owners = [n for n in model_names() if (c := settings_class(n)) and key in {f.name for f in dataclasses.fields(c)}]
        moved += [f"model.{key} is now {' or '.join(f'model.{n}.{key}' for n in owners)}"] if owners else []
    return f" ({'; '.join(moved)})" if moved else ""


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Coerce a YAML/CLI value to the type of the field's default."""
    if isinstance(default, bool):
        _check(isinstance(value, bool), f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        _check(isinstance(value, int) and not isinstance(value, bool), f"{where} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), f"{where} must be a number, got {value!r}")
        _check(abs(value) < 1e308 and math.isfinite(value), f"{where} must be a finite number, got {value!r}")
        return float(value)
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        _check(isinstance(value, (list, tuple)), f"{where} must be a list, got {value!r}")
        if default:
            return tuple(_coerce(v, default[0], where) for v in value)
        return tuple(value)
    if isinstance(default, str):
        _check(isinstance(value, (str, int, float)) and not isinstance(value, bool), f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def _apply_override(raw: dict[str, Any], key: str, value: str) -> None:
    parts = key.split(".")
    _check(len(parts) == 2 or (len(parts) == 3 and parts[0] == "model"),
           f"--set expects section.key=value (e.g. train.lr=3e-4, model.tema.alpha=[0.4,0.2,0.2]), got {key!r}")
    section, name = parts[0], parts[-1]
    _check(section in raw, f"unknown config section {section!r} in --set {key}; valid: {sorted(raw)}")
    target = raw[section]
    if len(parts) == 3:
        from temarec.models.registry import model_names, settings_class

        model = parts[1]
        _check(model in model_names(), f"--set {key}: {model!r} is not a model; models: {', '.join(model_names())}")
        cls = settings_class(model)
        _check(cls is not None, f"--set {key}: model {model} has no settings of its own")
        target = raw[section].setdefault(model, dataclasses.asdict(cls()))
    _check(name in target, f"unknown key {name!r} in section {'.'.join(parts[:-1])!r}"
                           f"{_moved_hint([name]) if section == 'model' else ''}; valid: {sorted(target)}")
    parsed = yaml.safe_load(value) if isinstance(value, str) else value
    if isinstance(target[name], str) and not isinstance(parsed, str):
        parsed = value  # keep strings verbatim ("model.name=1e3" stays a string)
    target[name] = parsed


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs or []:
        _check("=" in pair, f"--set expects section.key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config YAML file as a dict of sections, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {path} is not valid YAML: {exc}") from exc
    _check(isinstance(raw, dict), f"config file {path} must hold a mapping of sections")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                model_defaults: bool = True) -> Config:
    """Defaults <- the model's training defaults <- YAML file <- ``--set`` overrides, validated.

    ``model_defaults=False`` leaves out the model's ``train_defaults`` (``bench`` adds each row's own)."""
    raw = read_yaml(path) if path is not None else {}
    cfg = Config.from_dict(raw)
    cfg = cfg.replace(**parse_overrides(overrides)) if overrides else cfg
    if not model_defaults:
        return cfg
    own = model_train_defaults(cfg.model.name, explicit_keys(raw, overrides))
    return cfg.replace(**own) if own else cfg


def explicit_keys(raw: dict[str, Any], overrides: list[str] | None) -> frozenset[str]:
    """The "section.key" names a user gave, in a YAML file's sections ``raw`` or as ``--set`` overrides."""
    return frozenset(flatten(raw)) | frozenset(parse_overrides(overrides))


def model_train_defaults(name: str, explicit: frozenset[str] = frozenset()) -> dict[str, str]:
    """{"train.batch_size": "128"}: the ``train.*`` values model ``name`` trains with by default (its paper's, see
    ``SequentialModel.train_defaults``), less those the user set (``explicit``)."""
    from temarec.models.registry import model_class

    own = getattr(model_class(name), "train_defaults", {})
    return {f"train.{k}": str(v) for k, v in own.items() if f"train.{k}" not in explicit}


def flatten(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"dim": 64, "tema": {"alpha": [...]}}} -> {"model.dim": 64, "model.tema.alpha": [...]}."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# Before model-specific sections existed (2026-11), TEMA's settings were keys of ``model`` itself; every run folder
# of that time has them all in its config.json, whatever the model. ``upgrade_config`` moves them.
LEGACY_TEMA_KEYS = ("alpha", "lambdas", "temperature", "learn_temperature", "similarity", "modalities", "views",
                    "view_reading", "sampled_correction", "head_loss")


def upgrade_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A config.json of any temarec version -> today's layout (a copy); TEMA's flat keys move to model.tema."""
    raw = json.loads(json.dumps(raw))
    model = raw.get("model")
    if isinstance(model, dict) and any(k in model for k in LEGACY_TEMA_KEYS):
        moved = {k: model.pop(k) for k in LEGACY_TEMA_KEYS if k in model}
        if model.get("name") == "tema":
            model["tema"] = {**moved, **(model.get("tema") or {})}
    return raw
