"""Bookkeeping of the Numba backend outside its arithmetic (``sinklabel/kernels/numba.py``):
checks of its inputs, found by mutation testing to be pinned by no other test."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from sinklabel.kernels import get_kernel  # noqa: E402

NUMBA = get_kernel("numba")


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("bad", [-1, 5])
def test_gather_refuses_a_label_outside_the_row(order, bad):
    """Label K (= 5) would read the next row's first score in place (past the buffer for the
    last row): it is refused, like -1, whichever row holds it; labels 0 and K - 1 are read."""
    scores = np.asarray(np.arange(20.0, dtype=np.float32).reshape(4, 5), order=order)
    for row in (0, 3):
        labels = np.zeros(4, dtype=np.int64)
        labels[row] = bad
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
            NUMBA.gather(scores, labels)
    edges = np.array([0, 4, 4, 0])
    np.testing.assert_array_equal(NUMBA.gather(scores, edges), scores[np.arange(4), edges])
