"""A plain float64 Sinkhorn written from the paper's alpha/beta updates: the tests' oracle.

Independent of the package: dense matrices, no log domain, no chunks. Only for small,
well-scaled problems where exp(lam * S) neither overflows nor underflows in float64. Beside
it, the balanced sizes in exact rational arithmetic.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def reference_sinkhorn(
    scores: np.ndarray, lam: float, label_weights: np.ndarray | None = None, iters: int = 20000
) -> tuple[np.ndarray, np.ndarray]:
    """Plan Q (N x K, rows sum to 1/N, columns to r) and potentials log(alpha), r-centred."""
    s = np.asarray(scores, dtype=np.float64)
    n, k = s.shape
    r = np.full(k, 1.0 / k) if label_weights is None else label_weights / label_weights.sum()
    c = np.full(n, 1.0 / n)
    kernel = np.exp(lam * (s - s.max(axis=1, keepdims=True)))
    alpha = np.ones(k)
    for _ in range(iters):
        beta = c / (kernel @ alpha)
        new_alpha = r / (kernel.T @ beta)
        if np.max(np.abs(new_alpha / alpha - 1)) < 1e-14:
            alpha = new_alpha
            break
        alpha = new_alpha
    beta = c / (kernel @ alpha)
    plan = beta[:, None] * kernel * alpha[None, :]
    f = np.log(alpha)
    return plan, f - r @ f


def softmax_terms(scores: np.ndarray, f: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    """The two terms of one pass, in float64: the column sums of softmax(lam * S + f) and the
    sum of the rows' log-sum-exps."""
    z = lam * scores.astype(np.float64) + f
    top = z.max(axis=1, keepdims=True)
    p = np.exp(z - top)
    total = p.sum(axis=1, keepdims=True)
    return (p / total).sum(axis=0), float((top[:, 0] + np.log(total[:, 0])).sum())


def sizes(n: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """N * w_k rounded down and up, in exact arithmetic (the weights are whole numbers)."""
    shares = [Fraction(n * int(w), int(weights.sum())) for w in weights]
    return (np.array([math.floor(x) for x in shares]), np.array([math.ceil(x) for x in shares]))
