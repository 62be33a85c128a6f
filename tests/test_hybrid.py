"""Hybrid sparse attack (Özfatura et al., seed 004; ALGORITHMS.md §4.13, §4.5, §4.8).

Hand-computed rows, the c ≡ 0 / c ≡ 1 limits against ALIE, exactness on c = 0
coordinates, the semi-adaptive z1 against a loop re-implementation of the NDSS Min-Sum
search, σ capping, robustness to huge and non-finite rows, parameter errors, and engine
runs with every mask policy.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzbench.attacks import ATTACKS
from byzbench.attacks.alie import ALIE, alie_zmax, mean_std
from byzbench.attacks.hybrid import POLICIES, HybridSparse, cap_sigma, fence, minsum_z1
from byzbench.attacks.minsum import MinSum
from byzbench.config import ExperimentConfig
from byzbench.errors import ConfigError
from byzbench.sim.engine import Simulation
from helpers import attacker_view

F64 = torch.float64


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def attack(mask: torch.Tensor, **params) -> HybridSparse:
    a = HybridSparse(**{"policy": "random", **params})
    a.use_mask(mask)
    return a


def bernoulli(d: int, p: float, seed: int = 0) -> torch.Tensor:
    return torch.rand(d, generator=torch.Generator().manual_seed(seed)) < p


# ---------------------------------------------------------------- the rows
def test_hand_computed_rows():
    honest = torch.tensor([[0.0, 0.0, 3.0], [1.0, 2.0, 3.0], [2.0, 4.0, 3.0]], dtype=F64)  # μ = [1,2,3], σ = [1,2,0]
    a = attack(torch.tensor([False, True, True]), z1=0.5, z2=1.5)
    v = attacker_view(honest, f=2)
    rows = a.craft(v)
    assert rows.shape == (2, 3)
    assert torch.equal(rows[0], torch.tensor([0.5, -1.0, 3.0], dtype=F64)) and torch.equal(rows[0], rows[1])
    assert v.diagnostics == {"z1": 0.5, "z2": 1.5, "mask_density": pytest.approx(2 / 3)}


def test_inv_mean_multiplies_the_perturbation_by_the_mean_sign():
    honest = torch.tensor([[-2.0, 1.0, 0.0], [0.0, 3.0, 0.0]], dtype=F64)  # μ = [−1, 2, 0], σ = [√2, √2, 0]
    a = attack(torch.tensor([True, False, True]), z1=1.0, z2=2.0, sparse_sign="inv_mean")
    row = a.craft(attacker_view(honest, f=1))[0]
    r2 = math.sqrt(2)
    assert torch.allclose(row, torch.tensor([-1 + 2 * r2, 2 - r2, 0.0], dtype=F64), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_zero_mask_is_alie_z1_and_full_mask_is_alie_z2(dtype):
    honest = randn(20, 300, seed=1, dtype=dtype)
    v = attacker_view(honest, f=5)
    none = attack(torch.zeros(300, dtype=torch.bool), z2=1.5).craft(v)
    full = attack(torch.ones(300, dtype=torch.bool), z2=1.5).craft(attacker_view(honest, f=5))
    assert torch.allclose(none, ALIE().craft(attacker_view(honest, f=5)), rtol=0, atol=1e-6)
    assert torch.allclose(full, ALIE(z=1.5).craft(attacker_view(honest, f=5)), rtol=0, atol=1e-6)
    assert v.diagnostics["z1"] == pytest.approx(0.2533, abs=1e-4) == alie_zmax(25, 5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), p=st.floats(0.0, 1.0), z1=st.floats(-3, 3), z2=st.floats(-3, 3))
def test_exact_alie_rows_on_each_side_of_the_mask(seed, p, z1, z2):
    honest = randn(7, 64, seed=seed)
    c = bernoulli(64, p, seed)
    row = attack(c, z1=z1, z2=z2).craft(attacker_view(honest, f=3))[0]
    mu, sigma = mean_std(honest, 1)
    assert torch.equal(row[~c], (mu - z1 * sigma)[~c])
    assert torch.equal(row[c], (mu - z2 * sigma)[c])


def test_std_ddof_zero_uses_the_population_std():
    honest = torch.tensor([[0.0], [2.0]], dtype=F64)  # σ = √2 (ddof 1), 1 (ddof 0)
    assert float(attack(torch.tensor([True]), z2=1.0, std_ddof=0).craft(attacker_view(honest, f=1))[0, 0]) == 0.0
    assert float(attack(torch.tensor([True]), z2=1.0).craft(attacker_view(honest, f=1))[0, 0]) == pytest.approx(
        1 - math.sqrt(2))


# ---------------------------------------------------------------- semi-adaptive z1
def reference_minsum_z1(x: torch.Tensor, c: torch.Tensor, z2: float, which: str = "min") -> float:
    """The NDSS search (§4.8) written out: explicit distances per row, candidate
    μ − γσ⊙(1−c) − z2σ⊙c, threshold min (or max) over i of Σ_j ‖x_i − x_j‖²."""
    x = x.double()
    mu, sigma = x.mean(0), x.std(0)
    sums = [sum(float(((xi - xj) ** 2).sum()) for xj in x) for xi in x]
    bound = min(sums) if which == "min" else max(sums)
    cf = c.double()
    gamma, step, succ = 10.0, 5.0, 0.0
    while abs(succ - gamma) > 1e-5:
        cand = mu - gamma * sigma * (1 - cf) - z2 * sigma * cf
        score = sum(float(((cand - xi) ** 2).sum()) for xi in x)
        if score <= bound:
            succ, gamma = gamma, gamma + step
        else:
            gamma -= step
        step /= 2
    return succ


@pytest.mark.parametrize("p,which", [(0.0, "min"), (0.005, "min"), (0.05, "min"), (0.05, "max"), (0.5, "max")])
def test_minsum_z1_equals_the_restricted_minsum_search(p, which):
    honest = randn(12, 400, seed=3, dtype=F64) * torch.linspace(0.1, 2.0, 400, dtype=F64)
    c = bernoulli(400, p, seed=4)
    a = attack(c, z1_mode="minsum", minsum_threshold=which)
    v = attacker_view(honest, f=3)
    row = a.craft(v)[0]
    expected = reference_minsum_z1(honest, c, 1.5, which)
    assert v.diagnostics["z1"] == pytest.approx(expected, abs=1e-9)
    mu, sigma = mean_std(honest, 1)
    assert torch.allclose(row[~c], (mu - v.diagnostics["z1"] * sigma)[~c], atol=1e-12)


def test_minsum_z1_with_an_empty_mask_is_minsums_gamma():
    honest = randn(15, 200, seed=5, dtype=F64)
    v1, v2 = attacker_view(honest, f=4), attacker_view(honest, f=4)
    row = attack(torch.zeros(200, dtype=torch.bool), z1_mode="minsum").craft(v1)
    ref = MinSum().craft(v2)
    assert v1.diagnostics["z1"] == pytest.approx(v2.diagnostics["gamma"], abs=1e-12)
    assert torch.allclose(row, ref, atol=1e-12)


def test_minsum_z1_is_zero_when_the_sparse_part_alone_is_infeasible():
    # Σ‖g − x_i‖² at γ = 0 is Σ‖x_i − μ‖² + h‖q‖²; a large z2 on every other coordinate exceeds T.
    honest = randn(10, 50, seed=6, dtype=F64)
    c = torch.arange(50) % 2 == 0
    assert minsum_z1(honest, honest.mean(0), torch.where(c, 0.0, honest.std(0)),
                     torch.where(c, 5.0 * honest.std(0), 0.0)) == 0.0


# ---------------------------------------------------------------- σ capping
def test_fences_hand_computed():
    v = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0])
    # quartiles (linear): Q1 = 2, Q3 = 4 → 4 + 1.5·2 = 7
    assert fence(v, "iqr") == pytest.approx(7.0)
    assert fence(v, "iqr") == pytest.approx(float(torch.quantile(v, 0.75) + 1.5 * (torch.quantile(v, 0.75)
                                                                                  - torch.quantile(v, 0.25))))
    assert fence(v, "z_score") == pytest.approx(float(v.mean() + 2 * v.std()))
    # sorted down: 100, 4, 3, 2, 1; gaps 96, 1, 1, 1; ratios 96, 1, 1 → elbow after 100 → fence 4
    assert fence(v, "gradient") == pytest.approx(4.0)


@pytest.mark.parametrize("method", ["iqr", "z_score", "gradient"])
def test_capping_touches_only_mask_coordinates(method):
    sigma = torch.tensor([1.0, 50.0, 2.0, 3.0, 1000.0, 4.0, 2.5])
    mask = torch.tensor([True, False, True, True, True, True, True])
    capped = cap_sigma(sigma, mask, method)
    assert capped[1] == 50.0  # off the mask: unchanged even though it is an outlier
    assert float(capped[4]) < 1000.0 and float(capped[4]) == pytest.approx(fence(sigma[mask], method))
    assert torch.equal(capped[[0, 2, 3, 5, 6]], torch.minimum(sigma[[0, 2, 3, 5, 6]], capped[4]))
    assert torch.equal(cap_sigma(sigma, mask, None), sigma)


def test_sparse_th_caps_the_aggressive_part_of_the_row():
    honest = randn(10, 6, seed=8, dtype=F64) * torch.tensor([1, 1, 1, 1, 1, 500.0], dtype=F64)
    c = torch.tensor([True, True, True, True, True, True])
    plain = attack(c, z2=1.5).craft(attacker_view(honest, f=2))[0]
    capped = attack(c, z2=1.5, sparse_th="iqr").craft(attacker_view(honest, f=2))[0]
    mu, sigma = mean_std(honest, 1)
    assert torch.allclose(capped, mu - 1.5 * cap_sigma(sigma, c, "iqr"))
    assert (capped[5] - mu[5]).abs() < (plain[5] - mu[5]).abs()


# ---------------------------------------------------------------- robustness
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e38, -3e38])
@pytest.mark.parametrize("mode", ["fixed", "minsum"])
@pytest.mark.parametrize("th", [None, "iqr", "gradient"])
def test_huge_or_non_finite_rows_never_crash(bad, mode, th):
    honest = randn(8, 40, seed=9)
    honest[2, ::3] = bad
    honest[5, 1] = bad
    row = attack(bernoulli(40, 0.3), z1_mode=mode, sparse_th=th).craft(attacker_view(honest, f=2))
    assert row.shape == (2, 40) and bool(torch.isfinite(row).all()) and row.dtype == torch.float32


def test_single_visible_row_gives_its_mean():
    honest = randn(1, 10, seed=2)
    row = attack(bernoulli(10, 0.5), z1_mode="minsum").craft(attacker_view(honest, f=1))
    assert torch.equal(row[0], honest[0])


# ---------------------------------------------------------------- parameters and mask handling
@pytest.mark.parametrize("spec,key", [
    ("hybrid(policy=magic)", "attack.policy"),
    ("hybrid(density=0)", "attack.density"),
    ("hybrid(density=1.5)", "attack.density"),
    ("hybrid(z1=0.3, z1_mode=minsum)", "attack.z1"),
    ("hybrid(z1_mode=adaptive)", "attack.z1_mode"),
    ("hybrid(z2=.inf)", "attack.z2"),
    ("hybrid(sparse_sign=plus)", "attack.sparse_sign"),
    ("hybrid(sparse_th=mad)", "attack.sparse_th"),
    ("hybrid(policy=layerwise_plus, fc_max=0.25)", "attack.fc_max"),
    ("hybrid(fc_max=0)", "attack.fc_max"),
    ("hybrid(force_iters=0)", "attack.force_iters"),
    ("hybrid(force_batches=0)", "attack.force_batches"),
    ("hybrid(force_batch_size=0)", "attack.force_batch_size"),
    ("hybrid(omniscient_pruning=1)", "attack.omniscient_pruning"),
    ("hybrid(std_ddof=2)", "attack.std_ddof"),
    ("hybrid(minsum_threshold=mean)", "attack.minsum_threshold"),
])
def test_invalid_parameters_name_their_key(spec, key):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig(model="cnn").override([f"attack={spec}"]).validate()
    assert err.value.key == key


def test_registered_names_and_defaults():
    assert ATTACKS.get("hybrid") is ATTACKS.get("hybrid_sparse") is ATTACKS.get("sparse") is HybridSparse
    a = HybridSparse()
    assert (a.policy, a.density, a.z1, a.z1_mode, a.z2, a.sparse_sign, a.sparse_th, a.fc_max) == (
        "force_plus", 5e-3, None, "fixed", 1.5, "inv_std", None, None)
    assert (a.force_iters, a.force_batches, a.force_batch_size, a.omniscient_pruning, a.std_ddof) == (
        100, 3, 32, True, 1)
    assert set(POLICIES) == {"random", "random_plus", "layerwise", "layerwise_plus", "erk_plus", "force_plus"}


def test_mask_must_exist_and_fit_the_rows():
    honest = randn(4, 10)
    with pytest.raises(RuntimeError, match="bind"):
        HybridSparse().craft(attacker_view(honest, f=1))
    with pytest.raises(ValueError, match="d = 10"):
        attack(torch.ones(9, dtype=torch.bool)).craft(attacker_view(honest, f=1))
    with pytest.raises(ValueError, match="0/1"):
        HybridSparse().use_mask(torch.tensor([0.0, 0.5]))


# ---------------------------------------------------------------- engine runs
def tiny(attack_spec: str, **over) -> ExperimentConfig:
    base = ExperimentConfig(rounds=2, eval_every=2, n_clients=8, n_byzantine=2, model="cnn", defense="cc",
                            momentum=0.9)
    return base.override([f"attack={attack_spec}", *(f"{k}={v}" for k, v in over.items())])


@pytest.mark.parametrize("spec", [
    "hybrid(policy=random, density=0.05)",
    "hybrid(policy=random_plus, density=0.05)",
    "hybrid(policy=layerwise, density=0.2)",
    "hybrid(policy=layerwise_plus, density=0.2, z1_mode=minsum)",
    "hybrid(policy=erk_plus, density=0.05, sparse_th=iqr)",
    "hybrid(policy=force_plus, density=0.01, fc_max=0.25, force_iters=3, force_batches=1, sparse_sign=inv_mean)",
    "hybrid(policy=force_plus, density=0.01, force_iters=2, force_batches=1, omniscient_pruning=false)",
])
def test_engine_runs_every_policy(spec):
    sim = Simulation(tiny(spec))
    result = sim.run()
    assert result.status == "finished" and result.final_accuracy is not None
    density = result.series("attack.mask_density")
    assert len(density) == 2 and density[0] == density[1] == pytest.approx(float(sim.attack.mask.float().mean()))
    assert result.series("attack.z2") == [1.5, 1.5]
    assert all(math.isfinite(z) for z in result.series("attack.z1"))


def test_engine_run_is_reproducible_and_the_mask_follows_the_seed():
    spec = "hybrid(policy=force_plus, density=0.02, force_iters=2, force_batches=1)"
    a, b, c = Simulation(tiny(spec)), Simulation(tiny(spec)), Simulation(tiny(spec, seed=1))
    ra, rb, _ = a.run(), b.run(), c.run()
    assert torch.equal(a.attack.mask, b.attack.mask) and not torch.equal(a.attack.mask, c.attack.mask)
    assert ra.series("train_loss") == rb.series("train_loss") and ra.series("agg_norm") == rb.series("agg_norm")


def test_own_knowledge_and_a_mask_drawn_once_for_every_round():
    sim = Simulation(tiny("hybrid(policy=layerwise_plus, density=0.2, z1=0.7, knowledge=own)", rounds=3))
    seen, builds = [], []
    craft, build = sim.attack.craft, sim.attack.build_mask

    def spy(view):
        seen.append((view.honest.shape[0], sim.attack.mask.clone()))
        return craft(view)

    sim.attack.craft = spy
    sim.attack.build_mask = lambda env: builds.append(1) or build(env)
    result = sim.run()
    assert result.status == "finished" and builds == [1]
    assert [h for h, _ in seen] == [2, 2, 2] and result.series("attack.z1") == [0.7] * 3
    assert all(torch.equal(m, seen[0][1]) for _, m in seen)


def test_force_reads_only_byzantine_data_when_the_environment_says_own():
    spec = "hybrid(policy=force_plus, density=0.02, force_iters=2, force_batches=1)"
    sim = Simulation(tiny(spec))
    honest_mask = sim.attack.build_mask(sim.attack_env())
    assert sim.attack_env().knowledge == "omniscient" and sim.attack.prunes_with_honest_data(sim.attack_env())
    own_env = Simulation(tiny(spec.replace(")", ", knowledge=own)"))).attack_env()
    assert own_env.knowledge == "own" and not sim.attack.prunes_with_honest_data(own_env)
    byz = Simulation(tiny(spec.replace(")", ", omniscient_pruning=false)")))
    byz_mask = byz.attack.build_mask(byz.attack_env())
    assert torch.equal(sim.attack.build_mask(own_env), byz_mask) and not torch.equal(honest_mask, byz_mask)
