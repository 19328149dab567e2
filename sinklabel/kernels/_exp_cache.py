"""Screened exponential tables for the Numba backend (``cache=True``).

At lam=25 only a few percent of a row's exponentials are within float range of the row's
largest one. A table keeps, per row of a chunk, just the entries that can matter for potentials
near the ones it was built at, so a solver pass costs O(kept entries) instead of O(N K) and
does not touch the scores. The backend-neutral wrapper that decides when a table is used,
repaired or rebuilt is ``sinklabel.exp_cache``; this module holds the tables and their loops.

What a table stores. Built at potentials ``b`` (the pass that builds it), with
``z_ij = lam * S_ij + b_j`` computed in float64, ``top_i = max_j z_ij``, and a kept set
``K_i = {j : z_ij >= top_i - w_i}`` where ``w_i`` is the window, halved (up to 8 times) until
at most ``cap`` entries remain; a row still too full (near-constant scores) keeps nothing and
is always bad (below):

- ``E_ij = exp(z_ij - top_i + shift)`` for ``j`` in ``K_i``, in the compute dtype, with the
  label index (uint16 when K <= 65535, else uint32); ``shift = 115 ln 2`` for float32 widens the
  window float32 holds from 87 to 166 (0 for float64);
- ``gap_i = top_i - max_{j not in K_i} z_ij`` (infinite when the row is kept whole), stored as
  ``floor_i = exp(shift + T - gap_i)``, and ``top_i - shift``.

Why a pass from the table is exact. For potentials ``f = b + g``, ``G = max g`` and
``w_j = exp(g_j - G)``, a row's sum of exponentials is
``exp(top_i - shift + G) * (sum_{K_i} E_ij w_j + D_i)`` where the dropped part
``D_i = sum_{j not in K_i} exp(z_ij - top_i + shift + g_j - G)`` is below
``K exp(shift - gap_i)`` because every ``g_j - G <= 0``. Let ``b_i = max_{K_i} E_ij w_j``.
When ``b_i >= floor_i``, ``D_i < K exp(-T) b_i``, and with ``T = ln K + ln(1/u)`` (``u`` the
compute dtype's unit roundoff: 2**-24 for float32, 2**-53 for float64) that is below one
rounding unit of the row sum: the row's log-sum-exp and its softmax are what the uncached
kernel computes, to its own rounding, and no dropped label can be the row's arg-maximum (it is
more than ``T`` below the kept maximum). A row that fails the test is "bad": the caller
computes it from the raw scores, with the uncached kernel's own loops run on the listed rows
in place (``sweep_rows``, ``best_rows``). At the build potentials every row with
``gap_i >= T`` passes; only rows that the ``cap`` cut short can fail there.

The window. A table built after a failure at a row distance ``need = max_i (shift - ln b_i)``
(how far the potentials moved, for the rows they moved most) gets a window of
``T + max(T, 2 need)``, so a step as large again still passes; the first table gets ``2 T``.
Windows stop at what the dtype represents (166 for float32, 700 for float64).

Threads: a build runs on the backend's row tasks (2 MiB of scores each), a pass on tasks of
about 2**18 kept entries; per-task sums are added in task order, so results do not depend on
the thread count.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, types
from numba.extending import overload

from .._simd import FAST, W, block_keep, fmax
from ._base import compute_dtype
from .numba import (
    _UNDERFLOW,
    ChunkRows,
    NumbaKernel,
    _exp,
    _prefetch_row,
    _reads_in_place,
    _row_buffer,
    _row_ranges,
    _typed,
    _widen,
)
from .numba import _best_rows as _raw_best_rows
from .numba import _sweep_rows as _raw_sweep_rows

#: Stored exponentials are ``exp(z - top + shift)``: 2**115 for float32 (the vectorised float32
#: exp takes arguments <= 0, so it is applied to ``z - top`` and scaled where the sum is
#: positive); windows stop where the dtype stays normal.
_SCALE = {np.dtype(np.float32): 2.0**115, np.dtype(np.float64): 1.0}
_MAX_WINDOW = {np.dtype(np.float32): 166.0, np.dtype(np.float64): 700.0}
#: Unit roundoff of the compute dtype.
_ROUNDOFF = {np.dtype(np.float32): 2.0**-24, np.dtype(np.float64): 2.0**-53}
#: A row whose largest kept term (in table units) falls below this is bad whatever its gap:
#: its sum would lose precision to float64's subnormal range.
_TINY = 1e-250
#: Per row: its offset into the entries (int64), ``top_i - shift`` and ``floor_i`` (float64).
ROW_BYTES = 24
#: Kept entries per pass task; rows weigh this many entries more (the row's logarithm).
_TASK_ENTRIES = 1 << 18
_ROW_WEIGHT = 16


def label_dtype(n_labels: int) -> np.dtype:
    """Unsigned, so the loops need no wraparound checks on label indices."""
    return np.dtype(np.uint16) if n_labels <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


def entry_bytes(n_labels: int, dtype: str) -> int:
    """Bytes per kept entry: its exponential and its label."""
    return compute_dtype(dtype).itemsize + label_dtype(n_labels).itemsize


def tolerance(n_labels: int, dtype: np.dtype) -> float:
    """``T = ln K + ln(1/u)``: dropped terms below ``exp(-T)`` of the row's largest add up to
    less than one rounding unit of the row sum."""
    return math.log(max(1, n_labels)) - math.log(_ROUNDOFF[dtype])


# ---------------------------------------------------------------------------------------------
# Loops
# ---------------------------------------------------------------------------------------------

# The build runs with ``FAST``: it may reassociate (its reductions vectorise) but keeps -inf
# scores legal (no ``ninf``); the gaps and the kept exponentials come from the same computed
# ``z``, which is all the bound needs.
#: A row whose window holds more than ``cap`` entries gets the window halved, this many times
#: at most; a row still too full (near-constant scores) is stored empty and always repaired.
_MAX_HALVINGS = 8


def _scaled_exp(x, shift, scale):
    """``exp(x + shift)`` for ``x <= 0`` in the table's dtype (``scale = exp(shift)``)."""


@overload(_scaled_exp)
def _scaled_exp_overload(x, shift, scale):
    if x == types.float32:
        def f32(x, shift, scale):
            # Both halves vectorise; the float32 exp takes arguments <= 0 only.
            shifted = x + np.float32(shift)
            low = _exp(min(shifted, np.float32(0.0)))
            high = _exp(x) * np.float32(scale)
            return low if shifted <= np.float32(0.0) else high
        return f32
    # float64 tables have shift = 0 (scale 1): the argument is x <= 0, which the vectorised
    # float64 exp takes.
    return lambda x, shift, scale: _exp(x + shift)


@njit(fastmath=FAST, nogil=True, cache=True)
def _build_rows(buf, lo, hi, k, ld, f, lam, window, scale, tol, cap,
                values, labels, offsets, top, floor):
    """Fill the table rows of raw rows lo..hi-1 (written from index 0); returns entries kept."""
    z = np.empty(k, np.float64)
    scratch = np.empty(W, np.float64)
    live = np.empty(k // W + 1, np.int64)
    full = k - k % W
    lam64 = np.float64(lam)
    shift = math.log(scale)
    kept_total = 0
    for r in range(hi - lo):
        row = buf[(lo + r) * ld:(lo + r) * ld + k]
        m = -np.inf
        for j in range(k):
            value = lam64 * np.float64(_widen(row[j])) + f[j]
            z[j] = value
            m = fmax(m, value)
        _prefetch_row(buf, (lo + r + 1) * ld, k)
        width = window
        count = _count_at_least(z, m - width)
        halvings = 0
        while count > cap and halvings < _MAX_HALVINGS:
            width *= 0.5
            count = _count_at_least(z, m - width)
            halvings += 1
        offsets[r] = kept_total
        top[r] = m - shift
        if count > cap:
            floor[r] = np.inf
            continue
        cut = m - width
        dropped = -np.inf
        for j in range(k):
            value = z[j]
            dropped = fmax(dropped, value - np.float64(value >= cut) * 1e300)
        floor[r] = math.exp(shift + tol - (m - dropped))
        # Blocks of W holding a kept entry, found without branches, then their entries.
        n_live = 0
        for b in range(0, full, W):
            live[n_live] = b
            n_live += block_keep(z, b, cut, scratch, 0)
        # Their entries, without branches either: every label is written, the kept ones
        # advance (``labels`` has W spare slots for the last writes).
        first = kept_total
        for q in range(n_live):
            for j in range(live[q], live[q] + W):
                labels[kept_total] = j
                kept_total += np.int64(z[j] >= cut)
        for j in range(full, k):
            labels[kept_total] = j
            kept_total += np.int64(z[j] >= cut)
        # The exponentials in a second, branch-free loop over contiguous arguments (staged in
        # ``values`` itself): on a slice, whose indices cannot wrap around, it vectorises.
        row_values = values[first:kept_total]
        row_labels = labels[first:kept_total]
        for q in range(row_values.size):
            row_values[q] = values.dtype.type(z[row_labels[q]] - m)
        for q in range(row_values.size):
            row_values[q] = _scaled_exp(row_values[q], shift, scale)
    offsets[hi - lo] = kept_total
    return kept_total


@njit(fastmath=FAST, nogil=True, cache=True)
def _count_at_least(z, cut):
    count = 0
    for j in range(z.size):
        count += np.int64(z[j] >= cut)
    return count


# No fastmath in the passes: their sums are the ones the bound is about, and stay in order.


@njit(nogil=True, cache=True)
def _sweep_rows(values, labels, offsets, top, floor, lo, hi, w, acc, bad):
    """Softmax masses of the good rows lo..hi-1 into ``acc[:k]``, their log-sum-exp (less
    ``G``) into ``acc[k]`` and their count into ``acc[k + 1]``; bad rows are listed in ``bad``.
    Returns the number of bad rows and the smallest largest term of any row."""
    k = w.size
    lse = 0.0
    n_bad = 0
    smallest = np.inf
    for r in range(lo, hi):
        # Slices and unsigned labels: no index can wrap around, so no checks in the loops.
        row_values = values[offsets[r]:offsets[r + 1]]
        row_labels = labels[offsets[r]:offsets[r + 1]]
        total = 0.0
        largest = 0.0
        for q in range(row_values.size):
            term = np.float64(row_values[q]) * w[row_labels[q]]
            total += term
            largest = max(largest, term)
        if floor[r] < np.inf:  # rows kept empty say nothing about how far f moved
            smallest = min(smallest, largest)
        if not (largest >= floor[r] and largest >= _TINY):
            bad[n_bad] = r
            n_bad += 1
            continue
        weight = 1.0 / total
        for q in range(row_values.size):
            j = row_labels[q]
            acc[j] += np.float64(row_values[q]) * w[j] * weight
        lse += top[r] + math.log(total)
    acc[k] += lse
    acc[k + 1] += hi - lo - n_bad
    return n_bad, smallest


@njit(nogil=True, cache=True)
def _best_rows(values, labels, offsets, top, floor, lo, hi, w, best, best_labels, bad):
    """Per good row, its largest ``log(E w) + top`` (less ``G``) and the first label reaching
    it; bad rows are listed in ``bad``. Returns the number of bad rows."""
    n_bad = 0
    for r in range(lo, hi):
        row_values = values[offsets[r]:offsets[r + 1]]
        row_labels = labels[offsets[r]:offsets[r + 1]]
        largest = 0.0
        label = -1
        for q in range(row_values.size):
            term = np.float64(row_values[q]) * w[row_labels[q]]
            if term > largest:
                largest = term
                label = row_labels[q]
        if not (largest >= floor[r] and largest >= _TINY):
            bad[n_bad] = r
            n_bad += 1
            continue
        best[r] = top[r] + math.log(largest)
        best_labels[r] = label
    return n_bad


@njit(nogil=True, cache=True)
def _sweep_listed(buf, rows, k, ld, f, lam, underflow, acc):
    """The uncached kernel's pass on the listed rows of a raw chunk, read in place."""
    for i in rows:
        _raw_sweep_rows(buf, i, i + 1, k, ld, f, lam, underflow, acc)


@njit(nogil=True, cache=True)
def _best_listed(buf, rows, k, ld, f, lam, top, labels):
    """The uncached kernel's row maxima and labels of the listed rows, read in place."""
    for i in rows:
        _raw_best_rows(buf, i, i + 1, k, ld, f, lam, top, labels)


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


class TablePass(NamedTuple):
    """A pass over one table: the good rows' masses and log-sum-exp total, the bad rows (to
    compute from the raw scores), and how far the potentials moved (``need``)."""

    mass: np.ndarray
    lse: float
    bad: np.ndarray
    need: float


class ExpTable:
    """The kept exponentials of one chunk, built at potentials ``f`` (see the module notes)."""

    def __init__(self, tables: NumbaExpTables, f: np.ndarray, lam: float, values: np.ndarray,
                 labels: np.ndarray, offsets: np.ndarray, top: np.ndarray, floor: np.ndarray,
                 shift: float):
        self.tables = tables
        self.f = f
        self.lam = lam
        self.values, self.labels, self.offsets = values, labels, offsets
        self.top, self.floor, self.shift = top, floor, shift
        weights = offsets + _ROW_WEIGHT * np.arange(offsets.size)
        cuts = np.searchsorted(weights, np.arange(_TASK_ENTRIES, weights[-1], _TASK_ENTRIES))
        bounds = np.unique(np.concatenate([[0], cuts, [top.size]]))
        self.tasks = list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))

    @property
    def n_entries(self) -> int:
        return int(self.values.size)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.f, self.values, self.labels, self.offsets, self.top,
                                      self.floor))

    def sweep_lse(self, f: np.ndarray) -> TablePass:
        """Label masses and log-sum-exp total of the good rows at potentials ``f``."""
        w, g_max = self._weights(f)
        k = w.size
        acc = np.zeros((len(self.tasks), k + 2))
        bad = np.empty(self.top.size, dtype=np.int64)
        results = [(0, np.inf)] * len(self.tasks)

        def work(t: int, lo: int, hi: int) -> None:
            results[t] = _sweep_rows(self.values, self.labels, self.offsets, self.top,
                                     self.floor, lo, hi, w, acc[t], bad[lo:hi])

        self.tables.run(work, [(t, lo, hi) for t, (lo, hi) in enumerate(self.tasks)])
        total = acc.sum(axis=0)
        smallest = min((r[1] for r in results), default=np.inf)
        need = self.shift - math.log(smallest) if smallest > 0 else np.inf
        return TablePass(total[:k], float(total[k] + g_max * total[k + 1]),
                         self._bad_rows(bad, [r[0] for r in results]), need)

    def best(self, f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row maxima of ``lam * S + f`` and their labels for the good rows, and the bad rows
        (whose entries in the first two the caller fills from the raw scores)."""
        w, g_max = self._weights(f)
        n = self.top.size
        best = np.zeros(n)  # bad rows stay 0 until repaired: no garbage to cast
        best_labels = np.empty(n, dtype=np.int64)
        bad = np.empty(n, dtype=np.int64)
        counts = [0] * len(self.tasks)

        def work(t: int, lo: int, hi: int) -> None:
            counts[t] = _best_rows(self.values, self.labels, self.offsets, self.top, self.floor,
                                   lo, hi, w, best, best_labels, bad[lo:hi])

        self.tables.run(work, [(t, lo, hi) for t, (lo, hi) in enumerate(self.tasks)])
        best += g_max
        return best.astype(self.values.dtype), best_labels, self._bad_rows(bad, counts)

    def _weights(self, f: np.ndarray) -> tuple[np.ndarray, float]:
        g = np.asarray(f, dtype=np.float64) - self.f
        g_max = float(g.max())
        return np.exp(g - g_max), g_max

    def _bad_rows(self, bad: np.ndarray, counts: list[int]) -> np.ndarray:
        parts = [bad[lo:lo + n] for (lo, _), n in zip(self.tasks, counts, strict=True) if n]
        return np.concatenate(parts) if parts else bad[:0]


def _listed_rows(block: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The block and its listed rows, or, for a block the kernels cannot read in place, only
    the listed rows copied out (and their indices there): a few repaired rows of a
    Fortran-ordered or byte-swapped block no longer cost a copy of all of it."""
    if _reads_in_place(block):
        return block, rows
    return np.ascontiguousarray(block[rows]), np.arange(rows.size)


def _listed_tasks(rows: np.ndarray, n_labels: int) -> list[np.ndarray]:
    """The listed rows in tasks of the backend's size (about 2 MiB of scores)."""
    size = max(1, (2 << 20) // max(1, 4 * n_labels))
    return [rows[i:i + size] for i in range(0, rows.size, size)]


class NumbaExpTables:
    """Builds :class:`ExpTable` s from raw chunks on the Numba kernel's threads."""

    def __init__(self, kernel: NumbaKernel):
        self.run = kernel._threads.run
        self.chunk_rows = kernel.chunk_rows

    def sweep_rows(self, block: np.ndarray, rows: np.ndarray, f: np.ndarray,
                   lam: float) -> tuple[np.ndarray, float]:
        """The uncached ``sweep_lse`` of the rows ``rows`` of a raw chunk (the rows a table
        could not answer), read in place where the kernels can."""
        block, rows = _listed_rows(block, rows)
        buf, ld, dtype = _row_buffer(block)
        k = block.shape[1]
        f_typed, lam_typed = _typed(block, f, lam)
        underflow = dtype.type(_UNDERFLOW[dtype])
        tasks = _listed_tasks(rows, k)
        acc = np.zeros((len(tasks), k + 1))
        self.run(_sweep_listed, [(buf, part, k, ld, f_typed, lam_typed, underflow, acc[t])
                                 for t, part in enumerate(tasks)])
        total = acc.sum(axis=0)
        return total[:k], float(total[k])

    def best_rows(self, block: np.ndarray, rows: np.ndarray, f: np.ndarray, lam: float,
                  top: np.ndarray, labels: np.ndarray) -> None:
        """The uncached ``best`` of the rows ``rows`` of a raw chunk, written into ``top`` and
        ``labels`` at those rows."""
        listed, at = _listed_rows(block, rows)
        buf, ld, _ = _row_buffer(listed)
        k = block.shape[1]
        f_typed, lam_typed = _typed(listed, f, lam)
        copied = at is not rows  # then computed on their own, and put in place after
        into = (np.empty_like(top, shape=at.size), np.empty_like(labels, shape=at.size)
                ) if copied else (top, labels)
        self.run(_best_listed, [(buf, part, k, ld, f_typed, lam_typed, *into)
                                for part in _listed_tasks(at, k)])
        if copied:
            top[rows], labels[rows] = into

    def build(self, block: np.ndarray, f: np.ndarray, lam: float, need: float,
              cap: int) -> ExpTable:
        """The table of a raw chunk at potentials ``f``, with a window for potentials that move
        ``need`` (0 for a first build), at most ``cap`` entries per row."""
        chunk_rows = ChunkRows(block)
        dtype = chunk_rows.dtype
        n, k = block.shape
        tol = tolerance(k, dtype)
        window = min(_MAX_WINDOW[dtype], tol + max(tol, 2.0 * need))
        scale = _SCALE[dtype]
        f = np.array(f, dtype=np.float64)
        ranges = _row_ranges(n, k)
        parts: list[tuple] = [()] * len(ranges)

        def work(t: int, lo: int, hi: int) -> None:
            rows = hi - lo
            size = rows * min(cap, k)
            values = np.empty(size, dtype)
            labels = np.empty(size + W, label_dtype(k))
            offsets = np.empty(rows + 1, np.int64)
            top = np.empty(rows)
            floor = np.empty(rows)
            buf, first, last, ld, _ = chunk_rows.task(lo, hi)
            used = _build_rows(buf, first, last, k, ld, f, float(lam), window, scale, tol,
                               min(cap, k), values, labels, offsets, top, floor)
            parts[t] = (values[:used].copy(), labels[:used].copy(), offsets, top, floor)

        self.run(work, [(t, lo, hi) for t, (lo, hi) in enumerate(ranges)])
        starts = np.cumsum([0] + [p[2][-1] for p in parts])  # a chunk has at least one row
        offsets = np.concatenate([p[2][:-1] + s for p, s in zip(parts, starts, strict=False)]
                                 + [starts[-1:]])

        def joined(column: int) -> np.ndarray:
            return np.concatenate([part[column] for part in parts])

        return ExpTable(self, f, float(lam), joined(0), joined(1), offsets, joined(3),
                        joined(4), math.log(scale))

    @staticmethod
    def max_bytes(n_rows: int, n_labels: int, dtype: str, cap: int, n_chunks: int) -> int:
        """The most memory tables of ``n_rows`` rows in ``n_chunks`` chunks can take with at
        most ``cap`` entries per row."""
        per_chunk = 8 * (n_labels + 1)  # the build potentials and the closing row offset
        return (n_rows * (ROW_BYTES + min(cap, n_labels) * entry_bytes(n_labels, dtype))
                + n_chunks * per_chunk)
