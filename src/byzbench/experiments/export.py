"""Export a results store: one row per run, flattened config keys as columns.

A row holds ``run_id``, ``status``, every config key (a component such as ``attack``
gives its label ``alie(z=8)``, ``attack.name`` and one ``attack.<param>`` column per
parameter; lists and mappings are JSON text), then ``final_accuracy``, ``max_accuracy``
(the largest recorded test accuracy, NaN ignored), ``final_loss``, ``rounds_completed``,
``diverged_round``, ``wall_time_s``, ``started_at``, ``finished_at``, ``version``,
``error``, and for each extra metric name ``m`` the columns ``m.last``, ``m.min``,
``m.max`` of its per-round series. Every row has every column (None where a run lacks it).

Writers: `write_csv` (standard library only) and `write_parquet` (pandas + pyarrow, the
``export`` extra); `to_pandas` gives a DataFrame.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from byzbench.errors import ConfigError
from byzbench.experiments.store import ResultsStore, RunRecord
from byzbench.spec import ComponentSpec

RESULT_COLUMNS = ("final_accuracy", "max_accuracy", "final_loss", "rounds_completed", "diverged_round",
                  "wall_time_s", "started_at", "finished_at", "version", "error")
ACCURACY = "test_accuracy"
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def flatten_config(config: dict[str, Any]) -> dict[str, Any]:
    """Dotted columns of a config dict: components as label, ``.name`` and ``.<param>``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and "name" in value:
            spec = ComponentSpec(str(value["name"]), {k: v for k, v in value.items() if k != "name"})
            out[key] = str(spec)
            out[f"{key}.name"] = spec.name
            out.update({f"{key}.{p}": _cell(v) for p, v in sorted(spec.params.items())})
        else:
            out[key] = _cell(value)
    return out


def to_records(store: ResultsStore, *, sweep: str | None = None, metrics: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One dict per stored run (of ``sweep`` in its expansion order, if given), same keys in each."""
    records = _select(store, sweep)
    summaries = store.metric_summaries([ACCURACY, *(m for m in metrics if m != ACCURACY)])
    rows = [_row(rec, summaries.get(rec.run_id, {}), metrics) for rec in records]
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return [{c: row.get(c) for c in columns} for row in rows]


def _select(store: ResultsStore, sweep: str | None) -> list[RunRecord]:
    if sweep is None:
        return store.runs()
    ids = store.sweep_run_ids(sweep)
    if not ids:
        known = ", ".join(store.sweep_names()) or "(none)"
        raise ConfigError(f"no sweep {sweep!r} in {store.path}; sweeps: {known}", "sweep")
    found = {rec.run_id: rec for rec in store.runs()}
    return [found[i] for i in ids if i in found]


def _row(rec: RunRecord, summary: dict[str, dict[str, float]], metrics: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"run_id": rec.run_id, "status": rec.status, **flatten_config(rec.config)}
    max_accuracy = summary.get(ACCURACY, {}).get("max")
    row.update({c: max_accuracy if c == "max_accuracy" else getattr(rec, c) for c in RESULT_COLUMNS})
    for name in metrics:
        stats = summary.get(name, {})
        row.update({f"{name}.{k}": stats.get(k) for k in ("last", "min", "max")})
    return row


def _cell(value: Any) -> Any:
    """Scalars as they are; lists and mappings as canonical JSON text."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def write_csv(records: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """CSV with a header row; None is empty, floats in Python's round-trip form (nan, inf)."""
    columns = list(records[0]) if records else ["run_id", "status"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in records:
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])


def to_pandas(store: ResultsStore, *, sweep: str | None = None, metrics: Sequence[str] = ()) -> Any:
    """`to_records` as a pandas DataFrame (needs pandas)."""
    pd = require("pandas", "a pandas DataFrame")
    records = to_records(store, sweep=sweep, metrics=metrics)
    return pd.DataFrame.from_records(records, columns=list(records[0]) if records else ["run_id", "status"])


def write_parquet(frame: Any, path: str | os.PathLike[str]) -> None:
    """A DataFrame as Parquet (needs pyarrow); columns mixing types are written as text."""
    require("pyarrow", "Parquet export")
    frame = frame.copy()
    for column in frame.columns:
        kinds = {type(v) for v in frame[column] if v is not None and not _is_nan(v)}
        if len(kinds) > 1 and not kinds <= {int, float}:
            frame[column] = [None if v is None else str(v) for v in frame[column]]
    frame.to_parquet(path, engine="pyarrow", index=False)


def export(store: ResultsStore, path: str | os.PathLike[str], *, sweep: str | None = None,
           metrics: Sequence[str] = ()) -> int:
    """Write the runs to ``path`` (.csv, .parquet or .pq); returns the number of rows."""
    kind = FORMATS.get(Path(path).suffix.lower())
    if kind is None:
        raise ConfigError(f"unknown file type {Path(path).suffix!r}; use one of {', '.join(FORMATS)}", "out")
    if kind == "csv":
        records = to_records(store, sweep=sweep, metrics=metrics)
        write_csv(records, path)
        return len(records)
    require("pyarrow", "Parquet export")
    frame = to_pandas(store, sweep=sweep, metrics=metrics)
    write_parquet(frame, path)
    return len(frame)


def require(package: str, purpose: str) -> Any:
    """Import ``package`` or raise ImportError naming it and the ``export`` extra."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise ImportError(f"{purpose} needs the package {package!r}: pip install 'byzbench[export]'",
                          name=package) from exc


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


__all__ = ["export", "flatten_config", "to_pandas", "to_records", "write_csv", "write_parquet"]
