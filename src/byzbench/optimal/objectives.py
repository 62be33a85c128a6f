"""Trajectory objectives and the SciPy solver wrapper of the NLP attacks.

Liu, "What if the Adversary is Truly Byzantine? Optimal Attacks in Distributed Machine
Learning", EPFL semester project, 2023 (seed 001), §4.14 of ALGORITHMS.md. The attacker
maximises ``J = Σ_{t=1..T} α_t L(θ_t)`` over the losses of the T attacked steps (θ_0 is
not affected by the attack and is left out):

- ``nlp1``: α_t = 1/T, the mean loss of the trajectory;
- ``nlp0``: α_T = 1, the final loss only;
- ``nlp0.9`` / ``nlp1.1``: geometric weights α_{t+1} = ρ α_t (ρ = 0.9 / 1.1),
  normalised to sum to 1 (a positive scale does not move the maximiser);
- ``nlp-1``: J = min_t L(θ_t), the lowest loss on the trajectory.

A non-finite loss counts as `NONFINITE_LOSS` (1e31), as in the seed, so a diverging
trajectory is the best the attacker can reach rather than a solver crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import optimize

OBJECTIVES = ("nlp0", "nlp1", "nlp0.9", "nlp1.1", "nlp-1")
SOLVERS = ("Powell", "SLSQP", "L-BFGS-B", "Nelder-Mead", "COBYLA")
NONFINITE_LOSS = 1e31
#: The seed's solver per aggregator (figure captions): Powell for CM, Krum and TM,
#: SLSQP for CC, L-BFGS-B for RFA; Powell for any other rule.
_SOLVER_OF_RULE = {"median": "Powell", "krum": "Powell", "trmean": "Powell", "cc": "SLSQP", "rfa": "L-BFGS-B"}
_RHO = {"nlp0.9": 0.9, "nlp1.1": 1.1}


def _check_objective(kind: str) -> str:
    if kind not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {kind!r}")
    return kind


def objective_weights(kind: str, steps: int) -> np.ndarray | None:
    """The weights α_1..α_T of a weighted-sum objective (None for ``nlp-1``, a minimum)."""
    _check_objective(kind)
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    if kind == "nlp-1":
        return None
    if kind == "nlp1":
        return np.full(steps, 1.0 / steps)
    if kind == "nlp0":
        w = np.zeros(steps)
        w[-1] = 1.0
        return w
    w = _RHO[kind] ** np.arange(steps, dtype=np.float64)
    return w / w.sum()


def trajectory_value(losses: Sequence[float] | np.ndarray, kind: str = "nlp1") -> float:
    """J of a trajectory's losses L(θ_1..θ_T); non-finite losses count as 1e31."""
    values = np.asarray(losses, dtype=np.float64).reshape(-1)
    values = np.where(np.isfinite(values), values, NONFINITE_LOSS)
    weights = objective_weights(kind, values.size)
    if weights is None:
        return float(values.min())
    return float(min(weights @ values, NONFINITE_LOSS))


def default_solver(rule: str) -> str:
    """The seed's SciPy method for aggregator ``rule`` (registry name); Powell otherwise."""
    return _SOLVER_OF_RULE.get(rule, "Powell")


class _Budget(Exception):
    """Raised inside the objective once ``max_evals`` evaluations are spent."""


@dataclass(frozen=True)
class MaximizeResult:
    """The best point found, its objective value and the number of evaluations."""

    x: np.ndarray
    value: float
    evaluations: int


def maximize(
    fun: Callable[[np.ndarray], float],
    x0: Sequence[float] | np.ndarray,
    method: str = "Powell",
    bounds: Sequence[tuple[float | None, float | None]] | None = None,
    maxiter: int | None = None,
    max_evals: int | None = None,
) -> MaximizeResult:
    """Maximise ``fun`` with ``scipy.optimize.minimize(−fun, x0, method)``.

    Every evaluation is kept, so the best point ever evaluated is returned even when the
    solver stops elsewhere (Powell and Nelder–Mead may end on a worse simplex point;
    SLSQP may stop on a failed line search). Non-finite values count as 1e31.
    ``max_evals`` (None: no limit) stops the solver after that many evaluations of
    ``fun``, whatever the method (SciPy's own limits differ per method).
    """
    if max_evals is not None and (isinstance(max_evals, bool) or not isinstance(max_evals, int) or max_evals < 1):
        raise ValueError(f"max_evals must be an integer ≥ 1 or None, got {max_evals!r}")
    if method not in SOLVERS:
        raise ValueError(f"method must be one of {', '.join(SOLVERS)}, got {method!r}")
    x0 = np.asarray(x0, dtype=np.float64).reshape(-1)
    best: list = [x0.copy(), -np.inf]
    count = [0]

    def negative(x: np.ndarray) -> float:
        if max_evals is not None and count[0] >= max_evals:
            raise _Budget
        value = float(fun(np.asarray(x, dtype=np.float64)))
        value = value if np.isfinite(value) else NONFINITE_LOSS
        count[0] += 1
        if value > best[1]:
            best[0], best[1] = np.array(x, dtype=np.float64), value
        return -value

    options = {} if maxiter is None else {"maxiter": int(maxiter)}
    try:
        optimize.minimize(negative, x0, method=method, bounds=bounds, options=options)
    except _Budget:
        pass
    return MaximizeResult(x=best[0], value=float(best[1]), evaluations=count[0])
