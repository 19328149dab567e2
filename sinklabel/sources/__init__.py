"""Where the N x K scores come from: a source yields row blocks, never an N x K copy.

Every kind of input becomes a :class:`Source` (shape, dtype, array library, and
``chunks(rows)``), so every backend and the solver see one small interface:

- an in-memory array (NumPy, torch, CuPy): :class:`ArraySource`, blocks are views;
- a ``.npy`` path or an ``np.memmap``: :class:`MemmapSource`, read-only, paged in as read;
- an array-like that slices rows (h5py dataset, zarr array): :class:`ArrayLikeSource`;
- a function ``fn(start, stop)`` producing rows on demand: :class:`CallableSource`;
- host scores streamed to a GPU: ``sinklabel.sources.device.DeviceStreamSource`` (torch).

Streaming sources are checked block by block during the solve (:class:`CheckedSource`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .._arrays import array_library, host_array
from ._base import Array, Source, dtype_name, itemsize
from .arrays import ArrayLikeSource, ArraySource, MemmapSource, is_array_like
from .callable import CallableSource
from .checked import CheckedSource, SourceError, checked
from .memory import parse_memory


def as_source(logp: Any) -> Source:
    """Wrap what the caller passed as a Source.

    A Source is returned as is; a path (str or PathLike) opens a ``.npy`` file memory-mapped;
    an ``np.memmap`` is read through its mapping; other ndarray subclasses (``np.matrix``) as
    the plain array they view, except masked arrays, refused; an array-like with ``shape``
    and ``dtype`` that is not a NumPy, torch or CuPy array (h5py, zarr) is read slice by
    slice; anything else becomes a NumPy array (no copy when it already is one).
    """
    if isinstance(logp, Source):
        return logp
    if isinstance(logp, (str, os.PathLike)):
        return MemmapSource(logp)
    if isinstance(logp, np.memmap):
        return MemmapSource(logp)
    if isinstance(logp, np.ma.MaskedArray):
        raise TypeError(
            "logp is a masked array, and its mask would be ignored: fill the masked scores "
            "first, e.g. logp.filled(-np.inf) to keep those rows from those labels"
        )
    if _is_scipy_sparse(logp):
        raise TypeError(
            f"logp is a SciPy sparse {type(logp).__name__}: pass logp.toarray() (scores it "
            "leaves out count as 0 there, not -inf)"
        )
    if isinstance(logp, np.ndarray):
        logp = np.asarray(logp)  # np.matrix and other subclasses: a plain view, no copy
    given = ""  # what the caller passed, where it was no array
    if array_library(logp) is None:
        if _array_like(logp):
            return ArrayLikeSource(logp)
        given = f" (a {type(logp).__name__})"
        logp = host_array("logp", logp)
    if logp.ndim != 2:
        raise ValueError(f"logp must be 2-D (N, K), got shape {tuple(logp.shape)}{given}")
    return ArraySource(logp)


def _array_like(obj: Any) -> bool:
    """:func:`is_array_like`, with an error naming what failed where the object cannot say
    (a closed h5py dataset raises on ``shape``)."""
    try:
        return is_array_like(obj)
    except Exception as exc:
        raise ValueError(
            f"logp: the {type(obj).__name__} could not say its shape ({exc}); is the file it "
            "reads from still open?"
        ) from exc


def _is_scipy_sparse(obj: Any) -> bool:
    """A SciPy sparse matrix or array (it has a shape and dtype, but no row slices of scores);
    SciPy is imported only when the caller's object comes from it."""
    if not type(obj).__module__.startswith("scipy.sparse"):
        return False
    from scipy.sparse import issparse

    return issparse(obj)


__all__ = [
    "Array",
    "ArrayLikeSource",
    "ArraySource",
    "CallableSource",
    "CheckedSource",
    "MemmapSource",
    "Source",
    "SourceError",
    "as_source",
    "checked",
    "dtype_name",
    "itemsize",
    "parse_memory",
]
