"""pytest-benchmark timings of one Sinkhorn pass on the CPU backends, and of a full solve.

Sizes are tiny by default so CI can smoke-run this file; choose real ones with an env var:

    pytest benchmarks/bench_cpu.py --benchmark-disable              # smoke run (CI)
    SINKLABEL_BENCH_SIZE=large pytest benchmarks/bench_cpu.py       # N=1e6, K=1000 (~5 GB)

The side-by-side table against the SeLa two-matvec loop is ``benchmarks/cpu_iteration.py``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from sinklabel import available_backends, sinkhorn
from sinklabel.datasets import make_scores
from sinklabel.kernels import get_kernel
from sinklabel.solver import label_mass
from sinklabel.sources import ArraySource

SIZES = {"tiny": (2_000, 64), "medium": (100_000, 1000), "large": (1_000_000, 1000)}
N, K = SIZES[os.environ.get("SINKLABEL_BENCH_SIZE", "tiny")]
BACKENDS = [name for name in available_backends() if name in ("numpy", "numba")]


@pytest.fixture(scope="module", params=["flat", "peaked"])
def scores(request) -> np.ndarray:
    return make_scores(N, K, regime=request.param, seed=0).scores


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_pass(benchmark, scores, backend):
    """One Sinkhorn iteration: a sweep over every chunk at lam=25."""
    kernel = get_kernel(backend)
    source = ArraySource(scores)
    rows = kernel.chunk_rows(K, scores.itemsize)
    f = np.zeros(K)
    mass = benchmark(label_mass, source, kernel, f, 25.0, rows)
    expected = label_mass(source, get_kernel("numpy"), f, 25.0, rows)
    np.testing.assert_allclose(mass, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.filterwarnings("ignore::sinklabel.ConvergenceWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_solve(benchmark, scores, backend):
    """A cold-start solve of at most 50 passes, labels included."""
    result = benchmark.pedantic(sinkhorn, args=(scores, K), kwargs=dict(backend=backend,
                                max_iter=50), rounds=1, iterations=1)
    assert np.all(np.isfinite(result.potentials))
