import numpy as np
import pandas as pd
import pytest

from temarec.data.dataset import DataError, Dataset, draw_negatives, eval_frame, leave_one_out, train_frame, write_dataset


def test_negatives_exclude_only_the_target_and_stay_in_domain():
    rng = np.random.default_rng(0)
    targets = np.array([0, 2, 5, 9])
    domains = np.array([0, 0, 1, 1], dtype=np.int8)
    neg = draw_negatives(targets, domains, (3, 7), 2000, rng)
    assert neg.shape == (4, 2000)
    for row, (t, d) in enumerate(zip(targets, domains)):
        lo, hi = (0, 3) if d == 0 else (3, 10)
        assert neg[row].min() >= lo and neg[row].max() < hi
        assert t not in neg[row]
        assert set(neg[row]) == set(range(lo, hi)) - {t}  # every other item of the domain is reachable


def test_generated_dataset_round_trip(generated_dataset):
    ds = Dataset.load(generated_dataset)
    m = ds.manifest
    assert m["domains"] == ["Food", "Kitchen"]
    assert sum(m["splits"]["test"].values()) == len(ds.test) == m["users"]
    assert ds.negatives("test").shape == (len(ds.test), 999)
    assert (ds.domain_of(ds.test["target"].to_numpy()) == ds.test["domain"].to_numpy()).all()
    # the valid target is the last item of the test history (leave-one-out)
    assert all(h[-1] == t for h, t in zip(ds.test["history"], ds.valid["target"]))


def _items():
    return pd.DataFrame({"item": ["a", "b", "c", "d"], "domain": ["X", "X", "Y", "Y"], "title": ["t"] * 4,
                         "description": [None] * 4, "image": [None] * 4})


def test_write_refuses_bad_input_and_leaves_nothing(tmp_path):
    timelines = pd.DataFrame({"user": ["u"], "items": [[0, 2, 1, 3]], "ts": [[1, 2, 3, 4]]})
    timelines.attrs["n_first"] = 2
    train, valid, test = leave_one_out(timelines)
    bad_test = test.copy()
    bad_test.loc[0, "target"] = 99
    out = tmp_path / "ds"
    with pytest.raises(DataError, match="out of range"):
        write_dataset(out, items=_items(), train=train, valid=valid, test=bad_test, domains=("X", "Y"),
                      train_source="x", source={}, num_negatives=5)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="two distinct domain"):
        write_dataset(out, items=_items(), train=train, valid=valid, test=test, domains=("X", "X"),
                      train_source="x", source={})
    write_dataset(out, items=_items(), train=train, valid=valid, test=test, domains=("X", "Y"),
                  train_source="x", source={}, num_negatives=5)
    with pytest.raises(DataError, match="not empty"):
        write_dataset(out, items=_items(), train=train, valid=valid, test=test, domains=("X", "Y"),
                      train_source="x", source={}, num_negatives=5)


def test_leave_one_out_needs_three_interactions():
    timelines = pd.DataFrame({"user": ["u"], "items": [[0, 2]], "ts": [[1, 2]]})
    timelines.attrs["n_first"] = 2
    with pytest.raises(DataError, match="at least 3"):
        leave_one_out(timelines)


def test_frames_have_the_documented_columns():
    assert list(train_frame([("u", [1], [2])]).columns) == ["user", "items", "ts"]
    assert list(eval_frame([("u", [1], [2], 3, 4, 0)]).columns) == [
        "user", "history", "history_ts", "target", "target_ts", "domain"]
