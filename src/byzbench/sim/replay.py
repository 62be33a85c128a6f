"""Replayable rounds: the lookahead of an omniscient optimal attacker (ALGORITHMS.md §4.14).

Liu, "What if the Adversary is Truly Byzantine? Optimal Attacks in Distributed Machine
Learning", EPFL semester project, 2023 (seed 001): the adversary knows the honest
workers' future stochastic gradients (their batches come from fixed seeds), so choosing
the Byzantine rows of the next ℓ rounds is a deterministic control problem. A `Replay`
handle, given to attacks that declare ``lookahead = True`` as ``view.simulate`` while
round t is being crafted, answers "what happens over the next ``steps`` rounds if the
Byzantine clients send these rows?":

    step i = 0 … steps−1 (round t+i):  rows a_{t+i} = control_i(view of round t+i)
                                       θ_{t+i+1} = θ_{t+i} − γ_{t+i}·AGG(honest_{t+i}, a_{t+i}, …)
    losses[i] = L(θ_{t+i+1}, s_{t+i+1})

where honest_{t+i} are the honest messages the real run would compute (same batches, same
worker momentum, same message order and defense draws) and L(θ, s) is the honest
clients' training loss on round s's mini-batches — the ``train_loss`` the engine records
for that round. Step 0 uses the round-t messages already computed; the last loss needs
round t+steps's batch, evaluated with one forward pass. From round ``attack.until`` on the
Byzantine clients send their own honest messages, as in the real run.

Everything a round changes is saved on entry and put back on exit — θ, the worker
momenta, the sampler's generator, permutation and step, the message-shuffle, defense,
attack and probe generators, the global torch generator (dropout), the model's buffers
(BatchNorm running statistics), the server's root-batch sampler — and the replay runs
on a deep copy of the defense (stateful rules such as CC keep their reference) and on
scratch gradient, momentum, batch and message buffers, so the real run is bit-identical
to one in which `simulate` was never called. Cost per call: one copy of θ and of the
``[n(+f), d]`` messages, one deep copy of the defense, then ``steps`` rounds.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from byzbench.attacks.base import AttackerView
from byzbench.defenses import AggregationContext
from byzbench.errors import NonFiniteInputError

if TYPE_CHECKING:  # pragma: no cover
    from byzbench.sim.engine import Simulation

#: A control: ``control(i, view) -> rows`` for step i, or fixed rows; rows are ``[d]`` or ``[f, d]``.
Control = Callable[[int, AttackerView], torch.Tensor] | torch.Tensor


@dataclass(frozen=True)
class Trajectory:
    """A replay's outcome over ``steps`` steps from round ``start``.

    ``losses[i]`` = L(θ_{start+i+1}, s_{start+i+1}) (float64; +inf from the step at which
    θ turned non-finite or the defense refused its input, ``diverged``); ``logits[i]``
    (when asked) the ``[h·B, C]`` logits of the honest clients on that batch at that θ
    and ``labels[i]`` their labels; ``params`` = θ_{start+steps} (a copy).
    """

    start: int
    losses: np.ndarray
    params: torch.Tensor
    logits: tuple[torch.Tensor, ...] | None = None
    labels: tuple[torch.Tensor, ...] | None = None
    diverged: int | None = None


class Replay:
    """``simulate(controls, steps=None, logits=False) -> Trajectory`` for round ``t``.

    ``controls``: a callable ``control(i, view) -> rows`` (``view`` is the attacker's view
    of round t+i: honest messages, own rows, θ_{t+i}, previous aggregate, the attack's
    generator), one tensor of rows used at every step, or a sequence with one control or
    tensor per step. ``steps`` defaults to the sequence's length (1 otherwise).
    Attributes: ``round`` (t), ``remaining`` (rounds, t included, in which the attacker
    still acts: up to the run's end or ``attack.until``), ``aggregator`` (the server's
    aggregation rule's registry name), ``steps_run`` (rounds replayed so far).
    """

    def __init__(self, sim: Simulation, t: int, prev: torch.Tensor | None, shuffle_gen: torch.Generator,
                 server_gen: torch.Generator | None, attack_gen: torch.Generator) -> None:
        self.sim, self.round, self.prev = sim, t, prev
        self.shuffle_gen, self.server_gen, self.attack_gen = shuffle_gen, server_gen, attack_gen
        end = sim.config.rounds if sim.until is None else min(sim.config.rounds, sim.until)
        self.remaining = max(end - t, 0)
        self.aggregator: str = sim.defense.aggregator.name
        self.steps_run = 0

    def __call__(self, controls: Control | Sequence[Control], steps: int | None = None,
                 logits: bool = False) -> Trajectory:
        steps = _steps(controls, steps)
        saved = _Saved(self.sim, (self.shuffle_gen, self.server_gen, self.attack_gen, self.sim._probe_gen))
        try:
            return self._replay(controls, steps, logits)
        finally:
            saved.restore()
            self.steps_run += steps

    # ------------------------------------------------------------------ the replayed rounds
    def _replay(self, controls: Control | Sequence[Control], steps: int, want_logits: bool) -> Trajectory:
        sim, h, f = self.sim, self.sim.h, self.sim.f
        ctx = AggregationContext(generator=self.server_gen, server_gradient=sim.server_gradient)
        slots, own = _current(sim)
        prev, losses, diverged = self.prev, [], None
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        capture = (lambda x, y: seen.append(self._logits(x, y))) if want_logits else None
        for i in range(steps):
            r = self.round + i
            if i:
                losses.append(sim._local(sim._level(r), capture)[:h].mean())
                slots, own = sim._momentum()
            honest = slots[:h]
            byz = self._rows(controls, i, r, honest, own, prev) if sim._level(r) == "message" else own
            messages, _ = sim._messages(honest, byz, slots, self.shuffle_gen)
            ctx.round, ctx.diagnostics, ctx.rows_finite = r, {}, False
            try:
                aggregate = sim.defense(messages, f, ctx)
            except NonFiniteInputError:
                diverged = i
                break
            sim._step(aggregate, sim.config.lr * sim.schedule.factor(r))
            prev = aggregate
            if not _finite(sim.theta):
                diverged = i
                break
        if diverged is None:
            x, y = sim._batch(sim._level(self.round + steps))
            last = self._logits(x, y)
            if want_logits:
                seen.append(last)
            losses.append(F.cross_entropy(last[0], last[1]))
        values = torch.stack(losses).double().cpu().numpy() if losses else np.empty(0)
        values = np.concatenate([values, np.full(steps - values.size, np.inf)])
        return Trajectory(
            start=self.round, losses=values, params=sim.theta.detach().clone(), diverged=diverged,
            logits=tuple(z for z, _ in seen) if want_logits else None,
            labels=tuple(y for _, y in seen) if want_logits else None,
        )

    def _rows(self, controls: Control | Sequence[Control], i: int, r: int, honest: torch.Tensor,
              own: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        """Step i's ``[f, d]`` Byzantine rows from its control."""
        control = controls if callable(controls) or isinstance(controls, torch.Tensor) else controls[i]
        if callable(control):
            control = control(i, self.sim._view(honest, own, r, prev, self.attack_gen))
        return _as_rows(control, self.sim.f, honest)

    def _logits(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The honest clients' logits on their part of the batch ``x`` at the current θ, in
        training mode (each client's batch on its own, as BatchNorm sees it in training);
        the global torch generator is left as it was, so asking for logits never changes
        the replayed trajectory."""
        sim = self.sim
        cut = sim.h * sim.batch
        xs, ys = x[:cut], y[:cut].clone()
        devices = [sim.device] if sim.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            if _batch_dependent(sim.model):
                out = torch.cat([sim.model(c) for c in xs.split(sim.batch)])
            else:
                out = sim.model(xs)
        return out.detach(), ys


class _Saved:
    """Everything a round changes, saved on entry (scratch buffers swapped in) and put back by `restore`."""

    def __init__(self, sim: Simulation, generators: Sequence[torch.Generator | None]) -> None:
        self.sim = sim
        self.theta = sim.theta.detach().clone()
        unique = {id(g): g for g in generators if g is not None}
        self.generators = [(g, g.get_state()) for g in unique.values()]
        samplers = [s for s in (sim.sampler, sim._root_sampler) if s is not None]
        self.samplers = [(s, s.state()) for s in samplers]
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state(sim.device) if sim.device.type == "cuda" else None
        self.buffers = [(b, b.detach().clone()) for b in sim.model.buffers()]
        self.defense = sim.defense
        self.real = {name: getattr(sim, name) for name in _SCRATCH}
        scratch = _scratch(sim)
        if sim.momenta is None:
            scratch["grads"].copy_(sim.grads)  # step 0's messages are the round's gradients
        else:
            scratch["momenta"].copy_(sim.momenta)
        for name in _SCRATCH:
            setattr(sim, name, scratch[name])
        sim.defense = copy.deepcopy(self.defense)

    def restore(self) -> None:
        sim = self.sim
        for name, value in self.real.items():
            setattr(sim, name, value)
        sim.defense = self.defense
        with torch.no_grad():
            sim.theta.copy_(self.theta)
            for buf, value in self.buffers:
                buf.copy_(value)
        for gen, state in self.generators:
            gen.set_state(state)
        for sampler, state in self.samplers:
            sampler.restore(state)
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.sim.device)


#: Buffers a round overwrites; a replay runs on scratch copies of them.
_SCRATCH = ("grads", "momenta", "xb", "yb", "messages")


def _scratch(sim: Simulation) -> dict[str, Any]:
    """The simulation's scratch buffers (allocated at its first replay, reused after)."""
    scratch = getattr(sim, "_replay_scratch", None)
    if scratch is None:
        scratch = {name: None if getattr(sim, name) is None else torch.empty_like(getattr(sim, name))
                   for name in _SCRATCH}
        sim._replay_scratch = scratch
    return scratch


def _current(sim: Simulation) -> tuple[torch.Tensor, torch.Tensor]:
    """The round's message slots ``[n, d]`` and the Byzantine clients' own rows ``[f, d]``."""
    if sim.momenta is None:
        return sim.grads, sim.grads[sim.h:]
    return sim.momenta[: sim.n], sim.momenta[sim.n:]


def _as_rows(rows: Any, f: int, like: torch.Tensor) -> torch.Tensor:
    """A control's output as ``[f, d]`` rows of ``like``'s dtype and device."""
    if not isinstance(rows, torch.Tensor):
        raise TypeError(f"a control must give a tensor of rows, got {type(rows).__name__}")
    rows = rows.to(device=like.device, dtype=like.dtype)
    if rows.dim() == 1:
        rows = rows.unsqueeze(0)
    d = like.shape[1]
    if rows.dim() != 2 or rows.shape[1] != d or rows.shape[0] not in (1, f):
        raise ValueError(f"a control must give rows of shape [{d}] or [{f}, {d}], got {list(rows.shape)}")
    return rows.expand(f, -1)


def _steps(controls: Any, steps: int | None) -> int:
    fixed = callable(controls) or isinstance(controls, torch.Tensor)
    if steps is None:
        steps = 1 if fixed else len(controls)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer ≥ 1, got {steps!r}")
    if not fixed and len(controls) < steps:
        raise ValueError(f"{len(controls)} controls for {steps} steps")
    return steps


def _finite(x: torch.Tensor) -> bool:
    return math.isfinite(float(x.sum())) or bool(torch.isfinite(x).all())


def _batch_dependent(model: torch.nn.Module) -> bool:
    """Whether a training-mode forward mixes samples (BatchNorm): then each client's batch goes alone."""
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
