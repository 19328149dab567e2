"""The torch backend on CPU tensors, and its CUDA kernels checked without a GPU where possible
(Triton's interpreter, nvcc compiling the CuPy source). The CUDA runs are in test_gpu.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import sinklabel
from sinklabel.datasets import make_scores
from sinklabel.kernels import get_kernel

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def near_tie_rows(scores: np.ndarray, potentials: np.ndarray, lam: float, gap: float = 1e-3):
    """Rows whose two best labels under the reference potentials are within ``gap`` (in
    units of lam * score): float rounding may legitimately pick either."""
    z = lam * scores.astype(np.float64) + potentials
    top2 = np.sort(z, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0] < gap


def assert_same_solution(result, reference, scores: np.ndarray, atol: float) -> None:
    """Potentials within ``atol``; labels equal except on near-ties."""
    np.testing.assert_allclose(result.potentials, reference.potentials, rtol=0, atol=atol)
    labels = result.labels.cpu().numpy() if hasattr(result.labels, "cpu") else result.labels
    differ = labels != reference.labels
    assert not np.any(differ & ~near_tie_rows(scores, reference.potentials, reference.lam))


@pytest.fixture(params=["numba", "numba, small blocks", "torch ops", "torch ops, small blocks"])
def cpu_path(request, monkeypatch) -> str:
    """Which route CPU tensors take: the Numba kernels (when installed), or torch's own
    blocked operations (as without Numba), in one block per chunk at these sizes or in
    small blocks (64 rows; 16 KB of temporaries, 136 rows of 30 labels) whose results are
    joined."""
    from sinklabel.kernels import torch as torch_backend

    if request.param.startswith("numba"):
        numba_backend = pytest.importorskip("sinklabel.kernels.numba")
        if request.param.endswith("small blocks"):
            monkeypatch.setattr(numba_backend.NumbaKernel, "chunk_rows", lambda *_: 64)
    else:  # every kernel object of the class (get_kernel makes a new one each call)
        monkeypatch.setattr(torch_backend.TorchKernel, "_numba", None)
    if request.param == "torch ops, small blocks":
        monkeypatch.setattr(torch_backend, "CPU_BLOCK_BYTES", 16 << 10)
    return request.param


@pytest.mark.parametrize("regime", ["flat", "peaked"])
@pytest.mark.parametrize("dtype, atol", [(np.float32, 1e-4), (np.float64, 1e-10)])
def test_full_solve_agrees_with_numpy(regime, dtype, atol, cpu_path):
    scores = make_scores(3000, 40, regime=regime, seed=3, dtype=dtype).scores
    options = dict(lam=25.0, max_iter=150)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
        reference = sinklabel.sinkhorn(scores, 40, backend="numpy", **options)
        result = sinklabel.sinkhorn(torch.from_numpy(scores), 40, backend="torch", **options)
    assert result.backend == "torch"
    assert result.n_iter == reference.n_iter
    if regime == "flat" or dtype == np.float64:
        assert_same_solution(result, reference, scores, atol)
        return
    # Peaked float32: the dual is nearly flat along some potentials (few rows sit near a
    # label boundary), so float32 summation order moves them by ~1e-3 at no cost in the
    # objective. The plan and the labels, which is what the potentials are for, agree.
    soft = result.soft_assignments(torch.from_numpy(scores)).numpy()
    np.testing.assert_allclose(soft, reference.soft_assignments(scores), rtol=0, atol=atol)
    np.testing.assert_array_equal(result.labels.numpy(), reference.labels)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_hard_case_stays_finite(dtype, rng):
    """Scores of -1e4 at lam=1e3: every exponent underflows except each row's best."""
    scores = rng.standard_normal((400, 12)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.5] = -1e4
    scores[:, 0] = np.maximum(scores[:, 0], -1.0)
    x = torch.from_numpy(scores).to(getattr(torch, dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
        result = sinklabel.sinkhorn(x, 12, lam=1e3, max_iter=50)
    assert np.all(np.isfinite(result.potentials))
    assert np.all(np.isfinite(result.error_history))
    labels = result.labels.numpy()
    assert labels.min() >= 0 and labels.max() < 12
    soft = result.soft_assignments(x)
    assert soft.dtype == torch.float32
    assert torch.isfinite(soft).all()
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(400), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "dtype, soft_dtype",
    [("float16", "float32"), ("bfloat16", "float32"), ("float32", "float32"),
     ("float64", "float64")],
)
def test_outputs_stay_torch_on_the_input_device(dtype, soft_dtype, rng):
    x = torch.from_numpy(rng.standard_normal((200, 6))).to(getattr(torch, dtype))
    result = sinklabel.sinkhorn(x, 6)
    assert isinstance(result.labels, torch.Tensor)
    assert result.labels.dtype == torch.int64 and result.labels.device == x.device
    soft = result.soft_assignments(x)
    assert soft.dtype == getattr(torch, soft_dtype) and soft.shape == x.shape
    predicted = result.predict(x)
    assert isinstance(predicted, torch.Tensor)
    assert torch.equal(predicted, result.labels)
    assert result.label_counts.sum() == 200


def test_requires_grad_input_records_no_graph(rng):
    base = torch.from_numpy(rng.standard_normal((300, 5)).astype(np.float32))
    x = base.clone().requires_grad_(True)
    result = sinklabel.sinkhorn(x, 5)
    reference = sinklabel.sinkhorn(base, 5)
    assert result.labels.grad_fn is None
    soft = result.soft_assignments(x)
    assert soft.grad_fn is None and not soft.requires_grad
    assert x.grad is None
    assert torch.equal(x.detach(), base)
    np.testing.assert_array_equal(result.potentials, reference.potentials)


@pytest.mark.parametrize("layout", ["transposed", "column_slice", "row_step"])
def test_non_contiguous_inputs_match_contiguous(layout, rng):
    wide = torch.from_numpy(rng.standard_normal((240, 16)))
    if layout == "transposed":
        x = wide.t().contiguous().t()
    elif layout == "column_slice":
        x = wide[:, ::2]
    else:
        x = wide[::2]
    assert not x.is_contiguous()
    contiguous = x.contiguous()
    result = sinklabel.sinkhorn(x, x.shape[1])
    reference = sinklabel.sinkhorn(contiguous, x.shape[1])
    np.testing.assert_allclose(result.potentials, reference.potentials, rtol=0, atol=1e-10)
    assert torch.equal(result.labels, reference.labels)


@pytest.mark.parametrize("dtype",
                         ["bfloat16", "float16", "float32", "float32 transposed", "float64"])
def test_kernel_operations_match_numpy_kernel(dtype, cpu_path, rng):
    """Each operation of the contract, on tensors the NumPy kernel sees as float32 (16-bit
    ones rounded first) or float64."""
    x = torch.from_numpy((3 * rng.standard_normal((700, 30))).astype(np.float32))
    if dtype in ("bfloat16", "float16", "float64"):
        x = x.to(getattr(torch, dtype))
    elif dtype == "float32 transposed":
        x = x.t().contiguous().t()  # rows Numba cannot read in place: copied first
    host = x.numpy() if dtype == "float64" else x.float().numpy()
    f = rng.standard_normal(30)
    kernel, reference = get_kernel("torch"), get_kernel("numpy")
    np.testing.assert_allclose(kernel.sweep(x, f, 25.0), reference.sweep(host, f, 25.0),
                               rtol=1e-5, atol=1e-6)
    values, labels = kernel.best(x, f, 25.0)
    ref_values, ref_labels = reference.best(host, f, 25.0)
    np.testing.assert_array_equal(values.numpy(), ref_values)
    np.testing.assert_array_equal(labels.numpy(), ref_labels)
    np.testing.assert_allclose(kernel.slack(x, f, 25.0), reference.slack(host, f, 25.0),
                               rtol=1e-6, atol=1e-4)
    # rtol: z = 25 * s + f reaches ~200, where float32 rounding (Numba's fused multiply-add
    # against NumPy's two roundings) moves exp(z - max) by up to ~3e-5 of itself.
    np.testing.assert_allclose(kernel.soft(x, f, 25.0).numpy(), reference.soft(host, f, 25.0),
                               rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(kernel.gather(x, labels), reference.gather(host, ref_labels))


@pytest.mark.parametrize("cpu_path", ["torch ops, small blocks"], indirect=True)
@pytest.mark.parametrize("operation", ["sweep", "best", "slack", "soft"])
def test_torch_ops_compute_in_blocks_of_their_budget(cpu_path, operation, monkeypatch, rng):
    """Without Numba, temporaries of CPU_BLOCK_BYTES at a time (136 rows of 30 float32
    labels in 16 KB), not one of the whole chunk, and every block in the same buffer: a
    fresh one per block fragmented the heap, which held N x K x 4 bytes after the pass."""
    from sinklabel.kernels import torch as torch_backend

    blocks, logit_blocks = [], torch_backend._logit_blocks

    def recorded(x, f, lam):
        for start, z in logit_blocks(x, f, lam):
            blocks.append(z)  # kept alive: blocks in fresh tensors would sit apart
            yield start, z

    monkeypatch.setattr(torch_backend, "_logit_blocks", recorded)
    x = torch.from_numpy(rng.standard_normal((700, 30)).astype(np.float32))
    getattr(get_kernel("torch"), operation)(x, np.zeros(30), 25.0)
    assert [len(z) for z in blocks] == [136] * 5 + [20]
    assert len({z.data_ptr() for z in blocks}) == 1


@pytest.mark.parametrize("layout", ["rows", "transposed"])
@pytest.mark.parametrize("dtype, regime", [
    ("float32", "flat"), ("float32", "peaked"), ("float64", "flat"), ("float64", "peaked"),
    ("float16", "flat"), ("bfloat16", "flat"),
])
def test_cpu_tensors_solve_bit_for_bit_like_the_numba_backend(dtype, regime, layout,
                                                              monkeypatch):
    """CPU tensors go through the Numba kernels on a view of their memory (bfloat16 as its
    bits, 16-bit scores widened to float32 as each is read), in the Numba backend's own blocks
    (here 700 rows, so the last block is partial): every figure of the solve is the same bits
    as the Numba backend's on the NumPy array of the same values (float32 for 16-bit ones).
    A transposed tensor too, its blocks copied: torch's own ops once took it, 1.3x slower."""
    from sinklabel.kernels.numba import NumbaKernel

    monkeypatch.setattr(NumbaKernel, "chunk_rows", lambda self, n_labels, itemsize: 700)
    scores = make_scores(3000, 40, regime=regime, seed=5).scores
    x = torch.from_numpy(scores).to(getattr(torch, dtype))
    host = x.float().numpy() if x.itemsize == 2 else x.numpy()
    if layout == "transposed":
        x = x.t().contiguous().t()
    computed = torch.float64 if dtype == "float64" else torch.float32
    reference = sinklabel.sinkhorn(host, 40, backend="numba")
    result = sinklabel.sinkhorn(x, 40)
    assert result.backend == "torch" and isinstance(result.labels, torch.Tensor)
    assert result.n_iter == reference.n_iter
    np.testing.assert_array_equal(result.error_history, reference.error_history)
    np.testing.assert_array_equal(result.potentials, reference.potentials)
    np.testing.assert_array_equal(result.labels.numpy(), reference.labels)
    soft = result.soft_assignments(x)
    assert soft.dtype == computed
    np.testing.assert_array_equal(soft.numpy(), reference.soft_assignments(host))
    kernel, numba_kernel = get_kernel("torch"), get_kernel("numba")
    f = reference.potentials
    np.testing.assert_array_equal(kernel.slack(x, f, 25.0), numba_kernel.slack(host, f, 25.0))
    values, labels = kernel.best(x, f, 25.0)
    ref_values, ref_labels = numba_kernel.best(host, f, 25.0)
    assert values.dtype == computed
    np.testing.assert_array_equal(values.numpy(), ref_values)
    np.testing.assert_array_equal(labels.numpy(), ref_labels)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_numba_views_cpu_tensors_and_copies_only_a_block_at_a_time(dtype, monkeypatch):
    """The Numba route takes a view of the tensor's own memory whatever its layout: rows in
    place (also a row slice of a wider tensor), a transposed tensor or strided columns copied
    by the Numba kernels a task's rows at a time, never whole."""
    pytest.importorskip("numba")
    from sinklabel.kernels import numba as numba_backend

    kernel = get_kernel("torch")
    wide = torch.zeros((50, 12), dtype=getattr(torch, dtype))
    for x in (wide, wide[:, 2:9], wide[::3], wide.t(), wide[:, ::2]):
        view = kernel._numba_view(x)
        assert view.shape == x.shape
        assert view.__array_interface__["data"][0] == x.data_ptr()
        assert view.strides == tuple(s * x.element_size() for s in x.stride())
    copied: list[tuple[str, int]] = []
    row_buffer, copy_rows = numba_backend._row_buffer, numba_backend._copy_rows

    def recorded(chunk):
        copied.append(("whole", len(chunk)))
        return row_buffer(chunk)

    def recorded_task(src, dst, lo, hi):
        copied.append(("task", hi - lo))
        copy_rows(src, dst, lo, hi)

    monkeypatch.setattr(numba_backend, "_row_buffer", recorded)
    monkeypatch.setattr(numba_backend, "_copy_rows", recorded_task)
    monkeypatch.setattr(numba_backend.NumbaKernel, "chunk_rows", lambda self, k, size: 16)
    monkeypatch.setattr(numba_backend, "_row_ranges",
                        lambda n, k: [(lo, min(n, lo + 6)) for lo in range(0, n, 6)])
    x = torch.ones((40, 12), dtype=getattr(torch, dtype)).t().contiguous().t()
    kernel.sweep_lse(x, np.zeros(12), 25.0)
    # Blocks of 16, 16 and 8 rows, in tasks of 6 rows at most, each copied on its own.
    assert copied == [("task", rows) for rows in (6, 6, 4, 6, 6, 4, 6, 2)]


_THREADS_SCRIPT = textwrap.dedent("""
    import threading, numpy as np, torch, sinklabel
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((20000, 100), np.float32))
    for threads in (1, 2):
        torch.set_num_threads(threads)
        sinklabel.sinkhorn(x, 100, max_iter=2)
        names = [t.name for t in threading.enumerate()]
        print(threads, sum(name.startswith("sinklabel-numba") for name in names))
""")


def test_numba_kernels_run_on_torchs_thread_count():
    """A CPU job that gives torch one thread per process (say, one per rank) gets one Numba
    thread too: no worker threads until torch is allowed two."""
    pytest.importorskip("numba")
    out = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], capture_output=True,
                         text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "0", "2", "1"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tensors_numpy_cannot_view_take_torch_ops(rng, dtype):
    """A tensor with its negative bit set has no NumPy view; it is solved through torch's own
    operations, like its resolved copy: labels, soft assignments and the exact certificate.
    In float16 torch's copy_ into the float32 buffer dropped the negation, so the solve saw
    -x (every label wrong, and a certified gap of -14214)."""
    base = torch.from_numpy(rng.standard_normal((300, 7)).astype(np.float32)).to(dtype)
    negated = torch._neg_view(base)
    assert negated.is_neg()
    resolved = negated.resolve_neg()
    result = sinklabel.sinkhorn(negated, 7)
    reference = sinklabel.sinkhorn(resolved, 7)
    np.testing.assert_allclose(result.potentials, reference.potentials, rtol=0, atol=1e-4)
    assert torch.equal(result.labels, reference.labels)
    torch.testing.assert_close(result.soft_assignments(negated),
                               reference.soft_assignments(resolved), rtol=0, atol=1e-5)
    exact = sinklabel.sinkhorn(negated, 7, balance="exact").certificate
    expected = sinklabel.sinkhorn(resolved, 7, balance="exact").certificate
    assert exact.optimal and exact.gap >= -exact.rounding  # a duality gap is never negative
    assert exact.primal == pytest.approx(expected.primal, rel=1e-12)


def test_tensors_on_other_devices_are_refused_clearly():
    """Meta tensors (no data) and MPS ones (no float64 for the accumulators) gave torch's own
    errors from inside a pass; now a TypeError naming the device, from every operation."""
    x = torch.zeros((10, 3), device="meta")
    with pytest.raises(TypeError, match=r"CPU and CUDA tensors, got one on meta: pass logp\.cpu"):
        sinklabel.sinkhorn(x, 3)
    kernel = get_kernel("torch")
    f = np.zeros(3)
    for operation in (kernel.sweep_lse, kernel.best, kernel.slack, kernel.soft):
        with pytest.raises(TypeError, match="got one on meta"):
            operation(x, f, 25.0)
    with pytest.raises(TypeError, match="got one on meta"):
        kernel.gather(x, torch.zeros(10, dtype=torch.int64))


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_tensors_are_refused_clearly():
    """Sparse tensors failed inside torch (as_strided, or "CSR tensors do not have strides");
    missing entries would be scores of 0, not -inf, so the caller must densify on purpose."""
    dense = torch.randn(10, 3)
    for x in (dense.to_sparse(), dense.to_sparse_csr()):
        with pytest.raises(TypeError, match=r"layout torch\.sparse_\w+.*logp\.to_dense\(\)"):
            sinklabel.sinkhorn(x, 3)


def test_exp_of_underflowing_inputs_is_exactly_zero():
    from sinklabel.kernels.torch import _exp_nonpositive

    z = torch.tensor([0.0, -1.0, -50.0, -86.0, -87.5, -104.0, -1e4, -np.inf])
    p = _exp_nonpositive(z.clone())
    expected = np.exp(z.numpy().astype(np.float64))
    np.testing.assert_allclose(p[:4].numpy(), expected[:4], rtol=1e-6)
    assert torch.all(p[4:] == 0)


def test_explicit_backend_that_cannot_take_the_input_says_what_to_pass(rng):
    scores = rng.standard_normal((20, 3))
    with pytest.raises(TypeError, match=r"backend='auto' \(or 'torch'\)"):
        sinklabel.sinkhorn(torch.from_numpy(scores), 3, backend="numpy")
    with pytest.raises(TypeError, match="takes torch arrays, not numpy"):
        sinklabel.sinkhorn(scores, 3, backend="torch")
    with pytest.raises(TypeError, match="takes cupy arrays, not torch"):
        sinklabel.sinkhorn(torch.from_numpy(scores), 3, backend="cupy")


def test_missing_cupy_gives_an_install_hint():
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'sinklabel\[cupy\]'"):
            get_kernel("cupy")
    else:
        pytest.skip("cupy is installed here")


def test_import_sinklabel_imports_no_array_library_or_cuda():
    code = "import sys, sinklabel; print(sorted(m for m in ('torch', 'cupy', 'triton', 'numba') " \
           "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]"


_INTERPRETER_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    import numpy as np, torch
    import triton.runtime.interpreter as interpreter

    # Triton 3.6's interpreter turns scalars into 1-element arrays, which NumPy >= 2.3
    # refuses to convert with int(): teach it to take the element.
    _patch = interpreter._patch_lang_tensor
    def _patch_with_index(tensor, scope):
        _patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))
    interpreter._patch_lang_tensor = _patch_with_index

    from sinklabel.kernels import _triton
    from sinklabel.kernels.numpy import NumpyKernel
    _triton.MAX_FUSED_COLS, _triton.WIDE_TILE = 64, 32    # K=70 takes the two-pass path
    _triton.MIN_ROWS_PER_PROGRAM = 64                      # several programs, several tiles
    _triton.SUM_PARTS, _triton.SUM_COLS = 2, 16            # partials summed over several loads
    kept_buffers = _triton._buffers

    def poisoned_buffers(*args):  # a partial read but not written this sweep shows as NaN
        buffers = kept_buffers(*args)
        buffers.part.fill_(float("nan"))
        buffers.lse_parts.fill_(float("nan"))
        return buffers
    _triton._buffers = poisoned_buffers
    configs = _triton._fused_configs
    prefetching = lambda width, tiles, x: [min((c for c in configs(width, tiles, x) if c[2]),
                                               key=lambda c: c[0])]
    # Every tile's exponentials from the FMA polynomial (the tuner's ``poly`` candidates).
    polynomial = lambda width, tiles, x: [(*configs(width, tiles, x)[0][:3], tiles)]
    # The software-pipelined loop (the interpreter runs it as a plain loop).
    pipelined = lambda width, tiles, x: [_triton.FusedLaunch(1, 2, False, stages=3)]
    # Sixteen rows per tile, so the last tile of 301 or 299 rows runs past the end.
    tall = lambda width, tiles, x: [_triton.FusedLaunch(16, 1, True)]
    chosen = dict(poly=polynomial, pipelined=pipelined, tall=tall)
    reference, rng, report = NumpyKernel(), np.random.default_rng(0), []
    # shift: every score moved far below float32's range (float64 only), where a row
    # maximum started at float32's lowest value would stay above the whole row.
    for n, k, dtype, prefetch, shift in [
        (37, 7, "float32", False, 0), (20, 70, "bfloat16", False, 0),
        (21, 70, "float32", False, 0), (40, 33, "float64", False, 0),
        (9, 24, "float16", False, 0), (300, 20, "float32", True, 0),
        (150, 24, "bfloat16", True, 0), (130, 12, "float64", True, 0),
        (90, 60, "float32", True, 0), (80, 40, "bfloat16", "poly", 0),
        (70, 24, "float16", "poly", 0), (90, 40, "bfloat16", "pipelined", 0),
        (75, 30, "float32", "pipelined", 0), (30, 70, "float64", False, -1e40),
        (30, 40, "float64", False, -1e40),
        # Potentials far from 0 (2^144 overflows float32) and a last row tile past the end.
        (301, 20, "float32", "tall", 0), (299, 24, "bfloat16", "tall", 0),
        (301, 70, "float32", False, 0),  # the two-pass sweep's last row tile, too
    ]:
        _triton._fused_configs = chosen.get(prefetch) or (prefetching if prefetch else configs)
        x = torch.from_numpy(3 * rng.standard_normal((n, k)) + shift).to(getattr(torch, dtype))
        x = x.t().contiguous().t() if n == 21 else x
        host = x.double().numpy() if dtype == "float64" else x.float().numpy()
        f = rng.standard_normal(k) * (100.0 if n in (301, 299) else 1.0)
        mass, lse = _triton.sweep_lse(x, f, 25.0)
        values, labels = _triton.best(x, f, 25.0)
        ref_values, ref_labels = reference.best(host, f, 25.0)
        z = 25.0 * host.astype(np.float64) + f
        top = z.max(axis=1)
        ref_lse = float((top + np.log(np.exp(z - top[:, None]).sum(axis=1))).sum())
        expected = reference.sweep(host, f, 25.0)
        report.append(dict(
            case=f"{n}x{k} {dtype} prefetch={prefetch} shift={shift}",
            mass=float(np.abs(mass - expected).max() / expected.max()),  # NaN stays NaN
            lse=abs(lse - ref_lse) / abs(ref_lse),
            values=float(np.abs(values.numpy() - ref_values).max()),
            labels=int((labels.numpy() != ref_labels).sum()),
            label_dtype=str(labels.dtype),
        ))
    print(json.dumps(report))
""")


def test_triton_kernels_in_the_interpreter_match_numpy():
    """The fused sweep (one- and two-pass) and best, run by Triton's CPU interpreter."""
    pytest.importorskip("triton")
    out = subprocess.run([sys.executable, "-c", _INTERPRETER_SCRIPT], capture_output=True,
                         text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for case in json.loads(out.stdout.strip().splitlines()[-1]):
        assert case["mass"] < 1e-5, case
        assert case["lse"] < 1e-6, case
        assert case["values"] == 0.0, case
        assert case["labels"] == 0, case
        assert case["label_dtype"] == "torch.int64", case


def _compile_sweep_for_hopper(launch, dtype: str, n_cols: int):
    """The one-pass sweep compiled for sm_90 as a CUDA launch specialises it (16-byte
    aligned pointers and program count, unit column stride), without a GPU."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget

    from sinklabel.kernels import _triton

    width, tiles = _triton.tile_width(n_cols)
    signature = {"x_ptr": f"*{dtype}", "coef_ptr": "*fp32", "part_ptr": "*fp32",
                 "lse_ptr": "*fp64", "n_programs": "i32", "n_rows": "i32", "stride_row": "i32"}
    constants = dict(stride_col=1, N_COLS=n_cols, WIDTH=width, TILES=tiles, BLOCK_M=launch.rows,
                     ROW_ALIGN=8, PREFETCH=launch.prefetch, POLY=launch.poly,
                     STAGES=launch.stages, BF16_BITS=int(dtype == "bf16"), PTX=1)
    signature.update(dict.fromkeys(constants, "constexpr"))
    source = triton.compiler.ASTSource(
        fn=_triton._sweep_fused, signature=signature, constexprs=constants,
        attrs={(i,): [["tt.divisibility", 16]] for i in range(5)})
    try:
        return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": launch.warps})
    except RuntimeError as exc:  # no ptxas for this platform in the wheel
        pytest.skip(f"cannot compile for sm_90 here: {exc}")


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_pipelined_sweep_compiles_to_asynchronous_copies_for_hopper(dtype):
    """The tuner's pipelined candidates copy the next rows with cp.async into shared memory
    (what keeps more bytes in flight than the register prefetch); one stage is the plain
    loop, as the default configurations have always compiled."""
    pytest.importorskip("triton")
    from sinklabel.kernels import _triton

    pipelined = [c for c in _triton._fused_configs(*_triton.tile_width(3000),
                                                   _empty(dtype, 3000)) if c.stages > 1]
    assert [c.warps for c in pipelined] == [2, 4, 8]
    for launch in pipelined:
        kernel = _compile_sweep_for_hopper(launch, dtype, 3000)
        assert "cp.async" in kernel.asm["ptx"], launch
        assert 0 < kernel.metadata.shared <= 48 * 1024, launch
    plain = _compile_sweep_for_hopper(pipelined[0]._replace(stages=1), dtype, 3000)
    assert "cp.async" not in plain.asm["ptx"]


def _empty(dtype: str, n_cols: int):
    return torch.empty((1, n_cols), dtype={"bf16": torch.bfloat16, "fp32": torch.float32}[dtype])


def _nvrtc():
    """libnvrtc (with its builtins preloaded) from a pip wheel or the system, or None."""
    import ctypes
    import ctypes.util
    import glob
    import site

    found = [ctypes.util.find_library("nvrtc")] + sorted(
        path for root in site.getsitepackages()
        for path in glob.glob(f"{root}/nvidia/*/lib/libnvrtc.so.*") if ".alt." not in path
    )
    for path in filter(None, found):
        for builtins in glob.glob(str(Path(path).parent / "libnvrtc-builtins.so.*")):
            if ".alt." not in builtins:
                ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def _compile_with_nvrtc(names: list[str], arch: str, *options: bytes) -> str:
    """Compile the CuPy backend's CUDA source for ``names`` as CuPy would (NVRTC) and check
    each instantiation got a symbol; ``sm_90`` also runs ptxas (register and shared-memory
    limits), ``compute_90`` stops at PTX. Returns the compiler's log (ptxas's report with
    ``--ptxas-options=-v``)."""
    import ctypes

    from sinklabel.kernels._cuda import SOURCE

    lib = _nvrtc()
    if lib is None:
        pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc to run this check)")
    program = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(program), SOURCE.encode(), b"sinklabel.cu", 0,
                                  None, None) == 0
    for name in names:
        assert lib.nvrtcAddNameExpression(program, name.encode()) == 0
    options = [b"-std=c++17", f"-arch={arch}".encode(), *options]
    status = lib.nvrtcCompileProgram(program, len(options),
                                     (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(program, log)
    assert status == 0, log.value.decode()
    for name in names:
        lowered = ctypes.c_char_p()
        assert lib.nvrtcGetLoweredName(program, name.encode(), ctypes.byref(lowered)) == 0
        assert lowered.value.startswith(b"_Z")
    lib.nvrtcDestroyProgram(ctypes.byref(program))
    return log.value.decode()


def test_cupy_cuda_source_compiles_for_hopper():
    """NVRTC (what CuPy calls) compiles every kind of kernel instantiation for sm_90."""
    _compile_with_nvrtc(
        ["sink_sweep<float, 4, 3, 5, 256, 0>", "sink_sweep<float, 4, 3, 2, 256, 1>",
         "sink_sweep<half_bits, 8, 3, 1, 128, 1>", "sink_sweep<half_bits, 4, 3, 2, 256, 1>",
         "sink_sweep<float, 1, 2, 8, 32, 1>", "sink_sweep<double, 1, 6, 1, 512, 0>",
         "sink_sweep<double, 2, 3, 2, 512, 1>",
         "sink_sweep<half_bits, 4, 3, 2, 256, 1, 1, 0>",
         "sink_sweep<half_bits, 8, 3, 1, 128, 2, 1, 2>",
         "sink_sweep<half_bits, 4, 1, 8, 32, 2>", "sink_sweep<half_bits, 8, 6, 1, 64, 2>",
         "sink_sweep<float, 1, 2, 3, 32, 0, 1, 4>", "sink_sweep<double, 1, 6, 2, 512, 0, 1, 0>",
         "sink_sweep<half_bits, 8, 3, 1, 128, 0, 0, 0, 4>",
         "sink_sweep<half_bits, 8, 3, 2, 128, 0, 1, 0, 2>",
         "sink_sweep<float, 4, 3, 1, 256, 0, 0, 0, 3>",
         "sink_sweep<double, 2, 1, 1, 512, 0, 0, 0, 4>",
         "sink_best<float>", "sink_best<half_bits>", "sink_best<double>"], "compute_90")


class _ArrayShape:
    """What the CuPy backend's launch plan reads of an array, for planning without a GPU:
    rows ``row_stride`` scores apart, columns ``col_stride`` apart, the data at ``pointer``."""

    def __init__(self, n_rows: int, n_cols: int, dtype: str, row_stride: int | None = None,
                 col_stride: int = 1, pointer: int = 512):
        self.shape, self.dtype = (n_rows, n_cols), np.dtype(dtype)
        self.itemsize = self.dtype.itemsize
        self.strides = ((row_stride or n_cols) * self.itemsize, col_stride * self.itemsize)
        self.data = type("Pointer", (), {"ptr": pointer})


def test_every_cupy_tuning_candidate_fits_a_hopper_multiprocessor():
    """Every instantiation the CuPy tuner may try compiles to sm_90 machine code (ptxas
    checks registers and the ring's shared memory): one that did not would fail the whole
    module's compile, the default included. Widths that are no multiple of the vector, and
    strided or misaligned rows, plan scalar loads."""
    from sinklabel.kernels import cupy as module

    layouts = [dict(), dict(row_stride=3004), dict(col_stride=2), dict(pointer=514)]
    names, scalar = set(), set()
    for dtype in ("float16", "float32", "float64"):
        for n_cols in (21, 40, 1000, 3000, 3001, 10000):
            for layout in layouts:
                shape = _ArrayShape(1000, n_cols, dtype, **layout)
                for config in module._sweep_plan(shape, async_copies=True) or []:
                    names.add(module.sweep_name(dtype, config))
                    if config[0] == 1:
                        scalar.add(dtype)
    assert any(name.endswith(", 4>") for name in names)   # ringed candidates are planned
    assert scalar == {"float16", "float32", "float64"}
    names.update(f"sink_column_sums<{acc}>" for acc in ("float", "double"))
    _compile_with_nvrtc(sorted(names), "sm_90")


def test_cupy_plans_no_asynchronous_copies_before_ampere():
    """cp.async needs compute capability 8.0: older devices get no ringed candidates."""
    from sinklabel.kernels import cupy as module

    shape = _ArrayShape(1000, 3000, "float16")
    with_ring = module._sweep_plan(shape, async_copies=True)
    without = module._sweep_plan(shape, async_copies=False)
    assert tuple(c for c in with_ring if len(c) < 8 or not c[7]) == without
    assert len(with_ring) > len(without)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cupy_blocked_sweep_lse_host_logic_on_numpy(dtype, monkeypatch):
    """The CuPy backend's path for rows too wide for one block is plain array code: run on
    NumPy arrays (several blocks), it matches float64 from the definition."""
    from sinklabel.kernels import cupy as module

    monkeypatch.setattr(module, "BLOCK_BYTES", 4 * 50 * 37)
    rng = np.random.default_rng(15)
    x = (3 * rng.standard_normal((120, 50))).astype(dtype)
    f = rng.standard_normal(50)
    z = 7.0 * x.astype(np.float64) + f
    top = z.max(axis=1, keepdims=True)
    p = np.exp(z - top)
    lse_rows = top[:, 0] + np.log(p.sum(axis=1))
    mass, lse = module._split(module._blocked_sweep_lse(x, f, 7.0, np))
    rtol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(mass, (p / p.sum(axis=1, keepdims=True)).sum(axis=0), rtol=rtol)
    assert abs(lse - lse_rows.sum()) <= rtol * np.abs(lse_rows).sum()
    assert mass.shape == (50,) and isinstance(lse, float)


def test_cupy_plans_a_weighted_twin_of_each_ringed_16_bit_candidate():
    """float16 plans end with each ringed shape again, column-weighted (a 9th entry 1, named
    as a tenth template argument), after the candidates they had, whose names stay as they
    were; 32- and 64-bit plans get none."""
    from sinklabel.kernels import cupy as module

    for n_cols in (40, 1000, 3000, 10000):
        plan = module._sweep_plan(_ArrayShape(1000, n_cols, "float16"), async_copies=True)
        ringed = [config for config in plan if len(config) == 8 and config[7]]
        weighted = plan[len(plan) - len(ringed):]
        assert ringed and weighted == tuple((*config, 1) for config in ringed), plan
        assert all(len(config) < 9 for config in plan[:len(plan) - len(ringed)])
        for config in weighted:
            twin = module.sweep_name("float16", config[:8])
            assert module.sweep_name("float16", config) == twin[:-1] + ", 1>"
    assert (module.sweep_name("float16", (8, 128, 3, 1, 0, 0, 0, 4))
            == "sink_sweep<half_bits, 8, 3, 1, 128, 0, 0, 0, 4>")
    for dtype in ("float32", "float64"):
        plan = module._sweep_plan(_ArrayShape(1000, 3000, dtype), async_copies=True)
        assert all(len(config) < 9 for config in plan)


class _FakeSweepBuffers:
    """The CuPy sweep buffers as ``_sweep_lse`` uses them, without a device."""

    part = lse_parts = totals = None

    def __init__(self, n_cols: int):
        self.n_cols = n_cols

    def coefficients(self, f, factor, scale):
        return "coef"

    def totals_on_host(self):
        return np.zeros(self.n_cols), 0.0


@pytest.mark.parametrize("spread_bits, lam, weighted", [
    (0.0, 25.0, True), (60.0, 25.0, True), (100.0, 25.0, False), (30.0, 0.0, False),
    (float("inf"), 25.0, False)])
def test_cupy_weighted_config_launches_its_twin_unless_the_potentials_fit(
        spread_bits, lam, weighted, monkeypatch):
    """A chosen column-weighted configuration runs only where it is exact (potentials within
    ``WEIGHTED_SPREAD`` bits, lam > 0); elsewhere its unweighted twin, compiled with it."""
    from sinklabel.kernels import cupy as module

    n_cols = 3000
    x = _ArrayShape(1000, n_cols, "float16")
    x.size = 1000 * n_cols
    compiled, launched = set(), []

    def functions(names):
        compiled.update(names)
        return {name: lambda *args, name=name: launched.append(name) for name in names}

    monkeypatch.setattr(module, "_compute_capability", lambda: 90)
    monkeypatch.setattr(module, "_processors", lambda: 132)
    monkeypatch.setattr(module, "_buffers", lambda x, programs, n: _FakeSweepBuffers(n))
    monkeypatch.setattr(module, "_functions", functions)
    plan = module._sweep_plan(x)
    config = next(config for config in plan if config[8:] == (1,))
    monkeypatch.setitem(module.TUNER.chosen, ("float16", n_cols, plan), config)
    f = np.zeros(n_cols)
    f[-1] = spread_bits / np.log2(np.e)
    module.CupyKernel.__new__(module.CupyKernel)._sweep_lse(x, f, lam, None)
    expected = module.sweep_name("float16", config if weighted else config[:8])
    assert launched[0] == expected and expected in compiled


@pytest.mark.parametrize("spread_bits, weighted_timed", [(0.0, True), (100.0, False)])
def test_cupy_tuning_times_weighted_candidates_only_at_potentials_that_fit(
        spread_bits, weighted_timed, monkeypatch):
    """Tuned at potentials too spread for column weights, a weighted candidate would run,
    be checked and be timed as its twin, and could then be chosen unchecked: it is left out
    of that tuning instead."""
    from sinklabel.kernels import cupy as module
    from sinklabel.kernels._tuning import Tuner

    n_cols = 3000
    x = _ArrayShape(1000, n_cols, "float16")
    x.size = module.TUNE_ELEMENTS
    launched = []

    def functions(names):
        return {name: lambda *args, name=name: launched.append(name) for name in names}

    monkeypatch.setattr(module, "_compute_capability", lambda: 90)
    monkeypatch.setattr(module, "_processors", lambda: 132)
    monkeypatch.setattr(module, "_buffers", lambda x, programs, n: _FakeSweepBuffers(n))
    monkeypatch.setattr(module, "_functions", functions)
    # Every launch times the same except the weighted ones, which time fastest.
    tuner = Tuner(lambda run: (run(), 1.0 if ", 1>" in launched[-1] else 2.0)[1], tuple)
    monkeypatch.setattr(module, "TUNER", tuner)
    plan = module._sweep_plan(x)
    f = np.zeros(n_cols)
    f[-1] = spread_bits / np.log2(np.e)
    module.CupyKernel.__new__(module.CupyKernel)._sweep_lse(x, f, 25.0, None)
    timed = [config for config, _ in tuner.timings[("float16", n_cols, plan)]]
    assert any(config[8:] == (1,) for config in timed) == weighted_timed
    assert (tuner.chosen[("float16", n_cols, plan)][8:] == (1,)) == weighted_timed


def _ftz_exp2(v: np.ndarray) -> np.ndarray:
    """float32 exp2 flushing results below 2^-126 to 0, as ex2.approx.ftz does."""
    out = np.exp2(v.astype(np.float32))
    return np.where(out < np.float32(2.0 ** -126), np.float32(0), out)


def _weighted_sweep_emulation(x16: np.ndarray, f: np.ndarray, lam: float):
    """The column-weighted CUDA sweep's arithmetic in float32 (``_cuda``, WEIGHTED): rows
    shifted by the bound scale * max(x) + max(coef), columns weighted by 2^(coef - max(coef)).
    Masses and the sum of the rows' log-sum-exps (natural log)."""
    scale = np.float32(lam * np.log2(np.e))
    coef = (f * np.log2(np.e)).astype(np.float32)
    cm = coef.max()
    w = _ftz_exp2(coef - cm)
    xm = x16.max(axis=1).astype(np.float32)
    c = np.where(xm == -np.inf, np.float32(0), -(xm * scale))
    with np.errstate(invalid="ignore"):
        q = _ftz_exp2(x16.astype(np.float32) * scale + c[:, None])
    s = (q * w).sum(axis=1, dtype=np.float32)
    weight = np.where(s > 0, np.float32(1) / s, np.float32(0))
    acc = (q * weight[:, None]).astype(np.float64).sum(axis=0)
    lse2 = (-c.astype(np.float64) + float(cm) + np.log2(s.astype(np.float64))).sum()
    return acc * w, lse2 * np.log(2.0)


def test_weighted_sweep_maths_emulated_in_numpy_matches_the_float64_definition():
    """The column-weighted sweep's formula and log-sum-exp bookkeeping (emulated in float32
    with flushed underflow, as the CUDA kernel computes) against float64 from the definition,
    at potentials spread to the edge the host allows and with rows whose maximum sits on the
    smallest potential (the bound then exceeds it by the whole spread), and -inf scores."""
    from sinklabel.kernels.cupy import WEIGHTED_SPREAD, fits_column_weights

    rng = np.random.default_rng(21)
    n, k, lam = 400, 300, 25.0
    f = rng.permutation(np.linspace(0.0, (WEIGHTED_SPREAD - 0.1) / np.log2(np.e), k))
    assert fits_column_weights(f, 1.0) and np.ptp(f) * np.log2(np.e) > WEIGHTED_SPREAD - 1
    x = (2 * rng.standard_normal((n, k))).astype(np.float16)
    x[rng.random((n, k)) < 0.1] = -np.inf
    x[:50, np.argmin(f)] = x[:50].max(axis=1) + 1
    x[50:60, np.argmax(f)] = -np.inf
    z = lam * x.astype(np.float64) + f
    top = z.max(axis=1, keepdims=True)
    p = np.exp(z - top)
    mass = (p / p.sum(axis=1, keepdims=True)).sum(axis=0)
    lse_rows = top[:, 0] + np.log(p.sum(axis=1))
    ours, lse = _weighted_sweep_emulation(x, f, lam)
    np.testing.assert_allclose(ours, mass, rtol=1e-5, atol=1e-9)
    assert abs(lse - lse_rows.sum()) <= 1e-6 * np.abs(lse_rows).sum()


def test_cupy_weighted_candidates_keep_their_arrays_in_registers():
    """The column-weighted sweeps' per-thread arrays stay in registers (no stack frame, which
    would mean local memory and made the 64-thread shape 2.5 times slower on an H200)."""
    from sinklabel.kernels import cupy as module

    names = sorted({module.sweep_name("float16", config) for n_cols in (40, 1000, 3000, 10000)
                    for config in module._sweep_plan(_ArrayShape(1000, n_cols, "float16"),
                                                     async_copies=True)
                    if config[8:] == (1,)})
    report = _compile_with_nvrtc(names, "sm_90", b"--ptxas-options=-v")
    frames = re.findall(r"(\d+) bytes stack frame", report)
    assert len(frames) == len(names) and set(frames) == {"0"}, report
