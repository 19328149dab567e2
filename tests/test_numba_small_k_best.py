"""The Numba labelling pass of narrow rows (K <= ``BLOCK_BEST_MAX_K``), which takes blocks of
rows at once, against the row-by-row kernel (bit for bit) and NumPy's ``argmax`` and ``max``:
every width up to one past the gate, row counts across block edges, ties, NaN, +inf and -inf,
every dtype and layout, and the predict path, whose input check relies on NaN and +inf
surfacing in the row maxima.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

import sinklabel  # noqa: E402
from sinklabel.kernels import numba as numba_backend  # noqa: E402
from sinklabel.kernels.numba import (  # noqa: E402
    BLOCK_BEST_MAX_K,
    BLOCK_ROWS,
    NumbaKernel,
    bfloat16_rows,
)

KERNEL = NumbaKernel()
WIDTHS = list(range(1, BLOCK_BEST_MAX_K + 2))
#: Across the block edges, up to three whole blocks and a remainder.
ROW_COUNTS = [0, 1, BLOCK_ROWS - 1, BLOCK_ROWS, BLOCK_ROWS + 1, 3 * BLOCK_ROWS + 37]
LAM = 2.5


def _row_kernel_best(chunk: np.ndarray, f: np.ndarray, lam: float):
    """``KERNEL.best`` with every row by ``_best_rows``, the kernel before the blocks."""
    gate = numba_backend.BLOCK_BEST_MAX_K
    numba_backend.BLOCK_BEST_MAX_K = 0
    try:
        return KERNEL.best(chunk, f, lam)
    finally:
        numba_backend.BLOCK_BEST_MAX_K = gate


def _numpy_best(values: np.ndarray, f: np.ndarray, lam: float, dtype) -> tuple:
    """Row maxima and argmax of ``lam * values + f`` in the compute dtype, by NumPy."""
    with np.errstate(invalid="ignore", over="ignore"):
        z = dtype.type(lam) * values.astype(dtype) + f.astype(dtype)
    return z.max(axis=1), z.argmax(axis=1)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _special_scores(n: int, k: int, seed: int) -> np.ndarray:
    """float64 scores with ties (few distinct values), signed zeros, NaN, +inf and -inf,
    and whole rows of -inf, of NaN and of +inf."""
    rng = np.random.default_rng(seed)
    scores = rng.choice(np.array([-1.0, -0.5, 0.0, -0.0, 0.5]), size=(n, k))
    specials = np.array([np.nan, np.inf, -np.inf])
    hit = rng.random((n, k)) < 0.05
    scores[hit] = rng.choice(specials, size=hit.sum())
    for count, row in enumerate(range(0, n, 7)):
        scores[row] = specials[count % 3]
    return scores


def _assert_best_matches(chunk: np.ndarray, values: np.ndarray, f: np.ndarray, lam: float,
                         dtype) -> None:
    """Block kernel == row kernel bit for bit, and == NumPy (labels; maxima up to the sign
    of zero, which NumPy's ``max`` does not fix)."""
    top, labels = KERNEL.best(chunk, f, lam)
    row_top, row_labels = _row_kernel_best(chunk, f, lam)
    assert _same_bits(top, row_top)
    assert _same_bits(labels, row_labels)
    numpy_top, numpy_labels = _numpy_best(values, f, lam, np.dtype(dtype))
    np.testing.assert_array_equal(labels, numpy_labels)
    np.testing.assert_array_equal(top, numpy_top)
    assert top.dtype == dtype


def test_the_gate_sends_narrow_rows_to_the_block_kernel():
    """The tests below reach the block kernel only while it serves these widths."""
    assert numba_backend._best_call(BLOCK_BEST_MAX_K)[0] is numba_backend._best_row_blocks
    assert numba_backend._best_call(1)[0] is numba_backend._best_row_blocks
    assert numba_backend._best_call(BLOCK_BEST_MAX_K + 1)[0] is numba_backend._best_rows
    assert numba_backend._best_call(0)[0] is numba_backend._best_rows


@pytest.mark.parametrize("k", WIDTHS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_scores_at_every_row_count(k, dtype):
    f = np.random.default_rng(k).normal(size=k)
    for n in ROW_COUNTS:
        values = np.random.default_rng(n + k).normal(size=(n, k)).astype(dtype)
        _assert_best_matches(values, values, f, 25.0, dtype)


@pytest.mark.parametrize("k", WIDTHS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ties_signed_zeros_nan_and_infinities(k, dtype):
    f = np.full(k, -0.0)  # scores of -0.0 give z = -0.0, of 0.0 give +0.0: a max of +0.0
    f[k // 2] = 0.5  # ties between labels whose potentials differ
    for n in ROW_COUNTS:
        values = _special_scores(n, k, seed=10 * k + n).astype(dtype)
        _assert_best_matches(values, values, f, LAM, dtype)


@pytest.mark.parametrize("k", WIDTHS)
def test_16_bit_scores(k):
    f = np.random.default_rng(k).normal(size=k)
    n = ROW_COUNTS[-1]
    values32 = _special_scores(n, k, seed=k).astype(np.float32)
    half = values32.astype(np.float16)
    _assert_best_matches(half, half.astype(np.float32), f, LAM, np.float32)
    bits = (values32.view(np.uint32) >> 16).astype(np.uint16)  # truncated: exact in bfloat16
    widened = (bits.astype(np.uint32) << 16).view(np.float32)
    _assert_best_matches(bfloat16_rows(bits), widened, f, LAM, np.float32)


@pytest.mark.parametrize("k", [1, 2, 5, 8, BLOCK_BEST_MAX_K])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_row_slices_and_copied_layouts(k, dtype):
    n = ROW_COUNTS[-1]
    f = np.random.default_rng(k).normal(size=k)
    wide = _special_scores(n, 2 * k + 3, seed=k).astype(dtype)
    compute = np.float64 if dtype == np.float64 else np.float32
    layouts = [
        wide[:, 1:k + 1],  # read in place with a row stride wider than k
        wide[:, :2 * k:2],  # strided columns: copied
        np.asfortranarray(wide[:, :k]),  # copied
        wide[:, :k].astype(np.dtype(dtype).newbyteorder()),  # other byte order: copied
        wide[::-1, :k],  # negative row stride: copied
    ]
    for chunk in layouts:
        _assert_best_matches(chunk, np.asarray(chunk, dtype=compute), f, LAM, compute)


def test_the_callers_scores_are_not_written():
    scores = _special_scores(ROW_COUNTS[-1], 3, seed=1).astype(np.float32)
    before = scores.copy()
    scores.flags.writeable = False
    KERNEL.best(scores, np.zeros(3), LAM)
    assert _same_bits(scores, before)


@pytest.mark.parametrize("value, match", [(np.nan, "NaN"), (np.inf, r"\+inf")])
@pytest.mark.parametrize("k", [2, BLOCK_BEST_MAX_K])
def test_predict_names_non_finite_scores_in_a_block(value, match, k):
    """predict checks in-memory scores only through the labelling pass's row maxima: a bad
    score in a whole block of rows must still surface there and be named."""
    rng = np.random.default_rng(k)
    scores = np.log(rng.dirichlet(np.ones(k), size=3 * BLOCK_ROWS)).astype(np.float32)
    result = sinklabel.sinkhorn(scores, k, backend="numba")
    bad = scores.copy()
    bad[BLOCK_ROWS + 5, k - 1] = value
    with pytest.raises(ValueError, match=f"{match}.*row {BLOCK_ROWS + 5}"):
        result.predict(bad)
    z = np.float32(result.lam) * scores + result.potentials.astype(np.float32)
    np.testing.assert_array_equal(result.predict(scores), z.argmax(axis=1))
