"""The exact layer as a user who needs certified answers meets it: errors that say what is
wrong, and a memory check that counts every large array before the scores are read."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import run_python

import sinklabel
from sinklabel import _transport_loops, exact
from sinklabel._transport import CANDIDATES
from sinklabel.sources import CallableSource, as_source, checked


def unread_rows(start: int, stop: int) -> np.ndarray:
    raise AssertionError("the scores were read before the memory check")


def over_forced_scores() -> tuple[np.ndarray, np.ndarray]:
    """20 points can take only label 0, whose size is 10: more points than it may take,
    while every label has plenty of rows with a finite score for it."""
    S = np.random.default_rng(0).normal(size=(200, 4))
    S[:20, 1:] = -np.inf
    return S, np.array([10, 70, 60, 60])


@pytest.mark.parametrize("method", ["auction", "highs"])
@pytest.mark.parametrize("start", [None, np.zeros(4)])
def test_a_label_forced_beyond_its_size_is_not_called_short_of_points(method, start):
    """The error said that labels "need more points than have finite scores for them", the
    opposite of this problem: it now names both ways the -inf entries can leave no labelling."""
    S, sizes = over_forced_scores()
    with pytest.raises(ValueError, match="more points than they may take") as failure:
        sinklabel.solve_exact(S, 4, capacities=sizes, method=method, prices=start)
    assert "need more points than have finite scores" not in str(failure.value)


@pytest.mark.parametrize("pair", [[[1, 1, 1], [3, 3, 3]], np.array([[1, 1, 1], [3, 3, 3]])])
def test_ranges_stacked_in_one_array_are_told_to_be_a_tuple(pair):
    """np.array([lower, upper]) or a list of the two was refused as sizes of the wrong shape,
    which did not say how to pass a range."""
    with pytest.raises(ValueError, match=r"pass ranges as a tuple \(lower, upper\)"):
        sinklabel.solve_exact(np.zeros((6, 3)), 3, capacities=pair)


def test_no_labels_as_an_empty_list_are_no_labels():
    """A distributed rank without rows passes labels=[], which NumPy reads as float64: it was
    refused as "0 integers, got dtype float64" (the 3-rank case in test_distributed_edges.py
    runs it across ranks, with --runslow)."""
    from sinklabel._validation import check_labels

    for empty in ([], np.zeros(0), ()):
        labels = check_labels(empty, 0, 3)
        assert labels.dtype == np.int64 and labels.shape == (0,)
    with pytest.raises(ValueError, match="labels must be 2 integers, got shape \\(0,\\)"):
        check_labels([], 2, 3)


def test_ranges_of_unequal_lengths_in_a_list_are_named():
    """NumPy's own error for the ragged list named no argument."""
    with pytest.raises(ValueError, match="capacities could not be read as one array: "):
        sinklabel.solve_exact(np.zeros((6, 3)), 3, capacities=[[1, 1, 1], [3, 3]])


def test_memory_check_counts_the_label_graph_before_reading_a_score(monkeypatch):
    """The exact finish builds a K x K label graph (17 bytes a pair): 6.7 GiB for K = 20,000,
    whatever N. The check counted per-point arrays only, let this 10-row stream through on
    a 1 GiB machine, and the solve would fail after reading it; now it is refused first."""
    monkeypatch.setattr(exact, "physical_memory", lambda: 1 << 30)
    stream = CallableSource(unread_rows, (10, 20_000), dtype="float32")
    with pytest.raises(MemoryError, match="GiB for the K x K label graph"):
        sinklabel.solve_exact(stream, 20_000, capacities=np.r_[np.ones(10), np.zeros(19_990)])


def test_label_graph_fits_beside_the_points(monkeypatch):
    """Memory for the points and the label graph, and no more, passes the check."""
    N, K = 1000, 50
    S = np.zeros((N, K), dtype=np.float32)  # read in place: no copy counted
    need = N * (16 * (8 + 4) + exact.POINT_BYTES) + K * K * exact.PAIR_BYTES
    monkeypatch.setattr(exact, "physical_memory", lambda: need)
    exact.check_host_memory(as_source(S))
    monkeypatch.setattr(exact, "physical_memory", lambda: need - 1)
    with pytest.raises(MemoryError):
        exact.check_host_memory(as_source(S))


def test_the_memory_error_gives_each_part_in_gib(monkeypatch):
    """Streamed float64 scores are copied: 2**18 points x 2**12 labels take 8 GiB, the
    points' arrays 2**18 * (CANDIDATES * 16 + POINT_BYTES) bytes (16 for a candidate: its
    label and score), the K x K label graph 2**24 * PAIR_BYTES, and the machine here has
    8 GiB."""
    N, K = 2**18, 2**12
    source = CallableSource(unread_rows, (N, K), "float64")
    monkeypatch.setattr(exact, "physical_memory", lambda: 8 * 2**30)
    graph = K * K * exact.PAIR_BYTES / 2**30
    total = 8 + N * (CANDIDATES * 16 + exact.POINT_BYTES) / 2**30 + graph
    with pytest.raises(MemoryError) as error:
        exact.check_host_memory(source)
    assert str(error.value).startswith(
        f"the exact solver needs about {total:.3g} GiB of host memory for N={N}, K={K} "
        f"(8 GiB of it for a copy of the scores, {graph:.3g} GiB for the K x K label graph), "
        "more than this machine's 8 GiB")


def sources(tmp_path) -> dict[str, tuple[object, np.ndarray]]:
    """Scores in every form the exact solver reads, each with the array holding them."""
    S = np.log(np.random.default_rng(1).dirichlet(np.ones(5), size=40)).astype(np.float32)
    fortran = np.asfortranarray(S)
    np.save(tmp_path / "c.npy", S)
    np.save(tmp_path / "f.npy", fortran)
    np.save(tmp_path / "be.npy", S.astype(">f4"))
    mapped = {name: np.load(tmp_path / f"{name}.npy", mmap_mode="r") for name in ("c", "f", "be")}
    half = S.astype(np.float16)
    return {
        "C float32": (S, S),
        "C float64": (S.astype(np.float64),) * 2,
        "Fortran": (fortran, fortran),
        "float16": (half, half),
        "row slice": (S[::2], S),
        "memmap": (mapped["c"], mapped["c"]),
        "Fortran memmap": (mapped["f"], mapped["f"]),
        "big-endian memmap": (mapped["be"], mapped["be"]),
        "stream": (CallableSource(lambda a, b: S[a:b], S.shape, "float32"), S),
    }


@pytest.mark.parametrize("name", ["C float32", "C float64", "Fortran", "float16", "row slice",
                                  "memmap", "Fortran memmap", "big-endian memmap", "stream"])
def test_scores_are_copied_exactly_where_the_memory_check_counts_a_copy(tmp_path, name):
    """The memory check and the solver's read of the scores decide alike whether the scores
    are copied: one function decides for both."""
    logp, holder = sources(tmp_path)[name]
    source = checked(as_source(logp))
    host, _ = exact._host_scores(source, rows=7)
    assert host.flags.c_contiguous and host.dtype in (np.float32, np.float64)
    expected = holder if name == "stream" else np.asarray(logp)
    assert np.array_equal(host, expected.astype(host.dtype))
    assert exact._scores_copied(source) == (not np.shares_memory(host, holder))


@pytest.mark.parametrize(("dtype", "in_place"), [("float32", True), ("float64", True),
                                               ("bfloat16", False), ("float16", False)])
def test_cpu_tensors_are_read_in_place_when_their_dtype_allows(dtype, in_place):
    """A float32 or float64 CPU tensor is viewed, not copied (nor counted as a copy); a 16-bit
    one is widened into a copy."""
    torch = pytest.importorskip("torch")
    S = np.log(np.random.default_rng(2).dirichlet(np.ones(5), size=40))
    tensor = torch.from_numpy(S).to(getattr(torch, dtype))
    source = checked(as_source(tensor))
    host, like = exact._host_scores(source, rows=7)
    np.testing.assert_array_equal(host, tensor.double().numpy().astype(host.dtype))
    assert like is tensor
    holder = tensor.view(torch.int16 if tensor.element_size() == 2 else tensor.dtype).numpy()
    assert np.shares_memory(host, holder) == in_place
    assert exact._scores_copied(source) == (not in_place)


def test_float32_allowance_without_the_exact_solve_is_as_documented():
    """exact.md: without the exact solve, float32 logits near 1e6 are allowed about 0.24 per
    point, so a labelling that loses 1 passes the one-pass certificate, not the exact check."""
    rng = np.random.default_rng(0)
    S = (1e6 + rng.integers(-8, 8, size=(200, 4)) / 4).astype(np.float32)
    best = sinklabel.solve_exact(S, 4)
    worse = np.asarray(best.labels).copy()
    S64 = S.astype(np.float64)
    i, j = next((i, j) for i in range(200) for j in range(200)
                if S64[i, worse[j]] + S64[j, worse[i]] == S64[i, worse[i]] + S64[j, worse[j]] - 1)
    worse[i], worse[j] = worse[j], worse[i]
    bounded = sinklabel.check(worse, S, exact=False, prices=best.prices)
    assert bounded.certificate.rounding / 200 == pytest.approx(0.24, abs=0.01)
    assert bounded.gap == pytest.approx(1.0) and bounded.optimal
    assert not sinklabel.check(worse, S).optimal
    page = " ".join((Path(__file__).parents[1] / "docs" / "exact.md").read_text().split())
    assert "about 0.24 per point for logits near `1e6`" in page


def test_exact_passes_ask_a_stream_for_blocks_no_larger_than_a_solve_does(monkeypatch):
    """The GPU kernels take every row at once (``chunk_rows`` is huge): the Sinkhorn solve
    caps a stream's blocks, but the exact solver, the certificate and ``check`` asked a
    function for all N rows in one call (a DeviceStreamSource: N x K on the device)."""
    from sinklabel.kernels.numpy import NumpyKernel

    cap = 4 << 10
    monkeypatch.setattr(sinklabel._budget, "STREAM_BLOCK_BYTES", cap)
    monkeypatch.setattr(NumpyKernel, "chunk_rows", lambda self, k, size: 1 << 62)
    scores = np.log(np.random.default_rng(5).dirichlet(np.ones(4), size=600)).astype(np.float32)
    asked: list[int] = []

    def rows(start: int, stop: int) -> np.ndarray:
        asked.append(stop - start)
        return scores[start:stop]

    source = CallableSource(rows, scores.shape)
    solved = sinklabel.solve_exact(source, 4, backend="numpy")
    sinklabel.duality_gap(source, solved.labels, solved.prices, backend="numpy")
    sinklabel.check(solved, source, backend="numpy", exact=False)
    assert asked and max(asked) * 4 * scores.itemsize <= cap


def test_a_certificate_names_prices_spread_beyond_float32_and_checks_its_flag():
    """Prices 1e39 apart overflow float32 scores' comparison: the error said only "logp +
    prices overflows", with nothing to do about it; ``distributed="no"`` asked to install
    torch instead of naming the flag."""
    scores = np.log(np.random.default_rng(6).dirichlet(np.ones(4), size=40))
    labels = np.arange(40) % 4
    prices = np.array([0.0, 0.0, 0.0, 1e39])
    with pytest.raises(ValueError, match=r"spread \(1e\+39\) is beyond the float32.*float64"):
        sinklabel.duality_gap(scores.astype(np.float32), labels, prices)
    with pytest.raises(ValueError, match=r"spread \(2e\+39\)"):  # measured from the lowest
        sinklabel.duality_gap(scores.astype(np.float32), labels, np.array([-1e39, 0, 0, 1e39]))
    large = scores.astype(np.float32)
    large[3, 3] = 2e38  # a score float32 holds: the prices are to blame, not the score
    with pytest.raises(ValueError, match=r"spread \(1e\+39\)"):
        sinklabel.duality_gap(large, labels, prices)
    assert np.isfinite(sinklabel.duality_gap(scores, labels, prices).gap)
    with pytest.raises(TypeError, match="distributed must be True or False"):
        sinklabel.duality_gap(scores, labels, np.zeros(4), distributed="no")


@pytest.mark.skipif(not _transport_loops.HAVE_NUMBA, reason="the parallel loops need numba")
def test_exact_solves_in_several_threads_at_once_under_numbas_workqueue_layer():
    """Numba falls back to its workqueue threading layer where neither TBB nor OpenMP is
    installed, and that layer aborts the whole process when two threads enter parallel code
    at once. Four threads solving at once must each get their certified optimum."""
    code = (
        "import threading, numpy as np, sinklabel\n"
        "from sinklabel._distributed_exact import _scan_rows\n"
        "from sinklabel.datasets import make_scores\n"
        "S = make_scores(20000, 50, regime='peaked', seed=1).scores\n"
        "start, results = threading.Barrier(4), []\n"
        "def solve(seed):\n"
        "    v = np.random.default_rng(seed).normal(size=50)\n"
        "    out = [np.empty(len(S), t) for t in (np.int64, float, bool, bool, bool)]\n"
        "    start.wait()\n"
        "    _scan_rows(S, v, np.zeros(len(S), np.int64), *out)\n"
        "    results.append(sinklabel.solve_exact(S, 50).certificate.optimal)\n"
        "threads = [threading.Thread(target=solve, args=(seed,)) for seed in range(4)]\n"
        "for thread in threads: thread.start()\n"
        "for thread in threads: thread.join()\n"
        "import numba\n"
        "assert numba.threading_layer() == 'workqueue' and results == [True] * 4, results\n"
    )
    run_python(code, {"NUMBA_THREADING_LAYER": "workqueue"}, timeout=600)


@pytest.mark.skipif(not _transport_loops.HAVE_NUMBA, reason="the parallel loops need numba")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_children_forked_after_an_exact_solve_solve_too():
    """Numba's OpenMP layer (GNU's, on Linux) killed a child forked after its parent ran a
    parallel loop, so a pool of solves forked after one solve hung on its dead workers. The
    children now run the loops on one thread, to the parent's optimum."""
    code = (
        "import multiprocessing, sinklabel\n"
        "from sinklabel.datasets import make_scores\n"
        "S = make_scores(5000, 20, regime='peaked', seed=1).scores\n"
        "def solve(K):\n"
        "    result = sinklabel.solve_exact(S[:, :K], K)\n"
        "    return result.objective, result.certificate.optimal\n"
        "parent = solve(20)\n"
        "with multiprocessing.get_context('fork').Pool(2) as pool:\n"
        "    children = pool.map(solve, [20, 20])\n"
        "assert children == [parent] * 2 and parent[1], (parent, children)\n"
    )
    run_python(code)


@pytest.mark.skipif(not _transport_loops.HAVE_NUMBA, reason="the parallel loops need numba")
def test_the_main_process_runs_the_loops_compiled_in_parallel():
    """The guards for threads and forks must not cost the parent its cores: a solve runs the
    ``parallel=True`` compilation of the loops (mutants that ran them serially everywhere
    kept every result)."""
    code = (
        "import inspect, sinklabel\n"
        "from sinklabel import _simd, _transport_loops as loops\n"
        "from sinklabel.datasets import make_scores\n"
        "assert not _simd._ran_parallel\n"
        "S = make_scores(3000, 20, regime='peaked', seed=1).scores\n"
        "assert sinklabel.solve_exact(S, 20).certificate.optimal\n"
        "assert _simd._ran_parallel and not _simd._forked_after_parallel\n"
        "ran = []\n"
        "for loop in (loops.build_candidates, loops.best_labels, loops.label_margins,\n"
        "             loops.argmax_labels, loops.label_distances):\n"
        "    closure = inspect.getclosurevars(loop).nonlocals\n"
        "    assert closure['compiled'].targetoptions['parallel'] is True, loop\n"
        "    assert not closure['serial'], loop\n"
        "    ran.append(bool(closure['compiled'].signatures))\n"
        "assert any(ran), ran\n"
    )
    run_python(code)


def test_the_package_imports_where_os_cannot_register_fork_handlers():
    """Windows has no fork and no ``os.register_at_fork``: the fork handler is skipped there.
    (The exact layer is imported on the first solve; SciPy must see the function.)"""
    code = ("import os, numpy as np, scipy.linalg, sinklabel\ndel os.register_at_fork\n"
            "S = np.random.default_rng(0).normal(size=(50, 4))\n"
            "assert sinklabel.solve_exact(S, 4).certificate.optimal\n")
    run_python(code)
