"""Centred Gram matrices of rows, streamed over the coordinates and overflow-safe.

Covariance-based rules (SMEA, CAF) work in the span of the centred rows: everything
they need about ``x[n, d]`` is the n × n Gram matrix of the rows minus a centre, so no
d × d matrix is ever formed.
"""

from __future__ import annotations

import math

import torch

from byzbench.ops.onednn import row_gram
from byzbench.ops.rows import BLOCK, work_dtype


def centre_row(x: torch.Tensor) -> torch.Tensor:
    """A row of ``x`` to centre on: the one of median norm (lowest index on ties).

    Any centre gives the same covariance spectra; a data row keeps the centred values at
    the scale of the spread (no cancellation), and the median-norm row is an honest one
    whenever fewer than half the rows are huge.
    """
    norms = torch.nan_to_num(torch.linalg.vector_norm(x, dim=1).double(), nan=math.inf, posinf=math.inf)
    order = torch.sort(norms, stable=True).indices
    return x[order[(x.shape[0] - 1) // 2]]


def centred_gram(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(K, c, s)``: K = float64 ``[n, n]`` Gram matrix of the rows (x_i − c)/s.

    ``c`` is `centre_row`; ``s`` is 1 unless the Gram matrix overflows in `work_dtype`
    (hostile rows of ±1e38), in which case it is recomputed in float64 on rows scaled to
    unit maximum entry. Streamed over column blocks: no ``n × d`` temporary.
    """
    c = centre_row(x)
    k = _blocked_gram(x, c, work_dtype(x.dtype), 1.0)
    if bool(torch.isfinite(k).all()):
        return k, c, 1.0
    scale = max(_max_abs_diff(x, c), 1e-300)
    return _blocked_gram(x, c, torch.float64, scale), c, scale


def _blocked_gram(x: torch.Tensor, c: torch.Tensor, dtype: torch.dtype, scale: float) -> torch.Tensor:
    n, d = x.shape
    k = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for s in range(0, d, BLOCK):
        y = x[:, s:s + BLOCK].to(dtype) - c[s:s + BLOCK].to(dtype)
        if scale != 1.0:
            y = y / scale
        k += row_gram(y).to(torch.float64)
    return k


def _max_abs_diff(x: torch.Tensor, c: torch.Tensor) -> float:
    best = 0.0
    for s in range(0, x.shape[1], BLOCK):
        diff = x[:, s:s + BLOCK].double() - c[s:s + BLOCK].double()
        best = max(best, float(diff.abs().max()))
    return best


def centre_gram(g: torch.Tensor) -> torch.Tensor:
    """Double-centre a batch of Gram matrices ``[..., k, k]`` (Gram of rows minus their mean)."""
    r = g.mean(dim=-1, keepdim=True)
    return g - r - r.transpose(-1, -2) + r.mean(dim=-2, keepdim=True)


def weighted_centred_gram(gram: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Gram matrix of the rows minus their w-weighted mean: (I − 1wᵀ) K (I − w1ᵀ)."""
    kw = gram @ w
    return gram - kw.unsqueeze(1) - kw.unsqueeze(0) + w @ kw


__all__ = ["centre_gram", "centre_row", "centred_gram", "weighted_centred_gram"]
