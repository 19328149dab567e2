"""Exact solver timings against SciPy's HiGHS and POT's network simplex (``ot.emd``).

Run as a script (each case measured once; the development machine is shared, so quote
ratios taken in the same run):

    python benchmarks/bench_exact.py            # N=1e5 and 1e6 at K=1000, plus HiGHS
    python benchmarks/bench_exact.py --balance  # balance="exact" at N=1e6, K=1000 only
    python benchmarks/bench_exact.py --quick    # small sizes; ~2 minutes, nearly all HiGHS
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import sinklabel
from sinklabel.datasets import make_scores
from sinklabel.exact import balance_exact
from sinklabel.kernels import resolve_kernel
from sinklabel.sources import as_source, itemsize


def timed(func, *args, **kwargs):
    start = time.perf_counter()
    out = func(*args, **kwargs)
    return out, time.perf_counter() - start


def emd_objective(S: np.ndarray) -> float:
    """POT's exact solver on the dense float64 cost matrix (its required input)."""
    try:
        import ot
    except ImportError as exc:
        raise SystemExit("bench_exact.py compares with POT's ot.emd: pip install pot "
                         "(--balance needs only sinklabel)") from exc

    N, K = S.shape
    plan = ot.emd(np.full(N, 1.0 / N), np.full(K, 1.0 / K), -S.astype(np.float64),
                  numItermax=10**9)
    return float(-(plan * S).sum() * N)


def exact_step(S: np.ndarray, soft: sinklabel.SinkhornResult) -> sinklabel.SinkhornResult:
    """What ``sinkhorn(..., balance="exact")`` does after its Sinkhorn solve, on that result."""
    source = as_source(S)
    kernel = resolve_kernel(soft.backend, source.library)
    rows = kernel.chunk_rows(S.shape[1], itemsize(source.dtype))
    return balance_exact(source, kernel, soft, rows)


def balance(n: int, k: int, regime: str) -> None:
    """balance="exact" against one Sinkhorn solve, both timed on the same solve."""
    S = make_scores(n, k, regime=regime, seed=0).scores
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        soft, t_s = timed(sinklabel.sinkhorn, S, k)
    bal, t_b = timed(exact_step, S, soft)
    cert = bal.certificate
    print(f"N={n:>8} K={k:>5} {regime:>6}: sinkhorn {t_s:.2f} s ({soft.n_iter} passes) | exact "
          f"step of balance='exact' {t_b:.2f} s: balance costs {(t_s + t_b) / t_s:.2f}x one "
          f"Sinkhorn solve (gap {cert.gap:.1e}, rounding {cert.rounding:.1e}, optimal "
          f"{cert.optimal})", flush=True)


def case(n: int, k: int, regime: str, *, emd: bool, highs: bool, sinkhorn: bool) -> None:
    S = make_scores(n, k, regime=regime, seed=0).scores
    exact, t_exact = timed(sinklabel.solve_exact, S, k)
    cert = exact.certificate
    line = (f"N={n:>8} K={k:>5} {regime:>6}: auction {t_exact:7.2f} s "
            f"(gap {cert.gap:.2e}, rounding {cert.rounding:.1e}, optimal {cert.optimal})")
    if highs:
        h, t_h = timed(sinklabel.solve_exact, S, k, method="highs")
        line += f" | HiGHS {t_h:7.2f} s (objective diff {abs(h.objective - exact.objective):.1e})"
    if emd:
        obj, t_e = timed(emd_objective, S)
        line += f" | ot.emd {t_e:7.2f} s (objective diff {abs(obj - exact.objective):.1e})"
    print(line, flush=True)
    if sinkhorn:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            soft, t_s = timed(sinklabel.sinkhorn, S, k)
        bal, t_b = timed(exact_step, S, soft)
        print(f"    sinkhorn {t_s:.2f} s ({soft.n_iter} it) | exact step of balance='exact' "
              f"{t_b:.2f} s: balance costs {(t_s + t_b) / t_s:.2f}x one Sinkhorn solve "
              f"(gap {bal.certificate.gap:.1e})", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--balance", action="store_true")
    args = parser.parse_args(argv)
    sinklabel.sinkhorn(make_scores(500, 10).scores, 10, balance="exact")  # compile numba loops
    sinklabel.solve_exact(make_scores(500, 10).scores, 10)
    if not args.balance:  # POT's first call imports its backends (seconds), not its solve
        emd_objective(make_scores(500, 10).scores)
    if args.quick:
        case(2000, 20, "flat", emd=True, highs=True, sinkhorn=True)
        balance(2000, 20, "peaked")
        return 0
    if args.balance:
        balance(1_000_000, 1000, "flat")
        balance(1_000_000, 1000, "peaked")
        return 0
    case(10_000, 100, "flat", emd=True, highs=False, sinkhorn=False)
    case(100_000, 1000, "flat", emd=True, highs=False, sinkhorn=False)
    case(100_000, 1000, "peaked", emd=False, highs=False, sinkhorn=False)
    case(100_000, 1000, "flat", emd=False, highs=False, sinkhorn=True)
    case(1_000_000, 1000, "flat", emd=False, highs=False, sinkhorn=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
