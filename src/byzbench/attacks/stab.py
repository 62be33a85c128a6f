"""STAB: the stability-breaking attack, maximising the next step's logit gap (ALGORITHMS.md §4.15)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from byzbench.attacks.base import ATTACKS, AttackEnv, AttackerView
from byzbench.checks import check_choice, check_int, check_real
from byzbench.optimal.lookahead import (
    AUTO_LAMBDA_BOX,
    LambdaSpace,
    LookaheadAttack,
    RowSpace,
    SolverSettings,
    Step,
    check_size,
    initial_rows,
    optimise_window,
    steps_from,
)
from byzbench.optimal.objectives import NONFINITE_LOSS

REDUCTIONS = ("sample", "global")
DECISIONS = ("lambda", "row")


def logit_gap(logits: torch.Tensor, reduction: str = "sample") -> float:
    """Gap between the largest and smallest logits of a batch ``[m, C]``.

    ``"sample"``: mean over the samples of max_c z − min_c z; ``"global"``: the batch's
    largest logit minus its smallest. Non-finite gaps count as 1e31 (a blow-up is the
    attack's success).
    """
    z = logits.detach().double()
    if reduction == "sample":
        gap = (z.amax(dim=1) - z.amin(dim=1)).mean()
    else:
        gap = z.max() - z.min()
    value = float(gap)
    return value if math.isfinite(value) else NONFINITE_LOSS


@ATTACKS.register("stab")
class STAB(LookaheadAttack):
    """STAB: rows that maximise the logit gap after the next server step (Liu, EPFL semester project, 2023, App. A).

    Seed 001's stability-breaking attack: SSNLP with lookahead ℓ = 1 and Powell, whose
    objective is the gap between the largest and smallest output logits of the model
    θ_{t+1} on the honest clients' batch of round t+1 (replayed by ``view.simulate``),
    to induce large gradients and NaN/Inf. UNSETTLED (§9 item 10): ``reduction``
    ``"sample"`` (default: mean over the batch of per-sample max − min) or ``"global"``
    (global max − global min); ``decision`` ``"lambda"`` (default: SSNLP's rows
    (1 − 2λ)·ḡ) or ``"row"`` (the whole row a ∈ R^d, refused when d > ``max_variables``,
    1000; it starts from −ḡ). ``solver`` Powell; ``bounds`` on λ as for ssnlp ("auto":
    none for Powell); ``x0`` 1.0; ``maxiter``, ``max_evals`` None. Seed 001 attacks for
    T1 = 960 rounds then trains 640 clean rounds: ``attack.until=960``. Cost per round:
    ``evals`` replays of one round. Diagnostics: ``lambda`` (or ``row_norm``), ``objective``
    (the planned gap), ``evals``, ``sim_steps``.
    """

    def __init__(self, reduction: str = "sample", decision: str = "lambda", solver: str = "Powell",
                 bounds: Any = "auto", x0: float = 1.0, max_variables: int = 1000,
                 maxiter: int | None = None, max_evals: int | None = None) -> None:
        super().__init__(1)
        self.reduction = check_choice(reduction, "reduction", REDUCTIONS)
        self.decision = check_choice(decision, "decision", DECISIONS)
        self.settings = SolverSettings.checked(solver, bounds, maxiter, max_evals)
        self.x0 = check_real(x0, "x0")
        self.max_variables = check_int(max_variables, "max_variables", low=1)

    def bind(self, env: AttackEnv) -> None:
        if self.decision == "row":
            check_size(env.layout.dim, self.max_variables)

    def value(self, trajectory: Any) -> float:
        if trajectory.diverged is not None:
            return NONFINITE_LOSS
        return logit_gap(trajectory.logits[0], self.reduction)

    def plan(self, view: AttackerView, steps: int) -> tuple[list[Step], dict[str, float]]:
        if self.decision == "lambda":
            space: Any = LambdaSpace()
            x0 = np.full(steps, self.x0)
        else:
            space = RowSpace(view.honest.shape[1], view.honest)
            x0 = initial_rows(view, steps, self.x0)
        box = AUTO_LAMBDA_BOX if self.decision == "lambda" else None
        result = optimise_window(view, steps, space, x0, self.value, self.settings, box, logits=True)
        return steps_from(space, result), {"objective": result.value, "evals": float(result.evaluations)}
