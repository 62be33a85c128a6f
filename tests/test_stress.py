"""`byzbench stress`: settings, calibration choice, worst-case table, files, CLI."""

from __future__ import annotations

import math
from dataclasses import replace
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from byzbench.config import ExperimentConfig
from byzbench.errors import ConfigError
from byzbench.experiments.calibrate import run_accuracy, run_deviation, stored_result
from byzbench.experiments.executors import SerialExecutor
from byzbench.experiments.store import ResultsStore
from byzbench.experiments.stress import (
    BASELINE,
    StressSettings,
    check_settings,
    gauntlet_sweep,
    proxy_sweep,
    run_stress,
    worst_case_table,
)
from byzbench.report import Frame, find_browser

BASE = ExperimentConfig().override(["n_clients=8", "n_byzantine=2", "model=logistic"])
TINY = StressSettings(attacks=("alie", "signflip"), defenses=("median", "nnm>trmean"), betas=(0.1, None),
                      seeds=(0, 1), rounds=6, proxy_rounds=3, eval_every=3,
                      grids={"alie": (0.5, 4.0), "signflip": (1.0, 8.0)})


def _has_browser() -> bool:
    try:
        find_browser()
        return True
    except ConfigError:
        return False


# ------------------------------------------------------------------ settings


def test_settings_are_canonicalised_and_validated():
    s = check_settings(BASE, TINY)
    assert s.defenses == ("median", "nnm > trmean") and s.attacks == ("alie", "signflip")
    with pytest.raises(ConfigError, match="distinct") as err:
        check_settings(BASE, StressSettings(defenses=("cc", "cc")))
    assert err.value.key == "defenses"
    with pytest.raises(ConfigError) as err:
        check_settings(BASE, StressSettings(betas=(0.1, -1.0)))
    assert err.value.key == "betas"
    with pytest.raises(ConfigError) as err:
        check_settings(BASE, StressSettings(attacks=("alie", "none")))
    assert err.value.key == "attacks"
    with pytest.raises(ConfigError) as err:
        check_settings(BASE, StressSettings(attacks=("nosuchattack",)))
    assert err.value.key == "attacks"
    with pytest.raises(ConfigError) as err:
        check_settings(BASE, StressSettings(grids={"alie": (-1.0, 2.0)}))
    assert err.value.key == "grid"
    with pytest.raises(ConfigError) as err:
        check_settings(BASE, StressSettings(proxy_score="loss"))
    assert err.value.key == "proxy_score"
    with pytest.raises(ConfigError) as err:
        check_settings(BASE.override(["n_byzantine=0"]), TINY)
    assert err.value.key == "n_byzantine"


def test_sweeps_cover_every_point_once():
    s = check_settings(BASE, TINY)
    proxy = proxy_sweep(BASE, s)
    runs = proxy.runs()
    # 2 defenses × 2 levels × (2 + 2 grid values), first seed only, proxy horizon
    assert len(runs) == 16 and {r.config.seed for r in runs} == {0}
    assert {r.config.rounds for r in runs} == {3}
    gauntlet = gauntlet_sweep(BASE, s, [])
    g = gauntlet.runs()
    # (baseline + 2 attacks) × 2 defenses × 2 levels × 2 seeds, full horizon, default strengths
    assert len(g) == 24 and {r.config.rounds for r in g} == {6}
    assert sum(r.config.attack.name == BASELINE for r in g) == 8
    assert {r.config.partition.name for r in g} == {"dirichlet", "iid"}
    assert StressSettings(calibrate=False).family("alie") is None


# ------------------------------------------------------------------ worst case by hand


def _row(defense, beta, attack, acc):
    part = "iid" if beta is None else "dirichlet"
    return {"defense": defense, "partition.name": part, "partition.beta": beta, "attack.name": attack,
            "max_accuracy": acc}


def test_worst_case_table_by_hand():
    rows = [_row("cc", 0.1, "alie", 0.5), _row("cc", 0.1, "alie", 0.7),    # mean 0.6
            _row("cc", 0.1, "ipm", 0.4), _row("cc", 0.1, "ipm", 0.6),      # mean 0.5 ← worst
            _row("cc", 0.1, BASELINE, 0.9), _row("cc", 0.1, BASELINE, 0.8),
            _row("cc", None, "alie", 0.2), _row("cc", None, "alie", 0.3),   # mean 0.25 ← worst
            _row("cc", None, "ipm", 0.8), _row("cc", None, "ipm", 0.9),
            _row("median", 0.1, "alie", 0.1), _row("median", 0.1, "alie", 0.1),
            _row("median", 0.1, "ipm", math.nan), _row("median", 0.1, "ipm", 0.05)]
    table = worst_case_table(Frame(rows), "max_accuracy", ["cc", "median"], [0.1, None], 2)
    c = table.cells[("cc", "β=0.1")]
    assert (c.attack, c.mean, c.clean) == ("ipm", pytest.approx(0.5), pytest.approx(0.85))
    assert c.std == pytest.approx(statistics.stdev([0.4, 0.6]))
    iid = table.cells[("cc", "IID")]
    assert iid.attack == "alie" and iid.mean == pytest.approx(0.25) and iid.clean is None
    assert table.overall("cc").mean == pytest.approx(0.25)
    m = table.cells[("median", "β=0.1")]  # the NaN run is left out: ipm's mean is 0.05
    assert m.attack == "ipm" and m.mean == pytest.approx(0.05) and m.std == 0.0
    assert ("median", "IID") not in table.cells
    assert table.ranked() == ["cc", "median"]
    md = table.to_markdown()
    assert "**25.00 ± 7.07 (alie)**" in md and "50.00 ± 14.14 (ipm)" in md and "85.0 / —" in md
    csv_lines = table.to_csv().splitlines()
    assert csv_lines[0] == "defense,level,worst_attack,mean,std,clean" and len(csv_lines) == 4
    assert "<table" in table.to_html() and "25.00" in table.to_html()


# ------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_stress_end_to_end_choices_files_and_resume(tmp_path):
    with ResultsStore(tmp_path / "r.db") as store:
        result = run_stress(BASE, TINY, store, SerialExecutor(1), tmp_path / "out")
        assert result.proxy_runs == 16 and result.gauntlet_runs == 24 and result.failed == 0
        # Each calibrated value is the argmin of its proxy runs' max accuracy (ties: the lower
        # final accuracy, then the first grid value), recomputed here from the store.
        settings = check_settings(BASE, TINY)
        runs = iter(proxy_sweep(BASE, settings).runs())
        by_cell = {}
        for d in settings.defenses:
            for b in settings.betas:
                for a in settings.attacks:
                    fam = settings.family(a)
                    accs = []
                    for v in fam.grid:
                        res = stored_result(store, next(runs).run_id)
                        accs.append((run_accuracy(res, "max_accuracy", 0.1),
                                     run_accuracy(res, "final_accuracy", 0.1), v))
                    by_cell[(d, b, a)] = min(accs)[2]
        assert {(c.defense, c.beta, c.attack): c.value for c in result.calibrated} == by_cell
        # The worst-case cells are the lowest attack means of the stored gauntlet runs.
        accs: dict = {}
        for run in gauntlet_sweep(BASE, settings, result.calibrated).runs():
            rec = stored_result(store, run.run_id)
            level = "IID" if run.config.partition.name == "iid" else f"β={run.config.partition.params['beta']:g}"
            accs.setdefault((run.config.defense, level, run.config.attack.name), []).append(
                run_accuracy(rec, "max_accuracy", 0.1))
        for (d, level), cell in result.table.cells.items():
            means = {a: statistics.fmean(v) for (dd, lv, a), v in accs.items() if (dd, lv) == (d, level)
                     and a != BASELINE}
            assert cell.mean == pytest.approx(min(means.values())) and means[cell.attack] == pytest.approx(cell.mean)
        out = tmp_path / "out"
        for name in ("worst_case.md", "worst_case.csv", "calibration.md", "calibration.csv", "report.html",
                     "gauntlet_beta0.1.md", "gauntlet_iid.tex", "worst_case_heatmap.png", "proxy_alie_heatmap.png"):
            assert (out / name).stat().st_size > 0, name
        html = (out / "report.html").read_text()
        assert html.count("<table") >= 4 and html.count("data:image/png;base64,") >= 2
        assert "http://" not in html and "https://" not in html
        # A rerun reads every finished run from the store: nothing runs again.
        before = {r.run_id: r.finished_at for r in store.runs()}
        again = run_stress(BASE, TINY, store, SerialExecutor(1), tmp_path / "out2")
        assert {r.run_id: r.finished_at for r in store.runs()} == before
        assert again.table.cells == result.table.cells
        # The deviation proxy picks, per cell, the value whose proxy run kept the aggregate
        # farthest from the honest mean (same proxy runs: nothing new to run).
        dev = run_stress(BASE, replace(TINY, proxy_score="deviation"), store, SerialExecutor(1), tmp_path / "out3")
        runs = iter(proxy_sweep(BASE, settings).runs())
        for d in settings.defenses:
            for b in settings.betas:
                for a in settings.attacks:
                    devs = [(-run_deviation(stored_result(store, next(runs).run_id)), i, v)
                            for i, v in enumerate(settings.family(a).grid)]
                    chosen = next(c.value for c in dev.calibrated if (c.defense, c.beta, c.attack) == (d, b, a))
                    assert chosen == min(devs)[2]


@pytest.mark.slow
def test_stress_quick_cli_writes_the_report_and_screenshot(tmp_path):
    """The README's main command in its --quick form, end to end (about 2 min on 2 cores)."""
    out = tmp_path / "stress"
    exe = Path(sys.executable).parent / "byzbench"
    proc = subprocess.run([str(exe), "stress", "--quick", "--out", str(out),
                           "--progress", "never"], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "worst overall" in proc.stdout and "report:" in proc.stdout
    html = (out / "report.html").read_text()
    for defense in ("median", "trmean", "krum", "multikrum", "rfa", "cc", "bucketing(s=2) &gt; rfa",
                    "nnm &gt; trmean", "dnc", "mixtailor"):
        assert defense in html, defense
    if _has_browser():
        png = out / "report.png"
        assert png.stat().st_size > 10_000 and "rendered: ok" in proc.stdout
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_bad_options_before_any_run(tmp_path):
    from byzbench.cli import main

    assert main(["stress", "--betas", "0.1,abc", "--out", str(tmp_path / "o")]) == 2
    assert main(["stress", "--defenses", "cc;cc", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()

