"""The ``byzbench`` command line.

    byzbench run [CONFIG] [--set key=value ...] [--db results.db]
    byzbench list [KIND]
    byzbench config [CONFIG] [--set key=value ...]
    byzbench skew [CONFIG] --rounds 10,100 --out DIR [--set key=value ...]
    byzbench data describe [CONFIG] [--set key=value ...] [--png FILE]
    byzbench data files NAME [--root DIR] [--split S] [--verify]
    byzbench data fetch NAME [--root DIR] [--timeout S]
    byzbench data where [--root DIR]
    byzbench bench defenses [--n 25] [--d 500000] [--f 5] [--reps N] [--rules a,b,...]
                            [--threads T] [--device cpu|cuda] [--dtype float32] [--json FILE]
                            [--sizes d1,d2,...] [--budget S] [--sortnet eager|compile|native]
                            [--clock wall|cpu] [--check]
    byzbench sweep | report | calibrate | stress | ...   (modules of byzbench.commands)

User errors (bad config, unknown name, infeasible rule) print one line and exit with
status 2; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence, TextIO

from byzbench import __version__
from byzbench.errors import ConfigError

KINDS = ("datasets", "partitioners", "models", "attacks", "aggregators", "preaggregators", "schedules",
         "local")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"byzbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("byzbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `byzbench list | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="byzbench", description="Stress-test Byzantine-robust distributed learning.")
    p.add_argument("--version", action="version", version=f"byzbench {__version__}")
    sub = p.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run one experiment (the embedded default when no config is given)")
    _config_args(run)
    run.add_argument("--db", default="results.db", help="SQLite results store (default: results.db)")
    run.add_argument("--no-db", action="store_true", help="do not record the run")
    run.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                     help="progress bar on stderr (auto: when stderr is a terminal)")
    run.set_defaults(func=_cmd_run)

    lst = sub.add_parser("list", help="list registered components and their parameters")
    lst.add_argument("kind", nargs="?", choices=KINDS, help="only this kind")
    lst.set_defaults(func=_cmd_list)

    cfg = sub.add_parser("config", help="print the resolved, validated config as YAML")
    _config_args(cfg)
    cfg.set_defaults(func=_cmd_config)

    sk = sub.add_parser("skew", help="gradient-skew analysis of chosen rounds (STRIKE, seed 002 §4)")
    _config_args(sk)
    sk.add_argument("--rounds", required=True, help="comma-separated 0-based rounds, e.g. 10,100")
    sk.add_argument("--out", required=True, type=Path, help="folder for skew.csv and the PNG figures")
    sk.add_argument("--median-mode", choices=("midpoint", "lower"), default="midpoint")
    sk.add_argument("--std-ddof", type=int, choices=(0, 1), default=0)
    sk.add_argument("--progress", choices=("auto", "always", "never"), default="auto")
    sk.set_defaults(func=_cmd_skew)

    data = sub.add_parser("data", help="datasets and partitions")
    data.set_defaults(func=lambda args: (data.print_help(), 0)[1])
    dsub = data.add_subparsers(dest="data_command")
    desc = dsub.add_parser("describe", help="per-client sizes, label histograms and heterogeneity of a config's partition")
    _config_args(desc)
    desc.add_argument("--png", type=Path, default=None, help="also draw the client × label matrix")
    desc.add_argument("--max-clients", type=int, default=30)
    desc.set_defaults(func=_cmd_data_describe)
    files = dsub.add_parser("files", help="the files a dataset needs, where they are looked for, their status")
    files.add_argument("name")
    files.add_argument("--root", default=None, help="data folder (default: $BYZBENCH_DATA or the user cache)")
    files.add_argument("--split", default=None)
    files.add_argument("--verify", action="store_true", help="compute checksums (slow for big files)")
    files.set_defaults(func=_cmd_data_files)
    fetch = dsub.add_parser("fetch", help="download a dataset's official files (needs a network) and verify them")
    fetch.add_argument("name")
    fetch.add_argument("--root", default=None)
    fetch.add_argument("--timeout", type=float, default=60.0)
    fetch.set_defaults(func=_cmd_data_fetch)
    where = dsub.add_parser("where", help="print the data folder that would be searched")
    where.add_argument("--root", default=None)
    where.set_defaults(func=_cmd_data_where)

    bench = sub.add_parser("bench", help="performance benchmarks")
    bench.set_defaults(func=lambda args: (bench.print_help(), 0)[1])
    bsub = bench.add_subparsers(dest="bench_command")
    bd = bsub.add_parser("defenses", help="time every aggregator and pre-aggregator against a read of its input")
    _bench_args(bd)
    bd.set_defaults(func=_cmd_bench_defenses)

    from byzbench.commands import register_all

    register_all(sub)
    return p


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=25, help="rows (clients), default 25")
    p.add_argument("--d", type=int, default=500_000, help="coordinates, default 500000")
    p.add_argument("--f", type=int, default=5, help="Byzantine rows (shifted), default 5")
    p.add_argument("--reps", type=int, default=20, help="most timed calls per rule (≥ 3), default 20")
    p.add_argument("--budget", type=float, default=2.0,
                   help="seconds per rule after which it stops (after 3 calls), default 2")
    p.add_argument("--rules", help="comma-separated names, aliases or specs such as median(mode=lower); "
                                   "default: every registered rule")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda, default cpu")
    p.add_argument("--dtype", default="float32", help="float32 (default), float64, float16 or bfloat16")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    p.add_argument("--sizes", help="comma-separated d values: report ns per coordinate at each size")
    p.add_argument("--sortnet", help="sorting-network backend of CM/TM and the rules built on them: "
                                     "eager (default), compile (torch.compile; compiled in the warm-up) or "
                                     "native (C interpreter; built once per machine, about 0.4 s)")
    p.add_argument("--clock", default="wall", help="wall (default) or cpu: the process's CPU time, "
                                                   "steadier with --threads 1 on a shared machine")
    p.add_argument("--check", action="store_true", help="exit with status 1 if a rule errs or misses its target")


def _cmd_bench_defenses(args: argparse.Namespace) -> int:
    import json

    from byzbench import bench

    rules = bench.split_names(args.rules) if args.rules else None
    if args.budget <= 0 or args.budget != args.budget:
        raise ConfigError(f"must be > 0, got {args.budget}", "--budget")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise ConfigError(f"folder of {args.json} does not exist", "--json")  # before a long run
    progress = (lambda s: print(f"  timing {s} ...", file=sys.stderr, flush=True)) if sys.stderr.isatty() else None
    common = dict(n=args.n, f=args.f, reps=args.reps, rules=rules, threads=args.threads,
                  device=args.device, dtype=args.dtype, budget_s=args.budget, progress=progress,
                  sortnet=args.sortnet, clock=args.clock)
    if args.sizes:
        res = bench.bench_sizes(_int_list(args.sizes, "--sizes"), **common)
        text, rows = bench.format_sizes(res), [r for x in res.results for r in x.rows]
    else:
        res = bench.bench_defenses(d=args.d, **common)
        text, rows = bench.format_result(res), res.rows
    print(text)
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(res.to_dict(), indent=2) + "\n")
        except OSError as exc:
            raise ConfigError(f"cannot write {args.json}: {exc.strerror or exc}", "--json") from exc
    if args.check and any(r.status in ("FAIL", "error") for r in rows):
        return 1
    return 0


def _int_list(text: str, key: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ConfigError(f"expected comma-separated integers, got {text!r}", key) from exc


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML, TOML or JSON config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set attack.z=8 --set defense='nnm > trmean'")


def _load_config(args: argparse.Namespace):
    from byzbench.config import ExperimentConfig

    cfg = ExperimentConfig.from_file(args.config) if args.config else ExperimentConfig()
    return cfg.override(args.overrides).validate()


def _cmd_skew(args: argparse.Namespace) -> int:
    from byzbench.analysis.skew import format_skew_table, parse_rounds, run_skew

    cfg = _load_config(args)
    bar = _progress_bar(args.progress)
    try:
        rows = run_skew(cfg, parse_rounds(args.rounds), args.out, median_mode=args.median_mode,
                        std_ddof=args.std_ddof, progress=bar.update if bar else None)
    finally:
        if bar:
            bar.close()
    print(format_skew_table(rows))
    print(f"wrote {args.out / 'skew.csv'} and {len(rows)} figure(s)")
    return 0


def _cmd_data_describe(args: argparse.Namespace) -> int:
    import numpy as np

    from byzbench.data import describe_partition, format_description, load_dataset, partition, plot_label_matrix
    from byzbench.sim.engine import seed_streams

    cfg = _load_config(args)
    ds = load_dataset(cfg.data.name, cfg.data.params, "data")
    labels = ds.y_train.numpy()
    rng = np.random.default_rng(seed_streams(cfg.seed)["partition"])  # the run's own draw
    parts = partition(cfg.partition.name, cfg.partition.params, labels, cfg.n_clients, rng, "partition",
                      groups=ds.groups_train)
    desc = describe_partition(labels, parts, ds.num_classes)
    print(f"{cfg.data.name}: {ds.num_train} training samples, {ds.num_classes} classes; "
          f"partition {cfg.partition.to_str() if hasattr(cfg.partition, 'to_str') else cfg.partition.name} "
          f"over {cfg.n_clients} clients (seed {cfg.seed})")
    print(format_description(desc, max_clients=args.max_clients))
    if args.png is not None:
        plot_label_matrix(desc, args.png)
        print(f"wrote {args.png}")
    return 0


def _cmd_data_files(args: argparse.Namespace) -> int:
    from byzbench.data import describe_files

    report = describe_files(args.name, args.root, split=args.split, verify=args.verify)
    print(report.text())
    return 0 if report.ready else 1


def _cmd_data_fetch(args: argparse.Namespace) -> int:
    from byzbench.data import fetch

    for path in fetch(args.name, args.root, timeout=args.timeout, log=lambda m: print(m, file=sys.stderr)):
        print(path)
    return 0


def _cmd_data_where(args: argparse.Namespace) -> int:
    from byzbench.data import data_root

    print(data_root(args.root))
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    cfg = _load_config(args)
    print(f"# run id {cfg.run_id}")
    print(cfg.to_yaml(), end="")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from byzbench.experiments.runner import run_experiment
    from byzbench.experiments.store import ResultsStore

    cfg = _load_config(args)
    bar = _progress_bar(args.progress)
    store = None if args.no_db else ResultsStore(Path(args.db))
    try:
        result = run_experiment(cfg, store, bar.update if bar else None)
    finally:
        if bar:
            bar.close()
        if store is not None:
            store.close()
    print(format_summary(result, None if args.no_db else args.db))
    return 0


def _progress_bar(mode: str) -> "ProgressBar | None":
    """A progress bar on stderr for ``--progress always``, or ``auto`` on a terminal."""
    show = mode == "always" or (mode == "auto" and sys.stderr.isatty())
    return ProgressBar(sys.stderr) if show else None


class ProgressBar:
    """A one-line progress bar: rounds done, rounds/s, current test accuracy."""

    def __init__(self, stream: TextIO, width: int = 30, interval: float = 0.1) -> None:
        self.stream, self.width, self.interval = stream, width, interval
        self.start = time.perf_counter()
        self.last = 0.0

    def update(self, done: int, total: int, info: dict[str, float]) -> None:
        now = time.perf_counter()
        if now - self.last < self.interval and done < total:
            return
        self.last = now
        filled = int(self.width * done / total)
        rate = done / max(now - self.start, 1e-9)
        acc = info.get("test_accuracy")
        acc_s = f"  acc {100 * acc:5.1f}%" if acc is not None else ""
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total}  {rate:7.1f} rounds/s"
            f"  loss {info.get('train_loss', float('nan')):.4f}{acc_s}"
        )
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def format_summary(result, db: str | None) -> str:
    """A short human-readable table of a finished run."""
    c = result.config
    s = result.summary
    lines = [
        f"byzbench {__version__}  run {result.run_id}  {result.status}"
        + (f" at round {result.diverged_round}" if result.diverged_round is not None else ""),
        f"  data       {_spec(c['data'])}, partition {_spec(c['partition'])}, "
        f"{c['n_clients']} clients ({c['n_byzantine']} Byzantine)",
        f"  model      {_spec(c['model'])} (d = {s.get('d')}, gradients: {s.get('strategy')})",
        f"  attack     {_spec(c['attack'])} (knowledge: {s.get('knowledge')})",
        f"  defense    {c['defense']}",
        f"  training   {result.rounds_completed}/{c['rounds']} rounds, batch {c['batch_size']}, lr {c['lr']}, "
        f"momentum {c['momentum']}  —  {result.wall_time_s:.2f} s ({s.get('rounds_per_s', 0):.0f} rounds/s)",
        "",
        "  round   test acc   test loss",
    ]
    for (r, acc), (_, loss) in zip(result.metrics.get("test_accuracy", []), result.metrics.get("test_loss", [])):
        lines.append(f"  {r:5d}   {100 * acc:7.2f}%   {loss:9.4f}")
    final = "n/a (diverged)" if result.final_accuracy is None else f"{100 * result.final_accuracy:.2f}%"
    lines += ["", f"  final test accuracy: {final}"]
    if db:
        lines.append(f"  recorded in {db}")
    return "\n".join(lines)


def _spec(d: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in d.items() if k != "name")
    return f"{d['name']}({params})" if params else d["name"]


def _cmd_list(args: argparse.Namespace) -> int:
    for kind, registry in _registries().items():
        if args.kind and args.kind != kind:
            continue
        print(f"{kind}:")
        entries = registry.entries()
        width = max([14, *(len(e.name) + 2 for e in entries)])
        for entry in entries:
            alias = f" (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
            print(f"  {entry.name:<{width}}{entry.summary}{alias}")
            params = ", ".join(
                p.name if p.required else f"{p.name}={p.default!r}" for p in entry.params
            )
            if params:
                print(f"  {'':<{width}}params: {params}")
        print()
    return 0


def _registries() -> dict:
    from byzbench.attacks import ATTACKS
    from byzbench.data import DATASETS, PARTITIONERS
    from byzbench.defenses import AGGREGATORS, PREAGGREGATORS
    from byzbench.models import MODELS
    from byzbench.sim.local import LOCAL_PROCEDURES
    from byzbench.sim.schedule import SCHEDULES

    return {
        "datasets": DATASETS, "partitioners": PARTITIONERS, "models": MODELS, "attacks": ATTACKS,
        "aggregators": AGGREGATORS, "preaggregators": PREAGGREGATORS, "schedules": SCHEDULES,
        "local": LOCAL_PROCEDURES,
    }


if __name__ == "__main__":
    sys.exit(main())


# Helpers shared with the command modules of `byzbench.commands`.
config_args = _config_args
load_config = _load_config
progress_bar = _progress_bar
