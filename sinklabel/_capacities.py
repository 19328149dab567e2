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


def balanced_range(n_points: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sizes ``floor(N * w)`` to ``ceil(N * w)`` for label proportions ``w`` (summing to one)."""
    target = n_points * np.asarray(weights, dtype=np.float64)
    # Values within rounding of an integer are that integer (1/3 * 3 must give exactly 1).
    nearest = np.rint(target)
    target = np.where(np.abs(target - nearest) < 1e-9 * max(1, n_points), nearest, target)
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
        if lower.sum() > n_points or upper.sum() < n_points:
            raise ValueError(
                f"capacities must admit N={n_points} points in all: the lower bounds sum to "
                f"{lower.sum()} and the upper bounds to {upper.sum()}"
            )
        return lower, upper
    sizes = _integer_vector("capacities", capacities, n_labels)
    if sizes.sum() != n_points:
        raise ValueError(f"capacities must sum to N={n_points}, got {sizes.sum()}")
    return sizes, sizes.copy()


def check_reachable(lower: np.ndarray, finite_per_label: np.ndarray) -> None:
    """Labels that must take points need that many rows with a finite score for them."""
    short = finite_per_label < lower
    if short.any():
        y = int(np.flatnonzero(short)[0])
        raise ValueError(
            f"label {y} must take at least {lower[y]} points but only {finite_per_label[y]} "
            "rows have a finite score for it (the others are -inf); lower its capacity"
        )


def _integer_vector(name: str, value: Any, n_labels: int) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
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
    return array.astype(np.int64)


__all__ = ["balanced_range", "check_capacities", "check_reachable", "default_capacities"]
