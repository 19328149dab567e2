"""16-bit scores in the Numba kernels: float16 and bfloat16 rows read in place, widened to
float32 on load.

Oracle: the same kernels on a float32 array holding the widened values (float16 -> float32 by
NumPy, bfloat16 bits shifted into the top of a float32, both exact). The kernels are the same
after the load, so every result must be the same bits.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

pytest.importorskip("numba")

from conftest import threads  # noqa: E402

from sinklabel import sinkhorn  # noqa: E402
from sinklabel.datasets import make_scores  # noqa: E402
from sinklabel.kernels._exp_cache import NumbaExpTables  # noqa: E402
from sinklabel.kernels.numba import (  # noqa: E402
    BFLOAT16_BITS,
    HALF_BITS,
    ChunkRows,
    NumbaKernel,
    _row_buffer,
    bfloat16_rows,
)

N, K = 240, 21  # K = 2 blocks of 8 plus a tail of 5
LAMS = (1.0, 25.0, 1e3)
KERNEL = NumbaKernel()


def _bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """bfloat16 bits of float32 values, rounded to nearest even (as torch rounds)."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def _widened(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits as float32, written here independently of the backend."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _pair(values: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The 16-bit chunk the kernel takes and the float32 array of the same values."""
    if dtype == "float16":
        half = values.astype(np.float16)
        return half, half.astype(np.float32)
    bits = _bfloat16_bits(values)
    return bfloat16_rows(bits), _widened(bits)


def _scores(n=N, k=K, seed=3) -> np.ndarray:
    return 3.0 * make_scores(n, k, regime="flat", seed=seed).scores


def _potentials(k=K, seed=4) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=3.0, size=k)


def _assert_same_bits(chunk, reference: np.ndarray, f: np.ndarray, lams=LAMS) -> None:
    """Every operation of the contract gives the same bits (and dtypes) on both."""
    for lam in lams:
        mass, lse = KERNEL.sweep_lse(chunk, f, lam)
        ref_mass, ref_lse = KERNEL.sweep_lse(reference, f, lam)
        np.testing.assert_array_equal(mass, ref_mass)
        assert lse == ref_lse
        np.testing.assert_array_equal(KERNEL.sweep(chunk, f, lam), ref_mass)
        top, labels = KERNEL.best(chunk, f, lam)
        ref_top, ref_labels = KERNEL.best(reference, f, lam)
        assert top.dtype == np.float32 and labels.dtype == np.int64
        np.testing.assert_array_equal(top, ref_top)
        np.testing.assert_array_equal(labels, ref_labels)
        slack = KERNEL.slack(chunk, f, lam)
        assert slack.dtype == np.float64
        np.testing.assert_array_equal(slack, KERNEL.slack(reference, f, lam))
        soft = KERNEL.soft(chunk, f, lam)
        assert soft.dtype == np.float32
        np.testing.assert_array_equal(soft, KERNEL.soft(reference, f, lam))
    labels = np.random.default_rng(0).integers(0, chunk.shape[1], size=chunk.shape[0])
    gathered = KERNEL.gather(chunk, labels)
    expected = reference[np.arange(chunk.shape[0]), labels].astype(np.float64)
    assert gathered.dtype == np.float64
    np.testing.assert_array_equal(gathered, expected)


# --- every operation, bit for bit against the float32 pass --------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_every_operation_is_the_float32_pass_on_the_widened_scores(dtype):
    chunk, reference = _pair(_scores(), dtype)
    _assert_same_bits(chunk, reference, _potentials())


def _extreme_rows(dtype: str) -> np.ndarray:
    """Rows mixing ordinary scores with the format's extremes, -inf and a far-away -1e4."""
    rng = np.random.default_rng(7)
    scores = rng.standard_normal((64, K)).astype(np.float32)
    scores[:, 5] = -1e4  # a label no row wants, by far
    scores[::3, 2] = -np.inf  # impossible pairs
    if dtype == "float16":
        tiny = np.float32(np.float16(2.0**-24))  # the smallest subnormal float16
        scores[2::4, 7] = 65504.0  # float16's largest
        scores[3::4, 9] = -65504.0
        scores[4::4, :8] = tiny * rng.integers(-3, 4, (len(range(4, 64, 4)), 8))
    else:
        scores[2::4, 7] = 3e38  # near bfloat16's (and float32's) largest
        scores[3::4, 9] = -3e38
        scores[4::4, :8] = 1e-39 * rng.integers(-3, 4, (len(range(4, 64, 4)), 8))  # subnormal
    return scores


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_extreme_scores_give_the_float32_bits(dtype):
    values = _extreme_rows(dtype)
    chunk, reference = _pair(values, dtype)
    subnormal = np.finfo(np.float16 if dtype == "float16" else np.float32).smallest_normal
    assert np.any((reference != 0) & (np.abs(reference) < subnormal))
    assert np.max(reference) >= (65504.0 if dtype == "float16" else 3e38)
    # lam * 3e38 overflows float32 above lam=1: bfloat16's extremes are taken at lam=1.
    lams = LAMS if dtype == "float16" else (1.0,)
    _assert_same_bits(chunk, reference, _potentials(), lams)


def test_large_bfloat16_scores_are_the_float32_bits_at_every_lam():
    values = _extreme_rows("bfloat16")
    values[np.abs(values) > 1e5] = 1e4
    chunk, reference = _pair(values, "bfloat16")
    _assert_same_bits(chunk, reference, _potentials())


# --- read in place: no copy of the chunk ----------------------------------------------------------


def _layouts(values: np.ndarray, dtype: str) -> dict[str, tuple]:
    """The chunk in a layout read in place, and the float32 array of its values."""
    wide = np.zeros((values.shape[0], values.shape[1] + 3), np.float32)
    wide[:, 1:-2] = values
    chunk, reference = _pair(wide, dtype)
    whole, whole_reference = _pair(values, dtype)
    readonly = whole.copy()
    readonly.flags.writeable = False
    return {
        "C": (whole, whole_reference),
        "row-strided": (chunk[:, 1:-2], reference[:, 1:-2]),
        "read-only": (readonly, whole_reference),
        "one row": (whole[5:6], whole_reference[5:6]),
    }


@pytest.mark.parametrize("layout", ["C", "row-strided", "read-only", "one row"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_rows_are_read_in_place(dtype, layout):
    chunk, reference = _layouts(_scores(), dtype)[layout]
    buf, ld, compute = _row_buffer(chunk)
    assert compute == np.float32
    assert np.shares_memory(buf, chunk)
    assert ld == (chunk.strides[0] // 2 if len(chunk) > 1 else K)
    _assert_same_bits(chunk, reference, _potentials(), lams=(25.0,))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_pass_allocates_nothing_the_size_of_the_chunk(dtype):
    """The float32 copy that 16-bit chunks used to get would be twice the chunk's bytes."""
    chunk, _ = _pair(_scores(n=4000, k=500), dtype)
    f = _potentials(500)
    KERNEL.sweep_lse(chunk, f, 25.0)  # compiled before measuring
    tracemalloc.start()
    try:
        for operation in (KERNEL.sweep_lse, KERNEL.best, KERNEL.slack):
            operation(chunk, f, 25.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < chunk.nbytes / 8


# --- layouts the kernels cannot walk -------------------------------------------------------------


def _copied_layouts(values: np.ndarray, dtype: str) -> dict[str, tuple]:
    doubled = np.repeat(values, 2, axis=1)
    chunk, reference = _pair(values, dtype)
    strided, strided_reference = _pair(doubled, dtype)
    return {
        "fortran": (np.asfortranarray(chunk), reference),
        "column-strided": (strided[:, ::2], strided_reference[:, ::2]),
    }


@pytest.mark.parametrize("layout", ["fortran", "column-strided"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_layouts_the_kernels_cannot_walk_are_copied_as_bits_a_task_at_a_time(dtype, layout):
    """Each task's rows are copied, still 16-bit, into its thread's buffer (before, the whole
    chunk was converted to float32: twice its bytes), and computed to the float32 bits."""
    chunk, reference = _copied_layouts(_scores(), dtype)[layout]
    buf, lo, hi, ld, first = ChunkRows(chunk).task(3, 40)
    assert buf.dtype == {"float16": HALF_BITS, "bfloat16": BFLOAT16_BITS}[dtype]
    assert (lo, hi, ld, first) == (0, 37, K, 3) and not np.shares_memory(buf, chunk)
    _assert_same_bits(chunk, reference, _potentials(), lams=(1.0, 25.0))


def test_big_endian_float16_is_converted_to_float32():
    chunk, reference = _pair(_scores(), "float16")
    swapped = chunk.astype(">f2")
    buf, _, compute = _row_buffer(swapped)
    assert buf.dtype == compute == np.float32 and not np.shares_memory(buf, swapped)
    _assert_same_bits(swapped, reference, _potentials(), lams=(1.0, 25.0))


def test_integer_scores_are_converted_not_read_as_bits():
    """A 16-bit integer array holds numbers, not bfloat16 bits: it is converted like any other
    dtype the kernels do not read in place."""
    values = np.random.default_rng(1).integers(-50, 50, (N, K)).astype(np.int16)
    _assert_same_bits(values, values.astype(np.float32), _potentials(), lams=(1.0,))


def test_bfloat16_rows_takes_only_native_16_bit_integer_matrices():
    bits = _bfloat16_bits(_scores())
    view = bfloat16_rows(bits.view(np.int16))
    assert view.dtype == BFLOAT16_BITS and np.shares_memory(view, bits)
    for wrong in (bits.astype(np.float32), bits.astype(np.uint32), bits[0],
                  bits.astype(">u2"), bits.view(np.float16)):
        with pytest.raises(TypeError, match="bfloat16 bits must be a 2-D native 16-bit integer"):
            bfloat16_rows(wrong)


# --- determinism, whole solves and the cache=True tables -----------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_sweep_is_deterministic_across_thread_counts(dtype):
    chunk, reference = _pair(_scores(n=20000, k=40), dtype)  # two tasks of rows
    f = _potentials(40)
    first = KERNEL.sweep_lse(chunk, f, 25.0)
    with threads("numba", 1):
        single = KERNEL.sweep_lse(chunk, f, 25.0)
    assert np.array_equal(first[0], single[0]) and first[1] == single[1]
    again = KERNEL.sweep_lse(chunk, f, 25.0)
    assert np.array_equal(first[0], again[0]) and first[1] == again[1]
    float32 = KERNEL.sweep_lse(reference, f, 25.0)
    assert np.array_equal(first[0], float32[0]) and first[1] == float32[1]


@pytest.mark.parametrize("cache", [False, True])
def test_float16_solve_is_the_float32_solve_bit_for_bit(cache):
    scores = make_scores(1500, 30, regime="peaked", seed=9).scores.astype(np.float16)
    options = dict(lam=25.0, tol=1e-5, max_iter=200, chunk_size=400, cache=cache)
    result = sinkhorn(scores, 30, backend="numba", **options)
    reference = sinkhorn(scores.astype(np.float32), 30, backend="numba", **options)
    assert result.n_iter == reference.n_iter
    np.testing.assert_array_equal(result.error_history, reference.error_history)
    np.testing.assert_array_equal(result.potentials, reference.potentials)
    np.testing.assert_array_equal(result.labels, reference.labels)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cached_tables_of_16_bit_chunks_are_the_float32_tables(dtype):
    """The cache=True tables are built from the chunk in place (no float32 copy of it), and
    hold what they hold for the widened float32 chunk; the rows they cannot answer are
    computed from the 16-bit chunk in place too."""
    chunk, reference = _pair(_scores(n=3000, k=500), dtype)
    tables = NumbaExpTables(KERNEL)
    f = _potentials(500)
    tables.build(chunk[:16], f, 25.0, 0.0, 8)  # compiled before measuring
    tracemalloc.start()
    try:
        table = tables.build(chunk, f, 25.0, 0.0, 8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < chunk.nbytes / 2  # a float32 copy would be twice the chunk
    expected = tables.build(reference, f, 25.0, 0.0, 8)
    for name in ("values", "labels", "offsets", "top", "floor"):
        np.testing.assert_array_equal(getattr(table, name), getattr(expected, name))
    rows = np.arange(0, 3000, 7)
    g = f + np.random.default_rng(2).normal(size=500)
    mass, lse = tables.sweep_rows(chunk, rows, g, 25.0)
    ref_mass, ref_lse = tables.sweep_rows(reference, rows, g, 25.0)
    np.testing.assert_array_equal(mass, ref_mass)
    assert lse == ref_lse
    top, labels = np.zeros(3000, np.float32), np.zeros(3000, np.int64)
    ref_top, ref_labels = np.zeros(3000, np.float32), np.zeros(3000, np.int64)
    tables.best_rows(chunk, rows, g, 25.0, top, labels)
    tables.best_rows(reference, rows, g, 25.0, ref_top, ref_labels)
    np.testing.assert_array_equal(top, ref_top)
    np.testing.assert_array_equal(labels, ref_labels)
