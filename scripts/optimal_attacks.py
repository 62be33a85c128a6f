"""Seed 001's optimal attacks on scikit-learn digits: damage against CM and cost per round.

Two measurements, printed as the Markdown tables of docs/optimal_attacks.md (and saved as
JSON with ``--json``):

1. **Damage.** Logistic regression on digits (IID split), n = 8 clients of which f = 3
   Byzantine, batch 32, lr 0.01, coordinate-wise median (CM), ``--rounds`` rounds (320),
   test accuracy every 20 rounds; no attack, the classic attacks (alie, ipm, ipm(ε=1),
   signflip, mimic, minmax, minsum, labelflip, each with its defaults) and SSNLP with
   lookahead ℓ ∈ {1, 4, 16} (its defaults: Powell, mean-loss objective); the same
   without ℓ = 4, 16 under worker momentum β = 0.9. Final, lowest and highest accuracy
   over the evaluations after round 0, and the mean training loss of the last 20 rounds.
2. **Cost.** Wall time per attacked round (the whole round, planning included) of every
   optimal attack on the digits models logistic (d = 650), mlp (d = 4,810) and cnn
   (d = 6,090), with the no-attack round for reference, rounds replayed per attacked
   round and solver evaluations per planning round.

One intra-op thread per process (these tensors are tiny; extra threads only contend on a
shared machine). ``--quick`` is a smoke run (20 rounds, ℓ ≤ 4)::

    .venv/bin/python scripts/optimal_attacks.py --json optimal_attacks.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

from byzbench.config import ExperimentConfig
from byzbench.sim.engine import Simulation

CLASSIC = ("alie", "ipm", "ipm(epsilon=1)", "signflip", "mimic", "minmax", "minsum", "labelflip")
SSNLP = ("ssnlp", "ssnlp(lookahead=4)", "ssnlp(lookahead=16)")
#: (model, attack, rounds timed): one planning window at least for every lookahead.
COST = (
    [("logistic", a, r) for a, r in (("stab", 8), ("beam", 8), ("nlp(max_evals=3000)", 1))]
    + [(m, a, r) for m in ("mlp", "cnn") for a, r in (
        ("none", 8), ("ssnlp", 8), ("ssnlp(lookahead=4)", 8), ("ssnlp(lookahead=16)", 16), ("stab", 8), ("beam", 8))]
)


def config(model: str, attack: str, rounds: int, momentum: float = 0.0, eval_every: int = 20) -> ExperimentConfig:
    """Seed 001's logistic-regression setting (§7.2) on digits."""
    return ExperimentConfig(
        data="digits", partition="iid", model=model, n_clients=8, n_byzantine=3, batch_size=32, lr=0.01,
        momentum=momentum, defense="median", rounds=rounds, eval_every=min(eval_every, rounds), seed=0,
    ).override([f"attack={attack}"])


def run(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """One run's summary (in a worker process); ``wall_s`` is the training loop's time."""
    torch.set_num_threads(1)
    cfg = ExperimentConfig.from_dict(cfg_dict)
    Simulation(config(cfg.model.name, "none", 2)).run()  # warm-up: first-call costs stay out of the timing
    res = Simulation(cfg).run()
    acc = [a for t, a in res.metrics["test_accuracy"] if t > 0]
    loss = res.series("train_loss")
    evals = res.series("attack.evals")
    return {
        "attack": cfg.attack.name if not cfg.attack.params else str(cfg.attack),
        "model": cfg.model.name, "momentum": cfg.momentum, "rounds": res.rounds_completed, "status": res.status,
        "final": res.final_accuracy, "min": min(acc) if acc else None, "max": max(acc) if acc else None,
        "loss_last20": statistics.fmean(loss[-20:]) if loss else None, "wall_s": res.wall_time_s,
        "ms_per_round": 1e3 * res.wall_time_s / max(res.rounds_completed, 1),
        "replayed_per_round": sum(res.series("attack.sim_steps")) / max(res.rounds_completed, 1),
        "evals_per_plan": statistics.fmean(evals) if evals else None, "d": res.summary["d"],
    }


def _weight(cfg: ExperimentConfig) -> float:
    """Rough relative cost of a run, to start the longest first."""
    ell = int(cfg.attack.params.get("lookahead", 1))
    per_round = {"ssnlp": 20 * ell ** 1.4, "nlp": 3000, "stab": 50, "beam": 30}.get(cfg.attack.name, 1)
    return cfg.rounds * per_round * (4 if cfg.model.name == "cnn" else 1)


def run_all(configs: list[ExperimentConfig], workers: int) -> list[dict[str, Any]]:
    """Every run's summary, in the order given; the costliest runs start first."""
    order = sorted(range(len(configs)), key=lambda i: -_weight(configs[i]))
    dicts = [configs[i].to_dict() for i in order]
    results: list[dict[str, Any]] = []
    if workers <= 1:
        for i, d in enumerate(dicts, 1):
            results.append(run(d))
            print(f"[{i}/{len(dicts)}] {results[-1]['model']} {results[-1]['attack']} {results[-1]['wall_s']:.1f} s",
                  file=sys.stderr)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(run, dicts))
    out: list[dict[str, Any]] = [{}] * len(configs)
    for i, r in zip(order, results):
        out[i] = r
    return out


def _pct(x: float | None) -> str:
    return "diverged" if x is None else f"{100 * x:.1f}"


def damage_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| attack | final acc. % | min % | max % | train loss, last 20 rounds | wall s |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        loss = "—" if r["loss_last20"] is None else f"{r['loss_last20']:.3f}"
        lines.append(f"| {r['attack']} | {_pct(r['final'])} | {_pct(r['min'])} | {_pct(r['max'])} | {loss} | "
                     f"{r['wall_s']:.1f} |")
    return "\n".join(lines)


def cost_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model (d) | attack | ms per attacked round | rounds replayed per round | solver evals per plan |",
             "| --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        evals = "—" if r["evals_per_plan"] is None else f"{r['evals_per_plan']:.0f}"
        lines.append(f"| {r['model']} ({r['d']:,}) | {r['attack']} | {r['ms_per_round']:.1f} | "
                     f"{r['replayed_per_round']:.1f} | {evals} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=320)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke run: 20 rounds, lookahead ≤ 4")
    p.add_argument("--json", help="write every row to this JSON file")
    args = p.parse_args(argv)
    rounds = 20 if args.quick else args.rounds
    ssnlp = SSNLP[:2] if args.quick else SSNLP
    start = time.perf_counter()
    jobs = [config("logistic", a, rounds) for a in ("none", *CLASSIC, *ssnlp)]
    jobs += [config("logistic", a, rounds, 0.9) for a in ("none", *CLASSIC, "ssnlp")]
    jobs += [config(m, a, r) for m, a, r in COST if not (args.quick and "16" in a)]
    done = run_all(jobs, args.workers)
    n_plain = len(CLASSIC) + len(ssnlp) + 1
    plain, momentum, cost = done[:n_plain], done[n_plain: 2 * n_plain - len(ssnlp) + 1], done[2 * n_plain - len(ssnlp) + 1:]
    cost = [r for r in plain if r["attack"] == "none" or r["attack"].startswith("ssnlp")] + cost
    total = time.perf_counter() - start
    print(f"## Damage: logistic regression, digits, n = 8, f = 3, CM, lr 0.01, {rounds} rounds\n")
    print(damage_table(plain))
    print("\n## The same under worker momentum β = 0.9\n")
    print(damage_table(momentum))
    print("\n## Cost per attacked round\n")
    print(cost_table(cost))
    print(f"\ntotal wall time {total:.0f} s, torch {torch.__version__}, 1 thread per process, {args.workers} process(es)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rounds": rounds, "plain": plain, "momentum": momentum, "cost": cost, "total_s": total}, fh,
                      indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
