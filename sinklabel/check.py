"""How good is a labelling? Its cost against the exact optimum of eq. (6), and its sizes.

:func:`check` takes labels (or a Sinkhorn / exact result) and the scores, and reports the
labelling's cost, the optimum (solved exactly when affordable, otherwise a certified lower
bound from the result's prices), the relative gap, agreement with the optimal labels and
label-size statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._arrays import host_array, to_host
from ._budget import pass_rows
from ._capacities import check_capacities
from ._compile import eager_in_torch_compile
from ._validation import check_flag, check_labels, check_prices, check_shape
from .certificate import (
    Certificate,
    _cost_difference,
    duality_gap,
)
from .exact import ExactResult, solve_exact
from .kernels import resolve_kernel
from .result import SinkhornResult
from .sources import Array, as_source, checked

#: Largest N * K that ``check`` solves exactly by default (about a minute on 2 cores).
EXACT_LIMIT = 10**9


@dataclass(frozen=True, eq=False)  # compared by identity: `==` on arrays has no one answer
class CheckReport:
    """A labelling measured against the exact problem.

    Attributes
    ----------
    objective : float
        The labelling's cost ``sum_i -logp[i, labels[i]]``.
    optimum : float or None
        The exact optimum, when it was solved.
    bound : float
        A certified lower bound on the optimum (the optimum itself when solved).
    gap : float
        ``objective - bound``: at most this much is lost against the optimum (when the
        sizes are within capacity; a labelling that breaks them may even beat the optimum).
        When the optimum was solved, summed row by row against its labels, so that a loss
        small beside the scores' size is not lost in two large totals.
    relative_gap : float
        ``gap / |bound|``: relative to the optimum (or its certified bound), where
        :attr:`Certificate.relative_gap` divides by the labelling's own cost.
    agreement : float or None
        Fraction of points labelled as in the exact solution (None when not solved). Ties in
        the scores can make two optimal labellings disagree.
    feasible : bool
        Whether every label's size is within ``[lower, upper]``.
    label_counts, lower, upper : ndarray of shape (K,)
        The sizes, and the capacities they are measured against.
    certificate : Certificate
        The one-pass certificate of the labelling, at the optimum's prices when solved
        (otherwise at the result's prices, or zero prices for bare labels).
    cost_rounding : float or None
        Bound on the float64 rounding of ``gap`` when the optimum was solved (None when
        not): the gap is then the sum of the rows' cost differences to the optimal labels.
    """

    objective: float
    optimum: float | None
    bound: float
    gap: float
    relative_gap: float
    agreement: float | None
    feasible: bool
    label_counts: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    certificate: Certificate
    cost_rounding: float | None

    @property
    def misplaced(self) -> int:
        """Points that would have to move for the sizes to meet the capacities."""
        over = np.maximum(self.label_counts - self.upper, 0).sum()
        under = np.maximum(self.lower - self.label_counts, 0).sum()
        return int(max(over, under))

    @property
    def optimal(self) -> bool:
        """Feasible and within rounding of the optimum: of the exact optimum when it was
        solved, else of the certified bound.

        A solved optimum is exact, and the gap to it is the sum of the rows' cost
        differences to its labels, so only that sum's float64 rounding (``cost_rounding``,
        which scales with the differences, not with the scores: 0 for the optimal labels
        themselves) may hide a loss. The certificate's rounding bounds the pass's float32
        comparisons instead: it grows with N and with the scores' size, and would let a
        measurably worse labelling pass (and the verdict change when a constant is added to
        every score).
        """
        if not self.feasible:
            return False
        rounding = self.cost_rounding  # set with the optimum
        if rounding is None:
            rounding = self.certificate.rounding
        return self.gap <= rounding < np.inf

    def __str__(self) -> str:
        counts = self.label_counts
        n, k = int(counts.sum()), counts.size
        target = (f"{self.lower[0]}" if np.all(self.lower == self.upper) and np.all(
            self.lower == self.lower[0]) else f"{self.lower.min()}..{self.upper.max()}")
        reference = (f"optimum   {self.optimum:.10g} (exact)" if self.optimum is not None
                     else f"bound     {self.bound:.10g} (certified lower bound on the optimum)")
        lines = [
            f"labelling of N={n} points over K={k} labels",
            f"cost      {self.objective:.10g}  (sum of -logp at the labels)",
            reference,
            f"gap       {self.gap:.4g}  (relative {self.relative_gap:.3g})"
            + ("  -> optimal" if self.optimal else ""),
        ]
        if self.agreement is not None:
            lines.append(f"agreement {self.agreement:.2%} of points labelled as the optimum")
        lines.append(
            f"sizes     min {counts.min()}, max {counts.max()}, std {counts.std():.3g}; "
            f"target {target}"
        )
        if not self.feasible:
            bad = int(np.count_nonzero((counts < self.lower) | (counts > self.upper)))
            lines.append(f"          {bad} labels outside capacity; {self.misplaced} points "
                         "must move (the gap can then be negative)")
        return "\n".join(lines)


@eager_in_torch_compile
def check(
    result_or_labels: SinkhornResult | ExactResult | Array,
    logp: Array,
    *,
    capacities: Any = None,
    exact: bool | None = None,
    prices: Array | None = None,
    backend: str = "auto",
    chunk_size: int | None = None,
) -> CheckReport:
    """Measure a labelling against the exact optimum of eq. (6).

    Parameters
    ----------
    result_or_labels : SinkhornResult, ExactResult or array of shape (N,)
        What to check. A result also provides prices (``potentials / lam``) for the bound.
    logp : array of shape (N, K)
        The scores the labels were made from.
    capacities : None, array of shape (K,), or (lower, upper), default=None
        Sizes to measure against (default: floor or ceil of N/K; for a Sinkhorn result,
        floor or ceil of ``N * label_weights``; for an exact result, the capacities it was
        solved for).
    exact : bool, default=None
        Solve the exact problem (for the optimum and agreement). None: when N * K is at most
        1e9; otherwise only the certified bound from the result's prices.
    prices : array of shape (K,), default=None
        Label prices for the bound, in the units of ``logp`` (e.g. ``result.prices`` saved
        from an earlier run), in place of the result's. Without them, bare labels are
        bounded with zero prices, which is valid but weak.
    backend, chunk_size
        As in :func:`sinklabel.sinkhorn`.

    Returns
    -------
    CheckReport
    """
    source = checked(as_source(logp))  # one checking layer for both readers below
    N, K = source.shape
    check_shape(source, K)  # empty or non-float scores named before the labels they decide
    labels, result_prices = _labels_and_prices(result_or_labels, K)
    labels = check_labels(labels, N, K)  # before the exact solve, which may take minutes
    prices = result_prices if prices is None else check_prices(prices, K)
    if capacities is None and isinstance(result_or_labels, SinkhornResult):
        from ._capacities import balanced_range

        capacities = balanced_range(N, result_or_labels.label_weights)
    elif capacities is None and isinstance(result_or_labels, ExactResult):
        capacities = (result_or_labels.lower, result_or_labels.upper)
    lower, upper = check_capacities(capacities, N, K)
    exact = N * K <= EXACT_LIMIT if exact is None else check_flag("exact", exact)
    kernel = resolve_kernel(backend, source.library)
    rows = pass_rows(kernel, source, chunk_size)  # both costs summed in these chunks
    optimum = agreement = cost_rounding = None
    if exact:
        solved = solve_exact(source, K, capacities=(lower, upper), prices=prices,
                             backend=backend, chunk_size=rows)
        prices = solved.prices
        optimum = solved.objective
        optimal_labels = to_host(solved.labels)
        agreement = float(np.mean(optimal_labels == labels))
    certificate = duality_gap(source, labels, np.zeros(K) if prices is None else prices,
                              (lower, upper), backend=backend, chunk_size=rows)
    bound = optimum if optimum is not None else certificate.dual
    if optimum is not None:
        gap, cost_rounding = _cost_difference(source, kernel, labels, optimal_labels, rows)
    else:
        gap = certificate.primal - bound
    return CheckReport(
        objective=certificate.primal,
        optimum=optimum,
        bound=bound,
        gap=gap,
        relative_gap=gap / abs(bound) if bound else gap,
        agreement=agreement,
        feasible=certificate.feasible,
        label_counts=np.bincount(labels, minlength=K),
        lower=lower,
        upper=upper,
        certificate=certificate,
        cost_rounding=cost_rounding,
    )


def result_prices(result: SinkhornResult | ExactResult) -> np.ndarray:
    """A result's label prices in the units of the scores: the exact problem's when it was
    solved (``balance="exact"``, ``solve_exact``), else ``potentials / lam``."""
    if result.prices is not None:
        return result.prices
    return result.potentials / result.lam


def _labels_and_prices(what: Any, n_labels: int) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(what, (SinkhornResult, ExactResult)):
        prices = result_prices(what)
        if prices.shape != (n_labels,):
            raise ValueError(
                f"the result was solved for {prices.shape[0]} labels, but logp has "
                f"{n_labels} columns: check it against the scores it was solved from"
            )
        return to_host(what.labels), prices
    labels = host_array("labels", what)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(
            f"expected a result or a 1-D integer label array, got {type(what).__name__} "
            f"with shape {labels.shape} and dtype {labels.dtype}"
        )
    return labels, None
