"""sinklabel: balanced label assignment by optimal transport (Sinkhorn self-labelling).

    >>> import numpy as np, sinklabel
    >>> logp = np.log(np.random.default_rng(0).dirichlet(np.ones(4), size=100))
    >>> labels = sinklabel.assign_labels(logp, 4)
    >>> labels.shape
    (100,)
"""

from .api import assign_labels, sinkhorn
from .certificate import Certificate, duality_gap
from .check import CheckReport, check
from .distributed import RankFailedError
from .estimator import NotFittedError, SinkhornLabeler
from .exact import ExactResult, solve_exact
from .heads import sinkhorn_heads
from .kernels import available_backends
from .result import SinkhornResult
from .solver import ConvergenceWarning, PrecisionWarning

__version__ = "0.1.0"  # the only place the version is written: pyproject.toml reads it

__all__ = [
    "Certificate",
    "CheckReport",
    "ConvergenceWarning",
    "ExactResult",
    "NotFittedError",
    "PrecisionWarning",
    "RankFailedError",
    "SinkhornLabeler",
    "SinkhornResult",
    "assign_labels",
    "available_backends",
    "check",
    "duality_gap",
    "sinkhorn",
    "sinkhorn_heads",
    "solve_exact",
]
