"""Memory budgets: ``memory_limit="1GB"`` becomes a number of rows per block.

A solve's extra memory is O(rows x K + N + K): the block the source materialises and the
kernel's temporaries grow with the block; the labels (int64, written block by block into
one vector) with N, and a streamed source's fingerprints with the number of blocks; the
potentials and accumulators with K. The budget is that extra memory, not counting the scores
themselves when they are already in memory or memory-mapped.
"""

from __future__ import annotations

from typing import Protocol

from ._validation import check_positive
from .kernels import Kernel
from .sources._base import Source, itemsize

#: Bytes per row of the solve that do not depend on K: the row's label (int64) in the label
#: vector, and again in its host copy for the label counts.
BYTES_PER_POINT = 16
#: Bytes per label: L-BFGS's buffer of curvature pairs (4 x 10 float64 K-vectors), the
#: potentials, accumulators, target and a few more float64 K-vectors.
BYTES_PER_LABEL = 512
#: Bytes per block that a streamed source's checking layer keeps for the whole solve: the
#: block's fingerprint (38 float64 values) and the entries that hold it, measured at up to
#: about 710. Blocks of a few rows make it the solve's largest cost per point.
BYTES_PER_BLOCK = 1024
#: Largest block of scores a streamed source (file, function) produces at once by default.
STREAM_BLOCK_BYTES = 256 << 20


def bytes_per_row(source: Source, kernel: Kernel, width: int | None = None) -> int:
    """Memory one more row in a block costs: what the source materialises plus the kernel's
    temporaries (for ``width`` labels, default the source's K)."""
    k = source.shape[1] if width is None else width
    return source.bytes_per_row() + kernel.workspace_bytes_per_row(k, itemsize(source.dtype))


def fixed_bytes(n_points: int, n_labels: int) -> int:
    """Memory of a solve that does not grow with the block: O(N + K)."""
    return BYTES_PER_POINT * n_points + BYTES_PER_LABEL * n_labels


def block_state_bytes(n_points: int, rows: int) -> int:
    """Memory a streamed source's checking layer keeps for ``n_points`` rows read in blocks
    of ``rows``: a fingerprint per block, kept from the first pass to the last."""
    return BYTES_PER_BLOCK * -(-n_points // rows)


def rows_for_budget(budget: int, fixed: int, per_row: int, *, cache: bool = False,
                    streamed_points: int = 0, block_bytes: int = BYTES_PER_BLOCK,
                    exact_bytes: int = 0) -> int:
    """The most rows per block that keep ``fixed + exact_bytes + rows * per_row`` within
    ``budget``, or within half of it with ``cache`` (the cached exponentials take the other
    half). ``exact_bytes``: the exact solver's arrays (``balance="exact"``), which the blocks'
    memory is given back for, counted as fixed so that the whole solve fits.

    ``streamed_points`` rows of a streamed source also keep ``block_bytes`` per block (a
    fingerprint, :func:`block_state_bytes`; one per head and layer when several read each
    block): fewer, larger blocks then fit where small ones would not.
    """
    share = 2 if cache else 1
    fixed += exact_bytes
    room = budget // share - fixed
    per_row = max(1, per_row)
    rows = room // per_row
    if streamed_points and rows >= 1:
        rows = _rows_with_block_state(room, per_row, streamed_points, block_bytes)
    if rows < 1:
        needs = " with cache=True: the blocks get half of it and need" if cache else ": it needs"
        blocks = (f" and {block_bytes} bytes per block to check the streamed scores"
                  if streamed_points else "")
        least = fixed + _least_block_bytes(per_row, streamed_points, block_bytes)
        exact = (f" ({exact_bytes} of them for the exact solver's arrays, balance='exact')"
                 if exact_bytes else "")
        raise ValueError(
            f"memory_limit={budget} bytes is too small for this problem{needs} "
            f"{fixed} bytes for per-point and per-label state{exact} plus {per_row} bytes per "
            f"row of a block{blocks}, so at least {share * least} bytes"
        )
    return int(rows)


def _rows_with_block_state(room: int, per_row: int, n_points: int, block_bytes: int) -> int:
    """The most rows whose blocks fit ``room`` bytes with their fingerprints, or 0.

    Fewer blocks mean longer ones: the answer has the fewest blocks that fit, found counting
    up from those that blocks of ``room // per_row`` rows would need, each block as long as
    what that many fingerprints leave allows (and short enough to make that many blocks).
    """
    first = -(-n_points // max(1, room // per_row))
    for blocks in range(max(1, first), n_points + 1):
        left = room - block_bytes * blocks
        if left < per_row:
            break
        longest = left // per_row
        if blocks > 1:
            longest = min(longest, -(-n_points // (blocks - 1)) - 1)
        if longest >= -(-n_points // blocks):
            return longest
    return 0


def _least_block_bytes(per_row: int, n_points: int, block_bytes: int) -> int:
    """Memory the cheapest blocks take with their fingerprints (one row when nothing is kept
    per block): the least over block counts, each block as short as that count allows."""
    if not n_points:
        return per_row
    least = per_row * n_points + block_bytes
    blocks = 2
    while blocks <= n_points and block_bytes * blocks < least:
        least = min(least, per_row * -(-n_points // blocks) + block_bytes * blocks)
        blocks += 1
    return least


class ChunkSizer(Protocol):
    """What picks the rows of a chunk: a kernel, or the tables ``cache=True`` keeps per chunk."""

    def chunk_rows(self, n_labels: int, itemsize: int) -> int: ...


def default_rows(sizer: ChunkSizer, source: Source) -> int:
    """The backend's rows per chunk (``sizer``: its kernel, or its tables with ``cache=True``),
    at most ``STREAM_BLOCK_BYTES`` of a streamed source: GPU kernels take all rows at once, a
    file or a function must not be asked for them."""
    rows = sizer.chunk_rows(source.shape[1], itemsize(source.dtype))
    if source.in_memory:
        return rows
    return min(rows, max(1, STREAM_BLOCK_BYTES // (source.shape[1] * itemsize(source.dtype))))


def budget_rows(budget: int, source: Source, kernel: Kernel, sizer: ChunkSizer, *,
                cache: bool = False, exact_bytes: int = 0) -> int:
    """Rows per chunk within ``budget`` bytes: the backend's default (``sizer``'s), or fewer
    where :func:`rows_for_budget` requires (ValueError where not even one row fits)."""
    streamed = 0 if source.in_memory else source.shape[0]  # a fingerprint per block is kept
    fitting = rows_for_budget(budget, fixed_bytes(*source.shape), bytes_per_row(source, kernel),
                              cache=cache, streamed_points=streamed, exact_bytes=exact_bytes)
    return min(default_rows(sizer, source), fitting)


def pass_rows(kernel: Kernel, source: Source, chunk_size: int | None) -> int:
    """Rows per chunk of a pass with no memory budget (certificates, checks, the exact
    solver): the kernel's choice, in blocks a stream can give (a GPU kernel takes every row
    at once), unless the caller fixed it."""
    if chunk_size is None:
        return default_rows(kernel, source)
    return check_positive("chunk_size", chunk_size, integer=True)
