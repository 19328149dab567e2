"""Time the solver's own work per pass: everything a solve does between two sweeps.

On a GPU the device waits while the host turns one pass's label mass into the next pass's
potentials (the L-BFGS direction, the line search's tests, the curvature pair), so that work
adds to every iteration. It depends on K only, so it is timed here on the CPU: the NumPy
kernel sweeps a few rows (a short sweep, which leaves the host's caches as warm as a GPU
sweep does), and a wrapper notes when each sweep starts and ends. Per solve, the median gap
between one sweep's end and the next one's start is the host's work per pass.

    python benchmarks/solver_host.py                  # K = 3000, both regimes
    python benchmarks/solver_host.py --ks 1000 10000 --rounds 9
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import numpy as np

from sinklabel import solver
from sinklabel.datasets import REGIMES, make_scores
from sinklabel.kernels import Kernel, get_kernel
from sinklabel.sources import ArraySource

#: Passes at most per solve: enough for both regimes at the default tolerance.
MAX_ITER = 300


def stopwatch_kernel() -> tuple[Kernel, list[tuple[float, float]]]:
    """A NumPy kernel whose sweeps note when they start and end (perf_counter seconds) in the
    list returned beside it."""
    kernel = get_kernel("numpy")
    sweep, marks = kernel.sweep_lse, []

    def timed_sweep(chunk, f, lam):
        start = time.perf_counter()
        result = sweep(chunk, f, lam)
        marks.append((start, time.perf_counter()))
        return result

    kernel.sweep_lse = timed_sweep
    return kernel, marks


def host_gaps_us(scores: np.ndarray, tol: float, lam: float) -> np.ndarray:
    """Microseconds between consecutive sweeps of one solve (one chunk per pass)."""
    kernel, marks = stopwatch_kernel()
    k = scores.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", solver.ConvergenceWarning)
        solver.solve(
            ArraySource(scores), kernel, lam=lam, label_weights=np.full(k, 1.0 / k), tol=tol,
            max_iter=MAX_ITER, init=None, rows=scores.shape[0], progress=False,
        )
    starts = np.array([start for start, _ in marks[1:]])
    ends = np.array([end for _, end in marks[:-1]])
    return (starts - ends) * 1e6


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/solver_host.py", description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[3000],
                        help="label counts (default 3000)")
    parser.add_argument("--rows", type=int, default=8,
                        help="rows swept per pass (default 8: a sweep that leaves the host's "
                             "caches warm, as a GPU's does)")
    parser.add_argument("--rounds", type=int, default=5, help="solves per K and regime")
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--lam", type=float, default=25.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.ks) < 1 or args.rows < 1 or args.rounds < 1:
        parser.error("--ks, --rows and --rounds must be at least 1")
    if not (args.tol > 0 and args.lam > 0):
        parser.error("--tol and --lam must be > 0")
    print(f"# {platform.processor() or platform.machine()}, numpy {np.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.rows} rows, "
          f"tol {args.tol:g}, lam {args.lam:g}")
    print("| K | regime | passes | host us / pass, median | p10 | p90 |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for k in args.ks:
        for regime in REGIMES:
            scores = make_scores(args.rows, k, regime=regime, seed=k).scores
            host_gaps_us(scores, args.tol, args.lam)  # warm-up: imports, first calls
            gaps = [host_gaps_us(scores, args.tol, args.lam) for _ in range(args.rounds)]
            if not gaps[0].size:
                print(f"| {k} | {regime} | 1 | no second pass | | |")
                continue
            medians = [float(np.median(g)) for g in gaps]
            every = np.concatenate(gaps)
            print(f"| {k} | {regime} | {len(gaps[0]) + 1} | {np.median(medians):.1f} "
                  f"| {np.percentile(every, 10):.1f} | {np.percentile(every, 90):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
