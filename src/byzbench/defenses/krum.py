"""Krum and generalised ℓp-Krum, with the Krum scores and the repeated Krum selection
shared by Multi-Krum and Bulyan.

Every function here works on one ``[n, n]`` distance matrix or on a batch ``[m, n, n]``
of them (one per coordinate chunk, as GAS needs), the batch in one pass of tensor
operations.
"""

from __future__ import annotations

import math

import torch

from byzbench.checks import check_bool, check_choice, check_extended_real
from byzbench.defenses.base import AGGREGATORS, AggregationContext, Aggregator
from byzbench.ops.distances import distance_matrix, hull_dists, pairwise_sq_dists
from byzbench.ops.rows import mask_of
from byzbench.ops.sortnet import ascending_sum, smallest_sorted, sum_of_ranks

#: Neighbour-count conventions: k = n − f − offset (ALGORITHMS.md §2.5, §8.4).
NEIGHBOR_OFFSETS = {"n-f-2": 2, "n-f-1": 1, "n-f-3": 3}


def neighbor_count(n: int, f: int, offset: int) -> int:
    """k = n − f − offset, clamped to [1, n − 1] (at least the nearest other row)."""
    return min(max(n - f - offset, 1), max(n - 1, 0))


def krum_scores(dist: torch.Tensor, f: int, offset: int = 2) -> torch.Tensor:
    """Krum score of each row: the sum of its k = n − f − offset smallest distances to others.

    ``dist`` is a ``[..., n, n]`` symmetric distance matrix (squared or not, as the caller
    chose); a row's own zero distance is excluded; duplicate rows count with distance 0.
    The k values are summed in ascending order (`byzbench.ops.sortnet.sum_of_ranks` over
    the rows of all matrices at once), so a score does not depend on the batch.
    """
    n = dist.shape[-1]
    k = neighbor_count(n, f, offset)
    if k == 0:
        return torch.zeros(dist.shape[:-1], dtype=dist.dtype, device=dist.device)
    return sum_of_ranks(others_by_wire(dist), 0, k).view(dist.shape[:-1])


def others_by_wire(dist: torch.Tensor) -> torch.Tensor:
    """``[n, B·n]``: column (b, i) holds row i of matrix b of the symmetric ``dist[..., n, n]``
    with +∞ on the diagonal, so that column-wise order statistics rank each row's distances
    to the others (the layout of `byzbench.ops.sortnet`)."""
    n = dist.shape[-1]
    flat = dist.reshape(-1, n, n)
    wires = torch.empty(n, flat.shape[0], n, dtype=dist.dtype, device=dist.device)
    wires.copy_(flat.transpose(0, 1))  # wire j, column (b, i): D[b, j, i] = D[b, i, j]
    wires.diagonal(dim1=0, dim2=2).fill_(math.inf)
    return wires.view(n, -1)


def iterative_krum(dist: torch.Tensor, f: int, m: int, offset: int = 2) -> torch.Tensor:
    """``[..., m]`` indices of the rows chosen by applying Krum ``m`` times, removing each winner.

    Scores are recomputed on the remaining rows with k = r − f − offset neighbours (r the
    number remaining, the same in every matrix of a batch; k clamped to [1, r − 1]); ties
    go to the lowest index.

    Each row's distances to the others are sorted once (a sorting network over the rows
    of all matrices at once, `krum_scores`' layout), keeping only the L = max_t (k_t + t)
    smallest that step t can reach. Removing winner w then deletes the value D_iw from
    row i's sorted list (`drop_value`), so the list remains the sorted distances to the
    remaining rows, and a score is the sum of its first k entries, added in ascending
    order in float64 as `krum_scores` adds them: the scores equal those of `krum_scores`
    on the remaining rows. When every distance is exactly a float32 (distances of float32
    rows), the lists are kept in float32: the same values, half the memory traffic.
    """
    n = dist.shape[-1]
    ks = [neighbor_count(n - t, f, offset) for t in range(m)]
    depth = min(max((k + t for t, k in enumerate(ks)), default=0), n - 1)
    dist = narrowed(dist)
    wires = others_by_wire(dist)  # [wire j, (matrix b, row i)] = D[b, i, j], +∞ on the diagonal
    b = wires.shape[1] // max(n, 1)
    start = torch.arange(b, device=dist.device) * n
    srt = smallest_sorted(wires, depth) if depth else wires[:0]
    spare = torch.empty_like(srt)
    removed = torch.zeros(b, n, dtype=torch.bool, device=dist.device)
    chosen = []
    for step, k in enumerate(ks):
        scores = ascending_sum(srt, 0, k, torch.float64).view(b, n)
        w = scores.masked_fill_(removed, math.inf).argmin(dim=1)
        chosen.append(w)
        removed.view(-1)[start + w] = True
        if step + 1 < m and srt.shape[0] > 1:
            gone = dist.reshape(b * n, n).index_select(0, start + w).view(-1)  # D[b, i, w_b] by symmetry
            srt, spare = drop_value(srt, gone, spare[: srt.shape[0] - 1]), srt
    return torch.stack(chosen, dim=-1).view(*dist.shape[:-2], m)


def narrowed(dist: torch.Tensor) -> torch.Tensor:
    """``dist`` as float32 if that holds every float64 entry exactly, else unchanged."""
    if dist.dtype != torch.float64:
        return dist
    low = dist.to(torch.float32)
    return low if torch.equal(low.to(torch.float64), dist) else dist


def drop_value(srt: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out[L-1, C]``: each column c of the column-sorted ``srt[L, C]`` without the value
    ``v[c]`` (its first copy; a column whose entries all lie below v loses its last).

    new_t = s_t if s_t < v else s_{t+1}, computed without a branch as
    min(s_{t+1}, max(s_t, copysign(∞, s_t − v))): s_t − v is +0 or positive exactly when
    s_t ≥ v. min and max return one of their operands, so every entry is exact.
    """
    head = srt[:-1]
    torch.sub(head, v, out=out)
    torch.copysign(torch.tensor(math.inf, dtype=out.dtype, device=out.device), out, out=out)
    torch.maximum(head, out, out=out)
    return torch.minimum(srt[1:], out, out=out)


def best_rows(scores: torch.Tensor, m: int) -> torch.Tensor:
    """``[..., m]`` indices of the m lowest scores, best first; ties to the lowest index."""
    return torch.sort(scores, dim=-1, stable=True).indices[..., :m]


def chunk_rows(x3: torch.Tensor, idx: torch.Tensor, first: int = 0) -> torch.Tensor:
    """``[k, g, s]``: row ``idx[q, t]`` of chunk ``first + q`` of ``x3[m, n, s]``, as ``out[t, q]``
    (``idx`` is ``[g, k]``; g = m and first = 0 by default).

    Whole rows of s values are copied (one ``index_select`` on a flat view when ``x3`` is
    a transposed or plain contiguous layout, as GAS makes it).
    """
    m, n, s = x3.shape
    g, k = idx.shape
    q = torch.arange(first, first + g, device=x3.device)
    idx = idx.to(x3.device)
    if x3.transpose(0, 1).is_contiguous():
        flat, pos = x3.transpose(0, 1).reshape(n * m, s), idx.T * m + q
    elif x3.is_contiguous():
        flat, pos = x3.reshape(m * n, s), q * n + idx.T
    else:
        return x3[q.unsqueeze(0), idx.T]
    return flat.index_select(0, pos.reshape(-1)).view(k, g, s)


@AGGREGATORS.register("krum", aliases=("lp_krum", "lpkrum"))
class Krum(Aggregator):
    """Krum: the row closest to its n − f − 2 nearest others (Blanchard et al., NeurIPS 2017).

    Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent", NeurIPS 2017.

    s(i) = Σ_{j ∈ N_k(i)} ‖x_i − x_j‖²_p, N_k(i) the k = n − f − 2 rows nearest to x_i
    (itself excluded); AGG(X) = x_{i*}, i* = argmin_i s(i), ties to the lowest index.
    Requires n ≥ 2f + 3.

    Flags (ALGORITHMS.md §2.5, §2.16, §8.4):

    - ``neighbors``: ``"n-f-2"`` (paper, default), ``"n-f-1"`` (byzfl) or ``"n-f-3"``
      (the NDSS21 notebooks' effective count); k is clamped to [1, n − 1];
    - ``squared``: sum squared distances (paper, default) or plain ones (MixTailor's
      reference code, byzantine_skew's Bulyan);
    - ``p``: the ℓp norm, p ≥ 1 or ∞ (default 2). p ≠ 2 is the generalised ℓp-Krum of
      Ramezani-Kebrya, Tabrizian, Faghri, Popovski (MixTailor, TMLR 2022, Eq. 3), whose
      neighbourhoods and scores both use ℓp.

    For GAS, ``aggregate_chunks(x3[m, n, s], f, ctx)`` applies the rule to each of m
    chunks at once (batched Gram matrices and scores), and ``chunk_scores`` gives the ℓ2
    distances from every row of a chunk to the rule's output on it straight from those
    Gram matrices (ℓ2 only).
    """

    requirement = "n ≥ 2f + 3"

    def __init__(self, neighbors: str = "n-f-2", squared: bool = True, p: float = 2.0, **common) -> None:
        super().__init__(**common)
        self.neighbors = check_choice(neighbors, "neighbors", tuple(NEIGHBOR_OFFSETS))
        self.squared = check_bool(squared, "squared")
        self.p = check_extended_real(p, "p", low=1.0, high=math.inf)

    @property
    def offset(self) -> int:
        return NEIGHBOR_OFFSETS[self.neighbors]

    def feasible(self, n: int, f: int) -> bool:
        return n >= 2 * f + 3

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        """The ``[..., n, n]`` float64 distance matrices the scores are summed from."""
        return distance_matrix(x, self.p, self.squared)

    def scores(self, x: torch.Tensor, f: int) -> torch.Tensor:
        """The ``[..., n]`` float64 Krum scores of the rows of ``x[..., n, d]``."""
        return krum_scores(self.distances(x), f, self.offset)

    def aggregate(self, x: torch.Tensor, f: int, ctx: AggregationContext) -> torch.Tensor:
        i = int(self.scores(x, f).argmin())
        ctx.diagnostics["kept"] = mask_of([i], x.shape[0], x.device)
        return x[i].clone()

    def aggregate_chunks(self, x3: torch.Tensor, f: int, ctx: AggregationContext) -> torch.Tensor:
        """``[m, s]``: the rule on each chunk ``x3[q]`` of ``x3[m, n, s]``, batched."""
        winners = self.scores(x3, f).argmin(dim=-1, keepdim=True)
        return chunk_rows(x3, winners)[0]

    def output_weights(self, dist: torch.Tensor, f: int) -> torch.Tensor:
        """``[..., n]`` float64 convex weights w of the output Σ_i w_i x_i given the rule's
        distance matrices (Krum: one-hot on the winner)."""
        winners = krum_scores(dist, f, self.offset).argmin(dim=-1, keepdim=True)
        return mask_of(winners, dist.shape[-1]).to(dist.dtype)

    def chunk_scores(self, x3: torch.Tensor, f: int, ctx: AggregationContext) -> torch.Tensor | None:
        """``[m, n]`` float64 ℓ2 distances ‖x3[q, i] − a_q‖, a_q the rule's output on chunk
        ``x3[q]``, from the squared distance matrices alone: a_q = Σ_j w_j x3[q, j] is a
        convex combination of rows, so ‖x_i − a_q‖² = (D w)_i − ½ wᵀ D w (exactly D_iw for
        Krum's winner w). Their rounding is that of the Gram matrices (float32 Gram:
        relative error about 1e-6 · ‖x‖² / ‖x_i − a_q‖²). None when p ≠ 2 or a distance
        exceeds float64 (the caller then measures the distances itself)."""
        if self.p != 2:
            return None
        sq = pairwise_sq_dists(x3, torch.float64)
        if not bool(torch.isfinite(sq).all()):
            return None
        return hull_dists(sq, self.output_weights(sq if self.squared else sq.sqrt(), f))
