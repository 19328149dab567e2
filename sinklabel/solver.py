"""The backend-neutral solver: L-BFGS on the dual in the label potentials.

The potentials ``f`` (one per label) are the whole state: the plan is
``Q[i, :] = softmax(lam * S[i, :] + f) / N``. The right ``f`` maximises the concave dual

    g(f) = r . f - (1/N) sum_i logsumexp(lam * S[i, :] + f),

whose gradient ``r - t(f)`` is the gap between the target and the plan's label marginal ``t``.
Plain Sinkhorn, ``f += log r - log t``, is a diagonal step with curvature ``t``; on the peaked
scores of a trained network most rows are confidently assigned, the true curvature is orders of
magnitude smaller, and Sinkhorn crawls (thousands of passes). L-BFGS learns the curvature from
the gradients it has seen and needs tens of passes in both regimes (measurements in
``docs/convergence.md``).

One evaluation of ``g`` and its gradient is one pass over the scores (``Kernel.sweep_lse``) and
counts as one iteration. The line search needs no second pass per trial: a trial point is
accepted on the usual Wolfe tests, with Hager and Zhang's approximate Armijo test where the
objective's rounding noise would hide a real increase. Without curvature pairs (the first step,
or after a reset) the search runs along the Sinkhorn step, stretching it as far as the dual
keeps rising; if a search fails, the plain Sinkhorn step is taken, which always increases ``g``
(it is exact block ascent on the full dual). Every decision depends only on reduced K-vectors,
so all processes of a distributed solve take identical steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.linalg.blas import dtrsv

from ._warnings import warn
from .collective import LOCAL, Collective
from .kernels import Kernel
from .kernels._base import compute_dtype
from .progress import Progress
from .sources import Array, Source

#: Curvature pairs L-BFGS keeps; more gains nothing measurable on these problems.
MEMORY = 10
#: Trial points one line search may evaluate before falling back to a Sinkhorn step.
MAX_TRIALS = 20
#: Armijo (sufficient increase) and curvature constants of the Wolfe tests.
ARMIJO = 1e-4
CURVATURE = 0.9
#: Hager-Zhang's approximate Armijo test: the slope may turn to -(1 - 2 * DELTA) of its start.
DELTA = 0.1
#: Relative rounding noise of the objective: it is a mean of float32 log-sum-exps.
OBJECTIVE_NOISE = 1e-6
#: Largest rounding of ``lam * logp + f`` (natural-log units) a solve returns without a
#: PrecisionWarning: every exponential of the plan is that inexact, relatively.
PRECISION_LIMIT = 1e-3
#: A failed solve whose ``lam * logp + f`` grew past this asks ``explain_failure`` why, in
#: any dtype. Where no potentials balance the scores they passed float32's resolution (this)
#: within ten passes in every case measured, float64's (4.5e12) only after 22 or not in 100.
#: A feasible solve that fails this large costs one more read of the scores, to be sure.
UNBOUNDED_SIZE = PRECISION_LIMIT / float(np.finfo(np.float32).eps)
#: Passes without progress (neither a dual objective above the best by more than its noise
#: nor a smaller error) after which a solve the compute dtype no longer resolves stops: its
#: passes are then rounding noise. Converging solves, however imprecise, went at most 23
#: passes so (lam up to 1e12, tol down to 1e-6); rows offset by 1e5 at lam = 25 in float32
#: went hundreds, on their way to max_iter.
STALL_PASSES = 100


@dataclass(frozen=True)
class SolverOutput:
    """What the loop found: potentials, passes taken and the error after each pass."""

    potentials: np.ndarray
    n_iter: int
    converged: bool
    error: float
    error_history: np.ndarray


@dataclass(frozen=True)
class _Point:
    """The dual at one set of potentials, as one pass over the scores measured it."""

    f: np.ndarray
    mass: np.ndarray
    objective: float
    noise: float
    gradient: np.ndarray
    error: float


def normalize_potentials(f: np.ndarray, label_weights: np.ndarray) -> np.ndarray:
    """Fix the free additive constant: the label-weighted mean of the potentials is zero.

    The largest potential is subtracted first: the weighted mean of potentials that are
    nearly equal but huge (a warm start of 1e100, after a revival) rounds to a residual as
    large as 1e84, which swamped ``lam * logp`` and tied every label in every row.
    """
    shifted = f - f.max()
    return shifted - float(label_weights @ shifted)


def label_mass(
    source: Source, kernel: Kernel, f: np.ndarray, lam: float, rows: int,
    collective: Collective = LOCAL,
) -> np.ndarray:
    """The label marginal of the plan for potentials ``f``: one pass over the scores, the
    same pass the solver makes (its log-sum-exp total is fused in and costs nothing)."""
    return dual_terms(source, kernel, f, lam, rows, collective)[0]


def dual_terms(
    source: Source, kernel: Kernel, f: np.ndarray, lam: float, rows: int,
    collective: Collective = LOCAL,
) -> tuple[np.ndarray, float]:
    """The label marginal and the mean row log-sum-exp for potentials ``f``: one pass.

    The K sums, the log-sum-exp sum and the row count travel in one reduction.
    """
    k = source.shape[1]
    total = np.zeros(k + 2, dtype=np.float64)
    for start, stop, chunk in source.chunks(rows):
        mass, lse = kernel.sweep_lse(chunk, f, lam)
        total[:k] += mass
        total[k] += lse
        total[k + 1] += stop - start
    total = collective.sum(total)
    return total[:k] / total[k + 1], float(total[k] / total[k + 1])


def _label_slack(
    source: Source, kernel: Kernel, f: np.ndarray, lam: float, rows: int, collective: Collective
) -> np.ndarray:
    slack = np.full(source.shape[1], -np.inf)
    for _, _, chunk in source.chunks(rows):
        np.maximum(slack, kernel.slack(chunk, f, lam), out=slack)
    return collective.max(slack)


def _revive_empty_labels(
    source: Source, kernel: Kernel, f: np.ndarray, lam: float, rows: int, empty: np.ndarray,
    collective: Collective,
) -> np.ndarray:
    """Raise the potential of labels whose mass underflowed to exactly zero.

    Where no row gives a label measurable mass, the gradient says only "up" and any step
    method needs many passes to find how far (up to ``lam`` times the score gap). Raising its
    potential by its slack makes it tie with the favourite label of its closest row, which
    gives it measurable mass without overshooting; the ordinary steps take over from there.
    """
    slack = _label_slack(source, kernel, f, lam, rows, collective)[empty]
    if not np.all(np.isfinite(slack)):
        dead = np.flatnonzero(empty)[~np.isfinite(slack)]
        # Finite scores that lam * score takes to -inf (-3e38 in float32) are not missing:
        # the advice differs. One more pass, on the way to an error only.
        unscaled = _label_slack(source, kernel, np.zeros_like(f), 1.0, rows, collective)
        reason, advice = _dead_reason(dead, np.isfinite(unscaled[dead]), lam)
        raise _DeadLabels(
            f"labels {dead[:10].tolist()} {reason}, so no row can take them; {advice}",
            dead, reason,
        )
    f = f.copy()
    f[empty] -= slack
    return f


class _Evaluations:
    """Evaluates the dual, one pass each, and keeps the history, the progress bar and the best
    point seen (the one returned when ``max_iter`` stops the solve)."""

    def __init__(
        self, source: Source, kernel: Kernel, lam: float, rows: int, collective: Collective,
        label_weights: np.ndarray, tol: float, max_iter: int, bar: Progress,
    ):
        self.source, self.kernel, self.lam, self.rows = source, kernel, lam, rows
        self.collective, self.weights = collective, label_weights
        self.tol, self.max_iter, self.bar = tol, max_iter, bar
        self.history: list[float] = []
        self.best: _Point | None = None
        self.largest = 0.0  # the largest _size of the points evaluated
        self.largest_f = 0.0  # and their largest potential's size
        self.dtype = compute_dtype(source.dtype)
        self.smallest_mass = float(np.finfo(self.dtype).tiny)
        self.limit = potential_limit(source.dtype)
        self.top: _Point | None = None  # the point of largest dual objective
        self.progressed = 0  # the passes taken when the last one made progress

    @property
    def finished(self) -> bool:
        converged = self.best is not None and self.best.error <= self.tol
        return converged or len(self.history) >= self.max_iter or self.stalled

    @property
    def stalled(self) -> bool:
        """No progress in ``STALL_PASSES`` passes, at a best point the dtype cannot resolve."""
        return (self.best is not None and len(self.history) - self.progressed >= STALL_PASSES
                and _imprecise(_size(self.best), self.dtype))

    def __call__(self, f: np.ndarray) -> _Point:
        f = normalize_potentials(f, self.weights)
        largest = float(np.abs(f).max())
        if not largest <= self.limit:  # overflow in the kernels (float32 reached 3e38 and
            # divided by zero) where no potentials balance the scores and a step went on
            beyond = self.limit if np.isnan(largest) else largest
            self.largest, self.largest_f = max(self.largest, beyond), max(self.largest_f, beyond)
            raise _BeyondKernels
        mass, lse = dual_terms(self.source, self.kernel, f, self.lam, self.rows, self.collective)
        linear = float(self.weights @ f)
        gradient = self.weights - mass
        point = _Point(
            f=f, mass=mass, objective=linear - lse,
            noise=OBJECTIVE_NOISE * (abs(linear) + abs(lse) + 1.0),
            gradient=gradient, error=float(np.abs(gradient).sum()),
        )
        self.largest = max(self.largest, _size(point))
        self.largest_f = max(self.largest_f, float(np.abs(f).max()))
        rose = self.top is None or (
            point.objective > self.top.objective + max(point.noise, self.top.noise))
        if self.top is None or point.objective > self.top.objective:
            self.top = point
        fell = self.best is None or point.error < self.best.error
        if fell:
            self.best = point
        self._record(point.error)
        if rose or fell:
            self.progressed = len(self.history)
        return point

    def starved(self, point: _Point) -> np.ndarray:
        """Labels to revive: no mass, and a target the compute dtype can hold.

        A target below its smallest normal number (allowed down to float64's) needs
        exponentials the kernels flush to zero: its best mass is 0, within that target, and
        reviving it again and again would cost a pass and the curvature pairs each time.
        """
        return (point.mass <= 0.0) & (self.weights >= self.smallest_mass)

    def revive(self, point: _Point) -> np.ndarray:
        """Potentials with the starved labels revived; the slack pass records no new error."""
        empty = self.starved(point)
        f = _revive_empty_labels(
            self.source, self.kernel, point.f, self.lam, self.rows, empty, self.collective
        )
        self._record(self.history[-1])
        return f

    def _record(self, error: float) -> None:
        self.history.append(error)
        self.bar.update(len(self.history), error)


class _Memory:
    """The last curvature pairs (step, change of label mass) of L-BFGS and their inner
    products, for directions in the compact form of Byrd, Nocedal and Schnabel (1994).

    The two-loop recursion costs 4m vector operations of length K per direction, each a
    NumPy call; here a direction is two matrix-vector products with the pairs, stacked as
    rows of one array, and two m x m triangular solves, and a new pair costs one product.
    The pairs sit in chronological order in a buffer of twice ``size`` (moved to its front
    when full), so every product takes one contiguous slice.
    """

    def __init__(self, size: int):
        self.size = size
        self._pairs = np.empty((4 * size, 0))  # row 2i: step i, row 2i + 1: its change
        self._step_change = np.zeros((2 * size, 2 * size))  # [i, j] = step i . change j, i <= j
        self._change_change = np.zeros((2 * size, 2 * size))  # [i, j] = change i . change j
        self._first = self._stop = 0

    def clear(self) -> None:
        self._first = self._stop = 0

    def add(self, step: np.ndarray, change: np.ndarray) -> None:
        """Keep a pair unless rounding has made its curvature meaningless.

        The dual is concave, so ``step . change >= 0`` always holds in exact arithmetic.
        """
        curvature = float(step @ change)
        if not curvature > 1e-8 * float(np.linalg.norm(step) * np.linalg.norm(change)):
            return
        if self._pairs.shape[1] != step.shape[0]:
            self._pairs = np.empty((4 * self.size, step.shape[0]))
        if self._stop - self._first == self.size:
            self._first += 1
        if self._stop == 2 * self.size:
            self._move_to_front()
        first, new = self._first, self._stop
        self._pairs[2 * new] = step
        self._pairs[2 * new + 1] = change
        products = self._pairs[2 * first:2 * new + 2] @ change
        self._step_change[first:new + 1, new] = products[0::2]
        self._change_change[first:new + 1, new] = products[1::2]
        self._change_change[new, first:new + 1] = products[1::2]
        self._stop = new + 1

    def _move_to_front(self) -> None:
        first, stop, kept = self._first, self._stop, self._stop - self._first
        self._pairs[:2 * kept] = self._pairs[2 * first:2 * stop]
        for products in (self._step_change, self._change_change):
            products[:kept, :kept] = products[first:stop, first:stop]
        self._first, self._stop = 0, kept

    def direction(self, gradient: np.ndarray) -> np.ndarray | None:
        """The L-BFGS ascent direction (initial scaling by the newest pair), or None with no
        pairs yet: ``H g = c g + S w - c Y v`` with ``R v = S'g`` and
        ``R'w = D v + c (Y'Y v - Y'g)``, R the upper triangle of ``S'Y`` and D its diagonal."""
        first, stop = self._first, self._stop
        if stop == first:
            return None
        pairs = self._pairs[2 * first:2 * stop]
        products = pairs @ gradient
        upper = self._step_change[first:stop, first:stop]
        curvatures = upper.diagonal()
        scale = curvatures[-1] / self._change_change[stop - 1, stop - 1]
        v = dtrsv(upper, products[0::2])
        rhs = curvatures * v + scale * (
            self._change_change[first:stop, first:stop] @ v - products[1::2])
        coefficients = np.empty(2 * (stop - first))
        coefficients[0::2] = dtrsv(upper, rhs, trans=1)
        coefficients[1::2] = -scale * v
        return coefficients @ pairs + scale * gradient


def _sinkhorn_step(point: _Point, log_target: np.ndarray) -> np.ndarray:
    """The plain Sinkhorn update ``log r - log t``; a label with no mass here has a target
    too small to revive for (``_Evaluations.starved``) and keeps its potential."""
    step = np.zeros_like(log_target)
    held = point.mass > 0.0
    step[held] = log_target[held] - np.log(point.mass[held])
    return step


def _line_search(evaluate: _Evaluations, point: _Point, direction: np.ndarray) -> _Point | None:
    """A point along ``direction`` that satisfies the (approximate) Wolfe tests, or None.

    Step 1 is tried first; too short a step is stretched fourfold until the slope turns, then
    the bracket shrinks by safeguarded secant steps on the slope (monotone: g is concave).
    Every trial is a pass; the search stops early when a trial already meets the tolerance.
    """
    slope = float(point.gradient @ direction)
    low, high = 0.0, np.inf
    low_slope, high_slope = slope, 0.0
    low_point: _Point | None = None
    alpha = 1.0
    for _ in range(MAX_TRIALS):
        trial = evaluate(point.f + alpha * direction)
        if evaluate.finished:
            return trial
        trial_slope = float(trial.gradient @ direction)
        armijo = trial.objective >= point.objective + ARMIJO * alpha * slope
        approximate = (trial.objective >= point.objective - max(point.noise, trial.noise)
                       and trial_slope >= -(1.0 - 2.0 * DELTA) * slope)
        if not (armijo or approximate) or trial_slope < -CURVATURE * slope:
            high, high_slope = alpha, trial_slope
        elif trial_slope > CURVATURE * slope:
            low, low_slope, low_point = alpha, trial_slope, trial
        else:
            return trial
        if np.isinf(high):
            alpha *= 4.0
        else:
            share = low_slope / (low_slope - high_slope) if high_slope < 0.0 else 0.5
            alpha = low + float(np.clip(share, 0.1, 0.9)) * (high - low)
    return low_point


def solve(
    source: Source,
    kernel: Kernel,
    *,
    lam: float,
    label_weights: np.ndarray,
    tol: float,
    max_iter: int,
    init: np.ndarray | None,
    rows: int,
    progress: bool,
    collective: Collective = LOCAL,
    explain_failure: Callable[[], str | None] | None = None,
    row_tops: Callable[[], float] | None = None,
    allow_dead_labels: bool = False,
) -> SolverOutput:
    """Potentials whose plan has a label marginal within ``tol`` (L1) of the target.

    Each pass over the scores counts as one iteration. Stops at the first pass that meets
    ``tol``; at ``max_iter`` it warns and returns the best potentials seen. When the failed
    solve's potentials grew beyond ``UNBOUNDED_SIZE``, it first calls ``explain_failure``,
    which may raise the reason no potentials solve the problem, or return one it suspects
    (for the warnings).
    ``allow_dead_labels``: a label with no finite score in any row stops the solve as failed
    (after ``explain_failure``, which must then raise where such a label cannot be left
    empty) instead of raising at once: ``balance="exact"`` may leave empty a label whose
    share rounds down to 0.
    ``row_tops`` gives the largest ``|lam * row maximum|`` of this process's scores once the
    first pass has read them, for the precision warning.
    """
    f = start_potentials(source, init, label_weights)
    log_target = np.log(label_weights)
    with Progress(progress, total=max_iter, tol=tol) as bar:
        evaluate = _Evaluations(
            source, kernel, lam, rows, collective, label_weights, tol, max_iter, bar
        )
        dead = dead_reason = None
        with contextlib.suppress(_BeyondKernels):  # stopped as at max_iter; said below
            try:
                _ascend(evaluate, evaluate(f), log_target)
            except _DeadLabels as error:
                if not allow_dead_labels or explain_failure is None:
                    raise
                explain_failure()  # raises where the dead labels must take points
                dead, dead_reason = error.labels, error.reason
    # _ascend returns only once finished: short of that, a step went past the kernels
    beyond = not evaluate.finished and dead is None
    best = evaluate.best
    assert best is not None, "start_potentials admits only potentials the kernels evaluate"
    converged = best.error <= tol
    # A solve that failed may have failed for want of precision along its way, or because
    # no potentials solve it (they then grow without bound, in any dtype).
    dtype = evaluate.dtype
    size = _size(best) if converged else evaluate.largest
    suspect = None
    if not converged and size > UNBOUNDED_SIZE and explain_failure is not None and dead is None:
        suspect = explain_failure()
    # The rows' tops, of this process's rows only: the warning is about its own labels, and
    # explain_failure, which all ranks must call or none, has been decided on global sizes.
    top = row_tops() if row_tops is not None else 0.0
    size = max(size, top + (float(np.abs(best.f).max()) if converged else evaluate.largest_f))
    if not converged:
        if dead is not None:
            advice = (f"labels {dead[:10].tolist()} {dead_reason}, so no potentials give "
                      "them their share (exact sizes may still leave them empty)")
        elif suspect:
            advice = "its potentials grew without bound, perhaps because " + suspect
        elif _imprecise(size, dtype):
            advice = f"{dtype} stopped resolving the plan on its way (see the PrecisionWarning)"
        else:
            advice = "raise max_iter or tol"
        if beyond or dead is not None or evaluate.stalled:
            head = (f"Sinkhorn stopped short of tol={tol:g} after {len(evaluate.history)} of "
                    f"max_iter={max_iter} iterations")
            if evaluate.stalled:
                head += f", the last {STALL_PASSES} without progress"
            if beyond:
                head += f", its potentials past the {evaluate.limit:.3g} that {dtype} computes with"
        else:
            head = f"Sinkhorn did not reach tol={tol:g} in max_iter={max_iter} iterations"
        warn(f"{head} (label-marginal error {best.error:.3g}); {advice}", ConvergenceWarning)
    if _imprecise(size, dtype):
        returned = max(_size(best), top + float(np.abs(best.f).max()))
        _warn_imprecise(size, dtype, returned_resolved=not _imprecise(returned, dtype),
                        suspect=suspect)
    return SolverOutput(
        best.f, len(evaluate.history), converged, best.error, np.asarray(evaluate.history)
    )


def _ascend(evaluate: _Evaluations, point: _Point, log_target: np.ndarray) -> None:
    """The L-BFGS iterations from ``point`` until ``evaluate`` is finished."""
    memory = _Memory(MEMORY)
    while not evaluate.finished:
        if np.any(evaluate.starved(point)):
            memory.clear()
            f = evaluate.revive(point)
            if not evaluate.finished:
                point = evaluate(f)
            continue
        direction = memory.direction(point.gradient)
        if direction is None or float(point.gradient @ direction) <= 0.0:
            memory.clear()
            direction = _sinkhorn_step(point, log_target)
        found = _line_search(evaluate, point, direction)
        if found is None:
            memory.clear()
            if evaluate.finished:
                return
            found = evaluate(point.f + _sinkhorn_step(point, log_target))
        memory.add(found.f - point.f, found.mass - point.mass)
        point = found


def _dead_reason(dead: np.ndarray, finite: np.ndarray, lam: float) -> tuple[str, str]:
    """Why the ``dead`` labels take no mass, and what to do: no finite score at all, or
    (``finite``) finite scores that ``lam`` times overflows to -inf."""
    overflow = (f"finite scores, but lam={lam:g} times every one of them overflows to -inf",
                "lower lam, or clip the scores from below (at -1e30, say)")
    missing = ("no finite score in any row", "drop those labels from the scores")
    if finite.all():
        return "have " + overflow[0], overflow[1]
    if not finite.any():
        return "have " + missing[0], missing[1]
    return (f"have {missing[0]} (labels {dead[~finite][:10].tolist()}) or {overflow[0]} "
            f"(labels {dead[finite][:10].tolist()})", f"{missing[1]}, or {overflow[1]}")


class _DeadLabels(ValueError):
    """Labels with no finite score in any row, or none that lam times keeps finite: no
    potentials give them mass. ``reason`` says which, for the warnings."""

    def __init__(self, message: str, labels: np.ndarray, reason: str):
        super().__init__(message)
        self.labels = labels
        self.reason = reason


class _BeyondKernels(Exception):
    """A step asked for potentials beyond what the kernels compute with
    (:func:`potential_limit`): the solve stops there, as at ``max_iter``."""


def start_potentials(
    source: Source, init: np.ndarray | None, label_weights: np.ndarray
) -> np.ndarray:
    """The first potentials: zero, or ``init`` if the kernels can compute with it.

    Beyond the square root of the compute dtype's largest number, ``lam * logp + init``,
    its differences across a row and its sums over rows overflow (float32 turned 1e300
    into inf and the plan into NaN), while a solve's potentials never come near it.
    """
    if init is None:
        return np.zeros(source.shape[1])
    raw = np.array(init, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # a spread beyond float64: said below
        f = normalize_potentials(raw, label_weights)
    dtype = compute_dtype(source.dtype)
    limit = potential_limit(dtype)
    largest = float(np.abs(f).max())
    if not np.isfinite(largest):
        largest = float(np.abs(raw).max())
    if not largest <= limit:
        raise ValueError(
            f"init reaches {largest:.3g} once its label_weights-weighted mean is subtracted, "
            f"beyond the {limit:.3g} that this solve's {dtype} arithmetic takes: pass smaller "
            "potentials (a solve's own stay far below that unless it warned of precision), "
            "or None"
        )
    return f


def potential_limit(dtype: Any) -> float:
    """The largest potential the kernels compute with for scores of ``dtype``: the square
    root of the compute dtype's largest number (see :func:`start_potentials`)."""
    return float(np.sqrt(np.finfo(compute_dtype(dtype)).max))


def _size(point: _Point) -> float:
    """How large ``z = lam * logp + f`` gets in the kernels at ``point``.

    At the rows' tops z is about the mean log-sum-exp (the objective's negative: the
    potentials' weighted mean is 0). The potentials can be far larger, when a label's scores
    sit far below the rest (a finite mask value such as -1e9): there ``lam * logp`` and
    ``f`` cancel, and each is rounded on its own. Both are known after the pass.
    """
    return max(abs(point.objective), float(np.abs(point.f).max()))


def _imprecise(size: float, dtype: np.dtype) -> bool:
    """Whether the kernels round a ``z`` of ``size`` by more than ``PRECISION_LIMIT``."""
    return size * float(np.finfo(dtype).eps) > PRECISION_LIMIT


def _warn_imprecise(
    size: float, dtype: np.dtype, returned_resolved: bool, suspect: str | None
) -> None:
    """The plan, its error and its labels are only as exact as the kernels' z, of ``size``.

    ``returned_resolved``: only a failed solve's trial points were that large, not the
    potentials it returns; they also grow so when no potentials balance the scores, which
    ``suspect``, when given, says how -inf scores may have done.
    """
    remedies = ["subtract each row's maximum from logp",
                "mark impossible labels with -inf rather than a large finite score", "lower lam"]
    if dtype != np.float64:
        remedies.append("pass float64 scores")
    advice = ", ".join(remedies[:-1]) + ", or " + remedies[-1]
    rounding = f"which {dtype} rounds to about {size * np.finfo(dtype).eps:.2g}"
    unbalanced = suspect or ("no potentials balance these scores (-inf masks that leave a group "
                             "of labels fewer rows than their share)")
    if returned_resolved:
        message = (
            f"the failed solve's trial potentials took lam * logp + potentials to {size:.3g}, "
            f"{rounding}: it may have failed for want of precision ({advice}), or because "
            f"{unbalanced}. The potentials it returns, the best it saw, are resolved"
        )
    elif suspect:
        message = (f"lam * logp + potentials reach {size:.3g}, {rounding}: the plan, its error "
                   f"and its labels are only that exact. They may have grown so for want of "
                   f"precision ({advice}), or because {suspect}")
    else:
        message = (f"lam * logp + potentials reach {size:.3g}, {rounding}: the plan, its error "
                   f"and its labels are only that exact; {advice}")
    warn(message, PrecisionWarning)


def assign(
    source: Source, kernel: Kernel, f: np.ndarray, lam: float, rows: int,
    check: Callable[[int, Array, Array], None] | None = None,
) -> Array:
    """Hard labels argmax_y (lam * S[i, y] + f[y]) in the source's array library.

    Each chunk's labels go straight into one preallocated vector: at N = 10 million the
    labels are 80 MB, and joining per-chunk parts would hold them twice. ``check(start,
    chunk, top)`` sees each chunk's row maxima, for scores not checked before this pass.
    """
    labels = None
    for start, stop, chunk in source.chunks(rows):
        if labels is None:
            labels = kernel.empty_labels(source.shape[0], chunk)
        top, best = kernel.best(chunk, f, lam)
        if check is not None:
            check(start, chunk, top)
        labels[start:stop] = best
    return kernel.empty_labels(0, None) if labels is None else labels


class ConvergenceWarning(UserWarning):
    """Sinkhorn stopped at max_iter before reaching its tolerance."""


class PrecisionWarning(UserWarning):
    """The scores or potentials are too large for the compute dtype to resolve the plan."""
