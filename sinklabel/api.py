"""Public entry points: checked inputs in, one private solve, results in the caller's library."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import solver
from ._validation import check_init, check_label_weights, check_positive, check_scores, check_shape
from .kernels import Kernel, resolve_kernel
from .result import SinkhornResult
from .sources import Array, Source, as_source, itemsize

DEFAULT_LAM = 25.0
#: L1 distance between the plan's label marginal and the target: 1e-3 means at most 0.05%
#: of the data's mass sits in the wrong label (see docs/method.md for the reasoning).
DEFAULT_TOL = 1e-3
DEFAULT_MAX_ITER = 1000


def sinkhorn(
    logp: Array,
    K: int,
    *,
    lam: float = DEFAULT_LAM,
    label_weights: Array | None = None,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    init: Array | None = None,
    chunk_size: int | None = None,
    backend: str = "auto",
    progress: bool = False,
) -> SinkhornResult:
    """Solve the entropic label-assignment problem and return labels with the solver state.

    Parameters
    ----------
    logp : array of shape (N, K)
        Log-probabilities or raw logits of N points over K labels (NumPy array, torch tensor,
        CuPy array, or anything ``np.asarray`` takes). A constant added to a row changes nothing.
        Never modified.
    K : int
        Number of labels; must equal ``logp.shape[1]``.
    lam : float, default=25.0
        Inverse temperature (the paper's lambda). Larger is closer to the exact linear program
        and slower to converge.
    label_weights : array of shape (K,), default=None
        Target label proportions (positive; normalised here). Default: uniform, ``1 / K``.
    tol : float, default=1e-3
        Stop when the L1 distance between the plan's label marginal and ``label_weights``
        is at most ``tol``.
    max_iter : int, default=1000
        Most passes over the scores; hitting it warns and sets ``converged=False``.
    init : array of shape (K,), default=None
        Potentials to warm-start from (e.g. ``previous.potentials``).
    chunk_size : int, default=None
        Rows processed at once; bounds the solver's working memory. Default: the backend's.
    backend : {"auto", "numpy", ...}, default="auto"
        Which kernels run the passes; "auto" picks the fastest installed for the input.
    progress : bool, default=False
        Show a progress bar (tqdm when installed) with the current error.

    Returns
    -------
    SinkhornResult
    """
    source = as_source(logp)
    K = check_shape(source, K)
    lam = check_positive("lam", lam)
    tol = check_positive("tol", tol)
    max_iter = check_positive("max_iter", max_iter, integer=True)
    weights = check_label_weights(label_weights, K)
    start = check_init(init, K)
    kernel = resolve_kernel(backend, source.library)
    rows = _chunk_rows(chunk_size, kernel, source)
    check_scores(source, kernel, lam, rows)
    return _sinkhorn(
        source, kernel, lam=lam, label_weights=weights, tol=tol, max_iter=max_iter,
        init=start, rows=rows, progress=progress,
    )


def assign_labels(logp: Array, K: int, **options: Any) -> Array:
    """Hard labels that agree with ``logp`` while splitting the data by ``label_weights``.

    Takes the same arguments as :func:`sinkhorn` and returns its ``labels``: an int64 array
    of shape (N,) in the input's array library and on its device.
    """
    return sinkhorn(logp, K, **options).labels


def _sinkhorn(
    source: Source,
    kernel: Kernel,
    *,
    lam: float,
    label_weights: np.ndarray,
    tol: float,
    max_iter: int,
    init: np.ndarray | None,
    rows: int,
    progress: bool,
) -> SinkhornResult:
    """The solve on checked inputs: iterate, then label in one more pass."""
    out = solver.solve(
        source, kernel, lam=lam, label_weights=label_weights, tol=tol, max_iter=max_iter,
        init=init, rows=rows, progress=progress,
    )
    labels = solver.assign(source, kernel, out.potentials, lam, rows)
    counts = np.bincount(kernel.to_numpy(labels), minlength=source.shape[1]).astype(np.int64)
    return SinkhornResult(
        labels=labels,
        potentials=out.potentials,
        label_counts=counts,
        n_iter=out.n_iter,
        converged=out.converged,
        error=out.error,
        error_history=out.error_history,
        lam=lam,
        label_weights=label_weights,
        backend=kernel.name,
    )


def apply_potentials(
    logp: Array, result: SinkhornResult, what: str, chunk_size: int | None
) -> Array:
    """Labels or soft assignments of any rows under a result's potentials."""
    source = as_source(logp)
    check_shape(source, result.potentials.shape[0])
    kernel = _kernel_for(result.backend, source.library)
    rows = _chunk_rows(chunk_size, kernel, source)
    check_scores(source, kernel, result.lam, rows)
    f, lam = result.potentials, result.lam
    if what == "labels":
        return solver.assign(source, kernel, f, lam, rows)
    parts = [kernel.soft(chunk, f, lam) for _, _, chunk in source.chunks(rows)]
    return kernel.concat(parts)


def _kernel_for(backend: str, library: str) -> Kernel:
    """The backend that solved, when it takes this library; otherwise the automatic choice."""
    try:
        return resolve_kernel(backend, library)
    except (TypeError, ImportError):
        return resolve_kernel("auto", library)


def _chunk_rows(chunk_size: int | None, kernel: Kernel, source: Source) -> int:
    if chunk_size is None:
        return kernel.chunk_rows(source.shape[1], itemsize(source.dtype))
    return check_positive("chunk_size", chunk_size, integer=True)
