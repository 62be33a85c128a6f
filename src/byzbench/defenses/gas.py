"""GAS (gradient splitting), with the context helper of the rules built on a base rule."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from byzbench.checks import check_int, check_rule
from byzbench.defenses.base import AGGREGATORS, AggregationContext, Aggregator
from byzbench.defenses.gas_native import krum_plan, native_input_ok, native_krum_scores
from byzbench.ops.distances import chunk_distances
from byzbench.ops.rng import LocalGenerator
from byzbench.ops.sortnet import default_backend, in_threads
from byzbench.ops.rows import (
    BLOCK,
    empty_buffer,
    safe_norms,
    selection_mean,
    stable_smallest,
    work_dtype,
)

def sub_context(ctx: AggregationContext, cols: Any = None) -> AggregationContext:
    """A context for an inner rule: same round and generator, its own diagnostics.

    The server gradient is passed on, restricted to the coordinates ``cols`` (an index
    tensor or slice) when the inner rule sees only those.
    """
    outer = ctx.server_gradient
    if outer is None or cols is None:
        return AggregationContext(round=ctx.round, generator=ctx.generator, server_gradient=outer)

    def restricted() -> torch.Tensor:
        return outer()[cols]

    return AggregationContext(round=ctx.round, generator=ctx.generator, server_gradient=restricted)


def is_coordinatewise(rule: Aggregator) -> bool:
    """Whether ``rule`` acts on each coordinate separately (so it commutes with splitting),
    as declared by its ``coordinatewise`` attribute."""
    return bool(getattr(rule, "coordinatewise", False))


# --------------------------------------------------------------------------- GAS


@AGGREGATORS.register("gas", aliases=("gradient_splitting",))
class GAS(Aggregator):
    """GAS, gradient splitting (Liu, Chen, Lyu, Wu, Wu, Chen, ICML 2023).

    Draw a uniformly random permutation π of the d coordinates and cut it into chunks of
    ⌈d/p⌉ coordinates (the last may be smaller; p is clamped to d): chunk q holds the
    coordinates P_q = π[q·⌈d/p⌉ : (q+1)·⌈d/p⌉], with π = ``randperm(d)`` drawn from the
    generator (as int32 when d fits: the same permutation, drawn faster). Apply the base
    rule to each chunk of sub-vectors, a_q = BASE(X[:, P_q], f), score every row by the
    plain ℓ2 distances score_i = Σ_q ‖X[i, P_q] − a_q‖₂, keep the n − f rows with the
    smallest scores (ties: lowest index) and return their mean (full vectors).

    ``p`` defaults to 1000 and ``base`` to ``"bulyan"``, the setting of the GAS authors'
    example and of seed 004's reference code (ALGORITHMS.md §2.14); ``base`` is any
    aggregator spec string, e.g. ``"multikrum"`` or ``"median(mode=lower)"``. The
    permutation is fresh at every call, drawn from ``ctx.generator``.

    Speed: a coordinate-wise base (mean, median, trimmed mean, or any rule with a true
    ``coordinatewise`` attribute) commutes with the split, so it runs once on all of X
    and the chunk distances are accumulated block by block, with no copy of X. Any other
    base runs on the chunks of a permuted copy of X (one column gather, `permuted_columns`,
    the costliest step on a CPU: 10–15 reads of X on one core). A base that offers
    ``aggregate_chunks(x3[m, n, s], f, ctx) -> [m, s]`` (Krum, Multi-Krum, Bulyan) gets
    all equal-size chunks as one ``[m, n, s]`` view in one batched call; the uneven last
    chunk, and every chunk of a base without the hook, goes to ``aggregate``. If the base
    also offers ``chunk_scores(x3, f, ctx) -> [m, n] | None``, GAS takes the distances
    from it instead of measuring them on the chunks: ℓ2 Krum and Multi-Krum derive them
    from the chunk Gram matrices they compute anyway (their rounding is then that of the
    Gram matrices: in float32, relative error about 1e-6 · ‖x‖² / ‖x_i − a_q‖² rather
    than 1e-7); Bulyan measures them block by block right after its phase 2, while the
    block's rows are still in cache. An inner rule that needs the
    server gradient gets it restricted to its chunk. Requires what the base requires
    (and n > f). Reports ``kept``.

    Native path (opt-in): under the ``"compile"`` or ``"native"`` backend of `byzbench.ops.sortnet`, with
    float32 CPU rows and an ℓ2 Krum, Multi-Krum or Krum-selection trimmed Bulyan base
    (`krum_plan`), the full chunks run in the C kernel ``byzbench/ops/gas_kernel.c``
    (`native_krum_scores`: one row-wise gather, then per chunk in cache a float32 Gram
    matrix (redone in float64 for a chunk where it is not finite, as the eager path
    does), the base's selection and aggregate, and float64 distances); the uneven last
    chunk stays eager. The permutation is drawn as above, so the kept rows are the eager
    path's unless two scores lie within rounding of each other (the kernel's float64
    distances are the more exact). Not used under ``nonfinite="propagate"``; without a
    C compiler it warns once and the eager path runs.
    """

    def __init__(self, p: int = 1000, base: str = "bulyan", **common) -> None:
        super().__init__(**common)
        self.p = check_int(p, "p", low=1)
        self.base_spec = base
        self.base = check_rule(base, "base", allow_instance=False)
        self.requirement = f"{self.base.requirement} (base rule {self.base.name!r}) and n > f"
        self._rng = LocalGenerator()
        self.needs_server_gradient = self.base.needs_server_gradient

    def feasible(self, n: int, f: int) -> bool:
        return n > f and self.base.feasible(n, f)

    def reset(self) -> None:
        self._rng.reset()
        self.base.reset()

    def aggregate(self, x: torch.Tensor, f: int, ctx: AggregationContext) -> torch.Tensor:
        n, d = x.shape
        fb = self.base.check(n, f)
        size = -(-d // min(self.p, d))
        perm = random_permutation(d, self._rng.get(ctx)).to(x.device)
        if is_coordinatewise(self.base):
            chunk_of = chunk_labels(perm, size)
            scores = self._scores_coordinatewise(x, fb, chunk_of, -(-d // size), ctx)
        else:
            scores = self._scores_split(x, fb, perm, size, ctx)
        keep = stable_smallest(scores, n - f)
        ctx.diagnostics["kept"] = keep
        return selection_mean(x, keep)

    def _scores_coordinatewise(self, x: torch.Tensor, f: int, chunk_of: torch.Tensor, m: int,
                               ctx: AggregationContext) -> torch.Tensor:
        """Scores for a base that acts per coordinate: BASE(X) once, then chunk distances.

        ``chunk_of[j]`` is the chunk (of m) of coordinate j; the chunk sums of (x_ij − a_j)² are
        accumulated block by block, so no ``n × d`` temporary is formed.
        """
        n, d = x.shape
        a = self.base.aggregate(x, f, sub_context(ctx))
        dtype = work_dtype(x.dtype)
        sq = torch.zeros(n, m, dtype=dtype, device=x.device)
        for s in range(0, d, BLOCK):
            block = x[:, s : s + BLOCK].to(dtype)
            dev = F.mse_loss(block, a[s : s + BLOCK].to(dtype).expand_as(block), reduction="none")
            sq.index_add_(1, chunk_of[s : s + BLOCK], dev)  # (x_ij − a_j)² summed per chunk
        return sq.double().sqrt_().sum(dim=1)

    def _scores_split(self, x: torch.Tensor, f: int, perm: torch.Tensor, size: int,
                      ctx: AggregationContext) -> torch.Tensor:
        """Scores for a general base: run it on each chunk of the permuted coordinates.

        Chunk q holds the coordinates perm[q·size : (q+1)·size]. The full chunks go to the
        base's ``aggregate_chunks`` in one call when it has one; the uneven last chunk (and
        every chunk of a base without the hook) to ``aggregate``.
        """
        n, d = x.shape
        scores = self._native_scores(x, f, perm, size)
        if scores is not None:
            for s in range(d // size * size, d, size):  # the uneven last chunk
                cols = perm[s : s + size]
                scores += self._chunk_distances(x.index_select(1, cols), f, sub_context(ctx, cols))
            return scores
        xp = permuted_columns(x, perm)
        scores = torch.zeros(n, dtype=torch.float64, device=x.device)
        batched = getattr(self.base, "aggregate_chunks", None)
        full = d // size if callable(batched) else 0
        if full:
            x3 = xp[:, : full * size].view(n, full, size).transpose(0, 1)
            scores += self._batched_distances(x3, f, sub_context(ctx, perm[: full * size].view(full, size)))
        for s in range(full * size, d, size):
            scores += self._chunk_distances(xp[:, s : s + size], f, sub_context(ctx, perm[s : s + size]))
        return scores

    def _chunk_distances(self, chunk: torch.Tensor, f: int, ctx: AggregationContext) -> torch.Tensor:
        """``[n]`` float64 ‖chunk_i − BASE(chunk)‖ for one chunk ``[n, s]`` of sub-vectors."""
        return safe_norms(chunk - self.base.aggregate(chunk, f, ctx), dim=1)

    def _native_scores(self, x: torch.Tensor, f: int, perm: torch.Tensor, size: int) -> torch.Tensor | None:
        """The scores summed over the full chunks by the native kernel, or None where it does
        not apply (see `native_krum_scores`) or is unavailable."""
        if default_backend() not in ("compile", "native") or self.nonfinite == "propagate":
            return None
        plan = krum_plan(self.base, x.shape[0], f)
        full = x.shape[1] // size
        if plan is None or not full or not native_input_ok(x, perm):
            return None
        return native_krum_scores(x, perm, size, full, plan)

    def _batched_distances(self, x3: torch.Tensor, f: int, ctx: AggregationContext) -> torch.Tensor:
        """``[n]`` sums over the chunks of ``x3[m, n, s]`` of ‖x3[q, i] − BASE(x3[q])‖: from the
        base's ``chunk_scores`` when it gives them, else measured on its batched outputs."""
        direct = getattr(self.base, "chunk_scores", None)
        dist = direct(x3, f, ctx) if callable(direct) else None
        if dist is None:
            dist = chunk_distances(x3, self.base.aggregate_chunks(x3, f, ctx))
        return dist.sum(dim=0)


def random_permutation(d: int, gen: torch.Generator) -> torch.Tensor:
    """``randperm(d)`` from ``gen``, as int32 when d fits (the same permutation as int64,
    drawn in about half the time), on the generator's device."""
    dtype = torch.int32 if d < 2**31 else torch.int64
    return torch.randperm(d, generator=gen, device=gen.device, dtype=dtype)


def chunk_labels(perm: torch.Tensor, size: int) -> torch.Tensor:
    """``[d]`` int64: the chunk ⌊t / size⌋ of the position t of each coordinate in ``perm``."""
    d = perm.shape[0]
    labels = torch.arange(d, device=perm.device).div_(size, rounding_mode="floor")
    return torch.empty(d, dtype=torch.int64, device=perm.device).scatter_(0, perm.long(), labels)


def permuted_columns(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``x[:, perm]`` as a new contiguous ``[n, d]`` tensor: a column gather (all rows per
    index, so that the rows' random reads overlap) into a buffer backed by huge pages on a
    CPU. torch runs it on one thread: with several torch threads, the rows are split among
    as many Python threads."""
    n = x.shape[0]
    out = empty_buffer((n, perm.shape[0]), x.dtype, x.device)
    parts = 1 if x.device.type != "cpu" else max(1, min(torch.get_num_threads(), n))
    runs = [range(n * k // parts, n * (k + 1) // parts) for k in range(parts)]
    in_threads(lambda r: torch.index_select(x[r.start : r.stop], 1, perm, out=out[r.start : r.stop]), runs)
    return out
