"""The same sweep through the local and the Ray executor gives identical results per run.

Ray is started once for the module, locally with 2 CPUs, and shut down at the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from byzbench.errors import ConfigError
from byzbench.experiments.executors import LocalExecutor, RayExecutor
from byzbench.experiments.store import ResultsStore
from byzbench.experiments.sweep import Sweep
from byzbench.experiments.sweeping import run_sweep

pytestmark = pytest.mark.slow

SWEEP = {
    "name": "same",
    "base": {"rounds": 20, "eval_every": 10, "n_clients": 8, "n_byzantine": 2, "model": "mlp(hidden=[16])"},
    "grid": {"attack": ["alie", "ipm"], "defense": ["trmean", "cc"]},
    "seeds": [0, 1],
    "conditional": [{"where": {"defense": "trmean"}, "grid": {"momentum": [0.9]}}],
}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_local_and_ray_executors_give_identical_runs(local_ray, tmp_path: Path) -> None:
    sweep = Sweep.from_dict(SWEEP)
    ids = [r.run_id for r in sweep.runs()]
    with ResultsStore(tmp_path / "local.db") as store, LocalExecutor(1, 1) as executor:
        local = run_sweep(sweep, store, executor)
    ray_executor = RayExecutor(cpus_per_run=1)
    with ResultsStore(tmp_path / "ray.db") as store:
        remote = run_sweep(sweep, store, ray_executor)
        again = run_sweep(sweep, store, ray_executor)
    ray_executor.close()
    assert ray.is_initialized()  # an instance it did not start is left running
    assert ray_executor.threads == 1 and ray_executor.concurrency == 2
    assert (local.finished, remote.finished, remote.failed) == (len(ids), len(ids), 0)
    assert (again.skipped, again.finished) == (len(ids), 0)
    with ResultsStore(tmp_path / "local.db") as a, ResultsStore(tmp_path / "ray.db") as b:
        for run_id in ids:
            ra, rb = a.get_run(run_id), b.get_run(run_id)
            assert (ra.status, ra.final_accuracy, ra.final_loss) == (rb.status, rb.final_accuracy, rb.final_loss)
            series_a, series_b = a.round_metrics(run_id), b.round_metrics(run_id)
            assert series_a == series_b and len(series_a["train_loss"]) == 20
            assert ra.config == rb.config


def test_ray_failed_run_is_recorded(local_ray, tmp_path: Path) -> None:
    raw = {**SWEEP, "grid": {"data": ["digits", f"mnist(root={tmp_path / 'none'})"]}, "conditional": []}
    with ResultsStore(tmp_path / "r.db") as store:
        summary = run_sweep(Sweep.from_dict(raw), store, RayExecutor())
        assert (summary.finished, summary.failed) == (2, 2)
        assert all(err.startswith("MissingDataError") for _, err in summary.failures)
        assert len(store.runs("failed")) == 2


def test_ray_resources_are_checked(local_ray) -> None:
    with pytest.raises(ConfigError) as info:
        _ = RayExecutor(gpus_per_run=1).concurrency
    assert info.value.key == "gpus_per_run"
    with pytest.raises(ConfigError) as info:
        _ = RayExecutor(cpus_per_run=4).concurrency
    assert info.value.key == "cpus_per_run"
    with pytest.raises(ConfigError):
        RayExecutor(cpus_per_run=0)
    assert RayExecutor(cpus_per_run=0.5, max_in_flight=3).concurrency == 3
    assert RayExecutor(cpus_per_run=0.5).concurrency == 4
