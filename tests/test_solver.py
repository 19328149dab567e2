"""The solver's mathematical properties, on every installed CPU backend."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import to_backend, to_host
from reference import reference_sinkhorn

import sinklabel
from sinklabel import ConvergenceWarning, PrecisionWarning, _feasibility, solver
from sinklabel.datasets import make_scores

TIGHT = {"tol": 1e-10, "max_iter": 20000}


def scores(rng: np.random.Generator, n: int, k: int, scale: float = 1.0) -> np.ndarray:
    logits = scale * rng.standard_normal((n, k))
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def solve(s: np.ndarray, backend: str, **options):
    return sinklabel.sinkhorn(to_backend(s, backend), s.shape[1], backend=backend, **options)


def test_matches_reference_sinkhorn(backend, rng):
    s = scores(rng, 60, 7)
    result = solve(s, backend, lam=2.0, **TIGHT)
    plan, f_ref = reference_sinkhorn(s, lam=2.0)
    np.testing.assert_allclose(result.potentials, f_ref, atol=1e-8)
    soft = to_host(result.soft_assignments(to_backend(s, backend))) / s.shape[0]
    np.testing.assert_allclose(soft, plan, atol=1e-10)
    np.testing.assert_array_equal(to_host(result.labels), plan.argmax(axis=1))


def test_plan_has_the_requested_marginals(backend, rng):
    s = scores(rng, 103, 5, scale=3.0)  # N not divisible by K
    weights = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    result = solve(s, backend, lam=5.0, label_weights=weights, tol=1e-9, max_iter=20000)
    soft = to_host(result.soft_assignments(to_backend(s, backend)))
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(soft.mean(axis=0), weights / weights.sum(), atol=1e-9)
    assert result.converged and result.error <= 1e-9


def test_row_constants_change_nothing(backend, rng):
    s = scores(rng, 80, 6, scale=2.0)
    shifted = s + 100.0 * rng.standard_normal((80, 1))  # raw logits: any per-row offset
    a, b = solve(s, backend, lam=4.0, **TIGHT), solve(shifted, backend, lam=4.0, **TIGHT)
    np.testing.assert_allclose(a.potentials, b.potentials, atol=1e-8)
    np.testing.assert_array_equal(to_host(a.labels), to_host(b.labels))


def test_row_and_label_permutations_are_equivariant(backend, rng):
    s = scores(rng, 70, 6, scale=2.0)
    rows, labels = rng.permutation(70), rng.permutation(6)
    base = solve(s, backend, lam=4.0, **TIGHT)
    permuted = solve(s[rows][:, labels], backend, lam=4.0, **TIGHT)
    np.testing.assert_allclose(permuted.potentials, base.potentials[labels], atol=1e-8)
    np.testing.assert_array_equal(
        labels[to_host(permuted.labels)], to_host(base.labels)[rows]
    )


@pytest.mark.parametrize("n, k", [(1, 1), (9, 1), (8, 8), (13, 4)])
def test_small_and_square_shapes(backend, rng, n, k):
    s = scores(rng, n, k, scale=2.0)
    result = solve(s, backend, lam=3.0, tol=1e-9, max_iter=20000)
    labels = to_host(result.labels)
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert np.all((labels >= 0) & (labels < k))
    assert result.converged
    soft = to_host(result.soft_assignments(to_backend(s, backend)))
    np.testing.assert_allclose(soft.mean(axis=0), np.full(k, 1 / k), atol=1e-9)
    if k == 1:
        assert np.all(labels == 0) and result.potentials.tolist() == [0.0]


def test_warm_start_from_converged_potentials(backend, rng):
    s = scores(rng, 500, 10, scale=3.0)
    cold = solve(s, backend)
    warm = solve(s, backend, init=cold.potentials)
    assert cold.converged and warm.converged
    assert warm.n_iter <= 2 < cold.n_iter


@pytest.mark.parametrize("chunk_size", [1, 7, 99, 105])
def test_chunked_equals_unchunked(backend, rng, chunk_size):
    s = scores(rng, 100, 6, scale=3.0)
    whole = solve(s, backend, lam=10.0, chunk_size=1000)
    chunked = solve(s, backend, lam=10.0, chunk_size=chunk_size)
    np.testing.assert_allclose(chunked.potentials, whole.potentials, atol=1e-10)
    np.testing.assert_array_equal(to_host(chunked.labels), to_host(whole.labels))
    assert chunked.n_iter == whole.n_iter


def test_deterministic(backend, rng):
    s = scores(rng, 300, 12, scale=3.0).astype(np.float32)
    a, b = solve(s, backend), solve(s, backend)
    np.testing.assert_array_equal(a.potentials, b.potentials)
    np.testing.assert_array_equal(to_host(a.labels), to_host(b.labels))


def test_error_history_and_counts_are_consistent(backend, rng):
    s = scores(rng, 400, 8, scale=3.0)
    result = solve(s, backend)
    assert result.n_iter == len(result.error_history)
    assert result.error == result.error_history[-1] <= 1e-3
    np.testing.assert_array_equal(
        result.label_counts, np.bincount(to_host(result.labels), minlength=8)
    )
    assert result.label_counts.sum() == 400


@pytest.mark.parametrize("lam", [25.0, 1e3, 1e4])
def test_label_no_row_wants_gets_no_nan(backend, rng, lam):
    s = scores(rng, 200, 5, scale=3.0)
    s[:, 2] = -1e4
    with warnings.catch_warnings(), pytest.warns(PrecisionWarning):
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = solve(s.astype(np.float32), backend, lam=lam, max_iter=300)
    assert np.all(np.isfinite(result.potentials)) and np.all(np.isfinite(result.error_history))
    labels = to_host(result.labels)
    assert np.all((labels >= 0) & (labels < 5))
    assert result.label_counts[2] > 0, "the starved label must be revived"


def test_minus_inf_entries_are_allowed(backend, rng):
    s = scores(rng, 120, 4, scale=2.0)
    s[::3, 1] = -np.inf
    result = solve(s, backend, lam=5.0, tol=1e-8, max_iter=20000)
    assert result.converged and np.all(np.isfinite(result.potentials))
    assert not np.any(to_host(result.labels)[::3] == 1)


def test_max_iter_warns_and_reports_not_converged(backend, rng):
    s = scores(rng, 200, 10, scale=3.0)
    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        result = solve(s, backend, tol=1e-12, max_iter=3)
    assert not result.converged and result.n_iter == 3


def test_predict_matches_labels_and_labels_new_rows(backend, rng):
    s = scores(rng, 300, 6, scale=3.0)
    result = solve(s, backend)
    np.testing.assert_array_equal(
        to_host(result.predict(to_backend(s, backend))), to_host(result.labels)
    )
    new = scores(rng, 20, 6, scale=3.0)
    expected = np.argmax(result.lam * new + result.potentials, axis=1)
    np.testing.assert_array_equal(to_host(result.predict(to_backend(new, backend))), expected)


def test_potentials_normalisation(backend, rng):
    s = scores(rng, 150, 5, scale=2.0)
    weights = np.array([3.0, 1.0, 1.0, 2.0, 3.0])
    result = solve(s, backend, label_weights=weights)
    assert abs(result.label_weights @ result.potentials) < 1e-12
    np.testing.assert_allclose(result.label_weights, weights / weights.sum())


def _two_loop(pairs: list[tuple[np.ndarray, np.ndarray]], gradient: np.ndarray) -> np.ndarray:
    """The textbook L-BFGS two-loop recursion (Nocedal and Wright, algorithm 7.4), oldest
    pair first, with the initial scaling of the newest pair."""
    q = gradient.copy()
    a = []
    for step, change in reversed(pairs):
        a.append(step @ q / (step @ change))
        q = q - a[-1] * change
    step, change = pairs[-1]
    r = q * (step @ change) / (change @ change)
    for (step, change), alpha in zip(pairs, reversed(a), strict=True):
        r = r + (alpha - change @ r / (step @ change)) * step
    return r


@pytest.mark.parametrize("k", [1, 7, 300])
def test_lbfgs_direction_matches_the_two_loop_recursion(k, monkeypatch):
    """The solver's memory (which keeps each pair's curvature) gives the plain recursion's
    direction over its last pairs, through pairs dropped for age, pairs refused for no
    curvature or NaN, the buffer's moves of its pairs to the front, and a reset."""
    from sinklabel.solver import MEMORY, _Memory

    moves = []
    move = _Memory._move_to_front
    monkeypatch.setattr(_Memory, "_move_to_front", lambda self: moves.append(1) or move(self))
    rng = np.random.default_rng(k)
    memory, kept = _Memory(MEMORY), []
    assert memory.direction(rng.standard_normal(k)) is None
    for count in range(6 * MEMORY):
        step = rng.standard_normal(k)
        # The dual is concave: a pair's change has a positive component along its step.
        change = rng.uniform(0.1, 2.0) * step + 0.3 * rng.standard_normal(k)
        if count % 7 == 3:
            change = -step  # no curvature: refused
        elif count % 11 == 10:
            change = np.full(k, np.nan)  # rounding gone wrong: refused
        else:
            curved = step @ change > 1e-8 * np.linalg.norm(step) * np.linalg.norm(change)
            kept = (kept + [(step, change)])[-MEMORY:] if curved else kept
        if count == 4 * MEMORY:
            memory.clear()
            kept = kept[-1:]
            memory.add(*kept[0])
        else:
            memory.add(step, change)
        gradient = rng.standard_normal(k)
        if not kept:
            assert memory.direction(gradient) is None
            continue
        np.testing.assert_allclose(memory.direction(gradient), _two_loop(kept, gradient),
                                   rtol=1e-9, atol=1e-12)
    assert moves, "the pairs never filled the buffer: the test missed its moves"


def test_a_solve_that_fails_for_want_of_precision_is_not_told_to_iterate_more():
    """Label 0's share is 50 rows; 20 score 0 and the rest are masked at -1e9, so its potential
    must reach lam * 1e9, which float32 rounds by thousands. More passes cannot help: the
    ConvergenceWarning says why instead of advising a larger max_iter."""
    scores = np.log(np.full((200, 4), 0.25, dtype=np.float32))
    scores[20:, 0] = -1e9
    with pytest.warns(Warning) as caught:
        result = sinklabel.sinkhorn(scores, 4, max_iter=100, backend="numpy")
    assert not result.converged
    said = {w.category: str(w.message) for w in caught}
    assert said[ConvergenceWarning].endswith(
        "; float32 stopped resolving the plan on its way (see the PrecisionWarning)")
    assert "lower lam, or pass float64 scores" in said[PrecisionWarning]


def _row_offset_scores(offset: float) -> np.ndarray:
    """Dirichlet log-probabilities, 4000 x 40, each row raised by ``offset``, in float32."""
    logp = np.log(np.random.default_rng(0).dirichlet(np.full(40, 0.3), size=4000))
    return (logp + offset).astype(np.float32)


def test_a_solve_float32_cannot_resolve_stops_once_it_makes_no_progress(backend):
    """Rows raised by 1e6 at lam = 25 put lam * logp near 2.5e7, which float32 rounds by
    about 3: the passes are rounding noise, and went to max_iter (1000, with the error no
    better than after 100). The solve stops after STALL_PASSES passes without a new best
    error or objective, says why, and returns its best point."""
    scores = _row_offset_scores(1e6)
    with pytest.warns(Warning) as caught:
        result = solve(scores, backend, max_iter=1000)
    stall = solver.STALL_PASSES
    history = result.error_history
    assert not result.converged and stall < result.n_iter < 1000
    assert history[-stall:].min() >= history[:-stall].min() == result.error
    said = {w.category: str(w.message) for w in caught}
    assert said[ConvergenceWarning].startswith(
        f"Sinkhorn stopped short of tol=0.001 after {result.n_iter} of max_iter=1000 "
        f"iterations, the last {stall} without progress (label-marginal error")
    assert said[ConvergenceWarning].endswith(
        "; float32 stopped resolving the plan on its way (see the PrecisionWarning)")
    assert PrecisionWarning in said
    assert np.all(np.isfinite(result.potentials))


def test_resolved_scores_run_to_max_iter_however_slowly_they_progress(backend):
    """The same scores in float64 are resolved: no stall stop, whatever the progress. A tol
    no solve meets runs to max_iter, past STALL_PASSES passes of rounding-level progress."""
    scores = _row_offset_scores(1e6).astype(np.float64)
    with pytest.warns(ConvergenceWarning, match="did not reach tol=1e-300 in max_iter=150"):
        result = solve(scores, backend, tol=1e-300, max_iter=150)
    assert result.n_iter == 150 > solver.STALL_PASSES


def test_an_imprecise_solve_that_keeps_progressing_is_not_stopped():
    """lam = 1e12 leaves float32 unable to resolve the plan (a PrecisionWarning), yet the
    dual objective keeps rising: this solve needs 847 passes and must get them all."""
    scores = make_scores(5000, 50, regime="peaked", seed=0).scores
    with pytest.warns(PrecisionWarning):
        result = sinklabel.sinkhorn(scores, 50, lam=1e12, max_iter=3000)
    assert result.converged and result.n_iter > 5 * solver.STALL_PASSES


@pytest.mark.parametrize("case", ["row offset", "finite mask", "top row and potentials"])
def test_precision_warning_names_scores_float32_cannot_resolve(rng, case):
    """float32 resolves lam * logp + f to 1e-7 of its size: a row offset of 1e5 (lam * logp
    near 2.5e6) or a label masked at -1e9 (its potential near 2.5e10) leaves the plan
    inexact, which the solve must say; the same scores centred, or in float64, do not.
    Neither part need do it alone: one row 300 above the rest (lam * logp near 7500) and a
    label scored 50 below (its potential near 1100) add up past 1e-3 / eps = 8389, while the
    objective, a mean over the rows, stays near 20."""
    s = np.log(rng.dirichlet(np.ones(8), size=400))
    if case == "row offset":
        s += 1e5
    elif case == "finite mask":
        s[:, 3] = -1e9
    else:
        s[0] += 300.0
        s[:, 3] -= 50.0
    with warnings.catch_warnings():  # the filters outlive pytest.warns, which re-emits the rest
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", ".* received no points")
        with pytest.warns(PrecisionWarning, match="float32 rounds") as w:
            sinklabel.sinkhorn(s.astype(np.float32), 8, backend="numpy")
    said = [str(x.message) for x in w if x.category is PrecisionWarning]
    assert all("only that exact" in m and "lower lam, or pass float64 scores" in m
               for m in said)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sinklabel.sinkhorn(s, 8, backend="numpy")  # float64: resolved
        if case == "row offset":
            sinklabel.sinkhorn((s - s.max(axis=1, keepdims=True)).astype(np.float32), 8)


def test_precision_warning_in_float64_does_not_advise_float64(rng):
    """float64 resolves 1e-16 of a size: a row offset of 1e12 (lam * logp near 2.5e13) is
    past it, and the advice is to centre the rows, not to pass the float64 it already is."""
    s = np.log(rng.dirichlet(np.ones(8), size=400)) + 1e12
    with pytest.warns(PrecisionWarning, match="float64 rounds") as w:
        sinklabel.sinkhorn(s, 8, backend="numpy")
    message = str(w[0].message)
    assert "subtract each row's maximum" in message and "float64 scores" not in message


@pytest.mark.parametrize("cache", [False, True])
def test_a_label_masked_in_too_many_rows_is_an_error_not_collapsed_labels(backend, rng, cache):
    """A label finite in 1 row of 50 cannot take its 10: no plan has those proportions and
    its potential grows without bound. The solve that cannot converge says why (it returned
    collapsed labels with a ConvergenceWarning); one that can converge is not checked."""
    if cache and backend == "numpy":
        pytest.skip("cache=True is the Numba kernels' (the numba backend's, and torch's)")
    s = scores(rng, 50, 5).astype(np.float32)
    s[1:, 2] = -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        with pytest.raises(ValueError, match="label 2 should take 10 points .* only 1 rows"):
            solve(s, backend, cache=cache, max_iter=200)
        s[:10, 2] = -1.0  # 10 rows: exactly its share, reachable
        assert solve(s, backend, cache=cache, max_iter=2000).converged


def test_a_solve_no_potentials_balance_is_not_blamed_on_its_returned_plan(backend, monkeypatch):
    """Two thirds of the rows can take only label 0, whose share is a third: no potentials
    balance the scores, and its trial potentials grow past what float32 resolves. With too
    many row patterns to name the group (the cap lowered here; test_feasibility.py has the
    error it raises otherwise) the solve warns. The warning said that the returned plan and
    labels were only 3e19 exact and advised -inf masks, which these already are; the
    returned potentials are the best seen, and resolved."""
    monkeypatch.setattr(_feasibility, "MAX_PATTERNS", 1)
    monkeypatch.setattr(_feasibility, "MAX_EDGES", 3)
    s = np.repeat(np.array([[0.0, -np.inf, -np.inf], [0.0, -np.inf, -np.inf], [0.0, 0.0, 0.0]]),
                  10, axis=0).astype(np.float32)
    with pytest.warns(Warning) as caught:  # all three, so that none is re-emitted
        result = solve(s, backend, max_iter=300)
    assert not result.converged
    said = {w.category: str(w.message) for w in caught}
    assert set(said) == {PrecisionWarning, ConvergenceWarning, UserWarning}, said
    assert said[UserWarning].startswith("1 labels received no points")  # label 2's 10 rows
    message = said[PrecisionWarning]
    assert "a group of labels short of rows" in message and "are resolved" in message
    assert "only that exact" not in message
    assert np.abs(result.potentials).max() * np.finfo(np.float32).eps < 1e-3


def test_a_solve_whose_potentials_outgrow_the_kernels_stops_there(backend, monkeypatch):
    """No potentials balance these scores and, the group check capped, nothing names why:
    each search stretched the step further until the potentials passed float32's range
    (3.4e38 after 1623 passes of another case, where the Numba kernel divided by zero). The
    solve now stops at the kernels' limit, sqrt of float32's largest number, long before
    max_iter, and says so."""
    monkeypatch.setattr(_feasibility, "MAX_PATTERNS", 1)
    monkeypatch.setattr(_feasibility, "MAX_EDGES", 3)
    s = np.repeat(np.array([[0.0, -np.inf, -np.inf], [0.0, -np.inf, -np.inf], [0.0, 0.0, 0.0]]),
                  10, axis=0).astype(np.float32)
    with pytest.warns(Warning) as caught:
        result = solve(s, backend, max_iter=5000)
    assert not result.converged and result.n_iter < 100
    said = {w.category: str(w.message) for w in caught}
    assert said[ConvergenceWarning].startswith(
        f"Sinkhorn stopped short of tol=0.001 after {result.n_iter} of max_iter=5000 "
        "iterations, its potentials past the 1.84e+19 that float32 computes with")


def test_an_unbalanceable_label_is_named_however_long_the_solve_may_run(backend):
    """Label 0 should take 4.17 of 5 points and 4 rows have a finite score for it. With
    max_iter=3000 the potentials passed float32's range first: the Numba kernel raised
    ZeroDivisionError instead of the error that names the label."""
    s = np.array([[0.5, -0.048], [-0.03665, 0.5], [-0.0798, 0.5], [0.0258, 0.5],
                  [-np.inf, 0.5]], dtype=np.float16)
    weights = np.array([0.83454315, 0.16545685])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.raises(ValueError, match="label 0 should take 4.17272 points"):
            solve(s, backend, label_weights=weights, max_iter=3000)
