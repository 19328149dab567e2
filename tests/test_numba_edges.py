"""The Numba kernels at the sizes, dtypes and layouts the main tests touch least.

Every check is against a float64 reference written here on the scores as the kernels read them
(16-bit scores widened exactly to float32 first): widths around the vector block of 8 and the
16-bit label indices of the ``cache=True`` tables, one row, chunks of one row and of several
row tasks, every input layout that is copied rather than read in place, and scores at the
screening thresholds.
"""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest

pytest.importorskip("numba")

import sinklabel  # noqa: E402
from sinklabel import ConvergenceWarning  # noqa: E402
from sinklabel.datasets import make_scores  # noqa: E402
from sinklabel.kernels._base import compute_dtype  # noqa: E402
from sinklabel.kernels._exp_cache import NumbaExpTables, label_dtype  # noqa: E402
from sinklabel.kernels.numba import (  # noqa: E402
    COPY_LABELS,
    NumbaKernel,
    _copy_rows,
    _row_ranges,
    bfloat16_rows,
)

KERNEL = NumbaKernel()
BLOCK_EDGE_WIDTHS = [1, 2, 7, 8, 9, 15, 16, 17]
DTYPES = ["float32", "float64", "float16", "bfloat16"]
LAYOUTS = ["C", "fortran", "big-endian", "every-other", "reversed"]


# --- references -----------------------------------------------------------------------------


def _values(chunk: np.ndarray) -> np.ndarray:
    """The scores as float64, bfloat16 bits widened exactly."""
    if chunk.dtype.names == ("bfloat16",):
        return (chunk["bfloat16"].astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return chunk.astype(np.float64)


def _reference(values: np.ndarray, f: np.ndarray, lam: float):
    """Masses, log-sum-exp total, argmax, label slack and softmax of ``lam * S + f``."""
    z = lam * values + f
    top = z.max(axis=1, keepdims=True)
    p = np.exp(z - top)
    total = p.sum(axis=1, keepdims=True)
    soft = p / total
    return (soft.sum(axis=0), float((top[:, 0] + np.log(total[:, 0])).sum()), z.argmax(axis=1),
            (z - top).max(axis=0), soft)


def _scores(n: int, k: int, seed: int) -> np.ndarray:
    """Log-probabilities, most of each row far below its best entry at lam = 25."""
    return np.log(np.random.default_rng(seed).dirichlet(np.full(k, 0.3), size=n))


def _chunk(scores: np.ndarray, dtype: str, layout: str) -> np.ndarray:
    """``scores`` in ``dtype`` (bfloat16 as bits) and in the given memory layout."""
    if dtype == "bfloat16":
        bits = (scores.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        typed = bfloat16_rows(bits.view(np.int16))
    else:
        typed = scores.astype(dtype)
    if layout == "fortran":
        return np.asfortranarray(typed)
    if layout == "big-endian":
        return typed if dtype == "bfloat16" else typed.astype(typed.dtype.newbyteorder(">"))
    if layout == "every-other":
        wide = np.repeat(np.repeat(typed, 2, axis=0), 2, axis=1)
        return wide[::2, ::2]
    if layout == "reversed":
        return np.ascontiguousarray(typed[::-1])[::-1]
    return typed


def _assert_every_operation_matches(chunk: np.ndarray, f: np.ndarray, lam: float,
                                    rtol: float) -> None:
    values = _values(chunk)
    mass, lse, labels, slack, soft = _reference(values, f, lam)
    n = len(values)
    got_mass, got_lse = KERNEL.sweep_lse(chunk, f, lam)
    np.testing.assert_allclose(got_mass, mass, rtol=rtol, atol=rtol * n)
    assert abs(got_lse - lse) <= rtol * (abs(lse) + n)
    np.testing.assert_array_equal(KERNEL.best(chunk, f, lam)[1], labels)
    np.testing.assert_allclose(KERNEL.slack(chunk, f, lam), slack, rtol=rtol, atol=rtol * 100)
    np.testing.assert_allclose(KERNEL.soft(chunk, f, lam), soft, rtol=rtol, atol=rtol)
    picked = np.random.default_rng(0).integers(0, chunk.shape[1], n)
    np.testing.assert_array_equal(KERNEL.gather(chunk, picked), values[np.arange(n), picked])


# --- widths, dtypes and layouts -------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", BLOCK_EDGE_WIDTHS)
def test_every_operation_at_block_edge_widths_layouts_and_dtypes(k, layout):
    f = np.random.default_rng(k).normal(size=k)
    for n in (1, 37, 165):  # 165: the narrow-row sweep's blocks of 64 rows and a remainder
        scores = _scores(n, k, seed=n + k)
        for dtype in DTYPES:
            rtol = 1e-10 if dtype == "float64" else 2e-5
            for lam in (0.5, 25.0):  # whole rows in range, and screened rows
                _assert_every_operation_matches(_chunk(scores, dtype, layout), f, lam, rtol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [3, 16, 2048, 3000])
def test_every_operation_over_a_chunk_of_several_row_tasks(k, dtype):
    """A chunk is computed in tasks of about 2 MiB of scores: at K = 2048, 64 rows each (200
    rows: four tasks, the last of 8), at K = 3000, 43. The main tests' chunks fit in one.
    Narrow rows go in blocks of rows within each task, which must stop at the task's end:
    at K = 16 tasks of 32768 rows, at K = 3 of 174762 (not a whole number of blocks)."""
    rows_per_task = (2 << 20) // (4 * k)
    n = 3 * rows_per_task + 8
    assert len(_row_ranges(n, k)) == 4  # still several tasks, should their size change
    f = np.random.default_rng(k).normal(size=k)
    rtol = 1e-10 if dtype == "float64" else 2e-5
    _assert_every_operation_matches(_chunk(_scores(n, k, seed=k), dtype, "C"), f, 25.0, rtol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k", [COPY_LABELS - 1, COPY_LABELS, COPY_LABELS + 1, 3000])
def test_a_fortran_ordered_chunk_is_copied_to_rows_exactly(k, dtype):
    """Scores stored by columns are copied to rows a task at a time, in blocks of labels when
    the rows are wide: a task's rows come out exact, the other rows untouched, and every
    operation on the whole chunk gives the bits it gives on the same scores stored by rows."""
    scores = _scores(2 * (2 << 20) // (4 * k) + 5, k, seed=k).astype(dtype)
    stored = np.asfortranarray(scores)
    rows = np.full(scores.shape, -1.0, dtype)
    lo, hi = 3, scores.shape[0] - 2
    _copy_rows(stored, rows, lo, hi)
    np.testing.assert_array_equal(rows[lo:hi], scores[lo:hi])
    assert np.all(rows[:lo] == -1.0) and np.all(rows[hi:] == -1.0)
    f = np.random.default_rng(k).normal(size=k)
    for operation in ("sweep_lse", "best", "slack", "soft"):
        got, expected = (_bits(getattr(KERNEL, operation)(chunk, f, 25.0))
                         for chunk in (stored, scores))
        assert got == expected, operation


@pytest.mark.parametrize(("dtype", "layout"), [
    ("float32", "fortran"), ("float16", "fortran"), ("bfloat16", "fortran"),
    ("float64", "big-endian"), ("float16", "big-endian"),
])
def test_a_pass_over_scores_not_read_in_place_holds_a_task_of_rows_per_thread(dtype, layout):
    """Each thread copies (or converts) its task's rows into its own buffer and computes them
    there, so a pass holds about one task (2 MiB of float32 scores) per thread, not a copy
    of the chunk, and gives the bits of the same scores stored by rows."""
    k = 1000
    rows_per_task = (2 << 20) // (4 * k)
    scores = _scores(12 * rows_per_task, k, seed=1)
    stored, by_rows = _chunk(scores, dtype, layout), _chunk(scores, dtype, "C")
    f = np.random.default_rng(1).normal(size=k)
    kernel = NumbaKernel(lambda: 2)  # two threads whatever the machine: the bound below
    kernel.sweep_lse(stored, f, 25.0)  # compiled before measuring
    operations = ("sweep_lse", "best", "slack")
    tracemalloc.start()
    try:
        got = [_bits(getattr(kernel, operation)(stored, f, 25.0)) for operation in operations]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    task_bytes = rows_per_task * k * np.dtype(compute_dtype(dtype)).itemsize
    assert peak < 2 * task_bytes + (1 << 20) < stored.nbytes / 2
    assert got == [_bits(getattr(KERNEL, operation)(by_rows, f, 25.0))
                   for operation in operations]


def _bits(result) -> list[bytes]:
    """The bytes of an operation's array, or of each part of a tuple of results."""
    return [np.asarray(part).tobytes() for part in (result if isinstance(result, tuple)
                                                     else (result,))]


@pytest.mark.parametrize("k", [65535, 65536, 65537, 100_000])
def test_rows_wider_than_16_bit_label_indices(k):
    scores = _scores(3, k, seed=k)
    scores[:, -1] = 0.5  # the best label is the very last index
    f = np.random.default_rng(k).normal(size=k)
    _assert_every_operation_matches(scores.astype(np.float32), f, 25.0, rtol=2e-5)


# --- the screening thresholds ---------------------------------------------------------------


@pytest.mark.parametrize("dtype, threshold", [("float32", -87.33654), ("float64", -708.3964)])
@pytest.mark.parametrize("k", [8, 9, 16, 17])
def test_scores_at_the_screening_threshold(dtype, threshold, k):
    """A score exactly ``threshold`` below its row's best keeps its (normal) exponential; one
    step further down it may be dropped, which costs less than the smallest normal float."""
    at = np.asarray(threshold, dtype)
    below = np.nextafter(at, at.dtype.type(-np.inf))
    tiny = np.finfo(dtype).tiny
    for position in range(k):
        scores = np.full((2, k), -1e4, dtype)
        scores[:, (position + 1) % k] = 0.0
        scores[0, position] = at
        scores[1, position] = below
        mass, lse = KERNEL.sweep_lse(scores, np.zeros(k), 1.0)
        expected = np.exp(_values(scores)[:, position])
        assert mass[position] == pytest.approx(expected.sum(), rel=1e-6, abs=1.01 * float(tiny))
        assert mass[position] >= expected[0] * (1 - 1e-6)  # the kept one is never dropped
        assert lse == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k", BLOCK_EDGE_WIDTHS + [24, 25])
def test_a_single_finite_score_anywhere_in_the_row(k):
    """Rows whose only finite score sits at a block edge: all of the row's mass is there."""
    for position in sorted({0, k - 1, min(k - 1, 7), min(k - 1, 8), min(k - 1, 16)}):
        for dtype in ("float32", "float64", "float16"):
            scores = np.full((3, k), -np.inf, dtype)
            scores[:, position] = -2.0
            f = np.random.default_rng(position).normal(size=k)
            mass, lse = KERNEL.sweep_lse(scores, f, 25.0)
            expected = np.zeros(k)
            expected[position] = 3.0
            np.testing.assert_allclose(mass, expected, rtol=1e-12)
            assert lse == pytest.approx(3 * (-50.0 + f[position]), rel=1e-6)
            np.testing.assert_array_equal(KERNEL.best(scores, f, 25.0)[1], [position] * 3)
            np.testing.assert_allclose(KERNEL.soft(scores, f, 25.0), np.tile(expected / 3, (3, 1)))
            assert KERNEL.slack(scores, f, 25.0)[position] == 0.0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_potentials_that_push_whole_blocks_out_of_range(dtype):
    scores = _scores(50, 33, seed=4).astype(dtype)
    f = np.zeros(33)
    f[:8] = -500.0  # a whole block far below every row's best: it underflows
    f[8:16] = 300.0  # a whole block holding every row's best
    mass, lse, labels, _, _ = _reference(_values(scores), f, 25.0)
    got_mass, got_lse = KERNEL.sweep_lse(scores, f, 25.0)
    np.testing.assert_allclose(got_mass, mass, rtol=1e-5, atol=1e-6)
    assert got_lse == pytest.approx(lse, rel=1e-6)
    np.testing.assert_array_equal(KERNEL.best(scores, f, 25.0)[1], labels)


# --- cache tables at the 16-bit label boundary ----------------------------------------------


@pytest.mark.parametrize("k", [65535, 65536, 65537])
def test_cache_tables_index_labels_across_the_16_bit_boundary(k):
    scores = _scores(4, k, seed=k).astype(np.float32)
    scores[:, -1] = 0.5  # the best label is the largest index (65534, 65535 or 65536)
    f = np.random.default_rng(k).normal(size=k)
    table = NumbaExpTables(KERNEL).build(scores, f, 25.0, 0.0, 32)
    assert table.labels.dtype == label_dtype(k)
    assert table.labels.dtype.itemsize == (2 if k <= 65535 else 4)
    mass, lse, labels, _, _ = _reference(_values(scores), f, 25.0)
    answer = table.sweep_lse(f)
    assert answer.bad.size == 0
    np.testing.assert_allclose(answer.mass, mass, rtol=1e-6, atol=1e-9)
    assert answer.lse == pytest.approx(lse, rel=1e-7)
    np.testing.assert_array_equal(table.best(f)[1], labels)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("regime", ["flat", "peaked"])
def test_cache_table_entries_are_the_row_shifted_exponentials(regime, dtype):
    """Each kept entry is ``exp(z - max z + shift)`` of its row and label, to the table
    dtype's rounding of ``z - max z`` (float32 tables shift by 115 ln 2, so that entries far
    below their row's best stay normal numbers)."""
    scores = make_scores(700, 37, regime=regime, seed=5, dtype=dtype).scores
    f = np.random.default_rng(1).normal(size=37)
    table = NumbaExpTables(KERNEL).build(scores, f, 25.0, 0.0, 32)
    z = 25.0 * scores.astype(np.float64) + f
    top = z.max(axis=1)
    rows = np.repeat(np.arange(len(z)), np.diff(table.offsets))
    x = z[rows, table.labels[:table.values.size]] - top[rows]
    assert table.values.size >= len(z)
    assert x.min() < -30 if regime == "flat" else np.all(x == 0)  # peaked: only each row's best
    relative = np.abs(table.values / np.exp(x + table.shift) - 1)
    # rounding of x in the table dtype, and of z in float64 (which may fuse its multiply-add)
    bound = 4 * np.finfo(table.values.dtype).eps * (1 + np.abs(x)) + 4 * 2.0**-52 * (
        np.abs(z[rows, table.labels[:table.values.size]]) + np.abs(top[rows]))
    assert np.all(relative <= bound)


# --- whole solves with odd chunk sizes ------------------------------------------------------


def _solve(scores: np.ndarray, **options) -> sinklabel.SinkhornResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return sinklabel.sinkhorn(scores, scores.shape[1], tol=1e-6, max_iter=300, **options)


@pytest.mark.parametrize("k", [1, 2, 9])
def test_solves_with_one_row_chunks_and_the_cache_agree_with_numpy(k):
    scores = _scores(31 * k + 2, k, seed=k).astype(np.float32)  # no chunk of 7 rows divides it
    reference = _solve(scores, backend="numpy")
    for chunk_size in (1, 7, None):
        for cache in (False, True):
            result = _solve(scores, backend="numba", chunk_size=chunk_size, cache=cache)
            np.testing.assert_allclose(result.potentials, reference.potentials, atol=1e-4)
            np.testing.assert_array_equal(result.labels, reference.labels)


def test_sums_do_not_depend_on_threads_when_tasks_do_not_divide_the_rows():
    k = 512  # tasks of 1024 rows: 2 whole ones and 3 rows
    scores = _scores(2 * 1024 + 3, k, seed=5).astype(np.float32)
    f = np.random.default_rng(5).normal(size=k)
    one = NumbaKernel(lambda: 1).sweep_lse(scores, f, 25.0)
    two = NumbaKernel(lambda: 2).sweep_lse(scores, f, 25.0)
    np.testing.assert_array_equal(one[0], two[0])
    assert one[1] == two[1]
    mass, lse, _, _, _ = _reference(_values(scores), f, 25.0)
    np.testing.assert_allclose(one[0], mass, rtol=1e-5, atol=1e-6)
