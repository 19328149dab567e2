"""The out-of-core GPU source, run on the CPU: the same slot rotation, staging thread and
ordering as on CUDA, with synchronous copies standing in for the copy stream."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

import sinklabel
from sinklabel.kernels import available_backends
from sinklabel.sources import CallableSource, Source, SourceError

torch = pytest.importorskip("torch")

from sinklabel.sources.device import DeviceStreamSource  # noqa: E402

N, K = 1003, 6


@pytest.fixture(scope="module")
def scores() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((N, K)).astype(np.float32)


def hosts(scores: np.ndarray, tmp_path) -> dict:
    path = tmp_path / "s.npy"
    np.save(path, scores)
    return {
        "numpy": scores,
        "npy": path,
        "tensor": torch.from_numpy(scores.copy()),
        "callable": CallableSource(lambda a, b: scores[a:b], scores.shape, "float32"),
    }


@pytest.mark.parametrize("buffers", [2, 3])
@pytest.mark.parametrize("copy_threads", [1, 3])
def test_blocks_arrive_in_order_through_rotating_slots(scores, tmp_path, buffers, copy_threads):
    for kind, host in hosts(scores, tmp_path).items():
        source = DeviceStreamSource(host, "cpu", buffers=buffers, copy_threads=copy_threads)
        assert (source.shape, source.dtype, source.library) == ((N, K), "float32", "torch")
        for _ in range(2):
            seen, slots = [], set()
            for start, stop, block in source.chunks(100):
                assert isinstance(block, torch.Tensor) and block.shape == (stop - start, K)
                seen.append(block.numpy().copy())
                slots.add(block.data_ptr())
            np.testing.assert_array_equal(np.concatenate(seen), scores, err_msg=kind)
            assert len(slots) == buffers, kind


def test_one_block_needs_one_slot(scores):
    blocks = list(DeviceStreamSource(scores, "cpu").chunks(5000))
    assert len(blocks) == 1 and torch.equal(blocks[0][2], torch.from_numpy(scores))


def test_slots_hold_the_rows_there_are_not_the_chunk_size(scores):
    """Slots of ``rows`` rows were allocated whatever N: a stream of 1003 rows asked for
    blocks of 2**40 rows needed 24 TB (on CUDA, a short stream's default chunk of 256 MB
    took that much pinned and device memory per slot)."""
    blocks = [(start, stop, block.numpy().copy())
              for start, stop, block in DeviceStreamSource(scores, "cpu").chunks(1 << 40)]
    assert [(start, stop) for start, stop, _ in blocks] == [(0, N)]
    np.testing.assert_array_equal(blocks[0][2], scores)


def test_host_failures_surface_with_their_rows(scores):
    def fn(a: int, b: int) -> np.ndarray:
        if a == 500:
            raise OSError("read error")
        return scores[a:b]

    threads = threading.active_count()
    source = DeviceStreamSource(CallableSource(fn, scores.shape, "float32"), "cpu")
    expected = r"rows \[500, 600\) on pass 1: the source raised OSError"
    with pytest.raises(SourceError, match=expected):
        for _ in source.chunks(100):
            pass
    assert threading.active_count() == threads


class _RowsBeyondN(Source):
    """A hand-written host source that yields one row more than its shape declares."""

    def __init__(self, scores: np.ndarray):
        self.scores, self.shape, self.dtype, self.library = scores, scores.shape, "float32", "numpy"

    def chunks(self, rows: int) -> Iterator:
        n = self.shape[0]
        for start in range(0, n, rows):
            yield start, min(n, start + rows), self.scores[start:start + rows]
        yield n, n + 1, self.scores[:1]


def test_host_rows_beyond_n_after_the_last_block_are_caught(scores):
    """The staging thread meets the extra rows only after the last block was handed on: the
    pass must still end with the host source's error, not as if it were complete."""
    source = DeviceStreamSource(_RowsBeyondN(scores), "cpu")
    with pytest.raises(SourceError, match=r"rows beyond N=1003"):
        list(source.chunks(100))


def test_host_changes_between_passes_are_caught(scores):
    calls = {"n": 0}

    def fn(a: int, b: int) -> np.ndarray:
        calls["n"] += 1
        return scores[a:b] + (1.0 if calls["n"] > 11 else 0.0)

    source = DeviceStreamSource(CallableSource(fn, scores.shape, "float32"), "cpu")
    list(source.chunks(100))
    with pytest.raises(SourceError, match=r"rows \[0, 100\) on pass 2: the scores changed"):
        list(source.chunks(100))


def test_stopping_early_stops_the_staging_thread(scores):
    threads = threading.active_count()
    stream = DeviceStreamSource(scores, "cpu", buffers=3).chunks(10)
    for _ in range(4):
        next(stream)
    stream.close()
    assert threading.active_count() == threads


def test_arguments_are_checked(scores):
    with pytest.raises(ValueError, match="buffers"):
        DeviceStreamSource(scores, "cpu", buffers=1)
    source = DeviceStreamSource(scores, "cpu", buffers=3)
    assert source.bytes_per_row() == 3 * K * 4


@pytest.mark.skipif("torch" not in available_backends(), reason="needs the torch backend")
def test_a_solve_through_the_stream_matches_in_memory(scores):
    reference = sinklabel.sinkhorn(scores, K, lam=5.0)
    result = sinklabel.sinkhorn(DeviceStreamSource(scores, "cpu"), K, lam=5.0, chunk_size=97)
    np.testing.assert_array_equal(result.labels.numpy(), reference.labels)
    np.testing.assert_allclose(result.potentials, reference.potentials, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_stream_delivers_the_host_scores(scores):
    for host in (scores, torch.from_numpy(scores).pin_memory()):
        source = DeviceStreamSource(host, "cuda")
        got = torch.cat([block.clone() for _, _, block in source.chunks(97)])
        np.testing.assert_array_equal(got.cpu().numpy(), scores)


def test_cuda_is_the_device_current_when_the_source_is_made(scores, monkeypatch):
    """Blocks are read where the solve runs, perhaps in another thread (sinkhorn_heads runs
    one per head, and a thread starts on device 0): "cuda" was resolved there, so rank 1 of
    a torchrun job had its slots on device 0 and its copies on a stream of device 1, whose
    events did not cover them. Here without CUDA: torch says device 1 is current."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: None)
    assert DeviceStreamSource(scores, "cuda").device == torch.device("cuda", 1)
    assert DeviceStreamSource(scores, "cuda:0").device == torch.device("cuda", 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_blocks_read_in_another_thread_arrive_on_the_sources_device(scores):
    """The same on CUDA: made under the last device, read in a new thread (on device 0)."""
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    with torch.cuda.device(device):
        source = DeviceStreamSource(scores, "cuda")
    blocks: list = []
    reader = threading.Thread(
        target=lambda: blocks.extend(block.clone() for _, _, block in source.chunks(97)))
    reader.start()
    reader.join()
    assert {block.device for block in blocks} == {device}
    np.testing.assert_array_equal(torch.cat(blocks).cpu().numpy(), scores)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_a_cuda_device_without_cuda_is_refused_by_name(scores):
    """torch's own error ("Torch not compiled with CUDA enabled", from deep in cudart) came
    only with page_lock=True; every CUDA stream is now refused at once, saying what to pass."""
    for page_lock in (False, True):
        with pytest.raises(RuntimeError, match="no CUDA device here.*device='cpu'"):
            DeviceStreamSource(scores, "cuda", page_lock=page_lock)


def test_page_lock_needs_cuda(scores):
    with pytest.raises(ValueError, match="needs a CUDA device"):
        DeviceStreamSource(scores, "cpu", page_lock=True)


@pytest.mark.gpu  # gpu_check.sh runs only the tests marked so
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_page_lock_needs_in_memory_c_contiguous_scores(scores):
    function = CallableSource(lambda a, b: scores[a:b], scores.shape, "float32")
    with pytest.raises(ValueError, match="in memory"):
        DeviceStreamSource(function, "cuda", page_lock=True)
    with pytest.raises(ValueError, match="C-contiguous"):
        DeviceStreamSource(np.asfortranarray(scores), "cuda", page_lock=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_page_locked_host_streams_directly_and_is_unlocked_on_close(scores):
    host = scores.copy()
    view = torch.from_numpy(host)
    with DeviceStreamSource(host, "cuda", page_lock=True) as source:
        assert view.is_pinned() and source.bytes_per_row() == 0  # no staging slots
        got = torch.cat([block.clone() for _, _, block in source.chunks(97)])
        np.testing.assert_array_equal(got.cpu().numpy(), scores)
        result = sinklabel.sinkhorn(source, K, lam=5.0, chunk_size=97)
    assert not view.is_pinned()
    reference = sinklabel.sinkhorn(scores, K, lam=5.0)
    np.testing.assert_allclose(result.potentials, reference.potentials, atol=1e-5)
    np.testing.assert_array_equal(host, scores)  # the caller's array is untouched


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_page_locked_memory_map_streams_the_file(scores, tmp_path):
    path = tmp_path / "s.npy"
    np.save(path, scores)
    with DeviceStreamSource(path, "cuda", page_lock=True) as source:  # read-only mapping
        assert source.bytes_per_row() == 0
        got = torch.cat([block.clone() for _, _, block in source.chunks(97)])
    np.testing.assert_array_equal(got.cpu().numpy(), scores)
