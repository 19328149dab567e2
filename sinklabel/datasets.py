"""Generated scores in the two regimes that matter: flat (untrained) and peaked (trained).

Tests, benchmarks, the CLI demo and the examples all draw from here, so a regime means the
same thing everywhere.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

REGIMES = ("flat", "peaked")


class GeneratedScores(NamedTuple):
    """Log-probabilities of shape (N, K) and the cluster each row was drawn from."""

    scores: np.ndarray
    truth: np.ndarray


def make_scores(
    n: int,
    k: int,
    *,
    regime: str = "peaked",
    seed: int = 0,
    dtype: type = np.float32,
    margin: float = 10.0,
    size_spread: float = 0.05,
    chunk_rows: int = 65536,
) -> GeneratedScores:
    """Log-softmax scores resembling a classifier's output.

    Parameters
    ----------
    n, k : int
        Rows (points, ``n >= 0``) and labels (``k >= 1``).
    regime : {"flat", "peaked"}, default="peaked"
        ``flat``: Gaussian logits of scale 3, as from an untrained network. ``peaked``: each
        row belongs to a cluster; its logit there exceeds the others by about ``margin`` nats
        (unit Gaussian noise on every logit), as for a network trained on its own
        pseudo-labels.
    seed : int, default=0
        Seed of the generator: the same arguments give the same scores.
    dtype : {np.float32, np.float64}, default=np.float32
        Dtype of the scores, which are generated in it block by block: no float64 N x K
        temporary.
    margin : float, default=10.0
        ``peaked`` only: how far, in nats, a row's own cluster stands out.
    size_spread : float, default=0.05
        Relative standard deviation of the clusters' sizes (``truth`` is drawn with them).
    chunk_rows : int, default=65536
        Rows generated at once.

    Returns
    -------
    GeneratedScores
        A named tuple ``(scores, truth)``: float scores of shape (n, k), and the int64
        cluster of each row (the generator's ground truth; uninformative for ``flat``).

    Raises
    ------
    ValueError
        On ``n < 0``, ``k < 1``, a negative or non-integer ``seed``, an unknown regime, a
        ``margin`` or ``size_spread`` that is not finite, or ``chunk_rows < 1``.
    TypeError
        On a dtype other than float32 and float64, or an ``n``, ``k`` or ``chunk_rows`` that
        is not an int.
    """
    for name, value in (("n", n), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {value!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    _check_generator_options(margin, size_spread, chunk_rows)
    _check_seed(seed)
    # The largest array first: when memory cannot hold it, fail before drawing the clusters
    # (minutes for 1e9 points). Allocating draws nothing, so the scores stay the same.
    scores = np.empty((n, k), dtype=np.dtype(dtype))
    rng = np.random.default_rng(seed)
    proportions = np.clip(1.0 + size_spread * rng.standard_normal(k), 0.1, None)
    truth = rng.choice(k, size=n, p=proportions / proportions.sum())
    for start in range(0, n, chunk_rows):
        block = scores[start:start + chunk_rows]
        rng.standard_normal(dtype=block.dtype, out=block)
        if regime == "flat":
            block *= 3.0
        else:
            rows = np.arange(block.shape[0])
            block[rows, truth[start:start + block.shape[0]]] += margin
        _log_softmax_inplace(block)
    return GeneratedScores(scores, truth)


def _check_generator_options(margin: float, size_spread: float, chunk_rows: int) -> None:
    """Refuse what would not fill the scores: a non-finite margin or spread makes them NaN,
    and ``chunk_rows < 1`` generates no block, which returned the uninitialised memory of
    ``np.empty`` as scores."""
    for name, value in (("margin", margin), ("size_spread", size_spread)):
        if not np.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, numbers.Integral):
        raise TypeError(f"chunk_rows must be an integer, got {chunk_rows!r}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")


def _check_seed(seed: int) -> None:
    """A seed NumPy's generator takes, named here: a non-negative integer (bool is not one)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _log_softmax_inplace(block: np.ndarray) -> None:
    block -= block.max(axis=1, keepdims=True)
    block -= np.log(np.exp(block).sum(axis=1, keepdims=True))
