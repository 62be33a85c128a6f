"""Attack interface and the attacker's view of a round (ALGORITHMS.md §4.0).

An attack crafts the f Byzantine rows from an `AttackerView`, which the engine fills
with exactly what the attack's knowledge level entitles it to:

- ``own``: the honest messages the Byzantine clients themselves would have sent this
  round, computed on their own data (``view.honest`` is those f rows);
- ``omniscient``: every honest client's message of the round (``view.honest`` is the
  h = n − f honest rows);
- ``aggregator-aware``: omniscient, and may call ``view.defense`` (never the server's
  private random draws).

An attack works at one of three levels: ``"message"`` attacks (ALIE, IPM, …) replace the
Byzantine messages after worker momentum; ``"gradient"`` attacks (sign flip) replace
the Byzantine clients' gradients, which then go through their own momentum; ``"data"``
attacks (label flip) only change the Byzantine clients' mini-batches (`Attack.poison`),
which they then train on honestly.

An attack reports what it did through ``view.diagnostics`` (name → float), e.g. the
strength it used under the names ``z``, ``gamma``, ``epsilon``, ``alpha``, ``lambda``,
``nu``; the engine records each as the per-round metric ``attack.<name>``, next to the
perturbation's norm relative to the honest mean and its cosine to it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from byzbench.models.layout import ParamLayout
from byzbench.registry import Registry

ATTACKS: Registry = Registry("attack", package="byzbench.attacks")

KNOWLEDGE_LEVELS = ("own", "omniscient", "aggregator-aware")
LEVELS = ("message", "gradient", "data")


@dataclass
class AttackerView:
    """What an attack may see when it crafts the Byzantine rows of round ``round``."""

    honest: torch.Tensor  # [h or f, d] honest rows the attacker is entitled to see
    own: torch.Tensor  # [f, d] the Byzantine clients' own honest rows (gradients or messages)
    n: int
    f: int
    round: int
    params: torch.Tensor  # [d] current model parameters θ_t (read-only)
    layout: ParamLayout
    generator: torch.Generator
    knowledge: str
    prev_aggregate: torch.Tensor | None = None
    defense: Callable[[torch.Tensor, int], torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: Filled by the attack: scalar diagnostics of this round (strength used, …).
    diagnostics: dict[str, float] = field(default_factory=dict)
    #: For attacks that declare ``lookahead = True`` (omniscient): a `byzbench.sim.replay.Replay`
    #: handle, ``simulate(controls, steps) -> Trajectory``, that replays the next server
    #: steps with given Byzantine rows and leaves the real run untouched; None otherwise.
    simulate: Any = None


@dataclass
class AttackEnv:
    """What the engine hands an attack once, when a run starts (`Attack.bind`).

    For one-off set-up that needs the model or the data, e.g. a pruning mask computed
    from saliency (hybrid sparse attack, §4.13). The Byzantine clients are the last f
    of the n clients (ids ``h .. n−1``); an attack reads only the data its knowledge
    level allows (``own``: the Byzantine clients' partitions). ``theta0`` is a copy of
    the initial parameters; ``loss_and_grad`` and ``logits`` evaluate the model at any
    flat parameter vector without touching the run's parameters.
    """

    model: nn.Module
    layout: ParamLayout
    theta0: torch.Tensor  # [d] copy of θ_0
    n: int
    f: int
    client_indices: list[np.ndarray]  # training-set indices of each client's partition
    x_train: torch.Tensor
    y_train: torch.Tensor
    num_classes: int
    generator: torch.Generator  # the attack's own set-up stream
    loss_and_grad: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    knowledge: str = "omniscient"  # the run's knowledge level: which data the attack may read
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def byzantine(self) -> range:
        """Client ids of the Byzantine clients (the last f)."""
        return range(self.n - self.f, self.n)


class Attack(abc.ABC):
    """Crafts the ``[f, d]`` Byzantine rows of a round."""

    #: Least knowledge the attack needs, one of KNOWLEDGE_LEVELS.
    knowledge: str = "omniscient"
    #: Knowledge levels the attack is defined for (a config may downgrade within them).
    supported_knowledge: tuple[str, ...] = ("own", "omniscient", "aggregator-aware")
    #: "message" (after worker momentum), "gradient" (before it) or "data" (`poison`).
    level: str = "message"
    #: False only for the no-attack baseline: the engine then sends the Byzantine
    #: clients' own honest rows without calling `craft` and records no perturbation.
    perturbs: bool = True

    @property
    def name(self) -> str:
        return getattr(type(self), "registry_name", type(self).__name__)

    @abc.abstractmethod
    def craft(self, view: AttackerView) -> torch.Tensor:
        """The f Byzantine rows, shape ``[f, d]``, same device and dtype as the inputs."""

    def poison(self, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Data attacks: the Byzantine clients' mini-batch ``(x, y)`` as they will train on it."""
        return x, y

    def reset(self) -> None:
        """Forget any state kept between rounds (a new run starts)."""

    def bind(self, env: AttackEnv) -> None:
        """One-off set-up when a run starts (after `reset`); most attacks need none."""


def saturate(x: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` (cast to ``like``'s dtype and device if given) with ±Inf saturated to the
    dtype's largest finite values and NaN set to 0.

    Attack rows computed in float64 from huge but finite float32 inputs would overflow to
    ±Inf when cast back; they saturate at ±finfo.max instead.
    """
    if like is not None:
        big = torch.finfo(like.dtype).max
        x = x.clamp(-big, big).to(device=like.device, dtype=like.dtype)
    if not x.is_floating_point():
        return x
    info = torch.finfo(x.dtype)
    return torch.nan_to_num(x, nan=0.0, posinf=info.max, neginf=info.min)


def view_generator(view: AttackerView) -> torch.Generator:
    """The view's private generator, or a local one seeded 0 (never the global RNG)."""
    gen = view.generator
    return gen if gen is not None else torch.Generator(device=view.honest.device).manual_seed(0)


def broadcast_rows(row: torch.Tensor, f: int) -> torch.Tensor:
    """``f`` identical copies of ``row`` as an ``[f, d]`` view (no copy)."""
    return row.unsqueeze(0).expand(f, -1)
