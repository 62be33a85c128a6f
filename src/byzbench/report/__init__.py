"""Reports from a results store: paper-style tables, figures and one self-contained HTML page.

The pieces, usable on their own::

    frame = load_frame("results.db", where=["partition.beta=0.1"])        # runs as rows
    table = pivot_table(frame, rows=["attack"], cols=["defense"])         # mean ± std over seeds
    print(table.to_markdown())                                            # also to_latex/csv/html
    heatmap(frame, "attack.z", "partition.beta", "fig.png", facet="defense")
    write_html("report.html", [table], [FigureItem("heatmap", Path("fig.png"))], store="results.db")

or all at once with `build_report` (what ``byzbench report`` runs)::

    report = build_report("results.db", ReportSpec(heatmaps=(HeatmapSpec("attack.z", "partition.beta"),)),
                          "report/")
    report.paths["html"]              # report/report.html
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byzbench.errors import ConfigError
from byzbench.experiments.store import ResultsStore, RunRecord
from byzbench.report.browser import RenderCheck, find_browser, render_check, screenshot
from byzbench.report.figures import accuracy_curves, heatmap, heatmap_grid, runtime_bars
from byzbench.report.frame import DIVERGED_AS, METRICS, Frame, load_frame
from byzbench.report.html import FigureItem, render_html, write_html
from byzbench.report.tables import FORMATS, METRIC_TEXT, Cell, PivotTable, pivot_table

SUFFIX = {"md": ".md", "latex": ".tex", "csv": ".csv", "html": ".html"}


@dataclass(frozen=True)
class TableSpec:
    """One table: keys on the rows and columns, the metric and `pivot_table`'s options."""

    rows: tuple[str, ...] = ("attack",)
    cols: tuple[str, ...] = ("defense",)
    metric: str = "max_accuracy"
    std_ddof: int = 1
    attack_axis: str = "auto"
    worst_case: bool = True
    digits: int = 2
    title: str | None = None

    @property
    def slug(self) -> str:
        return _slug(f"{self.metric}__{'_'.join(self.rows)}__{'_'.join(self.cols)}")


@dataclass(frozen=True)
class CurvesSpec:
    """Accuracy curves by ``key``, one panel per value of ``facet``."""

    key: str
    facet: str | None = None

    @property
    def slug(self) -> str:
        return _slug(f"curves_{self.key}" + (f"_by_{self.facet}" if self.facet else ""))


@dataclass(frozen=True)
class HeatmapSpec:
    """A heatmap of ``metric`` over ``x`` × ``y``, one panel per value of ``facet``, of the
    runs matching ``where`` (e.g. ``("attack.name=alie",)`` for a heatmap over ``attack.z``)."""

    x: str
    y: str
    facet: str | None = None
    metric: str = "max_accuracy"
    where: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        return _slug(f"heatmap_{self.metric}_{self.x}_{self.y}" + (f"_by_{self.facet}" if self.facet else "")
                     + "".join(f"_{w}" for w in self.where))


@dataclass(frozen=True)
class ReportSpec:
    """Everything `build_report` makes: tables in ``formats``, figures, and which runs
    count (``where``, ``diverged_as``, ``num_classes``: see `load_frame`)."""

    tables: tuple[TableSpec, ...] = (TableSpec(),)
    formats: tuple[str, ...] = FORMATS
    curves: tuple[CurvesSpec, ...] = ()
    heatmaps: tuple[HeatmapSpec, ...] = ()
    bench_json: str | Path | None = None
    where: tuple[str, ...] = ()
    diverged_as: str = "last"
    num_classes: int | None = None
    title: str = "byzbench report"
    std_ddof: int = 1


@dataclass
class Report:
    """What `build_report` made: the frame, the tables and the files (name → path)."""

    frame: Frame
    tables: list[PivotTable]
    paths: dict[str, Path] = field(default_factory=dict)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def build_report(source: ResultsStore | str | os.PathLike[str] | Iterable[RunRecord], spec: ReportSpec,
                 out_dir: str | Path, *, metrics: Mapping[str, Any] | None = None) -> Report:
    """Tables (one file per table and format), figures (PNG) and, with ``html`` among the
    formats, ``report.html`` embedding them all, written under ``out_dir``.

    ``source``: a store, a path to one, or `RunRecord` objects with ``metrics`` (run id →
    round metrics). File names: ``<metric>__<rows>__<cols>.<md|tex|csv>``,
    ``curves_<key>[_by_<facet>].png``, ``heatmap_<metric>_<x>_<y>[_by_<facet>].png``,
    ``runtime.png``, ``report.html``.
    """
    for fmt in spec.formats:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}", "--format")
    frame = load_frame(source, where=spec.where, diverged_as=spec.diverged_as, num_classes=spec.num_classes,
                       metrics=metrics)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = [pivot_table(frame, t.rows, t.cols, t.metric, std_ddof=t.std_ddof, attack_axis=t.attack_axis,
                          worst_case=t.worst_case, digits=t.digits, title=t.title) for t in spec.tables]
    report = Report(frame, tables)
    for t, table in zip(spec.tables, tables):
        for fmt in (f for f in spec.formats if f != "html"):
            path = out / f"{t.slug}{SUFFIX[fmt]}"
            path.write_text(table.render(fmt), encoding="utf-8")
            report.paths[path.name] = path
    figures = _figures(frame, spec, out, report.paths)
    if "html" in spec.formats:
        report.paths["html"] = write_html(out / "report.html", tables, figures, title=spec.title,
                                          store=frame.source, n_runs=len(frame.rows),
                                          extra=_header_lines(frame))
    return report


def _figures(frame: Frame, spec: ReportSpec, out: Path, paths: dict[str, Path]) -> list[FigureItem]:
    """Draw every figure of ``spec`` into ``out``; record the paths; return them captioned."""
    items = []
    for c in spec.curves:
        path = accuracy_curves(frame, c.key, out / f"{c.slug}.png", facet=c.facet, std_ddof=spec.std_ddof)
        items.append(FigureItem(f"Test accuracy by {c.key}" + (f", one panel per {c.facet}" if c.facet else "")
                                + f": mean over runs, band ±1 std (ddof={spec.std_ddof}).", path))
    for h in spec.heatmaps:
        path = heatmap(frame.select(h.where), h.x, h.y, out / f"{h.slug}.png", metric=h.metric, facet=h.facet)
        items.append(FigureItem(f"Mean {METRIC_TEXT[h.metric][0]} over {h.x} × {h.y}"
                                + (f", one panel per {h.facet}" if h.facet else "")
                                + (f", runs with {'; '.join(h.where)}" if h.where else "")
                                + "; a missing key (e.g. β of an IID partition) is shown as ∞.", path))
    if spec.bench_json is not None:
        path = runtime_bars(spec.bench_json, out / "runtime.png")
        items.append(FigureItem(f"Time per call of each rule ({Path(spec.bench_json).name}), "
                                "as a multiple of one read of the input (the floor).", path))
    for item in items:
        paths[Path(item.png).name] = Path(item.png)
    return items


def _header_lines(frame: Frame) -> list[tuple[str, str]]:
    lines = []
    if frame.where:
        lines.append(("filter", "; ".join(frame.where)))
    left = ", ".join(f"{k} {v}" for k, v in frame.skipped.items() if v)
    if left:
        lines.append(("left out", left))
    return lines


__all__ = [
    "DIVERGED_AS", "FORMATS", "METRICS", "Cell", "CurvesSpec", "FigureItem", "Frame", "HeatmapSpec",
    "PivotTable", "RenderCheck", "Report", "ReportSpec", "TableSpec", "accuracy_curves", "build_report",
    "find_browser", "heatmap", "heatmap_grid", "load_frame", "pivot_table", "render_check", "render_html",
    "runtime_bars", "screenshot", "write_html",
]
