"""A sweep killed mid-way (SIGKILL of the driver, or of a worker) resumes exactly.

The driver test starts ``byzbench sweep`` as a subprocess in its own process group,
waits until one run is finished and another is running, SIGKILLs the whole group, and
reruns the sweep: every run is then present exactly once and finished, and the rows and
metrics of the runs finished before the kill are byte-for-byte those written before it.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from byzbench.experiments.executors import LocalExecutor, SerialExecutor
from byzbench.experiments.store import ResultsStore
from byzbench.experiments.sweep import Sweep
from byzbench.experiments.sweeping import run_sweep

SRC = str(Path(__file__).resolve().parents[1] / "src")
ROUNDS = 250  # long enough (≈ 0.3 s per run on a quiet CPU) to catch a run in flight
SWEEP = f"""\
name: kill
base: {{rounds: {ROUNDS}, eval_every: 100, n_clients: 8, n_byzantine: 2, model: logistic}}
grid: {{lr: [0.05, 0.1, 0.2]}}
seeds: 2
"""
RUNS = 6
CLI = "import sys; from byzbench.cli import main; sys.exit(main(sys.argv[1:]))"

pytestmark = pytest.mark.slow


def _counts(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return dict(conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
    except sqlite3.OperationalError:  # schema not created yet
        return {}


def _snapshot(db: Path) -> tuple[dict[str, tuple], dict[str, list[tuple]]]:
    """Every runs row and every metric row, by run id, read through a raw connection."""
    with sqlite3.connect(db) as conn:
        rows = {r[0]: r for r in conn.execute("SELECT * FROM runs")}
        metrics: dict[str, list[tuple]] = {}
        for row in conn.execute("SELECT * FROM round_metrics ORDER BY run_id, name, round"):
            metrics.setdefault(row[0], []).append(row)
    return rows, metrics


def _group_gone(pgid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _check_complete(db: Path, sweep: Sweep) -> None:
    """Every run of the sweep once, finished, with a full metric series; nothing else."""
    ids = [r.run_id for r in sweep.runs()]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT run_id) FROM runs").fetchone() == (RUNS, RUNS)
        assert conn.execute("SELECT run_id FROM sweep_runs WHERE sweep_name = 'kill' ORDER BY position"
                            ).fetchall() == [(i,) for i in ids]
    with ResultsStore(db) as store:
        assert store.statuses() == dict.fromkeys(ids, "finished")
        for run_id in ids:
            assert [r for r, _ in store.round_metrics(run_id)["train_loss"]] == list(range(ROUNDS))


def test_sigkill_of_the_driver_then_rerun_completes_exactly_the_missing_runs(tmp_path: Path) -> None:
    path, db = tmp_path / "kill.yaml", tmp_path / "r.db"
    path.write_text(SWEEP)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, "sweep", str(path), "--db", str(db), "--workers", "1", "--threads", "1",
         "--progress", "never"],
        env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            counts = _counts(db)
            if counts.get("finished", 0) >= 1 and counts.get("running", 0) == 1:
                break
            assert proc.poll() is None, f"the sweep ended before it could be killed: {proc.communicate()}"
            assert time.monotonic() < deadline, f"no finished + running state seen: {counts}"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert _group_gone(proc.pid), "a worker outlived the killed driver"

    rows, metrics = _snapshot(db)
    done = {rid for rid, row in rows.items() if row[2] == "finished"}
    running = [rid for rid, row in rows.items() if row[2] == "running"]
    assert 1 <= len(done) < RUNS and len(running) == 1
    assert running[0] not in metrics  # the run in flight left no metrics behind

    sweep = Sweep.from_file(path)
    with ResultsStore(db) as store:
        summary = run_sweep(sweep, store, SerialExecutor(threads=1))
    assert (summary.skipped, summary.finished, summary.failed) == (len(done), RUNS - len(done), 0)
    _check_complete(db, sweep)
    after_rows, after_metrics = _snapshot(db)
    for run_id in done:  # finished_at, metrics, everything: untouched
        assert after_rows[run_id] == rows[run_id]
        assert after_metrics[run_id] == metrics[run_id]


def test_sigkill_of_a_worker_fails_only_its_run_and_the_sweep_goes_on(tmp_path: Path) -> None:
    path, db = tmp_path / "kill.yaml", tmp_path / "r.db"
    path.write_text(SWEEP)
    sweep = Sweep.from_file(path)
    victim: list[str] = []
    executor = LocalExecutor(1, 1, heartbeat_s=0.05)

    def kill_second_run(progress) -> None:
        busy = executor.busy_pids()
        if not victim and progress.done >= 1 and busy:
            (run_id, pid), = busy.items()
            victim.append(run_id)
            os.kill(pid, signal.SIGKILL)

    with executor, ResultsStore(db) as store:
        summary = run_sweep(sweep, store, executor, progress=kill_second_run)
        assert len(victim) == 1 and summary.failures == [(victim[0], "worker process died (killed by SIGKILL)")]
        assert (summary.finished, summary.failed) == (RUNS - 1, 1)
        rec = store.get_run(victim[0])
        assert rec.status == "failed" and rec.error.startswith("worker process died")
        assert store.round_metrics(victim[0]) == {}
        assert len(executor.worker_pids()) == 1  # the pool was rebuilt

        again = run_sweep(sweep, store, SerialExecutor(threads=1))
        assert (again.skipped, again.finished, again.failed) == (RUNS - 1, 1, 0)
    _check_complete(db, sweep)
