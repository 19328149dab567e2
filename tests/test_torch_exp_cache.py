"""``cache=True`` on CPU tensors: the Numba backend's tables on views of the tensors, so the
bits of a cached ``backend="numba"`` solve of the same array, with the labels as tensors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

from sinklabel import SinkhornLabeler, sinkhorn  # noqa: E402
from sinklabel.datasets import make_scores  # noqa: E402
from sinklabel.sources import CallableSource  # noqa: E402


def _scores(regime: str, n: int = 6000, k: int = 40, seed: int = 3) -> np.ndarray:
    return make_scores(n, k, regime=regime, seed=seed).scores


def _tensor(scores: np.ndarray, dtype: str, layout: str) -> torch.Tensor:
    x = torch.from_numpy(scores).to(getattr(torch, dtype))
    return x.t().contiguous().t() if layout == "transposed" else x


def _as_numpy(x: torch.Tensor) -> np.ndarray:
    """What the Numba backend solves to the same bits: the array itself, or the float32
    values of a bfloat16 tensor (whose bits the kernels widen exactly)."""
    return (x.float() if x.dtype == torch.bfloat16 else x).numpy()


def _assert_same_solve(got, expected) -> None:
    assert isinstance(got.labels, torch.Tensor) and got.labels.dtype == torch.int64
    assert got.n_iter == expected.n_iter and got.converged == expected.converged
    assert np.array_equal(got.potentials, expected.potentials)
    assert np.array_equal(got.labels.numpy(), expected.labels)


@pytest.mark.parametrize("layout", ["rows", "transposed"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("regime", ["flat", "peaked"])
def test_a_cached_tensor_solve_is_the_cached_numba_solve_bit_for_bit(regime, dtype, layout):
    """Peaked scores move the potentials far: tables are repaired and rebuilt on the way."""
    x = _tensor(_scores(regime), dtype, layout)
    got = sinkhorn(x, 40, cache=True, chunk_size=1000)
    expected = sinkhorn(_as_numpy(x), 40, cache=True, chunk_size=1000, backend="numba")
    _assert_same_solve(got, expected)
    uncached = sinkhorn(x, 40, chunk_size=1000)
    assert np.mean(got.labels.numpy() == uncached.labels.numpy()) > 0.99


def test_tables_are_kept_per_numba_chunk_within_a_memory_limit(monkeypatch):
    """The torch backend takes every row in one chunk; its tables are kept in the Numba
    backend's chunks (here made 1500 rows, so that there are several), as for NumPy input,
    which a budget sizes the same way."""
    from sinklabel.kernels.numba import NumbaKernel

    monkeypatch.setattr(NumbaKernel, "chunk_rows", lambda self, k, itemsize: 1500)
    x = torch.from_numpy(_scores("peaked", n=20000, k=100))
    for budget in (None, "3MB"):
        got = sinkhorn(x, 100, cache=True, memory_limit=budget)
        expected = sinkhorn(x.numpy(), 100, cache=True, memory_limit=budget, backend="numba")
        _assert_same_solve(got, expected)


def test_a_function_of_cpu_tensors_and_the_estimator_take_the_cache():
    scores = _scores("peaked")
    x = torch.from_numpy(scores)
    source = CallableSource(lambda a, b: x[a:b], x.shape, "float32", library="torch")
    expected = sinkhorn(scores, 40, cache=True, backend="numba")
    _assert_same_solve(sinkhorn(source, 40, cache=True), expected)
    labels = SinkhornLabeler(40, cache=True).fit_predict(x)
    assert isinstance(labels, torch.Tensor) and np.array_equal(labels.numpy(), expected.labels)


@pytest.mark.parametrize("lam", [1.0, 25.0])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_negated_view_is_cached_from_a_copy_of_its_values(dtype, lam):
    """A tensor whose memory holds -x under a "negate" bit has no NumPy view: the torch
    backend computes its passes with its own operations, and the tables are built from a copy
    of its values. At lam = 1 the tables keep nothing and every pass is torch's; at 25 they
    answer. Either way the solve is the cached Numba solve's, to rounding."""
    x = torch._neg_view(-_tensor(_scores("peaked"), dtype, "rows"))
    assert x.is_neg()
    got = sinkhorn(x, 40, lam=lam, tol=1e-6, cache=True)
    expected = sinkhorn(_as_numpy(x.resolve_neg()), 40, lam=lam, tol=1e-6, cache=True,
                        backend="numba")
    assert got.converged and expected.converged and isinstance(got.labels, torch.Tensor)
    np.testing.assert_allclose(got.potentials, expected.potentials, atol=1e-4)
    assert np.mean(got.labels.numpy() == expected.labels) > 0.999


def test_tensors_off_the_cpu_are_refused_before_any_work():
    calls = []
    x = torch.zeros((8, 3), device="meta")
    with pytest.raises(ValueError, match="cache=True keeps tables of CPU scores .* these are "
                       "on meta: pass cache=False"):
        sinkhorn(x, 3, cache=True)
    # A function's device shows only in its blocks: its first is refused as it is read
    # (tests/test_gpu.py: a CUDA block, which the torch backend takes, by the tables).
    source = CallableSource(lambda a, b: calls.append(a) or x[a:b], (8, 3), "float32",
                            library="torch")
    with pytest.raises(TypeError, match="got one on meta"):
        sinkhorn(source, 3, cache=True)
    assert calls == [0]


def test_numba_that_cannot_run_is_said_before_any_work(monkeypatch):
    """Installed but switched off (``NUMBA_DISABLE_JIT=1``): its modules refuse to load."""
    import importlib

    from sinklabel.kernels import BackendUnavailable

    imported = importlib.import_module

    def refuse(name, *args):
        if name.endswith("_torch_exp_cache"):
            raise BackendUnavailable("numba's compiler is switched off")
        return imported(name, *args)

    monkeypatch.setattr(importlib, "import_module", refuse)
    with pytest.raises(ValueError, match=r"keeps its tables with the numba kernels, which "
                       r"cannot run here \(numba's compiler is switched off\); pass cache=False"):
        sinkhorn(torch.zeros((8, 3)), 3, cache=True)


def test_without_numba_the_cache_says_what_to_install(monkeypatch):
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "numba" else found(name, *args))
    with pytest.raises(ValueError, match=r"cache=True on backend 'torch' keeps its tables with "
                       r"the numba kernels, and numba is not installed: pip install "
                       r"'sinklabel\[numba\]', or pass cache=False"):
        sinkhorn(torch.zeros((8, 3)), 3, cache=True)


def test_a_device_tensor_is_refused_by_its_device_even_without_numba(monkeypatch):
    """The device is named first: without numba, a CUDA tensor was told to install numba,
    which would not have helped it (here a meta tensor stands in for one)."""
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "numba" else found(name, *args))
    with pytest.raises(ValueError, match="keeps tables of CPU scores .* these are on meta"):
        sinkhorn(torch.zeros((8, 3), device="meta"), 3, cache=True)


def test_a_block_the_tables_refuse_stops_the_solve_at_once(monkeypatch):
    """How a function's CUDA block is refused (tests/test_gpu.py), on the CPU: the tables'
    check of each block they are given raises out of the solve's first pass."""
    from sinklabel.kernels import _torch_exp_cache

    def refuse_blocks(scores):
        if isinstance(scores, torch.Tensor):
            raise ValueError("refused: a block")

    monkeypatch.setattr(_torch_exp_cache, "refuse_off_the_cpu", refuse_blocks)
    x = torch.from_numpy(_scores("flat"))
    calls = []
    source = CallableSource(lambda a, b: calls.append(a) or x[a:b], x.shape, "float32",
                            library="torch")
    with pytest.raises(ValueError, match="refused: a block"):
        sinkhorn(source, 40, cache=True)
    assert calls == [0]
