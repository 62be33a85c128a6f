"""Coordinate-wise order statistics by sorting networks.

For the small row counts of Byzantine learning (n ≈ 10–100) and many coordinates d,
sorting each column with a fixed comparator network — a sequence of element-wise
``minimum``/``maximum`` over whole rows — is several times faster on a CPU than
``torch.sort``/``torch.median`` along dim 0, which sort column by column. Three sorting
networks are candidates — Batcher's odd–even merge sort, Parberry's pairwise sorting
network (both on the next power of two, every comparator touching a padding position
dropped: padding rows would hold +∞ and never move) and Batcher's merge exchange — and
each is pruned to the requested ranks: a comparator that cannot influence them goes, and
one whose output is used on one side only computes that side (a "half comparator"). The
one with the fewest element-wise operations is used: for the median of 25 rows the
pairwise network, 104 comparators and 184 operations (Batcher's: 113 and 202).

A network becomes a `Program`: straight-line steps over rows (inputs, reused scratch
rows, outputs), one element-wise operation each. `ProgramBuilder` writes them: the
pruned network, then optionally sums of ranks in ascending order and further
element-wise steps (subtraction, scaling by a constant, a 0/1 comparison, NaN-ignoring
minimum and maximum), so that a rule can finish its work on each block of columns while
the block is in cache (`statistics_sum_program`: order statistics and a sum of ranks in
one pass; MeaMed's window; Bulyan's phase 2). A choice between two values without a
branch: with g = (a > b) · ∞ (∞ or NaN), fmin(u, fmax(l, g)) is u where a > b, else l
(for l ≤ u), exactly one of the two operands.

Three backends run a program (`execute`):

- ``"eager"`` (default): the steps run with ``out=`` into preallocated scratch rows,
  reusing dead rows so that nothing is copied, on blocks of columns sized to stay in
  cache (`CHUNK_BYTES`, at most `MAX_CHUNK_COLUMNS`) — each of the 184 steps of a
  25-row median reads cache rather than memory; the steps are ordered so that
  consecutive ones share rows (`cache_order`), and the blocks are shared among up to
  `MAX_WORKERS` threads (torch's thread count). On a CPU the steps of float32/float64
  and integer inputs are NumPy ufuncs on views of the same memory (`NUMPY_DTYPES`): a
  third of the per-call cost of the equivalent ATen call and faster kernels, about
  1.5·10¹⁰ elements/s per core on cache-resident rows; other dtypes (float16, bfloat16)
  and other devices run torch's operations, on GPUs the whole width as one block.
  Measured on one core of a shared 2-core Zen 5 machine, against one read of the input
  (``x.sum()``): about 5.5–7× for the 184 steps of a 25-row median, 7–10× for the 267
  of the 25-row, b = 5 trimmed mean and 9–11× for the 326 of MeaMed (torch's kernels:
  about 1.4× slower). The rules built on them pay one more read for the non-finite
  screen of `byzbench.defenses.base`.
- ``"compile"`` (opt-in): the same program as straight-line code handed to
  ``torch.compile``, which fuses it into one kernel that reads each column once. It
  costs a compilation the first time each (program, dtype, device) is met — on a
  2-core CPU about 20 s for the first one of a process (dynamo's own start-up included),
  5–8 s for each further one, about 1 s when inductor's on-disk cache already holds it —
  and then runs at about 2× one read of the input for a 25-row median, 3× for the
  25-row trimmed sum (one core). It needs a C++ compiler (CPU) or Triton (GPU); if
  compilation fails, the eager backend is used and a warning is issued once. Inputs
  narrower than `COMPILE_MIN_COLUMNS` always run eagerly.

- ``"native"`` (opt-in): the C interpreter ``byzbench/ops/sortnet_kernel.c``, built by
  `byzbench.ops.native` with the system C compiler once per machine and source version
  (0.4–0.6 s; cached in ``~/.cache/byzbench/native``). It takes the program as int32
  steps and runs every step as one vectorised loop over a block of columns sized to stay
  in L2 (`native_block_columns`), the blocks shared among torch's threads by OpenMP.
  float32/float64 CPU rows only (others, autograd and a missing compiler: eager, the
  last after one warning). Each step gives NumPy's bits, NaN and signed zeros included:
  the results are bitwise the eager ones, except that of two NaNs met by a commutative
  step the payload may differ, and that FMIN/FMAX give the second operand of a +0/−0 tie
  (NumPy's vector loop) where NumPy's scalar remainder loop gives the first, so a zero's
  sign may differ — in both cases the eager result itself depends on the block width.
  Measured at n = 25, d = 500,000, float32, one core of the shared 2-core Zen 5 machine
  (CPU time, against one read of the input): the program alone about 4.5–5.5× for a
  median, 6–6.5× for the b = 5 trimmed mean, 7× for MeaMed (2 threads: 3×, 3.6×, 4.1×);
  the rules (``byzbench bench defenses``, non-finite screen included) CM 8.5 ms, TM and
  RBTM 10.2 ms, MeaMed 11.3 ms (eager: 11.7, 15.7, 15.3, 17.6 ms; compile: 5.0, 9.4,
  6.8, 9.7 ms), i.e. 5.6–8.6× one read; on 2 threads (wall clock) 5–6.5× (eager
  15–19.5×). No compilation wait, and faster than eager at every width (25 rows:
  25–50 µs a call below 1,000 columns, eager 60–80 µs).

The process-wide default backend is ``"eager"``. ``BYZBENCH_SORTNET_BACKEND=native``
(or ``compile``) in the environment, `set_default_backend` or the `use_backend` context
manager change it for every rule built on these functions (CM, TM, RBTM, Aksel, MeaMed,
…); every function also takes ``backend=``.

Results are exact: a comparator network is a permutation of each column, so order
statistics equal those of a full sort, whatever the backend, block size or thread
count; sums of ranks are accumulated one rank at a time in ascending rank order, so they
are bitwise the same for every backend, block size and row permutation.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from byzbench.ops import native

Comparator = tuple[int, int]
#: One step of a `Program`: (operation, first operand slot, second operand slot, output slot).
Step = tuple[int, int, int, int]
#: A kept comparator ``(i, j, min_used, max_used)`` of a pruned network.
Kept = tuple[int, int, bool, bool]

#: Above this many rows the comparator count (~n log² n) makes ``torch.sort`` cheaper.
MAX_NETWORK_ROWS = 64
#: Bytes of input, scratch and output rows one block of columns may occupy (eager, CPU).
CHUNK_BYTES = 8 << 20
#: Fewest columns of a block (smaller blocks spend their time in per-call overhead).
MIN_CHUNK_COLUMNS = 4096
#: Most columns of a block: below ATen's intra-op grain (32768 elements), so that every
#: step runs on the calling thread. Splitting each ~4 µs step over threads gains little
#: and, when other processes hold the cores, one late thread stalls every step; blocks
#: are shared out among threads instead (`block_workers`).
MAX_CHUNK_COLUMNS = 30720
#: Most threads sharing the blocks: each step holds the GIL for ~1 µs of its ~4 µs.
MAX_WORKERS = 4
#: Narrower inputs run eagerly even under the compile backend.
COMPILE_MIN_COLUMNS = 4096
#: The C source (``byzbench/ops/sortnet_kernel.c``) of the native backend.
NATIVE_KERNEL = "sortnet_kernel"
#: Bytes of input, scratch and output rows one block of the native backend may occupy
#: (within a core's L2 cache), and the fewest and most columns of such a block (measured
#: at n = 25 on Zen 5, float32: 256-column blocks about 1.4× slower than 2048–4096;
#: float64: 4096-column blocks, 1.6 MB, about 8% slower than 2048).
NATIVE_BLOCK_BYTES = 768 << 10
NATIVE_BLOCK_COLUMNS = (256, 4096)
#: Narrower inputs run eagerly even under the native backend (one ctypes call costs
#: less than the eager backend's one NumPy call per step at every width).
NATIVE_MIN_COLUMNS = 1
#: Dtype codes of the native kernel (other dtypes run eagerly).
NATIVE_DTYPES = {torch.float32: 0, torch.float64: 1}
BACKENDS = ("eager", "compile", "native")

MIN, MAX, ADD, COPY, SUB, SCALE, DIVIDE, GREATER, FMIN, FMAX = range(10)
#: Steps whose second operand is one of the program's constants.
CONSTANT_OPERAND = (SCALE, DIVIDE)
_ENV_BACKEND = "BYZBENCH_SORTNET_BACKEND"


# ---------------------------------------------------------------------------- networks


@cache
def batcher_network(n: int) -> tuple[Comparator, ...]:
    """Comparators ``(i, j)``, ``i < j``, of Batcher's odd–even merge sort for ``n`` wires."""
    size = 1
    while size < n:
        size *= 2
    comps: list[Comparator] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        comps.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple((i, j) for i, j in comps if j < n)


@cache
def pairwise_network(n: int) -> tuple[Comparator, ...]:
    """Comparators of Parberry's pairwise sorting network (Parallel Process. Lett., 1992).

    Same size as Batcher's on a power of two, but pruned to a few ranks (a median) it
    keeps fewer comparators. Built on the next power of two; a comparator touching a
    padding wire is dropped (padding would hold +∞, which no comparator ever moves).
    """
    size = 1 << max(0, (n - 1).bit_length())
    comps: list[Comparator] = []
    a = 1
    while a < size:  # pair the halves of every block of 2a wires
        comps += _strided_pairs(size, first=a, dist=a, block=a)
        a *= 2
    a, e = size // 4, 1
    while a > 0:  # then merge, at distances e·a, …, 2a, a
        d = e
        while d > 0:
            comps += _strided_pairs(size, first=(d + 1) * a, dist=d * a, block=a)
            d //= 2
        a, e = a // 2, 2 * e + 1
    return tuple((i, j) for i, j in comps if j < n)


def _strided_pairs(size: int, first: int, dist: int, block: int) -> list[Comparator]:
    """``(b − dist, b)`` for b from ``first`` in runs of ``block``, skipping ``block`` between runs."""
    out = []
    b = first
    while b < size:
        out += [(j - dist, j) for j in range(b, min(b + block, size))]
        b += 2 * block
    return out


@cache
def merge_exchange_network(n: int) -> tuple[Comparator, ...]:
    """Comparators of Batcher's merge exchange for any n (Knuth, TAOCP 3, §5.2.2, Alg. M)."""
    comps: list[Comparator] = []
    if n < 2:
        return ()
    top = 1 << ((n - 1).bit_length() - 1)
    p = top
    while p > 0:
        q, r, d = top, 0, p
        while True:
            comps += [(i, i + d) for i in range(n - d) if i & p == r]
            if q == p:
                break
            d, q, r = q - p, q // 2, p
        p //= 2
    return tuple(comps)


#: Sorting networks tried by `selection_network`, in order of preference on ties.
NETWORKS: dict[str, Callable[[int], tuple[Comparator, ...]]] = {
    "batcher": batcher_network,
    "pairwise": pairwise_network,
    "merge_exchange": merge_exchange_network,
}


@cache
def pruned_network(n: int, ranks: tuple[int, ...]) -> tuple[Comparator, ...]:
    """The comparators of `batcher_network` that influence the outputs at ``ranks``."""
    return tuple((i, j) for i, j, _, _ in _needed_outputs(batcher_network(n), ranks))


@cache
def _needed_outputs(network: tuple[Comparator, ...], ranks: tuple[int, ...]) -> tuple[Kept, ...]:
    """``(i, j, min_used, max_used)`` for every comparator of ``network`` pruned to ``ranks``.

    Walking the network backwards from the requested ranks, a comparator is kept when
    one of its outputs is used later; ``min_used``/``max_used`` tell which.
    """
    needed = set(ranks)
    kept = []
    for i, j in reversed(network):
        lo, hi = i in needed, j in needed
        if lo or hi:
            kept.append((i, j, lo, hi))
            needed.update((i, j))
    return tuple(reversed(kept))


@cache
def selection_network(n: int, ranks: tuple[int, ...]) -> tuple[str, tuple[Kept, ...]]:
    """The cheapest of `NETWORKS` pruned to ``ranks``: its name and its kept comparators
    with their used outputs (cost: element-wise operations, then comparators)."""
    def cost(item: tuple[str, tuple]) -> tuple[int, int]:
        kept = item[1]
        return sum(lo + hi for _, _, lo, hi in kept), len(kept)

    return min(((name, _needed_outputs(make(n), ranks)) for name, make in NETWORKS.items()), key=cost)


# ---------------------------------------------------------------------------- programs


@dataclass(frozen=True)
class Program:
    """A straight-line vector program over row slots: ``[0, n)`` inputs (never written),
    then ``scratch`` work rows, then ``outputs`` result rows, then the scalar
    ``constants`` (the second operand of `SCALE` and `DIVIDE` steps). Each step
    ``(op, a, b, o)`` writes ``op(slot a, slot b)`` to slot o."""

    n: int
    scratch: int
    outputs: int
    steps: tuple[Step, ...]
    constants: tuple[float, ...] = ()


class _Slots:
    """Scratch-row allocator: slot numbers from ``n`` up, reusing freed ones."""

    def __init__(self, n: int) -> None:
        self.n, self.top, self.free = n, n, []

    def take(self) -> int:
        if self.free:
            return self.free.pop()
        self.top += 1
        return self.top - 1

    def scratch(self, slot: int) -> bool:
        return slot >= self.n

    def release(self, *slots: int) -> None:
        self.free.extend(s for s in slots if s >= self.n and s not in self.free)


def cache_order(kept: tuple[Kept, ...]) -> tuple[Kept, ...]:
    """The comparators reordered so that consecutive ones share rows (better cache reuse).

    Any order in which each wire meets its comparators in the original order computes
    the same thing. Greedy list scheduling: among the comparators whose wires are ready,
    take the one whose wires were used most recently (ties: the earliest). For a 25-row
    median this lifts the hit rate of an 8-row LRU cache from about 60% to 80%.
    """
    last: dict[int, int] = {}
    waiting = [0] * len(kept)
    after: list[list[int]] = [[] for _ in kept]
    for k, (i, j, _, _) in enumerate(kept):
        for w in (i, j):
            if w in last:
                waiting[k] += 1
                after[last[w]].append(k)
            last[w] = k
    ready = [k for k, c in enumerate(waiting) if c == 0]
    used: dict[int, int] = {}
    order = []
    while ready:
        k = max(ready, key=lambda k: (*sorted((used.get(kept[k][0], -1), used.get(kept[k][1], -1)),
                                              reverse=True), -k))  # most recent wires, then earliest
        ready.remove(k)
        order.append(kept[k])
        used[kept[k][0]] = used[kept[k][1]] = len(order)
        for s in after[k]:
            waiting[s] -= 1
            if waiting[s] == 0:
                ready.append(s)
    return tuple(order)


def _network_steps(n: int, ranks: tuple[int, ...], slots: _Slots) -> tuple[list[Step], list[int]]:
    """Steps of the network pruned to ``ranks`` and the slot holding each wire at the end."""
    where: list[int] = list(range(n))
    steps: list[Step] = []
    for i, j, lo, hi in cache_order(selection_network(n, ranks)[1]):
        a, b = where[i], where[j]
        if lo and hi:
            steps.append((MIN, a, b, slots.take()))
            out = b if slots.scratch(b) else a if slots.scratch(a) else slots.take()
            steps.append((MAX, a, b, out))
            where[i], where[j] = steps[-2][3], out
            slots.release(*({a, b} - {out}))
        else:
            out = a if slots.scratch(a) else b if slots.scratch(b) else slots.take()
            steps.append((MIN if lo else MAX, a, b, out))
            where[i if lo else j] = out
            slots.release(*({a, b} - {out}))
    return steps, where


class ProgramBuilder:
    """Builds a `Program`: one pruned network on the ``n`` input rows, then element-wise
    steps on the rows it leaves, e.g. to finish a rule on each block while it is in cache.

    Every method returns the slot of its result; ``out=`` writes into an existing scratch
    slot instead (in place), and `release` lets a slot be reused. `build` then numbers
    the slots so that the requested outputs come last.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._slots = _Slots(n)
        self._steps: list[Step] = []
        self._constants: list[float] = []
        self._sorted = False

    def order_statistics(self, ranks: Sequence[int]) -> dict[int, int]:
        """Run the network pruned to ``ranks`` (once per builder): rank → slot."""
        if self._sorted:
            raise ValueError("a program holds one network")
        self._sorted = True
        distinct = tuple(sorted(set(ranks)))
        steps, where = _network_steps(self.n, distinct, self._slots)
        self._steps += steps
        return {r: where[r] for r in distinct}

    def _step(self, op: int, a: int, b: int, out: int | None) -> int:
        o = self._slots.take() if out is None else out
        if o < self.n:
            raise ValueError("input rows are read-only")
        self._steps.append((op, a, b, o))
        return o

    def minimum(self, a: int, b: int, out: int | None = None) -> int:
        return self._step(MIN, a, b, out)

    def maximum(self, a: int, b: int, out: int | None = None) -> int:
        return self._step(MAX, a, b, out)

    def add(self, a: int, b: int, out: int | None = None) -> int:
        return self._step(ADD, a, b, out)

    def sub(self, a: int, b: int, out: int | None = None) -> int:
        return self._step(SUB, a, b, out)

    def greater(self, a: int, b: int, out: int | None = None) -> int:
        """``1`` where a > b, else ``0``, in the rows' dtype."""
        return self._step(GREATER, a, b, out)

    def fmin(self, a: int, b: int, out: int | None = None) -> int:
        """Element-wise minimum that ignores a NaN operand (the other one is returned)."""
        return self._step(FMIN, a, b, out)

    def fmax(self, a: int, b: int, out: int | None = None) -> int:
        """Element-wise maximum that ignores a NaN operand (the other one is returned)."""
        return self._step(FMAX, a, b, out)

    def scale(self, a: int, value: float, out: int | None = None) -> int:
        """``a · value`` for a Python float ``value`` (±∞ allowed: 0·∞ gives NaN)."""
        self._constants.append(float(value))
        return self._step(SCALE, a, len(self._constants) - 1, out)

    def divide(self, a: int, value: float, out: int | None = None) -> int:
        """``a / value`` for a Python float ``value`` (correctly rounded, unlike a·(1/value))."""
        self._constants.append(float(value))
        return self._step(DIVIDE, a, len(self._constants) - 1, out)

    def ascending_sum(self, slots: Sequence[int]) -> int:
        """Σ of ``slots`` added one at a time in the order given (a new slot if several)."""
        if len(slots) == 1:
            return slots[0]
        total = self.add(slots[0], slots[1])
        for s in slots[2:]:
            self.add(total, s, out=total)
        return total

    def release(self, *slots: int) -> None:
        """Let later steps reuse ``slots`` (their values are no longer needed)."""
        self._slots.release(*slots)

    def build(self, outputs: Sequence[int]) -> Program:
        """The program writing ``outputs`` (slots, in order) to its output rows."""
        steps, outs, top = list(self._steps), [], self._slots.top
        for s in outputs:
            if s < self.n or s in outs:  # an input, or asked for twice: copy
                steps.append((COPY, s, s, top))
                s, top = top, top + 1
            outs.append(s)
        inner = [s for s in range(self.n, top) if s not in outs]
        new = {s: self.n + i for i, s in enumerate(inner)}
        new.update({s: self.n + len(inner) + q for q, s in enumerate(outs)})
        new.update({s: s for s in range(self.n)})
        rows = self.n + len(inner) + len(outs)  # constants follow the rows

        def renumber(step: Step) -> Step:
            op, a, b, o = step
            return (op, new[a], rows + b if op in CONSTANT_OPERAND else new[b], new[o])

        return Program(self.n, len(inner), len(outs), tuple(map(renumber, steps)), tuple(self._constants))


@cache
def selection_program(n: int, ranks: tuple[int, ...]) -> Program:
    """Program writing the order statistics of the distinct sorted ``ranks`` to its outputs."""
    return statistics_sum_program(n, ranks, 0, 0)


@cache
def rank_sum_program(n: int, lo: int, hi: int) -> Program:
    """Program writing the sum of ranks ``lo .. hi-1`` (in ascending order) to its output."""
    return statistics_sum_program(n, (), lo, hi)


@cache
def statistics_sum_program(n: int, ranks: tuple[int, ...], lo: int, hi: int) -> Program:
    """Program writing the order statistics of ``ranks`` to its first outputs and, when
    ``lo < hi``, the sum of ranks ``lo .. hi-1`` (ascending order) to the last.

    One network pruned to ``ranks`` ∪ [lo, hi) serves both, so a rule that needs some
    order statistics and a sum of ranks reads its input once.
    """
    b = ProgramBuilder(n)
    where = b.order_statistics((*ranks, *range(lo, hi)))
    outputs = [where[r] for r in ranks]
    if hi > lo:
        outputs.append(b.ascending_sum([where[r] for r in range(lo, hi)]))
    return b.build(outputs)


# ---------------------------------------------------------------------------- eager backend


def chunk_columns(program: Program, d: int, itemsize: int, device: torch.device) -> int:
    """Columns per block: the whole width on GPUs, else what fits `CHUNK_BYTES`, at least
    `MIN_CHUNK_COLUMNS` and, when torch may use several threads, at most
    `MAX_CHUNK_COLUMNS`."""
    if device.type != "cpu":
        return max(d, 1)
    rows = program.n + program.scratch + program.outputs
    c = max(MIN_CHUNK_COLUMNS, CHUNK_BYTES // (rows * itemsize))
    return c if torch.get_num_threads() == 1 else min(c, MAX_CHUNK_COLUMNS)


def block_workers(blocks: int, device: torch.device) -> int:
    """Threads sharing the blocks: torch's thread count, at most `MAX_WORKERS` (1 on GPUs)."""
    if device.type != "cpu":
        return 1
    return max(1, min(MAX_WORKERS, torch.get_num_threads(), blocks))


def run_program(program: Program, x: torch.Tensor, chunk: int | None = None,
                workers: int | None = None) -> torch.Tensor:
    """Run ``program`` on ``x[n, d]`` block by block (eager); returns its ``[outputs, d]`` rows.

    The blocks are split into ``workers`` contiguous runs (default `block_workers`), each
    run by its own Python thread with its own scratch rows; every step releases the GIL,
    so the threads overlap on separate cores.
    """
    d = x.shape[1]
    out = torch.empty(program.outputs, d, dtype=x.dtype, device=x.device)
    if d == 0:
        return out
    c = chunk or chunk_columns(program, d, x.element_size(), x.device)
    starts = range(0, d, c)
    k = workers or block_workers(len(starts), x.device)
    runs = [starts[len(starts) * i // k: len(starts) * (i + 1) // k] for i in range(k)]
    in_threads(lambda run: _run_blocks(program, x, out, run, c), [r for r in runs if len(r)])
    return out


#: CPU dtypes whose steps run as NumPy ufuncs (others, e.g. float16, run as torch ops).
NUMPY_DTYPES = frozenset({torch.float32, torch.float64, torch.int8, torch.int16, torch.int32,
                          torch.int64, torch.uint8})


def _run_blocks(program: Program, x: torch.Tensor, out: torch.Tensor, starts: range, c: int) -> None:
    d = x.shape[1]
    work = torch.empty(program.scratch, min(c, d), dtype=x.dtype, device=x.device)
    src, tmp, dst = x.detach().resolve_neg(), work, out
    if x.device.type == "cpu" and x.dtype in NUMPY_DTYPES:
        src, tmp, dst = src.numpy(), tmp.numpy(), dst.numpy()  # views: the same memory
    with np.errstate(all="ignore"):  # sums may overflow to ±∞, as torch's do silently
        for s in starts:
            e = min(d, s + c)
            rows = [*src[:, s:e], *tmp[:, : e - s], *dst[:, s:e], *program.constants]
            _execute(program.steps, rows)


def in_threads(fn: Callable[[range], None], runs: list[range]) -> None:
    """``fn(run)`` for every run: the first in this thread, the others in new threads (for
    torch or NumPy work that releases the GIL); the first exception is re-raised."""
    errors: list[BaseException] = []

    def guarded(run: range) -> None:
        try:
            fn(run)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(run,), daemon=True) for run in runs[1:]]
    for t in threads:
        t.start()
    guarded(runs[0])
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _np_copy(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    np.copyto(out, a)


def _torch_copy(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(a)


def _np_greater(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    np.greater(a, b, out=out, casting="unsafe")


def _torch_greater(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    torch.gt(a, b, out=out)


#: Step functions by operation code (MIN, MAX, ADD, COPY, SUB, SCALE, DIVIDE, GREATER, FMIN,
#: FMAX), each called as ``fn(a, b, out=o)``; minimum and maximum propagate NaN, fmin and
#: fmax ignore it.
_NUMPY_STEPS = (np.minimum, np.maximum, np.add, _np_copy, np.subtract, np.multiply, np.divide, _np_greater,
                np.fmin, np.fmax)
_TORCH_STEPS = (torch.minimum, torch.maximum, torch.add, _torch_copy, torch.sub, torch.mul, torch.div,
                _torch_greater, torch.fmin, torch.fmax)


def _execute(steps: tuple[Step, ...], rows: Sequence) -> None:
    """Run ``steps`` on ``rows`` (the NumPy arrays or tensors of one block, then the
    program's constants)."""
    fns = _NUMPY_STEPS if isinstance(rows[0], np.ndarray) else _TORCH_STEPS
    for op, a, b, o in steps:
        fns[op](rows[a], rows[b], out=rows[o])


# ---------------------------------------------------------------------------- compile backend


def _source(program: Program) -> str:
    """Straight-line Python for ``program``: one local per slot, outputs stacked."""
    n, k = program.n, program.outputs
    inputs = ", ".join(f"s{i}" for i in range(n)) + ("," if n == 1 else "")
    lines = ["def network(x):", f"    {inputs} = x.unbind(0)"]
    names = {MIN: "torch.minimum", MAX: "torch.maximum", ADD: "torch.add", SUB: "torch.sub", SCALE: "torch.mul",
             DIVIDE: "torch.div", GREATER: "torch.gt", FMIN: "torch.fmin", FMAX: "torch.fmax"}
    rows = program.n + program.scratch + program.outputs
    lines += [f"    s{rows + q} = float('{c!r}')" for q, c in enumerate(program.constants)]
    for op, a, b, o in program.steps:
        rhs = f"s{a}" if op == COPY else f"{names[op]}(s{a}, s{b})"
        if op == GREATER:
            rhs += ".to(x.dtype)"
        lines.append(f"    s{o} = {rhs}")
    first = program.n + program.scratch
    lines.append(f"    return torch.stack([{', '.join(f's{first + q}' for q in range(k))}])")
    return "\n".join(lines) + "\n"


_FAILED: set[tuple[int, str]] = set()


@cache
def network_function(program: Program) -> Callable[[torch.Tensor], torch.Tensor]:
    """The program as a plain function of ``x[n, d]`` (new tensors, differentiable)."""
    namespace: dict = {"torch": torch}
    code = compile(_source(program), f"<byzbench.sortnet n={program.n} steps={len(program.steps)}>", "exec")
    exec(code, namespace)  # noqa: S102 - source generated above from integers and float literals only
    return namespace["network"]


@cache
def _compiled(program: Program) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile`` of `network_function` (one code object per program)."""
    return torch.compile(network_function(program), dynamic=True, fullgraph=True)


def _run_compiled(program: Program, x: torch.Tensor) -> torch.Tensor | None:
    """The compiled program on ``x``, or None (after one warning) if compiling fails."""
    key = (id(program), x.device.type)
    if key in _FAILED:
        return None
    try:
        return _compiled(program)(x.contiguous())
    except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to eager
        _FAILED.add(key)
        warnings.warn(f"byzbench.sortnet: torch.compile failed ({type(exc).__name__}: {exc}); "
                      "using the eager backend", RuntimeWarning, stacklevel=3)
        return None


# ---------------------------------------------------------------------------- native backend


_native_failed: set[int] = set()


def native_input_ok(x: torch.Tensor) -> bool:
    """Whether the native kernel takes ``x``: float32 or float64 rows on the CPU."""
    return x.device.type == "cpu" and x.dtype in NATIVE_DTYPES


def native_block_columns(program: Program, itemsize: int) -> int:
    """Columns per native block: what fits `NATIVE_BLOCK_BYTES`, a multiple of 64 within
    `NATIVE_BLOCK_COLUMNS`."""
    rows = program.n + program.scratch + program.outputs
    low, high = NATIVE_BLOCK_COLUMNS
    return max(low, min(high, NATIVE_BLOCK_BYTES // (rows * itemsize) // 64 * 64))


@cache
def _native_arrays(program: Program) -> tuple[torch.Tensor, torch.Tensor]:
    """The program's steps as an int32 ``[steps, 4]`` array and its constants as float64."""
    steps = torch.tensor(program.steps, dtype=torch.int32).view(-1, 4)
    return steps, torch.tensor(program.constants, dtype=torch.float64)


def _native_kernel() -> Callable[..., int] | None:
    """The kernel's entry point with its ctypes signature, or None (`native.load` warns)."""
    return native.entry(NATIVE_KERNEL, "byzbench_sortnet_run", 5)


def _run_native(program: Program, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor | None:
    """``program`` on ``x`` by the C kernel, blocks of ``chunk`` columns (default
    `native_block_columns`) shared among torch's threads; None where it does not take
    ``x`` (`native_input_ok`) or, after one RuntimeWarning, is unavailable or fails."""
    if not native_input_ok(x):
        return None
    fn = _native_kernel()
    if fn is None:
        return None
    n, d = x.shape
    src = x.detach().resolve_neg()
    if src.stride(1) != 1 or (n > 1 and src.stride(0) < d):
        src = src.contiguous()
    steps, constants = _native_arrays(program)
    out = torch.empty(program.outputs, d, dtype=x.dtype)
    block = chunk or native_block_columns(program, x.element_size())
    cfg = torch.tensor([NATIVE_DTYPES[x.dtype], n, program.scratch, program.outputs, steps.shape[0],
                        constants.shape[0], d, src.stride(0) if n > 1 else d, d, block, torch.get_num_threads()],
                       dtype=torch.int64)
    code = fn(src.data_ptr(), out.data_ptr(), cfg.data_ptr(), steps.data_ptr(), constants.data_ptr())
    if code == 0:
        return out
    if code not in _native_failed:
        _native_failed.add(code)
        warnings.warn(f"byzbench native sorting-network kernel failed (code {code}: "
                      f"{'out of memory' if code == -1 else 'invalid program'}); using the eager backend",
                      RuntimeWarning, stacklevel=3)
    return None


# ---------------------------------------------------------------------------- public API


_default: list[str | None] = [None]  # set_default_backend's choice; None: the environment's


def default_backend() -> str:
    """The backend used when none is given: `set_default_backend`'s choice, else
    ``$BYZBENCH_SORTNET_BACKEND``, else ``"eager"``."""
    if _default[0] is not None:
        return _default[0]
    return check_backend(os.environ.get(_ENV_BACKEND) or "eager", f"${_ENV_BACKEND}")


def set_default_backend(backend: str | None) -> None:
    """Make ``backend`` the process-wide default (None: back to the environment's)."""
    _default[0] = None if backend is None else check_backend(backend)


@contextlib.contextmanager
def use_backend(backend: str | None) -> Iterator[None]:
    """Context manager: `set_default_backend` for the duration of a ``with`` block."""
    saved = _default[0]
    set_default_backend(backend)
    try:
        yield
    finally:
        _default[0] = saved


def check_backend(backend: str | None, name: str = "backend") -> str:
    """``backend`` (None: the default) if it is one of `BACKENDS`; ValueError naming ``name``."""
    value = default_backend() if backend is None else backend
    if value not in BACKENDS:
        raise ValueError(f"{name} must be one of {BACKENDS}, got {value!r}")
    return value


def execute(program: Program, x: torch.Tensor, *, backend: str | None = None,
            chunk: int | None = None) -> torch.Tensor:
    """The ``[outputs, d]`` rows of ``program`` run on ``x[n, d]`` (``n = program.n``).

    ``backend`` is one of `BACKENDS` (default: `default_backend`); ``chunk`` overrides
    the block width in columns (eager and native). Under autograd (``x.requires_grad``) the
    steps run as plain differentiable operations. The input is never modified.
    """
    if x.dim() != 2 or x.shape[0] != program.n:
        raise ValueError(f"the program takes [{program.n}, d] inputs, got shape {tuple(x.shape)}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    if x.requires_grad and torch.is_grad_enabled():  # ``out=`` steps cannot be differentiated
        return network_function(program)(x)
    chosen = check_backend(backend)
    if chosen == "compile" and x.shape[1] >= COMPILE_MIN_COLUMNS:
        out = _run_compiled(program, x)
        if out is not None:
            return out
    if chosen == "native" and x.shape[1] >= NATIVE_MIN_COLUMNS:
        out = _run_native(program, x, chunk)
        if out is not None:
            return out
    return run_program(program, x, chunk)


def _check_ranks(ranks: Sequence[int], n: int) -> tuple[int, ...]:
    """The distinct ranks, sorted; ValueError if one lies outside [0, n)."""
    if not ranks or min(ranks) < 0 or max(ranks) >= n:
        raise ValueError(f"ranks {tuple(ranks)} outside [0, {n})")
    return tuple(sorted(set(ranks)))


def _check_range(lo: int, hi: int, n: int) -> None:
    if not 0 <= lo < hi <= n:
        raise ValueError(f"rank range [{lo}, {hi}) invalid for n = {n}")


def ascending_sum(srt: torch.Tensor, lo: int, hi: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Rows ``lo .. hi-1`` of ``srt`` (e.g. ranks of a column-sorted input) added one at a
    time in that order, accumulated in ``dtype`` (default ``srt``'s); zeros if lo ≥ hi."""
    total = torch.zeros(srt.shape[1:], dtype=dtype or srt.dtype, device=srt.device)
    if hi > lo:
        total.copy_(srt[lo])
    for r in range(lo + 1, hi):
        total += srt[r]
    return total


def order_statistics(x: torch.Tensor, ranks: tuple[int, ...], *, backend: str | None = None,
                     chunk: int | None = None) -> list[torch.Tensor]:
    """Per-coordinate order statistics of ``x[n, d]``: the rank-``r`` row of the column sort.

    Rank 0 is the smallest. NaN entries are not supported (callers drop non-finite rows).
    ``backend`` is one of `BACKENDS` (default: `default_backend`); ``chunk`` overrides
    the block width in columns (eager and native). The input is never modified; the results
    are new tensors (a rank asked for twice gives the same tensor twice). Under autograd
    (``x.requires_grad``) the network runs as plain differentiable operations.
    """
    n = x.shape[0]
    distinct = _check_ranks(ranks, n)
    if n > MAX_NETWORK_ROWS:
        srt = x.sort(dim=0).values
        return [srt[r] for r in ranks]
    rows = execute(selection_program(n, distinct), x, backend=backend, chunk=chunk)
    return [rows[distinct.index(r)] for r in ranks]


def smallest_sorted(x: torch.Tensor, k: int, *, backend: str | None = None,
                    chunk: int | None = None) -> torch.Tensor:
    """``[k, d]``: the k smallest values of each column of ``x[n, d]``, in ascending order
    (rows = ranks 0 .. k-1 of the column sort; one network pruned to them).

    See `order_statistics` for NaN, ``backend`` and ``chunk``; ``k`` must lie in [1, n].
    """
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k = {k} outside [1, {n}]")
    if n > MAX_NETWORK_ROWS:
        return x.sort(dim=0).values[:k]
    return execute(selection_program(n, tuple(range(k))), x, backend=backend, chunk=chunk)


def sum_of_ranks(x: torch.Tensor, lo: int, hi: int, *, backend: str | None = None,
                 chunk: int | None = None) -> torch.Tensor:
    """Per-coordinate sum of the sorted values of ranks ``lo .. hi-1`` of ``x[n, d]``.

    Accumulated one rank at a time in ascending order. May overflow to ±∞ when the
    selected values are huge (callers averaging them handle that); see `order_statistics`
    for ``backend`` and ``chunk``.
    """
    n = x.shape[0]
    _check_range(lo, hi, n)
    if n > MAX_NETWORK_ROWS:
        return ascending_sum(x.sort(dim=0).values, lo, hi)
    return execute(rank_sum_program(n, lo, hi), x, backend=backend, chunk=chunk)[0]


def order_statistics_and_sum(x: torch.Tensor, ranks: tuple[int, ...], lo: int, hi: int, *,
                             backend: str | None = None,
                             chunk: int | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """`order_statistics` (x, ranks) and `sum_of_ranks` (x, lo, hi) in one pass over ``x``.

    One network pruned to ``ranks`` ∪ [lo, hi) computes both (`statistics_sum_program`),
    instead of one network for each; the results are bitwise those of the two functions.
    """
    n = x.shape[0]
    distinct = _check_ranks(ranks, n)
    _check_range(lo, hi, n)
    if n > MAX_NETWORK_ROWS:
        srt = x.sort(dim=0).values
        return [srt[r] for r in ranks], ascending_sum(srt, lo, hi)
    rows = execute(statistics_sum_program(n, distinct, lo, hi), x, backend=backend, chunk=chunk)
    return [rows[distinct.index(r)] for r in ranks], rows[len(distinct)]


__all__ = [
    "BACKENDS",
    "MAX_NETWORK_ROWS",
    "NETWORKS",
    "Program",
    "ProgramBuilder",
    "batcher_network",
    "check_backend",
    "default_backend",
    "execute",
    "in_threads",
    "merge_exchange_network",
    "native_block_columns",
    "native_input_ok",
    "network_function",
    "order_statistics",
    "order_statistics_and_sum",
    "pairwise_network",
    "pruned_network",
    "rank_sum_program",
    "run_program",
    "selection_network",
    "selection_program",
    "set_default_backend",
    "smallest_sorted",
    "statistics_sum_program",
    "sum_of_ranks",
    "use_backend",
]
