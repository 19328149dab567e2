"""Numbers the documentation's prose states, checked against what the code does.

Each test measures the behaviour independently (counting calls, reduction sizes, bytes) and
also finds the claim on its page, so that neither can change without the other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import sinklabel
from sinklabel import api, exact
from sinklabel.datasets import make_scores
from sinklabel.distributed import TorchCollective
from sinklabel.kernels import resolve_kernel
from sinklabel.sources import CallableSource, as_source, checked

ROOT = Path(__file__).resolve().parents[1]


def page_text(name: str) -> str:
    """A page with its line breaks folded to spaces: a claim may wrap anywhere."""
    return " ".join((ROOT / name).read_text().split())


def test_labels_take_one_pass_after_the_solve():
    """method.md, streaming.md: a function source is called once per block per pass, and the
    labels are one more pass after the last iteration (not fused into it)."""
    scores = make_scores(2000, 10, regime="peaked", seed=0).scores
    calls = []
    source = CallableSource(lambda start, stop: calls.append(start) or scores[start:stop],
                            scores.shape, "float32")
    result = sinklabel.sinkhorn(source, 10, chunk_size=500, backend="numpy")
    assert len(calls) == (result.n_iter + 1) * 4
    assert "is `n_iter + 1` passes (the last one labels)" in page_text("docs/streaming.md")
    assert "one more pass after the solve's last one" in page_text("docs/method.md")


class _RecordingCollective(TorchCollective):
    """TorchCollective's own reductions on one process, recording each buffer's length
    instead of handing it to torch.distributed (which this test does not start)."""

    def __init__(self) -> None:  # no process group: only the reduction bookkeeping runs
        self.rank, self.world_size, self.failure, self.sizes = 0, 1, None, []

    def _all_reduce(self, buffer: np.ndarray, op: str) -> np.ndarray:
        self.sizes.append(buffer.size)
        return buffer


def test_one_iteration_reduces_k_plus_three_values():
    """README.md, distributed.md: a distributed iteration ends in one all-reduce of K + 3
    float64 values (masses, log-sum-exp sum, row count, status flag)."""
    K = 12
    scores = make_scores(1500, K, regime="flat", seed=1).scores
    source = as_source(scores)
    kernel = resolve_kernel("numpy", source.library)
    collective = _RecordingCollective()
    result = api._sinkhorn(
        source, kernel, scores=source, lam=25.0, label_weights=np.full(K, 1 / K), tol=1e-3,
        max_iter=100, init=None, rows=400, progress=False, collective=collective,
    )
    assert result.converged
    # One reduction per iteration, then the global label counts (K + 1 with the status).
    assert collective.sizes == [K + 3] * result.n_iter + [K + 1]
    assert "one all-reduce of K + 3 numbers per pass" in page_text("README.md")
    assert "one all-reduce of K + 3 float64 values" in page_text("docs/distributed.md")


@pytest.mark.parametrize(("scores", "bytes_per_score"), [
    (np.zeros((600, 50), dtype=np.float32), 0),                     # read in place
    (np.zeros((600, 50), dtype=np.float16), 4),                     # widened to float32
    (np.asfortranarray(np.zeros((600, 50))), 8),                    # float64 stays float64
    (np.zeros((600, 50), dtype=">f8"), 8),                          # byte-swapped float64
])
def test_exact_solver_copies_four_or_eight_bytes_per_score(monkeypatch, scores, bytes_per_score):
    """exact.md: scores the exact solver cannot read in place are copied at N x K x 4 bytes,
    8 for float64, which the memory check counts before reading a score."""
    monkeypatch.setattr(exact, "physical_memory", lambda: 1)  # every check fails, and says why
    with pytest.raises(MemoryError) as failure:
        exact.check_host_memory(checked(as_source(scores)))
    copy_gib = float(str(failure.value).split("GiB of host memory")[1].split("(")[1].split()[0])
    # The message rounds to 3 digits; 4 and 8 bytes per score are far apart.
    assert copy_gib == pytest.approx(scores.size * bytes_per_score / 2**30, rel=0.01)
    assert "N x K x 4 bytes (8 for float64 scores)" in page_text("docs/exact.md")


@pytest.mark.parametrize(("n_labels", "cap", "scale"), [(20, 20, 1e-3), (100, 32, 0.2),
                                                    (400, 50, 0.2)])
def test_cached_tables_keep_at_most_cap_entries_in_the_bytes_stated(n_labels, cap, scale):
    """backends.md: a table row keeps at most max(32, K // 8) entries (at most K), and the
    tables take at most N * (24 + 6 * cap) bytes for float32 scores plus 8 * (K + 1) per
    chunk. Flat scores, scaled down, give rows more entries that can matter than the cap;
    where the cap is K, every row keeps K and the tables take those bytes exactly."""
    pytest.importorskip("numba")
    from sinklabel import solver
    from sinklabel.exp_cache import default_cap, with_exp_cache

    N, rows = 3000, 700  # 5 chunks
    scores = make_scores(N, n_labels, regime="flat", seed=1).scores * np.float32(scale)
    source, kernel = with_exp_cache(as_source(scores), resolve_kernel("numba", "numpy"),
                                    rows, default_cap(n_labels))
    for _ in range(2):  # built on the first pass, answered from the tables on the second
        solver.dual_terms(source, kernel, np.zeros(n_labels), 25.0, rows)
    tables = [slot.table for slot in source.cache._slots.values() if slot.table is not None]
    assert len(tables) == 5
    assert max(np.diff(table.offsets).max() for table in tables) == cap
    limit = N * (24 + 6 * cap) + 5 * 8 * (n_labels + 1)
    assert source.cache.nbytes <= limit
    assert source.cache.budget == limit  # what the cache reserves is the bound stated
    if cap == n_labels:
        assert source.cache.nbytes == limit
    claim = ("cap = max(32, K // 8)` entries (at most K), so the tables never take more than "
             "`N * (24 + 6 * cap)` bytes for float32 scores")
    assert claim in page_text("docs/backends.md")
    assert "and `8 * (K + 1)` bytes per chunk" in page_text("docs/backends.md")


def test_an_unresolved_solve_stops_after_the_stated_passes_without_progress():
    """convergence.md, getting-started.md: the stall stop's 100 passes are the solver's."""
    from sinklabel import solver

    assert solver.STALL_PASSES == 100
    assert "once 100 passes in a row found neither a smaller error" in page_text(
        "docs/convergence.md")
    assert "once 100 passes in a row make no progress it stops" in page_text(
        "docs/getting-started.md")


def test_tol_pins_the_labels_of_peaked_scores_not_their_potentials():
    """convergence.md: two solves that both meet tol from different starts can end at
    potentials many nats apart while their labels agree to the tolerance's slack."""
    scores = make_scores(3000, 23, regime="peaked", seed=3).scores
    start = np.random.default_rng(0).normal(0.0, 100.0, 23)
    cold = sinklabel.sinkhorn(scores, 23, backend="numpy")
    warm = sinklabel.sinkhorn(scores, 23, backend="numpy", init=start)
    assert cold.converged and warm.converged
    assert np.abs(cold.potentials - warm.potentials).max() > 1.0
    assert np.mean(cold.labels != warm.labels) < 2e-3
    assert "`tol` pins the label marginal, not the potentials" in page_text("docs/convergence.md")
