"""How partial results of one process become global ones.

The solver's only global quantities are K-vectors (label mass, label slack) and a row count.
A single process owns all rows, so its collective is the identity; the distributed module
supplies one that all-reduces across ranks.
"""

from __future__ import annotations

import numpy as np


class Collective:
    """Reductions over every process taking part in a solve (here: just this one)."""

    def sum(self, x: np.ndarray) -> np.ndarray:
        """Element-wise sum of ``x`` over all processes."""
        return x

    def max(self, x: np.ndarray) -> np.ndarray:
        """Element-wise maximum of ``x`` over all processes."""
        return x


LOCAL = Collective()
