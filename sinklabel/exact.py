"""Exact solutions of eq. (6): optimal, exactly balanced hard labels with a certificate.

Eq. (6) of the paper is a transportation problem: N points of demand one, K labels whose
sizes are fixed (or lie in ranges), costs ``C = -logp``. Its optimum is integral, so it is a
labelling. Two methods solve it:

- ``"auction"`` (the default): label prices from the warm start when they are good (as
  Sinkhorn's are), else from an epsilon-scaling auction, then successive shortest paths on
  the K-node label graph for an exact finish (``_transport.py``). It needs the scores in host
  memory once (in their own dtype, never a float64 copy) and scales to millions of points;
  numba compiles its loops when installed.
- ``"highs"``: the same linear program handed to SciPy's HiGHS; a reference for small problems.

Every result carries a :class:`~sinklabel.certificate.Certificate` computed independently of
the solver by :func:`~sinklabel.certificate.duality_gap`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ._arrays import array_library, from_host, is_cuda, to_host
from ._budget import pass_rows
from ._capacities import balanced_range, check_capacities, check_reachable, finite_per_label
from ._compile import eager_in_torch_compile
from ._validation import check_prices, check_scores, check_shape
from ._warnings import warn
from .certificate import Certificate, duality_gap
from .kernels import Kernel, resolve_kernel
from .kernels._base import compute_dtype
from .result import SinkhornResult
from .solver import PrecisionWarning
from .sources import (
    Array,
    ArraySource,
    CheckedSource,
    MemmapSource,
    Source,
    as_source,
    checked,
)
from .sources.memory import physical_memory

METHODS = ("auto", "auction", "highs")

#: Host bytes per point of the auction's own arrays besides its candidate lists (labels,
#: bounds, margins, heaps, the exact finish's lists), rounded up.
POINT_BYTES = 128
#: Host bytes per pair of labels of the exact finish's label graph: its distances (float64),
#: the points attaining them (int64) and their stale flags (bool).
PAIR_BYTES = 17


@dataclass(frozen=True, eq=False)  # compared by identity: `==` on arrays has no one answer
class ExactResult:
    """The optimal labelling of eq. (6) and its proof.

    Attributes
    ----------
    labels : array of shape (N,), int64
        Optimal labels, in the input's array library and on its device.
    prices : ndarray of shape (K,), float64
        Label prices ``v`` (dual variables, in the units of ``logp``): every point's label
        maximises ``logp[i, y] + v[y]``. Comparable with Sinkhorn's ``potentials / lam``.
    objective : float
        The optimal cost ``sum_i -logp[i, labels[i]]``.
    certificate : Certificate
        Primal cost, dual bound and their gap, from an independent pass over the scores.
    lower, upper : ndarray of shape (K,), int64
        The capacities solved for: label y took between ``lower[y]`` and ``upper[y]`` points
        (an upper bound above N is stored as N, which says the same).
    label_counts : ndarray of shape (K,), int64
        How many points each label took.
    method : str
        The method that solved it ("auction" or "highs").
    """

    labels: Array = field(repr=False)
    prices: np.ndarray = field(repr=False)
    objective: float
    certificate: Certificate
    lower: np.ndarray = field(repr=False)
    upper: np.ndarray = field(repr=False)
    label_counts: np.ndarray = field(repr=False)
    method: str

    @property
    def gap(self) -> float:
        """The certified duality gap (0 up to ``certificate.rounding`` at the optimum)."""
        return self.certificate.gap


@eager_in_torch_compile
def solve_exact(
    logp: Array,
    K: int,
    *,
    capacities: Any = None,
    method: str = "auto",
    prices: Array | None = None,
    backend: str = "auto",
    chunk_size: int | None = None,
) -> ExactResult:
    """The optimal labelling of eq. (6), with exactly the given label sizes.

    Parameters
    ----------
    logp : array of shape (N, K)
        Log-probabilities or logits (NumPy, torch, CuPy, a .npy memmap, or a Source); -inf
        marks a label a point must not take. Never modified.
    K : int
        Number of labels; must equal ``logp.shape[1]``.
    capacities : None, array of shape (K,), or (lower, upper), default=None
        Label sizes. None: ``floor(N/K)`` or ``ceil(N/K)`` each, the solver choosing which
        ``N mod K`` labels take the extra point (the paper's footnote 1). K integers: exact
        sizes summing to N. A pair of K-vectors: sizes between ``lower`` and ``upper``.
    method : {"auto", "auction", "highs"}, default="auto"
        "auction" is the scalable exact solver ("auto" picks it); "highs" the SciPy reference,
        for small problems only: N=2,000, K=20 took 1.5-4.5 minutes on a 2-core VM, against
        0.1 s for the auction (docs/benchmarks.md).
    prices : array of shape (K,), default=None
        Starting label prices, e.g. ``result.potentials / result.lam`` of a Sinkhorn solve;
        good ones let the solver skip its auction (one pass, then shortest paths). Ignored by
        "highs".
    backend, chunk_size
        Which kernels run the certificate pass, as in :func:`sinklabel.sinkhorn`.

    Returns
    -------
    ExactResult

    Raises
    ------
    ValueError
        On bad capacities, or when no labelling can meet them because of -inf scores.
    MemoryError
        Before any pass over the scores, when the solver's host arrays (the scores as one
        float array unless they already are one in host memory, the auction's per-point
        arrays and a K x K label graph) exceed this machine's physical memory.
    """
    source = checked(as_source(logp))  # a stream's blocks are checked whenever read
    K = check_shape(source, K)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    N = source.shape[0]
    lower, upper = check_capacities(capacities, N, K)
    check_host_memory(source)
    start = None if prices is None else check_prices(prices, K)
    kernel = resolve_kernel(backend, source.library)
    rows = pass_rows(kernel, source, chunk_size)
    check_scores(source, kernel, 1.0, rows)
    return _solve_exact(source, lower, upper, method, start, backend, rows)


def _solve_exact(
    source: Source,
    lower: np.ndarray,
    upper: np.ndarray,
    method: str,
    prices: np.ndarray | None,
    backend: str,
    rows: int,
) -> ExactResult:
    """The solve on checked inputs: host scores in, labels in the input's library out."""
    S, like = _host_scores(source, rows)
    if method == "highs":
        from ._highs import solve_highs

        check_reachable(lower, finite_per_label(S))
        labels, v = solve_highs(S, lower, upper)
    else:
        from . import _transport, _transport_loops

        # The solver checks that every label can reach its capacity in its first pass.
        solution = _transport.solve_transport(
            S, lower, upper, prices, use_numba=_transport_loops.HAVE_NUMBA
        )
        labels, v = solution.labels, solution.prices
        method = "auction"
    certificate = duality_gap(source, labels, v, (lower, upper), backend=backend,
                              chunk_size=rows)
    if method == "highs" and not certificate.optimal:
        # Its tolerances, not a bug: said, since the result's type promises an optimum.
        warn(f"HiGHS's labels are not certified optimal (gap {certificate.gap:.3g} above the "
             f"rounding {certificate.rounding:.3g}): it solves to tolerances, exact down to "
             "score differences of about 1e-9 of the largest; method='auction' is exact",
             PrecisionWarning)
    counts = np.bincount(labels, minlength=source.shape[1]).astype(np.int64)
    return ExactResult(from_host(labels, like), v, certificate.primal, certificate, lower, upper,
                       counts, method)


def balance_exact(
    source: Source, kernel: Kernel, result: SinkhornResult, rows: int
) -> SinkhornResult:
    """Sinkhorn's result with optimal, exactly balanced labels (``balance="exact"``).

    Sizes are ``floor`` or ``ceil`` of ``N * label_weights``; the exact solver starts from the
    Sinkhorn prices ``potentials / lam``, which are close enough to optimal that it goes
    straight to its shortest paths. The scores were checked by the Sinkhorn solve, and their
    host memory (:func:`check_host_memory`) before it.
    """
    lower, upper = balanced_range(source.shape[0], result.label_weights)
    exact = _solve_exact(
        source, lower, upper, "auction", result.potentials / result.lam, kernel.name, rows
    )
    return replace(
        result, labels=exact.labels, label_counts=exact.label_counts, balance="exact",
        certificate=exact.certificate, prices=exact.prices,
    )


def check_host_memory(source: Source) -> None:
    """MemoryError when the exact solver's host arrays exceed this machine's physical memory:
    the scores as one float32 or float64 array, unless they already are one in host memory
    (a NumPy array, CPU tensor or .npy memory map), the auction's per-point arrays and the
    exact finish's K x K label graph.

    Called before any pass: a stream would otherwise be read in full (and a Sinkhorn solve
    finished) before the copy failed.
    """
    N, K = source.shape
    size = compute_dtype(source.dtype).itemsize
    scores = N * K * size if _scores_copied(source) else 0
    pairs = K * K * PAIR_BYTES  # named in the message: the part that grows with K
    needed = scores + solver_bytes(N, K, source.dtype)
    total = physical_memory()
    if total is not None and needed > total:
        raise MemoryError(
            f"the exact solver needs about {needed / 2**30:.3g} GiB of host "
            f"memory for N={N}, K={K} ({scores / 2**30:.3g} GiB of it for a copy of the "
            f"scores, {pairs / 2**30:.3g} GiB for the K x K label graph), more than this "
            f"machine's {total / 2**30:.3g} GiB: fewer points or labels, or scores as a float32 "
            ".npy file (memory-mapped, not copied)"
        )


def solver_bytes(n_points: int, n_labels: int, dtype: str) -> int:
    """Host bytes of the exact solver's own arrays (not a copy of the scores): the auction's
    per-point arrays and candidate lists, and the exact finish's K x K label graph."""
    from ._transport import CANDIDATES

    size = compute_dtype(dtype).itemsize
    per_point = min(n_labels, CANDIDATES) * (8 + size) + POINT_BYTES
    return n_points * per_point + n_labels * n_labels * PAIR_BYTES


def _scores_copied(source: Source) -> bool:
    """Whether :func:`_host_scores` copies the scores rather than reading them in place."""
    return _in_place_scores(source) is None


def _in_place_scores(source: Source) -> np.ndarray | None:
    """The scores as the host array the solver reads in place, or None when they must be
    copied into one first. It copies nothing itself: both :func:`check_host_memory` (before
    any pass) and :func:`_host_scores` decide by it, so the two cannot disagree."""
    inner = _unwrapped(source)
    if isinstance(inner, MemmapSource):
        array = np.asarray(inner.array)  # a view through the mapping
    elif isinstance(inner, ArraySource) and _host_view(inner.array):
        array = to_host(inner.array)
    else:
        return None
    return array if _readable_in_place(array) else None


def _unwrapped(source: Source) -> Source:
    """The source behind a stream's checking layer (in-memory sources have none)."""
    return source.inner if isinstance(source, CheckedSource) else source


def _host_view(array: Array) -> bool:
    """Whether the array may be read in place: it lives in host memory and, for a tensor, is
    float32 or float64 (:func:`to_host` converts bfloat16 instead of viewing it)."""
    if is_cuda(array):
        return False
    return array_library(array) != "torch" or str(array.dtype) in (
        "torch.float32", "torch.float64")


def _readable_in_place(array: np.ndarray) -> bool:
    """C-ordered native float32 or float64: what the solver reads without a copy."""
    return bool(array.flags.c_contiguous and array.dtype == compute_dtype(array.dtype))


def _host_scores(source: Source, rows: int) -> tuple[np.ndarray, Array]:
    """The scores as one C-contiguous host array of float32 or float64 (no copy if they are),
    and an array of the input's library on its device, for the labels (None: NumPy).

    A stream is read in blocks of ``rows`` through its checking layer, so its blocks are
    compared with those of the other passes; a memory map is viewed through its mapping.
    """
    inner = _unwrapped(source)
    like = inner.array if isinstance(inner, ArraySource) else None
    array = _in_place_scores(source)
    if array is not None:
        return array, like
    if isinstance(inner, MemmapSource):
        host = np.asarray(inner.array)  # paged in from the file as it is copied
    elif isinstance(inner, ArraySource):
        host = to_host(inner.array)
    else:
        return _streamed_scores(source, rows)
    return np.ascontiguousarray(host, dtype=compute_dtype(host.dtype)), like


def _streamed_scores(source: Source, rows: int) -> tuple[np.ndarray, Array]:
    """A stream's blocks copied into one host array, and an array of the blocks' library.

    Each block is copied out before the next is read: a stream may reuse its buffer.
    """
    array = like = None
    for start, stop, block in source.chunks(rows):
        host = to_host(block)
        if array is None:
            array = np.empty(source.shape, dtype=compute_dtype(host.dtype))
            like = from_host(np.empty(0, dtype=np.int64), block)  # the labels' library
        array[start:stop] = host
    assert array is not None, "check_shape admits only scores with rows"
    return array, like
