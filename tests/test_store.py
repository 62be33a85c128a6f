"""Behaviour of the SQLite results store: round trips, replacement, crashes, concurrency."""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from byzbench.experiments import ResultsStore, RunRecord

SRC = str(Path(__file__).resolve().parents[1] / "src")
KILLED = 17  # exit status of the child killed before its commit


def _run_child(script: str, *args: str) -> subprocess.Popen[str]:
    """Start a Python child running ``script`` with byzbench importable."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(store: ResultsStore, run_id: str, metrics, **overrides) -> None:
    """finish_run with plain defaults for the arguments a test does not care about."""
    kwargs = dict(status="finished", rounds_completed=3, metrics=metrics,
                  final_accuracy=0.9, final_loss=0.1, diverged_round=None, wall_time_s=1.5)
    store.finish_run(run_id, **{**kwargs, **overrides})


def _metric_count(path: Path, run_id: str) -> int:
    """Rows of ``round_metrics`` for ``run_id``, counted through a raw connection."""
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT COUNT(*) FROM round_metrics WHERE run_id = ?",
                            (run_id,)).fetchone()[0]


def test_round_trip_all_fields_sorted_metrics_and_non_finite(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "results.db"
    config = {"attack": {"name": "alie", "z": 1.5}, "n": 10}
    with ResultsStore(path) as store:
        store.start_run("r1", config, "0.1.0")
        running = store.get_run("r1")
        assert running is not None and running.status == "running"
        assert running.started_at.endswith("+00:00") and running.finished_at is None
        metrics = {"acc": [(2, 0.5), (0, 0.1), (1, 0.3)],
                   "loss": [(1, math.nan), (0, math.inf), (2, -math.inf)]}
        _finish(store, "r1", metrics, status="diverged", diverged_round=2,
                final_loss=math.inf, summary={"best_acc": 0.5}, error=None)
        rec = store.get_run("r1")
        got = store.round_metrics("r1")
    assert isinstance(rec, RunRecord)
    assert rec.run_id == "r1" and rec.config == config and rec.version == "0.1.0"
    assert rec.status == "diverged" and rec.rounds_completed == 3 and rec.diverged_round == 2
    assert rec.final_accuracy == 0.9 and rec.final_loss == math.inf
    assert rec.wall_time_s == 1.5 and rec.error is None and rec.summary == {"best_acc": 0.5}
    assert rec.started_at <= rec.finished_at and rec.finished_at.endswith("+00:00")
    assert got["acc"] == [(0, 0.1), (1, 0.3), (2, 0.5)]
    assert [r for r, _ in got["loss"]] == [0, 1, 2]
    assert got["loss"][0][1] == math.inf and math.isnan(got["loss"][1][1])
    assert got["loss"][2][1] == -math.inf
    assert sorted(got) == ["acc", "loss"]


def test_metrics_as_list_of_triples_and_reads(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.db") as store:
        for run_id in ("a", "b", "c"):
            store.start_run(run_id, {"seed": run_id}, "v")
        _finish(store, "a", [(1, "acc", 0.2), (0, "acc", 0.1), (0, "gap", 3.0)])
        _finish(store, "b", [], status="failed", error="Traceback ...")
        assert store.round_metrics("a") == {"acc": [(0, 0.1), (1, 0.2)], "gap": [(0, 3.0)]}
        assert [r.run_id for r in store.runs()] == ["a", "b", "c"]
        assert [r.run_id for r in store.runs("failed")] == ["b"]
        assert store.get_run("b").error == "Traceback ..."
        assert store.finished_ids() == {"a"}
        assert store.stale_runs() == ["c"]
        store.delete_run("a")
        assert store.get_run("a") is None and store.round_metrics("a") == {}


def test_restarting_a_run_replaces_row_and_metrics(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with ResultsStore(path) as store:
        store.start_run("r", {"lr": 0.1}, "v1")
        _finish(store, "r", {"acc": [(i, 0.1 * i) for i in range(10)]})
        store.start_run("r", {"lr": 0.2}, "v2")
        assert store.get_run("r").status == "running"
        assert _metric_count(path, "r") == 0
        _finish(store, "r", {"acc": [(0, 0.5), (1, 0.6)], "loss": [(0, 1.0)]})
        assert len(store.runs()) == 1
        rec = store.get_run("r")
        assert rec.config == {"lr": 0.2} and rec.version == "v2"
        assert _metric_count(path, "r") == 3
        assert store.round_metrics("r") == {"acc": [(0, 0.5), (1, 0.6)], "loss": [(0, 1.0)]}


# The child runs the real finish_run and dies (os._exit) at the COMMIT of a transaction
# that has both inserted metrics and updated the run: everything written, nothing committed.
# Were finish_run split into several transactions, an earlier COMMIT would go through and
# leave a half-written run behind, which the test would see.
_KILLED_CHILD = """
    import os, sys
    from byzbench.experiments import ResultsStore
    store = ResultsStore(sys.argv[1])
    store.start_run("r", {"attempt": 1}, "v")
    seen = set()
    def die_on_commit(sql):
        word = sql.split()[0].upper()
        if word == "BEGIN":
            seen.clear()
        seen.add(word)
        if word == "COMMIT" and {"INSERT", "UPDATE"} <= seen:
            os._exit(int(sys.argv[2]))
    store._conn.set_trace_callback(die_on_commit)
    store.finish_run("r", status="finished", rounds_completed=50,
                     metrics={"acc": [(i, 0.5) for i in range(50)]}, final_accuracy=0.5,
                     final_loss=1.0, diverged_round=None, wall_time_s=2.0)
    print("survived")
"""


def test_run_killed_before_commit_stays_running_without_metrics(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    child = _run_child(_KILLED_CHILD, str(path), str(KILLED))
    out, err = child.communicate(timeout=30)
    assert child.returncode == KILLED, err
    assert "survived" not in out
    with ResultsStore(path) as store:
        rec = store.get_run("r")
        assert rec is not None and rec.status == "running" and rec.finished_at is None
        assert rec.rounds_completed is None
        assert _metric_count(path, "r") == 0
        assert store.stale_runs() == ["r"] and store.finished_ids() == set()
        store.start_run("r", {"attempt": 2}, "v")
        _finish(store, "r", {"acc": [(0, 0.7), (1, 0.8)]})
        assert [r.run_id for r in store.runs()] == ["r"]
        assert store.get_run("r").status == "finished"
        assert store.get_run("r").config == {"attempt": 2}
        assert store.round_metrics("r") == {"acc": [(0, 0.7), (1, 0.8)]}
        assert store.stale_runs() == []


# Each child waits until both are ready, then writes 20 runs with 30 metric rows each.
_WRITER_CHILD = """
    import sys, time
    from pathlib import Path
    from byzbench.experiments import ResultsStore
    path, me, other = sys.argv[1], sys.argv[2], sys.argv[3]
    store = ResultsStore(path)
    Path(path + "." + me).touch()
    deadline = time.monotonic() + 20
    while not Path(path + "." + other).exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    for i in range(20):
        run_id = f"{me}-{i}"
        store.start_run(run_id, {"worker": me, "i": i}, "v")
        store.finish_run(run_id, status="finished", rounds_completed=10,
                         metrics=[(r, n, r * 0.1) for r in range(10) for n in "abc"],
                         final_accuracy=0.5, final_loss=1.0, diverged_round=None,
                         wall_time_s=0.01)
    store.close()
"""


def test_two_processes_write_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    ResultsStore(path).close()
    children = [_run_child(_WRITER_CHILD, str(path), me, other)
                for me, other in (("w0", "w1"), ("w1", "w0"))]
    for child in children:
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
    with ResultsStore(path) as store:
        expected = {f"w{w}-{i}" for w in range(2) for i in range(20)}
        assert store.finished_ids() == expected
        assert len(store.runs("finished")) == 40 and store.stale_runs() == []
        assert all(len(pts) == 10 for pts in store.round_metrics("w1-7").values())
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM round_metrics").fetchone()[0] == 40 * 30


def test_bad_status_missing_run_and_settings(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with ResultsStore(path) as store:
        store.start_run("r", {}, "v")
        with pytest.raises(ValueError, match="status"):
            _finish(store, "r", {"acc": [(0, 1.0)]}, status="running")
        assert store.get_run("r").status == "running" and store.round_metrics("r") == {}
        with pytest.raises(KeyError):
            _finish(store, "never-started", {"acc": [(0, 1.0)]})
        assert store.get_run("missing") is None
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'"
                            ).fetchone()[0] == "1"
        assert conn.execute("SELECT COUNT(*) FROM round_metrics").fetchone()[0] == 0
    ResultsStore(path).close()  # reopening an existing file keeps its schema and rows
