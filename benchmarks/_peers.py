"""The solvers a user would pick instead of sinklabel, run on the same scores.

- ``sela_reference``: the original self-labelling implementation as its paper and code
  describe it, written here from that description: ``P = exp(lam * logp)`` (softmax outputs
  raised to the power lam, in one array as the original's in-place power) precomputed once,
  then two matrix-vector products per iteration, in float32 or float64, no log domain. Its
  native stopping rule (summed relative change of the data scaling below 0.1, checked every
  10 iterations) is tracked and reported; the loop itself stops on the same L1
  label-marginal tolerance as sinklabel, which it gets for free (the first product of an
  iteration is the previous plan's label marginal). ``SelaLoop`` holds its state, so that
  one iteration can be timed on its own.
- ``pot_solve``: POT's ``ot.sinkhorn`` / ``ot.sinkhorn_log`` with the cost ``-logp`` and
  ``reg = 1 / lam``, on whatever backend the array belongs to (NumPy, torch CPU or CUDA).
  POT stops on the L2 norm of the label-marginal error, checked every 10 iterations, so it
  is given ``stopThr=tol`` and its L1 error is measured on the plan it returns.
- ``ott_solve``: OTT-JAX's ``Sinkhorn`` (log domain, its defaults: an error check every 10
  iterations, so it runs whole tens) on a ``Geometry`` with the cost ``-logp`` and
  ``epsilon = 1 / lam``, plain or with its Anderson acceleration, on a JAX array on the CPU.
  It stops on its own L1 marginal error at ``threshold=tol``; the label marginal's L1 error
  is measured from its potentials. Each shape, dtype and cap is compiled ahead of the clock
  (:func:`ott_prepare`), as a training loop compiles it once.

SeLa and POT are array-library neutral: NumPy, torch and CuPy all provide what they use.
"""

from __future__ import annotations

import functools
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


def power_of_softmax(scores: Any, cast: Any, lam: float) -> Any:
    """``exp(lam * scores)`` in dtype ``cast``, in one new N x K array, as the original raises
    its softmax outputs to the power lam in place: a temporary as large would double the
    peer's peak memory and add a write of N x K to its set-up."""
    P = cast(scores)
    P = P * lam if P is scores else library_of(P).multiply(P, lam, out=P)
    return library_of(P).exp(P, out=P)


class SelaLoop:
    """The original loop on ``P = exp(lam * scores)`` in dtype ``cast``; ``step`` is one
    iteration, so a solve and a timing of one iteration run the same code.

    Each step rescales the labels, then the data (two matrix-vector products), and measures
    the new plan's L1 label-marginal error from the product that opens the next step (the
    label sums of ``P`` weighted by the data scaling), so measuring costs no third product.
    Every SELA_CHECK_EVERY steps, from the first, it also evaluates the original's own
    stopping rule (``rule_iter``: the first step where it held; ``rule_error``: the error then).
    """

    def __init__(self, scores: Any, *, cast: Any, lam: float):
        self.xp = library_of(scores)
        self.P = power_of_softmax(scores, cast, lam)
        n, k = self.P.shape
        self.row_mass, self.target = 1.0 / n, 1.0 / k
        self.c = full(self.P, n, self.row_mass)
        self.label_sums = self.P.T @ self.c
        self.iteration = 0
        self.rule_iter: int | None = None
        self.rule_error: float | None = None

    def step(self) -> float:
        """One iteration; returns the L1 label-marginal error of the plan it leaves."""
        r = self.target / self.label_sums
        c = self.row_mass / (self.P @ r)
        self.label_sums = self.P.T @ c
        error = float(self.xp.abs(r * self.label_sums - self.target).sum())
        self.iteration += 1
        due = self.rule_iter is None and (self.iteration - 1) % SELA_CHECK_EVERY == 0
        if due and float(self.xp.nansum(self.xp.abs(self.c / c - 1.0))) < SELA_RULE:
            self.rule_iter, self.rule_error = self.iteration, error
        self.c = c
        return error


def sela_reference(
    scores: Any, *, cast: Any, lam: float, tol: float, max_iter: int, stop: bool
) -> Outcome:
    """The original two-matvec loop (``SelaLoop``) until ``tol`` or ``max_iter``.

    ``stop=False`` runs exactly ``max_iter`` iterations.
    """
    loop = SelaLoop(scores, cast=cast, lam=lam)
    error = float("nan")
    for _ in range(max_iter):
        error = loop.step()
        if error != error:
            return Outcome(loop.iteration, error, "numerical error", "NaN in the plan")
        if stop and error <= tol:
            break
    stopped_by = "tol" if stop and error <= tol else "cap"
    note = (
        f"own rule stops at {loop.rule_iter} (L1 {loop.rule_error:.2g})"
        if loop.rule_iter is not None
        else f"own rule not met in {loop.iteration}"
    )
    return Outcome(loop.iteration, error, stopped_by, note)


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
    if any("numerical errors" in str(w.message).lower() for w in caught) or error != error:
        # POT drops the iteration that failed: the plan is that of the ones before it
        return Outcome(n_iter - 1, error, "numerical error", "POT stopped on NaN/inf")
    # POT's L2 rule, checked every tenth iteration, may fire on the last one allowed
    rule_met = stop and len(log["err"]) > 0 and float(log["err"][-1]) < tol
    if n_iter >= max_iter and error > tol and not rule_met:
        return Outcome(n_iter, error, "cap")
    return Outcome(n_iter, error, "tol" if error <= tol else "own rule", "L2 rule")


def ott_solve(
    scores: Any, *, anderson: int, lam: float, tol: float, max_iter: int, stop: bool
) -> Outcome:
    """OTT-JAX's Sinkhorn on cost ``-scores``; ``anderson``: the memory of its Anderson
    acceleration (0: none). Runs the program :func:`ott_prepare` compiles."""
    program = ott_prepare(scores, anderson=anderson, lam=lam, tol=tol, max_iter=max_iter,
                          stop=stop)
    n_iter, converged, error = (value.item() for value in program(scores))
    if error != error:
        return Outcome(n_iter, error, "numerical error", "NaN in the plan")
    if stop and error <= tol:
        return Outcome(n_iter, error, "tol")
    return Outcome(n_iter, error, "own rule" if converged else "cap",
                   "L1 rule on its own marginal" if converged else "")


def ott_prepare(
    scores: Any, *, anderson: int, lam: float, tol: float, max_iter: int, stop: bool
) -> Any:
    """The compiled program of one :func:`ott_solve` call, compiled on first use."""
    return _ott_program(tuple(scores.shape), str(scores.dtype), anderson, lam,
                        tol if stop else 0.0, max_iter)


@functools.cache
def _ott_program(shape: tuple[int, int], dtype: str, anderson: int, lam: float,
                 threshold: float, max_iter: int) -> Any:
    """Scores -> (iterations, converged, L1 error of the label marginal), compiled for one
    shape, dtype and set of options (OTT's options are static: each cap compiles anew)."""
    import jax
    import jax.numpy as jnp
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import acceleration, sinkhorn

    n, k = shape
    solver = sinkhorn.Sinkhorn(
        threshold=threshold, max_iterations=max_iter,
        anderson=acceleration.AndersonAcceleration(memory=anderson) if anderson else None,
    )

    def solve(scores: Any) -> tuple[Any, Any, Any]:
        geom = geometry.Geometry(cost_matrix=-scores, epsilon=1.0 / lam)
        target = jnp.full(k, 1.0 / k, dtype=scores.dtype)
        out = solver(linear_problem.LinearProblem(
            geom, jnp.full(n, 1.0 / n, dtype=scores.dtype), target))
        marginal = geom.marginal_from_potentials(out.f, out.g, axis=0)
        return out.n_iters, out.converged, jnp.abs(marginal - target).sum()

    on_cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    return jax.jit(solve).lower(jax.ShapeDtypeStruct(shape, dtype, sharding=on_cpu)).compile()
