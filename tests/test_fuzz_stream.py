"""Differential fuzzing of streamed solves: every source kind, chunking and memory budget, with
and without the exponential cache, gives the in-memory answer.

Oracles: the in-memory NumPy solve of the same scores, and a float64 softmax written here for
the plan's label marginal. Examples are few and replayed (``tests/conftest.py``), so the suite
stays fast and repeatable; raise ``max_examples`` locally, or pass
``--hypothesis-profile=explore``, to search harder.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import NUMPY_BACKENDS, backend_params, changing_source, requires
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sinklabel
from sinklabel import ConvergenceWarning
from sinklabel._budget import block_state_bytes, bytes_per_row, fixed_bytes
from sinklabel._capacities import balanced_range
from sinklabel.datasets import make_scores
from sinklabel.kernels import exp_tables, get_kernel
from sinklabel.sources import CallableSource, SourceError, as_source

try:
    import h5py
except ImportError:  # an optional dependency: its datasets are left out of the draws
    h5py = None

#: Kinds whose blocks have the in-memory array's layout (C order, rows contiguous).
SAME_LAYOUT = ("npy str", "npy path", "read-only memmap",
               *(("h5py chunked gzip", "h5py") if h5py else ()), "callable view")
SOURCE_KINDS = (*SAME_LAYOUT, "callable fortran", "callable strided")
FUZZ = settings(max_examples=20, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _scores(n: int, k: int, regime: str, dtype: type, seed: int) -> np.ndarray:
    """Flat: log-softmax of small Gaussian logits (an untrained network); peaked: one clear
    label per row (a trained one). Scaled so that lam=25 solves in tens of passes."""
    scores = make_scores(n, k, regime=regime, seed=seed, dtype=np.float64).scores
    return (0.2 * scores).astype(dtype)


def _source(kind: str, scores: np.ndarray, directory: Path):
    """``scores`` read through one streaming source kind."""
    if kind.startswith("npy") or kind == "read-only memmap":
        path = directory / "scores.npy"
        np.save(path, scores)
        return {"npy str": str(path), "npy path": path}.get(kind) or np.load(path, mmap_mode="r")
    if kind.startswith("h5py"):
        file = h5py.File(directory / "scores.h5", "w")
        options = {"chunks": (max(1, scores.shape[0] // 3), scores.shape[1]),
                   "compression": "gzip"} if "chunked" in kind else {}
        return file.create_dataset("scores", data=scores, **options)
    layout = {
        "callable view": lambda block: block,
        "callable fortran": np.asfortranarray,
        "callable strided": lambda block: np.repeat(block, 2, axis=1)[:, ::2],
    }[kind]
    return CallableSource(lambda a, b: layout(scores[a:b]), scores.shape, scores.dtype)


def _solve(logp, k: int, **options):
    """A solve whose result the tests compare: its warnings (a label left empty by few rows,
    a tolerance not met) are the same for both of the solves compared."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", ".*labels received no points", UserWarning)
        return sinklabel.sinkhorn(logp, k, **options)


def _marginal(scores: np.ndarray, potentials: np.ndarray, lam: float) -> np.ndarray:
    """The plan's label marginal, in float64, independently of the kernels."""
    z = lam * scores.astype(np.float64) + potentials
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)).mean(axis=0)


def _assert_labels_agree_off_ties(scores, lam, a, b) -> None:
    """Labels equal wherever a row's best label beats the runner-up by more than both
    solves' potentials can disagree (twice their distance, and float noise)."""
    z = lam * scores.astype(np.float64) + a.potentials
    top2 = np.sort(z, axis=1)[:, -2:]
    apart = 2 * np.abs(a.potentials - b.potentials).max() + 1e-3 * lam
    clear = top2[:, 1] - top2[:, 0] > apart
    np.testing.assert_array_equal(np.asarray(a.labels)[clear], np.asarray(b.labels)[clear])


@st.composite
def problems(draw):
    n = draw(st.integers(2, 90))
    k = draw(st.integers(2, min(n, 9)))
    rows = draw(st.sampled_from([1, n - 1, n, n + 5, max(1, n // 3), 7]))
    return {
        "n": n, "k": k, "rows": max(1, rows),
        "regime": draw(st.sampled_from(["flat", "peaked"])),
        "dtype": draw(st.sampled_from([np.float64, np.float32, np.float16])),
        "kind": draw(st.sampled_from(SOURCE_KINDS)),
        "backend": draw(st.sampled_from(NUMPY_BACKENDS)),
        "seed": draw(st.integers(0, 2**16)),
    }


@FUZZ
@given(problem=problems())
def test_any_source_and_chunking_gives_the_in_memory_solve(problem, tmp_path_factory):
    """Same chunks of the same layout: the very same potentials and labels (same kernels,
    same blocks). Fortran or strided blocks: NumPy sums them in another order, so the last
    bits differ and the solve may take another path to tol. Either way a plan meeting tol,
    and exactly balanced labels of the optimal objective."""
    n, k, rows, backend = problem["n"], problem["k"], problem["rows"], problem["backend"]
    scores = _scores(n, k, problem["regime"], problem["dtype"], problem["seed"])
    source = _source(problem["kind"], scores, tmp_path_factory.mktemp("fuzz"))
    try:
        same = _solve(scores, k, chunk_size=rows, backend=backend)
        streamed = _solve(source, k, chunk_size=rows, backend=backend)
        if problem["kind"] in SAME_LAYOUT:
            np.testing.assert_array_equal(streamed.potentials, same.potentials)
            np.testing.assert_array_equal(streamed.labels, same.labels)
            assert streamed.n_iter == same.n_iter
        else:
            _assert_labels_agree_off_ties(scores, 25.0, streamed, same)
        if streamed.converged:
            error = np.abs(_marginal(scores, streamed.potentials, 25.0) - 1.0 / k).sum()
            assert error <= 1e-3 + 1e-5

        exact = _solve(source, k, chunk_size=rows, backend=backend, balance="exact")
        reference = _solve(scores, k, backend="numpy", balance="exact")
        lower, upper = balanced_range(n, np.full(k, 1.0 / k))
        counts = np.bincount(exact.labels, minlength=k)
        assert np.all((lower <= counts) & (counts <= upper))
        np.testing.assert_array_equal(exact.label_counts, counts)
        assert exact.certificate.optimal
        assert exact.certificate.primal == pytest.approx(reference.certificate.primal,
                                                         rel=1e-9, abs=1e-9)
    finally:
        if hasattr(source, "file"):
            source.file.close()


@FUZZ
@given(problem=problems())
def test_chunk_size_and_memory_limit_change_only_rounding(problem, tmp_path_factory):
    """float64 scores streamed in any chunks, or within any budget, solve as in memory."""
    n, k, backend = problem["n"], problem["k"], problem["backend"]
    scores = _scores(n, k, problem["regime"], np.float64, problem["seed"])
    source = _source(problem["kind"], scores, tmp_path_factory.mktemp("fuzz"))
    reference = _solve(scores, k, backend="numpy")
    # A budget that just fits blocks of ``rows`` rows and their fingerprints, as
    # docs/streaming.md splits it.
    rows = problem["rows"]
    per_row = bytes_per_row(as_source(source), get_kernel(backend))
    budget = fixed_bytes(n, k) + rows * per_row + block_state_bytes(n, rows)
    try:
        for options in ({"chunk_size": rows}, {"memory_limit": budget}):
            result = _solve(source, k, backend=backend, **options)
            np.testing.assert_allclose(result.potentials, reference.potentials, atol=1e-8)
            _assert_labels_agree_off_ties(scores, 25.0, result, reference)
    finally:
        if hasattr(source, "file"):
            source.file.close()


# --- what a function may return ---------------------------------------------------------------

SCORES = _scores(40, 5, "flat", np.float32, seed=1)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("backend", backend_params("numpy", "numba"))
@pytest.mark.parametrize("make", [
    np.asmatrix,                                   # indexing means something else
    lambda block: block.view(np.memmap),           # harmless subclass
    lambda block: block.astype(">f4"),             # big-endian float32 is float32
], ids=["matrix", "memmap", "big-endian"])
def test_array_subclasses_and_byte_orders_from_a_function_solve_as_plain_arrays(backend, make):
    reference = _solve(SCORES, 5, backend=backend, chunk_size=8)
    source = CallableSource(lambda a, b: make(SCORES[a:b]), SCORES.shape, "float32")
    result = _solve(source, 5, backend=backend, chunk_size=8)
    np.testing.assert_array_equal(result.potentials, reference.potentials)
    np.testing.assert_array_equal(result.labels, reference.labels)


@pytest.mark.parametrize("backend, cache", [
    ("numpy", False),
    pytest.param("numba", False, marks=requires("numba")),
    pytest.param("numba", True, marks=requires("numba")),
])
@pytest.mark.parametrize("make, message", [
    (lambda block: block.astype(np.float16), "wrong dtype: expected float32, got float16"),
    (lambda block: block.astype(np.float64), "wrong dtype: expected float32, got float64"),
    (lambda block: block[:, :4], "wrong shape: expected (8, 5), got (8, 4)"),
    (lambda block: block.T, "wrong shape: expected (8, 5), got (5, 8)"),
    (lambda block: block[:-1], "wrong row count: expected (8, 5), got (7, 5)"),
    (lambda block: np.ma.masked_greater(block, -1.0), "masked array"),
], ids=["float16", "float64", "columns", "transposed", "rows", "masked"])
def test_a_function_returning_the_wrong_block_is_named(backend, cache, make, message):
    """The first bad block stops the solve, named by its rows, whatever the backend; a masked
    block is refused (its mask would be ignored), as masked in-memory scores are."""
    def fn(start, stop):
        return make(SCORES[start:stop]) if start >= 16 else SCORES[start:stop]

    source = CallableSource(fn, SCORES.shape, "float32")
    with pytest.raises(SourceError, match="rows \\[16, 24\\) on pass 1") as caught:
        _solve(source, 5, backend=backend, chunk_size=8, cache=cache)
    assert message in str(caught.value)


def test_a_masked_hdf5_like_slice_is_refused(tmp_path):
    """Array-likes that mask their fill values (netCDF variables do) keep the mask to the
    checking layer, which refuses it rather than reading fill values as scores."""

    class Masked:
        shape, dtype = SCORES.shape, SCORES.dtype

        def __getitem__(self, rows):
            return np.ma.masked_greater(SCORES[rows], -1.0)

    with pytest.raises(SourceError, match="masked array"):
        _solve(Masked(), 5, chunk_size=8)


# --- the exact solver and the certificate read streams behind the same checks ------------------


def _certify(what: str, source):
    """One public entry point that reads the scores of ``source`` for the exact problem."""
    labels = sinklabel.solve_exact(SCORES, 5).labels
    if what == "solve_exact":
        return sinklabel.solve_exact(source, 5, chunk_size=8)
    if what == "duality_gap":
        return sinklabel.duality_gap(source, labels, np.zeros(5), chunk_size=8)
    if what == "check":
        return sinklabel.check(labels, source, chunk_size=8)
    return _solve(source, 5, chunk_size=8, balance="exact")


EXACT_READERS = ["solve_exact", "duality_gap", "check", "balance='exact'"]


@pytest.mark.parametrize("what", EXACT_READERS)
@pytest.mark.parametrize("make, message", [
    (lambda block: block[:-1], "wrong row count: expected (8, 5), got (7, 5)"),
    (lambda block: block[:, :4], "wrong shape: expected (8, 5), got (8, 4)"),
    (lambda block: block.astype(np.float16), "wrong dtype: expected float32, got float16"),
], ids=["rows", "columns", "float16"])
def test_exact_readers_name_a_wrong_block(what, make, message):
    """A short block once corrupted the heap: the exact solver sized its loops by N and read
    the rows the function returned."""
    source = CallableSource(lambda a, b: make(SCORES[a:b]) if a >= 16 else SCORES[a:b],
                            SCORES.shape, "float32")
    with pytest.raises(SourceError, match="rows \\[16, 24\\)") as caught:
        _certify(what, source)
    assert message in str(caught.value)


@pytest.mark.parametrize("what", EXACT_READERS)
def test_exact_readers_name_a_failing_source(what):
    def fn(start, stop):
        if start >= 24:
            raise OSError("network file system went away")
        return SCORES[start:stop]

    with pytest.raises(SourceError, match="rows \\[24, 32\\) on pass 1: the source raised"):
        _certify(what, CallableSource(fn, SCORES.shape, "float32"))


@pytest.mark.parametrize("what", ["solve_exact", "check", "balance='exact'"])
def test_exact_readers_notice_scores_that_change_between_passes(what):
    """The exact solver reads the scores once more for its certificate: a source returning
    other scores then would certify labels against scores they were not solved for."""
    passes = []

    def drifting(start, stop):
        passes.append(start == 0)
        return SCORES[start:stop] + np.float32(0.1 * sum(passes)) * np.arange(5, dtype="f4")

    with pytest.raises(SourceError, match="changed since the first pass"):
        _certify(what, CallableSource(drifting, SCORES.shape, "float32"))


@pytest.mark.parametrize("balance", [None, "exact"])
def test_labels_of_a_torch_function_are_torch_with_or_without_exact_balance(balance):
    torch = pytest.importorskip("torch")
    source = CallableSource(lambda a, b: torch.from_numpy(SCORES[a:b]), SCORES.shape,
                            "float32", library="torch")
    result = _solve(source, 5, chunk_size=8, balance=balance)
    reference = _solve(SCORES, 5, chunk_size=8, balance=balance)
    assert isinstance(result.labels, torch.Tensor)
    np.testing.assert_array_equal(result.labels.numpy(), reference.labels)
    exact = sinklabel.solve_exact(source, 5, chunk_size=8)
    assert isinstance(exact.labels, torch.Tensor)
    assert exact.objective == pytest.approx(sinklabel.solve_exact(SCORES, 5).objective)


def _reusing(scores: np.ndarray) -> CallableSource:
    """A function writing every block into one buffer, as a model's output buffer: a block is
    valid only until the next is requested."""
    buffer = np.empty_like(scores)

    def fn(start, stop):
        out = buffer[:stop - start]
        out[:] = scores[start:stop]
        return out

    return CallableSource(fn, scores.shape, scores.dtype)


@pytest.mark.parametrize("n, rows", [(70_000, None), (40, 8)])
def test_exact_solver_copies_the_blocks_of_a_source_that_reuses_its_buffer(n, rows):
    """The exact solver read blocks of 65,536 rows and kept views of them: past that size it
    solved for the last block's scores repeated and returned non-optimal labels."""
    scores = make_scores(n, 3, seed=2).scores
    optimum = sinklabel.solve_exact(scores, 3).objective
    exact = sinklabel.solve_exact(_reusing(scores), 3, chunk_size=rows)
    assert exact.objective == pytest.approx(optimum, rel=1e-12)
    result = _solve(_reusing(scores), 3, chunk_size=rows, balance="exact")
    assert result.certificate.optimal
    assert result.certificate.primal == pytest.approx(optimum, rel=1e-12)


# --- cache=True answers as cache=False ------------------------------------------------------


@requires("numba")
@FUZZ
@given(problem=problems(), lam=st.sampled_from([5.0, 25.0, 60.0]), cap=st.sampled_from([1, 2, 0]),
       far=st.booleans())
def test_the_cache_gives_the_uncached_solve(problem, lam, cap, far, tmp_path_factory):
    """Any source, chunking, and a budget that leaves the tables ``cap`` entries per row (0:
    no budget): rows cut short and rows the tables cannot answer after the potentials move
    (``far``: a start far from the solution) are computed from the scores, so the cached
    solve is the uncached one up to rounding."""
    n, k, rows = problem["n"], problem["k"], problem["rows"]
    scores = _scores(n, k, problem["regime"], np.float64, problem["seed"])
    source = _source(problem["kind"], scores, tmp_path_factory.mktemp("fuzz"))
    init = np.linspace(-3.0, 3.0, k) * lam if far else None
    options = {"lam": lam, "init": init, "backend": "numba", "tol": 1e-6}
    if cap:
        kernel = get_kernel("numba")
        chunks = -(-n // rows)
        blocks = (fixed_bytes(n, k) + rows * bytes_per_row(as_source(source), kernel)
                  + block_state_bytes(n, rows))
        tables = exp_tables(kernel).max_bytes(n, k, "float64", cap, chunks)
        options["memory_limit"] = 2 * blocks + tables
    else:
        options["chunk_size"] = rows
    try:
        cached = _solve(source, k, cache=True, **options)
        plain = _solve(source, k, cache=False, **options)
    finally:
        if hasattr(source, "file"):
            source.file.close()
    # Where the dual is flat (few rows, confident rows) many potentials meet tol: compare
    # what the solve promises, the plan's marginal, and the labels off near-ties.
    assert cached.converged == plain.converged
    for result in (cached, plain):
        if result.converged:
            assert np.abs(_marginal(scores, result.potentials, lam) - 1.0 / k).sum() <= 2e-6
    _assert_labels_agree_off_ties(scores, lam, cached, plain)


# --- scores that change between passes -----------------------------------------------------


def _dropout(block, rng, on_pass):
    """Noise of a dropout layer left on, from pass 2: N(0, 0.01) on every score."""
    noise = 0.01 * rng.standard_normal(block.shape) if on_pass >= 2 else 0.0
    return (block + noise).astype(block.dtype)


def _gpu_rounding(block, rng, on_pass):
    """A non-deterministic reduction's rounding: every score off by up to 1e-6 relative,
    differently on every pass (float32 keeps about 8 units in the last place of it)."""
    return (block * (1 + 1e-6 * rng.uniform(-1, 1, block.shape))).astype(block.dtype)


@pytest.mark.parametrize("k", [16, 1000])
def test_dropout_is_caught_on_the_second_pass_whatever_k(k):
    """Each kind of fingerprint entry is compared to its own magnitude: the rows' sums of
    magnitudes grow with K, and at K=1000 used to let 0.01 of noise on every score through."""
    scores = make_scores(1000, k, regime="peaked", seed=k).scores
    with pytest.raises(SourceError, match=r"rows \[0, 500\) on pass 2: the scores changed"):
        _solve(changing_source(scores, _dropout), k, chunk_size=500)


@pytest.mark.filterwarnings("ignore:.*labels received no points")  # 5 passes at K=1000
@pytest.mark.parametrize("k", [16, 1000])
def test_gpu_rounding_is_not_a_change_whatever_k(k):
    """Relative 1e-6 noise, with a label masked by -inf in every other row, the first of
    each block among them (an infinite fingerprint entry must match exactly, which it does)."""
    scores = make_scores(1000, k, regime="peaked", seed=k).scores
    scores[::2, 0] = -np.inf
    _solve(changing_source(scores, _gpu_rounding), k, chunk_size=500, max_iter=5)


def test_a_masked_score_that_turns_finite_is_a_change():
    scores = make_scores(100, 16, regime="peaked", seed=3).scores
    scores[:, 0] = -np.inf

    def unmask(block, rng, on_pass):
        return np.where(np.isinf(block), np.float32(-30), block) if on_pass >= 2 else block

    source = sinklabel.sources.checked(changing_source(scores, unmask))
    list(source.chunks(50))
    with pytest.raises(SourceError, match=r"rows \[0, 50\) on pass 2: the scores changed"):
        list(source.chunks(50))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_cpu_blocks_are_fingerprinted(dtype):
    """CPU tensors are read without a device sync, so they are checked as NumPy blocks are,
    also when they carry gradients (a model's output outside ``torch.no_grad``)."""
    torch = pytest.importorskip("torch")
    scores = torch.from_numpy(SCORES).to(getattr(torch, dtype))
    weight = torch.ones((), requires_grad=True)

    def drift(block, rng, on_pass):
        return block * weight + (0.5 if on_pass >= 2 else 0.0)

    with pytest.raises(SourceError, match=r"rows \[0, 8\) on pass 2: the scores changed"):
        _solve(changing_source(scores, drift, "torch"), 5, chunk_size=8)
    source = sinklabel.sources.checked(
        changing_source(scores, lambda b, rng, p: b * weight, "torch"))
    for _ in range(3):
        assert len(list(source.chunks(8))) == 5


@pytest.mark.filterwarnings("ignore:.*labels received no points")
def test_a_float16_unit_of_rounding_is_not_a_change_but_dropout_is():
    """A model on a GPU may round a float16 score one unit differently from pass to pass:
    at 1e-4 relative that stopped the solve; a dropout layer's change (here 0.3 on every
    score, several units) still does."""
    scores = make_scores(1000, 64, regime="peaked", seed=5).scores.astype(np.float16)

    def one_unit(block, rng, on_pass):
        flip = rng.random(block.shape) < 0.5
        return np.where(flip, np.nextafter(block, np.float16(np.inf)), block)

    def dropout(block, rng, on_pass):
        noise = 0.3 * rng.standard_normal(block.shape) if on_pass >= 2 else 0.0
        return (block + noise).astype(block.dtype)

    _solve(changing_source(scores, one_unit), 64, chunk_size=500, max_iter=5)
    with pytest.raises(SourceError, match=r"rows \[0, 500\) on pass 2: the scores changed"):
        _solve(changing_source(scores, dropout), 64, chunk_size=500)
