"""Property-based tests over shapes, scales and temperatures."""

from __future__ import annotations

import warnings

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import sinklabel
from sinklabel import ConvergenceWarning


@st.composite
def problems(draw):
    n = draw(st.integers(1, 40))
    k = draw(st.integers(1, 8))
    scale = draw(st.floats(0.01, 50.0))
    lam = draw(st.floats(0.05, 200.0))
    seed = draw(st.integers(0, 2**32 - 1))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    logits = scale * np.random.default_rng(seed).standard_normal((n, k))
    return logits.astype(dtype), lam


@settings(max_examples=60, deadline=None)
@given(problems())
def test_any_problem_gives_valid_labels_and_honest_error(problem):
    logp, lam = problem
    n, k = logp.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = sinklabel.sinkhorn(logp, k, lam=lam, max_iter=300, backend="numpy")
    assert np.all(np.isfinite(result.potentials)) and np.all(np.isfinite(result.error_history))
    assert result.labels.shape == (n,) and np.all((result.labels >= 0) & (result.labels < k))
    # The reported error is the L1 distance of the plan's label marginal, recomputed here.
    z = lam * logp.astype(np.float64) + result.potentials
    plan = np.exp(z - z.max(axis=1, keepdims=True))
    plan /= plan.sum(axis=1, keepdims=True)
    recomputed = np.abs(plan.mean(axis=0) - 1.0 / k).sum()
    # The kernels round each lam * logp + potentials to the scores' dtype: float32 moves a
    # z of 4000 by 2.4e-4, and each softmax entry by up to twice that, relatively.
    rounding = 4 * np.finfo(logp.dtype).eps * float(np.abs(z).max())
    assert abs(recomputed - result.error) <= 1e-4 + 1e-3 * result.error + rounding
    assert result.converged == (result.error <= 1e-3)
    # Hard labels are the plan's row-wise arg-maxima.
    best = z[np.arange(n), result.labels]
    assert np.all(best >= z.max(axis=1) - 1e-4 * np.maximum(1.0, np.abs(z).max(axis=1)))


@settings(max_examples=30, deadline=None)
@given(problems(), st.integers(1, 50))
def test_chunking_never_changes_the_answer(problem, chunk_size):
    """In float64, where summing chunks in another order moves nothing that the line search
    can see. (In float32 it moves the objective by ~1e-7, which may change a step.)"""
    logp, lam = problem
    logp = logp.astype(np.float64)
    k = logp.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        whole = sinklabel.sinkhorn(logp, k, lam=lam, max_iter=50, backend="numpy")
        chunked = sinklabel.sinkhorn(logp, k, lam=lam, max_iter=50, chunk_size=chunk_size,
                                     backend="numpy")
    assert chunked.n_iter == whole.n_iter
    np.testing.assert_allclose(chunked.potentials, whole.potentials, rtol=1e-6, atol=1e-6)
