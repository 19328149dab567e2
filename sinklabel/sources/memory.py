"""Memory sizes: a budget such as ``memory_limit="1GB"`` in bytes, and this machine's
physical memory. What a solve needs within a budget is in ``sinklabel._budget``.
"""

from __future__ import annotations

import math
import numbers
import os
import re

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


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


def physical_memory() -> int | None:
    """Bytes of memory this machine has, or None where the system does not say (Windows):
    a ceiling for work that must hold its data at once, checked before it starts."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
