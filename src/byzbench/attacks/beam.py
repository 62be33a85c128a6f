"""Beam planner over existing attacks: seed 001's Algorithm 2 (ALGORITHMS.md §4.14)."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import numpy as np

from byzbench.attacks.base import ATTACKS, Attack, AttackEnv, AttackerView
from byzbench.checks import check_choice, check_int
from byzbench.errors import ConfigError, ParamError
from byzbench.optimal.lookahead import LookaheadAttack, Step
from byzbench.optimal.objectives import NONFINITE_LOSS
from byzbench.spec import parse_component

DEFAULT_PSI = ("alie", "ipm", "signflip", "mimic", "minmax", "minsum")
KEEP = ("highest", "lowest")
MEMORY = ("run", "plan")


@ATTACKS.register("beam", aliases=("beam_planner",))
class Beam(LookaheadAttack):
    """Beam search over sequences of existing attacks, scored by the running minimum loss (Liu, EPFL semester project, 2023, Alg. 2).

    Seed 001's Algorithm 2 with a finite set Ψ of decision functions (``psi``: attack
    specs, default alie, ipm, signflip, mimic, minmax, minsum with their defaults). At a
    planning round t the planner grows control sequences block by block, ``lookahead`` ℓ
    rounds per block (1), ``depth`` blocks (4; horizon H = depth·ℓ, cut at the run's end
    and at ``attack.until``): each of the ``width`` L kept sequences (2) is extended by
    every u ∈ Ψ^ℓ (ψ's rows at each round of the block) and replayed from round t
    (``view.simulate``); its cost is the running minimum loss

        cost(u) = min( min_{k≤t} Q(θ_k), min_{1≤i≤|u|} Q(θ_{t+i}(u)) ),

    Q the honest training loss (``memory="run"``: the minimum over the losses of the
    rounds already planned and sent, θ_0's excluded; ``"plan"``: only the sequence's own).
    The L sequences with the highest cost are kept (``keep="highest"``, default) —
    UNSETTLED (§9 item 9): the text says "lowest", which contradicts its own
    maximise-the-minimum-loss objective; ``keep="lowest"`` follows the letter. Ties
    (frequent once the past minimum binds) go to the higher mean loss, then to
    enumeration order. The best sequence's H rounds are sent, then the planner replans.

    Each ψ acts on the messages (a gradient-level ψ such as signflip sends −own momentum
    under worker momentum), keeps its own state, advanced only in the rounds in which it
    is chosen, and is replayed on a copy of that state. Data attacks and planners are
    refused in Ψ. Cost per planning round: |Ψ|^ℓ·(ℓ + L·Σ_{k=2..depth} kℓ) replayed
    rounds. Diagnostics: ``psi`` (index into Ψ of the function used), ``objective``
    (the kept cost), ``candidates``, ``sim_steps``.
    """

    def __init__(self, psi: Any = DEFAULT_PSI, width: int = 2, lookahead: int = 1, depth: int = 4,
                 keep: str = "highest", memory: str = "run") -> None:
        super().__init__(lookahead)
        self.psi_specs = _psi_specs(psi)
        self.psi: list[Attack] = [_make_psi(spec) for spec in self.psi_specs]
        self.width = check_int(width, "width", low=1)
        self.depth = check_int(depth, "depth", low=1)
        self.keep = check_choice(keep, "keep", KEEP)
        self.memory = check_choice(memory, "memory", MEMORY)

    def window(self) -> int:
        return self.lookahead * self.depth

    def reset(self) -> None:
        super().reset()
        for psi in getattr(self, "psi", []):
            psi.reset()
        self._past_min = np.inf

    def bind(self, env: AttackEnv) -> None:
        for psi in self.psi:
            psi.bind(env)

    def plan(self, view: AttackerView, steps: int) -> tuple[list[Step], dict[str, float]]:
        replay, ell = view.simulate, self.lookahead
        blocks = [ell] * (steps // ell) + ([steps % ell] if steps % ell else [])
        beams: list[tuple[list[int], np.ndarray]] = [([], np.empty(0))]
        count = 0
        for size in blocks:
            scored = []
            for seq, _ in beams:
                for u in itertools.product(range(len(self.psi)), repeat=size):
                    cand = seq + list(u)
                    losses = replay(self._controls(cand), len(cand)).losses
                    scored.append((self._key(losses), cand, losses))
                    count += 1
            scored.sort(key=lambda item: item[0], reverse=self.keep == "highest")
            beams = [(cand, losses) for _, cand, losses in scored[: self.width]]
        best, losses = beams[0]
        cost = self._key(losses)[0]
        self._past_min = min(self._past_min, float(_finite(losses).min()))
        steps_out = [Step(_psi_control(self.psi[k]), {"psi": float(k)}) for k in best]
        return steps_out, {"objective": cost, "candidates": float(count)}

    def _key(self, losses: np.ndarray) -> tuple[float, float]:
        """(running minimum loss, mean loss) of a candidate, non-finite losses as 1e31."""
        values = _finite(losses)
        floor = self._past_min if self.memory == "run" else np.inf
        return float(min(floor, values.min())), float(values.mean())

    def _controls(self, seq: list[int]) -> list[Any]:
        psis = copy.deepcopy(self.psi)  # a replay must not advance the real decision functions
        return [_psi_control(psis[k]) for k in seq]


def _finite(losses: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(losses), losses, NONFINITE_LOSS)


def _psi_control(psi: Attack) -> Any:
    return lambda i, view: psi.craft(view)


def _psi_specs(value: Any) -> list[Any]:
    """Ψ as a list of attack specs: a list/tuple, or one string of comma-separated names."""
    if isinstance(value, str):
        items: list[Any] = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ParamError("psi", f"psi must be a list of attack names or specs, got {value!r}")
    if not items:
        raise ParamError("psi", "psi must name at least one attack")
    return items


def _make_psi(spec: Any) -> Attack:
    try:
        comp = parse_component(spec, "psi")
        attack = ATTACKS.create(comp.name, "psi", **comp.params)
    except ConfigError as exc:
        raise ParamError("psi", f"psi: {exc}") from exc
    if attack.level == "data" or getattr(attack, "uses_replay", False):
        raise ParamError("psi", f"psi: {attack.name!r} cannot be a decision function "
                                "(data attacks and planners are refused)")
    return attack
