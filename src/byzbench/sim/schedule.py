"""Learning-rate schedules of the server step."""

from __future__ import annotations

import abc

from byzbench.registry import Registry

SCHEDULES: Registry = Registry("lr schedule", package=None)


class Schedule(abc.ABC):
    """Multiplier of the base learning rate at round t (rounds count from 0)."""

    @abc.abstractmethod
    def factor(self, t: int) -> float:
        """γ_t / γ_0."""


@SCHEDULES.register("constant")
class Constant(Schedule):
    """Constant learning rate: γ_t = γ."""

    def factor(self, t: int) -> float:
        return 1.0


@SCHEDULES.register("step", aliases=("multistep",))
class StepDecay(Schedule):
    """Step decay: γ_t = γ · gamma^(number of milestones ≤ t)."""

    def __init__(self, milestones: list[int] | tuple[int, ...] = (), gamma: float = 0.1) -> None:
        if isinstance(milestones, int):
            milestones = [milestones]
        if not all(isinstance(m, int) and m >= 0 for m in milestones):
            raise ValueError(f"milestones must be a list of rounds ≥ 0, got {milestones!r}")
        if not isinstance(gamma, (int, float)) or not 0 < gamma:
            raise ValueError(f"gamma must be > 0, got {gamma!r}")
        self.milestones, self.gamma = sorted(milestones), float(gamma)

    def factor(self, t: int) -> float:
        return self.gamma ** sum(1 for m in self.milestones if m <= t)
