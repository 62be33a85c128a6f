"""``femnist``: FEMNIST by writer, read from the LEAF benchmark's JSON files.

LEAF (Caldas, Duddu, Wu, Li, Konečný, McMahan, Smith & Talwalkar, "LEAF: A Benchmark for
Federated Settings", arXiv:1812.01097, 2018) turns NIST Special Database 19 into FEMNIST:
28×28 grey images of 62 classes (digits, upper- and lower-case letters) grouped by the
writer who drew them. Its ``data/femnist/preprocess.sh`` writes JSON files of the form::

    {"users": ["f0000_14", ...], "num_samples": [171, ...],
     "user_data": {"f0000_14": {"x": [[784 floats in [0, 1]], ...], "y": [labels 0..61]}}}

(an optional ``"hierarchies"`` list, one entry per user, is accepted and ignored), in
``data/all_data/`` (everything) and, after its train/test split, ``data/train/`` and
``data/test/``. Pixels are p/255 for grey levels p of the NIST scans, 1.0 = white paper.
Labels: 0–9 digits, 10–35 'A'–'Z', 36–61 'a'–'z'.

This module reads those files (`read_leaf_file`), checks their structure (no official
checksums exist), caches the decoded arrays as one ``.npz`` copy through
`byzbench.data.files` (rebuilt when any JSON file's size or mtime changes, or a file is
added or removed) and builds the ``femnist`` `Dataset` with per-sample writer ids in
``groups_train``/``groups_test`` for the ``natural`` partitioner. See docs/femnist.md.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from byzbench.checks import (
    check_bool,
    check_choice,
    check_int,
    check_optional_int,
    check_real,
)
from byzbench.data import files
from byzbench.data.catalog import FileSpec
from byzbench.data.datasets import DATASETS, Dataset
from byzbench.data.files import Arrays, DataFileError, MissingDataError
from byzbench.data.vision import (
    build_dataset,
    channel_stats,
    check_root,
    check_stats,
    pixels_to_float,
)
from byzbench.errors import ConfigError, ParamError

SIDE = 28
PIXELS = SIDE * SIDE
NUM_CLASSES = 62
CLASS_CHOICES = (62, 10)
SPLITS = ("leaf", "by_writer_fraction")
WRITER_SELECTIONS = ("first", "sample")
#: Folders under the data folder searched, in order, for the LEAF sub-folders.
FOLDERS = ("femnist", "femnist/data", ".")
#: The LEAF sub-folders each split mode reads.
SUBFOLDERS = {"leaf": ("train", "test"), "by_writer_fraction": ("all_data",)}
#: Largest distance of x·255 from an integer for which pixels are stored as uint8 p.
GRID_TOL = 1e-3
LEAF_COMMAND = "./preprocess.sh -s niid --sf 1.0 -k 0 -t sample"
NO_DOWNLOAD = ("dataset 'femnist' has no direct download: produce its JSON files with LEAF's "
               f"data/femnist/preprocess.sh (e.g. `{LEAF_COMMAND}`), which downloads NIST SD19 "
               "itself, then copy data/train and data/test into <data>/femnist/; see docs/femnist.md")


# ------------------------------------------------------------------ reading one JSON file


@dataclasses.dataclass(frozen=True)
class LeafFile:
    """The decoded samples of one LEAF JSON file, in file order (users, then samples).

    ``x``: ``[N, 28, 28]`` uint8 grey levels p (when every value is p/255 up to 1e-3/255)
    or float32 values in [0, 1]; ``y``: int64 labels; ``users``: the writers with at least
    one sample; ``counts``: their sample counts (``sum(counts) == N``).
    """

    path: Path
    users: tuple[str, ...]
    counts: np.ndarray
    x: np.ndarray
    y: np.ndarray


def _fail(path: Path, message: str) -> DataFileError:
    return DataFileError(f"{path}: {message}; not a LEAF FEMNIST file (regenerate it with "
                         f"LEAF's preprocess.sh, see docs/femnist.md)", str(path))


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise _fail(path, f"invalid JSON ({exc})") from exc
    except OSError as exc:
        raise DataFileError(f"{path}: cannot be read ({exc})", str(path)) from exc


def _check_header(path: Path, data: Any) -> tuple[list[str], list[int], dict]:
    """``users``, ``num_samples`` and ``user_data``, checked for types and lengths."""
    if not isinstance(data, dict):
        raise _fail(path, f"the top level is a {type(data).__name__}, expected an object")
    for key in ("users", "num_samples", "user_data"):
        if key not in data:
            raise _fail(path, f"key {key!r} missing (keys: {', '.join(map(str, data))})")
    users, counts, user_data = data["users"], data["num_samples"], data["user_data"]
    if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
        raise _fail(path, "'users' must be a list of writer names")
    if len(set(users)) != len(users):
        dup = next(u for u, c in Counter(users).items() if c > 1)
        raise _fail(path, f"writer {dup!r} is listed twice in 'users'")
    if not isinstance(counts, list) or not all(type(c) is int and c >= 0 for c in counts):
        raise _fail(path, "'num_samples' must be a list of integers ≥ 0")
    if len(counts) != len(users):
        raise _fail(path, f"{len(users)} users but {len(counts)} entries in 'num_samples'")
    hierarchies = data.get("hierarchies")
    if hierarchies is not None and (not isinstance(hierarchies, list) or len(hierarchies) != len(users)):
        raise _fail(path, f"'hierarchies' must be a list with one entry per user ({len(users)})")
    if not isinstance(user_data, dict):
        raise _fail(path, "'user_data' must be an object mapping writers to their samples")
    return users, counts, user_data


def _user_samples(path: Path, user: str, count: int, user_data: dict) -> tuple[list, list]:
    """One user's ``x`` and ``y`` lists, checked against ``num_samples``."""
    entry = user_data.get(user)
    if not isinstance(entry, dict) or not isinstance(entry.get("x"), list) \
            or not isinstance(entry.get("y"), list):
        raise _fail(path, f"user {user!r}: 'user_data' needs an entry with lists 'x' and 'y'")
    xs, ys = entry["x"], entry["y"]
    if not len(xs) == len(ys) == count:
        raise _fail(path, f"user {user!r}: num_samples says {count}, but 'x' has {len(xs)} "
                    f"images and 'y' {len(ys)} labels")
    return xs, ys


def _check_unlisted(path: Path, users: list[str], user_data: dict) -> None:
    """Writers in ``user_data`` but not in ``users`` must hold no sample (LEAF's by-sample
    split leaves such empty entries for writers with fewer than 2 samples)."""
    listed = set(users)
    for user, entry in user_data.items():
        if user in listed:
            continue
        empty = isinstance(entry, dict) and not entry.get("x") and not entry.get("y")
        if not empty:
            raise _fail(path, f"user {user!r} has samples in 'user_data' but is not in 'users'")


def _owner(users: Sequence[str], counts: Sequence[int], sample: int) -> str:
    """The writer of the ``sample``-th sample of a file."""
    return users[int(np.searchsorted(np.cumsum(counts), sample, side="right"))]


def _decode_images(path: Path, rows: list, users: list[str], counts: list[int]) -> np.ndarray:
    """``[N, 784]`` float32 from the lists of pixel values; each must hold 784 values in [0, 1]."""
    try:
        x = np.array(rows, dtype=np.float32)
    except (ValueError, TypeError):
        x = None
    if x is None or (x.ndim != 2 and len(rows)) or (x.ndim == 2 and x.shape[1] != PIXELS):
        bad = next((i for i, r in enumerate(rows) if not _is_image_row(r)), 0)
        raise _fail(path, f"user {_owner(users, counts, bad)!r}: an image is not a list of "
                    f"{PIXELS} numbers (28×28 pixels)")
    x = x.reshape(len(rows), PIXELS)
    ok = np.isfinite(x) & (x >= 0.0) & (x <= 1.0)
    if not ok.all():
        bad = int(np.flatnonzero(~ok.all(axis=1))[0])
        raise _fail(path, f"user {_owner(users, counts, bad)!r}: pixel values must lie in "
                    f"[0, 1], found {float(x[bad][~ok[bad]][0])}")
    return x


def _is_image_row(row: Any) -> bool:
    if not isinstance(row, list) or len(row) != PIXELS:
        return False
    try:
        np.array(row, dtype=np.float32)
    except (ValueError, TypeError):
        return False
    return True


def _decode_labels(path: Path, labels: list, users: list[str], counts: list[int]) -> np.ndarray:
    """int64 labels, each an integer in 0..61."""
    y = np.array(labels)
    if y.size and (y.ndim != 1 or y.dtype.kind not in "iu"):
        bad = next((i for i, v in enumerate(labels) if type(v) is not int), 0)
        raise _fail(path, f"user {_owner(users, counts, bad)!r}: label {labels[bad]!r} is not "
                    f"an integer")
    y = y.astype(np.int64).reshape(-1)
    out = (y < 0) | (y >= NUM_CLASSES)
    if out.any():
        bad = int(np.flatnonzero(out)[0])
        raise _fail(path, f"user {_owner(users, counts, bad)!r}: label {int(y[bad])} outside "
                    f"0..{NUM_CLASSES - 1}")
    return y


def to_grid(x: np.ndarray) -> np.ndarray:
    """``[N, 784]`` floats as ``[N, 28, 28]`` uint8 p = round(255·x) when every value is p/255
    (|255·x − p| ≤ 1e-3: lossless, as LEAF writes them), else as float32 ``[N, 28, 28]``."""
    scaled = x * np.float32(255.0)  # float32 rounding moves 255·x by < 2e-5
    grid = np.rint(scaled)
    if x.size and np.abs(scaled - grid).max() > GRID_TOL:
        return x.reshape(-1, SIDE, SIDE).astype(np.float32)
    return grid.astype(np.uint8).reshape(-1, SIDE, SIDE)


def read_leaf_file(path: str | os.PathLike) -> LeafFile:
    """Read and check one LEAF FEMNIST JSON file; `DataFileError` naming it on any fault.

    Checked: the keys and their types, one ``num_samples`` entry per user, ``len(x) ==
    len(y) == num_samples`` for every user, 784 pixel values in [0, 1] per image, integer
    labels in 0..61, no samples for writers missing from ``users``.
    """
    path = Path(path)
    users, counts, user_data = _check_header(path, _load_json(path))
    _check_unlisted(path, users, user_data)
    per_user = [_user_samples(path, u, c, user_data) for u, c in zip(users, counts)]
    rows = list(itertools.chain.from_iterable(xs for xs, _ in per_user))
    labels = list(itertools.chain.from_iterable(ys for _, ys in per_user))
    x = _decode_images(path, rows, users, counts)
    y = _decode_labels(path, labels, users, counts)
    keep = [i for i, c in enumerate(counts) if c > 0]
    return LeafFile(path, tuple(users[i] for i in keep), np.array([counts[i] for i in keep], np.int64),
                    to_grid(x), y)


# ------------------------------------------------------------------ reading a folder


def _as_float(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x


def concat_images(parts: Sequence[np.ndarray]) -> np.ndarray:
    """One ``[N, 28, 28]`` array: uint8 when every part is, else float32 in [0, 1]."""
    if not parts:
        return np.zeros((0, SIDE, SIDE), np.uint8)
    if all(p.dtype == np.uint8 for p in parts):
        return np.concatenate(parts)
    return np.concatenate([_as_float(p) for p in parts])


def read_leaf_split(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The images, labels and per-sample writer names of the files of one split, in file
    order; a writer in two files of one split is a `DataFileError` naming both."""
    seen: dict[str, Path] = {}
    xs, ys, names = [], [], []
    for path in paths:
        part = read_leaf_file(path)
        for user in part.users:
            if user in seen:
                raise DataFileError(f"writer {user!r} appears in both {seen[user]} and {path}; "
                                    f"each writer belongs to one file of a split", str(path))
            seen[user] = path
        xs.append(part.x)
        ys.append(part.y)
        names.append(np.repeat(np.array(part.users, dtype=str), part.counts))
    y = np.concatenate(ys) if ys else np.zeros(0, np.int64)
    return concat_images(xs), y, np.concatenate(names) if names else np.zeros(0, str)


def decode_folder(folder: Path, layout: tuple[FileSpec, ...], parts: Sequence[str]) -> Arrays:
    """The raw arrays cached for ``folder``: per sub-folder ``s`` in ``parts``, ``x_s``,
    ``y_s`` and ``w_s`` (writer index into ``writers``, the sorted writer names of all parts)."""
    decoded = {}
    for part in parts:
        paths = [folder / f.name for f in layout if f.name.split("/", 1)[0] == part]
        decoded[part] = read_leaf_split(paths)
        if decoded[part][1].size == 0:
            raise DataFileError(f"femnist: the LEAF files in {folder / part} hold no samples",
                                str(folder / part))
    writers = np.unique(np.concatenate([names for _, _, names in decoded.values()]))
    out: Arrays = {"writers": writers}
    xs = concat_images([x for x, _, _ in decoded.values()])
    offsets = np.cumsum([0] + [len(y) for _, y, _ in decoded.values()])
    for i, (part, (_, y, names)) in enumerate(decoded.items()):
        out[f"x_{part}"] = xs[offsets[i]:offsets[i + 1]]  # one dtype across parts
        out[f"y_{part}"] = y
        out[f"w_{part}"] = np.searchsorted(writers, names).astype(np.int64)
    return out


# ------------------------------------------------------------------ locating the files


def _json_files(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".json"
                  and not p.name.startswith(".") and p.is_file())


def find_files(root: str | os.PathLike | None, split: str) -> tuple[Path, tuple[FileSpec, ...]] | None:
    """The first folder (``<data>/femnist``, ``<data>/femnist/data``, ``<data>``) whose LEAF
    sub-folders for ``split`` all hold ``.json`` files, and those files (sorted), or None."""
    base = files.data_root(root)
    for sub in FOLDERS:
        folder = base / sub
        found = {s: _json_files(folder / s) for s in SUBFOLDERS[split]}
        if all(found.values()):
            return folder, tuple(FileSpec(f"{s}/{n}") for s, names in found.items() for n in names)
    return None


def missing_message(root: str | os.PathLike | None, split: str) -> str:
    """What a missing-files error says: what is expected where, how to produce it."""
    base, origin = files.resolve_data_root(root)
    want = " and ".join(f"{s}/*.json" for s in SUBFOLDERS[split])
    other = "by_writer_fraction" if split == "leaf" else "leaf"
    hint = ""
    if find_files(root, other) is not None:
        hint = f" The files for split={other!r} are there: set data.split={other}."
    where = ", ".join(str(base / s) for s in FOLDERS)
    return (f"dataset 'femnist' (split={split!r}): LEAF JSON files not found. Expected {want} "
            f"in one of: {where}. Data folder searched: {base}, set by {origin}; choose another "
            f"with data.root or ${files.ENV_VAR}.{hint} FEMNIST has no direct download: produce "
            f"the files with LEAF's data/femnist/preprocess.sh (e.g. `{LEAF_COMMAND}`) and copy "
            f"its data/train and data/test (or data/all_data) folders there; see docs/femnist.md.")


def locate(root: str | os.PathLike | None, split: str) -> tuple[Path, tuple[FileSpec, ...]]:
    """`find_files`, or `MissingDataError` saying what is expected and how to produce it."""
    found = find_files(root, split)
    if found is None:
        raise MissingDataError(missing_message(root, split))
    return found


def load_raw(root: str | os.PathLike | None, split: str, use_cache: bool = True) -> Arrays:
    """The decoded arrays of ``split``'s files, from the cache copy when it is current.

    The cache key (`files.signature`) covers every JSON file's name, size and mtime, so a
    changed, added or removed file rebuilds the copy.
    """
    folder, layout = locate(root, split)
    parts = SUBFOLDERS[split]
    cache_id = f"femnist-{'-'.join(parts)}"
    sig = files.signature(cache_id, folder, layout)
    if use_cache:
        cached = files.read_cache(folder, cache_id, sig)
        if cached is not None:
            return cached
    arrays = decode_folder(folder, layout, parts)
    if use_cache:
        files.write_cache(folder, cache_id, sig, arrays)
    return arrays


# ------------------------------------------------------------------ splits and filters

Part = tuple[np.ndarray, np.ndarray, np.ndarray]  # (x, y, writer index)


def split_by_writer(writer: np.ndarray, test_fraction: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) sample indices, ascending: each writer's samples split as LEAF's
    ``split_data.py --by_sample`` does.

    A writer with n ≥ 2 samples keeps n_tr = min(n − 1, max(1, ⌊(1 − test_fraction)·n⌋)) in
    train and the rest in test, the test samples a uniform subset (the n − n_tr samples with
    the smallest keys u ~ U(0, 1), one key per sample drawn from ``rng`` in sample order);
    a writer with one sample is dropped, as LEAF drops it.
    """
    n = writer.size
    keys = rng.random(n)
    counts = np.bincount(writer, minlength=int(writer.max(initial=-1)) + 1)
    order = np.lexsort((keys, writer))
    starts = np.cumsum(counts) - counts
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - starts[writer[order]]
    floor = np.floor((1.0 - test_fraction) * counts).astype(np.int64)
    n_train = np.minimum(counts - 1, np.maximum(1, floor))
    n_test = np.where(counts >= 2, counts - n_train, 0)
    is_test = rank < n_test[writer]
    is_train = ~is_test & (counts[writer] >= 2)
    return np.flatnonzero(is_train), np.flatnonzero(is_test)


def _take(part: Part, keep: np.ndarray) -> Part:
    return part[0][keep], part[1][keep], part[2][keep]


def _nonempty(parts: dict[str, Part], param: str, what: str) -> None:
    for name, (_, y, _) in parts.items():
        if y.size == 0:
            raise ParamError(param, f"femnist: no {name} samples remain after {what}")


def select_writers(counts: np.ndarray, min_samples: int, max_writers: int | None,
                   selection: str, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of the writers kept: those with ≥ ``min_samples`` samples (and ≥ 1),
    then at most ``max_writers`` of them: the first in sorted-name order (``"first"``) or a
    uniform sample without replacement drawn from ``rng`` (``"sample"``)."""
    eligible = np.flatnonzero(counts >= max(min_samples, 1))
    if max_writers is None or eligible.size <= max_writers:
        return eligible
    if selection == "first":
        return eligible[:max_writers]
    return np.sort(rng.choice(eligible, size=max_writers, replace=False))


# ------------------------------------------------------------------ the dataset


@DATASETS.register("femnist", aliases=("leaf_femnist", "femnist_leaf"))
class FEMNIST:
    """FEMNIST by writer (LEAF JSON files): 28×28 characters, 62 classes, one group per writer.

    Caldas et al., "LEAF: A Benchmark for Federated Settings", arXiv:1812.01097, 2018; the
    natural-partition data of STRIKE (Liu et al., AAAI 2025; ALGORITHMS.md §5.6). Files: the
    output of LEAF's ``data/femnist/preprocess.sh`` in ``<data>/femnist/`` (or
    ``<data>/femnist/data/``, or the data folder itself): ``train/*.json`` and
    ``test/*.json`` for ``split="leaf"`` (default: LEAF's own split), ``all_data/*.json``
    for ``split="by_writer_fraction"``, which splits each writer's samples itself as LEAF's
    ``--by_sample`` split does, a uniform ``test_fraction`` (default 0.1, LEAF's 0.9 train)
    of them going to test (at least one each side; one-sample writers dropped), drawn from
    the dataset's ``seed``. No checksums exist: every file's structure is checked and any
    fault is an error naming the file; the decoded arrays are cached as one ``.npz`` copy.

    In this order: ``classes=10`` keeps the digits (labels 0–9; 62 keeps all);
    ``min_samples_per_writer`` drops writers with fewer samples, train and test together
    (as LEAF's ``-k``); ``max_writers`` keeps at most that many writers,
    ``writer_selection="first"`` (default) the first by sorted name, ``"sample"`` a uniform
    draw from ``seed``; a dropped writer's train and test samples both go. Inputs
    ``(1, 28, 28)``: x = p/255, with ``invert=True`` (default) x = (255 − p)/255 so that ink
    is high and paper 0, as in MNIST (``invert=False`` keeps LEAF's values, white = 1, as
    STRIKE's code uses them). ``normalize=False`` (default, as LEAF and STRIKE) leaves x in
    [0, 1]; True standardises with ``mean``/``std``, by default the training split's own.
    ``groups_train``/``groups_test``: the writer of each sample, an index into the sorted
    names of the writers kept, so ``partition: natural`` gives one client per writer.
    """

    def __init__(self, root: str | None = None, split: str = "leaf", test_fraction: float = 0.1,
                 seed: int = 0, classes: int = 62, invert: bool = True,
                 min_samples_per_writer: int = 0, max_writers: int | None = None,
                 writer_selection: str = "first", normalize: bool = False,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 cache: bool = True) -> None:
        self.root = check_root(root)
        self.split = check_choice(split, "split", SPLITS)
        self.test_fraction = check_real(test_fraction, "test_fraction", 0.0, 1.0, True, True)
        self.seed = check_int(seed, "seed", 0)
        self.classes = check_choice(classes, "classes", CLASS_CHOICES)
        self.invert = check_bool(invert, "invert")
        self.min_samples_per_writer = check_int(min_samples_per_writer, "min_samples_per_writer", 0)
        self.max_writers = check_optional_int(max_writers, "max_writers", 1)
        self.writer_selection = check_choice(writer_selection, "writer_selection", WRITER_SELECTIONS)
        self.normalize = check_bool(normalize, "normalize")
        self.mean = _one_channel("mean", check_stats("mean", mean, positive=False))
        self.std = _one_channel("std", check_stats("std", std, positive=True))
        self.cache = check_bool(cache, "cache")

    @property
    def num_classes(self) -> int:
        return self.classes

    def _rngs(self) -> tuple[np.random.Generator, np.random.Generator]:
        """Independent streams for the per-writer split and the writer sample."""
        split, writers = np.random.SeedSequence(self.seed).spawn(2)
        return np.random.default_rng(split), np.random.default_rng(writers)

    def _parts(self, raw: Arrays, rng: np.random.Generator) -> dict[str, Part]:
        if self.split == "leaf":
            return {p: (raw[f"x_{p}"], raw[f"y_{p}"], raw[f"w_{p}"]) for p in ("train", "test")}
        whole = (raw["x_all_data"], raw["y_all_data"], raw["w_all_data"])
        train, test = split_by_writer(whole[2], self.test_fraction, rng)
        return {"train": _take(whole, train), "test": _take(whole, test)}

    def _filter(self, parts: dict[str, Part], num_writers: int,
                rng: np.random.Generator) -> tuple[dict[str, Part], int]:
        """Class filter, then writer selection; writer ids re-indexed densely."""
        if self.classes != NUM_CLASSES:
            parts = {k: _take(p, p[1] < self.classes) for k, p in parts.items()}
            _nonempty(parts, "classes", f"keeping classes 0..{self.classes - 1}")
        counts = sum(np.bincount(p[2], minlength=num_writers) for p in parts.values())
        kept = select_writers(counts, self.min_samples_per_writer, self.max_writers,
                              self.writer_selection, rng)
        new_id = np.full(num_writers, -1, np.int64)
        new_id[kept] = np.arange(kept.size)
        out = {}
        for name, (x, y, w) in parts.items():
            keep = new_id[w] >= 0
            out[name] = (x[keep], y[keep], new_id[w[keep]])
        what = (f"min_samples_per_writer={self.min_samples_per_writer} and "
                f"max_writers={self.max_writers}")
        _nonempty(out, "min_samples_per_writer" if self.max_writers is None else "max_writers", what)
        return out, int(kept.size)

    def _pixels(self, x: np.ndarray) -> np.ndarray:
        """``[N, 1, 28, 28]``: uint8 p (or 255 − p), or float x (or 1 − x)."""
        if self.invert:
            x = np.uint8(255) - x if x.dtype == np.uint8 else np.float32(1.0) - x
        return x.reshape(-1, 1, SIDE, SIDE)

    def _stats(self, x_train: np.ndarray) -> tuple[Sequence[float], Sequence[float]] | None:
        if not self.normalize:
            return None
        if self.mean is not None and self.std is not None:
            return self.mean, self.std
        c_mean, c_std = channel_stats(pixels_to_float(x_train))
        return self.mean or c_mean, self.std or c_std

    def load(self) -> Dataset:
        raw = load_raw(self.root, self.split, self.cache)
        split_rng, writer_rng = self._rngs()
        parts = self._parts(raw, split_rng)
        _nonempty(parts, "split", f"split={self.split!r}")
        parts, _ = self._filter(parts, int(raw["writers"].size), writer_rng)
        (x_tr, y_tr, w_tr), (x_te, y_te, w_te) = parts["train"], parts["test"]
        x_tr, x_te = self._pixels(x_tr), self._pixels(x_te)
        arrays = {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}
        ds = build_dataset("femnist", arrays, self.num_classes, self._stats(x_tr))
        return dataclasses.replace(ds, groups_train=w_tr, groups_test=w_te)


def _one_channel(param: str, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
    if value is not None and len(value) != 1:
        raise ParamError(param, f"{param} needs 1 value (FEMNIST is grey), got {len(value)}")
    return value


# ------------------------------------------------------------------ byzbench data files


def describe_files(root: str | os.PathLike | None = None, split: str | None = None,
                   verify: bool = False) -> files.FilesReport:
    """The LEAF files ``femnist`` reads for ``split`` (default ``"leaf"``) and each one's
    status: ``present``; with ``verify`` each is parsed and checked (``ok`` or ``invalid``)."""
    split = "leaf" if split is None else split
    if split not in SPLITS:
        raise ConfigError(f"unknown FEMNIST split {split!r}; valid: {', '.join(SPLITS)}", "data.split")
    base, origin = files.resolve_data_root(root)
    found = find_files(root, split)
    folder = found[0] if found else base / FOLDERS[0]
    statuses = []
    for sub in SUBFOLDERS[split]:
        names = _json_files(folder / sub)
        if not names:
            statuses.append(files.FileStatus(f"{sub}/*.json", folder / sub, "missing", None, {}))
        statuses += [_status(folder / sub / n, f"{sub}/{n}", verify) for n in names]
    hint = (f"produce the LEAF JSON files with LEAF's data/femnist/preprocess.sh (e.g. "
            f"`{LEAF_COMMAND}`) and copy {' and '.join(SUBFOLDERS[split])} into "
            f"{base / FOLDERS[0]} (docs/femnist.md)")
    return files.FilesReport("femnist", base, origin, folder, [statuses], hint)


def _status(path: Path, name: str, verify: bool) -> files.FileStatus:
    status = "present"
    if verify:
        try:
            read_leaf_file(path)
            status = "ok"
        except DataFileError:
            status = "invalid"
    return files.FileStatus(name, path, status, path.stat().st_size, {})
