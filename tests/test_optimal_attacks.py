"""Optimal attacks of seed 001: SSNLP, full NLP, STAB and the beam planner (ALGORITHMS.md §4.14–§4.15)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import attacker_view
from hypothesis import given, settings
from hypothesis import strategies as st

from byzbench.attacks import ATTACKS, Attack
from byzbench.attacks.beam import Beam
from byzbench.attacks.nlp import NLP
from byzbench.attacks.ssnlp import SSNLP
from byzbench.attacks.stab import STAB, logit_gap
from byzbench.config import ExperimentConfig
from byzbench.errors import ConfigError
from byzbench.optimal import NONFINITE_LOSS, maximize, trajectory_value
from byzbench.optimal.lookahead import (
    AUTO_LAMBDA_BOX,
    LambdaSpace,
    SolverSettings,
    ssnlp_row,
)
from byzbench.sim.engine import Simulation


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread is faster


def digits(**over) -> ExperimentConfig:
    """Seed 001's logistic-regression setting, scaled down: 8 clients, 3 Byzantine, lr 0.01, CM."""
    cfg = ExperimentConfig(rounds=4, eval_every=4, n_clients=8, n_byzantine=3, model="logistic", lr=0.01,
                           batch_size=32, defense="median", partition="iid")
    return cfg.override([f"{k}={v}" for k, v in over.items()])


# ---------------------------------------------------------------- SSNLP's rows
def test_ssnlp_rows_by_hand():
    honest = torch.tensor([[1.0, 2.0], [3.0, -2.0]])
    assert torch.equal(ssnlp_row(honest, 0.0), torch.tensor([2.0, 0.0]))  # λ = 0: the honest mean
    assert torch.equal(ssnlp_row(honest, 1.0), torch.tensor([-2.0, 0.0]))  # λ = 1: −mean (IPM, ε = 1)
    assert torch.equal(ssnlp_row(honest, 0.5), torch.zeros(2))
    huge = ssnlp_row(honest, 1e300)
    assert bool(torch.isfinite(huge).all()) and huge[0] == -torch.finfo(torch.float32).max


@settings(max_examples=40, deadline=None)
@given(st.floats(-50, 50), st.lists(st.floats(-1e3, 1e3), min_size=6, max_size=6))
def test_ssnlp_row_is_the_convex_combination_of_mean_and_negated_mean(lam, values):
    honest = torch.tensor(values, dtype=torch.float64).view(3, 2)
    mean = honest.mean(dim=0)
    expected = (1 - lam) * mean + lam * (-mean)
    assert torch.allclose(ssnlp_row(honest, lam), expected, rtol=1e-9, atol=1e-9)


class _MeanCopies(Attack):
    """Every Byzantine client sends the honest mean (what λ ≡ 0 must reproduce)."""

    def craft(self, view):
        return view.honest.mean(dim=0).expand(view.f, -1)


ATTACKS.register("_test_mean_copies")(_MeanCopies)


class _LambdaProbe(SSNLP):
    """Sends SSNLP rows of a constant λ; at round 0 also replays ``steps`` rounds of them."""

    lam, steps, out = 0.0, 1, []

    def craft(self, view):
        cls = type(self)
        if view.round == 0:
            cls.out.append(view.simulate(LambdaSpace().controls(np.full(cls.steps, cls.lam)), cls.steps))
        return ssnlp_row(view.honest, cls.lam).expand(view.f, -1)


ATTACKS.register("_test_lambda_probe")(_LambdaProbe)


def _replayed(cfg: ExperimentConfig, lam: float, steps: int):
    """The replay, at round 0, of ``steps`` rounds with SSNLP rows of a constant λ, and the run."""
    _LambdaProbe.lam, _LambdaProbe.steps, _LambdaProbe.out = lam, steps, []
    res = Simulation(cfg.override(["attack=_test_lambda_probe"])).run()
    return _LambdaProbe.out[0], res


@pytest.mark.parametrize("lam, attack", [(0.0, "_test_mean_copies"), (1.0, "ipm(epsilon=1)")])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_lambda_zero_is_mean_copies_and_lambda_one_is_ipm(lam, attack, momentum):
    cfg = digits(rounds=4, momentum=momentum)
    trajectory, probe = _replayed(cfg, lam, 3)
    real = Simulation(cfg.override([f"attack={attack}"])).run()
    assert probe.series("train_loss") == real.series("train_loss")
    np.testing.assert_allclose(trajectory.losses, real.series("train_loss")[1:4], rtol=1e-5)


# ---------------------------------------------------------------- quadratic toy, AGG = mean
class _QuadraticReplay:
    """Closed-form replay of 2-D mean estimation with AGG = mean: honest messages θ − x_i,
    loss ½·mean_i ‖θ − x_i‖² on the next step's points (the `Replay` contract)."""

    aggregator = "mean"

    def __init__(self, h: int = 4, f: int = 2, lr: float = 0.5, horizon: int = 8) -> None:
        gen = torch.Generator().manual_seed(3)
        self.points = 2.0 + torch.randn(horizon + 1, h, 2, generator=gen, dtype=torch.float64)
        self.h, self.f, self.lr, self.remaining, self.steps_run = h, f, lr, horizon, 0

    def __call__(self, controls, steps=None, logits=False):
        steps = len(controls) if steps is None else steps
        theta, losses = torch.zeros(2, dtype=torch.float64), []
        for i in range(steps):
            honest = theta - self.points[i]
            rows = controls[i](i, attacker_view(honest, self.f)).expand(self.f, -1)
            theta = theta - self.lr * torch.cat([honest, rows]).mean(dim=0)
            losses.append(0.5 * float(((theta - self.points[i + 1]) ** 2).sum(dim=1).mean()))
        self.steps_run += steps
        return type("T", (), {"losses": np.array(losses), "diverged": None})()


@pytest.mark.parametrize("solver", ["L-BFGS-B", "SLSQP", "Powell"])
def test_mean_on_a_quadratic_toy_gives_the_largest_admissible_lambda(solver):
    replay = _QuadraticReplay()
    view = attacker_view(torch.zeros(4, 2, dtype=torch.float64), 2)
    view.simulate = replay
    attack = SSNLP(lookahead=3, solver=solver, bounds=[-2.0, 2.0], x0=0.0)
    steps, info = attack.plan(view, 3)
    lams = [s.diagnostics["lambda"] for s in steps]
    assert lams == pytest.approx([2.0, 2.0, 2.0], abs=1e-3)
    best = trajectory_value(replay(LambdaSpace().controls(np.full(3, 2.0))).losses, "nlp1")
    assert info["objective"] == pytest.approx(best, rel=1e-6) and info["evals"] > 1


# ---------------------------------------------------------------- SSNLP end to end
class _Consistency:
    """Mixin: after each plan, replays the committed controls and records (planned J, replayed J)."""

    records: list[tuple[float, float]] = []

    def plan(self, view, steps):
        out, info = super().plan(view, steps)
        again = view.simulate([s.control for s in out], steps, logits=True)
        type(self).records.append((info["objective"], self.value(again), again.losses))
        return out, info


class _CheckedSSNLP(_Consistency, SSNLP):
    records: list = []


class _CheckedNLP(_Consistency, NLP):
    records: list = []


class _CheckedSTAB(_Consistency, STAB):
    records: list = []


ATTACKS.register("_test_checked_ssnlp")(_CheckedSSNLP)
ATTACKS.register("_test_checked_nlp")(_CheckedNLP)
ATTACKS.register("_test_checked_stab")(_CheckedSTAB)


@pytest.mark.parametrize("objective", ["nlp1", "nlp0", "nlp0.9", "nlp1.1", "nlp-1"])
def test_ssnlp_commits_its_best_plan_and_the_real_run_follows_it(objective):
    _CheckedSSNLP.records.clear()
    cfg = digits(rounds=4).override([f"attack=_test_checked_ssnlp(lookahead=2, objective={objective}, max_evals=12)"])
    res = Simulation(cfg).run()
    loss = res.series("train_loss")
    assert len(_CheckedSSNLP.records) == 2  # planning rounds 0 and 2
    for (planned, replayed, losses), t in zip(_CheckedSSNLP.records, (0, 2)):
        assert replayed == planned  # the committed λ's are the best point evaluated
        np.testing.assert_allclose(losses[: len(loss) - t - 1], loss[t + 1: t + 3], rtol=1e-5)
    assert [t for t, _ in res.metrics["attack.objective"]] == [0, 2]
    assert [t for t, _ in res.metrics["attack.lambda"]] == [0, 1, 2, 3]
    assert all(v == 12 for v in res.series("attack.evals"))
    assert res.series("attack.sim_steps") == [12 * 2 + 2.0] * 2  # + the mixin's own replay


def test_ssnlp_is_deterministic_and_hurts_more_than_no_attack():
    cfg = digits(rounds=30, eval_every=30)
    none = Simulation(cfg.override(["attack=none"])).run()
    a = Simulation(cfg.override(["attack=ssnlp(max_evals=10)"])).run()
    b = Simulation(cfg.override(["attack=ssnlp(max_evals=10)"])).run()
    assert a.metrics == b.metrics
    assert np.mean(a.series("train_loss")[-10:]) > np.mean(none.series("train_loss")[-10:])


def test_ssnlp_windows_stop_at_the_run_end_and_at_until():
    res = Simulation(digits(rounds=6, eval_every=6, attack="ssnlp(lookahead=4, max_evals=3)")).run()
    assert [t for t, _ in res.metrics["attack.objective"]] == [0, 4]
    assert res.series("attack.sim_steps") == [12.0, 6.0]  # 3 evaluations × 4, then × 2 rounds
    res = Simulation(digits(rounds=6, eval_every=6).override(["attack=ssnlp(lookahead=4, max_evals=3)",
                                                               "attack.until=3"])).run()
    assert [t for t, _ in res.metrics["attack.lambda"]] == [0, 1, 2]
    assert res.series("attack.sim_steps") == [9.0]


def test_solver_and_bounds_defaults():
    auto = SolverSettings()
    assert auto.resolve("median", 2, AUTO_LAMBDA_BOX) == ("Powell", None)
    assert auto.resolve("cc", 2, AUTO_LAMBDA_BOX) == ("SLSQP", [AUTO_LAMBDA_BOX] * 2)
    assert auto.resolve("rfa", 1, AUTO_LAMBDA_BOX) == ("L-BFGS-B", [AUTO_LAMBDA_BOX])
    assert SolverSettings("COBYLA", None).resolve("median", 1, AUTO_LAMBDA_BOX) == ("COBYLA", None)
    assert SolverSettings("Powell", (0.0, 1.0)).resolve("cc", 2, None) == ("Powell", [(0.0, 1.0)] * 2)


@pytest.mark.parametrize("spec, key", [
    ("ssnlp(lookahead=0)", "attack.lookahead"), ("ssnlp(objective=nlp2)", "attack.objective"),
    ("ssnlp(solver=BFGS)", "attack.solver"), ("ssnlp(bounds=[1, 0])", "attack.bounds"),
    ("ssnlp(bounds=wide)", "attack.bounds"), ("ssnlp(max_evals=0)", "attack.max_evals"),
    ("ssnlp(x0=.nan)", "attack.x0"), ("nlp(init=random)", "attack.init"),
    ("stab(reduction=median)", "attack.reduction"), ("stab(decision=sign)", "attack.decision"),
    ("beam(keep=lowest_cost)", "attack.keep"), ("beam(width=0)", "attack.width"),
    ("beam(psi=[labelflip])", "attack.psi"), ("beam(psi=[nosuch])", "attack.psi"),
    ("beam(psi=[ssnlp])", "attack.psi"),
])
def test_bad_parameters_name_their_key(spec, key):
    with pytest.raises(ConfigError) as err:
        digits().override([f"attack={spec}"]).validate()
    assert err.value.key == key


def test_maximize_stops_after_max_evals_and_keeps_the_best_point():
    res = maximize(lambda x: -float((x[0] - 3.0) ** 2), [0.0], method="Powell", max_evals=7)
    assert res.evaluations == 7 and res.value >= -9.0


# ---------------------------------------------------------------- full NLP
def tiny(**over) -> ExperimentConfig:
    """A d = 8 problem (3 features, 2 classes, logistic regression) for the full NLP."""
    cfg = digits(rounds=3, eval_every=3, data="synthetic(dim=3, num_classes=2)")
    return cfg.override([f"{k}={v}" for k, v in over.items()])


def test_full_nlp_plans_rows_at_least_as_harmful_as_its_start():
    _CheckedNLP.records.clear()
    starts = []

    class Start(_CheckedNLP):
        def plan(self, view, steps):
            from byzbench.optimal.lookahead import RowSpace, initial_rows
            x0 = initial_rows(view, steps, 1.0)
            starts.append(self.value(view.simulate(RowSpace(8, view.honest).controls(x0), steps)))
            return super().plan(view, steps)

    ATTACKS.register("_test_nlp_start")(Start)
    res = Simulation(tiny(attack="_test_nlp_start(lookahead=2, max_evals=60)")).run()
    assert res.status == "finished" and len(starts) == 2
    for start, (planned, replayed, _) in zip(starts, _CheckedNLP.records):
        assert planned >= start and replayed == planned
    assert res.series("attack.evals") == [60.0, 60.0]


def test_full_nlp_refuses_large_problems_naming_the_limit():
    with pytest.raises(ConfigError) as err:
        Simulation(digits(attack="nlp(lookahead=2)")).run()  # 2 × 650 > 1000 variables
    assert err.value.key == "attack.max_variables"
    with pytest.raises(ConfigError) as err:
        Simulation(digits(attack="stab(decision=row, max_variables=100)")).run()
    assert err.value.key == "attack.max_variables"


# ---------------------------------------------------------------- STAB
def test_logit_gap_by_hand():
    z = torch.tensor([[1.0, 4.0, -2.0], [0.0, 0.5, 0.25]])
    assert logit_gap(z, "sample") == pytest.approx((6.0 + 0.5) / 2)
    assert logit_gap(z, "global") == pytest.approx(6.0)
    assert logit_gap(torch.tensor([[0.0, math.nan]]), "sample") == NONFINITE_LOSS
    assert logit_gap(torch.tensor([[0.0, math.inf]]), "global") == NONFINITE_LOSS


class _GapVersusHonest(STAB):
    """Records, per round, STAB's planned gap and the gap after an honest step on the same batch."""

    pairs: list[tuple[float, float]] = []

    def craft(self, view):
        honest = view.simulate(lambda i, v: v.own, 1, logits=True)
        rows = super().craft(view)
        type(self).pairs.append((view.diagnostics["objective"], self.value(honest)))
        return rows


ATTACKS.register("_test_gap_vs_honest")(_GapVersusHonest)


@pytest.mark.parametrize("reduction", ["sample", "global"])
def test_stab_gap_after_an_attacked_step_beats_an_honest_step(reduction):
    _GapVersusHonest.pairs.clear()
    _CheckedSTAB.records.clear()
    Simulation(digits(rounds=4, attack=f"_test_gap_vs_honest(reduction={reduction}, max_evals=40)")).run()
    assert len(_GapVersusHonest.pairs) == 4
    for attacked, honest in _GapVersusHonest.pairs:
        assert attacked >= honest
    Simulation(digits(rounds=2, attack=f"_test_checked_stab(reduction={reduction}, max_evals=20)")).run()
    for planned, replayed, _ in _CheckedSTAB.records:
        assert replayed == planned


def test_stab_attacks_for_t1_rounds_then_stops():
    cfg = digits(rounds=5, eval_every=5).override(["attack=stab(max_evals=10)", "attack.until=3"])
    res = Simulation(cfg).run()
    assert [t for t, _ in res.metrics["attack.lambda"]] == [0, 1, 2]
    assert len(res.series("train_loss")) == 5


def test_stab_row_decision_on_a_small_model():
    res = Simulation(tiny(attack="stab(decision=row, max_evals=30)")).run()
    assert res.status == "finished" and len(res.series("attack.row_norm")) == 3


# ---------------------------------------------------------------- beam planner (Algorithm 2)
class _Const(Attack):
    """Test decision function: every Byzantine row is ``value`` everywhere."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = float(value)

    def craft(self, view):
        return torch.full((view.f, view.honest.shape[1]), self.value)


ATTACKS.register("_test_const")(_Const)


class _ValueReplay:
    """Fake replay: the loss after step i is the value of the row sent at step i."""

    aggregator, remaining = "mean", 100

    def __init__(self):
        self.steps_run = 0

    def __call__(self, controls, steps=None, logits=False):
        view = attacker_view(torch.zeros(3, 2), 2)
        self.steps_run += steps
        values = [float(c(i, view)[0, 0]) for i, c in enumerate(controls[:steps])]
        return type("T", (), {"losses": np.array(values), "diverged": None})()


def _plan(keep: str, memory: str, past: float = np.inf, lookahead: int = 1, depth: int = 2):
    beam = Beam(psi=["_test_const(value=1)", "_test_const(value=3)", "_test_const(value=2)"], width=2,
                lookahead=lookahead, depth=depth, keep=keep, memory=memory)
    beam._past_min = past
    view = attacker_view(torch.zeros(3, 2), 2)
    view.simulate = _ValueReplay()
    steps, info = beam.plan(view, lookahead * depth)
    return [int(s.diagnostics["psi"]) for s in steps], info


def test_beam_keeps_the_highest_running_minimum_loss_by_default():
    assert _plan("highest", "plan") == ([1, 1], {"objective": 3.0, "candidates": 9.0})
    assert _plan("lowest", "plan")[0] == [0, 0]
    # the past minimum binds every candidate: ties go to the higher (lower) mean loss
    assert _plan("highest", "run", past=0.5) == ([1, 1], {"objective": 0.5, "candidates": 9.0})
    assert _plan("lowest", "run", past=0.5)[0] == [0, 0]
    # blocks of ℓ = 2: Ψ² = 9 sequences per kept beam
    assert _plan("highest", "plan", lookahead=2, depth=2) == ([1, 1, 1, 1], {"objective": 3.0, "candidates": 27.0})


def test_beam_end_to_end_on_digits():
    cfg = digits(rounds=4, attack="beam(psi=[ipm, alie], depth=2)")
    a, b = Simulation(cfg).run(), Simulation(cfg).run()
    assert a.metrics == b.metrics
    assert set(a.series("attack.psi")) <= {0.0, 1.0} and len(a.series("attack.psi")) == 4
    assert a.series("attack.candidates") == [6.0, 6.0]  # 2 + 2 × 2 sequences per plan
    comma = Simulation(digits(rounds=4).override(["attack=beam(psi='ipm, alie', depth=2)"])).run()
    assert comma.metrics == a.metrics
