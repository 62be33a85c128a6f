"""Behaviour of the pre-aggregators: bucketing/resampling, NNM, static clipping, ARC.

References: ALGORITHMS.md §3.1–§3.4 (the rules, their "Verify" lines and composition),
§8 items 6 (NNM self) and 9 (bucketing f′), §0 (policies).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzbench.defenses import AGGREGATORS, PREAGGREGATORS, AggregationContext, Defense
from byzbench.defenses.arc import AdaptiveRobustClipping, arc_clipped_count
from byzbench.defenses.bucketing import Bucketing, bucket_means
from byzbench.defenses.clipping import StaticClipping
from byzbench.defenses.nnm import (
    NearestNeighbourMixing,
    mix_rows,
    mixing_matrix,
    neighbour_count,
)
from byzbench.errors import ConfigError, InfeasibleError, NonFiniteInputError
from byzbench.ops.clip import clip_rows, empty_like_rows, row_norms
from byzbench.ops.rows import HUGE_PAGE_BYTES

F64 = torch.float64
F32 = torch.float32
SEEDS = st.integers(0, 2**31 - 1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ctx_of(seed: int | None) -> AggregationContext:
    return AggregationContext(generator=None if seed is None else gen(seed))


def randn(n: int, d: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(n, d, generator=gen(seed), dtype=F64).to(dtype)


def col(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64).reshape(-1, 1)


def assert_rel_close(got: torch.Tensor, want: list[list[float]] | torch.Tensor, rel: float = 1e-5) -> None:
    want_t = torch.as_tensor(want, dtype=F64)
    got = got.to(F64)
    assert got.shape == want_t.shape, (got.shape, want_t.shape)
    scale = want_t.abs().clamp_min(1.0)
    err = ((got - want_t).abs() / scale).max().item() if want_t.numel() else 0.0
    assert err <= rel, f"relative error {err} > {rel}"


def same_rows(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` hold the same rows, as a multiset."""
    return sorted(map(tuple, a.tolist())) == sorted(map(tuple, b.tolist()))


# --------------------------------------------------------------------------- loop references (float64)


def ref_bucketing(x: torch.Tensor, perm: list[int], s: int) -> list[list[float]]:
    rows = x.tolist()
    out = []
    for start in range(0, len(perm), s):
        members = [rows[i] for i in perm[start : start + s]]
        out.append([math.fsum(col_) / len(members) for col_ in zip(*members)])
    return out


def ref_resampling(x: torch.Tensor, perm: list[int], s: int) -> list[list[float]]:
    rows, n = x.tolist(), x.shape[0]
    copies = [c % n for c in perm]  # copy c is a replica of row c mod n
    out = []
    for start in range(0, n * s, s):
        members = [rows[i] for i in copies[start : start + s]]
        out.append([math.fsum(col_) / s for col_ in zip(*members)])
    return out


def ref_nnm(x: torch.Tensor, f: int, include_self: bool) -> list[list[float]]:
    rows, n = x.tolist(), x.shape[0]
    out = []
    for i in range(n):
        dist = [(math.fsum((a - b) ** 2 for a, b in zip(rows[i], rows[j])), j) for j in range(n) if j != i]
        ranked = sorted(dist)  # by distance, then by index
        k = n - f if include_self else min(n - f, n - 1)
        if k == 0:  # a single row, self excluded: left as is
            out.append(list(rows[i]))
            continue
        chosen = ([i] + [j for _, j in ranked[: k - 1]]) if include_self else [j for _, j in ranked[:k]]
        out.append([math.fsum(rows[j][c] for j in chosen) / k for c in range(len(rows[0]))])
    return out


def ref_clip(rows: list[list[float]], c: float) -> list[list[float]]:
    out = []
    for r in rows:
        norm = math.sqrt(math.fsum(v * v for v in r))
        out.append([v * c / norm for v in r] if norm > c else list(r))
    return out


def ref_arc(x: torch.Tensor, f: int) -> list[list[float]]:
    rows, n = x.tolist(), x.shape[0]
    k = int(2 * f * (n - f) // n)
    if k == 0:
        return rows
    norms = sorted(math.sqrt(math.fsum(v * v for v in r)) for r in rows)
    return ref_clip(rows, norms[n - k - 1])


# --------------------------------------------------------------------------- registry and Verify lines


def test_registered_names_and_aliases():
    assert {"bucketing", "nnm", "clipping", "arc"} <= set(PREAGGREGATORS.names())
    assert PREAGGREGATORS.get("buck") is Bucketing
    assert PREAGGREGATORS.get("bucket") is Bucketing
    assert PREAGGREGATORS.get("mixing") is NearestNeighbourMixing
    assert PREAGGREGATORS.get("static_clipping") is StaticClipping
    assert PREAGGREGATORS.get("adaptive_clipping") is AdaptiveRobustClipping
    for name in ("bucketing", "nnm", "clipping", "arc"):
        assert PREAGGREGATORS.entry(name).summary  # a one-line description for `byzbench list`


def test_default_hyperparameters():
    b = Bucketing()
    assert (b.s, b.mode, b.bucket_f) == (2, "bucketing", "worst")
    assert NearestNeighbourMixing().include_self is True
    assert StaticClipping().tau == 2.0
    assert AdaptiveRobustClipping().nonfinite == "as_byzantine"


@pytest.mark.parametrize("mode", ["bucketing", "resampling"])
@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_bucketing_s1_is_a_permutation(mode, n):
    x = randn(n, 3, n)
    out, f = Bucketing(s=1, mode=mode)(x, 0, ctx_of(n))
    assert out.shape == x.shape and f == 0
    assert same_rows(out, x)


def test_bucketing_s1_really_permutes():
    x = randn(10, 2, 0)
    outs = [Bucketing(s=1)(x, 0, ctx_of(seed))[0] for seed in range(5)]
    assert any(not torch.equal(o, x) for o in outs)


@pytest.mark.parametrize("n, s", [(6, 2), (6, 3), (8, 4), (9, 3), (7, 7)])
def test_bucketing_full_buckets_preserve_the_mean(n, s):
    x = randn(n, 4, n + s)
    out, _ = Bucketing(s=s)(x, 1, ctx_of(1))
    assert out.shape == (n // s, 4)
    torch.testing.assert_close(out.mean(dim=0), x.mean(dim=0))


@pytest.mark.parametrize("n, s", [(5, 2), (7, 3), (6, 4)])
def test_resampling_preserves_the_mean(n, s):
    x = randn(n, 4, n)
    out, _ = Bucketing(s=s, mode="resampling")(x, 1, ctx_of(2))
    assert out.shape == (n, 4)
    torch.testing.assert_close(out.mean(dim=0), x.mean(dim=0))


def test_bucketing_n5_s2_gives_three_outputs_and_keeps_the_last_bucket():
    x = col(1, 2, 3, 4, 5)
    out, f = Bucketing(s=2)(x, 1, ctx_of(11))
    assert out.shape == (3, 1) and f == 1
    perm = torch.randperm(5, generator=gen(11)).tolist()
    assert out.flatten().tolist() == [sum(x[i].item() for i in perm[j : j + 2]) / len(perm[j : j + 2])
                                      for j in (0, 2, 4)]
    assert out[-1].item() == x[perm[-1]].item()  # the incomplete bucket holds one row, kept as is


@pytest.mark.parametrize("n, s", [(7, 3), (10, 4), (9, 5)])
def test_bucketing_incomplete_last_bucket_is_its_exact_mean(n, s):
    x = randn(n, 3, n)
    out, _ = Bucketing(s=s)(x, 0, ctx_of(n))
    perm = torch.randperm(n, generator=gen(n))
    last = x[perm[n - n % s :]]
    if n % s == 1:
        assert torch.equal(out[-1], last[0])
    torch.testing.assert_close(out[-1], last.mean(dim=0))


def test_nnm_identical_rows_are_unchanged():
    x = torch.tensor([[1.5, -2.0, 3.0]] * 6, dtype=F64)
    for include_self in (True, False):
        out, f = NearestNeighbourMixing(include_self=include_self)(x, 2)
        assert torch.equal(out, x) and f == 2


def test_nnm_verify_line():
    out, f = NearestNeighbourMixing()(col(0, 1, 2, 10), 1)
    assert_rel_close(out, [[1], [1], [1], [13 / 3]], rel=1e-12)
    assert f == 1


def test_nnm_excluding_self_on_the_verify_input():
    # neighbours of each row among the others (k = 3): all of them, so x'_i = (Σx − x_i)/3
    out, _ = NearestNeighbourMixing(include_self=False)(col(0, 1, 2, 10), 1)
    assert_rel_close(out, [[13 / 3], [4], [11 / 3], [1]], rel=1e-12)


def test_nnm_include_self_flag_changes_the_neighbourhood():
    x = col(0, 1, 3, 7, 20)  # f = 2, k = 3
    with_self = NearestNeighbourMixing(include_self=True)(x, 2)[0].flatten().tolist()
    without = NearestNeighbourMixing(include_self=False)(x, 2)[0].flatten().tolist()
    assert with_self == pytest.approx([4 / 3, 4 / 3, 4 / 3, 11 / 3, 30 / 3])
    assert without == pytest.approx([11 / 3, 10 / 3, 8 / 3, 4 / 3, 11 / 3])


def test_nnm_f0_gives_the_mean_in_every_row():
    x = randn(7, 5, 3)
    out, f = NearestNeighbourMixing()(x, 0)
    assert f == 0
    for row in out:
        torch.testing.assert_close(row, x.mean(dim=0))
    assert all(torch.equal(out[0], r) for r in out)


def test_nnm_excluding_self_with_f0_uses_all_other_rows():
    x = col(1, 2, 6)
    out, _ = NearestNeighbourMixing(include_self=False)(x, 0)
    assert_rel_close(out, [[4], [3.5], [1.5]], rel=1e-12)
    assert neighbour_count(3, 0, False) == 2 and neighbour_count(3, 0, True) == 3


def test_nnm_single_row():
    x = col(5.0)
    for include_self in (True, False):
        out, _ = NearestNeighbourMixing(include_self=include_self)(x, 0)
        assert out.tolist() == [[5.0]]


@pytest.mark.parametrize(
    "include_self, values, expected",
    [
        # row 0 (0): nearest 0.5, then −1 and +1 tie for the last place (k = 3 with self)
        (True, (0, 0.5, -1, 1, 50), (0 + 0.5 - 1) / 3),
        (True, (0, 0.5, 1, -1, 50), (0 + 0.5 + 1) / 3),
        # row 0 (0) among the others: 0.5, −1, then +2 and −2 tie for the 3rd place
        (False, (0, 0.5, -1, 2, -2), (0.5 - 1 + 2) / 3),
        (False, (0, 0.5, -1, -2, 2), (0.5 - 1 - 2) / 3),
    ],
)
def test_nnm_ties_are_broken_by_lowest_index(include_self, values, expected):
    out, _ = NearestNeighbourMixing(include_self=include_self)(col(*values), 2)
    assert out[0].item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("values", [(0, 1, 2, 3, 4), (1e300, -1e300, 1e300, 0, 1), (7, 7, 7, 7, 7)])
def test_nnm_self_is_always_in_or_always_out(values):
    x = col(*values)  # distances tie at 0 or at +inf (beyond float64) for some inputs
    k = 3
    w_in, w_out = mixing_matrix(x, k, True), mixing_matrix(x, k, False)
    assert torch.equal(w_in.diagonal(), torch.full((5,), 1 / k, dtype=F64))
    assert torch.equal(w_out.diagonal(), torch.zeros(5, dtype=F64))
    assert (w_in > 0).sum(dim=1).tolist() == [k] * 5 == (w_out > 0).sum(dim=1).tolist()


def test_arc_verify_line():
    dirs = torch.nn.functional.normalize(randn(5, 3, 0), dim=1)
    norms = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0], dtype=F64)
    perm = torch.tensor([3, 0, 4, 2, 1])  # not sorted by norm
    x = (dirs * norms.unsqueeze(1))[perm]
    out, f = AdaptiveRobustClipping()(x, 1)
    assert f == 1 and arc_clipped_count(5, 1) == 1
    assert_rel_close(out.norm(dim=1), norms.clamp_max(4.0)[perm], rel=1e-12)
    cos = torch.nn.functional.cosine_similarity(out, x, dim=1)
    assert_rel_close(cos, torch.ones(5, dtype=F64), rel=1e-12)
    untouched = perm != 4
    assert torch.equal(out[untouched], x[untouched])


def test_arc_f0_is_the_identity():
    x = randn(6, 4, 1) * torch.tensor([1, 10, 100, 1e3, 1e4, 1e5], dtype=F64).unsqueeze(1)
    ctx = AggregationContext()
    out, f = AdaptiveRobustClipping()(x, 0, ctx)
    assert torch.equal(out, x) and f == 0
    assert ctx.diagnostics["n_clipped"] == 0.0 and bool(ctx.diagnostics["kept"].all())


@pytest.mark.parametrize("n, f, k", [(5, 1, 1), (25, 5, 8), (10, 0, 0), (10, 4, 4), (3, 1, 1), (17, 3, 4)])
def test_arc_clipped_count(n, f, k):
    assert arc_clipped_count(n, f) == k == math.floor(2 * f * (n - f) / n)


def test_arc_clipped_count_is_exact_where_floats_round_down():
    assert int((2 * 33 / 242) * (242 - 33)) == 56  # byzfl's expression
    assert arc_clipped_count(242, 33) == 57  # 2·33·209/242 = 57 exactly


def test_arc_diagnostics():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 4.0], [100.0, 0.0]], dtype=F64)
    ctx = AggregationContext()
    AdaptiveRobustClipping()(x, 1, ctx)
    assert ctx.diagnostics["kept"].tolist() == [True, True, True, True, False]
    assert ctx.diagnostics["n_clipped"] == 1.0
    assert ctx.diagnostics["clip_threshold"] == 4.0


def test_arc_ties_at_the_threshold_are_not_clipped():
    x = col(1, 2, 3, 3, 3)  # k = 1, C = 3: the largest row already has norm C
    ctx = AggregationContext()
    out, _ = AdaptiveRobustClipping()(x, 1, ctx)
    assert torch.equal(out, x)
    assert ctx.diagnostics["n_clipped"] == 0.0


# --------------------------------------------------------------------------- static clipping


def test_clipping_hand_example():
    x = torch.tensor([[3.0, 4.0], [0.6, 0.8], [0.0, 0.0], [-6.0, 8.0]], dtype=F64)
    ctx = AggregationContext()
    out, f = StaticClipping(tau=2.0)(x, 1, ctx)
    assert f == 1
    assert_rel_close(out, [[1.2, 1.6], [0.6, 0.8], [0.0, 0.0], [-1.2, 1.6]], rel=1e-12)
    assert ctx.diagnostics["kept"].tolist() == [False, True, True, False]
    assert ctx.diagnostics["n_clipped"] == 2.0


def test_clipping_nothing_to_clip_returns_the_input():
    x = randn(4, 3, 0) * 0.1
    out, _ = StaticClipping(tau=10)(x, 0)
    assert out is x


def test_clip_rows_zero_threshold_and_zero_rows():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=F64)
    out, clipped = clip_rows(x, 0.0)
    assert out.tolist() == [[0.0, 0.0], [0.0, 0.0]] and clipped.tolist() == [False, True]


def test_clipping_far_below_the_norm_stays_accurate():
    # τ/‖x‖ ≈ 1.8e-41 is subnormal in float32: such rows are rescaled in float64
    x = torch.tensor([[5.587464650235271e34, 1.0], [3.0, 4.0]], dtype=F32)
    out, clipped = clip_rows(x, 1e-6)
    assert clipped.tolist() == [True, True]
    assert out[0, 0].item() == pytest.approx(1e-6, rel=1e-7)
    assert out[1].tolist() == pytest.approx([0.6e-6, 0.8e-6], rel=1e-6)


def test_row_norms_survive_float32_overflow():
    x = torch.full((3, 1000), 1e38, dtype=F32)
    x[1] = 1.0
    norms, big = row_norms(x)
    assert norms.dtype == F64 and big.tolist() == [True, False, True]
    assert norms[0].item() == pytest.approx(float(torch.tensor(1e38, dtype=F32)) * math.sqrt(1000), rel=1e-6)
    assert norms[1].item() == pytest.approx(math.sqrt(1000), rel=1e-6)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_clipping_huge_finite_rows(dtype):
    big = 1e38 if dtype == F32 else 1e300
    x = torch.ones(4, 1000, dtype=dtype)
    x[1] = big
    x[2, ::2] = -big
    for rule in (StaticClipping(tau=3.0), AdaptiveRobustClipping()):
        out, _ = rule(x, 1)
        assert bool(torch.isfinite(out).all())
        assert bool((out.to(F64).norm(dim=1) <= x.to(F64).norm(dim=1)).all())
    out, _ = AdaptiveRobustClipping()(x, 1)  # k = 1: the largest row goes to the 3rd norm
    assert out.to(F64).norm(dim=1)[1].item() == pytest.approx(x.to(F64)[2].norm().item(), rel=1e-5)
    out, _ = StaticClipping(tau=3.0)(x, 1)
    assert_rel_close(out.to(F64).norm(dim=1), [3.0] * 4, rel=1e-5)
    assert out[1, 0].item() == pytest.approx(3 / math.sqrt(1000), rel=1e-5)
    assert out[2, 0].item() == pytest.approx(-3 / math.sqrt(500), rel=1e-5)


@pytest.mark.parametrize("dtype", [F32, F64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows", [2, 64])
def test_empty_like_rows_gives_an_ordinary_tensor(dtype, rows):
    like = torch.zeros(rows, 1 << 15, dtype=dtype)
    out = empty_like_rows(like)
    assert out.shape == (rows, 1 << 15) and out.dtype == dtype and out.device == like.device
    assert out.is_contiguous()
    out.fill_(1.5)
    assert bool((out == 1.5).all())


def test_large_outputs_match_the_small_path():
    d = HUGE_PAGE_BYTES // 4  # 8 float32 rows of d entries: 32 MiB in, past the NumPy threshold
    x = randn(8, d, 0, F32) * torch.arange(1, 9, dtype=F32).unsqueeze(1)
    out, clipped = clip_rows(x, 2000.0)
    assert clipped.tolist() == [False, True, True, True, True, True, True, True]
    assert torch.equal(out[0], x[0])
    torch.testing.assert_close(out[1:].to(F64).norm(dim=1), torch.full((7,), 2000.0, dtype=F64), rtol=1e-4, atol=0)
    mixed, _ = NearestNeighbourMixing()(x[:, :4096].contiguous(), 2)
    big, _ = NearestNeighbourMixing()(x, 2)
    torch.testing.assert_close(big[:, :4096], mixed, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(big[:, 7], torch.mm(mixing_matrix(x, 6, True), x)[:, 7])


# --------------------------------------------------------------------------- bucket_f and f′


@pytest.mark.parametrize(
    "mode, bucket_f, n, s, f, expected",
    [
        ("bucketing", "worst", 25, 2, 5, 5),
        ("bucketing", "ceil_div", 25, 2, 5, 3),
        ("bucketing", "worst", 5, 5, 2, 1),  # one bucket: at most one bad output
        ("bucketing", "ceil_div", 5, 5, 2, 1),
        ("bucketing", "worst", 10, 3, 4, 4),
        ("bucketing", "ceil_div", 10, 3, 4, 2),
        ("resampling", "worst", 25, 2, 5, 10),
        ("resampling", "ceil_div", 25, 2, 5, 5),
        ("resampling", "worst", 7, 3, 3, 7),
        ("resampling", "ceil_div", 7, 3, 3, 3),
        ("bucketing", "worst", 9, 2, 0, 0),
        ("resampling", "ceil_div", 9, 2, 0, 0),
    ],
)
def test_bucket_f(mode, bucket_f, n, s, f, expected):
    rule = Bucketing(s=s, mode=mode, bucket_f=bucket_f)
    assert rule.f_out(n, f) == expected
    out, f_next = rule(randn(n, 2, 0), f, ctx_of(0))
    assert f_next == expected
    assert out.shape[0] == (-(-n // s) if mode == "bucketing" else n)


def test_bucket_f_through_a_chain():
    x = randn(10, 3, 5)
    worst = Defense.from_spec("bucketing(s=2) > trmean")
    optimistic = Defense.from_spec("bucketing(s=2, bucket_f=ceil_div) > trmean")
    # 5 buckets; worst f′ = 2 trims 2 per side, ceil_div f′ = 1 trims 1
    b_worst, _ = Bucketing(s=2)(x, 2, ctx_of(3))
    torch.testing.assert_close(worst(x, 2, ctx_of(3)), b_worst.sort(dim=0).values[2:3].mean(dim=0))
    torch.testing.assert_close(optimistic(x, 2, ctx_of(3)), b_worst.sort(dim=0).values[1:4].mean(dim=0))


# --------------------------------------------------------------------------- differential tests


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), s=st.integers(1, 5), d=st.integers(1, 6), seed=SEEDS,
       mode=st.sampled_from(["bucketing", "resampling"]))
def test_bucketing_matches_loop_reference(n, s, d, seed, mode):
    x = randn(n, d, seed)
    out, _ = Bucketing(s=s, mode=mode)(x, 0, ctx_of(seed))
    m = n * s if mode == "resampling" else n
    perm = torch.randperm(m, generator=gen(seed)).tolist()
    ref = ref_bucketing(x, perm, s) if mode == "bucketing" else ref_resampling(x, perm, s)
    assert_rel_close(out, ref)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), d=st.integers(1, 6), seed=SEEDS, include_self=st.booleans(), data=st.data())
def test_nnm_matches_loop_reference(n, d, seed, include_self, data):
    f = data.draw(st.integers(0, (n - 1) // 2))
    x = randn(n, d, seed)
    out, f_next = NearestNeighbourMixing(include_self=include_self)(x, f)
    assert f_next == f
    assert_rel_close(out, ref_nnm(x, f, include_self))


def test_nnm_matches_loop_reference_float32():
    x = randn(15, 40, 9, F32)
    for include_self in (True, False):
        out, _ = NearestNeighbourMixing(include_self=include_self)(x, 4)
        assert out.dtype == F32
        assert_rel_close(out, ref_nnm(x.to(F64), 4, include_self), rel=1e-5)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), d=st.integers(1, 6), seed=SEEDS, data=st.data())
def test_arc_matches_loop_reference(n, d, seed, data):
    f = data.draw(st.integers(0, (n - 1) // 2))
    x = randn(n, d, seed) * torch.rand(n, 1, generator=gen(seed + 1), dtype=F64).mul(20).exp()
    out, _ = AdaptiveRobustClipping()(x, f)
    assert_rel_close(out, ref_arc(x, f))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 10), d=st.integers(1, 6), seed=SEEDS, tau=st.floats(1e-3, 1e3))
def test_clipping_matches_loop_reference(n, d, seed, tau):
    x = randn(n, d, seed) * 3
    out, _ = StaticClipping(tau=tau)(x, 0)
    assert_rel_close(out, ref_clip(x.tolist(), tau))


# --------------------------------------------------------------------------- hypothesis properties


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 10), d=st.integers(1, 5), seed=SEEDS, include_self=st.booleans(), data=st.data())
def test_nnm_is_permutation_equivariant(n, d, seed, include_self, data):
    f = data.draw(st.integers(0, (n - 1) // 2))
    x = randn(n, d, seed)
    perm = torch.tensor(data.draw(st.permutations(range(n))), dtype=torch.long)
    rule = NearestNeighbourMixing(include_self=include_self)
    torch.testing.assert_close(rule(x[perm], f)[0], rule(x, f)[0][perm])


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 10), d=st.integers(1, 5), seed=SEEDS, data=st.data())
def test_clipping_and_arc_are_row_wise(n, d, seed, data):
    f = data.draw(st.integers(0, (n - 1) // 2))
    x = randn(n, d, seed) * torch.rand(n, 1, generator=gen(seed), dtype=F64).mul(5).exp()
    perm = torch.tensor(data.draw(st.permutations(range(n))), dtype=torch.long)
    for rule in (StaticClipping(tau=1.5), AdaptiveRobustClipping()):
        assert rule.rowwise  # flagged: rows still stand for the clients
        assert torch.equal(rule(x[perm], f)[0], rule(x, f)[0][perm])
    assert not NearestNeighbourMixing.rowwise and not Bucketing.rowwise


finite_floats = st.floats(allow_nan=False, allow_infinity=False, width=32)  # up to ±3.4e38


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 6), d=st.integers(1, 4), tau=st.floats(1e-6, 1e6), data=st.data())
def test_clipping_never_increases_a_norm(n, d, tau, data):
    vals = data.draw(st.lists(finite_floats, min_size=n * d, max_size=n * d))
    x = torch.tensor(vals, dtype=F32).reshape(n, d)
    for rule, f in ((StaticClipping(tau=tau), 0), (AdaptiveRobustClipping(), (n - 1) // 2)):
        out, _ = rule(x, f)
        assert bool(torch.isfinite(out).all())
        before, after = x.to(F64).norm(dim=1), out.to(F64).norm(dim=1)
        assert bool((after <= before * (1 + 1e-6)).all()), (rule.name, before, after)
    out, _ = StaticClipping(tau=tau)(x, 0)
    assert bool((out.to(F64).norm(dim=1) <= tau * (1 + 1e-5)).all())


CHAINS = [
    "bucketing > median",
    "bucketing(mode=resampling, bucket_f=ceil_div) > median",
    "nnm > trmean",
    "nnm(include_self=false) > median",
    "clipping(tau=1) > trmean",
    "arc > nnm > trmean",
    "nnm > bucketing > median",
]


@settings(max_examples=40, deadline=None)
@given(f=st.integers(1, 3), extra=st.integers(0, 3), d=st.integers(1, 5), seed=SEEDS,
       kind=st.sampled_from(["nan", "inf", "-inf", "huge", "mixed"]), dtype=st.sampled_from([F32, F64]),
       data=st.data())
def test_outputs_stay_finite_with_hostile_rows(f, extra, d, seed, kind, dtype, data):
    n = 4 * f + 2 + extra  # bucketing's worst-case f′ stays feasible for the median after it
    honest = randn(n - f, d, seed, dtype)
    bad = torch.empty(f, d, dtype=dtype)
    if kind == "huge":
        bad.copy_(torch.tensor(data.draw(st.lists(st.sampled_from([1e38, -1e38]), min_size=f * d,
                                                  max_size=f * d)), dtype=dtype).reshape(f, d))
    elif kind == "mixed":
        bad.copy_(honest[:f])
        bad[:, 0] = torch.tensor([math.nan, math.inf, -1e38][:f], dtype=dtype)
    else:
        bad.fill_({"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[kind])
    perm = torch.tensor(data.draw(st.permutations(range(n))), dtype=torch.long)
    x = torch.cat([honest, bad])[perm]
    for name in ("bucketing", "nnm", "clipping", "arc"):
        out, f_next = PREAGGREGATORS.create(name)(x, f, ctx_of(seed))
        assert out.dtype == dtype and bool(torch.isfinite(out).all()), (name, kind)
        assert 0 <= f_next <= f
    for spec in CHAINS:
        out = Defense.from_spec(spec)(x, f, ctx_of(seed))
        assert out.shape == (d,) and out.dtype == dtype
        assert bool(torch.isfinite(out).all()), (spec, kind, out)


# --------------------------------------------------------------------------- reproducibility and RNG use


@pytest.mark.parametrize("mode", ["bucketing", "resampling"])
def test_bucketing_is_reproducible_with_a_fixed_generator(mode):
    x = randn(11, 4, 0)
    rule = Bucketing(s=3, mode=mode)
    a, _ = rule(x, 1, ctx_of(42))
    b, _ = rule(x, 1, ctx_of(42))
    assert torch.equal(a, b)
    others = [rule(x, 1, ctx_of(seed))[0] for seed in range(43, 48)]
    assert any(not torch.equal(a, o) for o in others)


def test_bucketing_draws_only_from_the_context_generator():
    x = randn(9, 3, 0)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    g = gen(5)
    ctx = AggregationContext(generator=g)
    first, _ = Bucketing()(x, 1, ctx)
    second, _ = Bucketing()(x, 1, ctx)  # the generator advanced: a new permutation
    assert torch.equal(torch.random.get_rng_state(), state)
    g2 = gen(5)
    expected = [torch.randperm(9, generator=g2) for _ in range(2)]
    assert torch.equal(first, bucket_means(x, expected[0], 2))
    assert torch.equal(second, bucket_means(x, expected[1], 2))


def test_bucketing_without_a_generator_uses_a_local_seed_0():
    x = randn(9, 3, 0)
    torch.manual_seed(7)
    state = torch.random.get_rng_state()
    a, _ = Bucketing()(x, 1)
    b, _ = Bucketing()(x, 1, AggregationContext())
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b)
    assert torch.equal(a, Bucketing()(x, 1, ctx_of(0))[0])


# --------------------------------------------------------------------------- chains through Defense.from_spec


def test_chains_equal_their_stages_composed():
    x = randn(12, 6, 4)
    f = 2
    d = Defense.from_spec("nnm > trmean")
    assert [p.name for p in d.pre] == ["nnm"] and d.spec == "nnm > trmean"
    mixed, f1 = NearestNeighbourMixing()(x, f)
    torch.testing.assert_close(d(x, f), AGGREGATORS.create("trmean")(mixed, f1))

    d = Defense.from_spec("arc > nnm > median")
    clipped, _ = AdaptiveRobustClipping()(x, f)
    mixed, _ = NearestNeighbourMixing()(clipped, f)
    torch.testing.assert_close(d(x, f), AGGREGATORS.create("median")(mixed, f))

    d = Defense.from_spec("nnm > bucketing(s=3) > mean")
    mixed, _ = NearestNeighbourMixing()(x, f)
    buckets, _ = Bucketing(s=3)(mixed, f, ctx_of(8))
    torch.testing.assert_close(d(x, f, ctx_of(8)), buckets.mean(dim=0))

    d = Defense.from_spec("clipping(tau=0.5) > mean")
    torch.testing.assert_close(d(x, f), StaticClipping(tau=0.5)(x, f)[0].mean(dim=0))


def test_chain_spec_parameters_reach_the_stages():
    d = Defense.from_spec("bucketing(s=3, mode=resampling, bucket_f=ceil_div) > nnm(include_self=false) > median")
    b, m = d.pre
    assert (b.s, b.mode, b.bucket_f) == (3, "resampling", "ceil_div")
    assert m.include_self is False
    assert Defense.from_spec("static_clipping(tau=5) > mean").pre[0].tau == 5.0
    assert Defense.from_spec("buck > trmean").pre[0].s == 2


def test_bucketing_then_mean_is_the_mean_for_full_buckets():
    x = randn(8, 3, 2)
    torch.testing.assert_close(Defense.from_spec("bucketing(s=4) > mean")(x, 1, ctx_of(0)), x.mean(dim=0))


def test_chain_infeasible_after_bucketing_raises_at_run_time():
    x = randn(6, 2, 0)  # 3 buckets, f′ = 2: the median needs 3 > 4
    with pytest.raises(InfeasibleError, match="median"):
        Defense.from_spec("bucketing > median")(x, 2, ctx_of(0))
    out = Defense.from_spec("bucketing(bucket_f=ceil_div) > median")(x, 2, ctx_of(0))  # f′ = 1
    assert out.shape == (2,)


# --------------------------------------------------------------------------- policies, shapes, dtypes


def test_nonfinite_rows_are_removed_and_f_lowered():
    x = torch.cat([col(1, 2, 3, 4), col(math.nan)])
    out, f = NearestNeighbourMixing()(x, 1)  # 4 finite rows, f → 0: every row is their mean
    assert f == 0 and out.flatten().tolist() == [2.5] * 4
    out, f = Bucketing(s=2)(x, 1, ctx_of(0))
    assert out.shape == (2, 1) and f == 0
    with pytest.raises(NonFiniteInputError):
        NearestNeighbourMixing(nonfinite="raise")(x, 1)
    with pytest.raises(NonFiniteInputError, match="exceed f = 0"):
        StaticClipping()(x, 0)
    out, f = StaticClipping(tau=1.0, nonfinite="drop")(x, 0)
    assert out.shape == (4, 1) and f == 0


@pytest.mark.parametrize("make", [NearestNeighbourMixing, AdaptiveRobustClipping])
def test_feasibility_n_greater_than_2f(make):
    x = randn(4, 2, 0)
    with pytest.raises(InfeasibleError, match=r"requires n > 2f"):
        make()(x, 2)
    out, f = make(infeasible="clamp")(x, 2)
    assert f == 1 and out.shape == (4, 2)


@pytest.mark.parametrize("make", [Bucketing, StaticClipping])
def test_bucketing_and_clipping_accept_any_f(make):
    x = randn(4, 2, 0)
    out, f = make()(x, 3, ctx_of(0))
    assert out.shape[1] == 2 and f <= 3
    with pytest.raises(InfeasibleError):
        make()(x, -1, ctx_of(0))


@pytest.mark.parametrize("name", ["bucketing", "nnm", "clipping", "arc"])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_dtype_device_shape_and_input_untouched(name, dtype):
    x = randn(9, 5, 1, dtype) * 3
    before = x.clone()
    out, _ = PREAGGREGATORS.create(name)(x, 2, ctx_of(0))
    assert out.dtype == dtype and out.device == x.device and out.shape[1] == 5
    assert torch.equal(x, before)


@pytest.mark.parametrize("name", ["bucketing", "nnm", "clipping", "arc"])
def test_wrong_dimensionality_raises(name):
    with pytest.raises(ValueError, match="2-D"):
        PREAGGREGATORS.create(name)(torch.zeros(5), 1)


# --------------------------------------------------------------------------- parameter validation


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("bucketing", {"s": 0}, "s must be ≥ 1"),
        ("bucketing", {"s": 1.5}, "s must be an integer"),
        ("bucketing", {"s": True}, "s must be an integer"),
        ("bucketing", {"s": None}, "s must be an integer"),
        ("bucketing", {"mode": "bagging"}, "mode must be one of"),
        ("bucketing", {"bucket_f": "best"}, "bucket_f must be one of"),
        ("nnm", {"include_self": 1}, "include_self must be true or false"),
        ("clipping", {"tau": 0}, "tau must be > 0"),
        ("clipping", {"tau": -1.0}, "tau must be > 0"),
        ("clipping", {"tau": math.inf}, "tau must be a finite number"),
        ("clipping", {"tau": "big"}, "tau must be a finite number"),
        ("arc", {"nonfinite": "ignore"}, "nonfinite must be one of"),
    ],
)
def test_invalid_parameters_name_the_parameter(name, params, message):
    cls = PREAGGREGATORS.get(name)
    with pytest.raises((ValueError, TypeError), match=message):
        cls(**params)
    with pytest.raises(ConfigError) as exc:
        PREAGGREGATORS.create(name, "defense", **params)
    param = next(iter(params))
    # hyperparameters are keyed by name; the base-class policies by the defense
    expected = "defense" if param == "nonfinite" else f"defense.{param}"
    assert message in str(exc.value) and exc.value.key == expected


def test_unknown_parameter_through_a_spec_names_the_key():
    with pytest.raises(ConfigError) as exc:
        Defense.from_spec("bucketing(size=2) > median")
    assert exc.value.key == "defense.size"
    assert "bucket_f" in str(exc.value) and "mode" in str(exc.value)
    with pytest.raises(ConfigError, match="is an aggregator and must come last"):
        Defense.from_spec("median > nnm")


def test_chain_with_row_wise_stages_keeps_client_diagnostics_and_order_invariance():
    from byzbench.defenses import AggregationContext, Defense

    chain = Defense.from_spec("clipping(tau=1.0) > trmean")
    assert chain.rowwise_pre and chain.order_invariant
    assert not Defense.from_spec("nnm > trmean").order_invariant
    assert not Defense.from_spec("bucketing > median").rowwise_pre
    # a kept mask survives row-wise stages and is mapped back past screened rows
    picky = Defense.from_spec("clipping(tau=1.0) > krum")
    x = torch.randn(9, 4, dtype=F64)
    x[2] = float("nan")
    ctx = AggregationContext()
    picky(x, 2, ctx)
    kept = ctx.diagnostics["kept"]
    assert kept.shape == (9,) and not bool(kept[2]) and int(kept.sum()) == 1
    ctx = AggregationContext()
    Defense.from_spec("nnm > krum")(x, 2, ctx)
    assert "kept" not in ctx.diagnostics


# --------------------------------------------------------------------------- NNM's blocked mixing product


@pytest.mark.parametrize("threads", [1, 2])
def test_mix_rows_blocks_equal_one_product(monkeypatch, threads):
    import byzbench.defenses.nnm as nnm_module

    x = randn(9, 1000, 3, F64)
    w = mixing_matrix(x, 6, True)
    monkeypatch.setattr(nnm_module, "BLOCK", 64)  # 16 blocks, the last one ragged
    monkeypatch.setattr(nnm_module, "THREADED_MIX_COLUMNS", 96)  # 11 blocks, ragged
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    torch.testing.assert_close(mix_rows(w, x), w @ x, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("threads", [1, 2])
def test_mix_rows_redoes_overflowing_blocks_in_float64(monkeypatch, threads):
    import byzbench.defenses.nnm as nnm_module

    monkeypatch.setattr(nnm_module, "BLOCK", 4)
    monkeypatch.setattr(nnm_module, "THREADED_MIX_COLUMNS", 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    top = torch.finfo(F32).max
    x = torch.randn(7, 12, generator=gen(1), dtype=F32)
    x[:, 5] = top  # one column at the limit: 7 · fl(1/7) · top exceeds it
    w = mixing_matrix(x, 7, True)
    out = mix_rows(w, x)
    assert bool(torch.isfinite(out).all()) and bool((out[:, 5] == top).all())
    torch.testing.assert_close(out[:, :4], w @ x[:, :4], rtol=1e-6, atol=1e-6)  # ordinary blocks
    mixed, _ = NearestNeighbourMixing()(x, 0)
    assert bool(torch.isfinite(mixed).all())
