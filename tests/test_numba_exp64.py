"""The Numba backend's vectorised float64 exponential, against long double ``exp`` and libm.

The reference is NumPy's long double ``exp`` where long double is wider than float64 (x86: 64
significant bits), else float64 ``np.exp`` with its own half ulp allowed for.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("numba")

from numba import njit  # noqa: E402

from sinklabel.datasets import make_scores  # noqa: E402
from sinklabel.kernels.numba import _UNDERFLOW, NumbaKernel, _exp_f64  # noqa: E402
from sinklabel.kernels.numpy import NumpyKernel  # noqa: E402

UNDERFLOW = _UNDERFLOW[np.dtype(np.float64)]
WIDE = np.finfo(np.longdouble).nmant >= 63


@njit
def _exp_all(x, out):
    for i in range(x.shape[0]):
        out[i] = _exp_f64(x[i])


def _exp(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    _exp_all(x, out)
    return out


def _error_in_ulps(x: np.ndarray, got: np.ndarray) -> np.ndarray:
    """|got - exp(x)| in units of the float64 spacing at exp(x)."""
    if WIDE:
        exact = np.exp(x.astype(np.longdouble))
        return np.abs(got.astype(np.longdouble) - exact) / np.spacing(exact.astype(np.float64))
    exact = np.exp(x)
    return np.abs(got - exact) / np.spacing(exact) + 0.5


def test_relative_error_is_within_one_and_a_half_ulps_on_the_whole_range():
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.uniform(UNDERFLOW, 0.0, 2_000_000),
        -np.logspace(-20, math.log10(-UNDERFLOW), 200_000),  # small arguments, n = 0
        np.linspace(UNDERFLOW, UNDERFLOW + 1.0, 10_001),  # the last normal results
    ])
    x = np.maximum(x, UNDERFLOW)
    errors = _error_in_ulps(x, _exp(x))
    assert errors.max() < 1.5, (errors.max(), x[errors.argmax()])


def test_is_monotonic_across_the_range_reduction_boundaries():
    # Where n = round(x / ln2) steps, r jumps from -ln2/2 to +ln2/2: 2001 consecutive floats
    # around each step down to the underflow.
    steps = (np.arange(-1021, 0) - 0.5) * math.log(2.0)
    x = (steps[:, None] + np.arange(-1000, 1001) * np.spacing(steps)[:, None]).ravel()
    x = np.sort(x[x >= UNDERFLOW])
    assert np.all(np.diff(_exp(x)) >= 0.0)


def test_edge_cases():
    tiny = np.finfo(np.float64).smallest_subnormal
    assert np.all(_exp([0.0, -0.0, -tiny, -1e-300, -1e-17]) == 1.0)
    near = np.array([-1e-16, -0.5, -708.39, UNDERFLOW])
    assert np.all(_error_in_ulps(near, _exp(near)) < 1.5)
    # Every result returned is normal: the kernels' screening threshold lies just above
    # ln(2**-1022), where results become subnormal.
    assert _exp([UNDERFLOW])[0] >= np.finfo(np.float64).tiny
    assert _exp([UNDERFLOW])[0] == pytest.approx(math.exp(UNDERFLOW), rel=4.5e-16)


def test_is_exactly_zero_below_the_underflow_threshold_and_for_minus_infinity():
    below = np.array([np.nextafter(UNDERFLOW, -np.inf), -708.4, -745.0, -745.2, -1e4, -1e300,
                      -np.finfo(np.float64).max, -np.inf])
    got = _exp(below)
    assert np.all(got == 0.0)
    assert not np.any(np.signbit(got))


@pytest.mark.parametrize("regime", ["flat", "peaked"])
@pytest.mark.parametrize("lam", [1.0, 25.0, 200.0])
def test_float64_sweep_agrees_with_numpy_to_a_few_ulps(regime, lam):
    scores = make_scores(3000, 53, regime=regime, seed=1, dtype=np.float64).scores
    f = np.random.default_rng(2).normal(scale=3.0, size=53)
    mass, lse = NumbaKernel().sweep_lse(scores, f, lam)
    expected_mass, expected_lse = NumpyKernel().sweep_lse(scores, f, lam)
    assert np.max(np.abs(mass - expected_mass)) <= 1e-13 * expected_mass.max()
    assert lse == pytest.approx(expected_lse, rel=1e-13)
