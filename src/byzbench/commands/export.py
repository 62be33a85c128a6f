"""``byzbench export DB --out FILE.csv|FILE.parquet [--sweep NAME] [--metrics a,b]``.

One row per run of the store (or of one sweep, in its expansion order): run id, status,
the flattened config keys and the final metrics (`byzbench.experiments.export`). CSV
needs nothing beyond Python; Parquet needs pandas and pyarrow (``byzbench[export]``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from byzbench.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="write a results store's runs to CSV or Parquet")
    p.add_argument("db", type=Path, help="an existing SQLite results store")
    p.add_argument("--out", required=True, type=Path, help="output file: .csv, .parquet or .pq")
    p.add_argument("--sweep", default=None, help="only the runs of this sweep (default: every run)")
    p.add_argument("--metrics", default="",
                   help="comma-separated per-round metrics to summarise as <name>.last/.min/.max columns")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from byzbench.experiments.export import FORMATS, export
    from byzbench.experiments.store import ResultsStore

    if not args.db.is_file():
        raise ConfigError(f"no results store at {args.db}", "DB")
    if args.out.suffix.lower() not in FORMATS:
        raise ConfigError(f"unknown file type {args.out.suffix!r}; use one of {', '.join(FORMATS)}", "--out")
    if not args.out.resolve().parent.is_dir():
        raise ConfigError(f"folder of {args.out} does not exist", "--out")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    with ResultsStore(args.db) as store:
        try:
            count = export(store, args.out, sweep=args.sweep, metrics=metrics)
        except ImportError as exc:
            raise ConfigError(str(exc), "--out") from exc
        except ConfigError as exc:
            if exc.key == "sweep":
                raise ConfigError(str(exc).removeprefix("sweep: "), "--sweep") from exc
            raise
    print(f"wrote {count} runs to {args.out}")
    return 0
