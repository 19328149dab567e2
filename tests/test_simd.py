"""``sinklabel._simd.first_equal``, compiled and as the plain Python used without numba,
against a scan written here; and the prefetch hint, in the compiled code."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from conftest import requires

from sinklabel import _simd


def plain_first_equal(z: np.ndarray, value: float, n: int) -> int:
    for j in range(n):
        if z[j] == value:
            return j
    return n


def cases(dtype) -> list[tuple[np.ndarray, float, int]]:
    """Rows with many ties, values present and absent, -inf/inf/NaN, every length up to a few
    blocks and every prefix length ``n`` (a whole number of blocks or not, below one block)."""
    rng = np.random.default_rng(7)
    special = np.array([-np.inf, np.inf, np.nan, -0.0, 0.0], dtype=dtype)
    out = []
    for size in range(0, 4 * _simd.W + 3):
        z = rng.integers(0, 4, size).astype(dtype)  # values 0..3: ties in and across blocks
        if size:
            z[rng.random(size) < 0.15] = rng.choice(special)
        for n in {0, size, size // 2, size - size % _simd.W, min(size, _simd.W - 1)}:
            for value in (0.0, 1.0, 3.0, 7.0, -np.inf, np.inf, np.nan, -0.0):
                out.append((z, dtype(value), n))
    return out


@pytest.fixture(scope="module")
def simd_without_numba():
    """A second copy of ``sinklabel._simd``, imported as where numba is not installed."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "numba", None)
        spec = importlib.util.spec_from_file_location("simd_without_numba", _simd.__file__)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


@requires("numba")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_first_equal_matches_a_plain_scan(dtype):
    assert _simd.HAVE_NUMBA  # numba is installed, so the compiled code is what is tested
    for z, value, n in cases(dtype):
        assert _simd.first_equal(z, value, n) == plain_first_equal(z, value, n), (z, value, n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_first_equal_without_numba_matches_a_plain_scan(dtype, simd_without_numba):
    assert not simd_without_numba.HAVE_NUMBA
    first_equal = simd_without_numba.first_equal
    assert first_equal.py_func is first_equal  # plain Python, not a numba dispatcher
    for z, value, n in cases(dtype):
        assert first_equal(z, value, n) == plain_first_equal(z, value, n), (z, value, n)


def test_stand_ins_without_numba_compute_the_same(simd_without_numba):
    plain = simd_without_numba
    assert plain.fmax(2.0, 3.0) == 3.0 and plain.fmin(2.0, 3.0) == 2.0
    assert list(plain.prange(3)) == [0, 1, 2]

    @plain.njit(cache=True, fastmath=plain.FAST)
    def double(x):
        return 2 * x

    assert double(4) == 8 and double.py_func is double


@requires("numba")
def test_prefetch_compiles_to_the_llvm_prefetch_intrinsic():
    """The hint reaches the compiled code (a no-op stand-in would pass every result test)."""
    from numba import njit

    @njit
    def touch(a):
        _simd.prefetch(a, 16)
        return a[0]

    a = np.ones(32, np.float32)
    assert touch(a) == 1.0
    assert "@llvm.prefetch" in touch.inspect_llvm(touch.signatures[0])
