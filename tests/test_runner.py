"""Runs recorded in the results store, including a run killed mid-way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from byzbench.config import ExperimentConfig
from byzbench.experiments import ResultsStore
from byzbench.experiments.runner import run_experiment


def test_run_is_recorded_with_all_rounds(tmp_path):
    cfg = ExperimentConfig(rounds=15, eval_every=5)
    with ResultsStore(tmp_path / "r.db") as store:
        result = run_experiment(cfg, store)
        rec = store.get_run(cfg.run_id)
        assert rec.status == "finished" and rec.rounds_completed == 15
        assert rec.final_accuracy == pytest.approx(result.final_accuracy)
        assert rec.config == cfg.to_dict()
        metrics = store.round_metrics(cfg.run_id)
        assert [r for r, _ in metrics["train_loss"]] == list(range(15))
        assert [r for r, _ in metrics["test_accuracy"]] == [0, 5, 10, 15]


@pytest.mark.slow
def test_killed_run_then_rerun_leaves_a_consistent_store(tmp_path):
    db, rounds = tmp_path / "r.db", 2000
    args = [sys.executable, "-m", "byzbench.cli", "run", "--db", str(db), "--progress", "never",
            "--set", f"rounds={rounds}"]
    run_id = ExperimentConfig(rounds=rounds).run_id
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    status = None
    while time.time() < deadline and status != "running":
        time.sleep(0.1)
        if db.exists():
            with ResultsStore(db) as store:
                rec = store.get_run(run_id)
                status = rec.status if rec else None
    assert status == "running"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with ResultsStore(db) as store:
        assert store.stale_runs() == [run_id]
        assert store.round_metrics(run_id) == {}  # nothing half-written
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with ResultsStore(db) as store:
        assert [r.run_id for r in store.runs()] == [run_id]
        rec = store.get_run(run_id)
        assert rec.status == "finished" and rec.rounds_completed == rounds
        assert len(store.round_metrics(run_id)["train_loss"]) == rounds
        assert store.stale_runs() == []
