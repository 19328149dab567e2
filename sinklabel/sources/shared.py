"""One source read once per pass for several consumers (the heads of a multi-head solve).

Each consumer is a thread running an ordinary solve on a view of the shared source (for a
head, its block of columns). A block is read when every consumer still running is waiting
for one; all consumers that asked for that block get it, the others wait for the next read.
Consumers that iterate in step (one pass at a time, the same rows per block) therefore share
every read, whatever each one does between passes, while a consumer that stops early (it
converged, or failed) simply leaves.

The source is read on one thread of the reader's own, whichever consumer's request completes
a block: a function source's blocks then come from one thread's allocator. Read by whichever
head asked last, each head thread's malloc arena kept a freed block, and a solve's resident
memory grew by twice its ``memory_limit`` (63-70 MB at 32 MB; 29 MB read on one thread,
docs/benchmarks.md).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ._base import Array, Source
from .checked import end_pass


class Aborted(RuntimeError):
    """Another consumer of the shared source failed; this one stops too."""


class SharedReader:
    """Serves the blocks of ``source`` to ``n_consumers`` threads, one read per block."""

    def __init__(self, source: Source, n_consumers: int):
        self.source = source
        self._cond = threading.Condition()
        self._live = set(range(n_consumers))
        self._waiting: dict[int, tuple[int, int, int]] = {}
        self._served: dict[int, Array] = {}
        self._blocks: Iterator | None = None
        self._rows = 0
        self._next_start = 0
        self._error: BaseException | None = None
        self._thread: ThreadPoolExecutor | None = None

    def view(self, consumer: int, pick: Callable[[Array], Array], width: int) -> Source:
        """The source as consumer ``consumer`` sees it: ``pick(block)`` of every block."""
        return _View(self, consumer, pick, width)

    @property
    def error(self) -> BaseException | None:
        """The first failure of any consumer or of the source, if one happened."""
        return self._error

    def get(self, consumer: int, rows: int, start: int, stop: int) -> Array:
        """Block ``[start, stop)`` (of blocks of ``rows``), once all live consumers ask."""
        with self._cond:
            self._raise_if_failed()
            self._waiting[consumer] = (rows, start, stop)
            self._serve()
            while True:
                self._raise_if_failed()
                if consumer in self._served:
                    return self._served.pop(consumer)
                self._cond.wait()

    def leave(self, consumer: int) -> None:
        """Consumer ``consumer`` has finished; the others no longer wait for it."""
        with self._cond:
            self._live.discard(consumer)
            self._waiting.pop(consumer, None)
            if self._live:
                self._serve()
                return
            try:
                self._close()
            except BaseException as exc:
                if self._error is None:
                    self._error = exc
            finally:
                if self._thread is not None:
                    self._thread.shutdown()
                    self._thread = None

    def fail(self, error: BaseException) -> None:
        """Stop every consumer: their next (or current) wait raises."""
        with self._cond:
            if self._error is None:
                self._error = error
            self._cond.notify_all()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise Aborted("another head of the solve failed") from self._error

    def _serve(self) -> None:
        """With the lock held: read the next block if every live consumer is waiting.

        A failure (of the source, or consumers out of step) is recorded, not raised: every
        waiting consumer then raises, and the caller of the solve sees the recorded error.
        """
        if self._error is not None or not self._waiting or len(self._waiting) < len(self._live):
            return
        try:
            self._read()
        except BaseException as exc:
            self._error = exc
        self._cond.notify_all()

    def _read(self) -> None:
        requests = set(self._waiting.values())
        wanted = (self._rows, self._next_start)
        blocks = self._blocks
        if blocks is None or all((r, s) != wanted for r, s, _ in requests):
            starts = {(r, s) for r, s, _ in requests}
            if len(starts) != 1 or next(iter(starts))[1] != 0:
                raise RuntimeError(
                    f"consumers of a shared source asked for different blocks {sorted(starts)}; "
                    "they must read whole passes in step, with the same rows per block"
                )
            blocks = self._new_pass(next(iter(starts))[0])
        start, stop, block = self._on_reader_thread(next, blocks)
        self._next_start = stop
        for consumer, request in list(self._waiting.items()):
            if request == (self._rows, start, stop):
                self._served[consumer] = block
                del self._waiting[consumer]

    def _new_pass(self, rows: int) -> Iterator:
        self._close()
        self._rows = rows
        self._next_start = 0
        self._blocks = iter(self.source.chunks(rows))
        return self._blocks

    def _close(self) -> None:
        """End the current pass; a finished one is drained so the source can check its end."""
        blocks, self._blocks = self._blocks, None
        if blocks is not None:
            self._on_reader_thread(end_pass, blocks,
                                   read_to_end=self._next_start >= self.source.shape[0])

    def _on_reader_thread(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``function(*args, **kwargs)`` on the reader's own thread, in the context of the
        consumer that asked (its held warnings, say), waited for here."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="sinklabel-reader")
        context = contextvars.copy_context()
        return self._thread.submit(context.run, function, *args, **kwargs).result()


class _View(Source):
    """One consumer's view of a shared source."""

    def __init__(self, reader: SharedReader, consumer: int, pick: Callable, width: int):
        self.reader = reader
        self.consumer = consumer
        self.pick = pick
        base = reader.source
        self.shape = (base.shape[0], width)
        self.dtype = base.dtype
        self.library = base.library

    def bytes_per_row(self) -> int:
        return 0

    def chunks(self, rows: int) -> Iterator[tuple[int, int, Array]]:
        for start, stop in self.row_ranges(rows):
            yield start, stop, self.pick(self.reader.get(self.consumer, rows, start, stop))
