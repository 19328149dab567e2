"""Where the N x K scores come from: a source yields row blocks, never an N x K copy."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._arrays import array_library

Array = Any


class Source(ABC):
    """Scores of N rows over K labels, read block by block.

    ``shape`` is ``(N, K)``; ``dtype`` the scores' dtype name ("float32", "bfloat16", ...);
    ``library`` the array library of the blocks it yields ("numpy", "torch", "cupy").
    """

    shape: tuple[int, int]
    dtype: str
    library: str

    @abstractmethod
    def chunks(self, rows: int) -> Iterator[tuple[int, int, Array]]:
        """Yield ``(start, stop, block)`` covering all rows in order, ``rows`` at a time."""


class ArraySource(Source):
    """An in-memory 2-D array (NumPy, torch or CuPy); blocks are views, never copies."""

    def __init__(self, array: Array):
        self.array = array
        self.shape = (int(array.shape[0]), int(array.shape[1]))
        self.dtype = str(array.dtype).removeprefix("torch.")
        self.library = array_library(array) or "numpy"

    def chunks(self, rows: int) -> Iterator[tuple[int, int, Array]]:
        n = self.shape[0]
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            yield start, stop, self.array[start:stop]


def itemsize(dtype: str) -> int:
    """Bytes per score of a dtype name, for chunk sizing."""
    return {"bfloat16": 2, "float16": 2}.get(dtype) or np.dtype(dtype).itemsize


def as_source(logp: Any) -> Source:
    """Wrap what the caller passed as a Source; array-likes become NumPy arrays (no copy
    when they already are one)."""
    if isinstance(logp, Source):
        return logp
    if array_library(logp) is None:
        logp = np.asarray(logp)
    if getattr(logp, "ndim", None) != 2:
        raise ValueError(f"logp must be 2-D (N, K), got shape {tuple(np.shape(logp))}")
    return ArraySource(logp)
