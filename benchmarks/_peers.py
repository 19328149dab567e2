"""The solvers a user would pick instead of sinklabel, run on the same scores.

- ``sela_reference``: the original self-labelling implementation as its paper and code
  describe it, written here from that description: ``P = exp(lam * logp)`` (softmax outputs
  raised to the power lam) precomputed once, then two matrix-vector products per iteration,
  in float32 or float64, no log domain. Its native stopping rule (summed relative change of
  the data scaling below 0.1, checked every 10 iterations) is tracked and reported; the loop
  itself stops on the same L1 label-marginal tolerance as sinklabel, which it gets for free
  (the first product of an iteration is the previous plan's label marginal).
- ``pot_solve``: POT's ``ot.sinkhorn`` / ``ot.sinkhorn_log`` with the cost ``-logp`` and
  ``reg = 1 / lam``, on whatever backend the array belongs to (NumPy, torch CPU or CUDA).
  POT stops on the L2 norm of the label-marginal error, checked every 10 iterations, so it
  is given ``stopThr=tol`` and its L1 error is measured on the plan it returns.

Array-library neutral: NumPy, torch and CuPy all provide what is used here.
"""

from __future__ import annotations

import warnings
from typing import Any

from ._outcome import Outcome

#: The original implementation's stopping threshold on sum_i |c_i / c_new_i - 1|.
SELA_RULE = 0.1
SELA_CHECK_EVERY = 10


def library_of(x: Any) -> Any:
    """The array module (numpy, torch or cupy) that ``x`` belongs to."""
    import importlib

    return importlib.import_module(type(x).__module__.split(".", 1)[0])


def full(x: Any, length: int, value: float) -> Any:
    """A vector of ``value`` with ``x``'s library, dtype and device."""
    xp = library_of(x)
    device = {"device": x.device} if xp.__name__ == "torch" else {}
    return xp.full((length,), value, dtype=x.dtype, **device)


def sela_reference(
    scores: Any, *, cast: Any, lam: float, tol: float, max_iter: int, stop: bool
) -> Outcome:
    """The original two-matvec loop on ``P = exp(lam * scores)`` computed in dtype ``cast``.

    ``stop=False`` runs exactly ``max_iter`` iterations (for timing one iteration).
    """
    xp = library_of(scores)
    P = xp.exp(cast(scores) * lam)
    n, k = P.shape
    c = full(P, n, 1.0 / n)
    target = 1.0 / k
    r = None
    error = float("nan")
    rule_iter, rule_error = None, None
    for iteration in range(1, max_iter + 2):
        label_sums = P.T @ c
        if r is not None:
            error = float(xp.abs(r * label_sums - target).sum())
            if rule_iter == iteration - 1:
                rule_error = error
            if error != error:
                return Outcome(iteration - 1, error, "numerical error", "NaN in the plan")
            if (stop and error <= tol) or iteration > max_iter:
                break
        r = target / label_sums
        c_new = (1.0 / n) / (P @ r)
        if rule_iter is None and (iteration - 1) % SELA_CHECK_EVERY == 0:
            change = float(xp.nansum(xp.abs(c / c_new - 1.0)))
            if change < SELA_RULE:
                rule_iter = iteration
        c = c_new
    n_iter = iteration - 1
    stopped_by = "tol" if stop and error <= tol else "cap"
    note = (
        f"own rule stops at {rule_iter} (L1 {rule_error:.2g})"
        if rule_iter is not None and rule_error is not None
        else f"own rule not met in {n_iter}"
    )
    return Outcome(n_iter, error, stopped_by, note)


def pot_solve(
    scores: Any, *, method: str, lam: float, tol: float, max_iter: int, stop: bool
) -> Outcome:
    """POT's Sinkhorn (``method`` "sinkhorn" or "sinkhorn_log") on cost ``-scores``."""
    import ot

    n, k = scores.shape
    a = full(scores, n, 1.0 / n)
    b = full(scores, k, 1.0 / k)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan, log = ot.sinkhorn(
            a, b, -scores, 1.0 / lam, method=method, numItermax=max_iter,
            stopThr=tol if stop else 0.0, log=True, warn=False,
        )
    n_iter = int(log["niter"]) + 1
    error = float(library_of(plan).abs(plan.sum(0) - b).sum())
    if any("numerical errors" in str(w.message) for w in caught) or error != error:
        return Outcome(n_iter, error, "numerical error", "POT stopped on NaN/inf")
    if n_iter >= max_iter:
        return Outcome(n_iter, error, "cap")
    return Outcome(n_iter, error, "tol" if error <= tol else "own rule", "L2 rule")
