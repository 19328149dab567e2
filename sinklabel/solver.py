"""The backend-neutral Sinkhorn loop in log-potentials.

One iteration is one read of the scores (``label_mass``) and O(K) work on the host in
float64. The potentials ``f`` (one per label) are the whole state: the plan is
``Q[i, :] = softmax(lam * S[i, :] + f) / N``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .collective import LOCAL, Collective
from .kernels import Kernel
from .progress import Progress
from .sources import Array, Source


@dataclass(frozen=True)
class SolverOutput:
    """What the loop found: potentials, passes taken and the error after each pass."""

    potentials: np.ndarray
    n_iter: int
    converged: bool
    error_history: np.ndarray


def normalize_potentials(f: np.ndarray, label_weights: np.ndarray) -> np.ndarray:
    """Fix the free additive constant: the label-weighted mean of the potentials is zero."""
    return f - float(label_weights @ f)


def label_mass(
    source: Source, kernel: Kernel, f: np.ndarray, lam: float, rows: int,
    collective: Collective = LOCAL,
) -> np.ndarray:
    """The label marginal of the plan for potentials ``f``: one pass over the scores.

    The row count travels with the K sums, so one reduction serves both.
    """
    total = np.zeros(source.shape[1] + 1, dtype=np.float64)
    for start, stop, chunk in source.chunks(rows):
        total[:-1] += kernel.sweep(chunk, f, lam)
        total[-1] += stop - start
    total = collective.sum(total)
    return total[:-1] / total[-1]


def _label_slack(
    source: Source, kernel: Kernel, f: np.ndarray, lam: float, rows: int, collective: Collective
) -> np.ndarray:
    slack = np.full(source.shape[1], -np.inf)
    for _, _, chunk in source.chunks(rows):
        np.maximum(slack, kernel.slack(chunk, f, lam), out=slack)
    return collective.max(slack)


def _revive_empty_labels(
    source: Source, kernel: Kernel, f: np.ndarray, lam: float, rows: int, empty: np.ndarray,
    collective: Collective,
) -> np.ndarray:
    """Raise the potential of labels whose mass underflowed to exactly zero.

    Multiplicative updates cannot move a label with zero mass (log 0). Raising its potential
    by its slack makes it tie with the favourite label of its closest row, which gives it
    measurable mass without overshooting; the ordinary updates take over from there.
    """
    slack = _label_slack(source, kernel, f, lam, rows, collective)[empty]
    if not np.all(np.isfinite(slack)):
        dead = np.flatnonzero(empty)[~np.isfinite(slack)]
        raise ValueError(
            f"labels {dead[:10].tolist()} have no finite score in any row, so no row can take "
            "them; drop those labels from the scores"
        )
    f = f.copy()
    f[empty] -= slack
    return f


def solve(
    source: Source,
    kernel: Kernel,
    *,
    lam: float,
    label_weights: np.ndarray,
    tol: float,
    max_iter: int,
    init: np.ndarray | None,
    rows: int,
    progress: bool,
    collective: Collective = LOCAL,
) -> SolverOutput:
    """Sinkhorn iterations until the label marginal is within ``tol`` (L1) of the target."""
    f = np.zeros(source.shape[1]) if init is None else np.array(init, dtype=np.float64)
    f = normalize_potentials(f, label_weights)
    log_target = np.log(label_weights)
    history: list[float] = []
    converged = False
    with Progress(progress, total=max_iter, tol=tol) as bar:
        for iteration in range(1, max_iter + 1):
            mass = label_mass(source, kernel, f, lam, rows, collective)
            error = float(np.abs(mass - label_weights).sum())
            history.append(error)
            bar.update(iteration, error)
            if error <= tol:
                converged = True
                break
            if iteration == max_iter:
                break
            empty = mass <= 0.0
            if empty.any():
                f = _revive_empty_labels(source, kernel, f, lam, rows, empty, collective)
            with np.errstate(divide="ignore"):
                step = np.where(empty, 0.0, log_target - np.log(mass))
            f = normalize_potentials(f + step, label_weights)
    if not converged:
        warnings.warn(
            f"Sinkhorn did not reach tol={tol:g} in max_iter={max_iter} iterations "
            f"(label-marginal error {history[-1]:.3g}); raise max_iter or tol",
            ConvergenceWarning,
            stacklevel=3,
        )
    return SolverOutput(f, len(history), converged, np.asarray(history))


def assign(source: Source, kernel: Kernel, f: np.ndarray, lam: float, rows: int) -> Array:
    """Hard labels argmax_y (lam * S[i, y] + f[y]) in the source's array library."""
    return kernel.concat([kernel.best(chunk, f, lam)[1] for _, _, chunk in source.chunks(rows)])


class ConvergenceWarning(UserWarning):
    """Sinkhorn stopped at max_iter before reaching its tolerance."""
