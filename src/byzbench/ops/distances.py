"""Distances between rows, overflow-safe: pairwise (ℓ2 by the Gram matrix, any ℓp) and
from every row to one point.

Distance-based rules (Krum, Bulyan, MDA, NNM, MoNNA, SMEA, …) need all n² squared
distances ‖x_i − x_j‖². Through the Gram matrix G = X Xᵀ they cost one matrix product,

    D_ij = G_ii + G_jj − 2 G_ij,

which for n ≪ d is far faster than n² row differences. Every pairwise function also takes
a batch ``[..., n, d]`` of matrices (e.g. the m coordinate chunks of GAS as ``[m, n, s]``)
and returns ``[..., n, n]``, treating each matrix on its own. Hazards handled:

- **symmetry:** a matrix product may round G_ij and G_ji differently; G is symmetrised
  first, so D is exactly symmetric and an exact tie (two mutual nearest neighbours)
  stays a tie;
- **cancellation:** D_ij can come out slightly negative for near-identical rows; it is
  clamped at 0 and the diagonal is set to exactly 0;
- **overflow:** a hostile but finite row (entries ±1e38 in float32) overflows G to ±∞
  and ∞ − ∞ to NaN. The matrices whose result is not finite are recomputed in float64
  on rows divided by their largest magnitude, then scaled back, so they stay ordered and
  NaN-free; pairs beyond even float64 come out as +∞ (identical rows still at 0).

Selection rules only need distances up to a common factor: `distance_matrix` returns
them always finite, scaled down by a per-matrix factor where they would overflow.
"""

from __future__ import annotations

import math

import torch

from byzbench.ops.onednn import row_gram, use_onednn
from byzbench.ops.rows import BLOCK, safe_norms, work_dtype

#: Coordinates per block of the ℓp pair computation (p ≠ 2).
LP_BLOCK = 2048
#: Most pair differences held at once by the ℓp computation (bounds its memory).
LP_ELEMENTS = 1 << 20
#: Width of the column blocks of the Gram product (see `gram`).
GRAM_COLUMNS = 16
#: Most elements of one block of chunk differences in `chunk_distances`.
SCORE_ELEMENTS = 1 << 20


# --------------------------------------------------------------------------- ℓ2 by the Gram matrix


def gram(x: torch.Tensor) -> torch.Tensor:
    """``[..., n, n]`` Gram matrices X Xᵀ of ``x[..., n, d]``, exactly symmetric.

    Only the lower block triangle is multiplied, in column blocks of `GRAM_COLUMNS` (each
    block of columns against the rows at and below it, mirrored above): about half the
    work of the full product, and block widths the CPU's matrix kernels handle well. The
    result is then symmetrised, (G + Gᵀ)/2, which only changes the diagonal blocks, where
    a matrix product may round G_ij and G_ji differently. Large 2-D float32 inputs on a
    CPU take oneDNN's full product instead (`byzbench.ops.onednn.row_gram`: about 2×
    faster than this half product through MKL on AMD processors), symmetrised the same way.
    """
    n = x.shape[-2]
    if use_onednn(x):
        return symmetrised(row_gram(x))
    if n <= GRAM_COLUMNS:
        return symmetrised(x @ x.mT)
    g = torch.empty(*x.shape[:-2], n, n, dtype=x.dtype, device=x.device)
    for c in range(0, n, GRAM_COLUMNS):
        e = c + GRAM_COLUMNS
        block = x[..., c:, :] @ x[..., c:e, :].mT  # rows c.., columns c..e
        g[..., c:, c:e] = block
        g[..., c:e, e:] = block[..., GRAM_COLUMNS:, :].mT
    return symmetrised(g)


def symmetrised(g: torch.Tensor) -> torch.Tensor:
    """``(g + gᵀ) / 2`` over the last two dims: exactly symmetric, equal to g where g was."""
    return (g + g.mT).mul_(0.5)


def gram_sq_dists(x: torch.Tensor) -> torch.Tensor:
    """``[..., n, n]`` squared ℓ2 distances via the Gram matrix, in ``x``'s dtype, exactly
    symmetric with a zero diagonal (may overflow to ±∞/NaN for huge rows)."""
    g = gram(x)
    sq = g.diagonal(dim1=-2, dim2=-1)
    d = (sq.unsqueeze(-1) + sq.unsqueeze(-2)).sub_(g, alpha=2.0).clamp_min_(0.0)
    d.diagonal(dim1=-2, dim2=-1).zero_()
    return d


def pairwise_sq_dists(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[..., n, n]`` matrix of ‖x_i − x_j‖², finite-safe (see module docstring).

    Computed in `work_dtype` (16-bit inputs in float32) and returned in ``dtype``
    (default: float64 if some matrix needed the fallback, else the work dtype). NaN never
    appears for finite inputs: pairs beyond float64 range are +∞.
    """
    if x.dim() < 2:
        raise ValueError(f"expected a [..., n, d] tensor, got shape {tuple(x.shape)}")
    d = gram_sq_dists(x.to(work_dtype(x.dtype)))
    bad = _bad_matrices(d)
    if bad is not None:
        d = d.to(torch.float64)
        d[bad] = _sq_dists_float64(x[bad])
    return d if dtype is None else d.to(dtype)


def pairwise_dists(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[..., n, n]`` matrix of plain ℓ2 distances ‖x_i − x_j‖ (square root of the above)."""
    return pairwise_sq_dists(x, dtype).sqrt()


def _bad_matrices(d: torch.Tensor) -> torch.Tensor | None:
    """Boolean mask over the leading dims of the matrices holding a non-finite entry, or
    None when all are finite (one reduction in the common case)."""
    if bool(torch.isfinite(d.sum())):
        return None
    bad = ~torch.isfinite(d).flatten(-2).all(dim=-1)
    return bad if bool(bad.any()) else None


def _sq_dists_float64(x: torch.Tensor) -> torch.Tensor:
    """float64 squared distances of ``x[..., n, d]``, each matrix computed on its rows divided
    by their largest magnitude and scaled back (+∞ beyond float64, 0 for equal rows)."""
    y = x.to(torch.float64)
    scale = _max_abs(y)
    d = gram_sq_dists(y / scale)
    # Two multiplications: scale² alone overflows for rows near 1e300, and ∞ · 0 is NaN.
    return d.mul_(scale).mul_(scale)


def _max_abs(y: torch.Tensor) -> torch.Tensor:
    """Largest |entry| of each matrix of ``y[..., n, d]`` as ``[..., 1, 1]`` (floored at 1e-300)."""
    return y.abs().amax(dim=(-2, -1), keepdim=True).clamp_min_(1e-300)


# --------------------------------------------------------------------------- ℓp pairs


def pairwise_lp_dists(x: torch.Tensor, p: float) -> torch.Tensor:
    """``[..., n, n]`` float64 ℓp distances ‖x_i − x_j‖_p (p ≥ 1 or ∞), exactly symmetric.

    p = 2 uses the Gram matrix; other norms the blocked pair computation of
    `scaled_lp_dists`. Pairs beyond float64 range are +∞.
    """
    if p == 2:
        return pairwise_sq_dists(x, torch.float64).sqrt_()
    d, scale = scaled_lp_dists(x, p)
    return d.mul_(scale)


def scaled_lp_dists(x: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D, s)``: float64 ``[..., n, n]`` ℓp distances divided by s (``[..., 1, 1]``), all finite.

    Each pair i < j is computed once, over blocks of `LP_BLOCK` coordinates, with a running
    scaled sum: per pair the largest |x_ik − x_jk| so far, M, and Σ (|x_ik − x_jk| / M)^p,
    so no power overflows or loses the dominant terms; integer p uses repeated squaring
    instead of ``pow``. Much faster than ``torch.cdist`` for p ∉ {1, 2}, which calls ``pow``
    for every entry of all n² pairs. s = 1 unless the differences overflow the dtype:
    those matrices are redone in float64 on rows divided by their largest magnitude s.
    """
    n = x.shape[-2]
    batch = x.shape[:-2]
    flat = x.reshape(-1, n, x.shape[-1])
    iu = torch.triu_indices(n, n, 1, device=x.device)
    vals = _lp_pairs(flat, iu, p, work_dtype(x.dtype))
    scale = torch.ones(flat.shape[0], 1, dtype=torch.float64, device=x.device)
    bad = ~torch.isfinite(vals).all(dim=1)
    if bool(bad.any()):
        y = flat[bad].to(torch.float64)
        s = _max_abs(y)
        vals[bad] = _lp_pairs(y / s, iu, p, torch.float64)
        scale[bad] = s.view(-1, 1)
    d = torch.zeros(flat.shape[0], n, n, dtype=torch.float64, device=x.device)
    d[:, iu[0], iu[1]] = vals
    d = d + d.mT
    return d.view(*batch, n, n), scale.view(*batch, 1, 1)


def _lp_pairs(x: torch.Tensor, iu: torch.Tensor, p: float, dtype: torch.dtype) -> torch.Tensor:
    """``[B, P]`` float64 ‖x_bi − x_bj‖_p for the pairs (iu[0], iu[1]) of each matrix x_b,
    in groups of matrices and blocks of columns that bound the temporaries."""
    b, _, d = x.shape
    pairs = iu.shape[1]
    out = torch.zeros(b, pairs, dtype=torch.float64, device=x.device)
    cols = min(LP_BLOCK, max(d, 1))
    group = max(1, LP_ELEMENTS // max(pairs * cols, 1))
    for g in range(0, b, group):
        out[g:g + group] = _lp_group(x[g:g + group], iu, p, dtype, cols)
    return out


def _lp_group(x: torch.Tensor, iu: torch.Tensor, p: float, dtype: torch.dtype, cols: int) -> torch.Tensor:
    top = torch.zeros(x.shape[0], iu.shape[1], dtype=torch.float64, device=x.device)
    acc = torch.zeros_like(top)
    tiny = torch.finfo(dtype).tiny
    for lo in range(0, x.shape[-1], cols):
        xs = x[..., lo:lo + cols].to(dtype)
        diff = xs.index_select(1, iu[0]).sub_(xs.index_select(1, iu[1])).abs_()
        m = diff.amax(dim=-1)
        m64 = m.to(torch.float64)
        if p == math.inf:
            top = torch.maximum(top, m64)
            continue
        block = _power_sum(diff.div_(m.clamp_min(tiny).unsqueeze(-1)), p)
        new_top = torch.maximum(top, m64)
        safe = new_top.clamp_min(1e-300)
        acc = acc * (top / safe) ** p + block * (m64 / safe) ** p
        top = new_top
    return top if p == math.inf else top * acc ** (1.0 / p)


def _power_sum(v: torch.Tensor, p: float) -> torch.Tensor:
    """Sums of v^p over the last dim, in float64 (v ≥ 0 is overwritten); repeated squaring
    for integer p."""
    if p == 1:
        return v.sum(dim=-1, dtype=torch.float64)
    if not float(p).is_integer() or p > 64:
        return v.pow_(p).sum(dim=-1, dtype=torch.float64)
    k, result = int(p), None
    while k > 1:
        if k & 1:
            result = v.clone() if result is None else result.mul_(v)
        v = v.mul_(v)
        k >>= 1
    out = v if result is None else result.mul_(v)
    return out.sum(dim=-1, dtype=torch.float64)


# --------------------------------------------------------------------------- selection matrices


def scaled_sq_dists(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D, s)``: float64 squared ℓ2 distances of the rows of each matrix of ``x[..., n, d]``
    divided by s², all finite; s (``[..., 1, 1]``) is 1 unless a matrix's distances overflow
    even float64 (rows near the float64 limit): its rows are then divided by their largest
    magnitude s first. Orderings and argmins are unaffected.
    """
    d = pairwise_sq_dists(x, torch.float64)
    scale = torch.ones(*x.shape[:-2], 1, 1, dtype=torch.float64, device=x.device)
    bad = _bad_matrices(d)
    if bad is not None:
        y = x[bad].to(torch.float64)
        s = _max_abs(y)
        d[bad] = pairwise_sq_dists(y / s, torch.float64)
        scale[bad] = s
    return d, scale


def distance_matrix(x: torch.Tensor, p: float = 2.0, squared: bool = True) -> torch.Tensor:
    """``[..., n, n]`` float64 matrices of ‖x_i − x_j‖_p (squared if ``squared``), each up to
    a positive factor.

    The factor is 1 except for matrices beyond float64 range (ℓ2) or beyond the input's
    dtype (other norms), which are computed on rescaled rows so that they stay finite;
    orderings and argmins are the same. ℓ2 comes from the Gram matrix, other norms from
    `scaled_lp_dists`.
    """
    if p == 2:
        d, _ = scaled_sq_dists(x)
        return d if squared else d.sqrt_()
    d, _ = scaled_lp_dists(x, p)
    return d.square_() if squared else d


def hull_dists(dist: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """‖z − x_i‖ for z = Σ_j w_j x_j (Σ w = 1), from the squared distances D alone.

    ‖z − x_i‖² = (D w)_i − ½ wᵀ D w, an identity that needs no n × d work and depends only
    on differences of rows (no cancellation against large row norms). Batched: ``dist``
    ``[..., n, n]`` and ``w`` ``[..., n]`` give ``[..., n]``.
    """
    dw = (dist @ w.unsqueeze(-1)).squeeze(-1)
    return (dw - 0.5 * (w * dw).sum(dim=-1, keepdim=True)).clamp_min_(0.0).sqrt_()


# --------------------------------------------------------------------------- distances to one point


def sq_dists_to(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``[n]`` float64 squared distances ‖x_i − v‖², streamed over column blocks.

    Computed directly (no Gram-matrix cancellation) in `work_dtype`; if that overflows
    (hostile rows of ±1e38), redone in float64, where 1e38² · d still fits (beyond: +∞).
    """
    out = _blocked_sq_dists(x, v, work_dtype(x.dtype))
    if not bool(torch.isfinite(out).all()):
        out = _blocked_sq_dists(x, v, torch.float64)
    return out


def dists_to(x: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
    """``[n]`` float64 distances ‖x_i − v‖ (v = None: the origin), finite for finite inputs.

    `sq_dists_to`'s square root; where that overflows even float64, recomputed on rows
    and v divided by their largest magnitude, then scaled back.
    """
    if v is None:
        v = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    out = sq_dists_to(x, v).sqrt_()
    if bool(torch.isfinite(out).all()):
        return out
    y, z = x.to(torch.float64), v.to(device=x.device, dtype=torch.float64)
    scale = max(float(y.abs().amax()), float(z.abs().amax()), 1e-300)
    return _blocked_sq_dists(y / scale, z / scale, torch.float64).sqrt_().mul_(scale)


def chunk_distances(x3: torch.Tensor, a3: torch.Tensor) -> torch.Tensor:
    """``[m, n]`` float64 ℓ2 distances ‖x3[q, i] − a3[q]‖ for ``x3[m, n, s]`` and ``a3[m, s]``,
    over groups of chunks whose differences fill one reused buffer in cache (overflow-safe)."""
    m, n, s = x3.shape
    a3 = a3.to(x3.dtype)
    group = max(1, SCORE_ELEMENTS // max(n * s, 1))
    out = torch.empty(m, n, dtype=torch.float64, device=x3.device)
    buf = torch.empty(min(group, m), n, s, dtype=x3.dtype, device=x3.device)
    for q in range(0, m, group):
        diff = torch.sub(x3[q : q + group], a3[q : q + group].unsqueeze(1), out=buf[: min(group, m - q)])
        out[q : q + group] = safe_norms(diff, dim=2)
    return out


def _blocked_sq_dists(x: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    n, d = x.shape
    out = torch.zeros(n, dtype=torch.float64, device=x.device)
    for s in range(0, d, BLOCK):
        diff = x[:, s:s + BLOCK].to(dtype) - v[s:s + BLOCK].to(device=x.device, dtype=dtype)
        out += diff.square_().sum(dim=1).to(torch.float64)  # cascade sum in cache, float64 across blocks
    return out


__all__ = [
    "LP_BLOCK",
    "chunk_distances",
    "distance_matrix",
    "dists_to",
    "gram",
    "gram_sq_dists",
    "hull_dists",
    "pairwise_dists",
    "pairwise_lp_dists",
    "pairwise_sq_dists",
    "scaled_lp_dists",
    "scaled_sq_dists",
    "sq_dists_to",
]
