"""Executors: run a sweep's tasks and hand each outcome back to the driver as it completes.

Every executor computes a run with the same worker function, `execute`, which sets
``torch.set_num_threads(threads)`` before training; with equal ``threads`` the per-round
metrics are bit-identical whichever executor ran them. Executors never touch the results
store: the driver (`byzbench.experiments.sweeping`) writes it.

* `SerialExecutor` — in the calling process, one run at a time (tests, debugging,
  library callers that want no subprocesses).
* `LocalExecutor` — ``workers`` processes of the ``spawn`` (default) or ``forkserver``
  start method, each with ``threads`` torch threads (default 1), ``workers × threads ≤
  cores``. A worker that dies (SIGKILL, segfault, out of memory) fails only the run it
  held, with the error ``"worker process died (...)"``; a fresh worker replaces it and
  the sweep goes on. Workers get SIGKILL when the driver dies (Linux ``PR_SET_PDEATHSIG``).
* `RayExecutor` — each run is a Ray task with ``num_cpus``/``num_gpus`` resources on a
  local Ray instance or an existing cluster (``address``); at most ``max_in_flight``
  tasks are submitted at once (default: what the cluster's CPUs and GPUs hold) and
  collected with ``ray.wait``. Ray (Moritz et al., "Ray: A Distributed Framework for
  Emerging AI Applications", OSDI 2018) does the scheduling across machines.

`Executor.map(tasks, on_start)` calls ``on_start(task)`` just before a task is handed to
a worker and yields each `Outcome` as it completes, or None every ``heartbeat_s`` seconds
while nothing completes (so a caller can refresh a progress display).
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from byzbench.errors import ConfigError

START_METHODS = ("spawn", "forkserver")
#: Most characters of a failed run's traceback kept in the store.
TRACEBACK_CHARS = 4000
WORKER_DIED = "worker process died"
#: Torch threads per run when not given (see `plan_workers`).
DEFAULT_THREADS = 1


@dataclass(frozen=True)
class Task:
    """One run to compute: its id and its validated config as a plain mapping."""

    run_id: str
    config: dict[str, Any]


@dataclass
class Outcome:
    """What came back for a task: a `RunResult`, or an error and its traceback summary."""

    run_id: str
    result: Any = None  # byzbench.sim.engine.RunResult
    error: str | None = None
    traceback: str | None = None
    wall_time_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


OnStart = Callable[[Task], None]


def execute(task: Task, threads: int) -> Outcome:
    """Train one run with ``threads`` torch threads; an exception becomes an error outcome."""
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        from byzbench.config import ExperimentConfig
        from byzbench.sim.engine import Simulation

        result = Simulation(ExperimentConfig.from_dict(task.config)).run()
        if result.run_id != task.run_id:
            raise RuntimeError(f"the config of run {task.run_id} validates to run id {result.run_id}")
        return Outcome(task.run_id, result, wall_time_s=time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - any error of a run is recorded and the sweep goes on
        return Outcome(task.run_id, None, error=f"{type(exc).__name__}: {exc}",
                       traceback=traceback.format_exc()[-TRACEBACK_CHARS:],
                       wall_time_s=time.perf_counter() - start)


def died(task: Task, detail: str, wall_time_s: float = 0.0) -> Outcome:
    """The outcome of a run whose worker process died."""
    return Outcome(task.run_id, None, error=f"{WORKER_DIED} ({detail})", wall_time_s=wall_time_s)


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def plan_workers(workers: int | None, threads: int | None, cores: int | None = None) -> tuple[int, int]:
    """(workers, threads) with workers × threads ≤ cores; `ConfigError` names the parameter.

    ``threads`` defaults to `DEFAULT_THREADS` (1): a sweep's parallelism is across runs,
    and on a machine shared with other jobs two torch threads per run measured ten times
    slower than one (docs/sweeps.md). ``workers`` defaults to ``cores // threads`` when
    ``threads`` is given, else to 1.
    """
    cores = available_cores() if cores is None else cores
    for value, key in ((workers, "workers"), (threads, "threads")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"must be an integer ≥ 1, got {value!r}", key)
        if value is not None and value > cores:
            raise ConfigError(f"{value} exceeds the {cores} CPU cores available", key)
    if workers is None:
        workers = 1 if threads is None else max(1, cores // threads)
    threads = DEFAULT_THREADS if threads is None else threads
    if workers * threads > cores:
        raise ConfigError(f"workers × threads = {workers} × {threads} = {workers * threads} exceeds the "
                          f"{cores} CPU cores available", "workers")
    return workers, threads


class Executor(ABC):
    """Runs tasks and yields their outcomes as they complete (see the module docs)."""

    threads: int
    heartbeat_s: float = 1.0

    @property
    @abstractmethod
    def concurrency(self) -> int:
        """How many runs may be in flight at once."""

    @abstractmethod
    def map(self, tasks: Sequence[Task], on_start: OnStart) -> Iterator[Outcome | None]:
        """Run ``tasks``; ``on_start(task)`` before each is handed out; yield outcomes (None: heartbeat)."""

    def close(self) -> None:
        """Release workers (idempotent)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SerialExecutor(Executor):
    """One run at a time in this process; the caller's torch thread count is restored."""

    def __init__(self, threads: int | None = None) -> None:
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"must be an integer ≥ 1, got {threads!r}", "threads")
        import torch

        self.threads = threads or torch.get_num_threads()

    @property
    def concurrency(self) -> int:
        return 1

    def map(self, tasks: Sequence[Task], on_start: OnStart) -> Iterator[Outcome | None]:
        import torch

        before = torch.get_num_threads()
        try:
            for task in tasks:
                on_start(task)
                yield execute(task, self.threads)
        finally:
            torch.set_num_threads(before)


# ---------------------------------------------------------------------- local processes
def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    name = ctypes.util.find_library("c")
    if not name or not hasattr(os, "getppid"):
        return
    try:
        ctypes.CDLL(name).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _worker_main(conn: multiprocessing.connection.Connection, threads: int, parent: int | None) -> None:
    """A worker's loop: receive a task, send its outcome, until None or the pipe closes.

    ``parent`` is the driver's pid for ``spawn``; None for ``forkserver``, whose workers
    are children of the fork server (which exits with the driver).
    """
    expected = os.getppid() if parent is None else parent
    _die_with_parent()
    if os.getppid() != expected:  # the parent died before the request took effect
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            conn.send(execute(task, threads))
        except (BrokenPipeError, OSError):
            return


class _Worker:
    """One worker process, its pipe, and the task it holds."""

    def __init__(self, ctx: Any, threads: int) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        parent = os.getpid() if ctx.get_start_method() == "spawn" else None
        self.process = ctx.Process(target=_worker_main, args=(child, threads, parent), daemon=True)
        self.process.start()
        child.close()
        self.task: Task | None = None
        self.since = 0.0

    def give(self, task: Task) -> bool:
        """Send ``task``; False if the worker is gone."""
        self.task, self.since = task, time.perf_counter()
        try:
            self.conn.send(task)
            return True
        except (BrokenPipeError, OSError):
            return False

    def death(self) -> str:
        self.process.join(timeout=5)
        code = self.process.exitcode
        if code is not None and code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def stop(self, kill: bool) -> None:
        if kill or self.task is not None:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class LocalExecutor(Executor):
    """A pool of ``workers`` processes with ``threads`` torch threads each (`plan_workers`)."""

    def __init__(self, workers: int | None = None, threads_per_worker: int | None = None, *,
                 start_method: str = "spawn", heartbeat_s: float = 1.0) -> None:
        self.workers, self.threads = plan_workers(workers, threads_per_worker)
        if start_method not in START_METHODS:
            raise ConfigError(f"must be one of {', '.join(START_METHODS)}, got {start_method!r}", "start_method")
        self.start_method, self.heartbeat_s = start_method, heartbeat_s
        self._ctx = multiprocessing.get_context(start_method)
        self._pool: list[_Worker] = []

    @property
    def concurrency(self) -> int:
        return self.workers

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for monitoring and tests)."""
        return [w.process.pid for w in self._pool if w.process.is_alive()]

    def busy_pids(self) -> dict[str, int]:
        """``{run_id: pid}`` of the workers holding a run."""
        return {w.task.run_id: w.process.pid for w in self._pool if w.task is not None}

    def map(self, tasks: Sequence[Task], on_start: OnStart) -> Iterator[Outcome | None]:
        pending = collections.deque(tasks)
        while len(self._pool) < min(self.workers, len(pending)):
            self._pool.append(_Worker(self._ctx, self.threads))
        clean = False
        try:
            while pending or any(w.task for w in self._pool):
                yield from self._dispatch(pending, on_start)
                busy = [w for w in self._pool if w.task is not None]
                if not busy:
                    continue
                waitables = [w.conn for w in busy] + [w.process.sentinel for w in busy]
                ready = multiprocessing.connection.wait(waitables, timeout=self.heartbeat_s)
                if not ready:
                    yield None
                for w in busy:
                    if w.conn in ready or w.process.sentinel in ready:
                        yield self._collect(w)
            clean = True
        finally:
            if not clean:  # the caller stopped early: abandon the runs in flight
                self.close()

    def _dispatch(self, pending: collections.deque[Task], on_start: OnStart) -> Iterator[Outcome]:
        """Hand pending tasks to idle workers, replacing dead ones."""
        for i, w in enumerate(self._pool):
            if not pending:
                return
            if w.task is not None:
                continue
            if not w.process.is_alive():
                w.stop(kill=True)
                w = self._pool[i] = _Worker(self._ctx, self.threads)
            task = pending.popleft()
            on_start(task)
            if not w.give(task):
                yield died(task, w.death())
                w.stop(kill=True)
                self._pool[i] = _Worker(self._ctx, self.threads)

    def _collect(self, w: _Worker) -> Outcome:
        """The outcome a worker sent, or a died outcome (and a fresh worker) if it is gone."""
        task, elapsed = w.task, time.perf_counter() - w.since
        assert task is not None
        try:
            if w.conn.poll():
                outcome = w.conn.recv()
                w.task = None
                return outcome
        except (EOFError, OSError, ValueError):
            pass
        outcome = died(task, w.death(), elapsed)
        w.task = None
        w.stop(kill=True)
        self._pool[self._pool.index(w)] = _Worker(self._ctx, self.threads)
        return outcome

    def close(self) -> None:
        for w in self._pool:
            w.stop(kill=False)
        self._pool = []


# ---------------------------------------------------------------------- Ray
def _ray_execute(task: Task, threads: int) -> Outcome:
    """The Ray task body: `execute` unchanged."""
    return execute(task, threads)


class RayExecutor(Executor):
    """Runs as Ray tasks on a local instance or the cluster at ``address``.

    ``num_cpus`` sizes a local instance started here (default: Ray's, every core); an
    instance already running in this process is used as it is, and only an instance
    started here is shut down by `close`. ``threads`` defaults to ``max(1, ⌊cpus_per_run⌋)``.
    ``max_retries`` is Ray's task retry count on worker death (default 0: the run is
    recorded failed with ``"worker process died"`` and a later sweep retries it).
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None, cpus_per_run: float = 1,
                 gpus_per_run: float = 0, *, threads: int | None = None, max_in_flight: int | None = None,
                 max_retries: int = 0, heartbeat_s: float = 1.0) -> None:
        _positive(cpus_per_run, "cpus_per_run", allow_zero=False)
        _positive(gpus_per_run, "gpus_per_run", allow_zero=True)
        for value, key in ((threads, "threads"), (max_in_flight, "max_in_flight")):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"must be an integer ≥ 1, got {value!r}", key)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"must be an integer ≥ 0, got {max_retries!r}", "max_retries")
        self._ray = import_ray()
        self.address, self.num_cpus = address, num_cpus
        self.cpus_per_run, self.gpus_per_run = cpus_per_run, gpus_per_run
        self.threads = threads or max(1, int(cpus_per_run))
        self.max_in_flight, self.max_retries, self.heartbeat_s = max_in_flight, max_retries, heartbeat_s
        self._owns = False
        self._remote: Any = None
        self._limit = 0

    @property
    def concurrency(self) -> int:
        self._start()
        return self._limit

    def _start(self) -> None:
        """Connect to (or start) Ray once; check the cluster can hold one run."""
        if self._remote is not None:
            return
        ray = self._ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address is None and self.num_cpus is not None:
                kwargs["num_cpus"] = self.num_cpus
            ray.init(address=self.address, **kwargs)
            self._owns = True
        total = ray.cluster_resources()
        cpus, gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
        if self.cpus_per_run > cpus:
            raise ConfigError(f"{self.cpus_per_run} exceeds the Ray cluster's {cpus:g} CPUs", "cpus_per_run")
        if self.gpus_per_run > gpus:
            raise ConfigError(f"{self.gpus_per_run} exceeds the Ray cluster's {gpus:g} GPUs", "gpus_per_run")
        fits = int(cpus // self.cpus_per_run)
        if self.gpus_per_run:
            fits = min(fits, int(gpus // self.gpus_per_run))
        self._limit = self.max_in_flight or max(1, fits)
        self._remote = ray.remote(_ray_execute).options(
            num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=self.max_retries)

    def map(self, tasks: Sequence[Task], on_start: OnStart) -> Iterator[Outcome | None]:
        self._start()
        ray = self._ray
        pending = collections.deque(tasks)
        flight: dict[Any, tuple[Task, float]] = {}
        clean = False
        try:
            while pending or flight:
                while pending and len(flight) < self._limit:
                    task = pending.popleft()
                    on_start(task)
                    flight[self._remote.remote(task, self.threads)] = (task, time.perf_counter())
                ready, _ = ray.wait(list(flight), num_returns=1, timeout=self.heartbeat_s)
                if not ready:
                    yield None
                for ref in ready:
                    task, since = flight.pop(ref)
                    yield self._fetch(ref, task, time.perf_counter() - since)
            clean = True
        finally:
            if not clean:
                for ref in flight:
                    ray.cancel(ref, force=True)

    def _fetch(self, ref: Any, task: Task, elapsed: float) -> Outcome:
        from ray import exceptions as rex

        try:
            return self._ray.get(ref)
        except (rex.WorkerCrashedError, rex.NodeDiedError, rex.OutOfMemoryError) as exc:
            return died(task, type(exc).__name__, elapsed)
        except rex.RayError as exc:
            return Outcome(task.run_id, None, error=f"{type(exc).__name__}: {exc}"[:TRACEBACK_CHARS],
                           wall_time_s=elapsed)

    def close(self) -> None:
        if self._owns:
            self._ray.shutdown()
            self._owns = False
        self._remote = None


def import_ray() -> Any:
    """The ``ray`` module, or a `ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("the ray executor needs the package 'ray' (pip install 'byzbench[ray]')",
                          "executor") from exc
    return ray


def _positive(value: Any, key: str, allow_zero: bool) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or not (value >= 0 if allow_zero else value > 0):
        raise ConfigError(f"must be a finite number {'≥' if allow_zero else '>'} 0, got {value!r}", key)


__all__ = ["WORKER_DIED", "Executor", "LocalExecutor", "Outcome", "RayExecutor", "SerialExecutor", "Task",
           "available_cores", "execute", "plan_workers"]
