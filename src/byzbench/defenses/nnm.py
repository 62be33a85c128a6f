"""Nearest-neighbour mixing (NNM)."""

from __future__ import annotations

from typing import Any

import torch

from byzbench.checks import check_bool
from byzbench.defenses.base import PREAGGREGATORS, AggregationContext, PreAggregator
from byzbench.ops.clip import empty_like_rows
from byzbench.ops.distances import pairwise_sq_dists
from byzbench.ops.rows import BLOCK


#: Columns per block of the mixing product on a CPU with several threads (see `mix_rows`).
THREADED_MIX_COLUMNS = 1 << 16


def neighbour_count(n: int, f: int, include_self: bool) -> int:
    """Rows averaged per output: n − f, capped at the n − 1 others when self is excluded."""
    return n - f if include_self else min(n - f, n - 1)


def mixing_matrix(x: torch.Tensor, k: int, include_self: bool) -> torch.Tensor:
    """``[n, n]`` matrix W with W_ij = 1/k when x_j is among the k nearest rows to x_i.

    Neighbours are ranked by squared ℓ2 distance with ties broken by the lower index
    (stable sort), row i itself ranked first; ``include_self=False`` drops that first
    place and takes the next k.
    """
    n = x.shape[0]
    d = pairwise_sq_dists(x)
    d.fill_diagonal_(-1.0)
    start = 0 if include_self else 1
    idx = torch.sort(d, dim=1, stable=True).indices[:, start : start + k]
    w = torch.zeros(n, n, dtype=x.dtype, device=x.device)
    return w.scatter_(1, idx, 1.0 / k)


@PREAGGREGATORS.register("nnm", aliases=("mixing", "nearest_neighbor_mixing", "nearest_neighbour_mixing"))
class NearestNeighbourMixing(PreAggregator):
    """Nearest-neighbour mixing (NNM): each row becomes the mean of its n − f nearest rows.

    Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by Mixing: A Recipe
    for Optimal Byzantine ML under Heterogeneity", AISTATS 2023.

    x'_i = (1/k) Σ_{j ∈ N_i} x_j, where N_i holds the k = n − f rows nearest to x_i in ℓ2,
    x_i itself included (``include_self=True``, the paper and LPD-EPFL/byzfl). With
    ``include_self=False`` (YuchenLiu-a/byzantine_skew, ALGORITHMS.md §8.6) N_i is the
    n − f nearest *other* rows, or all n − 1 others when f = 0 (that code fails there).
    Distance ties are broken by the lower index. n rows in, n out, f passed on; f = 0
    with self included gives n copies of the mean. Computed as W·X: the ``[n, n]``
    squared distances from the Gram matrix (`pairwise_sq_dists`, float64 only when the
    input's dtype overflows), then the mixing product block by block (`mix_rows`).
    Requires n > 2f.
    """

    def __init__(self, include_self: bool = True, **common: Any) -> None:
        super().__init__(**common)
        self.include_self = check_bool(include_self, "include_self")

    def transform(self, x: torch.Tensor, f: int, ctx: AggregationContext) -> tuple[torch.Tensor, int]:
        n = x.shape[0]
        k = neighbour_count(n, f, self.include_self)
        if k == 0:  # a single row and self excluded: nothing to mix with
            return x, f
        if k == n:  # every output is the mean, computed once
            mean = mix_rows(torch.full((1, n), 1.0 / n, dtype=torch.float64, device=x.device), x)
            return mean.expand(n, -1).contiguous(), f
        return mix_rows(mixing_matrix(x, k, self.include_self), x), f


def mix_rows(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``W·X`` for a row-stochastic ``w[m, n]`` and ``x[n, d]``, finite for finite ``x``.

    On a CPU it is computed on blocks of columns, each product written while the block
    of ``x`` is in cache: `BLOCK` columns on one thread (about 1.4× faster than one
    ``[m, n]×[n, d]`` product), `THREADED_MIX_COLUMNS` with several (wide enough that the
    threads' barriers do not dominate; about 2× faster than one product at n = 25,
    d = 500,000 on 2 threads); on a GPU as one product. A block whose product overflows
    (rows near the dtype's limit; 1/k rounded up makes the weights sum above 1) is redone
    in float64 and clamped to the dtype's finite range.
    """
    d = x.shape[1]
    out = empty_like_rows(x) if w.shape[0] == x.shape[0] else x.new_empty(w.shape[0], d)
    wx = w.to(x.dtype)
    if x.device.type != "cpu":
        width = max(d, 1)
    else:
        width = BLOCK if torch.get_num_threads() == 1 else THREADED_MIX_COLUMNS
    for s in range(0, d, width):
        block = torch.mm(wx, x[:, s:s + width], out=out[:, s:s + width])
        if not bool(torch.isfinite(block.sum())) and not bool(torch.isfinite(block).all()):
            big = torch.finfo(x.dtype).max
            block.copy_((w.double() @ x[:, s:s + width].double()).clamp_(-big, big))
    return out
