"""pytest-benchmark timings of one Sinkhorn pass on the CPU backends, and of a full solve.

Sizes follow the suite's ``--bench-size`` (benchmarks/conftest.py): tiny by default so CI
can smoke-run this file, ``large`` for issue 3's CPU size:

    pytest benchmarks/bench_cpu.py --benchmark-disable              # smoke run (CI)
    pytest benchmarks/bench_cpu.py --bench-size large               # N=1e6, K=1000 (~5 GB)

The side-by-side table against the SeLa two-matvec loop is ``benchmarks/cpu_iteration.py``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from sinklabel import ConvergenceWarning, available_backends, sinkhorn
from sinklabel.datasets import make_scores
from sinklabel.kernels import get_kernel
from sinklabel.solver import label_mass
from sinklabel.sources import ArraySource

#: (N, K) per ``--bench-size``.
SIZES = {"tiny": (2_000, 64), "large": (1_000_000, 1000)}
LAM = 25.0
BACKENDS = [name for name in available_backends() if name in ("numpy", "numba")]


@pytest.fixture(scope="module", params=["flat", "peaked"])
def scores(request) -> np.ndarray:
    n, k = SIZES[request.config.getoption("--bench-size")]
    return make_scores(n, k, regime=request.param, seed=0).scores


def solved_potentials(scores: np.ndarray) -> np.ndarray:
    """The potentials a solve of ``scores`` reaches. A pass costs more there than at zero on
    peaked scores (fewer of its exponentials underflow, which the Numba kernel skips), and
    every pass of a warm-started solve is made near them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return sinkhorn(scores, scores.shape[1], lam=LAM).potentials


@pytest.fixture(scope="module")
def solution(scores) -> np.ndarray:
    return solved_potentials(scores)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_pass(benchmark, scores, solution, backend):
    """One Sinkhorn iteration: a sweep over every chunk at lam=25, at the solve's potentials."""
    kernel = get_kernel(backend)
    source = ArraySource(scores)
    k = scores.shape[1]
    rows = kernel.chunk_rows(k, scores.itemsize)
    mass = benchmark(label_mass, source, kernel, solution, LAM, rows)
    expected = label_mass(source, get_kernel("numpy"), solution, LAM, rows)
    np.testing.assert_allclose(mass, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.filterwarnings("ignore::sinklabel.ConvergenceWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_solve(benchmark, scores, backend):
    """A cold-start solve of at most 50 passes, labels included; an untimed one first, so the
    compiled kernels the solve needs are loaded before the clock starts."""
    result = benchmark.pedantic(sinkhorn, args=(scores, scores.shape[1]),
                                kwargs=dict(backend=backend, max_iter=50), rounds=1,
                                iterations=1, warmup_rounds=1)
    assert np.all(np.isfinite(result.potentials))
    # What was timed must be right: the reported error is the plan's (rebuilt in float64 from
    # the returned potentials), and the counts are the labels'.
    k = scores.shape[1]
    z = result.lam * scores.astype(np.float64) + result.potentials
    p = np.exp(z - z.max(axis=1, keepdims=True))
    marginal = (p / p.sum(axis=1, keepdims=True)).mean(axis=0)
    assert np.abs(marginal - 1.0 / k).sum() == pytest.approx(result.error, rel=1e-3, abs=5e-5)
    labels = np.asarray(result.labels)
    assert np.array_equal(result.label_counts, np.bincount(labels, minlength=k))
