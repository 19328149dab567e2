"""Clocks, memory probes and the hardware floor, for CPU and CUDA arrays alike.

GPU work is asynchronous: every clock here stops only after the device has finished.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def synchronize(library: str, device: str) -> None:
    """Wait until queued device work is done (a no-op on the CPU)."""
    if device != "cuda":
        return
    if library == "torch":
        import torch

        torch.cuda.synchronize()
    elif library == "cupy":
        import cupy

        cupy.cuda.Device().synchronize()


def timed(fn: Callable[[], Any], library: str, device: str) -> tuple[float, Any]:
    """Seconds ``fn()`` takes, device work included, and what it returned."""
    synchronize(library, device)
    start = time.perf_counter()
    out = fn()
    synchronize(library, device)
    return time.perf_counter() - start, out


class PeakMemory:
    """Peak extra memory (bytes) while the block runs, on the block's device.

    CPU: the larger of the resident-set high-water mark (reset through
    ``/proc/self/clear_refs`` on Linux; it sees torch and BLAS buffers too) and tracemalloc's
    peak (exact for NumPy). CUDA: the allocator's own peak statistics. Tracing slows Python,
    so measure memory on a run that is not being timed.
    """

    def __init__(self, library: str, device: str):
        self.library = library
        self.device = device
        self.peak: int | None = None

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            self._base = self._cuda_reset()
            return self
        self._base = _rss_kib("VmRSS") * 1024 if _reset_rss_peak() else None
        tracemalloc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device == "cuda":
            self.peak = self._cuda_peak() - self._base
            return
        self.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if self._base is not None:
            self.peak = max(self.peak, _rss_kib("VmHWM") * 1024 - self._base)

    def _cuda_reset(self) -> int:
        if self.library == "cupy":
            import cupy

            pool = cupy.get_default_memory_pool()
            pool.free_all_blocks()
            return pool.used_bytes()
        import torch

        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()

    def _cuda_peak(self) -> int:
        if self.library == "cupy":
            import cupy

            # The pool keeps every block it allocated, so its size is its high-water mark.
            return cupy.get_default_memory_pool().total_bytes()
        import torch

        return torch.cuda.max_memory_allocated()


def _reset_rss_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _rss_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from {_STATUS}")


def floor_seconds(scores: Any, library: str, device: str, repeat: int = 3) -> float:
    """Time of one full read of ``scores`` where they live: the least any iteration can cost.

    On the CPU the fastest of NumPy's single-threaded sum and torch's multi-threaded one
    (when torch imports); on a GPU a reduction in the array's own library.
    """
    readers = _readers(scores, library, device)
    best = np.inf
    for read in readers:
        read()
        for _ in range(repeat):
            best = min(best, timed(read, library, device)[0])
    return float(best)


def _readers(scores: Any, library: str, device: str) -> list[Callable[[], Any]]:
    if device == "cuda":
        return [scores.sum]
    host = np.asarray(scores) if library == "numpy" else scores.numpy()
    readers: list[Callable[[], Any]] = [host.sum]
    try:
        import torch
    except ImportError:
        return readers
    tensor = torch.from_numpy(host)
    readers.append(tensor.sum)
    return readers
