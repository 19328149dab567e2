"""Whether any labelling has the asked proportions, when ``-inf`` scores forbid labels to rows.

Label k takes ``N * label_weights[k]`` points rounded down or up (the sizes of
``balance="exact"``), every row one label with a finite score. By Hall's theorem, on each side,
none exists when a group of labels L must take more points (rounded down) than the rows with a
finite score for some label of L, or when more rows have finite scores only among L than L may
take (rounded up). One label short of rows is the simplest case; a group can be short while
each of its labels alone is not (two thirds of the rows finite only for label 0, whose share is
a third). Rows are counted by their pattern of finite labels; a max-flow on the pattern x label
graph, with integer capacities, decides each side exactly and its minimum cut names the group.
Sizes rounded either way make the check sound for both the plan and exact balancing: where a
group misses its proportion by less than the rounding, ``balance="exact"`` still succeeds.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .collective import Collective

#: Edges of the pattern x label graph the max-flow takes (memory: 16 bytes each, several times).
MAX_EDGES = 1 << 22
#: Distinct finite-label patterns counted, at least, before giving up on the group check;
#: more where the graph's edges allow (:func:`pattern_cap`). Masks drawn per row beside a
#: masked group make one pattern per row and still a group worth naming.
MAX_PATTERNS = 4096
#: scipy's maximum_flow computes in int32: capacities up to N must fit.
MAX_POINTS = np.iinfo(np.int32).max


class Shortage(NamedTuple):
    """A group of labels no labelling can serve: ``confined`` rows have finite scores only
    among them, more than they may take, or (not ``confined``) they must take more points
    than the ``rows`` with a finite score for any of them; ``size`` is what they may take
    (rounded up) or must take (rounded down)."""

    labels: np.ndarray  # bool, (K,)
    confined: bool
    rows: int
    size: int


def pattern_cap(n_labels: int) -> int:
    """Distinct patterns counted before the group check gives up: as many as a graph of
    ``MAX_EDGES`` edges holds at one edge per label (262,144 at K = 16), at least
    ``MAX_PATTERNS``."""
    return max(MAX_PATTERNS, MAX_EDGES // n_labels)


class FinitePatterns:
    """Rows counted by which labels they have a finite score for (one bit per label, packed);
    ``counts`` is None once more than :func:`pattern_cap` distinct ones were seen."""

    def __init__(self, n_labels: int):
        self.n_labels = n_labels
        self.counts: dict[bytes, int] | None = {}

    def add(self, finite: np.ndarray) -> None:
        """Count the rows of a boolean (rows, K) finite-score mask."""
        counts = self.counts
        if counts is None or finite.shape[0] == 0:
            return
        full = finite.all(axis=1)
        n_full = int(full.sum())
        if n_full:
            key = np.packbits(np.ones(self.n_labels, dtype=bool)).tobytes()
            counts[key] = counts.get(key, 0) + n_full
        if n_full < finite.shape[0]:
            _count_rows(counts, np.packbits(finite[~full], axis=1))
        if len(counts) > pattern_cap(self.n_labels):
            self.counts = None


def _count_rows(counts: dict[bytes, int], packed: np.ndarray) -> None:
    """Count packed rows by their bytes (one sort of the rows as opaque records)."""
    records = np.ascontiguousarray(packed).view(np.dtype((np.void, packed.shape[1])))
    keys, numbers = np.unique(records.ravel(), return_counts=True)
    for key, number in zip(keys.tolist(), numbers.tolist(), strict=True):
        counts[key] = counts.get(key, 0) + number


def find_shortage(
    patterns: FinitePatterns, lower: np.ndarray, upper: np.ndarray, collective: Collective
) -> tuple[bool, Shortage | None]:
    """Whether the patterns were few enough to decide, and a group of labels short of rows,
    or rows short of labels, across every process, for label sizes between ``lower`` and
    ``upper`` (None when there is none or it was not decided: then only single labels are
    checked, elsewhere).

    Every process makes the same collective calls: a maximum (did any give up counting?),
    a gather of the pattern tables to process 0, which decides, and a sum that hands its
    answer to every process.
    """
    n_labels = patterns.n_labels
    if collective.max(np.array([float(patterns.counts is None)]))[0]:
        return False, None
    gathered, _ = collective.gather_rows(_encode(patterns.counts or {}, n_labels))
    answer = np.zeros(n_labels + 3)
    if gathered is not None:
        try:
            answer = _decided(gathered, lower, upper)
        except Exception as exc:  # the others learn of it in the sum below
            collective.fail(exc)
    answer = collective.sum(answer)
    kind, rows, size = answer[n_labels:]
    if kind <= 0:
        return kind == 0, None
    return True, Shortage(answer[:n_labels] > 0, kind == 2, int(rows), int(size))


def _encode(counts: dict[bytes, int], n_labels: int) -> np.ndarray:
    """The table as uint8 rows: packed pattern bytes, then the count's 8 bytes."""
    width = (n_labels + 7) // 8
    rows = np.empty((len(counts), width + 8), dtype=np.uint8)
    rows[:, :width] = np.frombuffer(b"".join(counts), dtype=np.uint8).reshape(-1, width)
    rows[:, width:] = np.array(list(counts.values()), dtype=np.int64).view(np.uint8).reshape(-1, 8)
    return rows


def _decided(rows: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Process 0's answer as a vector: the group's labels (K), its kind (0: none, 1: labels
    short of rows, 2: rows confined to labels that may not take them all, -1: too large a
    table to decide), its rows and size. Of the two kinds, the one naming fewer labels."""
    n_labels = lower.shape[0]
    answer = np.zeros(n_labels + 3)
    finite, counts = _merged(rows, n_labels)
    n_points = int(counts.sum())
    if (not 0 < n_points <= MAX_POINTS or finite.shape[0] > pattern_cap(n_labels)
            or np.count_nonzero(finite) > MAX_EDGES):
        answer[n_labels] = -1.0
        return answer
    found = [shortage for shortage in (_short_labels(finite, counts, lower),
                                       _confined_rows(finite, counts, upper))
             if shortage is not None]
    if found:
        group = min(found, key=lambda shortage: np.count_nonzero(shortage.labels))
        answer[:n_labels] = group.labels
        answer[n_labels:] = (2.0 if group.confined else 1.0, group.rows, group.size)
    return answer


def _merged(rows: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct patterns as a bool (P, K) mask and their row counts, summed over processes."""
    width = (n_labels + 7) // 8
    counts = np.ascontiguousarray(rows[:, width:]).view(np.int64).ravel()
    records = np.ascontiguousarray(rows[:, :width]).view(np.dtype((np.void, width))).ravel()
    keys, inverse = np.unique(records, return_inverse=True)
    totals = np.bincount(inverse.ravel(), weights=counts, minlength=keys.size)
    packed = np.frombuffer(keys.tobytes(), dtype=np.uint8).reshape(keys.size, width)
    finite = np.unpackbits(packed, axis=1, count=n_labels).astype(bool)
    return finite, totals.astype(np.int64)


def _short_labels(finite: np.ndarray, counts: np.ndarray, lower: np.ndarray) -> Shortage | None:
    """Labels that must take more points than rows reach them: the labels the flow's
    residual graph cannot reach from the source, when the flow cannot meet ``lower``."""
    reached = _reached_labels(finite, counts, lower)
    if reached is None:
        return None
    group = ~reached
    reachable = int(counts[finite[:, group].any(axis=1)].sum())
    size = int(lower[group].sum())
    return Shortage(group, False, reachable, size) if reachable < size else None


def _confined_rows(finite: np.ndarray, counts: np.ndarray, upper: np.ndarray) -> Shortage | None:
    """Rows with finite scores only among labels that may not take them all: those labels
    the residual graph reaches from the source, when the flow cannot place every row."""
    reached = _reached_labels(finite, counts, upper)
    if reached is None:
        return None
    confined = int(counts[~finite[:, ~reached].any(axis=1)].sum())
    size = int(upper[reached].sum())
    return Shortage(reached, True, confined, size) if confined > size else None


def _reached_labels(
    finite: np.ndarray, counts: np.ndarray, capacity: np.ndarray
) -> np.ndarray | None:
    """A max-flow source -> patterns (their rows) -> labels (``capacity``) -> sink: None when
    it fills every row and every capacity it can, else the labels on the source's side of a
    minimum cut (those its residual graph reaches)."""
    # Imported here: only a failed solve gets this far, and scipy.sparse adds 20 ms to
    # every ``import sinklabel``.
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import breadth_first_order, maximum_flow

    n_patterns, n_labels = finite.shape
    sink = n_patterns + n_labels + 1
    pattern_of, label_of = np.nonzero(finite)
    tails = np.concatenate([np.zeros(n_patterns, np.int64), 1 + pattern_of,
                            1 + n_patterns + np.arange(n_labels)])
    heads = np.concatenate([1 + np.arange(n_patterns), 1 + n_patterns + label_of,
                            np.full(n_labels, sink)])
    capacities = np.concatenate([counts, np.full(pattern_of.size, counts.sum()), capacity])
    graph = csr_matrix((capacities.astype(np.int32), (tails, heads)), shape=(sink + 1, sink + 1))
    flow = maximum_flow(graph, 0, sink)
    if flow.flow_value >= min(counts.sum(), capacity.sum()):
        return None
    residual = graph - flow.flow
    residual.data = (residual.data > 0).astype(np.int8)
    residual.eliminate_zeros()
    reached = breadth_first_order(residual, 0, directed=True, return_predecessors=False)
    labels = np.zeros(n_labels, dtype=bool)
    labels[reached[(reached > n_patterns) & (reached < sink)] - 1 - n_patterns] = True
    return labels


def shortage_message(shortage: Shortage, n_points: int, label_weights: np.ndarray) -> str:
    """Name the group, the rows, and the sizes they miss."""
    group = shortage.labels
    share = float(label_weights[group].sum()) * n_points
    if shortage.confined:
        return (
            f"{shortage.rows} rows of {n_points} have a finite score only for labels among "
            f"{_listed(group)}: more points than they may take ({shortage.size} at most: "
            f"{_origin(shortage, share)}), so no labelling meets these proportions. Raise "
            "those labels' weights or unmask more rows"
        )
    return (
        f"labels {_listed(group)} must take {shortage.size} points ({_origin(shortage, share)}"
        f") but only {shortage.rows} rows of {n_points} have a finite score for any of them "
        "(the others are -inf), so no labelling meets these proportions. Lower their weights "
        "or unmask more rows"
    )


def _origin(shortage: Shortage, share: float) -> str:
    """Where the group's size comes from: the share, rounded where it is not whole."""
    if shortage.size == share:
        return "their weights times N"
    return f"their weights times N, {share:.6g}, rounded {'up' if shortage.confined else 'down'}"


def _listed(labels: np.ndarray, shown: int = 10) -> str:
    """A label set as ``{0, 3, 7}``, the first ``shown`` and how many more."""
    chosen = np.flatnonzero(labels)
    more = f", and {chosen.size - shown} more" if chosen.size > shown else ""
    return "{" + ", ".join(str(y) for y in chosen[:shown].tolist()) + more + "}"
