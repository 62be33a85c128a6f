"""Full NLP optimal attack: every Byzantine row of a window is a decision variable (ALGORITHMS.md §4.14)."""

from __future__ import annotations

from typing import Any

from byzbench.attacks.base import ATTACKS, AttackEnv, AttackerView
from byzbench.checks import check_choice, check_int
from byzbench.optimal.lookahead import (
    LookaheadAttack,
    RowSpace,
    SolverSettings,
    Step,
    check_size,
    initial_rows,
    optimise_window,
    steps_from,
)
from byzbench.optimal.objectives import OBJECTIVES, trajectory_value

#: Starting points: the rows a constant λ would send (−ḡ, ḡ, 0).
INITS = {"negmean": 1.0, "mean": 0.0, "zero": 0.5}


@ATTACKS.register("nlp")
class NLP(LookaheadAttack):
    """Full NLP: choose the Byzantine rows a_t..a_{t+ℓ−1} ∈ R^d on replayed rounds (Liu, EPFL semester project, 2023).

    Seed 001 ("What if the Adversary is Truly Byzantine?"), for small problems such as
    the 2-D mean-estimation toy: all f Byzantine clients send the same a_t; the dynamics
    θ_{t+1} = θ_t − γ_t·AGG(honest_t, a_t, …, a_t) are replayed exactly
    (``view.simulate``) and J = Σ α_i L(θ_{t+i}) is maximised with SciPy,
    ``objective`` ∈ {nlp1 (mean loss, default), nlp0 (final), nlp0.9, nlp1.1 (geometric
    weights), nlp-1 (minimum)}. Receding horizon: plan ``lookahead`` ℓ rounds (1),
    commit, replan.

    ``solver`` (None: Powell for median/krum/trmean, SLSQP for cc, L-BFGS-B for rfa,
    Powell otherwise); ``bounds`` (null: unbounded, or [low, high] on every coordinate);
    ``init`` the starting rows (``negmean``: −ḡ of each replayed round, default;
    ``mean``; ``zero``); ``max_variables`` (1000): ℓ·d above it is refused at the start
    of the run (use ssnlp); ``maxiter``, ``max_evals`` (None: the solver's rule).
    Cost per planning round: ``evals`` replays of ℓ rounds, evals growing with ℓ·d.
    Diagnostics: ``row_norm`` every round; ``objective``, ``evals``, ``sim_steps`` at
    planning rounds.
    """

    def __init__(self, lookahead: int = 1, objective: str = "nlp1", solver: str | None = None,
                 bounds: Any = None, init: str = "negmean", max_variables: int = 1000,
                 maxiter: int | None = None, max_evals: int | None = None) -> None:
        super().__init__(lookahead)
        self.objective = check_choice(objective, "objective", OBJECTIVES)
        self.settings = SolverSettings.checked(solver, bounds, maxiter, max_evals)
        self.init = check_choice(init, "init", tuple(INITS))
        self.max_variables = check_int(max_variables, "max_variables", low=1)

    def bind(self, env: AttackEnv) -> None:
        check_size(self.lookahead * env.layout.dim, self.max_variables)

    def value(self, trajectory: Any) -> float:
        return trajectory_value(trajectory.losses, self.objective)

    def plan(self, view: AttackerView, steps: int) -> tuple[list[Step], dict[str, float]]:
        d = view.honest.shape[1]
        check_size(steps * d, self.max_variables)
        space = RowSpace(d, view.honest)
        x0 = initial_rows(view, steps, INITS[self.init])
        result = optimise_window(view, steps, space, x0, self.value, self.settings, None)
        return steps_from(space, result), {"objective": result.value, "evals": float(result.evaluations)}
