"""One self-contained HTML report: inline CSS, the tables, the figures as base64 PNG data
URIs, and a header naming the store, the number of runs, the date and the byzbench
version. The page loads nothing from anywhere (no scripts, fonts, links or remote images),
so it can be mailed, archived or opened offline.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from byzbench import __version__
from byzbench.report.tables import PivotTable

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; background: #fff; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 0.15em 1em; font-size: 0.9em; color: #444; }
dl.meta dt { font-weight: 600; }
dl.meta dd { margin: 0; font-family: ui-monospace, monospace; }
table.pivot { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }
table.pivot caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.4em; }
table.pivot th, table.pivot td { padding: 0.25em 0.7em; border-bottom: 1px solid #e4e4e4; white-space: nowrap; }
table.pivot thead th { border-top: 2px solid #333; border-bottom: 1px solid #333; text-align: center; }
table.pivot tbody th { text-align: left; font-weight: normal; }
table.pivot td { text-align: right; font-variant-numeric: tabular-nums; }
table.pivot td.worst { background: #fde8e8; }
table.pivot td.summary, table.pivot tr.summary td, table.pivot tr.summary th { background: #f3f3f3; }
table.pivot tr.summary td, table.pivot tr.summary th { border-top: 1px solid #333; }
table.pivot tbody tr:last-child th, table.pivot tbody tr:last-child td { border-bottom: 2px solid #333; }
p.note { font-size: 0.8em; color: #555; margin: 0.15em 0; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #444; }
"""


@dataclass(frozen=True)
class FigureItem:
    """A figure of the report: a caption and a PNG (a file, or its bytes)."""

    caption: str
    png: Path | bytes

    def data_uri(self) -> str:
        raw = self.png if isinstance(self.png, bytes) else Path(self.png).read_bytes()
        return "data:image/png;base64," + base64.b64encode(raw).decode("ascii")


def render_html(tables: Sequence[PivotTable], figures: Sequence[FigureItem] = (), *,
                title: str = "byzbench report", store: str = "", n_runs: int | None = None,
                date: str | None = None, extra: Sequence[tuple[str, str]] = ()) -> str:
    """The report page as text (``date`` defaults to now, UTC; ``extra``: more header lines)."""
    esc = html.escape
    when = date or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = [("store", store), ("runs", "" if n_runs is None else str(n_runs)), ("date", when),
            ("byzbench", __version__), *extra]
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{esc(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
             f"<h1>{esc(title)}</h1>", '<dl class="meta">',
             *(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in meta if v), "</dl>"]
    for i, table in enumerate(tables, 1):
        parts += [f'<section class="table" id="table-{i}">', f"<h2>Table {i}</h2>", table.to_html(), "</section>"]
    for i, fig in enumerate(figures, 1):
        parts += [f'<section class="figure" id="figure-{i}">', f"<h2>Figure {i}</h2>", "<figure>",
                  f'<img src="{fig.data_uri()}" alt="{esc(fig.caption)}">',
                  f"<figcaption>Figure {i}. {esc(fig.caption)}</figcaption>", "</figure>", "</section>"]
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def write_html(path: str | Path, tables: Sequence[PivotTable], figures: Sequence[FigureItem] = (),
               **header: object) -> Path:
    """Write `render_html` (same keyword arguments) to ``path``; returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(tables, figures, **header), encoding="utf-8")  # type: ignore[arg-type]
    return path


__all__ = ["CSS", "FigureItem", "render_html", "write_html"]
