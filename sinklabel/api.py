"""Public entry points: checked inputs in, one private solve, results in the caller's library."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypedDict

import numpy as np

from . import solver
from ._arrays import device_scope
from ._budget import budget_rows, default_rows
from ._capacities import balanced_range
from ._compile import eager_in_torch_compile
from ._typing import Unpack
from ._validation import (
    RowTops,
    check_chunk_scores,
    check_exact_balance,
    check_flag,
    check_init,
    check_label_weights,
    check_labels_reachable,
    check_lam,
    check_positive,
    check_scores,
    check_shape,
)
from ._warnings import warn
from .collective import LOCAL, Collective
from .exp_cache import table_cap, with_exp_cache
from .kernels import Kernel, exp_tables, resolve_kernel
from .kernels._base import compute_dtype
from .result import SinkhornResult
from .sources import Array, Source, as_source, checked, parse_memory

DEFAULT_LAM = 25.0
#: L1 distance between the plan's label marginal and the target: 1e-3 means at most 0.05%
#: of the data's mass sits in the wrong label (see docs/method.md for the reasoning).
DEFAULT_TOL = 1e-3
DEFAULT_MAX_ITER = 1000
#: Ways to turn the solution into hard labels (``balance=``).
BALANCE = (None, "exact")


class SinkhornOptions(TypedDict, total=False):
    """The keyword arguments of :func:`sinkhorn`, which :func:`assign_labels` passes on: a type
    checker then flags a misspelt option there (``lamb=``) as it would in ``sinkhorn``."""

    lam: float
    label_weights: Array | None
    tol: float
    max_iter: int
    init: Array | None
    chunk_size: int | None
    memory_limit: int | str | None
    backend: str
    progress: bool
    process_group: Any
    distributed: bool
    balance: str | None
    cache: bool


@eager_in_torch_compile
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
    memory_limit: int | str | None = None,
    backend: str = "auto",
    progress: bool = False,
    process_group: Any = None,
    distributed: bool = False,
    balance: str | None = None,
    cache: bool = False,
) -> SinkhornResult:
    """Solve the entropic label-assignment problem and return labels with the solver state.

    Parameters
    ----------
    logp : array of shape (N, K), path, or Source
        Log-probabilities or raw logits of N points over K labels (NumPy array, torch tensor,
        CuPy array, or anything ``np.asarray`` takes). A constant added to a row changes nothing.
        Never modified. Scores that do not fit in memory stream block by block: a ``.npy`` path
        or ``np.memmap``, an h5py/zarr dataset, or a :class:`sinklabel.sources.CallableSource`
        (see docs/streaming.md).
    K : int
        Number of labels; must equal ``logp.shape[1]``.
    lam : float, default=25.0
        Inverse temperature (the paper's lambda). Larger is closer to the exact linear program
        and slower to converge. At most the largest number of the compute dtype over
        log2(e) (2.4e38 for scores computed in float32; the CUDA kernels work in base 2).
    label_weights : array of shape (K,), default=None
        Target label proportions (positive; normalised here, where each share must stay at
        least float64's smallest normal number, 2.2e-308). A share below the compute
        dtype's smallest normal number (1.2e-38 in float32) is left at zero mass, which is
        within it. Default: uniform, ``1 / K``.
    tol : float, default=1e-3
        Stop when the L1 distance between the plan's label marginal and ``label_weights``
        is at most ``tol``.
    max_iter : int, default=1000
        Most passes over the scores; hitting it warns and sets ``converged=False``.
    init : array of shape (K,), default=None
        Potentials to warm-start from (e.g. ``previous.potentials``). Refused (ValueError)
        beyond the square root of the compute dtype's largest number once their
        weighted mean is subtracted (1.8e19 in float32, 1.3e154 in float64).
    chunk_size : int, default=None
        Rows processed at once; bounds the solver's working memory. Default: the backend's.
    memory_limit : int or str, default=None
        Budget for the solve's extra memory (bytes, or a size such as ``"1GB"``): chunks are
        the backend's default size, or smaller where the budget requires. Give ``chunk_size``
        or ``memory_limit``, not both.
    backend : {"auto", "numpy", ...}, default="auto"
        Which kernels run the passes; "auto" picks the fastest installed for the input.
    progress : bool, default=False
        Show the progress on stderr: the best error so far and the estimated time to
        convergence, as a tqdm bar on a terminal or in a notebook (tqdm installed), else as
        a line at most once a second and a closing one.
    process_group : torch.distributed.ProcessGroup, default=None
        Solve jointly with the other ranks of this group: ``logp`` holds this rank's rows
        only (possibly none), every rank ends with the same potentials, ``labels`` are this
        rank's, ``label_counts`` are global. See docs/distributed.md.
    distributed : bool, default=False
        As ``process_group``, with torch.distributed's default group.
    balance : {None, "exact"}, default=None
        None: label each point by the argmax under the potentials (sizes close to the
        target; rows that tie, such as identical rows, all take one label, and a label left
        with no points although its target is at least one point warns). "exact": the
        optimal labelling with sizes exactly ``floor`` or ``ceil`` of ``N * label_weights``,
        found by the exact solver warm-started from the potentials, with its certified gap
        in ``result.certificate`` (see :func:`sinklabel.solve_exact`); it needs N >= K
        (N counted over every rank). Across ranks only the rows whose label is in doubt
        travel, to rank 0 (docs/distributed.md).
    cache : bool, default=False
        Numba kernels only: the ``numba`` backend, and ``torch`` for CPU tensors. Keep,
        between passes, the exponentials that can matter (a sparse,
        row-shifted ``exp`` of each chunk, built in the first pass): later passes cost
        O(kept entries) and read a block of the scores (call a source function) only where
        some of its rows cannot be answered from the cache: after the first pass, never on
        flat scores, in most passes on peaked ones. Each row is answered as by the uncached
        kernel, to rounding; a label whose mass is below one rounding unit of the row sums
        (far warm starts, starved labels) may lead the solver another way, to potentials
        that meet the same tolerance in a different number of passes. Its memory counts
        against ``memory_limit`` (see docs/backends.md, "Caching the exponentials"). Other
        backends, and CUDA tensors, raise ValueError.

    Returns
    -------
    SinkhornResult
    """
    if check_flag("distributed", distributed) or process_group is not None:
        from .distributed import distributed_sinkhorn

        # It checks the other arguments, so that a rank's bad one reaches every rank.
        return _warn_empty_labels(distributed_sinkhorn(
            logp, K, process_group=process_group, lam=lam, label_weights=label_weights,
            tol=tol, max_iter=max_iter, init=init, chunk_size=chunk_size,
            memory_limit=memory_limit, backend=backend, progress=progress, balance=balance,
            cache=cache,
        ))
    with device_scope(logp):
        source, kernel, settings = check_options(
            logp, K, lam=lam, label_weights=label_weights, tol=tol, max_iter=max_iter, init=init,
            chunk_size=chunk_size, memory_limit=memory_limit, backend=backend, balance=balance,
            cache=cache, progress=progress,
        )
        balance, cap = settings.pop("balance"), settings.pop("cache_cap")
        check_exact_balance(balance, *source.shape)
        if balance == "exact":  # before the Sinkhorn solve, not once it is done
            from .exact import check_host_memory

            check_host_memory(source)
        rows = settings["rows"]
        source = _checked_for_solve(source, kernel, settings)
        solve_source, solve_kernel = (
            with_exp_cache(source, kernel, rows, cap) if cap else (source, kernel)
        )
        result = _sinkhorn(solve_source, solve_kernel, scores=source, **settings,
                           exact_sizes=balance == "exact")
        return _warn_empty_labels(balanced(result, source, kernel, rows, balance))


def check_options(
    logp: Array, K: Any, *, lam: Any, label_weights: Any, tol: Any, max_iter: Any, init: Any,
    chunk_size: Any, memory_limit: Any, backend: str, balance: Any, cache: Any, progress: Any,
    allow_empty_rows: bool = False, budget_exact: bool = True,
) -> tuple[Source, Kernel, dict[str, Any]]:
    """The checks of :func:`sinkhorn`'s arguments, in one order for a process and for a rank
    of a distributed solve (which may hold no rows): all before any score is read.
    ``budget_exact``: ``memory_limit`` holds the exact solver's arrays for these rows too
    (``balance="exact"`` in one process; a rank's exact stage holds far less).

    ``settings`` holds the checked values under :func:`_sinkhorn`'s names, plus ``balance``
    and ``cache_cap``, the exponential cache's entries per row (0: no cache).
    """
    source = as_source(logp)
    K = check_shape(source, K, allow_empty_rows=allow_empty_rows)
    settings: dict[str, Any] = {
        "balance": check_balance(balance),
        "progress": check_flag("progress", progress),
        "lam": check_lam(lam, source.dtype),
        "tol": check_positive("tol", tol),
        "max_iter": check_positive("max_iter", max_iter, integer=True),
        "label_weights": check_label_weights(label_weights, K),
        "init": check_init(init, K),
    }
    # The solver refuses potentials its dtype cannot take: asked now, not after a pass.
    solver.start_potentials(source, settings["init"], settings["label_weights"])
    cache = check_flag("cache", cache)
    kernel = resolve_kernel(backend, source.library)
    exact_bytes = 0
    if settings["balance"] == "exact" and memory_limit is not None and budget_exact:
        from .exact import solver_bytes

        exact_bytes = solver_bytes(*source.shape, source.dtype)
    rows = settings["rows"] = _chunk_rows(chunk_size, kernel, source, memory_limit, cache,
                                          exact_bytes)
    settings["cache_cap"] = (table_cap(source, kernel, rows, memory_limit, exact_bytes)
                             if cache else 0)
    return source, kernel, settings


def check_balance(balance: Any) -> str | None:
    """One of :data:`BALANCE`."""
    if balance not in BALANCE:
        raise ValueError(f"balance must be one of {BALANCE}, got {balance!r}")
    return balance


@eager_in_torch_compile
def assign_labels(logp: Array, K: int, **options: Unpack[SinkhornOptions]) -> Array:
    """Hard labels that agree with ``logp`` while splitting the data by ``label_weights``.

    Parameters
    ----------
    logp, K
        As in :func:`sinkhorn`.
    **options
        Any other argument of :func:`sinkhorn` (``lam``, ``label_weights``, ``tol``,
        ``balance``, ...), with the same defaults.

    Returns
    -------
    array of shape (N,), int64
        ``sinkhorn(logp, K, **options).labels``, in the input's array library and on its
        device.
    """
    return sinkhorn(logp, K, **options).labels


def _sinkhorn(
    source: Source,
    kernel: Kernel,
    *,
    scores: Source,
    lam: float,
    label_weights: np.ndarray,
    tol: float,
    max_iter: int,
    init: np.ndarray | None,
    rows: int,
    progress: bool,
    row_tops: RowTops | None = None,
    exact_sizes: bool = False,
    collective: Collective = LOCAL,
) -> SinkhornResult:
    """The solve on checked inputs: iterate, then label in one more pass.

    ``collective`` joins this process's rows with other processes' (see distributed.py);
    labels stay local, label counts are global. ``scores`` reads the raw scores where
    ``source`` may answer from the exponential cache: a failed solve counts their finite
    entries to say why it failed.
    """
    out = solver.solve(
        source, kernel, lam=lam, label_weights=label_weights, tol=tol, max_iter=max_iter,
        init=init, rows=rows, progress=progress, collective=collective,
        row_tops=row_tops,
        allow_dead_labels=exact_sizes,
        # Perhaps it cannot: -inf scores may leave a label short of rows.
        explain_failure=lambda: check_labels_reachable(
            scores, label_weights, rows, collective, exact_sizes=exact_sizes),
    )
    labels = solver.assign(source, kernel, out.potentials, lam, rows)
    counts = np.bincount(kernel.to_numpy(labels), minlength=source.shape[1]).astype(np.float64)
    counts = collective.sum(counts).astype(np.int64)
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


def balanced(
    result: SinkhornResult, source: Source, kernel: Kernel, rows: int, balance: str | None,
    collective: Collective = LOCAL,
) -> SinkhornResult:
    """The result, with exactly balanced labels for ``balance="exact"``.

    ``source`` and ``kernel`` read the raw scores (never the exponential cache): the exact
    step needs every score. Across ranks it continues in :mod:`sinklabel._distributed_exact`.
    """
    if balance != "exact":
        return result
    if collective is LOCAL:
        from .exact import balance_exact

        return balance_exact(source, kernel, result, rows)
    from ._distributed_exact import balance_across_ranks

    return balance_across_ranks(source, kernel, result, rows, collective)


def _warn_empty_labels(result: SinkhornResult) -> SinkhornResult:
    """Warn when the hard labels leave empty a label meant for at least one point.

    The plan may be balanced while its argmax is not: rows that tie in several labels
    (identical or constant rows, as from a zero-initialised head) all take the same one.
    A solve that failed has no balanced plan to round, and exact balancing cannot help it.
    """
    counts = result.label_counts
    target = counts.sum() * result.label_weights
    # A target of exactly one point may be computed as 0.9999999999999999 (N = K = 49):
    # rounded as balance="exact" rounds it, it is one point.
    least = balanced_range(int(counts.sum()), result.label_weights)[0]
    empty = np.flatnonzero((counts == 0) & (least >= 1))
    if empty.size:
        why = ("the argmax rounds rows that the plan splits between labels (rows that tie, "
               "such as identical rows, all go to one label). Pass balance='exact' for labels "
               "with the target sizes" if result.converged else
               "the solve did not converge (see its ConvergenceWarning), so its plan leaves "
               "them short too")
        warn(
            f"{empty.size} labels received no points although each should take at least "
            f"{target[empty].min():.3g} (labels {empty[:10].tolist()}"
            f"{', ...' if empty.size > 10 else ''}): {why}",
        )
    return result


@eager_in_torch_compile
def apply_potentials(
    logp: Array, result: SinkhornResult, what: str, chunk_size: int | None,
    memory_limit: int | str | None = None,
) -> Array:
    """Labels or soft assignments of any rows under a result's potentials."""
    with device_scope(logp):
        return _apply_potentials(as_source(logp), result, what, chunk_size, memory_limit)


def _apply_potentials(
    source: Source, result: SinkhornResult, what: str, chunk_size: int | None,
    memory_limit: int | str | None,
) -> Array:
    check_shape(source, result.potentials.shape[0])
    kernel = _kernel_for(result.backend, source.library)
    rows = _chunk_rows(chunk_size, kernel, source, memory_limit)
    # A writable copy: torch warns when it wraps the result's read-only potentials.
    f, lam = np.array(result.potentials), result.lam
    _check_result_fits(f, lam, source.dtype)
    if what == "labels" and source.in_memory and _resolved(f, source.dtype):
        # One pass: the scores are checked by each row's best.
        with np.errstate(over="ignore", invalid="ignore"):  # what the check looks for
            return solver.assign(source, kernel, f, lam, rows, _top_check(kernel, lam))
    source = _checked_scores(source, kernel, lam, rows)
    if what == "labels":
        return solver.assign(source, kernel, f, lam, rows)
    out = None
    for start, stop, chunk in source.chunks(rows):
        part = kernel.soft(chunk, f, lam)
        if stop - start == source.shape[0]:  # one chunk (GPU kernels): no copy
            out = part  # still asked for the next block: the source's end is checked
            continue
        if out is None:  # within memory_limit, only the result itself is outside it
            out = kernel.empty_rows(source.shape[0], part)
        out[start:stop] = part
        del part  # not held while the next chunk's is computed
    return out


def _check_result_fits(f: np.ndarray, lam: float, dtype: Any) -> None:
    """Refuse a float64 result whose ``lam`` or potentials the kernels of narrower scores
    cannot hold: float32 makes them inf (lam = 1e39 turned a score of 0 into NaN, blamed on
    the scores; two potentials beyond 3.4e38 tied, and every row took the first)."""
    working = compute_dtype(dtype)
    largest = float(np.abs(f).max(initial=0.0))
    if largest > float(np.finfo(working).max):
        beyond = f"potentials reach {largest:.3g}"
    else:
        try:
            check_lam(lam, dtype)  # as a solve of these scores would hold it
            return
        except ValueError:
            beyond = f"lam is {lam:g}"
    raise ValueError(
        f"this result's {beyond}, beyond the largest {working}, the precision {dtype} scores "
        "are computed in: pass the scores as float64, as they were solved"
    )


def _resolved(f: np.ndarray, dtype: Any) -> bool:
    """Whether the potentials are within what the kernels compute with, as a solve's own
    are (a float64 result applied to float32 scores may not be)."""
    return float(np.abs(f).max(initial=0.0)) <= solver.potential_limit(dtype)


def _top_check(kernel: Kernel, lam: float) -> Callable[[int, Array, Array], None]:
    """The check of in-memory scores made on a labelling pass's row maxima instead of in a
    pass of its own. A row's best ``lam * logp + f`` is finite unless the row holds NaN or
    +inf, only -inf, or scores that overflow times lam, which the scores' check then names:
    potentials are below the square root of the dtype's largest number, far less than the
    spacing of numbers near it (:func:`_resolved`), so adding them cannot overflow."""
    def check(start: int, chunk: Array, top: Array) -> None:
        if not np.all(np.isfinite(kernel.to_numpy(top))):
            check_chunk_scores(start, chunk, kernel, lam)
            raise RuntimeError(f"rows [{start}, {start + chunk.shape[0]}) passed the scores' "
                               "check but their best lam * logp + potentials is not finite: "
                               "this is a bug in sinklabel, please report it")

    return check


def _kernel_for(backend: str, library: str) -> Kernel:
    """The backend that solved, when it takes this library; otherwise the automatic choice."""
    try:
        return resolve_kernel(backend, library)
    except (TypeError, ImportError):
        return resolve_kernel("auto", library)


def _chunk_rows(
    chunk_size: int | None, kernel: Kernel, source: Source, memory_limit: int | str | None = None,
    cache: bool = False, exact_bytes: int = 0,
) -> int:
    """Rows per chunk: ``chunk_size``, else the backend's default within ``memory_limit`` (at
    most half of it with ``cache``: the cached exponentials take the rest; less the exact
    solver's ``exact_bytes`` with ``balance="exact"``). A ``cache`` the backend cannot keep
    is refused first: a budget error would otherwise come first and, once fixed, be followed
    by that one."""
    tables = exp_tables(kernel, source) if cache else None
    if memory_limit is not None and chunk_size is not None:
        raise ValueError("give chunk_size or memory_limit, not both")
    if chunk_size is not None:
        return check_positive("chunk_size", chunk_size, integer=True)
    sizer = kernel if tables is None else tables
    if memory_limit is None:
        return default_rows(sizer, source)
    return budget_rows(parse_memory(memory_limit), source, kernel, sizer, cache=cache,
                       exact_bytes=exact_bytes)


def _checked_for_solve(source: Source, kernel: Kernel, settings: dict[str, Any]) -> Source:
    """The scores checked as :func:`_checked_scores` checks them, the largest of their rows'
    tops kept in ``settings["row_tops"]`` for the solve's precision warning."""
    tops = settings["row_tops"] = RowTops()
    return _checked_scores(source, kernel, settings["lam"], settings["rows"], tops)


def _checked_scores(
    source: Source, kernel: Kernel, lam: float, rows: int, tops: RowTops | None = None
) -> Source:
    """In-memory scores are checked now, in one pass; streamed ones block by block during
    the solve's first pass, which saves a read of the file or a call of the function."""
    if source.in_memory:
        check_scores(source, kernel, lam, rows, tops)
        return source
    return checked(
        source, lambda start, chunk: check_chunk_scores(start, chunk, kernel, lam, tops)
    )
