"""Benchmarks of the solver over backends, dtypes, regimes and sizes.

Every benchmark checks what it timed against an independent float64 NumPy computation of
the plan from the returned potentials: a fast wrong answer fails.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import sinklabel
from sinklabel.datasets import REGIMES

from ._methods import NEVER
from ._timing import synchronize
from .conftest import host_scores, on_target

LAM = 25.0
TOL = 1e-3
#: Passes of the fixed-length benchmark: it times the iteration itself in both regimes.
PASSES = 20
ORACLE_ROWS = 65_536


def plan_label_marginal(scores: np.ndarray, potentials: np.ndarray, lam: float) -> np.ndarray:
    """Label marginal of the plan softmax(lam * S + f) / N, in float64 NumPy."""
    total = np.zeros(scores.shape[1])
    for start in range(0, scores.shape[0], ORACLE_ROWS):
        z = lam * scores[start:start + ORACLE_ROWS].astype(np.float64) + potentials
        p = np.exp(z - z.max(axis=1, keepdims=True))
        total += (p / p.sum(axis=1, keepdims=True)).sum(axis=0)
    return total / scores.shape[0]


def preferred_labels(scores: np.ndarray, potentials: np.ndarray, lam: float) -> np.ndarray:
    return np.concatenate([
        np.argmax(lam * scores[start:start + ORACLE_ROWS].astype(np.float64) + potentials, 1)
        for start in range(0, scores.shape[0], ORACLE_ROWS)
    ])


def check_result(result: sinklabel.SinkhornResult, scores: np.ndarray) -> float:
    """The result's error, labels and counts agree with the oracle; returns the oracle error."""
    k = scores.shape[1]
    error = np.abs(plan_label_marginal(scores, result.potentials, LAM) - 1.0 / k).sum()
    assert error == pytest.approx(result.error, rel=1e-3, abs=5e-5)
    labels = np.asarray(result.labels.tolist())
    agree = (labels == preferred_labels(scores, result.potentials, LAM)).mean()
    assert agree >= 0.999, f"only {agree:.4%} of labels are the argmax under the potentials"
    assert np.array_equal(result.label_counts, np.bincount(labels, minlength=k))
    return error


def run_solver(target, x, **options):
    """A solve that returns only after the device has finished."""
    backend, library, device = target

    def solve() -> sinklabel.SinkhornResult:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
            result = sinklabel.sinkhorn(x, x.shape[1], lam=LAM, backend=backend, **options)
        synchronize(library, device)
        return result

    return solve


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("regime", REGIMES)
def test_fixed_passes(benchmark, target, size, regime, dtype, rounds):
    """PASSES iterations, never stopping early: the cost of the iteration itself."""
    scores = host_scores(*size, regime, dtype)
    solve = run_solver(target, on_target(scores, target), tol=NEVER, max_iter=PASSES)
    result = benchmark.pedantic(solve, rounds=rounds, warmup_rounds=1)
    assert result.n_iter == PASSES
    check_result(result, scores)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("regime", REGIMES)
def test_to_tolerance(benchmark, target, size, regime, dtype, rounds):
    """A full solve to the tolerance, after an untimed one (compiled kernels loaded, as in
    test_fixed_passes): the passes the solver needs times their cost, in both regimes."""
    scores = host_scores(*size, regime, dtype)
    solve = run_solver(target, on_target(scores, target), tol=TOL, max_iter=1000)
    result = benchmark.pedantic(solve, rounds=rounds, warmup_rounds=1)
    assert result.converged
    assert check_result(result, scores) <= TOL * 1.01


#: Targets whose solves take ``cache=True``: the Numba kernels, on NumPy arrays or CPU tensors.
CACHED_TARGETS = {("numba", "numpy", "cpu"), ("torch", "torch", "cpu")}


@pytest.mark.parametrize("regime", REGIMES)
def test_cached_to_tolerance(benchmark, target, size, regime, rounds):
    """test_to_tolerance with ``cache=True``: the first pass builds the tables, later ones
    answer from them; the result is checked against the same oracle."""
    if tuple(target) not in CACHED_TARGETS:
        pytest.skip(f"cache=True keeps tables for {sorted(CACHED_TARGETS)} only")
    pytest.importorskip("numba")
    scores = host_scores(*size, regime, "float32")
    solve = run_solver(target, on_target(scores, target), tol=TOL, max_iter=1000, cache=True)
    result = benchmark.pedantic(solve, rounds=rounds, warmup_rounds=1)
    assert result.converged
    assert check_result(result, scores) <= TOL * 1.01
