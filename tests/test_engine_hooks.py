"""Engine hooks used by attacks and defenses: data attacks, diagnostics, server gradient,
and the aggregator-aware attacker's probe of the defense."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from byzbench.attacks import ATTACKS, Attack
from byzbench.config import ExperimentConfig
from byzbench.defenses import AGGREGATORS
from byzbench.defenses.mean import Mean
from byzbench.sim.engine import Simulation, _stratified


def quick(**over) -> ExperimentConfig:
    base = ExperimentConfig(rounds=4, eval_every=2)
    return base.override([f"{k}={v}" for k, v in over.items()])


# ---------------------------------------------------------------- data-level attacks
class _ZeroLabels(Attack):
    """Test data attack: every Byzantine label becomes 0."""

    knowledge = "own"
    level = "data"
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def poison(self, x, y, num_classes):
        type(self).seen.append((x.clone(), y.clone()))
        return x, torch.zeros_like(y)

    def craft(self, view):
        raise AssertionError("craft must not be called for a data attack")


class _Capture(Mean):
    """Test aggregator: keeps every input matrix."""

    inputs: list[torch.Tensor] = []

    def aggregate(self, x, f, ctx):
        type(self).inputs.append(x.clone())
        ctx.diagnostics["kept"] = torch.arange(x.shape[0]) % 2 == 0
        ctx.diagnostics["marker"] = 7.0
        return x.mean(dim=0)


ATTACKS.register("_test_zero_labels")(_ZeroLabels)
AGGREGATORS.register("_test_capture")(_Capture)


def test_data_attack_trains_byzantine_clients_on_poisoned_labels():
    _ZeroLabels.seen.clear()
    _Capture.inputs.clear()
    sim = Simulation(quick(rounds=1, attack="_test_zero_labels", defense="_test_capture", model="logistic"))
    theta0 = sim.theta.detach().clone()
    sim.run()
    x_byz, y_byz = _ZeroLabels.seen[0]
    assert x_byz.shape[0] == sim.f * sim.config.batch_size and bool((y_byz != 0).any())
    # the Byzantine clients' rows are the gradients on (x, 0) at θ_0
    model = sim.model
    with torch.no_grad():
        sim.theta.copy_(theta0)
    expected = []
    for xc in x_byz.view(sim.f, -1, *x_byz.shape[1:]):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(xc), torch.zeros(xc.shape[0], dtype=torch.int64)).backward()
        expected.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    rows = _Capture.inputs[0]
    for e in expected:
        assert torch.min((rows - e).abs().amax(dim=1)) < 1e-5


# ---------------------------------------------------------------- diagnostics
def test_attack_and_defense_diagnostics_are_recorded_per_round():
    result = Simulation(quick(rounds=5, attack="alie(z=1.5)", defense="_test_capture")).run()
    assert result.series("attack.z") == [1.5] * 5
    assert result.series("defense.marker") == [7.0] * 5
    kept = result.series("defense.byz_kept")
    assert len(kept) == 5 and all(0.0 <= k <= 1.0 for k in kept)
    assert all(abs(k * 5 - round(k * 5)) < 1e-6 for k in kept)  # a fraction of the f = 5 rows
    rel = result.series("attack.rel_norm")
    cos = result.series("attack.cos")
    assert len(rel) == 5 and all(r > 0 for r in rel) and all(-1.0 <= c <= 1.0 for c in cos)


def test_byz_kept_matches_the_shuffled_positions():
    """A rule keeping exactly the rows that hold the Byzantine constant reports 1.0."""

    class KeepConstant(Mean):
        def aggregate(self, x, f, ctx):
            ctx.diagnostics["kept"] = x[:, 0] == 1234.5
            return x.mean(dim=0)

    class Constant(Attack):
        knowledge = "own"

        def craft(self, view):
            return torch.full_like(view.own, 1234.5)

    AGGREGATORS.register("_test_keep_constant")(KeepConstant)
    ATTACKS.register("_test_constant")(Constant)
    result = Simulation(quick(rounds=6, attack="_test_constant", defense="_test_keep_constant", lr=1e-9)).run()
    assert result.series("defense.byz_kept") == [1.0] * 6


def test_no_byzantine_clients_record_no_attack_diagnostics():
    result = Simulation(quick(rounds=3, n_byzantine=0, attack="none", defense="mean")).run()
    assert not any(name.startswith("attack.") for name in result.metrics)


# ---------------------------------------------------------------- server gradient
class _ServerProbe(Mean):
    needs_server_gradient = True
    root_size = 30
    grads: list[torch.Tensor] = []

    def aggregate(self, x, f, ctx):
        type(self).grads.append(ctx.server_gradient().clone())
        return x.mean(dim=0)


AGGREGATORS.register("_test_server_probe")(_ServerProbe)


def test_server_gradient_is_supplied_and_reproducible():
    _ServerProbe.grads.clear()
    Simulation(quick(rounds=3, defense="_test_server_probe")).run()
    first = list(_ServerProbe.grads)
    _ServerProbe.grads.clear()
    Simulation(quick(rounds=3, defense="_test_server_probe")).run()
    assert len(first) == 3 and all(torch.equal(a, b) for a, b in zip(first, _ServerProbe.grads))
    assert all(torch.isfinite(g).all() and g.norm() > 0 for g in first)


def test_server_gradient_absent_for_other_rules():
    assert Simulation(quick(defense="mean")).server_gradient is None


def test_stratified_root_set_is_balanced_and_distinct():
    import numpy as np

    labels = np.repeat(np.arange(10), 50)
    idx = _stratified(labels, 100, np.random.default_rng(0))
    assert len(set(idx.tolist())) == 100
    assert np.bincount(labels[idx]).tolist() == [10] * 10


# ---------------------------------------------------------------- aggregator-aware probe
class _Stateful(Mean):
    """Test aggregator with state: counts its calls, returns the count in every coordinate."""

    def __init__(self, **common):
        super().__init__(**common)
        self.calls = 0

    def aggregate(self, x, f, ctx):
        self.calls += 1
        return torch.full((x.shape[1],), float(self.calls)) * 0.0 + x.mean(dim=0)

    def reset(self):
        self.calls = 0


class _Prober(Attack):
    knowledge = "aggregator-aware"
    outputs: list[torch.Tensor] = []

    def craft(self, view):
        rows = torch.cat([view.honest, view.own])
        for _ in range(3):
            view.defense(rows, view.f)
        return view.own


AGGREGATORS.register("_test_stateful")(_Stateful)
ATTACKS.register("_test_prober")(_Prober)


def test_probing_the_defense_never_changes_the_server_state():
    sim = Simulation(quick(rounds=4, attack="_test_prober", defense="_test_stateful"))
    sim.run()
    assert sim.defense.aggregator.calls == 4  # only the server's own calls


class _RandomRow(Mean):
    """Test aggregator: returns one row drawn with the context's generator."""

    def aggregate(self, x, f, ctx):
        i = int(torch.randint(x.shape[0], (1,), generator=ctx.generator))
        return x[i].clone()


AGGREGATORS.register("_test_random_row")(_RandomRow)


def test_probing_never_consumes_the_servers_random_draws():
    """The prober sends the same rows as `none`; the server's draws must be unchanged."""
    probed = Simulation(quick(rounds=6, attack="_test_prober", defense="_test_random_row")).run()
    plain = Simulation(quick(rounds=6, attack="none", defense="_test_random_row")).run()
    assert probed.series("agg_norm") == plain.series("agg_norm")
    assert probed.series("train_loss") == plain.series("train_loss")


# ---------------------------------------------------------------- knowledge isolation
class _Snoop(Attack):
    knowledge = "omniscient"
    views: list = []

    def craft(self, view):
        type(self).views.append(view)
        return view.own


ATTACKS.register("_test_snoop")(_Snoop)


def _tensors(view):
    for value in vars(view).values():
        if isinstance(value, torch.Tensor):
            yield value


def test_own_knowledge_view_holds_only_the_byzantine_clients_rows():
    _Snoop.views.clear()
    sim = Simulation(quick(rounds=2, attack="_test_snoop(knowledge=own)", defense="trmean"))
    sim.run()
    honest_storage = sim.grads.untyped_storage().data_ptr()
    for view in _Snoop.views:
        assert view.honest.shape[0] == sim.f and view.defense is None
        for tensor in _tensors(view):
            if tensor is view.params:
                continue  # the model, not client data
            # no tensor of the view reaches the round's buffer of honest rows
            assert tensor.untyped_storage().data_ptr() != honest_storage
            assert tensor.untyped_storage().nbytes() <= sim.f * sim.d * tensor.element_size()


def test_omniscient_view_sees_all_honest_rows_but_no_defense():
    _Snoop.views.clear()
    sim = Simulation(quick(rounds=1, attack="_test_snoop", defense="trmean"))
    sim.run()
    view = _Snoop.views[0]
    assert view.honest.shape[0] == sim.h and view.defense is None


def test_view_never_holds_the_servers_generator():
    _Prober.outputs.clear()
    sim = Simulation(quick(rounds=1, attack="_test_prober", defense="_test_random_row"))
    seen = []

    class Spy(_Prober):
        def craft(self, view):
            seen.append(view)
            return super().craft(view)

    sim.attack = Spy()
    sim.run()
    gens = [v for v in vars(seen[0]).values() if isinstance(v, torch.Generator)]
    assert gens and all(g is not sim._server_generator for g in gens)


def test_knowledge_downgrade_is_checked_against_what_the_attack_supports():
    import pytest

    from byzbench.errors import ConfigError

    assert Simulation(quick(rounds=1, attack="alie(knowledge=own)")).knowledge == "own"
    for spec in ("optimal_alie(knowledge=own)", "fang_krum(knowledge=own)"):
        with pytest.raises(ConfigError) as err:
            quick(attack=spec).validate()
        assert err.value.key == "attack.knowledge" and "supports" in str(err.value)


def test_observer_sees_the_rounds_rows_and_aggregate():
    seen = []
    sim = Simulation(quick(rounds=3, attack="alie(z=1.5)", defense="trmean"))
    sim.observer = lambda t, honest, byz, agg: seen.append((t, honest.shape, byz.shape, agg.clone()))
    result = sim.run()
    assert [s[0] for s in seen] == [0, 1, 2]
    assert all(s[1] == (sim.h, sim.d) and s[2] == (sim.f, sim.d) for s in seen)
    assert [round(float(s[3].norm()), 4) for s in seen] == [round(v, 4) for v in result.series("agg_norm")]


def test_partitioner_test_indices_and_groups_reach_the_engine():
    import pytest

    from byzbench.errors import ConfigError

    sim = Simulation(quick(rounds=1, partition="longtail(beta=0.5)", n_clients=10, n_byzantine=2))
    full = Simulation(quick(rounds=1, partition="iid", n_clients=10, n_byzantine=2))
    assert 0 < sim.y_test.shape[0] < full.y_test.shape[0]  # long-tailed test set (§5.3)
    with pytest.raises(ConfigError) as err:
        Simulation(quick(rounds=1, partition="natural"))  # digits has no writer ids
    assert err.value.key.startswith("partition")


def test_running_batchnorm_statistics_are_advanced_once_per_round():
    from byzbench.models.papers import ClientBatchNorm2d

    sim = Simulation(quick(rounds=3, model="resnet20(bn_eval=running)", n_clients=5, n_byzantine=1,
                           batch_size=8, attack="none", defense="median", strategy="loop"))
    result = sim.run()
    assert result.status == "finished" and result.final_accuracy is not None
    layers = [m for m in sim.model.modules() if isinstance(m, ClientBatchNorm2d)]
    assert layers and all(int(m.num_batches_tracked) == 3 for m in layers)


# ---------------------------------------------------------------- one-off attack set-up
class _Binder(Attack):
    """Test attack: keeps the environment it is bound to; sends the honest mean."""

    knowledge = "omniscient"
    envs: list = []

    def bind(self, env):
        type(self).envs.append(env)

    def craft(self, view):
        return view.honest.mean(dim=0, keepdim=True).expand(view.f, -1)


ATTACKS.register("_test_binder")(_Binder)


def test_bind_gives_model_data_and_exact_gradients_without_touching_the_run():
    _Binder.envs.clear()
    cfg = quick(rounds=2, attack="_test_binder", model="logistic")
    sim = Simulation(cfg)
    theta0 = sim.theta.detach().clone()
    sim.run()
    (env,) = _Binder.envs
    assert torch.equal(env.theta0, theta0) and list(env.byzantine) == list(range(sim.h, sim.n))
    assert len(env.client_indices) == sim.n and env.num_classes == 10
    idx = torch.as_tensor(env.client_indices[sim.n - 1][:8])
    x, y = env.x_train[idx], env.y_train[idx]
    w = theta0.clone().requires_grad_(True)
    weight, bias = w[: 64 * 10].view(10, 64), w[64 * 10 :]
    ref_loss = F.cross_entropy(x.flatten(1) @ weight.T + bias, y)
    (ref_grad,) = torch.autograd.grad(ref_loss, w)
    before = sim.theta.detach().clone()
    loss, grad = env.loss_and_grad(theta0, x, y)
    assert torch.allclose(loss, ref_loss.detach(), atol=1e-6) and torch.allclose(grad, ref_grad, atol=1e-6)
    assert torch.equal(sim.theta, before)  # evaluating at θ_0 leaves the live parameters alone
    assert env.logits(theta0, x).shape == (8, 10)
