"""Host scores streamed to a CUDA device block by block, copies overlapped with compute.

Scores too large for the GPU stay on the host (a memory-mapped file, a NumPy array, a
function, or a torch CPU tensor, ideally pinned) and reach the device one block at a time:

    host block --(staging thread: memcpy)--> pinned slot --(copy stream)--> device slot
                                                                  --> kernel (compute stream)

While the kernel works on block j, block j+1 is already on its way over PCIe and block j+2
is being staged into pinned memory. ``buffers`` pinned and device slots rotate; events order
the streams: a device slot is overwritten only after the compute stream has finished with
the block it held, a pinned slot only after its host-to-device copy has completed, and the
kernel waits (on the GPU, not the host) for the copy of its block.

A pinned torch tensor needs no staging: its blocks are copied to the device directly. So does
an in-memory array with ``page_lock=True``: its memory is page-locked where it is
(``cudaHostRegister``, about 0.04 s per GB once, undone by :meth:`DeviceStreamSource.close`),
which on an H200 streams at 0.99 of a pinned copy where staging pageable memory reaches 0.54-0.61
(docs/benchmarks.md).

Imports torch only when a source is created; ``device="cpu"`` runs the same rotation with
synchronous copies (no streams), which is how the logic is tested without a GPU.
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
import weakref
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from ._base import Array, Source, itemsize
from .checked import end_pass

if TYPE_CHECKING:
    from .arrays import ArraySource

_END = object()
#: cudaHostRegisterReadOnly: the device only reads the registered memory.
_HOST_REGISTER_READ_ONLY = 8


class DeviceStreamSource(Source):
    """Blocks of a host source, delivered as torch tensors on ``device``.

    Parameters
    ----------
    host : array, path, Source, or torch CPU tensor
        Where the scores live: anything :func:`sinklabel.sinkhorn` accepts that is on the
        host. A pinned tensor (``tensor.pin_memory()``) is copied from directly.
    device : str or torch.device, default="cuda"
        The device blocks are delivered to (``"cuda"``: the current one when the source is
        made).
    buffers : int, default=2
        Slots in rotation (2 is double buffering); more hides an uneven host source.
    copy_threads : int, default=None
        Threads that copy a pageable NumPy block into pinned memory (default: up to 4).
    page_lock : bool, default=False
        Page-lock the host scores in place instead of staging them: a C-contiguous NumPy
        array or torch CPU tensor, or a memory-mapped ``.npy`` file that fits in free host
        memory (its pages are read in and locked). Copies then run at pinned speed, with no
        staging memory. The lock holds until :meth:`close` (or the source is garbage
        collected); the array must not be freed before. Needs a CUDA device.

    Notes
    -----
    Memory: ``buffers`` blocks of pinned host memory and ``buffers`` blocks on the device,
    whatever N is. A yielded block is valid until the next one is requested.
    """

    def __init__(
        self,
        host: Any,
        device: Any = "cuda",
        *,
        buffers: int = 2,
        copy_threads: int | None = None,
        page_lock: bool = False,
    ):
        import torch

        from . import as_source, checked

        if isinstance(buffers, bool) or not isinstance(buffers, int) or buffers < 2:
            raise ValueError(f"buffers must be an int >= 2, got {buffers!r}")
        source = as_source(host)
        if source.library not in ("numpy", "torch"):
            raise TypeError(
                f"host scores must be NumPy or a torch CPU tensor, not {source.library}"
            )
        array = getattr(source, "array", None)
        if source.library == "torch" and array is not None and array.device.type != "cpu":
            raise TypeError(f"host scores must be on the CPU, got a tensor on {array.device}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"device={device!r} but torch finds no CUDA device here (torch "
                f"{torch.__version__}): pass device='cpu', or run where CUDA is"
            )
        if self.device.type == "cuda" and self.device.index is None:
            # The device current now: blocks are read where the solve runs, perhaps in a
            # thread that starts on device 0 (sinkhorn_heads runs one per head).
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._unlock: weakref.finalize | None = None
        if page_lock:
            source = self._page_locked(torch, source)
            array = source.array
        self.host = checked(source)
        self.shape = source.shape
        self.dtype = source.dtype
        self.library = "torch"
        self.buffers = buffers
        self.copy_threads = copy_threads or min(4, os.cpu_count() or 1)
        self._direct = (
            source.library == "torch" and array is not None and source.in_memory
            and array.is_pinned()
        )
        self._streams = (_CudaStreams(torch, self.device) if self.device.type == "cuda"
                         else _SyncStreams())

    def _page_locked(self, torch: Any, source: Source) -> ArraySource:
        """The source over a torch view of the host memory, registered with CUDA."""
        from .arrays import ArraySource, MemmapSource

        if self.device.type != "cuda":
            raise ValueError(f"page_lock=True needs a CUDA device, got {self.device}")
        if not (isinstance(source, MemmapSource)
                or isinstance(source, ArraySource) and source.in_memory):
            raise ValueError(
                "page_lock=True needs the scores in memory or in a memory-mapped .npy file "
                "(a NumPy array, a torch CPU tensor, a path); functions are staged instead"
            )
        array = source.array
        read_only = isinstance(array, np.ndarray) and not array.flags.writeable
        if isinstance(array, np.ndarray):
            array = np.asarray(array)  # a memmap's plain ndarray view
            with warnings.catch_warnings():  # read-only arrays: the view is only ever read
                warnings.simplefilter("ignore", UserWarning)
                array = torch.from_numpy(array)
        if not array.is_contiguous():
            raise ValueError("page_lock=True needs C-contiguous scores")
        if array.is_pinned():
            return ArraySource(array)
        cudart = torch.cuda.cudart()
        pointer, size = array.data_ptr(), array.numel() * array.element_size()
        # A read-only mapping (a .npy opened with mmap_mode="r") is registered read-only.
        flags = _HOST_REGISTER_READ_ONLY if read_only else 0
        status = cudart.cudaHostRegister(pointer, size, flags)
        if int(status) != 0:
            raise RuntimeError(
                f"cudaHostRegister failed with CUDA error {int(status)}: the scores may not fit "
                "in free host memory; stream them without page_lock"
            )
        self._unlock = weakref.finalize(self, cudart.cudaHostUnregister, pointer)
        return ArraySource(array)

    def close(self) -> None:
        """Undo ``page_lock``: the host memory is pageable again. Streaming ends with it."""
        if self._unlock is not None:
            self._unlock()

    def __enter__(self) -> DeviceStreamSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def bytes_per_row(self) -> int:
        """Host staging memory per row (the device holds as much again, in GPU memory)."""
        return 0 if self._direct else self.buffers * self.shape[1] * itemsize(self.dtype)

    def chunks(self, rows: int) -> Iterator[tuple[int, int, Array]]:
        import torch

        ranges = list(self.row_ranges(rows))
        if not ranges:
            return
        # Slots as large as the largest block, not the chunk size: a short stream's default
        # chunk (256 MB of rows), or a chunk_size beyond N, would allocate that much per slot.
        rows = ranges[0][1] - ranges[0][0]
        dtype = getattr(torch, self.dtype)
        k, slots = self.shape[1], min(self.buffers, len(ranges))
        streams = self._streams
        device_slots = [torch.empty((rows, k), dtype=dtype, device=self.device)
                        for _ in range(slots)]
        consumed: list[Any] = [None] * slots
        copied: list[Any] = [None] * slots
        stager = (_Direct(self.host, rows) if self._direct else
                  _Stager(self.host, rows, slots, dtype, streams.pin, self.copy_threads))
        in_flight: deque = deque()

        def issue(j: int) -> None:
            slot = j % slots
            start, stop = ranges[j]
            host_block = stager.get(j, stop - start)
            dst = device_slots[slot][: stop - start]
            copied[slot] = streams.copy(dst, host_block, after=consumed[slot])
            stager.release(j, copied[slot])
            in_flight.append(dst)

        try:
            for j in range(slots - 1):
                issue(j)
            for j, (start, stop) in enumerate(ranges):
                if j + slots - 1 < len(ranges):
                    issue(j + slots - 1)
                block = in_flight.popleft()
                streams.wait(copied[j % slots])
                yield start, stop, block
                consumed[j % slots] = streams.record()
            stager.end()
        finally:
            stager.close()
            streams.finish()


class _Direct:
    """Blocks of a pinned host tensor: slices, no staging."""

    def __init__(self, host: Source, rows: int):
        self._blocks = iter(host.chunks(rows))

    def get(self, j: int, n: int) -> Array:
        return next(self._blocks)[2]

    def end(self) -> None:
        """Let the host source check that it has no rows beyond the last block."""
        end_pass(self._blocks, read_to_end=True)

    def release(self, j: int, copied: Any) -> None:
        """Nothing to recycle: the copy reads the caller's pinned memory."""

    def close(self) -> None:
        end_pass(self._blocks, read_to_end=False)


class _Stager:
    """A thread that copies host blocks into rotating pinned slots ahead of the GPU copies.

    Slot ``j % slots`` holds block j; the thread refills it with block ``j + slots`` only
    after the host-to-device copy of block j has completed (its event).
    """

    def __init__(self, host: Source, rows: int, slots: int, dtype: Any, pin: bool,
                 copy_threads: int):
        import torch

        self._slots = [torch.empty((rows, host.shape[1]), dtype=dtype, pin_memory=pin)
                       for _ in range(slots)]
        self._free: queue.Queue = queue.Queue()
        self._filled: queue.Queue = queue.Queue()
        for slot in range(slots):
            self._free.put((slot, None))
        self._stop = threading.Event()
        self._workers = copy_threads
        self._pool = ThreadPoolExecutor(copy_threads) if copy_threads > 1 else None
        self._thread = threading.Thread(target=self._run, args=(host, rows), daemon=True,
                                        name="sinklabel-stager")
        self._thread.start()

    def _run(self, host: Source, rows: int) -> None:
        blocks = host.chunks(rows)
        try:
            for start, stop, block in blocks:
                slot, copied = self._free.get()
                if self._stop.is_set():
                    return
                if copied is not None:
                    copied.synchronize()
                self._fill(self._slots[slot][: stop - start], block)
                self._filled.put(slot)
            self._filled.put(_END)
        except BaseException as exc:
            self._filled.put(exc)
        finally:
            end_pass(blocks, read_to_end=False)

    def _fill(self, dst: Any, block: Array) -> None:
        if not isinstance(block, np.ndarray):
            dst.copy_(block)
            return
        target = dst.numpy()
        if self._pool is None or block.shape[0] < 2 * len(self._slots):
            np.copyto(target, block)
            return
        # NumPy releases the GIL while copying: split rows over the pool for memcpy bandwidth.
        bounds = np.linspace(0, block.shape[0], self._workers + 1).astype(int)
        parts = [self._pool.submit(np.copyto, target[a:b], block[a:b])
                 for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
        for part in parts:
            part.result()

    def get(self, j: int, n: int) -> Any:
        """The pinned slot holding block j (its first ``n`` rows), once staged."""
        item = self._filled.get()
        if isinstance(item, BaseException):
            raise item
        if item is _END:
            raise RuntimeError(f"the host source ended before block {j}")
        self._current = item
        return self._slots[item][:n]

    def end(self) -> None:
        """Raise what the host source raised after its last block (e.g. extra rows)."""
        item = self._filled.get()
        if isinstance(item, BaseException):
            raise item

    def release(self, j: int, copied: Any) -> None:
        self._free.put((self._current, copied))

    def close(self) -> None:
        self._stop.set()
        self._free.put((0, None))
        self._thread.join()
        if self._pool is not None:
            self._pool.shutdown()


class _CudaStreams:
    """A copy stream beside the compute (current) stream, ordered by events."""

    pin = True

    def __init__(self, torch: Any, device: Any):
        self._torch = torch
        self._device = device
        self._copy = torch.cuda.Stream(device=device)

    def copy(self, dst: Any, src: Any, after: Any) -> Any:
        """Start ``dst.copy_(src)`` on the copy stream once event ``after`` has happened."""
        torch = self._torch
        with torch.cuda.stream(self._copy):
            if after is not None:
                self._copy.wait_event(after)
            dst.copy_(src, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._copy)
        return done

    def wait(self, event: Any) -> None:
        """Make the compute stream wait (on the GPU) for ``event``."""
        self._torch.cuda.current_stream(self._device).wait_event(event)

    def record(self) -> Any:
        """An event marking all work queued so far on the compute stream."""
        event = self._torch.cuda.Event()
        event.record(self._torch.cuda.current_stream(self._device))
        return event

    def finish(self) -> None:
        """No copy may still write into a slot when the slots are freed."""
        self._copy.synchronize()


class _SyncStreams:
    """The same interface for a CPU device: copies complete before they return."""

    pin = False

    def copy(self, dst: Any, src: Any, after: Any) -> Any:
        dst.copy_(src)
        return _DONE

    def wait(self, event: Any) -> None:
        """Copies are synchronous: nothing to wait for."""

    def record(self) -> Any:
        return _DONE

    def finish(self) -> None:
        """Nothing in flight."""


class _Done:
    """An event that has already happened."""

    def synchronize(self) -> None:
        """Already complete."""


_DONE = _Done()
