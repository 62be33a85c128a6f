"""A results store as a flat table of runs: one dict per run, dotted config keys as columns.

`load_frame` reads `ResultsStore.runs` and `ResultsStore.round_metrics` (the public read
API only) and gives each run a row such as::

    {"attack": "alie(z=8)", "attack.name": "alie", "attack.z": 8, "defense": "nnm > trmean",
     "partition": "dirichlet(beta=0.1)", "partition.name": "dirichlet", "partition.beta": 0.1,
     "seed": 0, "lr": 0.1, ..., "run_id": "…", "status": "finished",
     "final_accuracy": 0.91, "max_accuracy": 0.93, "final_loss": 0.3, "wall_time_s": 4.2}

A component (a mapping with ``name``) gives its readable label under its own key (the
``name(k=v)`` syntax of the CLI), ``<key>.name`` and one ``<key>.<param>`` per parameter;
a key a run does not have reads as None (e.g. ``partition.beta`` of an IID run).

Accuracies are fractions in [0, 1]. ``max_accuracy`` is the largest test accuracy recorded
during training (seed 000's metric), ``final_accuracy`` the last one. Which evaluations
count: finite accuracies whose test loss at the same round is finite and, for a diverged
run, whose round is at most the diverged round (the model before it blew up).

**Diverged runs** (``diverged_as``, UNSETTLED in the literature; the stress-testing
papers count a blown-up model at chance level):

- ``"last"`` (default): final accuracy = the last counted evaluation, max accuracy = the
  largest counted one; chance level 1/C when the run has none;
- ``"chance"``: final accuracy = 1/C; max accuracy = max(counted evaluations, 1/C);
- ``"exclude"``: left out of the frame and counted in `Frame.skipped`.

C comes from the config's dataset (``num_classes`` of its constructor, without loading
any data) unless given. Runs ``failed`` or still ``running`` are left out and counted.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from byzbench.errors import ConfigError
from byzbench.experiments.store import ResultsStore, RunRecord
from byzbench.spec import ComponentSpec, parse_value

DIVERGED_AS = ("last", "chance", "exclude")
#: Per-run numeric columns a table can aggregate.
METRICS = ("max_accuracy", "final_accuracy", "final_loss", "wall_time_s")
ACCURACY_SERIES = "test_accuracy"
LOSS_SERIES = "test_loss"
#: Classes of datasets whose constructor does not expose ``num_classes``.
KNOWN_CLASSES = {"digits": 10}
LEFT_OUT_STATUSES = ("failed", "running")

Series = list[tuple[int, float]]
MetricsSource = Callable[[str], Mapping[str, Series]] | Mapping[str, Mapping[str, Series]] | None


@dataclass
class Frame:
    """Runs as rows (dicts keyed by dotted config keys and result columns).

    ``curves[run_id]`` is the run's counted test-accuracy series (see the module doc);
    ``skipped`` counts the runs left out by status (``failed``, ``running``, and
    ``diverged`` under ``diverged_as="exclude"``); ``diverged`` counts the diverged runs
    kept; ``chance`` maps each dataset label to the chance level used for it.
    """

    rows: list[dict[str, Any]]
    curves: dict[str, Series] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    diverged: int = 0
    diverged_as: str = "last"
    where: tuple[str, ...] = ()
    source: str = ""
    chance: dict[str, float] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        """Every key some row has, sorted."""
        return sorted({k for row in self.rows for k in row})

    def values(self, key: str) -> list[Any]:
        """The distinct values of ``key`` in `value_order` (None last)."""
        return sorted({_hashable(row.get(key)) for row in self.rows}, key=value_order)

    def select(self, where: Sequence[str] | Mapping[str, Sequence[str]]) -> Frame:
        """The rows matching ``where`` (as in `load_frame`), other fields shared."""
        filters = dict(where) if isinstance(where, Mapping) else parse_where(where)
        extra = tuple(f"{k}={v}" for k, vs in filters.items() for v in vs)
        return replace(self, rows=apply_where(self.rows, filters), where=self.where + extra)

    def check_keys(self, keys: Iterable[str], option: str) -> None:
        """Raise `ConfigError` on ``option`` for a key no row has."""
        known = set(self.columns)
        for key in keys:
            if key not in known:
                raise ConfigError(f"no run has the key {key!r}; keys: {', '.join(sorted(known))}", option)


# ------------------------------------------------------------------------ ordering
_NUMBER = re.compile(r"(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")


def value_order(value: Any) -> tuple:
    """Sort key: numbers numerically, then strings in natural order, then None."""
    if value is None:
        return (3,)
    if isinstance(value, bool):
        return (1, str(value), ())
    if isinstance(value, (int, float)):
        return (0, float(value)) if not math.isnan(value) else (2,)
    text = str(value)
    parts = _NUMBER.split(text)
    return (1, "", tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts) if p))


def _hashable(value: Any) -> Any:
    """Lists become tuples and mappings JSON text, so that values can be grouped."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return value


# ------------------------------------------------------------------------ flattening
def flatten_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys of a ``ExperimentConfig.to_dict()``: components give a label, ``.name``
    and ``.<param>``; other values are kept (lists as tuples)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and "name" in value:
            params = {k: v for k, v in value.items() if k != "name"}
            out[key] = str(ComponentSpec(str(value["name"]), params))
            out[f"{key}.name"] = str(value["name"])
            out.update({f"{key}.{p}": _hashable(v) for p, v in params.items()})
        else:
            out[key] = _hashable(value)
    return out


# ------------------------------------------------------------------------ filters
def parse_where(items: Sequence[str]) -> dict[str, list[str]]:
    """``["k=v", "k=w", "j=u"]`` → ``{"k": ["v", "w"], "j": ["u"]}`` (values as written)."""
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected key=value, got {item!r}", "--where")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def matches(cell: Any, text: str) -> bool:
    """Whether a row's value equals a value written on the command line.

    ``none``/``null``/``~`` match a missing key; numbers compare numerically (``0.1``
    matches 0.1, ``8`` matches 8.0); text compares without spaces (``"nnm>trmean"``
    matches ``"nnm > trmean"``).
    """
    parsed = parse_value(text)
    if cell is None or parsed is None:
        return cell is None and parsed is None
    if isinstance(cell, (int, float)) and not isinstance(cell, bool):
        return isinstance(parsed, (int, float)) and not isinstance(parsed, bool) and float(parsed) == float(cell)
    if isinstance(cell, tuple):
        return isinstance(parsed, list) and _hashable(parsed) == cell
    if isinstance(cell, bool):
        return parsed is cell
    return _squash(str(cell)) == _squash(text)


def _squash(text: str) -> str:
    return "".join(text.split()).lower()


def apply_where(rows: list[dict[str, Any]], where: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """Rows matching every key (any of its values); a key no row has is a `ConfigError`."""
    known = {k for row in rows for k in row}
    for key in where:
        if rows and key not in known:
            raise ConfigError(f"no run has the key {key!r}; keys: {', '.join(sorted(known))}", "--where")
    return [row for row in rows
            if all(any(matches(row.get(k), v) for v in values) for k, values in where.items())]


# ------------------------------------------------------------------------ accuracies
def counted_series(metrics: Mapping[str, Series], diverged_round: int | None) -> Series:
    """The test-accuracy evaluations that count (finite, finite loss, not after divergence)."""
    loss = {r: v for r, v in metrics.get(LOSS_SERIES, [])}
    return [(int(r), float(v)) for r, v in metrics.get(ACCURACY_SERIES, [])
            if math.isfinite(v) and math.isfinite(loss.get(r, 0.0))
            and (diverged_round is None or r <= diverged_round)]


def chance_level(config: Mapping[str, Any], num_classes: int | None = None) -> float:
    """1/C for the run's dataset: ``num_classes`` if given, else read from the dataset's
    constructor (no data loaded), else `KNOWN_CLASSES`; `ConfigError` if unknown."""
    if num_classes is not None:
        return 1.0 / num_classes
    data = config.get("data") or {}
    name = str(data.get("name", "")) if isinstance(data, Mapping) else str(data)
    params = {k: v for k, v in data.items() if k != "name"} if isinstance(data, Mapping) else {}
    found = _dataset_classes(name, params)
    if found is None:
        raise ConfigError(f"cannot tell the number of classes of dataset {name!r} "
                          "(needed for a diverged run's chance level); give it", "num_classes")
    return 1.0 / found


def _dataset_classes(name: str, params: dict[str, Any]) -> int | None:
    from byzbench.data import DATASETS

    try:
        canonical = DATASETS.canonical(name)
        found = getattr(DATASETS.create(canonical, "data", **params), "num_classes", None)
    except (ConfigError, OSError):
        canonical, found = name, None
    return int(found) if isinstance(found, int) and found >= 2 else KNOWN_CLASSES.get(canonical)


def run_accuracies(record: RunRecord, series: Series, diverged_as: str,
                   chance: Callable[[], float]) -> tuple[float | None, float | None]:
    """(final_accuracy, max_accuracy) of a kept run under ``diverged_as`` (module doc)."""
    values = [v for _, v in series]
    if record.status != "diverged":
        final = record.final_accuracy if record.final_accuracy is not None else (values[-1] if values else None)
        best = max(values) if values else final
        return final, best
    if diverged_as == "chance" or not values:
        level = chance()
        return level, max([*values, level])
    return values[-1], max(values)


# ------------------------------------------------------------------------ loading
def load_frame(source: ResultsStore | str | os.PathLike[str] | Iterable[RunRecord], *,
               where: Sequence[str] | Mapping[str, Sequence[str]] = (), diverged_as: str = "last",
               num_classes: int | None = None, metrics: MetricsSource = None) -> Frame:
    """The runs of a store (a `ResultsStore`, a path to an existing one, or `RunRecord`
    objects with ``metrics``: a mapping run id → round metrics or a callable) as a `Frame`.

    ``where`` filters on any column (``["attack.name=alie", "partition.beta=0.1"]``; one
    key repeated means any of its values). See the module doc for ``diverged_as``.
    """
    if diverged_as not in DIVERGED_AS:
        raise ConfigError(f"must be one of {', '.join(DIVERGED_AS)}, got {diverged_as!r}", "diverged_as")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 2):
        raise ConfigError(f"must be an integer ≥ 2, got {num_classes!r}", "num_classes")
    if isinstance(source, ResultsStore):
        return _load(source.runs(), source.round_metrics, str(source.path), where, diverged_as, num_classes)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"results store not found: {path}", "DB")
        with ResultsStore(path) as store:
            return load_frame(store, where=where, diverged_as=diverged_as, num_classes=num_classes)
    return _load(list(source), _metrics_getter(metrics), "records", where, diverged_as, num_classes)


def _metrics_getter(metrics: MetricsSource) -> Callable[[str], Mapping[str, Series]]:
    if metrics is None:
        return lambda run_id: {}
    if callable(metrics):
        return metrics
    return lambda run_id: metrics.get(run_id, {})


def _load(records: list[RunRecord], metrics_of: Callable[[str], Mapping[str, Series]], label: str,
          where: Sequence[str] | Mapping[str, Sequence[str]], diverged_as: str,
          num_classes: int | None) -> Frame:
    filters = dict(where) if isinstance(where, Mapping) else parse_where(where)
    flat = [{**flatten_config(r.config), "run_id": r.run_id, "status": r.status} for r in records]
    by_id = {r.run_id: r for r in records}
    kept = apply_where(flat, filters)
    skipped = Counter(row["status"] for row in kept if row["status"] in LEFT_OUT_STATUSES)
    frame = Frame([], skipped={}, diverged_as=diverged_as, source=label,
                  where=tuple(f"{k}={v}" for k, vs in filters.items() for v in vs))
    for row in kept:
        record = by_id[row["run_id"]]
        if record.status in LEFT_OUT_STATUSES:
            continue
        if record.status == "diverged" and diverged_as == "exclude":
            skipped["diverged"] += 1
            continue
        frame.rows.append(_result_row(row, record, metrics_of, frame, num_classes))
    frame.skipped = dict(sorted(skipped.items()))
    return frame


def _result_row(row: dict[str, Any], record: RunRecord, metrics_of: Callable[[str], Mapping[str, Series]],
                frame: Frame, num_classes: int | None) -> dict[str, Any]:
    """``row`` with the result columns of ``record``; records the curve and chance level."""
    series = counted_series(metrics_of(record.run_id), record.diverged_round)
    frame.curves[record.run_id] = series

    def chance() -> float:
        level = chance_level(record.config, num_classes)
        frame.chance[str(row.get("data"))] = level
        return level

    final, best = run_accuracies(record, series, frame.diverged_as, chance)
    frame.diverged += record.status == "diverged"
    return {**row, "final_accuracy": final, "max_accuracy": best, "final_loss": record.final_loss,
            "wall_time_s": record.wall_time_s, "diverged_round": record.diverged_round}


__all__ = [
    "DIVERGED_AS", "METRICS", "Frame", "apply_where", "chance_level", "counted_series", "flatten_config",
    "load_frame", "matches", "parse_where", "run_accuracies", "value_order",
]
