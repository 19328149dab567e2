"""``balance="exact"`` over rows spread across ranks, without gathering the N x K scores.

After the distributed Sinkhorn solve every rank holds the same label prices
``v = potentials / lam``, already close to the exact ones. Under such prices most rows prefer
one label by a wide margin and will keep it at the optimum; only rows whose best and second
best values of ``S[i, :] + v`` are close are in play. So:

1. Every rank scans its rows once: best label and margin to the runner-up under ``v``.
2. The ranks agree on thresholds (a bisection over counts, one all-reduce of K + 1 numbers
   per step): rows whose margin exceeds them are *settled* at their best label, at most
   ``cap[y] = max(min(lower[y], upper[y] - 1), 0)`` of them per label. Rows at which every
   label ties exactly (margin 0: identical or constant scores, e.g. an untrained head) never
   pass a threshold; any label is an arg-max for them, so they settle in the room the caps
   leave, spread over the labels in proportion to it. The rest, at least a target number,
   are *contested*.
3. Rank 0 receives the contested rows only (their full score rows) and the settled counts
   ``c``, and solves the exact problem on them with the label sizes ``[lower - c, upper - c]``
   (``_transport.solve_transport``, warm-started from the latest prices). It sends back the
   prices ``v*`` and the contested rows' labels.
4. Every rank checks its settled rows under ``v*``. If one is no longer at an arg-max, the
   round is repeated: the rows contested so far and the rows that moved stay contested, and
   the target doubles. Margins stay those under the Sinkhorn prices: the prices of a failed
   round come from too few rows and may be far off for some labels (measured: margins
   recomputed under them needed more rounds, often to the full set).

Why no violation means the global optimum. For any prices ``v`` and any labelling whose
label counts ``n`` lie within ``[lower, upper]``,

    sum_i S[i, y_i] = sum_i (S[i, y_i] + v[y_i]) - sum_y n_y v_y
                   <= sum_i max_y (S[i, y] + v_y) - sum_y min(lower_y v_y, upper_y v_y),

with equality exactly when (a) every row sits at an arg-max of ``S[i, :] + v`` and (b) every
label with ``v_y > 0`` holds ``lower_y`` rows and every label with ``v_y < 0`` holds
``upper_y`` (complementary slackness). The reduced solve is optimal for its problem, so its
prices ``v*`` give (a) on the contested rows and (b) for the contested counts ``r``:
``v*_y > 0`` means ``r_y = lower_y - c_y``, i.e. ``n_y = c_y + r_y = lower_y``, and
``v*_y < 0`` means ``n_y = upper_y``; ``r`` within its sizes puts ``n`` within
``[lower, upper]``. The verification pass gives (a) on the settled rows. Both sides of the
inequality are then equal, so no labelling within the sizes scores higher: optimal.
The caps make this work: ``c_y <= lower_y`` keeps the reduced lower size ``lower_y - c_y``
non-negative (otherwise a label could hold more than ``lower_y`` rows with ``v*_y > 0`` and
(b) would fail), and ``c_y <= upper_y - 1`` leaves every label room for a contested row, so
its price is set by the solve rather than by the contested rows alone (a label whose upper
size is 0 settles none and takes none: ``c_y = 0``, never negative). The reduced sizes
always admit the contested rows (their lower sizes sum to at most, their upper sizes to at
least, the number of contested rows).

Every round that fails at least doubles the target, so the loop ends; it stops with an error
rather than move more than ``MAX_CONTESTED_FRACTION`` of the rows (or ``SMALL_BYTES`` of
scores, whichever is more) to rank 0. The final labelling is certified by
the distributed duality gap over all rows (one more pass); a certificate that does not prove
optimality raises, it is never returned.

What crosses the ranks: the contested rows (K scores each, in the scores' dtype; bfloat16 as
float32), each sent to rank 0 once, in the round it becomes contested; ``2 + K + R`` float64
back per round (outcome, prices, the labels of all R rows on rank 0, the status slot); about
64 all-reduces of K + 2 float64 (K + 1 counts and the status slot) for the thresholds and a
few small sums per round.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from . import _transport, _transport_loops
from ._arrays import array_library, device_scope, from_host, to_host
from ._capacities import balanced_range, check_reachable, finite_per_label
from ._simd import FAST, HAVE_NUMBA, first_equal, fmax, fmin, parallel_loop, prange
from .certificate import Certificate, _certificate_from_sums, _partial_sums
from .collective import Collective
from .kernels import Kernel
from .kernels._base import compute_dtype
from .result import SinkhornResult
from .sources import Source

#: Contested rows of the first round: this many per label, and at least MIN_CONTESTED.
CONTESTED_PER_LABEL = 16
MIN_CONTESTED = 4096
#: The contested set may grow to this fraction of all rows, or to SMALL_BYTES of scores.
MAX_CONTESTED_FRACTION = 0.5
SMALL_BYTES = 256 << 20
#: Most bytes of a block a scan reads, counted as float64 like its temporary copy (on the
#: GPU for CUDA tensors, on the host otherwise): the GPU kernels' chunks are all the rows.
SCAN_BYTES = 32 << 20
#: Rows a scan's thread takes at a time, with one float64 row buffer for them all.
SCAN_BLOCK_ROWS = 256
#: Devices whose torch tensors a scan reads where they are (the tests add "cpu"); CPU rows
#: go to the compiled host scan, which is faster there.
DEVICE_SCANS = ("cuda",)
#: A settled row counts as moved off its arg-max only beyond this relative rounding (the
#: reduced solve shifts its prices by a constant, which may round a tie either way).
TIE_ROUNDING = 2.0**-48
#: Gaps below this share of the problem's scale are float64 noise (see _proves_optimal).
NOISE = 2.0**-44
#: Codes of the reduced solve's outcome, sent with its prices.
_SOLVED, _INFEASIBLE = 0.0, 1.0


def balance_across_ranks(
    source: Source,
    kernel: Kernel,
    result: SinkhornResult,
    rows: int,
    collective: Collective,
    *,
    first_contested: int | None = None,
) -> SinkhornResult:
    """The distributed Sinkhorn result with optimal, exactly balanced labels.

    ``source`` holds this rank's rows; sizes are ``floor`` or ``ceil`` of ``N *
    label_weights`` over all N rows, as in :func:`sinklabel.exact.balance_exact`. The labels
    returned are this rank's; counts, prices and certificate are global and the same on every
    rank. ``first_contested`` overrides the first round's contested-set size (tests use it to
    force retries).
    """
    K = source.shape[1]
    n_points = int(result.label_counts.sum())
    lower, upper = balanced_range(n_points, result.label_weights)
    # A label of size 0 (a weight far below 1 / N) settles no rows: its cap is 0, not -1,
    # which would hand it a negative share of the tied rows below.
    caps = np.maximum(np.minimum(lower, upper - 1), 0)
    v = result.potentials / result.lam
    wire = _wire_dtype(source.dtype)
    limit = min(n_points, max(int(MAX_CONTESTED_FRACTION * n_points),
                              SMALL_BYTES // (K * wire.itemsize)))
    target = min(first_contested or max(MIN_CONTESTED, CONTESTED_PER_LABEL * K), limit)

    # Margins under the Sinkhorn prices decide which rows may settle, in every round.
    # The solve's chunks where they fit a scan block: a streamed source's checking layer
    # then compares the scans' blocks with the solve's (larger chunks: the certificate's pass).
    scan_rows = min(rows, max(1, SCAN_BYTES // (8 * K)))
    reference = _guarded(collective, _Scan.empty(source.shape[0], K), _scan, source, scan_rows,
                         v)
    check_reachable(lower, collective.sum(reference.finite.astype(np.float64)).astype(np.int64))
    labels = np.empty(source.shape[0], dtype=np.int64)
    contested_before = np.zeros(source.shape[0], dtype=bool)  # contested once, or moved
    on_root = _RowsOnRoot(source.shape[0], scan_rows)
    for rounds in itertools.count(1):
        settled, settled_labels, settled_counts = _settle(
            reference, ~contested_before, caps, n_points - target, collective)
        n_contested = n_points - int(settled_counts.sum())
        if n_contested > limit:
            raise _too_many(rounds, n_contested, n_points, reference, settled, upper, collective)
        contested_before |= ~settled
        on_root.add(np.flatnonzero(~settled), source, wire, collective)
        status, v_new, contested_labels = _reduced_outcome(
            on_root.parts, n_contested, lower - settled_counts, upper - settled_counts, v,
            collective,
        )
        if status == _INFEASIBLE and n_contested == n_points:
            raise _transport.InfeasibleError(
                "no labelling meets the sizes: the -inf entries leave some labels fewer points "
                "than they must take, or more points than they may take (check -inf entries "
                "and label_weights)"
            )
        if status == _SOLVED:
            labels[settled] = settled_labels[settled]
            on_root.place(contested_labels, labels, collective.rank)
            check = _guarded(collective, _Scan.empty(source.shape[0], K), _scan, source,
                             scan_rows, v_new, labels)
            moved = check.off & settled
            v = v_new
            if collective.sum(np.array([np.count_nonzero(moved)], dtype=np.float64))[0] == 0:
                break
            contested_before |= moved
        if target >= limit:
            raise _too_many(rounds, n_contested, n_points, reference, settled, upper, collective)
        target = min(2 * max(target, n_contested), limit)

    summed = functools.partial(_partial_sums, ranks=collective.world_size)
    sums = _guarded(collective, np.zeros(K + 4), summed, source, kernel, labels, v, rows)
    certificate = _certificate_from_sums(collective.sum(sums), v, lower, upper)
    if not _proves_optimal(certificate, v, upper):
        raise RuntimeError(
            f"balance='exact' across ranks: the labels are not certified optimal (gap "
            f"{certificate.gap:.3g}, rounding bound {certificate.rounding:.3g}, feasible "
            f"{certificate.feasible}); this is a bug, please report it"
        )
    counts = collective.sum(np.bincount(labels, minlength=K).astype(np.float64))
    return replace(
        result, labels=from_host(labels, result.labels), label_counts=counts.astype(np.int64),
        balance="exact", certificate=certificate, prices=v,
    )


class _RowsOnRoot:
    """The contested rows, gathered to rank 0 round by round. A round sends only the rows
    not sent before (the contested set only grows); the labels that come back follow the
    same order: round by round, rank by rank, each rank's rows in their order.

    Rank 0 keeps each round's part as it came: joining them allocates, and may run out of
    memory, so it happens inside the guarded reduced solve (:func:`_joined`), where a failure
    reaches the other ranks instead of leaving them waiting."""

    def __init__(self, n_rows: int, chunk_rows: int):
        self.sent = np.zeros(n_rows, dtype=bool)
        self.chunk_rows = chunk_rows
        self.rounds: list[tuple[np.ndarray, np.ndarray]] = []  # this rank's rows, all counts
        self.parts: list[np.ndarray] = []  # on rank 0: the rows of each round so far

    def add(self, contested: np.ndarray, source: Source, wire: np.dtype,
            collective: Collective) -> None:
        new = contested[~self.sent[contested]]
        self.sent[new] = True
        block = _guarded(collective, np.zeros((new.size, source.shape[1]), wire),
                         _read_rows, source, self.chunk_rows, new, wire)
        part, counts = collective.gather_rows(block)
        self.rounds.append((new, counts))
        if part is not None:
            self.parts.append(part)

    def place(self, contested_labels: np.ndarray, labels: np.ndarray, rank: int) -> None:
        """Write this rank's share of the labels of all rows on rank 0 into ``labels``."""
        start = 0
        for rows, counts in self.rounds:
            offset = start + int(counts[:rank].sum())
            labels[rows] = contested_labels[offset:offset + rows.size]
            start += int(counts.sum())


class _Scan:
    """One pass over a rank's rows under prices ``v``: each row's best label, its margin over
    the runner-up (+inf when no other label is finite), whether the row's given label is off
    its arg-max, whether every label ties exactly at the row's maximum (``free``: any label
    is an arg-max), and the rows with a finite score per label."""

    def __init__(self, best: np.ndarray, margin: np.ndarray, off: np.ndarray,
                 free: np.ndarray, finite: np.ndarray):
        self.best, self.margin, self.off, self.free = best, margin, off, free
        self.finite = finite

    @classmethod
    def empty(cls, n: int, n_labels: int) -> _Scan:
        """A stand-in for a failed scan; the next reduction stops every rank."""
        return cls(np.zeros(n, np.int64), np.zeros(n), np.zeros(n, bool), np.zeros(n, bool),
                   np.zeros(n_labels, np.int64))


def _scan(source: Source, chunk_rows: int, v: np.ndarray,
          labels: np.ndarray | None = None) -> _Scan:
    """Each row's best label under prices ``v``, its margin, and whether ``labels`` moved it
    off that label. Read in ``chunk_rows`` blocks (the solve's, where they fit SCAN_BYTES), so
    the checking layer of a streamed source compares them with the solve's and notices
    scores that changed since."""
    n, K = source.shape
    out = _Scan.empty(n, K)
    out.finite += n
    for start, stop, block in source.chunks(chunk_rows):
        part = slice(start, stop)
        results = (out.best[part], out.margin[part], out.off[part], out.free[part])
        given = None if labels is None else labels[part]
        if array_library(block) == "torch" and block.device.type in DEVICE_SCANS:
            *found, missing = _scan_rows_torch(block, v, given)
            for result, values in zip(results, found, strict=True):
                result[:] = values
            out.finite -= missing
            continue
        # native float32/64 for numba (no float16, no other byte order); sums in float64
        scores = to_host(block)
        scores = np.ascontiguousarray(scores, compute_dtype(scores.dtype))
        infinite = np.empty(stop - start, dtype=bool)
        scan_rows = _scan_rows if HAVE_NUMBA else _scan_rows_numpy
        # Without labels, each row is checked against its own best label: never off.
        scan_rows(scores, v, out.best[part] if given is None else given, *results, infinite)
        if infinite.any():  # only rows with a -inf score can lower the counts
            rows = np.flatnonzero(infinite)
            out.finite -= rows.size - finite_per_label(scores, rows)
    return out


def _scan_rows_torch(block: Any, v: np.ndarray, labels: np.ndarray | None) -> list[np.ndarray]:
    """:func:`_scan_rows` where a torch block lives, in float64: best, margin, off and free
    per row, and the rows without a finite score per label, the only values that cross to
    the host (a GPU rank's scores stay on its GPU: on masked scores nearly every row holds
    a -inf, and sending those rows to count them sent almost the whole block). ``labels``
    None: each row against its own best label, never off. Detached: numpy() refuses a
    result that records a graph (logits that require grad)."""
    import torch

    block = block.detach()
    missing = (block == -np.inf).sum(dim=0)
    z = block.to(torch.float64) + torch.from_numpy(v).to(block.device)
    top, best = z.max(dim=1)  # the first arg-max, as the host scans take
    lowest = z.min(dim=1).values
    given = best if labels is None else torch.from_numpy(labels).to(block.device)
    own = z.gather(1, given[:, None])[:, 0]
    z.scatter_(1, best[:, None], -np.inf)
    margin = top - z.max(dim=1).values
    off = (own == -np.inf) | (top - own > TIE_ROUNDING * (top.abs() + own.abs()))
    free = (lowest == top) & (lowest > -np.inf)
    return [t.cpu().numpy() for t in (best, margin, off, free, missing)]


def _rows_to_host(block: Any, rows: np.ndarray) -> np.ndarray:
    """The given rows of a block on the host: a GPU block sends only those rows."""
    if array_library(block) == "torch":
        import torch

        return to_host(block[torch.from_numpy(rows).to(block.device)])
    if array_library(block) == "cupy":
        import cupy

        with device_scope(block):  # the index on the block's GPU, not the current one
            return to_host(block[cupy.asarray(rows)])
    return np.asarray(block)[rows]


def _scan_rows_numpy(scores, v, labels, best, margin, off, free, infinite) -> None:
    """:func:`_scan_rows` in NumPy, for machines without numba (float64 block temporaries)."""
    z = scores.astype(np.float64)
    z += v
    rows = np.arange(z.shape[0])
    best[:] = z.argmax(axis=1)
    top = z[rows, best]
    own = z[rows, labels]
    with np.errstate(invalid="ignore"):  # inf - inf where the label's score is -inf
        off[:] = (own == -np.inf) | (top - own > TIE_ROUNDING * (np.abs(top) + np.abs(own)))
    lowest = z.min(axis=1)
    free[:] = (lowest == top) & (lowest > -np.inf)
    infinite[:] = lowest == -np.inf
    z[rows, best] = -np.inf
    margin[:] = top - z.max(axis=1)


@parallel_loop(fastmath=FAST)
def _scan_rows(scores, v, labels, best, margin, off, free, infinite):  # pragma: no cover
    """Per row of ``scores + v`` (float64): arg-max, margin to the runner-up, whether
    ``labels`` sits below the maximum by more than rounding, whether every label ties at the
    maximum, and whether a score is -inf. Rows in blocks, each row written once to a float64
    buffer so that the maxima and the first arg-max reduce in vector registers (as
    ``_transport_loops.best_labels`` does)."""
    n, n_labels = scores.shape
    for block in prange((n + SCAN_BLOCK_ROWS - 1) // SCAN_BLOCK_ROWS):
        z = np.empty(n_labels)
        for i in range(block * SCAN_BLOCK_ROWS, min(n, (block + 1) * SCAN_BLOCK_ROWS)):
            top = -np.inf
            lowest = np.inf
            for y in range(n_labels):
                w = np.float64(scores[i, y]) + v[y]
                z[y] = w
                top = fmax(top, w)
                lowest = fmin(lowest, w)
            arg = first_equal(z, top, n_labels) if top > -np.inf else 0
            best[i] = arg
            own = z[labels[i]]
            z[arg] = -np.inf
            second = -np.inf
            for y in range(n_labels):
                second = fmax(second, z[y])
            margin[i] = top - second if top > -np.inf else np.nan
            off[i] = own == -np.inf or top - own > TIE_ROUNDING * (abs(top) + abs(own))
            free[i] = lowest == top and lowest > -np.inf
            infinite[i] = lowest == -np.inf


def _proves_optimal(certificate: Certificate, v: np.ndarray, upper: np.ndarray) -> bool:
    """Feasible, with a gap within the pass's rounding or within float64 noise of the
    problem's scale.

    The second allowance covers what ``Certificate.rounding`` leaves out: the settled rows are
    checked to ``TIE_ROUNDING``, so a row may sit that far off its arg-max.
    """
    scale = abs(certificate.primal) + abs(certificate.dual) + float(upper @ np.abs(v))
    return certificate.feasible and certificate.gap <= certificate.rounding + NOISE * scale


def _too_many(rounds: int, n_contested: int, n_points: int, scan: _Scan, settled: np.ndarray,
              upper: np.ndarray, collective: Collective) -> RuntimeError:
    """The error for a contested set past its limit (every rank decides it together, so the
    counts below are one more sum on every rank). More Sinkhorn cannot help when most
    contested rows tie exactly with a runner-up (their margin is 0 whatever the prices), nor
    when most of them have one best label that may take few of them (repeated rows, a
    dominant cluster): a row settles only at its best label."""
    K = upper.size
    contested = np.zeros(K + 1)
    contested[:K] = np.bincount(scan.best[~settled], minlength=K)
    contested[K] = np.count_nonzero(~settled & (scan.margin == 0))
    contested = collective.sum(contested).astype(np.int64)
    tied, crowded = int(contested[K]), int(contested[:K].argmax())
    prefix = (f"balance='exact' across ranks: after {rounds} round{'s' * (rounds != 1)} with "
              f"{n_contested} of {n_points} rows contested")
    if 2 * tied > n_contested:
        return RuntimeError(
            f"{prefix}, {tied} of them tie exactly with a runner-up label (identical or "
            "constant scores, on all labels or only some): their margin under the Sinkhorn "
            "prices is 0, so only rows tied on every label can settle, and moving the rest to "
            "rank 0 would pass its limit. More Sinkhorn iterations do not separate them; "
            "gather the scores on one rank (balance='exact' in one process solves ties) or "
            "break the ties"
        )
    if 2 * contested[crowded] > n_contested:
        return RuntimeError(
            f"{prefix}, {contested[crowded]} of them have label {crowded} as their best, and it "
            f"may take {upper[crowded]}: rows settle only at their best label, so the rest "
            "(repeated rows, or a cluster far larger than its label's size) must all go to "
            "rank 0, which would pass its limit. More Sinkhorn iterations do not change their "
            "best label; gather the scores on one rank (balance='exact' in one process solves "
            "them)"
        )
    return RuntimeError(
        f"{prefix}, rows settled by their margin under the Sinkhorn prices "
        "still moved under the exact prices of the rest (or the rest could not meet the "
        "sizes alone), and moving more rows to rank 0 would pass its limit: the Sinkhorn "
        "prices are far from the exact ones. Solve Sinkhorn further (smaller tol, larger "
        "max_iter) or gather the scores on one rank"
    )


def _settle(scan: _Scan, eligible: np.ndarray, caps: np.ndarray, keep: int,
            collective: Collective) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This round's settled rows among ``eligible``, their labels, and the settled rows per
    label over all ranks (at most ``caps``, at most ``keep`` in all).

    Rows above the margin thresholds settle at their best label. Rows where every label ties
    exactly have margin 0 and never pass a threshold; left contested they could be every row
    (a zero-initialised head), far past rank 0's limit. Any label is an arg-max for them, so
    they fill the room the thresholds leave: the global positions of the ranks' tied rows, in
    rank order, are dealt out over the labels by :func:`_tie_quota`, the same way on every
    rank, with one sum of K + world size numbers. The check under the exact prices catches
    any of them that the reduced solve leaves below its row's maximum, as for any settled row.
    """
    K = caps.size
    settled = eligible & (scan.margin > _thresholds(scan, caps, keep, collective)[scan.best])
    tied = np.flatnonzero(eligible & ~settled & scan.free)
    local = np.zeros(K + collective.world_size)
    local[:K] = np.bincount(scan.best[settled], minlength=K)
    local[K + collective.rank] = tied.size
    total = collective.sum(local).astype(np.int64)
    counts, per_rank = total[:K], total[K:]
    quota = _tie_quota(caps - counts, min(keep - int(counts.sum()), int(per_rank.sum())))
    positions = int(per_rank[:collective.rank].sum()) + np.arange(tied.size)
    taken = tied[positions < quota.sum()]
    labels = scan.best.copy()
    labels[taken] = np.searchsorted(np.cumsum(quota), positions[:taken.size], side="right")
    settled[taken] = True
    return settled, labels, counts + quota


def _tie_quota(room: np.ndarray, n: int) -> np.ndarray:
    """How many of ``n`` exactly tied rows each label takes: at most its ``room``, in
    proportion to it (largest remainders first). The reduced problem then keeps every label's
    share of the room, so tied contested rows face sizes as balanced as the settled ones."""
    n = min(n, int(room.sum()))
    if n <= 0:
        return np.zeros_like(room)
    quota, remainders = np.divmod(room * n, room.sum())
    quota[np.argsort(-remainders, kind="stable")[:n - int(quota.sum())]] += 1
    return quota


def _thresholds(scan: _Scan, caps: np.ndarray, keep: int, collective: Collective) -> np.ndarray:
    """Per label, the margin above which its rows are settled.

    For label y: the smallest ``t >= 0`` such that at most ``caps[y]`` rows of best label y
    have a margin above ``t``, raised to the smallest ``t`` such that at most ``keep`` rows
    in all do. Found exactly by bisection over the bit patterns of non-negative float64
    (ordered like the numbers), one all-reduce of K + 1 counts per step, the same steps on
    every rank.
    """
    K = caps.size
    limits = np.append(caps, keep).astype(np.float64)
    low = np.full(K + 1, -1, dtype=np.int64)  # -1 stands for "below 0": always too many
    high = np.full(K + 1, np.float64(np.inf).view(np.int64))  # above +inf: never any
    while np.any(open_ := high - low > 1):
        middle = np.where(open_, low + (high - low) // 2, high)
        t = middle.view(np.float64)
        per_label = np.bincount(scan.best, weights=scan.margin > t[scan.best], minlength=K)
        total = np.count_nonzero(scan.margin > t[K])
        few = collective.sum(np.append(per_label, total)) <= limits
        high = np.where(few, middle, high)
        low = np.where(few, low, middle)
    t = high.view(np.float64)
    return np.maximum(t[:K], t[K])


def _read_rows(source: Source, chunk_rows: int, rows: np.ndarray, wire: np.dtype) -> np.ndarray:
    """The given rows (sorted indices) of this rank's scores, in ``wire`` on the host."""
    out = np.empty((rows.size, source.shape[1]), dtype=wire)
    taken = 0
    for start, stop, block in source.chunks(chunk_rows):
        mine = rows[taken:np.searchsorted(rows, stop)]
        if mine.size:
            out[taken:taken + mine.size] = _rows_to_host(block, mine - start)
            taken += mine.size
    return out


def _reduced_outcome(
    parts: list[np.ndarray],
    n_rows: int,
    lower: np.ndarray,
    upper: np.ndarray,
    v: np.ndarray,
    collective: Collective,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Rank 0 solves the ``n_rows`` contested rows (its ``parts``); every rank receives the
    outcome code, the prices and all contested labels (one sum to which only rank 0
    contributes)."""
    K = lower.size
    message = np.zeros(1 + K + n_rows)
    if collective.rank == 0:
        try:
            message[0], message[1:1 + K], message[1 + K:] = _solve_reduced(
                _joined(parts), lower, upper, v)
        except Exception as exc:  # the others learn of it in the sum below
            collective.fail(exc)
            message[:] = 0.0
    message = collective.sum(message)
    return float(message[0]), message[1:1 + K], message[1 + K:].astype(np.int64)


def _solve_reduced(
    S: np.ndarray, lower: np.ndarray, upper: np.ndarray, v: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    try:
        solution = _transport.solve_transport(
            S, lower, upper, v, use_numba=_transport_loops.HAVE_NUMBA
        )
    except _transport.InfeasibleError:
        return _INFEASIBLE, v, np.zeros(S.shape[0])
    return _SOLVED, solution.prices, solution.labels


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """The contested rows of every round in one float32 or float64 array (the exact solver's
    compiled loops have no float16). Joined in place, so a later round adds only its part."""
    dtype = compute_dtype(parts[0].dtype)
    if len(parts) > 1 or parts[0].dtype != dtype:
        parts[:] = [np.concatenate(parts, dtype=dtype)]
    return parts[0]


def _guarded(collective: Collective, stand_in: Any, work: Callable[..., Any], *args: Any) -> Any:
    """``work(*args)``, this rank's share of a step. If it fails, the stand-in, and the next
    reduction stops every rank (alone, the error is raised at once)."""
    try:
        return work(*args)
    except Exception as exc:
        collective.fail(exc)
        return stand_in


def _wire_dtype(dtype: str) -> np.dtype:
    """How contested rows of scores of ``dtype`` travel to rank 0: as they are, except
    bfloat16 (no NumPy type) as float32, which holds it exactly."""
    return np.dtype(np.float32) if dtype == "bfloat16" else np.dtype(dtype)
