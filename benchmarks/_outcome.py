"""What one solve reports, whichever library ran it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    """The end of one solve.

    ``n_iter`` counts full Sinkhorn iterations (each reads the scores once or twice,
    depending on the method); ``error`` is the L1 distance between the final plan's label
    marginal and the target, the quantity sinklabel's ``tol`` bounds, computed the same way
    for every method; ``stopped_by`` says what ended the loop: "tol" (that error reached the
    tolerance), "own rule" (the method's native stopping rule), "cap" (the iteration cap) or
    "numerical error"; ``note`` adds what a reader needs (e.g. where a native rule fired).
    """

    n_iter: int
    error: float
    stopped_by: str
    note: str = ""
