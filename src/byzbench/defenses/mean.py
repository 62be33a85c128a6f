"""The plain mean (not robust)."""

from __future__ import annotations

import torch

from byzbench.defenses.base import AGGREGATORS, AggregationContext, Aggregator
from byzbench.ops.rows import column_sum


@AGGREGATORS.register("mean", aliases=("average", "avg"))
class Mean(Aggregator):
    """Arithmetic mean of the rows; no Byzantine protection (McMahan et al., AISTATS 2017).

    AGG(X) = (1/n) Σ_i x_i. One row with ‖x‖ → ∞ moves the output without bound, and by
    default (``nonfinite="propagate"``) a NaN/±Inf row reaches the output unchanged: this
    is the unprotected baseline. ``nonfinite="as_byzantine"`` drops such rows instead.
    When the caller passes the column sums (``ctx.column_sum``, e.g. the engine, which has
    the honest and Byzantine sums from its round metrics) the mean is Σ_i x_i / n from
    them, with no further pass over the rows.
    """

    coordinatewise = True
    robust = False
    order_invariant = True
    requirement = "n ≥ 1"
    default_nonfinite = "propagate"

    def feasible(self, n: int, f: int) -> bool:
        return n >= 1

    def aggregate(self, x: torch.Tensor, f: int, ctx: AggregationContext) -> torch.Tensor:
        n = x.shape[0]
        if ctx.column_sum is not None:
            return ctx.column_sum().div_(n)
        return column_sum(x).div_(n)
