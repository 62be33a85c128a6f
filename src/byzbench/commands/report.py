"""``byzbench report DB``: paper-style tables, figures and an HTML report from a results store.

    byzbench report results.db --rows attack --cols defense --metric max_accuracy
        [--where key=value ...] [--format md,latex,csv,html] [--out DIR]
        [--curves KEY[,facet KEY]] [--heatmap KEY_X,KEY_Y[,facet KEY]] [--bench-json FILE]
        [--diverged-as last|chance|exclude] [--std-ddof 1] [--num-classes C] [--screenshot]

Prints the Markdown table on stdout and writes the files under ``--out`` (listed on
stderr); ``--screenshot`` also opens the HTML report in a headless Chromium, saves
``report.png`` and checks that the rendered page holds the tables and images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from byzbench.errors import ConfigError

FACET = "facet"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``byzbench report``."""
    from byzbench.report.frame import DIVERGED_AS, METRICS

    p = subparsers.add_parser("report", help="tables (Markdown, LaTeX, CSV), figures and an HTML report "
                                             "from a results store")
    p.add_argument("db", metavar="DB", help="the results store (SQLite file)")
    p.add_argument("--rows", default="attack", help="comma-separated row keys, default attack")
    p.add_argument("--cols", default="defense", help="comma-separated column keys, default defense")
    p.add_argument("--metric", default="max_accuracy", choices=METRICS,
                   help="the cell value, default max_accuracy (largest test accuracy during training)")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="keep runs whose KEY equals VALUE (repeat a key for alternatives)")
    p.add_argument("--format", default="md,latex,csv,html", help="comma-separated: md, latex, csv, html")
    p.add_argument("--out", type=Path, default=Path("report"), help="output folder, default ./report")
    p.add_argument("--curves", action="append", default=[], metavar="KEY[,facet KEY]",
                   help="accuracy curves by KEY (mean ± std band), one panel per facet value")
    p.add_argument("--heatmap", action="append", default=[], metavar="KEY_X,KEY_Y[,facet KEY]",
                   help="mean metric over KEY_X × KEY_Y, e.g. attack.z,partition.beta,facet defense")
    p.add_argument("--bench-json", type=Path, metavar="FILE",
                   help="runtime bars from `byzbench bench defenses --json FILE`")
    p.add_argument("--diverged-as", default="last", choices=DIVERGED_AS,
                   help="a diverged run's accuracy: last (last before divergence, default), chance, exclude")
    p.add_argument("--std-ddof", type=int, default=1, help="std estimator: 1 (sample, default) or 0")
    p.add_argument("--num-classes", type=int, help="classes for the chance level (default: from the dataset)")
    p.add_argument("--attack-axis", default="auto", choices=("auto", "rows", "cols"),
                   help="the axis holding the attacks (worst cells are marked along the other)")
    p.add_argument("--title", default="byzbench report", help="title of the HTML report")
    p.add_argument("--screenshot", action="store_true",
                   help="render the HTML report in headless Chromium: report.png and a DOM check")
    p.set_defaults(func=run)


def split_keys(text: str, option: str) -> tuple[str, ...]:
    """``"a, b"`` → ``("a", "b")``; empty items are an error naming ``option``."""
    keys = tuple(k.strip() for k in text.split(","))
    if not all(keys):
        raise ConfigError(f"expected comma-separated keys, got {text!r}", option)
    return keys


def parse_facet(text: str, option: str, count: int) -> tuple[tuple[str, ...], str | None]:
    """``"k1,k2,facet k3"`` (or ``facet=k3``) → ``(("k1", "k2"), "k3")`` with ``count`` keys."""
    parts = split_keys(text, option)
    facet = None
    if parts[-1].startswith(FACET) and parts[-1][len(FACET):len(FACET) + 1] in (" ", "="):
        facet = parts[-1][len(FACET) + 1:].strip()
        parts = parts[:-1]
        if not facet:
            raise ConfigError(f"facet needs a key, got {text!r}", option)
    if len(parts) != count:
        want = "KEY" if count == 1 else "KEY_X,KEY_Y"
        raise ConfigError(f"expected {want}[,facet KEY], got {text!r}", option)
    return parts, facet


def spec_from_args(args: argparse.Namespace):
    """The `ReportSpec` the options describe."""
    from byzbench.report import CurvesSpec, HeatmapSpec, ReportSpec, TableSpec

    curves = [parse_facet(c, "--curves", 1) for c in args.curves]
    heatmaps = [parse_facet(h, "--heatmap", 2) for h in args.heatmap]
    table = TableSpec(rows=split_keys(args.rows, "--rows"), cols=split_keys(args.cols, "--cols"),
                      metric=args.metric, std_ddof=args.std_ddof, attack_axis=args.attack_axis)
    return ReportSpec(
        tables=(table,), formats=split_keys(args.format, "--format"),
        curves=tuple(CurvesSpec(keys[0], facet) for keys, facet in curves),
        heatmaps=tuple(HeatmapSpec(keys[0], keys[1], facet, args.metric) for keys, facet in heatmaps),
        bench_json=args.bench_json, where=tuple(args.where), diverged_as=args.diverged_as,
        num_classes=args.num_classes, title=args.title, std_ddof=args.std_ddof)


def run(args: argparse.Namespace) -> int:
    from byzbench.report import build_report

    if not Path(args.db).is_file():
        raise ConfigError(f"results store not found: {args.db}", "DB")
    spec = spec_from_args(args)
    if args.screenshot and "html" not in spec.formats:
        raise ConfigError("needs html among the formats", "--screenshot")
    report = build_report(args.db, spec, args.out)
    print(report.tables[0].to_markdown(), end="")
    for path in report.paths.values():
        print(f"wrote {path}", file=sys.stderr)
    if args.screenshot:
        figures = sum(name.endswith(".png") for name in report.paths)
        return _screenshot(report.paths["html"], len(report.tables), figures)
    return 0


def _screenshot(html: Path, n_tables: int, n_figures: int) -> int:
    """Screenshot the report and check that its rendered DOM holds ``n_tables`` tables and
    ``n_figures`` embedded images; 1 if it does not."""
    from byzbench.report.browser import render_check, screenshot

    png = screenshot(html, html.with_name("report.png"))
    check = render_check(html)
    print(f"wrote {png}", file=sys.stderr)
    print(f"rendered: {check.tables} table(s), {check.cells} cells, {check.images} image(s) "
          f"({check.data_images} embedded), {len(check.external)} external reference(s)", file=sys.stderr)
    return 0 if check.ok and check.tables == n_tables and check.data_images == n_figures else 1
