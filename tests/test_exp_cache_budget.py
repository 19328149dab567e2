"""``cache=True`` under ``memory_limit``: refusals that say what would work, budgets
measured against what the process allocates, and float32 tables against float64 arithmetic.

Oracles: ``tracemalloc`` (NumPy's allocations), a plain float64 log-sum-exp written here, and
the solve itself run with the limit a refusal names.
"""

from __future__ import annotations

import re
import tracemalloc

import numpy as np
import pytest

pytest.importorskip("numba")

import sinklabel  # noqa: E402
from sinklabel import solver  # noqa: E402
from sinklabel.datasets import make_scores  # noqa: E402
from sinklabel.exp_cache import with_exp_cache  # noqa: E402
from sinklabel.kernels import get_kernel  # noqa: E402
from sinklabel.sources import ArraySource, CallableSource  # noqa: E402

NUMBA = get_kernel("numba")


def _reference(scores: np.ndarray, f: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean softmax of ``lam * S + f`` over rows, in float64, and ``lam * S + f`` itself."""
    z = lam * scores.astype(np.float64) + f
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)).mean(axis=0), z


def test_a_refused_cache_budget_names_the_least_limit_that_holds_the_tables():
    """The chunks take half of any budget: raising it by what the tables lack is not enough,
    so the refusal names a limit, and that limit must work, one byte less not. (It named
    twice the tables of the refused budget's many small chunks: 27x the least at 50,000 x
    100.)"""
    scores = make_scores(5000, 100, regime="flat", seed=11).scores
    limit = 400_000
    with pytest.raises(ValueError, match="cache=True") as refused:
        sinklabel.sinkhorn(scores, 100, memory_limit=limit, cache=True)
    message = str(refused.value)
    left, lacking = (int(x) for x in re.search(r"leaves (\d+) bytes.* the (\d+) bytes",
                                               message).groups())
    with pytest.raises(ValueError, match="cache=True"):  # the naive raise falls short
        sinklabel.sinkhorn(scores, 100, memory_limit=limit + lacking - left, cache=True)
    named = re.search(r"memory_limit=(\d+) bytes would hold it", message)
    assert named is not None, message
    least = int(named.group(1))
    result = sinklabel.sinkhorn(scores, 100, memory_limit=least, cache=True)
    assert result.converged
    with pytest.raises(ValueError, match=f"memory_limit={least} bytes would hold it"):
        sinklabel.sinkhorn(scores, 100, memory_limit=least - 1, cache=True)


@pytest.mark.filterwarnings("ignore::sinklabel.ConvergenceWarning")
def test_a_streams_refused_cache_budget_names_the_least_limit_too():
    """Its blocks keep fingerprints as well, which the named limit counts: the limit that the
    blocks alone need (2,720,000 bytes here) leaves the tables too little."""
    scores = np.random.default_rng(0).standard_normal((50_000, 100)).astype(np.float32)
    streamed = CallableSource(lambda start, stop: scores[start:stop], scores.shape)
    with pytest.raises(ValueError, match=r"so at least (\d+) bytes") as small:
        sinklabel.sinkhorn(streamed, 100, memory_limit=1000, cache=True)
    blocks = int(re.search(r"so at least (\d+) bytes", str(small.value)).group(1))
    with pytest.raises(ValueError, match="would hold it") as refused:
        sinklabel.sinkhorn(streamed, 100, memory_limit=blocks, cache=True)
    least = int(re.search(r"memory_limit=(\d+) bytes would", str(refused.value)).group(1))
    held = sinklabel.sinkhorn(streamed, 100, memory_limit=least, cache=True, max_iter=1)
    assert held.n_iter == 1 and held.label_counts.sum() == 50_000
    with pytest.raises(ValueError, match=f"memory_limit={least} bytes would hold it"):
        sinklabel.sinkhorn(streamed, 100, memory_limit=least - 1, cache=True)


@pytest.mark.parametrize(("regime", "n"), [("flat", 20_000), ("peaked", 10_000)])
def test_a_cached_solve_from_a_function_stays_within_memory_limit(regime, n):
    """Everything NumPy allocates during the solve (blocks, tables, labels) fits the budget."""
    scores = make_scores(n, 100, regime=regime, seed=3).scores
    source = CallableSource(lambda start, stop: scores[start:stop].copy(), scores.shape)
    limit = 3_000_000
    sinklabel.sinkhorn(scores[:500], 100, cache=True)  # compile outside the measurement
    tracemalloc.start()
    try:
        result = sinklabel.sinkhorn(source, 100, memory_limit=limit, cache=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= limit
    assert result.converged
    np.testing.assert_array_equal(np.bincount(result.labels, minlength=100),
                                  result.label_counts)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("seed", range(4))
def test_float32_tables_follow_float64_arithmetic_as_the_potentials_move(dtype, seed):
    """Masked scores, small caps and large steps of the potentials: every pass from the
    tables (repaired or rebuilt) matches float64, and every label is a row's maximum."""
    rng = np.random.default_rng(seed)
    n, k, rows, cap = 90, 23, 17, int(rng.integers(1, 12))
    scores = 3.0 * rng.standard_normal((n, k))
    scores[rng.random((n, k)) < 0.2] = -np.inf
    scores[np.arange(n), rng.integers(0, k, n)] = 0.0
    scores = scores.astype(dtype)
    source, kernel = with_exp_cache(ArraySource(scores), NUMBA, rows, cap)
    f = np.zeros(k)
    for step in (0.0, 1.0, 20.0, 0.5, 100.0):
        f = f + step * rng.standard_normal(k)
        mass = solver.dual_terms(source, kernel, f, 25.0, rows)[0]
        expected, z = _reference(scores, f, 25.0)
        np.testing.assert_allclose(mass, expected, rtol=1e-5, atol=1e-6)
        labels = solver.assign(source, kernel, f, 25.0, rows)
        top = z.max(axis=1)
        assert np.all(z[np.arange(n), labels] >= top - 1e-5 * np.maximum(1.0, np.abs(top)))
    assert source.cache.builds > -(-n // rows)  # the large steps rebuilt tables
