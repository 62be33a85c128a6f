"""``byzbench stress``: the gauntlet of calibrated attacks against defenses (the main job).

    byzbench stress [CONFIG] [--set k=v ...] [--quick] [--attacks a,b|all] [--defenses "d1;d2"|all]
                    [--betas 0.1,0.5,iid] [--seeds 0,1] [--rounds R] [--proxy-rounds P]
                    [--no-calibrate] [--metric max_accuracy|final_accuracy] [--out stress/]
                    [--db FILE] [--executor local|ray] [--workers N] [--threads T]
                    [--ray-address ADDR] [--screenshot auto|always|never]

With no arguments: the embedded digits default, seven attacks against ten defenses at
β ∈ {0.1, 0.5, IID}, written to ``stress/`` (results.db, worst_case.md, per-level tables,
calibration table, heatmaps, report.html and, when a headless Chromium is installed, a
screenshot of the report).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from byzbench.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("stress", help="calibrated attacks × defenses × heterogeneity: worst-case "
                                             "table, heatmaps and an HTML report (the main job)")
    p.add_argument("config", nargs="?", help="YAML, TOML or JSON base config (default: the embedded digits default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base config key, e.g. --set model=logistic")
    p.add_argument("--quick", action="store_true", help="80 rounds, 1 seed, 3-value calibration grids (≈2 min)")
    p.add_argument("--attacks", default=None, help="comma-separated attack names, or 'all' (every registered one)")
    p.add_argument("--defenses", default=None,
                   help="semicolon-separated defense chains (e.g. 'cc;nnm > trmean'), or 'all' (every aggregator)")
    p.add_argument("--betas", default=None, help="comma-separated Dirichlet β values; 'iid' for IID")
    p.add_argument("--seeds", default=None, help="comma-separated seeds")
    p.add_argument("--rounds", type=int, default=None, help="rounds of the full runs")
    p.add_argument("--proxy-rounds", type=int, default=None, help="rounds of the calibration proxy runs")
    p.add_argument("--no-calibrate", action="store_true", help="attacks at their default strengths")
    p.add_argument("--metric", choices=("max_accuracy", "final_accuracy"), default="max_accuracy")
    p.add_argument("--proxy-score", choices=("accuracy", "deviation"), default=None,
                   help="how proxy runs rank attack strengths: lowest accuracy, or largest distance of the "
                        "aggregate from the honest mean (default: %(default)s → the preset's)")
    p.add_argument("--out", type=Path, default=Path("stress"), help="output folder (default: stress/)")
    p.add_argument("--db", type=Path, default=None, help="results store (default: OUT/results.db)")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--workers", type=int, default=None, help="runs at once (default: one per core)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: a local instance)")
    p.add_argument("--screenshot", choices=("auto", "always", "never"), default="auto",
                   help="screenshot the HTML report in headless Chromium (auto: when one is installed)")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto")
    p.set_defaults(func=_cmd_stress)


def settings_from_args(args: argparse.Namespace):
    """`StressSettings` from the command line (the quick or default preset, then options)."""
    from byzbench.experiments.stress import StressSettings

    over: dict = {}
    if args.attacks:
        over["attacks"] = _all_or_list(args.attacks, ",", "attacks")
    if args.defenses:
        over["defenses"] = _all_or_list(args.defenses, ";", "defenses")
    if args.betas:
        over["betas"] = tuple(_beta(v) for v in _split(args.betas, ","))
    if args.seeds:
        over["seeds"] = tuple(_int(v, "--seeds") for v in _split(args.seeds, ","))
    if args.rounds is not None:
        over["rounds"] = args.rounds
    if args.proxy_rounds is not None:
        over["proxy_rounds"] = args.proxy_rounds
    if args.no_calibrate:
        over["calibrate"] = False
    over["metric"] = args.metric
    if args.proxy_score is not None:
        over["proxy_score"] = args.proxy_score
    return StressSettings.quick(**over) if args.quick else StressSettings.default(**over)


def _split(text: str, sep: str) -> list[str]:
    return [v.strip() for v in text.split(sep) if v.strip()]


def _all_or_list(text: str, sep: str, key: str) -> tuple[str, ...]:
    if text.strip() != "all":
        return tuple(_split(text, sep))
    if key == "attacks":
        from byzbench.attacks import ATTACKS

        return tuple(n for n in ATTACKS.names() if n != "none" and not n.startswith("_"))
    from byzbench.defenses import AGGREGATORS

    return tuple(n for n in AGGREGATORS.names() if not n.startswith("_"))


def _beta(text: str) -> float | None:
    if text.lower() in ("iid", "inf", "∞"):
        return None
    try:
        return float(text)
    except ValueError as exc:
        raise ConfigError(f"expected a number or iid, got {text!r}", "--betas") from exc


def _int(text: str, key: str) -> int:
    try:
        return int(text)
    except ValueError as exc:
        raise ConfigError(f"expected an integer, got {text!r}", key) from exc


def _cmd_stress(args: argparse.Namespace) -> int:
    from byzbench.cli import load_config
    from byzbench.commands.sweep import progress_display
    from byzbench.experiments.executors import LocalExecutor, RayExecutor, available_cores
    from byzbench.experiments.store import ResultsStore
    from byzbench.experiments.stress import check_settings, run_stress
    from byzbench.report import find_browser

    base = load_config(args)
    settings = check_settings(base, settings_from_args(args))
    shot = args.screenshot == "always" or (args.screenshot == "auto" and _has_browser(find_browser))
    workers = args.workers or max(1, available_cores() // max(args.threads, 1))
    if args.executor == "local":
        if args.ray_address is not None:
            raise ConfigError("only applies to --executor ray", "--ray-address")
        executor = LocalExecutor(workers, args.threads)
    else:
        executor = RayExecutor(address=args.ray_address, threads=args.threads, max_in_flight=args.workers)
    db = args.db or args.out / "results.db"
    start = time.perf_counter()
    display = progress_display(args.progress)
    try:
        with ResultsStore(db) as store:
            result = run_stress(base, settings, store, executor, args.out, progress=display,
                                say=lambda m: print(f"byzbench stress: {m}", file=sys.stderr, flush=True),
                                screenshot=shot)
    finally:
        if display is not None:
            display.close()
        executor.close()
    print(result.table.to_markdown())
    print(f"{result.proxy_runs} calibration runs, {result.gauntlet_runs} gauntlet runs, "
          f"{result.failed} failed, {time.perf_counter() - start:.0f} s; results in {db}")
    print(f"report: {result.paths['html']}")
    if "screenshot" in result.paths:
        check = result.paths["render_check"]
        print(f"screenshot: {result.paths['screenshot']} (rendered: {'ok' if check.ok else 'FAILED'})")
    return 1 if result.failed else 0


def _has_browser(find) -> bool:
    try:
        find()
        return True
    except ConfigError:
        return False
