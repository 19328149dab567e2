"""The Numba sweep of narrow rows (K <= ``BLOCK_SWEEP_MAX_K``), which takes blocks of rows at
once, against a float64 reference written here: every width up to one past the gate, row
counts that leave a remainder after the last block, -inf scores, rows with a single finite
score, and extreme lam. The main tests use few rows, which the block sweep hands row by row
to ``_sweep_rows``; these use several blocks.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference import softmax_terms

pytest.importorskip("numba")

from sinklabel.kernels import numba as numba_backend  # noqa: E402
from sinklabel.kernels.numba import (  # noqa: E402
    BLOCK_ROWS,
    BLOCK_SWEEP_MAX_K,
    NumbaKernel,
    bfloat16_rows,
)

KERNEL = NumbaKernel()
#: Three whole blocks and a remainder of 37 rows.
N_ROWS = 3 * BLOCK_ROWS + 37
WIDTHS = list(range(1, BLOCK_SWEEP_MAX_K + 2))


def _log_probabilities(n: int, k: int, seed: int) -> np.ndarray:
    return np.log(np.random.default_rng(seed).dirichlet(np.full(k, 0.5), size=n))


def _assert_sweep_matches(chunk: np.ndarray, values: np.ndarray, f: np.ndarray, lam: float,
                          rtol: float) -> None:
    mass, lse = softmax_terms(values, f, lam)
    got_mass, got_lse = KERNEL.sweep_lse(chunk, f, lam)
    n = len(values)
    np.testing.assert_allclose(got_mass, mass, rtol=rtol, atol=rtol * n)
    assert abs(got_lse - lse) <= rtol * (abs(lse) + n)


def test_the_gate_sends_narrow_rows_to_the_block_sweep():
    """The tests below reach the block sweep only while it serves these widths."""
    assert numba_backend._sweep_call(BLOCK_SWEEP_MAX_K)[0] is numba_backend._sweep_row_blocks
    assert numba_backend._sweep_call(BLOCK_SWEEP_MAX_K + 1)[0] is numba_backend._sweep_rows


@pytest.mark.parametrize("k", WIDTHS)
def test_float64_sweep_agrees_with_the_float64_reference_to_1e_12(k):
    scores = _log_probabilities(N_ROWS, k, seed=k)
    f = np.random.default_rng(k).normal(size=k)
    for lam in (0.5, 25.0):
        _assert_sweep_matches(scores, scores, f, lam, rtol=1e-12)


@pytest.mark.parametrize("k", WIDTHS)
def test_float32_and_16_bit_sweeps_agree_with_the_float64_reference(k):
    scores = _log_probabilities(N_ROWS, k, seed=100 + k)
    f = np.random.default_rng(k).normal(size=k)
    single = scores.astype(np.float32)
    bits = (single.view(np.uint32) >> 16).astype(np.uint16)
    chunks = [
        (single, single),
        (single.astype(np.float16), single.astype(np.float16)),
        (bfloat16_rows(bits.view(np.int16)), (bits.astype(np.uint32) << 16).view(np.float32)),
    ]
    for chunk, values in chunks:
        for lam in (0.5, 25.0):
            _assert_sweep_matches(chunk, values, f, lam, rtol=2e-5)


@pytest.mark.parametrize("k", [2, 5, 16])
def test_rows_read_in_place_from_a_wider_array_and_copied_layouts(k):
    scores = _log_probabilities(N_ROWS, k, seed=7)
    f = np.random.default_rng(7).normal(size=k)
    wide = np.zeros((N_ROWS, k + 3))
    wide[:, 1:k + 1] = scores
    for chunk in (wide[:, 1:k + 1], np.asfortranarray(scores), scores[::-1][::-1]):
        _assert_sweep_matches(chunk, scores, f, 25.0, rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k", [2, 3, 9, 16])
def test_minus_inf_scores_and_rows_with_one_finite_score(dtype, k):
    rng = np.random.default_rng(k)
    scores = _log_probabilities(N_ROWS, k, seed=k).astype(dtype)
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    lonely = rng.random(N_ROWS) < 0.2  # all but one score of these rows are -inf
    scores[lonely] = -np.inf
    scores[lonely, rng.integers(0, k, lonely.sum())] = -1.5
    empty = np.isneginf(scores).all(axis=1)
    scores[empty, 0] = -3.0  # every row keeps a finite score
    f = rng.normal(size=k)
    rtol = 1e-12 if dtype == "float64" else 2e-5
    _assert_sweep_matches(scores, scores, f, 25.0, rtol=rtol)
    mass, lse = KERNEL.sweep_lse(scores, f, 25.0)
    assert np.isfinite(mass).all() and np.isfinite(lse)


@pytest.mark.parametrize("k", [2, 7, 16])
@pytest.mark.parametrize("lam", [1e-6, 1e4])
def test_extreme_lam(k, lam):
    """lam = 1e-6: every row near uniform. lam = 1e4: rows spread far past the underflow, the
    lse dominated by the row maxima (about lam times the scores)."""
    scores = _log_probabilities(N_ROWS, k, seed=k)
    f = np.random.default_rng(k).normal(size=k)
    _assert_sweep_matches(scores, scores, f, lam, rtol=1e-12)
    single = scores.astype(np.float32)
    _assert_sweep_matches(single, single, f, lam, rtol=2e-5)


@pytest.mark.parametrize("k", [1, 2, 16])
def test_scores_in_the_hundreds_of_millions_keep_the_lse_exact(k):
    """Row maxima near 1e8 (lam * score) summed over blocks: the lse is their sum plus the
    logs of the row sums, which the block product must not lose."""
    scores = _log_probabilities(N_ROWS, k, seed=k) + 4e6
    f = np.zeros(k)
    _assert_sweep_matches(scores, scores, f, 25.0, rtol=1e-12)


def test_block_and_row_sweeps_agree_on_every_row_count_up_to_three_blocks():
    """Every split into whole blocks and a remainder, against the row-by-row kernel."""
    k = 5
    scores = _log_probabilities(3 * BLOCK_ROWS + 1, k, seed=3)
    f = np.random.default_rng(3).normal(size=k)
    lam = 25.0
    for n in range(0, len(scores) + 1, 7):
        by_blocks = np.zeros(k + 1)
        by_rows = np.zeros(k + 1)
        buf = scores[:n].reshape(-1)
        numba_backend._sweep_row_blocks(buf, 0, n, k, k, f, lam, -708.3964, by_blocks, BLOCK_ROWS)
        numba_backend._sweep_rows(buf, 0, n, k, k, f, lam, -708.3964, by_rows)
        np.testing.assert_allclose(by_blocks, by_rows, rtol=1e-12, atol=1e-12)
