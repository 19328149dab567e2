"""Every method the comparison runs, found from what is installed on this machine.

A method knows how to put the host scores where it computes (untimed: the scores are
assumed to be there already, as in a training loop), how to solve on them and, where its
loop can be entered midway, how to run one iteration of it from a realistic state.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

import sinklabel
from sinklabel.kernels import get_kernel, resolve_kernel
from sinklabel.solver import dual_terms
from sinklabel.sources import as_source, itemsize

from ._outcome import Outcome
from ._peers import SelaLoop, ott_prepare, ott_solve, pot_solve, sela_reference

#: tol for runs that must not stop early (timing a fixed number of iterations).
NEVER = 1e-300
#: Steps of the SeLa loop made before one of its steps is timed.
SELA_WARM = 5
#: Memory of OTT-JAX's Anderson acceleration in its accelerated variant.
OTT_ANDERSON = 5


@dataclass(frozen=True)
class Method:
    """One way of solving, on one array library and device."""

    name: str
    family: str  # "sinklabel" or "peer"
    library: str  # "numpy", "torch", "cupy" or "jax"
    device: str  # "cpu" or "cuda"
    solve: Callable[..., Outcome]  # (scores, *, lam, tol, max_iter, stop) -> Outcome
    #: (scores, *, lam, tol, max_iter) -> a call that runs one iteration of this method from a
    #: state its solve reaches; None where the loop cannot be entered midway (POT's), whose
    #: iteration is then timed from whole runs of two lengths.
    one_iteration: Callable[..., Callable[[], Any]] | None = None
    #: Takes the solve's arguments and compiles what that solve will run, without running
    #: it, where a method compiles per shape and option (JAX): no clock then times a compile.
    prepare: Callable[..., Any] | None = None

    def place(self, host: np.ndarray) -> Any:
        """The scores in this method's library and on its device."""
        return place(host, self.library, self.device)


def place(host: np.ndarray, library: str, device: str) -> Any:
    """``host`` as a NumPy array, torch tensor, CuPy or JAX array on ``device``."""
    if library == "numpy":
        return host
    if library == "torch":
        import torch

        with warnings.catch_warnings():  # shared read-only scores: no method writes them
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            return torch.from_numpy(host).to(device)
    if library == "jax":
        import jax

        if host.dtype == np.float64:  # JAX computes in float32 unless told otherwise
            jax.config.update("jax_enable_x64", True)
        return jax.device_put(host, jax.devices("cpu")[0])
    import cupy

    return cupy.asarray(host)


def placements() -> list[tuple[str, str]]:
    """(library, device) pairs usable here: NumPy always, torch and CuPy when they work, JAX
    on the CPU when OTT-JAX (its only method) is installed."""
    found = [("numpy", "cpu")]
    if _importable("torch"):
        import torch

        found.append(("torch", "cpu"))
        if torch.cuda.is_available():
            found.append(("torch", "cuda"))
    if _importable("cupy"):
        import cupy

        if cupy.cuda.is_available():
            found.append(("cupy", "cuda"))
    if _importable("ott"):
        found.append(("jax", "cpu"))
    return found


def discover(names: list[str] | None = None) -> list[Method]:
    """sinklabel's installed backends on every library/device they take, then the peers.

    ``names``: keep only methods whose name contains one of these substrings.
    """
    where = placements()
    methods = [
        Method(f"sinklabel {backend} ({_suffix(library, device)})", "sinklabel", library, device,
               partial(_sinklabel_solve, backend=backend),
               partial(_sinklabel_pass, backend=backend))
        for backend in sinklabel.available_backends()
        for library, device in where
        if library in get_kernel(backend).libraries
    ]
    for library, device in where:
        suffix = _suffix(library, device)
        if library == "jax":
            for variant, memory in (("", 0), (" + Anderson", OTT_ANDERSON)):
                methods.append(Method(f"OTT sinkhorn{variant} ({suffix})", "peer", library,
                                      device, partial(ott_solve, anderson=memory),
                                      prepare=partial(ott_prepare, anderson=memory)))
            continue
        if library == "cupy":
            continue
        for bits in (32, 64):
            cast = _caster(library, bits)
            methods.append(Method(f"SeLa reference float{bits} ({suffix})", "peer", library,
                                  device, partial(sela_reference, cast=cast),
                                  partial(_sela_iteration, cast=cast)))
        if _importable("ot"):
            for solver in ("sinkhorn", "sinkhorn_log"):
                methods.append(Method(f"POT {solver} ({suffix})", "peer", library, device,
                                      partial(pot_solve, method=solver)))
    if names:
        methods = [m for m in methods if any(part in m.name for part in names)]
    return methods


def _sinklabel_solve(
    scores: Any, *, backend: str, lam: float, tol: float, max_iter: int, stop: bool
) -> Outcome:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
        result = sinklabel.sinkhorn(scores, scores.shape[1], lam=lam, tol=tol if stop else NEVER,
                                    max_iter=max_iter, backend=backend)
    stopped_by = "tol" if result.converged else "cap"
    return Outcome(result.n_iter, result.error, stopped_by)


def _sinklabel_pass(
    scores: Any, *, backend: str, lam: float, tol: float, max_iter: int
) -> Callable[[], Any]:
    """One pass of the solver: ``dual_terms`` over every chunk, the evaluation each of its
    iterations makes (the L-BFGS step on K-vectors that follows is not included), chunked as
    the solve chunks, at the potentials its own solve reaches (``tol``, ``max_iter``).

    The potentials matter: the Numba kernel skips blocks whose exponentials underflow, and on
    peaked scores a pass costs more as the potentials grow towards the solution. Timing it
    there gives the cost of every pass of a warm-started solve and the upper end of a cold one.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
        f = sinklabel.sinkhorn(scores, scores.shape[1], lam=lam, tol=tol, max_iter=max_iter,
                               backend=backend).potentials
    source = as_source(scores)
    kernel = resolve_kernel(backend, source.library)
    rows = kernel.chunk_rows(source.shape[1], itemsize(source.dtype))
    return partial(dual_terms, source, kernel, f, lam, rows)


def _sela_iteration(
    scores: Any, *, cast: Any, lam: float, tol: float, max_iter: int
) -> Callable[[], Any]:
    """One step of the SeLa loop after SELA_WARM steps (its ``exp`` already made). Its two
    matrix-vector products on the fixed ``P`` cost the same at any scaling, so a few steps
    suffice; ``tol`` and ``max_iter`` are not needed."""
    loop = SelaLoop(scores, cast=cast, lam=lam)
    for _ in range(SELA_WARM):
        loop.step()
    return loop.step


def _suffix(library: str, device: str) -> str:
    return library if device == "cpu" else f"{library}:{device}"


def _caster(library: str, bits: int) -> Callable[[Any], Any]:
    if library == "torch":
        import torch

        dtype = torch.float32 if bits == 32 else torch.float64
        return lambda x: x.to(dtype)
    dtype = np.float32 if bits == 32 else np.float64
    return lambda x: x.astype(dtype, copy=False)


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None
