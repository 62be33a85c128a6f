"""Behaviour of byzbench.data: the embedded datasets and the client partitioners."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzbench.data import DATASETS, PARTITIONERS, Dataset, load_dataset, partition
from byzbench.errors import ConfigError

MODES = ("per_class", "balanced", "per_client")


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits", {})


@pytest.fixture(scope="module")
def digit_labels(digits: Dataset) -> np.ndarray:
    return digits.y_train.numpy()


def assert_complete_disjoint(parts: list[np.ndarray], n: int) -> None:
    assert all(p.dtype == np.int64 and p.ndim == 1 for p in parts)
    flat = np.concatenate(parts) if parts else np.empty(0, np.int64)
    assert flat.size == n
    np.testing.assert_array_equal(np.sort(flat), np.arange(n))


def mean_tv(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean total-variation distance between each client's label histogram and the global one."""
    c = labels.max() + 1
    glob = np.bincount(labels, minlength=c) / labels.size
    return float(np.mean([0.5 * np.abs(np.bincount(labels[p], minlength=c) / p.size - glob).sum()
                          for p in parts]))


def dirichlet(labels, k, seed, **params) -> list[np.ndarray]:
    return partition("dirichlet", params, labels, k, np.random.default_rng(seed))


# ---------------------------------------------------------------- datasets


def test_registries_list_components():
    assert {"digits", "synthetic"} <= set(DATASETS.names())
    assert {"iid", "dirichlet"} <= set(PARTITIONERS.names())
    assert DATASETS.entry("digits").summary and PARTITIONERS.entry("dirichlet").summary


def test_digits_shapes_values_classes(digits: Dataset):
    assert digits.num_train + digits.num_test == 1797
    assert digits.input_shape == (1, 8, 8)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    for x in (digits.x_train, digits.x_test):
        assert x.min() >= 0 and x.max() <= 1
    assert digits.x_train.max() == 1.0  # 16/16 occurs
    assert digits.num_classes == 10
    assert set(digits.y_train.tolist()) == set(digits.y_test.tolist()) == set(range(10))


def test_digits_split_fixed_and_stratified():
    from sklearn.datasets import load_digits

    a = load_dataset("digits", {"test_fraction": 0.3})
    b = DATASETS.create("digits", None, test_fraction=0.3).load()  # uncached
    assert a is load_dataset("digits", {"test_fraction": 0.3})  # cached
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    counts = np.bincount(load_digits().target, minlength=10)
    test_counts = np.bincount(a.y_test.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - np.round(0.3 * counts)) <= 1)
    assert np.any(np.diff(a.y_train.numpy()) < 0)  # shuffled, not class-sorted


def test_digits_train_test_disjoint(digits: Dataset):
    train = {row.tobytes() for row in digits.x_train.numpy()}
    overlap = sum(row.tobytes() in train for row in digits.x_test.numpy())
    assert overlap <= 5  # sklearn digits has a few duplicate images, no shared samples


def test_synthetic_shapes_balance_reproducible():
    d = load_dataset("synthetic", {"num_train": 1003, "num_test": 200, "dim": 7, "num_classes": 4})
    assert d.input_shape == (7,) and d.num_train == 1003 and d.num_test == 200
    counts = np.bincount(d.y_train.numpy(), minlength=4)
    assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(np.bincount(d.y_test.numpy()), [50] * 4)
    params = {"num_train": 1003, "num_test": 200, "dim": 7, "num_classes": 4}
    again = DATASETS.create("synthetic", None, **params).load()
    assert torch.equal(d.x_train, again.x_train) and torch.equal(d.y_test, again.y_test)
    other = DATASETS.create("synthetic", None, **params, seed=1).load()
    assert not torch.allclose(d.x_train, other.x_train)


def test_synthetic_classes_separated():
    d = load_dataset("synthetic", {})
    x, y = d.x_train.numpy(), d.y_train.numpy()
    means = np.stack([x[y == k].mean(0) for k in range(d.num_classes)])
    dist = ((d.x_test.numpy()[:, None, :] - means[None]) ** 2).sum(-1)
    acc = (dist.argmin(1) == d.y_test.numpy()).mean()
    assert 0.6 < acc < 0.99  # separable, not trivially


@pytest.mark.parametrize("name, params, bad", [
    ("digits", {"test_fraction": 1.5}, "test_fraction"),
    ("digits", {"test_fraction": 0.0}, "test_fraction"),
    ("digits", {"test_fraction": 0.001}, "test_fraction"),  # empty test set
    ("synthetic", {"num_classes": 1}, "num_classes"),
    ("synthetic", {"noise": -1.0}, "noise"),
    ("synthetic", {"dim": 2.5}, "dim"),
    ("synthetic", {"dims": 3}, "dims"),
])
def test_dataset_bad_params(name, params, bad):
    with pytest.raises(ConfigError) as err:
        load_dataset(name, params)
    assert err.value.key == f"data.{bad}" and bad in str(err.value)


def test_dataset_unknown_name():
    with pytest.raises(ConfigError, match="digits") as err:
        load_dataset("mnist-typo", {})
    assert err.value.key == "data"


# ---------------------------------------------------------------- iid


@pytest.mark.parametrize("n, k", [(1347, 25), (100, 7), (10, 10), (3, 5)])
def test_iid_complete_disjoint_even(n, k):
    labels = np.arange(n) % 10
    parts = partition("iid", {}, labels, k, np.random.default_rng(0))
    assert len(parts) == k
    assert_complete_disjoint(parts, n)
    sizes = np.array([p.size for p in parts])
    assert sizes.max() - sizes.min() <= 1
    assert np.all(np.diff(sizes) <= 0)  # the first N mod K chunks are the larger ones


def test_iid_reproducible(digit_labels):
    a = partition("iid", {}, digit_labels, 20, np.random.default_rng(3))
    b = partition("iid", {}, digit_labels, 20, np.random.default_rng(3))
    c = partition("iid", {}, digit_labels, 20, np.random.default_rng(4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


# ---------------------------------------------------------------- dirichlet


@pytest.mark.parametrize("mode", MODES)
def test_dirichlet_complete_min_size_reproducible(mode, digit_labels):
    parts = dirichlet(digit_labels, 25, 0, beta=0.5, mode=mode)
    assert len(parts) == 25
    assert_complete_disjoint(parts, digit_labels.size)
    assert min(p.size for p in parts) >= 10
    again = dirichlet(digit_labels, 25, 0, beta=0.5, mode=mode)
    assert all(np.array_equal(x, y) for x, y in zip(parts, again))
    other = dirichlet(digit_labels, 25, 1, beta=0.5, mode=mode)
    assert not all(np.array_equal(x, y) for x, y in zip(parts, other))


@pytest.mark.parametrize("mode", MODES)
def test_dirichlet_skew_grows_as_beta_shrinks(mode, digit_labels):
    def tv(beta: float) -> float:
        return np.mean([mean_tv(dirichlet(digit_labels, 25, s, beta=beta, mode=mode, min_size=0),
                                digit_labels) for s in range(3)])

    skewed, mild, flat = tv(0.1), tv(10.0), tv(1e4)
    assert skewed > mild + 0.3
    assert flat < 0.15


@pytest.mark.parametrize("mode", ("per_class", "balanced"))
def test_dirichlet_tiny_beta_sends_each_class_to_one_client(mode, digit_labels):
    shares = []
    for seed in range(3):
        parts = dirichlet(digit_labels, 25, seed, beta=0.01, mode=mode, min_size=0)
        owner = np.full(digit_labels.size, -1)
        for i, p in enumerate(parts):
            owner[p] = i
        for c in range(10):
            members = owner[digit_labels == c]
            shares.append(np.bincount(members, minlength=25).max() / members.size)
    assert np.mean(shares) > 0.7


def test_dirichlet_balanced_caps_client_size(digit_labels):
    n, k = digit_labels.size, 25
    cap = n / k + np.bincount(digit_labels).max()  # full at N/K, then at most one more class

    def largest(mode: str, seed: int) -> int:
        return max(p.size for p in dirichlet(digit_labels, k, seed, beta=0.1, mode=mode, min_size=0))

    balanced = [largest("balanced", s) for s in range(6)]
    assert max(balanced) < cap
    assert np.mean(balanced) < np.mean([largest("per_class", s) for s in range(6)])


def test_dirichlet_per_client_takes_label_sorted_blocks_in_client_order():
    labels = np.repeat(np.arange(4), 50)  # class c holds indices 50c .. 50c+49
    parts = dirichlet(labels, 5, 0, beta=1e4, mode="per_client", min_size=0)
    assert_complete_disjoint(parts, labels.size)
    # shares ⌊50·q_i/Σq⌋ are 9 or 10, so client i's block of class c spans [50c+10i, 50c+9i+9)
    for i in range(5):
        for c in range(4):
            assert set(range(50 * c + 10 * i, 50 * c + 9 * i + 9)) <= set(parts[i].tolist())


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 120), c=st.integers(1, 8), k=st.integers(1, 12),
       beta=st.floats(0.01, 100.0), seed=st.integers(0, 2**32 - 1),
       mode=st.sampled_from(MODES), min_size=st.integers(0, 4))
def test_dirichlet_property_complete_disjoint(n, c, k, beta, seed, mode, min_size):
    labels = np.random.default_rng(seed).integers(0, c, n)
    try:
        parts = dirichlet(labels, k, seed, beta=beta, mode=mode, min_size=min_size, max_tries=50)
    except ConfigError as err:
        assert err.key == "partition.min_size"
        return
    assert len(parts) == k
    assert_complete_disjoint(parts, n)
    assert min(p.size for p in parts) >= min_size


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("params, key", [
    ({"beta": 0.0}, "partition.beta"),
    ({"beta": -1.0}, "partition.beta"),
    ({"beta": float("nan")}, "partition.beta"),
    ({"mode": "sorted"}, "partition.mode"),
    ({"min_size": -1}, "partition.min_size"),
    ({"max_tries": 0}, "partition.max_tries"),
    ({"alpha": 0.5}, "partition.alpha"),
])
def test_dirichlet_bad_params(params, key, digit_labels):
    with pytest.raises(ConfigError) as err:
        partition("dirichlet", params, digit_labels, 10, np.random.default_rng(0))
    assert err.value.key == key
    assert key.split(".")[1] in str(err.value)


def test_registry_create_names_component_and_parameter():
    with pytest.raises(ConfigError, match="beta must be > 0") as err:
        PARTITIONERS.create("dirichlet", "partition", beta=-1.0)
    assert err.value.key == "partition.beta"
    with pytest.raises(ConfigError, match="test_fraction") as err:
        DATASETS.create("digits", "data", test_fraction=2)
    assert err.value.key == "data.test_fraction"


def test_unknown_mode_lists_valid_modes(digit_labels):
    with pytest.raises(ConfigError, match="per_class.*balanced.*per_client"):
        partition("dirichlet", {"mode": "nope"}, digit_labels, 10, np.random.default_rng(0))


@pytest.mark.parametrize("mode", MODES)
def test_impossible_min_size(mode, digit_labels):
    # more than N samples requested in total: refused before any draw
    with pytest.raises(ConfigError, match="unreachable") as err:
        dirichlet(digit_labels, 200, 0, mode=mode, min_size=10)
    assert err.value.key == "partition.min_size"
    # feasible in count but out of reach for a very skewed beta
    labels = np.repeat(np.arange(5), 20)
    with pytest.raises(ConfigError, match="beta=0.1") as err:
        dirichlet(labels, 10, 0, beta=0.1, mode=mode, min_size=10, max_tries=20)
    assert err.value.key == "partition.min_size"


def test_unknown_partitioner(digit_labels):
    with pytest.raises(ConfigError, match="dirichlet") as err:
        partition("shuffle", {}, digit_labels, 10, np.random.default_rng(0))
    assert err.value.key == "partition"
