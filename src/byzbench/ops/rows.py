"""Row-level helpers shared by the aggregators: overflow-safe weighted means of rows,
masks of selected rows, safe norms and buffers.

Rows are the clients' vectors: ``x[n, d]``, or a batch ``x[..., n, d]`` (e.g. the m
coordinate chunks of GAS as ``[m, n, s]``), with per-row weights ``w[..., n]``. A
convex combination of finite rows is finite, but its fast product can still overflow
for rows near the dtype's limit (±1e38 in float32): those results are redone in float64
on rows scaled to unit maximum and clamped to the dtype's finite range, so finite inputs
always give finite outputs.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: Floor under every norm or weight sum that divides.
EPS = 1e-12
#: Columns per block when a computation streams over the coordinates: an ``n × BLOCK``
#: temporary stays in cache, so no ``n × d`` temporary is ever written to memory.
BLOCK = 16384
#: CPU buffers at least this large are allocated with transparent-huge-page advice.
HUGE_PAGE_BYTES = 4 << 20

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
                 torch.int64: np.int64, torch.int32: np.int32}


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype block computations run in: the input's, or float32 for 16-bit floats."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def empty_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor; a large CPU one comes from NumPy, which advises the kernel to
    back it with transparent huge pages, so that filling it costs a fraction of the page
    faults of PyTorch's own CPU allocator. The tensor is an ordinary one."""
    np_dtype = _NUMPY_DTYPES.get(dtype)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if torch.device(device).type != "cpu" or np_dtype is None or nbytes < HUGE_PAGE_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.from_numpy(np.empty(shape, dtype=np_dtype))


# --------------------------------------------------------------------------- weighted means


def weighted_rows(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``Σ_i w_i x_i`` in ``x``'s dtype for weights ``w ≥ 0`` summing to at most 1.

    ``x[n, d]`` with ``w[n]`` gives ``[d]``; a batch ``x[..., n, d]`` with ``w[..., n]``
    gives ``[..., d]``. One matrix product (no ``n × d`` temporary); results that overflow
    are redone in float64 on rows scaled to unit maximum, then clamped to the dtype's
    finite range.
    """
    wd = w.to(device=x.device, dtype=x.dtype)
    out = wd @ x if x.dim() == 2 else (wd.unsqueeze(-2) @ x).squeeze(-2)
    if bool(torch.isfinite(out.sum())):  # a finite sum has no ±Inf/NaN entry
        return out
    bad = ~torch.isfinite(out).all(dim=-1)
    if x.dim() == 2:
        return _wide_weighted(x, w)
    out[bad] = _wide_weighted(x[bad], w.to(x.device)[bad])
    return out


def _wide_weighted(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`weighted_rows` in float64 on rows scaled to unit maximum, clamped to the dtype's range."""
    y = x.to(torch.float64)
    scale = y.abs().amax(dim=(-2, -1), keepdim=True).clamp_min_(1e-300)
    w64 = w.to(device=x.device, dtype=torch.float64)
    exact = (w64.unsqueeze(-2) @ (y / scale)).squeeze(-2) * scale.squeeze(-1)
    big = torch.finfo(x.dtype).max
    return exact.clamp_(-big, big).to(x.dtype)


def uniform_weights(mask: torch.Tensor) -> torch.Tensor:
    """float64 weights 1/|S| on the rows of the boolean mask ``S`` (last dim) and 0 elsewhere."""
    w = mask.to(torch.float64)
    return w / w.sum(dim=-1, keepdim=True).clamp_min(1.0)


def column_sum(x: torch.Tensor) -> torch.Tensor:
    """``Σ_i x_i`` of ``x[n, d]`` as the matrix-vector product ``1ᵀX``: on a CPU, BLAS
    streams the rows about twice as fast as ``sum(dim=0)``. NaN and ±Inf propagate and a
    sum beyond the dtype's range overflows, as with ``sum``."""
    return x.new_ones(x.shape[0]) @ x


def selection_mean(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of the rows of ``x[n, d]`` flagged by the boolean mask ``keep`` (at least one).

    Their sum (one matrix-vector product) divided by their count, like ``x[keep].mean(0)``
    but without copying the rows; `weighted_rows` takes over if the sum overflows.
    """
    count = max(int(keep.sum()), 1)
    total = keep.to(device=x.device, dtype=x.dtype) @ x
    if bool(torch.isfinite(total.sum())):
        return total.div_(count)
    return weighted_rows(x, keep.to(torch.float64) / count)


# --------------------------------------------------------------------------- masks and norms


def mask_of(indices: torch.Tensor | list[int], n: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean mask over the last dim, True at ``indices`` (``[..., k]`` → ``[..., n]``)."""
    idx = torch.as_tensor(indices, dtype=torch.long, device=device)
    if idx.dim() == 0:
        idx = idx.view(1)
    mask = torch.zeros(*idx.shape[:-1], n, dtype=torch.bool, device=idx.device)
    return mask.scatter_(-1, idx, True)


def stable_smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` smallest ``scores`` along the last dim; ties (and NaN,
    counted as +∞) go to the lowest index."""
    order = torch.sort(torch.nan_to_num(scores, nan=math.inf, posinf=math.inf, neginf=-math.inf), dim=-1, stable=True).indices
    return mask_of(order[..., :k], scores.shape[-1])


def safe_norms(u: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """ℓ2 norms along ``dim`` as float64; where the dtype overflows, recomputed on values
    divided by their largest magnitude (+∞ only beyond float64, never NaN)."""
    out = torch.linalg.vector_norm(u, dim=dim).to(torch.float64)
    if bool(torch.isfinite(out).all()):
        return out
    y = u.to(torch.float64)
    scale = y.abs().amax(dim=dim, keepdim=True).clamp_min_(1e-300)
    wide = torch.linalg.vector_norm(y / scale, dim=dim) * scale.squeeze(dim)
    return torch.where(torch.isfinite(out), out, wide)


__all__ = [
    "BLOCK",
    "EPS",
    "HUGE_PAGE_BYTES",
    "empty_buffer",
    "mask_of",
    "safe_norms",
    "selection_mean",
    "stable_smallest",
    "uniform_weights",
    "weighted_rows",
    "work_dtype",
]
