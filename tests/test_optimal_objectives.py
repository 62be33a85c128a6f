"""Objectives and solver wrapper of the NLP attacks (ALGORITHMS.md §4.14)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from byzbench.optimal import (NONFINITE_LOSS, SOLVERS, default_solver, maximize, objective_weights,
                              trajectory_value)

LOSSES = [4.0, 2.0, 3.0, 1.0]


def test_objectives_by_hand():
    assert trajectory_value(LOSSES, "nlp1") == pytest.approx(2.5)
    assert trajectory_value(LOSSES, "nlp0") == 1.0
    assert trajectory_value(LOSSES, "nlp-1") == 1.0
    w = np.array([1, 0.9, 0.81, 0.729]) / 3.439
    assert trajectory_value(LOSSES, "nlp0.9") == pytest.approx(float(w @ LOSSES))
    w = np.array([1, 1.1, 1.21, 1.331]) / 4.641
    assert trajectory_value(LOSSES, "nlp1.1") == pytest.approx(float(w @ LOSSES))


def test_weights_sum_to_one_and_non_finite_losses_count_as_1e31():
    for kind in ("nlp0", "nlp1", "nlp0.9", "nlp1.1"):
        assert objective_weights(kind, 7).sum() == pytest.approx(1.0)
    assert objective_weights("nlp-1", 3) is None
    assert trajectory_value([1.0, math.nan], "nlp0") == NONFINITE_LOSS
    assert trajectory_value([math.inf, 2.0], "nlp-1") == 2.0
    assert trajectory_value([math.inf, math.inf], "nlp1") == NONFINITE_LOSS


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="objective"):
        trajectory_value(LOSSES, "nlp2")
    with pytest.raises(ValueError, match="method"):
        maximize(lambda x: 0.0, [0.0], method="BFGS")
    with pytest.raises(ValueError, match="steps"):
        objective_weights("nlp1", 0)


def test_default_solvers_follow_the_seed():
    assert [default_solver(r) for r in ("median", "krum", "trmean", "cc", "rfa", "dnc")] == [
        "Powell", "Powell", "Powell", "SLSQP", "L-BFGS-B", "Powell"]


@pytest.mark.parametrize("method", SOLVERS)
def test_every_solver_finds_the_maximum_of_a_concave_quadratic(method):
    res = maximize(lambda x: -float(((x - [1.0, -2.0]) ** 2).sum()), [0.0, 0.0], method=method,
                   bounds=[(-5, 5), (-5, 5)])
    assert np.allclose(res.x, [1.0, -2.0], atol=1e-2) and res.value > -1e-3 and res.evaluations > 0


def test_largest_admissible_point_on_a_monotone_objective_with_bounds():
    res = maximize(lambda x: float(x[0]), [0.2], method="L-BFGS-B", bounds=[(0.0, 1.0)])
    assert res.x[0] == pytest.approx(1.0) and res.value == pytest.approx(1.0)


def test_best_evaluated_point_is_returned_and_nan_counts_as_huge():
    res = maximize(lambda x: math.nan if x[0] > 3 else float(x[0]), [0.0], method="Nelder-Mead")
    assert res.value == NONFINITE_LOSS and res.x[0] > 3
