"""Time whole solves with and without ``cache=True`` on the CPU, flat and peaked scores.

Each solve is ``sinkhorn(scores, K, cache=...)`` (Numba backend, defaults otherwise); the
table gives its passes over the scores (``n_iter``), its seconds, and for the cached solve what
its tables did: chunk passes answered from tables, chunks (re)built from the scores, rows
repaired from the scores, and the tables' size. The counters come from the cache the solve
built (recorded by wrapping ``with_exp_cache``; the solve itself is the public call).

    python benchmarks/cpu_cached_solve.py                  # N=1,000,000, K=1000, ~5 GB
    python benchmarks/cpu_cached_solve.py --n 100000       # a quick look
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import sinklabel
import sinklabel.api
from sinklabel.datasets import REGIMES, make_scores
from sinklabel.exp_cache import with_exp_cache


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    args = parser.parse_args(argv)
    if args.n < 1 or args.k < 1:
        parser.error("--n and --k must be at least 1")

    built = []

    def recording(*a, **kw):
        source, kernel = with_exp_cache(*a, **kw)
        built.append(source.cache)
        return source, kernel

    sinklabel.api.with_exp_cache = recording
    sinklabel.sinkhorn(make_scores(64, args.k, regime="flat").scores, args.k, cache=True)
    print(f"N={args.n:,} K={args.k} float32 lam=25 tol=1e-3, backend numba")
    print(f"{'regime':<8}{'cache':<7}{'passes':>7}{'seconds':>9}{'table':>7}{'built':>7}"
          f"{'repaired rows':>15}{'MB':>8}")
    for regime in args.regimes:
        scores = make_scores(args.n, args.k, regime=regime, seed=0).scores
        results = {}
        for cache in (False, True):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
                t0 = time.perf_counter()
                results[cache] = sinklabel.sinkhorn(scores, args.k, cache=cache)
                seconds = time.perf_counter() - t0
            line = f"{regime:<8}{cache!s:<7}{results[cache].n_iter:>7}{seconds:>9.2f}"
            if cache:
                c = built[-1]
                line += (f"{c.table_passes:>7}{c.builds:>7}{c.repaired_rows:>15}"
                         f"{c.nbytes / 1e6:>8.1f}")
            print(line, flush=True)
        difference = np.abs(results[True].potentials - results[False].potentials).max()
        same = float(np.mean(np.asarray(results[True].labels) == results[False].labels))
        print(f"{'':<8}potentials differ by {difference:.2e} at most; {100 * same:.3f}% of the "
              "labels equal")
        del scores
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
