"""A scikit-learn-style estimator around the solver, for training loops that relabel often."""

from __future__ import annotations

import copy
import inspect
from os import PathLike
from typing import Any

from ._typing import Self
from ._validation import check_flag, check_positive
from .api import DEFAULT_LAM, DEFAULT_MAX_ITER, DEFAULT_TOL, sinkhorn
from .result import SinkhornResult
from .sources import Array, as_source


class SinkhornLabeler:
    """Balanced labelling by optimal transport, with warm starts between calls.

    Parameters
    ----------
    n_labels : int, default=None
        K; taken from ``logp.shape[1]`` on the first fit when None.
    lam, label_weights, tol, max_iter, init, chunk_size, memory_limit, backend, progress, cache
        As in :func:`sinklabel.sinkhorn`. ``cache`` lives for one fit: the scores change
        between fits in training.
    balance : {None, "exact"}, default=None
        As in :func:`sinklabel.sinkhorn`: "exact" gives every fit's ``labels_`` the exact
        sizes (the paper's equal-partition constraint), certified optimal; ``partial_fit``
        still warm-starts from the Sinkhorn potentials.
    process_group, distributed
        As in :func:`sinklabel.sinkhorn`: fit this rank's rows jointly with the other ranks'.

    Attributes
    ----------
    result_ : SinkhornResult
        The last solve.
    labels_ : array of shape (N,)
        Labels of the last fitted scores.
    potentials_ : ndarray of shape (K,)
        Label potentials of the last solve; ``partial_fit`` starts from them (scaled to a
        changed ``lam``).
    n_iter_ : int
        Iterations of the last solve.
    converged_ : bool
        Whether the last solve reached ``tol``.
    """

    def __init__(
        self,
        n_labels: int | None = None,
        *,
        lam: float = DEFAULT_LAM,
        label_weights: Array | None = None,
        tol: float = DEFAULT_TOL,
        max_iter: int = DEFAULT_MAX_ITER,
        init: Array | None = None,
        chunk_size: int | None = None,
        memory_limit: int | str | None = None,
        backend: str = "auto",
        progress: bool = False,
        process_group: Any = None,
        distributed: bool = False,
        cache: bool = False,
        balance: str | None = None,
    ) -> None:
        self.n_labels = n_labels
        self.lam = lam
        self.label_weights = label_weights
        self.tol = tol
        self.max_iter = max_iter
        self.init = init
        self.chunk_size = chunk_size
        self.memory_limit = memory_limit
        self.backend = backend
        self.progress = progress
        self.process_group = process_group
        self.distributed = distributed
        self.cache = cache
        self.balance = balance

    def __repr__(self) -> str:
        defaults = inspect.signature(SinkhornLabeler.__init__).parameters
        changed = [
            f"{name}={value!r}" for name, value in self.get_params().items()
            if value is not defaults[name].default
            and not (isinstance(value, (str, float, int)) and value == defaults[name].default)
        ]
        return f"SinkhornLabeler({', '.join(changed)})"

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters, as scikit-learn's ``clone`` expects."""
        names = ("n_labels", "lam", "label_weights", "tol", "max_iter", "init", "chunk_size",
                 "memory_limit", "backend", "progress", "process_group", "distributed", "cache",
                 "balance")
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params: Any) -> Self:
        """Set constructor parameters by name, as scikit-learn's ``clone`` and grid searches
        do; an unknown name is refused rather than stored."""
        for name, value in params.items():
            if name not in self.get_params():
                raise ValueError(f"unknown parameter {name!r} for SinkhornLabeler")
            setattr(self, name, value)
        return self

    def __sklearn_clone__(self) -> Self:
        """An unfitted copy for scikit-learn's ``clone``: the parameters deep-copied as it
        copies them, except ``process_group``, a handle to the running job that cannot be
        copied (torch refuses) and that the copy must share."""
        params = self.get_params()
        group = params.pop("process_group")
        return type(self)(**copy.deepcopy(params), process_group=group)

    def __sklearn_is_fitted__(self) -> bool:
        """For scikit-learn's ``check_is_fitted``."""
        return hasattr(self, "result_")

    def __sklearn_tags__(self) -> Any:
        """What scikit-learn (1.6 and later) asks of an estimator that does not inherit its
        ``BaseEstimator``: a clusterer, fitted without targets. Only scikit-learn calls it."""
        from sklearn.utils import Tags, TargetTags

        return Tags(estimator_type="clusterer", target_tags=TargetTags(required=False))

    def fit(self, logp: Array, y: None = None) -> Self:
        """Solve from ``init`` (a cold start by default)."""
        return self._fit(logp)

    def partial_fit(self, logp: Array, y: None = None) -> Self:
        """Solve again, starting from the previous solve's potentials (as in training).

        A ``lam`` changed since (``set_params``, an annealing schedule) scales them by the
        new ``lam`` over the old: ``potentials / lam`` are label prices, which change little
        between fits (on peaked scores 6-11 passes instead of 17-59 where lam moved between
        10 and 100; ``docs/convergence.md``).
        """
        return self._fit(logp, continuing=hasattr(self, "result_"))

    def fit_predict(self, logp: Array, y: None = None) -> Array:
        """Fit and return the labels of ``logp``."""
        return self.fit(logp).labels_

    def predict(self, logp: Array) -> Array:
        """Label rows with the fitted potentials, no further Sinkhorn iterations."""
        return self._fitted().predict(logp, chunk_size=self.chunk_size,
                                      memory_limit=self.memory_limit)

    def soft_assignments(self, logp: Array) -> Array:
        """Soft assignments of rows under the fitted potentials (rows sum to one)."""
        return self._fitted().soft_assignments(logp, chunk_size=self.chunk_size,
                                               memory_limit=self.memory_limit)

    def _fit(self, logp: Array, continuing: bool = False) -> Self:
        """Solve from ``init``, or from the last potentials when ``continuing``."""
        try:
            n_labels = self._labels_for(logp, continuing)
            init = self._warm_start() if continuing else self.init
        except Exception as error:  # a path that cannot be opened, too
            if check_flag("distributed", self.distributed) or self.process_group is not None:
                from .distributed import fail_with_peers

                fail_with_peers(error, self.process_group)  # the other ranks stop too
            raise
        result = sinkhorn(
            logp, n_labels, lam=self.lam, label_weights=self.label_weights, tol=self.tol,
            max_iter=self.max_iter, init=init, chunk_size=self.chunk_size,
            memory_limit=self.memory_limit, backend=self.backend, progress=self.progress,
            process_group=self.process_group, distributed=self.distributed, cache=self.cache,
            balance=self.balance,
        )
        self.result_: SinkhornResult = result
        self.labels_ = result.labels
        self.potentials_ = result.potentials
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        return self

    def _labels_for(self, logp: Array, continuing: bool) -> int:
        """K for this fit: ``n_labels``, else logp's columns; a continued fit keeps its K."""
        if self.n_labels is None:
            n_labels = _n_columns(logp)
        else:  # checked here, where a bad one would otherwise read as a change of K
            n_labels = check_positive("n_labels", self.n_labels, integer=True)
        if continuing and n_labels != self.potentials_.shape[0]:
            given = "n_labels is" if self.n_labels is not None else "logp has"
            raise ValueError(
                f"partial_fit continues the previous fit, which had {self.potentials_.shape[0]} "
                f"labels, but {given} {n_labels}: call fit to start over"
            )
        return n_labels

    def _warm_start(self) -> Array:
        """The last potentials at this fit's ``lam``: the same label prices."""
        lam = check_positive("lam", self.lam)
        return self.potentials_ * (float(lam) / self.result_.lam)

    def _fitted(self) -> SinkhornResult:
        if not self.__sklearn_is_fitted__():
            raise NotFittedError("this SinkhornLabeler is not fitted yet: call fit first")
        return self.result_


class NotFittedError(ValueError, AttributeError):
    """A :class:`SinkhornLabeler` asked to ``predict`` or give ``soft_assignments`` before
    any ``fit``. A ValueError and an AttributeError, as scikit-learn's own ``NotFittedError``,
    so that code written for its estimators catches it."""


def _n_columns(logp: Array) -> int:
    """K of scores in any form :func:`sinklabel.sinkhorn` takes: a path or anything without a
    ``shape`` (nested lists) is read as it would read it."""
    shape = getattr(logp, "shape", None)
    if shape is None or isinstance(logp, (str, PathLike)):
        shape = as_source(logp).shape
    if len(shape) != 2:
        raise ValueError(f"logp must be 2-D (N, K) to infer n_labels, got shape {tuple(shape)}")
    return int(shape[1])
