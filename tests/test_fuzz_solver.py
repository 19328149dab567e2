"""The solver on generated hard cases, checked against float64 computed here from the
returned potentials and against a plain log-domain Sinkhorn: every CPU backend, float16 to
float64, masks, ties, duplicate rows, one row or one label, label weights and wild warm
starts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import CPU_BACKENDS, to_backend, to_host
from hypothesis import given, reject, settings
from hypothesis import strategies as st
from scipy.optimize import linprog
from scipy.special import logsumexp

import sinklabel
from sinklabel import ConvergenceWarning, PrecisionWarning

REGIMES = ("flat", "peaked", "masked", "duplicates", "ties")


def _scores(rng: np.random.Generator, n: int, k: int, scale: float, regime: str) -> np.ndarray:
    """Float64 scores of one regime; every row keeps at least one finite score."""
    s = scale * rng.standard_normal((n, k))
    favourite = (np.arange(n), rng.integers(0, k, n))
    if regime == "peaked":
        s = -scale * np.abs(s)
        s[favourite] = 0.0
    elif regime == "masked":
        masked = rng.random((n, k)) < 0.3
        masked[favourite] = False
        masked[np.arange(k) % n, np.arange(k)] = False  # every label keeps a finite score
        s[masked] = -np.inf
    elif regime == "duplicates":
        s = s[rng.integers(0, max(1, n // 4), n)]
    elif regime == "ties":
        s = np.round(s)
    return s


@st.composite
def problems(draw):
    n, k = draw(st.integers(1, 40)), draw(st.integers(1, 8))
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scores = _scores(rng, n, k, 10 ** draw(st.floats(-2, 1)), draw(st.sampled_from(REGIMES)))
    weights = rng.random(k) + 0.05 if draw(st.booleans()) else None
    # Warm starts up to far beyond the scores (1e100 only where float64 computes): random,
    # or one label far from the rest, as after a solve with a label masked by -1e9.
    largest = 100 if dtype == np.float64 else 12
    init = draw(st.sampled_from([None, rng.standard_normal(k), np.eye(k)[rng.integers(k)]]))
    if init is not None:
        init = init * 10 ** draw(st.floats(0, largest))
    return {"logp": scores.astype(dtype), "lam": 10 ** draw(st.floats(-3, 2)),
            "label_weights": weights, "init": init, "tol": 10 ** draw(st.floats(-5, -2))}


def _z(logp: np.ndarray, potentials: np.ndarray, lam: float) -> np.ndarray:
    return lam * logp.astype(np.float64) + potentials


def _plan_error(logp: np.ndarray, potentials: np.ndarray, lam: float, target: np.ndarray) -> float:
    """L1 distance between the float64 plan's label marginal and the target."""
    z = _z(logp, potentials, lam)
    plan = np.exp(z - logsumexp(z, axis=1, keepdims=True))
    return float(np.abs(plan.mean(axis=0) - target).sum())


def _rounding(logp: np.ndarray, potentials: np.ndarray, lam: float) -> float:
    """How far the kernels' ``lam * logp + f`` may be from its float64 value, in nats."""
    finite = np.isfinite(logp)
    size = np.abs(lam * logp.astype(np.float64)[finite]).max() + np.abs(potentials).max()
    dtype = np.float64 if logp.dtype == np.float64 else np.float32
    return 4.0 * size * float(np.finfo(dtype).eps)


def _has_plan(logp: np.ndarray, label_weights: np.ndarray | None) -> bool:
    """Whether any transport plan puts mass only on finite scores, 1/N per row and the
    normalised weights per label: a feasibility LP solved by SciPy."""
    n, k = logp.shape
    weights = np.ones(k) if label_weights is None else np.asarray(label_weights, float)
    rows, cols = np.nonzero(np.isfinite(logp))
    equalities = np.zeros((n + k, len(rows)))
    equalities[rows, np.arange(len(rows))] = 1.0
    equalities[n + cols, np.arange(len(rows))] = 1.0
    marginals = np.concatenate([np.full(n, 1.0 / n), weights / weights.sum()])
    return linprog(np.zeros(len(rows)), A_eq=equalities, b_eq=marginals, method="highs").status == 0


def _solve(problem: dict, backend: str):
    """The result and the warnings' categories. A masked case that no plan fits is skipped,
    once the LP agrees that none does."""
    options = {key: problem[key] for key in ("lam", "label_weights", "init", "tol")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = sinklabel.sinkhorn(to_backend(problem["logp"], backend),
                                        problem["logp"].shape[1], max_iter=300,
                                        backend=backend, **options)
        except ValueError as error:
            if "no labelling" not in str(error) or _has_plan(problem["logp"],
                                                            problem["label_weights"]):
                raise
            reject()
    return result, {w.category for w in caught}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=60, deadline=None)
@given(problem=problems())
def test_results_are_what_float64_says_they_are(backend, problem):
    """Whatever the case: finite, normalised potentials; ``converged`` and the warning agree
    with ``error <= tol``; the error is the float64 plan's own (where no PrecisionWarning
    says otherwise); the labels are its row-wise arg-maxima."""
    logp, lam, tol = problem["logp"], problem["lam"], problem["tol"]
    result, categories = _solve(problem, backend)
    f = result.potentials
    assert np.all(np.isfinite(f)) and np.isfinite(result.error)
    assert abs(float(result.label_weights @ f)) <= 1e-9 * max(1.0, float(np.abs(f).max()))
    assert result.converged == (result.error <= tol)
    assert (ConvergenceWarning in categories) == (not result.converged)
    assert result.n_iter == len(result.error_history) <= 300
    if PrecisionWarning in categories:
        return
    rounding = _rounding(logp, f, lam)
    independent = _plan_error(logp, f, lam, result.label_weights)
    assert abs(independent - result.error) <= 2 * rounding + 1e-6
    z = _z(logp, f, lam)
    labels = to_host(result.labels)
    assert np.all(z[np.arange(len(z)), labels] >= z.max(axis=1) - 2 * rounding)


def _plain_sinkhorn(logp: np.ndarray, lam: float, target: np.ndarray) -> np.ndarray:
    """Potentials from the textbook log-domain iteration in float64, to 1e-12."""
    z0 = lam * logp.astype(np.float64)
    f = np.zeros(logp.shape[1])
    for _ in range(100_000):
        z = z0 + f
        mass = np.exp(z - logsumexp(z, axis=1, keepdims=True)).mean(axis=0)
        if np.abs(mass - target).sum() < 1e-12:
            break
        f += np.log(target) - np.log(mass)
    return f - target @ f


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 30), k=st.integers(1, 6), lam=st.floats(1e-3, 5.0),
       seed=st.integers(0, 2**32 - 1))
def test_float64_potentials_match_plain_sinkhorn_under_any_row_offsets(backend, n, k, lam, seed):
    """Tight float64 solves give the textbook iteration's potentials, and adding a constant
    (up to 1e4) to each row changes neither them nor the labels."""
    rng = np.random.default_rng(seed)
    logp = _scores(rng, n, k, 1.0, "flat")
    target = rng.random(k) + 0.1
    target /= target.sum()
    options = {"lam": lam, "label_weights": target, "tol": 1e-10, "max_iter": 5000}
    expected = _plain_sinkhorn(logp, lam, target)
    for offsets in (0.0, rng.uniform(-1e4, 1e4, (n, 1))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # labels a soft plan splits
            result = sinklabel.sinkhorn(to_backend(logp + offsets, backend), k,
                                        backend=backend, **options)
        np.testing.assert_allclose(result.potentials, expected, atol=1e-6)
        z = _z(logp, expected, lam)
        clear = np.ptp(np.sort(z, axis=1)[:, -2:], axis=1) > 1e-6
        np.testing.assert_array_equal(to_host(result.labels)[clear], z.argmax(axis=1)[clear])
