"""The torch (Triton) and CuPy backends on a CUDA device, against the NumPy backend on the
same data copied to the host. Skipped, with the reason, where there is no CUDA device."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import sinklabel
from sinklabel.datasets import make_scores
from sinklabel.kernels import get_kernel

pytestmark = pytest.mark.gpu


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _cupy_cuda():
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception:  # no driver, no device, or no CuPy: all mean "skip"
        return None
    return None


torch = _torch_cuda()
cp = _cupy_cuda()
needs_torch = pytest.mark.skipif(torch is None, reason="needs torch with a CUDA device")
needs_cupy = pytest.mark.skipif(cp is None or torch is None,
                                reason="needs CuPy and torch with a CUDA device")

CASES = [
    pytest.param("torch", "float32", marks=needs_torch),
    pytest.param("torch", "bfloat16", marks=needs_torch),
    pytest.param("torch", "float16", marks=needs_torch),
    pytest.param("torch", "float64", marks=needs_torch),
    pytest.param("cupy", "float32", marks=needs_cupy),
    pytest.param("cupy", "float16", marks=needs_cupy),
    pytest.param("cupy", "float64", marks=needs_cupy),
]


def on_device(host: np.ndarray, library: str, dtype: str):
    """``host`` rounded to ``dtype`` on the GPU, and the exact values it holds, on the host."""
    x = torch.from_numpy(host).cuda().to(getattr(torch, dtype))
    exact = x.double() if dtype == "float64" else x.float()
    exact = exact.cpu().numpy()
    return (cp.from_dlpack(x) if library == "cupy" else x), exact


def to_host(array) -> np.ndarray:
    if hasattr(array, "detach"):
        return array.detach().cpu().numpy()
    return cp.asnumpy(array)


def solve_quietly(scores, k: int, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
        return sinklabel.sinkhorn(scores, k, **options)


def assert_same_solution(result, reference, exact: np.ndarray, atol: float) -> None:
    """The same plan (soft assignments within ``atol``) and the same labels, except on rows
    whose top two scores are closer than the potentials' own disagreement allows."""
    gap = np.abs(result.potentials - reference.potentials).max()
    z = reference.lam * exact.astype(np.float64) + reference.potentials
    soft = np.exp(z - z.max(axis=1, keepdims=True))
    soft /= soft.sum(axis=1, keepdims=True)
    ours = to_host(result.soft_assignments(_like(result, exact)))
    np.testing.assert_allclose(ours, soft, rtol=0, atol=atol)
    top2 = np.sort(z, axis=1)[:, -2:]
    near_tie = top2[:, 1] - top2[:, 0] <= 2 * gap + 1e-3
    differ = to_host(result.labels) != reference.labels
    assert not np.any(differ & ~near_tie)


def _like(result, exact: np.ndarray):
    """The host scores on the result's library and device, in the compute dtype."""
    if result.backend == "cupy":
        return cp.asarray(exact)
    return torch.from_numpy(exact).cuda()


_NUMPY_SOLVES: dict[tuple, object] = {}


def _numpy_solve(n: int, k: int, regime: str, dtype: str, options: tuple, exact: np.ndarray):
    """The NumPy backend's solve of ``exact``, once per scores and options: both GPU
    libraries round the same host scores to a dtype alike (the 6000 x 3000 solves took
    12 s each on the GPU machine's CPU)."""
    key = (n, k, regime, dtype, options)
    if key not in _NUMPY_SOLVES:
        _NUMPY_SOLVES[key] = solve_quietly(exact, k, backend="numpy", **dict(options))
    return _NUMPY_SOLVES[key]


@pytest.mark.parametrize("library, dtype", CASES)
@pytest.mark.parametrize("n, k, regime", [(4000, 40, "flat"), (4000, 40, "peaked"),
                                          (6000, 3000, "flat")])
def test_full_solve_agrees_with_numpy_on_host(library, dtype, n, k, regime):
    """In float64 the GPU and NumPy backends take the same steps and reach the same
    potentials to 1e-10; the step that crosses tol=1e-13 may differ by one, as the sums'
    orders differ and the gradient is at rounding level there. In float32 the steps part
    ways at rounding level and the dual is too flat along some potentials for them to agree
    closely (two CPU backends at K=3000 and tol=1e-4 differ by 0.03 in potentials and 2e-3
    in a plan entry), so both are solved to tol=1e-4 and the plans and labels they define
    are compared, to that precision."""
    host = make_scores(n, k, regime=regime, seed=5).scores
    x, exact = on_device(host, library, dtype)
    wide = dtype == "float64"
    options = dict(lam=25.0, tol=1e-13, max_iter=60) if wide else dict(lam=25.0, tol=1e-4,
                                                                            max_iter=300)
    result = solve_quietly(x, k, **options)
    reference = _numpy_solve(n, k, regime, dtype, tuple(sorted(options.items())), exact)
    assert result.backend == library
    if wide:
        assert abs(result.n_iter - reference.n_iter) <= 1
        assert result.converged == reference.converged
        np.testing.assert_allclose(result.potentials, reference.potentials, rtol=0, atol=1e-10)
    else:
        assert result.converged and reference.converged
    assert_same_solution(result, reference, exact, 1e-10 if wide else 5e-3)


@pytest.mark.parametrize("library, dtype", CASES)
def test_outputs_stay_on_the_device_in_the_input_library(library, dtype):
    host = make_scores(3000, 40, regime="flat", seed=1).scores
    x, _ = on_device(host, library, dtype)
    result = sinklabel.sinkhorn(x, 40)
    soft = result.soft_assignments(x)
    soft_dtype = "float64" if dtype == "float64" else "float32"
    if library == "torch":
        assert result.labels.is_cuda and result.labels.dtype == torch.int64
        assert soft.is_cuda and soft.dtype == getattr(torch, soft_dtype)
    else:
        assert isinstance(result.labels, cp.ndarray) and result.labels.dtype == np.int64
        assert isinstance(soft, cp.ndarray) and soft.dtype == np.dtype(soft_dtype)
    np.testing.assert_allclose(to_host(soft).sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(to_host(result.predict(x)), to_host(result.labels))
    assert result.label_counts.sum() == 3000


@pytest.mark.parametrize("library, dtype", [c for c in CASES if c.values[1] != "float64"])
def test_half_precision_hard_case_stays_finite(library, dtype):
    rng = np.random.default_rng(7)
    host = rng.standard_normal((2000, 40)).astype(np.float32)
    host[rng.random(host.shape) < 0.5] = -1e4
    host[:, 0] = np.maximum(host[:, 0], -1.0)
    x, _ = on_device(host, library, dtype)
    result = solve_quietly(x, 40, lam=1e3, max_iter=50)
    assert np.all(np.isfinite(result.potentials))
    assert np.all(np.isfinite(result.error_history))
    soft = to_host(result.soft_assignments(x))
    assert np.all(np.isfinite(soft))
    labels = to_host(result.labels)
    assert labels.min() >= 0 and labels.max() < 40


@needs_torch
def test_requires_grad_cuda_tensor_records_no_graph():
    host = make_scores(2000, 40, regime="flat", seed=2).scores
    base = torch.from_numpy(host).cuda()
    x = base.clone().requires_grad_(True)
    result = sinklabel.sinkhorn(x, 40)
    np.testing.assert_array_equal(result.potentials, sinklabel.sinkhorn(base, 40).potentials)
    assert result.labels.grad_fn is None
    assert result.soft_assignments(x).grad_fn is None
    assert x.grad is None


@needs_torch
def test_a_compiled_step_labels_cuda_tensors_as_an_eager_one():
    """The Triton route called from a torch.compile'd step runs eagerly (a graph break)."""
    x = torch.from_numpy(make_scores(2000, 40, regime="peaked", seed=2).scores).cuda()
    torch._dynamo.reset()
    step = torch.compile(lambda s: sinklabel.assign_labels(s * 2.0 / 2.0, 40), backend="eager")
    labels = step(x)
    assert labels.is_cuda
    torch.testing.assert_close(labels, sinklabel.assign_labels(x, 40), rtol=0, atol=0)


@pytest.mark.parametrize("library", [pytest.param("torch", marks=needs_torch),
                                     pytest.param("cupy", marks=needs_cupy)])
@pytest.mark.parametrize("layout", ["column_major", "column_slice"])
def test_non_contiguous_inputs_match_contiguous(library, layout):
    host = make_scores(3000, 80, regime="flat", seed=4).scores
    x, _ = on_device(host, library, "float32")
    if layout == "column_major":
        x = x[:, :40]
        x = x.T.copy().T if library == "cupy" else x.t().contiguous().t()
    else:
        x = x[:, ::2]
    contiguous = cp.ascontiguousarray(x) if library == "cupy" else x.contiguous()
    options = dict(tol=1e-12, max_iter=40)
    result = solve_quietly(x, x.shape[1], **options)
    reference = solve_quietly(contiguous, x.shape[1], **options)
    # float32 sums in another order: agreement to the potentials' float32 resolution
    np.testing.assert_allclose(result.potentials, reference.potentials, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(to_host(result.labels), to_host(reference.labels))


@needs_cupy
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("k", [21, 40, 3000])
def test_triton_and_cupy_kernels_agree(dtype, k):
    host = make_scores(5000, k, regime="peaked", seed=6).scores
    x, _ = on_device(host, "torch", dtype)
    y = cp.from_dlpack(x)
    f = np.random.default_rng(0).standard_normal(k)
    triton_kernel, cupy_kernel = get_kernel("torch"), get_kernel("cupy")
    np.testing.assert_allclose(triton_kernel.sweep(x, f, 25.0), cupy_kernel.sweep(y, f, 25.0),
                               rtol=2e-5, atol=1e-6)
    values, labels = triton_kernel.best(x, f, 25.0)
    cupy_values, cupy_labels = cupy_kernel.best(y, f, 25.0)
    np.testing.assert_array_equal(to_host(values), to_host(cupy_values))
    np.testing.assert_array_equal(to_host(labels), to_host(cupy_labels))


@pytest.mark.parametrize("library, dtype", [c for c in CASES if c.values[1] != "float16"])
@pytest.mark.parametrize("k", [16384, 20000])
def test_wide_rows_match_numpy_kernel(library, dtype, k):
    """K at the one-pass limit and past it (two-pass tiles / blocked CuPy ops), with a last
    row tile past the end and potentials whose exponentials overflow float32 there."""
    host = (3 * np.random.default_rng(8).standard_normal((301, k))).astype(np.float32)
    x, exact = on_device(host, library, dtype)
    f = 100 * np.random.default_rng(9).standard_normal(k)
    kernel, reference = get_kernel(library), get_kernel("numpy")
    expected = reference.sweep(exact, f, 25.0)
    np.testing.assert_allclose(kernel.sweep(x, f, 25.0), expected, rtol=1e-4, atol=1e-6)
    values, labels = kernel.best(x, f, 25.0)
    np.testing.assert_array_equal(to_host(labels), reference.best(exact, f, 25.0)[1])


@pytest.mark.parametrize("library, dtype", CASES)
def test_sweep_repeats_exactly(library, dtype):
    """The same bits from a kernel's sweeps (the torch backend's second on is a CUDA graph's
    replay) and from another kernel object's: a solve repeated gives the same result."""
    host = make_scores(5000, 3000, regime="flat", seed=10).scores
    x, _ = on_device(host, library, dtype)
    f = np.zeros(3000)
    kernel = get_kernel(library)
    first = kernel.sweep(x, f, 25.0)
    for again in (kernel.sweep(x, f, 25.0), kernel.sweep(x, f, 25.0),
                  get_kernel(library).sweep(x, f, 25.0)):
        np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("library, dtype", CASES)
def test_sweeps_follow_new_potentials_and_scores(library, dtype):
    """The buffers kept between sweeps (and the torch backend's CUDA graph, recorded on the
    second sweep of one tensor) must pick up new potentials and new scores written into the
    same array: each sweep matches the NumPy kernel on what the array holds then."""
    first = make_scores(3000, 500, regime="flat", seed=13).scores
    second = make_scores(3000, 500, regime="peaked", seed=14).scores
    x, exact_first = on_device(first, library, dtype)
    second, exact_second = on_device(second, library, dtype)
    third, exact_third = on_device(-8 * first, library, dtype)  # another scale altogether
    f1, f2 = np.random.default_rng(15).standard_normal((2, 500))
    kernel, reference = get_kernel(library), get_kernel("numpy")
    steps = [(exact_first, f1), (exact_first, f2), (exact_first, f1), (exact_second, f2),
             (exact_second, f1), (exact_third, f1), (exact_third, f2)]
    for step, (exact, f) in enumerate(steps):
        if step in (3, 5):
            x[...] = second if step == 3 else third
        mass, lse = kernel.sweep_lse(x, f, 25.0)
        expected_mass, expected_lse = reference.sweep_lse(exact, f, 25.0)
        # Eight times the scores: float32 rounds lam * x (up to 7754 in base 2) to 5e-4, and
        # the masses of both kernels move by 1.2e-4 of float64's (bfloat16's values, on the CPU).
        rtol = 1e-3 if step >= 5 else 1e-4
        np.testing.assert_allclose(mass, expected_mass, rtol=rtol, atol=1e-6, err_msg=str(step))
        assert abs(lse - expected_lse) <= 1e-6 * abs(expected_lse), step


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_torch_graph_replays_give_the_launches_results(dtype, monkeypatch):
    """From the second sweep of one tensor on, the torch backend replays a CUDA graph: it
    gives bit for bit what launching the kernels one by one gives, and it is recorded."""
    from sinklabel.kernels import _buffers

    host = make_scores(3000, 500, regime="flat", seed=16).scores
    x, _ = on_device(host, "torch", dtype)
    f1, f2 = np.random.default_rng(17).standard_normal((2, 500))
    kernel = get_kernel("torch")

    def sweeps():
        _buffers.release()  # no buffers or graphs yet
        return [kernel.sweep_lse(x, f, 25.0) for f in (f1, f1, f2, f1, f2)]

    monkeypatch.setattr(_buffers, "RECORD_GRAPHS", False)
    launched = sweeps()
    monkeypatch.setattr(_buffers, "RECORD_GRAPHS", True)
    replayed = sweeps()
    assert _buffers.GRAPH_ERRORS == []
    kept = _buffers._local.kept
    assert any(getattr(b, "_graph", None) is not None for b in kept.values())
    for (mass, lse), (expected_mass, expected_lse) in zip(replayed, launched, strict=True):
        np.testing.assert_array_equal(mass, expected_mass)
        assert lse == expected_lse


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_sweep_and_labels_allocate_nothing_of_size_n_by_k(dtype):
    from sinklabel.kernels import _buffers

    x = torch.randn(20_000, 3000, device="cuda").to(getattr(torch, dtype))
    kernel, f = get_kernel("torch"), np.zeros(3000)
    kernel.sweep(x, f, 25.0)  # compile outside the measurement
    kernel.best(x, f, 25.0)
    _buffers.release()  # the kept buffers count too: measured from none
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    for _ in range(3):  # the second records a CUDA graph, the third replays it
        kernel.sweep(x, f, 25.0)
    kernel.best(x, f, 25.0)
    extra = torch.cuda.max_memory_allocated() - before
    assert extra <= 0.02 * x.numel() * x.element_size(), extra


def _tied_masked_scan_input(seed: int, n: int, k: int):
    """Half-integer scores (ties) with a fifth at -inf, every row keeping a finite score in
    label 3; potentials and given labels for a distributed-exact scan of them."""
    rng = np.random.default_rng(seed)
    host = (np.round(2 * rng.normal(size=(n, k))) / 2).astype(np.float32)
    host[rng.random(host.shape) < 0.2] = -np.inf
    host[:, 3] = np.where(np.isfinite(host).any(axis=1), host[:, 3], 0.0)
    return host, np.round(2 * rng.normal(size=k)) / 2, rng.integers(0, k, n)


def _assert_scans_agree(x, exact: np.ndarray, v: np.ndarray, labels: np.ndarray) -> None:
    """The scan of device array ``x`` is the host scan of its values ``exact``."""
    from sinklabel import _distributed_exact
    from sinklabel.sources import as_source

    on_host = _distributed_exact._scan(as_source(exact), 700, v, labels)
    on_device = _distributed_exact._scan(as_source(x), 700, v, labels)
    for name in ("best", "margin", "off", "free", "finite"):
        np.testing.assert_array_equal(getattr(on_device, name), getattr(on_host, name))


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_distributed_exact_scans_cuda_rows_on_the_device(dtype, monkeypatch):
    """A GPU rank's scan of its rows for balance="exact" across ranks runs on the GPU and
    gives the host scan's arg-max, margin, moved rows and finite counts (ties and -inf
    included); only the rows asked for are copied back."""
    from sinklabel import _distributed_exact

    host, v, labels = _tied_masked_scan_input(5, 3000, 40)
    x = torch.from_numpy(host).cuda().to(getattr(torch, dtype)).requires_grad_()
    exact = x.detach().float().cpu().numpy()
    _assert_scans_agree(x, exact, v, labels)
    rows = np.array([0, 17, 2999])
    np.testing.assert_array_equal(_distributed_exact._rows_to_host(x, rows), exact[rows])


@needs_cupy
def test_distributed_exact_reads_cupy_rows_as_the_host_does():
    """A CuPy rank scans its rows on the host and sends only the rows asked for; both give
    what the same scores on the host give (ties and -inf included)."""
    from sinklabel import _distributed_exact
    from sinklabel.sources import as_source

    host, v, labels = _tied_masked_scan_input(6, 2000, 30)
    x = cp.asarray(host)
    _assert_scans_agree(x, host, v, labels)
    rows = np.array([1, 699, 700, 1999])
    read = _distributed_exact._read_rows(as_source(x), 700, rows, np.dtype(np.float32))
    np.testing.assert_array_equal(read, host[rows])


@needs_cupy
def test_cupy_sweep_and_labels_allocate_nothing_of_size_n_by_k():
    from sinklabel.kernels import _buffers

    x = torch.randn(20_000, 3000, device="cuda")
    y = cp.from_dlpack(x)
    kernel, f = get_kernel("cupy"), np.zeros(3000)
    kernel.sweep(y, f, 25.0)  # compile outside the measurement
    kernel.best(y, f, 25.0)
    _buffers.release()  # the kept buffers count too: measured from none
    pool, peak = cp.cuda.MemoryPool(), [0]

    def tracking_malloc(size):
        memory = pool.malloc(size)
        peak[0] = max(peak[0], pool.used_bytes())
        return memory

    cp.cuda.set_allocator(tracking_malloc)
    try:
        kernel.sweep(y, f, 25.0)
        kernel.best(y, f, 25.0)
    finally:
        cp.cuda.set_allocator(cp.get_default_memory_pool().malloc)
    assert peak[0] <= 0.02 * x.numel() * x.element_size(), peak[0]


@pytest.mark.skipif(torch is None or torch.cuda.device_count() < 2,
                    reason="needs two CUDA devices")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_tensor_off_the_current_device_is_swept_on_its_own(dtype):
    """Triton launches on the current device: a tensor on cuda:1 under cuda:0 must still be
    swept and labelled on cuda:1, as the NumPy kernel does on its values."""
    host = make_scores(3000, 40, regime="flat", seed=21).scores
    x = torch.from_numpy(host).to("cuda:1").to(getattr(torch, dtype))
    labels = _swept_under_device_0("torch", x, x.float().cpu().numpy(), torch.cuda.device(0))
    assert labels.device == x.device


def _swept_under_device_0(backend: str, x, exact: np.ndarray, current) -> object:
    """Sweep and label ``x`` (on device 1) while ``current`` makes device 0 current; the
    masses and labels must be the NumPy kernel's on ``exact``. Returns the labels."""
    f = np.random.default_rng(22).standard_normal(exact.shape[1])
    kernel, reference = get_kernel(backend), get_kernel("numpy")
    with current:
        mass = kernel.sweep(x, f, 25.0)
        _, labels = kernel.best(x, f, 25.0)
    np.testing.assert_allclose(mass, reference.sweep(exact, f, 25.0), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(to_host(labels), reference.best(exact, f, 25.0)[1])
    return labels


@needs_torch
def test_a_view_with_the_negative_bit_is_read_with_its_sign():
    """``z.conj().imag`` is a float32 view whose memory holds minus its values; the Triton
    kernels read memory, so they saw the scores negated (every label wrong)."""
    z = torch.from_numpy(make_scores(2000, 14, regime="flat", seed=23).scores).cuda()
    x = torch.view_as_complex(z.view(2000, 7, 2)).conj().imag
    assert x.is_neg()
    exact = x.resolve_neg().cpu().numpy()
    f = np.random.default_rng(24).standard_normal(7)
    kernel, reference = get_kernel("torch"), get_kernel("numpy")
    np.testing.assert_allclose(kernel.sweep(x, f, 25.0), reference.sweep(exact, f, 25.0),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(to_host(kernel.best(x, f, 25.0)[1]),
                                  reference.best(exact, f, 25.0)[1])


@needs_torch
def test_torch_ops_label_masses_ignore_tf32(monkeypatch):
    """The CUDA route without Triton (torch's own ops) summed label masses by a batched
    matrix product, which TF32 (allowed by many training scripts) rounds to 10 bits: off by
    5e-7 of N in L1 at 100,000 x 10, where float32 sums are within 2e-7."""
    from sinklabel.kernels import torch as torch_kernel

    scores = make_scores(104_857, 10, regime="flat", seed=2).scores.astype(np.float32)
    f = np.random.default_rng(3).standard_normal(10)
    monkeypatch.setattr(torch_kernel, "_fused", lambda x: None)  # as without Triton
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    mass, _ = get_kernel("torch").sweep_lse(torch.from_numpy(scores).cuda(), f, 25.0)
    z = 25.0 * scores.astype(np.float64) + f
    p = np.exp(z - z.max(axis=1, keepdims=True))
    expected = (p / p.sum(axis=1, keepdims=True)).sum(axis=0)
    assert np.abs(mass - expected).sum() / len(scores) < 2e-7


@pytest.mark.skipif(cp is None or torch is None or torch.cuda.device_count() < 2,
                    reason="needs CuPy and two CUDA devices")
def test_a_cupy_array_off_the_current_device_is_swept_on_its_own():
    """CuPy launches on the current device: an array on device 1 under device 0 was read by
    kernels on device 0 (an illegal address), its buffers made on device 1; its soft
    assignments were made on device 0."""
    host = make_scores(3000, 40, regime="flat", seed=25).scores
    with cp.cuda.Device(1):
        y = cp.asarray(host)
    assert _swept_under_device_0("cupy", y, host, cp.cuda.Device(0)).device.id == 1
    f, labels = np.random.default_rng(26).standard_normal(40), np.arange(3000) % 40
    kernel, reference = get_kernel("cupy"), get_kernel("numpy")
    with cp.cuda.Device(0):  # the rest of the kernel too: computed, and left, on device 1
        soft, slack = kernel.soft(y, f, 25.0), kernel.slack(y, f, 25.0)
        gathered = kernel.gather(y, labels)
    assert soft.device.id == 1
    np.testing.assert_allclose(to_host(soft), reference.soft(host, f, 25.0), rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(slack, reference.slack(host, f, 25.0), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(gathered, reference.gather(host, labels))


@needs_torch
def test_cuda_tensor_with_a_host_backend_says_what_to_pass():
    x = torch.zeros(10, 3, device="cuda")
    with pytest.raises(TypeError, match=r"backend='auto' \(or 'torch'\)"):
        sinklabel.sinkhorn(x, 3, backend="numpy")
    if cp is not None:
        with pytest.raises(TypeError, match="takes torch arrays, not cupy"):
            sinklabel.sinkhorn(cp.zeros((10, 3)), 3, backend="torch")


@needs_torch
def test_the_cache_refuses_cuda_tensors_before_any_work_and_cuda_blocks_as_read():
    """cache=True keeps tables of CPU tensors: a CUDA tensor is refused by its device, a
    function's CUDA blocks by the tables at the first block (the torch backend takes them)."""
    from sinklabel.sources import CallableSource

    x = torch.zeros((10, 3), device="cuda")
    with pytest.raises(ValueError, match="keeps tables of CPU scores .* these are on cuda"):
        sinklabel.sinkhorn(x, 3, cache=True)
    calls = []
    source = CallableSource(lambda a, b: calls.append(a) or x[a:b], (10, 3), "float32",
                            library="torch")
    with pytest.raises(ValueError, match="these are on cuda"):
        sinklabel.sinkhorn(source, 3, cache=True)
    assert calls == [0]


@pytest.mark.parametrize("library, dtype", [c for c in CASES if c.values[1] != "float64"])
@pytest.mark.parametrize("k", [21, 40, 3000])
def test_every_tuning_candidate_matches_numpy_kernel(library, dtype, k):
    """Large inputs run whichever launch configuration times fastest, so each one the tuner
    may pick (prefetching or not, scalar, 8- or 16-byte vectors, rows per step, two warps,
    one merged barrier, polynomial exp2, pipelined or ringed copies) must be right."""
    host = make_scores(700, k, regime="flat", seed=11).scores
    x, exact = on_device(host, library, dtype)
    f = np.random.default_rng(12).standard_normal(k)
    expected = get_kernel("numpy").sweep(exact, f, 25.0)
    if library == "torch":
        from sinklabel.kernels import _triton as module
        configs = module._fused_configs(*module.tile_width(k), x)
    else:
        from sinklabel.kernels import cupy as module
        configs = module._sweep_plan(x)
    assert len(configs) > 1
    saved = dict(module.TUNER.chosen)
    try:
        for config in configs:
            module.TUNER.chosen[_tuning_key(library, x, k)] = config
            mass = get_kernel(library).sweep(x, f, 25.0)
            np.testing.assert_allclose(mass, expected, rtol=1e-5, atol=1e-7, err_msg=str(config))
    finally:
        module.TUNER.chosen.clear()
        module.TUNER.chosen.update(saved)


@pytest.mark.parametrize("library, dtype", [c for c in CASES if c.values[1] != "float64"])
def test_tuning_a_large_input_rules_out_no_candidate_for_disagreeing(library, dtype):
    """A large input times every launch configuration (the pipelined ones included, added
    before a GPU could run them): none may disagree with the default, and the one chosen
    must match the NumPy kernel."""
    from sinklabel.kernels import _tuning

    k = 3000
    n = _tuning_rows(library, k)
    host = make_scores(n, k, regime="flat", seed=15).scores
    x, exact = on_device(host, library, dtype)
    f = np.random.default_rng(16).standard_normal(k)
    module = _backend_module(library)
    key = _tuning_key(library, x, k)
    saved = dict(module.TUNER.chosen)
    module.TUNER.chosen.pop(key, None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            mass = get_kernel(library).sweep(x, f, 25.0)
        rejected = module.TUNER.rejected[key]
        assert not [why for _, why in rejected if not why.startswith("cannot launch")], rejected
        assert len(module.TUNER.timings[key]) >= 2
        expected = get_kernel("numpy").sweep(exact, f, 25.0)
        np.testing.assert_allclose(mass, expected, rtol=10 * _tuning.AGREEMENT, atol=1e-6)
    finally:
        module.TUNER.chosen.clear()
        module.TUNER.chosen.update(saved)


def _tuning_rows(library: str, k: int) -> int:
    module = _backend_module(library)
    return -(-module.TUNE_ELEMENTS // k)


def _backend_module(library: str):
    if library == "torch":
        from sinklabel.kernels import _triton as module
    else:
        from sinklabel.kernels import cupy as module
    return module


def _tuning_key(library: str, x, k: int) -> tuple:
    if library == "torch":
        return ("sweep", x.dtype, k)
    from sinklabel.kernels import cupy as module
    return (x.dtype.name, k, tuple(module._sweep_plan(x)))


def _sweep_lse_float64(exact: np.ndarray, f: np.ndarray, lam: float):
    """Masses and per-row log-sum-exps of lam * exact + f, in float64 from the definition."""
    z = lam * exact.astype(np.float64) + f
    top = z.max(axis=1, keepdims=True)
    p = np.exp(z - top)
    sums = p.sum(axis=1)
    return (p / sums[:, None]).sum(axis=0), top[:, 0] + np.log(sums)


@needs_cupy
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("n, k", [(700, 40), (700, 3000), (300, 20000)])
def test_cupy_sweep_lse_every_candidate_matches_float64_formula(dtype, n, k):
    """The fused log-sum-exp of every launch configuration the tuner may pick (and of the
    blocked ops for rows too wide for one block), against float64 from the definition; it
    repeats exactly and ``sweep`` is its first half."""
    from sinklabel.kernels import cupy as module

    host = make_scores(n, k, regime="flat", seed=13).scores
    x, exact = on_device(host, "cupy", dtype)
    f = np.random.default_rng(14).standard_normal(k)
    mass_expected, lse_rows = _sweep_lse_float64(exact, f, 25.0)
    mass_rtol = 1e-10 if dtype == "float64" else 1e-5
    lse_tol = (1e-12 if dtype == "float64" else 1e-6) * np.abs(lse_rows).sum()
    configs = module._sweep_plan(x) or [None]
    assert (len(configs) > 1) == (k < 20000)
    kernel, saved = get_kernel("cupy"), dict(module.TUNER.chosen)
    try:
        for config in configs:
            if config is not None:
                module.TUNER.chosen[_tuning_key("cupy", x, k)] = config
            mass, lse = kernel.sweep_lse(x, f, 25.0)
            assert mass.dtype == np.float64 and mass.shape == (k,) and isinstance(lse, float)
            np.testing.assert_allclose(mass, mass_expected, rtol=mass_rtol, atol=1e-9,
                                       err_msg=str(config))
            assert abs(lse - lse_rows.sum()) <= lse_tol, (config, lse, lse_rows.sum())
            again = get_kernel("cupy").sweep_lse(x, f, 25.0)
            np.testing.assert_array_equal(again[0], mass)
            assert again[1] == lse
            np.testing.assert_array_equal(kernel.sweep(x, f, 25.0), mass)
    finally:
        module.TUNER.chosen.clear()
        module.TUNER.chosen.update(saved)


def _potentials_spread(k: int, bits: float) -> np.ndarray:
    """Random potentials rescaled to span ``bits`` in base-2 units (``f * log2(e)``)."""
    f = np.random.default_rng(17).standard_normal(k)
    if bits == 0:
        return np.zeros(k)
    return (f - f.min()) * (bits / np.log2(np.e) / np.ptp(f))


def _forced_sweep_lse(module, x, k: int, config: tuple, f: np.ndarray):
    """The CuPy sweep_lse with ``config`` forced as the tuner's choice."""
    saved = dict(module.TUNER.chosen)
    try:
        module.TUNER.chosen[_tuning_key("cupy", x, k)] = config
        return get_kernel("cupy").sweep_lse(x, f, 25.0)
    finally:
        module.TUNER.chosen.clear()
        module.TUNER.chosen.update(saved)


@needs_cupy
@pytest.mark.parametrize("k", [40, 3000])
@pytest.mark.parametrize("bits", [0, 30, 60])
def test_cupy_weighted_sweep_matches_numpy_kernel(k, bits):
    """Each column-weighted float16 candidate (rows shifted by a bound of their maximum)
    against the NumPy kernel, with the potentials spread up to the bound the host allows."""
    from sinklabel.kernels import cupy as module
    from sinklabel.kernels.cupy import fits_column_weights

    host = make_scores(700, k, regime="flat", seed=11).scores
    x, exact = on_device(host, "cupy", "float16")
    f = _potentials_spread(k, bits)
    assert fits_column_weights(f, 25.0)
    expected, expected_lse = get_kernel("numpy").sweep_lse(exact, f, 25.0)
    lse_tol = 1e-6 * np.abs(_sweep_lse_float64(exact, f, 25.0)[1]).sum()
    weighted = [config for config in module._sweep_plan(x) if config[8:] == (1,)]
    assert weighted
    for config in weighted:
        mass, lse = _forced_sweep_lse(module, x, k, config, f)
        np.testing.assert_allclose(mass, expected, rtol=1e-5, atol=1e-7, err_msg=str(config))
        assert abs(lse - expected_lse) <= lse_tol, (config, lse, expected_lse)


@needs_cupy
@pytest.mark.parametrize("k", [40, 3000])
def test_cupy_weighted_sweep_runs_its_twin_for_potentials_spread_too_far(k):
    """Potentials spread by 100 bits do not fit the column weights: the weighted candidate
    gives exactly what its unweighted twin gives."""
    from sinklabel.kernels import cupy as module

    host = make_scores(700, k, regime="flat", seed=11).scores
    x, _ = on_device(host, "cupy", "float16")
    f = _potentials_spread(k, 100)
    for config in [config for config in module._sweep_plan(x) if config[8:] == (1,)]:
        mass, lse = _forced_sweep_lse(module, x, k, config, f)
        twin_mass, twin_lse = _forced_sweep_lse(module, x, k, config[:8], f)
        np.testing.assert_array_equal(mass, twin_mass, err_msg=str(config))
        assert lse == twin_lse


