"""The sweep driver: expand, skip what the store has, run the rest, record every outcome.

`run_sweep` is the only writer of the results store during a sweep:

1. the sweep is expanded and every run validated (`Sweep.runs`) before anything is
   written or started;
2. the store's ``sweep_runs`` table lists the sweep's run ids (one transaction);
3. runs already ``finished`` or ``diverged`` are skipped; ``failed`` runs and stale
   ``running`` rows (attempts of a killed sweep) run again — failed ones are kept with
   ``skip_failed=True``;
4. when an executor hands a run to a worker the driver writes its ``running`` row
   (`ResultsStore.start_run`, which clears any earlier attempt); when the outcome comes
   back it writes the metrics and final status in one transaction
   (`ResultsStore.finish_run`); a run that raised is recorded ``failed`` with its error
   and traceback, and the sweep goes on.

So a kill at any moment (of the driver or of a worker) loses only the runs in flight:
their rows stay ``running`` with no metrics (or ``failed`` with ``"worker process
died"`` when only the worker died), and running the sweep again computes exactly the
runs that are not done, leaving the finished rows untouched. One driver may write a
store at a time: a second sweep on the same store fails early (an advisory lock on
``<db>.sweep-lock``).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from byzbench import __version__
from byzbench.config import ExperimentConfig
from byzbench.errors import ConfigError
from byzbench.experiments.executors import Executor, LocalExecutor, Outcome, Task
from byzbench.experiments.store import DONE_STATUSES, ResultsStore
from byzbench.experiments.sweep import Sweep, SweepRun


@dataclass(frozen=True)
class PlannedRun:
    """A run of the sweep, its status in the store (None: absent) and ``"run"`` or ``"skip"``."""

    run: SweepRun
    status: str | None
    action: str


@dataclass(frozen=True)
class SweepProgress:
    """A snapshot for progress displays; counts are of this invocation's runs.

    ``eta_s`` = elapsed / completed × (to run − completed): the throughput so far,
    parallelism included; None until a run completes.
    """

    name: str
    total: int
    skipped: int
    done: int
    failed: int
    running: int
    remaining: int
    elapsed_s: float
    eta_s: float | None


@dataclass
class SweepSummary:
    """What a sweep did: counts, time, and the runs that failed with their errors."""

    name: str
    total: int
    skipped: int = 0
    finished: int = 0
    diverged: int = 0
    failed: int = 0
    kept_failed: int = 0
    wall_time_s: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.finished + self.diverged


ProgressFn = Callable[[SweepProgress], None]
FailureFn = Callable[[str, str], None]


def plan_sweep(sweep: Sweep, store: ResultsStore | None, skip_failed: bool = False) -> list[PlannedRun]:
    """Every run of ``sweep`` with its stored status (no store: all new) and whether it will run."""
    return _plan(sweep.runs(), store, skip_failed)


def _plan(runs: list[SweepRun], store: ResultsStore | None, skip_failed: bool) -> list[PlannedRun]:
    statuses = store.statuses([r.run_id for r in runs]) if store is not None else {}
    keep = set(DONE_STATUSES) | ({"failed"} if skip_failed else set())
    return [PlannedRun(r, statuses.get(r.run_id), "skip" if statuses.get(r.run_id) in keep else "run")
            for r in runs]


def run_sweep(sweep: Sweep, store: ResultsStore, executor: Executor | None = None, *,
              skip_failed: bool = False, progress: ProgressFn | None = None,
              on_failure: FailureFn | None = None) -> SweepSummary:
    """Run the runs of ``sweep`` that ``store`` does not have done; see the module docs.

    ``executor`` defaults to a one-worker `LocalExecutor` (closed afterwards);
    ``on_failure(run_id, error)`` is called for each run that fails.
    """
    return _run_planned(sweep.name, lambda: sweep.runs(), store, executor, skip_failed, progress, on_failure)


def run_configs(name: str, configs: list[ExperimentConfig], store: ResultsStore, executor: Executor | None = None,
                *, skip_failed: bool = False, progress: ProgressFn | None = None,
                on_failure: FailureFn | None = None) -> SweepSummary:
    """`run_sweep` for an explicit list of configs, recorded as sweep ``name``: every config
    is validated first, duplicates (same run id) run once, and the skip/retry/record rules
    are those of a sweep."""

    def runs() -> list[SweepRun]:
        unique = {c.run_id: c for c in (cfg.copy().validate() for cfg in configs)}
        return [SweepRun(c, {}) for c in unique.values()]

    return _run_planned(name, runs, store, executor, skip_failed, progress, on_failure)


def _run_planned(name: str, runs: Callable[[], list[SweepRun]], store: ResultsStore, executor: Executor | None,
                 skip_failed: bool, progress: ProgressFn | None, on_failure: FailureFn | None) -> SweepSummary:
    with driver_lock(store.path):
        plan = _plan(runs(), store, skip_failed)
        store.add_sweep_runs(name, [p.run.run_id for p in plan])
        todo = [Task(p.run.run_id, p.run.config.to_dict()) for p in plan if p.action == "run"]
        summary = SweepSummary(name, total=len(plan), skipped=len(plan) - len(todo),
                               kept_failed=sum(p.action == "skip" and p.status == "failed" for p in plan))
        own = executor is None
        executor = LocalExecutor() if own else executor
        try:
            _drive(store, executor, todo, summary, progress, on_failure)
        finally:
            if own:
                executor.close()
    return summary


def _drive(store: ResultsStore, executor: Executor, todo: list[Task], summary: SweepSummary,
           progress: ProgressFn | None, on_failure: FailureFn | None) -> None:
    start = time.perf_counter()
    started = 0

    def report() -> None:
        if progress is not None:
            progress(_snapshot(summary, len(todo), started, time.perf_counter() - start))

    def on_start(task: Task) -> None:
        nonlocal started
        store.start_run(task.run_id, task.config, __version__)
        started += 1
        report()

    report()
    with contextlib.closing(executor.map(todo, on_start)) as outcomes:
        for outcome in outcomes:
            if outcome is not None:
                _record(store, outcome, summary, on_failure)
            report()
    summary.wall_time_s = time.perf_counter() - start


def _record(store: ResultsStore, outcome: Outcome, summary: SweepSummary, on_failure: FailureFn | None) -> None:
    """Write one outcome (metrics and final status in one transaction) and count it."""
    res = outcome.result
    if outcome.ok and res is not None:
        store.finish_run(
            outcome.run_id, status=res.status, rounds_completed=res.rounds_completed, metrics=res.metrics,
            final_accuracy=res.final_accuracy, final_loss=res.final_loss, diverged_round=res.diverged_round,
            wall_time_s=res.wall_time_s, summary=res.summary)
        if res.status == "diverged":
            summary.diverged += 1
        else:
            summary.finished += 1
        return
    error = outcome.error or "no result"
    text = error if not outcome.traceback else f"{error}\n\n{outcome.traceback}"
    store.finish_run(outcome.run_id, status="failed", rounds_completed=0, metrics={}, final_accuracy=None,
                     final_loss=None, diverged_round=None, wall_time_s=outcome.wall_time_s, error=text)
    summary.failed += 1
    summary.failures.append((outcome.run_id, error))
    if on_failure is not None:
        on_failure(outcome.run_id, error)


def _snapshot(summary: SweepSummary, to_run: int, started: int, elapsed: float) -> SweepProgress:
    completed = summary.done + summary.failed
    eta = elapsed / completed * (to_run - completed) if completed else None
    return SweepProgress(summary.name, summary.total, summary.skipped, summary.done, summary.failed,
                         running=started - completed, remaining=to_run - started, elapsed_s=elapsed,
                         eta_s=eta if eta is None or math.isfinite(eta) else None)


@contextlib.contextmanager
def driver_lock(db: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``<db>.sweep-lock`` (released when the process dies).

    `ConfigError` on ``--db`` when another driver holds it. No-op where ``fcntl`` is
    missing (Windows).
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(f"{os.fspath(db)}.sweep-lock")
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise ConfigError(f"another byzbench sweep is writing {db}; wait for it or use another store",
                              "--db") from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


__all__ = ["PlannedRun", "SweepProgress", "SweepSummary", "driver_lock", "plan_sweep", "run_sweep"]
