"""The native backend of `byzbench.ops.sortnet` (the C interpreter ``sortnet_kernel.c``)
against the eager backend (NumPy ufuncs), bit for bit.

Every comparison is of bit patterns: equal bits wherever the eager result is not NaN, NaN
at the same places. Programs with FMIN/FMAX steps (MeaMed's and Bulyan's windows) may
differ in the sign of a zero: NumPy's own fmin/fmax give the second operand of a
+0/−0 tie in their vector loop and the first in their scalar remainder loop, so the
eager result itself depends on where a column falls in its block.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from byzbench.checks import check_rule
from byzbench.defenses import AggregationContext
from byzbench.defenses.bulyan import window_program
from byzbench.defenses.gas import GAS, random_permutation
from byzbench.defenses.meamed import meamed_program
from byzbench.defenses.median import midpoint_program
from byzbench.defenses.trimmed_mean import trimmed_mean_program
from byzbench.ops import native, sortnet
from byzbench.ops.sortnet import (
    FMAX,
    FMIN,
    MIN,
    NATIVE_KERNEL,
    Program,
    ProgramBuilder,
    execute,
    order_statistics,
    order_statistics_and_sum,
    rank_sum_program,
    selection_program,
    smallest_sorted,
    statistics_sum_program,
    sum_of_ranks,
    use_backend,
)
from helpers import fresh_native_build

pytestmark = pytest.mark.skipif(native.find_compiler() is None, reason="no C compiler ($CC, cc, gcc or clang) found")

F32, F64 = torch.float32, torch.float64
SIZES = (1, 2, 3, 5, 7, 16, 25, 33)
D = 1237  # not a multiple of any block width below


@pytest.fixture(scope="module", autouse=True)
def built_kernel(tmp_path_factory):
    """The kernel built once into a fresh cache folder (a build failure fails the tests)."""
    with fresh_native_build(tmp_path_factory.mktemp("cache"), NATIVE_KERNEL):
        yield


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request, monkeypatch):
    """The thread count torch reports (the native kernel runs that many OpenMP threads)."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: request.param)
    return request.param


def sprinkled(n: int, d: int, dtype: torch.dtype, seed: int, rate: float = 0.02) -> torch.Tensor:
    """Gaussian rows with repeated values, and NaN, ±∞, ±1e38, ±max, −0.0 and +0.0 at a
    ``rate`` of the entries each."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    x[torch.rand(n, d, generator=g) < 0.2] = 1.5  # ties between different rows
    big = torch.finfo(dtype).max
    for value in (float("nan"), float("inf"), -float("inf"), 1e38, -1e38, big, -big, -0.0, 0.0):
        x[torch.rand(n, d, generator=g, dtype=F64) < rate] = value
    return x.to(dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({F32: torch.int32, F64: torch.int64}.get(t.dtype, torch.int16))


def assert_same(got: torch.Tensor, want: torch.Tensor, zero_sign: bool = True) -> None:
    """Equal bits where ``want`` is not NaN (zeros of either sign equal unless
    ``zero_sign``), NaN at the same places."""
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.equal(got.isnan(), want.isnan())
    keep = ~want.isnan()
    if not zero_sign:
        zero = want == 0
        assert torch.equal(got[zero], want[zero])  # ±0 == ±0
        keep &= ~zero
    assert torch.equal(bits(got)[keep], bits(want)[keep])


def has_fmin(program: Program) -> bool:
    return any(op in (FMIN, FMAX) for op, *_ in program.steps)


def both(program: Program, x: torch.Tensor, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(native, eager)`` results of ``program`` on ``x``; the native one must not fall back."""
    got = sortnet._run_native(program, x, chunk)
    assert got is not None
    return got, execute(program, x, backend="eager", chunk=chunk)


# --------------------------------------------------------------------------- the programs the rules use


def rule_programs(n: int) -> list[Program]:
    """Programs of order statistics, sums of ranks, CM, TM, MeaMed and Bulyan on n rows."""
    mid = ((n - 1) // 2,)
    progs = [selection_program(n, mid), selection_program(n, tuple(range(n))), selection_program(n, (0, n - 1)),
             rank_sum_program(n, 0, n), statistics_sum_program(n, mid, n // 4, n - n // 4)]
    progs += [trimmed_mean_program(n, b) for b in {1, (n - 1) // 2} if 0 < b and 2 * b < n]
    progs += [midpoint_program(n)] if n % 2 == 0 and n > 1 else []
    progs += [meamed_program(n, f, mode) for f in {1, (n - 1) // 2} if 0 < f and 2 * f < n
              for mode in ("midpoint", "lower")]
    progs += [window_program(n, beta, mode) for beta in {1, max(1, n - 2)} if beta <= n
              for mode in ("midpoint", "lower")]
    return progs


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("n", SIZES)
def test_rule_programs_bitwise_equal_to_eager(n, dtype, threads):
    x = sprinkled(n, D, dtype, seed=n)
    for program in rule_programs(n):
        want = execute(program, x, backend="eager")  # the same bits for every eager block width
        for chunk in (None, 1, 64, 500):
            got = sortnet._run_native(program, x, chunk)
            assert got is not None
            assert_same(got, want, zero_sign=not has_fmin(program))


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("n", SIZES)
def test_public_functions_under_native_equal_eager(n, dtype, threads):
    x = sprinkled(n, D, dtype, seed=100 + n, rate=0.01)
    mid, lo, hi = (n - 1) // 2, n // 3, n - n // 3

    def run(backend: str, chunk: int | None) -> list[torch.Tensor]:
        kw = {"backend": backend, "chunk": chunk}
        stats, total = order_statistics_and_sum(x, (mid, 0), lo, hi, **kw)
        return [*order_statistics(x, (mid, n - 1, mid), **kw), smallest_sorted(x, max(1, n // 2), **kw),
                sum_of_ranks(x, lo, hi, **kw), *stats, total]

    for chunk in (None, 300):
        for got, want in zip(run("native", chunk), run("eager", chunk), strict=True):
            assert_same(got, want)


def test_no_nan_inputs_give_exactly_the_sorted_ranks():
    x = sprinkled(25, D, F32, seed=7, rate=0.0)
    x[3, :100] = float("inf")
    x[4, 50:150] = -float("inf")
    rows = execute(selection_program(25, tuple(range(25))), x, backend="native")
    assert torch.equal(rows, x.sort(dim=0).values)


def test_signed_zero_and_nan_rules_of_each_step():
    """MIN/MAX: a NaN operand wins, a ±0 tie gives the second operand (as np.minimum);
    FMIN/FMAX: NaN ignored; GREATER: 0 when NaN."""
    nan, inf = float("nan"), float("inf")
    a = torch.tensor([[0.0, -0.0, nan, 1.0, nan, 2.0, -inf], [-0.0, 0.0, 1.0, nan, nan, 1.0, inf]])
    for dtype in (F32, F64):
        for op in range(10):
            if op in sortnet.CONSTANT_OPERAND:
                program = Program(2, 0, 1, ((op, 0, 3, 2),), (0.5,))
            else:
                program = Program(2, 0, 1, ((op, 0, 1, 2),))
            got, want = both(program, a.to(dtype))
            assert_same(got, want, zero_sign=op not in (FMIN, FMAX))
    got = sortnet._run_native(Program(2, 0, 1, ((MIN, 0, 1, 2),)), a)[0]
    assert str(got[0].item()) == "-0.0" and str(got[1].item()) == "0.0"
    ties = torch.stack([torch.zeros(64), -torch.zeros(64)])  # FMIN/FMAX ties: the second operand
    for op in (FMIN, FMAX):
        got = sortnet._run_native(Program(2, 0, 1, ((op, 0, 1, 2),)), ties)[0]
        assert torch.equal(bits(got), bits(ties[1]))


# --------------------------------------------------------------------------- random programs


@st.composite
def programs(draw) -> Program:
    """A network on n rows, then random steps of every kind on the slots it leaves."""
    n = draw(st.integers(1, 9))
    b = ProgramBuilder(n)
    ranks = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n))
    live = list(b.order_statistics(ranks).values()) + list(range(n))
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["minimum", "maximum", "add", "sub", "greater", "fmin", "fmax", "scale",
                                     "divide"]))
        u, v = draw(st.sampled_from(live)), draw(st.sampled_from(live))
        if kind in ("scale", "divide"):
            c = draw(st.sampled_from([0.5, 3.0, -1.0, 0.1, 0.0, -0.0, float("inf"), float("nan"), 1e300]))
            live.append(getattr(b, kind)(u, c))
        else:
            live.append(getattr(b, kind)(u, v))
    outs = draw(st.lists(st.sampled_from(live), min_size=1, max_size=4))
    return b.build(outs)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs(), dtype=st.sampled_from([F32, F64]), chunk=st.sampled_from([None, 1, 3, 16]),
       seed=st.integers(0, 3))
def test_random_programs_bitwise_equal_to_eager(program, dtype, chunk, seed):
    x = sprinkled(program.n, 97, dtype, seed=seed, rate=0.05)
    got, want = both(program, x, chunk)
    assert_same(got, want, zero_sign=not has_fmin(program))


# --------------------------------------------------------------------------- the rules end to end


RULES = ["median", "median(mode=lower)", "trmean", "rbtm", "meamed", "meamed(median_mode=lower)", "aksel", "bulyan"]


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("spec", RULES)
def test_rules_bitwise_equal_under_native_and_eager(spec, dtype, threads):
    g = torch.Generator().manual_seed(3)
    n, f, d = 16, 3, 3001
    x = torch.randn(n, d, generator=g, dtype=dtype)
    x[:, :40] = torch.randint(-2, 3, (n, 40), generator=g).to(dtype)  # ties, zeros
    x[-f:] *= 1e30 if dtype == F32 else 1e300  # Byzantine rows, huge
    x[-1, 7] = float("nan")  # a non-finite row, screened by the rules
    rule = check_rule(spec, "rule")
    out = {}
    for backend in ("native", "eager"):
        with use_backend(backend):
            out[backend] = rule(x.clone(), f, AggregationContext(generator=torch.Generator().manual_seed(0)))
    assert_same(out["native"], out["eager"])


def test_backend_choice_routes_to_native(monkeypatch):
    x = sprinkled(7, 300, F32, seed=1, rate=0.0)
    calls = []
    real = sortnet._run_native
    monkeypatch.setattr(sortnet, "_run_native", lambda *a: calls.append(1) or real(*a))
    assert "native" in sortnet.BACKENDS
    order_statistics(x, (3,), backend="native")
    with use_backend("native"):
        order_statistics(x, (3,))
        assert sortnet.default_backend() == "native"
    monkeypatch.setenv("BYZBENCH_SORTNET_BACKEND", "native")
    order_statistics(x, (3,))
    monkeypatch.delenv("BYZBENCH_SORTNET_BACKEND")
    order_statistics(x, (3,))  # eager
    assert len(calls) == 3


def test_gas_native_kernel_runs_under_the_native_backend():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(11, 60, generator=g)
    perm = random_permutation(60, torch.Generator().manual_seed(1))
    with use_backend("native"):
        assert GAS(p=6)._native_scores(x, 2, perm, 10) is not None
    with use_backend("eager"):
        assert GAS(p=6)._native_scores(x, 2, perm, 10) is None


# --------------------------------------------------------------------------- inputs and fallbacks


def test_strided_inputs_and_row_views():
    wide = sprinkled(9, 2 * D, F64, seed=5)
    program = trimmed_mean_program(9, 2)
    for x in (wide[:, :D], wide[:, ::2], wide.t().contiguous().t(), wide[4:5]):
        prog = program if x.shape[0] == 9 else selection_program(1, (0,))
        assert_same(execute(prog, x, backend="native"), execute(prog, x, backend="eager"))
    assert execute(program, wide[:, :0], backend="native").shape == (1, 0)


def test_unsupported_dtypes_and_autograd_run_eagerly():
    program = selection_program(5, (2,))
    x16 = sprinkled(5, 300, torch.float16, seed=2)
    assert sortnet._run_native(program, x16) is None
    assert_same(execute(program, x16, backend="native"), execute(program, x16, backend="eager"))
    xi = torch.randint(-5, 5, (5, 300), dtype=torch.int32)
    assert torch.equal(execute(program, xi, backend="native"), execute(program, xi, backend="eager"))
    xg = torch.randn(5, 50, dtype=F64, requires_grad=True)
    out = execute(program, xg, backend="native")
    out.sum().backward()
    assert out.requires_grad and torch.equal(xg.grad.sum(0), torch.ones(50, dtype=F64))


def test_missing_compiler_falls_back_to_eager_with_one_warning(monkeypatch):
    x = sprinkled(7, 300, F32, seed=3)
    program = trimmed_mean_program(7, 2)
    want = execute(program, x, backend="eager")
    monkeypatch.setattr(native, "find_compiler", lambda: None)
    native.forget(NATIVE_KERNEL)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = execute(program, x, backend="native")
            second = execute(program, x, backend="native")
        assert [w.category for w in caught] == [RuntimeWarning]
        assert "no C compiler" in str(caught[0].message)
        assert_same(first, want)
        assert_same(second, want)
    finally:
        native.forget(NATIVE_KERNEL)


def test_loader_returning_none_gives_the_eager_result(monkeypatch):
    x = sprinkled(7, 300, F64, seed=4)
    program = meamed_program(7, 2, "midpoint")
    monkeypatch.setattr(native, "load", lambda name: None)
    assert sortnet._run_native(program, x) is None
    assert torch.equal(bits(execute(program, x, backend="native")), bits(execute(program, x, backend="eager")))


def test_invalid_program_is_refused_by_the_kernel_with_one_warning(monkeypatch):
    monkeypatch.setattr(sortnet, "_native_failed", set())
    x = torch.randn(2, 10)
    bad = [Program(2, 0, 1, ((MIN, 0, 7, 2),)),  # operand out of range
           Program(2, 0, 1, ((MIN, 0, 1, 1),)),  # writes an input
           Program(2, 0, 1, ((sortnet.SCALE, 0, 1, 2),), (2.0,)),  # constant slot not a constant
           Program(2, 0, 1, ((42, 0, 1, 2),))]  # unknown operation
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert all(sortnet._run_native(p, x) is None for p in bad)
    assert [w.category for w in caught] == [RuntimeWarning] and "code -2" in str(caught[0].message)


def test_kernel_flags_forbid_contraction_and_key_the_cache():
    assert "-ffp-contract=off" in native.kernel_flags(NATIVE_KERNEL)
    assert "-ffast-math" not in native.kernel_flags(NATIVE_KERNEL)
    assert native.kernel_flags("gas_kernel") == native.FLAGS
