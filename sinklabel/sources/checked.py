"""A checking layer around a streaming source: every block is what was promised, every pass.

An in-memory array cannot fail or change between passes, but a file, a dataset or a function
can. Every block is checked for its row range, shape, dtype and array library; an exception
from the source is re-raised naming the rows it was reading; a fingerprint of the first and last
row of each block is remembered on the first pass and compared on later ones; and the first time a
block is seen, an optional value check (NaN, +inf, rows without a finite score) runs on it,
so streamed scores are validated during the solve's first pass instead of in an extra one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from .._arrays import array_library
from ._base import Array, Source, WrappingSource, dtype_name

#: Scores per row kept in a fingerprint besides the row's sum and sum of magnitudes.
FINGERPRINT_SAMPLES = 16
#: Fingerprints are compared with this relative tolerance: floating-point noise from a
#: non-deterministic GPU reduction passes, a dropout layer left on does not.
FINGERPRINT_RTOL = 1e-4

BlockCheck = Callable[[int, Array], None]


class SourceError(RuntimeError):
    """A streaming source failed, or broke its promise, while the solver was reading it.

    Attributes
    ----------
    start, stop : int
        The row range being read.
    pass_index : int
        Which pass over the source (1 for the first).
    """

    def __init__(self, message: str, start: int, stop: int, pass_index: int):
        super().__init__(f"rows [{start}, {stop}) on pass {pass_index}: {message}")
        self.start = start
        self.stop = stop
        self.pass_index = pass_index


class CheckedSource(WrappingSource):
    """Wraps ``source`` and raises :class:`SourceError` on the first block that is wrong.

    ``check_block(start, block)`` (optional) runs once per row range, before the block
    reaches the solver, and raises ValueError for bad scores.
    """

    def __init__(self, source: Source, check_block: BlockCheck | None = None):
        super().__init__(source)
        self.check_block = check_block
        self.random_access = source.random_access
        self.passes = 0
        self._last_read: int | None = None
        self._fingerprints: dict[tuple[int, int], np.ndarray] = {}
        self._seen: set[tuple[int, int]] = set()

    def chunks(self, rows: int) -> Iterator[tuple[int, int, Array]]:
        self.passes += 1
        self._last_read = None
        blocks = iter(self.inner.chunks(rows))
        try:
            for start, stop in self.row_ranges(rows):
                block = self._next(blocks, start, stop)
                yield start, stop, block
            self._expect_end(blocks)
        finally:
            close = getattr(blocks, "close", None)
            if close is not None:
                close()

    def _next(self, blocks: Iterator, start: int, stop: int) -> Array:
        p = self.passes
        try:
            item = next(blocks)
        except StopIteration:
            raise SourceError(
                f"the source ended early: it yielded only rows [0, {start}) of "
                f"{self.shape[0]}", start, stop, p,
            ) from None
        except Exception as exc:
            raise self._raised(exc, start, stop) from exc
        got_start, got_stop, block = item
        if (got_start, got_stop) != (start, stop):
            raise SourceError(
                f"the source yielded rows [{got_start}, {got_stop}) instead", start, stop, p
            )
        return self._checked(block, start, stop)

    def read(self, start: int, stop: int) -> Array:
        """One block, checked as ``chunks`` checks it. Reads go in row order within a pass:
        one that does not follow the previous read starts a new pass."""
        if self._last_read is None or start <= self._last_read:
            self.passes += 1
        self._last_read = start
        try:
            block = self.inner.read(start, stop)
        except Exception as exc:
            raise self._raised(exc, start, stop) from exc
        return self._checked(block, start, stop)

    def _raised(self, exc: Exception, start: int, stop: int) -> SourceError:
        """The inner source's own error, named with the rows and pass it was reading."""
        return SourceError(f"the source raised {type(exc).__name__}: {exc}", start, stop,
                           self.passes)

    def _checked(self, block: Array, start: int, stop: int) -> Array:
        self._check_structure(block, start, stop)
        block = self._plain(block, start, stop)
        key = (start, stop)
        if key not in self._seen:
            if self.check_block is not None:
                self.check_block(start, block)
            self._seen.add(key)
        self._check_unchanged(block, key)
        return block

    def _check_structure(self, block: Array, start: int, stop: int) -> None:
        p = self.passes
        library = array_library(block)
        if library != self.library:
            raise SourceError(
                f"expected a {self.library} array, got {type(block).__module__}."
                f"{type(block).__name__}", start, stop, p,
            )
        shape = tuple(int(s) for s in block.shape)
        expected = (stop - start, self.shape[1])
        if shape != expected:
            what = "row count" if len(shape) == 2 and shape[1] == expected[1] else "shape"
            raise SourceError(f"wrong {what}: expected {expected}, got {shape}", start, stop, p)
        dtype = dtype_name(block.dtype)
        if dtype != self.dtype:
            raise SourceError(f"wrong dtype: expected {self.dtype}, got {dtype}", start, stop, p)

    def _plain(self, block: Array, start: int, stop: int) -> Array:
        """An ndarray subclass as the plain array it views, as ``as_source`` reads in-memory
        scores: ``np.matrix`` changes what indexing means in the kernels. A masked array is
        refused: its mask would be ignored, and the masked scores read as scores."""
        if isinstance(block, np.ma.MaskedArray):
            raise SourceError(
                "the source returned a masked array, and its mask would be ignored: fill the "
                "masked scores first, e.g. block.filled(-np.inf) to keep those rows from those "
                "labels", start, stop, self.passes,
            )
        return np.asarray(block) if isinstance(block, np.ndarray) else block

    def _check_unchanged(self, block: Array, key: tuple[int, int]) -> None:
        """Compare the block's first and last rows with the first pass (host blocks only:
        a device block would cost a synchronising copy per block)."""
        if self.library != "numpy":
            return
        fingerprint = _fingerprint(block)
        previous = self._fingerprints.get(key)
        if previous is None:
            self._fingerprints[key] = fingerprint
            return
        scale = np.abs(previous[np.isfinite(previous)]).max(initial=1.0)
        if not np.allclose(previous, fingerprint, rtol=FINGERPRINT_RTOL,
                           atol=FINGERPRINT_RTOL * scale, equal_nan=True):
            raise SourceError(
                "the scores changed since the first pass (a source must return the same "
                "scores every pass: is a model still in training mode, e.g. with dropout?)",
                *key, self.passes,
            )

    def _expect_end(self, blocks: Iterator) -> None:
        n = self.shape[0]
        try:
            extra = next(blocks)
        except StopIteration:
            return
        except Exception as exc:
            raise SourceError(
                f"the source raised {type(exc).__name__} after its last block: {exc}",
                n, n, self.passes,
            ) from exc
        raise SourceError(
            f"the source yielded rows beyond N={n}: [{extra[0]}, {extra[1]})", n, n, self.passes
        )


def _fingerprint(block: np.ndarray) -> np.ndarray:
    """A few float64 numbers per block (O(1), whatever K): for its first and last row, the sum,
    the sum of magnitudes, and a fixed sample of scores."""
    rows = np.asarray(block[[0, -1]], dtype=np.float64)
    step = max(1, rows.shape[1] // FINGERPRINT_SAMPLES)
    with np.errstate(invalid="ignore"):
        return np.concatenate([rows.sum(axis=1), np.abs(rows).sum(axis=1),
                               rows[:, ::step][:, :FINGERPRINT_SAMPLES].ravel()])


def checked(source: Source, check_block: BlockCheck | None = None) -> Source:
    """``source`` behind a checking layer, unless it is an in-memory array.

    A source already behind one stays there when no new value check is asked for, so that
    readers passing it on (the exact solver to its certificate) share its fingerprints.
    """
    if source.in_memory:
        return source
    if isinstance(source, CheckedSource):
        if check_block is None:
            return source
        source = source.inner
    return CheckedSource(source, check_block)
