"""Reports: tables checked against hand-computed means/stds on a tiny store, worst-cell
marking, worst-case lines, LaTeX escaping, CSV round trip, figures, self-contained HTML."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from byzbench.cli import main
from byzbench.config import ExperimentConfig
from byzbench.errors import ConfigError
from byzbench.experiments import ResultsStore
from byzbench.report import (
    CurvesSpec,
    FigureItem,
    HeatmapSpec,
    ReportSpec,
    TableSpec,
    accuracy_curves,
    build_report,
    heatmap,
    heatmap_grid,
    load_frame,
    pivot_table,
    render_html,
    runtime_bars,
)
from byzbench.report.figures import load_bench, mean_curve
from byzbench.report.frame import chance_level, flatten_config, matches, value_order
from byzbench.report.tables import latex_escape

BASE = ExperimentConfig(rounds=3, eval_every=3, n_clients=8, n_byzantine=2, model="logistic")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _config(attack: str, defense: str, seed: int, partition: str = "iid") -> ExperimentConfig:
    return BASE.override([f"attack={attack}", f"defense={defense}", f"seed={seed}", f"partition={partition}"])


def _add(store: ResultsStore, cfg: ExperimentConfig, accs: list[float], status: str = "finished",
         diverged_round: int | None = None, losses: list[float] | None = None, wall: float = 1.0) -> None:
    """A run whose test accuracy is ``accs`` at rounds 0, 25, 50, …"""
    store.start_run(cfg.run_id, cfg.to_dict(), "test")
    if status == "running":
        return
    rounds = [25 * i for i in range(len(accs))]
    losses = losses if losses is not None else [1.0] * len(accs)
    final = accs[-1] if status == "finished" else None
    store.finish_run(cfg.run_id, status=status, rounds_completed=25 * (len(accs) - 1),
                     metrics={"test_accuracy": list(zip(rounds, accs)), "test_loss": list(zip(rounds, losses))},
                     final_accuracy=final, final_loss=1.0 if status == "finished" else None,
                     diverged_round=diverged_round, wall_time_s=wall)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """Max accuracies per cell (hand-computed in the tests):

    alie(z=8) × mean: 0.50, 0.70      alie(z=8) × trmean: 0.80, 0.90
    ipm(epsilon=0.5) × mean: 0.30, 0.40, 0.50 (3 seeds)   ipm × trmean: 0.90, 0.96
    alie(z=8) × median: finished 0.50, and one diverged run (0.6 before divergence)
    plus one failed and one running run.
    """
    path = tmp_path / "tiny.db"
    with ResultsStore(path) as s:
        for seed, top in enumerate((0.50, 0.70)):
            _add(s, _config("alie(z=8)", "mean", seed), [0.1, top, top - 0.05])
        for seed, top in enumerate((0.80, 0.90)):
            _add(s, _config("alie(z=8)", "trmean", seed), [0.1, top, top - 0.1])
        for seed, top in enumerate((0.30, 0.40, 0.50)):
            _add(s, _config("ipm(epsilon=0.5)", "mean", seed), [0.1, top - 0.1, top])
        for seed, top in enumerate((0.90, 0.96)):
            _add(s, _config("ipm(epsilon=0.5)", "trmean", seed), [0.1, top, top])
        _add(s, _config("alie(z=8)", "median", 0), [0.1, 0.5, 0.5])
        # diverged at round 40: round 50's finite 0.05 comes after it and does not count
        _add(s, _config("alie(z=8)", "median", 1), [0.1, 0.6, 0.05, 0.1], status="diverged",
             diverged_round=40, losses=[1.0, 1.0, 1.0, math.nan])
        _add(s, _config("alie(z=8)", "median", 2), [0.1], status="failed")
        _add(s, _config("alie(z=8)", "median", 3), [0.1], status="running")
    return path


def _sample_std(*xs: float) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


# ---------------------------------------------------------------------- frame
def test_flatten_config_gives_labels_and_dotted_keys():
    cfg = BASE.override(["attack=alie(z=8)", "partition=dirichlet(beta=0.1)", "defense=bucketing(s=2) > rfa"])
    flat = flatten_config(cfg.to_dict())
    assert flat["attack"] == "alie(z=8)" and flat["attack.name"] == "alie" and flat["attack.z"] == 8
    assert flat["partition"] == "dirichlet(beta=0.1)" and flat["partition.beta"] == 0.1
    assert flat["defense"] == "bucketing(s=2) > rfa" and flat["seed"] == 0 and flat["lr"] == 0.1
    assert flat["model"] == "logistic" and flat["model.name"] == "logistic"


def test_value_order_numbers_numerically_natural_text_none_last():
    values = [None, 10, 2.5, "alie(z=10)", "alie(z=8)", 0.1, "ipm"]
    assert sorted(values, key=value_order) == [0.1, 2.5, 10, "alie(z=8)", "alie(z=10)", "ipm", None]


def test_matches_numbers_text_and_none():
    assert matches(0.1, "0.1") and matches(8.0, "8") and not matches(8, "9")
    assert matches("bucketing(s=2) > rfa", "bucketing(s=2)>rfa") and not matches("mean", "median")
    assert matches(None, "none") and not matches(0.5, "none") and not matches(None, "0.5")


def test_frame_counts_left_out_runs_and_diverged_runs(store_path):
    frame = load_frame(store_path)
    assert len(frame.rows) == 2 + 2 + 3 + 2 + 2
    assert frame.skipped == {"failed": 1, "running": 1} and frame.diverged == 1
    diverged = next(r for r in frame.rows if r["status"] == "diverged")
    assert diverged["final_accuracy"] == pytest.approx(0.6) and diverged["max_accuracy"] == pytest.approx(0.6)
    assert frame.curves[diverged["run_id"]] == [(0, 0.1), (25, 0.6)]


def test_diverged_as_chance_and_exclude(store_path):
    chance = load_frame(store_path, diverged_as="chance", where=["defense=median"])
    final = pivot_table(chance, metric="final_accuracy")
    assert final.cells[0][0].mean == pytest.approx((50 + 10) / 2)  # 1/10 for digits
    best = pivot_table(chance)
    assert best.cells[0][0].mean == pytest.approx((50 + 60) / 2)  # max(0.6 before divergence, chance)
    assert "1 diverged run(s) count at chance level (10%)" in " ".join(final.notes)
    excluded = pivot_table(load_frame(store_path, diverged_as="exclude", where=["defense=median"]))
    cell = excluded.cells[0][0]
    assert (cell.mean, cell.std, cell.n) == (pytest.approx(50.0), None, 1)
    assert "1 diverged run(s) left out" in " ".join(excluded.notes)
    with pytest.raises(ConfigError, match="diverged_as"):
        load_frame(store_path, diverged_as="zero")


def test_diverged_run_without_evaluation_counts_at_chance(tmp_path):
    with ResultsStore(tmp_path / "d.db") as s:
        _add(s, _config("alie(z=8)", "mean", 0), [math.nan], status="diverged", diverged_round=0)
    frame = load_frame(tmp_path / "d.db")
    assert frame.rows[0]["final_accuracy"] == pytest.approx(0.1)
    assert frame.rows[0]["max_accuracy"] == pytest.approx(0.1)


def test_chance_level_from_the_dataset_constructor():
    assert chance_level({"data": {"name": "digits"}}) == pytest.approx(0.1)
    assert chance_level({"data": {"name": "synthetic", "num_classes": 4}}) == pytest.approx(0.25)
    assert chance_level({"data": {"name": "emnist", "split": "balanced"}}) == pytest.approx(1 / 47)
    assert chance_level({"data": {"name": "anything"}}, num_classes=5) == pytest.approx(0.2)
    with pytest.raises(ConfigError, match="num_classes"):
        chance_level({"data": {"name": "imagefolder"}})


def test_where_filters_numbers_alternatives_and_unknown_keys(store_path):
    frame = load_frame(store_path, where=["attack.z=8"])
    assert {r["attack"] for r in frame.rows} == {"alie(z=8)"}
    both = load_frame(store_path, where=["defense=mean", "defense=trmean", "attack.name=ipm"])
    assert len(both.rows) == 5 and both.where == ("defense=mean", "defense=trmean", "attack.name=ipm")
    with pytest.raises(ConfigError, match="--where: no run has the key 'attack.q'"):
        load_frame(store_path, where=["attack.q=1"])
    with pytest.raises(ConfigError, match="--where: expected key=value"):
        load_frame(store_path, where=["attack"])


# ---------------------------------------------------------------------- tables
def _table(store_path, **kw):
    return pivot_table(load_frame(store_path, where=["defense=mean", "defense=trmean"]), **kw)


def test_cells_are_hand_computed_means_and_stds(store_path):
    t = _table(store_path)
    assert t.row_labels == [("alie(z=8)",), ("ipm(epsilon=0.5)",)] and t.col_labels == [("mean",), ("trmean",)]
    expected = [[(60.0, _sample_std(50, 70), 2), (85.0, _sample_std(80, 90), 2)],
                [(40.0, 10.0, 3), (93.0, _sample_std(90, 96), 2)]]
    for row, want_row in zip(t.cells, expected):
        for cell, (mean, std, n) in zip(row, want_row):
            assert (cell.mean, cell.std, cell.n) == (pytest.approx(mean), pytest.approx(std), n)
    md = t.to_markdown()
    assert "| alie(z=8) | 60.00 ± 14.14 | **85.00 ± 7.07** | 60.00 ± 14.14 |" in md
    assert "| ipm(epsilon=0.5) | **40.00 ± 10.00 (n=3)** | 93.00 ± 4.24 | 40.00 ± 10.00 (n=3) |" in md
    assert "over n = 2 runs (seeds) unless marked (n=k)" in md


def test_final_accuracy_and_population_std(store_path):
    t = _table(store_path, metric="final_accuracy", std_ddof=0)
    cell = t.cells[0][0]  # alie × mean: finals 0.45, 0.65
    assert cell.mean == pytest.approx(55.0) and cell.std == pytest.approx(10.0)
    with pytest.raises(ConfigError, match="std_ddof"):
        _table(store_path, std_ddof=2)


def test_worst_attack_marked_per_defense_and_worst_case_lines(store_path):
    t = _table(store_path)
    assert [[c.worst for c in row] for row in t.cells] == [[False, True], [True, False]]
    assert [c.mean for c in t.worst_row] == [pytest.approx(40.0), pytest.approx(85.0)]
    assert [c.mean for c in t.worst_col] == [pytest.approx(60.0), pytest.approx(40.0)]
    assert t.corner.mean == pytest.approx(40.0) and t.corner.n == 3
    assert not any(c.worst for c in t.worst_row)
    assert t.to_markdown().count("worst case") >= 2


def test_attacks_on_columns_mark_the_worst_cell_of_each_row(store_path):
    t = _table(store_path, rows=("defense",), cols=("attack",))
    assert t.row_labels == [("mean",), ("trmean",)]
    assert [[c.worst for c in row] for row in t.cells] == [[False, True], [True, False]]
    forced = _table(store_path, attack_axis="cols")  # attacks on rows, marked along rows anyway
    assert [[c.worst for c in row] for row in forced.cells] == [[True, False], [True, False]]


def test_higher_is_worse_for_time(store_path):
    t = _table(store_path, metric="wall_time_s")
    assert t.worse == "higher" and all(c.worst for c in t.cells[0])  # every run took 1.0 s: ties


def test_blocks_mark_the_worst_attack_within_each_block(tmp_path):
    path = tmp_path / "b.db"
    with ResultsStore(path) as s:
        for part, accs in (("iid", {"alie(z=8)": 0.9, "ipm(epsilon=0.5)": 0.8}),
                           ("dirichlet(beta=0.1)", {"alie(z=8)": 0.2, "ipm(epsilon=0.5)": 0.7})):
            for attack, top in accs.items():
                _add(s, _config(attack, "mean", 0, part), [0.1, top])
    t = pivot_table(load_frame(path), rows=("partition.beta", "attack"), cols=("defense",))
    texts = [line.texts for line in t.row_lines]
    assert texts == [("0.1", "alie(z=8)"), ("0.1", "ipm(epsilon=0.5)"), ("0.1", "worst case"),
                     ("none", "alie(z=8)"), ("none", "ipm(epsilon=0.5)"), ("none", "worst case"),
                     ("all", "worst case")]
    assert [row[0].worst for row in t.cells] == [True, False, False, True]
    grid = [cells[0].mean for _, cells in t.grid()]
    assert grid == pytest.approx([20, 70, 20, 90, 80, 80, 20])


def test_non_finite_values_are_left_out_and_counted(tmp_path):
    path = tmp_path / "nf.db"
    with ResultsStore(path) as s:
        for seed, loss in enumerate((0.5, math.inf, 1.5)):
            cfg = _config("alie(z=8)", "mean", seed)
            s.start_run(cfg.run_id, cfg.to_dict(), "test")
            s.finish_run(cfg.run_id, status="finished", rounds_completed=1,
                         metrics={"test_accuracy": [(0, math.nan), (1, 0.4), (2, math.inf)]},
                         final_accuracy=0.4, final_loss=loss, diverged_round=None, wall_time_s=1.0)
    frame = load_frame(path)
    assert all(r["max_accuracy"] == pytest.approx(0.4) for r in frame.rows)
    t = pivot_table(frame, metric="final_loss")
    assert (t.cells[0][0].mean, t.cells[0][0].n) == (pytest.approx(1.0), 2)
    assert "1 non-finite value(s) left out." in t.notes


def test_pooled_keys_are_named_in_the_notes(store_path):
    t = pivot_table(load_frame(store_path), rows=("attack.name",), cols=("defense",))
    assert not any("pool" in note for note in t.notes)  # attack.name fixes the attack in this store
    t = pivot_table(load_frame(store_path), rows=("defense",), cols=("seed",))
    assert "Cells pool runs that differ in: attack" in " ".join(t.notes)
    assert "Left out: 1 failed, 1 running run(s)." in t.notes


def test_bad_table_arguments_name_the_key(store_path):
    frame = load_frame(store_path)
    for kwargs, key in (({"rows": ("nope",)}, "rows"), ({"metric": "accuracy"}, "metric"),
                        ({"attack_axis": "x"}, "attack_axis"), ({"rows": ("defense",)}, "cols"),
                        ({"digits": -1}, "digits")):
        with pytest.raises(ConfigError, match=f"^{key}:"):
            pivot_table(frame, **kwargs)


def test_latex_is_booktabs_and_escaped(store_path, tmp_path):
    assert latex_escape("a_b & 50% $x$ #1 {y} ~ ^ \\ ± ∞") == (
        r"a\_b \& 50\% \$x\$ \#1 \{y\} \textasciitilde{} \textasciicircum{} \textbackslash{} $\pm$ $\infty$")
    path = tmp_path / "l.db"
    with ResultsStore(path) as s:
        for seed in (0, 1):
            _add(s, _config("alie(z=8)", "bucketing(s=2) > rfa", seed), [0.1, 0.5 + 0.1 * seed])
    tex = pivot_table(load_frame(path), title="Under 20% & more_stuff").to_latex()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"\caption{Under 20\% \& more\_stuff}" in tex
    assert r"bucketing(s=2) \textgreater{} rfa" in tex
    assert r"\textbf{55.00 $\pm$ 7.07}" in tex
    body = tex.split(r"\midrule")[1]
    assert "_" not in body.replace(r"\_", "") and "%" not in body.replace(r"\%", "")


def test_csv_round_trip(store_path):
    t = _table(store_path)
    lines = list(csv.DictReader(io.StringIO(t.to_csv())))
    cells = [line for line in lines if line["kind"] == "cell"]
    assert len(cells) == 4
    for line in cells:
        i = t.row_labels.index((line["attack"],))
        j = t.col_labels.index((line["defense"],))
        c = t.cells[i][j]
        assert float(line["mean"]) == c.mean and float(line["std"]) == c.std and int(line["n"]) == c.n
        assert (line["worst"] == "*") == c.worst and line["metric"] == "max_accuracy"
    corner = [line for line in lines if line["kind"] == "worst_case"]
    assert len(corner) == 1 and float(corner[0]["mean"]) == pytest.approx(40.0)
    assert corner[0]["attack"] == "" and corner[0]["defense"] == ""
    assert {line["kind"] for line in lines} == {"cell", "worst_case_row", "worst_case_col", "worst_case"}


def test_html_table_has_every_cell_and_strong_worst(store_path):
    html = _table(store_path).to_html()
    assert html.count("<tr") == 1 + 3 and html.count('<td class="worst"><strong>') == 2
    assert "60.00 ± 14.14" in html and "&gt; rfa" not in html


# ---------------------------------------------------------------------- figures
def _png_size(path: Path) -> tuple[int, int]:
    raw = Path(path).read_bytes()
    assert raw[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_mean_curve_hand_example():
    rounds, mean, std, count = mean_curve([[(0, 0.1), (10, 0.5)], [(0, 0.3), (10, 0.7), (20, 0.9)]], ddof=1)
    assert rounds.tolist() == [0, 10, 20] and count.tolist() == [2, 2, 1]
    assert mean == pytest.approx([0.2, 0.6, 0.9])
    assert std[:2] == pytest.approx([math.sqrt(0.02), math.sqrt(0.02)]) and math.isnan(std[2])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.dictionaries(st.integers(0, 6), st.floats(0, 1), max_size=6), min_size=1, max_size=5),
       st.sampled_from([0, 1]))
def test_mean_curve_matches_a_reference_loop(runs, ddof):
    series = [sorted(d.items()) for d in runs]
    rounds, mean, std, count = mean_curve(series, ddof)
    for k, r in enumerate(rounds):
        vals = [v for s in series for rr, v in s if rr == r]
        assert count[k] == len(vals) and mean[k] == pytest.approx(np.mean(vals))
        if len(vals) > ddof:
            assert std[k] == pytest.approx(np.std(vals, ddof=ddof), abs=1e-12)
        else:
            assert math.isnan(std[k])


def test_heatmap_grid_is_ordered_with_none_last(tmp_path):
    path = tmp_path / "h.db"
    with ResultsStore(path) as s:
        for part in ("iid", "dirichlet(beta=0.5)", "dirichlet(beta=0.1)"):
            for z, top in ((10, 0.3), (2, 0.6)):
                for seed in (0, 1):
                    _add(s, _config(f"alie(z={z})", "mean", seed, part), [0.1, top + 0.1 * seed])
    frame = load_frame(path)
    grid = heatmap_grid(frame, "attack.z", "partition.beta")
    assert grid.xs == [2, 10] and grid.ys == [0.1, 0.5, None]
    assert grid.values[0] == pytest.approx(np.array([[65.0, 35.0]] * 3))
    assert grid.counts.tolist() == [[[2, 2]] * 3]
    only = heatmap_grid(frame.select(["attack.z=10"]), "attack.z", "partition.beta")
    assert only.xs == [10] and only.values[0, :, 0] == pytest.approx([35.0] * 3)
    out = heatmap(frame, "attack.z", "partition.beta", tmp_path / "h.png", facet="defense")
    w, h = _png_size(out)
    assert 300 < w < 2000 and 200 < h < 2000 and out.stat().st_size > 5_000


def test_accuracy_curves_png(store_path, tmp_path):
    frame = load_frame(store_path)
    out = accuracy_curves(frame, "defense", tmp_path / "c.png", facet="attack")
    w, h = _png_size(out)
    assert w > 2 * h > 400 and out.stat().st_size > 10_000  # two panels side by side
    with pytest.raises(ConfigError, match="--curves"):
        accuracy_curves(frame, "nope", tmp_path / "x.png")


def test_runtime_bars_from_a_real_bench_json(tmp_path):
    from byzbench import bench

    res = bench.bench_defenses(n=7, d=256, f=2, reps=3, rules=["mean", "median", "krum", "nnm"], budget_s=0.05)
    src = tmp_path / "bench.json"
    src.write_text(json.dumps(res.to_dict()))
    out = runtime_bars(src, tmp_path / "r.png")
    w, h = _png_size(out)
    assert w > 400 and h > 200 and out.stat().st_size > 5_000
    linear = runtime_bars(res.to_dict(), tmp_path / "lin.png", log=False, show_floor=False)
    assert linear.read_bytes() != out.read_bytes()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"n": 5}))
    with pytest.raises(ConfigError, match="--bench-json"):
        load_bench(bad)


# ---------------------------------------------------------------------- HTML and build_report
def test_html_is_self_contained_with_every_table_and_image(store_path, tmp_path):
    frame = load_frame(store_path)
    tables = [pivot_table(frame), pivot_table(frame, metric="final_accuracy")]
    png = accuracy_curves(frame, "defense", tmp_path / "c.png")
    page = render_html(tables, [FigureItem("curves", png), FigureItem("bytes", png.read_bytes())],
                       store=str(store_path), n_runs=len(frame.rows), date="2025-01-01 00:00 UTC")
    for t in tables:
        assert t.to_html() in page
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == 2 and all(base64.b64decode(u) == png.read_bytes() for u in uris)
    assert not re.search(r"https?:", page) and "<script" not in page and "<link" not in page
    assert str(store_path) in page and "2025-01-01 00:00 UTC" in page and "<dd>0.1.0</dd>" in page


def test_build_report_writes_every_file(store_path, tmp_path):
    spec = ReportSpec(tables=(TableSpec(), TableSpec(rows=("defense",), cols=("attack",), metric="final_accuracy")),
                      curves=(CurvesSpec("defense", "attack"),), heatmaps=(HeatmapSpec("attack", "defense"),))
    report = build_report(store_path, spec, tmp_path / "out")
    names = sorted(report.paths)
    assert names == sorted(["max_accuracy__attack__defense.md", "max_accuracy__attack__defense.tex",
                            "max_accuracy__attack__defense.csv", "final_accuracy__defense__attack.md",
                            "final_accuracy__defense__attack.tex", "final_accuracy__defense__attack.csv",
                            "curves_defense_by_attack.png", "heatmap_max_accuracy_attack_defense.png", "html"])
    page = report.paths["html"].read_text()
    assert page.count('<table class="pivot">') == 2 and page.count("data:image/png;base64,") == 2
    assert report.paths["max_accuracy__attack__defense.md"].read_text() == report.tables[0].to_markdown()


def test_build_report_from_records_without_a_store(store_path, tmp_path):
    with ResultsStore(store_path) as s:
        records, metrics = s.runs(), {r.run_id: s.round_metrics(r.run_id) for r in s.runs()}
    report = build_report(records, ReportSpec(formats=("md",)), tmp_path / "o", metrics=metrics)
    assert report.tables[0].to_markdown() == pivot_table(load_frame(store_path)).to_markdown()


# ---------------------------------------------------------------------- CLI
def test_cli_prints_the_markdown_table_and_writes_files(store_path, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["report", str(store_path), "--where", "defense=mean", "--where", "defense=trmean",
                 "--out", str(out), "--heatmap", "attack.name,defense", "--curves", "defense,facet attack"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out == _table(store_path).to_markdown()
    assert "| ipm(epsilon=0.5) | **40.00 ± 10.00 (n=3)** | 93.00 ± 4.24 | 40.00 ± 10.00 (n=3) |" in captured.out
    assert (out / "report.html").is_file() and (out / "max_accuracy__attack__defense.tex").is_file()
    assert (out / "curves_defense_by_attack.png").is_file()
    assert "wrote" in captured.err


@pytest.mark.parametrize("argv, fragment", [
    (["--rows", "nope"], "rows: no run has the key 'nope'"),
    (["--format", "md,pdf"], "--format: unknown format 'pdf'"),
    (["--heatmap", "attack.z"], "--heatmap: expected KEY_X,KEY_Y[,facet KEY]"),
    (["--curves", "defense,facet "], "--curves"),
    (["--where", "defense=krum"], "--where: no runs to tabulate"),
    (["--bench-json", "missing.json"], "--bench-json: cannot read"),
    (["--screenshot", "--format", "md"], "--screenshot: needs html"),
])
def test_cli_user_errors_exit_2(store_path, tmp_path, capsys, argv, fragment):
    assert main(["report", str(store_path), "--out", str(tmp_path / "o"), *argv]) == 2
    assert fragment in capsys.readouterr().err


def test_cli_missing_store_is_an_error_and_creates_nothing(tmp_path, capsys):
    assert main(["report", str(tmp_path / "none.db")]) == 2
    assert "DB: results store not found" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


@pytest.mark.slow
def test_end_to_end_on_real_runs(tmp_path, capsys):
    from byzbench.experiments.runner import run_experiment

    db = tmp_path / "real.db"
    with ResultsStore(db) as store:
        for defense in ("mean", "trmean"):
            for seed in (0, 1):
                run_experiment(BASE.override([f"defense={defense}", f"seed={seed}", "attack=alie(z=8)"]), store)
    assert main(["report", str(db), "--out", str(tmp_path / "r"), "--curves", "defense"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| alie(z=8)"))
    with ResultsStore(db) as store:
        accs = {}
        for r in store.runs():
            accs.setdefault(r.config["defense"], []).append(
                100 * max(v for _, v in store.round_metrics(r.run_id)["test_accuracy"]))
    for defense in ("mean", "trmean"):
        vals = accs[defense]
        assert f"{np.mean(vals):.2f} ± {np.std(vals, ddof=1):.2f}" in row
