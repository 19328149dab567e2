"""The reference method: eq. (6) handed to SciPy's HiGHS as a sparse linear program.

Variables are the finite entries of the plan (a point cannot take a label whose score is
-inf). The constraint matrix is totally unimodular, so the simplex vertex HiGHS returns is
integral: every point's row holds a single one. Slow: 40,000 variables (N=2,000, K=20)
took 1.5-4.5 minutes on a 2-core VM, so it serves as the tests' oracle on small problems.

HiGHS's tolerances are absolute (1e-7 by default), so the costs are posed at unit scale: each
row shifted to its best score (every labelling's cost moves by the same amount) and all of
them divided by the largest remaining cost (which divides the prices by it too); the
tolerances are HiGHS's smallest, 1e-10, so score differences down to about 1e-9 of the
largest one still decide the optimum.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from ._transport import INFEASIBLE, InfeasibleError

TOLERANCES = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}


def solve_highs(
    S: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Optimal labels and label prices ``v`` (dual variables of the label constraints)."""
    N, K = S.shape
    rows, cols = np.nonzero(np.isfinite(S))
    n_vars = rows.size
    values = S[rows, cols].astype(np.float64)
    size = float(np.abs(values).max()) or 1.0  # divided first, the shift cannot overflow
    cost = (np.max(S, axis=1).astype(np.float64) / size)[rows] - values / size
    spread = float(cost.max()) or 1.0
    cost /= spread
    scale = size * spread
    ones = np.ones(n_vars)
    var = np.arange(n_vars)
    per_point = sparse.csr_matrix((ones, (rows, var)), shape=(N, n_vars))
    per_label = sparse.csr_matrix((ones, (cols, var)), shape=(K, n_vars))
    fixed = bool(np.all(lower == upper))
    if fixed:
        a_eq = sparse.vstack([per_point, per_label]).tocsr()
        b_eq = np.concatenate([np.ones(N), upper.astype(np.float64)])
        a_ub = b_ub = None
    else:
        a_eq, b_eq = per_point, np.ones(N)
        a_ub = sparse.vstack([per_label, -per_label]).tocsr()
        b_ub = np.concatenate([upper, -lower]).astype(np.float64)
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=(0, None),
                  method="highs", options=TOLERANCES)
    if res.status == 2:
        raise InfeasibleError(INFEASIBLE)
    if res.status != 0:
        raise RuntimeError(f"HiGHS failed: {res.message}")
    # The largest entry of each point's row (exactly one entry is 1 at a vertex).
    order = np.lexsort((-res.x, rows))
    first = np.ones(n_vars, dtype=bool)
    first[1:] = rows[order][1:] != rows[order][:-1]
    labels = np.empty(N, np.int64)
    labels[rows[order][first]] = cols[order][first]
    if fixed:
        prices = np.asarray(res.eqlin.marginals[N:], dtype=np.float64)
    else:
        marg = np.asarray(res.ineqlin.marginals, dtype=np.float64)
        prices = marg[:K] - marg[K:]
    return labels, scale * prices
