"""The oneDNN row-Gram path (`byzbench.ops.onednn`) and the rules built on it."""

from __future__ import annotations

import pytest
import torch

from byzbench.defenses import AGGREGATORS, PREAGGREGATORS, AggregationContext
from byzbench.ops import onednn
from byzbench.ops.distances import gram, pairwise_sq_dists
from byzbench.ops.gram import centred_gram

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="torch built without a usable oneDNN")
WIDE = 2 * onednn.MIN_ELEMENTS // 25 + 7  # 25 rows of this width take the oneDNN path


def rows(n: int = 25, d: int = WIDE, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def without_onednn(monkeypatch):
    """Every `row_gram` call takes ``x @ x.T`` for the duration of a test."""
    monkeypatch.setitem(onednn._state, "ok", False)


@needs_onednn
def test_row_gram_matches_float64_products():
    x = rows()
    assert onednn.use_onednn(x)
    ref = x.double() @ x.double().T
    got = onednn.row_gram(x)
    assert got.dtype == torch.float32 and got.shape == (25, 25)
    assert float((got.double() - ref).abs().max() / ref.abs().max()) < 1e-6
    g = gram(x)
    assert torch.equal(g, g.T)


def test_small_odd_or_differentiable_inputs_use_the_plain_product():
    x = rows()
    assert not onednn.use_onednn(rows(25, 100))  # below MIN_ELEMENTS
    assert not onednn.use_onednn(x.double())
    assert not onednn.use_onednn(x[:, ::2])  # columns not contiguous
    assert not onednn.use_onednn(x.unsqueeze(0))  # a batch of matrices
    assert not onednn.use_onednn(x.clone().requires_grad_(True))
    with torch.no_grad():
        assert onednn.use_onednn(x.clone().requires_grad_(True)) == onednn.available()
    small = rows(4, 30)
    assert torch.equal(onednn.row_gram(small), small @ small.T)


def test_environment_variable_turns_it_off(monkeypatch):
    monkeypatch.setenv(onednn.ENV, "0")
    assert not onednn.available() and not onednn.use_onednn(rows())


def test_missing_op_falls_back_to_the_plain_product(monkeypatch):
    def broken(a, b):
        raise RuntimeError("no oneDNN here")

    monkeypatch.setattr(onednn, "_linear", broken)
    monkeypatch.delitem(onednn._state, "ok", raising=False)
    x = rows()
    assert not onednn.available()
    assert torch.equal(onednn.row_gram(x), x @ x.T)
    monkeypatch.delitem(onednn._state, "ok")  # probe again once the op is back


@needs_onednn
def test_hostile_rows_still_give_finite_ordered_distances():
    x = rows()
    x[3] = 1e38
    x[7] = -1e38
    d = pairwise_sq_dists(x)
    assert d.dtype == torch.float64 and bool(torch.isfinite(d).all())  # float64 fallback
    assert torch.equal(d, d.T) and bool((d.diagonal() == 0).all())
    assert d[3, 7] > d[3, 0] > d[1, 0]
    assert float(d[3, 7]) == pytest.approx(4e76 * WIDE, rel=1e-6)
    k, _, scale = centred_gram(x)
    assert scale > 1 and bool(torch.isfinite(k).all())


@needs_onednn
@pytest.mark.parametrize("spec", ["krum", "multikrum", "bulyan", "mda", "smea", "caf", "nnm"])
def test_rules_keep_their_output_with_and_without_onednn(spec, monkeypatch):
    x = rows()
    x[-4:] += 3.0  # four shifted rows: the selections are far from any tie
    registry = PREAGGREGATORS if spec == "nnm" else AGGREGATORS
    rule = registry.create(spec, "defense")

    def run() -> torch.Tensor:
        out = rule(x, 4, AggregationContext(generator=torch.Generator().manual_seed(0)))
        return out[0] if isinstance(out, tuple) else out

    fast = run()
    monkeypatch.setitem(onednn._state, "ok", False)
    plain = run()
    assert fast.shape == plain.shape
    assert torch.allclose(fast, plain, rtol=1e-5, atol=1e-6)
