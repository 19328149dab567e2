"""The source contract: shape, dtype, array library, and row blocks in order."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import numpy as np

Array = Any


class Source(ABC):
    """Scores of N rows over K labels, read block by block.

    ``shape`` is ``(N, K)``; ``dtype`` the scores' dtype name ("float32", "bfloat16", ...);
    ``library`` the array library of the blocks it yields ("numpy", "torch", "cupy").

    A block is only valid until the next one is requested: streaming sources reuse their
    buffers, so consumers finish with a block before asking for the next.
    """

    shape: tuple[int, int]
    dtype: str
    library: str
    #: True when every block is a view of an array already in memory: nothing can change or
    #: fail between passes, so the scores are checked up front and blocks are not re-checked.
    in_memory: bool = False
    #: True when ``read(start, stop)`` produces one block on its own (a function call, a
    #: dataset slice): a consumer that needs only some blocks (the exponential cache) reads
    #: just those, instead of every block before them through ``chunks``.
    random_access: bool = False
    #: What a block of the wrong dtype should have followed, for the error that names it.
    dtype_rule: str = ("a source's blocks have the dtype it declares: "
                       "CallableSource(fn, shape, dtype=...)")

    @abstractmethod
    def chunks(self, rows: int) -> Iterator[tuple[int, int, Array]]:
        """Yield ``(start, stop, block)`` covering all rows in order, ``rows`` at a time."""

    def read(self, start: int, stop: int) -> Array:
        """Rows ``[start, stop)`` alone, as ``chunks`` would yield them (``random_access``)."""
        raise NotImplementedError(f"{type(self).__name__} is read in order, through chunks()")

    def bytes_per_row(self) -> int:
        """Memory the source allocates per row of a block it yields (0 for views)."""
        return self.shape[1] * itemsize(self.dtype)

    def row_ranges(self, rows: int) -> Iterator[tuple[int, int]]:
        """The ``(start, stop)`` of each block ``chunks(rows)`` yields."""
        n = self.shape[0]
        for start in range(0, n, rows):
            yield start, min(n, start + rows)


class WrappingSource(Source):
    """A source that reads another one, ``inner``, and passes its rows on (checked, guarded,
    cached): the inner source's shape, dtype, library, memory per row and row ranges are the
    wrapper's too, so they are taken from it here, once. A subclass overrides what it changes.

    ``in_memory`` is not taken: it promises that nothing can fail or change between passes
    (the scores are then checked once, up front), which depends on what the wrapper does, so
    it stays False unless the subclass sets it.
    """

    def __init__(self, inner: Source):
        self.inner = inner
        self.shape = inner.shape
        self.dtype = inner.dtype
        self.library = inner.library
        self.dtype_rule = inner.dtype_rule

    def bytes_per_row(self) -> int:
        return self.inner.bytes_per_row()

    def row_ranges(self, rows: int) -> Iterator[tuple[int, int]]:
        return self.inner.row_ranges(rows)


def itemsize(dtype: str) -> int:
    """Bytes per score of a dtype name, for chunk sizing."""
    return {"bfloat16": 2, "float16": 2}.get(dtype) or np.dtype(dtype).itemsize


def dtype_name(dtype: Any) -> str:
    """A dtype's plain name: ``torch.float32``, ``np.dtype('float32')`` and the scalar type
    ``np.float32`` all give "float32", and so does big-endian ``np.dtype('>f4')`` (a file
    written elsewhere): kernels read any byte order, converting a chunk at a time where they
    need native floats."""
    if isinstance(dtype, type):  # np.float32, float: their str is "<class 'numpy.float32'>"
        dtype = np.dtype(dtype)
    if isinstance(dtype, np.dtype):
        return dtype.name
    return str(dtype).removeprefix("torch.")
