"""SSNLP: the "super simplified" optimal attack, one λ per round (ALGORITHMS.md §4.14)."""

from __future__ import annotations

from typing import Any

import numpy as np

from byzbench.attacks.base import ATTACKS, AttackerView
from byzbench.checks import check_choice, check_real
from byzbench.optimal.lookahead import (
    AUTO_LAMBDA_BOX,
    LambdaSpace,
    LookaheadAttack,
    SolverSettings,
    Step,
    optimise_window,
    steps_from,
)
from byzbench.optimal.objectives import OBJECTIVES, trajectory_value


@ATTACKS.register("ssnlp")
class SSNLP(LookaheadAttack):
    """SSNLP: rows (1 − 2λ_t)·ḡ_t with λ planned ℓ rounds ahead on replayed rounds (Liu, EPFL semester project, 2023).

    Seed 001 ("What if the Adversary is Truly Byzantine?"): every Byzantine client sends
    a_t = (1 − λ_t)·ḡ_t + λ_t·(−ḡ_t), ḡ_t the honest mean (honest momenta under worker
    momentum). At t = 0, ℓ, 2ℓ, … the attacker maximises J(λ_t..λ_{t+ℓ−1}) over the ℓ
    replayed rounds (``view.simulate``: the honest clients' future batches are known),
    J = `trajectory_value` of the losses L(θ_{t+i}, s_{t+i}), i = 1..ℓ, with
    ``objective`` nlp1 (mean, the seed's SSNLP; nlp0, nlp0.9, nlp1.1, nlp-1 also), then
    commits the λ's. λ ≡ 0 sends ḡ, λ ≡ 1 sends −ḡ (IPM with ε = 1).

    ``lookahead`` ℓ (1; the seed uses 1, 4, 16, 64 for logistic regression, 1, 8, 16 for
    the CNN); ``solver`` (None: Powell for median/krum/trmean, SLSQP for cc, L-BFGS-B
    for rfa, Powell otherwise); ``bounds`` on each λ ("auto": none for Powell and
    Nelder–Mead, [−10, 10] for L-BFGS-B, SLSQP and COBYLA — UNSETTLED; null or
    [low, high] for all); ``x0`` (1.0: the search starts from −ḡ); ``maxiter`` and
    ``max_evals`` (None: the solver's own stopping rule). Windows are cut at the run's
    end and at ``attack.until``. Cost per planning round: ``evals`` replays of ℓ rounds.
    Diagnostics: ``lambda`` every round; ``objective`` (J of the plan), ``evals`` and
    ``sim_steps`` at planning rounds.
    """

    def __init__(self, lookahead: int = 1, objective: str = "nlp1", solver: str | None = None,
                 bounds: Any = "auto", x0: float = 1.0, maxiter: int | None = None,
                 max_evals: int | None = None) -> None:
        super().__init__(lookahead)
        self.objective = check_choice(objective, "objective", OBJECTIVES)
        self.settings = SolverSettings.checked(solver, bounds, maxiter, max_evals)
        self.x0 = check_real(x0, "x0")
        self.space = LambdaSpace()

    def value(self, trajectory: Any) -> float:
        """J of a replayed trajectory (non-finite losses count as 1e31)."""
        return trajectory_value(trajectory.losses, self.objective)

    #: Whether `value` reads the trajectory's logits.
    wants_logits = False

    def plan(self, view: AttackerView, steps: int) -> tuple[list[Step], dict[str, float]]:
        result = optimise_window(view, steps, self.space, np.full(steps, self.x0), self.value,
                                 self.settings, AUTO_LAMBDA_BOX, logits=self.wants_logits)
        return steps_from(self.space, result), {"objective": result.value, "evals": float(result.evaluations)}
