"""Performance profiles against a hand computation on a tiny table."""

import math

import numpy as np
import pytest

from ravine.bench.profile import performance_profile, performance_ratios

INF = math.inf

# Three problems, three solvers. Problem 3 is solved by nobody.
COSTS = [
    [1.0, 2.0, INF],
    [4.0, 2.0, 8.0],
    [INF, INF, INF],
]


def test_ratios_by_hand():
    # p1: best 1 -> (1, 2, inf); p2: best 2 -> (2, 1, 4); p3: nobody -> all inf
    expected = [[1, 2, INF], [2, 1, 4], [INF, INF, INF]]
    np.testing.assert_array_equal(performance_ratios(COSTS), expected)


def test_profile_by_hand():
    taus, rho = performance_profile(COSTS, [1, 2, 3.9, 4, 100, INF])
    np.testing.assert_array_equal(taus, [1, 2, 3.9, 4, 100, INF])
    # counts of problems with ratio <= tau, out of 3 problems (p3 counts for nobody)
    expected = np.array([
        [1, 1, 0],   # tau = 1: solver 1 wins p1, solver 2 wins p2
        [2, 2, 0],   # tau = 2: both within a factor 2 on p1 and p2
        [2, 2, 0],   # tau = 3.9
        [2, 2, 1],   # tau = 4: solver 3 is within 4 of the best on p2
        [2, 2, 1],
        [2, 2, 1],   # tau = inf: the fraction solved at all, failures excluded
    ]) / 3
    np.testing.assert_allclose(rho, expected, rtol=0, atol=1e-15)


def test_default_taus_are_the_breakpoints():
    taus, rho = performance_profile(COSTS)
    np.testing.assert_array_equal(taus, [1, 2, 4])
    np.testing.assert_allclose(rho[-1], [2 / 3, 2 / 3, 1 / 3])


def test_ties_count_for_every_tied_solver():
    _, rho = performance_profile([[3.0, 3.0], [5.0, 10.0]], [1])
    np.testing.assert_allclose(rho, [[1.0, 0.5]])


@pytest.mark.parametrize(
    "costs, message",
    [
        ([[1.0, math.nan]], "NaN"),
        ([[1.0, 0.0]], "> 0"),
        ([1.0, 2.0], "table"),
    ],
)
def test_invalid_costs(costs, message):
    with pytest.raises(ValueError, match=message):
        performance_ratios(costs)


def test_taus_below_one_rejected():
    with pytest.raises(ValueError, match="taus"):
        performance_profile(COSTS, [0.5])
