"""The simulation engine: gradients, reproducibility, learning, attacks, divergence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from byzbench.attacks import ATTACKS, Attack, AttackerView
from byzbench.config import ExperimentConfig
from byzbench.defenses import AGGREGATORS
from byzbench.defenses.mean import Mean
from byzbench.models import bind_flat, build_model
from byzbench.sim.clients import ClientGradients, choose_strategy, fused_supported
from byzbench.sim.engine import Simulation, seed_streams, update_momentum
from byzbench.sim.sampler import ClientSampler
from helpers import reference_grads


def quick(**over) -> ExperimentConfig:
    """A small, fast config (digits, IID, MLP) with the given overrides."""
    base = ExperimentConfig(rounds=60, eval_every=20, partition=ExperimentConfig().partition)
    return base.override([f"{k}={v}" for k, v in over.items()])


# ---------------------------------------------------------------- client gradients
MODELS = [
    ("logistic", {}, (1, 8, 8)),
    ("mlp", {"hidden": [32, 16]}, (1, 8, 8)),
    ("cnn", {"channels": [4, 8]}, (1, 8, 8)),
    ("mlp", {"hidden": [20], "activation": "tanh"}, (12,)),
]



@pytest.mark.parametrize("name,params,shape", MODELS)
def test_strategies_match_plain_per_client_reference(name, params, shape):
    n, batch = 7, 5
    model = build_model(name, params, shape, 10, seed=3)
    theta, layout = bind_flat(model)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n * batch, *shape, generator=gen)
    y = torch.randint(0, 10, (n * batch,), generator=gen)
    expected = reference_grads(model, x, y, n)
    strategies = ["vmap", "loop"] + (["fused"] if fused_supported(model) else [])
    assert "fused" in strategies  # Linear and Conv2d layers with per-sample layers between
    for strategy in strategies:
        out = torch.full((n, layout.dim), float("nan"))
        losses = ClientGradients(model, layout, n, strategy)(x, y, out)
        assert (out - expected).abs().max() <= 1e-5, strategy
        per_client = [F.cross_entropy(model(xc), yc) for xc, yc in zip(x.view(n, -1, *shape), y.view(n, -1))]
        assert torch.allclose(losses, torch.stack(per_client).detach(), atol=1e-6), strategy


def test_auto_strategy_choice():
    dense = build_model("mlp", {}, (1, 8, 8), 10, seed=0)
    conv = build_model("cnn", {}, (1, 8, 8), 10, seed=0)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_strategy("auto", dense, cpu) == "fused"
    assert choose_strategy("auto", conv, cpu) == "fused"
    assert choose_strategy("auto", conv, cuda) == "vmap"  # conv models on a GPU: vmap
    assert choose_strategy("auto", dense, cuda) == "fused"
    assert choose_strategy("vmap", dense, cpu) == "vmap"
    from byzbench.errors import ConfigError

    normed = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                                 torch.nn.Linear(72, 10))
    reflect = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"),
                                  torch.nn.Flatten(), torch.nn.Linear(128, 10))
    for model in (normed, reflect):
        assert choose_strategy("auto", model, cpu) == "loop"
        with pytest.raises(ConfigError, match="fused") as err:
            choose_strategy("fused", model, cpu)
        assert err.value.key == "strategy"


def test_bind_flat_shares_storage():
    model = build_model("mlp", {"hidden": [6]}, (4,), 3, seed=0)
    theta, layout = bind_flat(model)
    assert layout.dim == 4 * 6 + 6 + 6 * 3 + 3 == theta.numel()
    theta.add_(1.0)
    assert torch.equal(model[1].weight.reshape(-1), theta[: 24])
    assert layout.layer_of(24) == "1.bias"


# ---------------------------------------------------------------- sampling and momentum
def test_sampler_draws_each_clients_own_data_epoch_by_epoch():
    parts = [np.arange(0, 10), np.arange(10, 13), np.arange(13, 40)]
    sampler = ClientSampler(parts, batch_size=4, generator=torch.Generator().manual_seed(1))
    seen = [[], [], []]
    for _ in range(2):  # client 0 has 2 batches per epoch
        idx = sampler.next().view(3, 4)
        for c in range(3):
            assert set(idx[c].tolist()) <= set(parts[c].tolist())
            seen[c] += idx[c].tolist()
    assert len(set(seen[0])) == 8  # no repeat inside an epoch
    assert sorted(set(seen[1])) == [10, 11, 12]  # fewer than B samples: all of them, cyclically
    again = ClientSampler(parts, batch_size=4, generator=torch.Generator().manual_seed(1))
    assert again.next().tolist() == [i for c in range(3) for i in seen[c][:4]]



def test_sampler_epoch_is_the_stable_argsort_of_uniform_keys(monkeypatch):
    """Each epoch orders a client's partition by keys u ~ U[0, 1) drawn as one
    ``torch.rand(k, width)`` (padding last), ties by position: checked against argsort."""
    parts = [np.arange(100, 107), np.arange(0, 3), np.arange(50, 60)]
    sampler = ClientSampler(parts, batch_size=3, generator=torch.Generator().manual_seed(5))
    keys = torch.rand(3, 10, generator=torch.Generator().manual_seed(5))
    first = sampler.next().view(3, 3)
    for c, part in enumerate(parts):
        order = torch.sort(keys[c, : len(part)], stable=True).indices
        assert first[c].tolist() == [int(part[j]) for j in order[:3]]
    full = torch.full
    monkeypatch.setattr(torch, "rand", lambda *shape, generator=None: full(shape, 0.5))
    ties = ClientSampler([np.arange(10, 14), np.arange(2)], batch_size=2, generator=torch.Generator())
    assert ties.next().tolist() == [10, 11, 0, 1]  # all keys equal: positions decide


def test_momentum_forms():
    g1, g2 = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]])
    damp, plain = torch.zeros(1, 2), torch.zeros(1, 2)
    for g in (g1, g2):
        update_momentum(damp, g, 0.9, dampening=True)
        update_momentum(plain, g, 0.9, dampening=False)
    assert torch.allclose(damp, 0.9 * 0.1 * g1 + 0.1 * g2)
    assert torch.allclose(plain, 0.9 * g1 + g2)
    assert torch.allclose(plain * 0.1, damp)  # same up to the factor 1/(1−β)


def test_seed_streams_are_distinct_and_stable():
    a, b = seed_streams(0), seed_streams(0)
    assert a == b and len(set(a.values())) == len(a)
    assert seed_streams(1) != a


# ---------------------------------------------------------------- reproducibility
def test_same_config_and_seed_give_bitwise_identical_metrics():
    cfg = quick(attack="alie", defense="trmean", momentum=0.9)
    first, second = Simulation(cfg).run(), Simulation(cfg).run()
    assert first.metrics == second.metrics
    assert first.final_accuracy == second.final_accuracy
    other = Simulation(cfg.override(["seed=1"])).run()
    assert other.metrics["train_loss"] != first.metrics["train_loss"]


def test_dropout_runs_are_reproducible_with_vmap():
    cfg = quick(**{"model.dropout": 0.3, "strategy": "vmap", "rounds": 10, "attack": "none"})
    assert Simulation(cfg).run().metrics == Simulation(cfg).run().metrics


# ---------------------------------------------------------------- learning and attacks
@pytest.mark.slow
def test_default_mlp_learns_digits_without_attack():
    result = Simulation(ExperimentConfig().override(["attack=none", "defense=mean"])).run()
    assert result.status == "finished"
    assert result.final_accuracy >= 0.90


@pytest.mark.slow
def test_alie_z8_breaks_the_mean_under_strong_skew():
    base = ExperimentConfig().override(["partition.beta=0.1", "defense=mean"])
    clean = Simulation(base.override(["attack=none"])).run()
    attacked = Simulation(base.override(["attack=alie(z=8)"])).run()
    assert attacked.final_accuracy is None or clean.final_accuracy - attacked.final_accuracy >= 0.20


@pytest.mark.slow
def test_trimmed_mean_withstands_sign_flip_iid():
    base = ExperimentConfig().override(["partition=iid", "defense=trmean"])
    clean = Simulation(base.override(["attack=none"])).run()
    flipped = Simulation(base.override(["attack=signflip"])).run()
    assert abs(clean.final_accuracy - flipped.final_accuracy) <= 0.05


def test_round_metrics_are_recorded_each_round():
    result = Simulation(quick(rounds=30, eval_every=10)).run()
    for name in ("train_loss", "agg_norm", "dist_to_honest_mean", "cos_to_honest_mean", "lr"):
        assert [r for r, _ in result.metrics[name]] == list(range(30))
    assert [r for r, _ in result.metrics["test_accuracy"]] == [0, 10, 20, 30]
    assert all(-1.0 - 1e-6 <= c <= 1.0 + 1e-6 for c in result.series("cos_to_honest_mean"))


def test_no_attack_with_mean_aggregates_exactly_the_honest_mean():
    result = Simulation(quick(rounds=5, attack="none", defense="mean", n_byzantine=0)).run()
    assert max(result.series("dist_to_honest_mean")) <= 1e-6
    assert min(result.series("cos_to_honest_mean")) >= 1 - 1e-5


def test_lr_schedule_step_decay():
    result = Simulation(quick(rounds=6, lr_schedule="step(milestones=[2, 4], gamma=0.5)")).run()
    assert result.series("lr") == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]


# ---------------------------------------------------------------- attacker view, shuffling
class _Recorder(Attack):
    """Test attack: remembers its views, sends rows of a recognisable constant."""

    knowledge = "omniscient"
    views: list[AttackerView] = []

    def craft(self, view):
        type(self).views.append(view)
        return torch.full((view.f, view.honest.shape[1]), 1234.5)


class _PositionProbe(Mean):
    """Test aggregator: records where the recognisable Byzantine rows sit."""

    order_invariant = False  # it reads positions, so the engine must shuffle for it
    positions: list[list[int]] = []

    def aggregate(self, x, f, ctx):
        type(self).positions.append((x[:, 0] == 1234.5).nonzero().view(-1).tolist())
        return x[(x[:, 0] != 1234.5)].mean(dim=0)


ATTACKS.register("_test_recorder")(_Recorder)
AGGREGATORS.register("_test_probe")(_PositionProbe)


def test_rows_are_shuffled_each_round_and_views_follow_knowledge():
    _Recorder.views.clear()
    _PositionProbe.positions.clear()
    Simulation(quick(rounds=12, attack="_test_recorder", defense="_test_probe")).run()
    positions = _PositionProbe.positions
    assert all(len(p) == 5 for p in positions)
    assert len({tuple(p) for p in positions}) > 1  # order changes between rounds
    assert all(v.honest.shape[0] == 20 and v.own.shape[0] == 5 for v in _Recorder.views)
    _Recorder.views.clear()
    Simulation(quick(rounds=2, attack="_test_recorder(knowledge=own)", defense="_test_probe")).run()
    view = _Recorder.views[0]
    assert view.knowledge == "own" and torch.equal(view.honest, view.own) and view.defense is None


# ---------------------------------------------------------------- divergence
class _NaNAttack(Attack):
    """Test attack: NaN rows."""

    knowledge = "own"

    def craft(self, view):
        return torch.full_like(view.own, float("nan"))


ATTACKS.register("_test_nan")(_NaNAttack)


def test_nan_rows_diverge_the_mean_but_not_the_median():
    broken = Simulation(quick(rounds=20, attack="_test_nan", defense="mean")).run()
    assert broken.status == "diverged" and broken.diverged_round == 0
    assert broken.final_accuracy is None
    robust = Simulation(quick(attack="_test_nan", defense="median", partition="iid", rounds=200)).run()
    clean = Simulation(quick(attack="none", defense="median", partition="iid", rounds=200)).run()
    assert robust.status == "finished"
    assert robust.final_accuracy >= clean.final_accuracy - 0.05


def test_exploding_learning_rate_is_recorded_as_diverged():
    result = Simulation(quick(rounds=200, lr=1e12, attack="alie(z=100)", defense="mean")).run()
    assert result.status == "diverged"
    assert 0 <= result.diverged_round < 200
    assert result.rounds_completed == result.diverged_round + 1 or result.rounds_completed == result.diverged_round
