"""``byzbench sweep FILE``: expand a sweep file and run what the results store lacks.

    byzbench sweep FILE [--db results.db] [--executor local|ray] [--workers N] [--threads T]
                        [--ray-address ADDR] [--cpus-per-run C] [--gpus-per-run G]
                        [--dry-run] [--skip-failed] [--progress auto|always|never]

The file format is documented in `byzbench.experiments.sweep` and docs/sweeps.md. Runs
already finished or diverged in the store are skipped; failed and interrupted ones run
again (``--skip-failed`` keeps the failed ones). ``--dry-run`` lists the expanded runs
with their status in the store and runs nothing. The exit status is 1 when a run of the
sweep is failed at the end, 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from byzbench.errors import ConfigError

#: Seconds between progress lines when stderr is not a terminal (``--progress always``).
LOG_INTERVAL_S = 10.0
#: Seconds between refreshes of the progress line on a terminal.
TTY_INTERVAL_S = 0.2


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sweep", help="run a sweep file (grid × seeds) into the results store, resumably")
    p.add_argument("file", type=Path, help="YAML, TOML or JSON sweep file (see docs/sweeps.md)")
    p.add_argument("--db", default="results.db", help="SQLite results store (default: results.db)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local worker processes (default) or Ray tasks")
    p.add_argument("--workers", type=int, default=None,
                   help="runs at once (local: processes, default cores // threads with --threads, else 1; "
                        "ray: tasks in flight, default what the cluster holds)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (local: default 1; ray: default ⌊cpus-per-run⌋)")
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: a local instance)")
    p.add_argument("--cpus-per-run", type=float, default=None, help="Ray CPUs per run (default 1)")
    p.add_argument("--gpus-per-run", type=float, default=None, help="Ray GPUs per run (default 0)")
    p.add_argument("--dry-run", action="store_true", help="list the expanded runs and their status; run nothing")
    p.add_argument("--skip-failed", action="store_true", help="do not retry runs recorded as failed")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="auto: a refreshing line when stderr is a terminal; always: also periodic lines "
                        "otherwise; never")
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from byzbench.experiments.store import ResultsStore
    from byzbench.experiments.sweep import Sweep
    from byzbench.experiments.sweeping import run_sweep

    executor = None if args.dry_run else _executor(args)
    try:
        sweep = Sweep.from_file(args.file)
        sweep.runs()  # every run validated before the store is opened
        if args.dry_run:
            return _dry_run(sweep, Path(args.db), args.skip_failed)
        with ResultsStore(Path(args.db)) as store:
            display = progress_display(args.progress)
            try:
                summary = run_sweep(sweep, store, executor, skip_failed=args.skip_failed, progress=display,
                                    on_failure=lambda rid, err: _say(display, f"run {rid} failed: {err}"))
            finally:
                if display is not None:
                    display.close()
    finally:
        if executor is not None:
            executor.close()
    print(format_summary(summary, args.db))
    return 1 if summary.failed or summary.kept_failed else 0


def _dry_run(sweep, db: Path, skip_failed: bool) -> int:
    """Print the plan; a store that does not exist is not created."""
    from byzbench.experiments.store import ResultsStore
    from byzbench.experiments.sweeping import plan_sweep

    if not db.exists():
        text = format_plan(sweep, plan_sweep(sweep, None, skip_failed))
    else:
        with ResultsStore(db) as store:
            text = format_plan(sweep, plan_sweep(sweep, store, skip_failed))
    try:
        print(text, flush=True)
    except BrokenPipeError:  # e.g. piped into `head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _executor(args: argparse.Namespace):
    from byzbench.experiments.executors import LocalExecutor, RayExecutor

    if args.executor == "local":
        for option in ("ray_address", "cpus_per_run", "gpus_per_run"):
            if getattr(args, option) is not None:
                raise ConfigError("only applies to --executor ray", "--" + option.replace("_", "-"))
        return LocalExecutor(args.workers, args.threads)
    cpus = 1.0 if args.cpus_per_run is None else args.cpus_per_run
    gpus = 0.0 if args.gpus_per_run is None else args.gpus_per_run
    return RayExecutor(address=args.ray_address, cpus_per_run=cpus, gpus_per_run=gpus, threads=args.threads,
                       max_in_flight=args.workers)


def format_plan(sweep, plan) -> str:
    """The dry-run table: run id, stored status, action, the varied keys."""
    todo = sum(p.action == "run" for p in plan)
    lines = [f"sweep {sweep.name}: {len(plan)} runs, {todo} to run, {len(plan) - todo} to skip",
             f"{'run id':16}  {'status':9}  {'action':6}  varied"]
    for p in plan:
        lines.append(f"{p.run.run_id:16}  {p.status or 'new':9}  {p.action:6}  {p.run.describe()}")
    return "\n".join(lines)


def format_summary(summary, db: str) -> str:
    s = summary
    kept = f" ({s.kept_failed} failed kept)" if s.kept_failed else ""
    return (f"sweep {s.name}: {s.total} runs — {s.skipped} skipped{kept}, {s.finished} finished, "
            f"{s.diverged} diverged, {s.failed} failed in {s.wall_time_s:.1f} s; recorded in {db}")


def format_progress(p) -> str:
    eta = "—" if p.eta_s is None else format_duration(p.eta_s)
    return (f"sweep {p.name}: {p.done} done · {p.running} running · {p.failed} failed · "
            f"{p.remaining} remaining · {p.skipped} skipped  [{format_duration(p.elapsed_s)}, ETA {eta}]")


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class ProgressDisplay:
    """Sweep progress on a stream: one refreshing line on a terminal, else periodic lines."""

    def __init__(self, stream: TextIO, tty: bool, interval: float) -> None:
        self.stream, self.tty, self.interval = stream, tty, interval
        self.last = -float("inf")
        self.latest = None
        self.width = 0

    def __call__(self, progress) -> None:
        self.latest = progress
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._write(format_progress(progress))

    def _write(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def say(self, message: str) -> None:
        """A message on its own line, without breaking the progress line."""
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width = 0
        self.stream.write(message + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.latest is not None:
            self._write(format_progress(self.latest))
        if self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()


def progress_display(mode: str) -> ProgressDisplay | None:
    """The display ``--progress auto|always|never`` asks for on stderr (None: no display)."""
    tty = sys.stderr.isatty()
    if mode == "never" or (mode == "auto" and not tty):
        return None
    return ProgressDisplay(sys.stderr, tty, TTY_INTERVAL_S if tty else LOG_INTERVAL_S)


_display = progress_display  # the name `byzbench stress` imports


def _say(display: ProgressDisplay | None, message: str) -> None:
    if display is not None:
        display.say(message)
    else:
        print(message, file=sys.stderr, flush=True)
