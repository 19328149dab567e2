"""The scalable exact solver for eq. (6): an auction to find prices, shortest paths to finish.

The transportation problem has N points of demand one and K << N labels whose sizes must lie
in ``[lower, upper]``. Its dual has only K free variables (one price per label), so the work is
organised around them:

1. **Auction with epsilon-scaling** (Bertsekas' auction for "similar objects": label y is
   ``caps[y]`` identical copies). Points bid for their best label; each bid looks only at the
   point's m best labels at the starting prices, because prices only rise and so the labels
   outside that list can never overtake it (a stored bound says when to look again). Warm
   started from Sinkhorn's potentials, it reaches epsilon-optimal prices in a few cheap rounds.
2. **Exact finish by successive shortest paths** on the K-node label graph. Every point is
   put at an exact argmax of ``S[i, :] + v``; then single points are moved along shortest
   paths between over- and under-full labels, with prices updated so that every point stays
   at an argmax. When all sizes are within range, complementary slackness holds exactly, and
   the labels are optimal (the certificate of ``certificate.py`` confirms it independently).

Only the second step is needed for exactness; the first makes it cheap (few paths remain).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _transport_loops as loops

#: Labels each point keeps as candidates for its bids.
CANDIDATES = 16
#: Epsilon shrinks by this factor between auction phases.
EPS_FACTOR = 8.0
#: The last phase's epsilon, relative to the typical spread of a point's best scores.
EPS_FINAL = 1e-9
#: Bids allowed per phase, in units of N; beyond, the exact finish takes over.
BIDS_PER_POINT = 40
ROWS_PER_BLOCK = 8192


class InfeasibleError(ValueError):
    """No labelling meets the capacities (the scores allow too few points for some labels)."""


@dataclass(frozen=True)
class TransportSolution:
    labels: np.ndarray
    prices: np.ndarray
    bids: int
    paths: int


def solve_transport(
    S: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    prices: np.ndarray | None,
    *,
    use_numba: bool,
) -> TransportSolution:
    """Optimal labels and label prices ``v`` for checked scores ``S`` and capacity ranges."""
    N, K = S.shape
    lower = lower.astype(np.int64)
    upper = upper.astype(np.int64)
    active = upper > 0
    v0 = np.zeros(K) if prices is None else np.asarray(prices, dtype=np.float64).copy()
    price = np.where(active, -v0, np.inf)
    m = min(K, CANDIDATES)
    cand = np.empty((N, m), np.int64)
    cand_s = np.empty((N, m), S.dtype)
    bound = np.empty(N)
    _build_candidates(S, price, cand, cand_s, bound, use_numba)

    labels = np.empty(N, np.int64)
    _argmax(S, cand, cand_s, bound, -price, labels, use_numba)
    if labels.min() < 0:
        raise InfeasibleError(
            f"point {int(np.argmin(labels))} has finite scores only for labels of capacity 0"
        )
    count = np.bincount(labels, minlength=K)
    z, _ = _park_extras(-price, lower, upper, count)
    caps = lower + z
    bids = _auction(S, cand, cand_s, bound, price, caps, use_numba)
    v = np.where(active, -price, -np.inf)
    _argmax(S, cand, cand_s, bound, v, labels, use_numba)
    count = np.bincount(labels, minlength=K)
    z, vz = _park_extras(v, lower, upper, count)
    paths = 0
    if np.any(count != lower + z):
        head = np.full(K, -1, np.int64)
        nxt = np.empty(N, np.int64)
        prv = np.empty(N, np.int64)
        count = np.zeros(K, np.int64)
        _loop(loops.link_members, use_numba)(labels, head, nxt, prv, count)
        status, vz, paths = _loop(loops.shortest_paths, use_numba)(
            S, labels, v, vz, lower, upper, z, head, nxt, prv, count, np.iinfo(np.int64).max
        )
        if status == 1:
            raise InfeasibleError(
                "no labelling meets the capacities: some labels need more points than have "
                "finite scores for them (check -inf entries and the capacities)"
            )
    v = _normalise(v, vz, lower, upper)
    if not active.all():
        v[~active] = _closed_label_prices(S, labels, v, np.flatnonzero(~active))
    return TransportSolution(labels, v, bids, paths)


def _loop(func, use_numba: bool):
    """The compiled loop, or its plain Python source when numba is not to be used."""
    return func if use_numba else func.py_func


def _park_extras(
    v: np.ndarray, lower: np.ndarray, upper: np.ndarray, count: np.ndarray
) -> tuple[np.ndarray, float]:
    """Which labels take the points beyond ``lower`` (``z``), and the price threshold ``vz``.

    Complementary slackness for the ranges says the labels above their lower bound are the
    ones with the lowest bonus ``v`` (the most demanded), so they are filled in that order;
    ties go to the labels the current prices overfill most.
    """
    z = np.zeros_like(lower)
    room = upper - lower
    extra = int(count.sum() - lower.sum())
    open_ = np.flatnonzero(room > 0)
    if open_.size == 0:
        return z, 0.0
    order = open_[np.lexsort((-count[open_], v[open_]))]
    vz = float(v[order[0]])
    for y in order:
        if extra <= 0:
            break
        z[y] = min(room[y], extra)
        extra -= z[y]
        vz = float(v[y])
    return z, vz


def _normalise(v: np.ndarray, vz: float, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Fix the free constant of the prices: relative to the range threshold, else mean zero."""
    active = upper > 0
    if np.any(upper > lower):
        return v - vz
    weights = upper[active] / upper[active].sum()
    return v - float(weights @ v[active])


def _closed_label_prices(
    S: np.ndarray, labels: np.ndarray, v: np.ndarray, closed: np.ndarray
) -> np.ndarray:
    """Finite prices for labels of capacity zero, low enough that no point prefers them."""
    rows = np.arange(S.shape[0])
    utility = S[rows, labels].astype(np.float64) + v[labels]
    out = np.empty(closed.size)
    for k, y in enumerate(closed):
        with np.errstate(invalid="ignore"):
            slack = utility - S[:, y].astype(np.float64)
        finite = slack[np.isfinite(slack)]
        out[k] = float(finite.min()) if finite.size else 0.0
    return out


def _auction(
    S: np.ndarray,
    cand: np.ndarray,
    cand_s: np.ndarray,
    bound: np.ndarray,
    price: np.ndarray,
    caps: np.ndarray,
    use_numba: bool,
) -> int:
    """Epsilon-scaling auction; updates ``price`` in place and returns the bids made."""
    N, K = S.shape
    shut = (caps == 0) & np.isfinite(price)
    price[shut] = np.inf
    spread = _spread(cand_s, cand, price)
    big = 16.0 * spread
    off = np.zeros(K + 1, np.int64)
    np.cumsum(caps, out=off[1:])
    hbid = np.empty(N)
    hpt = np.empty(N, np.int64)
    hsize = np.zeros(K, np.int64)
    stack = np.empty(N, np.int64)
    phase = _loop(loops.auction_phase, use_numba)
    eps = 0.25 * spread
    bids = 0
    while True:
        reserve = price.copy()
        hsize[:] = 0
        stack[:] = np.arange(N)
        left, made = phase(
            S, cand, cand_s, bound, price, reserve, caps, off, hbid, hpt, hsize,
            stack, N, eps, big, BIDS_PER_POINT * N,
        )
        bids += made
        if left or eps <= EPS_FINAL * spread:
            break
        eps /= EPS_FACTOR
    if shut.any():
        # Labels the auction kept closed (lower bound 0, not chosen to take extras) restart at
        # the least attractive open price; the exact finish decides whether they get points.
        price[shut] = price[np.isfinite(price)].max(initial=0.0)
    return bids


def _spread(cand_s: np.ndarray, cand: np.ndarray, price: np.ndarray) -> float:
    """Typical distance between a point's best and worst candidate values (a scale for eps)."""
    sample = slice(None, None, max(1, cand.shape[0] // 4096))
    values = cand_s[sample].astype(np.float64) - price[cand[sample]]
    with np.errstate(invalid="ignore"):
        width = values.max(axis=1) - values.min(axis=1)
    width = width[np.isfinite(width)]
    scale = float(np.median(width)) if width.size else 0.0
    return scale if scale > 0 else 1.0


def _build_candidates(S, price, cand, cand_s, bound, use_numba: bool) -> None:
    if use_numba:
        loops.build_candidates(S, price, cand, cand_s, bound)
        return
    m = cand.shape[1]
    K = S.shape[1]
    for start in range(0, S.shape[0], ROWS_PER_BLOCK):
        block = S[start:start + ROWS_PER_BLOCK]
        values = block.astype(np.float64) - price
        order = np.argsort(-values, axis=1, kind="stable")[:, : m + 1]
        rows = np.arange(block.shape[0])[:, None]
        cand[start:start + block.shape[0]] = order[:, :m]
        cand_s[start:start + block.shape[0]] = block[rows, order[:, :m]]
        bound[start:start + block.shape[0]] = (
            values[rows[:, 0], order[:, m]] if m < K else -np.inf
        )


def _argmax(S, cand, cand_s, bound, v, labels, use_numba: bool) -> None:
    if use_numba:
        loops.argmax_labels(S, cand, cand_s, bound, v, labels)
        return
    for start in range(0, S.shape[0], ROWS_PER_BLOCK):
        block = S[start:start + ROWS_PER_BLOCK].astype(np.float64) + v
        best = block.argmax(axis=1)
        rows = np.arange(block.shape[0])
        labels[start:start + block.shape[0]] = np.where(block[rows, best] > -np.inf, best, -1)
