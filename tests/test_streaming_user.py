"""A user whose scores do not fit in memory: budgets that must hold with blocks of a few rows,
and the end of a streamed source checked whatever reads it.

Oracles: ``tracemalloc`` (every NumPy allocation of the solve, and the checking layer's
fingerprints), the budget's own arithmetic as docs/streaming.md states it, and a source that
breaks its promise after its last block.
"""

from __future__ import annotations

import re
import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sinklabel
from sinklabel._budget import (
    block_state_bytes,
    bytes_per_row,
    fixed_bytes,
    rows_for_budget,
)
from sinklabel.datasets import make_scores
from sinklabel.kernels import get_kernel
from sinklabel.sources import CallableSource, Source, SourceError, checked

N, K = 3000, 4
SCORES = make_scores(N, K, regime="flat", seed=7).scores


def _function_source(scores: np.ndarray = SCORES) -> CallableSource:
    return CallableSource(lambda start, stop: scores[start:stop], scores.shape)


def _fingerprint_bytes(source: Source, rows: int) -> int:
    """What the checking layer keeps after one pass in blocks of ``rows`` (the blocks are
    views: nothing else stays allocated)."""
    layer = checked(source)
    tracemalloc.start()
    try:
        for _ in layer.chunks(rows):
            pass
        return tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


def test_the_budget_counts_what_is_kept_per_streamed_block():
    """A fingerprint per block outlives the block: with blocks of one row it cost 40 times
    the 16 bytes per point the budget reserved, so a budget that allowed one-row blocks was
    exceeded 18-fold. The block size chosen now leaves room for every fingerprint."""
    source = _function_source()
    per_row = bytes_per_row(source, get_kernel("numpy"))
    fixed = fixed_bytes(N, K)
    assert _fingerprint_bytes(source, 1) <= block_state_bytes(N, 1)
    for budget in (fixed + 100_000, fixed + 400_000, fixed + 3_000_000):
        rows = rows_for_budget(budget, fixed, per_row, streamed_points=N)
        kept = _fingerprint_bytes(source, rows)
        assert kept <= block_state_bytes(N, rows)
        assert fixed + rows * per_row + block_state_bytes(N, rows) <= budget


def test_a_budget_too_small_for_the_fingerprints_names_one_that_holds_them():
    per_row = bytes_per_row(_function_source(), get_kernel("numpy"))
    fixed = fixed_bytes(N, K)
    with pytest.raises(ValueError, match="bytes per block to check the streamed scores") as err:
        rows_for_budget(fixed + 2 * per_row, fixed, per_row, streamed_points=N)
    least = int(re.search(r"at least (\d+) bytes", str(err.value)).group(1))
    rows = rows_for_budget(least, fixed, per_row, streamed_points=N)
    assert fixed + rows * per_row + block_state_bytes(N, rows) <= least
    with pytest.raises(ValueError, match="too small"):
        rows_for_budget(least - 1, fixed, per_row, streamed_points=N)


def test_the_cached_exponentials_leave_room_for_the_fingerprints():
    """``table_cap`` gave the tables what the blocks left, forgetting the fingerprints: with
    blocks of one row, the tables alone then filled the budget."""
    pytest.importorskip("numba")
    from sinklabel.exp_cache import table_cap
    from sinklabel.kernels import exp_tables

    kernel = get_kernel("numba")
    source = _function_source()
    rows, cap = 1, 3
    tables = exp_tables(kernel)
    spent = fixed_bytes(N, K) + rows * bytes_per_row(source, kernel) + block_state_bytes(N, rows)
    limit = spent + tables.max_bytes(N, K, source.dtype, cap, N)
    assert table_cap(source, kernel, rows, limit) == cap
    with pytest.raises(ValueError, match="cache=True"):
        table_cap(source, kernel, rows, spent)


def test_a_block_of_another_dtype_says_how_to_declare_it():
    """A function returning float64 (np.log of float64 probabilities) was refused as
    "expected float32", a dtype the caller never named: CallableSource's default."""
    wide = SCORES.astype(np.float64)
    with pytest.raises(SourceError, match=r"expected float32, got float64 .*dtype=") as err:
        sinklabel.sinkhorn(CallableSource(lambda a, b: wide[a:b], wide.shape), K)
    assert err.value.start == 0 and err.value.pass_index == 1
    declared = CallableSource(lambda a, b: wide[a:b], wide.shape, dtype=np.float64)
    assert sinklabel.sinkhorn(declared, K).converged


# --- these two need the api.py change proposed with them (the solve's chunk rows, and
# --- soft_assignments' single block)


@pytest.mark.filterwarnings("ignore::sinklabel.ConvergenceWarning")
def test_a_streamed_solve_in_tiny_blocks_stays_within_memory_limit():
    """The least budget a refusal names, for a function source: everything NumPy allocates
    during the solve, fingerprints included, fits it."""
    source = _function_source()
    too_small = fixed_bytes(N, K) + 2 * bytes_per_row(source, get_kernel("numpy"))
    with pytest.raises(ValueError, match="too small") as refused:
        sinklabel.sinkhorn(source, K, memory_limit=too_small, backend="numpy")
    least = int(re.search(r"at least (\d+) bytes", str(refused.value)).group(1))
    tracemalloc.start()
    try:
        sinklabel.sinkhorn(source, K, memory_limit=least, backend="numpy", max_iter=3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= least


class _RowsBeyondN(Source):
    """Yields the blocks asked for, then one more row than it has."""

    shape, dtype, library = (N, K), "float32", "numpy"

    def chunks(self, rows: int) -> Iterator:
        yield from ((start, stop, SCORES[start:stop]) for start, stop in self.row_ranges(rows))
        yield N, N + 1, SCORES[:1]


@pytest.mark.parametrize("chunk_size", [N // 3, N, 2 * N])
@pytest.mark.parametrize("what", ["predict", "soft_assignments"])
def test_rows_beyond_n_stop_soft_assignments_as_they_stop_predict(what, chunk_size):
    """soft_assignments returned its one block as soon as it had it, so a source read in
    one block was never asked for its end: rows beyond N went unnoticed there only."""
    result = sinklabel.sinkhorn(SCORES, K)
    with pytest.raises(SourceError, match="rows beyond N"):
        getattr(result, what)(_RowsBeyondN(), chunk_size=chunk_size)


def _most_rows(room: int, per_row: int, n_points: int, block_bytes: int) -> int:
    """The longest blocks whose rows and fingerprints fit ``room``, by trying every length
    (one block may be longer than the source: as long as the room allows); 0 if none fit."""
    fits = [rows for rows in range(1, n_points + 1)
            if -(-n_points // rows) * block_bytes + rows * per_row <= room]
    if fits and fits[-1] == n_points:
        return max(n_points, (room - block_bytes) // per_row)
    return fits[-1] if fits else 0


@settings(max_examples=300, deadline=None)
@given(n_points=st.integers(1, 120), per_row=st.integers(1, 40),
       block_bytes=st.integers(0, 60), budget=st.integers(0, 3000),
       fixed=st.integers(0, 200), cache=st.booleans())
def test_blocks_are_the_longest_that_fit_with_their_fingerprints(n_points, per_row, block_bytes,
                                                                 budget, fixed, cache):
    """rows_for_budget against every block length tried; a refusal names the least budget
    that fits, and one byte less does not."""
    share = 2 if cache else 1
    expected = _most_rows(budget // share - fixed, per_row, n_points, block_bytes)
    options = dict(cache=cache, streamed_points=n_points, block_bytes=block_bytes)
    if expected:
        assert rows_for_budget(budget, fixed, per_row, **options) == expected
        return
    with pytest.raises(ValueError, match="too small") as refused:
        rows_for_budget(budget, fixed, per_row, **options)
    least = int(re.search(r"at least (\d+) bytes", str(refused.value)).group(1))
    assert _most_rows(least // share - fixed, per_row, n_points, block_bytes) >= 1
    assert _most_rows((least - 1) // share - fixed, per_row, n_points, block_bytes) == 0
    assert rows_for_budget(least, fixed, per_row, **options) >= 1
