"""Optimality certificates: how far a labelling can be from the optimum of eq. (6).

For costs ``C = -logp``, label sizes in ``[lower, upper]`` and any label prices ``v``, weak
duality gives a lower bound on every feasible labelling's cost:

    dual(v) = sum_i min_y (C[i, y] - v[y]) + sum_y min(lower[y] * v[y], upper[y] * v[y])

(with fixed sizes the last term is ``sum_y cap[y] * v[y]``). The gap ``primal - dual`` is
therefore >= 0 for every labelling within the capacities, and 0 exactly when the labelling is
optimal and the prices prove it. Both sums need one streaming pass over the scores, through
the kernel contract, so the check runs on every backend and every source at full scale.

The pass sees the prices less their centre ``c`` (``v = c + d``), and the centre is added back
exactly: with ``m[y]`` the size that attains the minimum of label y's term,

    dual(v) = sum_i min_y (C[i, y] - d[y]) + c * (sum_y m[y] - N) + sum_y m[y] * d[y],

where ``sum_y m[y] - N`` is an exact integer (0 for fixed sizes). Prices far from zero (any
constant added to optimal ones is optimal too) would otherwise swamp the scores in the
kernel's float32 and cancel between the two sums.

The kernel compares all but float64 scores in float32, prices included: for such scores ``d``
is rounded to float32 first, and the bound is that of the rounded prices ``c + d`` (still a
valid bound; a cast inside the kernel would instead move each label's price by up to
``|d[y]| * 2**-24``, on labels the rounding allowance does not look at). The kernel's only
error is then the rounding of each ``logp[i, y] + d[y]``. Round-to-nearest is monotone, so
the label it picks rounds to the same value as the row's true maximum, which is therefore at
most ``2 * 2**-24 / (1 - 2**-24)`` times the picked label's ``|logp + d|`` above it: the
allowance, 4 units of roundoff times the picked label's ``|logp| + |d|``, covers that and the
float64 addition of the two.

The primal and the rows' part of the dual are then float64 sums of N terms each. A sum whose
terms each pass through at most m additions is off by at most ``gamma(m) = m u / (1 - m u)``
times the sum of its terms' sizes (``u = 2**-53``), not times the size of the sum: logits of
both signs can cancel to a total near 0 whose rounding is that of its large terms. Each chunk
is summed in groups of about ``sqrt(rows)`` terms (whatever order NumPy adds them in), so m
is about ``2 sqrt(rows)`` plus the number of chunks, not N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._budget import pass_rows
from ._capacities import check_capacities
from ._compile import eager_in_torch_compile
from ._validation import (
    check_chunk_scores,
    check_flag,
    check_labels,
    check_prices,
    check_shape,
)
from .kernels import Kernel, resolve_kernel
from .kernels._base import compute_dtype
from .sources import Array, Source, as_source, checked

#: Rounding of one row maximum computed in the kernel's float32 (or float64) arithmetic,
#: relative to the picked label's ``|logp| + |d|``: 4 units of roundoff (see above).
_ROUND32 = 2.0**-22
_ROUND64 = 2.0**-51
#: float64's unit roundoff.
_UNIT64 = 2.0**-53


@dataclass(frozen=True)
class Certificate:
    """Primal cost, a dual lower bound on the optimum, and their gap.

    Attributes
    ----------
    primal : float
        ``sum_i -logp[i, labels[i]]``: the labelling's cost (+inf if it uses a -inf score).
    dual : float
        A lower bound on the optimal cost of eq. (6), proved by the prices (as the pass
        compares them: see :func:`duality_gap`).
    gap : float
        ``primal - dual``; >= 0 whenever ``feasible``, and an upper bound on how much the
        labelling loses against the optimum.
    rounding : float
        Bound on the floating-point error of the pass (scores are compared in the backend's
        precision). A gap within it certifies optimality.
    feasible : bool
        Whether the labelling's label sizes are within the capacities.
    """

    primal: float
    dual: float
    gap: float
    rounding: float
    feasible: bool

    @property
    def relative_gap(self) -> float:
        """``gap / |primal|`` (the gap itself when the cost is 0)."""
        return self.gap / abs(self.primal) if self.primal else self.gap

    @property
    def optimal(self) -> bool:
        """True when the labelling is feasible and provably optimal up to rounding (a finite
        one: an overflowed pass proves nothing)."""
        return self.feasible and self.gap <= self.rounding < np.inf


@eager_in_torch_compile
def duality_gap(
    logp: Array,
    labels: Array,
    prices: Array,
    capacities: Any = None,
    *,
    backend: str = "auto",
    chunk_size: int | None = None,
    process_group: Any = None,
    distributed: bool = False,
) -> Certificate:
    """Certify a labelling against the exact problem with label prices, in one pass.

    Parameters
    ----------
    logp : array of shape (N, K) or Source
        The scores (any array library the backends take, a .npy memmap, or a Source).
    labels : array of shape (N,)
        The labelling to certify, integers in ``[0, K)``.
    prices : array of shape (K,)
        Label prices ``v`` in the units of ``logp``: ``ExactResult.prices``, or Sinkhorn's
        ``potentials / lam``. Any finite prices give a valid bound; optimal ones a tight one.
        Unless ``logp`` is float64, the bound is that of the prices with their offsets from
        their centre rounded to float32, the precision the kernel compares them in.
    capacities : None, array of shape (K,), or (lower, upper), default=None
        Label sizes, as in :func:`sinklabel.solve_exact` (default: floor or ceil of N/K).
    backend, chunk_size
        As in :func:`sinklabel.sinkhorn`.
    process_group : torch.distributed.ProcessGroup, default=None
        Certify the labelling of the rows of every rank in the group: each rank passes its
        own ``logp`` rows and their ``labels`` (any number, including none), and the same
        ``prices`` and ``capacities``, which are global (they size labels over all N rows).
        Every rank returns the same global certificate. See docs/distributed.md.
    distributed : bool, default=False
        As ``process_group``, with torch.distributed's default group.

    Returns
    -------
    Certificate

    Raises
    ------
    ValueError
        On bad labels, prices or capacities, and, during the pass, on scores that are NaN,
        +inf or -inf for every label of a row (the certificate would be NaN or inf).
    """
    if check_flag("distributed", distributed) or process_group is not None:
        from .distributed import distributed_duality_gap

        return distributed_duality_gap(
            logp, labels, prices, capacities, process_group=process_group, backend=backend,
            chunk_size=chunk_size,
        )
    source = checked(as_source(logp))  # a stream's blocks are checked as they are read
    N, K = source.shape
    check_shape(source, K)
    lower, upper = check_capacities(capacities, N, K)
    v = check_prices(prices, K)
    y = check_labels(labels, N, K)
    kernel = resolve_kernel(backend, source.library)
    sums = _partial_sums(source, kernel, y, v, pass_rows(kernel, source, chunk_size))
    return _certificate_from_sums(sums, v, lower, upper)


def _partial_sums(
    source: Source, kernel: Kernel, y: np.ndarray, v: np.ndarray, rows: int,
    *, ranks: int = 1,
) -> np.ndarray:
    """One pass over these rows: ``[primal, dual_rows, rounding, rounded_rows, *counts]``.

    Every entry is a sum over rows, so the sums of several processes' rows add up to those
    of all their rows together. ``rounded_rows`` counts the rows compared at float32-rounded
    prices (all of them, unless the scores are float64): it tells
    :func:`_certificate_from_sums` which prices the bound is for (the label counts add up to
    the number of rows). ``rounding`` covers the float64 sums of these rows' terms too, when
    the sums of ``ranks`` processes are added up after.
    """
    K = source.shape[1]
    rounded = compute_dtype(source.dtype) == np.float32
    unit = _ROUND32 if rounded else _ROUND64
    _, d = _offsets(v, rounded)
    primal = dual_rows = rounding = magnitude = 0.0
    chunks = inner = 0
    for start, stop, chunk in source.chunks(rows):
        with np.errstate(over="ignore"):  # prices beyond the scores' dtype: named just below
            top, best = kernel.best(chunk, d, 1.0)
        if not np.all(np.isfinite(kernel.to_numpy(top))):
            # NaN, +inf or a row of -inf would make the certificate NaN or inf: name it.
            check_chunk_scores(start, chunk, kernel, 1.0)
            spread = float(v.max()) - float(v.min())  # inf beyond float64: said as such
            raise ValueError(
                f"logp + prices overflows in rows [{start}, {stop}): the prices' spread "
                f"({spread:.3g}) is beyond the {compute_dtype(chunk.dtype)} these "
                "scores are compared in; pass float64 scores, or prices closer together"
            )
        # Re-read the winners' scores exactly, so the sum is float64 whatever the backend.
        winner = kernel.gather(chunk, best)
        price = d[kernel.to_numpy(best)]
        own = kernel.gather(chunk, y[start:stop])
        primal -= _grouped_sum(own)
        # The kernel compared scores plus prices: its error scales with both terms, not with
        # their sum, which cancels to ~0 where the prices offset the scores. Prices near
        # float64's range overflow these sums to a bound of -inf, which proves nothing.
        with np.errstate(over="ignore"):
            values = winner + price
            dual_rows -= _grouped_sum(values)
            rounding += unit * float((np.abs(winner) + np.abs(price)).sum())
            magnitude += float(np.abs(own).sum()) + float(np.abs(values).sum())
        chunks += 1
        inner = max(inner, _grouped_additions(stop - start))
    # Each term went through its chunk's sum, the sum of the chunks and that of the ranks.
    rounding += _summation_error(inner + max(chunks - 1, 0) + ranks - 1, magnitude)
    counts = np.bincount(y, minlength=K)
    rounded_rows = y.size if rounded else 0
    return np.concatenate([[primal, dual_rows, rounding, rounded_rows], counts]).astype(
        np.float64)


def _certificate_from_sums(
    sums: np.ndarray, v: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> Certificate:
    """The certificate of all the rows whose :func:`_partial_sums` add up to ``sums``."""
    primal, dual_rows, rounding, rounded_rows = (float(value) for value in sums[:4])
    counts = sums[4:]
    n_points = float(counts.sum())
    centre, d = _offsets(v, rounded_rows > 0)
    sizes = np.where(d >= -centre, lower, upper)  # minimising lower * price, upper * price
    surplus = int(sizes.sum()) - int(n_points)
    with np.errstate(over="ignore", invalid="ignore"):  # an infinite bound is handled here
        sized = sizes * d
        dual = dual_rows + centre * surplus + float(sized.sum())
        rounding += 4 * v.size * 2.0**-53 * (float(np.abs(sized).sum()) + abs(centre * surplus))
    if np.isnan(dual):  # terms of opposite infinite sign: the prices prove nothing
        dual = -np.inf
    # The rows' sums are bounded in ``rounding`` already; this covers the few operations
    # above that add them to the rest, and the gap's subtraction.
    rounding += 4 * _UNIT64 * (abs(primal) + abs(dual_rows))
    if 0 < rounded_rows < n_points:
        # Float64 rows (of other ranks) were compared at the unrounded prices: each row's
        # maximum there is within the prices' largest rounding of its maximum at ``d``.
        rounding += (n_points - rounded_rows) * float(np.abs(v - centre - d).max())
    feasible = bool(np.all((counts >= lower) & (counts <= upper)))
    return Certificate(primal, dual, primal - dual, rounding, feasible)


def _cost_difference(
    source: Source, kernel: Kernel, labels: np.ndarray, reference: np.ndarray, rows: int
) -> tuple[float, float]:
    """``cost(labels) - cost(reference)`` summed row by row in chunks of ``rows``, and a
    bound on its rounding. Two totals subtracted lose a row's loss in the totals' size
    (2**-6 vanished beside scores of -1e12: 1000 of them round to 2**-4); the differences
    are exact for float32 scores, and their sum's rounding scales with their own sizes."""
    total = magnitude = 0.0
    chunks = inner = 0
    for start, stop, chunk in source.chunks(rows):
        own = np.asarray(kernel.to_numpy(kernel.gather(chunk, labels[start:stop])), np.float64)
        best = np.asarray(kernel.to_numpy(kernel.gather(chunk, reference[start:stop])),
                          np.float64)
        differences = best - own  # a cost is minus the score
        total += _grouped_sum(differences)
        magnitude += float(np.abs(differences).sum())
        chunks += 1
        inner = max(inner, _grouped_additions(stop - start))
    # The subtractions round too (float64 scores), each by at most a unit of its result.
    rounding = _summation_error(inner + max(chunks - 1, 0), magnitude) + _UNIT64 * magnitude
    return total, rounding


def _grouped_sum(terms: np.ndarray) -> float:
    """The float64 sum of ``terms`` in groups of about ``sqrt(n)``: each term goes through at
    most :func:`_grouped_additions` additions, whatever order NumPy adds them in."""
    n = terms.size
    width = math.isqrt(n) + 1
    padded = np.zeros(-(-n // width) * width)  # adding zeros is exact
    padded[:n] = terms
    return float(padded.reshape(-1, width).sum(axis=1).sum())


def _grouped_additions(n: int) -> int:
    """The most additions a term of :func:`_grouped_sum` of n terms goes through."""
    width = math.isqrt(n) + 1
    return width - 1 + max(-(-n // width) - 1, 0)


def _summation_error(additions: int, magnitude: float) -> float:
    """Bound on the rounding of a float64 sum whose terms each go through at most
    ``additions`` additions and whose sizes add up to ``magnitude``: ``gamma(additions)``
    times it (a bound for any order of the additions)."""
    steps = max(additions, 0) * _UNIT64
    return steps / (1 - steps) * magnitude if steps < 1 else np.inf


def _offsets(v: np.ndarray, rounded: bool) -> tuple[float, np.ndarray]:
    """The prices' centre ``c`` and the offsets ``d`` the bound is computed for: its prices are
    ``c + d`` exactly. ``rounded``: ``d`` rounded to float32, so that a float32 kernel compares
    the very prices the bound is for (prices beyond float32 become infinite, as in the kernel).

    For ``rounded`` the centre itself is a float32 number (where float32 holds it), so that a
    price of exactly 0 keeps its offset ``-c`` exact: under capacity ranges every label with
    room to spare has price 0 at the optimum, and rounding it to ``+-|c| * 2**-24`` moved the
    bound by that times the label's slack (up to N per label), far beyond ``rounding``.
    """
    centre = _price_centre(v)
    if rounded:
        with np.errstate(over="ignore"):
            single = float(np.float32(centre))
        if np.isfinite(single):
            centre = single
    d = v - centre
    if rounded:
        with np.errstate(over="ignore"):
            d = d.astype(np.float32).astype(np.float64)
    return centre, d


def _price_centre(v: np.ndarray) -> float:
    """The middle of the prices' range (computed without overflow)."""
    return 0.5 * float(v.max()) + 0.5 * float(v.min())

