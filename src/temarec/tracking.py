"""Experiment tracking: each epoch's loss, validation metrics and timing, beside the run's metrics.jsonl.

``train.tracker``:
- ``none`` (default): metrics.jsonl only.
- ``tensorboard``: event files in ``RUN/tensorboard/`` (``tensorboard --logdir RUN/tensorboard``).
- ``mlflow``: one MLflow run per training run, in the store named by ``train.tracking_uri`` (default: a local
  SQLite store ``RUN/mlflow.db``; ``mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db``), with the resolved
  config as params.

Both need ``pip install 'temarec[track]'``. Scalars are named ``loss``, ``epoch_s``, ``valid/mrr`` (the selection
score) and ``valid/<protocol>/<domain>/<metric>``; the step is the epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from temarec.config import flatten
from temarec.extras import require

TRACKERS = ("none", "tensorboard", "mlflow")


class Tracker:
    """The no-op tracker; the others override ``log_epoch`` and ``close``."""

    def log_epoch(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record: epoch, loss, epoch_s and, on validated epochs, valid_mrr and valid."""

    def close(self) -> None:
        """Flush and end the tracker's run."""


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record -> flat {name: value} (epoch left out: it is the step)."""
    out = {"loss": float(record["loss"]), "epoch_s": float(record["epoch_s"])}
    if "valid_mrr" in record:
        out["valid/mrr"] = float(record["valid_mrr"])
        for protocol, by_domain in record["valid"].items():
            if protocol == "ties":
                continue
            for domain, metrics in by_domain.items():
                out.update({f"valid/{protocol}/{domain}/{name}": float(v) for name, v in metrics.items()
                            if name != "n"})
    return out


class TensorBoardTracker(Tracker):
    def __init__(self, run_dir: Path):
        require("tensorboard", "track", "train.tracker=tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log_epoch(self, record: dict[str, Any]) -> None:
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, global_step=int(record["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowTracker(Tracker):
    def __init__(self, run_dir: Path, uri: str, run_name: str, params: dict[str, Any]):
        self.mlflow = require("mlflow", "track", "train.tracker=mlflow")
        self.mlflow.set_tracking_uri(uri or local_store(run_dir))
        self.mlflow.set_experiment("temarec")
        self.run = self.mlflow.start_run(run_name=run_name)
        self.mlflow.log_params({k: str(v)[:500] for k, v in params.items()})  # MLflow caps a param's length

    def log_epoch(self, record: dict[str, Any]) -> None:
        # MLflow metric names may not hold '@'
        self.mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in scalars(record).items()},
                                step=int(record["epoch"]))

    def close(self) -> None:
        self.mlflow.end_run()


def local_store(run_dir: Path) -> str:
    """The default MLflow store of a run: a SQLite file in the run folder (MLflow 3 refuses plain file stores)."""
    return f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


def open_tracker(kind: str, run_dir: str | Path, config: dict[str, Any], uri: str = "") -> Tracker:
    """The tracker named by ``train.tracker`` for one run folder (``config``: the resolved config as a dict)."""
    run_dir = Path(run_dir)
    if kind == "none":
        return Tracker()
    if kind == "tensorboard":
        return TensorBoardTracker(run_dir)
    if kind == "mlflow":
        return MLflowTracker(run_dir, uri, run_name=run_dir.name, params=flatten(config))
    raise ValueError(f"train.tracker must be one of {', '.join(TRACKERS)}, got {kind!r}")
