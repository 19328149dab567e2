"""The checking layer's bookkeeping: which reads make a pass (errors name it), which
iterators it closes, when it wraps again, and what its fingerprints tell apart."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import changing_source

from sinklabel.sources import CallableSource, Source, SourceError, checked
from sinklabel.sources.checked import (
    FINGERPRINT_SAMPLES,
    CheckedSource,
    _on_host,
    end_pass,
)

SCORES = np.random.default_rng(0).normal(size=(12, 40))


def stream() -> CallableSource:
    """The scores as a function source, the same every pass."""
    return CallableSource(lambda start, stop: SCORES[start:stop], SCORES.shape, SCORES.dtype)


def test_reads_in_row_order_make_one_pass_and_a_read_back_starts_another():
    source = CheckedSource(stream())
    for start in (0, 4, 8):
        source.read(start, start + 4)
    assert source.passes == 1
    source.read(8, 12)  # the same block again
    assert source.passes == 2
    source.read(4, 8)
    assert source.passes == 3


def test_a_solver_pass_counts_once_and_later_passes_count_again():
    source = CheckedSource(stream())
    with source.solver_pass():
        list(source.chunks(4))
        source.read(0, 4)
        source.read(0, 4)
    assert source.passes == 1
    list(source.chunks(4))
    source.read(0, 4)
    assert source.passes == 3


def test_ending_a_pass_closes_its_iterator_or_leaves_one_without_close():
    closed = []

    def blocks():
        try:
            yield from range(3)
        finally:
            closed.append(True)

    running = blocks()
    next(running)
    end_pass(running, read_to_end=False)
    assert closed == [True]
    plain = iter([1, 2, 3])
    end_pass(plain, read_to_end=True)  # asked for one more block, then nothing to close
    assert next(plain) == 2


def test_a_new_value_check_wraps_the_stream_again_and_no_check_keeps_its_layer():
    layer = CheckedSource(stream())
    assert checked(layer) is layer  # its fingerprints are shared
    seen = []
    rechecked = checked(layer, lambda start, block: seen.append(start))
    assert rechecked is not layer and rechecked.inner is layer.inner
    list(rechecked.chunks(5))
    assert seen == [0, 5, 10]


def test_a_row_permuted_between_passes_is_a_change():
    """Swapping two sampled scores of a row keeps its sums and counts: only the samples,
    taken across the whole row, tell the passes apart."""
    K = SCORES.shape[1]
    samples = np.arange(K)[:: max(1, K // FINGERPRINT_SAMPLES)][:FINGERPRINT_SAMPLES]
    a, b = samples[-2], samples[-1]

    def swap(block, rng, on_pass):
        block = block.copy()
        if on_pass >= 2:
            block[0, [a, b]] = block[0, [b, a]]
        return block

    source = checked(changing_source(SCORES, swap))
    list(source.chunks(6))
    with pytest.raises(SourceError, match=r"rows \[0, 6\) on pass 2: the scores changed"):
        list(source.chunks(6))


def test_a_unit_of_rounding_on_a_small_float16_score_is_noise():
    """A sampled score near 0 is compared to itself plus the largest sampled score: a unit of
    the row's rounding is noise however small the score is."""
    scores = SCORES.astype(np.float16)
    step = max(1, scores.shape[1] // FINGERPRINT_SAMPLES)  # between sampled columns
    scores[[0, -1], 0] = 0.01  # sampled in the first and last rows
    scores[[0, -1], step] = 30.0  # sampled too: the rows' largest sample

    def rounded(block, rng, on_pass):
        block = block.copy()
        if on_pass >= 2:
            block[[0, -1], 0] += np.float16(0.015625)  # a unit in the last place at 30
        return block

    source = checked(changing_source(scores, rounded))
    for _ in range(3):
        assert len(list(source.chunks(12))) == 1


class ClosingSource(Source):
    """A hand-written source whose iterator of blocks records when it is closed (as one
    holding a file open would release it); from row 4 on its blocks have the wrong dtype."""

    def __init__(self):
        self.shape, self.dtype, self.library = SCORES.shape, "float64", "numpy"
        self.closed = []

    def chunks(self, rows):
        try:
            for start in range(0, SCORES.shape[0], rows):
                block = SCORES[start:start + rows]
                yield start, start + rows, block if start < 4 else block.astype(np.float32)
        finally:
            self.closed.append(True)


def test_a_pass_ended_by_a_bad_block_closes_the_sources_iterator_at_once():
    """Not when the error, whose traceback holds the pass, is let go: a file would stay open
    while the caller handles the error."""
    inner = ClosingSource()
    with pytest.raises(SourceError, match=r"rows \[4, 8\) on pass 1: wrong dtype") as info:
        list(checked(inner).chunks(4))
    assert inner.closed == [True]
    assert info.value.__traceback__ is not None  # still held here


def test_only_host_blocks_are_fingerprinted():
    """A block on a device is not: reading its rows would synchronise with the device on
    every block (a meta tensor stands in for a CUDA one)."""
    torch = pytest.importorskip("torch")
    assert _on_host(SCORES) and _on_host(torch.from_numpy(SCORES))
    assert not _on_host(torch.zeros(2, 3, device="meta"))
