"""Behaviour of the aggregators (mean, CM, TM), their policies and the sorting networks.

References: ALGORITHMS.md §0 (policies), §2.1–§2.3 (the rules and their "Verify" lines).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzbench.defenses import AGGREGATORS, PREAGGREGATORS, Defense, PreAggregator
from byzbench.defenses.base import AggregationContext
from byzbench.defenses.mean import Mean
from byzbench.defenses.median import CoordinateMedian
from byzbench.defenses.trimmed_mean import TrimmedMean
from byzbench.errors import ConfigError, InfeasibleError, NonFiniteInputError
from byzbench.ops.sortnet import (
    MAX_NETWORK_ROWS,
    batcher_network,
    order_statistics,
    pruned_network,
    sum_of_ranks,
)

F64 = torch.float64
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ROBUST = {
    "median-midpoint": lambda: CoordinateMedian(mode="midpoint"),
    "median-lower": lambda: CoordinateMedian(mode="lower"),
    "trmean": lambda: TrimmedMean(),
}


def col(*values: float, dtype: torch.dtype = F64) -> torch.Tensor:
    """A one-coordinate input: the ``[n, 1]`` column of ``values``."""
    return torch.tensor(values, dtype=dtype).reshape(-1, 1)


# --------------------------------------------------------------------------- loop references


def ref_median(x: torch.Tensor, mode: str) -> list[float]:
    rows = x.tolist()
    n, out = len(rows), []
    for j in range(len(rows[0])):
        c = sorted(r[j] for r in rows)
        if n % 2 == 1:
            out.append(c[n // 2])
        elif mode == "lower":
            out.append(c[n // 2 - 1])
        else:
            out.append((c[n // 2 - 1] + c[n // 2]) / 2)
    return out


def ref_trmean(x: torch.Tensor, b: int) -> list[float]:
    rows = x.tolist()
    n, out = len(rows), []
    for j in range(len(rows[0])):
        c = sorted(r[j] for r in rows)[b : n - b]
        out.append(math.fsum(c) / len(c))
    return out


def assert_rel_close(got: torch.Tensor, expected: list[float], rel: float = 1e-5) -> None:
    want = torch.tensor(expected, dtype=F64)
    got = got.to(F64).cpu()
    scale = want.abs().clamp_min(1.0)
    err = ((got - want).abs() / scale).max().item()
    assert err <= rel, f"relative error {err} > {rel}"


# --------------------------------------------------------------------------- Verify lines


def test_mean_verify_line():
    assert Mean()(col(1, 2, 3), 0).tolist() == [2.0]


def test_median_verify_lines():
    assert CoordinateMedian()(col(1, 2, 100), 1).tolist() == [2.0]
    assert CoordinateMedian()(col(1, 2, 3, 10), 1).tolist() == [2.5]
    assert CoordinateMedian(mode="midpoint")(col(10, 3, 1, 2), 1).tolist() == [2.5]
    assert CoordinateMedian(mode="lower")(col(1, 2, 3, 10), 1).tolist() == [2.0]


def test_trmean_verify_line():
    assert TrimmedMean(b=1)(col(1, 2, 3, 4, 100), 0).tolist() == [3.0]
    assert TrimmedMean()(col(100, 4, 3, 2, 1), 1).tolist() == [3.0]  # b defaults to f


def test_trmean_b0_is_the_mean():
    x = torch.randn(7, 5, dtype=F64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(TrimmedMean(b=0)(x, 0), x.mean(dim=0))
    torch.testing.assert_close(TrimmedMean()(x, 0), x.mean(dim=0))


@pytest.mark.parametrize("n", [1, 3, 5, 9, 21, 65])
def test_trmean_single_survivor_is_the_median_for_odd_n(n):
    x = torch.randn(n, 6, dtype=F64, generator=torch.Generator().manual_seed(n))
    b = (n - 1) // 2
    assert n - 2 * b == 1
    assert torch.equal(TrimmedMean(b=b)(x, 0), CoordinateMedian()(x, 0))


def test_median_ignores_f():
    x = col(1, 2, 3, 50, 100)
    assert CoordinateMedian()(x, 0).tolist() == CoordinateMedian()(x, 2).tolist() == [3.0]


# --------------------------------------------------------------------------- sorting networks


def _apply(network, x: torch.Tensor) -> torch.Tensor:
    rows = list(x.clone().unbind(0))
    for i, j in network:
        rows[i], rows[j] = torch.minimum(rows[i], rows[j]), torch.maximum(rows[i], rows[j])
    return torch.stack(rows)


@pytest.mark.parametrize("n", range(1, 13))
def test_batcher_network_sorts_every_zero_one_input(n):
    network = batcher_network(n)
    assert all(0 <= i < j < n for i, j in network)
    codes = torch.arange(2**n)
    bits = ((codes.unsqueeze(0) >> torch.arange(n).unsqueeze(1)) & 1).to(torch.int8)  # [n, 2^n]
    out = _apply(network, bits)
    assert bool((out[:-1] <= out[1:]).all()), f"network for n={n} leaves an unsorted 0/1 input"
    assert torch.equal(out.sum(0), bits.sum(0))


@pytest.mark.parametrize("n", [13, 25, 31, 33, 50, 64])
def test_batcher_network_sorts_random_inputs(n):
    g = torch.Generator().manual_seed(n)
    x = torch.cat([torch.randn(n, 300, generator=g, dtype=F64),
                   torch.randint(0, 3, (n, 100), generator=g).to(F64)], dim=1)
    network = batcher_network(n)
    assert all(0 <= i < j < n for i, j in network)
    assert torch.equal(_apply(network, x), x.sort(dim=0).values)


@pytest.mark.parametrize("n, ranks", [(10, (4, 5)), (25, (12,)), (33, (0, 32)), (64, tuple(range(5, 59)))])
def test_pruned_network_is_a_subsequence_that_still_fixes_the_ranks(n, ranks):
    full = batcher_network(n)
    pruned = pruned_network(n, ranks)
    it = iter(full)
    assert all(c in it for c in pruned)  # order preserved
    if len(ranks) < n:
        assert len(pruned) < len(full)
    x = torch.randn(n, 200, dtype=F64, generator=torch.Generator().manual_seed(n))
    out, srt = _apply(pruned, x), x.sort(dim=0).values
    for r in ranks:
        assert torch.equal(out[r], srt[r])


def _inputs(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(n, 40, dtype=F64, generator=g),
        torch.randint(-2, 3, (n, 40), generator=g).to(F64),  # many ties
        torch.full((n, 3), 7.0, dtype=F64),  # all equal
    ]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 8, 16, 25, 33, 64, 65, 100])
def test_order_statistics_equal_torch_sort(n):
    for x in _inputs(n, n):
        srt = x.sort(dim=0).values
        stats = order_statistics(x, tuple(range(n)))
        assert len(stats) == n
        for r in range(n):
            assert torch.equal(stats[r], srt[r])
        mid = (n - 1) // 2
        picked = order_statistics(x, (n - 1, mid, 0, mid))
        assert [torch.equal(p, srt[r]) for p, r in zip(picked, (n - 1, mid, 0, mid))] == [True] * 4


@pytest.mark.parametrize("n", [1, 2, 5, 16, 25, 64, 65, 100])
def test_sum_of_ranks_equal_torch_sort(n):
    for x in _inputs(n, 100 + n):
        srt = x.sort(dim=0).values
        for lo, hi in {(0, n), (0, 1), (n // 3, n - n // 3), (n - 1, n), (n // 2, n // 2 + 1)}:
            if not 0 <= lo < hi <= n:
                continue
            got = sum_of_ranks(x, lo, hi)
            want = srt[lo:hi].sum(dim=0)
            assert got.shape == want.shape
            assert bool((((got - want).abs()) <= 1e-5 * want.abs().clamp_min(1.0)).all())


def test_network_and_fallback_paths_agree_on_the_boundary():
    x = torch.randn(MAX_NETWORK_ROWS + 1, 30, dtype=F64, generator=torch.Generator().manual_seed(3))
    small, big = x[:MAX_NETWORK_ROWS], x
    assert torch.equal(order_statistics(small, (10,))[0], small.sort(dim=0).values[10])
    assert torch.equal(order_statistics(big, (10,))[0], big.sort(dim=0).values[10])


@pytest.mark.parametrize("n", [5, 80])
@pytest.mark.parametrize("ranks", [(), (-1,), (5,), (0, 5), (2, -3)])
def test_order_statistics_invalid_ranks_raise(n, ranks):
    ranks = tuple(r if r != 5 else n for r in ranks)
    with pytest.raises(ValueError):
        order_statistics(torch.zeros(n, 2), ranks)


@pytest.mark.parametrize("n", [5, 80])
@pytest.mark.parametrize("lo, hi", [(-1, 2), (2, 2), (3, 2), (0, None), (None, None)])
def test_sum_of_ranks_invalid_range_raises(n, lo, hi):
    lo = n if lo is None else lo
    hi = n + 1 if hi is None else hi
    with pytest.raises(ValueError):
        sum_of_ranks(torch.zeros(n, 2), lo, hi)


# --------------------------------------------------------------------------- differential


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 10, 11, 24, 25, 64, 65, 80])
@pytest.mark.parametrize("mode", ["midpoint", "lower"])
def test_median_matches_loop_reference(n, mode):
    for x in _inputs(n, 7 * n):
        assert_rel_close(CoordinateMedian(mode=mode)(x, 0), ref_median(x, mode))


@pytest.mark.parametrize("n", [1, 3, 4, 7, 10, 25, 64, 65, 90])
def test_trmean_matches_loop_reference(n):
    for b in sorted({0, 1, 2, n // 4, (n - 1) // 2}):
        if n <= 2 * b:
            continue
        for x in _inputs(n, 11 * n + b):
            assert_rel_close(TrimmedMean(b=b)(x, 0), ref_trmean(x, b))
            assert_rel_close(TrimmedMean()(x, b), ref_trmean(x, b))


def test_trmean_float32_matches_reference():
    x = torch.randn(25, 50, generator=torch.Generator().manual_seed(5))
    assert_rel_close(TrimmedMean()(x, 5), ref_trmean(x.to(F64), 5))
    assert_rel_close(CoordinateMedian()(x, 5), ref_median(x.to(F64), "midpoint"))


# --------------------------------------------------------------------------- properties

BOUND = 1e3
finite = st.floats(-BOUND, BOUND, allow_nan=False, allow_infinity=False)


@st.composite
def matrices(draw, min_n: int = 1, max_n: int = 12, max_d: int = 4):
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, max_d))
    vals = draw(st.lists(finite, min_size=n * d, max_size=n * d))
    return torch.tensor(vals, dtype=F64).reshape(n, d)


def _rules(n: int, f: int):
    return {
        "mean": Mean(),
        "median-midpoint": CoordinateMedian(),
        "median-lower": CoordinateMedian(mode="lower"),
        "trmean": TrimmedMean(),
        "trmean-b1": TrimmedMean(b=min(1, (n - 1) // 2)),
    }


@settings(max_examples=50, deadline=None)
@given(matrices(), st.data())
def test_permutation_invariance(x, data):
    n = x.shape[0]
    f = data.draw(st.integers(0, (n - 1) // 2))
    perm = torch.tensor(data.draw(st.permutations(range(n))), dtype=torch.long)
    for name, rule in _rules(n, f).items():
        a, b = rule(x, f), rule(x[perm], f)
        if name.startswith("median"):
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-9, msg=name)


@settings(max_examples=50, deadline=None)
@given(matrices(), st.data())
def test_translation_equivariance(x, data):
    n, d = x.shape
    f = data.draw(st.integers(0, (n - 1) // 2))
    c = torch.tensor(data.draw(st.lists(finite, min_size=d, max_size=d)), dtype=F64)
    for name, rule in _rules(n, f).items():
        if name == "mean":
            continue
        torch.testing.assert_close(rule(x + c, f), rule(x, f) + c, rtol=0, atol=1e-9, msg=name)


@settings(max_examples=50, deadline=None)
@given(matrices(), st.floats(1e-3, 1e3), st.sampled_from(["midpoint", "lower"]))
def test_median_positive_homogeneity(x, a, mode):
    rule = CoordinateMedian(mode=mode)
    torch.testing.assert_close(rule(a * x, 0), a * rule(x, 0), rtol=1e-12, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_coordinate_rules_stay_in_honest_range_under_outliers(data):
    f = data.draw(st.integers(0, 5))
    n = data.draw(st.integers(2 * f + 1, 2 * f + 6))
    d = data.draw(st.integers(1, 4))
    honest = torch.tensor(data.draw(st.lists(finite, min_size=(n - f) * d, max_size=(n - f) * d)),
                          dtype=F64).reshape(n - f, d)
    k = data.draw(st.integers(0, f))  # at most f rows are arbitrary
    wild = st.floats(-1e30, 1e30, allow_nan=False, allow_infinity=False)
    outliers = torch.tensor(data.draw(st.lists(wild, min_size=k * d, max_size=k * d)),
                            dtype=F64).reshape(k, d)
    rows = torch.cat([honest, outliers, honest[: f - k]])  # n rows
    perm = torch.tensor(data.draw(st.permutations(range(n))), dtype=torch.long)
    x = rows[perm]
    lo, hi = honest.min(dim=0).values, honest.max(dim=0).values
    tol = 1e-9
    for name in ROBUST:
        out = ROBUST[name]()(x, f)
        assert bool((out >= lo - tol).all() and (out <= hi + tol).all()), (name, out, lo, hi)


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_robust_rules_give_finite_output_under_non_finite_rows(data):
    f = data.draw(st.integers(1, 5))
    n = data.draw(st.integers(2 * f + 1, 2 * f + 6))
    d = data.draw(st.integers(1, 5))
    dtype = data.draw(st.sampled_from([torch.float32, F64]))
    kind = data.draw(st.sampled_from(["nan", "inf", "-inf", "1e38", "±1e38", "mixed"]))
    honest = torch.tensor(data.draw(st.lists(finite, min_size=(n - f) * d, max_size=(n - f) * d)),
                          dtype=dtype).reshape(n - f, d)
    bad = torch.empty(f, d, dtype=dtype)
    if kind == "nan":
        bad.fill_(math.nan)
    elif kind == "inf":
        bad.fill_(math.inf)
    elif kind == "-inf":
        bad.fill_(-math.inf)
    elif kind == "1e38":
        bad.fill_(1e38)
    elif kind == "±1e38":
        signs = torch.tensor(data.draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=f * d,
                                                max_size=f * d)), dtype=dtype)
        bad = signs.reshape(f, d) * 1e38
    else:  # one entry per row non-finite, the rest plausible
        bad = honest[:1].repeat(f, 1)
        bad[:, 0] = torch.tensor([math.nan, math.inf, -math.inf] * f, dtype=dtype)[:f]
    perm = torch.tensor(data.draw(st.permutations(range(n))), dtype=torch.long)
    x = torch.cat([honest, bad])[perm]
    lo, hi = honest.min(dim=0).values, honest.max(dim=0).values
    for name, make in ROBUST.items():
        out = make()(x, f)
        assert out.dtype == dtype and out.shape == (d,)
        assert bool(torch.isfinite(out).all()), (name, kind, out)
        tol = 1e-3 if dtype == torch.float32 else 1e-9
        assert bool((out >= lo - tol).all() and (out <= hi + tol).all()), (name, kind)


# --------------------------------------------------------------------------- non-finite policies


def _with_bad_rows(values, bad):
    return torch.tensor([*values, *bad], dtype=F64).reshape(-1, 1)


@pytest.mark.parametrize("make", [Mean, CoordinateMedian, TrimmedMean])
def test_nonfinite_raise_refuses(make):
    rule = make(nonfinite="raise")
    with pytest.raises(NonFiniteInputError, match="1 row"):
        rule(_with_bad_rows([1, 2, 3, 4], [math.nan]), 1)
    with pytest.raises(NonFiniteInputError):
        rule(_with_bad_rows([1, 2, 3, 4], [math.inf]), 1)
    assert torch.isfinite(rule(_with_bad_rows([1, 2, 3, 4, 5], []), 1)).all()


def test_nonfinite_drop_removes_rows_but_keeps_f():
    x = _with_bad_rows([0, 1, 2, 3, 10, 100], [math.inf])
    # drop: 6 rows left, f = 2 still trimmed on each side → mean(2, 3)
    assert TrimmedMean(nonfinite="drop")(x, 2).tolist() == [2.5]
    # as_byzantine: f lowered to 1 → mean(1, 2, 3, 10)
    assert TrimmedMean(nonfinite="as_byzantine")(x, 2).tolist() == [4.0]
    assert TrimmedMean()(x, 2).tolist() == [4.0]  # the default


def test_nonfinite_drop_may_exceed_f_rows():
    x = _with_bad_rows([1, 2, 3], [math.nan, math.inf, -math.inf])
    assert CoordinateMedian(nonfinite="drop")(x, 1).tolist() == [2.0]
    with pytest.raises(NonFiniteInputError, match="exceed f = 1"):
        CoordinateMedian()(x, 1)


def test_nonfinite_drop_keeps_f_so_feasibility_is_checked_on_the_rest():
    x = _with_bad_rows([1, 2, 3, 4], [math.nan, math.nan])
    with pytest.raises(InfeasibleError):
        TrimmedMean(nonfinite="drop")(x, 2)  # 4 rows, f = 2
    assert TrimmedMean(nonfinite="as_byzantine")(x, 2).tolist() == [2.5]  # f = 0


def test_as_byzantine_raises_when_more_than_f_rows_are_non_finite():
    x = _with_bad_rows([1, 2, 3, 4, 5], [math.nan, math.inf])
    for make in (CoordinateMedian, TrimmedMean):
        assert torch.isfinite(make()(x, 2)).all()
        with pytest.raises(NonFiniteInputError, match="2 non-finite rows exceed f = 1"):
            make()(x, 1)


def test_as_byzantine_with_only_non_finite_rows_raises():
    x = torch.full((3, 2), math.nan, dtype=F64)
    with pytest.raises(NonFiniteInputError):
        CoordinateMedian(nonfinite="drop")(x, 1)


def test_mean_propagates_nan_by_default_but_can_drop():
    x = _with_bad_rows([1, 2, 6], [math.nan])
    assert Mean().nonfinite == "propagate"
    assert Mean().robust is False
    assert math.isnan(Mean()(x, 1).item())
    assert Mean(nonfinite="as_byzantine")(x, 1).tolist() == [3.0]
    assert math.isinf(Mean()(_with_bad_rows([1, 2], [math.inf]), 0).item())


def test_huge_finite_rows_are_not_treated_as_non_finite():
    x = torch.full((5, 64), 1e37, dtype=torch.float32)
    x[0] = 1.0
    assert torch.isinf(x.sum(dim=1)).any()  # row sums overflow …
    out = TrimmedMean(nonfinite="raise")(x, 1)  # … but no entry is non-finite
    torch.testing.assert_close(out, torch.full((64,), 1e37, dtype=torch.float32))
    assert CoordinateMedian(nonfinite="as_byzantine")(x, 0).tolist() == x[1].tolist()


@pytest.mark.parametrize("make", [Mean, CoordinateMedian, TrimmedMean])
def test_invalid_policy_values_raise(make):
    with pytest.raises(ValueError, match="nonfinite"):
        make(nonfinite="ignore")
    with pytest.raises(ValueError, match="infeasible"):
        make(infeasible="warn")


def test_invalid_policy_through_registry_is_config_error():
    with pytest.raises(ConfigError) as exc:
        AGGREGATORS.create("median", "defense", mode="upper")
    assert exc.value.key == "defense.mode"
    with pytest.raises(ConfigError) as exc:
        AGGREGATORS.create("trmean", "defense", b=-1)
    assert "b must be ≥ 0" in str(exc.value)


# --------------------------------------------------------------------------- feasibility


def test_infeasible_raise_names_the_rule():
    x = torch.randn(10, 3, dtype=F64)
    with pytest.raises(InfeasibleError) as exc:
        TrimmedMean()(x, 5)
    assert "trmean" in str(exc.value) and "n > 2" in str(exc.value)
    assert isinstance(exc.value, ConfigError)
    with pytest.raises(InfeasibleError, match="median requires n > 2f"):
        CoordinateMedian()(x, 5)
    with pytest.raises(InfeasibleError, match="trmean"):
        Defense.from_spec("trmean").check(10, 5)
    with pytest.raises(InfeasibleError):
        TrimmedMean(b=5)(x, 0)


def test_infeasible_negative_f_raises():
    with pytest.raises(InfeasibleError):
        CoordinateMedian()(torch.randn(5, 2), -1)


def test_infeasible_clamp_lowers_f():
    x = col(0, 1, 2, 3, 4, 5, 6, 7, 8, 100)
    assert TrimmedMean(infeasible="clamp").check(10, 5) == 4
    assert TrimmedMean(infeasible="clamp")(x, 5).tolist() == [4.5]  # b = 4
    assert TrimmedMean(infeasible="clamp")(x, 9).tolist() == [4.5]
    assert CoordinateMedian(infeasible="clamp").check(10, 7) == 4
    assert CoordinateMedian(infeasible="clamp")(x, 5).tolist() == [4.5]


def test_infeasible_clamp_with_explicit_b():
    x = col(0, 1, 2, 3, 4, 5, 6, 7, 8, 100)
    assert TrimmedMean(b=7, infeasible="clamp")(x, 0).tolist() == [4.5]  # b ← ⌊(n−1)/2⌋ = 4


def test_mean_is_feasible_for_any_f():
    assert Mean()(col(1, 3), 5).tolist() == [2.0]


# --------------------------------------------------------------------------- shapes, dtypes, devices


@pytest.mark.parametrize("name", ["mean", "median", "trmean"])
@pytest.mark.parametrize("shape", [(5,), (5, 2, 2), ()])
def test_wrong_dimensionality_raises(name, shape):
    rule = AGGREGATORS.create(name)
    with pytest.raises(ValueError, match="2-D"):
        rule(torch.zeros(shape), 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spec", ["mean", "median", "median(mode=lower)", "trmean", "trmean(b=0)"])
def test_output_dtype_device_and_shape_follow_input(spec, dtype, device):
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    out = Defense.from_spec(spec)(x, 2)
    assert out.dtype == dtype
    assert out.device == x.device
    assert out.shape == (5,)


def test_aggregators_do_not_modify_their_input():
    x = torch.randn(9, 4, dtype=F64)
    x[0, 0] = math.nan
    before = x.clone()
    for name in ("mean", "median", "trmean"):
        AGGREGATORS.create(name, nonfinite="as_byzantine")(x, 2)
    assert torch.equal(torch.nan_to_num(x, nan=-7.0), torch.nan_to_num(before, nan=-7.0))


# --------------------------------------------------------------------------- Defense.from_spec


@pytest.fixture
def scale_stage(monkeypatch):
    """A throwaway pre-aggregator registered only for one test."""
    PREAGGREGATORS.names()  # import the family first so that restoring is complete
    monkeypatch.setattr(PREAGGREGATORS, "_entries", dict(PREAGGREGATORS._entries))
    monkeypatch.setattr(PREAGGREGATORS, "_aliases", dict(PREAGGREGATORS._aliases))

    @PREAGGREGATORS.register("testscale")
    class Scale(PreAggregator):
        """Test stage: multiply every row by k, drop the last row, f ← f − 1."""

        def __init__(self, k: float = 2.0, **common) -> None:
            super().__init__(**common)
            self.k = k

        def transform(self, x, f, ctx):
            return x[:-1] * self.k, max(f - 1, 0)

    return Scale


def test_from_spec_single_aggregator_with_params_and_aliases():
    d = Defense.from_spec("trmean(b=2)")
    assert isinstance(d.aggregator, TrimmedMean) and d.aggregator.b == 2
    assert d.pre == [] and d.spec == "trmean(b=2)" and d.robust
    assert isinstance(Defense.from_spec("tm").aggregator, TrimmedMean)
    assert isinstance(Defense.from_spec("CM").aggregator, CoordinateMedian)
    assert Defense.from_spec({"name": "median", "mode": "lower"}).aggregator.mode == "lower"
    assert Defense.from_spec("mean").robust is False


def test_from_spec_parses_a_chain(scale_stage):
    d = Defense.from_spec("testscale(k=3) > testscale > median(mode=lower)")
    assert [type(p) for p in d.pre] == [scale_stage, scale_stage]
    assert [p.k for p in d.pre] == [3, 2.0]
    assert isinstance(d.aggregator, CoordinateMedian) and d.aggregator.mode == "lower"
    assert d.spec == "testscale(k=3) > testscale > median(mode=lower)"
    x = col(1, 2, 3, 4, 5, 6, 7)
    # rows 1..5 scaled by 6, f 2 → 0, lower median of [6, 12, 18, 24, 30] = 18
    assert d(x, 2).tolist() == [18.0]


def test_from_spec_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError) as exc:
        Defense.from_spec("nope")
    assert exc.value.key == "defense"
    for name in AGGREGATORS.names():
        assert name in str(exc.value)
    assert "unknown aggregator 'nope'" in str(exc.value)


def test_from_spec_unknown_pre_aggregator(scale_stage):
    with pytest.raises(ConfigError) as exc:
        Defense.from_spec("nope > median", "defense")
    assert "unknown pre-aggregator 'nope'" in str(exc.value) and "testscale" in str(exc.value)


def test_from_spec_unknown_parameter_names_the_key(scale_stage):
    with pytest.raises(ConfigError) as exc:
        Defense.from_spec("trmean(c=1)")
    assert exc.value.key == "defense.c"
    assert "b, infeasible, nonfinite" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        Defense.from_spec("testscale(kk=1) > median", "my.defense")
    assert exc.value.key == "my.defense.kk"


def test_from_spec_aggregator_before_last_stage_is_rejected(scale_stage):
    for spec in ("median > trmean", "testscale > mean > median"):
        with pytest.raises(ConfigError, match="is an aggregator and must come last") as exc:
            Defense.from_spec(spec)
        assert exc.value.key == "defense"


def test_from_spec_bad_value_is_config_error():
    with pytest.raises(ConfigError) as exc:
        Defense.from_spec("median(mode=upper)")
    assert exc.value.key == "defense.mode" and "mode must be one of" in str(exc.value)


def test_mean_uses_the_callers_column_sums_only_where_they_hold():
    """``ctx.column_sum`` (Σ_i x_i known to the caller) gives the mean without a pass over
    the rows; the chain drops it after a pre-aggregator, the screen when it drops rows."""
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 12.0]])
    calls = []

    def column_sum() -> torch.Tensor:
        calls.append(1)
        return x.sum(dim=0)

    ctx = AggregationContext(rows_finite=True, column_sum=column_sum)
    assert torch.equal(Mean()(x, 1, ctx), torch.tensor([3.0, 6.0])) and calls == [1]
    # a stale sum would give the wrong answer: after clipping the rows are new ones
    clipped = Defense.from_spec("clipping(tau=1) > mean")(x, 1, AggregationContext(column_sum=column_sum))
    assert calls == [1]
    assert torch.allclose(clipped, (x / x.norm(dim=1, keepdim=True)).mean(dim=0))
    # a non-finite row screened out: the sum of the rows that remain is recomputed
    bad = torch.cat([x, torch.full((1, 2), float("nan"))])
    out = Mean(nonfinite="as_byzantine")(bad, 1, AggregationContext(column_sum=lambda: bad.sum(dim=0)))
    assert torch.equal(out, torch.tensor([3.0, 6.0]))
