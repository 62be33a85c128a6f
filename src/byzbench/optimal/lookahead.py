"""Receding-horizon planning of the optimal attacks (ALGORITHMS.md §4.14, §4.15).

Liu, "What if the Adversary is Truly Byzantine? Optimal Attacks in Distributed Machine
Learning", EPFL semester project, 2023 (seed 001). A `LookaheadAttack` works through the
engine's replay handle (``view.simulate``, `byzbench.sim.replay.Replay`): at a planning
round t it chooses the controls of rounds t … t+ℓ−1 (ℓ = ``lookahead``, fewer when the
attacker acts in fewer rounds), commits them, sends them over the next ℓ rounds and plans
again at t+ℓ — planning rounds are 0, ℓ, 2ℓ, … (1, ℓ+1, … in the seed's 1-based count).

`optimise_window` is the NLP step shared by SSNLP, NLP and STAB: a decision space maps a
vector x to per-step controls (`LambdaSpace`: one λ per step, rows (1 − 2λ_i)·ḡ_i;
`RowSpace`: the Byzantine row of every step), a value function scores the replayed
`Trajectory`, and `maximize` (SciPy) searches x, keeping the best point evaluated.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from byzbench.attacks.base import Attack, AttackerView, saturate
from byzbench.checks import check_choice, check_int, check_optional_int, check_real
from byzbench.errors import ConfigError, ParamError
from byzbench.optimal.objectives import SOLVERS, default_solver, maximize

StepControl = Callable[[int, AttackerView], torch.Tensor]
#: Methods given the box of ``bounds="auto"``; Powell and Nelder–Mead run unbounded.
BOXED_BY_DEFAULT = ("L-BFGS-B", "SLSQP", "COBYLA")
#: ``bounds="auto"``'s λ box for the methods above (UNSETTLED, §9 item 8).
AUTO_LAMBDA_BOX = (-10.0, 10.0)


@dataclass(frozen=True)
class Step:
    """One committed step: its control and the scalars recorded when it is sent."""

    control: StepControl
    diagnostics: dict[str, float]


class LookaheadAttack(Attack, abc.ABC):
    """Omniscient attack that plans ``lookahead`` rounds at a time through ``view.simulate``."""

    knowledge = "omniscient"
    supported_knowledge = ("omniscient", "aggregator-aware")
    level = "message"
    #: The engine hands these attacks ``view.simulate`` (a replay of future rounds).
    uses_replay = True

    def __init__(self, lookahead: int = 1) -> None:
        self.lookahead = check_int(lookahead, "lookahead", low=1)
        self.reset()

    def reset(self) -> None:
        self._plan: list[Step] = []
        self._next = 0

    def window(self) -> int:
        """Rounds planned (and then sent) at a planning round: ℓ."""
        return self.lookahead

    @abc.abstractmethod
    def plan(self, view: AttackerView, steps: int) -> tuple[list[Step], dict[str, float]]:
        """The next ``steps`` committed steps and the planning diagnostics."""

    def craft(self, view: AttackerView) -> torch.Tensor:
        replay = view.simulate
        if replay is None:
            raise ConfigError(f"attack {self.name!r} needs the engine's replay of future rounds "
                              f"(knowledge 'omniscient'); the view has none", "attack.knowledge")
        if self._next >= len(self._plan):
            steps = max(1, min(self.window(), replay.remaining))
            before = replay.steps_run
            self._plan, info = self.plan(view, steps)
            self._next = 0
            view.diagnostics.update(info)
            view.diagnostics["sim_steps"] = float(replay.steps_run - before)
        step = self._plan[self._next]
        rows = step.control(self._next, view)
        self._next += 1
        view.diagnostics.update(step.diagnostics)
        return rows if rows.dim() == 2 else rows.unsqueeze(0).expand(view.f, -1)


# ---------------------------------------------------------------------- decision spaces
def ssnlp_row(honest: torch.Tensor, lam: float) -> torch.Tensor:
    """a = (1 − λ)·ḡ + λ·(−ḡ) = (1 − 2λ)·ḡ, ḡ the honest mean (§4.14), saturated to finite."""
    return saturate(honest.mean(dim=0) * (1.0 - 2.0 * float(lam)))


class LambdaSpace:
    """SSNLP's reduction: one λ_i per step, rows (1 − 2λ_i)·ḡ_i of that step's honest mean."""

    def dim(self, steps: int, d: int) -> int:
        return steps

    def controls(self, x: np.ndarray) -> list[StepControl]:
        return [_lambda_control(float(lam)) for lam in x]

    def diagnostics(self, x: np.ndarray) -> list[dict[str, float]]:
        return [{"lambda": float(lam)} for lam in x]


def _lambda_control(lam: float) -> StepControl:
    return lambda i, view: ssnlp_row(view.honest, lam)


class RowSpace:
    """The full NLP: the Byzantine row a_i ∈ R^d of every step (all f clients send it)."""

    def __init__(self, d: int, like: torch.Tensor) -> None:
        self.d, self.like = d, like.new_empty(0)

    def dim(self, steps: int, d: int) -> int:
        return steps * d

    def controls(self, x: np.ndarray) -> list[torch.Tensor]:
        rows = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(-1, self.d))
        return list(saturate(rows, self.like))

    def diagnostics(self, x: np.ndarray) -> list[dict[str, float]]:
        rows = x.reshape(-1, self.d)
        return [{"row_norm": float(np.linalg.norm(r))} for r in rows]


def check_size(n_vars: int, max_variables: int) -> None:
    """Refuse a full-NLP window with more decision variables than ``max_variables``."""
    if n_vars > max_variables:
        raise ConfigError(
            f"the full NLP would optimise {n_vars} variables (lookahead × d) at once, above "
            f"max_variables = {max_variables}; use ssnlp (one λ per round) or raise the limit",
            "attack.max_variables")


def initial_rows(view: AttackerView, steps: int, lam: float) -> np.ndarray:
    """The rows (1 − 2λ)·ḡ_i that a constant λ would send over the window (float64, flat):
    a starting point for the full NLP."""
    rows: list[torch.Tensor] = []

    def record(i: int, v: AttackerView) -> torch.Tensor:
        rows.append(ssnlp_row(v.honest, lam))
        return rows[-1]

    view.simulate(record, steps)
    flat = torch.cat([r.reshape(-1) for r in rows]).double().cpu().numpy()
    pad = steps * view.honest.shape[1] - flat.size  # a window cut short by divergence
    return np.concatenate([flat, np.zeros(pad)]) if pad else flat


# ---------------------------------------------------------------------- the NLP step
@dataclass(frozen=True)
class SolverSettings:
    """How `optimise_window` calls SciPy: method (None: the seed's per-rule default),
    bounds (``"auto"``, None or ``[low, high]`` for every variable), iteration and
    evaluation limits."""

    method: str | None = None
    bounds: Any = "auto"
    maxiter: int | None = None
    max_evals: int | None = None

    @classmethod
    def checked(cls, solver: str | None, bounds: Any, maxiter: int | None, max_evals: int | None) -> SolverSettings:
        if solver is not None:
            check_choice(solver, "solver", SOLVERS)
        return cls(solver, check_bounds(bounds), check_optional_int(maxiter, "maxiter", low=1),
                   check_optional_int(max_evals, "max_evals", low=1))

    def resolve(self, aggregator: str, n_vars: int, auto_box: tuple[float, float] | None
                ) -> tuple[str, list[tuple[float, float]] | None]:
        """The SciPy method and per-variable bounds for one window."""
        method = self.method or default_solver(aggregator)
        box = self.bounds
        if box == "auto":
            box = auto_box if method in BOXED_BY_DEFAULT else None
        return method, None if box is None else [tuple(box)] * n_vars


def check_bounds(value: Any) -> Any:
    """``"auto"``, None (unbounded) or a ``[low, high]`` pair of finite numbers, low < high."""
    if value is None or value == "auto":
        return value
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ParamError("bounds", f"bounds must be 'auto', null or [low, high], got {value!r}")
    low, high = (check_real(v, "bounds") for v in value)
    if not low < high:
        raise ParamError("bounds", f"bounds must have low < high, got {value!r}")
    return (low, high)


@dataclass(frozen=True)
class WindowResult:
    """The chosen decision vector, its value and the solver's evaluation count."""

    x: np.ndarray
    value: float
    evaluations: int
    method: str


def optimise_window(view: AttackerView, steps: int, space: Any, x0: np.ndarray,
                    value: Callable[[Any], float], settings: SolverSettings,
                    auto_box: tuple[float, float] | None, logits: bool = False) -> WindowResult:
    """Maximise ``value(trajectory)`` over the decision vector of ``steps`` steps."""
    replay = view.simulate
    n_vars = space.dim(steps, view.honest.shape[1])
    method, bounds = settings.resolve(replay.aggregator, n_vars, auto_box)

    def objective(x: np.ndarray) -> float:
        return value(replay(space.controls(x), steps, logits=logits))

    res = maximize(objective, x0, method=method, bounds=bounds, maxiter=settings.maxiter,
                   max_evals=settings.max_evals)
    return WindowResult(res.x, res.value, res.evaluations, method)


def steps_from(space: Any, result: WindowResult) -> list[Step]:
    """The committed steps of a solved window."""
    controls: Sequence[Any] = space.controls(result.x)
    return [Step(c if callable(c) else _fixed(c), diag)
            for c, diag in zip(controls, space.diagnostics(result.x))]


def _fixed(row: torch.Tensor) -> StepControl:
    return lambda i, view: row
