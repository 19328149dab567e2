"""The kernel contract: the few fused operations the solver needs on one chunk of scores.

Every backend implements these on its own arrays; nothing backend-specific exists outside
the ``kernels`` package. A chunk is a 2-D block of rows of the scores ``S`` in the backend's
array type; ``f`` is the float64 NumPy vector of label potentials; ``lam`` the inverse
temperature. With ``z = lam * S + f`` every operation reads the chunk once:

- ``sweep_lse``: the column sums of the row-wise softmax of ``z`` (the Sinkhorn label
  marginal, unnormalised) as float64 NumPy, and the sum of the rows' log-sum-exp of ``z``
  (the data term of the dual objective, which the solver's line search needs), in one pass.
  ``sweep`` is its first half.
- ``best``: the row maxima of ``z`` and their arg-maxima (labels), in the chunk's library.
- ``slack``: per label, ``max_i (z[i, y] - max_y' z[i, y'])``; how far each label is from
  being any row's favourite. It rescues labels whose mass underflowed to zero.
- ``soft``: the row-wise softmax of ``z`` itself, for the rows asked for.
- ``gather``: ``S[i, labels[i]]``, the score each row gets under a labelling.

Two helpers place results: ``empty_labels`` allocates the label vector that the per-chunk
labels are written into (one copy of the labels, however many chunks), ``empty_rows`` the
array that per-chunk soft assignments are written into.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

Array = Any


class BackendUnavailable(ImportError):
    """A backend's library is installed but cannot run here (e.g. numba with its compiler
    switched off); the registry says so instead of asking for an install."""


def compute_dtype(dtype: np.dtype | str) -> np.dtype:
    """The float type host scores of ``dtype`` (a NumPy dtype or a name) are computed and
    kept in: float64 (of either byte order: a big-endian file's chunk is converted) stays
    float64; every narrower float is float32."""
    name = dtype if isinstance(dtype, str) else dtype.name
    return np.dtype(np.float64) if name == "float64" else np.dtype(np.float32)


class Kernel(ABC):
    """One backend's implementation of the per-chunk operations."""

    #: Backend name, as passed to ``backend=``.
    name: str = ""
    #: Array libraries whose arrays this kernel takes directly.
    libraries: tuple[str, ...] = ()

    def chunk_rows(self, n_labels: int, itemsize: int) -> int:
        """Default rows per chunk: a few MB of scores keeps temporaries in cache."""
        return max(1, (4 << 20) // max(1, n_labels * itemsize))

    def workspace_bytes_per_row(self, n_labels: int, itemsize: int) -> int:
        """Bytes of temporaries per row of a chunk, for sizing chunks to a memory budget.

        Default: two row-wide temporaries in the compute dtype (float32 or wider).
        """
        return 2 * n_labels * max(4, itemsize) + 64

    def sweep(self, chunk: Array, f: np.ndarray, lam: float) -> np.ndarray:
        """Column sums of softmax(lam * chunk + f) over the chunk's rows, float64."""
        return self.sweep_lse(chunk, f, lam)[0]

    @abstractmethod
    def sweep_lse(self, chunk: Array, f: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
        """``sweep`` and the sum over rows of logsumexp(lam * chunk + f), both float64, in
        one fused pass (the row sums that normalise the softmax give the log-sum-exp)."""

    @abstractmethod
    def best(self, chunk: Array, f: np.ndarray, lam: float) -> tuple[Array, Array]:
        """Per row, the maximum of lam * chunk + f and its label (int64)."""

    @abstractmethod
    def slack(self, chunk: Array, f: np.ndarray, lam: float) -> np.ndarray:
        """Per label, max over rows of (z[i, y] - max z[i, :]), float64 (all <= 0)."""

    @abstractmethod
    def soft(self, chunk: Array, f: np.ndarray, lam: float) -> Array:
        """Row-wise softmax of lam * chunk + f, float32 or float64 like the compute dtype."""

    @abstractmethod
    def gather(self, chunk: Array, labels: Array) -> np.ndarray:
        """chunk[i, labels[i]] for every row, float64 NumPy. ``labels`` may be an array of
        the chunk's library or a host NumPy integer vector (certificates pass those)."""

    @abstractmethod
    def to_numpy(self, x: Array) -> np.ndarray:
        """A host NumPy copy of a backend array."""

    @abstractmethod
    def empty_labels(self, n: int, like: Array | None) -> Array:
        """An uninitialised int64 vector of ``n`` labels in this library, on the device of
        ``like`` (any array of this library, e.g. a chunk; None: the default device)."""

    @abstractmethod
    def empty_rows(self, n: int, like: Array) -> Array:
        """An uninitialised array of ``n`` rows like those of ``like`` (a per-chunk result:
        its columns, dtype, library and device), which the chunks' results are written into
        one by one, so that no second copy of them is held."""


class WrappingKernel(Kernel):
    """A kernel that answers through another one, ``inner`` (caching, guarding).

    It has the inner kernel's name and libraries, and ``chunk_rows``,
    ``workspace_bytes_per_row`` and ``sweep_lse`` go to the inner kernel: its own may differ
    (GPU kernels take all rows at once), and a wrapper inheriting :class:`Kernel` directly
    would silently get the defaults instead. ``sweep`` goes through the wrapper's own
    ``sweep_lse``. The abstract operations are left to the
    subclass, so that each wrapper says what it does with each.
    """

    def __init__(self, inner: Kernel):
        self.inner = inner
        self.name = inner.name
        self.libraries = inner.libraries

    def chunk_rows(self, n_labels: int, itemsize: int) -> int:
        return self.inner.chunk_rows(n_labels, itemsize)

    def workspace_bytes_per_row(self, n_labels: int, itemsize: int) -> int:
        return self.inner.workspace_bytes_per_row(n_labels, itemsize)

    def sweep_lse(self, chunk: Array, f: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
        return self.inner.sweep_lse(chunk, f, lam)
