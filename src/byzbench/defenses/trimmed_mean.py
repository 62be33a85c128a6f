"""Coordinate-wise trimmed mean (TM)."""

from __future__ import annotations

import torch

from byzbench.defenses.base import AGGREGATORS, AggregationContext, Aggregator, check_int
from byzbench.errors import InfeasibleError
from byzbench.ops.sortnet import sum_of_ranks


@AGGREGATORS.register("trmean", aliases=("tm", "trimmed_mean"))
class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean (Yin, Chen, Kannan, Bartlett, ICML 2018).

    For each coordinate, sort the n values, drop the b largest and b smallest and average
    the n − 2b left: [AGG(X)]_j = (1/(n−2b)) Σ_{r=b}^{n−b−1} x_(r)j. Default b = f; b = 0 is
    the mean. Requires n > 2b.
    """

    requirement = "n > 2b (b defaults to f)"

    def __init__(self, b: int | None = None, **common) -> None:
        super().__init__(**common)
        self.b = check_int(b, "b", minimum=0)

    def _trim(self, f: int) -> int:
        return f if self.b is None else self.b

    def feasible(self, n: int, f: int) -> bool:
        return n > 2 * self._trim(f)

    def check(self, n: int, f: int) -> int:
        if self.b is None or self.feasible(n, f):
            return super().check(n, f)
        if self.infeasible == "clamp":
            # ``b`` is explicit: clamp it (byzantine_skew's min(b, ⌊(n−1)/2⌋)).
            return min(f, max(0, (n - 1) // 2))
        raise InfeasibleError(f"{self.name} requires n > 2b; got n = {n}, b = {self.b}")

    def aggregate(self, x: torch.Tensor, f: int, ctx: AggregationContext) -> torch.Tensor:
        n = x.shape[0]
        b = min(self._trim(f), (n - 1) // 2)
        if b == 0:
            return x.mean(dim=0)
        return sum_of_ranks(x, b, n - b) / (n - 2 * b)
