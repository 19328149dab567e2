"""Regressions found reviewing the Numba kernels' 16-bit and float64 routes and the torch
backend's CPU route on them. Oracles: the Numba backend on the float32 copy of the widened
scores, and plain NumPy in the test."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("numba")

import sinklabel  # noqa: E402
from sinklabel.kernels.numba import NumbaKernel  # noqa: E402

#: Rows x labels whose float32 copy is just over one default Numba chunk (64 MiB), so that
#: the default chunking of the 16-bit scores and of their float32 copy can differ.
BIG = (16_900, 1000)


def _big_scores() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(BIG, dtype=np.float32)


def _three_passes(scores, backend: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # three passes do not converge
        return sinklabel.sinkhorn(scores, BIG[1], lam=5.0, max_iter=3, backend=backend)


def test_16_bit_scores_are_chunked_like_their_float32_copy():
    """A float16 array gives the same bits as its float32 copy (docs/backends.md) beyond one
    chunk too: 16-bit chunks hold as many rows as the float32 chunks of the same scores, so
    the per-chunk sums add up in the same order (and a copied chunk stays 64 MiB)."""
    kernel = NumbaKernel()
    assert kernel.chunk_rows(BIG[1], 2) == kernel.chunk_rows(BIG[1], 4)
    half = _big_scores().astype(np.float16)
    result = _three_passes(half, "numba")
    reference = _three_passes(half.astype(np.float32), "numba")
    np.testing.assert_array_equal(result.error_history, reference.error_history)
    np.testing.assert_array_equal(result.potentials, reference.potentials)


def test_bfloat16_tensors_solve_like_their_float32_copy_beyond_one_chunk():
    """The torch backend's bfloat16 CPU route gives the same bits as the Numba backend on the
    float32 copy (docs/backends.md) at the default chunking, past one chunk."""
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(_big_scores()).to(torch.bfloat16)
    result = _three_passes(x, "torch")
    reference = _three_passes(x.float().numpy(), "numba")
    np.testing.assert_array_equal(result.error_history, reference.error_history)
    np.testing.assert_array_equal(result.potentials, reference.potentials)
