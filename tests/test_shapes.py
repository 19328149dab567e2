"""Work and memory that grow as the problem's shape says they should, at unusual shapes too.

Each test checks a complexity property (bytes held at once, calls made), never wall-clock
time: the development machines are shared and their timings are noise.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from sinklabel import _transport


def _peak_bytes(run) -> int:
    """The most bytes Python and NumPy held at once while ``run()`` ran, beyond the start."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_exact_finish_holds_one_label_graph_at_a_time(monkeypatch):
    # The K x K label graph (17 bytes per pair) dominates the exact finish's memory, and
    # check_host_memory budgets one. Each widening of the boundary built a new graph while
    # the last one was still held: two at the peak.
    n, k = 2000, 500
    scores = np.log(np.random.default_rng(0).dirichlet(np.full(k, 0.1), size=n))
    lower, upper = np.full(k, n // k), np.full(k, -(-n // k))
    rounds = []
    build = _transport._label_distances
    monkeypatch.setattr(_transport, "_label_distances",
                        lambda *args: rounds.append(1) or build(*args))

    def solve():
        return _transport.solve_transport(scores, lower, upper, None, use_numba=True)

    solve()  # compiles the loops, whose allocations are not the solve's
    rounds.clear()
    peak = _peak_bytes(solve)
    assert len(rounds) >= 2  # the boundary was widened: the case where graphs could pile up
    assert peak < 1.5 * 17 * k * k


class _CountedReads(np.ndarray):
    """Scores that count how often they are indexed (each a NumPy call over some of them)."""

    reads = 0

    def __getitem__(self, key):
        _CountedReads.reads += 1
        return super().__getitem__(key)


def test_closed_label_prices_read_rows_in_blocks_not_a_column_per_label():
    # Pricing labels of capacity zero took a pass over a column per closed label: half of a
    # solve's time at N=20,000, K=5,000 with half the labels closed.
    rng = np.random.default_rng(1)
    n, k = 300, 400
    scores = rng.standard_normal((n, k))
    scores[rng.random((n, k)) < 0.2] = -np.inf
    scores[:, 8] = -np.inf  # a closed label no point can take
    closed = np.arange(0, k, 2)
    labels = rng.integers(1, k, n) | 1  # points sit at open labels, at finite scores
    scores[np.arange(n), labels] = rng.standard_normal(n)
    v = rng.standard_normal(k)
    _CountedReads.reads = 0
    prices = _transport._closed_label_prices(scores.view(_CountedReads), labels, v, closed)
    assert _CountedReads.reads < 10  # independent of the number of closed labels
    utility = scores[np.arange(n), labels] + v[labels]
    for price, y in zip(prices, closed, strict=True):
        slack = utility - scores[:, y]
        low = slack[np.isfinite(slack)].min() if np.isfinite(slack).any() else 0.0
        assert price == low - (1.0 + abs(low))


def test_numba_sweep_holds_a_bounded_number_of_task_sums(monkeypatch):
    # Each row task of a sweep has K + 1 float64 sums. From K = 2**19 on every row is its own
    # task, and the sums of a whole chunk were held at once: twice the scores' bytes. Here one
    # row per task stands in for such wide rows.
    numba_kernels = pytest.importorskip("sinklabel.kernels.numba")
    n, k = 200, 4000
    scores = np.random.default_rng(2).standard_normal((n, k)).astype(np.float32)
    f = np.random.default_rng(3).standard_normal(k)
    monkeypatch.setattr(numba_kernels, "_row_ranges", lambda rows, _: [
        (i, i + 1) for i in range(rows)])
    kernel = numba_kernels.NumbaKernel(threads=lambda: 2)
    monkeypatch.setattr(numba_kernels, "SUMS_BYTES", 1 << 30, raising=False)
    mass, lse = kernel.sweep_lse(scores, f, 25.0)  # every task's sums at once
    monkeypatch.setattr(numba_kernels, "SUMS_BYTES", 16 * 8 * (k + 1), raising=False)
    peak = _peak_bytes(lambda: kernel.sweep_lse(scores, f, 25.0))
    assert peak < scores.nbytes / 2  # all tasks' sums would take four times the scores
    waves = kernel.sweep_lse(scores, f, 25.0)
    np.testing.assert_array_equal(waves[0], mass)  # added in the same order: the same bits
    assert waves[1] == lse
