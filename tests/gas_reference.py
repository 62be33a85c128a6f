"""Plain float64 references of Krum, Multi-Krum, Bulyan and GAS's chunk scores for the
tests of the fast and native GAS paths (Python lists, ``math.fsum``; no torch kernels)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def sq_dist(a: list[float], b: list[float]) -> float:
    return math.fsum((u - v) ** 2 for u, v in zip(a, b))


def krum_pick(rows: list[list[float]], remaining: list[int], f: int) -> list[float]:
    """Krum scores (k = r − f − 2 nearest others, clamped to [1, r − 1]) of the remaining rows."""
    r = len(remaining)
    k = min(max(r - f - 2, 1), r - 1)
    return [math.fsum(sorted(sq_dist(rows[i], rows[j]) for j in remaining if j != i)[:k]) for i in remaining]


def lowest(scores: list[float], k: int) -> list[int]:
    """Positions of the k lowest scores, ties to the lowest position."""
    return sorted(range(len(scores)), key=lambda i: (scores[i], i))[:k]


def mean_rows(rows: list[list[float]], idx: list[int]) -> list[float]:
    return [math.fsum(rows[i][j] for i in idx) / len(idx) for j in range(len(rows[0]))]


def ref_krum(rows: list[list[float]], f: int) -> list[float]:
    return list(rows[lowest(krum_pick(rows, list(range(len(rows))), f), 1)[0]])


def ref_multikrum(rows: list[list[float]], f: int) -> list[float]:
    return mean_rows(rows, lowest(krum_pick(rows, list(range(len(rows))), f), len(rows) - f))


def window_mean(values: list[float], beta: int, lower: bool = False) -> float:
    """Mean of the β values closest to the median of the sorted ``values`` (ties: the lower)."""
    t = len(values)
    c = (t - 1) // 2
    med = values[c] if t % 2 or lower else (values[c] + values[c + 1]) / 2
    picked = sorted(range(t), key=lambda i: (abs(values[i] - med), values[i], i))[:beta]
    return math.fsum(values[i] for i in picked) / beta


def ref_bulyan(rows: list[list[float]], f: int) -> list[float]:
    """θ = n − 2f rows by iterative Krum, then per coordinate the mean of the β = θ − 2f values
    closest to the (midpoint) median, ties in distance to the lower value."""
    remaining, chosen = list(range(len(rows))), []
    for _ in range(len(rows) - 2 * f):
        chosen.append(remaining.pop(lowest(krum_pick(rows, remaining, f), 1)[0]))
    beta = len(chosen) - 2 * f
    return [window_mean(sorted(rows[i][j] for i in chosen), beta) for j in range(len(rows[0]))]


BASES: dict[str, Callable[[list[list[float]], int], list[float]]] = {
    "bulyan": ref_bulyan, "krum": ref_krum, "multikrum": ref_multikrum,
}


def chunk_scores(x: torch.Tensor, perm: list[int], size: int, base: str, f: int,
                 full_only: bool = False) -> list[float]:
    """Σ_q ‖x_i[P_q] − BASE(x[:, P_q])‖ over the chunks P_q of ``size`` positions of ``perm``
    (only the full ones if ``full_only``), in float64."""
    rows = x.double().tolist()
    n, d = len(rows), len(rows[0])
    scores = [0.0] * n
    for s in range(0, d // size * size if full_only else d, size):
        chunk = [[row[j] for j in perm[s : s + size]] for row in rows]
        a = BASES[base](chunk, f)
        for i in range(n):
            scores[i] += math.sqrt(sq_dist(chunk[i], a))
    return scores
