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


@pytest.fixture(scope="module")
def world_50(tmp_path_factory):
    """The generated world with 50 negatives per instance: few enough for the abxi preset's distinct draw."""
    from temarec.config import DataConfig
    from temarec.data.synthetic import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("w50") / "data", DataConfig(num_negatives=50), n_users=300,
                           items_per_genre=15)


def test_abxi_negatives_are_distinct_in_domain_outside_history_and_independent_of_row_order(world_50):
    from temarec.data.dataset import draw_abxi_negatives

    ds = Dataset.load(world_50)
    n0 = ds.domain_sizes[0]
    neg = ds.negatives("test", "abxi")
    assert neg.shape == (len(ds.test), 50)
    for row, hist, target, d in zip(neg, ds.test["history"], ds.test["target"], ds.test["domain"]):
        assert len(set(row.tolist())) == 50
        assert ((row >= n0) == bool(d)).all()
        assert not set(row.tolist()) & (set(np.asarray(hist).tolist()) | {int(target)})
    shuffled = ds.test.sample(frac=1.0, random_state=1)
    again = draw_abxi_negatives(shuffled, "test", ds.domain_sizes, 50, ds.manifest["negatives"]["seed"])
    np.testing.assert_array_equal(again, neg[shuffled.index.to_numpy()])
    assert not np.array_equal(neg, ds.negatives("test", "c2dsr"))


def test_folder_with_only_the_old_layout_still_works_and_can_store_both_presets(world_50, tmp_path):
    import shutil

    from temarec.data.dataset import write_negatives

    old = tmp_path / "old"
    shutil.copytree(world_50, old)
    stored = {p: Dataset.load(old).negatives("valid", p) for p in ("c2dsr", "abxi")}
    for preset in ("c2dsr", "abxi"):  # the layout before presets: negatives/{valid,test}.npy = c2dsr
        for split in ("valid", "test"):
            (old / "negatives" / preset / f"{split}.npy").rename(old / "negatives" / f"{split}.npy") \
                if preset == "c2dsr" else (old / "negatives" / preset / f"{split}.npy").unlink()
        (old / "negatives" / preset).rmdir()
    ds = Dataset.load(old)
    np.testing.assert_array_equal(ds.negatives("valid", "c2dsr"), stored["c2dsr"])
    np.testing.assert_array_equal(ds.negatives("valid", "abxi"), stored["abxi"])  # drawn in memory, same draw
    assert sorted(write_negatives(old)) == ["abxi/test", "abxi/valid", "c2dsr/test", "c2dsr/valid"]
    np.testing.assert_array_equal(np.load(old / "negatives" / "abxi" / "valid.npy"), stored["abxi"])
    assert write_negatives(old) == []
    assert not [p for p in (old / "negatives").rglob(".*")]  # no temporary file left behind


def test_abxi_preset_on_too_small_a_domain_is_left_out_at_prepare_and_a_clear_error_on_use(generated_dataset):
    ds = Dataset.load(generated_dataset)  # 999 negatives, fewer items per domain: only c2dsr can be drawn
    assert "not available" in ds.manifest["negatives"]["presets"]["abxi"]
    with pytest.raises(DataError, match="lower data.num_negatives or use eval.negatives=c2dsr"):
        ds.negatives("test", "abxi")


def test_unknown_negatives_preset_is_one_clear_error(generated_dataset):
    from temarec.config import load_config

    with pytest.raises(ValueError, match="eval.negatives must be c2dsr or abxi"):
        load_config(None, ["eval.negatives=recbole"])
    with pytest.raises(ValueError, match="unknown negatives preset 'x'"):
        Dataset.load(generated_dataset).negatives("test", "x")
