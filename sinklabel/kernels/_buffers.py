"""What a fused GPU sweep keeps between sweeps: its buffers (per shape class), its CUDA graph
(torch), and each row's log-sum-exp for the next sweep's shift (``RowShifts``, per kernel).

On an H200 a sweep of 1.28M x 3000 bfloat16 scores takes 2.2 ms on the device, and the host
work around it took another 0.25-0.4 ms: allocating the partial sums, converting and copying
the K coefficients (a pageable copy that waits for the device), launching the kernels and
reading back the totals. Here the buffers are allocated once, the coefficients go through
pinned memory, and the totals come back through pinned memory with one stream sync. A solve
sweeps the same scores again and again, so the torch backend also records its kernels as a
CUDA graph once it has swept the same input twice with the same launch configuration, and
replays it from then on (one launch instead of the Triton launcher's argument handling).

Each thread keeps its own few buffers (sweeps are synchronous, so one thread's buffers are
never in use twice at once), on the device the scores are on. The row shifts belong to the
kernel object instead, one per solve, so that a solve repeated gives the same bits.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np

from .._warnings import warn
from ._tuning import AGREEMENT, disagreement

#: Shape classes whose buffers a thread keeps (the oldest is freed first).
KEPT_PER_THREAD = 4
#: Whether the torch backend records CUDA graphs (benchmarks and tests compare both ways).
RECORD_GRAPHS = True
#: Why the torch backend stopped recording CUDA graphs in this process (one entry per failed
#: capture; it then launches kernels one by one, which gives the same results, slower).
GRAPH_ERRORS: list[str] = []

#: Per kernel (backend, dtype, K, launch configuration): whether its sweep shifted by stored
#: row log-sum-exps agreed with the one shifted by row maxima, checked on its first use in
#: the process (like the tuners' candidates: a faster wrong kernel must never be used).
STORED_SHIFT_VERDICTS: dict[Hashable, bool] = {}

_local = threading.local()


def cached(key: Hashable, make: Callable[[], object]) -> object:
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
        self.coef = torch.empty(n_cols + 2, dtype=dtype, device=device)
        self.part = torch.empty((programs, n_cols), dtype=dtype, device=device)
        self.lse_parts = torch.empty(programs, dtype=torch.float64, device=device)
        self.totals = torch.empty(n_cols + 1, dtype=torch.float64, device=device)
        self._coef_host = torch.empty(n_cols + 2, dtype=dtype, pin_memory=pinned)
        self._totals_host = torch.empty(n_cols + 1, dtype=torch.float64, pin_memory=pinned)
        self._graph: tuple[Hashable, object] | None = None
        self._last: Hashable = None

    def coefficients(self, f: np.ndarray, factor: float, scale: float, rise: float = 0.0):
        """``f * factor``, ``scale`` and ``rise`` on the device in the compute dtype (each
        rounded once, from float64)."""
        view = self._coef_host.numpy()
        np.multiply(f, factor, out=view[:-2])
        view[-2:] = scale, rise
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
        key = (*_tensor_key(x), config)
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


class RowShifts:
    """Each row's log-sum-exp from the last sweep of one input, and the potentials it was
    taken at, so the next sweep of the same input can shift each row by it instead of by its
    maximum. A kernel object keeps one (one per solve: a solve repeated gives the same bits).

    A row's log-sum-exp is at least its maximum, so with the potentials moved by ``step``
    it stays an upper bound on the new maximum once ``step.max()`` is added: no exponential
    can overflow. It is also at most log2(K) above the old maximum, so the new maximum's
    own term is at least 2^-(log2(K) + spread) for a ``step`` spread of ``spread`` (log2
    units): kept below ``MAX_SPREAD``, every term within 2^-24 of it stays a normal float.
    Scores changed in place since (same memory) are caught by the kernels' check on each
    row's sum, and the sweep is repeated with each row's maximum.
    """

    #: Largest spread (max - min) of a potentials' step, in log2 units, a stored shift takes.
    MAX_SPREAD = 60.0

    def __init__(self, library: str):
        self.values = None
        self._library = library
        self._layout: tuple | None = None
        self._key: Hashable = None
        self._f: np.ndarray | None = None

    def sweep(self, x, f: np.ndarray, factor: float, kernel: Hashable,
              run: Callable[[float | None], tuple[np.ndarray, float]],
              errors: tuple[type[BaseException], ...]) -> tuple[np.ndarray, float]:
        """``run(rise)`` (masses, log-sum-exp sum) for ``x`` at potentials ``f``: with the
        stored values and their ``rise`` when they fit and ``kernel`` has not been found to
        disagree, else (and again when a row did not fit) ``run(None)``, each row shifted by
        its maximum. The first stored-shift sweep of each ``kernel`` in the process is
        checked against ``run(None)``; one that disagrees, or cannot launch (``errors``), is
        not used again and a warning asks for a report."""
        rise = self.rise(x, f, factor)
        verdict = STORED_SHIFT_VERDICTS.get(kernel)
        result = None
        if rise is not None and verdict is not False:
            try:
                result = run(rise)
            except errors as exc:
                self._reject(kernel, f"cannot launch: {exc}")
                verdict = False
        if result is None or verdict is None or not math.isfinite(result[1]):
            exact = run(None)
            if result is not None and verdict is None and math.isfinite(result[1]):
                gap = max(disagreement(result[0], exact[0], 0.0),
                          disagreement(np.array([result[1]]), np.array([exact[1]]), x.shape[0]))
                if gap > AGREEMENT:
                    self._reject(kernel, f"disagrees with the row-maximum sweep by {gap:.2g}")
                else:
                    STORED_SHIFT_VERDICTS[kernel] = True
            result = exact
        self.taken(x, f)
        return result

    @staticmethod
    def _reject(kernel: Hashable, why: str) -> None:
        STORED_SHIFT_VERDICTS[kernel] = False
        warn(f"sinklabel: the fused sweep {kernel} shifted by stored row log-sum-exps {why}; "
             "it is not used again in this process (sweeps take each row's maximum). Please "
             "report this with your GPU model", RuntimeWarning)

    def rise(self, x, f: np.ndarray, factor: float) -> float | None:
        """How far (times ``factor``) a row's maximum can have risen since the values were
        taken, or None when they cannot be used: another input, none taken yet, or a step
        too uneven."""
        if self._f is None or self._key != self._input_key(x):
            return None
        step = (np.asarray(f, dtype=np.float64) - self._f) * factor
        top, bottom = float(step.max(initial=0.0)), float(step.min(initial=0.0))
        if not (np.isfinite(top) and np.isfinite(bottom)) or top - bottom > self.MAX_SPREAD:
            return None
        return top

    def storage(self, x, dtype):
        """The vector (on ``x``'s device, in ``dtype``) the next sweep of ``x`` writes its
        rows' log-sum-exps into."""
        self._f = None
        device = x.device if self._library == "torch" else x.device.id
        layout = (x.shape[0], dtype, device)
        if self._layout != layout:
            if self._library == "torch":
                import torch

                self.values = torch.empty(x.shape[0], dtype=dtype, device=x.device)
            else:
                import cupy as cp

                with x.device:
                    self.values = cp.empty(x.shape[0], dtype=dtype)
            self._layout = layout
        return self.values

    def taken(self, x, f: np.ndarray) -> None:
        """The values now hold ``x``'s rows at potentials ``f``."""
        self._key, self._f = self._input_key(x), np.array(f, dtype=np.float64)

    def _input_key(self, x) -> tuple:
        """The input's memory and layout (its device too, through the address)."""
        if self._library == "torch":
            return _tensor_key(x)
        return (x.data.ptr, x.shape, x.strides, x.dtype.char)


def _tensor_key(x) -> tuple:
    """A torch tensor's memory and layout."""
    return (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype)


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

        self.coef = cp.empty(n_cols + 2, dtype=dtype)
        self.part = cp.empty((programs, n_cols), dtype=dtype)
        self.lse_parts = cp.empty(programs, dtype=np.float64)
        self.totals = cp.empty(n_cols + 1, dtype=np.float64)
        self._coef_host = _pinned(n_cols + 2, dtype)
        self._totals_host = _pinned(n_cols + 1, np.float64)

    def coefficients(self, f: np.ndarray, factor: float, scale: float, rise: float = 0.0):
        """``f * factor``, ``scale`` and ``rise`` on the device in the compute dtype."""
        import cupy as cp

        view = self._coef_host
        np.multiply(f, factor, out=view[:-2])
        view[-2:] = scale, rise
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
