"""Regressions found reviewing the Numba kernels' 16-bit and float64 routes, the torch
backend's CPU route on them, and the CuPy backend's device handling. Oracles: the Numba
backend on the float32 copy of the widened scores, the NumPy backend, and plain NumPy in the
test."""

from __future__ import annotations

import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("numba")

import sinklabel  # noqa: E402
from sinklabel.kernels.numba import NumbaKernel  # noqa: E402

#: Rows x labels whose float32 copy is just over one default Numba chunk (64 MiB), so that
#: the default chunking of the 16-bit scores and of their float32 copy can differ.
BIG = (16_900, 1000)


def _big_scores() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(BIG, dtype=np.float32)


def _three_passes(scores, backend: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # three passes do not converge
        return sinklabel.sinkhorn(scores, BIG[1], lam=5.0, max_iter=3, backend=backend)


def test_16_bit_scores_are_chunked_like_their_float32_copy():
    """A float16 array gives the same bits as its float32 copy (docs/backends.md) beyond one
    chunk too: 16-bit chunks hold as many rows as the float32 chunks of the same scores, so
    the per-chunk sums add up in the same order (and a copied chunk stays 64 MiB)."""
    kernel = NumbaKernel()
    assert kernel.chunk_rows(BIG[1], 2) == kernel.chunk_rows(BIG[1], 4)
    half = _big_scores().astype(np.float16)
    result = _three_passes(half, "numba")
    reference = _three_passes(half.astype(np.float32), "numba")
    np.testing.assert_array_equal(result.error_history, reference.error_history)
    np.testing.assert_array_equal(result.potentials, reference.potentials)


def test_bfloat16_tensors_solve_like_their_float32_copy_beyond_one_chunk():
    """The torch backend's bfloat16 CPU route gives the same bits as the Numba backend on the
    float32 copy (docs/backends.md) at the default chunking, past one chunk."""
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(_big_scores()).to(torch.bfloat16)
    result = _three_passes(x, "torch")
    reference = _three_passes(x.float().numpy(), "numba")
    np.testing.assert_array_equal(result.error_history, reference.error_history)
    np.testing.assert_array_equal(result.potentials, reference.potentials)


class _Device:
    """``cupy.cuda.Device``: the current device while entered."""

    current = 0

    def __init__(self, index: int):
        self.id = index

    def __enter__(self) -> None:
        self._previous, _Device.current = _Device.current, self.id

    def __exit__(self, *exc: object) -> None:
        _Device.current = self._previous


class _OnDevice1(np.ndarray):
    """A CuPy array on device 1, NumPy underneath."""

    device = _Device(1)

    def get(self) -> np.ndarray:
        return np.asarray(self)


def _computes_on_device_1(function):
    """A CuPy function: like CuPy's, it computes and allocates on the current device, which
    must be the arrays' own (else CuPy reads them by peer access, or refuses them)."""
    def on_current_device(*args, **kwargs):
        assert _Device.current == 1, f"{function.__name__} ran under device {_Device.current}"
        return np.asarray(function(*args, **kwargs)).view(_OnDevice1)

    return on_current_device


def _fake_cupy() -> SimpleNamespace:
    return SimpleNamespace(
        **{name: _computes_on_device_1(getattr(np, name))
           for name in ("empty", "asarray", "exp", "maximum", "take_along_axis")},
        float64=np.float64, int64=np.int64,
    )


def test_cupy_slack_soft_and_gather_run_on_the_arrays_device(monkeypatch):
    """``sweep`` and ``best`` ran under the CuPy array's device, but ``slack``, ``soft`` and
    ``gather`` ran under the current one: an array on device 1 under device 0 was read by
    peer access (or refused) and its soft assignments were returned on device 0."""
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy())
    from sinklabel.kernels.cupy import CupyKernel
    from sinklabel.kernels.numpy import NumpyKernel

    rng = np.random.default_rng(3)
    scores = rng.standard_normal((50, 6)).astype(np.float32)
    f, labels = rng.standard_normal(6), rng.integers(0, 6, 50)
    x, kernel, reference = scores.copy().view(_OnDevice1), CupyKernel(), NumpyKernel()
    np.testing.assert_allclose(kernel.slack(x, f, 5.0), reference.slack(scores, f, 5.0),
                               rtol=1e-6)
    np.testing.assert_allclose(kernel.soft(x, f, 5.0), reference.soft(scores, f, 5.0),
                               rtol=1e-6)
    np.testing.assert_array_equal(kernel.gather(x, labels), reference.gather(scores, labels))
    assert _Device.current == 0


def test_a_cupy_array_makes_its_own_device_current_for_the_solve(monkeypatch):
    """The kernels run under the array's device, but the solver's label vector and the soft
    assignments' joins ran under the current one: the whole solve and the labelling of new
    rows now run with the CuPy array's device current."""
    from sinklabel import _arrays, api

    fake_cupy_array = type("ndarray", (), {"__module__": "cupy._core.core",
                                           "device": _Device(1)})()
    with _arrays.device_scope(fake_cupy_array):
        assert _Device.current == 1
    assert _Device.current == 0
    with _arrays.device_scope(np.zeros(3)):
        assert _Device.current == 0

    scoped = []

    def recording_scope(x):
        scoped.append(x)
        return _arrays.device_scope(x)

    monkeypatch.setattr(api, "device_scope", recording_scope)
    scores = np.random.default_rng(4).standard_normal((40, 4))
    result = api.sinkhorn(scores, 4)
    result.predict(scores)
    result.soft_assignments(scores)
    assert len(scoped) == 3 and all(x is scores for x in scoped)


def test_results_in_a_cupy_callers_library_are_made_on_its_arrays_device(monkeypatch):
    """``from_host`` made CuPy labels on the current device: an exact solve of an array on
    device 1 returned its labels on device 0."""
    from sinklabel import _arrays

    made_on = []
    fake = SimpleNamespace(asarray=lambda values: made_on.append(_Device.current) or values)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    like = type("ndarray", (), {"__module__": "cupy._core.core", "device": _Device(1)})()
    _arrays.from_host(np.arange(3), like)
    assert made_on == [1] and _Device.current == 0


def test_distributed_exact_reads_cupy_rows_on_the_arrays_device(monkeypatch):
    """The distributed exact stage sends a rank's chosen rows by indexing its CuPy block with
    an index array made on the current device: for a block on device 1 under device 0 CuPy
    reads it by peer access, or refuses it. The index is now made on the block's device."""
    from sinklabel._distributed_exact import _rows_to_host

    class CupyOnDevice1(_OnDevice1):
        __module__ = "cupy._core.core"

    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy())
    scores = np.random.default_rng(5).standard_normal((20, 3))
    rows = np.array([1, 7, 19])
    got = _rows_to_host(scores.copy().view(CupyOnDevice1), rows)
    assert type(got) is np.ndarray and _Device.current == 0
    np.testing.assert_array_equal(got, scores[rows])
