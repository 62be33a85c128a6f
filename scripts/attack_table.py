"""The attack "sanity" table of docs/attacks.md: every attack against six defenses.

Grid: digits (the embedded default dataset and MLP), Dirichlet β = 0.3, n = 25 clients of
which f = 5 Byzantine, 300 rounds, seeds 0, 1, 2; attacks × defenses below. Each cell is
the final test accuracy, mean ± std over the seeds. Results go to a SQLite results store
(default ``attack_table.db``): rerunning skips finished runs, so a killed run loses only
the runs in flight. Then the table and the literature's qualitative facts, checked on
the numbers, are printed as Markdown (and written to ``--out`` if given)::

    .venv/bin/python scripts/attack_table.py --workers 2 --out docs/attacks.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys


from doc_block import write_generated_block
from byzbench.config import ExperimentConfig
from byzbench.experiments.executors import LocalExecutor
from byzbench.experiments.store import ResultsStore
from byzbench.experiments.sweeping import run_configs

ATTACKS = (
    "none", "gaussian", "signflip", "labelflip", "alie", "alie(z=8)", "ipm", "ipm(epsilon=2.5)",
    "mimic", "minmax", "minsum", "fang_krum", "fang_trmean", "tailored", "tailored(epsilon=10)",
    "rop", "strike", "optimal_alie", "optimal_ipm",
)
DEFENSES = ("mean", "median", "trmean", "krum", "cc", "nnm > trmean")
SEEDS = (0, 1, 2)
BASE = {"partition": "dirichlet(beta=0.3)", "n_clients": 25, "n_byzantine": 5, "rounds": 300}

#: The sweep name the runs are recorded under in the results store.
NAME = "attack_table"


def config_for(attack: str, defense: str, seed: int) -> ExperimentConfig:
    return ExperimentConfig.from_dict({**BASE, "attack": attack, "defense": defense, "seed": seed,
                                       "name": f"{attack} vs {defense}"}).validate()


def run_grid(store: ResultsStore, workers: int) -> None:
    """Run every missing config (worker processes, one torch thread each); a failed run is
    recorded and the grid goes on; finished runs are skipped, so a killed grid resumes."""
    configs = [config_for(a, d, s) for a in ATTACKS for d in DEFENSES for s in SEEDS]
    summary = run_configs(NAME, configs, store, LocalExecutor(workers, 1),
                          on_failure=lambda rid, err: print(f"run {rid} failed: {err}", file=sys.stderr))
    print(f"{summary.total} runs: {summary.skipped} already done, {summary.finished} finished, "
          f"{summary.diverged} diverged, {summary.failed} failed in {summary.wall_time_s:.0f} s", file=sys.stderr)


def accuracies(store: ResultsStore) -> dict[tuple[str, str], list[float]]:
    """(attack, defense) → final accuracies in % (a diverged run counts as 10 %, chance)."""
    table: dict[tuple[str, str], list[float]] = {}
    for a in ATTACKS:
        for d in DEFENSES:
            accs = []
            for s in SEEDS:
                rec = store.get_run(config_for(a, d, s).run_id)
                if rec is None or rec.status not in ("finished", "diverged"):
                    continue
                accs.append(10.0 if rec.final_accuracy is None else 100 * rec.final_accuracy)
            table[(a, d)] = accs
    return table


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def mean_of(table: dict[tuple[str, str], list[float]], a: str, d: str) -> float:
    v = table.get((a, d)) or []
    return statistics.mean(v) if v else float("nan")


def facts(table: dict[tuple[str, str], list[float]]) -> list[str]:
    """The literature's qualitative claims, each checked on the measured means."""
    lines = []

    def check(claim: str, ok: bool, detail: str) -> None:
        lines.append(f"- {'✅ holds' if ok else '❌ does not reproduce'}: {claim} — {detail}")

    clean = {d: mean_of(table, "none", d) for d in DEFENSES}
    for d in ("median", "trmean", "krum"):
        acc = mean_of(table, "alie(z=8)", d)
        check(f"ALIE with large z (z = 8) under heterogeneity breaks {d}", acc <= clean[d] - 20,
              f"{acc:.1f}% vs {clean[d]:.1f}% without attack")
    robust = ("median", "trmean", "krum", "cc", "nnm > trmean")
    drops = {d: clean[d] - mean_of(table, "signflip", d) for d in robust}
    check("sign flip is weak against robust rules (drop ≤ 10 points)", all(v <= 10 for v in drops.values()),
          ", ".join(f"{d}: −{v:.1f}" for d, v in drops.items()))
    acc = mean_of(table, "fang_krum", "krum")
    check("Fang-vs-Krum breaks Krum", acc <= clean["krum"] - 20, f"{acc:.1f}% vs {clean['krum']:.1f}% without attack")
    return lines


def markdown(table: dict[tuple[str, str], list[float]]) -> str:
    head = "| attack | " + " | ".join(DEFENSES) + " |"
    rule = "|---|" + "---:|" * len(DEFENSES)
    rows = [f"| {a} | " + " | ".join(cell(table[(a, d)]) for d in DEFENSES) + " |" for a in ATTACKS]
    return "\n".join([head, rule, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="attack_table.db")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)))
    parser.add_argument("--out", default=None, help="write the Markdown table and facts to this file")
    parser.add_argument("--report-only", action="store_true", help="do not run; tabulate the store")
    args = parser.parse_args(argv)
    with ResultsStore(args.db) as store:
        if not args.report_only:
            run_grid(store, args.workers)
        table = accuracies(store)
    text = markdown(table) + "\n\n" + "\n".join(facts(table)) + "\n"
    print(text)
    if args.out:
        write_doc(args.out, text)
    return 0


def write_doc(path: str, generated: str) -> None:
    """Replace the generated block of ``path`` (between the markers), keeping the prose."""
    write_generated_block(path, generated, "<!-- attack-table:begin -->", "<!-- attack-table:end -->", "Attacks")


if __name__ == "__main__":
    raise SystemExit(main())
