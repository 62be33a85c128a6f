"""Calibration of parametrised attacks: the strength that hurts a defense most.

Errami, El Hammouti and Bergou ("Stress-Testing Byzantine Defenses under Data
Heterogeneity", workshop version of IEEE Access 2025; ALGORITHMS.md §7.1) show that a
fixed attack strength misjudges a defense: ALIE's z and IPM's ε must be *calibrated*
for each defense and heterogeneity level (their FMNIST values: z = 8, ε = 2.5). For a
base config (defense, partition, model …) and an attack family, `calibrate` returns

    v* = argmin_v  mean_{s ∈ seeds}  acc(base ⊕ {attack.param = v, seed = s})

where ``acc`` is the test accuracy ``metric`` of a full run: ``max_accuracy`` (the
maximum over the run's evaluations, seed 000's metric; default) or ``final_accuracy``.

Method (exactly):

1. **Proxy, grid.** Every grid value runs for ``proxy_rounds`` rounds (default
   ⌈rounds/5⌉) on each of the first ``proxy_seeds`` seeds (default 1). Its proxy score,
   averaged over those seeds and compared at 4 significant digits (closer scores tie),
   is ``proxy_score``:

   - ``accuracy`` (default): the ``metric`` of the short run, lower = stronger; a
     diverged run scores the chance accuracy 1/num_classes, whatever the metric;
   - ``deviation``: the mean over the short run's rounds of ‖R_t − μ_H,t‖, the distance
     of the aggregate from the honest mean (the quantity (f, κ)-robustness bounds;
     Allouah et al., AISTATS 2023), higher = stronger; a diverged run scores +∞.
     Attacks that speed up early training and only cap the final accuracy (measured:
     ALIE against CC, docs/calibration.md) fool the short-horizon accuracy, not this.
2. **Proxy, refinement** (continuous families, ``refine=True``, ≥ 2 grid values).
   Golden-section search for the strongest score on the bracket formed by the best grid
   value's two grid neighbours (at an end of the grid: its one neighbour and itself),
   in the family's scale (log: on log v). It scores exactly ``refine_evals`` (default
   5) points: the two interior points b − (b−a)/φ and a + (b−a)/φ, then one per step,
   keeping the side of the stronger score (ties keep the smaller strengths). Refined
   values are rounded to 4 significant digits (integers for integer parameters); a
   rounded value scored before is not run again.
3. **Confirmation.** The ``confirm_top`` (default 2) strongest proxy values (grid and
   refined; ties: the smaller strength) run for the full ``rounds`` on every seed of
   ``seeds`` (default: seed, seed+1, seed+2 of the base config; seed 000 uses 3 seeds). The
   calibrated value has the lowest mean confirmed accuracy (ties: the smaller strength);
   the result reports its mean ± sample standard deviation (ddof 1; 0 for one seed).

"Smaller strength" is the smaller value for a continuous family and the earlier grid
entry for a categorical one. Runs go through ``run_many(configs) -> results`` (default
`sequential_runner`: in-process `run_experiment`, skipping configs already finished in
the results store, so an interrupted calibration resumes). Proxy and full runs differ by
``rounds``, hence by run id.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from byzbench.config import ExperimentConfig
from byzbench.errors import ConfigError
from byzbench.experiments.store import ResultsStore
from byzbench.spec import ComponentSpec

if TYPE_CHECKING:
    from byzbench.sim.engine import RunResult

CONTINUOUS, CATEGORICAL = "continuous", "categorical"
KINDS = (CONTINUOUS, CATEGORICAL)
SCALES = ("linear", "log")
METRICS = ("max_accuracy", "final_accuracy")
PROXY_SCORES = ("accuracy", "deviation")
STAGES = ("grid", "refine", "confirm")
INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # 1/φ, the golden-section ratio
SIGNIFICANT_DIGITS = 4
DEFAULT_REFINE_EVALS = 5
DEFAULT_CONFIRM_SEEDS = 3
PROXY_FRACTION = 5  # proxy_rounds = ⌈rounds / PROXY_FRACTION⌉

RunMany = Callable[[list[ExperimentConfig]], Sequence[Any]]
Log = Callable[[str], None]


@dataclass(frozen=True)
class AttackFamily:
    """A parametrised attack: the parameter to calibrate and where to search it.

    ``kind`` continuous (numbers; refinable) or categorical (a finite set of choices);
    ``bounds`` the admissible closed interval of a continuous value; ``scale`` linear or
    log (refinement in log v; values must be > 0); ``integer`` rounds refined values.
    """

    attack: str
    param: str
    kind: str
    grid: tuple[Any, ...]
    bounds: tuple[float, float] = (-math.inf, math.inf)
    scale: str = "linear"
    integer: bool = False
    source: str = ""

    def order(self, value: Any) -> Any:
        """Sort key of "smaller strength": the value, or its grid position."""
        return self.grid.index(value) if self.kind == CATEGORICAL else value


FAMILIES: dict[str, AttackFamily] = {}


def register_family(family: AttackFamily) -> AttackFamily:
    """Add (or replace) the default family of ``family.attack``; returns it checked."""
    checked = _checked(family)
    FAMILIES[family.attack] = checked
    return checked


_SEED000 = "seed 000 (Errami et al.): {0, 0.5, 2.5, 5, 8, 10}"
for _family in (
    AttackFamily("alie", "z", CONTINUOUS, (0.0, 0.5, 2.5, 5.0, 8.0, 10.0), (0.0, math.inf), source=_SEED000),
    AttackFamily("ipm", "epsilon", CONTINUOUS, (0.0, 0.5, 2.5, 5.0, 8.0, 10.0), (0.0, math.inf), source=_SEED000),
    AttackFamily("strike", "nu", CONTINUOUS, tuple(0.25 * i for i in range(1, 9)), (0.0, math.inf),
                 source="seed 002 (STRIKE): ν ∈ {0.25·i : i = 1..8}"),
    AttackFamily("hybrid", "z2", CONTINUOUS, (0.5, 1.0, 1.5, 2.5, 5.0, 10.0), (0.0, math.inf),
                 source="seed 004: z2 = 1.5 (Chebyshev z2 ≲ √2), widened to seed 000's range"),
    AttackFamily("minmax", "perturbation", CATEGORICAL, ("std", "unit_vec", "sign"), source="§4.8"),
    AttackFamily("minsum", "perturbation", CATEGORICAL, ("std", "unit_vec", "sign"), source="§4.8"),
    AttackFamily("tailored", "epsilon", CONTINUOUS, (0.1, 0.3, 1.0, 3.0, 10.0, 30.0), (0.0, math.inf), "log",
                 source="MixTailor: ε ∈ {0.1, 10}"),
    AttackFamily("gaussian", "sigma", CONTINUOUS, (0.1, 1.0, 10.0, 100.0, 1000.0), (0.0, math.inf), "log",
                 source="byzfl σ = 1, mix-tailor σ = 200"),
    AttackFamily("signflip", "scale", CONTINUOUS, (0.5, 1.0, 2.0, 4.0, 8.0, 16.0), (0.0, math.inf), "log",
                 source="κ = 1 (seed 000), doubled"),
):
    FAMILIES[_family.attack] = _family  # checked by the tests; the registry may lack e.g. hybrid


# ---------------------------------------------------------------------------- families


def resolve_family(attack: str, param: str | None = None, grid: Sequence[Any] | None = None) -> AttackFamily:
    """The family to calibrate: the table's for ``attack``, or ``param`` with ``grid``.

    A ``param`` other than the table's needs a ``grid``; its kind is categorical when a
    grid value is a string, else continuous (integer when the parameter is typed int),
    with linear scale and no bounds. Raises `ConfigError` on key ``attack``, ``param``
    or ``grid``.
    """
    from byzbench.attacks import ATTACKS

    name = ATTACKS.canonical(attack, "attack")
    known = FAMILIES.get(name)
    if param is None and known is None:
        raise ConfigError(
            f"no calibration family for attack {name!r} (families: {', '.join(sorted(FAMILIES))}); "
            "give the parameter and a grid", "attack")
    if param is not None and (known is None or known.param != param):
        entry = ATTACKS.entry(name)
        params = {p.name: p for p in entry.params}
        if param not in params:
            raise ConfigError(f"attack {name!r} has no parameter {param!r}; its parameters: "
                              f"{', '.join(sorted(params)) or '(none)'}", "param")
        if grid is None:
            raise ConfigError(f"no default grid for {name}.{param}; give one", "grid")
        annotation = params[param].annotation
        known = AttackFamily(name, param, _infer_kind(grid), tuple(grid),
                             integer="int" in annotation and "float" not in annotation, source="user")
    family = known if grid is None else replace(known, grid=tuple(grid))
    return _checked(family)


def _infer_kind(grid: Sequence[Any]) -> str:
    return CATEGORICAL if any(isinstance(v, str) for v in grid) else CONTINUOUS


def _checked(family: AttackFamily) -> AttackFamily:
    """``family`` with its grid validated (and, when continuous, sorted)."""
    if family.kind not in KINDS:
        raise ConfigError(f"must be one of {', '.join(KINDS)}, got {family.kind!r}", "kind")
    if family.scale not in SCALES:
        raise ConfigError(f"must be one of {', '.join(SCALES)}, got {family.scale!r}", "scale")
    grid = tuple(family.grid)
    if not grid:
        raise ConfigError("needs at least one value", "grid")
    if family.kind == CONTINUOUS:
        grid = tuple(sorted(_number(v, family) for v in grid))
    if len(set(map(repr, grid))) != len(grid):
        raise ConfigError(f"values must be distinct, got {list(family.grid)}", "grid")
    return replace(family, grid=grid)


def _number(value: Any, family: AttackFamily) -> float | int:
    """A continuous grid value, checked against the family's bounds and scale."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{family.attack}.{family.param} values must be finite numbers, got {value!r}", "grid")
    low, high = family.bounds
    if not low <= value <= high:
        raise ConfigError(f"{family.attack}.{family.param} values must lie in [{low}, {high}], got {value}", "grid")
    if family.scale == "log" and value <= 0:
        raise ConfigError(f"{family.attack}.{family.param} is searched on a log scale: values must be > 0, "
                          f"got {value}", "grid")
    if family.integer:
        if value != int(value):
            raise ConfigError(f"{family.attack}.{family.param} is an integer parameter, got {value}", "grid")
        return int(value)
    return float(value)


# ---------------------------------------------------------------------------- runs


def sequential_runner(store: ResultsStore | None = None, threads: int | None = None) -> RunMany:
    """``run_many`` running configs one by one in this process (`run_experiment`).

    With a ``store``, each run is recorded, and a config whose run id is already
    finished (or diverged) there is read back instead of run again. ``threads``: torch
    threads while running (restored after; None keeps the current setting). On a
    shared 2-core CPU one thread is measured several times faster than two.
    """
    from byzbench.experiments.runner import run_experiment

    _check_threads(threads)

    def run_many(configs: list[ExperimentConfig]) -> list[RunResult]:
        import torch

        done = store.finished_ids() if store is not None else set()
        before = torch.get_num_threads()
        torch.set_num_threads(threads or before)
        try:
            return [stored_result(store, c.run_id) if c.run_id in done else run_experiment(c, store)
                    for c in configs]
        finally:
            torch.set_num_threads(before)

    return run_many


def _check_threads(threads: int | None) -> None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"must be an integer ≥ 1 or None, got {threads!r}", "threads")


def stored_result(store: ResultsStore, run_id: str) -> RunResult:
    """A `RunResult` rebuilt from the results store's row and round metrics."""
    from byzbench.sim.engine import RunResult

    rec = store.get_run(run_id)
    if rec is None:
        raise KeyError(f"run {run_id!r} is not in {store.path}")
    return RunResult(
        run_id=rec.run_id, config=rec.config, status=rec.status, rounds_completed=rec.rounds_completed or 0,
        final_accuracy=rec.final_accuracy, final_loss=rec.final_loss, diverged_round=rec.diverged_round,
        wall_time_s=rec.wall_time_s or 0.0, metrics=store.round_metrics(run_id), summary=rec.summary or {},
    )


def run_accuracy(result: Any, metric: str, chance: float) -> float:
    """The run's ``metric``; ``chance`` for a diverged run (or a non-finite accuracy).

    ``max_accuracy`` is the maximum of the ``test_accuracy`` series (round 0 included);
    ``final_accuracy`` the last evaluation. A run that neither finished nor diverged
    (e.g. ``failed``) cannot be ranked and raises `RuntimeError`.
    """
    status = getattr(result, "status", None)
    if status == "diverged":
        return chance
    if status != "finished":
        raise RuntimeError(f"run {getattr(result, 'run_id', '?')} ended with status {status!r}; "
                           "calibration needs finished or diverged runs")
    if metric == "final_accuracy":
        acc = result.final_accuracy
    else:
        series = [v for _, v in result.metrics.get("test_accuracy", []) if v is not None and math.isfinite(v)]
        acc = max(series) if series else None
    return float(acc) if acc is not None and math.isfinite(acc) else chance


def run_deviation(result: Any) -> float | None:
    """Mean ‖R_t − μ_H,t‖ (``dist_to_honest_mean``) over the run's rounds.

    +∞ for a diverged run; None when the result carries no such series.
    """
    if getattr(result, "status", None) == "diverged":
        return math.inf
    series = [v for _, v in getattr(result, "metrics", {}).get("dist_to_honest_mean", [])
              if v is not None and math.isfinite(v)]
    return statistics.fmean(series) if series else None


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Evaluation:
    """One run of the calibration: stage, strength, seed, horizon, accuracy, deviation."""

    stage: str
    value: Any
    seed: int
    rounds: int
    accuracy: float
    deviation: float | None
    status: str
    run_id: str
    wall_time_s: float


@dataclass(frozen=True)
class Confirmed:
    """A confirmed candidate: per-seed accuracies of its full runs and their mean ± std."""

    value: Any
    accuracies: tuple[float, ...]
    mean: float
    std: float


@dataclass
class CalibrationResult:
    """Every evaluation of a calibration, the calibrated value and its accuracy."""

    attack: str
    param: str
    kind: str
    scale: str
    metric: str
    proxy_score: str
    defense: str
    grid: tuple[Any, ...]
    rounds: int
    proxy_rounds: int
    proxy_seeds: tuple[int, ...]
    seeds: tuple[int, ...]
    chance: float
    evaluations: list[Evaluation]
    proxy_ranking: list[tuple[Any, float]]
    confirmed: list[Confirmed]
    value: Any
    accuracy_mean: float
    accuracy_std: float
    stage_times: dict[str, float] = field(default_factory=dict)
    base_config: dict[str, Any] = field(default_factory=dict)

    @property
    def total_time_s(self) -> float:
        return sum(self.stage_times.values())

    def stage(self, name: str) -> list[Evaluation]:
        """The evaluations of one stage (``grid``, ``refine`` or ``confirm``)."""
        return [e for e in self.evaluations if e.stage == name]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of everything above."""
        out = asdict(self)
        out["grid"] = list(self.grid)
        out["proxy_ranking"] = [{"value": v, "score": s} for v, s in self.proxy_ranking]
        out["total_time_s"] = self.total_time_s
        return _json_safe(out)


def _json_safe(obj: Any) -> Any:
    """``obj`` with tuples as lists and non-finite floats as the strings "inf", "-inf", "nan"."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


# ---------------------------------------------------------------------------- search


class _Evaluator:
    """Runs candidates through ``run_many`` and remembers every outcome by run id."""

    def __init__(self, base: ExperimentConfig, family: AttackFamily, run_many: RunMany, metric: str,
                 chance: float, log: Log | None) -> None:
        self.base, self.family, self.run_many = base, family, run_many
        self.metric, self.chance, self.log = metric, chance, log
        self.cache: dict[str, tuple[float, float | None, str, float]] = {}
        self.evaluations: list[Evaluation] = []

    def config(self, value: Any, seed: int, rounds: int) -> ExperimentConfig:
        """The base config with ``attack.param = value``, ``seed`` and ``rounds``."""
        base, fam = self.base, self.family
        params = dict(base.attack.params) if base.attack.name == fam.attack else {}
        params[fam.param] = value
        cfg = base.copy()
        cfg.attack, cfg.seed, cfg.rounds = ComponentSpec(fam.attack, params), seed, rounds
        return cfg.validate()

    def __call__(self, stage: str, values: Sequence[Any], rounds: int,
                 seeds: Sequence[int]) -> dict[Any, list[Evaluation]]:
        """Evaluations ``{value: [per seed]}``, running only configs not seen before."""
        configs = {(v, s): self.config(v, s, rounds) for v in values for s in seeds}
        todo = list({c.run_id: c for c in configs.values() if c.run_id not in self.cache}.values())
        if todo:
            results = list(self.run_many(todo))
            if len(results) != len(todo):
                raise RuntimeError(f"run_many returned {len(results)} results for {len(todo)} configs")
            for cfg, res in zip(todo, results):
                if getattr(res, "run_id", cfg.run_id) != cfg.run_id:
                    raise RuntimeError(f"run_many returned run {res.run_id} in place of {cfg.run_id}")
                self.cache[cfg.run_id] = (run_accuracy(res, self.metric, self.chance), run_deviation(res),
                                          res.status, float(getattr(res, "wall_time_s", 0.0) or 0.0))
        out: dict[Any, list[Evaluation]] = {v: [] for v in values}
        for (v, s), cfg in configs.items():
            acc, dev, status, wall = self.cache[cfg.run_id]
            ev = Evaluation(stage, v, s, rounds, acc, dev, status, cfg.run_id, wall)
            self.evaluations.append(ev)
            out[v].append(ev)
            if self.log is not None:
                dev_s = "" if dev is None else f", deviation {dev:.4g}"
                self.log(f"{stage:8s} {self.family.param}={_fmt_value(v)} seed {s} ({rounds} rounds): "
                         f"{100 * acc:.2f}%{dev_s} {status}")
        return out


def _significant(x: float) -> float:
    """``x`` rounded to `SIGNIFICANT_DIGITS` significant digits (0 and ±∞ unchanged)."""
    return float(x) if x == 0 or not math.isfinite(x) else float(f"{x:.{SIGNIFICANT_DIGITS}g}")


def _round_value(x: float, family: AttackFamily) -> float | int:
    return round(x) if family.integer else _significant(x)


def _bracket(grid: tuple[float, ...], best: float) -> tuple[float, float]:
    """The best grid value's neighbours (itself at an end of the grid)."""
    i = grid.index(best)
    return grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]


def golden_refine(family: AttackFamily, best: float, score: Callable[[Any], float], evals: int) -> None:
    """Golden-section search on the bracket of ``best``: exactly ``evals`` ≥ 2 scores.

    With u = v (linear) or log v (log scale), bracket [a, b]: c = b − (b−a)/φ and
    d = a + (b−a)/φ; while evaluations remain, if score(c) ≤ score(d) the minimum is kept
    in [a, d] (new c), else in [c, b] (new d). ``score`` takes the rounded value.
    """
    to_u = math.log if family.scale == "log" else float
    from_u = math.exp if family.scale == "log" else float
    lo, hi = _bracket(family.grid, best)
    a, b = to_u(lo), to_u(hi)

    def f(u: float) -> float:
        return score(_round_value(from_u(u), family))

    c, d = b - INV_PHI * (b - a), a + INV_PHI * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(evals - 2):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - INV_PHI * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + INV_PHI * (b - a)
            fd = f(d)


def calibrate(
    base: ExperimentConfig,
    attack: str,
    *,
    param: str | None = None,
    grid: Sequence[Any] | None = None,
    proxy_rounds: int | None = None,
    proxy_seeds: int = 1,
    confirm_top: int = 2,
    seeds: Sequence[int] | None = None,
    metric: str = "max_accuracy",
    proxy_score: str = "accuracy",
    refine: bool = True,
    refine_evals: int = DEFAULT_REFINE_EVALS,
    run_many: RunMany | None = None,
    store: ResultsStore | None = None,
    threads: int | None = None,
    log: Log | None = None,
) -> CalibrationResult:
    """Calibrate ``attack`` against ``base``'s defense and data (method: module docs).

    ``base`` holds everything but the attack strength (defense, partition, model,
    rounds); its attack parameters are kept when its attack is ``attack``. ``seeds``
    default to (seed, seed+1, seed+2) of ``base``; the proxy uses the first
    ``proxy_seeds`` of them; ``proxy_score`` is ``accuracy`` or ``deviation``.
    ``run_many`` defaults to `sequential_runner(store, threads)`; ``log`` receives one
    line per evaluation. Invalid arguments raise `ConfigError`
    naming the argument before any run.
    """
    base = base.copy().validate()
    family = resolve_family(attack, param, grid)
    seeds = _check_seeds(base, seeds)
    proxy_rounds = _check_proxy_rounds(base, proxy_rounds)
    _check_threads(threads)
    _check_options(base, metric, proxy_score, proxy_seeds, len(seeds), confirm_top, refine, refine_evals)
    run_many = run_many or sequential_runner(store, threads)
    evaluator = _Evaluator(base, family, run_many, metric, _chance(base), log)
    for value in family.grid:  # every candidate config is valid before the first run
        evaluator.config(value, seeds[0], proxy_rounds)
    times: dict[str, float] = {}
    proxy = seeds[:proxy_seeds]
    keys: dict[Any, float] = {}  # proxy score signed so that lower = stronger attack

    def score(stage: str, values: Sequence[Any]) -> None:
        for value, evs in evaluator(stage, values, proxy_rounds, proxy).items():
            keys[value] = _proxy_key(evs, proxy_score)

    _timed(times, "grid", lambda: score("grid", family.grid))
    if refine and family.kind == CONTINUOUS and len(family.grid) >= 2:
        best = min(keys, key=lambda v: (keys[v], family.order(v)))

        def key(value: Any) -> float:
            if value not in keys:
                score("refine", [value])
            return keys[value]

        _timed(times, "refine", lambda: golden_refine(family, best, key, refine_evals))
    order = sorted(keys, key=lambda v: (keys[v], family.order(v)))
    ranking = [(v, keys[v] if proxy_score == "accuracy" else -keys[v]) for v in order]
    top = order[:confirm_top]
    full = _timed(times, "confirm", lambda: evaluator("confirm", top, base.rounds, seeds))
    confirmed = sorted((_confirmed(v, [e.accuracy for e in full[v]]) for v in top),
                       key=lambda c: (c.mean, family.order(c.value)))
    winner = confirmed[0]
    return CalibrationResult(
        attack=family.attack, param=family.param, kind=family.kind, scale=family.scale, metric=metric,
        proxy_score=proxy_score, defense=base.defense, grid=family.grid, rounds=base.rounds, proxy_rounds=proxy_rounds,
        proxy_seeds=tuple(proxy), seeds=tuple(seeds), chance=evaluator.chance, evaluations=evaluator.evaluations,
        proxy_ranking=ranking, confirmed=confirmed, value=winner.value, accuracy_mean=winner.mean,
        accuracy_std=winner.std, stage_times=times, base_config=base.to_dict(),
    )


def _timed(times: dict[str, float], stage: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    out = fn()
    times[stage] = time.perf_counter() - start
    return out


def _proxy_key(evs: list[Evaluation], proxy_score: str) -> float:
    """Mean proxy score over the proxy seeds, signed so that lower = stronger attack,
    at `SIGNIFICANT_DIGITS` digits (closer scores are ties: float noise, e.g. a clipped
    deviation that has saturated, must not decide)."""
    if proxy_score == "accuracy":
        return _significant(statistics.fmean(e.accuracy for e in evs))
    if any(e.deviation is None for e in evs):
        raise RuntimeError("proxy_score 'deviation' needs the runs' dist_to_honest_mean series")
    return -_significant(statistics.fmean(e.deviation for e in evs))


def _confirmed(value: Any, accs: list[float]) -> Confirmed:
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    return Confirmed(value, tuple(accs), statistics.fmean(accs), std)


def _chance(base: ExperimentConfig) -> float:
    """1/num_classes of the base config's dataset: the score of a diverged run."""
    from byzbench.data import load_dataset

    return 1.0 / load_dataset(base.data.name, base.data.params, "data").num_classes


def _check_seeds(base: ExperimentConfig, seeds: Sequence[int] | None) -> list[int]:
    if seeds is None:
        return [base.seed + i for i in range(DEFAULT_CONFIRM_SEEDS)]
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ConfigError(f"must be a non-empty list of integers ≥ 0, got {seeds!r}", "seeds")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"must be distinct, got {seeds!r}", "seeds")
    return seeds


def _check_proxy_rounds(base: ExperimentConfig, proxy_rounds: int | None) -> int:
    if proxy_rounds is None:
        return -(-base.rounds // PROXY_FRACTION)
    if isinstance(proxy_rounds, bool) or not isinstance(proxy_rounds, int) or not 1 <= proxy_rounds <= base.rounds:
        raise ConfigError(f"must be an integer in [1, rounds = {base.rounds}], got {proxy_rounds!r}",
                          "proxy_rounds")
    return proxy_rounds


def _check_options(base: ExperimentConfig, metric: str, proxy_score: str, proxy_seeds: int, n_seeds: int,
                   confirm_top: int, refine: bool, refine_evals: int) -> None:
    if base.n_byzantine < 1:
        raise ConfigError("calibrating an attack needs at least one Byzantine client", "n_byzantine")
    if metric not in METRICS:
        raise ConfigError(f"must be one of {', '.join(METRICS)}, got {metric!r}", "metric")
    if proxy_score not in PROXY_SCORES:
        raise ConfigError(f"must be one of {', '.join(PROXY_SCORES)}, got {proxy_score!r}", "proxy_score")
    for key, value, low, high in (("proxy_seeds", proxy_seeds, 1, n_seeds), ("confirm_top", confirm_top, 1, None)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            bound = f"in [{low}, {high}] (the number of seeds)" if high is not None else f"≥ {low}"
            raise ConfigError(f"must be an integer {bound}, got {value!r}", key)
    if not isinstance(refine, bool):
        raise ConfigError(f"must be true or false, got {refine!r}", "refine")
    if refine and (isinstance(refine_evals, bool) or not isinstance(refine_evals, int) or refine_evals < 2):
        raise ConfigError(f"must be an integer ≥ 2 (golden section starts with two points), got {refine_evals!r}",
                          "refine_evals")


# ---------------------------------------------------------------------------- report


def _fmt_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _pct(x: float) -> str:
    return f"{100 * x:6.2f}%"


def format_calibration(result: CalibrationResult) -> str:
    """A readable table: the proxy ranking, the confirmed candidates and the verdict."""
    r, p = result, result.param
    cfg = r.base_config
    title = (f"calibrate {r.attack}.{p} against {r.defense}  ({_spec(cfg['data'])}, {_spec(cfg['partition'])}, "
             f"{_spec(cfg['model'])}, {cfg['n_clients']} clients, {cfg['n_byzantine']} Byzantine)")
    setup = (f"  metric {r.metric} (diverged = chance {_pct(r.chance).strip()}); proxy {r.proxy_score} over "
             f"{r.proxy_rounds} rounds, seed(s) {_seeds(r.proxy_seeds)}; confirmation {r.rounds} rounds, "
             f"seeds {_seeds(r.seeds)}")
    head = [
        title,
        setup,
        "",
        f"  {'stage':8s} {p:>10s} {'proxy ' + r.proxy_score[:3]:>10s}   status (* confirmed)",
    ]
    shown = _pct if r.proxy_score == "accuracy" else (lambda x: f"{x:.4g}")
    status = {e.value: e.status for e in r.evaluations if e.stage in ("grid", "refine")}
    stage = {e.value: e.stage for e in reversed(r.evaluations) if e.stage in ("grid", "refine")}
    picked = {c.value for c in r.confirmed}
    rows = [f"  {stage[v]:8s} {_fmt_value(v):>10s} {shown(s):>10s}   {status[v]}{' *' if v in picked else ''}"
            for v, s in r.proxy_ranking]
    conf = ["", f"  {'confirm':8s} {p:>10s} {'mean':>8s} {'± std':>8s}   per seed"]
    conf += [f"  {'':8s} {_fmt_value(c.value):>10s} {_pct(c.mean)} ± {100 * c.std:5.2f}   "
             + " ".join(_pct(a).strip() for a in c.accuracies) for c in r.confirmed]
    times = ", ".join(f"{k} {v:.1f} s" for k, v in r.stage_times.items())
    verdict = (f"  calibrated {r.attack}.{p} = {_fmt_value(r.value)}: {r.metric} "
               f"{100 * r.accuracy_mean:.2f} ± {100 * r.accuracy_std:.2f} % over {len(r.seeds)} seed(s)")
    tail = ["", verdict, f"  time: {times}; total {r.total_time_s:.1f} s ({len(r.evaluations)} evaluations)"]
    return "\n".join(head + rows + conf + tail)


def _spec(d: Any) -> str:
    if not isinstance(d, dict):
        return str(d)
    params = ", ".join(f"{k}={v}" for k, v in d.items() if k != "name")
    return f"{d['name']}({params})" if params else d["name"]


def _seeds(seeds: Sequence[int]) -> str:
    return ",".join(map(str, seeds))


__all__ = [
    "FAMILIES",
    "METRICS",
    "PROXY_SCORES",
    "AttackFamily",
    "CalibrationResult",
    "Confirmed",
    "Evaluation",
    "calibrate",
    "format_calibration",
    "golden_refine",
    "register_family",
    "resolve_family",
    "run_accuracy",
    "run_deviation",
    "sequential_runner",
    "stored_result",
]
