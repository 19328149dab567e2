"""Every installed CPU backend against the NumPy backend and plain references written here.

Tests take the ``backend`` fixture (one run per installed CPU backend) and move inputs with
``to_backend``/``to_host``, so a new backend is covered by registering it. Shapes are small and
shared, so compiled backends compile each kernel once per dtype.
"""

from __future__ import annotations

import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ForwardingKernel, requires, run_python, threads, to_backend, to_host

from sinklabel import ConvergenceWarning, PrecisionWarning, available_backends, sinkhorn
from sinklabel.datasets import make_scores
from sinklabel.distributed import _GuardedKernel
from sinklabel.exp_cache import CachedKernel
from sinklabel.kernels import get_kernel, resolve_kernel
from sinklabel.kernels.numpy import NumpyKernel

N, K = 240, 21  # K = 2 blocks of 8 plus a tail of 5: every code path of a blocked kernel
LAMS = (1.0, 25.0)  # every exponential in range / most of them underflow
TOLERANCE = {np.float32: 1e-4, np.float64: 1e-10}


def _scores(dtype=np.float32, regime="flat", n=N, k=K, seed=3) -> np.ndarray:
    return make_scores(n, k, regime=regime, seed=seed, dtype=dtype).scores


def _potentials(k=K, seed=4) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=3.0, size=k)


def _reference_plan(scores: np.ndarray, f: np.ndarray, lam: float) -> np.ndarray:
    """softmax(lam * S + f) per row, in float64."""
    z = lam * scores.astype(np.float64) + f
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def _solve(scores, backend, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return sinkhorn(to_backend(scores, backend), scores.shape[1], backend=backend, **options)


def _layouts(scores: np.ndarray) -> dict[str, np.ndarray]:
    """The same values held in the layouts a caller may pass."""
    wide = np.zeros((scores.shape[0], scores.shape[1] + 3), dtype=scores.dtype)
    wide[:, 1:-2] = scores
    doubled = np.repeat(scores, 2, axis=1)
    readonly = scores.copy()
    readonly.flags.writeable = False
    return {
        "C": scores,
        "fortran": np.asfortranarray(scores),
        "row-strided": wide[:, 1:-2],
        "column-strided": doubled[:, ::2],
        "read-only": readonly,
    }


# --- the full solve ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("regime", ["flat", "peaked"])
def test_potentials_agree_with_numpy_backend(backend, dtype, regime):
    scores = _scores(dtype, regime)
    options = dict(lam=10.0, tol=1e-13, max_iter=150)
    ours = _solve(scores, backend, **options)
    reference = _solve(scores, "numpy", **options)
    assert ours.backend == backend
    assert ours.n_iter == reference.n_iter
    np.testing.assert_allclose(ours.potentials, reference.potentials, rtol=0,
                               atol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_labels_agree_except_near_ties(backend, dtype):
    scores = _scores(dtype, "flat", n=600)
    ours = _solve(scores, backend, lam=25.0, tol=1e-3)
    labels = to_host(ours.labels)
    expected = to_host(get_kernel("numpy").best(scores, ours.potentials, 25.0)[1])
    z = 25.0 * scores.astype(np.float64) + ours.potentials
    top_two = np.sort(z, axis=1)[:, -2:]
    tie = top_two[:, 1] - top_two[:, 0] <= 1e-5 * np.abs(top_two[:, 1]).clip(1)
    assert labels.dtype == np.int64
    assert np.array_equal(labels[~tie], expected[~tie])
    assert tie.mean() < 0.01


def test_chunks_that_do_not_divide_n(backend):
    scores = _scores(np.float64)
    whole = _solve(scores, backend, lam=10.0, tol=1e-12, max_iter=100)
    chunked = _solve(scores, backend, lam=10.0, tol=1e-12, max_iter=100, chunk_size=37)
    np.testing.assert_allclose(chunked.potentials, whole.potentials, rtol=0, atol=1e-10)
    assert np.array_equal(to_host(chunked.labels), to_host(whole.labels))


@pytest.mark.parametrize("layout", ["fortran", "row-strided", "column-strided", "read-only"])
def test_layouts_solve_like_c_order(backend, layout):
    scores = _scores(np.float32)
    array = _layouts(scores)[layout]
    before = array.copy()
    result = sinkhorn(to_backend(array, backend), K, backend=backend, lam=10.0)
    expected = sinkhorn(to_backend(scores, backend), K, backend=backend, lam=10.0)
    # float32 sums in another order: agreement to float32 resolution of the potentials
    np.testing.assert_allclose(result.potentials, expected.potentials, rtol=0, atol=1e-5)
    assert np.array_equal(array, before)


def test_float16_input_is_computed_in_float32(backend):
    scores = _scores(np.float32).astype(np.float16)
    ours = _solve(scores, backend, lam=10.0, tol=1e-9, max_iter=100)
    reference = _solve(scores.astype(np.float32), "numpy", lam=10.0, tol=1e-9, max_iter=100)
    np.testing.assert_allclose(ours.potentials, reference.potentials, rtol=0, atol=1e-4)
    assert to_host(ours.labels).dtype == np.int64


@pytest.mark.parametrize("lam", [25.0, 1e3, 1e4])
def test_hard_cases_give_no_nan_or_inf(backend, lam):
    scores = _scores(np.float32, "peaked", k=12)
    scores[:, 5] = -1e4  # a label no row wants, by far
    scores[::7, 2] = -np.inf  # impossible pairs
    # Its potential must make up lam * 1e4, beyond what float32 resolves to 1e-3: said so.
    with pytest.warns(PrecisionWarning, match="float32 rounds"):
        result = _solve(scores, backend, lam=lam, max_iter=200)
    assert np.all(np.isfinite(result.potentials))
    assert np.all(np.isfinite(result.error_history))
    labels = to_host(result.labels)
    assert labels.min() >= 0 and labels.max() < 12
    assert not np.any(labels[::7] == 2)
    soft = to_host(result.soft_assignments(to_backend(scores, backend)))
    assert np.all(np.isfinite(soft))
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-5)


# --- each kernel operation ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("lam", LAMS)
def test_sweep_matches_reference(backend, dtype, lam):
    scores = _scores(np.float32).astype(dtype)
    f = _potentials()
    got = get_kernel(backend).sweep(to_backend(scores, backend), f, lam)
    expected = _reference_plan(scores, f, lam).sum(axis=0)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64 and got.shape == (K,)
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * N / K)


@pytest.mark.parametrize("layout", ["C", "fortran", "row-strided", "column-strided", "read-only"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_operation_matches_numpy_backend(backend, layout, dtype):
    scores = _scores(dtype)
    chunk = to_backend(_layouts(scores)[layout], backend)
    f = _potentials()
    ours, numpy = get_kernel(backend), get_kernel("numpy")
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-5)
    for lam in LAMS:
        np.testing.assert_allclose(ours.sweep(chunk, f, lam), numpy.sweep(scores, f, lam), **tol)
        np.testing.assert_allclose(ours.slack(chunk, f, lam), numpy.slack(scores, f, lam),
                                   rtol=1e-6, atol=1e-4 * lam)
        soft = to_host(ours.soft(chunk, f, lam))
        assert soft.dtype == dtype
        np.testing.assert_allclose(soft, numpy.soft(scores, f, lam), **tol)
        top, labels = ours.best(chunk, f, lam)
        ref_top, ref_labels = numpy.best(scores, f, lam)
        assert np.array_equal(to_host(labels), ref_labels)
        np.testing.assert_allclose(to_host(top), ref_top, rtol=1e-6)
    labels = np.random.default_rng(0).integers(0, K, size=N)
    gathered = ours.gather(chunk, to_backend(labels, backend))
    assert np.array_equal(gathered, scores[np.arange(N), labels].astype(np.float64))


def test_best_finds_first_maximum_and_reports_bad_scores(backend):
    kernel = get_kernel(backend)
    scores = np.zeros((4, K), dtype=np.float32)
    scores[0, [3, 17]] = 1.0  # a tie: the first label wins, as in np.argmax
    scores[1, 19] = np.nan
    scores[2, :] = -np.inf
    scores[3, 20] = np.inf
    top, labels = kernel.best(to_backend(scores, backend), np.zeros(K), 2.0)
    top, labels = to_host(top), to_host(labels)
    assert labels[0] == 3 and top[0] == 2.0
    assert np.isnan(top[1]) and labels[1] == 19
    assert top[2] == -np.inf
    assert top[3] == np.inf and labels[3] == 20


def test_best_takes_the_first_of_many_tied_maxima(backend):
    """Small integers tie within and across blocks of 8 and in the tail: labels as np.argmax."""
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 3, (N, K)).astype(np.float32)
    f = rng.integers(0, 2, K).astype(np.float64)
    top, labels = get_kernel(backend).best(to_backend(scores, backend), f, 2.0)
    z = 2.0 * scores.astype(np.float64) + f  # exact in float32 too
    assert np.array_equal(to_host(labels), z.argmax(axis=1))
    assert np.array_equal(to_host(top), z.max(axis=1))


def test_slack_revives_labels_whose_mass_underflows(backend):
    scores = _scores(np.float32, k=12)
    scores[:, 4] -= 50.0  # at lam=25 its exp underflows in every row
    kernel = get_kernel(backend)
    chunk = to_backend(scores, backend)
    assert kernel.sweep(chunk, np.zeros(12), 25.0)[4] == 0.0
    slack = kernel.slack(chunk, np.zeros(12), 25.0)
    z = 25.0 * scores.astype(np.float64)
    np.testing.assert_allclose(slack, (z - z.max(axis=1, keepdims=True)).max(axis=0), rtol=1e-5)
    revived = np.zeros(12)
    revived[4] -= slack[4]
    assert kernel.sweep(chunk, revived, 25.0)[4] > 0.0


# --- kernels that wrap another one -------------------------------------------------------------


class Distinct(NumpyKernel):
    """The NumPy kernel with a name, libraries, sizes and fused pass unlike any default."""

    name, libraries = "distinct", ("numpy", "other")

    def chunk_rows(self, n_labels: int, itemsize: int) -> int:
        return 7

    def workspace_bytes_per_row(self, n_labels: int, itemsize: int) -> int:
        return 11

    def sweep_lse(self, chunk, f, lam):
        return np.full(f.size, 3.0), 5.0


def _guarded(inner):
    return _GuardedKernel(inner, SimpleNamespace(failure=None), source=None)


def _cached(inner):
    return CachedKernel(inner)


@pytest.mark.parametrize("wrap", [ForwardingKernel, _cached, _guarded])
def test_a_wrapping_kernel_answers_as_its_inner_kernel_where_kernel_has_defaults(wrap):
    kernel = wrap(Distinct())
    assert (kernel.name, kernel.libraries) == ("distinct", ("numpy", "other"))
    assert kernel.chunk_rows(K, 4) == 7
    assert kernel.workspace_bytes_per_row(K, 4) == 11
    mass, lse = kernel.sweep_lse(_scores(n=5), np.zeros(K), 25.0)
    assert lse == 5.0 and np.all(mass == 3.0)


# --- choosing a backend -----------------------------------------------------------------------

requires_numba = requires("numba")


@requires_numba
def test_auto_prefers_numba_for_numpy_input():
    assert "numba" in available_backends()
    assert sinkhorn(_scores(), K).backend == "numba"


@requires_numba
def test_numba_with_its_compiler_switched_off_counts_as_missing():
    """``NUMBA_DISABLE_JIT=1`` (a debugging setting) made every NumPy solve fail with
    "unsupported operand type(s) for *: 'float' and 'NoneType'" from an intrinsic called as
    Python. Numba now counts as missing: the NumPy backend, torch's own ops and the exact
    solver's plain loops take over, and asking for the Numba backend says why it cannot run."""
    code = (
        "import importlib.util, numpy as np, sinklabel\n"
        "S = np.log(np.random.default_rng(0).dirichlet(np.ones(5), size=300))\n"
        "assert 'numba' not in sinklabel.available_backends()\n"
        "result = sinklabel.sinkhorn(S, 5)\n"
        "assert result.backend == 'numpy' and result.converged\n"
        "if importlib.util.find_spec('torch'):\n"
        "    import torch\n"
        "    assert sinklabel.sinkhorn(torch.from_numpy(S), 5).converged\n"
        "assert sinklabel.solve_exact(S, 5).certificate.optimal\n"
        "try:\n"
        "    sinklabel.sinkhorn(S, 5, backend='numba')\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    printed = run_python(code, {"NUMBA_DISABLE_JIT": "1"})
    assert printed.strip() == ("backend 'numba' cannot run here: numba's compiler is "
                               "switched off (NUMBA_DISABLE_JIT=1): unset it")


class ImportRecorder:
    """A meta-path finder that finds nothing and notes every module asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def find_spec(self, name, path=None, target=None):
        self.asked.append(name)


@pytest.mark.parametrize("name", ["numba", "torch", "cupy"])
def test_a_missing_library_is_named_before_its_backend_module_is_read(name, monkeypatch):
    """On a plain install every ``backend="auto"`` solve of NumPy scores tries numba first:
    the Numba backend's module was read and run up to its ``import numba`` each time (and,
    where no bytecode is written, compiled: 2 MB that broke a memory budget's test)."""
    module = f"sinklabel.kernels.{name}"
    monkeypatch.setitem(sys.modules, name, None)  # the library is not installed
    monkeypatch.delitem(sys.modules, module, raising=False)
    recorder = ImportRecorder()
    monkeypatch.setattr(sys, "meta_path", [recorder, *sys.meta_path])
    with pytest.raises(ImportError, match=rf"needs {name}: pip install 'sinklabel\[{name}\]' "
                                          rf"\(No module named '{name}'\)"):
        get_kernel(name)
    assert module not in recorder.asked
    assert name not in available_backends()
    assert module not in recorder.asked


def test_each_solve_gets_a_kernel_of_its_own(backend):
    """Nothing a kernel keeps may pass from one solve to the next, or be raced on by solves in
    two threads: a kernel shared by every solve once carried one solve's stored row shifts
    into the next, and a repeated solve differed in the last bits."""
    first, second = get_kernel(backend), get_kernel(backend)
    assert first is not second and type(first) is type(second)
    assert resolve_kernel("auto", "numpy") is not resolve_kernel("auto", "numpy")


@requires_numba
def test_numba_kernels_share_one_thread_pool():
    """Kernels are made per solve; their helper threads must not be (a training loop solves
    thousands of times)."""
    import threading

    from sinklabel.kernels.numba import NumbaKernel

    def helpers() -> int:
        return sum(t.name.startswith("sinklabel-numba") for t in threading.enumerate())

    before = helpers()
    kernels = [NumbaKernel(threads=lambda: 2) for _ in range(6)]
    for kernel in kernels:
        kernel._threads.run(lambda i: None, [(i,) for i in range(8)])
    assert 1 <= helpers() <= max(before, 1)


@requires_numba
def test_numba_refuses_torch_tensors_clearly():
    # The input's library is what the API resolves against (a real tensor costs seconds of
    # torch import here); the torch backend's own tests pass real tensors.
    with pytest.raises(TypeError, match="backend 'numba' takes numpy arrays, not torch"):
        resolve_kernel("numba", "torch")


# --- the Numba backend's own parts --------------------------------------------------------------


@requires_numba
def test_numba_float32_exp_is_accurate_and_underflows_to_zero():
    from numba import njit

    from sinklabel.kernels.numba import _exp_f32

    @njit
    def exp_all(x, out):
        for i in range(x.shape[0]):
            out[i] = _exp_f32(x[i])

    x = np.concatenate([-np.linspace(0.0, 87.33, 200_001), [-87.4, -100.0, -1e30, -np.inf]])
    x = x.astype(np.float32)
    out = np.empty_like(x)
    exp_all(x, out)
    exact = np.exp(x[:-4].astype(np.float64))
    assert np.max(np.abs(out[:-4] - exact) / exact) < 1.5e-7
    assert np.all(out[-4:] == 0.0)


@requires_numba
def test_numba_sweep_is_deterministic_across_thread_counts():
    scores = _scores(np.float32, n=20000, k=40)  # two tasks of rows
    kernel = get_kernel("numba")
    f = _potentials(40)
    first = kernel.sweep(scores, f, 25.0)
    with threads("numba", 1):
        single = kernel.sweep(scores, f, 25.0)
    assert np.array_equal(first, single)
    assert np.array_equal(first, kernel.sweep(scores, f, 25.0))


@requires_numba
@pytest.mark.parametrize(("dtype", "k", "lines"), [
    (np.float32, 1000, 63), (np.float32, 3000, 64), (np.float64, 300, 38), (np.float16, 1000, 32),
])
def test_numba_prefetch_asks_for_each_line_of_the_next_rows_first_page(dtype, k, lines):
    """One request per 64-byte line of the first 4 KB of a row, none past the buffer's end."""
    from types import FunctionType

    from sinklabel.kernels import numba as backend

    requested = []
    python = backend._prefetch_row.py_func
    scope = dict(python.__globals__, prefetch=lambda buf, j: requested.append(j))
    prefetch_row = FunctionType(python.__code__, scope)
    buf = backend._row_buffer(np.zeros((3, k), dtype))[0]
    step = 64 // buf.itemsize
    prefetch_row(buf, k, k)
    assert requested == list(range(k, k + lines * step, step))
    requested.clear()
    prefetch_row(buf, 3 * k - 10, k)  # the last ten scores: only their lines
    prefetch_row(buf, 3 * k, k)  # past the last row: nothing
    assert requested == list(range(3 * k - 10, 3 * k, step))


@requires_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_numba_sweep_gives_the_same_bits_without_its_prefetch(dtype, monkeypatch):
    """The prefetch is a hint: the pass recompiled without it (as the CPU benchmark times it)
    gives the same masses and log-sum-exp, on rows that are a slice of wider ones too."""
    from benchmarks.cpu_iteration import _no_prefetch, _sweep_with
    from sinklabel.kernels import numba as backend

    k = 1000  # rows of 2-8 KB: the prefetch asks for whole rows and for the first page
    kernel, f = get_kernel("numba"), _potentials(k)
    wide = _scores(np.float64, n=700, k=k + 13).astype(dtype)
    chunks = (wide[:, :k], np.ascontiguousarray(wide[:, :k]))
    prefetched = [kernel.sweep_lse(chunk, f, 25.0) for chunk in chunks]
    monkeypatch.setattr(backend, "_sweep_rows", _sweep_with(_prefetch_row=_no_prefetch))
    for chunk, (mass, lse) in zip(chunks, prefetched, strict=True):
        plain_mass, plain_lse = kernel.sweep_lse(chunk, f, 25.0)
        assert np.array_equal(mass, plain_mass) and lse == plain_lse


# --- the fused pass the solver calls: masses and the rows' log-sum-exp ---------------------------


def _reference_lse(scores: np.ndarray, f: np.ndarray, lam: float) -> np.ndarray:
    """logsumexp(lam * S + f) per row, in float64 (rows with a finite score)."""
    z = lam * scores.astype(np.float64) + f
    top = z.max(axis=1)
    with np.errstate(invalid="ignore"):  # -inf - top is -inf, and exp of it 0
        return top + np.log(np.exp(z - top[:, None]).sum(axis=1))


def _hard_scores() -> np.ndarray:
    scores = _scores(np.float32, "peaked")
    scores[:, 5] = -1e4  # a label no row wants, by far
    scores[::7, 2] = -np.inf  # impossible pairs
    return scores


@pytest.mark.parametrize(("case", "lam"), [
    ("flat", 1.0), ("flat", 25.0), ("peaked", 1.0), ("peaked", 25.0), ("hard", 25.0),
    ("hard", 1e3),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_sweep_lse_matches_float64_reference(backend, case, lam, dtype):
    scores = (_hard_scores() if case == "hard" else _scores(np.float32, case)).astype(dtype)
    f = _potentials()
    mass, lse = get_kernel(backend).sweep_lse(to_backend(scores, backend), f, lam)
    assert isinstance(mass, np.ndarray) and mass.dtype == np.float64 and mass.shape == (K,)
    assert isinstance(lse, float)
    expected_mass = _reference_plan(scores, f, lam).sum(axis=0)
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    # Masses far below a row's share (the -1e4 column) are judged against the row count.
    np.testing.assert_allclose(mass, expected_mass, rtol=rtol, atol=rtol * 1e-3 * N)
    row_lse = _reference_lse(scores, f, lam)
    # Relative to the rows' own sizes: the sum alone may cancel towards 0.
    assert abs(lse - row_lse.sum()) <= 1e-5 * np.abs(row_lse).sum()
    if dtype == np.float64:
        assert abs(lse - row_lse.sum()) <= 1e-12 * np.abs(row_lse).sum()


@pytest.mark.parametrize("rows", [1, 37, 100, N])
def test_sweep_lse_adds_up_over_chunks_that_do_not_divide_n(backend, rows):
    scores = _hard_scores()
    f = _potentials()
    kernel = get_kernel(backend)
    masses, lses = [], []
    for start in range(0, N, rows):
        mass, lse = kernel.sweep_lse(to_backend(scores[start:start + rows], backend), f, 1e3)
        masses.append(mass)
        lses.append(lse)
    np.testing.assert_allclose(np.sum(masses, axis=0), _reference_plan(scores, f, 1e3).sum(axis=0),
                               rtol=1e-6, atol=1e-6 * 1e-3 * N)
    row_lse = _reference_lse(scores, f, 1e3)
    assert abs(sum(lses) - row_lse.sum()) <= 1e-5 * np.abs(row_lse).sum()


def test_sweep_is_the_mass_of_sweep_lse(backend):
    scores = to_backend(_scores(np.float32, "peaked"), backend)
    kernel = get_kernel(backend)
    f = _potentials()
    for lam in LAMS:
        # Within float32 rounding: a backend may sum the rows in float64 for the log-sum-exp.
        mass = kernel.sweep_lse(scores, f, lam)[0]
        np.testing.assert_allclose(kernel.sweep(scores, f, lam), mass, rtol=1e-6)


@requires_numba
def test_numba_sweep_lse_is_deterministic_across_thread_counts():
    scores = _scores(np.float32, n=20000, k=40)  # two tasks of rows
    kernel = get_kernel("numba")
    f = _potentials(40)
    first = kernel.sweep_lse(scores, f, 25.0)
    with threads("numba", 1):
        single = kernel.sweep_lse(scores, f, 25.0)
    assert np.array_equal(first[0], single[0]) and first[1] == single[1]
    assert np.array_equal(first[0], kernel.sweep(scores, f, 25.0))


def test_lowest_finite_mask_acts_as_minus_inf_without_warnings(backend, rng):
    """A mask of float32's lowest value (the transformers idiom) overflows lam * logp to -inf:
    the labels and potentials are those of a -inf mask, and no backend warns about it."""
    scores = rng.standard_normal((300, 6)).astype(np.float32)
    masked = rng.random((300, 6)) < 0.2
    masked[:, 0] = False  # every row keeps a finite score
    lowest, minus_inf = scores.copy(), scores.copy()
    lowest[masked] = np.finfo(np.float32).min
    minus_inf[masked] = -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ours = _solve(lowest, backend, lam=25.0)
    expected = _solve(minus_inf, backend, lam=25.0)
    np.testing.assert_array_equal(to_host(ours.labels), to_host(expected.labels))
    np.testing.assert_allclose(ours.potentials, expected.potentials, atol=1e-9)
