"""How partial results of one process become global ones.

The solver's only global quantities are K-vectors (label mass, label slack) and a row count.
A single process owns all rows, so its collective is the identity; the distributed module
supplies one that all-reduces across ranks.
"""

from __future__ import annotations

import numpy as np


class Collective:
    """Reductions over every process taking part in a solve (here: just this one)."""

    #: This process's place among the processes, and how many there are.
    rank: int = 0
    world_size: int = 1

    def sum(self, x: np.ndarray) -> np.ndarray:
        """Element-wise sum of ``x`` over all processes."""
        return x

    def max(self, x: np.ndarray) -> np.ndarray:
        """Element-wise maximum of ``x`` over all processes."""
        return x

    def fail(self, error: BaseException) -> None:
        """Report this process's failure. Alone, there is nobody to wait for: raise now."""
        raise error

    def gather_rows(self, block: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """Every process's rows stacked in rank order on rank 0 (None elsewhere), and every
        process's row count (on every process)."""
        return block, np.array([block.shape[0]], dtype=np.int64)


LOCAL = Collective()
