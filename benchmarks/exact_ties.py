"""Exact solver on tied rows: identical, near-identical and all-zero scores.

A collapsed network gives every point the same scores; the exact solver then puts all of
them at one label and moves them out one shortest path each, which must cost O(K) a path,
not a scan of the label (that made the solve O(N^2)). Run as a script; the times should grow
about linearly with N (each case measured once; quote ratios taken in the same run):

    python benchmarks/exact_ties.py           # N = 5000, 10000, 20000 at K = 50
    python benchmarks/exact_ties.py --rows 100000 200000 --labels 100
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import sinklabel


def tied_scores(kind: str, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """float32 scores whose rows are one random row (``identical``), that row with noise of
    1e-7 relative (``near``), or zero (``zero``)."""
    row = rng.normal(size=k).astype(np.float32)
    if kind == "zero":
        return np.zeros((n, k), np.float32)
    S = np.tile(row, (n, 1))
    if kind == "near":
        S += (1e-7 * np.abs(S) * rng.normal(size=S.shape)).astype(np.float32)
    return S


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[5000, 10_000, 20_000])
    parser.add_argument("--labels", type=int, default=50)
    args = parser.parse_args(argv)
    if min(args.rows) < args.labels or args.labels < 1:
        parser.error("--rows must be at least --labels, and --labels at least 1")
    k = args.labels
    sinklabel.solve_exact(np.zeros((500, 10), np.float32), 10)  # compile numba loops
    sinklabel.sinkhorn(np.zeros((500, 10), np.float32), 10, balance="exact")
    for kind in ("identical", "near", "zero"):
        for n in args.rows:
            S = tied_scores(kind, n, k, np.random.default_rng(0))
            start = time.perf_counter()
            exact = sinklabel.solve_exact(S, k)
            cold = time.perf_counter() - start
            line = (f"{kind:>9} N={n:>8} K={k}: solve_exact {cold:7.3f} s "
                    f"(optimal {exact.certificate.optimal})")
            if kind == "identical":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    start = time.perf_counter()
                    sinklabel.sinkhorn(S, k, balance="exact")
                line += f" | sinkhorn(balance='exact') {time.perf_counter() - start:7.3f} s"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
