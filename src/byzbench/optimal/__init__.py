"""Building blocks of the optimal (lookahead) attacks of seed 001 (ALGORITHMS.md §4.14)."""

from byzbench.optimal.objectives import (
    NONFINITE_LOSS,
    OBJECTIVES,
    SOLVERS,
    MaximizeResult,
    default_solver,
    maximize,
    objective_weights,
    trajectory_value,
)

__all__ = ["NONFINITE_LOSS", "OBJECTIVES", "SOLVERS", "MaximizeResult", "default_solver", "maximize",
           "objective_weights", "trajectory_value"]
