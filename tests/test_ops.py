"""Shared tensor helpers: `byzbench.ops.distances`, `.rows`, `.gram`, `.rng`, and the
parameter validators added to `byzbench.checks`.

Differential tests against float64 loop references (relative error ≤ 1e-5), hypothesis
properties (symmetry, batch = one matrix at a time), and hostile inputs: finite rows near
the dtype's limit must never give NaN.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzbench.checks import (
    check_bool,
    check_extended_real,
    check_optional_int,
    check_rule,
    check_weights,
)
from byzbench.defenses import AggregationContext
from byzbench.defenses.median import CoordinateMedian
from byzbench.errors import ParamError
from byzbench.ops import distances as distances_module
from byzbench.ops.distances import (
    distance_matrix,
    dists_to,
    gram,
    gram_sq_dists,
    hull_dists,
    pairwise_dists,
    pairwise_lp_dists,
    pairwise_sq_dists,
    scaled_lp_dists,
    scaled_sq_dists,
    sq_dists_to,
)
from byzbench.ops.gram import (
    centre_gram,
    centre_row,
    centred_gram,
    weighted_centred_gram,
)
from byzbench.ops.rng import LocalGenerator
from byzbench.ops.rows import (
    column_sum,
    empty_buffer,
    mask_of,
    safe_norms,
    selection_mean,
    stable_smallest,
    uniform_weights,
    weighted_rows,
)

F32, F64 = torch.float32, torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=F64).to(dtype)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.to(F64), want.to(F64)
    return float(((got - want).abs() / want.abs().clamp_min(1.0)).max()) if want.numel() else 0.0


def ref_lp(a: list[float], b: list[float], p: float) -> float:
    diffs = [abs(u - v) for u, v in zip(a, b)]
    top = max(diffs, default=0.0)
    if p == math.inf or top == 0.0:
        return top
    return top * math.fsum((t / top) ** p for t in diffs) ** (1.0 / p)


def ref_matrix(x: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    rows = x.to(F64).tolist()
    return torch.tensor([[ref_lp(a, b, p) for b in rows] for a in rows], dtype=F64)


# --------------------------------------------------------------------------- ℓ2 by the Gram matrix


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), d=st.integers(1, 30), batch=st.sampled_from([(), (1,), (3,), (2, 2)]),
       dtype=st.sampled_from([F32, F64]), seed=st.integers(0, 10**6))
def test_gram_and_distances_are_exactly_symmetric_and_match_a_loop(n, d, batch, dtype, seed):
    x = randn(*batch, n, d, seed=seed, dtype=dtype) * 3
    g = gram(x)
    assert torch.equal(g, g.mT) and g.dtype == dtype
    y = x.to(F64)
    bound = (1e-5 if dtype == F32 else 1e-13) * (y.abs() @ y.abs().mT)  # rounding scales with Σ|x_ik x_jk|
    assert bool(((g.to(F64) - y @ y.mT).abs() <= bound).all())
    dist = gram_sq_dists(x)
    assert torch.equal(dist, dist.mT) and bool((dist.diagonal(dim1=-2, dim2=-1) == 0).all())
    assert bool((dist >= 0).all())
    flat = x.reshape(-1, n, d).to(F64)
    for b, m in enumerate(dist.reshape(-1, n, n)):
        want = ref_matrix(flat[b]).square()
        sq = flat[b].square().sum(dim=1)
        bound = (1e-5 if dtype == F32 else 1e-13) * (sq.unsqueeze(0) + sq.unsqueeze(1) + 1)
        assert bool(((m.to(F64) - want).abs() <= bound).all())


def test_gram_uses_blocks_above_sixteen_rows():
    x = randn(37, 11, seed=1)
    torch.testing.assert_close(gram(x), x @ x.T, rtol=1e-12, atol=1e-12)
    assert distances_module.GRAM_COLUMNS == 16


def test_pairwise_sq_dists_batched_equals_each_matrix():
    x = randn(5, 7, 9, seed=2)
    whole = pairwise_sq_dists(x)
    for b in range(5):
        torch.testing.assert_close(whole[b], pairwise_sq_dists(x[b]), rtol=1e-12, atol=1e-12)
    assert torch.equal(pairwise_dists(x), whole.sqrt())


def test_pairwise_sq_dists_refuses_a_vector():
    with pytest.raises(ValueError, match="expected a"):
        pairwise_sq_dists(torch.ones(3))


def test_overflow_falls_back_to_float64_per_matrix():
    x = randn(3, 4, 5, seed=3, dtype=F32)
    x[1, 0] = 3e38  # this matrix's Gram overflows float32
    d = pairwise_sq_dists(x)
    assert d.dtype == F64 and bool(torch.isfinite(d).all())
    assert d[0].to(F32).to(F64).equal(d[0])  # matrices that did not overflow keep their float32 values
    torch.testing.assert_close(d[0], pairwise_sq_dists(x[0]).to(F64), rtol=1e-6, atol=1e-6)
    assert d[1, 0, 1] == pytest.approx(float(((x[1, 0].double() - x[1, 1].double()) ** 2).sum()), rel=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_distances_are_computed_in_float32(dtype):
    x = (randn(2, 9, 300, seed=16, dtype=F32) + 2.0).to(dtype)
    d = pairwise_sq_dists(x)
    assert d.dtype == F32 and torch.equal(d, pairwise_sq_dists(x.float()))


def test_float64_rows_near_the_limit_never_give_nan():
    big = 1e300
    x = torch.tensor([[big, -big], [big, -big], [-big, big], [0.0, 1.0]], dtype=F64)
    d = pairwise_sq_dists(x)
    assert not bool(torch.isnan(d).any())
    assert d[0, 1] == 0.0 and d[1, 0] == 0.0  # identical huge rows: distance 0, not NaN or ∞
    assert d[0, 2] == math.inf and d[0, 3] == math.inf  # beyond float64
    scaled, scale = scaled_sq_dists(x)
    assert bool(torch.isfinite(scaled).all()) and float(scale) == big
    assert scaled[0, 1] == 0.0 and scaled[0, 2] == scaled.max()
    m = distance_matrix(x)
    assert torch.equal(m, scaled) and bool(torch.isfinite(distance_matrix(x, squared=False)).all())


def test_scaled_sq_dists_keep_the_order_of_unscaled_ones():
    x = randn(6, 4, seed=4)
    d, scale = scaled_sq_dists(x)
    assert float(scale) == 1.0 and torch.equal(d, pairwise_sq_dists(x))
    batch, scales = scaled_sq_dists(torch.stack([x, x * 1e200]))
    assert scales.view(-1).tolist()[0] == 1.0 and scales.view(-1).tolist()[1] > 1.0
    assert torch.equal(batch[1].argsort(dim=1), d.argsort(dim=1))


# --------------------------------------------------------------------------- ℓp pairs


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 7), d=st.integers(1, 12), p=st.sampled_from([1.0, 1.5, 3.0, 4.0, 16.0, math.inf]),
       block=st.sampled_from([1, 3, 2048]), dtype=st.sampled_from([F32, F64]), seed=st.integers(0, 10**6))
def test_lp_distances_match_a_loop(n, d, p, block, dtype, seed):
    x = randn(n, d, seed=seed, dtype=dtype) * 20
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(distances_module, "LP_BLOCK", block)
        got = pairwise_lp_dists(x, p)
    assert got.dtype == F64 and torch.equal(got, got.T)
    assert rel_err(got, ref_matrix(x, p)) <= (1e-5 if dtype == F64 else 1e-4)


def test_lp_distances_of_a_batch_equal_each_matrix_bitwise(monkeypatch):
    x = randn(4, 6, 300, seed=5)
    for p in (1.0, 3.0, math.inf):
        whole = pairwise_lp_dists(x, p)
        for b in range(4):
            assert torch.equal(whole[b], pairwise_lp_dists(x[b], p))
        monkeypatch.setattr(distances_module, "LP_ELEMENTS", 10)  # one matrix per group
        assert torch.equal(pairwise_lp_dists(x, p), whole)
        monkeypatch.undo()


def test_lp_two_is_the_gram_path():
    x = randn(5, 8, seed=6)
    assert torch.equal(pairwise_lp_dists(x, 2.0), pairwise_sq_dists(x, F64).sqrt())


def test_lp_distances_survive_overflowing_differences():
    x = randn(6, 10, seed=7, dtype=F32)
    x[0], x[1] = 3e38, -3e38  # their difference overflows float32
    for p in (1.0, 3.0, 16.0, math.inf):
        d, scale = scaled_lp_dists(x, p)
        assert bool(torch.isfinite(d).all()) and d[0, 1] == d.max() and float(scale) == pytest.approx(3e38)
        true = pairwise_lp_dists(x, p)
        assert true[0, 1] == pytest.approx(ref_lp(x[0].double().tolist(), x[1].double().tolist(), p), rel=1e-6)
        assert torch.equal(distance_matrix(x, p, squared=False), d)


# --------------------------------------------------------------------------- distances to one point


@pytest.mark.parametrize("dtype", [F32, F64])
def test_distances_to_a_point_match_a_loop(dtype, monkeypatch):
    monkeypatch.setattr(distances_module, "BLOCK", 4)
    x = randn(5, 11, seed=8, dtype=dtype)
    v = randn(11, seed=9, dtype=dtype)
    want = torch.tensor([ref_lp(r, v.double().tolist(), 2.0) for r in x.double().tolist()], dtype=F64)
    assert rel_err(sq_dists_to(x, v), want.square()) <= 1e-6
    assert rel_err(dists_to(x, v), want) <= 1e-6
    assert rel_err(dists_to(x), torch.linalg.vector_norm(x.double(), dim=1)) <= 1e-6


def test_distances_to_a_point_stay_finite_near_the_float64_limit():
    x = torch.tensor([[1e300, 1e300], [-1e300, 0.0]], dtype=F64)
    d = dists_to(x, torch.zeros(2, dtype=F64))
    assert bool(torch.isfinite(d).all()) and d[0] == pytest.approx(math.sqrt(2) * 1e300)
    assert sq_dists_to(x, torch.zeros(2, dtype=F64))[0] == math.inf  # the square itself is beyond float64


def test_hull_distances_equal_direct_ones():
    x = randn(3, 6, 4, seed=10)
    w = torch.rand(3, 6, generator=gen(11), dtype=F64)
    w /= w.sum(dim=1, keepdim=True)
    z = (w.unsqueeze(1) @ x).squeeze(1)
    got = hull_dists(pairwise_sq_dists(x), w)
    want = torch.linalg.vector_norm(x - z.unsqueeze(1), dim=2)
    assert rel_err(got, want) <= 1e-9


# --------------------------------------------------------------------------- rows


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), d=st.integers(1, 9), batch=st.sampled_from([(), (3,)]), seed=st.integers(0, 10**6))
def test_weighted_rows_match_a_loop(n, d, batch, seed):
    x = randn(*batch, n, d, seed=seed)
    w = torch.rand(*batch, n, generator=gen(seed), dtype=F64)
    w /= w.sum(dim=-1, keepdim=True)
    got = weighted_rows(x, w)
    xs, ws = x.reshape(-1, n, d).tolist(), w.reshape(-1, n).tolist()
    want = [[math.fsum(ws[b][i] * xs[b][i][c] for i in range(n)) for c in range(d)] for b in range(len(xs))]
    assert rel_err(got.reshape(-1, d), torch.tensor(want, dtype=F64)) <= 1e-9


@pytest.mark.parametrize("dtype", [F32, F64])
def test_weighted_rows_never_overflow(dtype):
    big = torch.finfo(dtype).max
    x = torch.tensor([[big, -big, 1.0], [big, -big, 3.0]], dtype=dtype)
    w = torch.tensor([0.5, 0.5], dtype=F64)
    out = weighted_rows(x, w)
    assert bool(torch.isfinite(out).all()) and out[0] == big and out[1] == -big and out[2] == 2.0
    batched = weighted_rows(torch.stack([x, x / big]), torch.stack([w, w]))
    assert torch.equal(batched[0], out) and bool(torch.isfinite(batched).all())
    assert torch.equal(selection_mean(x, torch.tensor([True, True])), out)


def test_masks_weights_and_stable_selection():
    assert mask_of([0, 3], 5).tolist() == [True, False, False, True, False]
    assert mask_of(torch.tensor(2), 3).tolist() == [False, False, True]
    assert mask_of(torch.tensor([[1], [0]]), 3).tolist() == [[False, True, False], [True, False, False]]
    assert mask_of([], 2).tolist() == [False, False]
    w = uniform_weights(torch.tensor([[True, False, True], [False, False, False]]))
    assert w.tolist() == [[0.5, 0.0, 0.5], [0.0, 0.0, 0.0]]
    scores = torch.tensor([[2.0, 1.0, 1.0, math.nan], [0.0, 0.0, 0.0, 0.0]])
    assert stable_smallest(scores, 2).tolist() == [[False, True, True, False], [True, True, False, False]]
    x = randn(4, 3, seed=12)
    torch.testing.assert_close(selection_mean(x, torch.tensor([True, False, True, True])), x[[0, 2, 3]].mean(0))


def test_safe_norms_are_finite_for_huge_rows():
    u = torch.tensor([[3e38, 3e38], [3.0, 4.0]], dtype=F32)
    n = safe_norms(u, dim=1)
    assert n.dtype == F64 and n[1] == 5.0 and n[0] == pytest.approx(math.sqrt(2) * 3e38, rel=1e-6)
    assert safe_norms(torch.tensor([[1.5e308, 1.5e308]], dtype=F64), dim=1)[0] == math.inf  # beyond float64: ∞


def test_empty_buffer_shape_dtype_and_device():
    small = empty_buffer((3, 4), F32, torch.device("cpu"))
    large = empty_buffer((3, 1 << 20), F64, torch.device("cpu"))
    assert small.shape == (3, 4) and small.dtype == F32
    assert large.shape == (3, 1 << 20) and large.dtype == F64 and large.is_contiguous()
    assert empty_buffer((2,), torch.bfloat16, torch.device("cpu")).dtype == torch.bfloat16


# --------------------------------------------------------------------------- centred Gram


def test_centred_gram_matches_a_direct_computation():
    x = randn(6, 40, seed=13) + 100.0
    k, c, s = centred_gram(x)
    assert s == 1.0 and torch.equal(c, centre_row(x))
    y = x - c
    torch.testing.assert_close(k, y @ y.T)
    norms = torch.linalg.vector_norm(x, dim=1)
    assert float(torch.linalg.vector_norm(c)) == float(norms.sort().values[2])  # the median-norm row


def test_centred_gram_rescales_when_it_overflows():
    x = randn(5, 8, seed=14, dtype=F32)
    x[0] = 3e38
    k, c, s = centred_gram(x)
    assert bool(torch.isfinite(k).all()) and s > 1.0
    y = (x.double() - c.double()) / s
    torch.testing.assert_close(k, y @ y.T)


def test_double_centring_and_weighted_centring():
    x = randn(5, 3, seed=15)
    g = x @ x.T
    y = x - x.mean(dim=0)
    torch.testing.assert_close(centre_gram(g), y @ y.T)
    w = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0], dtype=F64)
    yw = x - w @ x
    torch.testing.assert_close(weighted_centred_gram(g, w), yw @ yw.T)


# --------------------------------------------------------------------------- generator


def test_local_generator_prefers_the_context_and_never_uses_the_global_rng():
    rng = LocalGenerator()
    given_gen = gen(5)
    assert rng.get(AggregationContext(generator=given_gen)) is given_gen
    torch.manual_seed(123)
    state = torch.get_rng_state()
    own = rng.get(AggregationContext())
    first = torch.rand(3, generator=own)
    assert torch.equal(torch.get_rng_state(), state)
    assert rng.get(AggregationContext()) is own  # kept: successive calls draw fresh numbers
    rng.reset()
    assert torch.equal(torch.rand(3, generator=rng.get(AggregationContext())), first)  # re-seeded 0


# --------------------------------------------------------------------------- validators


def test_new_validators_name_the_parameter():
    assert check_bool(True, "flag") is True
    with pytest.raises(ParamError, match="flag must be true or false"):
        check_bool(1, "flag")
    assert check_optional_int(None, "m") is None and check_optional_int(3, "m", low=1) == 3
    with pytest.raises(ParamError, match="m must be ≥ 1"):
        check_optional_int(0, "m", low=1)
    assert check_extended_real(math.inf, "p", low=1.0) == math.inf and check_extended_real(2, "p", low=1.0) == 2.0
    for bad in (0.5, -math.inf, math.nan, True, "2"):
        with pytest.raises(ParamError, match="p must"):
            check_extended_real(bad, "p", low=1.0)
    assert check_weights(None) is None and check_weights([1, 2.5], "w") == [1.0, 2.5]
    for bad in ([], "ab", [1.0, -1.0], [0.0, 0.0], [math.inf]):
        with pytest.raises(ParamError, match="w"):
            check_weights(bad, "w")


def test_check_rule_builds_one_aggregator_or_names_the_parameter():
    rule = check_rule("median(mode=lower)", "base")
    assert isinstance(rule, CoordinateMedian) and rule.mode == "lower"
    assert check_rule(rule, "base") is rule
    assert check_rule({"name": "trmean", "b": 1}, "base").b == 1
    for spec, text in (("nope", "unknown aggregator"), ("median > trmean", "one aggregator"),
                       (3, "must be an aggregator spec")):
        with pytest.raises(ParamError, match=text) as exc:
            check_rule(spec, "base")
        assert exc.value.param == "base"
    with pytest.raises(ParamError, match="must be an aggregator spec"):
        check_rule(rule, "base", allow_instance=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_column_sum_is_the_sum_over_rows(dtype):
    x = torch.randn(7, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(dtype)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(column_sum(x).double(), x.double().sum(dim=0), rtol=tol, atol=tol)
    assert column_sum(x[:0]).tolist() == [0.0] * 300  # no rows: zeros
    bad = x.clone()
    bad[3, 5], bad[1, 7] = float("nan"), float("inf")
    out = column_sum(bad)
    assert out[5].isnan() and out[7] == float("inf") and out.isfinite().sum() == 298
