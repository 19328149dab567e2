"""``cache=True``: the cached exponentials give the uncached answers, and read the scores less.

Oracles: a plain float64 NumPy log-sum-exp written here, and the uncached Numba solve.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from unittest import mock

import numpy as np
import pytest
from conftest import PastTheEnd
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import softmax_terms

pytest.importorskip("numba")

import sinklabel  # noqa: E402
from sinklabel import ConvergenceWarning, SinkhornLabeler, sinkhorn, solver  # noqa: E402
from sinklabel._budget import bytes_per_row, fixed_bytes  # noqa: E402
from sinklabel.datasets import make_scores  # noqa: E402
from sinklabel.exp_cache import (  # noqa: E402
    CachedKernel,
    CachedSource,
    default_cap,
    table_cap,
    with_exp_cache,
)
from sinklabel.kernels import _exp_cache as _exp_cache_kernels  # noqa: E402
from sinklabel.kernels import get_kernel  # noqa: E402
from sinklabel.sources import ArrayLikeSource, ArraySource, CallableSource, checked  # noqa: E402

NUMBA = get_kernel("numba")
#: Potential agreement between cached and uncached solves (float32 scores: the uncached kernel
#: computes ``lam * S + f`` in float32, which moves the potentials by this much on its own).
AGREE = {np.float32: 1e-4, np.float64: 1e-6}


def _reference(scores: np.ndarray, f: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    """Mean softmax of ``lam * S + f`` over rows and mean row log-sum-exp, in float64."""
    mass, lse = softmax_terms(scores, f, lam)
    return mass / len(scores), lse / len(scores)


def _cached(scores: np.ndarray, rows: int, cap: int | None = None):
    source = ArraySource(scores)
    cap = default_cap(scores.shape[1]) if cap is None else cap
    return with_exp_cache(source, NUMBA, rows, cap)


def _solve(scores, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return sinkhorn(scores, scores.shape[1], backend="numba", **options)


def _labels_agree_off_ties(scores, potentials, lam, a, b, margin=1e-3):
    """Labels equal wherever the best label beats the runner-up by more than ``margin``."""
    z = lam * scores.astype(np.float64) + potentials
    top2 = np.sort(z, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > margin
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(np.asarray(a)[clear], np.asarray(b)[clear])


# --- one pass against the float64 formula ----------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("regime", ["flat", "peaked"])
def test_cached_pass_matches_the_float64_formula_as_the_potentials_move(dtype, regime):
    scores = make_scores(700, 37, regime=regime, seed=5, dtype=dtype).scores
    source, kernel = _cached(scores, rows=256)
    rng = np.random.default_rng(0)
    f = np.zeros(37)
    tolerance = 1e-6 if dtype == np.float32 else 1e-12
    # small steps (answered by the tables), then large ones (rows repaired, tables rebuilt)
    for scale in (0.0, 0.5, 1.0, 2.0, 40.0, 300.0, 0.1, 1000.0):
        f = f + scale * rng.standard_normal(37)
        mass, lse = solver.dual_terms(source, kernel, f, 25.0, 256)
        expected_mass, expected_lse = _reference(scores, f, 25.0)
        # masses far below one rounding unit of the row sums are 0 here, as uncached
        np.testing.assert_allclose(mass, expected_mass, rtol=tolerance, atol=tolerance / 37)
        assert abs(lse - expected_lse) <= tolerance * max(1.0, abs(expected_lse))
    cache = source.cache
    assert cache.table_passes > 0 and cache.builds > 3  # both paths were taken


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60),
    k=st.integers(1, 40),
    lam=st.sampled_from([1.0, 10.0, 25.0, 200.0]),
    scale=st.sampled_from([0.1, 3.0, 30.0]),
    rows=st.integers(1, 64),
    cap=st.integers(1, 40),
    seed=st.integers(0, 2**16),
    task_rows=st.sampled_from([None, 1, 5]),
)
def test_cached_passes_are_exact_for_any_scores_chunks_and_cap(n, k, lam, scale, rows, cap,
                                                               seed, task_rows):
    """``task_rows``: tables built and swept in tasks of that many rows (and 40 entries), as
    chunks of thousands of rows are, rather than in one task per chunk at this size."""
    rng = np.random.default_rng(seed)
    scores = (scale * rng.standard_normal((n, k))).astype(np.float64)
    scores[rng.random((n, k)) < 0.1] = -np.inf
    scores[np.arange(n), rng.integers(0, k, n)] = 0.0  # every row keeps a finite score
    tasks = contextlib.nullcontext() if task_rows is None else mock.patch.multiple(
        _exp_cache_kernels, _TASK_ENTRIES=40,
        _row_ranges=lambda n_rows, _: [(lo, min(n_rows, lo + task_rows))
                                       for lo in range(0, n_rows, task_rows)])
    source, kernel = _cached(scores, rows=rows, cap=cap)
    f = np.zeros(k)
    for step in (0.0, 1.0, 20.0):
        f = f + step * rng.standard_normal(k)
        with tasks:
            mass, lse = solver.dual_terms(source, kernel, f, lam, rows)
            top, labels = kernel.best(next(source.chunks(n))[2], f, lam)
        expected_mass, expected_lse = _reference(scores, f, lam)
        np.testing.assert_allclose(mass, expected_mass, rtol=1e-10, atol=1e-14)
        assert abs(lse - expected_lse) <= 1e-10 * max(1.0, abs(expected_lse))
        z = lam * scores + f
        np.testing.assert_allclose(top, z.max(axis=1), rtol=1e-10)
        assert np.all(z[np.arange(n), labels] >= z.max(axis=1) - 1e-9 * np.abs(z.max(axis=1)))


def test_flat_rows_beyond_the_cap_are_computed_from_the_scores():
    scores = make_scores(300, 50, regime="flat", seed=2).scores
    scores[::7] = -1.0  # constant rows: every entry ties with the maximum, none can be dropped
    source, kernel = _cached(scores, rows=64, cap=4)
    f = np.random.default_rng(1).normal(size=50)
    mass, lse = solver.dual_terms(source, kernel, f, 25.0, 64)
    expected_mass, expected_lse = _reference(scores, f, 25.0)
    np.testing.assert_allclose(mass, expected_mass, rtol=1e-6)
    assert abs(lse - expected_lse) < 1e-6 * abs(expected_lse)
    assert source.cache.repaired_rows >= len(scores[::7])


@pytest.mark.parametrize(("tied", "cached"), [(16, True), (17, False)])
def test_a_chunk_is_cached_while_at_most_a_quarter_of_its_rows_fail(tied, cached, monkeypatch):
    """backends.md: a chunk whose table fails for more than a quarter of its rows is read
    from the scores instead. Rows tied in all 50 labels fail a table of 4 entries per row
    wherever it was built; peaked rows never do. Both chunks of 64 rows hold ``tied`` such
    rows, and the sums stay exact either way."""
    scores = make_scores(128, 50, regime="peaked", seed=2).scores
    scores[:tied] = scores[64:64 + tied] = -1.0
    source, kernel = _cached(scores, rows=64, cap=4)
    cache = source.cache
    tried = []
    build = cache.tables.build
    monkeypatch.setattr(cache.tables, "build", lambda *args: tried.append(1) or build(*args))
    for _ in range(2):
        mass, lse = solver.dual_terms(source, kernel, np.zeros(50), 25.0, 64)
    counts = (cache.builds, cache.table_passes, cache.raw_passes, cache.repaired_rows)
    assert counts == ((2, 2, 0, 4 * tied) if cached else (0, 0, 4, 0))
    assert len(tried) == 2  # a chunk beyond caching is not tried again
    expected_mass, expected_lse = _reference(scores, np.zeros(50), 25.0)
    np.testing.assert_allclose(mass, expected_mass, rtol=1e-6)
    assert abs(lse - expected_lse) < 1e-6 * abs(expected_lse)


def _far_label_scores() -> np.ndarray:
    """Peaked 64 x 50 float64 scores with label 49 30 below each row's best, but only 3
    below in rows 0-9 (75 nats at lam = 25)."""
    scores = make_scores(64, 50, regime="peaked", seed=2).scores.astype(np.float64)
    top = scores.max(axis=1)
    scores[:, 49] = top - 30.0
    scores[:10, 49] = top[:10] - 3.0
    return scores


def _table_built_at_zero(scores: np.ndarray):
    """A cached source of one 64-row chunk (4 entries per row), its kernel, and the chunk,
    its table built by one pass at zero potentials."""
    source, kernel = _cached(scores, rows=64, cap=4)
    solver.dual_terms(source, kernel, np.zeros(scores.shape[1]), 25.0, 64)
    ((_, _, chunk),) = source.chunks(64)
    return source, kernel, chunk


@pytest.mark.parametrize("task_entries", [1, 40, None], ids=["row tasks", "tasks", "one task"])
def test_labels_of_rows_a_table_fails_come_from_the_scores(task_entries, monkeypatch):
    """The labelling pass of a cached chunk takes the table's rows and computes the rows it
    fails (here 8 rows tied in all 50 labels, beyond a cap of 4) from the scores, in tables
    of one task or of many (each listing its failed rows)."""
    if task_entries is not None:
        monkeypatch.setattr(_exp_cache_kernels, "_TASK_ENTRIES", task_entries)
    scores = make_scores(64, 50, regime="peaked", seed=2).scores
    scores[8:16] = -1.0
    source, kernel, chunk = _table_built_at_zero(scores)
    top, labels = kernel.best(chunk, np.zeros(50), 25.0)
    assert source.cache.builds == 1
    z = 25.0 * scores.astype(np.float64)
    np.testing.assert_allclose(top, z.max(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(labels, z.argmax(axis=1))


def test_labels_from_a_table_take_the_first_of_tied_labels_and_follow_the_potentials():
    """Rows 10-17 tie exactly in labels 5 and 30: the first wins, as in np.argmax. Rows 0-9
    have label 49 75 nats (at lam = 25) below their best; once its potential rises by 100 it
    is their best, and the table built at zero potentials must label them so."""
    scores = _far_label_scores()
    top = scores.max(axis=1)
    scores[10:18] = np.minimum(scores[10:18], top[10:18, None] - 1.0)
    scores[10:18, 5] = scores[10:18, 30] = top[10:18]
    source, kernel, chunk = _table_built_at_zero(scores)
    for f in (np.zeros(50), np.eye(50)[49] * 100.0):
        best, labels = kernel.best(chunk, f, 25.0)
        z = 25.0 * scores + f
        np.testing.assert_allclose(best, z.max(axis=1), rtol=1e-12)
        np.testing.assert_array_equal(labels, z.argmax(axis=1))
    assert np.all(labels[:10] == 49) and np.all(labels[10:18] == 5)
    assert source.cache.builds == 1


def test_a_table_is_rebuilt_once_its_repairs_add_up_to_its_chunk():
    """backends.md: a table is rebuilt when its repairs since the build add up to the whole
    chunk (64 rows). Raising one label's potential makes a few rows fail the table built at
    zero, every pass, beside the rows that fail wherever it is built (those it was built
    with, which do not count); the sums stay exact throughout."""
    scores = _far_label_scores()
    source, kernel, _ = _table_built_at_zero(scores)
    cache = source.cache
    f = np.zeros(50)
    f[49] = 100.0
    builds, repaired = [], []
    for _ in range(40):
        before = cache.repaired_rows
        mass, lse = solver.dual_terms(source, kernel, f, 25.0, 64)
        builds.append(cache.builds)
        repaired.append(cache.repaired_rows - before)
    rebuilt = builds.index(2)
    assert builds[rebuilt:] == [2] * (40 - rebuilt)
    always = repaired[-1]  # rows the table fails at its own potentials
    moved = set(repaired[:rebuilt]) - {always}
    assert len(moved) == 1 and (step := moved.pop() - always) > 0
    assert rebuilt * step <= 64 < (rebuilt + 1) * step
    expected_mass, expected_lse = _reference(scores, f, 25.0)
    np.testing.assert_allclose(mass, expected_mass, rtol=1e-10, atol=1e-14)
    assert abs(lse - expected_lse) <= 1e-10 * abs(expected_lse)


def test_labels_beyond_uint16_are_indexed_correctly():
    k = 70_000
    scores = make_scores(6, k, regime="peaked", seed=1).scores
    source, kernel = _cached(scores, rows=4)
    f = np.random.default_rng(2).normal(size=k)
    mass, lse = solver.dual_terms(source, kernel, f, 25.0, 4)
    expected_mass, expected_lse = _reference(scores, f, 25.0)
    np.testing.assert_allclose(mass, expected_mass, rtol=1e-6, atol=1e-12)
    labels = solver.assign(source, kernel, f, 25.0, 4)
    np.testing.assert_array_equal(labels, np.argmax(25.0 * scores.astype(np.float64) + f, axis=1))


# --- whole solves against the uncached backend ------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("regime, lam", [("flat", 25.0), ("peaked", 10.0)])
def test_cached_solve_matches_the_uncached_solve(dtype, regime, lam):
    scores = make_scores(1000, 21, regime=regime, seed=3, dtype=dtype).scores
    tol = 1e-6 if dtype == np.float32 else 1e-10  # float32 passes are this noisy uncached
    options = dict(lam=lam, tol=tol, max_iter=300, chunk_size=333)  # 1000 = 3 * 333 + 1
    plain = _solve(scores, **options)
    cached = _solve(scores, cache=True, **options)
    assert cached.backend == "numba" and cached.converged and plain.converged
    np.testing.assert_allclose(cached.potentials, plain.potentials, rtol=0, atol=AGREE[dtype])
    _labels_agree_off_ties(scores, plain.potentials, lam, cached.labels, plain.labels)
    np.testing.assert_array_equal(cached.label_counts, np.bincount(cached.labels, minlength=21))


def test_float16_scores_are_cached_in_float32():
    scores = make_scores(500, 16, regime="flat", seed=15).scores.astype(np.float16)
    plain = _solve(scores, chunk_size=128)
    cached = _solve(scores, chunk_size=128, cache=True)
    np.testing.assert_allclose(cached.potentials, plain.potentials, atol=1e-4)
    _labels_agree_off_ties(scores, plain.potentials, 25.0, cached.labels, plain.labels)


def test_a_starved_label_forces_rebuilds_and_still_agrees():
    scores = make_scores(2000, 30, regime="peaked", seed=4, dtype=np.float64).scores
    scores[:, 7] -= 12.0  # no row wants label 7: its potential must climb by lam * ~12
    rows = 300
    source, kernel = _cached(scores, rows=rows)
    options = dict(lam=25.0, label_weights=np.full(30, 1 / 30), tol=1e-6, max_iter=500,
                   init=None, rows=rows, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cached = solver.solve(source, kernel, **options)
        plain = solver.solve(ArraySource(scores), NUMBA, **options)
    chunks = -(-2000 // rows)
    assert source.cache.builds > chunks  # the first tables did not last
    assert source.cache.table_passes > 0
    assert cached.converged and plain.converged
    np.testing.assert_allclose(cached.potentials, plain.potentials, atol=1e-6)


def test_init_far_from_the_solution_rebuilds_the_tables():
    scores = make_scores(1500, 40, regime="flat", seed=6, dtype=np.float64).scores
    init = np.linspace(-300.0, 300.0, 40)  # a range far beyond the first window
    source, kernel = _cached(scores, rows=512)
    options = dict(lam=25.0, label_weights=np.full(40, 1 / 40), tol=1e-12, max_iter=500,
                   init=init, rows=512, progress=False)
    cached = solver.solve(source, kernel, **options)
    plain = solver.solve(ArraySource(scores), NUMBA, **options)
    assert source.cache.builds > 3
    np.testing.assert_allclose(cached.potentials, plain.potentials, atol=1e-6)


def test_callable_source_is_called_far_less_often():
    scores = make_scores(3000, 50, regime="flat", seed=7).scores
    calls = {"cached": 0, "plain": 0}

    def source_for(name):
        def rows(start, stop):
            calls[name] += 1
            return scores[start:stop]

        return CallableSource(rows, scores.shape, "float32")

    plain = sinkhorn(source_for("plain"), 50, chunk_size=700, backend="numba")
    cached = sinkhorn(source_for("cached"), 50, chunk_size=700, cache=True)
    blocks = 5
    assert calls["plain"] == blocks * (plain.n_iter + 1)  # every pass, and the labels
    assert calls["cached"] == blocks  # flat scores: the first pass, then tables only
    np.testing.assert_allclose(cached.potentials, plain.potentials, atol=1e-4)
    _labels_agree_off_ties(scores, plain.potentials, 25.0, cached.labels, plain.labels)


def test_streamed_blocks_are_still_checked_when_read():
    scores = make_scores(400, 10, regime="flat", seed=8).scores
    bad = scores.copy()
    bad[321, 4] = np.nan
    source = CallableSource(lambda start, stop: bad[start:stop], bad.shape, "float32")
    with pytest.raises(ValueError, match="NaN.*row 321"):
        sinkhorn(source, 10, chunk_size=100, cache=True)


def test_cached_source_reads_only_the_blocks_it_needs():
    scores = make_scores(500, 10, regime="flat", seed=9).scores
    reads = []
    inner = checked(CallableSource(lambda a, b: reads.append(a) or scores[a:b], scores.shape))
    source, kernel = with_exp_cache(inner, NUMBA, 100, default_cap(10))
    assert isinstance(source, CachedSource) and isinstance(kernel, CachedKernel)
    f = np.zeros(10)
    solver.dual_terms(source, kernel, f, 25.0, 100)
    assert reads == [0, 100, 200, 300, 400]
    solver.dual_terms(source, kernel, f + 0.1, 25.0, 100)
    assert reads == [0, 100, 200, 300, 400]  # answered from the tables
    soft = kernel.soft(next(source.chunks(100))[2], f, 25.0)  # needs every entry: raw block
    assert soft.shape == (100, 10) and reads[-1] == 0


@pytest.mark.parametrize("kind", ["callable", "h5py"])
def test_a_block_the_tables_cannot_answer_is_read_alone(kind, tmp_path):
    """Only the last block is too flat to cache: later passes read that block, and not the
    blocks before it, which the tables answer (a function call each, or an HDF5 read)."""
    import h5py

    scores = make_scores(500, 200, regime="peaked", seed=13).scores
    scores[400:] = 0.0  # constant rows: every label ties, more than the cap can keep
    reads = []
    if kind == "callable":
        inner = CallableSource(lambda a, b: reads.append(a) or scores[a:b], scores.shape)
    else:
        with h5py.File(tmp_path / "s.h5", "w") as h5:
            h5["x"] = scores

        class LoggedDataset:
            def __init__(self, dataset):
                self.dataset, self.shape, self.dtype = dataset, dataset.shape, dataset.dtype

            def __getitem__(self, rows):
                reads.append(rows.start)
                return self.dataset[rows]

        inner = ArrayLikeSource(LoggedDataset(h5py.File(tmp_path / "s.h5", "r")["x"]))
    source, kernel = with_exp_cache(checked(inner), NUMBA, 100, default_cap(200))
    f = np.zeros(200)
    first = solver.dual_terms(source, kernel, f, 25.0, 100)
    assert reads == [0, 100, 200, 300, 400]
    del reads[:]
    second = solver.dual_terms(source, kernel, f, 25.0, 100)
    assert reads == [400]
    np.testing.assert_allclose(second[0], first[0], rtol=1e-12)
    labels = solver.assign(source, kernel, f, 25.0, 100)
    assert reads == [400, 400]
    np.testing.assert_array_equal(labels, NUMBA.best(scores, f, 25.0)[1])


# --- options, memory, errors ------------------------------------------------------------------


def test_memory_limit_bounds_the_tables():
    scores = make_scores(4000, 200, regime="flat", seed=10).scores
    source = ArraySource(scores)
    limit = 1_200_000
    rows = sinklabel.api._chunk_rows(None, NUMBA, source, limit, cache=True)
    cap = table_cap(source, NUMBA, rows, limit)
    assert 1 <= cap < default_cap(200)
    cached_source, kernel = with_exp_cache(source, NUMBA, rows, cap)
    spent = fixed_bytes(4000, 200) + rows * bytes_per_row(source, NUMBA)
    assert spent + cached_source.cache.budget <= limit
    solver.dual_terms(cached_source, kernel, np.zeros(200), 25.0, rows)
    assert 0 < cached_source.cache.nbytes <= cached_source.cache.budget
    plain = sinkhorn(scores, 200, memory_limit=limit)
    cached = sinkhorn(scores, 200, memory_limit=limit, cache=True)
    np.testing.assert_allclose(cached.potentials, plain.potentials, atol=1e-4)


def test_a_limit_that_exactly_holds_a_cap_gets_that_cap():
    """The tables may take every byte the limit leaves them. Worked out from backends.md: 24
    bytes per row, 6 per float32 entry and 8 * (K + 1) per chunk, so 10 entries per row in 4
    chunks of 250 rows take 1000 * 84 + 4 * 1608 bytes; a byte less holds only 9."""
    source = ArraySource(make_scores(1000, 200, regime="flat", seed=10).scores)
    tables = 1000 * (24 + 10 * 6) + 4 * 8 * 201
    limit = fixed_bytes(1000, 200) + 250 * bytes_per_row(source, NUMBA) + tables
    assert table_cap(source, NUMBA, 250, limit) == 10
    assert table_cap(source, NUMBA, 250, limit - 1) == 9
    # balance="exact": the exact solver's arrays are allocated while the tables are held,
    # so they come off what the tables get (they were given that room too)
    exact = 123_456
    assert table_cap(source, NUMBA, 250, limit + exact, exact) == 10
    assert table_cap(source, NUMBA, 250, limit + exact - 1, exact) == 9


def test_a_table_that_fills_the_budget_exactly_is_kept():
    """Rows with 4 tied labels far above the rest keep exactly the cap of 4 entries, so the
    one chunk's table takes the whole budget; it must still be used, not left uncached."""
    scores = np.full((64, 50), -10.0, np.float32)
    scores[:, :4] = 0.0
    source, kernel = _cached(scores, rows=64, cap=4)
    mass, _ = solver.dual_terms(source, kernel, np.zeros(50), 25.0, 64)
    cache = source.cache
    assert cache.nbytes == cache.budget and cache.n_entries == 64 * 4
    assert (cache.builds, cache.raw_passes) == (1, 0)
    np.testing.assert_allclose(mass, _reference(scores, np.zeros(50), 25.0)[0], rtol=1e-6,
                               atol=1e-12)


def test_a_budget_too_small_for_the_cache_is_refused_before_any_work():
    calls = []
    scores = make_scores(5000, 100, regime="flat", seed=11).scores
    source = CallableSource(lambda a, b: calls.append(a) or scores[a:b], scores.shape)
    # enough for chunks of a few rows, not for one cached entry per row on top
    limit = fixed_bytes(5000, 100) + 2 * 8000 + 5000 * 20
    with pytest.raises(ValueError, match="cache=True"):
        sinkhorn(source, 100, memory_limit=limit, cache=True)
    assert calls == []


def test_a_budget_too_small_for_the_chunks_names_the_limit_given():
    """With the cache, the chunks get half of memory_limit: the error still names the limit
    the caller passed, and the least that would let the chunks fit."""
    scores = make_scores(1000, 7, regime="flat", seed=12).scores
    limit = fixed_bytes(1000, 7) + 1000  # enough for chunks without the cache, not with it
    sinkhorn(scores, 7, memory_limit=limit)
    with pytest.raises(ValueError, match=f"memory_limit={limit} bytes") as error:
        sinkhorn(scores, 7, memory_limit=limit, cache=True)
    need = int(str(error.value).rsplit("at least ", 1)[1].split()[0])
    per_row = bytes_per_row(ArraySource(scores), NUMBA)
    assert need == 2 * (fixed_bytes(1000, 7) + per_row)
    sinklabel.api._chunk_rows(None, NUMBA, ArraySource(scores), need, cache=True)


def test_the_numpy_backend_refuses_the_cache_before_any_work():
    scores = np.zeros((8, 3), dtype=np.float32)
    calls = []
    source = CallableSource(lambda a, b: calls.append(a) or scores[a:b], (8, 3), "float32")
    for logp in (scores, source):
        # Before a budget too small for the problem, which would otherwise be named first.
        for budget in (None, "1KB"):
            with pytest.raises(ValueError, match="cache=True is an option of the 'numba' "
                               "backend, and of 'torch' for CPU tensors; this solve runs on "
                               "backend 'numpy'"):
                sinkhorn(logp, 3, backend="numpy", cache=True, memory_limit=budget)
    assert calls == []


def test_the_cache_refused_without_numba_says_to_install_it(monkeypatch):
    """Without Numba the refusal said to pass backend='numba', which only led to a second
    error saying what to install: it now says so at once."""
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "numba" else found(name, *args))
    with pytest.raises(ValueError, match=r"numba is not installed: pip install "
                       r"'sinklabel\[numba\]'"):
        sinkhorn(np.zeros((8, 3), dtype=np.float32), 3, backend="numpy", cache=True)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_cache_must_be_a_bool(value):
    with pytest.raises(TypeError, match="cache must be True or False"):
        sinkhorn(np.zeros((6, 3)), 3, cache=value)


def test_estimator_and_assign_labels_take_the_option():
    scores = make_scores(600, 12, regime="flat", seed=12).scores
    labeler = SinkhornLabeler(12, cache=True)
    assert labeler.get_params()["cache"] is True
    labels = labeler.fit_predict(scores)
    plain = sinkhorn(scores, 12)
    _labels_agree_off_ties(scores, plain.potentials, 25.0, labels, plain.labels)
    np.testing.assert_array_equal(sinklabel.assign_labels(scores, 12, cache=True), labels)
    labeler.partial_fit(scores)
    assert labeler.converged_


def test_exact_balance_runs_on_the_raw_scores():
    scores = make_scores(300, 6, regime="peaked", seed=13).scores
    plain = sinkhorn(scores, 6, balance="exact")
    cached = sinkhorn(scores, 6, balance="exact", cache=True)
    assert cached.certificate.optimal
    np.testing.assert_array_equal(cached.label_counts, plain.label_counts)
    assert abs(cached.certificate.primal - plain.certificate.primal) < 1e-4


def test_progress_bar_works_with_the_cache(capsys, monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # a terminal
    scores = make_scores(500, 10, regime="flat", seed=14).scores
    result = sinkhorn(scores, 10, cache=True, progress=True)
    assert result.converged
    err = capsys.readouterr().err
    assert "\rsinkhorn:" in err  # the bar drew (tqdm redraws at most every 0.1 s)


# --- the checking layer below the cache ---------------------------------------------------------


@pytest.mark.parametrize(("ending", "message"), [
    ("extra rows", r"yielded rows beyond N=600: \[600, 610\)"),
    ("raises", "raised OSError after its last block: after the end"),
])
def test_the_cache_lets_a_source_check_its_end(ending, message):
    """The cache asks a source read in order for one more item after its last block, as a
    plain pass does: closing it there would skip the checking layer's end-of-source checks."""
    scores = make_scores(600, 12, regime="peaked", seed=15).scores
    with pytest.raises(sinklabel.sources.SourceError,
                       match=rf"rows \[600, 600\) on pass 1: the source {message}"):
        sinkhorn(PastTheEnd(scores, ending), 12, chunk_size=200, cache=True)


@pytest.mark.parametrize(("failure", "message"), [
    ("raises", "the source raised OSError: disk went away"),
    ("changes", "the scores changed since the first pass"),
])
def test_a_source_error_names_the_solvers_pass(failure, message):
    """Passes answered from the tables read nothing, yet count: a block that fails when read
    again on the solver's fifth pass is reported on pass 5, not on the source's second read."""
    scores = make_scores(400, 10, regime="flat", seed=16).scores
    calls = []

    def fn(start, stop):
        calls.append(start)
        if len(calls) <= 4:
            return scores[start:stop]
        if failure == "raises":
            raise OSError("disk went away")
        return scores[start:stop] + np.float32(0.5)

    inner = checked(CallableSource(fn, scores.shape))
    source, kernel = with_exp_cache(inner, NUMBA, 100, default_cap(10))
    for _ in range(4):  # pass 1 reads every block; passes 2-4 are answered from the tables
        solver.dual_terms(source, kernel, np.zeros(10), 25.0, 100)
    assert calls == [0, 100, 200, 300]
    chunks = source.chunks(100)
    next(chunks)
    next(chunks)
    _, _, chunk = next(chunks)
    with pytest.raises(sinklabel.sources.SourceError,
                       match=rf"rows \[200, 300\) on pass 5: {message}") as error:
        chunk.raw()
    assert error.value.pass_index == 5
    chunks.close()
    # Outside the cache's passes, the checking layer counts the passes of its own readers.
    with pytest.raises(sinklabel.sources.SourceError, match="on pass 6"):
        inner.read(0, 100)


@pytest.mark.parametrize("lam", [0.5, 5.0, 25.0])
def test_every_chunk_pass_is_counted_once(lam):
    """A table built and then dropped (rows too flat to screen, at small lam) counted as a
    build and a raw pass: the counters added up to more passes than were made."""
    scores = make_scores(1000, 200, regime="flat", seed=8).scores
    source, kernel = _cached(scores, rows=300)
    f = np.zeros(200)
    for _ in range(4):
        solver.dual_terms(source, kernel, f, lam, 300)
    cache = source.cache
    assert cache.builds + cache.table_passes + cache.raw_passes == 4 * -(-1000 // 300)
