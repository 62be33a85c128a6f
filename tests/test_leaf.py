"""FEMNIST by writer (byzbench.data.leaf) on tiny LEAF-format JSON files written here."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzbench.config import ExperimentConfig
from byzbench.data import files, leaf
from byzbench.data.datasets import DATASETS, load_dataset
from byzbench.data.files import DataFileError, MissingDataError
from byzbench.errors import ConfigError

WRITERS = ["f0003_12", "f0001_40", "f0007_02", "f0002_33", "f0005_19", "f0004_08"]


# ------------------------------------------------------------------ LEAF-format writers


def make_writer(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """``n`` random grey-level images p (uint8) and labels 0..61, digits included."""
    y = rng.integers(0, 62, n)
    y[0] = rng.integers(0, 10)
    return {"p": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), "y": y}


def leaf_entry(sample: dict[str, np.ndarray]) -> dict[str, list]:
    """A LEAF user entry: x = p/255 as 784 floats per image (LEAF's own encoding)."""
    return {"x": (sample["p"].reshape(-1, 784) / 255).tolist(), "y": sample["y"].tolist()}


def write_leaf(path: Path, users: dict[str, dict[str, np.ndarray]], **extra) -> None:
    data = {"users": list(users), "num_samples": [len(s["y"]) for s in users.values()],
            "user_data": {u: leaf_entry(s) for u, s in users.items()}, **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def make_leaf_tree(folder: Path, seed: int = 0, n_writers: int = 6) -> dict[str, dict]:
    """train/ and test/ folders in LEAF's by-sample layout: each writer in both, the
    writers spread over two files per split. Returns {split: {writer: samples}}."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {"train": {}, "test": {}}
    for w in WRITERS[:n_writers]:
        out["train"][w] = make_writer(rng, int(rng.integers(4, 9)))
        out["test"][w] = make_writer(rng, int(rng.integers(1, 3)))
    for split in ("train", "test"):
        names = list(out[split])
        half = len(names) // 2
        for i, chunk in enumerate((names[:half], names[half:])):
            write_leaf(folder / split / f"all_data_{i}_niid_0_keep_0_{split}_9.json",
                       {w: out[split][w] for w in chunk})
    return out


def expected(tree: dict[str, dict], split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images p, labels and writer index (into the sorted names) in file order."""
    writers = sorted(tree[split])
    ps = np.concatenate([s["p"] for s in tree[split].values()])
    ys = np.concatenate([s["y"] for s in tree[split].values()])
    ws = np.concatenate([[writers.index(w)] * len(s["y"]) for w, s in tree[split].items()])
    return ps, ys, ws


def load(**params):
    return DATASETS.create("femnist", "data", **params).load()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A private per-user cache folder and no $BYZBENCH_DATA for every test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("BYZBENCH_DATA", raising=False)


@pytest.fixture
def tree(tmp_path):
    return make_leaf_tree(tmp_path / "femnist")


# ------------------------------------------------------------------ loading


def test_shapes_labels_pixels_and_groups(tmp_path, tree):
    ds = load(root=str(tmp_path))
    assert ds.name == "femnist" and ds.num_classes == 62 and ds.input_shape == (1, 28, 28)
    for split, x, y, groups in (("train", ds.x_train, ds.y_train, ds.groups_train),
                                ("test", ds.x_test, ds.y_test, ds.groups_test)):
        p, labels, writers = expected(tree, split)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape) == (len(labels), 1, 28, 28)
        assert y.tolist() == labels.tolist()
        torch.testing.assert_close(x[:, 0], torch.from_numpy((255 - p) / 255).float(), rtol=0, atol=0)
        assert groups.dtype == np.int64 and groups.tolist() == writers.tolist()
    assert sorted(set(ds.groups_train.tolist())) == list(range(len(WRITERS)))


def test_invert_false_keeps_leaf_values(tmp_path, tree):
    ds = load(root=str(tmp_path), invert=False)
    p, _, _ = expected(tree, "train")
    torch.testing.assert_close(ds.x_train[:, 0], torch.from_numpy(p / 255).float(), rtol=0, atol=0)
    inverted = load(root=str(tmp_path))
    torch.testing.assert_close(inverted.x_train, 1 - ds.x_train, rtol=0, atol=1e-7)


def test_classes_10_keeps_digits_only(tmp_path, tree):
    ds = load(root=str(tmp_path), classes=10)
    assert ds.num_classes == 10
    for split, y, groups in (("train", ds.y_train, ds.groups_train), ("test", ds.y_test, ds.groups_test)):
        _, labels, writers = expected(tree, split)
        digit = labels < 10
        assert y.tolist() == labels[digit].tolist()
        assert groups.tolist() == writers[digit].tolist()  # every writer has a digit: ids unchanged
    assert ds.x_train.shape[0] < load(root=str(tmp_path)).x_train.shape[0]


def test_normalize_uses_training_stats(tmp_path, tree):
    ds = load(root=str(tmp_path), normalize=True)
    assert abs(float(ds.x_train.mean())) < 1e-5 and abs(float(ds.x_train.std(unbiased=False)) - 1) < 1e-4
    given = load(root=str(tmp_path), normalize=True, mean=[0.5], std=[0.25])
    plain = load(root=str(tmp_path))
    torch.testing.assert_close(given.x_test, (plain.x_test - 0.5) / 0.25)


def test_leaf_data_subfolder_and_root_as_folder(tmp_path):
    made = make_leaf_tree(tmp_path / "leaf" / "femnist" / "data")  # LEAF's own tree
    ds = load(root=str(tmp_path / "leaf"))
    assert ds.y_train.tolist() == expected(made, "train")[1].tolist()
    ds = load(root=str(tmp_path / "leaf" / "femnist" / "data"))
    assert ds.y_test.tolist() == expected(made, "test")[1].tolist()


def test_env_var_finds_the_files(tmp_path, monkeypatch, tree):
    monkeypatch.setenv("BYZBENCH_DATA", str(tmp_path))
    assert load().num_train == len(expected(tree, "train")[1])


def test_hierarchies_and_leaf_empty_entries_accepted(tmp_path):
    rng = np.random.default_rng(3)
    users = {w: make_writer(rng, 3) for w in WRITERS[:2]}
    for split in ("train", "test"):
        path = tmp_path / "femnist" / split / "a.json"
        write_leaf(path, users, hierarchies=["h0", "h1"])
        data = json.loads(path.read_text())
        data["user_data"]["f9999_00"] = {"x": [], "y": []}  # LEAF leaves writers with < 2 samples so
        path.write_text(json.dumps(data))
    ds = load(root=str(tmp_path))
    assert ds.num_train == 6 and sorted(set(ds.groups_train.tolist())) == [0, 1]


def test_off_grid_float_pixels_kept_as_floats(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.random((3, 784))
    for split in ("train", "test"):
        path = tmp_path / "femnist" / split / "a.json"
        path.parent.mkdir(parents=True)
        data = {"users": ["w"], "num_samples": [3], "user_data": {"w": {"x": x.tolist(), "y": [1, 2, 3]}}}
        path.write_text(json.dumps(data))
    ds = load(root=str(tmp_path), invert=False)
    torch.testing.assert_close(ds.x_train.reshape(3, 784), torch.from_numpy(x).float())


def test_to_grid_recovers_every_grey_level():
    levels = np.arange(784) % 256
    x = np.array((levels / 255).tolist(), dtype=np.float32).reshape(1, 784)  # as parsed from JSON
    grid = leaf.to_grid(x)
    assert grid.dtype == np.uint8 and grid.shape == (1, 28, 28) and grid.ravel().tolist() == levels.tolist()
    off = leaf.to_grid(x + np.float32(0.5 / 255))
    assert off.dtype == np.float32 and np.allclose(off.ravel(), x.ravel() + 0.5 / 255)


# ------------------------------------------------------------------ splits and writer filters


def test_by_writer_fraction_split(tmp_path):
    rng = np.random.default_rng(5)
    sizes = {"a": 10, "b": 2, "c": 1, "d": 7}
    users = {w: make_writer(rng, n) for w, n in sizes.items()}
    write_leaf(tmp_path / "femnist" / "all_data" / "all_data_0.json", users)
    ds = load(root=str(tmp_path), split="by_writer_fraction", invert=False)
    names = ["a", "b", "d"]  # kept writers, sorted; "c" (one sample) is dropped as LEAF drops it
    assert sorted(set(ds.groups_train.tolist())) == [0, 1, 2]
    for w in names:
        n = sizes[w]
        n_tr = int(np.sum(ds.groups_train == names.index(w)))
        n_te = int(np.sum(ds.groups_test == names.index(w)))
        assert (n_tr, n_te) == (max(1, math.floor(0.9 * n)), n - max(1, math.floor(0.9 * n)))
    # train ∪ test = every sample of the writers with ≥ 2 samples, each once
    pix = {tuple(s["p"][i].ravel()[:8]) for w, s in users.items() if sizes[w] > 1 for i in range(sizes[w])}
    got = [tuple((x[0].numpy() * 255).round().astype(np.uint8).ravel()[:8])
           for x in torch.cat([ds.x_train, ds.x_test])]
    assert len(got) == len(set(got)) and set(got) == pix
    again = load(root=str(tmp_path), split="by_writer_fraction", invert=False)
    assert torch.equal(again.x_test, ds.x_test)
    other = [load(root=str(tmp_path), split="by_writer_fraction", invert=False, seed=s).x_test
             for s in range(1, 6)]
    assert any(not torch.equal(o, ds.x_test) for o in other)
    half = load(root=str(tmp_path), split="by_writer_fraction", test_fraction=0.5)
    assert half.num_test == 5 + 1 + 0 + 4  # a: 10 − 5, b: 2 − 1, d: 7 − max(1, ⌊3.5⌋)


def split_reference(writer: np.ndarray, tf: float, keys: np.ndarray) -> tuple[list[int], list[int]]:
    """LEAF's by-sample rule, one writer at a time: the n_test smallest keys go to test."""
    train, test = [], []
    for w in np.unique(writer):
        idx = np.flatnonzero(writer == w)
        n = idx.size
        if n < 2:
            continue
        n_train = min(n - 1, max(1, math.floor((1.0 - tf) * n)))
        by_key = idx[np.argsort(keys[idx], kind="stable")]
        test += by_key[: n - n_train].tolist()
        train += by_key[n - n_train:].tolist()
    return sorted(train), sorted(test)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=0, max_size=60),
       st.floats(0.01, 0.99), st.integers(0, 2**32 - 1))
def test_split_by_writer_matches_reference(writers, tf, seed):
    writer = np.array(writers, dtype=np.int64)
    train, test = leaf.split_by_writer(writer, tf, np.random.default_rng(seed))
    keys = np.random.default_rng(seed).random(writer.size)
    ref_train, ref_test = split_reference(writer, tf, keys)
    assert train.tolist() == ref_train and test.tolist() == ref_test
    counts = np.bincount(writer, minlength=7)
    assert set(writer[test].tolist()) == {w for w in range(7) if counts[w] >= 2}


def test_min_samples_and_max_writers(tmp_path, tree):
    totals = {w: len(tree["train"][w]["y"]) + len(tree["test"][w]["y"]) for w in WRITERS}
    k = sorted(totals.values())[2]
    ds = load(root=str(tmp_path), min_samples_per_writer=k)
    kept = sorted(w for w, n in totals.items() if n >= k)
    assert ds.num_train == sum(len(tree["train"][w]["y"]) for w in kept)
    assert sorted(set(ds.groups_train.tolist())) == list(range(len(kept)))
    assert ds.num_test == sum(len(tree["test"][w]["y"]) for w in kept)

    first = load(root=str(tmp_path), max_writers=2)
    names = sorted(WRITERS)[:2]
    assert first.num_train == sum(len(tree["train"][w]["y"]) for w in names)
    assert first.num_test == sum(len(tree["test"][w]["y"]) for w in names)
    _, labels, writers = expected(tree, "train")
    assert first.y_train.tolist() == labels[writers < 2].tolist()

    sampled = [load(root=str(tmp_path), max_writers=3, writer_selection="sample", seed=s) for s in range(6)]
    assert all(sorted(set(d.groups_train.tolist())) == [0, 1, 2] for d in sampled)
    assert len({d.y_train.numpy().tobytes() for d in sampled}) > 1  # the seed picks the writers
    again = load(root=str(tmp_path), max_writers=3, writer_selection="sample", seed=0)
    assert torch.equal(again.x_train, sampled[0].x_train)


def test_select_writers_rules():
    counts = np.array([5, 0, 2, 9, 3])
    rng = np.random.default_rng(0)
    assert leaf.select_writers(counts, 0, None, "first", rng).tolist() == [0, 2, 3, 4]
    assert leaf.select_writers(counts, 3, None, "first", rng).tolist() == [0, 3, 4]
    assert leaf.select_writers(counts, 0, 2, "first", rng).tolist() == [0, 2]
    drawn = leaf.select_writers(counts, 0, 2, "sample", rng)
    assert drawn.size == 2 and set(drawn.tolist()) <= {0, 2, 3, 4} and drawn.tolist() == sorted(drawn.tolist())


def test_filters_leaving_nothing_name_the_parameter(tmp_path, tree):
    with pytest.raises(ConfigError, match="no train samples remain") as exc:
        load_dataset("femnist", {"root": str(tmp_path), "min_samples_per_writer": 10**6})
    assert exc.value.key == "data.min_samples_per_writer"


# ------------------------------------------------------------------ natural partition, end to end


def test_natural_partition_runs_through_the_engine(tmp_path, tree):
    from byzbench.sim.engine import Simulation

    cfg = ExperimentConfig.from_dict({
        "data": {"name": "femnist", "root": str(tmp_path)}, "partition": "natural",
        "model": "logistic", "n_clients": 5, "n_byzantine": 1, "rounds": 2, "eval_every": 2,
        "batch_size": 4, "attack": "signflip", "defense": "median"})
    sim = Simulation(cfg)
    ds = sim.dataset
    owners = [set(ds.groups_train[np.asarray(p)].tolist()) for p in sim.parts]
    assert all(len(o) == 1 for o in owners)  # one writer per client
    assert len(set.union(*owners)) == 5  # five distinct writers of the six
    sizes = {w: int(np.sum(ds.groups_train == w)) for w in range(len(WRITERS))}
    assert all(len(p) == sizes[next(iter(o))] for p, o in zip(sim.parts, owners))
    result = sim.run()
    assert result.status == "finished" and result.rounds_completed == 2
    assert 0.0 <= result.final_accuracy <= 1.0


# ------------------------------------------------------------------ structure errors name the file


def corrupt(tmp_path: Path, edit) -> Path:
    """The first training file of a fresh tree, rewritten by ``edit(data)``."""
    make_leaf_tree(tmp_path / "femnist")
    path = min((tmp_path / "femnist" / "train").glob("*.json"))
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def _first(data: dict) -> dict:
    return data["user_data"][data["users"][0]]


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.pop("num_samples"), "key 'num_samples' missing"),
    (lambda d: d["num_samples"].__setitem__(0, d["num_samples"][0] + 1), "num_samples says"),
    (lambda d: d["num_samples"].pop(), "entries in 'num_samples'"),
    (lambda d: _first(d)["x"][0].pop(), "not a list of 784 numbers"),
    (lambda d: _first(d)["x"].__setitem__(1, "abc"), "not a list of 784 numbers"),
    (lambda d: _first(d)["y"].__setitem__(0, 62), "label 62 outside 0..61"),
    (lambda d: _first(d)["y"].__setitem__(0, -1), "label -1 outside"),
    (lambda d: _first(d)["y"].__setitem__(0, 2.5), "label 2.5 is not an integer"),
    (lambda d: _first(d)["x"][0].__setitem__(5, 1.5), r"pixel values must lie in \[0, 1\], found 1.5"),
    (lambda d: _first(d)["x"][0].__setitem__(5, float("nan")), "pixel values must lie in"),
    (lambda d: d["users"].append(d["users"][0]), "listed twice"),
    (lambda d: d["user_data"].__setitem__("ghost", d["user_data"][d["users"][0]]), "not in 'users'"),
    (lambda d: d.__setitem__("hierarchies", [1]), "'hierarchies' must be a list"),
    (lambda d: d.__setitem__("users", [1, 2, 3]), "list of writer names"),
])
def test_corrupt_file_errors_name_the_file(tmp_path, edit, match):
    path = corrupt(tmp_path, edit)
    with pytest.raises(DataFileError, match=match) as exc:
        load(root=str(tmp_path), cache=False)
    assert str(path) in str(exc.value) and exc.value.path == str(path)
    assert exc.value.key == "data"


def test_invalid_json_and_unreadable_file_name_it(tmp_path):
    make_leaf_tree(tmp_path / "femnist")
    path = sorted((tmp_path / "femnist" / "test").glob("*.json"))[1]
    path.write_text(path.read_text()[:-40])  # truncated
    with pytest.raises(DataFileError, match="invalid JSON") as exc:
        load(root=str(tmp_path))
    assert str(path) in str(exc.value)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataFileError, match="invalid JSON"):
        load(root=str(tmp_path))
    path.write_text("[1, 2]")
    with pytest.raises(DataFileError, match="top level is a list"):
        load(root=str(tmp_path))


def test_writer_in_two_files_of_a_split(tmp_path):
    rng = np.random.default_rng(6)
    both = {"w1": make_writer(rng, 2)}
    write_leaf(tmp_path / "femnist" / "train" / "a.json", both)
    write_leaf(tmp_path / "femnist" / "train" / "b.json", both)
    write_leaf(tmp_path / "femnist" / "test" / "a.json", both)
    with pytest.raises(DataFileError, match=r"'w1' appears in both .*a\.json and .*b\.json"):
        load(root=str(tmp_path))


def test_empty_split_is_an_error(tmp_path):
    rng = np.random.default_rng(7)
    write_leaf(tmp_path / "femnist" / "train" / "a.json", {"w": make_writer(rng, 2)})
    write_leaf(tmp_path / "femnist" / "test" / "a.json", {})
    with pytest.raises(DataFileError, match="hold no samples"):
        load(root=str(tmp_path))


def test_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(MissingDataError, match="preprocess.sh") as exc:
        load(root=str(tmp_path))
    msg = str(exc.value)
    assert str(tmp_path / "femnist") in msg and "train/*.json and test/*.json" in msg
    rng = np.random.default_rng(8)
    write_leaf(tmp_path / "femnist" / "all_data" / "all_data_0.json", {"w": make_writer(rng, 3)})
    with pytest.raises(MissingDataError, match="data.split=by_writer_fraction"):
        load(root=str(tmp_path))
    (tmp_path / "femnist" / "train").mkdir()
    (tmp_path / "femnist" / "train" / "notes.txt").write_text("no json here")
    with pytest.raises(MissingDataError):
        load(root=str(tmp_path))


# ------------------------------------------------------------------ cache copy


def test_cache_reused_without_parsing_then_rebuilt(tmp_path, tree, monkeypatch):
    folder = tmp_path / "femnist"
    first = load(root=str(tmp_path))
    cache = folder / ".byzbench-cache-femnist-train-test.npz"
    assert cache.is_file()

    def no_parse(*args, **kwargs):
        raise AssertionError("the JSON files were parsed again")

    monkeypatch.setattr(leaf.json, "load", no_parse)
    second = load(root=str(tmp_path))
    for a, b in ((first.x_train, second.x_train), (first.x_test, second.x_test),
                 (first.y_train, second.y_train)):
        assert torch.equal(a, b)
    assert np.array_equal(first.groups_train, second.groups_train)
    digits = load(root=str(tmp_path), classes=10, max_writers=2)  # filters apply after the cache
    assert digits.num_classes == 10
    monkeypatch.undo()

    path = min((folder / "train").glob("*.json"))
    st_ = path.stat()
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns + 10**9))  # touched: rebuilt
    calls = []
    real = json.load
    monkeypatch.setattr(leaf.json, "load", lambda fh: calls.append(1) or real(fh))
    assert torch.equal(load(root=str(tmp_path)).x_train, first.x_train)
    assert len(calls) == 4  # every file parsed again


def test_added_file_rebuilds_and_cache_false_writes_nothing(tmp_path, tree):
    load(root=str(tmp_path))
    rng = np.random.default_rng(9)
    write_leaf(tmp_path / "femnist" / "train" / "zz.json", {"f9000_00": make_writer(rng, 3)})
    ds = load(root=str(tmp_path))
    assert ds.num_train == len(expected(tree, "train")[1]) + 3
    other = tmp_path / "other"
    make_leaf_tree(other / "femnist")
    load(root=str(other), cache=False)
    assert not list((other / "femnist").glob(".byzbench-cache-*"))
    assert not (tmp_path / "xdg" / "byzbench" / "cache").exists()


def test_read_only_folder_caches_in_user_folder(tmp_path, tree):
    folder = tmp_path / "femnist"
    os.chmod(folder, 0o555)
    try:
        load(root=str(tmp_path))
        assert not list(folder.glob(".byzbench-cache-*"))
        assert len(list((tmp_path / "xdg" / "byzbench" / "cache").glob("femnist-train-test-*.npz"))) == 1
    finally:
        os.chmod(folder, 0o755)


# ------------------------------------------------------------------ parameters, registry, data files


@pytest.mark.parametrize("params,key,match", [
    ({"split": "bogus"}, "data.split", "split must be one of leaf, by_writer_fraction"),
    ({"classes": 26}, "data.classes", "classes must be one of 62, 10"),
    ({"test_fraction": 1.0}, "data.test_fraction", "test_fraction must be <"),
    ({"test_fraction": 0}, "data.test_fraction", "test_fraction must be >"),
    ({"max_writers": 0}, "data.max_writers", "max_writers must be ≥ 1"),
    ({"min_samples_per_writer": -1}, "data.min_samples_per_writer", "must be ≥ 0"),
    ({"writer_selection": "random"}, "data.writer_selection", "writer_selection must be one of"),
    ({"invert": "yes"}, "data.invert", "invert must be true or false"),
    ({"mean": [0.1, 0.2]}, "data.mean", "needs 1 value"),
    ({"seed": -1}, "data.seed", "seed must be ≥ 0"),
    ({"root": ""}, "data.root", "root must be a folder path"),
])
def test_parameter_errors_name_the_key(params, key, match):
    with pytest.raises(ConfigError, match=match) as exc:
        DATASETS.create("femnist", "data", **params)
    assert exc.value.key == key


def test_registry_names():
    assert DATASETS.canonical("leaf_femnist") == "femnist" == DATASETS.canonical("FEMNIST")
    assert DATASETS.entry("femnist").summary.startswith("FEMNIST by writer")


def test_data_files_report(tmp_path):
    report = files.describe_files("femnist", tmp_path)
    assert not report.ready and [f.status for f in report.layouts[0]] == ["missing", "missing"]
    assert "preprocess.sh" in report.text()
    make_leaf_tree(tmp_path / "femnist")
    report = files.describe_files("femnist", tmp_path)
    assert report.ready and len(report.layouts[0]) == 4
    assert {f.status for f in report.layouts[0]} == {"present"}
    bad = min((tmp_path / "femnist" / "test").glob("*.json"))
    bad.write_text("{")
    checked = files.describe_files("femnist", tmp_path, verify=True)
    assert [f.status for f in checked.layouts[0]].count("invalid") == 1 and not checked.ready
    other = files.describe_files("leaf_femnist", tmp_path, split="by_writer_fraction")
    assert [f.name for f in other.layouts[0]] == ["all_data/*.json"]
    with pytest.raises(ConfigError, match="unknown FEMNIST split"):
        files.describe_files("femnist", tmp_path, split="byclass")
    with pytest.raises(ConfigError, match="no direct download"):
        files.fetch("femnist", tmp_path)
