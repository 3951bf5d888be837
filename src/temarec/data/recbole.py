"""``temarec export --format recbole``: a dataset folder as RecBole atomic files, for baseline comparisons.

Writes ``OUT/NAME.inter``, ``OUT/NAME.item`` and ``OUT/NAME.yaml`` (``NAME`` = the folder name of ``OUT``)::

    NAME.inter   user_id:token  item_id:token  timestamp:float      one row per interaction
    NAME.item    item_id:token  title:token_seq  domain:token

Ids are the data's own (reviewerID, ASIN). RecBole's leave-one-out (``order: TO``, ``split: {LS:
valid_and_test}``, grouped by user) reproduces our split exactly: per user the last interaction is the test
target, the one before the valid target, the rest the training sequence. Equal timestamps inside a user's
timeline would let RecBole's (not necessarily stable) time sort reorder them, so the k-th of a run of equal
timestamps is written as ``ts.00k``: strictly increasing, same second. Only datasets split leave-one-out
(``train_source`` "leave_one_out": the abxi, interactions and amazon importers) can be exported; the C2DSR
split is not a per-user leave-one-out.

Checked with RecBole 1.2.1 on abxi-food-kitchen: its valid and test targets and training sequences equal
ours for all 7,144 users. (RecBole 1.2.1 itself needs numpy < 2 and, for the title field, pandas < 3.)

RecBole reproduces the split, not our candidate protocol: its ``mode: full`` ranks every item of both
domains, and its metrics mix the domains. Run it with::

    pip install recbole
    temarec export --dataset data/abxi-fk --format recbole --out recbole_data/abxi-fk
    python -c "from recbole.quick_start import run_recbole; \\
        run_recbole(model='SASRec', dataset='abxi-fk', config_file_list=['recbole_data/abxi-fk/abxi-fk.yaml'])"
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from temarec.data.dataset import DataError, Dataset
from temarec.fileio import atomic_dir

logger = logging.getLogger(__name__)

FORMATS = ("recbole",)

RECBOLE_YAML = """\
# RecBole config for the atomic files beside it: reproduces temarec's leave-one-out split.
data_path: {data_path}
dataset: {name}
USER_ID_FIELD: user_id
ITEM_ID_FIELD: item_id
TIME_FIELD: timestamp
load_col:
  inter: [user_id, item_id, timestamp]
  item: [item_id, title, domain]
user_inter_num_interval: "[0,inf)"
item_inter_num_interval: "[0,inf)"
MAX_ITEM_LIST_LENGTH: {max_len}
eval_args:
  split: {{LS: valid_and_test}}
  order: TO
  group_by: user
  mode: full
"""


def export(dataset: str | Path, fmt: str, out: str | Path, overwrite: bool = False, max_len: int = 50) -> Path:
    """Export dataset folder ``dataset`` in format ``fmt`` into folder ``out``; returns ``out``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; available: {', '.join(FORMATS)}")
    return export_recbole(dataset, out, overwrite=overwrite, max_len=max_len)


def export_recbole(dataset: str | Path, out: str | Path, overwrite: bool = False, max_len: int = 50) -> Path:
    ds = Dataset.load(dataset)
    out = Path(out)
    if out.exists() and not overwrite and any(out.iterdir()):
        raise DataError("output folder exists and is not empty; pass --overwrite or choose another --out", out)
    if ds.manifest.get("train_source") != "leave_one_out":
        raise DataError(f"train_source is {ds.manifest.get('train_source')!r}: RecBole's leave-one-out split can "
                        "only reproduce a per-user leave-one-out dataset (abxi, interactions, amazon)", ds.root)
    name = out.name
    item_ids = ds.items["item"].to_numpy()

    with atomic_dir(out) as tmp:
        with open(tmp / f"{name}.inter", "w", encoding="utf-8") as fh:
            fh.write("user_id:token\titem_id:token\ttimestamp:float\n")
            for user, items, ts in _timelines(ds):
                for item, stamp in zip(item_ids[items], _strictly_increasing(ts)):
                    fh.write(f"{_clean(user)}\t{_clean(item)}\t{stamp}\n")
        with open(tmp / f"{name}.item", "w", encoding="utf-8") as fh:
            fh.write("item_id:token\ttitle:token_seq\tdomain:token\n")
            for item, title, domain in zip(item_ids, ds.items["title"], ds.items["domain"]):
                fh.write(f"{_clean(item)}\t{_clean(title)}\t{_clean(domain)}\n")
        (tmp / f"{name}.yaml").write_text(RECBOLE_YAML.format(data_path=out.parent.resolve(), name=name,
                                                              max_len=max_len))
    logger.info("wrote RecBole atomic files for %d users to %s", len(ds.test), out)
    return out


def _timelines(ds: Dataset):
    """(user, items, ts) per user: training sequence + valid target + test target, checked for consistency."""
    train = {u: (items, ts) for u, items, ts in zip(ds.train["user"], ds.train["items"], ds.train["ts"])}
    valid = {u: (t, ts) for u, t, ts in zip(ds.valid["user"], ds.valid["target"], ds.valid["target_ts"])}
    for user, history, target, target_ts in zip(ds.test["user"], ds.test["history"], ds.test["target"],
                                                ds.test["target_ts"]):
        if user not in train or user not in valid:
            raise DataError(f"user {user!r} has a test row but no train/valid row; not a leave-one-out split",
                            ds.root)
        items = np.r_[train[user][0], valid[user][0], target].astype(np.int64)
        ts = np.r_[train[user][1], valid[user][1], target_ts].astype(np.int64)
        if not np.array_equal(items[:-1], np.asarray(history)):
            raise DataError(f"user {user!r}: the test history is not train + valid target; not a leave-one-out "
                            "split", ds.root)
        yield user, items, ts


def _strictly_increasing(ts: np.ndarray) -> list[str]:
    """Unix seconds -> decimal strings where the k-th of a run of equal seconds gets the fraction k/1000."""
    if (np.diff(ts) < 0).any():
        raise DataError("a user's timeline is not in time order; RecBole's time-ordered split would reorder it")
    out, run = [], 0
    digits = max(3, len(str(len(ts))))
    for k, t in enumerate(ts):
        run = run + 1 if k and t == ts[k - 1] else 0
        out.append(f"{int(t)}.{run:0{digits}d}")
    return out


def _clean(value: object) -> str:
    """One atomic-file field: no tabs or newlines (RecBole splits token_seq on spaces)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return " ".join(str(value).split())
