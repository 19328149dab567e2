"""What a fused GPU sweep needs besides the scores, kept between sweeps of one shape class.

On an H200 a sweep of 1.28M x 3000 bfloat16 scores takes 2.2 ms on the device, and the host
work around it took another 0.25-0.4 ms: allocating the partial sums, converting and copying
the K coefficients (a pageable copy that waits for the device), launching the kernels and
reading back the totals. Here the buffers are allocated once, the coefficients go through
pinned memory, and the totals come back through pinned memory with one stream sync. A solve
sweeps the same scores again and again, so the torch backend also records its kernels as a
CUDA graph once it has swept the same input twice with the same launch configuration, and
replays it from then on (one launch instead of the Triton launcher's argument handling).

Each thread keeps its own few buffers (sweeps are synchronous, so one thread's buffers are
never in use twice at once), on the device the scores are on.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TypeVar

import numpy as np

#: Shape classes whose buffers a thread keeps (the oldest is freed first).
KEPT_PER_THREAD = 4
#: Whether the torch backend records CUDA graphs (benchmarks and tests compare both ways).
RECORD_GRAPHS = True
#: Why the torch backend stopped recording CUDA graphs in this process (one entry per failed
#: capture; it then launches kernels one by one, which gives the same results, slower).
GRAPH_ERRORS: list[str] = []

_local = threading.local()
Made = TypeVar("Made")


def cached(key: Hashable, make: Callable[[], Made]) -> Made:
    """This thread's buffers for ``key``, made on first use; the least recently used are
    dropped beyond ``KEPT_PER_THREAD``."""
    kept = getattr(_local, "kept", None)
    if kept is None:
        kept = _local.kept = OrderedDict()
    if key in kept:
        kept.move_to_end(key)
        return kept[key]
    kept[key] = value = make()
    while len(kept) > KEPT_PER_THREAD:
        kept.popitem(last=False)
    return value


def release() -> None:
    """Drop this thread's kept buffers and CUDA graphs (their memory goes back to the array
    library's pool): the next sweep starts from none, as a fresh process would."""
    _local.__dict__.pop("kept", None)


class TorchSweepBuffers:
    """Device buffers of one (device, compute dtype, programs, K), pinned host copies of the
    coefficients and totals, and the CUDA graph of the last input swept twice in a row."""

    def __init__(self, device, dtype, programs: int, n_cols: int):
        import torch

        pinned = device.type == "cuda"
        self.coef = torch.empty(n_cols + 1, dtype=dtype, device=device)
        self.part = torch.empty((programs, n_cols), dtype=dtype, device=device)
        self.lse_parts = torch.empty(programs, dtype=torch.float64, device=device)
        self.totals = torch.empty(n_cols + 1, dtype=torch.float64, device=device)
        self._coef_host = torch.empty(n_cols + 1, dtype=dtype, pin_memory=pinned)
        self._totals_host = torch.empty(n_cols + 1, dtype=torch.float64, pin_memory=pinned)
        self._graph: tuple[Hashable, object] | None = None
        self._last: Hashable = None

    def coefficients(self, f: np.ndarray, factor: float, scale: float):
        """``f * factor`` followed by ``scale`` on the device in the compute dtype (rounded
        once, from float64, as before)."""
        view = self._coef_host.numpy()
        np.multiply(f, factor, out=view[:-1])
        view[-1] = scale
        return self.coef.copy_(self._coef_host, non_blocking=True)

    def totals_on_host(self) -> tuple[np.ndarray, float]:
        """The K totals (a fresh float64 array) and the last entry, after one stream sync (a
        blocking copy syncs the current stream itself, one call fewer)."""
        self._totals_host.copy_(self.totals)
        host = self._totals_host.numpy()
        return host[:-1].copy(), float(host[-1])

    def graph(self, x, config: tuple, launch: Callable[[tuple], object]):
        """The CUDA graph of ``launch(config)`` on ``x``: recorded on the second sweep in a row
        of the same input (same memory, layout and configuration) and replayed after that;
        None before, for CPU tensors, and once a recording has failed in this process."""
        import torch

        if not (RECORD_GRAPHS and x.is_cuda) or GRAPH_ERRORS or (
                x.device.index != torch.cuda.current_device()):
            return None
        key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, config)
        if self._graph is not None and self._graph[0] == key:
            return self._graph[1]
        if self._last != key:
            self._last = key
            return None
        try:
            graph = _record(lambda: launch(config), x.device)
        except Exception as exc:  # the launches one by one still work: note why and use them
            GRAPH_ERRORS.append(f"{type(exc).__name__}: {exc}"[:500])
            return None
        self._graph = (key, graph)
        return graph


def _record(run: Callable[[], object], device):
    """A CUDA graph of the kernels ``run`` launches, recorded on a side stream that waits for
    the current one (``torch.cuda.graph`` would also empty the caller's memory cache)."""
    import torch

    graph = torch.cuda.CUDAGraph()
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        graph.capture_begin(capture_error_mode="thread_local")
        try:
            run()
        finally:
            graph.capture_end()
    current.wait_stream(side)
    return graph


class CupySweepBuffers:
    """The CuPy backend's buffers of one (device, compute dtype, programs, K), allocated on
    the current device, with pinned host copies of the coefficients and totals."""

    def __init__(self, dtype: np.dtype, programs: int, n_cols: int):
        import cupy as cp

        self.coef = cp.empty(n_cols + 1, dtype=dtype)
        self.part = cp.empty((programs, n_cols), dtype=dtype)
        self.lse_parts = cp.empty(programs, dtype=np.float64)
        self.totals = cp.empty(n_cols + 1, dtype=np.float64)
        self._coef_host = _pinned(n_cols + 1, dtype)
        self._totals_host = _pinned(n_cols + 1, np.float64)

    def coefficients(self, f: np.ndarray, factor: float, scale: float):
        """``f * factor`` followed by ``scale`` on the device in the compute dtype."""
        import cupy as cp

        view = self._coef_host
        np.multiply(f, factor, out=view[:-1])
        view[-1] = scale
        cp.cuda.runtime.memcpyAsync(self.coef.data.ptr, view.ctypes.data, view.nbytes,
                                    cp.cuda.runtime.memcpyHostToDevice,
                                    cp.cuda.get_current_stream().ptr)
        return self.coef

    def totals_on_host(self) -> tuple[np.ndarray, float]:
        """The K totals (a fresh float64 array) and the last entry, after one stream sync."""
        import cupy as cp

        host = self._totals_host
        stream = cp.cuda.get_current_stream()
        cp.cuda.runtime.memcpyAsync(host.ctypes.data, self.totals.data.ptr, host.nbytes,
                                    cp.cuda.runtime.memcpyDeviceToHost, stream.ptr)
        stream.synchronize()
        return host[:-1].copy(), float(host[-1])


def _pinned(size: int, dtype) -> np.ndarray:
    """A NumPy array in page-locked host memory (it keeps the allocation alive)."""
    import cupy as cp

    dtype = np.dtype(dtype)
    memory = cp.cuda.alloc_pinned_memory(size * dtype.itemsize)
    return np.ndarray((size,), dtype=dtype, buffer=memory)
