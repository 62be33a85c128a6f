"""Bulyan: repeated Krum selection, then a coordinate-wise trimmed average around the median.

Also the generic (selection rule, aggregation rule) form that MixTailor's pool uses.
"""

from __future__ import annotations

import math
from functools import cache

import torch

from byzbench.checks import check_choice, check_rule
from byzbench.defenses.base import AGGREGATORS, AggregationContext, Aggregator
from byzbench.defenses.krum import (
    Krum,
    best_rows,
    chunk_rows,
    iterative_krum,
    krum_scores,
)
from byzbench.defenses.mean import Mean
from byzbench.defenses.rfa import RFA, weiszfeld
from byzbench.errors import InfeasibleError, ParamError
from byzbench.ops.distances import chunk_distances, dists_to, hull_dists, scaled_sq_dists
from byzbench.ops.rng import LocalGenerator
from byzbench.ops.rows import mask_of, uniform_weights, weighted_rows
from byzbench.ops.sortnet import MAX_NETWORK_ROWS, Program, ProgramBuilder, execute

SELECTION_MODES = ("iterative", "one_shot")
MEDIAN_MODES = ("midpoint", "lower")
TRIMMED = "trimmed"
#: Coordinates per block of `Bulyan.chunk_scores` on a CPU (phase 2, then the distances,
#: while the block is in cache).
PHASE2_COLUMNS = 1 << 14


def inner_f(rule: Aggregator, n: int, f: int, owner: str) -> int:
    """The largest f' ≤ f for which ``rule`` can run on ``n`` rows."""
    for g in range(f, -1, -1):
        if rule.feasible(n, g):
            return g
    raise InfeasibleError(f"{owner}: inner rule {rule.name} cannot run on {n} rows")


def window_ranks(theta: int, beta: int) -> tuple[int, ...]:
    """The sorted ranks phase 2 needs among θ values: the median's and β either side."""
    c = (theta - 1) // 2
    return tuple(sorted(set(range(max(0, c + 1 - beta), min(theta, c + beta + 1))) | {c, min(c + 1, theta - 1)}))


def closest_to_median_mean(rows: torch.Tensor, beta: int, median_mode: str = "midpoint") -> torch.Tensor:
    """Per coordinate (column) of ``rows[θ, d]``, the mean of the β values closest to their median.

    Ties in distance go to the lower value. With s the sorted column, c = ⌊(θ−1)/2⌋ and
    l_q = s_{c+1−q}, u_k = s_{c+k}, the greedy choice of the β closest values takes, for
    each q = 1..β, whichever of l_q and u_{β+1−q} is closer to the median (missing ones
    count as infinitely far): the comparison m − l_q ≤ u_{β+1−q} − m holds exactly for
    q ≤ (number taken below the median), so the β pairs never take a value twice. The
    mean is Σ_q (v_q / β), which cannot overflow.

    One program (`window_program`: a pruned sorting network, then the choices and the
    mean) runs on `byzbench.ops.sortnet`'s process-wide backend, block by block in cache
    (eager) or as one fused kernel (compile).
    """
    theta = rows.shape[0]
    if theta > MAX_NETWORK_ROWS:
        return _window_mean_sorted(rows.sort(dim=0).values, beta, median_mode)
    return execute(window_program(theta, beta, median_mode), rows)[0]


def _window_mean_sorted(srt: torch.Tensor, beta: int, median_mode: str) -> torch.Tensor:
    """`closest_to_median_mean` from the column-sorted ``srt[θ, d]`` (many rows)."""
    theta = srt.shape[0]
    c = (theta - 1) // 2
    med = srt[c] if theta % 2 == 1 or median_mode == "lower" else srt[c] * 0.5 + srt[c + 1] * 0.5
    total = torch.zeros_like(med)
    for q in range(1, beta + 1):
        lo, hi = c + 1 - q, c + beta + 1 - q
        if lo < 0 or hi >= theta:
            total += srt[hi if lo < 0 else lo] / beta
        else:
            total += torch.where(med - srt[lo] > srt[hi] - med, srt[hi], srt[lo]) / beta
    return total


@cache
def window_program(theta: int, beta: int, median_mode: str) -> Program:
    """The `byzbench.ops.sortnet` program of `closest_to_median_mean` on θ rows.

    Each choice is branch-free and exact: g = (m − l > u − m) · ∞ is ∞ where u is
    chosen and NaN elsewhere, and fmin(u, fmax(l, g)) returns u or l itself.
    """
    b = ProgramBuilder(theta)
    s = b.order_statistics(window_ranks(theta, beta))
    c = (theta - 1) // 2
    if theta % 2 == 1 or median_mode == "lower":
        med = s[c]
    else:
        med = b.scale(s[c], 0.5)
        half = b.scale(s[c + 1], 0.5)
        b.add(med, half, out=med)
        b.release(half)
    total = None
    for q in range(1, beta + 1):
        lo, hi = s.get(c + 1 - q), s.get(c + beta + 1 - q)
        if lo is None or hi is None:
            pick = b.divide(hi if lo is None else lo, float(beta))
        else:
            below, above = b.sub(med, lo), b.sub(hi, med)
            g = b.scale(b.greater(below, above, out=below), math.inf, out=below)
            pick = b.divide(b.fmin(hi, b.fmax(lo, g, out=g), out=g), float(beta), out=g)
            b.release(above)
        if total is None:
            total = pick
        else:
            b.add(total, pick, out=total)
            b.release(pick)
    return b.build([total])


@AGGREGATORS.register("bulyan")
class Bulyan(Aggregator):
    """Bulyan: θ = n − 2f rows by repeated Krum, then a β-trimmed mean around the median (El Mhamdi et al., ICML 2018).

    El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning in
    Byzantium", ICML 2018.

    1. Selection: θ times, apply the selection rule A (default Krum, with f) to the rows
       not yet selected and move its choice into S.
    2. Aggregation: β = θ − 2f; per coordinate, the mean of the β values of S closest to
       their median (ties to the lower value). The output lies, per coordinate, in the
       convex hull of the inputs (the absolute-deviation average of some reference codes,
       ALGORITHMS.md §8.5, is not reproduced).

    Requires n ≥ 4f + 3. Options:

    - ``selection``: the rule A as a spec (``"krum"``, ``"krum(squared=false)"``,
      ``"rfa"``, ``"median(mode=lower)"``, ``"mean"``, …) or an `Aggregator`. Krum picks a
      row directly (its neighbour count is clamped to [1, r − 1] on the r remaining rows);
      any other rule's output z selects the remaining row closest to z in ℓ2, as in
      MixTailor's Bulyan pool (Ramezani-Kebrya et al., TMLR 2022);
    - ``aggregation``: ``"trimmed"`` (default, the paper's phase 2) or a rule applied to
      the θ selected rows (MixTailor's pool: Krum, geomed, comed or mean);
    - ``selection_mode``: ``"iterative"`` (paper, default) or ``"one_shot"`` (Krum only:
      the θ best scores of a single Krum pass, as byzantine_skew / CRYPTO-KU);
    - ``median_mode``: ``"midpoint"`` (default) or ``"lower"`` median in phase 2 (§8.1).

    Randomised inner rules draw from ``ctx.generator`` (else the rule's own, seeded 0).
    ``aggregate_chunks(x3[m, n, s], f, ctx)`` runs the rule on m chunks at once, as GAS
    uses it: with Krum selection, batched distance matrices, θ batched selection steps and
    one phase 2 over all chunks; other selection rules go chunk by chunk. With Krum
    selection and the trimmed phase 2, ``chunk_scores`` gives GAS the distances from
    every row of each chunk to the rule's output on it, block by block.
    """

    requirement = "n ≥ 4f + 3"

    def __init__(self, selection: str | Aggregator = "krum", aggregation: str | Aggregator = TRIMMED,
                 selection_mode: str = "iterative", median_mode: str = "midpoint", **common) -> None:
        super().__init__(**common)
        self.selection_rule = check_rule(selection, "selection")
        self.aggregation_rule = None if aggregation == TRIMMED else check_rule(aggregation, "aggregation")
        self.selection_mode = check_choice(selection_mode, "selection_mode", SELECTION_MODES)
        self.median_mode = check_choice(median_mode, "median_mode", MEDIAN_MODES)
        if self.selection_mode == "one_shot" and type(self.selection_rule) is not Krum:
            raise ParamError("selection_mode", "selection_mode 'one_shot' needs selection = krum")
        self._rng = LocalGenerator()

    def feasible(self, n: int, f: int) -> bool:
        return n >= 4 * f + 3

    def reset(self) -> None:
        self._rng.reset()
        self.selection_rule.reset()
        if self.aggregation_rule is not None:
            self.aggregation_rule.reset()

    def _inner(self, ctx: AggregationContext) -> AggregationContext:
        return AggregationContext(round=ctx.round, generator=self._rng.get(ctx))

    def aggregate(self, x: torch.Tensor, f: int, ctx: AggregationContext) -> torch.Tensor:
        inner = self._inner(ctx)
        chosen = self.select(x, f, inner)
        ctx.diagnostics["kept"] = mask_of(chosen, x.shape[0])
        return self._combine(x.index_select(0, chosen).unsqueeze(1), x, chosen, f, inner)[0]

    def aggregate_chunks(self, x3: torch.Tensor, f: int, ctx: AggregationContext) -> torch.Tensor:
        """``[m, s]``: the rule on each chunk ``x3[q]`` of ``x3[m, n, s]``."""
        inner = self._inner(ctx)
        if type(self.selection_rule) is not Krum:
            return torch.stack([self.aggregate(x3[q], f, AggregationContext(round=ctx.round, generator=inner.generator))
                                for q in range(x3.shape[0])])
        chosen = self.select(x3, f, inner)
        return self._combine(chunk_rows(x3, chosen), x3, chosen, f, inner)

    def chunk_scores(self, x3: torch.Tensor, f: int, ctx: AggregationContext) -> torch.Tensor | None:
        """``[m, n]`` float64 ℓ2 distances ‖x3[q, i] − a_q‖, a_q the rule on chunk ``x3[q]``, or
        None unless the selection is Krum and the aggregation the trimmed phase 2.

        The outputs are never stored: phase 2 and the distances run on blocks of chunks of
        about `PHASE2_COLUMNS` coordinates (the whole width off CPUs), each block's rows
        still in cache for the distances.
        """
        if type(self.selection_rule) is not Krum or self.aggregation_rule is not None:
            return None
        m, n, s = x3.shape
        chosen = self.select(x3, f, self._inner(ctx))
        group = m if x3.device.type != "cpu" else max(1, PHASE2_COLUMNS // max(s, 1))
        out = torch.empty(m, n, dtype=torch.float64, device=x3.device)
        for q in range(0, m, group):
            rows = chunk_rows(x3, chosen[q : q + group], q)
            a = closest_to_median_mean(rows.reshape(rows.shape[0], -1), rows.shape[0] - 2 * f, self.median_mode)
            out[q : q + group] = chunk_distances(x3[q : q + group], a.view(-1, s))
        return out

    # ------------------------------------------------------------------ aggregation phase

    def _combine(self, s3: torch.Tensor, x: torch.Tensor, chosen: torch.Tensor, f: int,
                 ctx: AggregationContext) -> torch.Tensor:
        """``[m, s]`` phase 2 of m chunks from their selected rows ``s3[θ, m, s]``; ``x`` and
        ``chosen`` are the rows ``[..., n, s]`` and the ``[..., θ]`` selection behind it."""
        theta, m, s = s3.shape
        rule = self.aggregation_rule
        if rule is None:
            return closest_to_median_mean(s3.reshape(theta, m * s), theta - 2 * f, self.median_mode).view(m, s)
        if type(rule) is Mean:  # overflow-safe for huge finite rows
            return weighted_rows(x, uniform_weights(mask_of(chosen, x.shape[-2]))).view(m, s)
        g = inner_f(rule, theta, f, self.name)
        if getattr(rule, "coordinatewise", False):
            return rule.aggregate(s3.reshape(theta, m * s), g, ctx).view(m, s)
        batched = getattr(rule, "aggregate_chunks", None)
        if callable(batched) and m > 1:
            return batched(s3.transpose(0, 1), g, ctx)
        return torch.stack([rule.aggregate(s3[:, q], g, ctx) for q in range(m)])

    # ------------------------------------------------------------------ selection phase

    def select(self, x: torch.Tensor, f: int, ctx: AggregationContext) -> torch.Tensor:
        """``[..., θ]`` indices of the θ = n − 2f rows selected from ``x[..., n, d]``, in the
        order they were selected (a batch needs Krum selection)."""
        theta = x.shape[-2] - 2 * f
        rule = self.selection_rule
        if type(rule) is Krum:
            dist = rule.distances(x)
            if self.selection_mode == "iterative":
                return iterative_krum(dist, f, theta, rule.offset)
            return best_rows(krum_scores(dist, f, rule.offset), theta)
        return torch.tensor(self._select_closest(x, f, theta, ctx), dtype=torch.long, device=x.device)

    def _select_closest(self, x: torch.Tensor, f: int, theta: int, ctx: AggregationContext) -> list[int]:
        """θ times: the remaining row closest in ℓ2 to the selection rule's output."""
        dist, scale = scaled_sq_dists(x)
        remaining = list(range(x.shape[0]))
        chosen: list[int] = []
        for _ in range(theta):
            idx = torch.tensor(remaining, device=x.device)
            d = self._dists_to_output(x, idx, dist, float(scale), f, ctx)
            chosen.append(remaining.pop(int(d.argmin())))
        return chosen

    def _dists_to_output(self, x: torch.Tensor, idx: torch.Tensor, dist: torch.Tensor, scale: float,
                         f: int, ctx: AggregationContext) -> torch.Tensor:
        """Distances from the rule's output on rows ``idx`` to each of those rows.

        The mean and the geometric median are convex combinations Σ w_j x_j, so their
        distances follow from the distance matrix (`hull_dists`); other rules run on the
        gathered rows.
        """
        rule, r = self.selection_rule, idx.numel()
        sub = dist.index_select(0, idx).index_select(1, idx)
        uniform = torch.full((r,), 1.0 / r, dtype=torch.float64, device=sub.device)
        if type(rule) is Mean:
            return hull_dists(sub, uniform)
        if type(rule) is RFA:
            first = rule.start(x, ctx)
            first = None if first is None else first.index_select(0, idx) / scale
            w, _ = weiszfeld(sub, uniform, rule.nu / scale, rule.T, rule.tol, first)
            return hull_dists(sub, w)
        rows = x.index_select(0, idx)
        scratch = AggregationContext(round=ctx.round, generator=ctx.generator)  # keeps its diagnostics apart
        z = rule.aggregate(rows, inner_f(rule, r, f, self.name), scratch)
        return dists_to(rows, z)
