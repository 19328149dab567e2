"""The immutable outcome of a solve, and what can be done with its potentials afterwards."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Array = Any


@dataclass(frozen=True, eq=False)  # compared by identity: `==` on arrays has no one answer
class SinkhornResult:
    """Labels and the state that produced them.

    Attributes
    ----------
    labels : array of shape (N,), int64
        Hard labels, in the input's array library and on its device.
    potentials : ndarray of shape (K,), float64
        Label log-potentials ``f``: the plan is ``Q[i] = softmax(lam * logp[i] + f) / N``.
        Defined up to an additive constant, fixed by ``label_weights @ potentials == 0``.
        ``potentials / lam`` are label prices in the units of ``logp``.
    label_counts : ndarray of shape (K,), int64
        How many rows each label received.
    n_iter : int
        Sinkhorn iterations (passes over the scores) taken.
    converged : bool
        Whether the label-marginal error reached ``tol``.
    error : float
        L1 distance between the plan's label marginal and ``label_weights``, at the returned
        potentials: the last pass's when converged; at ``max_iter`` the solver returns the
        best potentials it met, so this is the smallest error in ``error_history``.
    error_history : ndarray of shape (n_iter,)
        The error after each iteration.
    lam : float
        The inverse temperature used.
    label_weights : ndarray of shape (K,)
        The target label proportions (normalised).
    backend : str
        The backend that computed it.
    balance : str or None
        How the labels were made: None for the argmax under the potentials (sizes close to
        ``label_weights``), "exact" for the optimum of the exact problem with sizes
        ``floor`` or ``ceil`` of ``N * label_weights`` (see :func:`sinklabel.solve_exact`).
    certificate : Certificate or None
        With ``balance="exact"``: the labels' cost, the dual bound proved by ``prices`` and
        their gap (0 up to rounding: the labels are optimal).
    prices : ndarray of shape (K,) or None
        With ``balance="exact"``: the exact problem's label prices (compare ``potentials / lam``).
    """

    labels: Array
    potentials: np.ndarray
    label_counts: np.ndarray
    n_iter: int
    converged: bool
    error: float
    error_history: np.ndarray = field(repr=False)
    lam: float
    label_weights: np.ndarray = field(repr=False)
    backend: str
    balance: str | None = None
    certificate: Any = field(default=None, repr=False)
    prices: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        """The state arrays are read-only, so no caller can change what ``predict`` uses
        (the labels stay the caller's to edit)."""
        for name in ("potentials", "label_counts", "error_history", "label_weights", "prices"):
            value = getattr(self, name)
            if isinstance(value, np.ndarray):
                value.flags.writeable = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled and copied results keep their state arrays read-only (pickle restores
        arrays writeable and does not call ``__post_init__``)."""
        self.__dict__.update(state)
        self.__post_init__()

    @property
    def count_error(self) -> float:
        """L1 distance between the hard labels' proportions and ``label_weights``.

        What hard-label users see: ``count_error * N / 2`` rows sit in labels beyond their
        target size. Near the optimum it is set by rows the plan splits between labels, not
        by ``tol`` (docs/convergence.md).
        """
        counts = self.label_counts
        return float(np.abs(counts / counts.sum() - self.label_weights).sum())

    def soft_assignments(self, logp: Array, *, chunk_size: int | None = None,
                         memory_limit: int | str | None = None) -> Array:
        """Rows of the transport plan, ``softmax(lam * logp[i] + potentials)``, for any rows.

        Each row sums to one; scaled by ``1 / N`` they are the plan of the solved problem.
        Works on the solved rows or on new ones, in the input's array library, ``chunk_size``
        rows at a time (default: the backend's, within ``memory_limit`` as in ``sinkhorn``;
        the N x K result itself is not counted).
        """
        from .api import apply_potentials

        return apply_potentials(logp, self, "soft", chunk_size, memory_limit)

    def predict(self, logp: Array, *, chunk_size: int | None = None,
                memory_limit: int | str | None = None) -> Array:
        """Label new rows from the saved potentials, with no further Sinkhorn work.

        Each row takes ``argmax_y lam * logp[i, y] + potentials[y]``, ``chunk_size`` rows at a
        time (default: the backend's); int64 labels in the input's array library. Scores
        in memory are read once: NaN, +inf and rows of -inf are found from each row's best.
        A float64 result whose ``lam`` or potentials float32 cannot hold is refused for
        float32, float16 and bfloat16 scores (and in :meth:`soft_assignments`).
        """
        from .api import apply_potentials

        return apply_potentials(logp, self, "labels", chunk_size, memory_limit)
