"""Run one experiment and record it in the results store."""

from __future__ import annotations

from byzbench import __version__
from byzbench.config import ExperimentConfig
from byzbench.experiments.store import ResultsStore
from byzbench.sim.engine import Progress, RunResult, Simulation


def run_experiment(
    config: ExperimentConfig, store: ResultsStore | None = None, progress: Progress | None = None
) -> RunResult:
    """Validate and set up (before anything is written), run, then record the result.

    The store sees a ``running`` row when training starts and the final row, with all
    per-round metrics, in one transaction at the end; a killed run leaves only the
    ``running`` row, which the next attempt at the same config replaces. An unexpected
    error is recorded as ``failed`` (with its message) and re-raised.
    """
    sim = Simulation(config)
    if store is not None:
        store.start_run(config.run_id, config.to_dict(), __version__)
    try:
        result = sim.run(progress)
    except Exception as exc:
        if store is not None:
            store.finish_run(
                config.run_id, status="failed", rounds_completed=0, metrics={}, final_accuracy=None,
                final_loss=None, diverged_round=None, wall_time_s=0.0, error=f"{type(exc).__name__}: {exc}",
            )
        raise
    if store is not None:
        store.finish_run(
            result.run_id, status=result.status, rounds_completed=result.rounds_completed,
            metrics=result.metrics, final_accuracy=result.final_accuracy, final_loss=result.final_loss,
            diverged_round=result.diverged_round, wall_time_s=result.wall_time_s, summary=result.summary,
        )
    return result
