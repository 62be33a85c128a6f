"""Hybrid sparse attack vs ALIE against centered clipping on the digits CNN (docs/hybrid_attack.md).

Setting, after seed 004 (Özfatura et al.; ALGORITHMS.md §7.5) scaled to the embedded
digits data: model ``cnn`` (d = 6,090), 25 clients of which 5 Byzantine, batch 32,
lr 0.1 decayed ×0.1 at 75 % of the rounds, worker momentum 0.9 (dampened), CC with
τ = 1, L = 1 (seed 004's values), IID and Dirichlet α = 1 (procedure C, ``per_client``,
as seed 004), 300 rounds, seeds 0, 1, 2. Attacks: none, ALIE with z = z_max (0.2533 for
n = 25, f = 5), and the hybrid attack with the same z1 = z_max and z2 = 1.5 under the
masks Π_lr⁺(δ = 0.2), Π_F⁺(δ = 5e−3, δ_FC^max = 0.25) and Π_F⁺(δ = 1e−2, δ_FC^max = 0.25).

Runs go to a results store (default ``hybrid_attack.db``; a rerun skips finished runs).
The table (final test accuracy in %, mean ± std over seeds; a diverged run counts as
10 %), the attacked fraction of the d coordinates, the fraction of Byzantine rows CC
left unclipped, and the wall time are printed as Markdown and, with ``--out``, written
between the markers of that file::

    .venv/bin/python scripts/hybrid_attack.py --workers 2 --out docs/hybrid_attack.md
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

ROUNDS = 300
SEEDS = (0, 1, 2)
PARTITIONS = {"IID": "iid", "Dirichlet α=1": "dirichlet(beta=1.0, mode=per_client)"}
ATTACKS = {
    "no attack": "none",
    "ALIE (z = z_max)": "alie",
    "hybrid Π_lr⁺(0.2)": "hybrid(policy=layerwise_plus, density=0.2)",
    "hybrid Π_F⁺(5e-3, δ_FC 0.25)": "hybrid(policy=force_plus, density=0.005, fc_max=0.25)",
    "hybrid Π_F⁺(1e-2, δ_FC 0.25)": "hybrid(policy=force_plus, density=0.01, fc_max=0.25)",
}
BASE = {
    "data": "digits", "model": "cnn", "n_clients": 25, "n_byzantine": 5, "rounds": ROUNDS, "batch_size": 32,
    "lr": 0.1, "lr_schedule": f"step(milestones=[{ROUNDS * 3 // 4}], gamma=0.1)", "momentum": 0.9,
    "defense": "cc(tau=1, L=1)", "eval_every": 50,
}
BEGIN, END = "<!-- hybrid-table:begin -->", "<!-- hybrid-table:end -->"

#: The sweep name the runs are recorded under in the results store.
NAME = "hybrid_attack"


def config_for(attack: str, partition: str, seed: int) -> ExperimentConfig:
    return ExperimentConfig.from_dict({**BASE, "attack": attack, "partition": partition, "seed": seed,
                                       "name": f"hybrid study: {attack} / {partition}"}).validate()


def grid() -> list[ExperimentConfig]:
    return [config_for(a, p, s) for a in ATTACKS.values() for p in PARTITIONS.values() for s in SEEDS]


def run_grid(store: ResultsStore, workers: int) -> float:
    """Run every missing config (worker processes, one torch thread each); returns the wall
    time in seconds. Finished runs are skipped, so a killed grid resumes."""
    summary = run_configs(NAME, grid(), store, LocalExecutor(workers, 1),
                          on_failure=lambda rid, err: print(f"run {rid} failed: {err}", file=sys.stderr))
    print(f"{summary.total} runs: {summary.skipped} already done, {summary.finished} finished, "
          f"{summary.diverged} diverged, {summary.failed} failed in {summary.wall_time_s:.0f} s", file=sys.stderr)
    return summary.wall_time_s


def _mean_metric(store: ResultsStore, run_id: str, name: str) -> float | None:
    series = store.round_metrics(run_id).get(name)
    return statistics.mean(v for _, v in series) if series else None


def collect(store: ResultsStore) -> dict[tuple[str, str], dict[str, list[float]]]:
    """(attack label, partition label) → accuracies (%), unclipped Byzantine fractions,
    attacked fractions of d and wall times over the finished seeds."""
    out: dict[tuple[str, str], dict[str, list[float]]] = {}
    for a_label, attack in ATTACKS.items():
        for p_label, part in PARTITIONS.items():
            cell: dict[str, list[float]] = {"acc": [], "kept": [], "density": [], "wall": []}
            for seed in SEEDS:
                rec = store.get_run(config_for(attack, part, seed).run_id)
                if rec is None or rec.status not in ("finished", "diverged"):
                    continue
                cell["acc"].append(10.0 if rec.final_accuracy is None else 100 * rec.final_accuracy)
                cell["wall"].append(rec.wall_time_s or 0.0)
                for key, metric in (("kept", "defense.byz_kept"), ("density", "attack.mask_density")):
                    value = _mean_metric(store, rec.run_id, metric)
                    if value is not None:
                        cell[key].append(100 * value)
            out[(a_label, p_label)] = cell
    return out


def fmt(values: list[float], digits: int = 1) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def markdown(table: dict[tuple[str, str], dict[str, list[float]]], wall: float | None) -> str:
    parts = list(PARTITIONS)
    head = ("| attack | " + " | ".join(f"{p}: CC acc. %" for p in parts) + " | "
            + " | ".join(f"{p}: Byz. rows unclipped %" for p in parts) + " | attacked % of d | s / run |")
    rule = "|---|" + "---:|" * (2 * len(parts) + 2)
    rows = []
    for a in ATTACKS:
        cells = [table[(a, p)] for p in parts]
        density = [v for c in cells for v in c["density"]]
        walls = [v for c in cells for v in c["wall"]]
        rows.append(f"| {a} | " + " | ".join(fmt(c["acc"]) for c in cells) + " | "
                    + " | ".join(fmt(c["kept"]) for c in cells) + " | "
                    + (f"{statistics.mean(density):.2f}" if density else "–") + " | "
                    + (f"{statistics.mean(walls):.1f}" if walls else "–") + " |")
    lines = [head, rule, *rows, "", verdict(table)]
    if wall is not None:
        lines.append(f"\nGrid wall time: {wall:.0f} s for the runs made by this invocation.")
    return "\n".join(lines) + "\n"


def verdict(table: dict[tuple[str, str], dict[str, list[float]]]) -> str:
    """Whether each hybrid mask lowered CC's accuracy below ALIE's, per partition."""
    lines = []
    alie = "ALIE (z = z_max)"
    for a in ATTACKS:
        if not a.startswith("hybrid"):
            continue
        for p in PARTITIONS:
            h, base = table[(a, p)]["acc"], table[(alie, p)]["acc"]
            if not h or not base:
                continue
            diff = statistics.mean(h) - statistics.mean(base)
            word = "below" if diff < 0 else "above"
            lines.append(f"- {a}, {p}: {abs(diff):.1f} points {word} ALIE")
    return "\n".join(lines)


def write_doc(path: str, generated: str) -> None:
    """Replace the generated block of ``path`` (between the markers), keeping the prose."""
    write_generated_block(path, generated, BEGIN, END, "Hybrid sparse attack")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="hybrid_attack.db")
    parser.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1))
    parser.add_argument("--out", default=None, help="write the table between the markers of this Markdown file")
    parser.add_argument("--report-only", action="store_true", help="do not run; tabulate the store")
    args = parser.parse_args(argv)
    with ResultsStore(args.db) as store:
        wall = None if args.report_only else run_grid(store, args.workers)
        text = markdown(collect(store), wall)
    print(text)
    if args.out:
        write_doc(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
