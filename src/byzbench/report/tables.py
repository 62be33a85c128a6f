"""Paper-style tables: runs grouped by row keys × column keys, aggregated over seeds.

Each cell holds the mean ± std of one metric over the runs of its group (normally the
seeds of one configuration) and their number n; accuracies are printed in %, as the
papers print them. With the attacks on the rows and the defenses on the columns:

- the worst cell of each column — the strongest attack against each defense — is marked:
  bold in Markdown, LaTeX and HTML, ``*`` in CSV;
- a **worst-case row** holds the worst cell of each column (a defense's worst case), and a
  **worst-case column** the worst cell of each row; their crossing is the worst of all.

This is how Errami, El Hammouti, Bergou, "Stress-Testing Byzantine Defenses under Data
Heterogeneity" (workshop version of IEEE Access 13, 2025) judge a defense. Row keys that
are not attack keys (``rows=("partition.beta", "attack")``, as in its Table 1) split the
rows into **blocks**: the worst attack is marked, and a worst-case row added, within each
block, plus an overall worst-case row when there are several blocks. ``attack_axis``
says which axis holds the attacks (``auto``: the one with a key ``attack`` or
``attack.*``); with the attacks on the columns everything above is transposed.

"Worst" is the lowest mean for accuracies and the highest for loss and time (``worse``).
The std uses ``std_ddof`` (1, the sample std, by default; 0 the population std); a cell
of a single run has no std under ddof 1 and shows its mean alone.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from byzbench.checks import check_ddof
from byzbench.errors import ConfigError, ParamError
from byzbench.report.frame import METRICS, Frame, value_order

ATTACK_AXES = ("auto", "rows", "cols")
WORSE = ("lower", "higher")
WORST_LABEL = "worst case"
ALL_LABEL = "all"
EMPTY = "–"
FORMATS = ("md", "latex", "csv", "html")
#: How each metric is described and scaled for printing.
METRIC_TEXT = {
    "max_accuracy": ("max test accuracy (%) over training", 100.0),
    "final_accuracy": ("final test accuracy (%)", 100.0),
    "final_loss": ("final test loss", 1.0),
    "wall_time_s": ("wall time (s)", 1.0),
}
_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                  "±": r"$\pm$", "∞": r"$\infty$", "–": "--", "—": "---", "<": r"\textless{}",
                  ">": r"\textgreater{}"}


@dataclass(frozen=True)
class Cell:
    """One aggregated cell: mean and std (None when undefined) of n values, in print units."""

    mean: float | None
    std: float | None
    n: int
    worst: bool = False

    @classmethod
    def of(cls, values: Sequence[float], ddof: int) -> Cell:
        """Mean and std (``ddof``) of ``values``; an empty cell for none."""
        if not values:
            return cls(None, None, 0)
        arr = np.asarray(values, dtype=np.float64)
        std = float(arr.std(ddof=ddof)) if arr.size > ddof else None
        return cls(float(arr.mean()), std, int(arr.size))


@dataclass(frozen=True)
class Line:
    """A printed row or column: a group (``members`` = its one index into the labels) or a
    worst-case summary over ``members``; ``texts`` are its label texts, one per key."""

    texts: tuple[str, ...]
    members: tuple[int, ...]
    summary: bool = False
    values: tuple[Any, ...] = ()


@dataclass
class PivotTable:
    """A grouped table (see the module doc).

    ``cells[i][j]`` is the group of ``row_labels[i]`` × ``col_labels[j]`` (worst cells
    marked); ``row_lines`` and ``col_lines`` are the printed rows and columns, groups and
    worst-case summaries in order; `cell` gives the cell at any crossing of them.
    """

    title: str
    metric: str
    row_keys: tuple[str, ...]
    col_keys: tuple[str, ...]
    row_labels: list[tuple[Any, ...]]
    col_labels: list[tuple[Any, ...]]
    cells: list[list[Cell]]
    row_lines: list[Line]
    col_lines: list[Line]
    worse: str = "lower"
    notes: list[str] = field(default_factory=list)
    digits: int = 2
    usual_n: int = 0

    # ---------------------------------------------------------------- cells
    def cell(self, row: Line, col: Line) -> Cell:
        """The group cell, or the worst (unmarked) over a summary line's members."""
        if not row.summary and not col.summary:
            return self.cells[row.members[0]][col.members[0]]
        return worst_of([self.cells[i][j] for i in row.members for j in col.members], self.worse)

    @property
    def worst_row(self) -> list[Cell] | None:
        """The last (overall) worst-case row's cells under each group column."""
        last = self.row_lines[-1]
        return [self.cell(last, c) for c in self.col_lines if not c.summary] if last.summary else None

    @property
    def worst_col(self) -> list[Cell] | None:
        """The last (overall) worst-case column's cells beside each group row."""
        last = self.col_lines[-1]
        return [self.cell(r, last) for r in self.row_lines if not r.summary] if last.summary else None

    @property
    def corner(self) -> Cell | None:
        """The worst cell of the whole table (None without worst-case lines)."""
        if not (self.row_lines[-1].summary and self.col_lines[-1].summary):
            return None
        return self.cell(self.row_lines[-1], self.col_lines[-1])

    def text(self, cell: Cell, pm: str = "±") -> str:
        """``mean ± std`` with ``digits`` decimals, ``(n=k)`` when k is not the usual n."""
        if cell.mean is None:
            return EMPTY
        out = f"{cell.mean:.{self.digits}f}"
        if cell.std is not None:
            out += f" {pm} {cell.std:.{self.digits}f}"
        if cell.n != self.usual_n:
            out += f" (n={cell.n})"
        return out

    def header(self) -> list[str]:
        """Row-key names, then one text per printed column."""
        return [*self.row_keys, *(" / ".join(t for t in c.texts if t) for c in self.col_lines)]

    def grid(self) -> list[tuple[Line, list[Cell]]]:
        """Each printed row with its cells under every printed column."""
        return [(r, [self.cell(r, c) for c in self.col_lines]) for r in self.row_lines]

    # ---------------------------------------------------------------- formats
    def to_markdown(self) -> str:
        """A GitHub-flavoured Markdown table, worst cells in bold, then the notes."""
        head = self.header()
        k = len(self.row_keys)
        lines = [_md_row([_md_escape(h) for h in head]), _md_row([":--"] * k + ["--:"] * (len(head) - k))]
        for row, cells in self.grid():
            texts = [f"**{self.text(c)}**" if c.worst else self.text(c) for c in cells]
            lines.append(_md_row([_md_escape(t) for t in row.texts] + texts))
        title = [f"*{_md_escape(self.title)}.*", ""] if self.title else []
        return "\n".join([*title, *lines, "", *self.notes]).strip() + "\n"

    def to_latex(self) -> str:
        """A booktabs ``table`` (escaped text, worst cells in ``\\textbf``), notes below."""
        head = self.header()
        k = len(self.row_keys)
        lines = [r"\begin{table}[t]", r"\centering"]
        if self.title:
            lines.append(rf"\caption{{{latex_escape(self.title)}}}")
        lines += [rf"\begin{{tabular}}{{{'l' * k}{'r' * (len(head) - k)}}}", r"\toprule",
                  " & ".join(latex_escape(h) for h in head) + r" \\", r"\midrule"]
        previous = False  # whether the line above was a worst-case line
        for row, cells in self.grid():
            texts = [latex_escape(self.text(c)) for c in cells]
            texts = [rf"\textbf{{{t}}}" if c.worst else t for t, c in zip(texts, cells)]
            if row.summary != previous:
                lines.append(r"\midrule")
            lines.append(" & ".join([*(latex_escape(t) for t in row.texts), *texts]) + r" \\")
            previous = row.summary
        lines += [r"\bottomrule", r"\end{tabular}"]
        if self.notes:
            lines += [r"\par\smallskip", r"{\footnotesize " + " ".join(latex_escape(n) for n in self.notes) + "}"]
        lines.append(r"\end{table}")
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        """A ``<table>`` with a caption, worst cells in ``<strong>``, notes below."""
        esc = html.escape
        out = ['<table class="pivot">']
        if self.title:
            out.append(f"<caption>{esc(self.title)}</caption>")
        out.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in self.header()) + "</tr></thead>")
        out.append("<tbody>")
        for row, cells in self.grid():
            tds = [f'<th scope="row">{esc(t)}</th>' for t in row.texts]
            for col, c in zip(self.col_lines, cells):
                text = esc(self.text(c))
                if c.worst:
                    tds.append(f'<td class="worst"><strong>{text}</strong></td>')
                else:
                    tds.append(f'<td class="summary">{text}</td>' if col.summary else f"<td>{text}</td>")
            out.append(('<tr class="summary">' if row.summary else "<tr>") + "".join(tds) + "</tr>")
        out.append("</tbody></table>")
        out += [f'<p class="note">{esc(n)}</p>' for n in self.notes]
        return "\n".join(out) + "\n"

    def to_csv(self) -> str:
        """Tidy CSV, one line per printed cell: the row and column key values (empty for
        the attack keys of a worst-case line), ``metric``, ``mean``, ``std``, ``n`` (print
        units, full precision), ``worst`` (``*`` on marked cells) and ``kind`` (``cell``,
        ``worst_case_row``, ``worst_case_col`` or ``worst_case``)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([*self.row_keys, *self.col_keys, "metric", "mean", "std", "n", "worst", "kind"])
        for row, cells in self.grid():
            for col, c in zip(self.col_lines, cells):
                kind = {(False, False): "cell", (True, False): "worst_case_row",
                        (False, True): "worst_case_col", (True, True): "worst_case"}[(row.summary, col.summary)]
                w.writerow([*_plain(row.values), *_plain(col.values), self.metric, _num(c.mean), _num(c.std),
                            str(c.n), "*" if c.worst else "", kind])
        return buf.getvalue()

    def render(self, fmt: str) -> str:
        """The table in ``fmt``: ``md``, ``latex``, ``csv`` or ``html``."""
        writers = {"md": self.to_markdown, "latex": self.to_latex, "csv": self.to_csv, "html": self.to_html}
        if fmt not in writers:
            raise ConfigError(f"unknown format {fmt!r}; valid: {', '.join(writers)}", "--format")
        return writers[fmt]()


# ------------------------------------------------------------------------ text helpers
def label_text(value: Any) -> str:
    """A group value as printed: numbers without a trailing ``.0``, None as ``none``."""
    if value is None:
        return "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return "[" + ", ".join(label_text(v) for v in value) + "]"
    return str(value)


def _plain(values: tuple[Any, ...]) -> list[str]:
    return ["" if v is _ABSENT else label_text(v) for v in values]


def _num(value: float | None) -> str:
    return "" if value is None else repr(value)


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|").replace("*", r"\*")


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters (and ±, ∞, dashes, <, >) escaped."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


# ------------------------------------------------------------------------ worst cells
def _is_worse(a: float, b: float, worse: str) -> bool:
    return a < b if worse == "lower" else a > b


def worst_of(cells: Sequence[Cell], worse: str = "lower") -> Cell:
    """The worst non-empty cell (the first on ties), unmarked; an empty cell if none."""
    found: Cell | None = None
    for c in cells:
        if c.mean is not None and (found is None or _is_worse(c.mean, found.mean, worse)):
            found = c
    return replace(found, worst=False) if found is not None else Cell(None, None, 0)


def _mark(cells: list[list[Cell]], blocks: list[list[int]], worse: str) -> list[list[Cell]]:
    """Mark, in each column and each block of rows, the cell(s) with the worst mean."""
    out = [list(row) for row in cells]
    for block in blocks:
        for j in range(len(cells[0]) if cells else 0):
            w = worst_of([cells[i][j] for i in block], worse).mean
            for i in block:
                out[i][j] = replace(cells[i][j], worst=w is not None and cells[i][j].mean == w)
    return out


# ------------------------------------------------------------------------ lines
_ABSENT = object()  # a key position left empty on a worst-case line


def _is_attack_key(key: str) -> bool:
    return key.split(".")[0] == "attack"


def _block_positions(keys: tuple[str, ...], attack_axis: bool) -> tuple[int, ...]:
    """Positions of the keys that split the attack axis into blocks (none on the other axis)."""
    if not attack_axis or not any(_is_attack_key(k) for k in keys):
        return ()
    return tuple(i for i, k in enumerate(keys) if not _is_attack_key(k))


def _block_groups(labels: list[tuple[Any, ...]], block_pos: tuple[int, ...]) -> dict[tuple, list[int]]:
    """Block values → indices of its labels, blocks and members in `value_order`."""
    def block_of(label: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(label[p] for p in block_pos)

    order = sorted(range(len(labels)), key=lambda i: (_label_order(block_of(labels[i])), _label_order(labels[i])))
    blocks: dict[tuple, list[int]] = {}
    for i in order:
        blocks.setdefault(block_of(labels[i]), []).append(i)
    return blocks


def _lines(labels: list[tuple[Any, ...]], block_pos: tuple[int, ...], summaries: bool) -> list[Line]:
    """The printed lines: groups by block, each block followed by its worst-case line, then
    an overall one when there are several blocks."""
    blocks = _block_groups(labels, block_pos)
    width = len(labels[0]) if labels else 0
    lines: list[Line] = []
    for block, members in blocks.items():
        lines += [Line(tuple(label_text(v) for v in labels[i]), (i,), False, labels[i]) for i in members]
        if summaries:
            lines.append(_summary_line(block, block_pos, width, members))
    if summaries and len(blocks) > 1:
        lines.append(_summary_line(None, block_pos, width, [i for m in blocks.values() for i in m]))
    return lines


def _summary_line(block: tuple | None, block_pos: tuple[int, ...], width: int, members: list[int]) -> Line:
    texts, values = [""] * width, [_ABSENT] * width
    for p, v in zip(block_pos, block if block is not None else [None] * len(block_pos)):
        texts[p] = ALL_LABEL if block is None else label_text(v)
        values[p] = _ABSENT if block is None else v
    free = [i for i in range(width) if i not in block_pos]
    texts[free[0] if free else 0] = WORST_LABEL
    return Line(tuple(texts), tuple(members), True, tuple(values))


def _label_order(label: tuple[Any, ...]) -> tuple:
    return tuple(value_order(v) for v in label)


# ------------------------------------------------------------------------ building
def pivot_table(frame: Frame, rows: Sequence[str] = ("attack",), cols: Sequence[str] = ("defense",),
                metric: str = "max_accuracy", *, std_ddof: int = 1, attack_axis: str = "auto",
                worse: str | None = None, worst_case: bool = True, digits: int = 2,
                title: str | None = None) -> PivotTable:
    """Group ``frame``'s rows by ``rows`` × ``cols`` and aggregate ``metric`` (module doc).

    ``attack_axis``: ``rows``, ``cols`` or ``auto``; ``worse``: ``lower`` (default for
    accuracies) or ``higher`` (default for loss and time); ``worst_case``: add the
    worst-case lines; ``digits``: decimals printed. Groups are sorted with numbers
    numerically and None last; a non-finite value is left out and counted in the notes.
    """
    rows, cols = tuple(rows), tuple(cols)
    _check_args(frame, rows, cols, metric, attack_axis, worse, digits)
    ddof = _ddof(std_ddof)
    worse = worse or ("higher" if metric in ("final_loss", "wall_time_s") else "lower")
    text, scale = METRIC_TEXT[metric]
    groups, dropped = _groups(frame, rows, cols, metric, scale)
    row_labels = sorted({r for r, _ in groups}, key=_label_order)
    col_labels = sorted({c for _, c in groups}, key=_label_order)
    cells = [[Cell.of(groups.get((r, c), []), ddof) for c in col_labels] for r in row_labels]
    axis = _attack_axis(attack_axis, rows, cols)
    row_pos, col_pos = _block_positions(rows, axis == "rows"), _block_positions(cols, axis == "cols")
    row_lines, col_lines = _lines(row_labels, row_pos, worst_case), _lines(col_labels, col_pos, worst_case)
    blocks = list(_block_groups(*((row_labels, row_pos) if axis == "rows" else (col_labels, col_pos))).values())
    if axis == "rows":
        cells = _mark(cells, blocks, worse)
    else:
        cells = [list(r) for r in zip(*_mark([list(c) for c in zip(*cells)], blocks, worse))]
    table = PivotTable(title if title is not None else f"{text}: rows {', '.join(rows)}; columns {', '.join(cols)}",
                       metric, rows, cols, row_labels, col_labels, cells, row_lines, col_lines, worse, digits=digits)
    table.usual_n = _usual_n(cells)
    table.notes = _notes(frame, table, text, ddof, axis, dropped, _pooled_keys(frame, rows, cols))
    return table


def _check_args(frame: Frame, rows: tuple[str, ...], cols: tuple[str, ...], metric: str,
                attack_axis: str, worse: str | None, digits: int) -> None:
    if metric not in METRICS:
        raise ConfigError(f"must be one of {', '.join(METRICS)}, got {metric!r}", "metric")
    if attack_axis not in ATTACK_AXES:
        raise ConfigError(f"must be one of {', '.join(ATTACK_AXES)}, got {attack_axis!r}", "attack_axis")
    if worse is not None and worse not in WORSE:
        raise ConfigError(f"must be one of {', '.join(WORSE)}, got {worse!r}", "worse")
    if isinstance(digits, bool) or not isinstance(digits, int) or not 0 <= digits <= 10:
        raise ConfigError(f"must be an integer in [0, 10], got {digits!r}", "digits")
    if not rows or not cols:
        raise ConfigError("needs at least one key", "rows" if not rows else "cols")
    if set(rows) & set(cols):
        raise ConfigError(f"a key cannot be on both axes: {', '.join(sorted(set(rows) & set(cols)))}", "cols")
    if not frame.rows:
        raise ConfigError("no runs to tabulate (none ended, or none match the filters)", "--where")
    frame.check_keys(rows, "rows")
    frame.check_keys(cols, "cols")


def _ddof(value: Any) -> int:
    try:
        return check_ddof(value)
    except ParamError as exc:
        raise ConfigError(exc.detail, "std_ddof") from exc


def _groups(frame: Frame, rows: tuple[str, ...], cols: tuple[str, ...], metric: str,
            scale: float) -> tuple[dict[tuple, list[float]], int]:
    """(row label, col label) → scaled finite values; and how many values were not finite."""
    out: dict[tuple, list[float]] = {}
    dropped = 0
    for run in frame.rows:
        values = out.setdefault((tuple(run.get(k) for k in rows), tuple(run.get(k) for k in cols)), [])
        value = run.get(metric)
        if value is not None and math.isfinite(value):
            values.append(float(value) * scale)
        else:
            dropped += value is not None
    return out, dropped


def _attack_axis(choice: str, rows: tuple[str, ...], cols: tuple[str, ...]) -> str:
    if choice != "auto":
        return choice
    on_cols, on_rows = (any(_is_attack_key(k) for k in keys) for keys in (cols, rows))
    return "cols" if on_cols and not on_rows else "rows"


def _usual_n(cells: list[list[Cell]]) -> int:
    counts = Counter(c.n for row in cells for c in row if c.n)
    return max(counts, key=lambda n: (counts[n], n)) if counts else 0


def _pooled_keys(frame: Frame, rows: tuple[str, ...], cols: tuple[str, ...]) -> list[str]:
    """Config keys (besides seed and the table's keys) that vary inside some cell."""
    columns = frame.columns
    ignore = {*rows, *cols, "seed", "name", "run_id", "status", *METRICS, "diverged_round"}
    ignore |= {k for k in columns if any(k.startswith(r + ".") or r.startswith(k + ".") for r in (*rows, *cols))}
    keys = [k for k in columns if k not in ignore]
    seen: dict[tuple, dict[str, set]] = {}
    for run in frame.rows:
        group = seen.setdefault(tuple(run.get(k) for k in (*rows, *cols)), {})
        for k in keys:
            group.setdefault(k, set()).add(run.get(k))
    return sorted({k for group in seen.values() for k, vals in group.items() if len(vals) > 1})


def _notes(frame: Frame, table: PivotTable, text: str, ddof: int, axis: str, dropped: int,
           pooled: list[str]) -> list[str]:
    lowest = "lowest" if table.worse == "lower" else "highest"
    along, marked, per = ("column", table.row_keys, table.col_keys) if axis == "rows" else \
        ("row", table.col_keys, table.row_keys)
    blocked = _block_positions(marked, True)
    notes = [f"Cells: {text}, mean ± std (ddof={ddof}) over n = {table.usual_n} runs (seeds)"
             + " unless marked (n=k)." if table.usual_n else f"Cells: {text}."]
    notes.append(f"Bold: the {lowest} mean of each {along}"
                 + (f" within each {', '.join(marked[p] for p in blocked)}" if blocked else "")
                 + f" (the worst {', '.join(k for i, k in enumerate(marked) if i not in blocked)}"
                 + f" for each {', '.join(per)}).")
    if table.row_lines[-1].summary:
        notes.append(f"'{WORST_LABEL}': the {lowest} mean of the lines above it or to its left.")
    notes.append(diverged_note(frame))
    left = ", ".join(f"{v} {k}" for k, v in frame.skipped.items() if v)
    if left:
        notes.append(f"Left out: {left} run(s).")
    if dropped:
        notes.append(f"{dropped} non-finite value(s) left out.")
    if frame.where:
        notes.append(f"Runs with {'; '.join(frame.where)}.")
    if pooled:
        notes.append(f"Cells pool runs that differ in: {', '.join(pooled)}.")
    return [n for n in notes if n]


def diverged_note(frame: Frame) -> str:
    """How diverged runs were counted (empty when the frame has none)."""
    if frame.diverged_as == "exclude":
        k = frame.skipped.get("diverged", 0)
        return f"{k} diverged run(s) left out (diverged_as=exclude)." if k else ""
    if not frame.diverged:
        return ""
    levels = ", ".join(f"{100 * v:.4g}%" for v in sorted(set(frame.chance.values())))
    chance = f"chance level ({levels})" if levels else "chance level 1/C"
    if frame.diverged_as == "chance":
        return f"{frame.diverged} diverged run(s) count at {chance} (diverged_as=chance)."
    return (f"{frame.diverged} diverged run(s) count with their last test accuracy before divergence, "
            f"{chance} if none was recorded (diverged_as=last).")


__all__ = [
    "FORMATS",
    "Cell",
    "Line",
    "PivotTable",
    "diverged_note",
    "label_text",
    "latex_escape",
    "pivot_table",
    "worst_of",
]
