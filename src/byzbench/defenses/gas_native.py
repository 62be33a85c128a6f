"""GAS's native path: the C kernel ``byzbench/ops/gas_kernel.c`` for Krum-family bases.

`krum_plan` says how the kernel runs a base (or None when it cannot), `native_input_ok`
whether it takes the input, and `native_krum_scores` runs it: one row-wise gather of
the permuted columns, then per chunk, in cache, a float32 Gram matrix (recomputed in
float64 for a chunk where it is not finite, as the eager path does), the base's
selection and aggregate, and float64 distances from every row to it. Used by
`byzbench.defenses.gas.GAS` under the compile or native backend of `byzbench.ops.sortnet`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

from byzbench.defenses.base import Aggregator
from byzbench.defenses.bulyan import Bulyan, window_ranks
from byzbench.defenses.krum import Krum, neighbor_count
from byzbench.defenses.multikrum import MultiKrum
from byzbench.ops import native
from byzbench.ops.sortnet import selection_network

#: The C source (``byzbench/ops/gas_kernel.c``) of the native path.
KERNEL = "gas_kernel"
#: Whether the kernel prefetches the next chunk's columns while gathering a chunk.
PREFETCH = True
#: Whether the kernel computes each chunk's Gram matrix in float32 (as the eager path
#: does, falling back to float64 for a chunk whose float32 Gram is not finite) rather
#: than in float64 throughout.
GRAM32 = True
#: Whether the kernel prefetches the next chunk's gathered tile while computing a chunk.
TILE_PREFETCH = True
_failed_codes: set[int] = set()


@dataclass(frozen=True)
class KrumPlan:
    """How the native kernel runs a Krum-family base on n rows with f Byzantine.

    ``ks``: the Krum neighbour count of each selection step (one shot: one value);
    ``steps``: rows selected; ``window``: Bulyan's phase 2 with ``beta`` and the lower
    median if ``lower``, else the mean of the selected rows; ``squared``: Krum sums
    squared distances."""

    n: int
    squared: bool
    iterative: bool
    ks: tuple[int, ...]
    steps: int
    window: bool = False
    beta: int = 0
    lower: bool = False

    @property
    def depth(self) -> int:
        """Sorted distances kept per row: max_t (k_t + t) (one shot: k), at most n − 1."""
        return min(max(k + t for t, k in enumerate(self.ks)), self.n - 1)


def krum_plan(base: Aggregator, n: int, f: int) -> KrumPlan | None:
    """The `KrumPlan` of ``base`` (its effective f given), or None unless it is ℓ2 Krum,
    ℓ2 Multi-Krum, or Bulyan with ℓ2 Krum selection and the trimmed phase 2 (any of their
    other options: neighbour count, squared or plain distances, one-shot or iterative
    selection, Multi-Krum's m, Bulyan's median mode)."""
    if type(base) is Bulyan:
        rule = base.selection_rule
        if type(rule) is not Krum or rule.p != 2 or base.aggregation_rule is not None:
            return None
        theta = n - 2 * f
        return KrumPlan(n, rule.squared, base.selection_mode == "iterative",
                        _neighbour_counts(rule, n, f, theta, base.selection_mode == "iterative"), theta,
                        window=True, beta=theta - 2 * f, lower=base.median_mode == "lower")
    if type(base) in (Krum, MultiKrum) and base.p == 2:
        count = base.count(n, f) if type(base) is MultiKrum else 1
        iterative = type(base) is MultiKrum and base.mode == "iterative"
        return KrumPlan(n, base.squared, iterative, _neighbour_counts(base, n, f, count, iterative), count)
    return None


def _neighbour_counts(rule: Krum, n: int, f: int, steps: int, iterative: bool) -> tuple[int, ...]:
    if not iterative:
        return (neighbor_count(n, f, rule.offset),)
    return tuple(neighbor_count(n - t, f, rule.offset) for t in range(steps))


def native_input_ok(x: torch.Tensor, perm: torch.Tensor) -> bool:
    """Whether the kernel takes ``x`` and ``perm``: float32 CPU rows with unit column
    stride, an int32 contiguous permutation, no autograd."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 2 and x.stride(1) == 1
            and x.stride(0) >= x.shape[1] and perm.dtype == torch.int32 and perm.is_contiguous()
            and not (x.requires_grad and torch.is_grad_enabled()))


def native_krum_scores(x: torch.Tensor, perm: torch.Tensor, size: int, full: int,
                       plan: KrumPlan) -> torch.Tensor | None:
    """``[n]`` float64 Σ_q ‖x[i, P_q] − a_q‖ over the ``full`` chunks of ``size`` coordinates
    of ``perm``, computed by the C kernel with torch's thread count (chunk distances
    summed in chunk order: bitwise the same for every thread count); None, after one
    RuntimeWarning, if the kernel is unavailable or fails."""
    fn = _kernel()
    if fn is None:
        return None
    n, d = x.shape
    ks, dnet, wnet = _plan_arrays(plan)
    cfg = torch.tensor([n, d, size, full, torch.get_num_threads(), plan.squared, plan.iterative, plan.steps,
                        plan.depth, dnet.shape[0], plan.window, plan.beta, plan.lower, wnet.shape[0],
                        PREFETCH, x.stride(0), GRAM32, TILE_PREFETCH], dtype=torch.int64)
    partial = torch.empty(full, n, dtype=torch.float64)
    scores = torch.empty(n, dtype=torch.float64)
    code = fn(x.data_ptr(), perm.data_ptr(), cfg.data_ptr(), ks.data_ptr(), dnet.data_ptr(), wnet.data_ptr(),
              partial.data_ptr(), scores.data_ptr())
    if code == 0:
        return scores
    if code not in _failed_codes:
        _failed_codes.add(code)
        warnings.warn(f"byzbench native GAS kernel failed (code {code}: {'out of memory' if code == -1 else 'bad plan'}); "
                      "using the eager torch path", RuntimeWarning, stacklevel=2)
    return None


def _kernel() -> Any:
    """The kernel's entry point with its ctypes signature, or None (`native.load` warns)."""
    return native.entry(KERNEL, "byzbench_gas_krum_scores", 8)


@cache
def _plan_arrays(plan: KrumPlan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ks, dnet, wnet)``: the neighbour counts (int64) and the kept comparators
    ``(i, j, min_used, max_used)`` (int32 ``[C, 4]``) of the network sorting the depth
    smallest distances of each row and of Bulyan's phase-2 network (`window_ranks`)."""
    dnet = _comparators(plan.n, tuple(range(plan.depth)))
    wnet = _comparators(plan.steps, window_ranks(plan.steps, plan.beta)) if plan.window else dnet[:0]
    return torch.tensor(plan.ks, dtype=torch.int64), dnet, wnet


def _comparators(n: int, ranks: tuple[int, ...]) -> torch.Tensor:
    kept = selection_network(n, ranks)[1]
    return torch.tensor([[i, j, int(lo), int(hi)] for i, j, lo, hi in kept], dtype=torch.int32).view(-1, 4)
