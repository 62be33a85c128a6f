"""Results store: one embedded SQLite file with one row per run and its round metrics.

Built for a sweep runner where several worker processes and a driver share one file:

* WAL journal mode (readers never block the writer), ``busy_timeout`` of 30 s, and
  ``synchronous=NORMAL`` (durable against a killed process; only a power cut may lose
  the last commits).
* Every write is one ``BEGIN IMMEDIATE`` transaction, so a process killed mid-write
  leaves the file as it was before that write. In particular `ResultsStore.finish_run`
  writes the metrics and the final status together: a run killed before that commit
  stays ``'running'`` with no metrics, never half-written.
* Each `ResultsStore` opens its own connection; do not share one across processes.

Metrics are stored long-format, ``(run_id, round, name, value)``, so any attack or
defense can log any diagnostic. Non-finite floats: SQLite REAL holds ±inf but not NaN,
so NaN is stored as NULL. `ResultsStore.round_metrics` reads NULL back as NaN; the
scalar columns (``final_accuracy``, ``final_loss``, ...) read NULL back as ``None``.
Timestamps are ISO-8601 UTC strings from `utc_now`.

Sweeps: ``sweep_runs(sweep_name, run_id, position)`` records which runs a sweep expands
to, in its expansion order (`ResultsStore.add_sweep_runs`, `ResultsStore.sweep_run_ids`).
A run shared by two sweeps is stored once and listed in both. The table is additive
(``CREATE TABLE IF NOT EXISTS`` on open adds it to older files, and older readers ignore
it), so the schema version stays 1.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0
FINAL_STATUSES = frozenset({"finished", "diverged", "failed"})
DONE_STATUSES = ("finished", "diverged")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    config_json TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK(status IN ('running', 'finished', 'diverged', 'failed')),
    started_at TEXT,
    finished_at TEXT,
    version TEXT,
    rounds_completed INTEGER,
    diverged_round INTEGER,
    final_accuracy REAL,
    final_loss REAL,
    wall_time_s REAL,
    error TEXT,
    summary_json TEXT
);
CREATE TABLE IF NOT EXISTS round_metrics (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    round INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, round, name)
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
CREATE TABLE IF NOT EXISTS sweep_runs (
    sweep_name TEXT NOT NULL,
    run_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (sweep_name, run_id)
);
"""

_COLUMNS = (
    "run_id, config_json, status, started_at, finished_at, version, rounds_completed, "
    "diverged_round, final_accuracy, final_loss, wall_time_s, error, summary_json"
)

MetricsArg = Mapping[str, Sequence[tuple[int, float]]] | Sequence[tuple[int, str, float]]


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string (microseconds, ``+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class RunRecord:
    """One row of ``runs``, with ``config`` and ``summary`` parsed from JSON."""

    run_id: str
    config: dict[str, Any]
    status: str
    started_at: str | None
    finished_at: str | None
    version: str | None
    rounds_completed: int | None
    diverged_round: int | None
    final_accuracy: float | None
    final_loss: float | None
    wall_time_s: float | None
    error: str | None
    summary: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> RunRecord:
        """Build a record from a row selected with the ``runs`` columns in order."""
        (run_id, config_json, status, started, finished, version, rounds,
         div_round, acc, loss, wall, error, summary_json) = row
        summary = json.loads(summary_json) if summary_json is not None else None
        return cls(run_id, json.loads(config_json), status, started, finished, version,
                   rounds, div_round, acc, loss, wall, error, summary)


def _db_float(value: float | None) -> float | None:
    """A float for SQLite: NaN (which REAL cannot hold) and None become NULL."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _metric_rows(run_id: str, metrics: MetricsArg) -> list[tuple[str, int, str, float | None]]:
    """Normalise either metrics form into ``(run_id, round, name, value)`` rows."""
    if isinstance(metrics, Mapping):
        return [(run_id, int(r), str(name), _db_float(v))
                for name, series in metrics.items() for r, v in series]
    return [(run_id, int(r), str(name), _db_float(v)) for r, name, v in metrics]


class ResultsStore:
    """A results file: runs, their status and per-round metrics (see module docs)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open (creating the parent folder, file and schema as needed) the store."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self._configure()
        self._create_schema()

    # -- connection ----------------------------------------------------------------

    def _configure(self) -> None:
        """Per-connection settings: busy timeout, WAL, foreign keys."""
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")

    def _create_schema(self) -> None:
        """Create missing tables and check the stored schema version."""
        with self._write() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                         (str(SCHEMA_VERSION),))
            (found,) = conn.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if int(found) != SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: schema_version {found}, this byzbench reads {SCHEMA_VERSION}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taking the write lock up front; rolled back on error."""
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            yield self._conn

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writes --------------------------------------------------------------------

    def start_run(self, run_id: str, config: dict[str, Any], version: str) -> None:
        """Replace any earlier row and metrics of ``run_id`` by a fresh ``'running'`` row."""
        config_json = json.dumps(config, sort_keys=True)
        with self._write() as conn:
            self._delete(conn, run_id)
            conn.execute(
                "INSERT INTO runs(run_id, config_json, status, started_at, version) "
                "VALUES (?, ?, 'running', ?, ?)",
                (run_id, config_json, utc_now(), version))

    def finish_run(
        self,
        run_id: str,
        *,
        status: str,
        rounds_completed: int,
        metrics: MetricsArg,
        final_accuracy: float | None,
        final_loss: float | None,
        diverged_round: int | None,
        wall_time_s: float,
        summary: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Write the metrics and the final status of a started run in one transaction.

        ``metrics`` is ``{name: [(round, value), ...]}`` or ``[(round, name, value), ...]``.
        Raises ValueError for a status other than finished/diverged/failed and
        KeyError when ``run_id`` was never started.
        """
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {sorted(FINAL_STATUSES)}, got {status!r}")
        rows = _metric_rows(run_id, metrics)
        summary_json = json.dumps(summary, sort_keys=True) if summary is not None else None
        values = (status, utc_now(), int(rounds_completed), diverged_round,
                  _db_float(final_accuracy), _db_float(final_loss), _db_float(wall_time_s),
                  error, summary_json, run_id)
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, rounds_completed = ?, "
                "diverged_round = ?, final_accuracy = ?, final_loss = ?, wall_time_s = ?, "
                "error = ?, summary_json = ? WHERE run_id = ?", values).rowcount
            if updated == 0:
                raise KeyError(f"run {run_id!r} was not started")
            conn.executemany(
                "INSERT INTO round_metrics(run_id, round, name, value) VALUES (?, ?, ?, ?)",
                rows)

    def delete_run(self, run_id: str) -> None:
        """Delete a run and its metrics (no error if absent)."""
        with self._write() as conn:
            self._delete(conn, run_id)

    def add_sweep_runs(self, sweep_name: str, run_ids: Sequence[str]) -> None:
        """Record ``run_ids`` (in expansion order) as the runs of ``sweep_name``.

        One transaction; the sweep's earlier list is replaced, so a sweep file that was
        edited lists exactly its current runs. The ``runs`` rows are not touched.
        """
        if not sweep_name:
            raise ValueError("sweep_name must be a non-empty string")
        rows = [(sweep_name, run_id, i) for i, run_id in enumerate(run_ids)]
        with self._write() as conn:
            conn.execute("DELETE FROM sweep_runs WHERE sweep_name = ?", (sweep_name,))
            conn.executemany(
                "INSERT OR IGNORE INTO sweep_runs(sweep_name, run_id, position) VALUES (?, ?, ?)",
                rows)

    @staticmethod
    def _delete(conn: sqlite3.Connection, run_id: str) -> None:
        """Delete a run's metrics and row inside the caller's transaction."""
        conn.execute("DELETE FROM round_metrics WHERE run_id = ?", (run_id,))
        conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

    # -- reads ---------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunRecord | None:
        """The record of ``run_id``, or None if there is none."""
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return RunRecord.from_row(row) if row is not None else None

    def runs(self, status: str | None = None) -> list[RunRecord]:
        """All runs (or those with ``status``), ordered by start time."""
        query = f"SELECT {_COLUMNS} FROM runs"
        params: tuple[str, ...] = ()
        if status is not None:
            query, params = query + " WHERE status = ?", (status,)
        rows = self._conn.execute(query + " ORDER BY started_at, run_id", params)
        return [RunRecord.from_row(row) for row in rows]

    def finished_ids(self) -> set[str]:
        """Ids of runs that ended (finished or diverged): what a sweep may skip."""
        rows = self._conn.execute(
            "SELECT run_id FROM runs WHERE status IN (?, ?)", DONE_STATUSES)
        return {run_id for (run_id,) in rows}

    def stale_runs(self) -> list[str]:
        """Ids of runs still marked ``'running'`` (live, or attempts that were killed)."""
        rows = self._conn.execute(
            "SELECT run_id FROM runs WHERE status = 'running' ORDER BY started_at, run_id")
        return [run_id for (run_id,) in rows]

    def round_metrics(self, run_id: str) -> dict[str, list[tuple[int, float]]]:
        """``{name: [(round, value), ...]}`` sorted by round; NULL values read as NaN."""
        out: dict[str, list[tuple[int, float]]] = {}
        rows = self._conn.execute(
            "SELECT name, round, value FROM round_metrics WHERE run_id = ? "
            "ORDER BY name, round", (run_id,))
        for name, rnd, value in rows:
            out.setdefault(name, []).append((rnd, math.nan if value is None else value))
        return out

    def statuses(self, run_ids: Sequence[str] | None = None) -> dict[str, str]:
        """``{run_id: status}`` of the stored runs (of those among ``run_ids`` if given)."""
        rows = self._conn.execute("SELECT run_id, status FROM runs")
        found = dict(rows.fetchall())
        return found if run_ids is None else {r: found[r] for r in run_ids if r in found}

    def sweep_names(self) -> list[str]:
        """Names of the sweeps recorded in this store, sorted."""
        rows = self._conn.execute("SELECT DISTINCT sweep_name FROM sweep_runs ORDER BY sweep_name")
        return [name for (name,) in rows]

    def sweep_run_ids(self, sweep_name: str) -> list[str]:
        """Run ids of ``sweep_name`` in its expansion order (empty for an unknown sweep)."""
        rows = self._conn.execute(
            "SELECT run_id FROM sweep_runs WHERE sweep_name = ? ORDER BY position", (sweep_name,))
        return [run_id for (run_id,) in rows]

    def metric_summaries(self, names: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
        """``{run_id: {name: {"last", "min", "max"}}}`` of each run's series of ``names``.

        ``last`` is the value at the largest round (NaN when it is NaN); ``min`` and
        ``max`` ignore NaN and read NaN when a series has no other value.
        """
        if not names:
            return {}
        marks = ", ".join("?" for _ in names)
        rows = self._conn.execute(
            f"SELECT run_id, name, value FROM round_metrics WHERE name IN ({marks}) "
            "ORDER BY run_id, name, round", tuple(names))
        series: dict[tuple[str, str], list[float]] = {}
        for run_id, name, value in rows:
            series.setdefault((run_id, name), []).append(math.nan if value is None else value)
        out: dict[str, dict[str, dict[str, float]]] = {}
        for (run_id, name), values in series.items():
            finite = [v for v in values if not math.isnan(v)]
            out.setdefault(run_id, {})[name] = {
                "last": values[-1],
                "min": min(finite) if finite else math.nan,
                "max": max(finite) if finite else math.nan,
            }
        return out
