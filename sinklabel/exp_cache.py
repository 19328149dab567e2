"""``cache=True``: keep the exponentials that matter between passes, and stop reading the scores.

At lam=25 most of ``exp(lam * S + f)`` is negligible next to each row's largest term: on
classifier-like scores a row has a handful of entries that matter. The first pass over a
chunk builds a table of those entries (a sparse, row-shifted ``exp``); later passes are
computed from the table in O(kept entries), without reading the scores (for a callable source,
without calling it). The table knows, row by row, whether it can answer exactly for the
potentials asked for (see ``sinklabel/kernels/_exp_cache.py`` for the bound): rows it cannot
answer ("bad" rows) are computed from the raw scores by the uncached kernel. Every row's
answer is therefore the uncached kernel's, to the compute dtype's rounding; only its cost
varies. A label's total mass is exact to one rounding unit of the rows' sums, not relative to
itself: a label whose mass is below that (a far warm start, a starved label) may come out as
0 or a different tiny number, and the solver's Sinkhorn step (the log of that mass) or its
revival of empty labels then takes another path, to potentials that meet the same tolerance
in a different number of iterations.

When to rebuild. A table is rebuilt at the potentials of the pass (from the raw chunk, with a
window wide enough for the move that broke it) when more than ``REPAIR_SHARE`` of its rows are
bad in one pass, or when the rows it has repaired since it was built add up to
``STALE_SHARE`` of the chunk. A chunk whose fresh table fails for too many rows at its own
potentials (rows too flat for the cap, e.g. small lam) is left uncached.

The design is a pair of wrappers, so the solver runs unchanged:

- :class:`CachedSource` yields, for each row range of the inner source, a :class:`CachedChunk`
  handle: the row range, the chunk's table slot, and the raw block on demand. Only the blocks
  that handles ask for are read (a source without ``random_access`` is iterated up to them,
  and one past its last block when that was read, so that its end is still checked), so a
  pass answered from tables reads nothing. Each of its passes counts as one pass of the
  checking layer below, read or not, so a :class:`~sinklabel.sources.SourceError` names the
  solver's pass.
- :class:`CachedKernel` answers ``sweep_lse`` (and ``sweep``) and ``best`` from a chunk's
  table, repairing bad rows from the raw block in place; ``slack``, ``soft`` and ``gather``
  need every entry and go to the inner kernel on the raw block. Plain arrays pass straight
  through.

Memory: a table row holds at most ``cap`` entries, so the tables never exceed
``N * (24 + cap * entry bytes)`` (plus a K-vector per chunk): 6 bytes per entry for float32
scores with K <= 65535. By default ``cap = max(32, K // 8)`` (at most K); with
``memory_limit`` the chunks get at most half of the budget and ``cap`` is what the rest holds,
or a ValueError when it cannot hold one entry per row. A row cut short by the cap is still
exact: it just fails the table's test more often and is computed from the raw scores.

Only some backends have tables (``sinklabel.kernels.exp_tables``; today Numba, and torch on
CPU tensors through Numba's tables). A backend's table builder provides ``build``,
``max_bytes``, ``sweep_rows``/``best_rows`` (the uncached operations on listed rows of a raw
chunk, for repairs) and ``chunk_rows``; its tables provide ``lam``,
``nbytes``, ``n_entries``, ``sweep_lse(f)`` and ``best(f)``, which name their bad rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._budget import block_state_bytes, budget_rows, bytes_per_row, fixed_bytes
from .kernels import Kernel, exp_tables
from .kernels._base import WrappingKernel
from .sources import Array, Source, parse_memory
from .sources._base import WrappingSource
from .sources.checked import CheckedSource, end_pass

#: A chunk whose table fails for at most this share of its rows is repaired row by row from
#: the raw scores; beyond it the table is rebuilt at the new potentials (a rebuild costs about
#: an uncached pass over the chunk, a repaired row about an uncached row).
REPAIR_SHARE = 1 / 4
#: A table that has repaired this share of its chunk's rows since it was built is rebuilt at
#: its next failure: a repaired row costs about what rebuilding a row costs, so the repairs
#: have paid for a rebuild (on peaked scores at N=1e5 this halved the cached solve's time).
STALE_SHARE = 1


def default_cap(n_labels: int) -> int:
    """Entries a table row keeps at most without a memory budget."""
    return min(n_labels, max(32, n_labels // 8))


def table_cap(source: Source, kernel: Kernel, rows: int,
              memory_limit: int | str | None, exact_bytes: int = 0) -> int:
    """Entries per row the tables may keep: the default, or fewer where ``memory_limit``
    requires (what it leaves after the chunks and, for a streamed source, their
    fingerprints). Raises ValueError for a backend without tables, or a budget that cannot
    hold one entry per row, naming the least one that does (``exact_bytes``: the exact
    solver's, which the chunks were sized to leave room for)."""
    tables = exp_tables(kernel)
    n, k = source.shape
    cap = default_cap(k)
    if memory_limit is None or n == 0:
        return cap
    budget = parse_memory(memory_limit)
    left = _left_for_tables(source, kernel, rows, budget, exact_bytes)
    chunks = -(-n // rows)

    def fits(c: int) -> bool:
        return tables.max_bytes(n, k, source.dtype, c, chunks) <= left

    low, high = 0, cap  # the largest cap that fits: max_bytes grows with it
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    if low < 1:
        need = tables.max_bytes(n, k, source.dtype, 1, chunks)
        least = _least_budget(source, kernel, tables, exact_bytes, 2 * need)
        raise ValueError(
            f"memory_limit={budget} bytes leaves {max(0, left)} bytes for cache=True after the "
            f"chunks and per-point state, less than the {need} bytes of one cached entry per "
            f"row; memory_limit={least} bytes would hold it, or pass cache=False"
        )
    return low


def _left_for_tables(source: Source, kernel: Kernel, rows: int, budget: int,
                     exact_bytes: int) -> int:
    """What ``budget`` leaves the tables after the chunks of ``rows`` rows, the per-point
    and per-label state, the exact solver's arrays (allocated while the tables are still
    held) and, for a streamed source, its fingerprint per block."""
    n, k = source.shape
    left = budget - fixed_bytes(n, k) - exact_bytes - rows * bytes_per_row(source, kernel)
    if not source.in_memory:  # its checking layer keeps a fingerprint per block
        left -= block_state_bytes(n, rows)
    return left


def _least_budget(source: Source, kernel: Kernel, tables: Any, exact_bytes: int,
                  enough: int) -> int:
    """The least ``memory_limit`` whose chunks leave one cached entry per row, at most
    ``enough``. A budget sizes the chunks too, and the refused one's many small chunks cost
    more table bytes than a larger budget's few: twice their tables' size was named, 27x the
    least at 50,000 x 100 (3.1 MB would do)."""
    n, k = source.shape

    def holds(budget: int) -> bool:
        try:
            rows = budget_rows(budget, source, kernel, tables, cache=True,
                               exact_bytes=exact_bytes)
        except ValueError:
            return False
        need = tables.max_bytes(n, k, source.dtype, 1, -(-n // rows))
        return need <= _left_for_tables(source, kernel, rows, budget, exact_bytes)

    while not holds(enough):  # twice the tables of the smallest chunks: held in every case
        enough *= 2             # measured, doubled again should it not be
    low, high = 1, enough
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if holds(middle) else (middle + 1, high)
    return low


def with_exp_cache(source: Source, kernel: Kernel, rows: int,
                   cap: int) -> tuple[CachedSource, CachedKernel]:
    """``source`` and ``kernel`` behind a fresh cache of at most ``cap`` entries per row."""
    tables = exp_tables(kernel)
    n, k = source.shape
    budget = tables.max_bytes(n, k, source.dtype, cap, -(-n // rows))
    cache = ExpCache(tables, cap, budget)
    return CachedSource(source, cache), CachedKernel(kernel)


@dataclass
class _Slot:
    """One chunk's table, what the last failed pass asked of it, the rows it has repaired
    since it was built beyond those it could never answer (``bad_when_built``: rows the cap
    cut short), and whether the chunk is beyond caching (too many rows fail even at the
    table's own potentials)."""

    table: Any = None
    need: float = 0.0
    unusable: bool = False
    repaired: int = 0
    bad_when_built: int = 0


class ExpCache:
    """The tables of one solve by row range, within ``budget`` bytes, and what they did.

    Counters of chunk passes: ``builds`` (a table built from the raw chunk, which then
    answered), ``table_passes`` (answered from an existing table), ``raw_passes`` (the raw
    chunk without a table); ``repaired_rows``: rows a table could not answer, computed from
    the raw scores.
    """

    def __init__(self, tables: Any, cap: int, budget: int):
        self.tables = tables
        self.cap = cap
        self.budget = budget
        self.nbytes = 0
        self.builds = 0
        self.table_passes = 0
        self.raw_passes = 0
        self.repaired_rows = 0
        self._slots: dict[tuple[int, int], _Slot] = {}

    def slot(self, start: int, stop: int) -> _Slot:
        return self._slots.setdefault((start, stop), _Slot())

    @property
    def n_entries(self) -> int:
        """Entries kept in all tables."""
        return sum(s.table.n_entries for s in self._slots.values() if s.table is not None)

    def rebuild(self, slot: _Slot, block: Array, f: np.ndarray, lam: float) -> Any:
        """A new table for ``slot`` at ``f``, or None where the budget cannot take it."""
        self.drop(slot)
        slot.repaired = 0
        table = self.tables.build(block, f, lam, slot.need, self.cap)
        if self.nbytes + table.nbytes > self.budget:
            # The cap keeps every table within the budget; were it exceeded, the chunk would
            # stay uncached rather than be rebuilt on every pass.
            slot.unusable = True
            return None
        slot.table = table
        self.nbytes += table.nbytes
        return table

    def drop(self, slot: _Slot) -> None:
        if slot.table is not None:
            self.nbytes -= slot.table.nbytes
            slot.table = None


class CachedChunk:
    """A chunk of a :class:`CachedSource`: its rows and table slot; ``raw()`` reads the block."""

    def __init__(self, start: int, stop: int, n_labels: int, cache: ExpCache, slot: _Slot,
                 reader: _BlockReader):
        self.start, self.stop = start, stop
        self.shape = (stop - start, n_labels)
        self.cache, self.slot = cache, slot
        self._reader = reader

    def raw(self) -> Array:
        """The raw scores of these rows (valid until the next chunk is requested)."""
        return self._reader.read(self.start, self.stop)


class _BlockReader:
    """Reads the inner source's blocks that are asked for: each alone where the source has
    random access, otherwise in order, starting the source only when a block is asked for."""

    def __init__(self, source: Source, rows: int):
        self.source, self.rows = source, rows
        self._blocks: Iterator | None = None
        self._current: tuple[int, Array] | None = None
        self._read_to = 0  # the end of the last block ``_blocks`` yielded

    def read(self, start: int, stop: int) -> Array:
        if self._current is not None and self._current[0] == start:
            return self._current[1]
        if self.source.random_access:
            self._current = (start, self.source.read(start, stop))
            return self._current[1]
        if self._blocks is None:
            self._blocks = iter(self.source.chunks(self.rows))
        for got_start, got_stop, block in self._blocks:
            self._read_to = got_stop
            if got_start == start:
                self._current = (start, block)
                return block
            if got_start > start:
                break
        raise RuntimeError(f"the scores' rows [{start}, {stop}) were not found in their source")

    def close(self) -> None:
        """End the pass; one read to its last block lets the source check its end."""
        blocks, self._blocks, self._current = self._blocks, None, None
        if blocks is not None:
            end_pass(blocks, read_to_end=self._read_to >= self.source.shape[0])


class CachedSource(WrappingSource):
    """The inner source's row ranges as :class:`CachedChunk` handles (see the module notes)."""

    def __init__(self, inner: Source, cache: ExpCache):
        super().__init__(inner)
        self.cache = cache
        # The cache reads nothing of its own: a handle reads the inner block, or nothing.
        self.in_memory = inner.in_memory

    def chunks(self, rows: int) -> Iterator[tuple[int, int, CachedChunk]]:
        reader = _BlockReader(self.inner, rows)
        with self._solver_pass():
            try:
                for start, stop in self.inner.row_ranges(rows):
                    slot = self.cache.slot(start, stop)
                    yield start, stop, CachedChunk(start, stop, self.shape[1], self.cache,
                                                   slot, reader)
            finally:
                reader.close()

    def _solver_pass(self) -> AbstractContextManager:
        """A checking layer below counts this pass as one of its own, whether its blocks are
        read or not, so that its errors name the solver's pass."""
        if isinstance(self.inner, CheckedSource):
            return self.inner.solver_pass()
        return nullcontext()


class CachedKernel(WrappingKernel):
    """The inner kernel, answering from a :class:`CachedChunk`'s table where it can."""

    def sweep_lse(self, chunk: Array, f: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
        if not isinstance(chunk, CachedChunk):
            return self.inner.sweep_lse(chunk, f, lam)
        cache, slot = chunk.cache, chunk.slot
        table = _table(chunk, lam)
        if table is not None:
            found = table.sweep_lse(f)
            rows = chunk.shape[0]
            moved = max(0, found.bad.size - slot.bad_when_built)
            if (found.bad.size <= REPAIR_SHARE * rows
                    and slot.repaired + moved <= STALE_SHARE * rows):
                cache.table_passes += 1
                slot.repaired += moved
                return self._repaired(chunk, found, f, lam)
            slot.need = found.need
        block = chunk.raw()
        if not slot.unusable:
            table = cache.rebuild(slot, block, f, lam)
            if table is not None:
                found = table.sweep_lse(f)
                if found.bad.size <= REPAIR_SHARE * chunk.shape[0]:
                    cache.builds += 1  # counted once the table has answered
                    slot.bad_when_built = int(found.bad.size)
                    return self._repaired(chunk, found, f, lam)
                cache.drop(slot)  # fails even where it was built: the rows are too flat
                slot.unusable = True
        cache.raw_passes += 1
        return self.inner.sweep_lse(block, f, lam)

    def best(self, chunk: Array, f: np.ndarray, lam: float) -> tuple[Array, Array]:
        if not isinstance(chunk, CachedChunk):
            return self.inner.best(chunk, f, lam)
        table = _table(chunk, lam)
        if table is None:
            return self.inner.best(chunk.raw(), f, lam)
        top, labels, bad = table.best(f)
        if bad.size > REPAIR_SHARE * chunk.shape[0]:
            return self.inner.best(chunk.raw(), f, lam)
        if bad.size:
            chunk.cache.tables.best_rows(chunk.raw(), bad, f, lam, top, labels)
        return top, labels

    def slack(self, chunk: Array, f: np.ndarray, lam: float) -> np.ndarray:
        return self.inner.slack(_raw(chunk), f, lam)

    def soft(self, chunk: Array, f: np.ndarray, lam: float) -> Array:
        return self.inner.soft(_raw(chunk), f, lam)

    def gather(self, chunk: Array, labels: Array) -> np.ndarray:
        return self.inner.gather(_raw(chunk), labels)

    def to_numpy(self, x: Array) -> np.ndarray:
        return self.inner.to_numpy(x)

    def empty_labels(self, n: int, like: Array | None) -> Array:
        return self.inner.empty_labels(n, None if isinstance(like, CachedChunk) else like)

    def empty_rows(self, n: int, like: Array) -> Array:
        return self.inner.empty_rows(n, like)

    def _repaired(self, chunk: CachedChunk, found: Any, f: np.ndarray,
                  lam: float) -> tuple[np.ndarray, float]:
        """A table's pass, with its bad rows computed from the raw scores."""
        mass, lse = found.mass, found.lse
        if found.bad.size:
            extra_mass, extra_lse = chunk.cache.tables.sweep_rows(chunk.raw(), found.bad, f, lam)
            mass, lse = mass + extra_mass, lse + extra_lse
            chunk.cache.repaired_rows += int(found.bad.size)
        return mass, lse


def _table(chunk: CachedChunk, lam: float) -> Any:
    table = chunk.slot.table
    return table if table is not None and table.lam == lam else None


def _raw(chunk: Array) -> Array:
    return chunk.raw() if isinstance(chunk, CachedChunk) else chunk
