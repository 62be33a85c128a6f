"""Sweeps: expansion (grid, zip, conditional, seeds), validation, the driver's skip/retry
logic with the in-process executor, failures, the store's sweep tables, export, the CLI."""

from __future__ import annotations

import csv
import itertools
import json
import math
import sqlite3
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byzbench.cli import main
from byzbench.config import ExperimentConfig
from byzbench.errors import ConfigError
from byzbench.experiments.executors import SerialExecutor, plan_workers
from byzbench.experiments.export import flatten_config, to_pandas, to_records, write_csv
from byzbench.experiments.store import ResultsStore
from byzbench.experiments.sweep import Conditional, Sweep
from byzbench.experiments.sweeping import plan_sweep, run_configs, run_sweep

TINY = {"rounds": 3, "eval_every": 3, "n_clients": 8, "n_byzantine": 2, "model": "logistic"}


def _sweep(**raw) -> Sweep:
    return Sweep.from_dict({"name": "t", "base": dict(TINY), **raw})


def _varied(sweep: Sweep) -> list[dict]:
    return [run.varied for run in sweep.runs()]


# ---------------------------------------------------------------------- expansion
def test_grid_first_key_slowest_then_zip_axis_then_seed_major() -> None:
    sweep = _sweep(grid={"defense": ["trmean", "median"], "lr": [0.1, 0.05]},
                   zip={"attack.z": [1.0, 2.0], "batch_size": [8, 16]}, seeds=[3, 5])
    got = [(v["seed"], v["defense"], v["lr"], v["attack.z"], v["batch_size"]) for v in _varied(sweep)]
    expected = [(s, d, lr, z, b) for s in (3, 5) for d in ("trmean", "median") for lr in (0.1, 0.05)
                for z, b in ((1.0, 8), (2.0, 16))]
    assert got == expected
    assert sweep.varied_keys() == ["defense", "lr", "attack.z", "batch_size", "seed"]


def test_runs_equal_the_configs_override_builds() -> None:
    """Differential: every expanded run is base.override([...]) of its varied keys."""
    sweep = _sweep(grid={"attack": ["alie", "ipm"], "partition.beta": [0.1, 1.0]},
                   conditional=[{"where": {"attack": "alie"}, "grid": {"attack.z": [0.5, 2.5]}}], seeds=2)
    base = ExperimentConfig.from_dict(dict(TINY))
    runs = sweep.runs()
    assert len(runs) == 2 * (2 + 1) * 2  # (alie × 2 z + ipm) × 2 β × 2 seeds
    for run in runs:
        items = [f"{k}={v}" for k, v in run.varied.items()]
        assert base.override(items).validate().run_id == run.run_id
        assert run.config.to_dict() == base.override(items).validate().to_dict()
    assert [c.run_id for c in sweep.configs()] == [r.run_id for r in runs]


def test_conditional_applies_only_where_it_matches() -> None:
    sweep = _sweep(grid={"attack": ["alie", "ipm", "signflip"]},
                   conditional=[{"where": {"attack": "alie"}, "grid": {"attack.z": [0.5, 2.5]}},
                                {"where": {"attack": ["ipm", "mimic"]}, "zip": {"attack.epsilon": [0.1, 100]}}])
    got = [(r.config.attack.name, r.config.attack.params) for r in sweep.runs()]
    assert got == [("alie", {"z": 0.5}), ("alie", {"z": 2.5}), ("ipm", {"epsilon": 0.1}),
                   ("ipm", {"epsilon": 100}), ("signflip", {})]


def test_conditional_matches_aliases_params_and_defense_chains() -> None:
    sweep = _sweep(grid={"attack": ["sf", "alie"], "defense": ["nnm > trmean", "median"]},
                   conditional=[{"where": {"attack": "signflip", "defense": "nnm>trmean"},
                                 "grid": {"lr": [0.2, 0.3]}},
                                {"where": {"attack.z": None, "attack": "alie"}, "grid": {"attack.z": [4.0]}}])
    got = [(r.config.attack.name, r.config.defense, r.config.lr, r.config.attack.params.get("z"))
           for r in sweep.runs()]
    assert got == [("signflip", "nnm > trmean", 0.2, None), ("signflip", "nnm > trmean", 0.3, None),
                   ("signflip", "median", 0.1, None), ("alie", "nnm > trmean", 0.1, 4.0),
                   ("alie", "median", 0.1, 4.0)]


def test_conditional_sees_the_base_config() -> None:
    base = {**TINY, "attack": {"name": "alie", "z": 1.0}}
    sweep = Sweep.from_dict({"name": "b", "base": base, "grid": {"lr": [0.1]},
                             "conditional": [{"where": {"attack.z": 1.0}, "grid": {"momentum": [0.0, 0.9]}}]})
    assert [r.config.momentum for r in sweep.runs()] == [0.0, 0.9]


def test_seeds_count_and_dedup_by_run_id() -> None:
    sweep = _sweep(grid={"lr": [0.1, 0.1, 1, 1.0]}, seeds=3)  # 1 and 1.0 validate to the same run
    runs = sweep.runs()
    assert [(r.varied["seed"], r.config.lr) for r in runs] == [(s, lr) for s in range(3) for lr in (0.1, 1.0)]
    assert len({r.run_id for r in runs}) == len(runs) == 6
    assert len(sweep.points()) == 12


def test_no_axes_is_the_base_alone() -> None:
    runs = Sweep(name="one", base=ExperimentConfig.from_dict(dict(TINY))).runs()
    assert len(runs) == 1 and runs[0].varied == {}
    assert runs[0].run_id == ExperimentConfig.from_dict(dict(TINY)).validate().run_id


def test_programmatic_sweep_equals_the_parsed_one() -> None:
    built = Sweep(name="t", base=ExperimentConfig.from_dict(dict(TINY)), grid={"attack": ["alie", "ipm"]},
                  conditionals=[Conditional(where={"attack": "alie"}, grid={"attack.z": [1.0, 2.0]})], seeds=[0, 1])
    parsed = _sweep(grid={"attack": ["alie", "ipm"]},
                    conditional=[{"where": {"attack": "alie"}, "grid": {"attack.z": [1.0, 2.0]}}], seeds=[0, 1])
    assert [r.run_id for r in built.runs()] == [r.run_id for r in parsed.runs()]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=3, unique=True),
       st.lists(st.integers(1, 40), min_size=1, max_size=3, unique=True),
       st.integers(1, 3))
def test_grid_size_and_order_property(rounds: list[int], batches: list[int], seeds: int) -> None:
    sweep = _sweep(grid={"rounds": rounds, "batch_size": batches}, seeds=seeds)
    got = [(r.config.seed, r.config.rounds, r.config.batch_size) for r in sweep.runs()]
    assert got == list(itertools.product(range(seeds), rounds, batches))


@pytest.mark.parametrize("raw, key, fragment", [
    ({"grid": {"foo": [1]}}, "grid.foo", "unknown config key"),
    ({"grid": {"lr.x": [1]}}, "grid.lr.x", "no sub-keys"),
    ({"grid": {"attack.z.w": [1]}}, "grid.attack.z.w", "nested"),
    ({"grid": {"lr": 0.1}}, "grid.lr", "non-empty list"),
    ({"grid": {"lr": []}}, "grid.lr", "non-empty list"),
    ({"grid": ["lr"]}, "grid", "mapping"),
    ({"zip": {"lr": [0.1, 0.2], "rounds": [3]}}, "zip[0]", "equal lengths"),
    ({"zip": [{}]}, "zip[0]", "empty"),
    ({"grid": {"lr": [0.1]}, "zip": {"lr": [0.2]}}, "zip[0].lr", "also set by grid.lr"),
    ({"grid": {"lr": [-1.0]}}, "grid.lr", "value -1.0"),
    ({"grid": {"n_byzantine": [2, 4]}}, "grid.n_byzantine", "value 4"),
    ({"grid": {"defense": ["bulyan"]}}, "grid.defense", "bulyan"),
    ({"grid": {"attack": ["nope"]}}, "grid.attack", "unknown attack"),
    ({"grid": {"partition.beta": [0.5, -1.0]}}, "grid.partition.beta", "value -1.0"),
    ({"grid": {"attack": ["ipm"]}, "conditional": [{"where": {"attack": "ipm"}, "grid": {"attack.z": [1.0]}}]},
     "conditional[0].grid.attack.z", "value 1.0"),
    ({"conditional": [{"where": {"attack": "alei"}, "grid": {"lr": [1.0]}}]},
     "conditional[0].where.attack", "unknown attack"),
    ({"conditional": [{"where": {}, "grid": {"lr": [1.0]}}]}, "conditional[0].where", "non-empty mapping"),
    ({"conditional": [{"where": {"seed": 0}}]}, "conditional[0]", "needs a 'grid' or a 'zip'"),
    ({"conditional": [{"where": {"seed": 0}, "grid": {"lr": [1.0]}, "set": 1}]}, "conditional[0].set", "unknown"),
    ({"grid": {"lr": [0.1]}, "conditional": [{"where": {"seed": 0}, "grid": {"lr": [1.0]}}]},
     "conditional[0].grid.lr", "also set by grid.lr"),
    ({"grid": {"attack": ["alie"]},
      "conditional": [{"where": {"attack": "alie"}, "grid": {"attack.z": [1.0]}},
                      {"where": {"seed": 0}, "grid": {"attack.z": [2.0]}}]},
     "conditional[1].grid.attack.z", "two conditionals"),
    ({"seeds": 0}, "seeds", "≥ 1"),
    ({"seeds": [0, 0]}, "seeds", "distinct"),
    ({"seeds": [0, -1]}, "seeds", "≥ 0"),
    ({"seeds": 1.5}, "seeds", "count"),
    ({"grid": {"seed": [1]}, "seeds": 2}, "grid.seed", "not both"),
    ({"base": {"rounds": 0}}, "base", "rounds: must be ≥ 1"),  # no axes: the base is at fault
    ({"base": {"bogus": 1}}, "base", "unknown config key"),
    ({"base": 3}, "base", "config file path or a mapping"),
    ({"bogus": 1}, "bogus", "unknown sweep key"),
    ({"name": ""}, "name", "non-empty"),
])
def test_invalid_entries_fail_before_any_run_naming_the_key(raw, key, fragment) -> None:
    with pytest.raises(ConfigError) as info:
        Sweep.from_dict({"name": "t", "base": dict(TINY), **raw}).runs()
    assert info.value.key == key, str(info.value)
    assert fragment in str(info.value)


def test_error_for_the_base_names_the_config_key() -> None:
    with pytest.raises(ConfigError, match=r"base: the base config is invalid \(run: lr=0.1\): rounds: must be ≥ 1"):
        Sweep.from_dict({"name": "t", "base": {**TINY, "rounds": 0}, "grid": {"lr": [0.1]}}).runs()


def test_files_yaml_toml_json_and_base_path_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "base.yaml").write_text("\n".join(f"{k}: {v}" for k, v in TINY.items()))
    (tmp_path / "s.yaml").write_text(
        "base: cfg/base.yaml\ngrid:\n  attack: [alie, ipm]\nconditional:\n"
        "  - where: {attack: alie}\n    grid: {attack.z: [0.5, 2.5]}\nseeds: 2\n")
    (tmp_path / "s.toml").write_text(
        'name = "s"\nbase = "cfg/base.yaml"\nseeds = 2\n[grid]\nattack = ["alie", "ipm"]\n'
        '[[conditional]]\nwhere = {attack = "alie"}\ngrid = {"attack.z" = [0.5, 2.5]}\n')
    (tmp_path / "s.json").write_text(json.dumps({
        "base": "cfg/base.yaml", "grid": {"attack": ["alie", "ipm"]}, "seeds": 2,
        "conditional": [{"where": {"attack": "alie"}, "grid": {"attack.z": [0.5, 2.5]}}]}))
    ids = [[r.run_id for r in Sweep.from_file(tmp_path / f"s.{ext}").runs()] for ext in ("yaml", "toml", "json")]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 6
    assert Sweep.from_file(tmp_path / "s.yaml").name == "s"
    with pytest.raises(ConfigError, match="sweep file not found"):
        Sweep.from_file(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("grid: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        Sweep.from_file(tmp_path / "bad.yaml")


def test_example_sweep_file_expands() -> None:
    sweep = Sweep.from_file(Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "example.yaml")
    runs = sweep.runs()
    assert sweep.name == "example" and len(runs) == 24
    assert {r.config.attack.params.get("z") for r in runs if r.config.attack.name == "alie"} == {0.5, 2.5}
    assert all("z" not in r.config.attack.params for r in runs if r.config.attack.name == "signflip")


def test_default_name_is_a_digest_of_the_content() -> None:
    a = Sweep.from_dict({"base": dict(TINY), "grid": {"lr": [0.1, 0.2]}})
    b = Sweep.from_dict({"base": dict(TINY), "grid": {"lr": [0.1, 0.2]}})
    c = Sweep.from_dict({"base": dict(TINY), "grid": {"lr": [0.1, 0.3]}})
    assert a.name == b.name != c.name and a.name.startswith("sweep-")


# ---------------------------------------------------------------------- workers × threads
@pytest.mark.parametrize("workers, threads, cores, expected", [
    (None, None, 8, (1, 1)), (2, None, 8, (2, 1)), (None, 3, 8, (2, 3)), (None, 1, 8, (8, 1)),
    (2, 4, 8, (2, 4)), (8, None, 8, (8, 1)), (None, None, 1, (1, 1)), (None, 8, 8, (1, 8)),
])
def test_plan_workers(workers, threads, cores, expected) -> None:
    assert plan_workers(workers, threads, cores) == expected


@pytest.mark.parametrize("workers, threads, key", [(3, 3, "workers"), (9, None, "workers"), (0, None, "workers"),
                                                   (None, 9, "threads"), (2, 0, "threads"), (True, None, "workers")])
def test_plan_workers_rejects(workers, threads, key) -> None:
    with pytest.raises(ConfigError) as info:
        plan_workers(workers, threads, 8)
    assert info.value.key == key


# ---------------------------------------------------------------------- driver
class Recording(SerialExecutor):
    """The in-process executor, remembering which runs it was asked to compute."""

    def __init__(self) -> None:
        super().__init__(threads=1)
        self.started: list[str] = []

    def map(self, tasks, on_start):
        def start(task):
            self.started.append(task.run_id)
            on_start(task)
        return super().map(tasks, start)


def _rows(path: Path) -> dict[str, tuple]:
    with sqlite3.connect(path) as conn:
        return {r[0]: r for r in conn.execute("SELECT * FROM runs")}


def test_driver_runs_all_then_skips_all_leaving_rows_untouched(tmp_path: Path) -> None:
    sweep = _sweep(grid={"attack": ["alie", "ipm"]}, seeds=2)
    db = tmp_path / "r.db"
    snapshots = []
    with ResultsStore(db) as store:
        first = run_sweep(sweep, store, Recording(), progress=snapshots.append)
        assert (first.total, first.finished, first.skipped, first.failed) == (4, 4, 0, 0)
        assert store.sweep_run_ids("t") == [r.run_id for r in sweep.runs()]
        rows = _rows(db)
        metrics = {rid: store.round_metrics(rid) for rid in rows}
        again = Recording()
        second = run_sweep(sweep, store, again)
        assert again.started == [] and (second.skipped, second.finished) == (4, 0)
        assert _rows(db) == rows and {rid: store.round_metrics(rid) for rid in rows} == metrics
    assert snapshots[0].eta_s is None and snapshots[0].remaining == 4
    last = snapshots[-1]
    assert (last.done, last.running, last.remaining, last.failed) == (4, 0, 0, 0) and last.eta_s == 0.0
    assert all(s.done + s.failed + s.running + s.remaining == 4 for s in snapshots)


def test_driver_retries_failed_and_stale_running_runs(tmp_path: Path) -> None:
    sweep = _sweep(grid={"lr": [0.1, 0.2, 0.3, 0.4]})
    ids = [r.run_id for r in sweep.runs()]
    with ResultsStore(tmp_path / "r.db") as store:
        run_sweep(_sweep(grid={"lr": [0.1]}), store, Recording())  # ids[0] finished
        store.start_run(ids[1], {}, "v")  # a killed attempt: stale 'running'
        store.start_run(ids[2], {}, "v")
        store.finish_run(ids[2], status="failed", rounds_completed=0, metrics={}, final_accuracy=None,
                         final_loss=None, diverged_round=None, wall_time_s=0.0, error="boom")
        plan = plan_sweep(sweep, store, skip_failed=True)
        assert [(p.status, p.action) for p in plan] == [("finished", "skip"), ("running", "run"),
                                                        ("failed", "skip"), (None, "run")]
        keep = Recording()
        summary = run_sweep(sweep, store, keep, skip_failed=True)
        assert keep.started == [ids[1], ids[3]] and summary.kept_failed == 1 and summary.skipped == 2
        assert store.get_run(ids[2]).status == "failed"
        retry = Recording()
        summary = run_sweep(sweep, store, retry)
        assert retry.started == [ids[2]] and summary.finished == 1 and summary.kept_failed == 0
        assert store.statuses(ids) == dict.fromkeys(ids, "finished")
        assert len(store.runs()) == 4


def test_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    missing = tmp_path / "no-data"
    sweep = _sweep(grid={"data": ["digits", f"mnist(root={missing})", "digits(test_fraction=0.3)"]})
    failures = []
    with ResultsStore(tmp_path / "r.db") as store:
        summary = run_sweep(sweep, store, Recording(), on_failure=lambda rid, err: failures.append((rid, err)))
        ids = [r.run_id for r in sweep.runs()]
        assert (summary.finished, summary.failed) == (2, 1)
        assert summary.failures == failures and failures[0][0] == ids[1]
        assert failures[0][1].startswith("MissingDataError: data: dataset 'mnist': files not found")
        rec = store.get_run(ids[1])
        assert rec.status == "failed" and rec.error.startswith("MissingDataError")
        assert "Traceback (most recent call last)" in rec.error and store.round_metrics(ids[1]) == {}
        assert [store.get_run(i).status for i in (ids[0], ids[2])] == ["finished", "finished"]


def test_diverged_run_counts_as_done_and_is_not_rerun(tmp_path: Path) -> None:
    sweep = _sweep(grid={"defense": ["mean"], "attack.z": [1.0, 1e38]})  # z = 1e38 blows the mean up
    with ResultsStore(tmp_path / "r.db") as store:
        summary = run_sweep(sweep, store, Recording())
        assert (summary.finished, summary.diverged, summary.failed) == (1, 1, 0)
        bad = sweep.runs()[1].run_id
        rec = store.get_run(bad)
        assert rec.status == "diverged" and rec.final_accuracy is None and rec.diverged_round is not None
        again = Recording()
        assert run_sweep(sweep, store, again).skipped == 2 and again.started == []


def test_progress_display_refreshes_on_a_terminal_and_logs_lines_otherwise() -> None:
    import io

    from byzbench.commands.sweep import ProgressDisplay, format_duration
    from byzbench.experiments.sweeping import SweepProgress

    snap = SweepProgress("s", total=10, skipped=2, done=3, failed=1, running=2, remaining=2, elapsed_s=75.0,
                         eta_s=3725.0)
    line = "sweep s: 3 done · 2 running · 1 failed · 2 remaining · 2 skipped  [1m15s, ETA 1h02m05s]"
    tty = io.StringIO()
    display = ProgressDisplay(tty, tty=True, interval=0.0)
    display(snap)
    display.say("run x failed: boom")
    display.close()
    assert tty.getvalue() == "\r" + line + "\r" + " " * len(line) + "\r" + "run x failed: boom\n" + "\r" + line + "\n"
    log = io.StringIO()
    display = ProgressDisplay(log, tty=False, interval=3600.0)
    display(snap)
    display(SweepProgress("s", 10, 2, 4, 1, 1, 2, 80.0, None))  # within the interval: not written
    display.close()  # the latest state, always
    assert log.getvalue().splitlines() == [line, line.replace("3 done", "4 done").replace("2 running", "1 running")
                                           .replace("[1m15s, ETA 1h02m05s]", "[1m20s, ETA —]")]
    assert [format_duration(s) for s in (0.4, 59.6, 61, 3600)] == ["0s", "1m00s", "1m01s", "1h00m00s"]


@pytest.mark.slow
def test_forkserver_workers_match_the_in_process_runs(tmp_path: Path) -> None:
    from byzbench.experiments.executors import LocalExecutor

    sweep = _sweep(grid={"attack": ["alie", "ipm"]})
    with ResultsStore(tmp_path / "a.db") as a, ResultsStore(tmp_path / "b.db") as b:
        with LocalExecutor(1, 1, start_method="forkserver") as executor:
            assert run_sweep(sweep, a, executor).finished == 2
        run_sweep(sweep, b, SerialExecutor(threads=1))
        for run in sweep.runs():
            assert a.round_metrics(run.run_id) == b.round_metrics(run.run_id)
    with pytest.raises(ConfigError, match="start_method: must be one of spawn, forkserver"):
        LocalExecutor(1, 1, start_method="fork")


def test_invalid_sweep_writes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    with ResultsStore(db) as store:
        with pytest.raises(ConfigError):
            run_sweep(_sweep(grid={"lr": [0.1, -1.0]}), store, Recording())
        assert store.runs() == [] and store.sweep_names() == []


def test_second_driver_on_the_same_store_is_refused(tmp_path: Path) -> None:
    from byzbench.experiments.sweeping import driver_lock

    db = tmp_path / "r.db"
    with driver_lock(db), ResultsStore(db) as store, pytest.raises(ConfigError, match="another byzbench sweep"):
        run_sweep(_sweep(), store, Recording())
    with ResultsStore(db) as store:
        assert run_sweep(_sweep(), store, Recording()).finished == 1


# ---------------------------------------------------------------------- store
def test_store_sweep_tables_and_metric_summaries(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.db") as store:
        store.add_sweep_runs("a", ["r2", "r1", "r3"])
        store.add_sweep_runs("b", ["r1"])
        assert store.sweep_run_ids("a") == ["r2", "r1", "r3"] and store.sweep_names() == ["a", "b"]
        store.add_sweep_runs("a", ["r3", "r2"])  # an edited sweep lists its current runs
        assert store.sweep_run_ids("a") == ["r3", "r2"] and store.sweep_run_ids("zzz") == []
        store.start_run("r1", {}, "v")
        store.finish_run("r1", status="finished", rounds_completed=3, final_accuracy=0.5, final_loss=1.0,
                         diverged_round=None, wall_time_s=1.0,
                         metrics={"acc": [(0, 0.2), (1, math.nan), (2, 0.1)], "loss": [(0, math.nan)]})
        got = store.metric_summaries(["acc", "loss", "absent"])
        assert got["r1"]["acc"] == {"last": 0.1, "min": 0.1, "max": 0.2}
        assert all(math.isnan(v) for v in got["r1"]["loss"].values()) and "absent" not in got["r1"]
        assert store.statuses() == {"r1": "finished"} and store.statuses(["r9", "r1"]) == {"r1": "finished"}


def test_older_store_gains_the_sweep_table_and_keeps_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with ResultsStore(db) as store:
        store.start_run("r", {"lr": 0.1}, "v")
    with sqlite3.connect(db) as conn:  # a file written before sweep_runs existed
        conn.execute("DROP TABLE sweep_runs")
    before = _rows(db)
    with ResultsStore(db) as store:
        assert _rows(db) == before and store.sweep_names() == []
        store.add_sweep_runs("s", ["r"])
        assert store.sweep_run_ids("s") == ["r"]


# ---------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("export") / "r.db"
    sweep = _sweep(grid={"attack": ["alie", "ipm"], "partition.beta": [0.1, 1.0]}, name="exp")
    with ResultsStore(db) as store:
        run_sweep(sweep, store, SerialExecutor(threads=1))
        run_sweep(_sweep(grid={"model": ["mlp(hidden=[16, 8])"]}, name="other"), store, SerialExecutor(threads=1))
    return db


def test_flatten_config_components_lists_and_scalars() -> None:
    flat = flatten_config({"attack": {"name": "alie", "z": 8}, "model": {"name": "mlp", "hidden": [64, 32]},
                           "defense": "nnm > trmean", "clip_norm": None, "seed": 3})
    assert flat == {"attack": "alie(z=8)", "attack.name": "alie", "attack.z": 8, "model": "mlp(hidden=[64, 32])",
                    "model.name": "mlp", "model.hidden": "[64, 32]", "defense": "nnm > trmean",
                    "clip_norm": None, "seed": 3}


def test_records_one_row_per_run_with_flattened_keys(results: Path) -> None:
    with ResultsStore(results) as store:
        rows = to_records(store, sweep="exp", metrics=["train_loss"])
        every = to_records(store)
        ids = store.sweep_run_ids("exp")
        for row in rows:
            series = dict(store.round_metrics(row["run_id"]))
            assert row["max_accuracy"] == max(v for _, v in series["test_accuracy"])
            assert row["train_loss.last"] == series["train_loss"][-1][1]
            assert row["train_loss.min"] == min(v for _, v in series["train_loss"])
    assert [r["run_id"] for r in rows] == ids and len(every) == 5
    assert [(r["attack.name"], r["partition.beta"]) for r in rows] == [
        ("alie", 0.1), ("alie", 1.0), ("ipm", 0.1), ("ipm", 1.0)]
    assert all(list(r) == list(every[0]) for r in every)  # every row has every column
    assert {r["model.hidden"] for r in every} == {None, "[16, 8]"}
    assert all(r["status"] == "finished" and r["seed"] == 0 and r["defense"] == "trmean" for r in rows)
    with ResultsStore(results) as store, pytest.raises(ConfigError, match="no sweep 'nope'.*exp, other"):
        to_records(store, sweep="nope")


def test_csv_round_trip(results: Path, tmp_path: Path) -> None:
    with ResultsStore(results) as store:
        records = to_records(store)
    write_csv(records, tmp_path / "r.csv")
    with open(tmp_path / "r.csv", newline="") as handle:
        back = list(csv.DictReader(handle))
    assert len(back) == len(records) and list(back[0]) == list(records[0])
    for row, rec in zip(back, records):
        assert float(row["final_accuracy"]) == rec["final_accuracy"]
        assert row["clip_norm"] == "" and row["run_id"] == rec["run_id"]


def test_pandas_and_parquet(results: Path, tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    from byzbench.experiments.export import export

    with ResultsStore(results) as store:
        frame = to_pandas(store, sweep="exp")
        assert export(store, tmp_path / "r.parquet") == 5
    assert list(frame["attack.name"]) == ["alie", "alie", "ipm", "ipm"]
    assert list(frame["partition.beta"]) == [0.1, 1.0, 0.1, 1.0] and frame["partition.beta"].dtype == float
    back = pd.read_parquet(tmp_path / "r.parquet")
    assert len(back) == 5 and set(frame.columns) <= set(back.columns)
    assert sorted(back["final_accuracy"]) == sorted(to_pandas(ResultsStore(results))["final_accuracy"])


def test_parquet_without_pyarrow_names_the_package(results: Path, tmp_path: Path, monkeypatch) -> None:
    from byzbench.experiments.export import export

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with ResultsStore(results) as store, pytest.raises(ImportError, match="'pyarrow'.*byzbench\\[export\\]"):
        export(store, tmp_path / "r.parquet")
    assert main(["export", str(results), "--out", str(tmp_path / "r.parquet")]) == 2
    assert not (tmp_path / "r.parquet").exists()


# ---------------------------------------------------------------------- CLI
def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


BASE_YAML = "base: {rounds: 3, eval_every: 3, n_clients: 8, n_byzantine: 2, model: logistic}\n"


def test_cli_dry_run_lists_runs_and_creates_no_store(tmp_path: Path, capsys) -> None:
    path = _write(tmp_path, BASE_YAML + "grid: {attack: [alie, ipm]}\nseeds: 2\n")
    db = tmp_path / "r.db"
    assert main(["sweep", str(path), "--db", str(db), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "sweep s: 4 runs, 4 to run, 0 to skip" and len(out) == 6
    ids = [r.run_id for r in Sweep.from_file(path).runs()]
    assert out[2].split() == [ids[0], "new", "run", "attack=alie", "seed=0"]
    assert not db.exists()


def test_cli_errors_exit_2_naming_the_key(tmp_path: Path, capsys) -> None:
    bad = _write(tmp_path, BASE_YAML + "grid: {attack.z: [1.0], partition.beta: [0.5, -2]}\n")
    assert main(["sweep", str(bad), "--db", str(tmp_path / "r.db")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("byzbench: error: grid.partition.beta: value -2 is invalid")
    assert not (tmp_path / "r.db").exists()
    good = _write(tmp_path, BASE_YAML)
    assert main(["sweep", str(good), "--workers", "999"]) == 2
    assert "workers: 999 exceeds" in capsys.readouterr().err
    assert main(["sweep", str(good), "--ray-address", "auto"]) == 2
    assert "--ray-address: only applies to --executor ray" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none.db"), "--out", str(tmp_path / "x.csv")]) == 2
    assert main(["export", str(tmp_path / "none.db"), "--out", str(tmp_path / "x.txt")]) == 2


def test_cli_export_csv_of_one_sweep(results: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "e.csv"
    assert main(["export", str(results), "--out", str(out), "--sweep", "other"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote 1 runs to {out}"
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and rows[0]["model.hidden"] == "[16, 8]"
    assert main(["export", str(results), "--out", str(out), "--sweep", "nope"]) == 2
    assert "--sweep: no sweep 'nope'" in capsys.readouterr().err


def test_run_configs_runs_an_explicit_list_like_a_sweep(tmp_path):
    base = ExperimentConfig().override(["rounds=2", "eval_every=2", "n_clients=6", "n_byzantine=1",
                                        "model=logistic"])
    configs = [base.override([f"seed={s}"]) for s in (0, 1, 0)]  # seed 0 twice: runs once
    with ResultsStore(tmp_path / "r.db") as store:
        first = run_configs("explicit", configs, store, SerialExecutor(threads=1))
        assert (first.total, first.finished, first.skipped) == (2, 2, 0)
        ids = store.sweep_run_ids("explicit")
        assert ids == [configs[0].validate().run_id, configs[1].validate().run_id]
        stamps = {r.run_id: r.finished_at for r in store.runs()}
        again = run_configs("explicit", configs, store, SerialExecutor(threads=1))
        assert (again.skipped, again.finished) == (2, 0)
        assert {r.run_id: r.finished_at for r in store.runs()} == stamps
    with pytest.raises(ConfigError) as err, ResultsStore(tmp_path / "s.db") as store:
        run_configs("bad", [base.override(["n_byzantine=3"])], store, SerialExecutor(threads=1))
    assert err.value.key == "n_byzantine"
