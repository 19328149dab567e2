"""The solver's step logic on its own: the line search against functions whose maximiser along
the direction is known in closed form, and the Sinkhorn step it falls back to."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from reference import softmax_terms

import sinklabel
from sinklabel import ConvergenceWarning, solver
from sinklabel.datasets import make_scores
from sinklabel.solver import MAX_TRIALS, _line_search, _Point, _sinkhorn_step


class _Line:
    """An evaluator of a function along the direction 1 from f = 0, given as the objective
    and slope at each step length ``alpha`` (the direction is a single label's, so the
    gradient is the slope). It records the step lengths tried, as the solver's evaluator
    would count passes."""

    finished = False

    def __init__(self, objective, slope):
        self.objective, self.slope = objective, slope
        self.trials: list[float] = []

    def point(self, alpha: float) -> _Point:
        gradient = np.array([self.slope(alpha)])
        return _Point(f=np.array([alpha]), mass=np.ones(1), objective=self.objective(alpha),
                      noise=0.0, gradient=gradient, error=abs(gradient[0]))

    def __call__(self, f: np.ndarray) -> _Point:
        self.trials.append(float(f[0]))
        return self.point(float(f[0]))


def _quadratic(peak: float, slope: float = 0.5) -> _Line:
    """``g(alpha) = slope * (alpha - alpha^2 / (2 peak))``: rising at ``slope``, largest at
    ``peak``."""
    return _Line(lambda a: slope * (a - a * a / (2 * peak)), lambda a: slope * (1 - a / peak))


@pytest.mark.parametrize("peak, trials", [
    (1.0, [1.0]),  # the full step is the maximiser: taken at once
    (0.9, [1.0]),  # a little past the maximiser, within the curvature test: taken
    (20.0, [1.0, 4.0]),  # too short: stretched fourfold until the slope has fallen enough
    (0.3, [1.0, 0.3]),  # too long: the secant on the slope finds a quadratic's maximiser
    (0.02, [1.0, 0.1, 0.02]),  # the secant step is kept a tenth into the bracket at least
])
def test_line_search_trials_on_a_quadratic(peak, trials):
    line = _quadratic(peak)
    found = _line_search(line, line.point(0.0), np.ones(1))
    np.testing.assert_allclose(line.trials, trials, rtol=1e-12)
    assert found.f[0] == line.trials[-1]
    start = line.slope(0.0)
    assert abs(line.slope(found.f[0])) <= solver.CURVATURE * start
    assert found.objective >= solver.ARMIJO * found.f[0] * start


def test_line_search_halves_a_step_whose_objective_falls_while_it_still_rises():
    """Past 0.7 the objective drops (as where a float overflows) though the slope there says
    up: the secant on the slopes cannot place the next step, so the bracket is halved. No
    step meets the curvature test (the function is linear below the drop), so after
    ``MAX_TRIALS`` the longest good step is returned."""
    line = _Line(lambda a: 0.5 * a if a < 0.7 else -np.inf, lambda a: 0.5)
    found = _line_search(line, line.point(0.0), np.ones(1))
    np.testing.assert_allclose(line.trials[:4], [1.0, 0.5, 0.75, 0.625])
    assert len(line.trials) == MAX_TRIALS
    assert found.f[0] == max(a for a in line.trials if a < 0.7)


def test_line_search_stretches_an_unbounded_rise_until_it_gives_up():
    line = _Line(lambda a: 0.5 * a, lambda a: 0.5)
    found = _line_search(line, line.point(0.0), np.ones(1))
    np.testing.assert_allclose(line.trials, 4.0 ** np.arange(MAX_TRIALS))
    assert found.f[0] == 4.0 ** (MAX_TRIALS - 1)


def test_line_search_finds_nothing_where_every_step_falls():
    line = _Line(lambda a: -1.0, lambda a: -0.5)
    start = _Point(f=np.zeros(1), mass=np.ones(1), objective=0.0, noise=0.0,
                   gradient=np.array([0.5]), error=0.5)
    assert _line_search(line, start, np.ones(1)) is None
    assert len(line.trials) == MAX_TRIALS


def test_line_search_never_takes_a_step_whose_objective_falls():
    """Armijo asks for an increase of the dual, not a fall within ``ARMIJO * alpha * slope``:
    here every step lowers the objective (by more than its noise, zero) although the slope
    at each would pass the curvature test, so the search finds nothing."""
    line = _Line(lambda a: -1e-5 * a, lambda a: 0.5 * (1 - a))
    assert _line_search(line, line.point(0.0), np.ones(1)) is None
    # The slope is 0 at the rejected step: the secant cannot place the next, so it halves.
    np.testing.assert_allclose(line.trials[:3], [1.0, 0.5, 0.25])
    assert len(line.trials) == MAX_TRIALS


def test_sinkhorn_step_keeps_the_potential_of_a_label_without_mass():
    """``log r - log t`` per label; a label with no mass (its target below what the kernels
    resolve, so it is not revived) keeps its potential rather than stepping to infinity."""
    point = _Point(f=np.zeros(3), mass=np.array([0.6, 0.4, 0.0]), objective=0.0, noise=0.0,
                   gradient=np.zeros(3), error=0.0)
    step = _sinkhorn_step(point, np.log([0.5, 0.5, 1e-45]))
    np.testing.assert_allclose(step, [np.log(0.5 / 0.6), np.log(0.5 / 0.4), 0.0], rtol=1e-15)


def test_failed_line_searches_fall_back_to_sinkhorn_steps(monkeypatch):
    """With every line search failing (after one refused trial, a pass), the solve goes on by
    plain Sinkhorn steps, which converge on flat scores (96 passes here, 6 with the line
    search), and it never takes more passes than ``max_iter``, even when the last one is a
    failed search's trial."""
    def failing(evaluate, point, direction):
        evaluate(point.f + direction)
        return None

    monkeypatch.setattr(solver, "_line_search", failing)
    scores = make_scores(3000, 12, regime="flat", seed=3).scores
    result = sinklabel.sinkhorn(scores, 12, lam=5.0, tol=1e-6, max_iter=500, backend="numpy")
    assert result.converged
    masses, _ = softmax_terms(scores, result.potentials, 5.0)
    assert np.abs(masses / len(scores) - 1 / 12).sum() <= 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        capped = sinklabel.sinkhorn(scores, 12, lam=25.0, tol=1e-12, max_iter=6,
                                    backend="numpy")
    assert capped.n_iter == 6 and len(capped.error_history) == 6
