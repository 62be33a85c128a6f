"""Build a report from a tiny store, open it in headless Chromium and check what renders.

The store holds a real grid: digits, logistic regression, 8 clients of which 2 are
Byzantine, ``--rounds`` rounds (default 20, evaluated every 5), attacks ALIE z ∈ {1, 8}
and sign flip × defenses mean, CM, TM × Dirichlet β ∈ {0.1, IID} × 2 seeds (36 runs, a
few seconds each), plus a small ``bench defenses`` JSON. The report has the attack ×
defense table, accuracy curves, an attack-strength × heterogeneity heatmap and runtime
bars. The script then

1. screenshots ``report.html`` (``report.png``, the size asked) and checks that the image
   is not blank (standard deviation of its grey levels);
2. dumps the rendered DOM and checks that it holds one table whose cells are exactly the
   table's texts, and that every image is an embedded PNG with nothing external;

prints each check and exits with status 1 if one fails::

    .venv/bin/python scripts/check_report_browser.py --out /tmp/report-check
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from byzbench.bench import bench_defenses
from byzbench.config import ExperimentConfig
from byzbench.experiments.runner import run_experiment
from byzbench.experiments.store import ResultsStore
from byzbench.report import CurvesSpec, HeatmapSpec, ReportSpec, TableSpec, build_report
from byzbench.report.browser import find_browser, render_check, screenshot

ATTACKS = ("alie(z=1)", "alie(z=8)", "signflip")
DEFENSES = ("mean", "median", "trmean")
PARTITIONS = ("dirichlet(beta=0.1)", "iid")
SEEDS = (0, 1)


def build_store(db: Path, rounds: int) -> int:
    """Run the grid into ``db`` (finished runs are skipped); the number of runs in it."""
    base = ExperimentConfig(model="logistic", n_clients=8, n_byzantine=2, rounds=rounds,
                            eval_every=max(1, rounds // 4))
    with ResultsStore(db) as store:
        done = store.finished_ids()
        for attack in ATTACKS:
            for defense in DEFENSES:
                for part in PARTITIONS:
                    for seed in SEEDS:
                        cfg = base.override([f"attack={attack}", f"defense={defense}", f"partition={part}",
                                             f"seed={seed}"])
                        if cfg.validate().run_id not in done:
                            run_experiment(cfg, store)
        return len(store.runs())


def check(name: str, ok: bool, detail: str) -> bool:
    print(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("report-check"), help="output folder")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--size", default="1280x2600", help="screenshot WIDTHxHEIGHT")
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"browser: {find_browser()}")
    runs = build_store(args.out / "runs.db", args.rounds)
    bench = args.out / "bench.json"
    bench.write_text(json.dumps(bench_defenses(n=8, d=20_000, f=2, reps=5, budget_s=0.2,
                                               rules=["mean", "median", "trmean", "krum", "rfa", "nnm"]).to_dict()))
    spec = ReportSpec(tables=(TableSpec(rows=("partition.beta", "attack")),),
                      curves=(CurvesSpec("defense", "attack"),),
                      heatmaps=(HeatmapSpec("attack.z", "partition.beta", "defense", where=("attack.name=alie",)),),
                      bench_json=bench)
    report = build_report(args.out / "runs.db", spec, args.out)
    html, table = report.paths["html"], report.tables[0]
    print(f"store: {runs} runs; report: {html} ({html.stat().st_size / 1024:.0f} KiB)\n")
    print(table.to_markdown())

    png = screenshot(html, args.out / "report.png", width, height)
    from PIL import Image

    with Image.open(png) as im:
        size, grey = im.size, np.asarray(im.convert("L"), dtype=np.float64)
    dom = render_check(html)
    texts = [table.text(c) for _, cells in table.grid() for c in cells]
    figures = sum(name.endswith(".png") for name in report.paths)
    results = [
        check("screenshot size", size == (width, height), f"{size[0]}×{size[1]} ({png})"),
        check("screenshot not blank", grey.std() > 10, f"grey-level std {grey.std():.1f}, "
              f"{100 * (grey < 128).mean():.1f}% dark pixels"),
        check("tables rendered", dom.tables == len(report.tables), f"{dom.tables} <table>"),
        check("table cells rendered", list(dom.cell_texts) == texts, f"{dom.cells} <td>, {len(texts)} expected"),
        check("images embedded", dom.images == dom.data_images == figures,
              f"{dom.images} <img>, {dom.data_images} data:image/png, {figures} figures written"),
        check("nothing external", not dom.external, f"{len(dom.external)} external reference(s)"),
    ]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
