"""Calibration of parametrised attacks (`byzbench calibrate`): search, confirmation, CLI."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byzbench.attacks import ATTACKS
from byzbench.cli import main
from byzbench.config import ExperimentConfig
from byzbench.errors import ConfigError
from byzbench.experiments import ResultsStore
from byzbench.experiments import calibrate as cal
from byzbench.experiments.calibrate import (
    FAMILIES,
    INV_PHI,
    AttackFamily,
    calibrate,
    format_calibration,
    register_family,
    resolve_family,
    run_accuracy,
)

BASE = ExperimentConfig(rounds=10, eval_every=5, n_clients=8, n_byzantine=2, model="logistic")


class FakeRuns:
    """A ``run_many`` whose accuracy is a known function of the strength (no training).

    ``acc(value, cfg)`` gives the accuracy, ``dev(value)`` the per-round distance of the
    aggregate from the honest mean; ``diverge(value)`` marks diverged runs. Every config
    it receives is kept, so tests can check seeds, rounds and batches.
    """

    def __init__(self, acc, diverge=lambda v: False, param="z", dev=lambda v: 0.0):
        self.acc, self.diverge, self.param, self.dev = acc, diverge, param, dev
        self.calls: list[list[ExperimentConfig]] = []

    @property
    def configs(self) -> list[ExperimentConfig]:
        return [c for batch in self.calls for c in batch]

    def __call__(self, configs):
        self.calls.append(list(configs))
        out = []
        for c in configs:
            v = c.attack.params[self.param]
            if self.diverge(v):
                out.append(SimpleNamespace(run_id=c.run_id, status="diverged", final_accuracy=None,
                                           metrics={"test_accuracy": [(0, 0.9)]}, wall_time_s=0.0))
                continue
            a = self.acc(v, c)
            dist = [(t, self.dev(v)) for t in range(c.rounds)]
            out.append(SimpleNamespace(run_id=c.run_id, status="finished", final_accuracy=a, wall_time_s=0.0,
                                       metrics={"test_accuracy": [(0, 0.0), (c.rounds, a)],
                                                "dist_to_honest_mean": dist}))
        return out


def skewed_parabola(z, cfg=None):
    """Minimum 0.2 at z = 3.7, steeper on the left: the grid's best point is 5, not 2.5."""
    return 0.2 + (0.03 if z < 3.7 else 0.01) * (z - 3.7) ** 2


# ------------------------------------------------------------------ search behaviour


def test_grid_picks_5_and_golden_section_lands_near_3_7():
    runs = FakeRuns(skewed_parabola)
    res = calibrate(BASE, "alie", run_many=runs, refine_evals=10, seeds=[0], confirm_top=1)
    grid_scores = {e.value: e.accuracy for e in res.stage("grid")}
    assert min(grid_scores, key=grid_scores.get) == 5.0
    refined = [e.value for e in res.stage("refine")]
    assert all(2.5 <= v <= 8.0 for v in refined)  # the bracket of 5: its grid neighbours
    assert res.value == pytest.approx(3.7, abs=0.1)  # scores tie below 4 significant digits
    assert res.accuracy_mean == pytest.approx(skewed_parabola(res.value))


def test_golden_section_first_points_and_exact_evaluation_count():
    runs = FakeRuns(skewed_parabola)
    res = calibrate(BASE, "alie", run_many=runs, seeds=[0], confirm_top=1)  # refine_evals = 5
    refined = [e.value for e in res.stage("refine")]
    a, b = 2.5, 8.0
    assert refined[:2] == [round(b - INV_PHI * (b - a), 3), round(a + INV_PHI * (b - a), 3)]  # 4.601, 5.899
    assert len(refined) == 5 == len(set(refined))
    assert abs(res.value - 3.7) < abs(5.0 - 3.7)  # better than the best grid point


def test_log_scale_refines_geometrically():
    runs = FakeRuns(lambda s, c: abs(math.log10(s) - 1.3), param="sigma")  # minimum at σ ≈ 20
    res = calibrate(BASE, "gaussian", run_many=runs, seeds=[0], confirm_top=1, refine_evals=12)
    first = res.stage("refine")[0].value
    expect = math.exp(math.log(100) - INV_PHI * (math.log(100) - math.log(1)))  # bracket [1, 100] in log σ
    assert first == pytest.approx(expect, rel=1e-3)
    assert res.value == pytest.approx(10 ** 1.3, rel=0.1)


def test_categorical_family_picks_the_argmin_without_refinement():
    table = {"std": 0.5, "unit_vec": 0.3, "sign": 0.4}
    runs = FakeRuns(lambda p, c: table[p], param="perturbation")
    res = calibrate(BASE, "minmax", run_many=runs, seeds=[0, 1], confirm_top=3)
    assert res.value == "unit_vec" and res.accuracy_mean == 0.3
    assert res.stage("refine") == []
    assert [c.value for c in res.confirmed] == ["unit_vec", "sign", "std"]


def test_ties_go_to_the_smaller_strength():
    runs = FakeRuns(lambda z, c: 0.5)
    res = calibrate(BASE, "alie", run_many=runs, seeds=[0], refine=False)
    assert [c.value for c in res.confirmed] == [0.0, 0.5] and res.value == 0.0
    cat = calibrate(BASE, "minsum", grid=["sign", "std"], run_many=FakeRuns(lambda p, c: 0.5, param="perturbation"),
                    seeds=[0])
    assert cat.value == "sign"  # the earlier grid entry


def test_confirm_top_seeds_and_proxy_rounds_are_respected():
    runs = FakeRuns(skewed_parabola)
    res = calibrate(BASE, "alie", run_many=runs, seeds=[4, 5, 6], proxy_seeds=2, confirm_top=3, refine=False,
                    proxy_rounds=3)
    proxy = [c for c in runs.configs if c.rounds == 3]
    full = [c for c in runs.configs if c.rounds == 10]
    assert len(proxy) + len(full) == len(runs.configs)
    assert sorted({c.seed for c in proxy}) == [4, 5] and len(proxy) == 6 * 2
    assert sorted({c.seed for c in full}) == [4, 5, 6] and len(full) == 3 * 3
    confirmed = sorted({c.attack.params["z"] for c in full})
    assert confirmed == [2.5, 5.0, 8.0]  # the three best proxy values
    assert len(res.confirmed) == 3 and all(len(c.accuracies) == 3 for c in res.confirmed)
    assert res.proxy_seeds == (4, 5) and res.seeds == (4, 5, 6)
    assert all(e.rounds == 3 for e in res.stage("grid")) and all(e.rounds == 10 for e in res.stage("confirm"))


def test_default_proxy_is_a_fifth_of_the_rounds_and_default_seeds_follow_the_base():
    runs = FakeRuns(skewed_parabola)
    res = calibrate(BASE.override(["rounds=7", "seed=3"]), "alie", run_many=runs, refine=False)
    assert res.proxy_rounds == 2  # ⌈7/5⌉
    assert res.seeds == (3, 4, 5) and res.proxy_seeds == (3,)
    assert {c.rounds for c in runs.configs} == {2, 7}


def test_each_batch_holds_new_configs_only():
    runs = FakeRuns(skewed_parabola)
    calibrate(BASE, "alie", run_many=runs, seeds=[0, 1], proxy_rounds=10, refine=False)
    ids = [c.run_id for c in runs.configs]
    assert len(ids) == len(set(ids))  # proxy = full horizon: the seed-0 confirmations are reused
    assert len(runs.calls[0]) == 6 and len(runs.calls[1]) == 2


def test_diverged_runs_count_as_chance():
    runs = FakeRuns(lambda z, c: 0.8, diverge=lambda z: z >= 8)
    res = calibrate(BASE, "alie", run_many=runs, seeds=[0], refine=False)
    by_value = {e.value: e for e in res.stage("grid")}
    assert by_value[8.0].status == "diverged" and by_value[8.0].accuracy == pytest.approx(0.1)  # 10 digit classes
    assert res.value == 8.0 and res.accuracy_mean == pytest.approx(0.1)


def test_deviation_proxy_ranks_by_distance_and_confirms_by_accuracy():
    # The accuracy proxy is fooled (stronger attacks look better early); the deviation is not.
    runs = FakeRuns(lambda z, c: (0.9 - 0.05 * z) if c.rounds == 10 else 0.5 + 0.05 * z, dev=lambda z: z * (8 - z))
    res = calibrate(BASE, "alie", run_many=runs, seeds=[0], proxy_score="deviation", refine=False)
    assert [v for v, _ in res.proxy_ranking[:2]] == [5.0, 2.5]  # deviation 15 > 13.75 > 0 …
    assert res.proxy_ranking[0][1] == pytest.approx(15.0)
    assert res.value == 5.0 and res.accuracy_mean == pytest.approx(0.65)
    fooled = calibrate(BASE, "alie", run_many=FakeRuns(runs.acc), seeds=[0], refine=False)
    assert {c.value for c in fooled.confirmed} == {0.0, 0.5}  # the proxy confirms the weakest strengths
    refined = calibrate(BASE, "alie", run_many=runs, seeds=[0], proxy_score="deviation", refine_evals=12,
                        confirm_top=1)
    assert refined.value == pytest.approx(4.0, abs=0.1)  # argmax of z(8 − z), up to 4-digit ties


def test_diverged_run_is_the_strongest_deviation():
    runs = FakeRuns(lambda z, c: 0.8, diverge=lambda z: z == 10.0, dev=lambda z: z)
    res = calibrate(BASE, "alie", run_many=runs, seeds=[0], proxy_score="deviation", refine=False)
    assert res.proxy_ranking[0] == (10.0, math.inf) and res.value == 10.0
    assert json.loads(json.dumps(res.to_dict()))["proxy_ranking"][0]["score"] == "inf"


def test_deviation_proxy_needs_the_distance_series():
    def bare(configs):
        return [SimpleNamespace(run_id=c.run_id, status="finished", final_accuracy=0.5,
                                metrics={"test_accuracy": [(0, 0.5)]}) for c in configs]

    with pytest.raises(RuntimeError, match="dist_to_honest_mean"):
        calibrate(BASE, "alie", run_many=bare, seeds=[0], proxy_score="deviation")


def test_metric_max_versus_final():
    finished = SimpleNamespace(run_id="x", status="finished", final_accuracy=0.4,
                               metrics={"test_accuracy": [(0, 0.1), (5, 0.7), (10, 0.4)]})
    assert run_accuracy(finished, "max_accuracy", 0.1) == 0.7
    assert run_accuracy(finished, "final_accuracy", 0.1) == 0.4
    diverged = SimpleNamespace(run_id="y", status="diverged", final_accuracy=None,
                               metrics={"test_accuracy": [(0, 0.9)]})
    assert run_accuracy(diverged, "max_accuracy", 0.1) == 0.1
    with pytest.raises(RuntimeError, match="failed"):
        run_accuracy(SimpleNamespace(run_id="z", status="failed"), "max_accuracy", 0.1)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.sampled_from([0.1, 0.2, 0.3, 0.4]), min_size=3, max_size=3))
def test_full_confirmation_returns_the_argmin_with_ties_to_the_earlier(accs):
    grid = ["std", "unit_vec", "sign"]
    table = dict(zip(grid, accs))
    res = calibrate(BASE, "minmax", grid=grid, run_many=FakeRuns(lambda p, c: table[p], param="perturbation"),
                    seeds=[0], confirm_top=3)
    best = min(range(3), key=lambda i: (accs[i], i))
    assert res.value == grid[best] and res.accuracy_mean == accs[best]


def test_result_dict_is_json_and_the_table_names_the_verdict():
    res = calibrate(BASE, "alie", run_many=FakeRuns(skewed_parabola), seeds=[0, 1])
    d = json.loads(json.dumps(res.to_dict()))
    assert d["value"] == res.value and d["param"] == "z" and len(d["evaluations"]) == len(res.evaluations)
    assert set(d["stage_times"]) == {"grid", "refine", "confirm"}
    text = format_calibration(res)
    assert f"calibrated alie.z = {res.value:g}" in text and "confirm" in text


def test_base_attack_parameters_are_kept_for_the_same_attack():
    runs = FakeRuns(lambda z, c: 0.5)
    calibrate(BASE.override(["attack=alie(sign=1)"]), "alie", run_many=runs, seeds=[0], refine=False)
    assert all(c.attack.params["sign"] == 1 for c in runs.configs)
    runs = FakeRuns(lambda e, c: 0.5, param="epsilon")
    calibrate(BASE.override(["attack=alie(sign=1)"]), "ipm", run_many=runs, seeds=[0], refine=False)
    assert all(c.attack.to_dict() == {"name": "ipm", "epsilon": c.attack.params["epsilon"]} for c in runs.configs)


# ------------------------------------------------------------------ families


def test_every_default_family_has_a_valid_grid():
    for name, fam in FAMILIES.items():
        if name not in ATTACKS.names():  # e.g. hybrid before its attack exists
            continue
        assert resolve_family(name) == fam  # already checked and sorted
        for value in fam.grid:  # every default candidate builds the attack
            BASE.override([f"attack={name}"]).override([f"attack.{fam.param}={value}"]).validate()


def test_hybrid_family_when_registered():
    if "hybrid" not in ATTACKS.names():
        pytest.skip("the hybrid attack is not registered")
    runs = FakeRuns(lambda z, c: 0.5, param="z2")
    res = calibrate(BASE, "hybrid", run_many=runs, seeds=[0], refine=False)
    assert res.param == "z2" and res.value == FAMILIES["hybrid"].grid[0]


def test_user_parameter_and_grid_define_a_family():
    fam = resolve_family("rop", param="angle", grid=[90, 45, 135])
    assert fam.kind == "continuous" and fam.grid == (45.0, 90.0, 135.0)
    cat = resolve_family("alie", param="zmax_mode", grid=["standard", "paper_alt"])
    assert cat.kind == "categorical" and cat.grid == ("standard", "paper_alt")
    ints = resolve_family("mimic", param="warmup", grid=[1, 5, 3])
    assert ints.integer and ints.grid == (1, 3, 5)


def test_register_family_extends_the_table(monkeypatch):
    monkeypatch.delitem(FAMILIES, "rop", raising=False)
    fam = register_family(AttackFamily("rop", "mixing", "continuous", (0.9, 0.1, 0.5), (0.0, 1.0)))
    assert FAMILIES["rop"] is fam and fam.grid == (0.1, 0.5, 0.9)
    runs = FakeRuns(lambda m, c: m, param="mixing")
    assert calibrate(BASE, "rop", run_many=runs, seeds=[0], refine=False).value == 0.1


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"attack": "nosuch"}, "attack"),
    ({"attack": "mimic"}, "attack"),  # no default family
    ({"attack": "alie", "param": "zz", "grid": [1]}, "param"),
    ({"attack": "rop", "param": "angle"}, "grid"),  # a new parameter needs a grid
    ({"attack": "alie", "grid": []}, "grid"),
    ({"attack": "alie", "grid": [-1.0, 2.0]}, "grid"),  # below the bounds
    ({"attack": "alie", "grid": [1, 1.0]}, "grid"),  # duplicates
    ({"attack": "alie", "grid": ["std"]}, "grid"),
    ({"attack": "gaussian", "grid": [0.0, 1.0]}, "grid"),  # log scale needs > 0
    ({"attack": "minmax", "grid": ["std", "bogus"]}, "attack.perturbation"),
    ({"attack": "alie", "proxy_rounds": 11}, "proxy_rounds"),
    ({"attack": "alie", "proxy_rounds": 0}, "proxy_rounds"),
    ({"attack": "alie", "metric": "accuracy"}, "metric"),
    ({"attack": "alie", "proxy_score": "loss"}, "proxy_score"),
    ({"attack": "alie", "seeds": []}, "seeds"),
    ({"attack": "alie", "seeds": [0, 0]}, "seeds"),
    ({"attack": "alie", "seeds": [0], "proxy_seeds": 2}, "proxy_seeds"),
    ({"attack": "alie", "confirm_top": 0}, "confirm_top"),
    ({"attack": "alie", "refine_evals": 1}, "refine_evals"),
    ({"attack": "alie", "threads": 0}, "threads"),
])
def test_invalid_arguments_name_the_key_before_any_run(kwargs, key):
    runs = FakeRuns(lambda z, c: 0.5)
    attack = kwargs.pop("attack")
    with pytest.raises(ConfigError) as err:
        calibrate(BASE, attack, run_many=runs, **kwargs)
    assert err.value.key == key
    assert runs.calls == []


def test_no_byzantine_client_is_an_error():
    with pytest.raises(ConfigError) as err:
        calibrate(BASE.override(["n_byzantine=0"]), "alie", run_many=FakeRuns(lambda z, c: 0.5))
    assert err.value.key == "n_byzantine"


def test_run_many_must_return_one_result_per_config():
    with pytest.raises(RuntimeError, match="returned 0 results"):
        calibrate(BASE, "alie", run_many=lambda cfgs: [], seeds=[0])


# ------------------------------------------------------------------ real runs


TINY = ExperimentConfig(rounds=30, eval_every=10, n_clients=8, n_byzantine=2, model="logistic", defense="median",
                        partition="dirichlet(beta=0.1)", lr=0.5)


@pytest.mark.slow
def test_real_alie_against_median_is_no_better_than_no_attack(tmp_path):
    with ResultsStore(tmp_path / "r.db") as store:
        res = calibrate(TINY, "alie", grid=[0, 1, 5], seeds=[0, 1], proxy_rounds=10, refine_evals=2, store=store)
        zero = [run_accuracy(r, "max_accuracy", 0.1) for r in cal.sequential_runner(store)(
            [TINY.override([f"seed={s}", "attack.z=0.0"]) for s in (0, 1)])]
    assert res.accuracy_mean <= sum(zero) / 2
    assert res.value > 0


def test_sequential_runner_sets_and_restores_torch_threads(monkeypatch):
    import torch

    seen = []
    monkeypatch.setattr("byzbench.experiments.runner.run_experiment",
                        lambda cfg, store=None: seen.append(torch.get_num_threads()) or cfg.run_id)
    before = torch.get_num_threads()
    assert cal.sequential_runner(threads=1)([BASE]) == [BASE.run_id]
    assert seen == [1] and torch.get_num_threads() == before


@pytest.mark.slow
def test_rerun_with_the_store_reuses_every_finished_run(tmp_path, monkeypatch):
    kwargs = {"grid": [0, 5], "seeds": [0], "proxy_rounds": 5, "refine_evals": 2}
    cfg = TINY.override(["rounds=10"])
    with ResultsStore(tmp_path / "r.db") as store:
        first = calibrate(cfg, "alie", store=store, **kwargs)
        assert len(store.finished_ids()) == len({e.run_id for e in first.evaluations})

        def no_runs(*args, **kw):
            raise AssertionError("a finished run was run again")

        monkeypatch.setattr("byzbench.experiments.runner.run_experiment", no_runs)
        again = calibrate(cfg, "alie", store=store, **kwargs)
    assert again.value == first.value and again.accuracy_mean == first.accuracy_mean
    assert [e.accuracy for e in again.evaluations] == [e.accuracy for e in first.evaluations]


# ------------------------------------------------------------------ command line


@pytest.mark.slow
def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    out_json = tmp_path / "cal.json"
    argv = ["calibrate", "--set", "rounds=6", "--set", "n_clients=8", "--set", "n_byzantine=2",
            "--set", "model=logistic", "--set", "defense=nnm > trmean", "--attack", "ipm", "--grid", "0,2.5",
            "--proxy-rounds", "2", "--seeds", "0", "--confirm-top", "1", "--no-refine",
            "--db", str(tmp_path / "r.db"), "--json", str(out_json), "--progress", "never"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "calibrate ipm.epsilon against nnm > trmean" in out and "calibrated ipm.epsilon = " in out
    data = json.loads(out_json.read_text())
    assert data["value"] in (0.0, 2.5) and data["proxy_rounds"] == 2 and data["seeds"] == [0]
    with ResultsStore(tmp_path / "r.db") as store:
        assert len(store.finished_ids()) == 3  # two proxies, one confirmation


@pytest.mark.parametrize(("args", "needle"), [
    (["--attack", "alie", "--grid", "1,,2"], "--grid"),
    (["--attack", "alie", "--seeds", "a,b"], "--seeds"),
    (["--attack", "alie", "--param", "nope", "--grid", "1"], "param:"),
    (["--attack", "alie", "--metric", "loss"], "metric:"),
    (["--attack", "alie", "--set", "n_byzantine=13"], "n_byzantine:"),
])
def test_cli_errors_exit_2_naming_the_key(tmp_path, capsys, args, needle):
    assert main(["calibrate", "--no-db", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("byzbench: error:") and needle in err
