"""The same solver over row shards held by the ranks of a torch.distributed process group.

Each rank passes its own rows. The solver's global quantities go through a
:class:`TorchCollective`: per iteration one all-reduce of K + 3 float64 values (the label mass,
the log-sum-exp sum, the row count and a status flag). Every rank receives the same reduced
values, so every rank takes the same steps, stops at the same iteration and ends with identical
potentials.

Failures never leave a rank waiting in a reduction the others have abandoned:

- Before any work the ranks exchange a fingerprint of their arguments and of their own input
  checks. A disagreement raises the same ``ValueError`` on every rank; a rank whose input was
  rejected raises its own error while the others raise :class:`RankFailedError`.
- During the solve, an error while reading a rank's rows or running its kernel is recorded and
  the rank goes on to the next reduction with the status flag set; there every rank stops. The
  failing rank re-raises its own error, the others raise :class:`RankFailedError` naming it.
- A rank that dies outright cannot raise a flag. Its peers then get the process group's own
  error, wrapped in :class:`RankFailedError`: with gloo at once when the dead peer's sockets
  close, otherwise after the group's ``timeout``; NCCL is described in docs/distributed.md.

torch is imported only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, NoReturn

import numpy as np

from . import api
from ._arrays import array_library, is_cuda, to_host
from ._budget import pass_rows
from ._capacities import check_capacities
from ._validation import (
    FLOAT_DTYPES,
    check_exact_balance,
    check_labels,
    check_prices,
    check_shape,
)
from .certificate import (
    Certificate,
    _certificate_from_sums,
    _partial_sums,
)
from .collective import Collective
from .exp_cache import with_exp_cache
from .kernels import Kernel, resolve_kernel
from .kernels._base import WrappingKernel
from .result import SinkhornResult
from .sources import Array, ArraySource, Source, SourceError, as_source, checked
from .sources._base import WrappingSource

#: What every rank must pass identically, in fingerprint order.
AGREED = ("K", "lam", "tol", "max_iter", "dtype", "label_weights", "init", "balance")

#: What every rank must pass identically to a distributed duality_gap, in fingerprint order.
CERTIFIED = ("K", "prices", "capacities")

#: Error kinds a rank reports to the others (code = position + 1); the last one catches all.
_ERROR_KINDS: tuple[type[BaseException], ...] = (
    ValueError, TypeError, ImportError, MemoryError, OSError, RuntimeError, Exception,
)


#: Names ranks of the group for a message (:meth:`TorchCollective.ranks_named`).
RankNames = Callable[[Iterable[int]], str]


class RankFailedError(RuntimeError):
    """Another rank of the process group failed, or the group itself did; this rank stops too."""


class TorchCollective(Collective):
    """Sums and maxima over the ranks of a torch.distributed process group.

    Vectors travel as float64 tensors on ``device``: the CPU for gloo (and MPI), this rank's
    CUDA device for NCCL. Every reduction carries one extra status slot, so a rank that
    recorded a failure (:meth:`fail`) stops every rank at the same reduction.

    Parameters
    ----------
    group : torch.distributed.ProcessGroup, default=None
        The ranks taking part; None is the default group.
    device : torch.device or str, default=None
        Where reductions run. Default: the CPU unless the group can only reduce CUDA tensors
        (NCCL), then ``torch.cuda.current_device()``.
    """

    def __init__(self, group: Any = None, device: Any = None):
        try:
            import torch
            import torch.distributed as dist
        except ImportError as exc:
            raise ImportError(
                f"the distributed solve runs over torch.distributed: pip install "
                f"'sinklabel[torch]' ({exc})"
            ) from exc

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "distributed solve needs an initialised process group: call "
                "torch.distributed.init_process_group first (torchrun sets the environment)"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        if self.rank < 0:
            raise ValueError("this process is not a member of process_group; only its ranks "
                             "may take part in the solve")
        self.world_size = dist.get_world_size(group)
        self.device = torch.device(device) if device is not None else _reduction_device(group)
        self.failure: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        """Record this rank's failure; the next reduction stops every rank."""
        if self.failure is None:
            self.failure = error

    def sum(self, x: np.ndarray) -> np.ndarray:
        return self._reduce_checked(x, "sum")

    def max(self, x: np.ndarray) -> np.ndarray:
        return self._reduce_checked(x, "max")

    def gather(self, x: np.ndarray) -> np.ndarray:
        """Every rank's vector ``x`` (same length everywhere), one row per rank."""
        table = np.zeros((self.world_size, np.size(x)))
        table[self.rank] = np.ravel(x)
        return self._all_reduce(table, "sum")

    def gather_rows(self, block: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """Every rank's rows stacked in rank order on rank 0 (None elsewhere), and every
        rank's row count (on every rank).

        The counts travel first, in a checked sum: a rank that failed before stops every
        rank there, so nobody is left waiting for rows that will not come. Then every rank
        allocates what the transfer needs (rank 0 the whole table, which may not fit) and
        reports a failure in a second checked sum, before any rank sends or receives. The
        rows then go point to point, each rank's exact count (no padding); all ranks must
        pass the same dtype and number of columns.
        """
        counts = np.zeros(self.world_size)
        counts[self.rank] = block.shape[0]
        counts = self.sum(counts).astype(np.int64)
        try:
            buffers = self._transfer_buffers(block, counts)
        except Exception as exc:  # the others learn of it in the sum below, which raises here
            self.fail(exc)
            buffers = _Transfer(None)
        self.sum(np.zeros(0))
        with self._peers("sending rows to rank 0"):
            return self._rows_to_root(buffers, counts), counts

    @contextlib.contextmanager
    def _peers(self, step: str) -> Iterator[None]:
        """Raise a communication failure of ``step`` as :class:`RankFailedError`: gloo and
        NCCL raise RuntimeError when a peer is gone, timed out or aborted the communicator."""
        try:
            yield
        except RuntimeError as exc:
            raise RankFailedError(
                f"{self.ranks_named([self.rank])}: {step} failed ({exc}); another rank died, "
                "timed out or left the solve"
            ) from exc

    def _transfer_buffers(self, block: np.ndarray, counts: np.ndarray) -> _Transfer:
        """What :meth:`_rows_to_root` sends or receives into, allocated before any transfer.

        Elsewhere: this rank's rows as a tensor on the reduction device. On rank 0: the table
        of all rows, holding its own already, and (off the CPU) one staging tensor for the
        largest part received.
        """
        import torch

        if self.rank != 0:
            return _Transfer(torch.from_numpy(np.ascontiguousarray(block)).to(self.device))
        table = _root_table(counts, block)
        if self.device.type == "cpu":
            return _Transfer(None, table)
        staging = torch.empty((int(counts[1:].max(initial=0)), block.shape[1]),
                              dtype=getattr(torch, str(block.dtype)), device=self.device)
        return _Transfer(staging, table)

    def _rows_to_root(self, buffers: _Transfer, counts: np.ndarray) -> np.ndarray | None:
        import torch
        import torch.distributed as dist

        if self.rank != 0:
            if counts[self.rank]:
                dist.send(buffers.tensor, dst=self._global_rank(0), group=self.group)
            return None
        assert buffers.table is not None, "rank 0's transfer holds the table"
        offsets = np.cumsum(counts)
        for source in range(1, self.world_size):
            if counts[source] == 0:
                continue
            part = buffers.table[offsets[source - 1]:offsets[source]]
            tensor = (torch.from_numpy(part) if buffers.tensor is None
                      else buffers.tensor[:int(counts[source])])
            dist.recv(tensor, src=self._global_rank(source), group=self.group)
            if buffers.tensor is not None:
                part[:] = tensor.cpu().numpy()
        return buffers.table

    def ranks_named(self, group_ranks: Iterable[int]) -> str:
        """How messages name ranks: by their ranks in the group, and in the default group too
        where those differ (torchrun's logs and the user's code know the global ones)."""
        ranks = [int(rank) for rank in group_ranks]
        plural = "s" * (len(ranks) > 1)
        named = f"rank{plural} {', '.join(map(str, ranks))}"
        global_ranks = [self._global_rank(rank) for rank in ranks]
        if global_ranks != ranks:
            named += f" (global rank{plural} {', '.join(map(str, global_ranks))})"
        return named

    def _global_rank(self, group_rank: int) -> int:
        """The default group's rank of this group's ``group_rank``: what ``send`` and
        ``recv`` take as peer before torch 2.6 (its ``group_dst``/``group_src`` are newer)."""
        import torch.distributed as dist

        group = dist.group.WORLD if self.group is None else self.group
        # WORLD is None only before init_process_group, and a collective exists only after
        return dist.get_global_rank(group, group_rank)  # type: ignore[arg-type]

    def _reduce_checked(self, x: np.ndarray, op: str) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        buffer = np.empty(x.size + 1)
        buffer[:-1] = x.ravel()
        buffer[-1] = 0.0 if self.failure is None else 1.0
        out = self._all_reduce(buffer, op)
        if out[-1] > 0:
            self._stop()
        return out[:-1].reshape(x.shape)

    def _stop(self) -> None:
        """Every rank is here together: learn who failed, then raise."""
        codes = np.zeros(self.world_size)
        if self.failure is not None:
            codes[self.rank] = _error_code(self.failure)
        codes = self._all_reduce(codes, "max")
        if self.failure is not None:
            raise self.failure
        raise RankFailedError(_who_failed(codes, "during the solve", self.ranks_named))

    def _all_reduce(self, buffer: np.ndarray, op: str) -> np.ndarray:
        """All-reduce a float64 host array (consumed) and return the result on the host."""
        import torch
        import torch.distributed as dist

        tensor = torch.from_numpy(np.ascontiguousarray(buffer)).to(self.device)
        reduce_op = dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX
        with self._peers("all-reduce across the process group"):
            dist.all_reduce(tensor, op=reduce_op, group=self.group)
        return tensor.cpu().numpy()


class _Transfer(NamedTuple):
    """The buffers of one gather of rows: a tensor (the rows sent, or rank 0's staging
    tensor off the CPU) and, on rank 0, the table of all rows."""

    tensor: Any
    table: np.ndarray | None = None


def _root_table(counts: np.ndarray, block: np.ndarray) -> np.ndarray:
    """Rank 0's table of every rank's rows, holding its own block already: the one large
    allocation of a gather, and the one most likely to run out of memory."""
    table = np.empty((int(counts.sum()), block.shape[1]), dtype=block.dtype)
    table[:block.shape[0]] = block
    return table


def distributed_sinkhorn(
    logp: Array,
    K: int,
    *,
    process_group: Any,
    lam: float,
    label_weights: Array | None,
    tol: float,
    max_iter: int,
    init: Array | None,
    chunk_size: int | None,
    memory_limit: int | str | None,
    backend: str,
    progress: bool,
    balance: str | None = None,
    cache: bool = False,
) -> SinkhornResult:
    """:func:`sinklabel.sinkhorn` over the rows of every rank in ``process_group``.

    Called by ``sinkhorn(..., process_group=...)`` / ``distributed=True``; arguments as there.
    ``logp`` holds this rank's rows (any number, including none); the result's ``labels``
    are this rank's, its ``potentials``, ``label_counts``, ``n_iter`` and errors global.
    ``balance="exact"`` continues in :mod:`sinklabel._distributed_exact`.
    """
    collective = _collective_for(logp, process_group)
    try:
        checked = _check_local(logp, K, lam, label_weights, tol, max_iter, init, chunk_size,
                               memory_limit, backend, balance, cache, progress)
        error = None
    except Exception as exc:  # shared with the other ranks below, then re-raised here
        checked, error = None, exc
    table = collective.gather(_fingerprint(checked, error))
    if error is not None:
        raise error
    assert checked is not None, "set wherever no error was"
    _check_agreement(table, collective.ranks_named)
    source, kernel, settings = checked
    balance, cap = settings.pop("balance"), settings.pop("cache_cap")
    progress = settings.pop("progress")
    check_exact_balance(balance, int(table[:, 1].sum()), source.shape[1])
    # The guards wrap the cache, so a failure inside it reaches the other ranks like any other.
    solve_source, solve_kernel = (
        with_exp_cache(source, kernel, settings["rows"], cap) if cap else (source, kernel)
    )
    scores = _GuardedSource(source, collective)
    result = api._sinkhorn(
        _GuardedSource(solve_source, collective),
        _GuardedKernel(solve_kernel, collective, solve_source),
        scores=scores,
        **settings,
        exact_sizes=balance == "exact",
        progress=progress and collective.rank == 0,
        collective=collective,
    )
    return api.balanced(
        result, scores, _GuardedKernel(kernel, collective, source),
        settings["rows"], balance, collective,
    )


def fail_with_peers(error: BaseException, process_group: Any = None) -> NoReturn:
    """Raise ``error`` here and :class:`RankFailedError` on the other ranks of the group.

    For a check that failed on this rank before it reached :func:`distributed_sinkhorn`
    (``SinkhornLabeler``'s own, on the number of labels): the other ranks are then in that
    function's exchange of fingerprints, and this rank's failing fingerprint stops them there,
    as a failed input check of its own would. Raising alone would leave them waiting, or pair
    their exchange with this rank's next call.
    """
    TorchCollective(process_group).gather(_fingerprint(None, error))
    raise error


def distributed_duality_gap(
    logp: Array,
    labels: Array,
    prices: Array,
    capacities: Any,
    *,
    process_group: Any,
    backend: str,
    chunk_size: int | None,
) -> Certificate:
    """:func:`sinklabel.duality_gap` of the rows of every rank in ``process_group``.

    Called by ``duality_gap(..., process_group=...)`` / ``distributed=True``. Each rank passes
    its own rows and labels, and the same prices and capacities (global sizes: they must admit
    N rows, the total over all ranks). Two reductions cross the ranks: the fingerprint
    before the pass and one sum of K + 4 partial sums after it; every rank returns the same
    certificate.
    """
    collective = _collective_for(logp, process_group)
    try:
        checked = _check_certificate_local(logp, labels, prices, capacities, backend, chunk_size)
        error = None
    except Exception as exc:  # shared with the other ranks below, then re-raised here
        checked, error = None, exc
    if checked is None:
        fingerprint = np.array([_error_code(error)] + [0.0] * (1 + len(CERTIFIED)))
    else:
        fingerprint = checked[-1]
    table = collective.gather(fingerprint)
    if error is not None:
        raise error
    assert checked is not None, "set wherever no error was"
    _check_agreement(table, collective.ranks_named, CERTIFIED)
    source, kernel, y, v, rows, _ = checked
    # The same capacities and the same N on every rank: the same verdict everywhere.
    lower, upper = check_capacities(capacities, int(table[:, 1].sum()), source.shape[1])
    try:
        sums = _partial_sums(source, kernel, y, v, rows, ranks=collective.world_size)
    except Exception as exc:  # the others learn of it in the sum below
        collective.fail(exc)
        sums = np.zeros(source.shape[1] + 4)
    return _certificate_from_sums(collective.sum(sums), v, lower, upper)


def _check_certificate_local(
    logp: Array, labels: Array, prices: Array, capacities: Any, backend: str,
    chunk_size: int | None,
) -> tuple[Source, Kernel, np.ndarray, np.ndarray, int, np.ndarray]:
    """This rank's checks of :func:`sinklabel.duality_gap`'s input, N may be 0, and its
    fingerprint ``[0, rows, *CERTIFIED]``. Capacities are checked after the exchange,
    against the global N."""
    source = checked(as_source(logp))
    K = check_shape(source, source.shape[1] if len(source.shape) == 2 else 0,
                    allow_empty_rows=True)
    v = check_prices(prices, K)
    y = check_labels(labels, source.shape[0], K)
    kernel = resolve_kernel(backend, source.library)
    rows = pass_rows(kernel, source, chunk_size)
    fingerprint = np.array(
        [0.0, source.shape[0], K, _digest(v), _capacities_digest(capacities)]
    )
    return source, kernel, y, v, rows, fingerprint


def _capacities_digest(capacities: Any) -> float:
    """-1 for the default sizes, else a digest of the vectors (a pair or one) as given."""
    if capacities is None:
        return -1.0
    parts = list(capacities) if isinstance(capacities, tuple) else [capacities]
    vectors = [np.ravel(to_host(part)).astype(np.float64) for part in parts]
    return _digest(np.concatenate([[len(parts)], *[[v.size] for v in vectors], *vectors]))


def _check_local(
    logp: Array, K: Any, lam: Any, label_weights: Any, tol: Any, max_iter: Any, init: Any,
    chunk_size: Any, memory_limit: Any, backend: str, balance: Any, cache: Any = False,
    progress: Any = False,
) -> tuple[Source, Kernel, dict[str, Any]]:
    """This rank's input checks: those of :func:`sinklabel.sinkhorn`, but N may be 0."""
    source, kernel, settings = api.check_options(
        logp, K, lam=lam, label_weights=label_weights, tol=tol, max_iter=max_iter, init=init,
        chunk_size=chunk_size, memory_limit=memory_limit, backend=backend, balance=balance,
        cache=cache, progress=progress, allow_empty_rows=True,
        # A rank's exact stage keeps a few values per row and sends its contested rows on:
        # the exact solver's arrays for all its rows would refuse budgets that hold it.
        budget_exact=False,
    )
    return api._checked_for_solve(source, kernel, settings), kernel, settings


def _fingerprint(
    checked: tuple[Source, Kernel, dict[str, Any]] | None, error: BaseException | None
) -> np.ndarray:
    """[status, rows, *AGREED] of this rank as floats; status is the error code or 0."""
    if checked is None:
        return np.array([_error_code(error), 0.0] + [0.0] * len(AGREED))
    source, _, settings = checked
    return np.array([
        0.0,
        source.shape[0],
        source.shape[1],
        settings["lam"],
        settings["tol"],
        settings["max_iter"],
        FLOAT_DTYPES.index(source.dtype),
        _digest(settings["label_weights"]),
        -1.0 if settings["init"] is None else _digest(settings["init"]),
        api.BALANCE.index(settings["balance"]),
    ])


def _check_agreement(
    table: np.ndarray, ranks_named: RankNames, names: tuple[str, ...] = AGREED
) -> None:
    """The same verdict on every rank, from the same table of fingerprints (one row per
    rank of the group, which ``ranks_named`` names)."""
    status, rows, agreed = table[:, 0], table[:, 1], table[:, 2:]
    if status.any():
        raise RankFailedError(
            _who_failed(status, "checking its input, before the solve", ranks_named))
    for column, name in enumerate(names):
        values = agreed[:, column]
        if np.any(values != values[0]):
            raise ValueError(
                f"ranks disagree on {name}: {_by_value(name, values, ranks_named)}; every rank "
                f"must pass the same {', '.join(names)}"
            )
    if rows.sum() == 0:
        raise ValueError("logp must be non-empty: every rank passed 0 rows")


def _by_value(name: str, values: np.ndarray, ranks_named: RankNames) -> str:
    """Which ranks passed which value, e.g. "K=5 on rank 0, K=4 on ranks 1, 2"."""
    distinct = list(dict.fromkeys(values.tolist()))
    parts = []
    for index, value in enumerate(distinct):
        where = ranks_named(np.flatnonzero(values == value))
        parts.append(f"{name}={_show(name, value, index)} on {where}")
    return ", ".join(parts)


def _show(name: str, value: float, index: int) -> str:
    if name in ("K", "max_iter"):
        return str(int(value))
    if name == "balance":
        return repr(api.BALANCE[int(value)])
    if name == "dtype":
        return FLOAT_DTYPES[int(value)]
    if name in ("label_weights", "init", "prices", "capacities"):
        return "None" if value < 0 else f"<vector {chr(ord('A') + index)}>"
    return repr(float(value))


def _digest(vector: np.ndarray) -> float:
    """48 bits of a hash of a float64 vector: exact as a float64, equal iff (almost surely)
    the vectors are."""
    raw = hashlib.sha256(np.ascontiguousarray(vector, dtype=np.float64).tobytes()).digest()
    return float(int.from_bytes(raw[:6], "little"))


def _error_code(error: BaseException | None) -> float:
    """The kind of ``error`` the other ranks are told. A streamed source's checking layer
    wraps what the source raised (an OSError for a file that cannot be read) in a
    SourceError: the other ranks are told the wrapped kind, which says more."""
    if isinstance(error, SourceError) and isinstance(error.__cause__, Exception):
        error = error.__cause__
    return float(next(i for i, kind in enumerate(_ERROR_KINDS, 1) if isinstance(error, kind)))


def _who_failed(codes: np.ndarray, when: str, ranks_named: RankNames) -> str:
    failed = np.flatnonzero(codes)
    parts = [f"{ranks_named([rank])} ({_ERROR_KINDS[int(codes[rank]) - 1].__name__})"
             for rank in failed.tolist()]
    return (
        f"{' and '.join(parts)} failed {when}; every rank of the group stops, and the failing "
        "rank raises its own error, which says why"
    )


def _collective_for(logp: Array, group: Any) -> TorchCollective:
    """The group's collective, reducing on the device of this rank's CUDA rows under NCCL."""
    collective = TorchCollective(group)
    array: Any = getattr(logp, "array", logp)
    if collective.device.type == "cuda" and array_library(array) == "torch" and is_cuda(array):
        collective.device = array.device  # NCCL: reduce on the device that holds the rows
    return collective


def _reduction_device(group: Any) -> Any:
    """The CPU, unless the group reduces only CUDA tensors (NCCL alone)."""
    import torch
    import torch.distributed as dist

    backend = str(dist.get_backend(group)).lower()
    if "nccl" in backend and "gloo" not in backend and "mpi" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _GuardedSource(WrappingSource):
    """A rank's rows; a read error is recorded and ends the pass early, so the rank still
    reaches the reduction that follows the pass. Not ``in_memory``: a pass can end early."""

    def __init__(self, inner: Source, collective: TorchCollective):
        super().__init__(inner)
        self.collective = collective

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def chunks(self, rows: int) -> Iterator[tuple[int, int, Array]]:
        if self.collective.failure is not None:
            return
        try:
            for block in self.inner.chunks(rows):
                yield block
                if self.collective.failure is not None:  # the kernel failed on this block
                    return
        except Exception as exc:
            self.collective.fail(exc)


class _GuardedKernel(WrappingKernel):
    """A rank's kernel; an error is recorded and answered with a placeholder of the right
    kind, which the next reduction discards when it stops every rank."""

    def __init__(self, inner: Kernel, collective: TorchCollective, source: Source):
        super().__init__(inner)
        self.collective = collective
        self.source = source

    def __getattr__(self, name: str) -> Any:
        # Operations added to the kernel contract later pass through unguarded.
        return getattr(self.inner, name)

    def sweep_lse(self, chunk: Array, f: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
        return self._guard(self.inner.sweep_lse, (np.zeros(f.size), 0.0), chunk, f, lam)

    def slack(self, chunk: Array, f: np.ndarray, lam: float) -> np.ndarray:
        return self._guard(self.inner.slack, np.full(f.size, -np.inf), chunk, f, lam)

    def best(self, chunk: Array, f: np.ndarray, lam: float) -> tuple[Array, Array]:
        # Stand-ins of the chunk's length, so the caller can write them before the next
        # reduction reports the failure.
        if self.collective.failure is None:
            try:
                return self.inner.best(chunk, f, lam)
            except Exception as exc:
                self.collective.fail(exc)
        rows = self.inner.empty_labels(chunk.shape[0], chunk)
        return rows, rows

    def soft(self, chunk: Array, f: np.ndarray, lam: float) -> Array:
        return self.inner.soft(chunk, f, lam)

    def gather(self, chunk: Array, labels: Array) -> np.ndarray:
        return self._guard(self.inner.gather, np.zeros(0), chunk, labels)

    def to_numpy(self, x: Array) -> np.ndarray:
        return self._guard(self.inner.to_numpy, np.empty(0, dtype=np.int64), x)

    def empty_labels(self, n: int, like: Array | None) -> Array:
        if like is None:
            return _no_labels(self.source, self.inner)
        if self.collective.failure is None:
            try:
                return self.inner.empty_labels(n, like)
            except Exception as exc:  # out of memory, say: the next reduction stops every rank
                self.collective.fail(exc)
        return _DiscardedLabels()

    def empty_rows(self, n: int, like: Array) -> Array:
        return self.inner.empty_rows(n, like)

    def _guard(self, op: Any, placeholder: Any, *args: Any) -> Any:
        if self.collective.failure is not None:
            return placeholder
        try:
            return op(*args)
        except Exception as exc:
            self.collective.fail(exc)
            return placeholder


class _DiscardedLabels:
    """The label vector of a rank that could not allocate one: the labels written into it
    are dropped, and the next reduction (the label counts) raises on every rank."""

    def __setitem__(self, rows: slice, labels: Array) -> None:
        pass


def _no_labels(source: Source, kernel: Kernel) -> Array:
    """The labels of a rank with no rows: empty int64 in the input's library, on the device
    its blocks would have been on. The source may be behind a checking or caching layer: the
    device is read from the source underneath (an in-memory array's, a DeviceStreamSource's),
    otherwise the library's default."""
    while isinstance(source, WrappingSource):
        source = source.inner
    if isinstance(source, ArraySource):
        return kernel.empty_labels(0, source.array)
    from .sources.device import DeviceStreamSource

    if isinstance(source, DeviceStreamSource):
        import torch

        return kernel.empty_labels(0, torch.empty(0, device=source.device))
    return kernel.empty_labels(0, None)
