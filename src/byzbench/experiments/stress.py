"""The stress test: a gauntlet of calibrated attacks against defenses over heterogeneity levels.

Following Errami, El Hammouti and Bergou ("Stress-Testing Byzantine Defenses under Data
Heterogeneity", workshop version of IEEE Access 2025; ALGORITHMS.md §7.1), a defense is
judged by its **worst** accuracy over attacks whose strength is calibrated for that
defense and heterogeneity level, not by its accuracy under one fixed attack.

For every defense D and heterogeneity level (Dirichlet β, or IID) of the settings:

1. **Calibration (proxy).** Each parametrised attack (a family of
   `byzbench.experiments.calibrate`: ALIE z, IPM ε, STRIKE ν, Min-Max/Min-Sum perturbation
   type, …) runs every value of its grid for ``proxy_rounds`` rounds on the first seed;
   the most damaging value (``proxy_score``: the lowest accuracy, or the largest
   distance of the aggregate from the honest mean; see `choose_strengths`) is the
   calibrated strength for (D, β). Attacks without a
   family run with their defaults.
2. **Gauntlet (full runs).** Every attack (calibrated strength) and the no-attack
   baseline run for ``rounds`` rounds on every seed. These full runs confirm the
   calibration (``byzbench calibrate`` also refines and compares several candidates).
3. **Worst case.** Per (D, β): the lowest mean accuracy over the attacks (mean over
   seeds) and the attack reaching it; per D: the lowest over β.

All runs go through one executor (worker processes or Ray) as two sweeps named
``<name>-proxy`` and ``<name>-gauntlet`` in the results store, so an interrupted stress
test resumes where it stopped and a rerun with the same settings reads the finished runs.
"""

from __future__ import annotations

import csv
import html
import io
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from byzbench.config import ExperimentConfig
from byzbench.errors import ConfigError
from byzbench.experiments.calibrate import (FAMILIES, AttackFamily, resolve_family, run_accuracy, run_deviation,
                                            stored_result)
from byzbench.experiments.store import ResultsStore
from byzbench.experiments.sweep import Sweep
from byzbench.spec import chain_to_str, parse_chain

#: The default gauntlet (issue scope): seven attacks against ten defenses.
DEFAULT_ATTACKS = ("alie", "ipm", "signflip", "mimic", "minmax", "minsum", "strike")
DEFAULT_DEFENSES = ("median", "trmean", "krum", "multikrum", "rfa", "cc", "bucketing(s=2) > rfa",
                    "nnm > trmean", "dnc", "mixtailor")
#: Heterogeneity levels: Dirichlet β, None = IID.
DEFAULT_BETAS: tuple[float | None, ...] = (0.1, 0.5, None)
BASELINE = "none"
METRICS = ("max_accuracy", "final_accuracy")
PROXY_SCORES = ("accuracy", "deviation")
#: Grids of the quick mode: three values per family, spanning its default grid.
QUICK_GRIDS: dict[str, tuple[Any, ...]] = {
    "alie": (0.5, 2.5, 8.0), "ipm": (0.5, 2.5, 8.0), "strike": (0.5, 1.0, 2.0),
    "minmax": ("std", "unit_vec", "sign"), "minsum": ("std", "unit_vec", "sign"),
    "signflip": (1.0, 4.0, 16.0),
}


@dataclass(frozen=True)
class StressSettings:
    """What the stress test runs. `StressSettings.default` / `.quick` are the presets."""

    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    defenses: tuple[str, ...] = DEFAULT_DEFENSES
    betas: tuple[float | None, ...] = DEFAULT_BETAS
    seeds: tuple[int, ...] = (0, 1)
    rounds: int = 200
    proxy_rounds: int = 40
    eval_every: int = 20
    calibrate: bool = True
    grids: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    metric: str = "max_accuracy"
    proxy_score: str = "accuracy"
    name: str = "stress"

    @classmethod
    def default(cls, **over: Any) -> StressSettings:
        """200 rounds, 2 seeds, the families' full grids (about 7 min on 2 cores)."""
        return cls(**over)

    @classmethod
    def quick(cls, **over: Any) -> StressSettings:
        """80 rounds, 1 seed, 3-value grids on 16-round proxies (about 2 min on 2 cores)."""
        base = dict(seeds=(0,), rounds=80, proxy_rounds=16, eval_every=20, grids=dict(QUICK_GRIDS))
        return cls(**{**base, **over})

    def family(self, attack: str) -> AttackFamily | None:
        """The calibration family of ``attack`` (its grid possibly replaced), or None."""
        if not self.calibrate or attack not in FAMILIES:
            return None
        return resolve_family(attack, None, self.grids.get(attack))


def partition_spec(beta: float | None) -> str:
    """The partition of a heterogeneity level: Dirichlet(β), or IID for None."""
    return "iid" if beta is None else f"dirichlet(beta={beta})"


def level_label(beta: float | None) -> str:
    return "IID" if beta is None else f"β={beta:g}"


def check_settings(base: ExperimentConfig, settings: StressSettings) -> StressSettings:
    """Validate the settings (and every config they imply) before any run."""
    from byzbench.attacks import ATTACKS

    if not settings.attacks:
        raise ConfigError("needs at least one attack", "attacks")
    if not settings.defenses:
        raise ConfigError("needs at least one defense", "defenses")
    if not settings.betas:
        raise ConfigError("needs at least one heterogeneity level", "betas")
    if not settings.seeds:
        raise ConfigError("needs at least one seed", "seeds")
    if settings.metric not in METRICS:
        raise ConfigError(f"must be one of {', '.join(METRICS)}, got {settings.metric!r}", "metric")
    if settings.proxy_score not in PROXY_SCORES:
        raise ConfigError(f"must be one of {', '.join(PROXY_SCORES)}, got {settings.proxy_score!r}",
                          "proxy_score")
    for key in ("rounds", "proxy_rounds", "eval_every"):
        value = getattr(settings, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"must be an integer ≥ 1, got {value!r}", key)
    attacks = tuple(ATTACKS.canonical(a, "attacks") for a in settings.attacks)
    if BASELINE in attacks:
        raise ConfigError("the no-attack baseline always runs; do not list it", "attacks")
    for beta in settings.betas:
        if beta is not None and not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
            raise ConfigError(f"β must be a positive number or iid, got {beta!r}", "betas")
    defenses = tuple(chain_to_str(parse_chain(d, "defenses")) for d in settings.defenses)
    for key, values in (("attacks", attacks), ("defenses", defenses), ("betas", settings.betas),
                        ("seeds", settings.seeds)):
        if len(set(values)) != len(values):
            raise ConfigError(f"values must be distinct, got {list(values)}", key)
    settings = replace(settings, attacks=attacks, defenses=defenses)
    for attack in attacks:  # grids valid for their family
        settings.family(attack)
    if base.n_byzantine < 1:
        raise ConfigError("the stress test needs Byzantine clients (n_byzantine ≥ 1)", "n_byzantine")
    return settings


def _attack_spec(attack: str, family: AttackFamily | None, value: Any) -> str:
    if family is None:
        return attack
    text = f"'{value}'" if isinstance(value, str) else repr(value)
    return f"{attack}({family.param}={text})"


def _zip_sweep(name: str, base: ExperimentConfig, points: list[tuple[str, str, str]],
               seeds: Sequence[int]) -> Sweep:
    """A sweep over explicit (defense, partition, attack) points, each on every seed."""
    zipped = {"defense": [p[0] for p in points], "partition": [p[1] for p in points],
              "attack": [p[2] for p in points]}
    return Sweep.from_dict({"name": name, "base": base.to_dict(), "zip": [zipped], "seeds": list(seeds)})


def proxy_points(settings: StressSettings) -> list[tuple[tuple[str, float | None, str, Any], tuple[str, str, str]]]:
    """``((defense, β, attack, value), (defense, partition, attack spec))`` of every proxy run."""
    return [((d, b, a, v), (d, partition_spec(b), _attack_spec(a, fam, v)))
            for d in settings.defenses for b in settings.betas
            for a in settings.attacks if (fam := settings.family(a)) is not None for v in fam.grid]


def proxy_sweep(base: ExperimentConfig, settings: StressSettings) -> Sweep | None:
    """The calibration runs: every grid value of every family, on the first seed."""
    points = [p for _, p in proxy_points(settings)]
    if not points:
        return None
    short = base.copy()
    short.rounds, short.eval_every = settings.proxy_rounds, min(settings.eval_every, settings.proxy_rounds)
    return _zip_sweep(f"{settings.name}-proxy", short, points, settings.seeds[:1])


@dataclass(frozen=True)
class Calibrated:
    """The calibrated strength of one attack for one (defense, level), with its proxy scores
    (``nan`` for a proxy run that failed)."""

    defense: str
    beta: float | None
    attack: str
    param: str
    value: Any
    scores: tuple[tuple[Any, float], ...]


def choose_strengths(store: ResultsStore, proxy: Sweep, settings: StressSettings) -> list[Calibrated]:
    """The most damaging proxy value per (defense, level, attack).

    ``proxy_score="accuracy"``: the lowest proxy accuracy (``metric``; a diverged run
    counts at chance); ties, frequent with ``max_accuracy`` on short horizons where every
    strong attack leaves the maximum at the initial accuracy, go to the lower final
    accuracy. ``"deviation"``: the largest mean distance ‖R_t − μ_H,t‖ of the aggregate
    from the honest mean over the proxy run (+∞ for a diverged run; Allouah et al.,
    AISTATS 2023), then the lower accuracy. Remaining ties go to the smaller strength (the
    earlier grid value). A failed proxy run is not ranked; if every value of a family
    failed, its first grid value is used.
    """
    runs = proxy.runs()
    metas = [m for m, _ in proxy_points(settings)]
    if len(runs) != len(metas):
        raise RuntimeError(f"proxy sweep expanded to {len(runs)} runs for {len(metas)} points")
    scores: dict[tuple[str, float | None, str], list[tuple[Any, float, tuple[float, ...]]]] = defaultdict(list)
    for (defense, beta, attack, value), run in zip(metas, runs):
        try:
            result, chance = stored_result(store, run.run_id), _chance(run.config)
            acc = run_accuracy(result, settings.metric, chance)
            final = run_accuracy(result, "final_accuracy", chance)
            deviation = run_deviation(result)
        except (KeyError, RuntimeError):
            acc = final = math.nan
            deviation = None
        if settings.proxy_score == "deviation":
            key = (-deviation if deviation is not None else math.inf, _or_inf(acc), _or_inf(final))
        else:
            key = (_or_inf(acc), _or_inf(final))
        scores[(defense, beta, attack)].append((value, acc, key))
    out = []
    for (defense, beta, attack), triples in scores.items():
        ranked = [i for i, t in enumerate(triples) if not math.isnan(t[1])] or [0]
        best = min(ranked, key=lambda i: (*triples[i][2], i))
        family = settings.family(attack)
        out.append(Calibrated(defense, beta, attack, family.param if family else "", triples[best][0],
                              tuple((v, a) for v, a, _ in triples)))
    return out


def _or_inf(x: float) -> float:
    return math.inf if math.isnan(x) else x


def gauntlet_sweep(base: ExperimentConfig, settings: StressSettings, strengths: Sequence[Calibrated]) -> Sweep:
    """The full runs: every attack at its calibrated strength, and the baseline, on every seed."""
    chosen = {(c.defense, c.beta, c.attack): c.value for c in strengths}
    points = []
    for d in settings.defenses:
        for b in settings.betas:
            points.append((d, partition_spec(b), BASELINE))
            for a in settings.attacks:
                key = (d, b, a)
                fam = settings.family(a) if key in chosen else None  # not calibrated: defaults
                points.append((d, partition_spec(b), _attack_spec(a, fam, chosen.get(key))))
    full = base.copy()
    full.rounds, full.eval_every = settings.rounds, min(settings.eval_every, settings.rounds)
    return _zip_sweep(f"{settings.name}-gauntlet", full, points, settings.seeds)


def _chance(cfg: ExperimentConfig) -> float:
    from byzbench.report.frame import chance_level

    return chance_level(cfg.to_dict())


# ------------------------------------------------------------------------- worst case


@dataclass(frozen=True)
class WorstCell:
    """A defense at one level: its worst attack, that attack's mean ± std accuracy, and
    the no-attack accuracy for reference (fractions in [0, 1])."""

    mean: float
    std: float
    attack: str
    clean: float | None


@dataclass
class WorstCaseTable:
    """Defenses × heterogeneity levels → the worst attack and its accuracy, plus the
    worst over levels. Rendered like `byzbench.report.PivotTable` (Markdown, CSV, HTML)."""

    defenses: list[str]
    levels: list[str]
    cells: dict[tuple[str, str], WorstCell]
    metric: str
    seeds: int

    def overall(self, defense: str) -> WorstCell | None:
        found = [self.cells[(defense, lv)] for lv in self.levels if (defense, lv) in self.cells]
        return min(found, key=lambda c: c.mean) if found else None

    def ranked(self) -> list[str]:
        """Defenses from the most to the least robust (highest worst case first)."""
        return sorted(self.defenses, key=lambda d: -(self.overall(d).mean if self.overall(d) else -1))

    def _text(self, cell: WorstCell | None) -> str:
        if cell is None:
            return "—"
        spread = f" ± {100 * cell.std:.2f}" if self.seeds > 1 else ""
        return f"{100 * cell.mean:.2f}{spread} ({cell.attack})"

    def caption(self) -> str:
        what = "maximum" if self.metric == "max_accuracy" else "final"
        return (f"Worst-case {what} test accuracy (%) of each defense: the lowest mean over {self.seeds} "
                "seed(s) among the calibrated attacks (strengths in the calibration table), and the attack "
                "reaching it; `clean` is the no-attack accuracy per level. Defenses ranked by their "
                "overall worst case.")

    def header(self) -> list[str]:
        return ["defense", *self.levels, "worst overall", "clean (" + " / ".join(self.levels) + ")"]

    def _clean(self, defense: str) -> str:
        cells = [self.cells.get((defense, lv)) for lv in self.levels]
        return " / ".join("—" if c is None or c.clean is None else f"{100 * c.clean:.1f}" for c in cells)

    def to_markdown(self) -> str:
        head = self.header()
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for d in self.ranked():
            cells = [self._text(self.cells.get((d, lv))) for lv in self.levels]
            lines.append("| " + " | ".join([f"`{d}`", *cells, f"**{self._text(self.overall(d))}**",
                                            self._clean(d)]) + " |")
        return "\n".join(lines) + "\n\n" + self.caption() + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["defense", "level", "worst_attack", "mean", "std", "clean"])
        for d in self.ranked():
            for lv in self.levels:
                c = self.cells.get((d, lv))
                if c is not None:
                    writer.writerow([d, lv, c.attack, f"{c.mean:.6f}", f"{c.std:.6f}",
                                     "" if c.clean is None else f"{c.clean:.6f}"])
        return buf.getvalue()

    def to_html(self) -> str:
        esc = html.escape
        head = self.header()
        rows = ['<table class="pivot">', "<caption>Worst case per defense and heterogeneity level</caption>",
                "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead>", "<tbody>"]
        for d in self.ranked():
            cells = [esc(self._text(self.cells.get((d, lv)))) for lv in self.levels]
            rows.append("<tr>" + f'<th scope="row">{esc(d)}</th>' + "".join(f"<td>{c}</td>" for c in cells)
                        + f'<td class="worst"><strong>{esc(self._text(self.overall(d)))}</strong></td>'
                        + f'<td class="summary">{esc(self._clean(d))}</td></tr>')
        rows += ["</tbody>", "</table>", f'<p class="note">{esc(self.caption())}</p>']
        return "\n".join(rows)


def worst_case_table(frame: Any, metric: str, defenses: Sequence[str], levels: Sequence[float | None],
                     seeds: int) -> WorstCaseTable:
    """The worst-case table of a gauntlet frame (`byzbench.report.Frame` rows)."""
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for row in frame.rows:
        level = level_label(None if row.get("partition.name") == "iid" else row.get("partition.beta"))
        value = row.get(metric)
        if value is not None and math.isfinite(value):
            groups[(row["defense"], level, row["attack.name"])].append(value)
    labels = [level_label(b) for b in levels]
    cells: dict[tuple[str, str], WorstCell] = {}
    for d in defenses:
        for lv in labels:
            attacked = {a: v for (dd, ll, a), v in groups.items() if dd == d and ll == lv and a != BASELINE}
            if not attacked:
                continue
            means = {a: statistics.fmean(v) for a, v in attacked.items()}
            worst = min(sorted(means), key=lambda a: means[a])
            vals = attacked[worst]
            clean = groups.get((d, lv, BASELINE))
            cells[(d, lv)] = WorstCell(means[worst], statistics.stdev(vals) if len(vals) > 1 else 0.0, worst,
                                       statistics.fmean(clean) if clean else None)
    return WorstCaseTable(list(defenses), labels, cells, metric, seeds)


# ------------------------------------------------------------------------- the whole test


@dataclass
class StressResult:
    """What `run_stress` produced: the calibrated strengths, the worst-case table, files."""

    calibrated: list[Calibrated]
    table: WorstCaseTable
    paths: dict[str, Any]
    proxy_runs: int
    gauntlet_runs: int
    failed: int


Say = Callable[[str], None]


def run_stress(base: ExperimentConfig, settings: StressSettings, store: ResultsStore, executor: Any,
               out_dir: Any, *, progress: Any = None, say: Say | None = None, screenshot: bool = False
               ) -> StressResult:
    """Calibrate, run the gauntlet, and write the tables, heatmaps and HTML report to ``out_dir``."""
    from byzbench.experiments.sweeping import run_sweep

    say = say or (lambda message: None)
    base = base.copy().validate()
    settings = check_settings(base, settings)
    proxy = proxy_sweep(base, settings)
    proxy_ids = proxy.runs() if proxy is not None else []  # validates every config first
    strengths: list[Calibrated] = []
    failed = 0
    if proxy is not None:
        say(f"calibration: {len(proxy_ids)} proxy runs of {settings.proxy_rounds} rounds")
        summary = run_sweep(proxy, store, executor, progress=progress)
        failed += summary.failed
        strengths = choose_strengths(store, proxy, settings)
    gauntlet = gauntlet_sweep(base, settings, strengths)
    runs = gauntlet.runs()
    say(f"gauntlet: {len(runs)} runs of {settings.rounds} rounds")
    summary = run_sweep(gauntlet, store, executor, progress=progress)
    failed += summary.failed
    from byzbench.experiments.stress_report import write_stress_report

    table, paths = write_stress_report(store, settings, strengths, gauntlet, proxy, out_dir, screenshot=screenshot)
    return StressResult(strengths, table, paths, len(proxy_ids), len(runs), failed)
