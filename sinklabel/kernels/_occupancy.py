"""Grids of whole waves for the fused GPU sweeps.

A sweep launches up to ``PROGRAMS_PER_SM`` programs (thread blocks) per multiprocessor, each
walking every so many rows, but a multiprocessor runs only a few of them at once (4 or 5 for
the H200 picks at K = 3000, by registers and shared memory). The rest wait and start as
others end, in waves. All programs have the same work, so when the count is no multiple of
what the device runs at once, the last wave runs part-full: 4224 programs of a kernel with 5
per multiprocessor on 132 multiprocessors are 6.4 waves, and the last 264 programs run on
40% of the slots for the last of seven rounds. The float32 picks (4 per multiprocessor:
8 whole waves) read at 0.96x ``torch.sum``'s time, the 16-bit ones (6.4 waves) at 1.09-1.14x.
So each sweep's grid is cut down to whole waves, from the driver's own count of resident
blocks for the compiled kernel; where the driver cannot say, the grid stays as it was.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

#: Whether sweeps launch whole waves (benchmarks compare both ways, dropping the kept CUDA
#: graphs in between: a graph replays the grid it was recorded with).
WHOLE_WAVES = True


def whole_waves(cap: int, processors: int, resident: int | None) -> int:
    """The most programs up to ``cap`` that fill whole waves of ``processors * resident``
    programs; ``cap`` itself when it is under one wave or ``resident`` is unknown."""
    if not WHOLE_WAVES or not resident or resident < 1:
        return cap
    wave = processors * resident
    return cap if cap < wave else cap - cap % wave


def resident_blocks(function: int, threads: int, shared_bytes: int) -> int | None:
    """How many blocks of ``threads`` threads of the kernel ``function`` (a CUfunction handle)
    with ``shared_bytes`` of dynamic shared memory one multiprocessor runs at once, by the
    driver's occupancy calculator; None where the driver is not there or declines."""
    occupancy = getattr(_driver(), "cuOccupancyMaxActiveBlocksPerMultiprocessor", None)
    if occupancy is None:
        return None
    count = ctypes.c_int(0)
    status = occupancy(ctypes.byref(count), ctypes.c_void_p(function), ctypes.c_int(threads),
                       ctypes.c_size_t(shared_bytes))
    return count.value if status == 0 and count.value > 0 else None


@cache
def _driver():
    """The CUDA driver library, or None (no NVIDIA driver on this machine)."""
    for name in ("libcuda.so.1", ctypes.util.find_library("cuda"), "nvcuda.dll"):
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None
