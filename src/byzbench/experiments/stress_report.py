"""The files of a stress test: worst-case table, per-level gauntlet tables, calibration
table, heatmaps and one self-contained HTML report (optionally screenshotted)."""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from byzbench.experiments.store import ResultsStore
from byzbench.experiments.stress import level_label, worst_case_table
from byzbench.experiments.sweep import Sweep

#: The strength parameter shown on a heatmap's x axis, per attack family.
HEATMAP_PARAMS = {"alie": "attack.z", "ipm": "attack.epsilon", "strike": "attack.nu"}


@dataclass
class CalibrationTable:
    """The calibrated strength of each parametrised attack per (defense, level): printed as
    (defense, level) × attack; the CSV has one line per proxy run with its accuracy."""

    attacks: list[str]
    rows: list[tuple[str, str, dict[str, str]]]  # defense, level, attack → "param=value"
    scores: list[tuple[str, str, str, str, Any, float]]  # defense, level, attack, param, value, accuracy

    def caption(self) -> str:
        return ("Calibrated attack strengths: per defense and heterogeneity level, the value with the "
                "lowest proxy accuracy (short-horizon runs, first seed); every proxy score is in "
                "calibration.csv.")

    def _grid(self) -> tuple[list[str], list[list[str]]]:
        head = ["defense", "level", *self.attacks]
        return head, [[d, lv, *(chosen.get(a, "—") for a in self.attacks)] for d, lv, chosen in self.rows]

    def to_markdown(self) -> str:
        head, body = self._grid()
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines) + "\n\n" + self.caption() + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["defense", "level", "attack", "param", "value", "proxy_accuracy", "chosen"])
        chosen = {(d, lv): c for d, lv, c in self.rows}
        for d, lv, a, param, value, acc in self.scores:
            pick = chosen.get((d, lv), {}).get(a) == f"{param}={value}"
            writer.writerow([d, lv, a, param, value, "" if acc != acc else f"{acc:.6f}", "*" if pick else ""])
        return buf.getvalue()

    def to_html(self) -> str:
        esc = html.escape
        head, body = self._grid()
        out = ['<table class="pivot">', "<caption>Calibrated attack strengths</caption>",
               "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead>", "<tbody>"]
        out += ["<tr>" + "".join(f'<td style="text-align:left">{esc(c)}</td>' for c in r) + "</tr>" for r in body]
        return "\n".join([*out, "</tbody>", "</table>", f'<p class="note">{esc(self.caption())}</p>'])


def calibration_table(calibrated: Sequence[Any]) -> CalibrationTable:
    attacks = list(dict.fromkeys(c.attack for c in calibrated))
    rows: dict[tuple[str, str], dict[str, str]] = {}
    scores = []
    for c in calibrated:
        level = level_label(c.beta)
        rows.setdefault((c.defense, level), {})[c.attack] = f"{c.param}={c.value}"
        scores += [(c.defense, level, c.attack, c.param, v, a) for v, a in c.scores]
    return CalibrationTable(attacks, [(d, lv, chosen) for (d, lv), chosen in rows.items()], scores)


def _frame(store: ResultsStore, sweep: Sweep):
    from byzbench.report import load_frame

    records = [r for r in (store.get_run(i) for i in store.sweep_run_ids(sweep.name)) if r is not None]
    return load_frame(records, metrics=store.round_metrics)


def write_stress_report(store: ResultsStore, settings: Any, calibrated: Sequence[Any], gauntlet: Sweep,
                        proxy: Sweep | None, out_dir: Any, *, screenshot: bool = False):
    """Write every file of the stress test under ``out_dir``; returns (worst-case table, paths)."""
    from byzbench.report import pivot_table, write_html

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = _frame(store, gauntlet)
    worst = worst_case_table(frame, settings.metric, settings.defenses, settings.betas, len(settings.seeds))
    paths: dict[str, Any] = {}
    paths["worst_case_md"] = _write(out / "worst_case.md", worst.to_markdown())
    paths["worst_case_csv"] = _write(out / "worst_case.csv", worst.to_csv())
    tables: list[Any] = [worst]
    for beta in settings.betas:
        where = ["partition.name=iid"] if beta is None else [f"partition.beta={beta}"]
        sub = frame.select(where)
        if not sub.rows:
            continue
        table = pivot_table(sub, ["attack.name"], ["defense"], settings.metric,
                            title=f"{level_label(beta)}: accuracy (%) per attack (calibrated strength) and defense")
        tables.append(table)
        slug = "iid" if beta is None else f"beta{beta:g}"
        paths[f"gauntlet_{slug}_md"] = _write(out / f"gauntlet_{slug}.md", table.to_markdown())
        paths[f"gauntlet_{slug}_tex"] = _write(out / f"gauntlet_{slug}.tex", table.to_latex())
        paths[f"gauntlet_{slug}_csv"] = _write(out / f"gauntlet_{slug}.csv", table.to_csv())
    if calibrated:
        cal = calibration_table(calibrated)
        tables.append(cal)
        paths["calibration_md"] = _write(out / "calibration.md", cal.to_markdown())
        paths["calibration_csv"] = _write(out / "calibration.csv", cal.to_csv())
    figures = _figures(store, settings, worst, frame, proxy, out, paths)
    paths["html"] = write_html(out / "report.html", tables, figures, title="byzbench stress test",
                               store=str(store.path), n_runs=len(frame.rows),
                               extra=[("settings", _settings_line(settings))])
    if screenshot:
        _screenshot(paths)
    return worst, paths


def _figures(store: ResultsStore, settings: Any, worst: Any, frame: Any, proxy: Sweep | None, out: Path,
             paths: dict[str, Any]) -> list[Any]:
    from byzbench.report import FigureItem, Frame, heatmap

    figures = []
    worst_rows = [{"defense": d, "partition.beta": b, settings.metric: c.mean}
                  for d in settings.defenses for b in settings.betas
                  if (c := worst.cells.get((d, level_label(b)))) is not None]
    if worst_rows:
        path = heatmap(Frame(worst_rows), "defense", "partition.beta", out / "worst_case_heatmap.png",
                       metric=settings.metric, none_label="IID")
        paths["worst_case_heatmap"] = path
        figures.append(FigureItem("Worst-case accuracy (%) of each defense over the calibrated attacks, "
                                  "per heterogeneity level (Dirichlet β; IID).", Path(path)))
    if proxy is not None:
        proxy_frame = _frame(store, proxy)
        for attack, key in HEATMAP_PARAMS.items():
            sub = proxy_frame.select([f"attack.name={attack}"])
            if len({r.get(key) for r in sub.rows}) < 2:
                continue
            path = heatmap(sub, key, "partition.beta", out / f"proxy_{attack}_heatmap.png",
                           metric=settings.metric, facet="defense", none_label="IID")
            paths[f"proxy_{attack}_heatmap"] = path
            figures.append(FigureItem(f"{attack}: proxy accuracy (%) over its strength ({key}) and the "
                                      f"heterogeneity level, one panel per defense ({settings.proxy_rounds} "
                                      "rounds, first seed) — the calibration landscape.", Path(path)))
    return figures


def _settings_line(settings: Any) -> str:
    levels = ", ".join(level_label(b) for b in settings.betas)
    return (f"{len(settings.attacks)} attacks × {len(settings.defenses)} defenses × levels {levels}; "
            f"seeds {list(settings.seeds)}; {settings.rounds} rounds (proxy {settings.proxy_rounds}); "
            f"metric {settings.metric}")


def _screenshot(paths: dict[str, Any]) -> None:
    from byzbench.report import render_check, screenshot

    html_path = paths["html"]
    png = Path(html_path).with_suffix(".png")
    paths["screenshot"] = screenshot(html_path, png, 1280, 3000)
    paths["render_check"] = render_check(html_path)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
