"""The scalable exact solver for eq. (6): good prices first, shortest paths to finish.

The transportation problem has N points of demand one and K << N labels whose sizes must lie
in ``[lower, upper]``. Its dual has only K free variables (one price per label), so the work is
organised around them:

1. **Prices.** Warm started (``prices`` given, e.g. Sinkhorn's potentials / lam), one pass puts
   every point at its exact argmax of ``S[i, :] + v``; when few points then sit beyond their
   label's capacity (at most ``DIRECT_EXCESS`` of them), the prices are good enough and step
   2 starts at once. Otherwise (and cold) an **auction with epsilon-scaling** finds them
   (Bertsekas' auction for "similar objects": label y is ``caps[y]`` identical copies).
   Points bid for their best label; each bid looks only at the point's m best labels at the
   starting prices, because prices only rise and so the labels outside that list can never
   overtake it (a stored bound says when to look again).
2. **Exact finish by successive shortest paths** on the K-node label graph. Every point is
   put at an exact argmax of ``S[i, :] + v``; then single points are moved along shortest
   paths between over- and under-full labels, with prices updated so that every point stays
   at an argmax. When all sizes are within range, complementary slackness holds exactly, and
   the labels are optimal (the certificate of ``certificate.py`` confirms it independently).
   The label graph's edge costs come from the *boundary* points only (those whose best
   label barely beats their second best), with a bound on every other point that proves
   each path shortest or asks for a wider boundary (``_transport_loops.py``).

Only the second step is needed for exactness; the first makes it cheap (few paths remain).
A warm start that goes straight to step 2 reads the scores once, plus the rows of the
boundary (and once more whenever the boundary is measured again); the auction reads them for
the candidate lists and again for every point whose list runs out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _transport_loops as loops
from ._capacities import check_reachable, finite_per_label

#: Labels each point keeps as candidates for its bids.
CANDIDATES = 16
#: Epsilon shrinks by this factor between auction phases.
EPS_FACTOR = 8.0
#: The last phase's epsilon, relative to the typical spread of a point's best scores.
EPS_FINAL = 1e-9
#: Bids allowed per phase, in units of N; beyond, the exact finish takes over.
BIDS_PER_POINT = 40
#: A warm start skips the auction when at most this share of the points sits beyond its
#: label's capacity at the starting prices ...
DIRECT_EXCESS = 1 / 64
#: ... and its exact finish may settle this many Dijkstra nodes per point, plus this many per
#: label, before the auction takes over from the prices reached.
SETTLED_PER_POINT = 0.5
SETTLED_PER_LABEL = 16
#: The exact finish first looks at this share of the points (those closest to another
#: label), and widens it by BOUNDARY_GROWTH when that cannot prove a path shortest.
BOUNDARY_SHARE = 1 / 32
BOUNDARY_GROWTH = 4.0
#: A boundary that proved fewer paths than this before it ran out is widened, not only
#: measured again.
ROUND_PATHS = 16
ROWS_PER_BLOCK = 8192
#: Scores of the closed labels read at a time (float64) when pricing them.
CLOSED_BLOCK = 1 << 20


#: Why no labelling exists, when no single label can be named: the points that may take a
#: set of labels are too few for their lower bounds, or too many for their upper bounds.
INFEASIBLE = (
    "no labelling meets the capacities: the -inf entries leave some labels fewer points than "
    "they must take, or more points than they may take (check -inf entries and the "
    "capacities)"
)


class InfeasibleError(ValueError):
    """No labelling meets the capacities (the -inf scores allow no labelling within them)."""


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
    """Optimal labels and label prices ``v`` for checked scores ``S`` and capacity ranges.

    Raises :class:`InfeasibleError` (a ValueError) when no labelling meets the capacities;
    a label that needs more points than have a finite score for it is named before any work
    beyond the first pass.
    """
    N, K = S.shape
    lower = lower.astype(np.int64)
    upper = upper.astype(np.int64)
    active = upper > 0
    v0 = np.zeros(K) if prices is None else np.asarray(prices, dtype=np.float64).copy()
    # Only price differences matter: centred prices keep the rounding of every price update
    # at the scale of the scores.
    v0 -= np.median(v0[active])
    checked = False
    if prices is not None:
        # Warm start: at good prices few points sit in over-full labels, and the exact finish
        # moves them directly, with no candidate lists and no auction.
        v = np.where(active, v0, -np.inf)
        labels, low, margin = _best_labels(S, v, use_numba)
        _check_points(S, labels, low, lower)
        checked = True
        if _excess(labels, v, lower, upper) <= DIRECT_EXCESS * N:
            status, vz, paths = _exact_finish(
                S, labels, v, margin, lower, upper, use_numba,
                SETTLED_PER_POINT * N + SETTLED_PER_LABEL * K,
            )
            if status == 0:
                return _solution(S, labels, v, vz, lower, upper, 0, paths)
            v0 = v  # the finish ran out of budget: bid on from its (better) prices
    price = np.where(active, -v0, np.inf)
    m = min(K, CANDIDATES)
    cand = np.empty((N, m), np.int64)
    cand_s = np.empty((N, m), S.dtype)
    bound = np.empty(N)
    low = np.empty(N, S.dtype)
    _build_candidates(S, price, cand, cand_s, bound, low, use_numba)

    labels, _ = _argmax(S, cand, cand_s, bound, -price, use_numba)
    if not checked:
        _check_points(S, labels, low, lower)
    count = np.bincount(labels, minlength=K)
    z, _ = _park_extras(-price, lower, upper, count)
    caps = lower + z
    bids = _auction(S, cand, cand_s, bound, price, caps, use_numba)
    # Bidding wars (points with few finite scores) can carry prices far from the others:
    # centre them, and bring back any beyond twice the range of the candidates' scores, so
    # that the exact finish computes at the scale of the scores. Any prices are a valid start.
    shift = float(np.median(price[active]))
    v = np.where(active, shift - price, -np.inf)
    extent = 2.0 * _score_range(cand_s)
    wild = active & (np.abs(v) > extent)
    v[wild] = np.clip(v[wild], -extent, extent)
    if np.any(active & (caps == 0)) or wild.any():
        # Some label's price may lie below the one its candidates were listed at (reopened
        # or brought back): read full rows.
        labels, _, margin = _best_labels(S, v, use_numba)
    else:
        labels, margin = _argmax(S, cand, cand_s, bound + shift, v, use_numba)
    del cand, cand_s, bound
    _, vz, paths = _exact_finish(S, labels, v, margin, lower, upper, use_numba, np.inf)
    return _solution(S, labels, v, vz, lower, upper, bids, paths)


def _check_points(S: np.ndarray, labels: np.ndarray, low: np.ndarray, lower: np.ndarray) -> None:
    """Every point can take an open label, and every label can get its lower bound of points.

    ``low`` holds each row's lowest score: only rows where it is -inf can lack a label.
    """
    if labels.min() < 0:
        raise InfeasibleError(
            f"point {int(np.argmin(labels))} has finite scores only for labels of capacity 0"
        )
    rows = np.flatnonzero(low == -np.inf)
    check_reachable(lower, S.shape[0] - rows.size + finite_per_label(S, rows))


def _score_range(cand_s: np.ndarray) -> float:
    """max - min of the finite candidate scores (1 when there are none), in float64: float32
    scores near both ends of their range are further apart than float32 holds."""
    finite = cand_s[np.isfinite(cand_s)]
    width = float(finite.max()) - float(finite.min()) if finite.size else 0.0
    return width if width > 0 else 1.0


def _excess(labels: np.ndarray, v: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> int:
    """Points beyond their label's capacity, with the range's extras parked by ``v``."""
    count = np.bincount(labels, minlength=lower.size)
    z, _ = _park_extras(v, lower, upper, count)
    return int(np.maximum(count - lower - z, 0).sum())


def _exact_finish(
    S: np.ndarray,
    labels: np.ndarray,
    v: np.ndarray,
    margin: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    use_numba: bool,
    max_settled: float,
) -> tuple[int, float, int]:
    """Shortest paths from labels at an exact argmax of ``S + v`` to capacities met.

    ``margin``: each point's best value minus its second best at ``v`` (or a lower bound).
    The search starts on the ``BOUNDARY_SHARE`` of points with the smallest margins; when it
    cannot prove a path shortest, the margins are measured again at the current prices (one
    pass) and the boundary widened if needed. Updates ``labels`` and ``v`` in place; returns
    ``(status, vz, paths)``: status 0 when done, 2 when ``max_settled`` Dijkstra nodes were
    spent first. Raises when infeasible.
    """
    N, K = S.shape
    count = np.bincount(labels, minlength=K)
    z, vz = _park_extras(v, lower, upper, count)
    if np.all(count == lower + z):
        return 0, vz, 0
    share = BOUNDARY_SHARE
    paths = 0
    graph = _label_graph(K)  # one for every round: a second would double the K x K memory
    while True:
        rank = int(share * (N - 1))
        theta = float(np.partition(margin, rank)[rank]) if share <= 0.5 else np.inf
        points = np.flatnonzero(margin <= theta) if share <= 0.5 else np.arange(N)
        points = points[np.argsort(-margin[points], kind="stable")]  # lists by margin
        head = np.full(K, -1, np.int64)
        nxt = np.empty(N, np.int64)
        prv = np.empty(N, np.int64)
        _loop(loops.link_members, use_numba)(points, labels, head, nxt, prv)
        D, Darg, stale = _label_distances(S, labels, points, head, nxt, use_numba, graph)
        budget = np.iinfo(np.int64).max if max_settled == np.inf else int(max_settled)
        status, vz, done, settled, needed = _loop(loops.shortest_paths, use_numba)(
            S, labels, v, vz, lower, upper, z, np.bincount(labels, minlength=K), head, nxt,
            prv, D, Darg, stale, margin, theta, budget,
        )
        paths += done
        max_settled -= settled
        if status != 3:
            break
        # The boundary could not prove the next path (at least ``needed`` long) shortest.
        # Margins measured again at the current prices restore the full theta; a boundary
        # that did little, or theta short of twice the path, is widened as well.
        if done:
            margin = _label_margins(S, v, labels, use_numba)
        if done < ROUND_PATHS or needed > theta / 2:
            share *= BOUNDARY_GROWTH
        if needed < np.inf:
            share = max(share, np.count_nonzero(margin <= 2 * needed) / N)
    if status == 1:
        raise InfeasibleError(INFEASIBLE)
    return status, vz, paths


def _solution(
    S: np.ndarray,
    labels: np.ndarray,
    v: np.ndarray,
    vz: float,
    lower: np.ndarray,
    upper: np.ndarray,
    bids: int,
    paths: int,
) -> TransportSolution:
    """Normalised prices, with finite ones for the labels of capacity zero."""
    active = upper > 0
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
    """Finite prices for labels of capacity zero, low enough that no point prefers them.

    A closed label's price only enters the dual bound through the points' best values, so any
    price below every point's slack is as good; one clearly below keeps rounding from making
    a closed label a point's favourite (and the certified gap positive).

    Read in blocks of whole rows, not a column per closed label (a pass over the scores
    each, with a cache line read per score). A score of -inf gives a slack of +inf, the only
    non-finite one (the scores are checked), so the least slack is the least finite one.
    """
    rows = np.arange(S.shape[0])
    utility = S[rows, labels].astype(np.float64) + v[labels]
    low = np.full(closed.size, np.inf)
    step = max(1, CLOSED_BLOCK // closed.size)
    for start in range(0, S.shape[0], step):
        block = S[start:start + step][:, closed].astype(np.float64)
        np.minimum(low, (utility[start:start + step, None] - block).min(axis=0), out=low)
    low[low == np.inf] = 0.0  # no finite slack: no point can take the label at all
    return low - (1.0 + np.abs(low))


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


def _build_candidates(S, price, cand, cand_s, bound, low, use_numba: bool) -> None:
    if use_numba:
        loops.build_candidates(S, price, cand, cand_s, bound, low)
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
        low[start:start + block.shape[0]] = block.min(axis=1)


def _argmax(S, cand, cand_s, bound, v, use_numba: bool) -> tuple[np.ndarray, np.ndarray]:
    """Labels at an exact argmax of ``S + v`` and lower bounds on their margins, reading
    full rows only where the candidates cannot tell (valid while no price ``-v`` has fallen
    below its value when they were built)."""
    if not use_numba:
        labels, _, margin = _best_labels(S, v, use_numba)
        return labels, margin
    labels = np.empty(S.shape[0], np.int64)
    margin = np.empty(S.shape[0])
    loops.argmax_labels(S, cand, cand_s, bound, v, labels, margin)
    return labels, margin


def _best_labels(
    S: np.ndarray, v: np.ndarray, use_numba: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass: each row's first argmax of ``S + v`` (-1 where all are -inf), its lowest
    score, and its margin (best value minus second best), computed in float64."""
    N = S.shape[0]
    labels = np.empty(N, np.int64)
    low = np.empty(N, S.dtype)
    margin = np.empty(N)
    if use_numba:
        loops.best_labels(S, v, labels, low, margin)
        return labels, low, margin
    for start in range(0, N, ROWS_PER_BLOCK):
        block = S[start:start + ROWS_PER_BLOCK]
        values = block.astype(np.float64) + v
        rows = np.arange(block.shape[0])
        best = values.argmax(axis=1)
        top = values[rows, best]
        values[rows, best] = -np.inf
        stop = start + block.shape[0]
        labels[start:stop] = np.where(top > -np.inf, best, -1)
        low[start:stop] = block.min(axis=1)
        with np.errstate(invalid="ignore"):
            margin[start:stop] = np.where(top > -np.inf, top - values.max(axis=1), np.inf)
    return labels, low, margin


def _label_margins(S: np.ndarray, v: np.ndarray, labels: np.ndarray, use_numba: bool) -> np.ndarray:
    """Each point's value at its label minus its best value elsewhere (one pass)."""
    margin = np.empty(S.shape[0])
    if use_numba:
        loops.label_margins(S, v, labels, margin)
        return margin
    for start in range(0, S.shape[0], ROWS_PER_BLOCK):
        values = S[start:start + ROWS_PER_BLOCK].astype(np.float64) + v
        rows = np.arange(values.shape[0])
        own = values[rows, labels[start:start + values.shape[0]]]
        values[rows, labels[start:start + values.shape[0]]] = -np.inf
        margin[start:start + values.shape[0]] = own - values.max(axis=1)
    return margin


def _label_graph(K: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Uninitialised ``D``, ``Darg`` and ``stale`` for :func:`_label_distances` to fill."""
    return np.empty((K, K)), np.empty((K, K), np.int64), np.empty((K, K), np.bool_)


def _label_distances(
    S: np.ndarray,
    labels: np.ndarray,
    points: np.ndarray,
    head: np.ndarray,
    nxt: np.ndarray,
    use_numba: bool,
    graph: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``D[a, b] = min over the given points i of label a of S[i, a] - S[i, b]`` (float64),
    its arg-minima, and the (all false) stale flags that ``shortest_paths`` keeps, written
    over ``graph`` (from :func:`_label_graph`): the compiled loop sets every entry itself,
    in parallel, so it is not filled here first (17 K^2 bytes written once, not twice)."""
    K = S.shape[1]
    D, Darg, stale = graph
    if use_numba:
        loops.label_distances(S, head, nxt, D, Darg, stale)
        return D, Darg, stale
    D.fill(np.inf)
    Darg.fill(-1)
    stale.fill(False)
    order = points[np.argsort(labels[points], kind="stable")]
    sizes = np.bincount(labels[points], minlength=K)
    ends = np.cumsum(sizes)
    for a in range(K):
        members = order[ends[a] - sizes[a]:ends[a]]
        if members.size:
            rows = S[members].astype(np.float64)
            gaps = rows[:, a:a + 1] - rows
            best = gaps.argmin(axis=0)
            D[a] = gaps[best, np.arange(K)]
            Darg[a] = members[best]
    return D, Darg, stale
