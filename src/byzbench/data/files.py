"""The data folder: where dataset files are found, checked, cached and downloaded.

Data folder (`data_root`): the dataset parameter ``root`` (config ``data.root``), else the
environment variable ``BYZBENCH_DATA``, else the per-user cache folder
``$XDG_CACHE_HOME/byzbench/data`` (``~/.cache/byzbench/data``). Each dataset has its own
sub-folder there (see `byzbench.data.catalog`).

First load of a dataset: every file is checked against its official size and checksums (MD5
and/or SHA-256); a mismatch, a truncated or corrupt file is a `DataFileError` naming the file,
never used. The decoded arrays are then written as one uncompressed ``.npz`` cache copy next
to the files (``.byzbench-cache-<id>.npz``), or, when that folder is read-only (no write
permission bit, or writing fails), under ``$XDG_CACHE_HOME/byzbench/cache/``. Later loads read
the cache copy, skipping the checksums, as long as every source file keeps its size and
modification time (and the expected checksums are unchanged); otherwise the cache copy is
rebuilt.

`fetch` downloads a dataset's official files (``byzbench data fetch NAME``); `describe_files`
lists the files a dataset needs and their status (``byzbench data files NAME``).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from byzbench.data import catalog
from byzbench.data.catalog import Download, FileSpec, Source
from byzbench.errors import ConfigError

ENV_VAR = "BYZBENCH_DATA"
CACHE_VERSION = 1
CHUNK = 1 << 20
_urlopen = urllib.request.urlopen  # replaced in tests; never called at import


class DataFileError(ConfigError):
    """A dataset file is missing, corrupt or fails its checksum (config key ``data``)."""

    def __init__(self, message: str, path: str | None = None) -> None:
        self.path = path
        super().__init__(message, "data")


class MissingDataError(DataFileError):
    """A dataset's files are not in the data folder."""


# ------------------------------------------------------------------ folders


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/byzbench`` when that is an absolute path, else ``~/.cache/byzbench``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "byzbench"


def resolve_data_root(root: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The data folder and what chose it: ``root``, ``$BYZBENCH_DATA`` or the default."""
    if root is not None and str(root) != "":
        return Path(os.path.expanduser(os.fspath(root))), "the root parameter (data.root)"
    env = os.environ.get(ENV_VAR, "")
    if env:
        return Path(os.path.expanduser(env)), f"${ENV_VAR}"
    return user_cache_dir() / "data", "the default per-user folder"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder searched for dataset files (see the module docstring)."""
    return resolve_data_root(root)[0]


def may_write(folder: Path) -> bool:
    """Whether byzbench may write into ``folder``: it exists, the process may write there and
    some write permission bit is set (a ``r-x`` folder counts as read-only, even for root)."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return bool(mode & 0o222) and os.access(folder, os.W_OK)


# ------------------------------------------------------------------ checksums


def file_digests(path: Path, algorithms: Iterable[str] = ("md5", "sha256")) -> dict[str, str]:
    """Hex digests of ``path`` for each algorithm, in one pass over the file."""
    hashes = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            for h in hashes.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashes.items()}


def _expected(spec: FileSpec) -> dict[str, str]:
    return {a: v for a, v in (("md5", spec.md5), ("sha256", spec.sha256)) if v is not None}


def check_file(path: Path, spec: FileSpec) -> None:
    """Size and checksums of ``path`` against ``spec``; `DataFileError` naming it otherwise."""
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        raise DataFileError(f"{path} has {size} bytes, the official file has {spec.size} "
                            f"(truncated or a different file); delete it and fetch or copy it "
                            f"again", str(path))
    expected = _expected(spec)
    if not expected:
        return
    actual = file_digests(path, expected)
    for algo, want in expected.items():
        if actual[algo] != want:
            raise DataFileError(f"{path}: {algo} checksum mismatch (expected {want}, got "
                                f"{actual[algo]}); the file is corrupt, truncated or not the "
                                f"official one: delete it and fetch or copy it again", str(path))


# ------------------------------------------------------------------ locating files


def locate(source: Source, root: str | os.PathLike | None) -> tuple[Path, tuple[FileSpec, ...]]:
    """The first (folder, layout) with every file present, else `DataFileError` saying what
    is expected where and how to get it."""
    base, origin = resolve_data_root(root)
    for sub in source.folders:
        folder = base / sub
        for layout in source.layouts:
            if all((folder / f.name).is_file() for f in layout):
                return folder, layout
    raise MissingDataError(missing_message(source, base, origin))


def missing_message(source: Source, base: Path, origin: str) -> str:
    """What a missing-files error says: the files, the folder searched, how to get them."""
    layouts = " or ".join(", ".join(f.name for f in layout) for layout in source.layouts)
    where = base / source.folder
    others = ", ".join(str(base / s) for s in source.alt_folders)
    exists = "" if base.is_dir() else " (this folder does not exist)"
    absent = [f.name for f in source.layouts[-1] if not (where / f.name).is_file()]
    if len(absent) < len(source.layouts[-1]):
        layouts += f" (missing there: {', '.join(absent)})"
    return (f"dataset {source.dataset!r}: files not found. Expected in {where}: {layouts} "
            f"(also accepted in: {others}). Data folder searched: {base}{exists}, set by "
            f"{origin}; choose another with data.root or ${ENV_VAR}. To get the files run "
            f"`byzbench data fetch {source.dataset}` on a machine with internet access, or "
            f"copy the official files there by hand: {source.manual}.")


# ------------------------------------------------------------------ cache copies

Arrays = dict[str, np.ndarray]


def signature(cache_id: str, folder: Path, layout: tuple[FileSpec, ...]) -> str:
    """Digest of what a cache copy was built from: each file's size, mtime and expected
    checksums (SHA-256 of their JSON)."""
    files = []
    for spec in layout:
        st = (folder / spec.name).stat()
        files.append([spec.name, st.st_size, st.st_mtime_ns, _expected(spec)])
    text = json.dumps({"version": CACHE_VERSION, "id": cache_id, "files": files}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_paths(folder: Path, cache_id: str) -> tuple[Path, Path]:
    """Cache copy next to the files, and the fallback in the per-user cache folder."""
    tag = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    return (folder / f".byzbench-cache-{cache_id}.npz",
            user_cache_dir() / "cache" / f"{cache_id}-{tag}.npz")


def read_cache(folder: Path, cache_id: str, sig: str) -> Arrays | None:
    """The cached arrays if a cache copy with this exact signature exists, else None."""
    for path in cache_paths(folder, cache_id):
        if not path.is_file():
            continue
        try:
            with np.load(path, allow_pickle=False) as npz:
                if str(npz["__signature__"]) != sig:
                    continue
                return {k: npz[k] for k in npz.files if k != "__signature__"}
        except (OSError, ValueError, KeyError, EOFError) as exc:  # damaged copy: rebuild it
            warnings.warn(f"byzbench: ignoring unreadable cache copy {path}: {exc}", stacklevel=2)
    return None


def _write_npz(path: Path, arrays: Arrays, sig: str) -> None:
    """Write atomically: a temporary file in the same folder, then rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, __signature__=np.array(sig), **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared data folder needs it readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_cache(folder: Path, cache_id: str, sig: str, arrays: Arrays) -> Path | None:
    """Store the cache copy next to the files, else in the per-user cache folder; the path
    written, or None (with a warning) when neither place is writable."""
    beside, fallback = cache_paths(folder, cache_id)
    errors = []
    for path in (beside, fallback):
        if path is beside and not may_write(folder):
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_npz(path, arrays, sig)
            return path
        except OSError as exc:
            errors.append(f"{path}: {exc}")
    warnings.warn(f"byzbench: no cache copy written ({'; '.join(errors) or 'read-only'})",
                  stacklevel=2)
    return None


def load_source(source: Source, root: str | os.PathLike | None, cache_id: str,
                reader: Callable[[Path, tuple[FileSpec, ...]], Arrays],
                use_cache: bool = True) -> Arrays:
    """Locate ``source``'s files, then return the cached arrays if the cache copy is current,
    else verify every file, decode them with ``reader(folder, layout)`` and cache the result."""
    folder, layout = locate(source, root)
    sig = signature(cache_id, folder, layout)
    if use_cache:
        cached = read_cache(folder, cache_id, sig)
        if cached is not None:
            return cached
    for spec in layout:
        check_file(folder / spec.name, spec)
    arrays = reader(folder, layout)
    if use_cache:
        write_cache(folder, cache_id, sig, arrays)
    return arrays


# ------------------------------------------------------------------ sources by dataset name


def official_source(name: str, split: str | None = None) -> Source:
    """The `Source` of a dataset with official files; `ConfigError` for any other name."""
    from byzbench.data import leaf, vision  # noqa: F401  (registers the datasets)
    from byzbench.data.datasets import DATASETS

    canonical = DATASETS.canonical(name, "data")
    if canonical == "femnist":
        raise ConfigError(leaf.NO_DOWNLOAD, "data")
    if canonical not in catalog.OFFICIAL:
        raise ConfigError(f"dataset {canonical!r} has no official files to fetch or check; "
                          f"datasets with official files: {', '.join(catalog.OFFICIAL)}", "data")
    if canonical == "emnist" and split is not None and split not in catalog.EMNIST_SPLITS:
        raise ConfigError(f"unknown EMNIST split {split!r}; valid: "
                          f"{', '.join(catalog.EMNIST_SPLITS)}", "data.split")
    return catalog.source_for(canonical, split or "balanced")


# ------------------------------------------------------------------ describe


@dataclass(frozen=True)
class FileStatus:
    """One expected file: its path and ``status`` (ok, present, missing, wrong size,
    checksum mismatch)."""

    name: str
    path: Path
    status: str
    size: int | None
    checksums: dict[str, str]


@dataclass(frozen=True)
class FilesReport:
    """The files a dataset needs (one list per accepted layout) and where they were sought."""

    dataset: str
    data_root: Path
    origin: str
    folder: Path
    layouts: list[list[FileStatus]] = field(default_factory=list)
    hint: str = ""

    @property
    def ready(self) -> bool:
        return any(all(f.status in ("ok", "present") for f in layout) for layout in self.layouts)

    def text(self) -> str:
        lines = [f"dataset {self.dataset}: data folder {self.data_root} (set by {self.origin})",
                 f"folder: {self.folder}"]
        for i, layout in enumerate(self.layouts):
            if i:
                lines.append("or:")
            for f in layout:
                sums = " ".join(f"{a}={v}" for a, v in f.checksums.items()) or "no official checksum"
                lines.append(f"  {f.status:<17} {f.name}  ({sums})")
        lines.append("ready" if self.ready else f"not ready: {self.hint}")
        return "\n".join(lines)


def _status(path: Path, spec: FileSpec, verify: bool) -> FileStatus:
    sums = _expected(spec)
    if not path.is_file():
        return FileStatus(spec.name, path, "missing", None, sums)
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        return FileStatus(spec.name, path, "wrong size", size, sums)
    if verify and sums:
        actual = file_digests(path, sums)
        status = "ok" if all(actual[a] == v for a, v in sums.items()) else "checksum mismatch"
        return FileStatus(spec.name, path, status, size, sums)
    return FileStatus(spec.name, path, "present", size, sums)


def describe_files(name: str, root: str | os.PathLike | None = None, *,
                   split: str | None = None, verify: bool = False) -> FilesReport:
    """The files dataset ``name`` needs, where they are looked for, and each one's status.

    ``verify`` computes the checksums (slow for big files); otherwise a present file is
    ``present`` (its size checked when the official size is known). ``femnist`` lists its
    LEAF JSON files (`byzbench.data.leaf.describe_files`).
    """
    from byzbench.data import leaf
    from byzbench.data.datasets import DATASETS

    if DATASETS.canonical(name, "data") == "femnist":
        return leaf.describe_files(root, split=split, verify=verify)
    source = official_source(name, split)
    base, origin = resolve_data_root(root)
    try:
        folder, _ = locate(source, root)
    except MissingDataError:
        folder = base / source.folder
    layouts = [[_status(folder / f.name, f, verify) for f in layout] for layout in source.layouts]
    hint = (f"run `byzbench data fetch {source.dataset}` when online, or copy "
            f"{source.manual} into {base / source.folder}")
    return FilesReport(source.dataset, base, origin, folder, layouts, hint)


# ------------------------------------------------------------------ fetch


def _verified(path: Path, spec: FileSpec) -> bool:
    try:
        check_file(path, spec)
    except (DataFileError, OSError):
        return False
    return True


def _stream(url: str, part: Path, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "byzbench"})
    with _urlopen(request, timeout=timeout) as resp, open(part, "wb") as out:
        while chunk := resp.read(CHUNK):
            out.write(chunk)


def _download(dl: Download, target: Path, timeout: float, log: Callable[[str], None]) -> None:
    """Download ``dl`` to ``target`` from the first address that yields the verified file."""
    part = target.with_name(target.name + ".part")
    failures = []
    for url in dl.urls:
        log(f"downloading {url}")
        try:
            _stream(url, part, timeout)
            check_file(part, dl.file)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError,
                DataFileError) as exc:
            part.unlink(missing_ok=True)
            reason = getattr(exc, "reason", None) or exc
            failures.append(f"{url}: {reason}")
            continue
        os.replace(part, target)
        return
    raise DataFileError(
        f"could not download {dl.file.name}: {'; '.join(failures)}. This machine may be "
        f"offline: copy the official file(s) into {target.parent} by hand instead "
        f"(`byzbench data files` lists what is expected)", str(target))


def _extract(archive: Path, folder: Path, members: tuple[FileSpec, ...]) -> None:
    """Unpack the named regular-file members of a ``.tar.gz`` (nothing else) and verify them."""
    try:
        with tarfile.open(archive, "r:gz") as tf:
            for spec in members:
                info = tf.getmember(spec.name)
                src = tf.extractfile(info) if info.isfile() else None
                if src is None:
                    raise DataFileError(f"{archive}: {spec.name} is not a regular file", str(archive))
                dest = folder / spec.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.with_name(dest.name + ".part").write_bytes(src.read())
                os.replace(dest.with_name(dest.name + ".part"), dest)
                check_file(dest, spec)
    except KeyError as exc:
        raise DataFileError(f"{archive} lacks {exc}; not the official archive", str(archive)) from exc
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataFileError(f"{archive} cannot be unpacked ({exc})", str(archive)) from exc


def _fetch_download(dl: Download, folder: Path, timeout: float,
                    log: Callable[[str], None]) -> list[Path]:
    wanted = dl.extract or (dl.file,)
    paths = [folder / f.name for f in wanted]
    if all(_verified(p, f) for p, f in zip(paths, wanted)):
        log(f"already present and verified: {', '.join(f.name for f in wanted)}")
        return paths
    target = folder / dl.file.name
    if not _verified(target, dl.file):
        _download(dl, target, timeout, log)
    if dl.extract:
        _extract(target, folder, dl.extract)
        target.unlink()
    return paths


def fetch(name: str, root: str | os.PathLike | None = None, *, timeout: float = 60.0,
          log: Callable[[str], None] | None = None) -> list[Path]:
    """Download dataset ``name``'s official files into its folder under the data folder.

    Each file is verified (size, checksums) before it is kept; files already present and
    verified are not downloaded again; a ``.tar.gz`` archive (CIFAR-10) is unpacked and then
    removed. Returns the paths of the dataset's files. Offline, or when every address fails,
    raises `DataFileError` listing each address and its error.
    """
    source = official_source(name)
    base = data_root(root)
    folder = base / source.folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataFileError(f"cannot create {folder} ({exc}); choose a writable data folder "
                            f"with --root / data.root or ${ENV_VAR}", str(folder)) from exc
    if not may_write(folder):
        raise DataFileError(f"{folder} is read-only; choose a writable data folder with "
                            f"--root / data.root or ${ENV_VAR}", str(folder))
    say = log or (lambda msg: None)
    paths: list[Path] = []
    for dl in source.downloads:
        paths += _fetch_download(dl, folder, timeout, say)
    return paths
