"""Memory budgets: ``memory_limit="1GB"`` becomes a number of rows per block.

A solve's extra memory is O(rows x K + N + K): the block the source materialises and the
kernel's temporaries grow with the block; the labels (int64, gathered per block and then
joined) with N; the potentials and accumulators with K. The budget is that extra memory, not
counting the scores themselves when they are already in memory or memory-mapped.
"""

from __future__ import annotations

import math
import numbers
import os
import re

from ..kernels import Kernel
from ._base import Source, itemsize

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)

#: Bytes per row of the solve that do not depend on K: the row's label while labels are
#: gathered per block (int64) and again in the joined result.
BYTES_PER_POINT = 16
#: Bytes per label: L-BFGS's buffer of curvature pairs (4 x 10 float64 K-vectors), the
#: potentials, accumulators, target and a few more float64 K-vectors.
BYTES_PER_LABEL = 512


def parse_memory(limit: int | str) -> int:
    """Bytes in a memory budget: an int, or a string such as "1GB", "512 MiB", "2.5G".

    KB/MB/GB/TB are powers of 1000; KiB/MiB/GiB/TiB and the bare K/M/G/T powers of 1024.
    """
    if isinstance(limit, numbers.Integral) and not isinstance(limit, bool):
        value = int(limit)
    elif isinstance(limit, str):
        match = _PATTERN.match(limit)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"memory_limit must be bytes (int) or a size such as '1GB' or '512MiB', "
                f"got {limit!r}"
            )
        size = float(match.group(1)) * _UNITS[unit]
        if not math.isfinite(size):  # "1e400GB"
            raise ValueError(f"memory_limit must be a finite size, got {limit!r}")
        value = int(size)
    else:
        raise TypeError(f"memory_limit must be an int or a str such as '1GB', got {limit!r}")
    if value <= 0:
        raise ValueError(f"memory_limit must be > 0 bytes, got {limit!r}")
    return value


def bytes_per_row(source: Source, kernel: Kernel, width: int | None = None) -> int:
    """Memory one more row in a block costs: what the source materialises plus the kernel's
    temporaries (for ``width`` labels, default the source's K)."""
    k = source.shape[1] if width is None else width
    return source.bytes_per_row() + kernel.workspace_bytes_per_row(k, itemsize(source.dtype))


def fixed_bytes(n_points: int, n_labels: int) -> int:
    """Memory of a solve that does not grow with the block: O(N + K)."""
    return BYTES_PER_POINT * n_points + BYTES_PER_LABEL * n_labels


def rows_for_budget(budget: int, fixed: int, per_row: int, *, cache: bool = False) -> int:
    """The most rows per block that keep ``fixed + rows * per_row`` within ``budget``, or
    within half of it with ``cache`` (the cached exponentials take the other half)."""
    share = 2 if cache else 1
    rows = (budget // share - fixed) // max(1, per_row)
    if rows < 1:
        needs = " with cache=True: the blocks get half of it and need" if cache else ": it needs"
        raise ValueError(
            f"memory_limit={budget} bytes is too small for this problem{needs} "
            f"{fixed} bytes for per-point and per-label state plus {per_row} bytes per row "
            f"of a block, so at least {share * (fixed + per_row)} bytes"
        )
    return int(rows)


def physical_memory() -> int | None:
    """Bytes of memory this machine has, or None where the system does not say (Windows):
    a ceiling for work that must hold its data at once, checked before it starts."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
