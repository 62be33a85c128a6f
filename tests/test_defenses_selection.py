"""Selection- and distance-based aggregators: Krum, Multi-Krum, RFA, Bulyan, MDA, MixTailor.

References: ALGORITHMS.md §2.5–§2.7, §2.9, §2.10, §2.16 (definitions and "Verify" lines),
§8 items 4, 5, 13 (flags), §0 (ties, non-finite and feasibility policies).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from byzbench.defenses import AGGREGATORS, AggregationContext, Defense
from byzbench.defenses import bulyan as bulyan_module
from byzbench.defenses import krum as krum_module
from byzbench.defenses import mda as mda_module
from byzbench.defenses.bulyan import Bulyan, closest_to_median_mean
from byzbench.defenses.krum import Krum, krum_scores
from byzbench.defenses.mda import MDA, removal_sets
from byzbench.defenses.mean import Mean
from byzbench.defenses.median import CoordinateMedian
from byzbench.defenses.mixtailor import MixTailor, default_pool
from byzbench.defenses.multikrum import MultiKrum
from byzbench.defenses.rfa import RFA
from byzbench.errors import ConfigError, InfeasibleError, NonFiniteInputError
from byzbench.ops import distances as distances_module
from byzbench.ops.distances import distance_matrix
from byzbench.ops.sortnet import execute

F64 = torch.float64
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ctx_of(seed: int | None = None) -> AggregationContext:
    return AggregationContext(generator=None if seed is None else gen(seed))


def randn(n: int, d: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(n, d, generator=gen(seed), dtype=F64).to(dtype)


def col(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64).reshape(-1, 1)


def assert_rel_close(got: torch.Tensor, want: list[float], rel: float = 1e-5) -> None:
    want_t = torch.tensor(want, dtype=F64)
    got = got.to(F64).cpu()
    err = ((got - want_t).abs() / want_t.abs().clamp_min(1.0)).max().item()
    assert err <= rel, f"relative error {err} > {rel}"


# --------------------------------------------------------------------------- loop references (float64)


def ref_dist(a: list[float], b: list[float], p: float = 2.0) -> float:
    diffs = [abs(u - v) for u, v in zip(a, b)]
    if p == math.inf:
        return max(diffs)
    return math.fsum(t**p for t in diffs) ** (1.0 / p)


#: Set by the references when a selection hinged on a near-tie (rounding may then decide
#: differently); property tests discard such examples (ALGORITHMS.md §0, "Ties").
NEAR_TIES: list[float] = []


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def ranked(values: list[float], m: int) -> list[int]:
    """The m indices of smallest value (ties to the lowest index), noting a tie at the cut."""
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    if 0 < m < len(values) and _close(values[order[m - 1]], values[order[m]]):
        NEAR_TIES.append(values[order[m]])
    return order[:m]


def first_argmin(values: list[float]) -> int:
    return ranked(values, 1)[0]


def fresh_ties() -> None:
    NEAR_TIES.clear()


def no_ties() -> None:
    assume(not NEAR_TIES)


def ref_scores(rows, f, offset=2, squared=True, p=2.0) -> list[float]:
    n = len(rows)
    k = min(max(n - f - offset, 1), n - 1)
    out = []
    for i in range(n):
        ds = sorted(ref_dist(rows[i], rows[j], p) for j in range(n) if j != i)
        out.append(math.fsum(t * t if squared else t for t in ds[:k]))
    return out


def ref_mean(rows, idx) -> list[float]:
    return [math.fsum(rows[i][c] for i in idx) / len(idx) for c in range(len(rows[0]))]


def ref_krum(rows, f, offset=2, squared=True, p=2.0) -> int:
    return first_argmin(ref_scores(rows, f, offset, squared, p))


def ref_multikrum(rows, f, m, mode="one_shot", offset=2, squared=True) -> list[int]:
    if mode == "one_shot":
        return ranked(ref_scores(rows, f, offset, squared), m)
    remaining, chosen = list(range(len(rows))), []
    for _ in range(m):
        j = ref_krum([rows[i] for i in remaining], f, offset, squared)
        chosen.append(remaining.pop(j))
    return chosen


def ref_rfa(rows, nu=1e-6, T=8, z0=None, alpha=None) -> list[float]:
    n, dim = len(rows), len(rows[0])
    alpha = [1.0 / n] * n if alpha is None else [a / math.fsum(alpha) for a in alpha]
    z = [math.fsum(a * r[c] for a, r in zip(alpha, rows)) for c in range(dim)] if z0 is None else list(z0)
    for _ in range(T):
        beta = [a / max(nu, 1e-12, ref_dist(z, r)) for a, r in zip(alpha, rows)]
        s = math.fsum(beta)
        z = [math.fsum(b * r[c] for b, r in zip(beta, rows)) / s for c in range(dim)]
    return z


def ref_closest_to_median_mean(values: list[float], beta: int, median_mode: str) -> float:
    srt, theta = sorted(values), len(values)
    if theta % 2 == 1 or median_mode == "lower":
        med = srt[(theta - 1) // 2]
    else:
        med = (srt[theta // 2 - 1] + srt[theta // 2]) / 2
    keep = sorted(values, key=lambda v: (abs(v - med), v))[:beta]
    return math.fsum(keep) / beta


def ref_bulyan(rows, f, selection="krum", mode="iterative", median_mode="midpoint",
               squared=True) -> tuple[list[float], list[int]]:
    n = len(rows)
    theta, beta = n - 2 * f, n - 4 * f
    if mode == "one_shot":
        chosen = ranked(ref_scores(rows, f, 2, squared), theta)
    else:
        remaining, chosen = list(range(n)), []
        for _ in range(theta):
            sub = [rows[i] for i in remaining]
            if selection == "krum":
                j = ref_krum(sub, f, 2, squared)
            else:
                z = ref_mean(sub, range(len(sub))) if selection == "mean" else ref_rfa(sub)
                j = first_argmin([ref_dist(z, r) for r in sub])
            chosen.append(remaining.pop(j))
    out = [ref_closest_to_median_mean([rows[i][c] for i in chosen], beta, median_mode) for c in range(len(rows[0]))]
    return out, chosen


def ref_mda(rows, f) -> tuple[list[float], tuple[int, ...]]:
    n = len(rows)
    subsets = list(itertools.combinations(range(n), n - f))  # lexicographic order
    diams = [max((ref_dist(rows[i], rows[j]) for i, j in itertools.combinations(s, 2)), default=0.0)
             for s in subsets]
    best = first_argmin(diams)
    if sum(_close(v, diams[best]) for v in diams) > 1:
        NEAR_TIES.append(diams[best])
    return ref_mean(rows, subsets[best]), subsets[best]


# --------------------------------------------------------------------------- registry


def test_registered_names_aliases_and_defaults():
    for name, cls in [("krum", Krum), ("lp_krum", Krum), ("multikrum", MultiKrum), ("mkrum", MultiKrum),
                      ("multi_krum", MultiKrum), ("rfa", RFA), ("geomed", RFA), ("gm", RFA),
                      ("geometric_median", RFA), ("bulyan", Bulyan), ("mda", MDA), ("mixtailor", MixTailor)]:
        assert AGGREGATORS.get(name) is cls
    k = Krum()
    assert (k.neighbors, k.squared, k.p) == ("n-f-2", True, 2.0)
    mk = MultiKrum()
    assert (mk.m, mk.mode) == (None, "one_shot")
    r = RFA()
    assert (r.nu, r.T, r.tol, r.z0, r.weights) == (1e-6, 8, 0.0, "mean", None)
    b = Bulyan()
    assert type(b.selection_rule) is Krum and b.aggregation_rule is None
    assert (b.selection_mode, b.median_mode) == ("iterative", "midpoint")
    assert MDA().max_subsets == 1_000_000
    mt = MixTailor()
    assert len(mt.pool) == 64 and mt.krum_squared and mt.drop_infeasible
    for name in ("krum", "multikrum", "rfa", "bulyan", "mda", "mixtailor"):
        summary = AGGREGATORS.entry(name).summary
        assert summary and len(summary) < 120


# --------------------------------------------------------------------------- Krum


def test_krum_verify_line():
    x = col(0, 1, 2, 4, 100)
    assert krum_scores(distance_matrix(x), 1).tolist()[:4] == [5.0, 2.0, 5.0, 13.0]
    ctx = ctx_of()
    assert Krum()(x, 1, ctx).tolist() == [1.0]
    assert ctx.diagnostics["kept"].tolist() == [False, True, False, False, False]


def test_krum_output_is_an_input_row_on_its_device_and_dtype():
    x = randn(9, 4, 0, torch.float32)
    out = Krum()(x, 2)
    assert out.dtype == torch.float32 and any(torch.equal(out, r) for r in x)


def test_krum_squared_flag():
    # k = 2: 16 scores 36 + 16 = 52 squared (best), 10 plain; 28 scores 65 squared, 9 plain (best).
    x = col(10, 16, 20, 28, 29)
    assert Krum()(x, 1).tolist() == [16.0]
    assert Krum(squared=False)(x, 1).tolist() == [28.0]


def test_krum_neighbor_flag():
    x = col(1, 2, 15, 24, 26, 28)  # n = 6, f = 1: k = 3, 4, 2
    assert Krum(neighbors="n-f-2")(x, 1).tolist() == [24.0]
    assert Krum(neighbors="n-f-1")(x, 1).tolist() == [15.0]
    assert Krum(neighbors="n-f-3")(x, 1).tolist() == [26.0]


def test_krum_lp_flag_changes_the_neighbourhoods():
    # 2-D: in ℓ1 row (3, 0) is as far from the origin as (1.5, 1.5); in ℓ∞ it is farther.
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [1.5, 1.5], [10.0, 10.0], [-10.0, 10.0]], dtype=F64)
    for p in (1.0, 2.0, 3.0, math.inf):
        for squared in (True, False):
            rows = x.tolist()
            want = ref_krum(rows, 1, 2, squared, p)
            assert Krum(p=p, squared=squared)(x, 1).tolist() == rows[want], (p, squared)
    scores1 = Krum(p=1.0).scores(x, 1).tolist()
    scores2 = Krum(p=2.0).scores(x, 1).tolist()
    assert scores1 != scores2


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), d=st.integers(1, 12), seed=st.integers(0, 10**6),
       p=st.sampled_from([1.0, 1.5, 2.0, 3.0, 4.0, 7.0, 16.0, math.inf]), block=st.sampled_from([1, 5, 2048]),
       dtype=st.sampled_from([torch.float32, F64]))
def test_lp_distance_matrix_matches_loop_reference(n, d, seed, p, block, dtype):
    x = (randn(n, d, seed) * torch.rand(n, 1, generator=gen(seed), dtype=F64) * 50).to(dtype)
    rows = x.to(F64).tolist()
    want = [ref_dist(a, b, p) for a in rows for b in rows]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(distances_module, "LP_BLOCK", block)
        got = distance_matrix(x, p, squared=False)
    assert torch.equal(got, got.T) and got.dtype == F64
    assert_rel_close(got.flatten(), want, rel=1e-5 if dtype == F64 else 1e-4)


def test_lp_distances_survive_overflowing_differences():
    x = randn(6, 10, 0, torch.float32)
    x[0], x[1] = 3e38, -3e38  # their difference overflows float32
    for p in (1.0, 3.0, 16.0, math.inf):
        d = distance_matrix(x, p, squared=False)
        assert bool(torch.isfinite(d).all()) and d[0, 1] == d.max()
        assert Krum(p=p)(x, 1).tolist() not in (x[0].tolist(), x[1].tolist())


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 9), d=st.integers(1, 4), seed=st.integers(0, 10**6),
       offset=st.sampled_from(["n-f-2", "n-f-1", "n-f-3"]), squared=st.booleans(),
       p=st.sampled_from([1.0, 2.0, 3.0, 16.0, math.inf]))
def test_krum_matches_loop_reference(n, d, seed, offset, squared, p):
    f = (n - 3) // 2
    x = randn(n, d, seed)
    rows = x.tolist()
    off = {"n-f-2": 2, "n-f-1": 1, "n-f-3": 3}[offset]
    rule = Krum(neighbors=offset, squared=squared, p=p)
    assert_rel_close(rule.scores(x, f), ref_scores(rows, f, off, squared, p))
    fresh_ties()
    want = ref_krum(rows, f, off, squared, p)
    no_ties()
    assert rule(x, f).tolist() == rows[want]


# --------------------------------------------------------------------------- Multi-Krum


def test_multikrum_verify_lines():
    x = col(0, 1, 2, 4, 100)
    ctx = ctx_of()
    assert MultiKrum(m=4)(x, 1, ctx).tolist() == [1.75]
    assert ctx.diagnostics["kept"].tolist() == [True, True, True, True, False]
    assert MultiKrum(m=1)(x, 1).tolist() == Krum()(x, 1).tolist() == [1.0]
    assert MultiKrum()(x, 1).tolist() == [1.75]  # default m = n − f = 4


def test_multikrum_mode_flag_and_default_m():
    x = col(0, 1, 2, 4, 7, 100, 101)  # n = 7, f = 1
    rows = x.tolist()
    one = MultiKrum(mode="one_shot")
    it = MultiKrum(mode="iterative")
    assert one.count(7, 1) == 6 and it.count(7, 1) == 3  # n − f and n − 2f − 2
    assert_rel_close(one(x, 1), ref_mean(rows, ref_multikrum(rows, 1, 6, "one_shot")))
    assert_rel_close(it(x, 1), ref_mean(rows, ref_multikrum(rows, 1, 3, "iterative")))
    # with the same m, the iterative recomputation picks a different set here
    a, b = ctx_of(), ctx_of()
    MultiKrum(m=4, mode="one_shot")(col(0, 1, 2, 3, 9, 9.5, 30), 1, a)
    MultiKrum(m=4, mode="iterative")(col(0, 1, 2, 3, 9, 9.5, 30), 1, b)
    assert sorted(ref_multikrum(col(0, 1, 2, 3, 9, 9.5, 30).tolist(), 1, 4, "iterative")) == \
        torch.nonzero(b.diagnostics["kept"]).flatten().tolist()
    assert sorted(ref_multikrum(col(0, 1, 2, 3, 9, 9.5, 30).tolist(), 1, 4, "one_shot")) == \
        torch.nonzero(a.diagnostics["kept"]).flatten().tolist()


def test_multikrum_modes_differ_on_some_input():
    g = gen(5)
    for _ in range(200):
        x = torch.randn(7, 2, generator=g, dtype=F64) * torch.rand(7, 1, generator=g, dtype=F64) * 5
        a = MultiKrum(m=4, mode="one_shot")(x, 1)
        b = MultiKrum(m=4, mode="iterative")(x, 1)
        if not torch.allclose(a, b):
            return
    pytest.fail("one-shot and iterative Multi-Krum never differed")


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 9), d=st.integers(1, 4), seed=st.integers(0, 10**6),
       mode=st.sampled_from(["one_shot", "iterative"]), squared=st.booleans(), data=st.data())
def test_multikrum_matches_loop_reference(n, d, seed, mode, squared, data):
    f = data.draw(st.integers(0, (n - 3) // 2))
    m = data.draw(st.one_of(st.none(), st.integers(1, n)))
    x = randn(n, d, seed)
    rows = x.tolist()
    rule = MultiKrum(m=m, mode=mode, squared=squared)
    ctx = ctx_of()
    out = rule(x, f, ctx)
    fresh_ties()
    chosen = ref_multikrum(rows, f, rule.count(n, f), mode, 2, squared)
    no_ties()
    assert_rel_close(out, ref_mean(rows, chosen))
    assert torch.nonzero(ctx.diagnostics["kept"]).flatten().tolist() == sorted(chosen)


# --------------------------------------------------------------------------- RFA


def test_rfa_verify_lines():
    row = torch.tensor([1.5, -2.0, 3.0], dtype=F64)
    torch.testing.assert_close(RFA()(row.repeat(5, 1), 2), row)
    assert RFA(T=200, nu=1e-9)(col(0, 1, 10), 1).item() == pytest.approx(1.0, abs=1e-6)
    assert RFA(T=200, nu=1e-9)(col(10, 0, 1, 2, 50), 2).item() == pytest.approx(2.0, abs=1e-6)


def test_rfa_objective_never_increases():
    x = randn(9, 5, 3) * torch.linspace(0.5, 3, 9, dtype=F64).unsqueeze(1)
    x[:2] += 20.0
    values = []
    for T in range(1, 15):
        z = RFA(T=T, nu=1e-12)(x, 2)
        values.append(torch.linalg.vector_norm(x - z, dim=1).sum().item())
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(values)), values


def test_rfa_rotation_and_translation_equivariance():
    x = randn(8, 4, 7)
    q, _ = torch.linalg.qr(randn(4, 4, 8))
    c = randn(1, 4, 9) * 10
    base = RFA()(x, 2)
    torch.testing.assert_close(RFA()(x @ q.T, 2), base @ q.T)
    torch.testing.assert_close(RFA()(x + c, 2), base + c[0])


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 8), d=st.integers(1, 4), seed=st.integers(0, 10**6),
       z0=st.sampled_from(["mean", "zero", "random"]), T=st.integers(1, 12),
       nu=st.sampled_from([0.0, 1e-6, 0.1, 1.0]))
def test_rfa_matches_loop_reference(n, d, seed, z0, T, nu):
    x = randn(n, d, seed) * 3
    rows = x.tolist()
    start = None
    if z0 == "zero":
        start = [0.0] * d
    elif z0 == "random":
        start = torch.rand(d, generator=gen(seed + 1), dtype=torch.float32).tolist()
    out = RFA(z0=z0, T=T, nu=nu)(x, 0, ctx_of(seed + 1))
    assert_rel_close(out, ref_rfa(rows, nu, T, start))


def test_rfa_z0_flag():
    x = randn(7, 3, 11) + 4.0
    outs = {z0: RFA(z0=z0, T=1)(x, 1, ctx_of(0)) for z0 in ("mean", "zero", "random")}
    assert not torch.allclose(outs["mean"], outs["zero"])
    assert not torch.allclose(outs["mean"], outs["random"])
    # with many steps every start reaches the same point
    far = {z0: RFA(z0=z0, T=300, nu=1e-9)(x, 1, ctx_of(0)) for z0 in ("mean", "zero", "random")}
    torch.testing.assert_close(far["zero"], far["mean"], atol=1e-6, rtol=0)
    torch.testing.assert_close(far["random"], far["mean"], atol=1e-6, rtol=0)


def test_rfa_random_start_uses_the_round_generator_only():
    x = randn(6, 4, 2)
    rule = RFA(z0="random", T=1)
    a = rule(x, 1, ctx_of(3))
    assert torch.equal(a, rule(x, 1, ctx_of(3)))
    assert not torch.equal(a, rule(x, 1, ctx_of(4)))
    state = torch.random.get_rng_state()
    first = RFA(z0="random", T=1)(x, 1)
    assert torch.equal(torch.random.get_rng_state(), state)  # no global RNG draw
    assert torch.equal(first, RFA(z0="random", T=1)(x, 1))  # local generator seeded 0
    assert torch.equal(first, rule.__class__(z0="random", T=1)(x, 1, ctx_of(0)))


def test_rfa_tol_stops_early():
    x = randn(9, 3, 4)
    ctx = ctx_of()
    RFA(T=500, tol=1e-6)(x, 2, ctx)
    steps = ctx.diagnostics["iterations"]
    assert 1 <= steps < 500
    ctx = ctx_of()
    RFA(T=50)(x, 2, ctx)
    assert ctx.diagnostics["iterations"] == 50.0
    torch.testing.assert_close(RFA(T=500, tol=1e-12)(x, 2), RFA(T=500)(x, 2), atol=1e-6, rtol=0)


def test_rfa_weights():
    x = randn(5, 3, 6)
    w = [1.0, 2.0, 0.5, 3.0, 1.5]
    assert_rel_close(RFA(weights=w)(x, 1), ref_rfa(x.tolist(), alpha=w))
    # a non-finite row drops its weight
    bad = torch.cat([x[:2], torch.full((1, 3), math.nan, dtype=F64), x[2:]])
    w_bad = [1.0, 2.0, 100.0, 0.5, 3.0, 1.5]
    torch.testing.assert_close(RFA(weights=w_bad)(bad, 1), RFA(weights=w)(x, 0))
    with pytest.raises(ConfigError, match="weights"):
        RFA(weights=[1.0, 2.0])(x, 1)
    assert RFA().order_invariant and RFA(weights=w).order_invariant  # rows stay in client order


# --------------------------------------------------------------------------- Bulyan


def test_bulyan_verify_lines():
    x = randn(7, 5, 1)
    ctx = ctx_of()
    out = Bulyan()(x, 1, ctx)
    assert int(ctx.diagnostics["kept"].sum()) == 5  # θ = 5, β = 3
    want, chosen = ref_bulyan(x.tolist(), 1)
    assert_rel_close(out, want)
    assert torch.nonzero(ctx.diagnostics["kept"]).flatten().tolist() == sorted(chosen)
    honest = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    y = torch.cat([honest.repeat(9, 1), torch.full((2, 3), 1e6, dtype=F64)])
    torch.testing.assert_close(Bulyan()(y, 2), honest)


def test_closest_to_median_mean_by_hand():
    rows = col(1, 1, 2, 2.5, 9)
    assert closest_to_median_mean(rows, 3).item() == pytest.approx(5.5 / 3)  # {2, 2.5, 1}
    rows = col(0, 1, 2, 3, 4)
    assert closest_to_median_mean(rows, 2).item() == pytest.approx(1.5)  # tie 1 vs 3 → lower
    rows = col(0, 1, 3, 10)
    assert closest_to_median_mean(rows, 2, "midpoint").item() == pytest.approx(2.0)  # m = 2
    assert closest_to_median_mean(rows, 2, "lower").item() == pytest.approx(0.5)  # m = 1: {1, 0}


@settings(max_examples=40, deadline=None)
@given(theta=st.integers(1, 9), d=st.integers(1, 6), seed=st.integers(0, 10**6), data=st.data())
def test_closest_to_median_mean_matches_loop_reference(theta, d, seed, data):
    beta = data.draw(st.integers(1, theta))
    mode = data.draw(st.sampled_from(["midpoint", "lower"]))
    ties = data.draw(st.booleans())
    x = torch.randint(-3, 4, (theta, d), generator=gen(seed)).to(F64) if ties else randn(theta, d, seed)
    out = closest_to_median_mean(x, beta, mode)
    rows = x.tolist()
    assert_rel_close(out, [ref_closest_to_median_mean([r[c] for r in rows], beta, mode) for c in range(d)])


def test_closest_to_median_mean_in_blocks_equals_one_block():
    x = randn(11, 50, 4)
    for rows, beta, mode in ((x, 3, "midpoint"), (x[:10], 4, "lower"), (x[:10], 4, "midpoint")):
        whole = closest_to_median_mean(rows, beta, mode)
        program = bulyan_module.window_program(rows.shape[0], beta, mode)
        assert torch.equal(execute(program, rows, chunk=7)[0], whole)
        # the torch path for many rows: the same choices and the same sums
        assert torch.equal(bulyan_module._window_mean_sorted(rows.sort(dim=0).values, beta, mode), whole)
    want, _ = ref_bulyan(x.tolist(), 2)
    assert_rel_close(Bulyan()(x, 2), want)


@settings(max_examples=15, deadline=None)
@given(f=st.integers(0, 2), extra=st.integers(0, 3), d=st.integers(1, 4), seed=st.integers(0, 10**6),
       mode=st.sampled_from(["iterative", "one_shot"]), median_mode=st.sampled_from(["midpoint", "lower"]),
       squared=st.booleans())
def test_bulyan_matches_loop_reference(f, extra, d, seed, mode, median_mode, squared):
    n = 4 * f + 3 + extra
    x = randn(n, d, seed)
    rule = Bulyan(selection=Krum(squared=squared), selection_mode=mode, median_mode=median_mode)
    ctx = ctx_of()
    fresh_ties()
    want, chosen = ref_bulyan(x.tolist(), f, "krum", mode, median_mode, squared)
    no_ties()
    assert_rel_close(rule(x, f, ctx), want)
    assert torch.nonzero(ctx.diagnostics["kept"]).flatten().tolist() == sorted(chosen)


def test_bulyan_selection_mode_flag():
    # byzantine_skew style: one-shot Krum scores, plain distances
    rule = Defense.from_spec("bulyan(selection=krum(squared=false), selection_mode=one_shot)").aggregator
    assert rule.selection_mode == "one_shot" and rule.selection_rule.squared is False
    g = gen(2)
    for _ in range(200):
        x = torch.randn(7, 2, generator=g, dtype=F64) * torch.rand(7, 1, generator=g, dtype=F64) * 5
        a, b = ctx_of(), ctx_of()
        Bulyan(selection_mode="iterative")(x, 1, a)
        Bulyan(selection_mode="one_shot")(x, 1, b)
        if not torch.equal(a.diagnostics["kept"], b.diagnostics["kept"]):
            return
    pytest.fail("iterative and one-shot selections never differed")


def test_bulyan_median_mode_flag():
    x = col(0, 4, 8, 15, 23, 30, 34, 37)  # n = 8, f = 1: θ = 6 (even), β = 4
    want_mid, _ = ref_bulyan(x.tolist(), 1, median_mode="midpoint")
    want_low, _ = ref_bulyan(x.tolist(), 1, median_mode="lower")
    assert (want_mid, want_low) == ([16.25], [8.75])
    assert Bulyan()(x, 1).tolist() == [16.25]
    assert Bulyan(median_mode="lower")(x, 1).tolist() == [8.75]


@pytest.mark.parametrize("selection", ["mean", "rfa"])
def test_bulyan_generic_selection_matches_loop_reference(selection):
    x = randn(11, 3, 21)
    x[:2] += 6.0
    want, chosen = ref_bulyan(x.tolist(), 2, selection=selection)
    ctx = ctx_of()
    assert_rel_close(Bulyan(selection=selection)(x, 2, ctx), want)
    assert torch.nonzero(ctx.diagnostics["kept"]).flatten().tolist() == sorted(chosen)


def test_bulyan_generic_selection_with_a_point_rule():
    x = randn(11, 3, 22)
    rows = x.tolist()
    remaining, chosen = list(range(11)), []
    for _ in range(7):
        sub = torch.tensor([rows[i] for i in remaining], dtype=F64)
        z = sub.median(dim=0).values.tolist()  # lower median
        chosen.append(remaining.pop(first_argmin([ref_dist(z, r) for r in sub.tolist()])))
    ctx = ctx_of()
    out = Bulyan(selection="median(mode=lower)", aggregation="mean")(x, 2, ctx)
    assert torch.nonzero(ctx.diagnostics["kept"]).flatten().tolist() == sorted(chosen)
    assert_rel_close(out, ref_mean(rows, chosen))


def test_bulyan_aggregation_rules():
    x = randn(11, 4, 23)
    ctx = ctx_of()
    Bulyan()(x, 2, ctx)
    chosen = Bulyan().select(x, 2, ctx_of())
    s = x[chosen]
    torch.testing.assert_close(Bulyan(aggregation="mean")(x, 2), s.mean(0))
    torch.testing.assert_close(Bulyan(aggregation="median(mode=lower)")(x, 2), s.median(0).values)
    torch.testing.assert_close(Bulyan(aggregation="krum")(x, 2), Krum()(s, 2))
    torch.testing.assert_close(Bulyan(aggregation=RFA())(x, 2), RFA()(s, 2))


@settings(max_examples=30, deadline=None)
@given(f=st.integers(0, 2), extra=st.integers(0, 3), d=st.integers(1, 4),
       values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=80, max_size=80))
def test_bulyan_output_is_in_the_coordinatewise_hull(f, extra, d, values):
    n = 4 * f + 3 + extra
    x = torch.tensor(values[: n * d], dtype=F64).reshape(n, d)
    out = Bulyan()(x, f)
    lo, hi = x.min(0).values, x.max(0).values
    tol = 1e-9 * (1 + x.abs().max())
    assert bool((out >= lo - tol).all() and (out <= hi + tol).all())


# --------------------------------------------------------------------------- batched chunks (GAS)

#: Specs covering every flag of the Krum family; outputs of "exact" ones are input values
#: moved element-wise (equal bit for bit given the same selection), the others are means.
CHUNK_SPECS = [
    ("krum", True), ("krum(neighbors=n-f-1)", True), ("krum(neighbors=n-f-3)", True),
    ("krum(squared=false)", True), ("krum(p=1)", True), ("krum(p=3)", True),
    ("multikrum", False), ("multikrum(mode=iterative)", False), ("multikrum(m=3)", False),
    ("multikrum(m=1, squared=false)", False), ("multikrum(mode=iterative, neighbors=n-f-1)", False),
    ("multikrum(mode=iterative, neighbors=n-f-3, m=6)", False),
    ("bulyan", True), ("bulyan(selection_mode=one_shot)", True), ("bulyan(median_mode=lower)", True),
    ("bulyan(selection=krum(squared=false))", True), ("bulyan(selection=krum(neighbors=n-f-3))", True),
    ("bulyan(aggregation=median)", True), ("bulyan(aggregation=krum)", True), ("bulyan(aggregation=mean)", False),
    ("bulyan(selection=mean)", True), ("bulyan(selection=median(mode=lower), aggregation=rfa)", False),
]


def chunk_views(n: int, m: int, s: int, seed: int, dtype: torch.dtype, ints: bool) -> dict[str, torch.Tensor]:
    """x3[m, n, s] in GAS's layout (a transposed view of the permuted rows), with an uneven
    tail (neither layout contiguous), and contiguous."""
    g = gen(seed)
    full = torch.randint(-2, 3, (n, m * s + 3), generator=g) if ints else torch.randn(n, m * s + 3, generator=g)
    full = full.to(dtype)
    full[: max(1, n // 5)] += 4  # a few far rows, as Byzantine ones
    gas = full[:, : m * s].contiguous().view(n, m, s).transpose(0, 1)
    return {"gas": gas, "tail": full[:, : m * s].view(n, m, s).transpose(0, 1), "contiguous": gas.contiguous()}


@pytest.mark.parametrize("spec, exact", CHUNK_SPECS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("ints", [True, False])
def test_aggregate_chunks_equals_the_rule_on_each_chunk(spec, exact, dtype, ints):
    rule = Defense.from_spec(spec).aggregator
    for n, f in ((11, 2), (7, 1)):
        for layout, x3 in chunk_views(n, 4, 5, n + 3 * ints, dtype, ints).items():
            got = rule.aggregate_chunks(x3, f, ctx_of(1))
            want = torch.stack([rule(x3[q].contiguous(), f, ctx_of(1)) for q in range(x3.shape[0])])
            assert got.shape == want.shape and got.dtype == dtype, (spec, layout)
            if exact:
                assert torch.equal(got, want), (spec, layout, n)
            else:
                tol = 1e-6 if dtype == torch.float32 else 1e-12
                torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=f"{spec} {layout} {n}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_select_like_float32(dtype):
    x32 = torch.randn(11, 400, generator=gen(9)) + 2.0
    x32[-2:] += 3.0
    x = x32.to(dtype)
    for spec in ("krum", "multikrum", "bulyan", "bulyan(aggregation=mean)"):
        a, b = ctx_of(), ctx_of()
        out = Defense.from_spec(spec)(x, 2, a)
        Defense.from_spec(spec)(x.float(), 2, b)
        assert out.dtype == dtype and torch.equal(a.diagnostics["kept"], b.diagnostics["kept"]), spec


def test_aggregate_chunks_breaks_ties_by_lowest_index():
    # every chunk holds the same rows up to a per-chunk permutation: duplicates everywhere
    base = col(0, 0, 1, 1, 5, 5, 9).expand(7, 3).contiguous()
    x3 = torch.stack([base, base.flip(0), base[[3, 2, 1, 0, 6, 5, 4]]])
    for spec in ("krum", "multikrum(m=2)", "multikrum(mode=iterative)", "bulyan"):
        rule = Defense.from_spec(spec).aggregator
        got = rule.aggregate_chunks(x3, 1, ctx_of())
        want = torch.stack([rule(x3[q], 1) for q in range(3)])
        assert torch.equal(got, want), spec


@pytest.mark.parametrize("spec", ["krum", "krum(squared=false)", "krum(neighbors=n-f-3)", "multikrum",
                                  "multikrum(mode=iterative)", "multikrum(m=2, squared=false)"])
def test_chunk_scores_are_distances_to_each_chunk_output(spec):
    rule = Defense.from_spec(spec).aggregator
    x3 = chunk_views(9, 5, 6, 3, F64, False)["gas"]
    got = rule.chunk_scores(x3, 2, ctx_of())
    want = torch.stack([torch.linalg.vector_norm(x3[q] - rule(x3[q].contiguous(), 2), dim=1) for q in range(5)])
    assert got.dtype == F64 and got.shape == (5, 9)
    assert_rel_close(got.flatten(), want.flatten().tolist(), rel=1e-9)


def test_chunk_scores_leave_other_norms_and_huge_rows_to_the_caller():
    x3 = chunk_views(9, 2, 4, 4, torch.float32, False)["gas"]
    assert Krum(p=1.0).chunk_scores(x3, 2, ctx_of()) is None
    huge = torch.full((2, 9, 4), 1.0e300, dtype=F64)
    huge[:, 0] = -1.0e300
    assert MultiKrum().chunk_scores(huge, 2, ctx_of()) is None
    assert bool(torch.isfinite(MultiKrum().aggregate_chunks(huge, 2, ctx_of())).all())


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 12), d=st.integers(1, 3), seed=st.integers(0, 10**6), ints=st.booleans(),
       offset=st.sampled_from([1, 2, 3]), data=st.data())
def test_iterative_krum_batch_matches_loop_reference(n, d, seed, ints, offset, data):
    f = data.draw(st.integers(0, (n - 3) // 2))
    m = data.draw(st.integers(1, n))
    g = gen(seed)
    x = torch.randint(-2, 3, (3, n, d), generator=g).to(F64) if ints else torch.randn(3, n, d, generator=g, dtype=F64)
    chosen = krum_module.iterative_krum(distance_matrix(x), f, m, offset)
    fresh_ties()
    want = [ref_iterative_sq(x[b].tolist(), f, m, offset) for b in range(3)]
    if not ints:
        no_ties()  # exact ties of integer rows are broken alike; near-ties of random ones may not be
    assert chosen.tolist() == want


def ref_iterative_sq(rows, f, m, offset) -> list[int]:
    """Iterative Krum on squared ℓ2 distances summed exactly (no square root in between)."""
    remaining, chosen = list(range(len(rows))), []
    for _ in range(m):
        r = len(remaining)
        k = min(max(r - f - offset, 1), r - 1)
        scores = []
        for i in remaining:
            ds = sorted(math.fsum((u - v) ** 2 for u, v in zip(rows[i], rows[j])) for j in remaining if j != i)
            scores.append(math.fsum(ds[:k]))
        chosen.append(remaining.pop(ranked(scores, 1)[0]))
    return chosen


def test_krum_scores_of_a_batch_match_loop_reference():
    x = torch.randint(-3, 4, (4, 8, 2), generator=gen(3)).to(F64)
    scores = krum_scores(distance_matrix(x), 2)
    for b in range(4):
        rows = x[b].tolist()
        sq = [[math.fsum((u - v) ** 2 for u, v in zip(a, c)) for c in rows] for a in rows]
        want = [math.fsum(sorted(sq[i][j] for j in range(8) if j != i)[:4]) for i in range(8)]
        assert scores[b].tolist() == want  # integer data: exact


# --------------------------------------------------------------------------- MDA


def test_mda_verify_lines():
    ctx = ctx_of()
    assert MDA()(col(0, 1, 2, 10), 1, ctx).tolist() == [1.0]
    assert ctx.diagnostics["kept"].tolist() == [True, True, True, False]
    assert ctx.diagnostics["diameter"] == pytest.approx(2.0)
    x = randn(6, 3, 0)
    torch.testing.assert_close(MDA()(x, 0), x.mean(0))


def test_mda_ties_go_to_the_lexicographically_first_subset():
    ctx = ctx_of()
    MDA()(col(0, 1, 2, 3), 1, ctx)  # {0,1,2} and {1,2,3} both have diameter 2
    assert ctx.diagnostics["kept"].tolist() == [True, True, True, False]
    ctx = ctx_of()
    MDA()(col(5, 0, 10, 5, 20), 2, ctx)  # {0, 1, 3} and {0, 2, 3}: diameter 5
    assert ctx.diagnostics["kept"].tolist() == [True, True, False, True, False]


def test_removal_sets_are_every_subset_in_lexicographic_order():
    for n, f in [(1, 1), (4, 1), (6, 3), (7, 2), (9, 4)]:
        got = [tuple(r) for r in removal_sets(n, f).tolist()]
        assert got == list(itertools.combinations(range(n), f))
    assert removal_sets(25, 5).shape == (53130, 5)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 9), d=st.integers(1, 3), seed=st.integers(0, 10**6), ties=st.booleans(), data=st.data())
def test_mda_matches_loop_reference(n, d, seed, ties, data):
    f = data.draw(st.integers(0, (n - 1) // 2))
    x = torch.randint(0, 3, (n, d), generator=gen(seed)).to(F64) if ties else randn(n, d, seed)
    want, subset = ref_mda(x.tolist(), f)
    ctx = ctx_of()
    assert_rel_close(MDA()(x, f, ctx), want)
    assert torch.nonzero(ctx.diagnostics["kept"]).flatten().tolist() == list(subset)


def test_mda_chunked_scan_equals_one_chunk(monkeypatch):
    x = torch.randint(0, 4, (10, 2), generator=gen(1)).to(F64)  # many diameter ties
    for f in (1, 2, 4):
        ctx_a, ctx_b = ctx_of(), ctx_of()
        a = MDA()(x, f, ctx_a)
        monkeypatch.setattr(mda_module, "CHUNK_ELEMENTS", 7)
        b = MDA()(x, f, ctx_b)
        monkeypatch.undo()
        assert torch.equal(a, b) and torch.equal(ctx_a.diagnostics["kept"], ctx_b.diagnostics["kept"])
        _, subset = ref_mda(x.tolist(), f)
        assert torch.nonzero(ctx_b.diagnostics["kept"]).flatten().tolist() == list(subset)


def test_mda_max_subsets():
    x = randn(12, 2, 0)
    with pytest.raises(InfeasibleError, match="mda requires .*max_subsets"):
        MDA(max_subsets=100)(x, 3)  # C(12, 3) = 220
    assert math.comb(12, 2) <= 100
    ctx = ctx_of()
    MDA(max_subsets=100, infeasible="clamp")(x, 3, ctx)  # f lowered to 2
    assert int(ctx.diagnostics["kept"].sum()) == 10


# --------------------------------------------------------------------------- MixTailor


def test_mixtailor_default_pool_composition():
    pool = default_pool()
    assert len(pool) == 64
    assert [r.p for r in pool[:16]] == [float(p) for p in range(1, 17)]
    assert all(type(r) is Krum and r.squared for r in pool[:16])
    assert all(isinstance(r, CoordinateMedian) and r.mode == "lower" for r in pool[16:32])
    assert all(isinstance(r, RFA) and r.z0 == "random" and r.T == 20 and r.nu > 0 for r in pool[32:48])
    kinds = [(type(b.selection_rule).__name__, type(b.aggregation_rule).__name__) for b in pool[48:]]
    classes = ["Krum", "RFA", "CoordinateMedian", "Mean"]
    assert kinds == [(s, a) for s in classes for a in classes]
    assert all(not r.squared for r in default_pool(krum_squared=False)[:16])
    assert not default_pool(krum_squared=False)[48].selection_rule.squared


def test_mixtailor_draws_are_reproducible_and_uniform():
    x = randn(12, 3, 0)
    rule = MixTailor()
    g1, g2 = gen(7), gen(7)
    picks1, picks2 = [], []
    for _ in range(5):
        c1, c2 = AggregationContext(generator=g1), AggregationContext(generator=g2)
        torch.testing.assert_close(rule(x, 2, c1), rule(x, 2, c2))
        picks1.append(c1.diagnostics["pick"])
        picks2.append(c2.diagnostics["pick"])
    assert picks1 == picks2
    # the draw itself: 64 × 300 draws, each index ≈ 300 times
    counts = torch.zeros(64)
    g = gen(1)
    cheap = MixTailor(pool=["mean"] * 64)
    y = randn(12, 1, 1)
    for _ in range(64 * 300):
        ctx = AggregationContext(generator=g)
        cheap(y, 2, ctx)
        counts[int(ctx.diagnostics["pick"])] += 1
    assert counts.min() > 300 - 75 and counts.max() < 300 + 75
    chi2 = float(((counts - 300) ** 2 / 300).sum())
    assert chi2 < 120  # 63 degrees of freedom: p ≈ 3e-5


def test_mixtailor_without_a_generator_uses_its_own():
    x = randn(12, 3, 0)
    state = torch.random.get_rng_state()
    picks = []
    for _ in range(4):
        ctx = ctx_of()
        MixTailor(pool=["mean", "median", "krum"])(x, 2, ctx)
        picks.append(ctx.diagnostics["pick"])
    assert torch.equal(torch.random.get_rng_state(), state)
    assert len(set(picks)) == 1  # each new rule starts from seed 0
    rule = MixTailor(pool=["mean", "median", "krum", "rfa"])
    seq = []
    for _ in range(30):
        ctx = ctx_of()
        rule(x, 2, ctx)
        seq.append(ctx.diagnostics["pick"])
    assert len(set(seq)) > 1  # … and draws afresh at every call
    rule.reset()
    again = []
    for _ in range(30):
        ctx = ctx_of()
        rule(x, 2, ctx)
        again.append(ctx.diagnostics["pick"])
    assert again == seq


@pytest.mark.parametrize("spec", ["krum", "median(mode=lower)", "rfa(z0=random, T=20)", "bulyan", "mda",
                                  "multikrum(m=3)"])
def test_mixtailor_pool_of_one_equals_its_member(spec):
    x = randn(11, 4, 3)
    member = Defense.from_spec(spec).aggregator
    a, b = ctx_of(5), ctx_of(5)
    got = MixTailor(pool=[spec])(x, 2, a)
    if isinstance(member, RFA):
        b.generator.manual_seed(5)
        torch.randint(1, (1,), generator=b.generator)  # the draw of the pick
    torch.testing.assert_close(got, member(x, 2, b))
    assert a.diagnostics["pick"] == 0.0


def test_mixtailor_l2_krum_member_equals_krum():
    x = randn(12, 5, 4)
    for squared in (True, False):
        pool = default_pool(krum_squared=squared)
        ctx = ctx_of()
        out = pool[1].aggregate(x, 2, ctx)  # p = 2
        assert torch.equal(out, Krum(squared=squared)(x, 2))


def test_mixtailor_krum_squared_flag_reaches_the_members():
    x = col(10, 16, 20, 28, 29)
    assert MixTailor(pool=None, krum_squared=True).pool[1](x, 1).tolist() == [16.0]
    assert MixTailor(pool=None, krum_squared=False).pool[1](x, 1).tolist() == [28.0]


def test_mixtailor_drops_bulyan_when_infeasible():
    rule = MixTailor()
    assert rule.runnable(12, 2) == list(range(64))
    assert rule.runnable(12, 4) == list(range(48))  # seed 003, Fig. 4b: Bulyan dropped
    assert rule.runnable(10, 4) == list(range(16, 48))  # n < 2f + 3 drops Krum too
    x = randn(13, 2, 0)
    g = gen(0)
    for _ in range(100):
        ctx = AggregationContext(generator=g)
        assert torch.isfinite(rule(x, 4, ctx)).all()
        assert ctx.diagnostics["pick"] < 48
    strict = MixTailor(drop_infeasible=False)
    with pytest.raises(InfeasibleError, match="mixtailor"):
        strict(x, 4)
    assert torch.isfinite(strict(randn(12, 2, 0), 2, ctx_of(0))).all()


def test_mixtailor_user_pool_from_specs():
    rule = Defense.from_spec("mixtailor(pool=[krum, median(mode=lower)])").aggregator
    assert [type(r) for r in rule.pool] == [Krum, CoordinateMedian] and rule.pool[1].mode == "lower"
    rule = MixTailor(pool=["krum", {"name": "median", "mode": "lower"}, Mean()])
    assert [type(r) for r in rule.pool] == [Krum, CoordinateMedian, Mean]


# --------------------------------------------------------------------------- properties


DETERMINISTIC = {
    "krum": lambda: Krum(),
    "krum-l1": lambda: Krum(p=1.0, squared=False),
    "multikrum": lambda: MultiKrum(),
    "multikrum-iterative": lambda: MultiKrum(mode="iterative"),
    "rfa": lambda: RFA(),
    "rfa-zero": lambda: RFA(z0="zero"),
    "bulyan": lambda: Bulyan(),
    "bulyan-rfa-mean": lambda: Bulyan(selection="rfa", aggregation="mean"),
    "mda": lambda: MDA(),
}
EQUIVARIANT = ["krum", "krum-l1", "multikrum", "multikrum-iterative", "rfa", "bulyan", "bulyan-rfa-mean", "mda"]


#: The loop references of the deterministic rules that select by score, run only to
#: learn whether a selection hinged on a (near-)tie: ties go to the lowest index
#: (ALGORITHMS.md §0), so with a tie the result may legitimately depend on row order.
TIE_CHECKS = {
    "krum": lambda rows, f: ref_krum(rows, f),
    "krum-l1": lambda rows, f: ref_krum(rows, f, 2, False, 1.0),
    "multikrum": lambda rows, f: ref_multikrum(rows, f, len(rows) - f),
    "multikrum-iterative": lambda rows, f: ref_multikrum(rows, f, len(rows) - 2 * f - 2, "iterative"),
    "bulyan": lambda rows, f: ref_bulyan(rows, f) if f else None,  # f = 0 keeps every row
    "mda": ref_mda,
}


def _requirement_n(name: str, f: int) -> int:
    return 4 * f + 3 if name.startswith("bulyan") else 2 * f + 3


def _tied(name: str, x: torch.Tensor, f: int) -> bool:
    fresh_ties()
    if name in TIE_CHECKS:
        TIE_CHECKS[name](x.tolist(), f)
    return bool(NEAR_TIES)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(sorted(DETERMINISTIC)), f=st.integers(0, 3), extra=st.integers(0, 3),
       d=st.integers(1, 4), seed=st.integers(0, 10**6), data=st.data())
def test_permutation_invariance(name, f, extra, d, seed, data):
    n = _requirement_n(name, f) + extra
    x = randn(n, d, seed) * 2
    perm = torch.tensor(data.draw(st.permutations(range(n))))
    rule = DETERMINISTIC[name]()
    a, b = ctx_of(), ctx_of()
    out, out_perm = rule(x, f, a), rule(x[perm], f, b)
    if name == "mda" and f:
        assert b.diagnostics["diameter"] == pytest.approx(a.diagnostics["diameter"], rel=1e-9)
    if not _tied(name, x, f):
        torch.testing.assert_close(out_perm, out)
        if "kept" in a.diagnostics:
            assert torch.equal(b.diagnostics["kept"], a.diagnostics["kept"][perm])


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(EQUIVARIANT), f=st.integers(0, 2), extra=st.integers(0, 3),
       d=st.integers(1, 4), seed=st.integers(0, 10**6), shift=st.floats(-100, 100))
def test_translation_equivariance(name, f, extra, d, seed, shift):
    n = _requirement_n(name, f) + extra
    x = randn(n, d, seed)
    c = randn(1, d, seed + 1) * shift
    rule = DETERMINISTIC[name]()
    if name in ("krum-l1",) and _tied(name, x, f):
        return  # ℓ1 sums of 1-D distances tie by telescoping; rounding then decides
    torch.testing.assert_close(rule(x + c, f), rule(x, f) + c[0], atol=1e-8, rtol=1e-8)


@settings(max_examples=30, deadline=None)
@given(f=st.integers(1, 4), extra=st.integers(0, 4), d=st.integers(1, 5), seed=st.integers(0, 10**6), data=st.data())
def test_krum_and_multikrum_never_pick_a_far_outlier(f, extra, d, seed, data):
    n = 2 * f + 3 + extra
    k = data.draw(st.integers(1, f))
    x = randn(n, d, seed)
    direction = torch.randn(k, d, generator=gen(seed + 1), dtype=F64)
    scale = data.draw(st.sampled_from([1e3, 1e6, 1e30]))
    x[:k] = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12) * scale
    perm = torch.tensor(data.draw(st.permutations(range(n))))
    x, outlier = x[perm], (perm < k)
    for rule in (Krum(), Krum(squared=False), Krum(neighbors="n-f-1"), MultiKrum(), MultiKrum(mode="iterative"),
                 Krum(p=1.0)):
        ctx = ctx_of()
        rule(x, f, ctx)
        assert not bool((ctx.diagnostics["kept"] & outlier).any()), type(rule).__name__


ALL_RULES = {**DETERMINISTIC, "rfa-random": lambda: RFA(z0="random"), "mixtailor": lambda: MixTailor()}


def _bad_rows(kind: str, f: int, d: int, dtype: torch.dtype, honest: torch.Tensor, seed: int) -> torch.Tensor:
    if kind == "nan":
        return torch.full((f, d), math.nan, dtype=dtype)
    if kind in ("inf", "-inf"):
        return torch.full((f, d), math.inf if kind == "inf" else -math.inf, dtype=dtype)
    if kind == "1e38":
        return torch.full((f, d), 1e38, dtype=dtype)
    if kind == "±1e38":
        return torch.randint(0, 2, (f, d), generator=gen(seed)).to(dtype).mul(2).sub(1) * 1e38
    bad = honest[:1].repeat(f, 1)
    bad[:, 0] = torch.tensor([math.nan, math.inf, -math.inf] * f, dtype=dtype)[:f]
    return bad


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(ALL_RULES)), f=st.integers(1, 2), extra=st.integers(0, 2), d=st.integers(1, 4),
       dtype=st.sampled_from([torch.float32, F64]), seed=st.integers(0, 10**6),
       kind=st.sampled_from(["nan", "inf", "-inf", "1e38", "±1e38", "mixed"]), data=st.data())
def test_finite_output_under_hostile_rows(name, f, extra, d, dtype, seed, kind, data):
    n = _requirement_n(name, f) + extra
    honest = randn(n - f, d, seed, dtype)
    x = torch.cat([honest, _bad_rows(kind, f, d, dtype, honest, seed)])
    perm = torch.tensor(data.draw(st.permutations(range(n))))
    ctx = ctx_of(seed)
    out = ALL_RULES[name]()(x[perm], f, ctx)
    assert out.dtype == dtype and out.shape == (d,)
    assert bool(torch.isfinite(out).all()), (name, kind, out)
    kept = ctx.diagnostics.get("kept")
    if kept is not None:
        assert kept.shape == (n,)
    if name in ("krum", "krum-l1", "multikrum", "multikrum-iterative", "mda"):
        assert not bool((kept & (perm >= n - f)).any()), (name, kind)  # no bad row kept
    if name == "bulyan":  # selected bad rows (allowed) are trimmed coordinate-wise
        lo, hi = honest.min(0).values, honest.max(0).values
        assert bool((out >= lo).all() and (out <= hi).all()), (name, kind)


@pytest.mark.parametrize("name", sorted(ALL_RULES))
@pytest.mark.parametrize("value", [1e38, 3.4e38])
def test_finite_output_when_every_row_is_huge(name, value):
    for f in (0, 1):
        n = _requirement_n(name, f) + 1
        signs = torch.randint(0, 2, (n, 6), generator=gen(n)).to(torch.float32).mul(2).sub(1)
        x = signs * value * torch.rand(n, 6, generator=gen(1)).add(0.5).clamp_max(1.0)
        out = ALL_RULES[name]()(x, f, ctx_of(0))
        assert bool(torch.isfinite(out).all()), (name, f, out)


# --------------------------------------------------------------------------- policies, errors, devices


def test_kept_mask_maps_back_over_removed_rows():
    x = torch.cat([col(0, 1, 2), col(math.nan), col(4, 100)])
    ctx = ctx_of()
    assert Krum()(x, 2, ctx).tolist() == [1.0]
    assert ctx.diagnostics["kept"].tolist() == [False, True, False, False, False, False]
    with pytest.raises(NonFiniteInputError):
        Krum(nonfinite="raise")(x, 2)


@pytest.mark.parametrize("make, n, f, words", [
    (Krum, 6, 2, "krum requires n ≥ 2f \\+ 3"),
    (MultiKrum, 6, 2, "multikrum requires n ≥ 2f \\+ 3"),
    (lambda: MultiKrum(m=8), 7, 1, "multikrum requires .*m ≤ n"),
    (Bulyan, 10, 2, "bulyan requires n ≥ 4f \\+ 3"),
    (RFA, 6, 3, "rfa requires n > 2f"),
    (MDA, 6, 3, "mda requires n > 2f"),
])
def test_infeasible_raises_naming_the_rule(make, n, f, words):
    with pytest.raises(InfeasibleError, match=words):
        make()(randn(n, 2, 0), f)


def test_infeasible_clamp_follows_the_reference_codes():
    assert Krum(infeasible="clamp").check(10, 5) == (10 - 3) // 2
    assert Bulyan(infeasible="clamp").check(14, 5) == (14 - 3) // 4
    x = randn(10, 2, 0)
    assert torch.isfinite(Bulyan(infeasible="clamp")(x, 3)).all()


@pytest.mark.parametrize("name, params, param", [
    ("krum", {"neighbors": "n-f"}, "neighbors"),
    ("krum", {"squared": "yes"}, "squared"),
    ("krum", {"p": 0.5}, "p"),
    ("krum", {"p": math.nan}, "p"),
    ("multikrum", {"m": 0}, "m"),
    ("multikrum", {"mode": "greedy"}, "mode"),
    ("rfa", {"nu": -1.0}, "nu"),
    ("rfa", {"T": 0}, "T"),
    ("rfa", {"T": None}, "T"),
    ("rfa", {"tol": -0.1}, "tol"),
    ("rfa", {"z0": "median"}, "z0"),
    ("rfa", {"weights": [1.0, -1.0]}, "weights"),
    ("rfa", {"weights": "abc"}, "weights"),
    ("rfa", {"weights": [0.0, 0.0]}, "weights"),
    ("bulyan", {"selection": "nope"}, "selection"),
    ("bulyan", {"aggregation": "median(mode=upper)"}, "aggregation"),
    ("bulyan", {"selection_mode": "batch"}, "selection_mode"),
    ("bulyan", {"selection": "mean", "selection_mode": "one_shot"}, "selection_mode"),
    ("bulyan", {"median_mode": "upper"}, "median_mode"),
    ("mda", {"max_subsets": 0}, "max_subsets"),
    ("mixtailor", {"pool": []}, "pool"),
    ("mixtailor", {"pool": ["nope"]}, "pool"),
    ("mixtailor", {"pool": "krum"}, "pool"),
    ("mixtailor", {"krum_squared": 1}, "krum_squared"),
    ("mixtailor", {"drop_infeasible": "no"}, "drop_infeasible"),
])
def test_bad_hyperparameters_name_the_parameter(name, params, param):
    with pytest.raises((ValueError, TypeError), match=param):
        AGGREGATORS.get(name)(**params)
    with pytest.raises(ConfigError) as exc:
        AGGREGATORS.create(name, "defense", **params)
    assert param in str(exc.value) and "defense" in str(exc.value)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("spec", ["krum", "krum(p=1)", "multikrum", "multikrum(mode=iterative)", "rfa",
                                  "rfa(z0=random)", "bulyan", "bulyan(aggregation=median)", "mda", "mixtailor"])
def test_output_dtype_device_and_shape_follow_input(spec, dtype, device):
    x = torch.randn(12, 5, generator=gen(0)).to(device=device, dtype=dtype)
    before = x.clone()
    out = Defense.from_spec(spec)(x, 2, ctx_of(0))
    assert out.dtype == dtype and out.device == x.device and out.shape == (5,)
    assert torch.equal(x, before)  # input untouched
