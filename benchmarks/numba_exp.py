"""Accuracy and one-core speed of the Numba backend's vectorised exponentials against libm.

Accuracy: the float32 and float64 exps (``_exp_f32``, ``_exp_f64``) on uniform random points
of [underflow, 0], a log-spaced sweep of small arguments and an even grid, against NumPy's
long double ``exp`` (x86: 64 significant bits; elsewhere float64 ``np.exp``), as the largest
relative error and the largest error in ulps of the float result; float32 and float64
``np.exp`` measured the same way for comparison.

Speed: ``exp`` of an in-cache row (1000 values of [-700, 0] or [-87, 0]) summed and stored, in
one compiled loop, ``--reps`` times per call, by the backend's exp and by Numba's scalar
``math.exp`` (libm); best of ``--calls`` calls each, alternated. Run with NUMBA_NUM_THREADS=1
or not: the loops are single-threaded.

    python benchmarks/numba_exp.py
    python benchmarks/numba_exp.py --points 2000000 --calls 5
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from numba import njit

from sinklabel._simd import FAST
from sinklabel.kernels.numba import _UNDERFLOW, _exp_f32, _exp_f64


def _apply(exp):
    @njit
    def apply(x, out):
        for i in range(x.size):
            out[i] = exp(x[i])

    return apply


def _summed(exp):
    @njit(fastmath=FAST)
    def summed(x, out, reps):
        total = x.dtype.type(0.0)
        for _ in range(reps):
            for i in range(x.size):
                p = exp(x[i])
                out[i] = p
                total += p
        return total

    return summed


@njit
def _libm(x):
    return math.exp(x)


def _points(dtype: np.dtype, count: int) -> np.ndarray:
    low = float(np.asarray(_UNDERFLOW[dtype], dtype))
    rng = np.random.default_rng(0)
    small = -np.logspace(-30, math.log10(-low), count // 10)
    x = np.concatenate([rng.uniform(low, 0.0, count), small, np.linspace(low, 0.0, count // 10)])
    return np.maximum(x, low).astype(dtype)


def _errors(x: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """Largest relative error and largest error in ulps of ``got`` (dtype of ``x``)."""
    wide = np.longdouble if np.finfo(np.longdouble).nmant > 52 else np.float64
    exact = np.exp(x.astype(wide))
    error = np.abs(got.astype(wide) - exact)
    ulps = error / np.spacing(exact.astype(x.dtype)).astype(wide)
    return float(np.max(error / exact)), float(np.max(ulps))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10_000_000,
                        help="uniform points per dtype (plus a tenth log-spaced, a tenth even)")
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=15)
    args = parser.parse_args(argv)
    for name in ("points", "reps", "calls"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")

    print(f"{'dtype':<9}{'points':>12}{'max rel err':>13}{'max ulps':>10}"
          f"{'np.exp rel':>12}{'np.exp ulps':>13}")
    for dtype, exp in ((np.dtype(np.float32), _exp_f32), (np.dtype(np.float64), _exp_f64)):
        x = _points(dtype, args.points)
        out = np.empty_like(x)
        _apply(exp)(x, out)
        rel, ulps = _errors(x, out)
        np_rel, np_ulps = _errors(x, np.exp(x))
        print(f"{dtype.name:<9}{x.size:>12,}{rel:>13.3g}{ulps:>10.3f}{np_rel:>12.3g}"
              f"{np_ulps:>13.3f}")

    print(f"\none core, {args.reps} x 1000 in-cache values per call, best of {args.calls} calls")
    for dtype, exp, low in ((np.float32, _exp_f32, -87.0), (np.float64, _exp_f64, -700.0)):
        x = np.random.default_rng(1).uniform(low, 0.0, 1000).astype(dtype)
        out = np.empty_like(x)
        loops = {"backend exp": _summed(exp), "math.exp": _summed(_libm)}
        best = dict.fromkeys(loops, math.inf)
        for loop in loops.values():
            loop(x, out, 1)
        for _ in range(args.calls):
            for name, loop in loops.items():
                t0 = time.perf_counter()
                loop(x, out, args.reps)
                best[name] = min(best[name], time.perf_counter() - t0)
        rates = {name: x.size * args.reps / seconds / 1e9 for name, seconds in best.items()}
        print(f"{np.dtype(dtype).name}: backend exp {rates['backend exp']:.3f} G/s, math.exp "
              f"{rates['math.exp']:.3f} G/s, ratio {rates['backend exp'] / rates['math.exp']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
