"""Behaviour of ``byzbench bench defenses`` (`byzbench.bench`) on tiny sizes."""

from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch

from byzbench import bench
from byzbench.cli import main
from byzbench.defenses import AGGREGATORS, PREAGGREGATORS, Aggregator

TINY = ["bench", "defenses", "--n", "7", "--d", "1000", "--f", "2", "--reps", "3", "--budget", "0.05"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def test_rules(monkeypatch):
    """Throwaway private aggregators: one that raises, one that needs the server gradient."""
    AGGREGATORS.names()
    monkeypatch.setattr(AGGREGATORS, "_entries", dict(AGGREGATORS._entries))
    monkeypatch.setattr(AGGREGATORS, "_aliases", dict(AGGREGATORS._aliases))
    seen: list[torch.Tensor] = []

    @AGGREGATORS.register("_boom")
    class Boom(Aggregator):
        """Test rule that always fails."""

        def aggregate(self, x, f, ctx):
            raise RuntimeError("kaput\nsecond line")

    @AGGREGATORS.register("_needsg")
    class NeedsServer(Aggregator):
        """Test rule returning the server gradient."""

        needs_server_gradient = True

        def aggregate(self, x, f, ctx):
            g = ctx.server_gradient()
            seen.append(g)
            return g

    return seen


def _rows(out: str) -> dict[str, list[str]]:
    """Table rows of the printed table, keyed by rule (the second column)."""
    rows = {}
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) >= 4 and cells[0] != "group" and not set(cells[0]) <= {"-"}:
            rows[cells[1]] = cells
    return rows


# --------------------------------------------------------------------------- the command


def test_tiny_run_prints_floor_and_a_ratio_per_rule(capsys):
    assert main([*TINY, "--rules", "mean,median,trmean"]) == 0
    out = capsys.readouterr().out
    assert "n = 7, d = 1000, f = 2, float32 on cpu" in out
    assert "caches:" in out
    rows = _rows(out)
    assert rows["x.sum()"][0] == "floor" and rows["x.sum()"][4] == "1.0"
    for rule in ("mean", "median", "trmean"):
        group, _, kind, ms, ratio, target, status, reps = rows[rule]
        assert group == "<= 10x" and kind == "aggregator" and target == "<= 10x"
        assert float(ms) > 0 and float(ratio) > 0
        assert status in ("pass", "FAIL")
        assert status == ("pass" if float(ratio) <= 10 else "FAIL")
        assert int(reps) == 3
    assert re.search(r"\d/3 rules within target", out)


def test_json_output_parses(capsys, tmp_path):
    path = tmp_path / "out.json"
    assert main([*TINY, "--rules", "mean,cm", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert (data["n"], data["d"], data["f"], data["dtype"], data["device"]) == (7, 1000, 2, "float32", "cpu")
    assert data["floor_s"] > 0 and data["sortnet"] == "eager"
    assert [r["rule"] for r in data["rows"]] == ["mean", "median"]
    for r in data["rows"]:
        assert r["seconds"] > 0 and r["reps"] == 3 and r["target"] == 10.0
        assert r["ratio"] == pytest.approx(r["seconds"] / data["floor_s"])
        assert r["status"] in ("pass", "FAIL") and r["group"] == "<= 10x" and r["error"] is None
        assert r["first_s"] > 0  # the untimed warm-up call
    assert isinstance(data["machine"]["caches"], list)


def test_unknown_rule_exits_2_naming_it(capsys):
    assert main([*TINY, "--rules", "mean,nosuchrule"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("byzbench: error: --rules: unknown rule 'nosuchrule'")
    assert "median" in line  # the valid names are listed


@pytest.mark.parametrize(
    "extra, fragment",
    [(["--reps", "2"], "--reps: must be an integer ≥ 3"),
     (["--f", "7"], "--f: must be an integer with 0 ≤ f < n = 7"),
     (["--d", "0"], "--d: must be an integer ≥ 1"),
     (["--dtype", "int8"], "--dtype: must be one of float32"),
     (["--device", "tpu"], "--device"),
     (["--threads", "0"], "--threads: must be an integer ≥ 1"),
     (["--budget", "0"], "--budget: must be > 0"),
     (["--sizes", "10,x"], "--sizes: expected comma-separated integers"),
     (["--sizes", "10,0"], "--sizes: needs one or more integers ≥ 1"),
     (["--rules", "median(mode=upper)"], "mode must be one of"),
     (["--rules", "trmean(c=1)"], "has no parameter 'c'"),
     (["--sortnet", "fast"], "--sortnet: must be one of ('eager', 'compile', 'native')"),
     (["--clock", "gpu"], "--clock: must be one of wall, cpu"),
     (["--json", "no/such/folder/out.json"], "--json: folder of no/such/folder/out.json does not exist")],
)
def test_bad_options_exit_2_naming_the_option(capsys, extra, fragment):
    assert main([*TINY, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("byzbench: error: ") and fragment in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_without_a_gpu_is_a_user_error(capsys):
    assert main([*TINY, "--device", "cuda"]) == 2
    assert "--device: CUDA is not available" in capsys.readouterr().err


def test_failing_rule_is_an_error_row_and_server_gradient_is_supplied(capsys, test_rules):
    assert main([*TINY, "--rules", "_boom,_needsg,mean"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert rows["_boom"][3:5] == ["-", "-"] and rows["_boom"][6] == "error"
    assert "_boom: RuntimeError: kaput second line" in out  # one line per error
    assert float(rows["_needsg"][3]) > 0 and rows["_needsg"][0] == "no target"
    assert test_rules and all(g.shape == (1000,) for g in test_rules)
    assert all(torch.equal(g, test_rules[0]) for g in test_rules)  # one fixed server gradient
    assert main([*TINY, "--rules", "_boom", "--check"]) == 1
    capsys.readouterr()


def test_infeasible_rule_is_an_error_row(capsys):
    assert main([*TINY, "--f", "4", "--rules", "median,mean"]) == 0
    out = capsys.readouterr().out
    assert _rows(out)["median"][6] == "error"
    assert "median: InfeasibleError: median requires n > 2f; got n = 7, f = 4" in out


def test_sizes_report_ns_per_coordinate(capsys, tmp_path):
    path = tmp_path / "sizes.json"
    argv = ["bench", "defenses", "--n", "7", "--f", "2", "--reps", "3", "--budget", "0.01",
            "--rules", "mean,median", "--sizes", "100,2000", "--json", str(path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "caches:" in out and "ns per coordinate" in out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("rule"))
    assert "d=100" in header and "d=2000" in header
    assert re.search(r"input\s+2\.7 KiB\s+54\.7 KiB", out)  # 7 × d × 4 bytes
    for name in ("floor", "mean", "median"):
        line = next(line for line in lines if line.startswith(name))
        assert all(float(v) > 0 for v in line.split()[-2:])
    data = json.loads(path.read_text())
    assert data["sizes"] == [100, 2000] and [r["d"] for r in data["results"]] == [100, 2000]


def test_sortnet_backend_is_applied_during_the_run_only(capsys, monkeypatch):
    from byzbench.ops import sortnet

    seen = []
    real = sortnet.order_statistics

    def spy(x, ranks, **kw):
        seen.append(sortnet.default_backend())
        return real(x, ranks, **kw)

    monkeypatch.setattr("byzbench.defenses.median.order_statistics", spy)
    monkeypatch.delenv("BYZBENCH_SORTNET_BACKEND", raising=False)
    assert main([*TINY, "--rules", "median", "--sortnet", "compile"]) == 0  # d < compile threshold
    assert "sorting networks: compile" in capsys.readouterr().out
    assert seen and set(seen) == {"compile"}
    assert sortnet.default_backend() == "eager"


def test_cpu_clock(capsys, tmp_path):
    path = tmp_path / "cpu.json"
    assert main([*TINY, "--rules", "mean", "--clock", "cpu", "--threads", "1", "--json", str(path)]) == 0
    assert "1 thread(s), sorting networks: eager, cpu clock" in capsys.readouterr().out
    data = json.loads(path.read_text())
    assert data["clock"] == "cpu" and data["floor_s"] >= 0


def test_bench_without_subcommand_prints_help(capsys):
    assert main(["bench"]) == 0
    assert "defenses" in capsys.readouterr().out


def test_script_calls_the_same_command(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["defenses.py", *TINY[2:], "--rules", "mean"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(ROOT / "benchmarks" / "defenses.py"), run_name="__main__")
    assert exc.value.code == 0
    assert "x.sum()" in capsys.readouterr().out


# --------------------------------------------------------------------------- library functions


def test_default_rules_are_every_registered_public_rule():
    specs = bench.resolve_rules(None)
    assert [s.name for s in specs if s.kind == "aggregator"] == AGGREGATORS.names()
    assert [s.name for s in specs if s.kind == "pre-aggregator"] == PREAGGREGATORS.names()


def test_rules_resolve_aliases_and_specs():
    (cm,) = bench.resolve_rules(["CM"])
    assert (cm.kind, cm.name, cm.label, cm.target) == ("aggregator", "median", "median", 10.0)
    (low,) = bench.resolve_rules(["median(mode=lower)"])
    assert low.params == {"mode": "lower"} and low.label == "median(mode=lower)"
    assert bench.split_names("a, b(k=1, j=2),c,") == ["a", "b(k=1, j=2)", "c"]


def test_targets_follow_the_table_through_aliases():
    assert bench.target_of("median") == bench.target_of("x", ("cm",)) == 10.0
    assert bench.target_of("geomed", ("gm",)) == 30.0
    assert bench.target_of("dnc") == 50.0 and bench.target_of("mda") == 200.0
    assert bench.target_of("smea") == 1500.0
    assert bench.target_of("mixtailor") is None and bench.target_of("unheard_of") is None
    assert bench.target_of("fltrust") == bench.target_of("arc") == 10.0


def test_rows_sorted_by_target_group_then_kind_then_name():
    named = [("smea", "aggregator"), ("zzz", "aggregator"), ("nnm", "pre-aggregator"),
             ("krum", "aggregator"), ("mean", "aggregator"), ("bucketing", "pre-aggregator")]
    rows = [bench.Row(name, kind, bench.target_of(name), 1.0, 1.0, 3) for name, kind in named]
    rows.sort(key=bench._sort_key)
    assert [r.rule for r in rows] == ["mean", "bucketing", "krum", "nnm", "smea", "zzz"]
    assert [r.group for r in rows] == ["<= 10x", "<= 10x", "<= 30x", "<= 30x", "<= 1500x", "no target"]
    assert rows[-1].status == "-"


def test_make_input_is_seeded_and_shifts_f_rows():
    x = bench.make_input(9, 4000, 3, torch.float64, seed=4)
    assert x.shape == (9, 4000) and x.dtype == torch.float64
    assert torch.equal(x, bench.make_input(9, 4000, 3, torch.float64, seed=4))
    assert not torch.equal(x, bench.make_input(9, 4000, 3, torch.float64, seed=5))
    means = x.mean(dim=1)
    assert bool((means[:6].abs() < 0.1).all()) and bool(((means[6:] - 5).abs() < 0.1).all())
    assert bench.make_input(5, 10, 0).dtype == torch.float32


def test_time_calls_respects_reps_budget_and_warm_up():
    calls = []
    times = bench.time_calls(lambda: calls.append(1), reps=7, budget_s=10.0)
    assert len(times) == 8 and len(calls) == 8  # the warm-up's time first, then 7 timed calls
    calls.clear()
    times = bench.time_calls(lambda: calls.append(1), reps=50, budget_s=0.0)
    assert len(times) == 4 and len(calls) == 4  # over budget: stops at the minimum of 3


def test_cache_sizes_read_sysfs_layout(tmp_path):
    for i, (level, kind, size) in enumerate([(1, "Data", "48K"), (2, "Unified", "1024K")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    (tmp_path / "index9").mkdir()  # unreadable entries are skipped
    caches = bench.cache_sizes(str(tmp_path))
    assert caches == [{"level": "L1", "type": "Data", "size": "48K"},
                      {"level": "L2", "type": "Unified", "size": "1024K"}]
    assert bench.format_caches(caches) == "L1d 48K, L2 1024K"
    assert bench.cache_sizes(str(tmp_path / "missing")) == []


def test_bench_defenses_library_call_restores_threads():
    before = torch.get_num_threads()
    res = bench.bench_defenses(n=5, d=300, f=1, reps=3, rules=["mean"], threads=1, budget_s=0.01)
    assert torch.get_num_threads() == before and res.threads == 1
    (row,) = res.rows
    assert row.rule == "mean" and row.ratio == pytest.approx(row.seconds / res.floor_s)
    assert "x.sum()" in bench.format_result(res)
