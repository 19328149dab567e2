"""Scores computed on demand: ``fn(start, stop)`` returns rows ``[start, stop)``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .._arrays import LIBRARIES
from ._base import Array, Source, dtype_name


class CallableSource(Source):
    """Rows produced by a function, for example a model computing logits batch by batch.

    The solver reads the scores once per Sinkhorn iteration, so ``fn`` is called again on
    every pass, exactly once per block, in row order (with ``cache=True``, only for the blocks
    the cached exponentials cannot answer). It must return the same scores each time (a model
    in evaluation mode, no dropout): a host block (NumPy, or a CPU tensor) whose first or last
    row changes between passes stops the solve; CUDA blocks are not compared, which would
    cost a device synchronisation per block.

    Parameters
    ----------
    fn : callable ``fn(start, stop) -> array of shape (stop - start, K)``
        Returns the scores of rows ``start`` to ``stop - 1``.
    shape : tuple (N, K)
        Rows and labels of the whole score matrix.
    dtype : str or dtype, default="float32"
        The dtype every block has ("float32", "float64", "bfloat16", ...).
    library : {"numpy", "torch", "cupy"}, default="numpy"
        The array library of the blocks ``fn`` returns; it picks the backend.

    Examples
    --------
    >>> import numpy as np
    >>> from sinklabel.sources import CallableSource
    >>> bank = np.log(np.random.default_rng(0).dirichlet(np.ones(4), size=10)).astype("float32")
    >>> source = CallableSource(lambda start, stop: bank[start:stop], (10, 4), "float32")
    >>> [stop for _, stop, _ in source.chunks(4)]
    [4, 8, 10]
    """

    random_access = True

    def __init__(
        self,
        fn: Callable[[int, int], Array],
        shape: tuple[int, int],
        dtype: Any = "float32",
        library: str = "numpy",
    ):
        if not callable(fn):
            raise TypeError(f"fn must be callable as fn(start, stop), got {type(fn).__name__}")
        if len(shape) != 2 or any(int(s) != s or s < 0 for s in shape):
            raise ValueError(f"shape must be (N, K) with non-negative integers, got {shape!r}")
        if library not in LIBRARIES:
            raise ValueError(f"library must be one of {LIBRARIES}, got {library!r}")
        self.fn = fn
        self.shape = (int(shape[0]), int(shape[1]))
        name = dtype_name(dtype)
        self.dtype = name if name == "bfloat16" else np.dtype(name).name
        self.library = library

    def chunks(self, rows: int) -> Iterator[tuple[int, int, Array]]:
        for start, stop in self.row_ranges(rows):
            yield start, stop, self.fn(start, stop)

    def read(self, start: int, stop: int) -> Array:
        return self.fn(start, stop)
