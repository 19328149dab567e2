"""The solver and the CPU kernels at the edges of float32 and float64 (tiny label shares,
huge warm starts, long float32 sums), each checked against an independent float64 plan
computed here from the returned potentials."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from conftest import CPU_BACKENDS, to_backend, to_host

import sinklabel
from sinklabel.datasets import make_scores
from sinklabel.kernels import get_kernel
from sinklabel.sources import CallableSource


def _plan_error(scores: np.ndarray, potentials: np.ndarray, lam: float,
                weights: np.ndarray) -> float:
    """L1 distance between the label marginal of the plan and the target, in float64."""
    z = lam * scores.astype(np.float64) + potentials
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return float(np.abs(p.mean(axis=0) - weights).sum())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("share", [1e-45, 1e-300])
def test_a_label_weight_float32_cannot_resolve_does_not_stall_the_solve(backend, share):
    """A share below float32's smallest normal number (allowed: the floor is float64's)
    needs exponentials float32 flushes to zero, so the label's mass kept underflowing to 0
    and the solver revived it every third pass, throwing away its curvature pairs: 300
    passes ended unconverged at error 1.3e-2, where float64 scores converge in 7."""
    scores = make_scores(2000, 10, regime="peaked", seed=0).scores.astype(np.float32)
    weights = np.ones(10)
    weights[0] = share
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sinklabel.sinkhorn(to_backend(scores, backend), 10, label_weights=weights,
                                    max_iter=300, backend=backend)
    assert result.converged and result.n_iter <= 40
    independent = _plan_error(scores, result.potentials, result.lam, result.label_weights)
    assert independent <= result.error + 1e-5 <= 1e-3 + 1e-5


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(("dtype", "start"),
                         [(np.float32, 1e39), (np.float64, 1e300), (np.float64, 1e308)])
def test_init_beyond_what_the_compute_dtype_takes_is_refused(backend, dtype, start):
    """A finite init that float32 turned into inf gave a NaN error after max_iter passes
    (NumPy) or a ZeroDivisionError (Numba); in float64, 1e300 made the slack pass overflow
    and blamed a label with finite scores for having none. An init whose spread float64
    cannot hold (1e308 and -1e308) was said to reach NaN, with RuntimeWarnings."""
    scores = make_scores(200, 5, regime="flat", seed=1).scores.astype(dtype)
    init = np.array([start, -start, 0.0, 0.0, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(ValueError, match=re.escape(f"init reaches {start:.3g} ")):
            sinklabel.sinkhorn(to_backend(scores, backend), 5, init=init, backend=backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_large_init_the_compute_dtype_takes_is_still_repaired(backend):
    """Below the limit a wild warm start is still a start: the solve recovers from it."""
    scores = make_scores(200, 5, regime="flat", seed=1).scores.astype(np.float32)
    init = np.array([1e10, 0.0, 0.0, 0.0, 0.0])
    result = sinklabel.sinkhorn(to_backend(scores, backend), 5, init=init, backend=backend)
    assert result.converged
    assert _plan_error(scores, result.potentials, result.lam, result.label_weights) <= 1e-3


def _one_chunk_of_float32_scores(backend: str, monkeypatch):
    """100,000 x 10 float32 scores (one NumPy chunk, one torch block) and their form for
    ``backend``: for torch, a tensor on its blocked torch route (as without Numba)."""
    scores = make_scores(104_857, 10, regime="flat", seed=2).scores.astype(np.float32)
    if backend != "torch":
        return scores, scores
    import torch

    from sinklabel.kernels import torch as torch_backend

    monkeypatch.setattr(torch_backend.TorchKernel, "_numba", None)
    return scores, torch.from_numpy(scores)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_label_masses_of_a_float32_chunk_are_summed_to_float64_accuracy(backend, monkeypatch):
    """NumPy's sweep (and torch's blocked one) summed a chunk's normalised exponentials in one
    float32 matrix-vector product over 100,000 rows: the masses were off by 1e-5 of their
    total, where Numba, accumulating in float64, is within 1e-8."""
    scores, chunk = _one_chunk_of_float32_scores(backend, monkeypatch)
    f = np.random.default_rng(3).standard_normal(10)
    mass, _ = get_kernel(backend).sweep_lse(chunk, f, 25.0)
    z = 25.0 * scores.astype(np.float64) + f
    p = np.exp(z - z.max(axis=1, keepdims=True))
    expected = (p / p.sum(axis=1, keepdims=True)).sum(axis=0)
    assert np.abs(mass - expected).sum() / len(scores) < 2e-7


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_tight_float32_solve_reports_the_error_its_plan_has(backend, monkeypatch):
    """With float32 sums over whole chunks, NumPy reported convergence to tol=1e-8 with an
    error of 0.0 while its plan was 3.5e-7 off the target (and failed to converge at 1e-7
    on flat scores, where Numba takes 7 passes)."""
    scores, logp = _one_chunk_of_float32_scores(backend, monkeypatch)
    result = sinklabel.sinkhorn(logp, 10, tol=1e-8, max_iter=30, backend=backend)
    independent = _plan_error(scores, result.potentials, result.lam, result.label_weights)
    assert result.converged and independent <= 2e-8


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_huge_float64_warm_start_is_repaired_not_tied_into_a_false_convergence(backend):
    """From init = 1e100 (float64 takes it) the revival brought every potential to the same
    1e100, and subtracting their weighted mean left a residual of -1.9e84 in every label:
    lam * logp vanished beside it, every label tied in every row, and the solve reported
    convergence at error 1.6e-15 with all 2000 rows in label 0."""
    scores = make_scores(2000, 10, regime="flat", seed=1).scores.astype(np.float64)
    init = np.zeros(10)
    init[0], init[3] = 1e100, -5e99
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = sinklabel.sinkhorn(to_backend(scores, backend), 10, init=init, backend=backend)
    assert result.converged
    assert abs(float(result.label_weights @ result.potentials)) < 1e-9
    assert _plan_error(scores, result.potentials, result.lam, result.label_weights) <= 1e-3
    assert np.bincount(to_host(result.labels), minlength=10).min() >= 150


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("streamed", [False, True])
def test_rows_offset_by_large_values_of_both_signs_warn_of_precision(backend, streamed):
    """Rows offset by +1e5 and -1e5 in turn: float32 rounds lam * logp (2.5e6) by about 0.3,
    enough to change labels, while the objective, a mean over rows, cancels to about 0. The
    warning reads the rows' tops from the scores' check (streamed: during the first pass)."""
    base = make_scores(4000, 10, regime="flat", seed=0).scores
    offsets = 1e5 * np.where(np.arange(4000) % 2, 1.0, -1.0)[:, None]
    scores = (base + offsets).astype(np.float32)
    logp = (CallableSource(lambda a, b: scores[a:b], scores.shape, np.float32)
            if streamed else to_backend(scores, backend))
    with pytest.warns(sinklabel.PrecisionWarning, match="rounds to about 0.3"):
        # A function's NumPy blocks go to the backend that takes them (torch's CPU kernels
        # are the Numba ones).
        sinklabel.sinkhorn(logp, 10, backend="auto" if streamed else backend)
    with warnings.catch_warnings():  # the offsets' own rounding is what is warned about
        warnings.simplefilter("error", sinklabel.PrecisionWarning)
        sinklabel.sinkhorn(to_backend(base.astype(np.float32), backend), 10, backend=backend)
