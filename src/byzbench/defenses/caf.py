"""CAF (covariance-bound agnostic filter)."""

from __future__ import annotations

import math

import torch

from byzbench.checks import check_choice, check_int
from byzbench.defenses.base import AGGREGATORS, AggregationContext, Aggregator
from byzbench.ops.gram import centred_gram, weighted_centred_gram
from byzbench.ops.rng import LocalGenerator
from byzbench.ops.rows import BLOCK, selection_mean, weighted_rows

TAU_MAX_MODES = ("active", "all")
#: Iteration cap of ``tau_max="all"``, in multiples of n (that mode need not zero a row per step).
ALL_MODE_CAP = 100


@AGGREGATORS.register("caf", aliases=("covariance_filter",))
class CAF(Aggregator):
    """Covariance-bound agnostic filter (Allouah, Guerraoui, Stephan, ICML 2025).

    From "Towards Trustworthy Federated Learning with Untrusted Participants" (CafCor,
    Algorithm 2). Start from weights c_i = 1; while Σ_i c_i > n − 2f:

        μ_c = Σ_i c_i x_i / Σ_i c_i,   Σ_c = Σ_i c_i (x_i − μ_c)(x_i − μ_c)ᵀ / Σ_i c_i
        (λ, v) = top eigenpair of Σ_c,  τ_i = ((x_i − μ_c)ᵀ v)²
        c_i ← c_i (1 − τ_i / max_j τ_j)

    and return the μ_c of the smallest λ met (first on ties). The row of largest τ loses
    all its weight, so there are at most n steps. f = 0 returns the mean; if Σ_c
    vanishes (all weighted rows equal) the loop stops with λ = 0.

    Exact and cheap: Σ_c lives in the span of the centred rows, so everything is done on
    the n × n Gram matrix (one streamed O(n²d) product); the top eigenpair comes from
    ``torch.linalg.eigh`` of the n × n matrix D^{1/2} G D^{1/2} / Σc, and only the final
    weighted mean touches X again.

    Flags (reference differences): ``power_iters`` — 0 (default, the paper's exact top
    eigenvector) or k ≥ 1 power steps from a fresh random unit start drawn from
    ``ctx.generator``, with λ estimated as ‖Σ_c v‖, as LPD-EPFL ByzFL does with k = 1;
    ``tau_max`` — ``"active"`` (default: max over rows of positive weight, the filter of
    robust statistics) or ``"all"`` (max over all rows, as ByzFL; a zero-weight row may
    then hold the max, steps need not zero a row, so the loop is capped at 100·n steps;
    its many partial steps make the output discontinuous at near-ties: there, another row
    order or a shift of the inputs can change float64 rounding enough to flip a step).
    Requires n > 2f. Reports ``kept`` (rows of positive weight in the returned mean) and
    ``max_eigenvalue`` (its λ).
    """

    order_invariant = True

    def __init__(self, power_iters: int = 0, tau_max: str = "active", **common) -> None:
        super().__init__(**common)
        self.power_iters = check_int(power_iters, "power_iters", low=0)
        self.tau_max = check_choice(tau_max, "tau_max", TAU_MAX_MODES)
        self._rng = LocalGenerator()

    def reset(self) -> None:
        self._rng.reset()

    def aggregate(self, x: torch.Tensor, f: int, ctx: AggregationContext) -> torch.Tensor:
        n = x.shape[0]
        if f == 0:
            keep = torch.ones(n, dtype=torch.bool, device=x.device)
            ctx.diagnostics["kept"] = keep
            return selection_mean(x, keep)
        gram, centre, scale = centred_gram(x)
        best_lam, best_w = self._filter(x, f, gram, centre, scale, ctx)
        ctx.diagnostics["kept"] = best_w > 0
        ctx.diagnostics["max_eigenvalue"] = best_lam * scale * scale
        return weighted_rows(x, best_w)

    def _filter(self, x: torch.Tensor, f: int, gram: torch.Tensor, centre: torch.Tensor,
                scale: float, ctx: AggregationContext) -> tuple[float, torch.Tensor]:
        """The filter loop on the Gram matrix: (smallest λ, its normalised weights)."""
        n = gram.shape[0]
        c = torch.ones(n, dtype=torch.float64, device=gram.device)
        best_lam, best_w = math.inf, c / n
        cap = n if self.tau_max == "active" else ALL_MODE_CAP * n
        for _ in range(cap):
            total = float(c.sum())
            if total <= n - 2 * f:
                break
            w = c / total
            g = weighted_centred_gram(gram, w)
            lam, proj = self._top_direction(x, g, c, total, centre, scale, ctx)
            if lam < best_lam:
                best_lam, best_w = lam, w
            tau = proj.square()
            pool = tau[c > 0] if self.tau_max == "active" else tau
            t_max = float(pool.max()) if pool.numel() else 0.0
            if not t_max > 0.0:
                break  # the weighted rows coincide: Σ_c = 0
            c = (c * (1 - tau / t_max)).clamp_min_(0.0)
        return best_lam, best_w

    def _top_direction(self, x: torch.Tensor, g: torch.Tensor, c: torch.Tensor, total: float,
                       centre: torch.Tensor, scale: float, ctx: AggregationContext) -> tuple[float, torch.Tensor]:
        """(λ, projections (x_i − μ_c)ᵀ v) for the top eigenpair of Σ_c (exact or power steps)."""
        if self.power_iters:
            return self._power(x, g, c, total, centre, scale, ctx)
        root = c.sqrt()
        evals, evecs = torch.linalg.eigh(root.unsqueeze(1) * g * root.unsqueeze(0) / total)
        lam = float(evals[-1])
        if not lam > 0.0:
            return 0.0, torch.zeros_like(c)
        proj = (g @ (root * evecs[:, -1])) / math.sqrt(total * lam)
        return lam, proj

    def _power(self, x: torch.Tensor, g: torch.Tensor, c: torch.Tensor, total: float,
               centre: torch.Tensor, scale: float, ctx: AggregationContext) -> tuple[float, torch.Tensor]:
        """ByzFL's estimate: power steps v ← Σ_c v / ‖Σ_c v‖ from a random unit v, λ = ‖Σ_c v‖.

        Vectors after the first step lie in the span of the centred rows Y, so with
        v = Yᵀa only n-vectors are needed: Yv = G a and ‖Yᵀa‖² = aᵀ G a.
        """
        w = c / total
        proj = random_projections(x, centre, scale, self._rng.get(ctx))  # (x_i − centre)ᵀ v0
        proj = proj - w @ proj  # (x_i − μ_c)ᵀ v0
        lam = 0.0
        for _ in range(self.power_iters):
            a = c * proj / total  # Σ_c v = Yᵀ a
            norm = math.sqrt(max(float(a @ g @ a), 0.0))
            if not norm > 0.0:
                return 0.0, torch.zeros_like(c)
            lam, proj = norm, (g @ a) / norm
        return lam, proj


def random_projections(x: torch.Tensor, centre: torch.Tensor, scale: float,
                       gen: torch.Generator) -> torch.Tensor:
    """``[n]`` float64 projections (x_i − centre)ᵀ v / scale on a random unit vector v."""
    d = x.shape[1]
    v = torch.randn(d, generator=gen, device=gen.device, dtype=torch.float64).to(x.device)
    v /= torch.linalg.vector_norm(v).clamp_min(1e-300)
    out = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for s in range(0, d, BLOCK):
        y = x[:, s : s + BLOCK].double() - centre[s : s + BLOCK].double()
        out += (y / scale) @ v[s : s + BLOCK]
    return out
