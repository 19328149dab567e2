"""Several heads solved together: one read of a shared source per pass serves all of them.

The paper trains T heads, each with its own number of labels, on the same images. Their
logits come from one network, so they are one score matrix whose columns are the heads side
by side. Reading it once per pass for all heads instead of once per head divides the reads by
T, which is what costs when the scores stream from disk or from a model.

Each head runs the ordinary solve (same code, same result as solving it alone) in its own
thread on a view of its columns; a :class:`~sinklabel.sources.shared.SharedReader` reads each
block once when every head still iterating has asked for it.
"""

from __future__ import annotations

import numbers
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypedDict

import numpy as np

from ._budget import BYTES_PER_BLOCK, default_rows, fixed_bytes, rows_for_budget
from ._compile import eager_in_torch_compile
from ._typing import Unpack
from ._validation import check_positive, check_shape
from ._warnings import held_warnings, warn
from .api import sinkhorn
from .kernels import resolve_kernel
from .progress import progress_label
from .result import SinkhornResult
from .sources import Array, as_source, checked, itemsize, parse_memory
from .sources.shared import SharedReader


class HeadOptions(TypedDict, total=False):
    """Options of :func:`sinklabel.sinkhorn` that every head shares; the others (balance,
    cache, distributed) read the scores in their own way, out of step with the shared reads."""

    lam: float
    tol: float
    max_iter: int
    progress: bool


SHARED_OPTIONS = tuple(HeadOptions.__annotations__)


@eager_in_torch_compile
def sinkhorn_heads(
    logp: Array,
    Ks: Sequence[int] | np.ndarray,
    *,
    label_weights: Sequence[Array | None] | None = None,
    init: Sequence[Array | None] | None = None,
    chunk_size: int | None = None,
    memory_limit: int | str | None = None,
    backend: str = "auto",
    **options: Unpack[HeadOptions],
) -> list[SinkhornResult]:
    """Solve T heads whose scores sit side by side in one source, reading it once per pass.

    Parameters
    ----------
    logp : array, path or Source of shape (N, sum(Ks))
        The heads' scores concatenated along columns: head ``t`` owns columns
        ``sum(Ks[:t])`` to ``sum(Ks[:t + 1]) - 1``. Anything :func:`sinklabel.sinkhorn` takes.
    Ks : sequence of int, or 1-D integer array
        Labels per head.
    label_weights, init : sequence of length T, default=None
        Per-head target proportions and warm starts (entries may be None).
    chunk_size, memory_limit : default=None
        As in :func:`sinklabel.sinkhorn`, for the shared blocks: a budget covers the block
        and every head's temporaries.
    backend : str, default="auto"
        As in :func:`sinklabel.sinkhorn`.
    **options
        ``lam``, ``tol``, ``max_iter``, ``progress``: as in :func:`sinklabel.sinkhorn`,
        shared by all heads (with ``progress=True`` each head gets its own bar).

    Returns
    -------
    list of SinkhornResult
        One per head, identical to solving that head's columns alone with the same
        ``chunk_size`` (the default blocks are sized for the whole width, so a head solved
        alone with its own default sums in another order and agrees to rounding); each head
        stops at its own tolerance.
    """
    unknown = sorted(set(options) - set(SHARED_OPTIONS))
    if unknown:
        raise TypeError(
            f"sinkhorn_heads got unexpected keyword arguments {unknown}: besides its own it "
            f"takes {', '.join(SHARED_OPTIONS)} (balance, cache and distributed are options "
            "of sinklabel.sinkhorn, one head at a time)"
        )
    source = as_source(logp)
    ks = _check_heads(Ks, source.shape)
    check_shape(source, sum(ks))  # the whole matrix, not one head's view, named in errors
    weights = _per_head("label_weights", label_weights, len(ks))
    inits = _per_head("init", init, len(ks))
    rows = _shared_rows(source, ks, chunk_size, memory_limit, backend)
    reader = SharedReader(checked(source), len(ks))
    offsets = [sum(ks[:t]) for t in range(len(ks))]
    results: list[SinkhornResult | None] = [None] * len(ks)
    held: list[list[tuple[str, type[Warning]]]] = [[] for _ in ks]
    finished = [threading.Event() for _ in ks]

    def solve_head(t: int) -> None:
        columns = slice(offsets[t], offsets[t] + ks[t])
        view = reader.view(t, lambda block: block[:, columns], ks[t])
        try:
            with progress_label(f"head {t}", position=t), held_warnings() as shown_later:
                held[t] = shown_later
                results[t] = sinkhorn(
                    view, ks[t], label_weights=weights[t], init=inits[t], chunk_size=rows,
                    backend=backend, **options,
                )
        except BaseException as exc:
            if hasattr(exc, "add_note"):  # Python 3.11 and later
                exc.add_note(f"(in head {t}: its labels are columns {columns.start} to "
                             f"{columns.stop - 1} of logp, numbered from 0 within the head)")
            reader.fail(exc)
        finally:
            reader.leave(t)
            finished[t].set()

    _run_heads(solve_head, finished, reader)
    for t, head_warnings in enumerate(held):
        for message, category in head_warnings:
            warn(f"head {t}: {message}", category)
    if reader.error is not None:
        raise reader.error
    return results  # type: ignore[return-value]


def _run_heads(solve_head: Callable[[int], None], finished: list[threading.Event],
               reader: SharedReader) -> None:
    """Run one thread per head and return once every started one has finished, also when
    the wait is interrupted (Ctrl-C): the heads are stopped and waited for, never left
    running on the caller's scores. Finishing is awaited on events, not on ``join``: on
    Python 3.11 a ``join`` interrupted by an exception marks its thread stopped while it
    still runs, so a second ``join`` would return at once."""
    started: list[threading.Thread] = []
    try:
        for t in range(len(finished)):
            thread = threading.Thread(target=solve_head, args=(t,), name=f"sinklabel-head-{t}")
            thread.start()
            started.append(thread)
        for event in finished[:len(started)]:
            event.wait()
    except BaseException as exc:
        reader.fail(exc)  # the heads still waiting for a block, or one not started, stop
        for event in finished[:len(started)]:
            event.wait()
        raise
    finally:
        for thread in started:
            thread.join()


def _check_heads(Ks: Sequence[int] | np.ndarray, shape: tuple[int, int]) -> list[int]:
    if isinstance(Ks, np.ndarray) and Ks.ndim == 1:
        Ks = Ks.tolist()
    if isinstance(Ks, (str, bytes)) or not isinstance(Ks, Sequence) or len(Ks) == 0:
        raise TypeError(f"Ks must be a non-empty sequence of label counts, got {Ks!r}")
    ks: list[int] = []
    for k in Ks:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k <= 0:
            raise ValueError(f"every entry of Ks must be a positive int, got {Ks!r}")
        ks.append(int(k))
    if len(shape) != 2 or sum(ks) != shape[1]:
        raise ValueError(
            f"the heads' label counts Ks={ks} sum to {sum(ks)}, but logp has shape "
            f"{tuple(shape)}: logp.shape[1] must be sum(Ks)"
        )
    return ks


def _per_head(name: str, value: Sequence | None, n_heads: int) -> list:
    if value is None:
        return [None] * n_heads
    if not hasattr(value, "__len__"):
        raise TypeError(f"{name} must be a sequence with one entry per head, got {value!r}")
    if len(value) != n_heads:
        raise ValueError(f"{name} must have one entry per head ({n_heads}), got {len(value)}")
    return list(value)


def _shared_rows(
    source: Any, ks: list[int], chunk_size: int | None, memory_limit: int | str | None,
    backend: str,
) -> int:
    """Rows per shared block, the same for every head so that they read in step. The whole
    width is read at once and every head may be computing on it at the same time; a streamed
    source gives blocks no larger than :func:`sinklabel.sinkhorn` asks of it."""
    if memory_limit is not None and chunk_size is not None:
        raise ValueError("give chunk_size or memory_limit, not both")
    if chunk_size is not None:  # checked here, where an error names no one head
        return check_positive("chunk_size", chunk_size, integer=True)
    kernel = resolve_kernel(backend, source.library)
    rows = default_rows(kernel, source)
    if memory_limit is None:
        return rows
    budget = parse_memory(memory_limit)
    n = source.shape[0]
    per_row = source.bytes_per_row() + sum(
        kernel.workspace_bytes_per_row(k, itemsize(source.dtype)) for k in ks
    )
    fixed = sum(fixed_bytes(n, k) for k in ks)
    # Each head's view keeps a fingerprint per block, and so does a streamed source's own.
    layers = len(ks) + (0 if source.in_memory else 1)
    return min(rows, rows_for_budget(budget, fixed, per_row, streamed_points=n,
                                     block_bytes=layers * BYTES_PER_BLOCK))
