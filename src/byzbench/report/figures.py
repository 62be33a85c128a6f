"""Report figures, drawn with matplotlib's Agg canvas (no pyplot state, rcParams only
inside `matplotlib.rc_context`), saved as PNG without a timestamp:

- `accuracy_curves`: test accuracy against the round, one line per group (the mean over
  its runs) with a ±std band, optionally one panel per value of a facet key;
- `heatmap`: mean accuracy over two keys with annotated cells, like Figure 1 of Errami,
  El Hammouti, Bergou, "Stress-Testing Byzantine Defenses under Data Heterogeneity"
  (attack strength z × Dirichlet β; workshop version of IEEE Access 13, 2025); numeric
  axes are ordered, and None (e.g. β of an IID run) is drawn last, labelled ``∞``;
- `runtime_bars`: time per call of each rule from ``byzbench bench defenses --json``, like
  that paper's Figure 2, with the floor (one read of the input) as a line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from byzbench.checks import check_ddof
from byzbench.errors import ConfigError, ParamError
from byzbench.report.frame import METRICS, Frame, value_order
from byzbench.report.tables import METRIC_TEXT, label_text

STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.grid": False, "savefig.facecolor": "white"}
DPI = 110
MAX_PANEL_COLS = 3


# ------------------------------------------------------------------------ plumbing
def _figure(n_panels: int, panel: tuple[float, float]) -> tuple[Any, list[Any]]:
    """An Agg figure with ``n_panels`` axes in a grid of at most `MAX_PANEL_COLS` columns."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(MAX_PANEL_COLS, max(n_panels, 1))
    nrows = math.ceil(max(n_panels, 1) / ncols)
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:max(n_panels, 1)]


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def _facets(frame: Frame, facet: str | None) -> list[Any]:
    return frame.values(facet) if facet else [None]


def _facet_rows(frame: Frame, facet: str | None, value: Any) -> list[dict[str, Any]]:
    return frame.rows if facet is None else [r for r in frame.rows if r.get(facet) == value]


def _ddof(value: Any) -> int:
    try:
        return check_ddof(value)
    except ParamError as exc:
        raise ConfigError(exc.detail, "std_ddof") from exc


# ------------------------------------------------------------------------ curves
def mean_curve(series: Sequence[Sequence[tuple[int, float]]], ddof: int = 1
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rounds, mean, std, count) over the union of rounds of several runs' series.

    At each round the runs that have a value there count; std is NaN where count ≤ ddof.
    """
    rounds = np.array(sorted({r for s in series for r, _ in s}), dtype=np.int64)
    grid = np.full((len(series), rounds.size), np.nan)
    for i, s in enumerate(series):
        if s:
            r, v = np.asarray(s, dtype=np.float64).T
            grid[i, np.searchsorted(rounds, r.astype(np.int64))] = v
    ok = ~np.isnan(grid)
    count = ok.sum(axis=0)
    total = np.where(ok, grid, 0.0).sum(axis=0)
    mean = np.divide(total, count, out=np.full(rounds.size, np.nan), where=count > 0)
    sq = np.where(ok, (grid - mean) ** 2, 0.0).sum(axis=0)
    std = np.sqrt(np.divide(sq, count - ddof, out=np.full(rounds.size, np.nan), where=count > ddof))
    return rounds, mean, std, count


def accuracy_curves(frame: Frame, key: str, path: str | Path, *, facet: str | None = None,
                    std_ddof: int = 1, title: str | None = None) -> Path:
    """Test accuracy (%) per round: for each value of ``key``, the mean over its runs and a
    ±std band (``std_ddof``); one panel per value of ``facet``. Returns ``path``."""
    from matplotlib import rc_context

    frame.check_keys([key, *([facet] if facet else [])], "--curves")
    ddof = _ddof(std_ddof)
    facets = _facets(frame, facet)
    with rc_context(STYLE):
        fig, axes = _figure(len(facets), (4.6, 3.4))
        for ax, fval in zip(axes, facets):
            rows = _facet_rows(frame, facet, fval)
            for value in sorted({r.get(key) for r in rows}, key=value_order):
                runs = [frame.curves.get(r["run_id"], []) for r in rows if r.get(key) == value]
                rounds, mean, std, _ = mean_curve(runs, ddof)
                line = ax.plot(rounds, 100 * mean, lw=1.4, label=f"{label_text(value)} (n={len(runs)})")[0]
                band = np.nan_to_num(std)
                ax.fill_between(rounds, 100 * (mean - band), 100 * (mean + band), color=line.get_color(),
                                alpha=0.2, lw=0)
            ax.set(xlabel="round", ylabel="test accuracy (%)", ylim=(0, 100),
                   title=f"{facet} = {label_text(fval)}" if facet else key)
            ax.legend(fontsize=7, title=key, title_fontsize=7, loc="lower right")
        fig.suptitle(title or f"Test accuracy, mean ± std over runs, by {key}")
        return _save(fig, path)


# ------------------------------------------------------------------------ heatmaps
@dataclass
class HeatmapGrid:
    """Mean metric (print units) per facet × y × x; NaN where no run; counts alike."""

    x_key: str
    y_key: str
    facet_key: str | None
    xs: list[Any]
    ys: list[Any]
    facets: list[Any]
    values: np.ndarray
    counts: np.ndarray


def heatmap_grid(frame: Frame, x: str, y: str, metric: str = "max_accuracy",
                 facet: str | None = None) -> HeatmapGrid:
    """The means behind `heatmap`: values ordered by `value_order` (None last)."""
    if metric not in METRICS:
        raise ConfigError(f"must be one of {', '.join(METRICS)}, got {metric!r}", "metric")
    frame.check_keys([x, y, *([facet] if facet else [])], "--heatmap")
    scale = METRIC_TEXT[metric][1]
    xs, ys, fs = frame.values(x), frame.values(y), _facets(frame, facet)
    total = np.zeros((len(fs), len(ys), len(xs)))
    counts = np.zeros_like(total, dtype=np.int64)
    index = [{v: i for i, v in enumerate(vals)} for vals in (fs, ys, xs)]
    for r in frame.rows:
        v = r.get(metric)
        if v is None or not math.isfinite(v):
            continue
        at = (index[0][r.get(facet)] if facet else 0, index[1][r.get(y)], index[2][r.get(x)])
        total[at] += scale * v
        counts[at] += 1
    values = np.divide(total, counts, out=np.full(total.shape, np.nan), where=counts > 0)
    return HeatmapGrid(x, y, facet, xs, ys, fs, values, counts)


def axis_label(value: Any, none_label: str = "∞") -> str:
    """A heatmap tick: None as ``none_label`` (β of an IID partition is ∞)."""
    return none_label if value is None else label_text(value)


def heatmap(frame: Frame, x: str, y: str, path: str | Path, *, metric: str = "max_accuracy",
            facet: str | None = None, none_label: str = "∞", digits: int = 1, cmap: str = "viridis",
            title: str | None = None) -> Path:
    """Mean ``metric`` over ``x`` × ``y`` (one panel per ``facet`` value, one colour scale;
    0–100 for accuracies), each cell annotated with its value. Returns ``path``."""
    from matplotlib import rc_context

    grid = heatmap_grid(frame, x, y, metric, facet)
    text, scale = METRIC_TEXT[metric]
    finite = grid.values[np.isfinite(grid.values)]
    lo, hi = (0.0, 100.0) if scale == 100.0 else (float(finite.min(initial=0.0)), float(finite.max(initial=1.0)))
    with rc_context(STYLE):
        fig, axes = _figure(len(grid.facets), (0.55 * len(grid.xs) + 2.2, 0.42 * len(grid.ys) + 1.9))
        for k, ax in enumerate(axes):
            image = _draw_heatmap(ax, grid, k, (lo, hi), none_label, digits, cmap)
            ax.set_title(f"{facet} = {label_text(grid.facets[k])}" if facet else "")
        fig.colorbar(image, ax=axes, label=text, shrink=0.9)
        fig.suptitle(title or f"{text} by {x} and {y}")
        return _save(fig, path)


def _draw_heatmap(ax: Any, grid: HeatmapGrid, k: int, limits: tuple[float, float], none_label: str,
                  digits: int, cmap: str) -> Any:
    """One panel: the image, its tick labels and the annotations of filled cells."""
    import matplotlib

    values = np.ma.masked_invalid(grid.values[k])
    colours = matplotlib.colormaps[cmap].with_extremes(bad="#dddddd")
    image = ax.imshow(values, origin="lower", cmap=colours, vmin=limits[0], vmax=limits[1], aspect="auto")
    ax.set_xticks(range(len(grid.xs)), [axis_label(v, none_label) for v in grid.xs])
    ax.set_yticks(range(len(grid.ys)), [axis_label(v, none_label) for v in grid.ys])
    ax.set(xlabel=grid.x_key, ylabel=grid.y_key)
    span = max(limits[1] - limits[0], 1e-12)
    for (i, j), v in np.ndenumerate(grid.values[k]):
        if np.isfinite(v):
            dark = (v - limits[0]) / span < 0.6  # viridis: light text on the dark lower range
            ax.text(j, i, f"{v:.{digits}f}", ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
    return image


# ------------------------------------------------------------------------ runtime
def load_bench(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A ``byzbench bench defenses --json`` result (a path or its parsed dict), checked."""
    if isinstance(source, Mapping):
        data = dict(source)
    else:
        try:
            data = json.loads(Path(source).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {source}: {exc}", "--bench-json") from exc
    if isinstance(data, dict) and "results" in data and "sizes" in data:
        raise ConfigError("a --sizes benchmark holds several sizes; give the JSON of a single-size run",
                          "--bench-json")
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or "floor_s" not in data:
        raise ConfigError("not the JSON of `byzbench bench defenses --json FILE` (needs rows and floor_s)",
                          "--bench-json")
    return data


def runtime_bars(bench: str | Path | Mapping[str, Any], path: str | Path, *, log: bool = True,
                 show_floor: bool = True, title: str | None = None) -> Path:
    """Horizontal bars of ms per call per rule (fastest first; pre-aggregators hatched,
    rules over their target outlined red), labelled with the multiple of the floor, and
    the floor as a dashed line; log scale by default. Rules that failed are named below."""
    from matplotlib import rc_context

    data = load_bench(bench)
    timed = sorted((r for r in data["rows"] if r.get("seconds") is not None), key=lambda r: r["seconds"])
    failed = [str(r.get("rule")) for r in data["rows"] if r.get("seconds") is None]
    if not timed:
        raise ConfigError("the benchmark has no timed rule", "--bench-json")
    ms = np.array([1e3 * r["seconds"] for r in timed])
    with rc_context(STYLE):
        fig, (ax,) = _figure(1, (7.0, 0.24 * len(timed) + 1.6))
        bars = ax.barh(np.arange(len(timed)), ms, color="#4c72b0")
        for bar, r in zip(bars, timed):
            if r.get("kind") == "pre-aggregator":
                bar.set(hatch="///", facecolor="#8da0cb")
            if r.get("status") == "FAIL":
                bar.set(edgecolor="#c03030", linewidth=1.5)
            if r.get("ratio") is not None:
                ax.annotate(f"{r['ratio']:.1f}×", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                            xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        ax.set_yticks(np.arange(len(timed)), [str(r["rule"]) for r in timed])
        ax.set_xscale("log" if log else "linear")
        ax.set_xlabel("ms per call (median)")
        if show_floor:
            ax.axvline(1e3 * data["floor_s"], color="black", ls="--", lw=1,
                       label=f"floor: one read of the input, {1e3 * data['floor_s']:.3g} ms")
            ax.legend(loc="lower right", fontsize=7)
        ax.set_title(title or _bench_title(data))
        if failed:
            fig.supxlabel(f"errors: {', '.join(failed)}", fontsize=7)
        return _save(fig, path)


def _bench_title(data: Mapping[str, Any]) -> str:
    return (f"bench defenses: n = {data.get('n')}, d = {data.get('d')}, f = {data.get('f')}, "
            f"{data.get('dtype')} on {data.get('device')}, {data.get('threads')} thread(s)")


__all__ = ["HeatmapGrid", "accuracy_curves", "axis_label", "heatmap", "heatmap_grid", "load_bench",
           "mean_curve", "runtime_bars"]
