"""Passes over the data to the tolerance: plain Sinkhorn against the accelerations tried.

Counts passes, not seconds, so the numbers do not depend on the (shared) machine. Every method
reads the scores through the same one-pass evaluations the solver uses.

    python benchmarks/convergence.py              # small sizes; over 15 minutes on 2 cores
    python benchmarks/convergence.py --max-iter 500   # the same, plain Sinkhorn capped sooner
    python benchmarks/convergence.py --large      # adds N up to 1e6 and K up to 3000 (hours)
    python benchmarks/convergence.py --tol-study  # hard-label quality against the tolerance
    python benchmarks/convergence.py --lam-study  # the solver's passes against lam (seconds)
    python benchmarks/convergence.py --lam-change  # warm starts across a change of lam
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from sinklabel import ConvergenceWarning, PrecisionWarning, SinkhornLabeler, sinkhorn
from sinklabel.datasets import make_scores
from sinklabel.kernels import get_kernel
from sinklabel.solver import label_mass
from sinklabel.sources import ArraySource

LAM = 25.0
TOL = 1e-3
KERNEL = get_kernel("numpy")
ROWS = 8192


def _mass(scores: np.ndarray, f: np.ndarray) -> np.ndarray:
    return label_mass(ArraySource(scores), KERNEL, f, LAM, ROWS)


def plain(scores: np.ndarray, max_iter: int) -> int | None:
    """Passes of plain Sinkhorn, ``f += log r - log t`` (each method: None when it did not
    reach TOL within ``max_iter`` passes)."""
    return relaxed(scores, max_iter, omega=1.0)


def relaxed(scores: np.ndarray, max_iter: int, omega: float = 1.8) -> int | None:
    """Over-relaxed Sinkhorn, ``f += omega * (log r - log t)``, falling back to omega = 1
    for one step whenever the error grew."""
    k = scores.shape[1]
    f, previous = np.zeros(k), np.inf
    for passes in range(1, max_iter + 1):
        t = _mass(scores, f)
        error = np.abs(t - 1.0 / k).sum()
        if error <= TOL:
            return passes
        step = -np.log(k * t)
        f += (omega if error < previous else 1.0) * step
        previous = error
    return None


def anderson(scores: np.ndarray, max_iter: int, depth: int = 5) -> int | None:
    """Anderson acceleration of the Sinkhorn map on ``f``, kept only when it lowers the error."""
    k = scores.shape[1]
    f = np.zeros(k)
    t = _mass(scores, f)
    error = np.abs(t - 1.0 / k).sum()
    points: list[np.ndarray] = []
    residuals: list[np.ndarray] = []
    passes = 1
    while error > TOL and passes < max_iter:
        residual = -np.log(k * t)
        points.append(f.copy())
        residuals.append(residual)
        del points[:-depth - 1], residuals[:-depth - 1]
        candidate = f + residual
        if len(residuals) > 1:
            dr = np.diff(np.array(residuals), axis=0).T
            dx = np.diff(np.array(points), axis=0).T
            gamma = np.linalg.lstsq(dr, residual, rcond=None)[0]
            candidate = f + residual - (dx + dr) @ gamma
        t_new = _mass(scores, candidate)
        passes += 1
        new_error = np.abs(t_new - 1.0 / k).sum()
        if new_error >= error:
            points.clear()
            residuals.clear()
            candidate = f + residual
            t_new = _mass(scores, candidate)
            passes += 1
            new_error = np.abs(t_new - 1.0 / k).sum()
        f, t, error = candidate, t_new, new_error
    return passes if error <= TOL else None


def lbfgs(scores: np.ndarray, max_iter: int) -> int | None:
    """The package's solver (L-BFGS on the dual)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = sinkhorn(scores, scores.shape[1], lam=LAM, tol=TOL, max_iter=max_iter)
    return result.n_iter if result.converged else None


METHODS = {"plain": plain, "relaxed 1.8": relaxed, "anderson 5": anderson, "lbfgs": lbfgs}


def drift(scores: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """The scores after a small training step: Gaussian noise on the logits, renormalised."""
    moved = scores + sigma * np.random.default_rng(seed).standard_normal(scores.shape,
                                                                         dtype=scores.dtype)
    moved -= moved.max(axis=1, keepdims=True)
    moved -= np.log(np.exp(moved).sum(axis=1, keepdims=True))
    return moved


def warm_start(n: int, k: int, regime: str, seed: int, steps: int, sigma: float) -> str:
    """Mean passes over a sequence of drifting scores: cold start against warm start."""
    scores = make_scores(n, k, regime=regime, seed=seed).scores
    previous = sinkhorn(scores, k, lam=LAM, tol=TOL)
    cold, warm = [], []
    for step in range(steps):
        scores = drift(scores, sigma, seed=1000 * seed + step)
        cold.append(sinkhorn(scores, k, lam=LAM, tol=TOL).n_iter)
        previous = sinkhorn(scores, k, lam=LAM, tol=TOL, init=previous.potentials)
        warm.append(previous.n_iter)
    ratio = np.mean(warm) / np.mean(cold)
    return (f"| {regime} | {n} | {k} | {seed} | {sigma} | {np.mean(cold):.1f} | "
            f"{np.mean(warm):.1f} | {ratio:.2f} |")


def tol_study(n: int, k: int, regime: str, seed: int) -> None:
    """Hard-label quality against the tolerance, next to a tight reference solve."""
    scores = make_scores(n, k, regime=regime, seed=seed).scores
    reference = sinkhorn(scores, k, lam=LAM, tol=1e-7, max_iter=3000)
    exact = np.asarray(reference.labels)
    for tol in (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5):
        result = sinkhorn(scores, k, lam=LAM, tol=tol, max_iter=3000)
        counts = result.label_counts / n
        changed = np.mean(np.asarray(result.labels) != exact)
        print(f"| {regime} | {n} | {k} | {tol:g} | {result.n_iter} | "
              f"{np.abs(counts - 1.0 / k).sum():.4f} | {changed:.4f} | "
              f"{_sela_error(scores, result.potentials):.3g} |", flush=True)


#: From the paper's lam to where the plan is the linear program's to float64's rounding.
LAMS = (25.0, 100.0, 1e3, 1e4, 1e6, 1e9, 1e12)


def lam_study(n: int, k: int, regime: str, seed: int, max_iter: int) -> None:
    """The solver's passes to ``TOL`` as lam grows, in both dtypes, and whether it warned that
    float32 no longer resolves the plan."""
    scores = make_scores(n, k, regime=regime, seed=seed).scores
    for dtype in (np.float32, np.float64):
        typed = scores.astype(dtype)
        for lam in LAMS:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = sinkhorn(typed, k, lam=lam, tol=TOL, max_iter=max_iter)
            passes = str(result.n_iter) if result.converged else f"> {max_iter}"
            imprecise = any(w.category is PrecisionWarning for w in caught)
            print(f"| {regime} | {np.dtype(dtype).name} | {lam:g} | {passes} | "
                  f"{'yes' if imprecise else 'no'} |", flush=True)


#: lam before and after a change, as an annealing schedule or a user's set_params makes it.
LAM_CHANGES = ((25.0, 10.0), (10.0, 25.0), (25.0, 50.0), (25.0, 100.0))


def lam_change(n: int, k: int, regime: str, seed: int, sigma: float) -> None:
    """Passes after lam changed between two fits of drifting scores: cold, from the last
    potentials as they were, and from ``SinkhornLabeler.partial_fit`` (scaled to the new lam)."""
    scores = make_scores(n, k, regime=regime, seed=seed).scores
    moved = drift(scores, sigma, seed=1000 * seed)
    for before, after in LAM_CHANGES:
        labeler = SinkhornLabeler(k, lam=before, tol=TOL).fit(scores)
        kept = sinkhorn(moved, k, lam=after, tol=TOL, init=labeler.potentials_).n_iter
        cold = sinkhorn(moved, k, lam=after, tol=TOL).n_iter
        scaled = labeler.set_params(lam=after).partial_fit(moved).n_iter_
        print(f"| {regime} | {before:g} | {after:g} | {cold} | {kept} | {scaled} |", flush=True)


def _sela_error(scores: np.ndarray, f: np.ndarray) -> float:
    """What SeLa's stopping rule reads, ``sum_i |c_i / c_i_new - 1|``: after the label update
    that makes the label marginal exact, N times the L1 error of the data marginal."""
    k = scores.shape[1]
    ratio = (1.0 / k) / _mass(scores, f)
    total = 0.0
    for start in range(0, scores.shape[0], ROWS):
        p = KERNEL.soft(scores[start:start + ROWS], f, LAM).astype(np.float64)
        total += float(np.abs(p @ ratio - 1.0).sum())
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="add N up to 1e6, K up to 3000")
    parser.add_argument("--tol-study", action="store_true", help="only the tolerance study")
    parser.add_argument("--lam-study", action="store_true",
                        help="only the solver's passes against lam")
    parser.add_argument("--lam-change", action="store_true",
                        help="only the warm starts across a change of lam")
    parser.add_argument("--max-iter", type=int, default=3000)
    args = parser.parse_args(argv)
    if args.max_iter < 1:
        parser.error("--max-iter must be at least 1")
    if args.lam_study:
        print(f"solver passes to L1 error {TOL:g} (capped at {args.max_iter}), N=20000, K=100")
        print("| regime | dtype | lam | passes | PrecisionWarning |")
        print("|---|---|---|---|---|")
        for regime in ("flat", "peaked"):
            lam_study(20_000, 100, regime, seed=0, max_iter=args.max_iter)
        return 0
    if args.lam_change:
        print(f"passes to L1 error {TOL:g} after lam changed between two fits, N=20000, K=100,"
              " logit drift sigma 0.05 between them")
        print("| regime | lam before | lam after | cold | last potentials | partial_fit |")
        print("|---|---|---|---|---|---|")
        for regime in ("flat", "peaked"):
            lam_change(20_000, 100, regime, seed=0, sigma=0.05)
        return 0
    if args.tol_study:
        print("| regime | N | K | tol | passes | hard-count L1 | labels != tight "
              "| SeLa: sum_i abs(c_i / c_i_new - 1) |")
        print("|---|---|---|---|---|---|---|---|")
        for regime in ("flat", "peaked"):
            tol_study(20_000, 100, regime, seed=0)
        return 0
    cases = [(20_000, 100, 0), (20_000, 100, 1), (50_000, 300, 0)]
    large = [(20_000, 1000, 0), (20_000, 3000, 0), (200_000, 1000, 0), (1_000_000, 100, 0),
             (1_000_000, 1000, 0)]
    if args.large:
        cases += large
    names = list(METHODS)
    print(f"passes to L1 error {TOL:g} at lam={LAM:g} (capped at {args.max_iter})")
    print("| regime | N | K | seed | " + " | ".join(names) + " |")
    print("|---" * (4 + len(names)) + "|")
    for regime in ("flat", "peaked"):
        for n, k, seed in cases:
            scores = make_scores(n, k, regime=regime, seed=seed).scores
            big = n * k > 5e7
            cells = []
            for name in names:
                if big and name != "lbfgs" and regime == "peaked":
                    cells.append("-")
                    continue
                passes = METHODS[name](scores, args.max_iter)
                cells.append(f"> {args.max_iter}" if passes is None else str(passes))
            print(f"| {regime} | {n} | {k} | {seed} | " + " | ".join(cells) + " |", flush=True)
    print("\nwarm start over 5 drifting steps (logit noise sigma), mean passes")
    print("| regime | N | K | seed | sigma | cold | warm | warm/cold |")
    print("|---|---|---|---|---|---|---|---|")
    for regime in ("flat", "peaked"):
        for sigma in (0.05, 0.2):
            print(warm_start(20_000, 100, regime, seed=0, steps=5, sigma=sigma), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
