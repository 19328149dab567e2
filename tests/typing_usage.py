"""What a user's type checker sees of sinklabel: CI runs mypy on this file (never imported).

Each ``# type: ignore[code]`` marks a mistake mypy must catch there: with
``warn_unused_ignores`` a mistake that stops being caught fails the check.
"""

from __future__ import annotations

import numpy as np
import torch
from typing_extensions import assert_type

import sinklabel
from sinklabel import CheckReport, ExactResult, SinkhornLabeler, SinkhornResult

logp = np.log(np.random.default_rng(0).dirichlet(np.ones(4), size=100))

labels = sinklabel.assign_labels(logp, 4, lam=10.0, balance="exact", memory_limit="1GB")
result = sinklabel.sinkhorn(torch.from_numpy(logp), 4, label_weights=np.full(4, 0.25))
assert_type(result, SinkhornResult)
assert_type(result.converged, bool)
assert_type(sinklabel.check(result, logp), CheckReport)
assert_type(sinklabel.check(labels, logp).optimal, bool)
assert_type(sinklabel.solve_exact(logp, 4), ExactResult)
assert_type(sinklabel.sinkhorn_heads(logp, [2, 2], lam=5.0), list[SinkhornResult])


class TrainingLabeler(SinkhornLabeler):
    """A user's subclass keeps its own type through the chained calls."""


assert_type(TrainingLabeler(4).fit(logp), TrainingLabeler)
assert_type(TrainingLabeler(4).partial_fit(logp).set_params(lam=5.0), TrainingLabeler)

# Mistakes a type checker flags before anything runs.
sinklabel.assign_labels(logp, 4, lamb=10.0)  # type: ignore[call-arg]
sinklabel.assign_labels(logp, 4, max_iter="100")  # type: ignore[arg-type]
sinklabel.sinkhorn_heads(logp, [2, 2], balance="exact")  # type: ignore[call-arg]
sinklabel.sinkhorn(logp, 4, 25.0)  # type: ignore[call-arg]
