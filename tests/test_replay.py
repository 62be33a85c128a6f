"""Replayable rounds (`view.simulate`) and the ``attack.until`` protocol of the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import reference_grads

from byzbench.attacks import ATTACKS, Attack
from byzbench.attacks.ipm import IPM
from byzbench.config import ExperimentConfig
from byzbench.errors import ConfigError
from byzbench.sim.engine import Simulation
from byzbench.sim.replay import Replay, Trajectory


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread is faster


def small(**over) -> ExperimentConfig:
    cfg = ExperimentConfig(rounds=3, eval_every=3, n_clients=8, n_byzantine=2, model="logistic", defense="median")
    return cfg.override([f"{k}={v}" for k, v in over.items()])


def _fixed_row(view) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)  # never the global generator (dropout's)
    return torch.randn(view.honest.shape[1], generator=gen)


class _ReplayingIPM(IPM):
    """IPM that replays many futures (every control form, logits too) before sending its rows."""

    uses_replay = True
    supported_knowledge = ("omniscient", "aggregator-aware")
    calls: list[Trajectory] = []

    def craft(self, view):
        sim = view.simulate
        out = [
            sim(lambda i, v: -v.honest.mean(dim=0) * (i + 2.0), steps=3, logits=True),
            sim(_fixed_row(view), steps=2),
            sim([_fixed_row(view), lambda i, v: v.own, torch.full((view.f, view.honest.shape[1]), 1e38)]),
            sim(torch.full((view.honest.shape[1],), float("nan"))),
        ]
        with pytest.raises(ValueError):
            sim(torch.zeros(3), steps=1)  # wrong row width: refused, state restored anyway
        type(self).calls.extend(out)
        return super().craft(view)


class _SeesView(Attack):
    """Records whether the view carries a replay handle."""

    seen: list[object] = []

    def craft(self, view):
        type(self).seen.append(view.simulate)
        return view.honest[: view.f].clone()


class _OwnLookahead(Attack):
    uses_replay = True
    knowledge = "own"

    def craft(self, view):
        return view.own


ATTACKS.register("_test_replaying_ipm")(_ReplayingIPM)
ATTACKS.register("_test_sees_view")(_SeesView)
ATTACKS.register("_test_own_lookahead")(_OwnLookahead)

CASES = {
    "plain": [],
    "momentum+cc": ["momentum=0.9", "defense=cc(tau=0.01)"],
    "krum (shuffled order)": ["defense=krum", "n_byzantine=1"],
    "bucketing (defense draws)": ["defense=bucketing(s=2) > median", "n_byzantine=1"],
    "fltrust (root batches)": ["defense=fltrust"],
    "dropout + local sgd + momentum": ["model=mlp(hidden=[16], dropout=0.5)", "local=sgd(steps=2)", "momentum=0.9"],
    "batchnorm running stats": ["model=resnet20(norm=batch, bn_eval=running)", "n_clients=5", "n_byzantine=1",
                                "batch_size=4", "rounds=2", "eval_every=2"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_simulate_leaves_the_real_run_bit_identical(case):
    cfg = small().override(CASES[case])
    base = Simulation(cfg.override(["attack=ipm(epsilon=1)"]))
    expected = base.run()
    _ReplayingIPM.calls.clear()
    probe = Simulation(cfg.override(["attack=_test_replaying_ipm(epsilon=1)"]))
    got = probe.run()
    assert _ReplayingIPM.calls, "the replaying attack never ran"
    assert got.metrics.keys() == expected.metrics.keys()
    for name in expected.metrics:
        assert got.metrics[name] == expected.metrics[name], name
    assert torch.equal(probe.theta, base.theta)
    for a, b in zip(probe.model.buffers(), base.model.buffers()):
        assert torch.equal(a, b)


def test_replayed_losses_and_parameters_are_those_of_the_real_future():
    cfg = small(rounds=4, eval_every=4, momentum=0.9)
    real = Simulation(cfg.override(["attack=ipm(epsilon=1)"]))
    train_loss = real.run().series("train_loss")
    after3 = Simulation(cfg.override(["attack=ipm(epsilon=1)", "rounds=3", "eval_every=3"]))
    after3.run()

    class Look(IPM):
        uses_replay = True
        trajectory: Trajectory | None = None

        def craft(self, view):
            if view.round == 0:
                type(self).trajectory = view.simulate(lambda i, v: -v.honest.mean(dim=0), steps=3, logits=True)
            return super().craft(view)

    ATTACKS.register("_test_look_ipm")(Look)
    Simulation(cfg.override(["attack=_test_look_ipm(epsilon=1)"])).run()
    tr = Look.trajectory
    assert tr.start == 0 and tr.diverged is None and tr.losses.shape == (3,)
    assert torch.equal(tr.params, after3.theta)
    np.testing.assert_allclose(tr.losses, train_loss[1:4], rtol=1e-5)
    for z, y, loss in zip(tr.logits, tr.labels, tr.losses):
        assert z.shape == (6 * 32, 10) and y.shape == (6 * 32,)
        assert float(F.cross_entropy(z, y)) == pytest.approx(loss, rel=1e-5)


def test_diverging_replay_reports_infinite_losses_and_no_crash():
    got: list[Trajectory] = []

    class Blow(IPM):
        uses_replay = True

        def craft(self, view):
            got.append(view.simulate(torch.full((view.honest.shape[1],), float("nan")), steps=3))
            return super().craft(view)

    ATTACKS.register("_test_blow")(Blow)
    cfg = small(defense="mean", rounds=2, eval_every=2)
    ref = Simulation(cfg.override(["attack=ipm(epsilon=1)"])).run()
    res = Simulation(cfg.override(["attack=_test_blow(epsilon=1)"])).run()
    assert got[0].diverged == 0 and np.isinf(got[0].losses).all()
    assert res.series("train_loss") == ref.series("train_loss")


def test_replay_exposes_round_remaining_and_aggregator():
    seen: list[Replay] = []

    class Peek(IPM):
        uses_replay = True

        def craft(self, view):
            seen.append(view.simulate)
            return super().craft(view)

    ATTACKS.register("_test_peek")(Peek)
    Simulation(small(rounds=5, eval_every=5).override(["attack=_test_peek(until=3)", "defense=trmean"])).run()
    assert [r.round for r in seen] == [0, 1, 2]
    assert [r.remaining for r in seen] == [3, 2, 1]
    assert {r.aggregator for r in seen} == {"trmean"}


def test_only_declaring_attacks_get_a_replay_handle():
    _SeesView.seen.clear()
    Simulation(small(attack="_test_sees_view", rounds=2, eval_every=2)).run()
    assert _SeesView.seen == [None, None]


def test_lookahead_needs_omniscient_knowledge():
    with pytest.raises(ConfigError) as err:
        Simulation(small(attack="_test_own_lookahead"))
    assert err.value.key == "attack.knowledge"
    with pytest.raises(ConfigError) as err:
        Simulation(small().override(["attack=ssnlp(knowledge=own)"]))
    assert err.value.key == "attack.knowledge"


@pytest.mark.parametrize("case, steps, controls", [("zero", 0, None), ("short", 2, "short"), ("bool", True, None)])
def test_replay_refuses_bad_steps_and_controls(case, steps, controls):
    errors: list[Exception] = []

    class Bad(IPM):
        uses_replay = True

        def craft(self, view):
            row = view.honest.mean(dim=0)
            try:
                view.simulate([row] if controls == "short" else row, steps=steps)
            except ValueError as exc:
                errors.append(exc)
            return super().craft(view)

    ATTACKS.register(f"_test_bad_{case}")(Bad)
    Simulation(small(attack=f"_test_bad_{case}", rounds=1, eval_every=1)).run()
    assert len(errors) == 1


# ---------------------------------------------------------------- attack.until (seed 001, App. A)
def _rows_seen(cfg: ExperimentConfig) -> tuple[Simulation, list[tuple[int, torch.Tensor, torch.Tensor]]]:
    """A simulation whose observer records, per round, the Byzantine rows sent and the
    Byzantine clients' honest gradients on their batch (computed independently)."""
    sim = Simulation(cfg)
    seen = []

    def observe(t, honest, byz, aggregate):
        cut = sim.h * sim.batch
        ref = reference_grads(sim.model, sim.xb[cut:], sim.yb[cut:], sim.f)
        seen.append((t, byz.clone(), ref))

    sim.observer = observe
    return sim, seen


@pytest.mark.parametrize("attack", ["ipm(epsilon=1)", "signflip", "ssnlp(max_evals=5)"])
def test_until_stops_the_attack_and_sends_honest_rows(attack):
    cfg = small(rounds=4, eval_every=4).override([f"attack={attack}", "attack.until=2"])
    sim, seen = _rows_seen(cfg)
    res = sim.run()
    assert [t for t, _, _ in seen] == [0, 1, 2, 3]
    for t, byz, honest in seen:
        assert torch.allclose(byz, honest, atol=1e-6) == (t >= 2), t
    assert [t for t, _ in res.metrics["attack.rel_norm"]] == [0, 1]
    full = Simulation(small(rounds=2, eval_every=2).override([f"attack={attack}"])).run()
    assert res.series("train_loss")[:2] == full.series("train_loss")


@pytest.mark.parametrize("attack", ["ipm", "labelflip", "signflip"])
def test_until_zero_is_the_no_attack_run(attack):
    cfg = small(rounds=3, eval_every=3, momentum=0.9)
    none = Simulation(cfg.override(["attack=none"])).run()
    off = Simulation(cfg.override([f"attack={attack}", "attack.until=0"])).run()
    for name in ("train_loss", "test_accuracy", "test_loss", "agg_norm"):
        assert off.metrics[name] == none.metrics[name]


@pytest.mark.parametrize("value", [-1, 1.5, True, "3"])
def test_until_is_validated(value):
    cfg = small()
    cfg.attack.params["until"] = value
    with pytest.raises(ConfigError) as err:
        Simulation(cfg)
    assert err.value.key == "attack.until"


def test_until_is_part_of_the_run_id_and_kept_in_the_config():
    cfg = small(attack="ipm")
    cut = cfg.override(["attack.until=2"])
    sim = Simulation(cut)
    assert sim.config.attack.params["until"] == 2 and sim.until == 2
    assert cut.run_id != cfg.run_id
