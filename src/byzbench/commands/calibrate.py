"""``byzbench calibrate``: the attack strength that minimises a defense's accuracy.

    byzbench calibrate [CONFIG] [--set k=v ...] --attack alie [--param z]
                       [--grid 0,0.5,2.5,5,8,10] [--proxy-rounds R] [--proxy-seeds K]
                       [--seeds 0,1,2] [--confirm-top 2] [--metric max_accuracy]
                       [--proxy-score accuracy|deviation]
                       [--no-refine] [--refine-evals 5] [--threads 1] [--db results.db | --no-db]
                       [--json FILE] [--progress auto|always|never]

CONFIG and ``--set`` give the defense and the heterogeneity (e.g. ``--set defense='nnm >
trmean' --set partition.beta=0.1``); the method is `byzbench.experiments.calibrate`.
Runs are recorded in the results store, so a rerun reuses every finished run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from byzbench.cli import config_args, load_config
from byzbench.errors import ConfigError
from byzbench.experiments.calibrate import (
    DEFAULT_REFINE_EVALS,
    METRICS,
    PROXY_SCORES,
    calibrate,
    format_calibration,
)
from byzbench.spec import parse_value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("calibrate", help="find the attack strength that minimises a defense's accuracy")
    config_args(p)
    p.add_argument("--attack", required=True, help="attack family to calibrate, e.g. alie, ipm, strike, minmax")
    p.add_argument("--param", help="parameter to calibrate (default: the family's, e.g. z for alie)")
    p.add_argument("--grid", help="comma-separated candidate values (default: the family's grid)")
    p.add_argument("--proxy-rounds", type=int, help="rounds of a proxy run (default: ⌈rounds/5⌉)")
    p.add_argument("--proxy-seeds", type=int, default=1, help="seeds of the proxy: the first K of --seeds (default 1)")
    p.add_argument("--seeds", help="comma-separated confirmation seeds (default: seed, seed+1, seed+2)")
    p.add_argument("--confirm-top", type=int, default=2, help="proxy candidates confirmed by full runs (default 2)")
    p.add_argument("--metric", default="max_accuracy", help=f"{' or '.join(METRICS)} (default max_accuracy)")
    p.add_argument("--proxy-score", default="accuracy",
                   help=f"{' or '.join(PROXY_SCORES)}: how proxy runs are ranked (default accuracy; deviation: "
                        "mean distance of the aggregate from the honest mean, higher = stronger)")
    p.add_argument("--no-refine", action="store_true", help="grid only: no golden-section refinement")
    p.add_argument("--refine-evals", type=int, default=DEFAULT_REFINE_EVALS,
                   help=f"proxy points of the refinement (default {DEFAULT_REFINE_EVALS})")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--db", default="results.db", help="SQLite results store (default: results.db)")
    p.add_argument("--no-db", action="store_true", help="record nothing (and reuse nothing)")
    p.add_argument("--json", metavar="FILE", help="also write the full result as JSON to FILE")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="one line per run on stderr (auto: when stderr is a terminal)")
    p.set_defaults(func=_cmd_calibrate)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from byzbench.experiments.store import ResultsStore

    base = load_config(args)
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise ConfigError(f"folder of {args.json} does not exist", "--json")  # before a long run
    show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if show else None
    store = None if args.no_db else ResultsStore(Path(args.db))
    try:
        result = calibrate(
            base, args.attack, param=args.param, grid=parse_grid(args.grid), proxy_rounds=args.proxy_rounds,
            proxy_seeds=args.proxy_seeds, confirm_top=args.confirm_top, seeds=parse_seeds(args.seeds),
            metric=args.metric, proxy_score=args.proxy_score, refine=not args.no_refine, refine_evals=args.refine_evals, store=store,
            threads=args.threads, log=log,
        )
    finally:
        if store is not None:
            store.close()
    print(format_calibration(result))
    if not args.no_db:
        print(f"  recorded in {args.db}")
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        except OSError as exc:
            raise ConfigError(f"cannot write {args.json}: {exc.strerror or exc}", "--json") from exc
    return 0


def parse_grid(text: str | None) -> list[Any] | None:
    """``"0,0.5,2.5"`` → ``[0, 0.5, 2.5]``; ``"std,sign"`` → ``["std", "sign"]``."""
    if text is None:
        return None
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise ConfigError(f"expected comma-separated values, got {text!r}", "--grid")
    return [parse_value(item) for item in items]


def parse_seeds(text: str | None) -> list[int] | None:
    """``"0,1,2"`` → ``[0, 1, 2]``."""
    if text is None:
        return None
    try:
        return [int(item) for item in text.split(",")]
    except ValueError as exc:
        raise ConfigError(f"expected comma-separated integers, got {text!r}", "--seeds") from exc
