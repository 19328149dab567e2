"""Clocks, memory probes and the hardware floor, for CPU and CUDA arrays alike.

GPU work is asynchronous: every clock here stops only after the device has finished.
"""

from __future__ import annotations

import math
import statistics
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: A timed sample of per-call timing lasts at least this long (seconds): quicker calls are
#: repeated within one sample, so clock and synchronisation overhead stay small against it.
MIN_SAMPLE = 0.02
#: Most calls one sample may batch.
MAX_CALLS = 1000
#: Least time (seconds) the extra iterations of a difference must take.
MIN_DIFFERENCE = 0.2

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


def seconds_per_call(step: Callable[[], Any], library: str, device: str, repeat: int) -> float:
    """Median seconds of one ``step()`` over ``repeat`` timed samples, after a warm-up call.

    A sample times ``calls`` consecutive steps (enough to last MIN_SAMPLE) and divides.
    """
    step()
    first, _ = timed(step, library, device)
    calls = min(MAX_CALLS, max(1, math.ceil(MIN_SAMPLE / max(first, 1e-9))))

    def batch() -> None:
        for _ in range(calls):
            step()

    return statistics.median(timed(batch, library, device)[0] / calls for _ in range(repeat))


def seconds_per_extra_iteration(
    run: Callable[[int], int], library: str, device: str, *, short: int, stride: int,
    repeat: int, max_extra: int, prepare: Callable[[int], Any] | None = None,
) -> float | None:
    """Seconds per iteration from whole runs of fixed length, where no single iteration can be
    timed: the median over ``repeat`` back-to-back pairs of (long - short) / (extra iterations).

    ``run(length)`` runs ``length`` iterations from scratch (set-up included) and returns the
    iterations done. The long run is ``short`` plus a multiple of ``stride`` iterations, sized
    from a first pair so that its extra iterations take at least as long as the short run
    (and MIN_DIFFERENCE): the set-up's own noise then stays small against the difference.
    None when the runs cannot tell an iteration's cost (no extra iteration ran, or noise
    exceeded the difference). ``prepare(length)``, where given, compiles a run of that
    length before any clock sees one (JAX compiles each length anew).
    """
    prepare = prepare or (lambda length: None)
    prepare(short)
    prepare(short + stride)
    run(short)
    t_short, _ = timed(lambda: run(short), library, device)
    t_long, _ = timed(lambda: run(short + stride), library, device)
    goal = max(t_short, MIN_DIFFERENCE)
    estimate = max(t_long - t_short, 1e-9) / stride
    extra = min(max_extra, stride * max(1, math.ceil(goal / (estimate * stride))))
    prepare(short + extra)
    per_iteration = []
    for _ in range(repeat):
        t_short, done_short = timed(lambda: run(short), library, device)
        t_long, done_long = timed(lambda: run(short + extra), library, device)
        if done_long > done_short:
            per_iteration.append((t_long - t_short) / (done_long - done_short))
    if not per_iteration:
        return None
    median = statistics.median(per_iteration)
    return median if median > 0 else None


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
