"""Datasets: registered loaders that return in-memory train/test tensors.

Each dataset is a class registered in `DATASETS`; its ``__init__`` takes (and validates)
the dataset's parameters and ``load()`` builds a `Dataset`. A dataset's own randomness
(the digits split, the synthetic draw) is fixed by the dataset, never by the run seed, so
that every run seed sees the same data. `load_dataset` caches loads within the process.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch

from byzbench.errors import ParamError
from byzbench.registry import Registry

DIGITS_SPLIT_SEED = 20240601


def check_int(param: str, value: Any, low: int) -> int:
    """``value`` as an int ≥ ``low``, else `ParamError` naming ``param``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ParamError(param, f"{param} must be an integer, got {value!r}")
    if value < low:
        raise ParamError(param, f"{param} must be >= {low}, got {value}")
    return int(value)


def check_real(param: str, value: Any) -> float:
    """``value`` as a finite float, else `ParamError` naming ``param``."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ParamError(param, f"{param} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split held in memory: float32 inputs, int64 labels in ``0..C-1``.

    Loads are cached and shared (`load_dataset`): never modify the tensors in place.
    """

    name: str
    x_train: torch.Tensor = field(repr=False)
    y_train: torch.Tensor = field(repr=False)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    num_classes: int
    #: Optional per-sample group ids (e.g. the writer of each FEMNIST image), used by
    #: partitioners by natural group.
    groups_train: np.ndarray | None = field(default=None, repr=False)
    groups_test: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        splits = (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test))
        for part, x, y in splits:
            if x.dtype != torch.float32 or y.dtype != torch.int64:
                raise TypeError(f"{self.name} {part}: need float32 inputs and int64 labels")
            if y.ndim != 1 or x.shape[0] != y.shape[0]:
                raise ValueError(f"{self.name} {part}: {x.shape[0]} inputs, labels {tuple(y.shape)}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{self.name}: train and test input shapes differ")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(1, 8, 8)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.y_test.shape[0])


DATASETS: Registry = Registry("dataset", package=None)


def _as_dataset(name: str, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray,
                y_te: np.ndarray, num_classes: int) -> Dataset:
    """Wrap numpy arrays as a `Dataset` (float32 inputs, int64 labels)."""
    as_x = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    as_y = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))  # noqa: E731
    return Dataset(name, as_x(x_tr), as_y(y_tr), as_x(x_te), as_y(y_te), num_classes)


def stratified_split(labels: np.ndarray, test_fraction: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: round(test_fraction·N_c) of each class c go to test.

    One permutation π of all indices is drawn; within each class the first members in π's
    order go to test. Both index lists keep π's order, so neither is sorted by class.
    """
    order = rng.permutation(labels.shape[0])
    ordered = labels[order]
    is_test = np.zeros(labels.shape[0], dtype=bool)
    for c in np.unique(labels):
        pos = np.flatnonzero(ordered == c)
        is_test[pos[: int(round(test_fraction * pos.size))]] = True
    return order[~is_test], order[is_test]


@DATASETS.register("digits", aliases=("sklearn_digits",))
class Digits:
    """scikit-learn handwritten digits: 1797 images 8×8, 10 classes, no download.

    The UCI "Optical Recognition of Handwritten Digits" data (Alpaydin & Kaynak, 1998) as
    bundled by ``sklearn.datasets.load_digits``. Inputs have shape ``(1, 8, 8)`` with pixels
    x/16 ∈ [0, 1]. The train/test split is FIXED, independent of the run seed: with
    ``np.random.default_rng(20240601)`` draw one permutation π of the 1797 indices; for
    each class c the first round(test_fraction·N_c) of its members in π's order form the
    test set (Python ``round``, half to even); train and test both keep π's order.
    """

    def __init__(self, test_fraction: float = 0.25) -> None:
        test_fraction = check_real("test_fraction", test_fraction)
        if not 0.0 < test_fraction < 1.0:
            msg = f"test_fraction must be in (0, 1), got {test_fraction}"
            raise ParamError("test_fraction", msg)
        self.test_fraction = test_fraction

    def load(self) -> Dataset:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = (bunch.images / 16.0).reshape(-1, 1, 8, 8)
        y = bunch.target.astype(np.int64)
        rng = np.random.default_rng(DIGITS_SPLIT_SEED)
        train, test = stratified_split(y, self.test_fraction, rng)
        if train.size == 0 or test.size == 0:
            msg = f"test_fraction={self.test_fraction} leaves an empty train or test set"
            raise ParamError("test_fraction", msg)
        return _as_dataset("digits", x[train], y[train], x[test], y[test], 10)


@DATASETS.register("synthetic", aliases=("gaussian_mixture",))
class Synthetic:
    """Class-conditional Gaussians, a balanced C-class mixture (the LDA model; Hastie,
    Tibshirani & Friedman, *The Elements of Statistical Learning*, 2009, §4.3).

    Class means μ_k ~ N(0, (separation²/dim)·I_dim), so E‖μ_k‖² = separation² and
    E‖μ_j − μ_k‖² = 2·separation²; an input is x = μ_y + noise·ε with ε ~ N(0, I_dim).
    With the defaults two classes sit about 4.2 noise-σ apart along the line joining them:
    separable, not trivially (nearest-mean accuracy ≈ 0.85–0.9). Labels are balanced
    round-robin (y_i = i mod C, counts differ by ≤ 1), then shuffled. Everything is drawn
    from ``np.random.default_rng(seed)``, in the order: means, train, test; ``seed`` is a
    dataset parameter, so the data are the same for every run seed. Input shape ``(dim,)``.
    """

    def __init__(self, num_train: int = 10000, num_test: int = 2000, dim: int = 20,
                 num_classes: int = 10, separation: float = 3.0, noise: float = 1.0,
                 seed: int = 0) -> None:
        self.num_classes = check_int("num_classes", num_classes, 2)
        self.num_train = check_int("num_train", num_train, self.num_classes)
        self.num_test = check_int("num_test", num_test, 1)
        self.dim = check_int("dim", dim, 1)
        self.separation = check_real("separation", separation)
        self.noise = check_real("noise", noise)
        self.seed = check_int("seed", seed, 0)
        for param, value in (("separation", self.separation), ("noise", self.noise)):
            if value < 0:
                raise ParamError(param, f"{param} must be >= 0, got {value}")

    def _sample(self, n: int, means: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % self.num_classes)
        x = means[y] + self.noise * rng.standard_normal((n, self.dim))
        return x, y

    def load(self) -> Dataset:
        rng = np.random.default_rng(self.seed)
        scale = self.separation / math.sqrt(self.dim)
        means = rng.normal(0.0, scale, (self.num_classes, self.dim))
        x_tr, y_tr = self._sample(self.num_train, means, rng)
        x_te, y_te = self._sample(self.num_test, means, rng)
        return _as_dataset("synthetic", x_tr, y_tr, x_te, y_te, self.num_classes)


@functools.lru_cache(maxsize=32)
def _load_cached(name: str, frozen: tuple[tuple[str, Any], ...]) -> Dataset:
    return DATASETS.create(name, None, **dict(frozen)).load()


def load_dataset(name: str, params: dict[str, Any] | None = None, key: str = "data") -> Dataset:
    """Build dataset ``name`` with ``params`` and load it, cached per (name, params).

    Errors are `ConfigError`s keyed by ``key`` (unknown name) or ``key.param`` (bad value).
    """
    params = dict(params or {})
    loader = DATASETS.create(name, key, **params)  # validates before any work
    frozen = tuple(sorted(params.items()))
    try:
        hash(frozen)
    except TypeError:  # unhashable parameter values: load without caching
        frozen = None
    try:
        if frozen is None:
            return loader.load()
        return _load_cached(DATASETS.canonical(name), frozen)
    except ParamError as exc:
        raise exc.keyed(key) from exc
