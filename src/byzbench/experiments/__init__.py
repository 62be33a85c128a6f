"""Experiments: the results store (and, later, sweeps over configurations)."""

from byzbench.experiments.store import ResultsStore, RunRecord

__all__ = ["ResultsStore", "RunRecord"]
