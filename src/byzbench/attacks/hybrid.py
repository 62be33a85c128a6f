"""Hybrid sparse attack (network-pruning-assisted hybrid Byzantines; ALGORITHMS.md §4.13)."""

from __future__ import annotations

import math

import torch

from byzbench.attacks.alie import ZMAX_MODES, alie_zmax, mean_std
from byzbench.attacks.base import ATTACKS, Attack, AttackEnv, AttackerView, broadcast_rows, saturate
from byzbench.attacks.perturbation import gamma_search
from byzbench.checks import check_bool, check_choice, check_ddof, check_int, check_real
from byzbench.errors import ParamError
from byzbench.pruning.force import PooledBatches, force_mask, pruning_clients
from byzbench.pruning.masks import POLICIES as MASK_POLICIES
from byzbench.pruning.masks import check_density

POLICIES = (*MASK_POLICIES, "force_plus")
Z1_MODES = ("fixed", "minsum")
SIGNS = ("inv_std", "inv_mean")
CAPS = (None, "iqr", "z_score", "gradient")
THRESHOLDS = ("min", "max")


@ATTACKS.register("hybrid", aliases=("hybrid_sparse", "sparse"))
class HybridSparse(Attack):
    """Hybrid sparse attack: g_b = μ − (z1(1−c) + z2·c) ⊙ σ on a pruning mask c (Özfatura et al., seed 004).

    Özfatura, Özfatura, Küpçü, Gündüz, "Aggressive or Imperceptible, or Both: Network
    Pruning Assisted Hybrid Byzantines in Federated Learning" (seed 004). μ, σ: the
    coordinate-wise mean and std (``std_ddof`` 1) of the honest rows the attacker sees
    (all honest rows when omniscient, the Byzantine clients' own rows under ``own``). The
    mask c ∈ {0,1}^d is drawn once per run in `bind` (``policy`` over the model's
    `ParamLayout`, δ = ``density`` the attacked fraction; `byzbench.pruning`) and reused
    every round: ``random``, ``random_plus``, ``layerwise``, ``layerwise_plus``,
    ``erk_plus`` (Evci et al., ICML 2020) or ``force_plus`` (FORCE, de Jorge et al.,
    ICLR 2021: saliency at θ₀, ``force_iters`` T = 100,
    ``force_batches`` 3 of ``force_batch_size`` 32 per client, on the honest clients' data
    when ``omniscient_pruning`` (default) else the Byzantine clients' (also when the
    environment states ``own`` knowledge, `prunes_with_honest_data`), last-FC cap
    ``fc_max`` = δ_FC^max, none by default). Default ``force_plus`` with δ = 5e−3, the
    paper's best family (its best row adds ``fc_max=0.25``).

    c = 1 coordinates are attacked aggressively with ``z2`` = 1.5, c = 0 ones stealthily
    with z1: ``z1_mode="fixed"`` uses ``z1`` (None: the z_max of ALIE, Baruch et al.,
    NeurIPS 2019, `alie_zmax` with
    ``zmax_mode``); ``"minsum"`` re-solves z1 every round by the Min-Sum γ search of
    Shejwalkar & Houmansadr (NDSS 2021) on the candidate μ − γ·σ⊙(1−c) − z2·σ⊙c
    (``gamma_init`` 10, ``tol`` 1e−5, threshold ``minsum_threshold`` "min"; ``z1`` must
    then be None). ``sparse_sign="inv_std"`` sends Δ = (…) ⊙ σ; ``"inv_mean"`` multiplies
    Δ by sign(μ) (every round; the reference uses all-ones in the first round).
    ``sparse_th`` caps σ on the mask coordinates before use (`cap_sigma`): None (default),
    ``"iqr"``, ``"z_score"`` or ``"gradient"``; §4.13 names these variants without
    defining them (UNSETTLED), the definitions are this library's reading of them.
    c ≡ 0 gives ALIE(z1), c ≡ 1 ALIE(z2). Diagnostics: ``z1``, ``z2``, ``mask_density``.
    """

    knowledge = "omniscient"

    def __init__(self, policy: str = "force_plus", density: float = 5e-3, z1: float | None = None,
                 z1_mode: str = "fixed", z2: float = 1.5, sparse_sign: str = "inv_std", sparse_th: str | None = None,
                 fc_max: float | None = None, force_iters: int = 100, force_batches: int = 3,
                 force_batch_size: int = 32, omniscient_pruning: bool = True, std_ddof: int = 1,
                 zmax_mode: str = "standard", gamma_init: float = 10.0, tol: float = 1e-5,
                 minsum_threshold: str = "min") -> None:
        self.policy = check_choice(policy, "policy", POLICIES)
        self.density = check_density(density)
        self.z1_mode = check_choice(z1_mode, "z1_mode", Z1_MODES)
        self.z1 = None if z1 is None else check_real(z1, "z1")
        if self.z1 is not None and self.z1_mode == "minsum":
            raise ParamError("z1", "z1 must be null with z1_mode=minsum (the Min-Sum search sets it every round)")
        self.z2 = check_real(z2, "z2")
        self.sparse_sign = check_choice(sparse_sign, "sparse_sign", SIGNS)
        self.sparse_th = check_choice(sparse_th, "sparse_th", CAPS)
        self.fc_max = None if fc_max is None else check_real(fc_max, "fc_max", 0.0, 1.0, low_open=True)
        if self.fc_max is not None and self.policy != "force_plus":
            raise ParamError("fc_max", f"fc_max applies to policy force_plus only, not {self.policy!r}")
        self.force_iters = check_int(force_iters, "force_iters", low=1)
        self.force_batches = check_int(force_batches, "force_batches", low=1)
        self.force_batch_size = check_int(force_batch_size, "force_batch_size", low=1)
        self.omniscient_pruning = check_bool(omniscient_pruning, "omniscient_pruning")
        self.std_ddof = check_ddof(std_ddof)
        self.zmax_mode = check_choice(zmax_mode, "zmax_mode", ZMAX_MODES)
        self.gamma_init = check_real(gamma_init, "gamma_init", 0.0, low_open=True)
        self.tol = check_real(tol, "tol", 0.0, low_open=True)
        self.minsum_threshold = check_choice(minsum_threshold, "minsum_threshold", THRESHOLDS)
        self.mask: torch.Tensor | None = None

    # ------------------------------------------------------------------ the mask
    def reset(self) -> None:
        self.mask = None

    def bind(self, env: AttackEnv) -> None:
        """Draw the mask c once, from the model, its layout and the set-up generator."""
        self.use_mask(self.build_mask(env))

    def build_mask(self, env: AttackEnv) -> torch.Tensor:
        """bool[d]: the ``policy`` mask for ``env``'s model (FORCE reads its data and θ₀)."""
        if self.policy != "force_plus":
            return MASK_POLICIES[self.policy](env.model, env.layout, self.density, env.generator)
        clients = pruning_clients(env.n, env.f, self.prunes_with_honest_data(env))
        draw = PooledBatches([env.client_indices[i] for i in clients], self.force_batch_size, env.generator)
        devices = [env.theta0.device] if env.theta0.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # dropout draws leave the run's stream untouched
            return force_mask(env.model, env.layout, env.theta0, env.loss_and_grad, env.x_train, env.y_train,
                              draw, self.density, self.force_iters, self.force_batches, self.fc_max)

    def prunes_with_honest_data(self, env: AttackEnv) -> bool:
        """``omniscient_pruning``, unless the run's knowledge level is ``own``: then the
        Byzantine clients' data, the only data that level may read."""
        return self.omniscient_pruning and env.knowledge != "own"

    def use_mask(self, mask: torch.Tensor) -> None:
        """Attack with an explicit mask c (bool or 0/1 of size d) instead of the policy's
        (until the next `bind`, which draws the policy's mask)."""
        mask = torch.as_tensor(mask)
        if mask.dim() != 1 or not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"the mask must be a 1-D tensor of 0/1 entries, got shape {tuple(mask.shape)}")
        self.mask = mask.bool()

    def _mask_on(self, view: AttackerView) -> torch.Tensor:
        if self.mask is None:
            raise RuntimeError("hybrid attack has no mask: the engine calls bind(env) first (or call use_mask)")
        d = view.honest.shape[1]
        if self.mask.numel() != d:
            raise ValueError(f"hybrid attack mask has {self.mask.numel()} entries, the rows have d = {d}")
        if self.mask.device != view.honest.device:
            self.mask = self.mask.to(view.honest.device)
        return self.mask

    # ------------------------------------------------------------------ the rows
    def craft(self, view: AttackerView) -> torch.Tensor:
        c = self._mask_on(view)
        mu, sigma = mean_std(view.honest, self.std_ddof)
        sigma = cap_sigma(sigma, c, self.sparse_th)
        direction = sigma if self.sparse_sign == "inv_std" else sigma * torch.sign(mu)
        z1 = self._z1(view, mu, direction, c)
        scale = torch.where(c, torch.full_like(mu, self.z2), torch.full_like(mu, z1))
        view.diagnostics.update(z1=float(z1), z2=self.z2, mask_density=float(c.float().mean()))
        return broadcast_rows(saturate(mu - scale * direction, like=view.honest), view.f)

    def _z1(self, view: AttackerView, mu: torch.Tensor, direction: torch.Tensor, c: torch.Tensor) -> float:
        if self.z1_mode == "fixed":
            return self.z1 if self.z1 is not None else alie_zmax(view.n, view.f, self.zmax_mode)
        zero = torch.zeros_like(direction)
        p = torch.where(c, zero, direction)
        q = torch.where(c, direction * self.z2, zero)
        return minsum_z1(view.honest, mu, p, q, self.minsum_threshold, self.gamma_init, self.tol)


def minsum_z1(x: torch.Tensor, mu: torch.Tensor, p: torch.Tensor, q: torch.Tensor, which: str = "min",
              gamma_init: float = 10.0, tol: float = 1e-5) -> float:
    """The Min-Sum γ_succ (NDSS 2021 search, `gamma_search`) for the candidate g(γ) = μ − γp − q.

    Feasible iff Σ_i ‖g(γ) − x_i‖² ≤ T, T = min (or max) over i of Σ_j ‖x_i − x_j‖². With
    Y_i = x_i − μ + q the score is A + 2γB + γ²C, A = Σ‖Y_i‖², B = Σ⟨Y_i, p⟩, C = h‖p‖²,
    computed once in float64 (O(hd)), so each of the ~20 tests is O(1).
    """
    centred = x.double() - mu.double()
    a = centred.square().sum(dim=1)
    sums = x.shape[0] * a + a.sum()
    bound = float(sums.min() if which == "min" else sums.max())
    y = centred + q.double()
    pd = p.double()
    big_a, big_b = float(y.square().sum()), float((y @ pd).sum())
    big_c = x.shape[0] * float(pd.square().sum())
    return gamma_search(lambda g: big_a + 2.0 * g * big_b + g * g * big_c <= bound, gamma_init, tol)


# --------------------------------------------------------------------------- σ capping
def cap_sigma(sigma: torch.Tensor, mask: torch.Tensor, method: str | None) -> torch.Tensor:
    """σ with its mask coordinates clamped from above at ``method``'s fence (`fence`).

    Outlying σ values on the few aggressively attacked coordinates would make those
    entries of Δ explode; the fence is computed from the σ values on the mask only.
    ``None`` returns σ unchanged; so does a mask with fewer than 3 coordinates.
    """
    if method is None:
        return sigma
    values = sigma[mask]
    if values.numel() < 3:
        return sigma
    out = sigma.clone()
    out[mask] = values.clamp(max=fence(values, method))
    return out


def fence(values: torch.Tensor, method: str) -> float:
    """Upper fence of ``values`` (≥ 3 of them), this library's reading of ``sparse_th``:

    - ``"iqr"``: Q3 + 1.5·(Q3 − Q1), Tukey's fence (quartiles linearly interpolated);
    - ``"z_score"``: mean + 2·std (ddof 1);
    - ``"gradient"``: the elbow of the values sorted in decreasing order v_1 ≥ v_2 ≥ …:
      with gaps g_k = v_k − v_{k+1}, the fence is v_{j+1} for j = argmax_k g_k/(g_{k+1} + 1e−8).
    """
    v = values.double()
    if method == "iqr":
        q1, q3 = _quantile(v, 0.25), _quantile(v, 0.75)
        return q3 + 1.5 * (q3 - q1)
    if method == "z_score":
        return float(v.mean() + 2.0 * v.std())
    if method == "gradient":
        ordered = torch.sort(v, descending=True).values
        gaps = ordered[:-1] - ordered[1:]
        j = int(torch.argmax(gaps[:-1] / (gaps[1:] + 1e-8)))
        return float(ordered[j + 1])
    raise ValueError(f"sparse_th must be one of {CAPS}, got {method!r}")


def _quantile(v: torch.Tensor, q: float) -> float:
    """The q-quantile of a 1-D tensor, linear interpolation between order statistics."""
    ordered = torch.sort(v).values
    pos = q * (ordered.numel() - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, ordered.numel() - 1)
    return float(ordered[lo] + (pos - lo) * (ordered[hi] - ordered[lo]))


__all__ = ["HybridSparse", "cap_sigma", "fence", "minsum_z1"]
