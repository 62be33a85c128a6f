"""GAS's native kernel (byzbench/ops/gas_kernel.c) against plain float64 loops and the eager path.

The kernel runs under the sortnet "compile" backend for float32 CPU rows and a Krum-family
base (ALGORITHMS.md §2.14, §2.5, §2.6, §2.9). The references below are written from the
spec: Python loops over chunks, rows and coordinates in float64 (``math.fsum``).
"""

from __future__ import annotations

import math
import platform
import warnings

import pytest
import torch

from byzbench.defenses import AggregationContext
from byzbench.defenses import gas as gas_module
from byzbench.defenses import gas_native
from byzbench.defenses.gas import GAS, random_permutation
from byzbench.defenses.gas_native import KERNEL, krum_plan, native_krum_scores
from byzbench.ops import native
from byzbench.ops.sortnet import use_backend
from gas_reference import BASES, chunk_scores
from helpers import fresh_native_build

pytestmark = pytest.mark.skipif(native.find_compiler() is None, reason="no C compiler ($CC, cc, gcc or clang) found")


@pytest.fixture(scope="module", autouse=True)
def built_kernel(tmp_path_factory):
    """The kernel built once into a fresh cache folder (a build failure fails the tests)."""
    with fresh_native_build(tmp_path_factory.mktemp("cache"), KERNEL):
        yield


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def separated_rows(n: int, d: int, f: int, seed: int) -> torch.Tensor:
    """Honest rows of distinct spreads around a common centre, f shifted Byzantine rows."""
    g = gen(seed)
    spread = torch.linspace(0.5, 2.0, n).unsqueeze(1)
    x = 3.0 + spread * torch.randn(n, d, generator=g)
    x[n - f :] += 4.0
    return x


def gas_call(rule: GAS, x: torch.Tensor, f: int, backend: str, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    ctx = AggregationContext(generator=gen(seed))
    with use_backend(backend):
        out = rule(x, f, ctx)
    return out, ctx.diagnostics["kept"].nonzero().flatten().tolist()


# --------------------------------------------------------------------------- differential tests


CASES = [  # n, d, f, p: even and uneven last chunks, p = 1, a few, d
    (7, 40, 1, 4), (7, 41, 1, 1), (11, 60, 2, 60), (11, 57, 2, 5), (16, 90, 3, 7), (25, 100, 5, 3), (25, 64, 5, 64),
]


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("n, d, f, p", CASES)
def test_native_scores_match_float64_loop_and_gas_matches_eager(base, n, d, f, p):
    x = separated_rows(n, d, f, seed=n + d + p)
    rule = GAS(p=p, base=base)
    size = -(-d // min(p, d))
    perm = random_permutation(d, gen(1))
    got = native_krum_scores(x, perm, size, d // size, krum_plan(rule.base, n, f))
    want = torch.tensor(chunk_scores(x, perm.tolist(), size, base, f, full_only=True), dtype=torch.float64)
    assert got is not None and got.dtype == torch.float64
    assert float(((got - want).abs() / want.abs().clamp_min(1e-12)).max()) <= 1e-5

    eager, kept_eager = gas_call(rule, x, f, "eager", seed=2)
    fast, kept_fast = gas_call(rule, x, f, "compile", seed=2)
    assert kept_fast == kept_eager
    assert torch.equal(fast, eager)


@pytest.mark.parametrize("spec", ["bulyan(selection_mode=one_shot)", "bulyan(median_mode=lower)",
                                  "bulyan(selection=krum(neighbors=n-f-1, squared=false))",
                                  "multikrum(mode=iterative)", "multikrum(m=3)", "krum(squared=false)",
                                  "krum(neighbors=n-f-3)"])
def test_native_options_keep_the_eager_rows(spec):
    n, d, f = 15, 120, 3
    x = separated_rows(n, d, f, seed=5)
    rule = GAS(p=12, base=spec)
    calls = []
    real = gas_module.native_krum_scores

    def counted(*args):
        calls.append(1)
        return real(*args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gas_module, "native_krum_scores", counted)
        fast, kept_fast = gas_call(rule, x, f, "compile")
    eager, kept_eager = gas_call(rule, x, f, "eager")
    assert calls == [1]
    assert kept_fast == kept_eager and torch.equal(fast, eager)


def test_hand_example_one_coordinate_chunks():
    # p = d = 1 with Krum on 5 scalars 0, 1, 2, 4, 100 (f = 1, k = 2): Krum picks 1 (§2.5),
    # so the scores are |x_i − 1| = 1, 0, 1, 3, 99
    x = torch.tensor([[0.0], [1.0], [2.0], [4.0], [100.0]])
    got = native_krum_scores(x, torch.zeros(1, dtype=torch.int32), 1, 1, krum_plan(GAS(base="krum").base, 5, 1))
    assert got.tolist() == [1.0, 0.0, 1.0, 3.0, 99.0]


# --------------------------------------------------------------------------- hostile rows


@pytest.mark.parametrize("base", sorted(BASES))
def test_hostile_rows_never_crash_nor_reach_the_output(base):
    n, d, f = 15, 64, 3
    honest = separated_rows(n - f, d, 0, seed=4)
    big = torch.finfo(torch.float32).max / 4
    hostile = torch.stack([torch.full((d,), math.nan), torch.full((d,), math.inf), torch.full((d,), big)])
    hostile[0, 1:] = 0.0
    hostile[1, ::2] = -math.inf
    hostile[2, ::2] = -big
    x = torch.cat([hostile, honest])
    rule = GAS(p=8, base=base)
    fast, kept = gas_call(rule, x, f, "compile", seed=6)
    eager, _ = gas_call(rule, x, f, "eager", seed=6)
    assert bool(torch.isfinite(fast).all()) and kept == list(range(f, n))
    assert torch.equal(fast, eager)


def test_huge_finite_rows_give_finite_scores():
    x = torch.randn(15, 48, generator=gen(2)) * 3e37  # every float32 distance would overflow
    x[0] = torch.finfo(torch.float32).max
    x[1] = -torch.finfo(torch.float32).max
    for base in BASES:
        scores = native_krum_scores(x, random_permutation(48, gen(1)), 12, 4, krum_plan(GAS(base=base).base, 15, 3))
        assert bool(torch.isfinite(scores).all())
        out, _ = gas_call(GAS(p=4, base=base), x, 3, "compile")
        assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("scale", [1e20, 1e38])
@pytest.mark.parametrize("base", sorted(BASES))
def test_float32_gram_overflow_falls_back_to_float64(base, scale):
    # Rows of about ±1e20 (or ±1e38) overflow every float32 product: each chunk's Gram
    # matrix is recomputed in float64, so the scores are those of the float64 Gram path,
    # finite, within 1e-5 of the float64 loops, and the kept rows are the eager path's.
    n, d, f, p = 11, 60, 2, 5
    x = separated_rows(n, d, f, seed=9)
    x = (x / x.abs().amax() * scale).float()
    assert not bool(torch.isfinite((x.double() ** 2).float()).all())
    rule = GAS(p=p, base=base)
    perm = random_permutation(d, gen(1))
    plan = krum_plan(rule.base, n, f)
    got = native_krum_scores(x, perm, 12, 5, plan)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gas_native, "GRAM32", False)
        float64_gram = native_krum_scores(x, perm, 12, 5, plan)
    assert bool(torch.isfinite(got).all()) and torch.equal(got, float64_gram)
    want = torch.tensor(chunk_scores(x, perm.tolist(), 12, base, f, full_only=True), dtype=torch.float64)
    assert float(((got - want).abs() / want.abs()).max()) <= 1e-5
    eager, kept_eager = gas_call(rule, x, f, "eager", seed=2)
    fast, kept_fast = gas_call(rule, x, f, "compile", seed=2)
    assert kept_fast == kept_eager and bool(torch.isfinite(fast).all())


def test_float32_gram_overflow_in_some_chunks_only():
    # Byzantine rows of ±1e20 on a few coordinates: only the chunks holding one of them
    # overflow in float32; the honest rows are kept as on the eager path.
    n, d, f = 15, 120, 3
    x = separated_rows(n, d, f, seed=11)
    x[n - f :, ::17] = 1e20
    x[n - 1, ::34] = -1e20
    rule = GAS(p=12, base="bulyan")
    scores = native_krum_scores(x, random_permutation(d, gen(3)), 10, 12, krum_plan(rule.base, n, f))
    assert bool(torch.isfinite(scores).all())
    eager, kept_eager = gas_call(rule, x, f, "eager", seed=4)
    fast, kept_fast = gas_call(rule, x, f, "compile", seed=4)
    assert kept_fast == kept_eager == list(range(n - f)) and torch.equal(fast, eager)


@pytest.mark.parametrize("base", sorted(BASES))
def test_float32_and_float64_gram_keep_the_same_rows(base):
    n, d, f = 25, 500, 5
    x = separated_rows(n, d, f, seed=13)
    plan = krum_plan(GAS(base=base).base, n, f)
    perm = random_permutation(d, gen(5))
    got = native_krum_scores(x, perm, 20, 25, plan)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gas_native, "GRAM32", False)
        ref = native_krum_scores(x, perm, 20, 25, plan)
    assert float(((got - ref).abs() / ref).max()) <= 1e-5
    assert torch.argsort(got, stable=True).tolist() == torch.argsort(ref, stable=True).tolist()


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 flag")
def test_generic_vector_build_gives_the_same_scores(tmp_path, monkeypatch):
    # Without AVX-512 the float32 Gram runs in 2 x 2 tiles of generic vectors: every entry
    # is still summed lane by lane in the same order.
    n, d, f = 25, 400, 5
    x = separated_rows(n, d, f, seed=17)
    plan = krum_plan(GAS().base, n, f)
    perm = random_permutation(d, gen(7))
    native_scores = native_krum_scores(x, perm, 16, 25, plan)
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(native, "FLAGS", (*native.FLAGS, "-mno-avx512f"))
    native.forget(KERNEL)
    try:
        generic = native_krum_scores(x, perm, 16, 25, plan)
    finally:
        native.forget(KERNEL)
    assert generic is not None
    assert float(((generic - native_scores).abs() / native_scores).max()) <= 1e-12


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bits_and_thread_counts_agree():
    x = separated_rows(25, 3000, 5, seed=7)
    rule = GAS(p=50)
    a, _ = gas_call(rule, x, 5, "compile", seed=3)
    b, _ = gas_call(rule, x, 5, "compile", seed=3)
    assert torch.equal(a, b)
    perm = random_permutation(3000, gen(3))
    plan = krum_plan(rule.base, 25, 5)
    threads = torch.get_num_threads()
    try:
        scores = []
        for k in (1, 2, 3):
            torch.set_num_threads(k)
            scores.append(native_krum_scores(x, perm, 60, 50, plan))
    finally:
        torch.set_num_threads(threads)
    # every chunk is computed alike on any thread, and the chunks are summed in order
    assert torch.equal(scores[0], scores[1]) and torch.equal(scores[0], scores[2])


# --------------------------------------------------------------------------- routing and fallback


def test_native_path_only_where_it_applies():
    x = separated_rows(11, 60, 2, seed=1)
    perm = random_permutation(60, gen(0))
    with use_backend("compile"):
        assert GAS(p=6)._native_scores(x, 2, perm, 10) is not None
        assert GAS(p=6)._native_scores(x.double(), 2, perm, 10) is None
        assert GAS(p=6)._native_scores(x.t().contiguous().t(), 2, perm, 10) is None  # column stride ≠ 1
        assert GAS(p=6, nonfinite="propagate")._native_scores(x, 2, perm, 10) is None
        for spec in ("bulyan(selection=mean)", "bulyan(aggregation=median)", "krum(p=1)", "multikrum(p=3)"):
            assert GAS(p=6, base=spec)._native_scores(x, 2, perm, 10) is None
    assert GAS(p=6)._native_scores(x, 2, perm, 10) is None  # the eager backend


def test_row_stride_larger_than_d():
    wide = separated_rows(11, 80, 2, seed=3)
    x = wide[:, :60]  # rows 80 floats apart
    perm = random_permutation(60, gen(0))
    plan = krum_plan(GAS().base, 11, 2)
    assert torch.equal(native_krum_scores(x, perm, 10, 6, plan), native_krum_scores(x.contiguous(), perm, 10, 6, plan))


def test_no_compiler_falls_back_to_eager_with_one_warning(monkeypatch):
    x = separated_rows(11, 60, 2, seed=8)
    rule = GAS(p=6)
    eager, _ = gas_call(rule, x, 2, "eager")
    monkeypatch.setattr(native, "find_compiler", lambda: None)
    native.forget(KERNEL)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first, _ = gas_call(rule, x, 2, "compile")
            second, _ = gas_call(rule, x, 2, "compile")
        assert [w.category for w in caught] == [RuntimeWarning]
        assert "no C compiler" in str(caught[0].message)
        assert torch.equal(first, eager) and torch.equal(second, eager)
    finally:
        native.forget(KERNEL)


def test_failed_build_warns_and_leaves_no_partial_file(monkeypatch, tmp_path):
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(native, "FLAGS", (*native.FLAGS, "-fno-such-flag-anywhere"))
    native.forget(KERNEL)
    try:
        with pytest.warns(RuntimeWarning, match="unavailable"):
            assert native.load(KERNEL) is None
        assert list((tmp_path / "native").iterdir()) == []
    finally:
        native.forget(KERNEL)


def test_build_is_cached_by_source_flags_and_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
    compiler = native.find_compiler()
    path = native.build(KERNEL, compiler)
    assert path.parent == tmp_path / "native" and path.suffix == ".so"
    stamp = path.stat().st_mtime_ns
    assert native.build(KERNEL, compiler) == path and path.stat().st_mtime_ns == stamp
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    monkeypatch.setattr(native, "FLAGS", (*native.FLAGS, "-DBYZBENCH_OTHER"))
    assert native.library_path(KERNEL, compiler) != path
