"""Sources over arrays: in memory, memory-mapped ``.npy`` files, and array-likes that slice."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from .._arrays import array_library
from ._base import Array, Source, dtype_name


class ArraySource(Source):
    """An in-memory 2-D array (NumPy, torch or CuPy); blocks are views, never copies."""

    in_memory = True

    def __init__(self, array: Array):
        layout = getattr(array, "layout", None)  # torch's; sparse ones have no rows to view
        if layout is not None and str(layout) != "torch.strided":
            raise TypeError(
                f"logp is a tensor of layout {layout}, and only dense ones are read: pass "
                f"logp.to_dense() (scores a sparse tensor leaves out count as 0, not -inf)"
            )
        self.array = array
        self.shape = (int(array.shape[0]), int(array.shape[1]))
        self.dtype = dtype_name(array.dtype)
        self.library = array_library(array) or "numpy"

    def bytes_per_row(self) -> int:
        return 0

    def chunks(self, rows: int) -> Iterator[tuple[int, int, Array]]:
        for start, stop in self.row_ranges(rows):
            yield start, stop, self.array[start:stop]


class MemmapSource(Source):
    """A memory-mapped ``.npy`` file (or an ``np.memmap``), read block by block.

    Blocks are views of the mapping: the operating system pages the file in as the solver
    reads it and may drop the pages again, so the file never has to fit in memory. The pages
    count as page cache (file-backed), not as the process's own memory.
    """

    def __init__(self, path_or_memmap: str | os.PathLike | np.memmap):
        if isinstance(path_or_memmap, np.memmap):
            array = path_or_memmap
            self.path = getattr(array, "filename", None)
        else:
            self.path = os.fspath(path_or_memmap)
            array = _open_npy(self.path)
        if array.ndim != 2:
            raise ValueError(f"logp must be 2-D (N, K), got shape {array.shape}")
        self.array = array
        self.shape = (int(array.shape[0]), int(array.shape[1]))
        self.dtype = dtype_name(array.dtype)
        self.library = "numpy"

    def bytes_per_row(self) -> int:
        return 0

    def chunks(self, rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
        for start, stop in self.row_ranges(rows):
            # A plain ndarray view: the memmap subclass would tag every kernel temporary.
            yield start, stop, np.asarray(self.array[start:stop])


class ArrayLikeSource(Source):
    """Anything with ``shape`` and ``dtype`` whose row slices are arrays: h5py datasets,
    zarr arrays, xarray, dask. Each block is read with ``obj[start:stop]``."""

    random_access = True
    dtype_rule = ("the array-like's slices must be arrays of its own dtype attribute; "
                  "np.asarray made these of a list or of another dtype")

    def __init__(self, obj: Any):
        shape = tuple(obj.shape)
        if len(shape) != 2:
            raise ValueError(f"logp must be 2-D (N, K), got shape {shape}")
        try:
            dtype = np.dtype(obj.dtype)
        except TypeError:  # a torch dtype, say: the slices are not NumPy arrays
            raise TypeError(
                f"logp: a {type(obj).__name__} of dtype {obj.dtype} is read as NumPy slices, "
                "and NumPy has no such dtype: pass its blocks through CallableSource(lambda "
                "start, stop: obj[start:stop], shape, dtype=..., library=...) with their own "
                "array library"
            ) from None
        self.obj = obj
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = dtype_name(dtype)
        self.library = "numpy"

    def chunks(self, rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
        for start, stop in self.row_ranges(rows):
            yield start, stop, self.read(start, stop)

    def read(self, start: int, stop: int) -> np.ndarray:
        # asanyarray: a masked slice (netCDF fill values) keeps its mask, which the checking
        # layer refuses instead of reading the fill values as scores.
        return np.asanyarray(self.obj[start:stop])


def check_npy_file(path: str, what: str) -> None:
    """Raise, naming ``what`` the file should hold, when ``path`` is missing, a folder, or
    no regular file (``open``'s own errors name only the path, a pipe's not even that)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what}: no such file {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what}: {path!r} is a folder, not a .npy file")
    if not os.path.isfile(path):
        # A pipe cannot be mapped or seeked: NumPy said only "[Errno 29] Illegal seek".
        raise ValueError(f"{what}: {path!r} is not a regular file (a pipe or a device): "
                         "save the array to a .npy file first")


def _open_npy(path: str) -> np.memmap:
    check_npy_file(path, "logp")
    try:
        return np.lib.format.open_memmap(path, mode="r")
    except ValueError as exc:
        raise ValueError(f"logp: {path!r} is not a .npy array file ({exc})") from exc


def is_array_like(obj: Any) -> bool:
    """Sliceable with a shape and a dtype, and not a container np.asarray should convert."""
    return (
        hasattr(obj, "shape") and hasattr(obj, "dtype") and hasattr(obj, "__getitem__")
        and not isinstance(obj, (list, tuple, np.ndarray))
    )
