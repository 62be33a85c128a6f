"""Opt-in native kernels: C sources shipped in ``byzbench/ops``, compiled at first use.

`load(name)` compiles ``byzbench/ops/<name>.c`` with the system C compiler (``$CC``, else
``cc``, ``gcc`` or ``clang``) as ``-O3 -march=native -fopenmp -shared -fPIC`` (plus the
kernel's own `EXTRA_FLAGS`, e.g. ``-ffp-contract=off`` where results must be bitwise those
of separate IEEE operations) into a shared library and loads it with ctypes. The library is cached in
``$BYZBENCH_CACHE/native`` (default ``~/.cache/byzbench/native``) under a name keyed by
a hash of the source, the compiler, the flags and the CPU (``-march=native`` code must
not run on another CPU model sharing the cache), so a build happens once per machine and
source version. It is written to a temporary file in that folder and renamed into place,
so concurrent processes never load a half-written file (two may build at once; the last
rename wins, both files being complete and equal).

Without a compiler, or when the build or the load fails, `load` issues one
RuntimeWarning per kernel and process and returns None: callers then run their eager
torch path. No torch headers are used, so a build takes well under a second.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

#: Compiler flags of every kernel.
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
#: Further flags of one kernel (by name), after `FLAGS`: ``sortnet_kernel`` must not fuse
#: a product and a sum into one FMA (its results are compared bitwise with NumPy's).
EXTRA_FLAGS: dict[str, tuple[str, ...]] = {"sortnet_kernel": ("-ffp-contract=off",)}
#: Environment variable naming the cache folder (its ``native`` subfolder holds the builds).
CACHE_ENV = "BYZBENCH_CACHE"
#: Seconds a build may take before it counts as failed.
BUILD_TIMEOUT_S = 120
#: Compilers tried, in order, when ``$CC`` is unset.
COMPILERS = ("cc", "gcc", "clang")

_SOURCES = Path(__file__).resolve().parent
_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}


def cache_dir() -> Path:
    """The folder holding the built libraries: ``$BYZBENCH_CACHE/native``, else
    ``~/.cache/byzbench/native``."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "byzbench"
    return base / "native"


def find_compiler() -> str | None:
    """The C compiler's path: ``$CC`` (its first word) if set, else the first of
    `COMPILERS` on the PATH; None if there is none."""
    env = os.environ.get("CC", "").split()
    for name in env[:1] or COMPILERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def cpu_signature() -> str:
    """Text identifying the CPU model and its features (the ``model name`` and ``flags``
    lines of ``/proc/cpuinfo`` where readable, else the platform's description)."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    keep = [ln for ln in lines if ln.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")]
    return "\n".join(dict.fromkeys(keep)) or f"{platform.machine()} {platform.processor()}"


def kernel_flags(name: str) -> tuple[str, ...]:
    """The compiler flags of kernel ``name``: `FLAGS`, then its `EXTRA_FLAGS`."""
    return (*FLAGS, *EXTRA_FLAGS.get(name, ()))


def library_path(name: str, compiler: str) -> Path:
    """Where the build of kernel ``name`` by ``compiler`` is cached (keyed by a hash of
    the source, the compiler, `kernel_flags` and `cpu_signature`)."""
    source = (_SOURCES / f"{name}.c").read_bytes()
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(kernel_flags(name)).encode(),
                                     cpu_signature().encode()])).hexdigest()[:16]
    return cache_dir() / f"{name}-{key}.so"


def build(name: str, compiler: str) -> Path:
    """Compile kernel ``name`` unless its cached build exists; returns the library's path.

    Raises OSError or subprocess.CalledProcessError / TimeoutExpired when the build fails
    (the compiler's messages are in the exception).
    """
    target = library_path(name, compiler)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *kernel_flags(name), "-o", tmp, str(_SOURCES / f"{name}.c"), "-lm"],
                       check=True, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        os.replace(tmp, target)  # atomic: readers see no file or a complete one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load(name: str) -> ctypes.CDLL | None:
    """The loaded library of kernel ``name`` (built at the first call of the process that
    does not find it cached), or None after one RuntimeWarning when there is no C
    compiler or the build or load fails. The outcome is remembered for the process."""
    with _lock:
        if name in _loaded:
            return _loaded[name]
        _loaded[name] = lib = _try_load(name)
        return lib


def entry(name: str, symbol: str, nargs: int) -> ctypes._CFuncPtr | None:
    """Function ``symbol`` of kernel ``name`` taking ``nargs`` pointers and returning an
    int status (the convention of every kernel here), or None where `load` gives None."""
    lib = load(name)
    if lib is None:
        return None
    fn = getattr(lib, symbol)
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * nargs
    return fn


def _try_load(name: str) -> ctypes.CDLL | None:
    compiler = find_compiler()
    if compiler is None:
        _warn(name, "no C compiler found ($CC, cc, gcc, clang)")
        return None
    try:
        return ctypes.CDLL(str(build(name, compiler)))
    except subprocess.CalledProcessError as exc:
        _warn(name, f"{Path(compiler).name} failed: {' '.join((exc.stderr or '').split())[-800:]}")
    except (OSError, subprocess.SubprocessError) as exc:
        _warn(name, f"{type(exc).__name__}: {exc}")
    return None


def _warn(name: str, why: str) -> None:
    warnings.warn(f"byzbench native kernel {name!r} unavailable ({why}); using the eager torch path",
                  RuntimeWarning, stacklevel=4)


def forget(name: str | None = None) -> None:
    """Forget the outcome of `load` for ``name`` (None: every kernel), so that the next
    call tries again (and warns again if it fails)."""
    with _lock:
        if name is None:
            _loaded.clear()
        else:
            _loaded.pop(name, None)


__all__ = ["CACHE_ENV", "EXTRA_FLAGS", "FLAGS", "build", "cache_dir", "cpu_signature", "entry", "find_compiler",
           "forget", "kernel_flags", "library_path", "load"]
