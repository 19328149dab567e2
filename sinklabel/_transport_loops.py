"""Inner loops of the exact transport solver: compiled by numba when it is installed.

Without numba the same functions run as plain Python (correct, much slower); the driver in
``_transport.py`` then does the full passes over the scores in NumPy instead, and tests call
``function.py_func`` to exercise the uncompiled code on purpose.

Conventions shared with the driver: ``S`` is the (N, K) score matrix (float32 or float64),
``price`` the label prices of the auction (``price = -v``), ``v`` the label bonuses of the
dual (a point prefers ``argmax_y S[i, y] + v[y]``).
"""

from __future__ import annotations

import numpy as np

try:
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised in environments without numba
    HAVE_NUMBA = False
    prange = range

    def njit(*args, **kwargs):
        """Identity decorator standing in for numba.njit; keeps ``py_func`` for symmetry."""

        def wrap(func):
            func.py_func = func
            return func

        if args and callable(args[0]):
            return wrap(args[0])
        return wrap


INF = np.inf
#: Blocks per row in the two-pass candidate scan.
BLOCKS = 64


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


@njit(cache=True, parallel=True)
def build_candidates(S, price, cand, cand_s, bound):
    """Candidates of every point: one parallel pass over the scores."""
    m = cand.shape[1]
    N, K = S.shape
    rows = 256
    for blk in prange((N + rows - 1) // rows):
        vals = np.empty(m + 1)
        idx = np.empty(m + 1, np.int64)
        bmax = np.empty(BLOCKS)
        for i in range(blk * rows, min(N, (blk + 1) * rows)):
            bound[i] = row_top(S, i, price, cand, cand_s, vals, idx, bmax)


@njit(cache=True, parallel=True)
def argmax_labels(S, cand, cand_s, bound, v, labels):
    """argmax_y S[i, y] + v[y] for every point; the full row only where candidates cannot tell."""
    m = cand.shape[1]
    K = S.shape[1]
    for i in prange(S.shape[0]):
        best = -INF
        arg = -1
        for k in range(m):
            w = cand_s[i, k] + v[cand[i, k]]
            if w > best:
                best = w
                arg = cand[i, k]
        if arg < 0 or best < bound[i]:
            best = -INF
            for y in range(K):
                w = S[i, y] + v[y]
                if w > best:
                    best = w
                    arg = y
        labels[i] = arg


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
# which is >= 0 as long as every point sits at an argmax of S[i, :] + v. Rows of D are
# computed when Dijkstra first needs them and repaired after each move.
# --------------------------------------------------------------------------------------------


@njit(cache=True)
def link_members(labels, head, nxt, prv, count):
    """Doubly linked member lists of every label."""
    for i in range(labels.shape[0]):
        _link(i, labels[i], head, nxt, prv, count)


@njit(cache=True)
def _unlink(i, y, head, nxt, prv, count):
    if prv[i] >= 0:
        nxt[prv[i]] = nxt[i]
    else:
        head[y] = nxt[i]
    if nxt[i] >= 0:
        prv[nxt[i]] = prv[i]
    count[y] -= 1


@njit(cache=True)
def _link(i, y, head, nxt, prv, count):
    nxt[i] = head[y]
    prv[i] = -1
    if head[y] >= 0:
        prv[head[y]] = i
    head[y] = i
    count[y] += 1


@njit(cache=True)
def _compute_row(S, a, D, Darg, head, nxt):
    """D[a, :] and its arg-minima from the current members of label a."""
    K = S.shape[1]
    for c in range(K):
        D[a, c] = INF
        Darg[a, c] = -1
    j = head[a]
    while j >= 0:
        sa = S[j, a]
        for c in range(K):
            val = sa - S[j, c]
            if val < D[a, c]:
                D[a, c] = val
                Darg[a, c] = j
        j = nxt[j]


@njit(cache=True)
def _repair_row(S, a, lost, D, Darg, head, nxt, cols):
    """Recompute the entries of row a whose arg-minimum was the point ``lost``."""
    K = S.shape[1]
    n = 0
    for c in range(K):
        if Darg[a, c] == lost:
            cols[n] = c
            n += 1
    if n == 0:
        return
    if 4 * n > K:
        _compute_row(S, a, D, Darg, head, nxt)
        return
    for k in range(n):
        D[a, cols[k]] = INF
        Darg[a, cols[k]] = -1
    j = head[a]
    while j >= 0:
        sa = S[j, a]
        for k in range(n):
            c = cols[k]
            val = sa - S[j, c]
            if val < D[a, c]:
                D[a, c] = val
                Darg[a, c] = j
        j = nxt[j]


@njit(cache=True)
def _absorb_point(S, b, i, D, Darg):
    """Point i joined label b: row b can only get smaller."""
    sb = S[i, b]
    for c in range(S.shape[1]):
        val = sb - S[i, c]
        if val < D[b, c]:
            D[b, c] = val
            Darg[b, c] = i


@njit(cache=True)
def shortest_paths(S, labels, v, vz, lower, upper, z, head, nxt, prv, count, max_paths):
    """Augment along shortest paths until every label is within its capacity range.

    ``v`` (length K) and ``z`` are updated in place; returns ``(status, vz, paths)`` with
    status 0 on success, 1 when some excess cannot reach any deficit (infeasible), 2 when
    ``max_paths`` was reached.
    """
    K = S.shape[1]
    Z = K
    D = np.empty((K, K))
    Darg = np.empty((K, K), np.int64)
    valid = np.zeros(K, np.bool_)
    cols = np.empty(K, np.int64)
    extra = S.shape[0] - lower.sum()
    excess = np.empty(K + 1, np.int64)
    for y in range(K):
        excess[y] = count[y] - lower[y] - z[y]
    excess[Z] = z.sum() - extra
    dist = np.empty(K + 1)
    pred = np.empty(K + 1, np.int64)
    done = np.empty(K + 1, np.bool_)
    path_from = np.empty(K + 1, np.int64)
    path_to = np.empty(K + 1, np.int64)
    path_pt = np.empty(K + 1, np.int64)
    paths = 0
    source = 0
    while True:
        # One source at a time: the nearest deficit is usually a step or two away, so
        # Dijkstra settles few nodes (a multi-source search would settle every source first).
        for k in range(K + 1):
            if excess[(source + k) % (K + 1)] > 0:
                source = (source + k) % (K + 1)
                break
        else:
            return 0, vz, paths
        if paths >= max_paths:
            return 2, vz, paths
        for n in range(K + 1):
            dist[n] = INF
            pred[n] = -1
            done[n] = False
        dist[source] = 0.0
        target = -1
        while True:
            best = INF
            a = -1
            for n in range(K + 1):
                if not done[n] and dist[n] < best:
                    best = dist[n]
                    a = n
            if a < 0:
                break
            done[a] = True
            if excess[a] < 0:
                target = a
                break
            if a < K:
                if count[a] > 0:
                    if not valid[a]:
                        _compute_row(S, a, D, Darg, head, nxt)
                        valid[a] = True
                    va = v[a]
                    for b in range(K):
                        if done[b]:
                            continue
                        r = D[a, b] + va - v[b]
                        if r < 0.0:
                            r = 0.0
                        if best + r < dist[b]:
                            dist[b] = best + r
                            pred[b] = a
                if z[a] < upper[a] - lower[a] and not done[Z]:
                    r = v[a] - vz
                    if r < 0.0:
                        r = 0.0
                    if best + r < dist[Z]:
                        dist[Z] = best + r
                        pred[Z] = a
            else:
                for b in range(K):
                    if z[b] > 0 and not done[b]:
                        r = vz - v[b]
                        if r < 0.0:
                            r = 0.0
                        if best + r < dist[b]:
                            dist[b] = best + r
                            pred[b] = a
        if target < 0:
            return 1, vz, paths
        reach = dist[target]
        for y in range(K):
            v[y] += min(dist[y], reach)
        vz += min(dist[Z], reach)
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
            _unlink(i, path_from[k], head, nxt, prv, count)
            _link(i, path_to[k], head, nxt, prv, count)
            labels[i] = path_to[k]
        for k in range(n_moves):
            if valid[path_to[k]]:
                _absorb_point(S, path_to[k], path_pt[k], D, Darg)
        for k in range(n_moves):
            a = path_from[k]
            if valid[a]:
                _repair_row(S, a, path_pt[k], D, Darg, head, nxt, cols)
        paths += 1
