"""A checking layer around a streaming source: every block is what was promised, every pass.

An in-memory array cannot fail or change between passes, but a file, a dataset or a function
can. Every block is checked for its row range, shape, dtype and array library; an exception
from the source is re-raised naming the rows and the pass it was reading; a fingerprint of the
first and last row of each host block is remembered on the first pass and compared on later
ones; and the first time a block is seen, an optional value check (NaN, +inf, rows without a
finite score) runs on it, so streamed scores are validated during the solve's first pass
instead of in an extra one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from .._arrays import array_library, to_host
from ._base import Array, Source, WrappingSource, dtype_name

#: Scores per row kept in a fingerprint besides the row's sum and sum of magnitudes.
FINGERPRINT_SAMPLES = 16
#: Fingerprints are compared with this relative tolerance, each entry against a magnitude of
#: its own kind (see ``_unchanged``): floating-point noise from a non-deterministic GPU
#: reduction passes, a dropout layer left on does not.
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
        self._message = message
        self.start = start
        self.stop = stop
        self.pass_index = pass_index

    def __reduce__(self) -> tuple:
        """Rebuilt from the four arguments, not the one formatted message: an error pickled
        back from a worker process (``ProcessPoolExecutor``) would otherwise fail to unpickle,
        and the pool report itself broken instead of this error."""
        return type(self), (self._message, self.start, self.stop, self.pass_index), self.__dict__


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
        self._pass_counted = False
        self._last_read: int | None = None
        self._fingerprints: dict[tuple[int, int], np.ndarray] = {}
        self._seen: set[tuple[int, int]] = set()

    @contextmanager
    def solver_pass(self) -> Iterator[None]:
        """One pass of a reader that may read some blocks of it, or none (the exponential
        cache): it counts as a pass, and the reads within it start none of their own, so that
        an error names the solver's pass rather than how many passes happened to read."""
        self._new_pass()
        self._pass_counted = True
        try:
            yield
        finally:
            self._pass_counted = False
            self._last_read = None

    def _new_pass(self) -> None:
        """A pass over the source begins, unless it is part of a pass already counted."""
        self._last_read = None
        if not self._pass_counted:
            self.passes += 1

    def chunks(self, rows: int) -> Iterator[tuple[int, int, Array]]:
        self._new_pass()
        blocks = iter(self.inner.chunks(rows))
        try:
            for start, stop in self.row_ranges(rows):
                block = self._next(blocks, start, stop)
                yield start, stop, block
            self._expect_end(blocks)
        finally:
            end_pass(blocks, read_to_end=False)

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
            self._new_pass()
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
            raise SourceError(
                f"wrong dtype: expected {self.dtype}, got {dtype} ({self.dtype_rule})", start,
                stop, p,
            )

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
        NumPy arrays and CPU tensors; a device block would cost a synchronising copy per
        block)."""
        if not _on_host(block):
            return
        fingerprint = _fingerprint(block)
        previous = self._fingerprints.get(key)
        if previous is None:
            self._fingerprints[key] = fingerprint
            return
        if not _unchanged(previous, fingerprint, _tolerance(self.dtype)):
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


def end_pass(blocks: Iterator, read_to_end: bool) -> None:
    """Close a pass's iterator of blocks. One read to its last block is first asked for one
    more: closing alone would skip the checks a :class:`CheckedSource` makes at the end (no
    rows beyond N, no error after the last block)."""
    try:
        if read_to_end:
            for _ in blocks:
                break
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:
            close()


def _on_host(block: Array) -> bool:
    """True for a block whose rows can be read without a device synchronisation."""
    return isinstance(block, np.ndarray) or (
        array_library(block) == "torch" and block.device.type == "cpu"
    )


def _fingerprint(block: Array) -> np.ndarray:
    """A few float64 numbers per block (O(1), whatever K): the first and last row's sums of
    their finite scores, then the sums of those scores' magnitudes, then how many scores are
    finite, then a fixed sample of scores of each. Sums of finite scores only: a row with a
    label masked by -inf would sum to -inf whatever its other scores did."""
    rows = to_host(block[[0, -1]]).astype(np.float64)
    finite = np.isfinite(rows)
    values = np.where(finite, rows, 0.0)
    step = max(1, rows.shape[1] // FINGERPRINT_SAMPLES)
    return np.concatenate([values.sum(axis=1), np.abs(values).sum(axis=1), finite.sum(axis=1),
                           rows[:, ::step][:, :FINGERPRINT_SAMPLES].ravel()])


def _tolerance(dtype: str) -> float:
    """``FINGERPRINT_RTOL``, or two units in the last place of 16-bit scores: a model run on
    a GPU may round a float16 or bfloat16 score one unit differently from pass to pass, which
    is noise, not a change (a dropout layer's changes are far larger)."""
    return 2 * _EPS16[dtype] if dtype in _EPS16 else FINGERPRINT_RTOL


#: Machine epsilon of the 16-bit formats (NumPy has no bfloat16).
_EPS16 = {"float16": float(np.finfo(np.float16).eps), "bfloat16": 2.0**-7}


def _unchanged(previous: np.ndarray, current: np.ndarray, rtol: float) -> bool:
    """Whether two fingerprints agree to ``rtol``, each kind of entry to its own
    magnitude: a row's sums to its sum of magnitudes, a sampled score to itself plus the
    largest sampled score (a score near zero still has the row's rounding), the counts of
    finite scores exactly. One scale for all entries would be the sums', which grow with K:
    at K=1000 it let through changes of 1.0 in every sampled score. Infinite entries must
    match exactly."""
    magnitude = np.abs(np.where(np.isfinite(previous), previous, 0.0))
    # entries 0-3 are the two rows' sums and sums of magnitudes, 4-5 their counts of finite
    # scores (which must match exactly); the samples follow
    row_sums, samples = np.tile(magnitude[2:4], 2), magnitude[6:]
    tolerance = rtol * np.concatenate([row_sums, np.zeros(2), samples + samples.max(initial=0.0)])
    with np.errstate(invalid="ignore"):
        close = np.abs(current - previous) <= tolerance
    both_nan = np.isnan(current) & np.isnan(previous)
    return bool(np.all(close | (current == previous) | both_nan))


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
