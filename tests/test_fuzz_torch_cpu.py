"""Property tests of the torch backend's CPU route over tensor layouts.

float32 and float64 CPU tensors go through the Numba kernels on a view of their memory: rows
at a fixed positive stride are read in place, every other layout is copied a block at a time
first. The oracle is the Numba backend on a contiguous NumPy copy of the same values: the same
bits for every layout.
"""

from __future__ import annotations

import warnings
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sinklabel

torch = pytest.importorskip("torch")
NumbaKernel = pytest.importorskip("sinklabel.kernels.numba").NumbaKernel

FUZZ = settings(max_examples=30, deadline=None)
#: Layouts whose rows Numba reads in place, then those it copies first.
LAYOUTS = ("C", "every other row", "padded rows", "storage offset",
           "transposed", "every other column", "one row repeated")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tensor(values: np.ndarray, layout: str) -> torch.Tensor:
    """A tensor holding ``values`` (n x k, their dtype) in ``layout``, built from a wider
    buffer."""
    n, k = values.shape
    x = torch.from_numpy(values)
    dtype = x.dtype
    if layout == "C":
        return x.clone()
    if layout == "every other row":
        wide = torch.zeros(2 * n, k, dtype=dtype)
        wide[::2] = x
        return wide[::2]
    if layout == "padded rows":
        wide = torch.full((n, k + 3), np.nan, dtype=dtype)  # the padding is never read
        wide[:, :k] = x
        return wide[:, :k]
    if layout == "storage offset":
        flat = torch.full((n * k + 5,), np.nan, dtype=dtype)
        flat[5:] = x.reshape(-1)
        return flat[5:].view(n, k)
    if layout == "transposed":
        return x.t().contiguous().t()
    if layout == "every other column":
        wide = torch.zeros(n, 2 * k, dtype=dtype)
        wide[:, ::2] = x
        return wide[:, ::2]
    return x[:1].clone().expand(n, k)  # "one row repeated": rows at stride 0


@st.composite
def problems(draw):
    n = draw(st.integers(1, 120))
    k = draw(st.integers(1, 12))
    scale = draw(st.sampled_from([0.05, 1.0, 4.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    values = (scale * np.random.default_rng(seed).standard_normal((n, k))).astype(dtype)
    layout = draw(st.sampled_from(LAYOUTS))
    if layout == "one row repeated":
        values[:] = values[:1]
    return values, layout, draw(st.booleans())


def _solve(scores, k: int, **options):
    # Chunks of 16 rows: the Numba route's blocks, and the reference's chunks, end mid-input.
    with warnings.catch_warnings(), mock.patch.object(NumbaKernel, "chunk_rows",
                                                      lambda self, n_labels, itemsize: 16):
        warnings.simplefilter("ignore")  # empty labels and slow convergence: both sides alike
        return sinklabel.sinkhorn(scores, k, max_iter=300, **options)


@FUZZ
@given(problems())
def test_every_layout_solves_like_numba_on_a_contiguous_copy(problem):
    values, layout, requires_grad = problem
    n, k = values.shape
    x = _tensor(values, layout).requires_grad_(requires_grad)
    before = x.detach().clone()
    result = _solve(x, k)
    reference = _solve(np.ascontiguousarray(values), k, backend="numba")

    assert torch.equal(x.detach(), before), "the input was modified"
    assert isinstance(result.labels, torch.Tensor) and result.labels.grad_fn is None
    # Rows read in place or copied a block at a time first: the same kernels, the same bits.
    assert result.n_iter == reference.n_iter
    np.testing.assert_array_equal(result.potentials, reference.potentials)
    np.testing.assert_array_equal(result.labels.numpy(), reference.labels)
