"""``byzbench mean-estimation``: the 2-D mean-estimation study of seed 001 (§4.14, §7.2).

    byzbench mean-estimation [--out DIR] [--seed S] [--aggregators median,trmean,krum,cc,rfa]
                             [--attacks alie,signflip,ipm,mimic,minmax,minsum]
                             [--objectives nlp0,nlp1,nlp0.9,nlp1.1,nlp-1] [--restarts R]
                             [--noise-std 1.0] [--bound B] [--attack-param alie.z=1.5] ...

Writes ``mean_estimation.csv``, ``trajectories.png`` and ``loss_per_step.png`` to ``--out``
and prints the final and mean loss per aggregator × attack (``*``: the best NLP attack).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from byzbench.errors import ConfigError, ParamError
from byzbench.spec import ComponentSpec, parse_component, parse_value

#: The study's defaults, written out so that registering the command imports neither torch
#: nor SciPy (tests check them against `ToyProblem`, `SolverSettings` and the study's lists).
DEFAULTS = {
    "aggregators": "median,trmean,krum,cc,rfa",
    "attacks": "alie,signflip,ipm,mimic,minmax,minsum",
    "objectives": "nlp0,nlp1,nlp0.9,nlp1.1,nlp-1",
    "n": 12, "f": 5, "steps": 8, "lr": 0.5, "clip": 2.0, "noise_std": 1.0,
    "restarts": 3, "start_std": 3.0, "bound": 20.0, "maxiter": None,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    d = DEFAULTS
    p = subparsers.add_parser(
        "mean-estimation",
        help="2-D mean-estimation study: classic and NLP attacks against robust rules (seed 001 §5.2)",
        description="Every classic attack and every NLP objective against each aggregator on the 2-D toy "
                    "(n = 12, f = 5, lr 0.5, clipping 2, 8 steps); writes a CSV and two figures.",
    )
    p.add_argument("--out", type=Path, default=Path("mean_estimation"),
                   help="folder for mean_estimation.csv, trajectories.png, loss_per_step.png (default: mean_estimation)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples, attacks and random starts (default 0)")
    p.add_argument("--aggregators", default=d["aggregators"],
                   help="comma-separated aggregator specs, e.g. 'median,cc(tau=5)' (default: %(default)s)")
    p.add_argument("--attacks", default=d["attacks"],
                   help="comma-separated classic attack specs with registry defaults (default: %(default)s)")
    p.add_argument("--attack-param", action="append", default=[], metavar="ATTACK.KEY=VALUE",
                   help="a parameter of one classic attack, e.g. alie.z=1.5 (repeatable)")
    p.add_argument("--objectives", default=d["objectives"],
                   help="comma-separated NLP objectives, or 'none' (default: %(default)s)")
    p.add_argument("--no-baseline", action="store_true", help="leave out the no-attack run")
    p.add_argument("--restarts", type=int, default=d["restarts"],
                   help="random NLP starts besides the ±honest-mean ones (default %(default)s)")
    p.add_argument("--start-std", type=float, default=d["start_std"],
                   help="std of the random NLP starts (default %(default)s)")
    p.add_argument("--bound", default=str(d["bound"]),
                   help="box bound |a_t,j| ≤ B of the NLP controls, or 'none' (default %(default)s)")
    p.add_argument("--maxiter", type=int, default=d["maxiter"], help="SciPy maxiter per solve (default: SciPy's)")
    p.add_argument("--method", default=None,
                   help="SciPy method of every aggregator (e.g. Nelder-Mead), or per aggregator "
                        "(e.g. krum=Nelder-Mead,rfa=Powell); default: Powell for CM/TM/Krum, SLSQP for CC, "
                        "L-BFGS-B for RFA")
    p.add_argument("--infeasible", choices=("clamp", "raise"), default="clamp",
                   help="feasibility policy of every aggregator (default clamp: Krum runs with f = 4)")
    p.add_argument("--noise-std", type=float, default=d["noise_std"],
                   help="std σ of the workers' samples (default %(default)s)")
    p.add_argument("--n", type=int, default=d["n"], help="workers (default %(default)s)")
    p.add_argument("--f", type=int, default=d["f"], help="Byzantine workers (default %(default)s)")
    p.add_argument("--steps", type=int, default=d["steps"], help="steps T (default %(default)s)")
    p.add_argument("--lr", type=float, default=d["lr"], help="learning rate (default %(default)s)")
    p.add_argument("--clip", default=str(d["clip"]),
                   help="norm clip of the aggregate, or 'none' (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no per-run progress lines on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from byzbench.studies.mean_estimation import SolverSettings, ToyProblem, format_table, run_study, write_outputs

    problem = _checked(lambda: ToyProblem(n=args.n, f=args.f, steps=args.steps, lr=args.lr,
                                          clip=_optional_float(args.clip, "--clip"), noise_std=args.noise_std))
    solver = _checked(lambda: SolverSettings(restarts=args.restarts, start_std=args.start_std,
                                             bound=_optional_float(args.bound, "--bound"), maxiter=args.maxiter,
                                             method=parse_method(args.method)))
    attacks = with_params(split_specs(args.attacks, "--attacks"), args.attack_param)
    objectives = [] if args.objectives.strip().lower() == "none" else split_specs(args.objectives, "--objectives")
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"{args.out} exists and is not a folder", "--out")
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    result = _checked(lambda: run_study(problem, split_specs(args.aggregators, "--aggregators"), attacks, objectives,
                                        seed=args.seed, solver=solver, infeasible=args.infeasible,
                                        baseline=not args.no_baseline, progress=progress))
    paths = write_outputs(result, args.out)
    print(format_table(result))
    print(f"\n{len(result.runs)} runs in {result.seconds:.1f} s; wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def split_specs(text: str, key: str) -> list[str]:
    """Comma-separated specs, splitting only outside parentheses (``"median,cc(tau=5, L=2)"``)."""
    items, depth, current = [], 0, []
    for ch in text:
        depth += (ch in "([{") - (ch in ")]}")
        if ch == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    items.append("".join(current).strip())
    if depth != 0 or not all(items):
        raise ConfigError(f"expected comma-separated names, got {text!r}", key)
    return items


def with_params(specs: list[str], assignments: list[str]) -> list[str]:
    """``specs`` with each ``ATTACK.KEY=VALUE`` of ``--attack-param`` added to that attack."""
    parsed = [parse_component(s, "--attacks") for s in specs]
    for item in assignments:
        target, sep, value = item.partition("=")
        name, dot, param = target.strip().partition(".")
        if not sep or not dot or not name or not param:
            raise ConfigError(f"expected ATTACK.KEY=VALUE, got {item!r}", "--attack-param")
        hits = [i for i, c in enumerate(parsed) if c.name == name.lower()]
        if not hits:
            raise ConfigError(f"attack {name!r} is not among --attacks ({', '.join(c.name for c in parsed)})",
                              "--attack-param")
        for i in hits:
            parsed[i] = ComponentSpec(parsed[i].name, {**parsed[i].params, param.strip(): parse_value(value)})
    return [str(c) for c in parsed]


def parse_method(text: str | None) -> str | dict[str, str] | None:
    """``--method``: one method name, or ``RULE=METHOD`` pairs separated by commas."""
    if text is None or "=" not in text:
        return text
    pairs = [item.partition("=") for item in split_specs(text, "--method")]
    if any(not rule.strip() or not method.strip() for rule, _, method in pairs):
        raise ConfigError(f"expected METHOD or RULE=METHOD,..., got {text!r}", "--method")
    return {rule.strip(): method.strip() for rule, _, method in pairs}


def _optional_float(text: str, key: str) -> float | None:
    if text.strip().lower() in ("none", "null", "off"):
        return None
    try:
        return float(text)
    except ValueError as exc:
        raise ConfigError(f"expected a number or 'none', got {text!r}", key) from exc


def _checked(build: Any) -> Any:
    """Call ``build``; a `ParamError` is re-keyed as the option that set the parameter."""
    try:
        return build()
    except ParamError as exc:
        raise ConfigError(exc.detail, "--" + exc.param.replace("_", "-")) from exc
