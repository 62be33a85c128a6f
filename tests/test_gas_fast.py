"""GAS's batched fast path against plain per-chunk loops (ALGORITHMS.md §2.14, §2.9, §2.5, §2.6, §0).

The references below are written from the spec alone: Python loops over chunks, rows and
coordinates in float64 (exact sums with ``math.fsum``), sharing no code with the library.
GAS draws π = ``randperm(d)`` from the context's generator; chunk q holds
π[q·⌈d/p⌉ : (q+1)·⌈d/p⌉]. Also: the building blocks of the fast path (deleting a value
from sorted lists, the branch-free window of Bulyan's phase 2) and hostile rows.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzbench.defenses import AggregationContext
from byzbench.defenses.bulyan import _window_mean_sorted, closest_to_median_mean, window_program
from byzbench.defenses.gas import GAS
from byzbench.defenses.krum import drop_value, iterative_krum
from byzbench.ops.distances import distance_matrix
from byzbench.ops.sortnet import execute
from gas_reference import chunk_scores, krum_pick, lowest, mean_rows, window_mean

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- plain references


def ref_gas(x: torch.Tensor, f: int, p: int, base: str, seed: int) -> tuple[list[float], list[int]]:
    """GAS by the spec: chunks of the permutation drawn as GAS draws it, the base on each,
    plain ℓ2 distances summed, the n − f lowest scores averaged."""
    d = x.shape[1]
    size = -(-d // min(p, d))
    perm = torch.randperm(d, generator=gen(seed)).tolist()
    keep = sorted(lowest(chunk_scores(x, perm, size, base, f), x.shape[0] - f))
    return mean_rows(x.double().tolist(), keep), keep


def assert_rel_close(got: torch.Tensor, want: list[float], rel: float = 1e-5) -> None:
    w = torch.tensor(want, dtype=F64)
    err = ((got.to(F64) - w).abs() / w.abs().clamp_min(1.0)).max().item()
    assert err <= rel, f"relative error {err} > {rel}"


# --------------------------------------------------------------------------- differential tests


@pytest.mark.parametrize("base", ["bulyan", "krum", "multikrum"])
@pytest.mark.parametrize("n, d, f, p, seed", [(11, 60, 2, 6, 0), (15, 97, 3, 8, 1), (13, 40, 2, 40, 2),
                                              (12, 33, 1, 5, 3), (19, 50, 4, 3, 4)])
def test_gas_matches_per_chunk_loop_reference(base, n, d, f, p, seed):
    g = gen(100 + seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    x[:f] += torch.randn(f, d, generator=g, dtype=F64) * 3 + 1.0  # Byzantine rows: shifted, noisier
    want, keep = ref_gas(x, f, p, base, seed)
    ctx = AggregationContext(generator=gen(seed))
    got = GAS(p=p, base=base)(x, f, ctx)
    assert ctx.diagnostics["kept"].nonzero().flatten().tolist() == keep
    assert_rel_close(got, want)


def test_gas_bulyan_float32_matches_float64_reference():
    x = torch.randn(15, 120, generator=gen(9))
    x[:3] += 2.0
    want, keep = ref_gas(x, 3, 10, "bulyan", 5)
    ctx = AggregationContext(generator=gen(5))
    got = GAS(p=10)(x, 3, ctx)
    assert got.dtype == torch.float32 and ctx.diagnostics["kept"].nonzero().flatten().tolist() == keep
    assert_rel_close(got, want, rel=1e-6)


def test_gas_is_deterministic_given_the_generator_and_fresh_each_call():
    x = torch.randn(11, 200, generator=gen(3))
    a = GAS(p=20)(x, 2, AggregationContext(generator=gen(8)))
    b = GAS(p=20)(x, 2, AggregationContext(generator=gen(8)))
    assert torch.equal(a, b)
    shared = gen(8)
    rule = GAS(p=20)
    rule(x, 2, AggregationContext(generator=shared))
    assert not torch.equal(torch.randperm(200, generator=gen(8)), torch.randperm(200, generator=shared))


@pytest.mark.parametrize("base", ["bulyan", "krum", "multikrum"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_gas_hostile_rows_never_crash_nor_reach_the_output(base, dtype):
    n, d, f = 15, 64, 3
    honest = torch.randn(n - f, d, generator=gen(4), dtype=F64).to(dtype)
    big = torch.finfo(dtype).max / 4
    hostile = torch.stack([torch.full((d,), math.nan, dtype=dtype), torch.full((d,), math.inf, dtype=dtype),
                           torch.full((d,), big, dtype=dtype)])
    hostile[0, 1:] = 0.0  # one NaN entry is enough
    hostile[1, ::2] = -math.inf
    hostile[2, ::2] = -big
    x = torch.cat([hostile, honest])
    ctx = AggregationContext(generator=gen(6))
    out = GAS(p=8, base=base)(x, f, ctx)
    assert bool(torch.isfinite(out).all())
    assert ctx.diagnostics["kept"].tolist() == [False] * f + [True] * (n - f)
    torch.testing.assert_close(out, honest.mean(dim=0))


def test_gas_all_huge_finite_rows_stay_finite():
    x = torch.randn(15, 48, generator=gen(2)) * 3e37  # every distance overflows float32
    out = GAS(p=4)(x, 3, AggregationContext(generator=gen(1)))
    assert bool(torch.isfinite(out).all())


# --------------------------------------------------------------------------- building blocks


@settings(max_examples=60, deadline=None)
@given(cols=st.lists(st.lists(st.integers(-3, 3), min_size=2, max_size=7), min_size=1, max_size=6),
       data=st.data())
def test_drop_value_deletes_one_copy_from_each_sorted_column(cols, data):
    depth = min(len(c) for c in cols)
    srt = torch.tensor([sorted(c)[:depth] for c in cols], dtype=F64).T.contiguous()
    v = [data.draw(st.sampled_from(c)) for c in cols]  # present in the column (maybe beyond the prefix)
    out = drop_value(srt, torch.tensor(v, dtype=F64), torch.empty(depth - 1, len(cols), dtype=F64))
    for q, c in enumerate(cols):
        rest = sorted(c)
        rest.remove(v[q])
        assert out[:, q].tolist() == rest[: depth - 1]


def test_drop_value_keeps_signed_zeros_and_infinities_apart():
    srt = torch.tensor([[0.0, 1.0], [0.0, math.inf], [2.0, math.inf]], dtype=F64)
    out = drop_value(srt, torch.tensor([0.0, math.inf], dtype=F64), torch.empty(2, 2, dtype=F64))
    assert out.tolist() == [[0.0, 1.0], [2.0, math.inf]]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 14), seed=st.integers(0, 10**6), ints=st.booleans(), data=st.data())
def test_iterative_krum_matches_plain_loop(n, seed, ints, data):
    f = data.draw(st.integers(0, (n - 3) // 2))
    m = data.draw(st.integers(1, n))
    g = gen(seed)
    x = torch.randint(-2, 3, (4, n, 3), generator=g).to(F64) if ints else torch.randn(4, n, 3, generator=g, dtype=F64)
    got = iterative_krum(distance_matrix(x), f, m)
    for b in range(4):
        rows, remaining, want = x[b].tolist(), list(range(n)), []
        for _ in range(m):
            want.append(remaining.pop(lowest(krum_pick(rows, remaining, f), 1)[0]))
        assert got[b].tolist() == want


@settings(max_examples=60, deadline=None)
@given(theta=st.integers(1, 12), seed=st.integers(0, 10**6), lower=st.booleans(), data=st.data())
def test_window_program_matches_plain_window(theta, seed, lower, data):
    beta = data.draw(st.integers(1, theta))
    rows = torch.randint(-4, 5, (theta, 9), generator=gen(seed)).to(F64) / 2  # many ties
    mode = "lower" if lower else "midpoint"
    got = closest_to_median_mean(rows, beta, mode)
    want = [window_mean(sorted(rows[:, j].tolist()), beta, lower) for j in range(9)]
    assert_rel_close(got, want, rel=1e-12)
    assert torch.equal(execute(window_program(theta, beta, mode), rows, chunk=2)[0], got)
    assert torch.equal(_window_mean_sorted(rows.sort(dim=0).values, beta, mode), got)


def test_window_program_hand_example_and_huge_values():
    # sorted 0, 1, 2, 10, 11: median 2; the three closest are 0, 1, 2 (10 is farther than 0)
    rows = torch.tensor([[10.0], [0.0], [2.0], [11.0], [1.0]], dtype=F64)
    assert closest_to_median_mean(rows, 3).tolist() == [1.0]
    # 1 and 3 tie around the median 2: the lower value wins
    assert closest_to_median_mean(torch.tensor([[1.0], [2.0], [3.0]]), 2).tolist() == [1.5]
    # median 1; both outer pairs are equally far in float32 (3e38 either way): the lower values
    # are taken, and the mean of 1, −3e38, −3e38 does not overflow
    huge = torch.tensor([[-3e38], [3e38], [3e38], [-3e38], [1.0]])
    out = closest_to_median_mean(huge, 3)
    assert out.item() == pytest.approx(-2e38, rel=1e-6)


@pytest.mark.parametrize("spec", ["bulyan", "bulyan(median_mode=lower)", "bulyan(selection_mode=one_shot)"])
def test_bulyan_chunk_scores_equal_distances_to_its_batched_outputs(monkeypatch, spec):
    from byzbench.defenses import Defense
    from byzbench.defenses import bulyan as bulyan_module
    from byzbench.ops.distances import chunk_distances

    rule = Defense.from_spec(spec).aggregator
    x3 = torch.randn(11, 7, 5, generator=gen(3)).transpose(0, 1)  # GAS's layout: 7 chunks of 5
    want = chunk_distances(x3, rule.aggregate_chunks(x3, 2, AggregationContext()))
    assert torch.equal(rule.chunk_scores(x3, 2, AggregationContext()), want)
    monkeypatch.setattr(bulyan_module, "PHASE2_COLUMNS", 10)  # blocks of 2 chunks, the last of 1
    assert torch.equal(rule.chunk_scores(x3, 2, AggregationContext()), want)


def test_bulyan_chunk_scores_only_for_krum_selection_and_trimmed_phase_2():
    from byzbench.defenses import Defense

    x3 = torch.randn(3, 11, 4, generator=gen(1))
    for spec in ("bulyan(selection=mean)", "bulyan(aggregation=median)"):
        assert Defense.from_spec(spec).aggregator.chunk_scores(x3, 2, AggregationContext()) is None


def test_window_program_torch_steps_agree_with_numpy_steps():
    # float16 runs torch's operations, float32 NumPy's; quarters divided by β = 4 stay exact
    rows = (torch.randint(-8, 9, (10, 40), generator=gen(4)) / 4).to(torch.float16)
    for mode in ("midpoint", "lower"):
        want = closest_to_median_mean(rows.float(), 4, mode)
        assert torch.equal(closest_to_median_mean(rows, 4, mode).float(), want)


def test_permuted_columns_split_among_threads_is_the_plain_gather():
    from byzbench.defenses.gas import permuted_columns, random_permutation

    x = torch.randn(7, 300, generator=gen(2))
    perm = random_permutation(300, gen(3))
    threads = torch.get_num_threads()
    try:
        for k in (1, 3):
            torch.set_num_threads(k)
            assert torch.equal(permuted_columns(x, perm), x[:, perm.long()])
    finally:
        torch.set_num_threads(threads)
