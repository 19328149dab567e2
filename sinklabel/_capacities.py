"""Label capacities of the exact problem: how many points each label must (or may) take.

Capacities are a pair of integer vectors ``(lower, upper)``: label y takes between ``lower[y]``
and ``upper[y]`` points, N in all. Fixed sizes are ``lower == upper``.

The default follows the paper's footnote 1 (sizes ``floor(N/K)`` or ``floor(N/K) + 1``) read as
a range: every label takes ``floor(N/K)`` or ``ceil(N/K)`` points and the optimisation itself
decides which ``N mod K`` labels take the extra point. Fixing them in advance (say, the first
``N mod K`` labels) would be arbitrary and could only cost objective; the range gives the
best labelling among all that are as balanced as possible.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import host_array

#: Scores whose finite-score mask is made at a time while counting finite scores.
COUNT_BLOCK = 16 << 20


def balanced_range(n_points: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sizes ``floor(N * w)`` to ``ceil(N * w)`` for label proportions ``w`` (summing to one)."""
    target = n_points * np.asarray(weights, dtype=np.float64)
    # Values within rounding of an integer are that integer (1/3 * 3 must give exactly 1).
    # Normalising w and scaling by N err by a few ulps of N (the sum of w pairwise: by
    # log2(K) ulps at most), so 64 ulps of N is rounding; 1e-9 * N took N * w = 99998.00002
    # (N = 1e5) for 99998 and lost the ceil the caller's weights allow.
    nearest = np.rint(target)
    tolerance = 64 * np.finfo(np.float64).eps * max(1, n_points)
    target = np.where(np.abs(target - nearest) < tolerance, nearest, target)
    return np.floor(target).astype(np.int64), np.ceil(target).astype(np.int64)


def default_capacities(n_points: int, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's sizes: ``floor(N/K)`` or ``ceil(N/K)`` each, N in all."""
    if n_labels > n_points:
        raise ValueError(
            f"K={n_labels} labels but only N={n_points} points: balanced sizes floor(N/K)=0 "
            "would leave labels empty; pass capacities explicitly"
        )
    lower = np.full(n_labels, n_points // n_labels, dtype=np.int64)
    return lower, lower + (n_points % n_labels > 0)


def check_capacities(
    capacities: Any, n_points: int, n_labels: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(lower, upper)`` from what the caller passed: None, K integers or a pair of them."""
    if capacities is None:
        return default_capacities(n_points, n_labels)
    # A pair holds two vectors; a tuple of two numbers is the sizes of two labels.
    pair = isinstance(capacities, tuple) and len(capacities) == 2
    if pair and any(np.ndim(bound) > 0 for bound in capacities):
        lower = _integer_vector("capacities[0] (lower)", capacities[0], n_labels)
        upper = _integer_vector("capacities[1] (upper)", capacities[1], n_labels)
        if np.any(lower > upper):
            y = int(np.flatnonzero(lower > upper)[0])
            raise ValueError(f"capacities: lower[{y}]={lower[y]} exceeds upper[{y}]={upper[y]}")
        if _exact_sum(lower) > n_points or _exact_sum(upper) < n_points:
            raise ValueError(
                f"capacities must admit N={n_points} points in all: the lower bounds sum to "
                f"{_exact_sum(lower)} and the upper bounds to {_exact_sum(upper)}"
            )
        # No label can take more than N points: a larger bound says the same as N, and
        # stored as N its sums cannot overflow int64.
        return lower.astype(np.int64), np.minimum(upper, n_points).astype(np.int64)
    sizes = host_array("capacities", capacities)
    if sizes.shape == (2, n_labels):
        raise ValueError(
            f"capacities of shape (2, {n_labels}): pass ranges as a tuple (lower, upper), "
            f"sizes as {n_labels} integers"
        )
    sizes = _integer_vector("capacities", sizes, n_labels)
    if _exact_sum(sizes) != n_points:
        raise ValueError(f"capacities must sum to N={n_points}, got {_exact_sum(sizes)}")
    sizes = sizes.astype(np.int64)  # each at most N now: none wraps around
    return sizes, sizes.copy()


def finite_per_label(scores: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Rows with a finite score, per label: among all rows of host scores, or the given ones
    (counted in blocks, so that no N x K mask or copy is made)."""
    n_rows = scores.shape[0] if rows is None else rows.size
    step = max(1, COUNT_BLOCK // max(1, scores.shape[1]))
    counts = np.zeros(scores.shape[1], dtype=np.int64)
    for start in range(0, n_rows, step):
        block = scores[start:start + step] if rows is None else scores[rows[start:start + step]]
        counts += np.count_nonzero(np.isfinite(block), axis=0)
    return counts


def short_label(needed: np.ndarray, finite: np.ndarray) -> int | None:
    """The first label that needs more points than rows have a finite score for it."""
    short = np.flatnonzero(finite < needed)
    return int(short[0]) if short.size else None


def check_reachable(lower: np.ndarray, finite_per_label: np.ndarray) -> None:
    """Labels that must take points need that many rows with a finite score for them."""
    y = short_label(lower, finite_per_label)
    if y is not None:
        raise ValueError(
            f"label {y} must take at least {lower[y]} points but only {finite_per_label[y]} "
            "rows have a finite score for it (the others are -inf); lower its capacity"
        )


def _integer_vector(name: str, value: Any, n_labels: int) -> np.ndarray:
    """Non-negative whole numbers of shape (K,), in the caller's dtype (a float or uint64 one
    may hold values beyond int64)."""
    array = host_array(name, value)
    if array.shape != (n_labels,):
        raise ValueError(f"{name} must have shape ({n_labels},), got {array.shape}")
    if array.dtype == bool or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
        raise ValueError(f"{name} must hold whole numbers")
    if np.any(array < 0):
        raise ValueError(f"{name} must be non-negative")
    return array


def _exact_sum(array: np.ndarray) -> int:
    """The sum of whole numbers as a Python int: int64 (or uint64) sums of huge bounds wrap
    around, and float ones round."""
    return sum(int(value) for value in array.tolist())


__all__ = [
    "balanced_range",
    "check_capacities",
    "check_reachable",
    "default_capacities",
    "finite_per_label",
    "short_label",
]
