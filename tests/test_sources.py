"""Streaming sources: every way of reading the scores gives the in-memory answer, and every
way a streaming source can break stops the solve naming the rows it was reading."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
import threading
import tracemalloc
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import NUMPY_BACKENDS

import sinklabel
from sinklabel.datasets import make_scores
from sinklabel.distributed import _GuardedSource
from sinklabel.exp_cache import CachedSource
from sinklabel.heads import sinkhorn_heads
from sinklabel.progress import Progress, iterations_left
from sinklabel.sources import (
    ArrayLikeSource,
    CallableSource,
    CheckedSource,
    MemmapSource,
    Source,
    SourceError,
    as_source,
    checked,
    parse_memory,
)
from sinklabel.sources._base import WrappingSource

HAVE_H5PY = importlib.util.find_spec("h5py") is not None
N, K = 1003, 7
#: Scores are scaled so that the default lam=25 acts like lam=5: ~40 passes, fast tests.
SCALE = 0.2


@pytest.fixture(params=NUMPY_BACKENDS)
def numpy_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def scores64() -> np.ndarray:
    return SCALE * make_scores(N, K, regime="flat", seed=3, dtype=np.float64).scores


@pytest.fixture(scope="module")
def scores32() -> np.ndarray:
    return np.float32(SCALE) * make_scores(N, K, regime="flat", seed=4).scores


class Recorder:
    """fn(start, stop) over an array that logs every call."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.calls: list[tuple[int, int]] = []

    def __call__(self, start: int, stop: int) -> np.ndarray:
        self.calls.append((start, stop))
        return self.array[start:stop]


def ranges(n: int, rows: int) -> list[tuple[int, int]]:
    return [(a, min(n, a + rows)) for a in range(0, n, rows)]


def streamed_inputs(scores: np.ndarray, tmp_path: Path):
    """The same scores through each streaming source kind (an h5py dataset where h5py is
    installed: it is an optional dependency)."""
    path = tmp_path / "scores.npy"
    np.save(path, scores)
    inputs = {
        "npy path": str(path),
        "pathlike": path,
        "memmap": np.load(path, mmap_mode="r"),
        "callable": CallableSource(Recorder(scores), scores.shape, scores.dtype),
    }
    if HAVE_H5PY:
        import h5py

        h5 = h5py.File(tmp_path / "scores.h5", "w")
        h5["scores"] = scores
        inputs["h5py"] = h5["scores"]
    return inputs


# --- streamed solves agree with the in-memory one --------------------------------------------


@pytest.mark.parametrize("rows", [37, 400, 5000])
def test_streamed_solves_match_in_memory(scores64, tmp_path, numpy_backend, rows):
    reference = sinklabel.sinkhorn(scores64, K, backend=numpy_backend)
    for kind, logp in streamed_inputs(scores64, tmp_path).items():
        result = sinklabel.sinkhorn(logp, K, chunk_size=rows, backend=numpy_backend)
        np.testing.assert_array_equal(result.labels, reference.labels, err_msg=kind)
        np.testing.assert_allclose(result.potentials, reference.potentials, rtol=0, atol=1e-6,
                                   err_msg=kind)
        assert result.n_iter == reference.n_iter


def test_float32_streams_match_in_memory(scores32, tmp_path, numpy_backend):
    """Same blocks, same arithmetic: bit-identical to the in-memory solve with the same
    chunks; other chunkings differ only by float32 summation order."""
    same = sinklabel.sinkhorn(scores32, K, chunk_size=97, backend=numpy_backend)
    other = sinklabel.sinkhorn(scores32, K, backend=numpy_backend)
    for kind, logp in streamed_inputs(scores32, tmp_path).items():
        result = sinklabel.sinkhorn(logp, K, chunk_size=97, backend=numpy_backend)
        np.testing.assert_array_equal(result.potentials, same.potentials, err_msg=kind)
        np.testing.assert_array_equal(result.labels, other.labels, err_msg=kind)
        np.testing.assert_allclose(result.potentials, other.potentials, rtol=1e-5, atol=1e-5)


def test_big_endian_scores_solve_like_native_ones(scores64, tmp_path, numpy_backend):
    """HDF5 and .npy files written elsewhere may hold big-endian floats: they are the same
    float64 scores, not an unsupported dtype."""
    reference = sinklabel.sinkhorn(scores64, K, chunk_size=400, backend=numpy_backend)
    swapped = scores64.astype(">f8")
    inputs = {"in memory": swapped, **streamed_inputs(swapped, tmp_path)}
    for kind, logp in inputs.items():
        result = sinklabel.sinkhorn(logp, K, chunk_size=400, backend=numpy_backend)
        np.testing.assert_array_equal(result.labels, reference.labels, err_msg=kind)
        np.testing.assert_allclose(result.potentials, reference.potentials, rtol=0, atol=1e-10,
                                   err_msg=kind)


def test_streamed_plan_meets_the_label_marginal(scores64, tmp_path):
    """Independent oracle: the plan rebuilt here from the potentials has the target marginal."""
    path = tmp_path / "x.npy"
    np.save(path, scores64)
    result = sinklabel.sinkhorn(path, K, chunk_size=101, tol=1e-6)
    z = result.lam * scores64 + result.potentials
    q = np.exp(z - z.max(axis=1, keepdims=True))
    q /= q.sum(axis=1, keepdims=True)
    assert np.abs(q.mean(axis=0) - 1 / K).sum() <= 1e-6


def test_predict_and_soft_assignments_stream(scores64, tmp_path):
    path = tmp_path / "s.npy"
    np.save(path, scores64)
    result = sinklabel.sinkhorn(scores64, K)
    np.testing.assert_array_equal(result.predict(path, chunk_size=55), result.labels)
    np.testing.assert_allclose(result.soft_assignments(str(path), chunk_size=55),
                               result.soft_assignments(scores64), rtol=1e-12)


def test_callable_is_called_once_per_block_per_pass(scores64):
    fn = Recorder(scores64)
    result = sinklabel.sinkhorn(CallableSource(fn, scores64.shape, "float64"), K, chunk_size=300)
    # Checking the scores costs no pass of its own: one pass per iteration, one to label.
    assert fn.calls == ranges(N, 300) * (result.n_iter + 1)


def test_estimator_streams_and_infers_k_from_a_path(scores64, tmp_path):
    path = tmp_path / "s.npy"
    np.save(path, scores64)
    labeler = sinklabel.SinkhornLabeler(memory_limit="64KB").fit(path)
    reference = sinklabel.sinkhorn(scores64, K)
    np.testing.assert_array_equal(labeler.labels_, reference.labels)
    assert labeler.get_params()["memory_limit"] == "64KB"


# --- which source each input becomes ----------------------------------------------------------


def test_as_source_routes_each_input(tmp_path, scores32):
    path = tmp_path / "s.npy"
    np.save(path, scores32)
    assert isinstance(as_source(str(path)), MemmapSource)
    assert isinstance(as_source(path), MemmapSource)
    assert isinstance(as_source(np.load(path, mmap_mode="r")), MemmapSource)
    assert as_source(scores32).in_memory
    assert not as_source(path).in_memory


def test_an_array_like_of_a_torch_dtype_is_refused_by_name_before_any_pass(scores32):
    """Its dtype failed inside NumPy ("Cannot interpret 'torch.float32' as a data type")."""
    torch = pytest.importorskip("torch")

    class TensorRows:
        def __init__(self, scores):
            self.rows = torch.from_numpy(scores)
            self.shape, self.dtype = self.rows.shape, self.rows.dtype

        def __getitem__(self, key):
            raise AssertionError("read before the dtype was refused")

    with pytest.raises(TypeError, match=r"logp: a TensorRows of dtype torch.float32 .*"
                       r"CallableSource\(lambda start, stop: obj\[start:stop\]"):
        sinklabel.sinkhorn(TensorRows(scores32), scores32.shape[1])


def test_an_array_like_whose_slices_are_lists_is_told_so_not_pointed_at_callable_source(
        scores32):
    """Slices as lists become float64 arrays: the error pointed at CallableSource's dtype
    argument, which the caller of an array-like never used."""

    class ListRows:
        shape, dtype = scores32.shape, scores32.dtype

        def __getitem__(self, key):
            return scores32[key].tolist()

    with pytest.raises(SourceError, match=r"wrong dtype: expected float32, got float64 \(the "
                       r"array-like's slices must be arrays of its own dtype attribute"):
        sinklabel.sinkhorn(ListRows(), scores32.shape[1], chunk_size=10)


def test_as_source_reads_an_h5py_dataset_as_an_array_like(tmp_path, scores32):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "s.h5", "w") as h5:
        h5["x"] = scores32
        assert isinstance(as_source(h5["x"]), ArrayLikeSource)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_array_subclasses_are_read_as_plain_arrays_or_refused(scores64, numpy_backend):
    """np.matrix (what scipy.sparse's todense returns) is read as the array it views; a masked
    array is refused, since ignoring its mask would be silently wrong."""
    reference = sinklabel.sinkhorn(scores64, K, backend=numpy_backend)
    result = sinklabel.sinkhorn(np.asmatrix(scores64), K, backend=numpy_backend)
    np.testing.assert_array_equal(result.labels, reference.labels)
    assert type(result.labels) is np.ndarray and result.labels.shape == (N,)
    masked = np.ma.masked_array(scores64, mask=np.zeros(scores64.shape, dtype=bool))
    masked[:, 0] = np.ma.masked
    with pytest.raises(TypeError, match=r"masked.*filled\(-np.inf\)"):
        sinklabel.sinkhorn(masked, K, backend=numpy_backend)


@pytest.mark.parametrize("kind", ["csr_matrix", "coo_array"])
def test_scipy_sparse_scores_are_refused_by_name(scores64, kind):
    """A SciPy sparse matrix has a shape and a dtype, so it was read as an array-like and
    failed on its first slice ("wrong shape: expected (6000, 30), got ()")."""
    import scipy.sparse

    sparse = getattr(scipy.sparse, kind)(scores64)
    with pytest.raises(TypeError, match=rf"SciPy sparse {kind}: pass logp.toarray\(\)"):
        sinklabel.sinkhorn(sparse, K)


def test_memmap_source_reads_without_loading(tmp_path, scores32):
    path = tmp_path / "s.npy"
    np.save(path, scores32)
    source = as_source(path)
    blocks = [block for _, _, block in source.chunks(100)]
    assert all(type(b) is np.ndarray and not b.flags.owndata for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), scores32)


def test_views_ask_no_memory_per_row_and_functions_ask_for_their_blocks(tmp_path, scores32):
    """A memory budget counts what a source allocates per row: nothing for views of an array
    or a mapped file, a K-wide row of the dtype for a function's fresh blocks."""
    path = tmp_path / "s.npy"
    np.save(path, scores32)
    assert as_source(scores32).bytes_per_row() == 0
    assert as_source(str(path)).bytes_per_row() == 0
    fn = CallableSource(lambda a, b: scores32[a:b], scores32.shape, "float32")
    assert fn.bytes_per_row() == K * 4


@pytest.mark.parametrize(("dtype", "nbytes"), [("float16", 2), ("bfloat16", 2),
                                              ("float32", 4), ("float64", 8)])
def test_a_functions_blocks_are_budgeted_at_their_dtypes_size(dtype, nbytes):
    """Chunk sizing counts each score at its dtype's width, the 16-bit ones included."""
    source = CallableSource(lambda a, b: None, (10, K), dtype, library="torch")
    assert source.bytes_per_row() == K * nbytes


def test_bad_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        sinklabel.sinkhorn(tmp_path / "missing.npy", 3)
    text = tmp_path / "scores.txt"
    text.write_text("not an array")
    with pytest.raises(ValueError, match="not a .npy"):
        sinklabel.sinkhorn(text, 3)
    np.save(tmp_path / "flat.npy", np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="2-D"):
        sinklabel.sinkhorn(tmp_path / "flat.npy", 3)


def test_callable_source_checks_its_declaration():
    with pytest.raises(TypeError, match="fn must be callable"):
        CallableSource(np.zeros((3, 2)), (3, 2))
    with pytest.raises(ValueError, match="shape"):
        CallableSource(lambda a, b: None, (3,))
    with pytest.raises(ValueError, match="library"):
        CallableSource(lambda a, b: None, (3, 2), library="jax")
    for shape in [(-1, 2), (2, -1), (3, 2.5), (3, 2, 1)]:
        with pytest.raises(ValueError, match=r"shape must be \(N, K\)"):
            CallableSource(lambda a, b: None, shape)
    assert CallableSource(lambda a, b: None, (3.0, np.int64(2))).shape == (3, 2)
    # 0 rows is a valid declaration ("non-negative"): the solve refuses it, by its own name
    empty = CallableSource(lambda a, b: np.zeros((b - a, 2), np.float32), (0, 2))
    assert list(empty.chunks(4)) == []
    with pytest.raises(ValueError, match="non-empty"):
        sinklabel.sinkhorn(empty, 2)
    # bfloat16, which NumPy lacks, by name (test_streaming_cli_edges.py has NumPy's own)
    assert CallableSource(lambda a, b: None, (3, 2), "bfloat16", library="torch").dtype == \
        "bfloat16"


# --- failures stop the solve, naming the rows ------------------------------------------------


def failing(scores: np.ndarray, *, on_pass: int, at: int, make) -> CallableSource:
    """A callable source that misbehaves (``make(block)``) for the block starting at ``at``
    from pass ``on_pass`` on."""
    state = {"pass": 0}

    def fn(start: int, stop: int):
        if start == 0:
            state["pass"] += 1
        block = scores[start:stop]
        if start == at and state["pass"] >= on_pass:
            return make(block)
        return block

    return CallableSource(fn, scores.shape, scores.dtype)


def boom(block):
    raise OSError("disk went away")


CASES = {
    "raises": (boom, "the source raised OSError: disk went away"),
    "wrong shape": (lambda b: np.zeros((b.shape[0], K + 1), b.dtype), r"wrong shape"),
    "wrong rows": (lambda b: b[:-1], r"wrong row count"),
    "wrong dtype": (lambda b: b.astype(np.float32), r"wrong dtype: expected float64"),
    "not an array": (lambda b: b.tolist(), r"expected a numpy array"),
    "changed values": (lambda b: b + 0.5, r"the scores changed since the first pass"),
}


# A change needs an earlier pass to differ from, so it is only tried on pass 3.
@pytest.mark.parametrize(("case", "on_pass"), [
    (case, on_pass) for case in sorted(CASES) for on_pass in (1, 3)
    if (case, on_pass) != ("changed values", 1)
])
def test_broken_sources_stop_the_solve_naming_the_rows(scores64, case, on_pass):
    make, message = CASES[case]
    source = failing(scores64, on_pass=on_pass, at=600, make=make)
    expected = rf"rows \[600, 900\) on pass {on_pass}: {message}"
    with pytest.raises(SourceError, match=expected) as info:
        sinklabel.sinkhorn(source, K, chunk_size=300, max_iter=5)
    assert (info.value.start, info.value.stop, info.value.pass_index) == (600, 900, on_pass)
    if case == "raises":
        assert isinstance(info.value.__cause__, OSError)


def test_floating_point_noise_is_not_a_change(scores64):
    source = failing(scores64, on_pass=2, at=300, make=lambda b: b * (1 + 1e-9))
    sinklabel.sinkhorn(source, K, chunk_size=300)


def test_torch_blocks_from_a_numpy_source_are_rejected(scores64):
    torch = pytest.importorskip("torch")
    source = failing(scores64, on_pass=1, at=0, make=torch.from_numpy)
    with pytest.raises(SourceError, match=r"rows \[0, 300\).*expected a numpy array, got torch"):
        sinklabel.sinkhorn(source, K, chunk_size=300)


class Misbehaving(Source):
    """A hand-written source whose ranges go wrong."""

    def __init__(self, scores: np.ndarray, mode: str):
        self.scores, self.mode = scores, mode
        self.shape, self.dtype, self.library = scores.shape, str(scores.dtype), "numpy"

    def chunks(self, rows: int) -> Iterator:
        spans = ranges(self.shape[0], rows)
        if self.mode == "short":
            spans = spans[:-1]
        if self.mode == "long":
            spans = [*spans, (self.shape[0], self.shape[0] + 1)]
        if self.mode == "skip":
            spans = spans[:1] + spans[2:]
        for a, b in spans:
            yield a, b, self.scores[a:b] if b <= self.shape[0] else self.scores[:1]


@pytest.mark.parametrize(("mode", "message"), [
    ("short", r"rows \[900, 1003\) on pass 1: the source ended early"),
    ("long", r"rows \[1003, 1003\) on pass 1: the source yielded rows beyond N=1003: "
             r"\[1003, 1004\)"),
    ("skip", r"rows \[300, 600\) on pass 1: the source yielded rows \[600, 900\) instead"),
])
def test_sources_that_yield_the_wrong_rows(scores64, mode, message):
    with pytest.raises(SourceError, match=message):
        sinklabel.sinkhorn(Misbehaving(scores64, mode), K, chunk_size=300)


@pytest.mark.parametrize(("value", "message"), [
    (np.nan, "NaN"), (np.inf, r"\+inf"), (-np.inf, "no finite score"),
])
def test_bad_streamed_scores_are_caught_in_the_first_pass(scores64, value, message):
    bad = scores64.copy()
    bad[700] = value if value == -np.inf else bad[700]
    bad[700, 2] = value
    fn = Recorder(bad)
    with pytest.raises(ValueError, match=f"{message}.*row 700|row 700.*{message}"):
        sinklabel.sinkhorn(CallableSource(fn, bad.shape, "float64"), K, chunk_size=300)
    # The check ran inside the first pass: nothing was read beyond the bad block.
    assert fn.calls == [(0, 300), (300, 600), (600, 900)]


def test_a_failed_fit_leaves_the_estimator_as_it_was(scores64):
    labeler = sinklabel.SinkhornLabeler().fit(scores64)
    before = labeler.labels_.copy()
    with pytest.raises(SourceError):
        labeler.fit(failing(scores64, on_pass=2, at=0, make=boom))
    np.testing.assert_array_equal(labeler.labels_, before)


# --- memory budgets --------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("1GB", 10**9), ("1GiB", 2**30), ("512 MiB", 512 * 2**20), ("2.5G", int(2.5 * 2**30)),
    ("64kb", 64_000), ("100", 100), (12345, 12345), ("1e3KB", 10**6), ("7 B", 7),
    ("3MB", 3 * 10**6), ("2TB", 2 * 10**12), ("3k", 3 * 2**10), ("3 KiB", 3 * 2**10),
    ("5m", 5 * 2**20), ("1 gib", 2**30), ("2T", 2 * 2**40), ("2TiB", 2 * 2**40),
    (1, 1), ("1 B", 1),  # one byte: the smallest budget there is
])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize(("bad", "error"), [
    ("1XB", ValueError), ("GB", ValueError), ("-1GB", ValueError), (0, ValueError),
    (1.5e9, TypeError), (True, TypeError), (None, TypeError), ("1e400GB", ValueError),
    ("0.4", ValueError), ("1 GB extra", ValueError),
])
def test_parse_memory_rejects(bad, error):
    with pytest.raises(error, match="memory_limit"):
        parse_memory(bad)


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="reads Linux's /proc/meminfo")
def test_physical_memory_is_what_the_kernel_reports():
    from sinklabel.sources.memory import physical_memory

    total_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:"))
    # MemTotal leaves out the kernel's own reserved pages: within 5% of the physical pages.
    assert 1.0 <= physical_memory() / (total_kb * 1024) < 1.05


# --- sources that wrap another one ------------------------------------------------------------


class Declared(Source):
    """Metadata unlike any default: a wrapper that computed its own would differ."""

    in_memory = True

    def __init__(self):
        self.shape, self.dtype, self.library = (10, 3), "float16", "torch"

    def bytes_per_row(self) -> int:
        return 123

    def row_ranges(self, rows: int) -> Iterator[tuple[int, int]]:
        return iter([(0, 10)])

    def chunks(self, rows: int) -> Iterator:
        yield 0, 10, np.zeros((10, 3), np.float16)


class Passing(WrappingSource):
    def chunks(self, rows: int) -> Iterator:
        yield from self.inner.chunks(rows)


class Narrowed(Passing):
    """Overrides what it changes: one column, no memory of its own, in memory."""

    def __init__(self, inner: Source):
        super().__init__(inner)
        self.shape = (inner.shape[0], 1)
        self.in_memory = True

    def bytes_per_row(self) -> int:
        return 0


def test_a_wrapping_source_reports_its_inner_sources_metadata():
    wrapper = Passing(Declared())
    assert (wrapper.shape, wrapper.dtype, wrapper.library) == ((10, 3), "float16", "torch")
    assert wrapper.bytes_per_row() == 123
    assert list(wrapper.row_ranges(4)) == [(0, 10)]
    assert not wrapper.in_memory  # a promise about the wrapper itself: never inherited


def test_a_wrapping_source_overrides_what_it_changes():
    wrapper = Narrowed(Declared())
    assert (wrapper.shape, wrapper.dtype, wrapper.library) == ((10, 1), "float16", "torch")
    assert wrapper.bytes_per_row() == 0
    assert wrapper.in_memory
    assert list(wrapper.row_ranges(4)) == [(0, 10)]


def test_only_the_cache_passes_on_in_memory(scores32):
    """A check or a guard can stop a pass, so neither claims the scores are in memory; the
    cache reads nothing but the inner blocks. (Metadata only: no cache or collective.)"""
    in_memory = as_source(scores32)
    streamed = CallableSource(Recorder(scores32), scores32.shape)
    for inner in (in_memory, streamed):
        assert CachedSource(inner, cache=None).in_memory == inner.in_memory
        assert not CheckedSource(inner).in_memory
        assert not _GuardedSource(inner, collective=None).in_memory
    assert checked(CheckedSource(streamed)).inner is streamed


class RowsSpy(Source):
    """Records the rows per block the solver asks for."""

    def __init__(self, scores: np.ndarray):
        self.inner = as_source(scores)
        self.shape, self.dtype, self.library = self.inner.shape, self.inner.dtype, "numpy"
        self.rows: set[int] = set()

    def chunks(self, rows: int) -> Iterator:
        self.rows.add(rows)
        yield from self.inner.chunks(rows)


def test_memory_limit_sets_the_chunk_size(scores64):
    sizes = []
    for limit in ("60KB", "200KB", "1MB"):
        spy = RowsSpy(scores64)
        sinklabel.sinkhorn(spy, K, memory_limit=limit)
        (rows,) = spy.rows
        sizes.append(rows)
    assert sizes[0] < sizes[1] < sizes[2]
    with pytest.raises(ValueError, match="too small"):
        sinklabel.sinkhorn(scores64, K, memory_limit="1KB")
    with pytest.raises(ValueError, match="not both"):
        sinklabel.sinkhorn(scores64, K, memory_limit="1MB", chunk_size=10)


@pytest.mark.filterwarnings("ignore::sinklabel.ConvergenceWarning")
def test_memory_limit_bounds_the_solves_allocations(tmp_path):
    """tracemalloc sees every NumPy allocation: the solve stays within its budget."""
    scores = make_scores(20_000, 50, regime="flat", seed=1).scores
    path = tmp_path / "s.npy"
    np.save(path, scores)
    del scores
    budget = 1_500_000
    tracemalloc.start()
    try:
        sinklabel.sinkhorn(path, 50, memory_limit=budget, max_iter=3, tol=1e-9)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= budget


@pytest.mark.filterwarnings("ignore::sinklabel.ConvergenceWarning")
def test_memory_limit_counts_the_exact_solvers_arrays_with_balance_exact(tmp_path):
    """balance="exact" ran its exact solver's per-point arrays outside the budget: 200,000
    points peaked at 62 MB under memory_limit=8MB. They are now budgeted with the solve: a
    limit that cannot hold them is refused before any work, naming them, and one that can
    is kept (the scores are a float32 .npy map, read in place, not copied)."""
    from sinklabel.exact import solver_bytes

    n, k = 50_000, 20
    path = tmp_path / "s.npy"
    np.save(path, make_scores(n, k, regime="peaked", seed=3).scores)
    sinklabel.sinkhorn(path, k, balance="exact", max_iter=2)  # compiled outside the count
    exact = solver_bytes(n, k, "float32")
    with pytest.raises(ValueError, match=rf"\({exact} of them for the exact solver's arrays, "
                       r"balance='exact'\)"):
        sinklabel.sinkhorn(path, k, balance="exact", memory_limit=exact)
    budget = exact + 2_000_000
    tracemalloc.start()
    try:
        result = sinklabel.sinkhorn(path, k, balance="exact", memory_limit=budget, max_iter=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.certificate.optimal and peak <= budget
    assert exact > 4 * 2_000_000  # the arrays counted are most of the budget


# --- multiple heads --------------------------------------------------------------------------

KS = [5, 9, 3]


@pytest.fixture(scope="module")
def heads_scores() -> np.ndarray:
    blocks = [np.float32(SCALE) * make_scores(N, k, regime="flat", seed=k).scores for k in KS]
    return np.concatenate(blocks, axis=1)


def separate(scores: np.ndarray, **options) -> list:
    offsets = np.cumsum([0, *KS])
    return [sinklabel.sinkhorn(np.ascontiguousarray(scores[:, a:b]), b - a, **options)
            for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def test_heads_read_a_function_on_one_thread_which_ends_with_the_solve(heads_scores):
    """Each block was read by whichever head asked last, so each head thread's malloc arena
    kept a freed block: at memory_limit=32MB a function source's heads grew the process by
    63-70 MB (29 MB read on one thread). The function is now called on one thread, the
    reader's, which is gone once the solve returns."""
    threads = set()

    def fn(start, stop):
        threads.add(threading.current_thread().name)
        return heads_scores[start:stop].copy()

    sinkhorn_heads(CallableSource(fn, heads_scores.shape), KS, chunk_size=97)
    (name,) = threads
    assert name.startswith("sinklabel-reader")
    assert not [t for t in threading.enumerate() if t.name.startswith("sinklabel-reader")]


def test_heads_equal_separate_solves_with_one_read_per_pass(heads_scores):
    fn = Recorder(heads_scores)
    weights = [None, np.linspace(1, 2, 9), None]
    results = sinkhorn_heads(CallableSource(fn, heads_scores.shape), KS, chunk_size=97,
                             label_weights=weights)
    alone = separate(heads_scores, chunk_size=97)
    alone[1] = sinklabel.sinkhorn(np.ascontiguousarray(heads_scores[:, 5:14]), 9,
                                  chunk_size=97, label_weights=weights[1])
    for together, single in zip(results, alone, strict=True):
        np.testing.assert_array_equal(together.labels, single.labels)
        np.testing.assert_array_equal(together.potentials, single.potentials)
        assert together.n_iter == single.n_iter
    assert len({r.n_iter for r in results}) > 1, "heads should stop at their own tolerance"
    passes = max(r.n_iter for r in results) + 1
    assert fn.calls == ranges(N, 97) * passes


def test_heads_from_memory_and_a_file_with_a_budget(heads_scores, tmp_path):
    path = tmp_path / "heads.npy"
    np.save(path, heads_scores)
    alone = separate(heads_scores)
    for logp in (heads_scores, path):
        results = sinkhorn_heads(logp, KS, memory_limit="200KB")
        for together, single in zip(results, alone, strict=True):
            np.testing.assert_array_equal(together.labels, single.labels)
            np.testing.assert_allclose(together.potentials, single.potentials, atol=1e-5)


def test_heads_stop_together_on_a_failure(heads_scores):
    threads = threading.active_count()
    source = failing(heads_scores, on_pass=4, at=194, make=boom)
    with pytest.raises(SourceError, match=r"rows \[194, 291\) on pass 4"):
        sinkhorn_heads(source, KS, chunk_size=97)
    assert threading.active_count() == threads


def test_heads_check_their_arguments(heads_scores):
    with pytest.raises(ValueError, match="sum to 16"):
        sinkhorn_heads(heads_scores, [5, 9, 2])
    with pytest.raises(TypeError, match="Ks"):
        sinkhorn_heads(heads_scores, 17)
    with pytest.raises(ValueError, match="one entry per head"):
        sinkhorn_heads(heads_scores, KS, init=[None])
    with pytest.raises(ValueError, match="lam"):
        sinkhorn_heads(heads_scores, KS, lam=-1.0)


# --- progress ----------------------------------------------------------------------------------


def test_iterations_left_follows_a_geometric_error():
    history = [0.5**i for i in range(12)]
    assert iterations_left(history, tol=0.5**20) == pytest.approx(9)
    assert iterations_left([1.0, 1.0, 1.0], tol=1e-3) is None
    assert iterations_left(history[:2], tol=1e-3) is None


def test_a_solve_already_within_tol_has_no_iterations_left(monkeypatch, capsys):
    """Met on the first pass (or an error of exactly 0): nothing is left, however short the
    history; the plain line does not announce 1000 iterations and seconds still to go."""
    assert iterations_left([5e-4], tol=1e-3) == 0
    assert iterations_left([0.1, 0.0], tol=1e-3) == 0
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    sinklabel.sinkhorn(np.zeros((10, 1), dtype=np.float32), 1, progress=True)
    assert "sinkhorn: iteration 1/1, error 0.00e+00" in capsys.readouterr().err


def test_an_error_exactly_at_tol_has_no_iterations_left():
    """The solver stops at ``error <= tol``: an error equal to the tolerance has converged,
    and the estimate must say so rather than wait for a rate."""
    assert iterations_left([1e-3], tol=1e-3) == 0
    assert iterations_left([0.5, 0.25, 0.125], tol=0.125) == 0


def test_no_rate_is_measured_from_a_window_opening_on_an_infinite_error():
    """An infinite first error gives no geometric rate: the estimate stays unknown (None)
    instead of an infinite slope's "nothing left", which set the bar's total to this pass."""
    history = [math.inf] + [0.5**i for i in range(1, 5)]
    assert iterations_left(history, tol=1e-6) is None
    assert iterations_left(history + [0.5**i for i in range(5, 15)], tol=0.5**20) == (
        pytest.approx(6))


def test_plain_progress_ends_with_how_the_solve_ended(monkeypatch, capsys):
    """Without tqdm, lines come at most once a second, so a solve of a few passes showed only
    its first ("iteration 1/1000, ..., about 1509 s left"): the last line says how it ended."""
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    logp = np.log(np.random.default_rng(0).dirichlet(np.ones(5), size=500))
    result = sinklabel.sinkhorn(logp, 5, progress=True)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"sinkhorn: converged after {result.n_iter} iterations, error ")
    with pytest.warns(sinklabel.ConvergenceWarning):
        sinklabel.sinkhorn(logp, 5, progress=True, tol=1e-14, max_iter=2)
    assert "sinkhorn: stopped after 2 iterations" in capsys.readouterr().err


def test_progress_bar_total_tracks_the_estimate():
    bar = Progress(True, total=1000, tol=0.5**20)
    for i in range(1, 12):
        bar.update(i, 0.5**i)
    assert bar.estimated_total(11) == 20
    bar.close()


def test_progress_bar_draws_the_iteration_and_the_estimated_total(monkeypatch):
    """The bar counts the iterations, and its total follows the estimate, so tqdm's
    percentage and ETA mean "until converged", not "until max_iter"."""
    pytest.importorskip("tqdm")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # a terminal
    bar = Progress(True, total=1000, tol=0.5**20)
    assert bar._bar.total == 1000
    for i in range(1, 12):
        bar.update(i, 0.5**i)
    assert (bar._bar.n, bar._bar.total) == (11, 20)
    bar.close()


def test_plain_progress_closed_before_any_pass_prints_nothing(monkeypatch, capsys):
    """A solve that fails before its first pass closes the progress without an error to
    report: no closing line, and no error from the empty history."""
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    Progress(True, total=1000, tol=1e-3).close()
    assert capsys.readouterr().err == ""


def test_progress_total_follows_the_best_error_through_overshooting_trials():
    """A line search's overshooting trials interleave with the falling best error: the rate is
    the best error's, and a stall keeps the last estimate instead of going back to max_iter."""
    falling = [0.5**i for i in range(12)]
    zigzag = [e for pair in zip(falling, [10.0] * 12, strict=True) for e in pair]
    # The best error's last 10 values: 4 halvings in 9 passes; 9 halvings to go.
    assert iterations_left(zigzag, tol=0.5**20) == pytest.approx(9 * 9 / 4)
    bar = Progress(False, total=1000, tol=0.5**20)
    totals = []
    for i, error in enumerate(zigzag + [10.0] * 100, start=1):
        bar.history.append(error)
        totals.append(bar.estimated_total(i))
    assert totals[:2] == [1000, 1000]  # no rate yet
    assert 1000 not in totals[2:]
    assert totals[len(zigzag) - 1] == len(zigzag) + 21
    stalled = totals[len(zigzag) + 10:]  # the window holds no fall any more
    assert stalled[0] == stalled[50] > len(zigzag) + 21  # the last estimate holds
    assert totals[-1] == len(totals) + 1  # and never falls behind the solve


@pytest.mark.filterwarnings("ignore::sinklabel.ConvergenceWarning")
def test_progress_without_tqdm_prints_a_line(scores64, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    sinklabel.sinkhorn(scores64, K, progress=True, max_iter=2, tol=1e-12)
    assert "sinkhorn: iteration 1, error " in capsys.readouterr().err


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_with_heads(heads_scores, capsys, monkeypatch, terminal):
    """A bar per head on a terminal, each on its own line (tqdm's position); in a log, plain
    lines named by head, each closing with how that head ended."""
    pytest.importorskip("tqdm")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal, raising=False)
    sinkhorn_heads(heads_scores, KS, progress=True)
    err = capsys.readouterr().err
    assert all(f"head {t}" in err for t in range(len(KS)))
    assert ("\r" in err) == terminal
    if not terminal:
        assert all(f"head {t}: converged after" in err for t in range(len(KS)))


def test_importing_sources_device_needs_no_torch():
    code = "import sinklabel.sources.device, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_no_warnings_from_a_read_only_memmap(scores32, tmp_path):
    path = tmp_path / "s.npy"
    np.save(path, scores32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sinklabel.sinkhorn(np.load(path, mmap_mode="r"), K, chunk_size=101)


@pytest.mark.parametrize("shape", [(1003,), (1003, K, 1)])
def test_a_hand_written_source_declaring_no_matrix_is_named(scores64, shape):
    """Built-in sources check their own shape; a user's Source subclass is checked by the
    solve, naming the declared shape instead of failing to unpack it."""
    source = Misbehaving(scores64, "exact")
    source.shape = shape
    with pytest.raises(ValueError, match=r"logp must be 2-D \(N, K\), got shape \(1003,"):
        sinklabel.sinkhorn(source, K)
