"""Pruning masks of the hybrid sparse attack (ALGORITHMS.md §4.13, "Verify" and mask policies).

Random Π_r / Π_r⁺, layer-wise Π_lr / Π_lr⁺, ERK⁺ (Evci et al., ICML 2020) and FORCE
(de Jorge et al., ICLR 2021) on the digits CNN and on BatchNorm models; FORCE is checked
against a plain loop re-implementation (global sort, the CRYPTO-KU form of the last-layer
cap) on a tiny CNN.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

from byzbench.errors import ParamError
from byzbench.models import bind_flat, build_model
from byzbench.pruning import POLICIES, PooledBatches, critical_mask, erk_densities, force_mask, pruning_clients
from byzbench.pruning.force import last_linear
from byzbench.pruning.masks import erk_eligible, layer_count, tensors


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def flat(name: str, shape: tuple[int, ...], **params) -> tuple[nn.Module, object]:
    model = build_model(name, params, shape, 10, 0)
    _, layout = bind_flat(model)
    return model, layout


CNN = flat("cnn", (1, 8, 8))                       # conv(1→16), conv(16→32), linear(128→10): d = 6090
RESNET = flat("resnet20", (3, 32, 32))             # BatchNorm everywhere, d = 269,722
ALEX_BN = flat("alexnet", (3, 32, 32), norm="batch")
BN_MODELS = [CNN, RESNET, ALEX_BN]


def reference_critical(model: nn.Module) -> torch.Tensor:
    """Walk model.parameters() and mark BatchNorm parameters and Conv/Linear biases."""
    crit: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            crit.update(id(p) for p in module.parameters(recurse=False))
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
            crit.add(id(module.bias))
    return torch.cat([torch.full((p.numel(),), id(p) in crit) for p in model.parameters()])


# ---------------------------------------------------------------- critical parameters
@pytest.mark.parametrize("model,layout", BN_MODELS, ids=["cnn", "resnet20", "alexnet_bn"])
def test_critical_mask_is_every_norm_parameter_and_every_bias(model, layout):
    mask = critical_mask(model, layout)
    assert torch.equal(mask, reference_critical(model))
    assert 0 < int(mask.sum()) < layout.dim


def test_group_norm_parameters_are_critical():
    model, layout = flat("resnet20", (3, 32, 32), norm="group", groups=4)
    found = tensors(model, layout)
    assert {t.module for t in found if t.kind == "norm"} == {nn.GroupNorm}
    assert sum(t.kind == "norm" for t in found) == 2 * sum(isinstance(m, nn.GroupNorm) for m in model.modules())
    mask = critical_mask(model, layout)
    for t in found:
        assert bool(mask[t.slot.offset : t.slot.stop].all()) == (t.kind != "weight")


def test_layout_of_another_model_is_refused():
    with pytest.raises(ValueError, match="not a parameter"):
        critical_mask(CNN[0], RESNET[1])


# ---------------------------------------------------------------- Π_r, Π_r⁺
@settings(max_examples=25, deadline=None)
@given(density=st.floats(1e-4, 1.0), seed=st.integers(0, 2**31))
def test_random_mask_attacks_floor_delta_d_coordinates(density, seed):
    model, layout = CNN
    mask = POLICIES["random"](model, layout, density, gen(seed))
    assert mask.dtype == torch.bool and mask.shape == (layout.dim,)
    assert int(mask.sum()) == math.floor(density * layout.dim)
    assert abs(int(mask.sum()) / layout.dim - density) < 1 / layout.dim + 1e-12


def test_random_mask_is_uniform_over_coordinates():
    model, layout = CNN
    hits = sum(POLICIES["random"](model, layout, 0.1, gen(s)).float() for s in range(200))
    # each coordinate is attacked with probability ⌊0.1·d⌋/d; 200 draws: mean 20.0, std ≈ 4.2
    assert abs(float(hits.mean()) - 200 * 609 / 6090) < 1e-9
    assert float(hits.min()) > 0 and float(hits.max()) < 50


@pytest.mark.parametrize("model,layout", BN_MODELS, ids=["cnn", "resnet20", "alexnet_bn"])
def test_random_plus_is_random_or_critical(model, layout):
    crit = critical_mask(model, layout)
    plus = POLICIES["random_plus"](model, layout, 5e-3, gen(3))
    plain = POLICIES["random"](model, layout, 5e-3, gen(3))
    assert torch.equal(plus, plain | crit)
    assert bool(plus[crit].all())


# ---------------------------------------------------------------- Π_lr, Π_lr⁺
@settings(max_examples=20, deadline=None)
@given(density=st.floats(1e-4, 1.0), seed=st.integers(0, 2**31))
def test_layerwise_has_floor_delta_numel_plus_one_ones_per_tensor(density, seed):
    model, layout = CNN
    mask = POLICIES["layerwise"](model, layout, density, gen(seed))
    for slot in layout.slots:
        expected = min(slot.numel, math.floor(density * slot.numel) + 1)
        assert int(mask[slot.offset : slot.stop].sum()) == expected == layer_count(slot.numel, density)


@pytest.mark.parametrize("model,layout", BN_MODELS, ids=["cnn", "resnet20", "alexnet_bn"])
@pytest.mark.parametrize("density", [5e-3, 0.2])
def test_layerwise_plus_counts_weights_and_covers_every_critical_index(model, layout, density):
    mask = POLICIES["layerwise_plus"](model, layout, density, gen(1))
    crit = critical_mask(model, layout)
    assert bool(mask[crit].all())
    for t in tensors(model, layout):
        s = t.slot
        if t.kind == "weight":
            assert int(mask[s.offset : s.stop].sum()) == math.floor(density * s.numel) + 1
    plain = POLICIES["layerwise"](model, layout, density, gen(1))
    assert torch.equal(mask & ~crit, plain & ~crit)  # same draws on the weights


def test_layerwise_on_a_bn_model_samples_inside_bn_and_bias_tensors():
    model, layout = RESNET
    mask = POLICIES["layerwise"](model, layout, 0.05, gen(0))
    for t in tensors(model, layout):
        if t.kind != "weight":
            assert int(mask[t.slot.offset : t.slot.stop].sum()) == math.floor(0.05 * t.slot.numel) + 1


# ---------------------------------------------------------------- ERK⁺
def test_erk_densities_hand_example():
    # r = Σdims/Πdims = 0.2 and 0.02; ε = 0.1·10100 / (0.2·100 + 0.02·10000) = 1010/220
    p = erk_densities([(10, 10), (100, 100)], 0.1)
    eps = 1010 / 220
    assert p == pytest.approx([0.2 * eps, 0.02 * eps], rel=1e-12)
    assert 100 * p[0] + 10000 * p[1] == pytest.approx(1010, rel=1e-12)


def test_erk_makes_a_layer_dense_and_redistributes():
    # r = 1 and 0.02: first ε = 1000.4/204 gives p_1 = 4.9 > 1, so layer 1 is dense and
    # ε = (1000.4 − 4)/200 on layer 2 alone.
    p = erk_densities([(2, 2), (100, 100)], 0.1)
    assert p[0] == 1.0 and p[1] == pytest.approx(996.4 / 10000, rel=1e-12)
    assert 4 * p[0] + 10000 * p[1] == pytest.approx(0.1 * 10004, rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(shapes=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=6),
       density=st.floats(1e-3, 1.0))
def test_erk_expected_total_is_delta_times_numel(shapes, density):
    p = erk_densities(shapes, density)
    numel = [a * b for a, b in shapes]
    assert all(0 < q <= 1 + 1e-12 for q in p)
    assert sum(q * n for q, n in zip(p, numel)) == pytest.approx(density * sum(numel), rel=1e-9)


@pytest.mark.parametrize("model,layout", BN_MODELS, ids=["cnn", "resnet20", "alexnet_bn"])
def test_erk_plus_mask_count_and_dense_tensors(model, layout):
    density = 5e-3 if layout.dim > 10_000 else 0.05
    mask = POLICIES["erk_plus"](model, layout, density, gen(7))
    eligible = erk_eligible(model, layout)
    names = {t.slot.name for t in eligible}
    first = layout.slots[0]
    assert first.name not in names and bool(mask[first.offset : first.stop].all())
    assert bool(mask[critical_mask(model, layout)].all())
    for slot in layout.slots:
        if slot.name not in names:
            assert bool(mask[slot.offset : slot.stop].all())
    probs = erk_densities([t.slot.shape for t in eligible], density)
    numel = [t.slot.numel for t in eligible]
    expected = sum(p * n for p, n in zip(probs, numel))
    assert expected == pytest.approx(density * sum(numel), rel=1e-9)
    kept = sum(int(mask[t.slot.offset : t.slot.stop].sum()) for t in eligible)
    sd = math.sqrt(sum(p * (1 - p) * n for p, n in zip(probs, numel)))
    assert abs(kept - expected) <= 4 * sd + 1


def test_erk_of_a_model_whose_only_weight_is_first_is_all_ones():
    model, layout = flat("logistic", (1, 8, 8))
    assert bool(POLICIES["erk_plus"](model, layout, 0.01, gen()).all())


# ---------------------------------------------------------------- policy contract
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_policies_are_reproducible_from_the_generator(policy):
    model, layout = CNN
    a = POLICIES[policy](model, layout, 0.05, gen(11))
    b = POLICIES[policy](model, layout, 0.05, gen(11))
    c = POLICIES[policy](model, layout, 0.05, gen(12))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, float("nan"), "0.1"])
def test_density_outside_0_1_is_refused_naming_it(policy, density):
    model, layout = CNN
    with pytest.raises(ParamError) as err:
        POLICIES[policy](model, layout, density, gen())
    assert err.value.param == "density"


def test_density_one_attacks_everything():
    model, layout = CNN
    for policy in ("random", "layerwise", "layerwise_plus", "erk_plus"):
        assert bool(POLICIES[policy](model, layout, 1.0, gen()).all()), policy


# ---------------------------------------------------------------- FORCE
class TinyData:
    """A tiny CNN with its loss/gradient oracle and deterministic batches."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.model, self.layout = CNN
        self.theta0 = torch.cat([p.detach().reshape(-1) for p in self.model.parameters()]).clone()
        self.x = torch.rand(96, 1, 8, 8, generator=g)
        self.y = torch.randint(0, 10, (96,), generator=g)
        self.calls = 0

    def loss_and_grad(self, theta, x, y):
        self.calls += 1
        theta = theta.detach().clone().requires_grad_(True)
        out = functional_call(self.model, self.layout.unflatten(theta), (x,))
        loss = F.cross_entropy(out, y)
        return loss.detach(), torch.autograd.grad(loss, theta)[0]

    def draw_cycle(self, batch: int = 32):
        """Batches 0..31, 32..63, 64..95, 0..31, …"""
        state = {"k": 0}

        def draw():
            k = state["k"] % (96 // batch)
            state["k"] += 1
            return torch.arange(k * batch, (k + 1) * batch)

        return draw


def reference_force(data: TinyData, density: float, iters: int, batches: int, fc_max: float | None) -> torch.Tensor:
    """Plain FORCE: per-layer loops, the module's .grad, a global sort, and the last-layer cap
    applied as a local top-cap with the rest of the budget spent globally."""
    model = data.model
    prunable = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    w0 = [m.weight.detach().clone() for m in prunable]
    total = sum(w.numel() for w in w0)
    keep = [torch.ones_like(w, dtype=torch.bool) for w in w0]
    draw = data.draw_cycle()
    saved = [p.detach().clone() for p in model.parameters()]
    for t in range(1, iters + 1):
        with torch.no_grad():
            for m, w, k in zip(prunable, w0, keep):
                m.weight.copy_(w * k)
        grads = [torch.zeros_like(w) for w in w0]
        for _ in range(batches):
            idx = draw()
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
            for g, m in zip(grads, prunable):
                g += m.weight.grad
        sal = [(w * g / batches).abs() for w, g in zip(w0, grads)]
        kappa = math.exp((t / iters) * math.log(density * total) + (1 - t / iters) * math.log(total))
        n_keep = max(1, round(kappa))
        cap = None
        if fc_max is not None:
            cap = math.floor(min(1.0, fc_max / density * kappa / total) * w0[-1].numel())
        flat_sal = torch.cat([s.reshape(-1) for s in sal])
        order = torch.argsort(flat_sal, descending=True)
        chosen = torch.zeros(total, dtype=torch.bool)
        chosen[order[:n_keep]] = True
        last = slice(total - w0[-1].numel(), total)
        if cap is not None and int(chosen[last].sum()) > cap:
            chosen[:] = False
            local = torch.argsort(sal[-1].reshape(-1), descending=True)[:cap]
            chosen[last.start + local] = True
            rest = torch.argsort(flat_sal[: last.start], descending=True)[: n_keep - cap]
            chosen[rest] = True
        keep, off = [], 0
        for w in w0:
            keep.append(chosen[off : off + w.numel()].view_as(w))
            off += w.numel()
    with torch.no_grad():
        for p, s in zip(model.parameters(), saved):
            p.copy_(s)
    return torch.cat([k.reshape(-1) for k in keep])


def weight_part(mask: torch.Tensor, model, layout) -> torch.Tensor:
    return mask[~critical_mask(model, layout)]


@pytest.mark.parametrize("fc_max", [None, 0.25, 0.002])
def test_force_matches_a_plain_loop_reference(fc_max):
    data = TinyData()
    density, iters, batches = 0.05, 3, 2
    mask = force_mask(data.model, data.layout, data.theta0, data.loss_and_grad, data.x, data.y,
                      data.draw_cycle(), density, iters, batches, fc_max)
    assert data.calls == iters * batches
    ref = reference_force(data, density, iters, batches, fc_max)
    assert torch.equal(weight_part(mask, data.model, data.layout), ref)


@pytest.mark.parametrize("density,fc_max", [(5e-3, None), (1e-2, 0.25), (0.05, 0.01), (0.2, None)])
def test_force_density_fc_cap_and_critical_ones(density, fc_max):
    data = TinyData(1)
    model, layout = data.model, data.layout
    mask = force_mask(model, layout, data.theta0, data.loss_and_grad, data.x, data.y,
                      data.draw_cycle(), density, 4, 1, fc_max)
    crit = critical_mask(model, layout)
    assert bool(mask[crit].all())
    d_w = int((~crit).sum())
    assert int(weight_part(mask, model, layout).sum()) == max(1, round(density * d_w))
    fc = last_linear(model, layout)
    kept_fc = int(mask[fc.offset : fc.stop].sum())
    if fc_max is not None:
        assert kept_fc <= fc_max * fc.numel
    if (density, fc_max) == (0.05, 0.01):
        assert kept_fc == math.floor(0.01 * fc.numel)  # binding cap: the rest went to the convs


def test_force_cap_binds_where_unconstrained_force_fills_the_fc_layer():
    data = TinyData(2)
    args = (data.model, data.layout, data.theta0, data.loss_and_grad, data.x, data.y)
    fc = last_linear(data.model, data.layout)
    free = force_mask(*args, data.draw_cycle(), 0.05, 3, 1, None)
    capped = force_mask(*args, data.draw_cycle(), 0.05, 3, 1, 0.01)
    assert int(free[fc.offset : fc.stop].sum()) > 0.01 * fc.numel >= int(capped[fc.offset : fc.stop].sum())
    crit = critical_mask(data.model, data.layout)
    assert int(free[~crit].sum()) == int(capped[~crit].sum())


def test_force_needs_a_linear_layer_for_the_fc_cap():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    _, layout = bind_flat(model)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    with pytest.raises(ParamError) as err:
        force_mask(model, layout, theta, lambda t, x, y: (None, t), torch.zeros(1), torch.zeros(1),
                   lambda: torch.zeros(1, dtype=torch.long), 0.1, 1, 1, fc_max=0.2)
    assert err.value.param == "fc_max"


def test_force_survives_non_finite_gradients():
    model, layout = CNN
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def nan_grad(t, x, y):
        g = torch.randn(t.shape, generator=gen(0))
        g[::3] = float("nan")
        g[1::7] = float("inf")
        return torch.tensor(0.0), g

    mask = force_mask(model, layout, theta, nan_grad, torch.zeros(1), torch.zeros(1),
                      lambda: torch.zeros(1, dtype=torch.long), 0.01, 3, 1)
    crit = critical_mask(model, layout)
    assert int(mask[~crit].sum()) == round(0.01 * int((~crit).sum()))


# ---------------------------------------------------------------- FORCE data
def test_pooled_batches_take_batch_size_from_every_client():
    parts = [np.arange(0, 50), np.arange(100, 110), np.array([], dtype=np.int64), np.arange(200, 240)]
    draw = PooledBatches(parts, 16, gen(4))
    for _ in range(5):
        idx = draw().numpy()
        assert idx.shape == (48,)
        a, b, c = idx[:16], idx[16:32], idx[32:]
        assert set(a) <= set(parts[0]) and len(set(a)) == 16          # without replacement
        assert set(b) == set(parts[1]) and sorted(np.bincount(b - 100)) == [1] * 4 + [2] * 6  # cycles
        assert set(c) <= set(parts[3]) and len(set(c)) == 16
    first, again = PooledBatches(parts, 16, gen(4))(), PooledBatches(parts, 16, gen(4))()
    assert torch.equal(first, again) and not torch.equal(first, PooledBatches(parts, 16, gen(5))())


def test_pooled_batches_permute_uniformly_within_a_client():
    draw = PooledBatches([np.arange(10)], 1, gen(0))
    counts = np.bincount(torch.cat([draw() for _ in range(2000)]).numpy(), minlength=10)
    assert counts.min() > 140 and counts.max() < 260  # 200 expected each


def test_pruning_clients_are_the_honest_ones_when_omniscient():
    assert list(pruning_clients(25, 5, True)) == list(range(20))
    assert list(pruning_clients(25, 5, False)) == list(range(20, 25))


def test_pooled_batches_need_a_sample():
    with pytest.raises(ValueError, match="no client"):
        PooledBatches([np.array([], dtype=np.int64)], 4, gen())
