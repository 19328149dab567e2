"""Inner loops of the exact transport solver: compiled by numba when it is installed.

Without numba the same functions run as plain Python (correct, much slower; ``sinklabel._simd``
supplies the stand-ins); the driver in ``_transport.py`` then does the full passes over the
scores in NumPy instead, and tests call ``function.py_func`` to exercise the uncompiled code on
purpose. The full passes vectorise their row maxima and minima with the ``llvm.maxnum``/``minnum``
intrinsics of ``sinklabel._simd`` (Numba's own ``max`` leaves a serial scalar chain).

Conventions shared with the driver: ``S`` is the (N, K) score matrix (float32 or float64),
``price`` the label prices of the auction (``price = -v``), ``v`` the label bonuses of the
dual (a point prefers ``argmax_y S[i, y] + v[y]``).
"""

from __future__ import annotations

import numpy as np

from ._simd import FAST, W, first_equal, fmax, fmin, njit, parallel_loop, prange
from ._simd import HAVE_NUMBA as HAVE_NUMBA  # the drivers read it here; tests switch it off

#: Flags for loops without reductions: they vectorise without reassociation, and price
#: arithmetic is then rounded exactly as written.
_ELEMENTWISE = {"nnan", "nsz"}

INF = np.inf
#: Blocks per row in the two-pass candidate scan.
BLOCKS = 64
#: Rows per parallel task of the full passes.
ROWS = 256


# --------------------------------------------------------------------------------------------
# Candidate lists: each point's m best labels at the current prices, plus a bound on the rest.
# Prices only rise during the auction, so the bound stays valid until the point is rebuilt.
# --------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _insert(vals, idx, n, w, y):
    """Insert value w of label y into the descending top list of length n."""
    j = n
    while j > 0 and vals[j - 1] < w:
        vals[j] = vals[j - 1]
        idx[j] = idx[j - 1]
        j -= 1
    vals[j] = w
    idx[j] = y


@njit(cache=True)
def row_top(S, i, price, cand, cand_s, vals, idx, bmax):
    """Rebuild point ``i``'s candidates from its full row; return the bound on the others.

    The row is cut into ``len(bmax)`` blocks; the (m+1)-th largest block maximum is a lower
    bound for the (m+1)-th largest value (m+1 blocks each hold a value at least that large),
    so the second scan inserts only the few values above it.
    """
    m = cand.shape[1]
    K = S.shape[1]
    n_blocks = bmax.shape[0]
    threshold = -INF
    if 2 * n_blocks < K and n_blocks > m:
        width = (K + n_blocks - 1) // n_blocks
        for blk in range(n_blocks):
            top = -INF
            for y in range(blk * width, min(K, (blk + 1) * width)):
                w = S[i, y] - price[y]
                if w > top:
                    top = w
            bmax[blk] = top
        for blk in range(m + 1):
            _insert(vals, idx, blk, bmax[blk], 0)
        for blk in range(m + 1, n_blocks):
            if bmax[blk] > vals[m]:
                _insert(vals, idx, m, bmax[blk], 0)
        threshold = vals[m]
    n = 0
    for y in range(K):
        w = S[i, y] - price[y]
        if n <= m:
            if w >= threshold or K - y <= m + 1 - n:
                _insert(vals, idx, n, w, y)
                n += 1
        elif w > vals[m]:
            _insert(vals, idx, m, w, y)
    for k in range(m):
        cand[i, k] = idx[k]
        cand_s[i, k] = S[i, idx[k]]
    return vals[m] if m < K else -INF


@njit(cache=True, fastmath=FAST)
def _row_min(S, i):
    low = S[i, 0]
    for y in range(1, S.shape[1]):
        low = fmin(low, S[i, y])
    return low


@parallel_loop()
def build_candidates(S, price, cand, cand_s, bound, low):
    """Candidates of every point, and each row's lowest score: one parallel pass."""
    m = cand.shape[1]
    N, K = S.shape
    for blk in prange((N + ROWS - 1) // ROWS):
        vals = np.empty(m + 1)
        idx = np.empty(m + 1, np.int64)
        bmax = np.empty(BLOCKS)
        for i in range(blk * ROWS, min(N, (blk + 1) * ROWS)):
            bound[i] = row_top(S, i, price, cand, cand_s, vals, idx, bmax)
            low[i] = _row_min(S, i)


@parallel_loop(fastmath=FAST)
def best_labels(S, v, labels, low, margin):
    """One parallel pass in float64 (as ``S.astype(float) + v``): every row's first argmax
    of ``S[i, :] + v`` (-1 where all are -inf), its lowest score, and its margin: how far
    its best value lies above its second best (inf with no finite second)."""
    N, K = S.shape
    for blk in prange((N + ROWS - 1) // ROWS):
        z = np.empty(K)
        for i in range(blk * ROWS, min(N, (blk + 1) * ROWS)):
            top = -INF
            lowest = S[i, 0]
            for y in range(K):
                s = S[i, y]
                w = s + v[y]
                z[y] = w
                top = fmax(top, w)
                lowest = fmin(lowest, s)
            low[i] = lowest
            if top == -INF:
                labels[i] = -1
                margin[i] = INF
                continue
            label = first_equal(z, top, K)
            labels[i] = label
            z[label] = -INF
            second = -INF
            for y in range(K):
                second = fmax(second, z[y])
            margin[i] = top - second


@parallel_loop(fastmath=FAST)
def label_margins(S, v, labels, margin):
    """How far each point's value at its label lies above its best value elsewhere (one
    parallel pass, in float64 like :func:`best_labels`)."""
    N, K = S.shape
    for blk in prange((N + ROWS - 1) // ROWS):
        z = np.empty(K)
        for i in range(blk * ROWS, min(N, (blk + 1) * ROWS)):
            a = labels[i]
            for y in range(K):
                z[y] = S[i, y] + v[y]
            own = z[a]
            z[a] = -INF
            second = -INF
            for y in range(K):
                second = fmax(second, z[y])
            margin[i] = own - second


@parallel_loop()
def argmax_labels(S, cand, cand_s, bound, v, labels, margin):
    """argmax_y S[i, y] + v[y] for every point, and a lower bound on its margin (best value
    minus second best); the full row only where the candidates cannot tell."""
    m = cand.shape[1]
    K = S.shape[1]
    for i in prange(S.shape[0]):
        best = -INF
        second = -INF
        arg = -1
        for k in range(m):
            w = cand_s[i, k] + v[cand[i, k]]
            if w > best:
                second = best
                best = w
                arg = cand[i, k]
            elif w > second:
                second = w
        if arg < 0 or best < bound[i]:
            best = -INF
            second = -INF
            for y in range(K):
                w = S[i, y] + v[y]
                if w > best:
                    second = best
                    best = w
                    arg = y
                elif w > second:
                    second = w
        else:
            second = max(second, bound[i])
        labels[i] = arg
        margin[i] = best - second if best > -INF else INF


# --------------------------------------------------------------------------------------------
# Auction for the transportation problem (Bertsekas and Castanon): one price per label. A
# point bids the most it can pay for its best label and stay within eps of its second best;
# each label keeps a min-heap of the bids it holds, and its price is the lowest of them once
# full (its reserve price before). Every held point then satisfies eps-complementary
# slackness with respect to the label prices.
# --------------------------------------------------------------------------------------------


@njit(cache=True)
def _label_price(y, caps, reserve, off, hbid, hsize):
    if hsize[y] < caps[y]:
        return reserve[y]
    return hbid[off[y]]


@njit(cache=True)
def _heap_push(o, size, hbid, hpt, bid, point):
    j = size
    while j > 0:
        parent = (j - 1) // 2
        if hbid[o + parent] <= bid:
            break
        hbid[o + j] = hbid[o + parent]
        hpt[o + j] = hpt[o + parent]
        j = parent
    hbid[o + j] = bid
    hpt[o + j] = point


@njit(cache=True)
def _heap_replace_top(o, size, hbid, hpt, bid, point):
    j = 0
    while True:
        child = 2 * j + 1
        if child >= size:
            break
        if child + 1 < size and hbid[o + child + 1] < hbid[o + child]:
            child += 1
        if hbid[o + child] >= bid:
            break
        hbid[o + j] = hbid[o + child]
        hpt[o + j] = hpt[o + child]
        j = child
    hbid[o + j] = bid
    hpt[o + j] = point


@njit(cache=True)
def auction_phase(S, cand, cand_s, bound, price, reserve, caps, off, hbid, hpt, hsize,
                  stack, top, eps, big, budget):
    """Bid until every point holds a copy or ``budget`` bids are spent.

    Returns the number of points still unassigned (0 on success) and the bids made.
    ``price`` is kept equal to each label's current price.
    """
    m = cand.shape[1]
    vals = np.empty(m + 1)
    idx = np.empty(m + 1, np.int64)
    bmax = np.empty(BLOCKS)
    bids = 0
    while top > 0 and bids < budget:
        top -= 1
        i = stack[top]
        bids += 1
        for attempt in range(2):
            w1 = -INF
            w2 = -INF
            c1 = -1
            for k in range(m):
                y = cand[i, k]
                w = cand_s[i, k] - price[y]
                if w > w1:
                    w2 = w1
                    w1 = w
                    c1 = y
                elif w > w2:
                    w2 = w
            if attempt == 0 and (c1 < 0 or w1 < bound[i]):
                bound[i] = row_top(S, i, price, cand, cand_s, vals, idx, bmax)
                continue
            break
        if c1 < 0:
            # No label with a finite score has a copy left at a finite price: infeasible here.
            stack[top] = i
            return top + 1, bids
        if bound[i] > w2:
            w2 = bound[i]
        step = w1 - w2
        if step > big:
            step = big
        bid = price[c1] + step + eps
        o = off[c1]
        size = hsize[c1]
        if size < caps[c1]:
            _heap_push(o, size, hbid, hpt, bid, i)
            hsize[c1] = size + 1
        else:
            stack[top] = hpt[o]
            top += 1
            _heap_replace_top(o, size, hbid, hpt, bid, i)
        price[c1] = _label_price(c1, caps, reserve, off, hbid, hsize)
    return top, bids


# --------------------------------------------------------------------------------------------
# Successive shortest paths on the label graph. Node y < K is a label; node K ("Z") holds the
# optional points of capacity ranges: label y parks z[y] in [0, upper[y] - lower[y]] of its
# points there. Moving one point from label a to b costs, in reduced terms,
#     D[a, b] + v[a] - v[b],   D[a, b] = min over points i in a of S[i, a] - S[i, b],
# which is >= 0 as long as every point sits at an argmax of S[i, :] + v.
#
# Only the *boundary* points enter D: those whose margin (best value minus second best) was
# at most theta at the prices v0 of the start. Prices only rise during the search, so any
# other point's reduced cost to any label is still at least theta - spread, where spread is
# the range of v - v0 over the labels; a path no longer than that bound is therefore a
# shortest path of the full graph, and its price update is the full graph's too. A longer
# one stops the search (status 3) and the caller widens the boundary. theta = inf takes
# every point.
#
# D is computed for all labels at once, in parallel. When a point leaves label a, the
# entries of row a it attained become *stale* (lower bounds) and are recomputed from label
# a's members when Dijkstra next settles a (a few entries, over the few boundary members: no
# full row).
# --------------------------------------------------------------------------------------------


@njit(cache=True)
def link_members(points, labels, head, nxt, prv):
    """Doubly linked lists of the given points by label, each in the reverse of their order
    in ``points``."""
    for i in points:
        _link(i, labels[i], head, nxt, prv)


@njit(cache=True)
def _unlink(i, y, head, nxt, prv):
    if prv[i] >= 0:
        nxt[prv[i]] = nxt[i]
    else:
        head[y] = nxt[i]
    if nxt[i] >= 0:
        prv[nxt[i]] = prv[i]


@njit(cache=True)
def _link(i, y, head, nxt, prv):
    nxt[i] = head[y]
    prv[i] = -1
    if head[y] >= 0:
        prv[head[y]] = i
    head[y] = i


@njit(cache=True, fastmath=_ELEMENTWISE)
def _absorb_point(S, a, i, D, Darg, stale):
    """Point i (now) belongs to label a: row a can only get smaller, and exact where it does."""
    sa = np.float64(S[i, a])
    row = D[a]
    arg = Darg[a]
    old = stale[a]
    for c in range(S.shape[1]):
        value = sa - np.float64(S[i, c])
        d = row[c]
        arg[c] = i if value <= d else arg[c]
        old[c] = old[c] & (value > d)
        row[c] = fmin(value, d)


@parallel_loop()
def label_distances(S, head, nxt, D, Darg, stale):
    """Every row of D and its arg-minima from the linked members of each label."""
    K = S.shape[1]
    for a in prange(K):
        for c in range(K):
            D[a, c] = INF
            Darg[a, c] = -1
            stale[a, c] = False
        j = head[a]
        while j >= 0:
            _absorb_point(S, a, j, D, Darg, stale)
            j = nxt[j]


@njit(cache=True)
def _mark_stale(a, lost, Darg, stale, n_stale):
    """Point ``lost`` left label a: the entries of row a it attained are now lower bounds."""
    for c in range(Darg.shape[1]):
        if Darg[a, c] == lost and not stale[a, c]:
            stale[a, c] = True
            n_stale[a] += 1


@njit(cache=True)
def _refresh_row(S, a, D, Darg, stale, head, nxt, mu, v0):
    """Recompute the stale entries of row a from the members of label a.

    Member j's gap to label c is at least ``mu[j] + v0[c] - v0[a]`` (``mu[j]``: its margin
    at the prices ``v0``), and each list runs in increasing ``mu``, so every scan stops at
    the first member that cannot beat the best found (a bound equal to it cannot): usually
    after a few. A stale entry keeps its old minimum, a lower bound on every member's gap
    (since then members only left, or joined above it), so a member that attains it ends
    the scan too: with tied rows (identical points, which all start at one label and leave
    it one per path) the first member does, and a path costs O(K), not a scan of the label
    per entry.
    """
    for c in range(S.shape[1]):
        # A closed label (price -inf) ends no path, whatever its entry: none is refreshed.
        if not stale[a, c] or v0[c] == -INF:
            continue
        offset = v0[c] - v0[a]
        low = D[a, c]
        best = INF
        arg = -1
        j = head[a]
        while j >= 0 and best > low and not mu[j] + offset >= best:
            value = np.float64(S[j, a]) - np.float64(S[j, c])
            if value < best:
                best = value
                arg = j
            j = nxt[j]
        D[a, c] = best
        Darg[a, c] = arg
        stale[a, c] = False


@njit(cache=True)
def _margin_at(S, i, b, v):
    """How far ``S[i, b] + v[b]`` lies above point i's best value elsewhere (may be < 0)."""
    other = -INF
    for y in range(S.shape[1]):
        if y != b:
            other = max(other, S[i, y] + v[y])
    return (S[i, b] + v[b]) - other


@njit(cache=True)
def _spread(v, v0):
    """max - min of ``v - v0`` over the open labels (finite prices)."""
    high = -INF
    low = INF
    for y in range(v.shape[0]):
        if v0[y] > -INF:
            change = v[y] - v0[y]
            high = max(high, change)
            low = min(low, change)
    return high - low if high >= low else 0.0


@njit(cache=True, fastmath=FAST)
def _nearest(key):
    """The first node with the smallest key."""
    best = INF
    for n in range(key.shape[0]):
        best = fmin(best, key[n])
    return first_equal(key, best, key.shape[0])


@njit(cache=True, fastmath=_ELEMENTWISE)
def _relax(row, va, v, best, a, dist, pred, key, closed):
    """Shorten the paths through node a. Settled nodes are never shortened (their distance
    is at most ``best`` and reduced costs are >= 0), and ``closed`` (0, or inf once
    settled) keeps them out of ``key``: branch-free, so that the loop vectorises."""
    for b in range(v.shape[0]):
        step = best + fmax(row[b] + va - v[b], 0.0)
        d = dist[b]
        pred[b] = a if step < d else pred[b]
        d = fmin(step, d)
        dist[b] = d
        key[b] = d + closed[b]


@njit(cache=True)
def shortest_paths(S, labels, v, vz, lower, upper, z, count, head, nxt, prv, D, Darg, stale,
                   mu, theta, max_settled):
    """Augment along shortest paths until every label is within its capacity range.

    ``count`` holds every label's points; the linked lists and ``D``, ``Darg``, ``stale``
    (from :func:`label_distances`) the boundary points', each list in increasing ``mu``: the
    points' margins at the prices ``v`` on entry. ``labels``, ``v``, ``z``, ``mu`` and the
    lists are updated in place. Returns ``(status, vz, paths, settled, needed)``, status being
    0 on success, 1 when some excess cannot reach any deficit (infeasible; only with every
    point in the boundary), 2 after ``max_settled`` Dijkstra nodes, 3 when the boundary is too
    narrow to prove the next path shortest, which is at least ``needed`` long (inf: no
    deficit reachable through the boundary). In every case each point still sits at an
    argmax of ``S[i, :] + v``, so the caller can go on from there.
    """
    K = S.shape[1]
    Z = K
    v0 = v.copy()
    slack = 1e-9 * (1.0 + abs(theta)) if theta < INF else 0.0
    extra = S.shape[0] - lower.sum()
    excess = np.empty(K + 1, np.int64)
    for y in range(K):
        excess[y] = count[y] - lower[y] - z[y]
    excess[Z] = z.sum() - extra
    dist = np.empty(K + 1)
    pred = np.empty(K + 1, np.int64)
    # Tentative distances of the unsettled nodes (inf once settled), padded to whole blocks.
    key = np.full((K + 1 + W - 1) // W * W, INF)
    closed = np.zeros(K + 1)  # inf for the settled nodes
    n_stale = np.zeros(K, np.int64)  # at least the stale entries of each row
    path_from = np.empty(K + 1, np.int64)
    path_to = np.empty(K + 1, np.int64)
    path_pt = np.empty(K + 1, np.int64)
    paths = 0
    settled = 0
    source = 0
    while True:
        # One source at a time: the nearest deficit is usually a step or two away, so
        # Dijkstra settles few nodes (a multi-source search would settle every source first).
        for k in range(K + 1):
            if excess[(source + k) % (K + 1)] > 0:
                source = (source + k) % (K + 1)
                break
        else:
            return 0, vz, paths, settled, 0.0
        if settled >= max_settled:
            return 2, vz, paths, settled, 0.0
        limit = INF if theta == INF else theta - _spread(v, v0) - slack
        for n in range(K + 1):
            dist[n] = INF
            pred[n] = -1
            key[n] = INF
            closed[n] = 0.0
        dist[source] = 0.0
        key[source] = 0.0
        target = -1
        while True:
            a = _nearest(key)
            best = key[a]
            if best == INF or best > limit:
                break
            key[a] = INF
            closed[a] = INF
            settled += 1
            if excess[a] < 0:
                target = a
                break
            if a < K:
                if head[a] >= 0:
                    if n_stale[a] > 0:
                        _refresh_row(S, a, D, Darg, stale, head, nxt, mu, v0)
                        n_stale[a] = 0
                    _relax(D[a], v[a], v, best, a, dist, pred, key, closed)
                if z[a] < upper[a] - lower[a] and best + max(v[a] - vz, 0.0) < dist[Z]:
                    dist[Z] = best + max(v[a] - vz, 0.0)
                    key[Z] = dist[Z]
                    pred[Z] = a
            else:
                for b in range(K):
                    if z[b] > 0 and best + max(vz - v[b], 0.0) < dist[b]:
                        dist[b] = best + max(vz - v[b], 0.0)
                        key[b] = dist[b]
                        pred[b] = a
        if target < 0:
            return (1 if theta == INF else 3), vz, paths, settled, best
        # The usual update v += min(dist, reach), less the constant reach: only the nodes
        # closer than the target change, so the prices of the others gather no rounding.
        reach = dist[target]
        for y in range(K):
            if dist[y] < reach:
                v[y] -= reach - dist[y]
        if dist[Z] < reach:
            vz -= reach - dist[Z]
        # Collect the moves first: each edge moves the arg-minimum of its row before any change.
        n_moves = 0
        b = target
        while pred[b] >= 0:
            a = pred[b]
            if a < K and b < K:
                path_from[n_moves] = a
                path_to[n_moves] = b
                path_pt[n_moves] = Darg[a, b]
                n_moves += 1
            elif b == Z:
                z[a] += 1
            else:
                z[b] -= 1
            b = a
        excess[b] -= 1
        excess[target] += 1
        for k in range(n_moves):
            i = path_pt[k]
            b = path_to[k]
            _unlink(i, path_from[k], head, nxt, prv)
            # At the head of its new list, its bound must not exceed the next member's.
            mu[i] = _margin_at(S, i, b, v0)
            if head[b] >= 0:
                mu[i] = min(mu[i], mu[head[b]])
            _link(i, b, head, nxt, prv)
            labels[i] = b
        for k in range(n_moves):
            _absorb_point(S, path_to[k], path_pt[k], D, Darg, stale)
        for k in range(n_moves):
            _mark_stale(path_from[k], path_pt[k], Darg, stale, n_stale)
        paths += 1
