"""The 2-D mean-estimation study of the optimal-attack paper (ALGORITHMS.md §4.14, §7.2).

Liu, "What if the Adversary is Truly Byzantine? Optimal Attacks in Distributed Machine
Learning", EPFL semester project supervised by Allouah, 2023 (seed 001, §5.2). A server
estimates the mean m = (2, 2) of a 2-D normal with n = 12 workers, f = 5 of them
Byzantine, from θ_0 = (0, 0), with learning rate γ = 0.5, the aggregate clipped to norm 2,
for T = 8 steps:

    g_{t,i} = θ_t − x_{t,i},   x_{t,i} ~ N(m, σ² I)     (per-sample loss ½‖θ − x‖²)
    R_t     = AGG(g_{t,1..h}, b_{t,1..f}),   θ_{t+1} = θ_t − γ · clip_2(R_t)
    L(θ)    = ‖θ − m‖                                    (the reported loss)

The samples of all T steps (honest workers' and the Byzantine workers' own) are drawn once
from the study's seed and are known to the attacker, so every attack meets the same
samples (a paired comparison) and the NLP attack is a deterministic control problem.

- **Classic attacks** come from the attack registry with their registry defaults, one
  `AttackerView` per step (the attack's declared knowledge; the previous aggregate as
  ``prev_aggregate``; a generator seeded by the study).
- **NLP attacks** (§4.14): all f Byzantine workers send the same a_t; the 2·T numbers
  a_1..a_T maximise J (`byzbench.optimal.trajectory_value`: nlp0, nlp1, nlp0.9, nlp1.1,
  nlp-1) over the losses L(θ_1..θ_T), with the aggregator's solver of the seed
  (`byzbench.optimal.default_solver`: Powell for CM, TM and Krum, SLSQP for CC, L-BFGS-B for
  RFA), from several starts; the best start wins.

UNSETTLED in the spec, each a parameter here: the per-sample loss (½‖θ − x‖²), the noise
``noise_std`` σ = 1, server clipping of the aggregate (``clip`` = 2), the NLP box bound
``bound`` and the start points (``restarts``, ``start_std``). Krum needs n ≥ 2f + 3, which
n = 12, f = 5 breaks; the study builds every aggregator with ``infeasible="clamp"``
(Krum then uses f = 4), as reference codes do (§0).
"""

from __future__ import annotations

import copy
import csv
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from byzbench.attacks import ATTACKS, Attack, AttackerView
from byzbench.checks import check_choice, check_int, check_real
from byzbench.defenses import AGGREGATORS, AggregationContext, Defense
from byzbench.errors import ConfigError, ParamError
from byzbench.models.layout import ParamLayout, ParamSlot
from byzbench.ops.clip import clip_rows
from byzbench.optimal import OBJECTIVES, SOLVERS, default_solver, maximize, trajectory_value
from byzbench.spec import chain_to_str, parse_chain, parse_component

DEFAULT_AGGREGATORS = ("median", "trmean", "krum", "cc", "rfa")
DEFAULT_ATTACKS = ("alie", "signflip", "ipm", "mimic", "minmax", "minsum")
BASELINE = "none"
KINDS = ("baseline", "classic", "nlp")
#: A policy maps (step t, θ_t, honest rows [h, 2], the Byzantine workers' own rows [f, 2],
#: previous aggregate or None) to the f Byzantine rows [f, 2].
Policy = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True)
class ToyProblem:
    """The toy's dynamics; defaults are seed 001's set-up (σ, the loss and clipping are UNSETTLED)."""

    n: int = 12
    f: int = 5
    steps: int = 8
    lr: float = 0.5
    clip: float | None = 2.0
    start: tuple[float, float] = (0.0, 0.0)
    mean: tuple[float, float] = (2.0, 2.0)
    noise_std: float = 1.0

    def __post_init__(self) -> None:
        check_int(self.n, "n", low=2)
        check_int(self.f, "f", low=0, high=self.n - 1)
        check_int(self.steps, "steps", low=1)
        check_real(self.lr, "lr", low=0.0, low_open=True)
        if self.clip is not None:
            check_real(self.clip, "clip", low=0.0, low_open=True)
        check_real(self.noise_std, "noise_std", low=0.0)
        for name in ("start", "mean"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise ParamError(name, f"{name} must be a pair of numbers, got {value!r}")
            object.__setattr__(self, name, tuple(check_real(v, name) for v in value))

    @property
    def h(self) -> int:
        return self.n - self.f

    def samples(self, seed: int) -> torch.Tensor:
        """``[T, n, 2]`` float64 points x_{t,i} ~ N(m, σ² I); rows ``:h`` honest, ``h:`` Byzantine own."""
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(self.steps, self.n, 2, generator=gen, dtype=torch.float64)
        return torch.tensor(self.mean, dtype=torch.float64) + self.noise_std * noise

    def loss(self, thetas: torch.Tensor) -> torch.Tensor:
        """L(θ) = ‖θ − m‖ of each row of ``thetas[..., 2]``."""
        return torch.linalg.vector_norm(thetas - torch.tensor(self.mean, dtype=thetas.dtype), dim=-1)

    def server_step(self, theta: torch.Tensor, aggregate: torch.Tensor) -> torch.Tensor:
        """θ − γ · clip(R): R rescaled to norm ``clip`` when longer (overflow-safe)."""
        if self.clip is not None:
            norm = float(torch.linalg.vector_norm(aggregate))
            if not math.isfinite(norm):  # a huge finite R whose norm overflows, or a non-finite R
                aggregate = clip_rows(aggregate.unsqueeze(0), self.clip)[0][0]
            elif norm > self.clip:
                aggregate = aggregate * (self.clip / norm)
        return theta - self.lr * aggregate


@dataclass
class Rollout:
    """One trajectory: θ_0..θ_T ``[T+1, 2]``, L(θ_0..θ_T) ``[T+1]``, Byzantine rows ``[T, f, 2]``."""

    thetas: torch.Tensor
    losses: torch.Tensor
    byzantine: torch.Tensor


class Dynamics:
    """The toy under one aggregator, on fixed samples: `rollout(policy)` plays T steps."""

    def __init__(self, problem: ToyProblem, samples: torch.Tensor, defense: Defense, seed: int = 0) -> None:
        if samples.shape != (problem.steps, problem.n, 2):
            raise ValueError(f"samples must be [{problem.steps}, {problem.n}, 2], got {tuple(samples.shape)}")
        self.problem, self.samples, self.defense, self.seed = problem, samples.double(), defense, seed
        self.start = torch.tensor(problem.start, dtype=torch.float64)

    def rollout(self, policy: Policy) -> Rollout:
        """Play the T steps from θ_0 with the Byzantine rows of ``policy`` (the defense is reset)."""
        p, h = self.problem, self.problem.h
        self.defense.reset()
        gen = torch.Generator().manual_seed(self.seed)
        theta, prev = self.start, None
        thetas, byz = [theta], []
        for t in range(p.steps):
            grads = theta - self.samples[t]
            rows = policy(t, theta, grads[:h], grads[h:], prev).to(torch.float64).reshape(p.f, 2)
            aggregate = self.defense(torch.cat([grads[:h], rows]), p.f, AggregationContext(round=t, generator=gen))
            theta = p.server_step(theta, aggregate)
            thetas.append(theta)
            byz.append(rows)
            prev = aggregate
        stacked = torch.stack(thetas)
        return Rollout(stacked, p.loss(stacked), torch.stack(byz) if byz else torch.empty(0, p.f, 2))

    def fixed(self, controls: torch.Tensor) -> Rollout:
        """The NLP dynamics: every Byzantine worker sends a_t = ``controls[t]`` (``[T, 2]``)."""
        f = self.problem.f
        return self.rollout(lambda t, theta, honest, own, prev: controls[t].expand(f, 2))


def honest_mean_policy(sign: float) -> Policy:
    """a_t = sign · mean of the honest rows (sign +1: copy it; −1: IPM with ε = 1)."""
    return lambda t, theta, honest, own, prev: (sign * honest.mean(dim=0)).expand(own.shape[0], 2)


def attack_policy(attack: Attack, problem: ToyProblem, defense: Defense, seed: int) -> Policy:
    """Byzantine rows from a registered attack's ``craft``, one `AttackerView` per step.

    The view holds what the attack's declared knowledge allows (``own``: only the
    Byzantine workers' own rows; ``aggregator-aware``: also a probe that runs a copy of
    the defense); the attack is reset and its generator seeded with ``seed``.
    """
    if attack.level == "data":
        raise ConfigError(f"attack {attack.name!r} poisons data; the toy has no labels to poison", "attacks")
    attack.reset()
    gen = torch.Generator().manual_seed(seed)
    layout = ParamLayout([ParamSlot("theta", (2,), 0)])
    knowledge = attack.knowledge

    def probe(x: torch.Tensor, f: int) -> torch.Tensor:
        return copy.deepcopy(defense)(x, f)

    def policy(t: int, theta: torch.Tensor, honest: torch.Tensor, own: torch.Tensor,
               prev: torch.Tensor | None) -> torch.Tensor:
        if not attack.perturbs:
            return own
        view = AttackerView(
            honest=own.clone() if knowledge == "own" else honest, own=own, n=problem.n, f=problem.f,
            round=t, params=theta, layout=layout, generator=gen, knowledge=knowledge, prev_aggregate=prev,
            defense=probe if knowledge == "aggregator-aware" else None,
        )
        return attack.craft(view)

    return policy


@dataclass(frozen=True)
class SolverSettings:
    """How the NLP attacks are solved (start points and bounds are UNSETTLED in the spec).

    Starts: the controls of the policies a_t = μ_t (honest mean) and a_t = −μ_t played
    under the aggregator, then ``restarts`` random starts a_t ~ N(0, ``start_std``² I)
    from the study's seed. ``bound`` limits every coordinate of a_t to [−bound, bound]
    (None: unbounded). ``method`` is one SciPy method for every aggregator, or a mapping
    from aggregator names to methods; unnamed aggregators keep the seed's solver
    (`byzbench.optimal.default_solver`). ``maxiter`` is passed to SciPy (None: its default).
    """

    restarts: int = 3
    start_std: float = 3.0
    bound: float | None = 20.0
    maxiter: int | None = None
    method: str | Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        check_int(self.restarts, "restarts", low=0)
        check_real(self.start_std, "start_std", low=0.0, low_open=True)
        if self.bound is not None:
            check_real(self.bound, "bound", low=0.0, low_open=True)
        if self.maxiter is not None:
            check_int(self.maxiter, "maxiter", low=1)
        if isinstance(self.method, Mapping):
            unknown = [k for k in self.method if k not in AGGREGATORS.names() and not _is_alias(k)]
            if unknown:
                raise ParamError("method", f"method names unknown aggregator(s) {', '.join(map(repr, unknown))}")
            methods = {AGGREGATORS.canonical(k): check_choice(v, "method", SOLVERS) for k, v in self.method.items()}
            object.__setattr__(self, "method", methods)
        elif self.method is not None:
            check_choice(self.method, "method", SOLVERS)

    def method_for(self, rule: str) -> str:
        """The SciPy method for aggregator ``rule`` (a canonical registry name)."""
        if isinstance(self.method, Mapping):
            return self.method.get(rule) or default_solver(rule)
        return self.method or default_solver(rule)


def _is_alias(name: Any) -> bool:
    try:
        AGGREGATORS.canonical(name)
    except ConfigError:
        return False
    return True


@dataclass
class StudyRun:
    """One (aggregator, attack) trajectory and how it was obtained."""

    aggregator: str
    attack: str
    kind: str  # baseline, classic or nlp
    rollout: Rollout
    objective: str = ""
    solver: str = ""
    value: float = math.nan  # J of an NLP run
    evaluations: int = 0
    seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        """L(θ_T)."""
        return float(self.rollout.losses[-1])

    @property
    def mean_loss(self) -> float:
        """The mean of L(θ_1..θ_T), the attacked steps (as ``nlp1``)."""
        return float(self.rollout.losses[1:].mean())


@dataclass
class StudyResult:
    """Every run of a study, with its set-up."""

    problem: ToyProblem
    solver: SolverSettings
    seed: int
    runs: list[StudyRun] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def aggregators(self) -> list[str]:
        return list(dict.fromkeys(r.aggregator for r in self.runs))

    def runs_of(self, aggregator: str, kind: str | None = None) -> list[StudyRun]:
        return [r for r in self.runs if r.aggregator == aggregator and (kind is None or r.kind == kind)]

    def best_nlp(self, aggregator: str, metric: str = "final") -> StudyRun | None:
        """The NLP run with the largest ``metric`` (``final`` or ``mean`` loss)."""
        runs = self.runs_of(aggregator, "nlp")
        return max(runs, key=lambda r: _metric(r, metric)) if runs else None

    def best_classic(self, aggregator: str, metric: str = "final") -> StudyRun | None:
        runs = self.runs_of(aggregator, "classic")
        return max(runs, key=lambda r: _metric(r, metric)) if runs else None

    def nlp_dominates(self, aggregator: str, metric: str = "final") -> bool | None:
        """The headline claim: the best NLP ``metric`` ≥ every classic attack's (None: nothing to compare)."""
        nlp, classic = self.best_nlp(aggregator, metric), self.best_classic(aggregator, metric)
        if nlp is None or classic is None:
            return None
        return _metric(nlp, metric) >= _metric(classic, metric)

    def records(self) -> list[dict[str, Any]]:
        """One record per run and step 0..T: aggregator, attack, kind, objective, solver, step, θ, loss."""
        out = []
        for r in self.runs:
            for step, (theta, loss) in enumerate(zip(r.rollout.thetas.tolist(), r.rollout.losses.tolist())):
                out.append({"aggregator": r.aggregator, "attack": r.attack, "kind": r.kind,
                            "objective": r.objective, "solver": r.solver, "step": step,
                            "theta_x": theta[0], "theta_y": theta[1], "loss": loss})
        return out


def _metric(run: StudyRun, metric: str) -> float:
    if metric == "final":
        return run.final_loss
    if metric == "mean":
        return run.mean_loss
    raise ValueError(f"metric must be 'final' or 'mean', got {metric!r}")


def study_seeds(seed: int) -> dict[str, int]:
    """Independent seeds of the study's streams (samples, attacks, NLP starts, defenses)."""
    check_int(seed, "seed", low=0)
    names = ("samples", "attack", "starts", "defense")
    children = np.random.SeedSequence(seed).spawn(len(names))
    return {k: int(c.generate_state(1, np.uint64)[0] >> np.uint64(1)) for k, c in zip(names, children)}


def build_defense(spec: Any, infeasible: str = "clamp") -> tuple[str, Defense]:
    """The defense's label (its spec as given) and the `Defense`; every stage gets
    ``infeasible`` unless its spec sets it (``"krum"``, ``"cc(tau=5)"``, ``"bucketing > cc"``)."""
    check_choice(infeasible, "infeasible", ("raise", "clamp"))
    chain = parse_chain(spec, "aggregators")
    built = [{**c.to_dict(), "infeasible": c.params.get("infeasible", infeasible)} for c in chain]
    return chain_to_str(chain), Defense.from_spec(built, "aggregators")


def build_attack(spec: Any) -> tuple[str, Attack]:
    """A classic attack's label and instance from a spec such as ``"alie"`` or ``"alie(z=1.5)"``."""
    component = parse_component(spec, "attacks")
    attack = ATTACKS.create(component.name, "attacks", **component.params)
    return str(component), attack


def solve_nlp(dynamics: Dynamics, objective: str, method: str, starts: Sequence[np.ndarray],
              settings: SolverSettings) -> tuple[np.ndarray, float, int]:
    """The controls a_1..a_T (flat ``[2T]``) maximising J from the best of ``starts``,
    its J and the number of trajectory evaluations."""
    steps = dynamics.problem.steps

    def value(x: np.ndarray) -> float:
        controls = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).view(steps, 2)
        return trajectory_value(dynamics.fixed(controls).losses[1:].numpy(), objective)

    bounds = None if settings.bound is None else [(-settings.bound, settings.bound)] * (2 * steps)
    best_x, best_v, evaluations = None, -math.inf, 0
    for x0 in starts:
        if settings.bound is not None:
            x0 = np.clip(x0, -settings.bound, settings.bound)
        res = maximize(value, x0, method=method, bounds=bounds, maxiter=settings.maxiter)
        evaluations += res.evaluations
        if res.value > best_v:
            best_x, best_v = res.x, res.value
    return best_x, best_v, evaluations


def nlp_starts(dynamics: Dynamics, settings: SolverSettings, seed: int) -> list[np.ndarray]:
    """Start points: the honest-mean and negated-mean policies' controls, then random ones."""
    starts = [dynamics.rollout(honest_mean_policy(sign)).byzantine[:, 0].reshape(-1).numpy() for sign in (1.0, -1.0)]
    rng = np.random.default_rng(seed)
    starts += [settings.start_std * rng.standard_normal(2 * dynamics.problem.steps) for _ in range(settings.restarts)]
    return starts


def run_study(
    problem: ToyProblem | None = None,
    aggregators: Sequence[Any] = DEFAULT_AGGREGATORS,
    attacks: Sequence[Any] = DEFAULT_ATTACKS,
    objectives: Sequence[str] = OBJECTIVES,
    seed: int = 0,
    solver: SolverSettings | None = None,
    infeasible: str = "clamp",
    baseline: bool = True,
    progress: Callable[[str], None] | None = None,
) -> StudyResult:
    """Every classic attack and NLP objective against every aggregator on the same samples.

    ``aggregators`` and ``attacks`` are registry specs (``"cc(tau=5)"``, ``"alie(z=1.5)"``);
    ``baseline`` adds the no-attack run (the Byzantine workers send their own honest
    gradients). ``progress`` receives a line per finished run.
    """
    problem = problem or ToyProblem()
    solver = solver or SolverSettings()
    for kind in objectives:
        check_choice(kind, "objectives", OBJECTIVES)
    seeds = study_seeds(seed)
    samples = problem.samples(seeds["samples"])
    attack_list = [build_attack(a) for a in attacks]
    defenses = [build_defense(spec, infeasible) for spec in aggregators]  # every spec checked before any run
    result = StudyResult(problem, solver, seed)
    began = time.perf_counter()
    for label, defense in defenses:
        dynamics = Dynamics(problem, samples, defense, seeds["defense"])
        plays = ([(BASELINE, "baseline", ATTACKS.create(BASELINE, "attacks"))] if baseline else [])
        plays += [(name, "classic", attack) for name, attack in attack_list]
        for name, kind, attack in plays:
            tic = time.perf_counter()
            rollout = dynamics.rollout(attack_policy(attack, problem, defense, seeds["attack"]))
            _add(result, StudyRun(label, name, kind, rollout, seconds=time.perf_counter() - tic), progress)
        if objectives:
            method = solver.method_for(defense.aggregator.name)
            starts = nlp_starts(dynamics, solver, seeds["starts"])
            for kind in objectives:
                tic = time.perf_counter()
                x, v, evals = solve_nlp(dynamics, kind, method, starts, solver)
                rollout = dynamics.fixed(torch.from_numpy(x).view(problem.steps, 2))
                _add(result, StudyRun(label, kind, "nlp", rollout, objective=kind, solver=method, value=v,
                                      evaluations=evals, seconds=time.perf_counter() - tic), progress)
    result.seconds = time.perf_counter() - began
    return result


def _add(result: StudyResult, run: StudyRun, progress: Callable[[str], None] | None) -> None:
    result.runs.append(run)
    if progress is not None:
        evals = f"{run.evaluations} evaluations, " if run.kind == "nlp" else ""
        progress(f"{run.aggregator:>8s}  {run.attack:<10s} final {run.final_loss:8.4f}  "
                 f"mean {run.mean_loss:8.4f}  ({evals}{run.seconds:.1f} s)")


CSV_COLUMNS = ("aggregator", "attack", "kind", "objective", "solver", "step", "theta_x", "theta_y", "loss")


def write_csv(result: StudyResult, path: str | Path) -> Path:
    """Write `StudyResult.records` (one row per run and step) to ``path``."""
    path = Path(path)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for rec in result.records():
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in rec.items()})
    return path


def format_table(result: StudyResult) -> str:
    """Final and mean loss per aggregator × attack; ``*`` marks the best NLP run of each column.

    The last line per aggregator states the headline claim: whether the best NLP run's
    final (mean) loss is ≥ every classic attack's.
    """
    wa = max([len("aggregator"), *(len(r.aggregator) for r in result.runs)])
    wk = max([len("attack"), *(len(r.attack) for r in result.runs)])
    lines = [f"{'aggregator':<{wa}s} {'attack':<{wk}s} {'kind':<9s} {'final':>10s} {'mean':>10s}"]
    for agg in result.aggregators:
        best = {m: result.best_nlp(agg, m) for m in ("final", "mean")}
        for run in result.runs_of(agg):
            cells = [f"{_metric(run, m):9.4f}" + ("*" if run is best[m] else " ") for m in ("final", "mean")]
            lines.append(f"{agg:<{wa}s} {run.attack:<{wk}s} {run.kind:<9s} {cells[0]:>10s} {cells[1]:>10s}")
        verdict = {m: result.nlp_dominates(agg, m) for m in ("final", "mean")}
        if None not in verdict.values():
            lines.append(f"{'':<{wa}s} best NLP ≥ every classic attack: final {_yes(verdict['final'])}, "
                         f"mean {_yes(verdict['mean'])}")
    return "\n".join(lines)


def _yes(flag: bool | None) -> str:
    return "yes" if flag else "no"


#: Line colours: classic attacks solid in tab10's first six colours, NLP attacks dashed in
#: five others, the no-attack baseline dotted grey.
_CLASSIC_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#7f7f7f", "#aec7e8")
_NLP_COLOURS = ("#e377c2", "#17becf", "#bcbd22", "#393b79", "#000000", "#ad494a")


def _styles(runs: list[StudyRun]) -> list[dict[str, Any]]:
    out, counts = [], {"classic": 0, "nlp": 0}
    for run in runs:
        if run.kind == "baseline":
            out.append({"color": "0.6", "linestyle": ":", "linewidth": 1.2})
            continue
        palette = _NLP_COLOURS if run.kind == "nlp" else _CLASSIC_COLOURS
        colour = palette[counts[run.kind] % len(palette)]
        counts[run.kind] += 1
        out.append({"color": colour, "linestyle": "--" if run.kind == "nlp" else "-",
                    "linewidth": 1.6 if run.kind == "nlp" else 1.1})
    return out


def _panels(count: int, width: float = 3.6, height: float = 3.4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(count, 3)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat[:count])


def plot_trajectories(result: StudyResult, path: str | Path) -> Path:
    """Figure 1: θ_0..θ_T in the plane, one panel per aggregator, one line per attack."""
    aggs = result.aggregators
    plt, fig, axes = _panels(len(aggs))
    mean, start = result.problem.mean, result.problem.start
    for ax, agg in zip(axes, aggs):
        runs = result.runs_of(agg)
        for run, style in zip(runs, _styles(runs)):
            xy = run.rollout.thetas.numpy()
            ax.plot(xy[:, 0], xy[:, 1], marker=".", markersize=4, label=run.attack, **style)
        ax.plot(*mean, marker="*", color="black", markersize=12, linestyle="none", label="true mean")
        ax.plot(*start, marker="o", color="black", markersize=5, linestyle="none")
        ax.set_title(agg)
        ax.set_xlabel("θ₁")
        ax.set_ylabel("θ₂")
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    return _save(plt, fig, path)


def plot_losses(result: StudyResult, path: str | Path) -> Path:
    """Figure 2: L(θ_t) = ‖θ_t − m‖ per step, one panel per aggregator, one line per attack."""
    aggs = result.aggregators
    plt, fig, axes = _panels(len(aggs))
    for ax, agg in zip(axes, aggs):
        runs = result.runs_of(agg)
        for run, style in zip(runs, _styles(runs)):
            ax.plot(range(len(run.rollout.losses)), run.rollout.losses.numpy(), marker=".", markersize=4,
                    label=run.attack, **style)
        ax.set_title(agg)
        ax.set_xlabel("step t")
        ax.set_ylabel("‖θ_t − m‖")
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    return _save(plt, fig, path)


def _legend(fig: Any, axes: list[Any]) -> None:
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07 + 0.02 * (len(labels) > 7), 1, 1))


def _save(plt: Any, fig: Any, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_outputs(result: StudyResult, out: str | Path) -> dict[str, Path]:
    """``mean_estimation.csv``, ``trajectories.png`` and ``loss_per_step.png`` in folder ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "csv": write_csv(result, out / "mean_estimation.csv"),
        "trajectories": plot_trajectories(result, out / "trajectories.png"),
        "loss_per_step": plot_losses(result, out / "loss_per_step.png"),
    }
