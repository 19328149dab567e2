"""The exact layer against independent oracles: an integer program solved by SciPy's ``milp``
(built here, not by the library), and primal/dual objectives recomputed in plain NumPy."""

from __future__ import annotations

import importlib
import itertools
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import to_backend, to_host
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import LinearConstraint, linear_sum_assignment, milp

import sinklabel
from sinklabel import _transport, _transport_loops
from sinklabel._arrays import array_library
from sinklabel._transport import CANDIDATES
from sinklabel.certificate import _certificate_from_sums, _partial_sums
from sinklabel.cli import main
from sinklabel.datasets import make_scores
from sinklabel.kernels import resolve_kernel
from sinklabel.sources import as_source


def milp_optimum(S: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float | None:
    """Minimal cost sum -S[i, y_i] with label sizes in [lower, upper], as an integer program."""
    N, K = S.shape
    finite = np.isfinite(S).ravel()
    cost = np.where(finite, -np.nan_to_num(S.ravel(), neginf=0.0), 0.0)
    per_point = np.kron(np.eye(N), np.ones(K))
    per_label = np.kron(np.ones(N), np.eye(K))
    res = milp(
        cost,
        constraints=[LinearConstraint(per_point, 1, 1), LinearConstraint(per_label, lower, upper)],
        integrality=np.ones(N * K),
        bounds=(np.zeros(N * K), finite.astype(float)),
    )
    return None if res.status == 2 else float(res.fun)


def plain_certificate(S, labels, prices, lower, upper) -> tuple[float, float]:
    """Primal cost and dual bound written out from their definitions."""
    C = -S.astype(np.float64)
    primal = float(C[np.arange(len(labels)), labels].sum())
    dual = float((C - prices).min(axis=1).sum() + np.minimum(lower * prices, upper * prices).sum())
    return primal, dual


def compared_prices(prices: np.ndarray) -> np.ndarray:
    """The prices a float32 pass compares and bounds with: their offsets from their centre
    rounded to float32, the centre itself a float32 number (so that a price of 0 stays 0)."""
    centre = float(np.float32(0.5 * prices.max() + 0.5 * prices.min()))
    return centre + (prices - centre).astype(np.float32).astype(np.float64)


@pytest.fixture(params=["numba", "python"])
def engine(request, monkeypatch):
    """Run the auction solver compiled and as plain Python (what users without numba get)."""
    if request.param == "python":
        monkeypatch.setattr(_transport_loops, "HAVE_NUMBA", False)
    return request.param


@st.composite
def problems(draw, wide: bool = False):
    """Small scores with ties, -inf entries and every kind of capacity. ``wide``: more labels
    than the auction lists as a point's candidates, and more of them masked."""
    if wide:
        K = draw(st.integers(CANDIDATES + 1, 40))
        N = draw(st.integers(K, 90))
    else:
        N = draw(st.integers(1, 14))
        K = draw(st.integers(1, min(N, 5)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    S = rng.normal(size=(N, K))
    if draw(st.booleans()):
        S = np.round(S)  # many exact ties
    if draw(st.booleans()):
        S[rng.random((N, K)) < (rng.uniform(0.3, 0.9) if wide else 0.3)] = -np.inf
        S[np.arange(N), rng.integers(0, K, N)] = rng.normal(size=N)
    kind = draw(st.sampled_from(["default", "sizes", "range"]))
    if kind == "default":
        capacities = None
        lower = np.full(K, N // K)
        upper = lower + (N % K > 0)
    elif kind == "sizes":
        lower = upper = rng.multinomial(N, rng.dirichlet(np.ones(K)))
        capacities = lower
    else:
        lower = np.maximum(rng.multinomial(N, np.ones(K) / K) - rng.integers(0, 3, K), 0)
        upper = lower + rng.integers(0, 3, K)
        upper[0] += max(0, N - upper.sum())
        capacities = (lower, upper)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return S.astype(dtype), capacities, lower, upper


@settings(max_examples=60, deadline=None)
@given(problem=problems(), method=st.sampled_from(["auction", "highs"]))
def test_optimum_matches_integer_program_and_is_certified(problem, method):
    S, capacities, lower, upper = problem
    N, K = S.shape
    best = milp_optimum(S.astype(np.float64), lower, upper)
    if best is None:
        with pytest.raises(ValueError, match="capacit|-inf"):
            sinklabel.solve_exact(S, K, capacities=capacities, method=method)
        return
    result = sinklabel.solve_exact(S, K, capacities=capacities, method=method)
    counts = np.bincount(result.labels, minlength=K)
    assert np.all(counts >= lower) and np.all(counts <= upper)
    assert result.objective == pytest.approx(best, rel=1e-9, abs=1e-9)
    primal, dual = plain_certificate(S, result.labels, result.prices, lower, upper)
    assert primal == pytest.approx(best, rel=1e-9, abs=1e-9)
    # The prices prove optimality: to 1e-9 in float64; in float32 the auction compares scores
    # in float32, so its prices are optimal up to the certificate's stated rounding.
    slack = result.certificate.rounding if S.dtype == np.float32 else 0.0
    assert dual <= primal + 1e-9 * abs(primal) + 1e-12
    assert dual == pytest.approx(best, rel=1e-9, abs=1e-9 + slack)
    # The pass compares float32 scores in float32: within its stated rounding of the truth.
    assert abs(result.certificate.dual - dual) <= result.certificate.rounding + 1e-9 * abs(dual)
    assert result.certificate.optimal


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # engine: one setting
@given(problem=problems(wide=True))
def test_optimum_with_more_labels_than_candidates_matches_integer_program(problem, engine):
    """Points keep CANDIDATES labels each for the auction; the others are reached through
    the bound on them (and read again when a price moves past it)."""
    S, capacities, lower, upper = problem
    best = milp_optimum(S.astype(np.float64), lower, upper)
    if best is None:
        with pytest.raises(ValueError, match="capacit|-inf|points"):
            sinklabel.solve_exact(S, S.shape[1], capacities=capacities)
        return
    result = sinklabel.solve_exact(S, S.shape[1], capacities=capacities)
    counts = np.bincount(result.labels, minlength=S.shape[1])
    assert np.all(counts >= lower) and np.all(counts <= upper)
    assert result.objective == pytest.approx(best, rel=1e-9, abs=1e-9)
    assert result.certificate.optimal


@settings(max_examples=25, deadline=None)
@given(problem=problems())
def test_plain_python_solver_agrees(problem):
    S, capacities, lower, upper = problem
    K = S.shape[1]
    try:
        compiled = sinklabel.solve_exact(S, K, capacities=capacities)
    except ValueError:
        return
    _transport_loops.HAVE_NUMBA, saved = False, _transport_loops.HAVE_NUMBA
    try:
        plain = sinklabel.solve_exact(S, K, capacities=capacities)
    finally:
        _transport_loops.HAVE_NUMBA = saved
    assert plain.objective == pytest.approx(compiled.objective, rel=1e-9, abs=1e-9)
    assert plain.certificate.optimal


@pytest.mark.parametrize("regime", ["flat", "peaked"])
def test_larger_problem_matches_highs(regime, engine):
    S = make_scores(600, 12, regime=regime, seed=4).scores
    S[::7, 3] = -np.inf
    auction = sinklabel.solve_exact(S, 12)
    highs = sinklabel.solve_exact(S, 12, method="highs")
    assert auction.objective == pytest.approx(highs.objective, rel=1e-9)
    assert sorted(np.bincount(auction.labels, minlength=12)) == [50] * 12
    primal, dual = plain_certificate(S, auction.labels, auction.prices, auction.lower,
                                     auction.upper)
    assert primal - dual == pytest.approx(0.0, abs=1e-9 * abs(primal))


def test_highs_labels_it_cannot_certify_are_said_to_be_so():
    """Scores of 1e6 beside differences of 1e-7: HiGHS's tolerances gave labels 4e-7 worse
    than the optimum, uncertified, and nothing said so; the auction solves them exactly."""
    rng = np.random.default_rng(0)
    S = rng.integers(0, 3, size=(12, 3)) * 1e-7
    S[:, 0] += rng.choice([0.0, 1e6], size=12)
    with pytest.warns(sinklabel.PrecisionWarning, match="HiGHS's labels are not certified "
                      r"optimal \(gap 4e-07 above .*method='auction' is exact"):
        highs = sinklabel.solve_exact(S, 3, method="highs")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auction = sinklabel.solve_exact(S, 3)
    assert auction.certificate.optimal and not highs.certificate.optimal
    assert highs.objective - auction.objective == pytest.approx(4e-7, rel=1e-3)


@pytest.mark.parametrize("scale", [1e-6, 1e6, 1e25, (1e-6, 1e-6, 1.0)])
@pytest.mark.parametrize("method", ["auction", "highs"])
def test_optimum_at_any_scale_of_the_scores(method, scale):
    """Small differences between scores still decide the optimum (HiGHS's tolerances are
    absolute, 1e-7 by default, and it takes costs beyond 1e20 for infinite: it must see them
    at unit scale, and with tight tolerances where two labels' scores differ by 1e-6 and the
    third's by 1). Oracle: every labelling of 9 points with 3 per label, enumerated."""
    S = np.asarray(scale) * np.random.default_rng(10).normal(size=(9, 3)) + 1000.0 * np.max(scale)
    every = np.array(list(itertools.product(range(3), repeat=9)))
    sizes = np.stack([np.count_nonzero(every == y, axis=1) for y in range(3)], axis=1)
    balanced = every[np.all(sizes == 3, axis=1)]
    best = (-S[np.arange(9), balanced]).sum(axis=1).min()
    result = sinklabel.solve_exact(S, 3, method=method)
    assert result.objective == pytest.approx(best, rel=1e-12)
    assert result.certificate.optimal, result.certificate


def test_default_capacities_let_the_solution_choose_the_extra_points():
    rng = np.random.default_rng(0)
    S = rng.normal(size=(23, 5))
    S[:, 4] += 3.0  # everyone prefers label 4: it must be one of the 3 labels holding 5
    result = sinklabel.solve_exact(S, 5)
    counts = np.bincount(result.labels, minlength=5)
    assert sorted(counts) == [4, 4, 5, 5, 5] and counts[4] == 5
    fixed_first = milp_optimum(S, np.array([5, 5, 5, 4, 4]), np.array([5, 5, 5, 4, 4]))
    assert result.objective < fixed_first


def test_gap_is_nonnegative_for_feasible_labellings_and_zero_at_optimum(rng):
    S = make_scores(200, 8, regime="flat", seed=1).scores
    opt = sinklabel.solve_exact(S, 8)
    assert opt.certificate.gap == pytest.approx(0.0, abs=opt.certificate.rounding)
    for _ in range(5):
        labels = rng.permutation(np.repeat(np.arange(8), 25))
        for prices in (opt.prices, rng.normal(size=8)):
            cert = sinklabel.duality_gap(S, labels, prices)
            primal, dual = plain_certificate(S, labels, compared_prices(prices),
                                             np.full(8, 25), np.full(8, 25))
            assert cert.feasible and cert.gap >= 0
            assert cert.primal == pytest.approx(primal, rel=1e-12)
            assert cert.dual == pytest.approx(dual, rel=1e-12)
            assert cert.primal >= opt.objective >= cert.dual - cert.rounding


def test_duality_gap_is_the_same_on_every_backend_and_chunking(backend):
    S = make_scores(300, 10, regime="peaked", seed=2).scores
    opt = sinklabel.solve_exact(S, 10)
    ref = sinklabel.duality_gap(S, opt.labels, opt.prices)
    data = to_backend(S, backend)
    labels = to_backend(np.asarray(opt.labels), backend)
    for chunk_size in (None, 7):
        cert = sinklabel.duality_gap(data, labels, opt.prices, backend=backend,
                                     chunk_size=chunk_size)
        assert cert.primal == pytest.approx(ref.primal, rel=1e-12)
        assert cert.dual == pytest.approx(ref.dual, rel=1e-9)


def test_labels_come_back_in_the_input_library(backend):
    S = make_scores(120, 6, regime="flat", seed=5).scores
    data = to_backend(S, backend)
    result = sinklabel.solve_exact(data, 6, backend=backend)
    assert array_library(result.labels) == array_library(data)
    assert np.bincount(to_host(result.labels), minlength=6).tolist() == [20] * 6


def test_memmapped_scores(tmp_path):
    S = make_scores(500, 10, regime="peaked", seed=6).scores
    np.save(tmp_path / "s.npy", S)
    mapped = np.load(tmp_path / "s.npy", mmap_mode="r")
    assert sinklabel.solve_exact(mapped, 10).objective == sinklabel.solve_exact(S, 10).objective


@pytest.mark.parametrize("weights", [None, [0.1, 0.2, 0.3, 0.4]])
def test_balance_exact_meets_capacities_and_is_optimal(weights):
    S = make_scores(1001, 4, regime="flat", seed=7).scores
    result = sinklabel.sinkhorn(S, 4, label_weights=weights, balance="exact")
    target = 1001 * (np.full(4, 0.25) if weights is None else np.asarray(weights))
    counts = np.bincount(result.labels, minlength=4)
    assert np.all(counts >= np.floor(target)) and np.all(counts <= np.ceil(target))
    assert counts.sum() == 1001 and np.array_equal(result.label_counts, counts)
    assert result.balance == "exact" and result.certificate.optimal
    caps = (np.floor(target).astype(int), np.ceil(target).astype(int))
    assert result.certificate.primal == pytest.approx(milp_optimum(S.astype(float), *caps),
                                                      rel=1e-9)
    plain = sinklabel.assign_labels(S, 4, label_weights=weights, balance="exact")
    assert np.array_equal(plain, result.labels)


@pytest.mark.filterwarnings("ignore::sinklabel.ConvergenceWarning")
def test_warm_start_reaches_the_same_optimum():
    S = make_scores(2000, 20, regime="peaked", seed=8).scores
    soft = sinklabel.sinkhorn(S, 20, max_iter=50)
    cold = sinklabel.solve_exact(S, 20)
    warm = sinklabel.solve_exact(S, 20, prices=soft.potentials / soft.lam)
    assert warm.objective == pytest.approx(cold.objective, rel=1e-12)


@pytest.mark.parametrize(
    ("capacities", "message"),
    [
        ([3, 3, 3], "sum to N=10"),
        ([5, 6, -1], "non-negative"),
        ([2.5, 2.5, 5], "whole numbers"),
        ([5, 5], r"shape \(3,\)"),
        (([4, 4, 4], [3, 5, 5]), "exceeds upper"),
        (([0, 0, 0], [3, 3, 3]), "admit N=10"),
        (([3, 3, 4], 5), r"capacities\[1\] \(upper\) must have shape \(3,\)"),  # a pair
        (([4, 4, 4], [4, 5, 3]), r"lower\[2\]=4 exceeds upper\[2\]=3"),
        ([3, np.inf, 4], "whole numbers"),
    ],
)
def test_bad_capacities_are_named(capacities, message):
    S = np.zeros((10, 3))
    with pytest.raises(ValueError, match=message):
        sinklabel.solve_exact(S, 3, capacities=capacities)


@pytest.mark.parametrize("capacities", [
    np.array([True, True, False]),  # not sizes 1, 1, 0: a mask passed by mistake
    np.array(["3", "3", "4"]),
    (np.array([3, 3, 4]), np.array([True, True, True])),
])
def test_capacities_that_are_not_numbers_are_refused(capacities):
    with pytest.raises(TypeError, match="must hold integers"):
        sinklabel.solve_exact(np.zeros((10, 3)), 3, capacities=capacities)


@pytest.mark.parametrize("sizes", [(3, 7), [3, 7], np.array([3, 7])])
def test_two_sizes_in_a_tuple_are_sizes(sizes):
    """With K=2 a tuple of two numbers is two sizes; a (lower, upper) pair holds vectors."""
    S = np.random.default_rng(0).normal(size=(10, 2))
    result = sinklabel.solve_exact(S, 2, capacities=sizes)
    assert result.label_counts.tolist() == [3, 7]
    pair = sinklabel.solve_exact(S, 2, capacities=((3, 3), (7, 7)))
    assert pair.label_counts.sum() == 10 and np.all(pair.label_counts >= 3)


@pytest.fixture(params=["cold", "warm"])
def start(request, monkeypatch):
    """Starting prices for the auction solver: none, or prices from which it goes straight
    to the exact finish (every warm start does, here), skipping the auction."""
    if request.param == "cold":
        return None
    _straight_to_shortest_paths(monkeypatch)
    return np.array([0.5, -0.25, 0.0])


def _no_auction(*args, **kwargs):
    raise AssertionError("a warm start that goes straight to shortest paths ran the auction")


def _straight_to_shortest_paths(monkeypatch) -> None:
    """Every warm start goes straight to the exact finish, and running the auction fails."""
    monkeypatch.setattr(_transport, "DIRECT_EXCESS", 1.0)
    monkeypatch.setattr(_transport, "_auction", _no_auction)


def test_a_label_without_finite_scores_cannot_be_forced(start):
    S = np.zeros((6, 3))
    S[:, 2] = -np.inf
    with pytest.raises(ValueError, match="label 2 must take at least 2 points"):
        sinklabel.solve_exact(S, 3, prices=start)
    result = sinklabel.solve_exact(S, 3, capacities=[3, 3, 0], prices=start)
    assert np.bincount(result.labels, minlength=3).tolist() == [3, 3, 0]


def test_a_point_that_can_only_take_closed_labels_is_named(start):
    S = np.zeros((6, 3))
    S[4, :2] = -np.inf  # row 4 has a finite score for label 2 only, which takes no points
    with pytest.raises(ValueError, match="point 4 has finite scores only for labels of capacity 0"):
        sinklabel.solve_exact(S, 3, capacities=[3, 3, 0], prices=start)


@pytest.mark.parametrize("method", ["auction", "highs"])
def test_hall_violation_is_infeasible(method, start):
    S = np.zeros((6, 3))
    S[:4, :2] = -np.inf  # only rows 4 and 5 can take labels 0 and 1, which need 2 each
    with pytest.raises(ValueError, match="no labelling meets the capacities"):
        sinklabel.solve_exact(S, 3, method=method, prices=start)


def test_points_with_a_single_finite_score_bid_a_bounded_step(engine):
    """A point with one finite score has no second best (-inf): its bid must still raise the
    price by a bounded step. An uncapped bid is infinite, fills every label at an infinite
    price, and the centred prices come out inf - inf = NaN (no labels at all)."""
    S = np.full((6, 3), -np.inf)
    S[[0, 1], 0] = [0.0, 1.0]
    S[[2, 3], 1] = [0.0, 0.5]
    S[[4, 5], 2] = [0.0, 3.0]
    result = sinklabel.solve_exact(S, 3)
    assert result.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert np.all(np.isfinite(result.prices))
    assert result.certificate.optimal


def test_other_bad_input():
    S = np.zeros((4, 6))
    with pytest.raises(ValueError, match="K=6 labels but only N=4"):
        sinklabel.solve_exact(S, 6)
    with pytest.raises(ValueError, match="method"):
        sinklabel.solve_exact(S.T, 4, method="simplex")
    with pytest.raises(ValueError, match="prices"):
        sinklabel.solve_exact(S.T, 4, prices=[0.0, 1.0])
    with pytest.raises(ValueError, match="prices must be finite"):
        sinklabel.solve_exact(S.T, 4, prices=[0.0, 1.0, np.inf, 2.0])
    with pytest.raises(ValueError, match="prices must be finite"):
        sinklabel.duality_gap(S.T, np.array([0, 1, 2, 3, 0, 1]), [0.0, np.nan, 0.0, 0.0])
    with pytest.raises(ValueError, match="balance"):
        sinklabel.sinkhorn(S.T, 4, balance="round")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\), got values in \[0, 4\]"):
        sinklabel.duality_gap(S.T, np.array([0, 1, 2, 4, 0, 1]), np.zeros(4))
    with pytest.raises(ValueError, match=r"in \[0, 4\), got values in \[-1, 2\]"):
        sinklabel.duality_gap(S.T, np.array([0, 1, 2, -1, 0, 1]), np.zeros(4))


@pytest.mark.parametrize(
    "row, message",
    [([np.nan, 0.0, 0.0], "NaN"), ([0.0, np.inf, 0.0], r"logp contains \+inf \(row 4\)"),
     ([-np.inf, -np.inf, -np.inf], "no finite score")],
)
def test_duality_gap_rejects_bad_scores(backend, row, message):
    """A certificate of NaN or infinite scores would be NaN or inf: the input is named (at
    lam = 1 no finite score overflows, so +inf is not blamed on a multiplication)."""
    S = np.zeros((6, 3))
    S[4] = row
    with pytest.raises(ValueError, match=message) as error:
        sinklabel.duality_gap(to_backend(S, backend), np.arange(6) % 3, np.zeros(3),
                              chunk_size=4)
    assert "row 4" in str(error.value)


def test_check_reports_against_the_optimum(capsys):
    S = make_scores(900, 9, regime="flat", seed=9).scores
    soft = sinklabel.sinkhorn(S, 9)
    report = sinklabel.check(soft, S)
    exact = sinklabel.solve_exact(S, 9)
    assert report.optimum == pytest.approx(exact.objective, rel=1e-12)
    assert report.objective == pytest.approx(-S[np.arange(900), soft.labels].astype(float).sum())
    assert report.agreement == pytest.approx(np.mean(soft.labels == exact.labels))
    assert report.feasible == bool(np.all(soft.label_counts == 100))
    text = str(report)
    assert "optimum" in text and "agreement" in text and "sizes" in text
    good = sinklabel.check(exact, S)
    assert good.optimal and good.agreement == 1.0 and good.gap == pytest.approx(0, abs=1e-6)
    bound_only = sinklabel.check(soft, S, exact=False)
    assert bound_only.optimum is None and bound_only.bound <= exact.objective + 1e-9


def test_check_bounds_bare_labels_with_the_prices_it_is_given():
    """prices= gives bare labels the bound a result would carry, and takes the place of a
    result's own: the bound is sum_i max_y (S[i, y] + v[y]) - sum_y n_y v[y] (cost form)."""
    S = make_scores(600, 6, regime="peaked", seed=3).scores
    exact = sinklabel.solve_exact(S, 6)

    def bound(v):
        return -((S.astype(float) + v).max(axis=1).sum() - 100 * v.sum())

    with_prices = sinklabel.check(exact.labels, S, prices=exact.prices, exact=False)
    assert with_prices.optimal and with_prices.optimum is None
    assert with_prices.bound == pytest.approx(bound(exact.prices), rel=1e-9)
    assert with_prices.bound == pytest.approx(exact.objective, rel=1e-9)
    zero = sinklabel.check(exact, S, prices=np.zeros(6), exact=False)
    assert zero.bound == pytest.approx(bound(np.zeros(6)), rel=1e-9) and not zero.optimal
    with pytest.raises(ValueError, match=r"prices must have shape \(6,\)"):
        sinklabel.check(exact.labels, S, prices=np.zeros(5), exact=False)


def _no_solve(*args, **kwargs):
    raise AssertionError("the exact problem was solved before the labels were checked")


def test_check_names_labels_that_do_not_fit_before_solving(monkeypatch):
    monkeypatch.setattr(importlib.import_module("sinklabel.check"), "solve_exact", _no_solve)
    S = np.zeros((12, 4))
    with pytest.raises(ValueError, match="labels must be 12 integers, got shape \\(5,\\)"):
        sinklabel.check(np.arange(5) % 4, S)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        sinklabel.check(np.arange(12), S)
    with pytest.raises(TypeError, match="dtype float64"):
        sinklabel.check(np.zeros(12), S)
    with pytest.raises(ValueError, match="labels could not be read as one array: "):
        sinklabel.check([[0], [1, 1]], S)


def test_cli_check(tmp_path, capsys):
    S = make_scores(400, 8, regime="peaked", seed=10).scores
    np.save(tmp_path / "s.npy", S)
    exact = sinklabel.solve_exact(S, 8)
    np.save(tmp_path / "exact.npy", np.asarray(exact.labels))
    assert main(["check", str(tmp_path / "s.npy"), str(tmp_path / "exact.npy"), "-k", "8"]) == 0
    assert "optimal" in capsys.readouterr().out
    swapped = np.asarray(exact.labels).copy()
    i, j = np.flatnonzero(swapped != swapped[0])[0], 0
    swapped[[i, j]] = swapped[[j, i]]
    np.save(tmp_path / "worse.npy", swapped)
    assert main(["check", str(tmp_path / "s.npy"), str(tmp_path / "worse.npy")]) == 1
    assert main(["check", str(tmp_path / "s.npy"), str(tmp_path / "worse.npy"), "-k", "5"]) == 2
    assert "-k 5" in capsys.readouterr().err


def test_certificate_holds_where_prices_cancel_the_scores(rng):
    """Every point scores each label the same, offset so the optimal cost is ~0: the prices
    cancel the scores and the per-row winning values are ~0 while the prices are not. The
    rounding bound must scale with the prices, or an optimal labelling is reported as not."""
    offsets = rng.standard_normal(6) * 7.3
    offsets -= offsets.mean()
    scores = np.tile(offsets, (300, 1))
    result = sinklabel.solve_exact(scores, 6)
    assert np.all(result.label_counts == 50)
    assert abs(result.objective) < 1e-9
    assert result.certificate.optimal, result.certificate


# ---------------------------------------------------------------------------------------------
# Warm starts (balance="exact"): straight to shortest paths from the given prices, on a boundary
# of points that widens when it cannot prove a path shortest, handing over to the auction when
# over budget.
# ---------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(problem=problems(), seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([0.0, 0.3, 3.0]),
       compiled=st.booleans())
def test_warm_finish_matches_integer_program(problem, seed, scale, compiled):
    S, capacities, lower, upper = problem
    N, K = S.shape
    prices = np.random.default_rng(seed).normal(scale=scale, size=K)
    best = milp_optimum(S.astype(np.float64), lower, upper)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_transport, "DIRECT_EXCESS", 1.0)
        patch.setattr(_transport, "SETTLED_PER_POINT", np.inf)
        patch.setattr(_transport, "BOUNDARY_SHARE", 0.1)  # a point or two, then wider
        patch.setattr(_transport, "ROUND_PATHS", 1)
        patch.setattr(_transport, "_auction", _no_auction)
        if best is None:
            with pytest.raises(ValueError, match="capacit|-inf"):
                _transport.solve_transport(S, lower, upper, prices, use_numba=compiled)
            return
        solution = _transport.solve_transport(S, lower, upper, prices, use_numba=compiled)
    counts = np.bincount(solution.labels, minlength=K)
    assert np.all(counts >= lower) and np.all(counts <= upper)
    primal, dual = plain_certificate(S, solution.labels, solution.prices, lower, upper)
    assert primal == pytest.approx(best, rel=1e-9, abs=1e-9)
    certificate = sinklabel.duality_gap(S, solution.labels, solution.prices, (lower, upper))
    slack = certificate.rounding if S.dtype == np.float32 else 0.0
    assert dual == pytest.approx(best, rel=1e-9, abs=1e-9 + slack)
    assert certificate.optimal and solution.bids == 0


@pytest.mark.parametrize("compiled", [True, False])
def test_warm_finish_widens_its_boundary(compiled, monkeypatch):
    S = make_scores(600, 12, regime="peaked", seed=4).scores
    S[::7, 3] = -np.inf
    remeasured = []
    measure = _transport._label_margins
    monkeypatch.setattr(_transport, "_label_margins",
                        lambda *args: remeasured.append(1) or measure(*args))
    _straight_to_shortest_paths(monkeypatch)
    lower = upper = np.full(12, 50)
    # Zero prices are far from optimal here: the first boundary (19 points) cannot be enough.
    solution = _transport.solve_transport(S, lower, upper, np.zeros(12), use_numba=compiled)
    highs = sinklabel.solve_exact(S, 12, method="highs")
    assert remeasured and solution.paths > 0
    assert -S[np.arange(600), solution.labels].astype(float).sum() == pytest.approx(
        highs.objective, rel=1e-9)
    assert sinklabel.duality_gap(S, solution.labels, solution.prices).optimal


#: 28 points, 6 labels: a warm finish that moves three points into one label.
LIST_ORDER_SCORES = np.array([
    [-2, -1, 1, -1, 0, -1], [-2, -1, -1, 0, 0, 2], [1, 0, 0, 0, 2, 1], [1, 1, -1, 0, 0, 0],
    [0, -1, 2, 1, 0, -2], [0, -2, 1, 0, 0, 0], [-2, 0, 0, 2, 0, 0], [0, 1, 2, 1, 1, -1],
    [0, 3, -1, 0, -1, -1], [0, 0, -1, 0, 2, 1], [0, -1, 0, 0, -1, -1], [0, 0, -1, 0, 0, 1],
    [0, 1, 2, -1, -2, -1], [-2, 1, -1, 0, -1, -1], [1, -1, 1, 0, 0, 1], [1, 2, -2, 0, -1, 1],
    [1, -1, 1, -1, 0, 1], [-1, 1, 1, 0, 0, 1], [0, 1, 0, 1, 1, 0], [2, 2, 0, 0, 1, 0],
    [-1, 0, 1, 0, 0, -1], [0, 1, 1, 0, 0, -1], [-1, -1, -1, -2, -2, 0], [1, 0, 1, -1, -1, -2],
    [-2, 2, -1, 1, 0, 2], [2, 1, 1, -1, 0, 1], [-1, -1, 0, 0, 0, 0], [1, -1, 0, 2, 0, 1],
], dtype=np.float64)
LIST_ORDER_PRICES = np.array([-6.2, 3.3, 0.3, 1.1, 2.7, 1.6])


@pytest.mark.parametrize("rows", [list(range(28)), [17, *range(1, 17), 0, *range(18, 28)]],
                         ids=["as drawn", "points 0 and 17 swapped"])
def test_warm_finish_keeps_each_label_list_in_increasing_bounds(engine, monkeypatch, rows):
    """A point moved into a label takes the smaller of its margin and the old head's as its
    bound ``mu``, so that each label's list stays in increasing ``mu``. Without that, once
    three points had moved into one label, refreshing its row stopped before a member that
    beat the best found: an overestimated distance, a path that was not shortest, and a
    labelling one worse than the optimum (-37), with a failed certificate. With points 0 and
    17 swapped, point 0 heads a list when another moves in ahead of it, and the head test
    must take it (``>= 0``: ``> 0`` skipped it). Both found by mutation testing."""
    S = LIST_ORDER_SCORES[rows]
    _straight_to_shortest_paths(monkeypatch)
    result = sinklabel.solve_exact(S, 6, prices=LIST_ORDER_PRICES)
    assert result.objective == pytest.approx(sinklabel.solve_exact(S, 6, method="highs").objective,
                                             rel=1e-9)  # -38
    assert result.certificate.optimal, result.certificate


def test_warm_finish_keeps_a_stale_distance_stale_when_a_point_joins(engine, monkeypatch):
    """A point joining a label clears a stale entry of the label's row only where its own gap
    is below the stale lower bound (``old & (value > d)``), the one case where the entry is
    exact again. Mutation testing found that clearing it where the gap is *at least* the
    bound (``value < d``) takes the stale lower bound for exact: the search then works from
    a wrong distance, and label 3 ends below its lower bound (an infeasible labelling)."""
    S = np.array([[1, 0, 0, -1], [1, 0, 0, -1], [0, 0, -np.inf, -1]])
    capacities = (np.array([0, 1, 0, 1]), np.array([2, 2, 5, 4]))
    _straight_to_shortest_paths(monkeypatch)
    result = sinklabel.solve_exact(S, 4, capacities=capacities,
                                   prices=np.array([2.5, -7.0, 4.0, -2.0]))
    highs = sinklabel.solve_exact(S, 4, capacities=capacities, method="highs")
    assert result.objective == pytest.approx(highs.objective, abs=1e-12)  # 0
    assert np.all(result.label_counts >= capacities[0]), result.label_counts
    assert result.certificate.optimal, result.certificate


def test_warm_finish_bounds_the_other_points_by_how_far_prices_moved(engine, monkeypatch):
    """Label 1 starts 1 above the others and its first path (point 0 to label 2) lowers it
    by 2, so a point outside the boundary (margin 5.5 > theta = 5, point 2) is now 3.5 from
    label 2: the next path, at most theta less the spread of ``v - v0`` (5 - 2), must stop and
    widen the boundary. Mutation testing found that a spread taken over ``v + v0`` (0 here)
    accepts point 1's path of 4.5 instead: one worse than the optimum, failed certificate."""
    S = np.array([[0, 9, 8], [5, 9, 3.5], [0, 9, 4.5], [10, 0, 0], [0, 0, 10]])
    sizes = np.array([1, 1, 3])
    _straight_to_shortest_paths(monkeypatch)
    monkeypatch.setattr(_transport, "BOUNDARY_SHARE", 0.25)  # points 0 and 1 (margins 2, 5)
    result = sinklabel.solve_exact(S, 3, capacities=sizes, prices=np.array([0.0, 1.0, 0.0]))
    highs = sinklabel.solve_exact(S, 3, capacities=sizes, method="highs")
    assert result.objective == pytest.approx(highs.objective, abs=1e-12)  # -41.5
    assert result.label_counts.tolist() == sizes.tolist()
    assert result.certificate.optimal, result.certificate


def test_warm_finish_measures_a_moved_points_margin_at_the_start_prices(monkeypatch):
    """A point that moves along a path enters its new label's list with its margin there at
    the prices of the start, which bounds how far its edge costs can fall. Measured with the
    other labels' prices subtracted instead of added (a mutant that a random search against
    HiGHS found at its 110th problem, shrunk to this one), the bound came out too high,
    the list was scanned short, and the labels came back optimal with prices that do not
    certify them (gap 0.035)."""
    S = np.array([[-0.05, -0.23, 0.3, 0.24, -0.88],
                  [0.1, 0.56, 0.49, -0.18, -1.03],
                  [-1.15, 0.38, 0.22, 0.09, 0.18],
                  [-1.07, -1.64, -2.04, 0.23, -0.56],
                  [-1.22, -1.24, -1.67, 0.25, 0.1],
                  [-0.24, -1.14, 0.11, -1.02, -0.05],
                  [0.53, 1.27, -0.92, 0.86, 1.56]])
    sizes = np.array([1, 1, 2, 2, 1])
    _straight_to_shortest_paths(monkeypatch)
    monkeypatch.setattr(_transport, "BOUNDARY_SHARE", 0.02)  # one point to start with
    monkeypatch.setattr(_transport, "ROUND_PATHS", 1)
    result = sinklabel.solve_exact(S, 5, capacities=sizes,
                                   prices=np.array([-2.0, 10.0, -12.0, -13.0, -8.0]))
    highs = sinklabel.solve_exact(S, 5, capacities=sizes, method="highs")
    assert result.objective == pytest.approx(highs.objective, abs=1e-12)
    assert result.label_counts.tolist() == sizes.tolist()
    assert result.certificate.optimal, result.certificate


def _random_transport(rng: np.random.Generator) -> tuple:
    """A small transportation problem of the kinds the exact finish meets: integer, rounded
    or Gaussian scores, some -inf, exact sizes or ranges, a closed label, float32 scores, and
    start prices near or far from the answer (or none)."""
    N, K = int(rng.integers(3, 41)), int(rng.integers(2, 9))
    S = [rng.integers(-3, 4, (N, K)).astype(float), rng.normal(size=(N, K)),
         rng.integers(-30, 31, (N, K)).astype(float),
         np.round(rng.normal(size=(N, K)), 1)][rng.integers(4)]
    if rng.random() < 0.5:
        S[rng.random((N, K)) < rng.choice([0.05, 0.2, 0.4])] = -np.inf
    if rng.random() < 0.2:
        S = S.astype(np.float32)
    if rng.random() < 0.5:
        lower = upper = rng.multinomial(N, np.ones(K) / K)
    else:
        lower = rng.integers(0, N // K + 2, K)
        upper = lower + rng.integers(0, N // 2 + 1, K)
        upper[rng.integers(K)] += max(0, N - upper.sum())
        if lower.sum() > N:
            lower = np.minimum(lower, N // K)
    if rng.random() < 0.15:
        closed = rng.integers(K)
        lower, upper = lower.copy(), upper.copy()
        lower[closed] = upper[closed] = 0
        upper[(closed + 1) % K] += max(0, N - upper.sum())
    prices = rng.normal(scale=rng.choice([0.0, 0.3, 3.0, 10.0]), size=K)
    prices = None if rng.random() < 0.1 else np.round(prices) if rng.random() < 0.3 else prices
    return S, lower, upper, prices


@pytest.mark.parametrize("first_seed", range(0, 200, 50))
@pytest.mark.filterwarnings("error::RuntimeWarning")  # none from the plain-Python loops either
def test_warm_finishes_of_random_problems_match_highs(monkeypatch, first_seed):
    """A random search against HiGHS, warm starts sent straight to the finish with boundaries
    from 1/50 to 3/10 of the points, a Dijkstra budget that sometimes hands over to the
    auction, and a boundary widened after each path or after 16: the settings where the
    finish's bookkeeping is exercised most. Searches like this one, run during mutation
    testing, found the result-changing gaps that the hand-made cases above were then written
    for; this one keeps 200 such problems in the suite."""
    monkeypatch.setattr(_transport, "DIRECT_EXCESS", 1.0)
    for seed in range(first_seed, first_seed + 50):
        rng = np.random.default_rng(seed)
        S, lower, upper, prices = _random_transport(rng)
        monkeypatch.setattr(_transport, "BOUNDARY_SHARE", rng.choice([0.02, 0.1, 0.3, 1 / 32]))
        monkeypatch.setattr(_transport, "ROUND_PATHS", int(rng.choice([1, 16])))
        monkeypatch.setattr(_transport, "SETTLED_PER_POINT",
                            np.inf if rng.random() < 0.8 else 0.5)
        problem = dict(capacities=(lower, upper))
        try:
            highs = sinklabel.solve_exact(S, S.shape[1], method="highs", **problem)
        except ValueError:
            with pytest.raises(ValueError):
                sinklabel.solve_exact(S, S.shape[1], prices=prices, **problem)
            continue
        ours = sinklabel.solve_exact(S, S.shape[1], prices=prices, **problem)
        counts = np.bincount(ours.labels, minlength=S.shape[1])
        assert np.all((lower <= counts) & (counts <= upper)), seed
        assert ours.objective == pytest.approx(highs.objective, rel=1e-7, abs=1e-7), seed
        assert ours.certificate.optimal, seed


def test_warm_finish_over_budget_hands_over_to_the_auction(monkeypatch):
    S = make_scores(600, 12, regime="peaked", seed=4).scores
    monkeypatch.setattr(_transport, "DIRECT_EXCESS", 1.0)
    monkeypatch.setattr(_transport, "SETTLED_PER_POINT", 0.0)
    monkeypatch.setattr(_transport, "SETTLED_PER_LABEL", 2)  # a path or two
    prices = np.random.default_rng(3).normal(size=12)
    solution = _transport.solve_transport(S, np.full(12, 50), np.full(12, 50), prices,
                                          use_numba=True)
    assert solution.bids > 0  # the auction ran, from the prices the finish had reached
    highs = sinklabel.solve_exact(S, 12, method="highs")
    assert -S[np.arange(600), solution.labels].astype(float).sum() == pytest.approx(
        highs.objective, rel=1e-9)


@pytest.mark.filterwarnings("ignore::sinklabel.ConvergenceWarning")
def test_balance_exact_goes_straight_to_shortest_paths_on_flat_scores(monkeypatch):
    S = make_scores(3000, 15, regime="flat", seed=11).scores
    monkeypatch.setattr(_transport, "_auction", _no_auction)
    result = sinklabel.sinkhorn(S, 15, balance="exact")
    assert result.certificate.optimal
    highs = sinklabel.solve_exact(S, 15, method="highs")
    assert result.certificate.primal == pytest.approx(highs.objective, rel=1e-9)


class CountingScores:
    """Scores that count their reads, for the plain Python loops."""

    def __init__(self, S):
        self.S, self.shape, self.reads = S, S.shape, 0

    def __getitem__(self, index):
        self.reads += 1
        return self.S[index]


@pytest.fixture(scope="module")
def plain_loops():
    """A second copy of ``sinklabel._transport_loops``, imported as where numba is not
    installed: plain Python throughout, so the loops take any object as scores."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "numba", None)
        patch.delitem(sys.modules, "sinklabel._simd")
        patch.setattr(sinklabel, "_simd", sinklabel._simd)  # undone after the fresh import
        spec = importlib.util.spec_from_file_location("sinklabel._plain_loops",
                                                      _transport_loops.__file__)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    assert not module.HAVE_NUMBA
    return module


def test_refreshing_a_row_stops_at_the_first_member_that_cannot_beat_it():
    """Members whose bound equals the best found cannot beat it: with tied scores (all equal,
    as from a collapsed network) scanning them all made every shortest path O(N) and the
    exact finish O(N^2) (14 s instead of 1.4 s at N=20000, K=50)."""
    N, K = 1000, 3
    S = CountingScores(np.zeros((N, K)))
    head = np.full(K, -1, np.int64)
    nxt, prv = np.empty(N, np.int64), np.empty(N, np.int64)
    _transport_loops.link_members.py_func(np.arange(N), np.zeros(N, np.int64), head, nxt, prv)
    D = np.full((K, K), -np.inf)  # stale entries hold lower bounds: none tighter here
    Darg = np.full((K, K), -1, np.int64)
    stale = np.zeros((K, K), np.bool_)
    stale[0, 1:] = True
    _transport_loops._refresh_row.py_func(S, 0, D, Darg, stale, head, nxt, np.zeros(N),
                                          np.zeros(K))
    assert np.all(D[0, 1:] == 0.0) and np.all(Darg[0, 1:] >= 0) and not stale.any()
    assert S.reads == 2 * 2  # one member per stale entry, two scores each


def shortest_path_reads(loops, N: int, K: int) -> int:
    """Score reads of the exact finish that spreads N identical rows over K labels, from
    prices that favour label 0 by a hair over the others, themselves apart by hairs (as the
    auction leaves them)."""
    rng = np.random.default_rng(0)
    row = rng.normal(size=K)
    S = np.tile(row, (N, 1))
    v = -row - rng.uniform(1e-11, 1e-10, K)
    v[0] = -row[0]
    labels = np.zeros(N, np.int64)
    margin = np.full(N, (S[0] + v)[0] - np.delete(S[0] + v, 0).max())
    head = np.full(K, -1, np.int64)
    nxt, prv = np.empty(N, np.int64), np.empty(N, np.int64)
    loops.link_members(np.arange(N), labels, head, nxt, prv)
    D = np.full((K, K), np.inf)
    Darg = np.full((K, K), -1, np.int64)
    stale = np.zeros((K, K), np.bool_)
    loops.label_distances(S, head, nxt, D, Darg, stale)
    sizes = np.full(K, N // K)
    counting = CountingScores(S)
    status, *_ = loops.shortest_paths(
        counting, labels, v, 0.0, sizes, sizes, np.zeros(K, np.int64), np.bincount(labels,
        minlength=K), head, nxt, prv, D, Darg, stale, margin, np.inf, np.iinfo(np.int64).max,
    )
    assert status == 0 and np.array_equal(np.bincount(labels, minlength=K), sizes)
    return counting.reads


def test_identical_rows_cost_the_exact_finish_linear_work(plain_loops):
    """Identical rows (a collapsed network's logits) all start at one label and need a path
    each; when every path rescanned that label for each stale entry the finish was O(N^2)
    (32 s at N=20000, K=50). A member that attains the stale lower bound ends the scan."""
    small = shortest_path_reads(plain_loops, 200, 5)
    large = shortest_path_reads(plain_loops, 400, 5)
    assert large < 2.2 * small


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K", [1, 7, 8, 19])
def test_compiled_passes_match_numpy(dtype, K):
    rng = np.random.default_rng(K)
    S = np.round(rng.normal(size=(300, K)), 1).astype(dtype)  # many ties
    S[rng.random(S.shape) < 0.2] = -np.inf
    S[5] = -np.inf  # a row with no finite score
    v = np.round(rng.normal(size=K), 1)
    v[0] = -np.inf  # a closed label
    labels, low, margin = _transport._best_labels(S, v, False)
    values = S.astype(np.float64) + v
    assert np.array_equal(labels, np.where(values.max(axis=1) > -np.inf, values.argmax(axis=1), -1))
    assert np.array_equal(low, S.min(axis=1))
    ordered = np.sort(np.hstack([np.full((S.shape[0], 1), -np.inf), values]), axis=1)
    with np.errstate(invalid="ignore"):
        gap = ordered[:, -1] - ordered[:, -2]
    assert np.array_equal(margin, np.where(ordered[:, -1] > -np.inf, gap, np.inf))
    for got, want in zip(_transport._best_labels(S, v, True), (labels, low, margin), strict=True):
        assert np.array_equal(got, want)
    assert labels[5] == -1 and margin[5] == np.inf
    rows = labels >= 0
    # Margins at other labels than the best: the labels a point is moved to.
    moved = np.where(rng.random(rows.sum()) < 0.5, labels[rows], rng.integers(0, K, rows.sum()))
    moved = np.where(S[rows, moved] + v[moved] > -np.inf, moved, labels[rows])
    others = values[rows]
    own = others[np.arange(moved.size), moved].copy()
    others[np.arange(moved.size), moved] = -np.inf
    for compiled in (True, False):
        assert np.array_equal(_transport._label_margins(S[rows], v, moved, compiled),
                              own - others.max(axis=1))


@pytest.mark.parametrize("way", ["compiled", "python", "numpy"])
@pytest.mark.parametrize("K", [5, 16, 40, 300])  # 300: block maxima screen the rows first
def test_candidates_are_each_rows_best_labels_and_bound_the_rest(way, K):
    rng = np.random.default_rng(K)
    N, m = 200, min(K, CANDIDATES)
    S = rng.normal(size=(N, K)).astype(np.float32)
    S[rng.random(S.shape) < 0.1] = -np.inf
    S[:, 0] = np.where(np.isfinite(S[:, 0]), S[:, 0], 0.0)  # a finite score in every row
    price = rng.normal(size=K)
    cand, cand_s = np.empty((N, m), np.int64), np.empty((N, m), np.float32)
    bound, low = np.empty(N), np.empty(N, np.float32)
    build = {
        "compiled": _transport_loops.build_candidates,
        "python": _transport_loops.build_candidates.py_func,
        "numpy": lambda *arrays: _transport._build_candidates(*arrays, use_numba=False),
    }[way]
    build(S, price, cand, cand_s, bound, low)
    values = S.astype(np.float64) - price
    ranked = np.sort(values, axis=1)[:, ::-1]
    rows = np.arange(N)[:, None]
    assert np.array_equal(np.sort(values[rows, cand], axis=1)[:, ::-1], ranked[:, :m])
    assert np.array_equal(cand_s, S[rows, cand])
    assert np.array_equal(bound, ranked[:, m] if m < K else np.full(N, -np.inf))
    assert np.array_equal(low, S.min(axis=1))


def _auction_phase(S: np.ndarray, price: np.ndarray, caps: np.ndarray, m: int, eps: float,
                   compiled: bool) -> tuple:
    """One auction phase from candidate lists of ``m`` labels, every point on the stack, prices
    updated in place: points left, the stack, the label offsets, holders, sizes and bids."""
    N, K = S.shape
    cand, cand_s = np.empty((N, m), np.int64), np.empty((N, m))
    bound, low = np.empty(N), np.empty(N)
    _transport_loops.build_candidates(S, price, cand, cand_s, bound, low)
    off = np.r_[0, np.cumsum(caps)]
    hbid, hpt, hsize = np.empty(N), np.empty(N, np.int64), np.zeros(K, np.int64)
    stack = np.arange(N)
    phase = _transport_loops.auction_phase
    left, _ = (phase if compiled else phase.py_func)(
        S, cand, cand_s, bound, price, price.copy(), caps, off, hbid, hpt, hsize,
        stack, N, eps, 16.0, 100 * N)
    return left, stack, off, hpt, hsize, hbid


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_auction_phase_holds_every_point_within_eps_of_its_best_label(compiled, seed):
    """The auction's invariant, checked against full rows: each held point's value at its
    label is within eps of its best value over all labels at the final prices. With two
    candidates of six labels the lists run out as prices rise, and a point whose best listed
    value falls below its bound must rebuild its list before bidding (a bid from the stale
    list goes to the wrong label, and its step is negative)."""
    rng = np.random.default_rng(seed)
    N, K, m, eps = 60, 6, 2, 1e-3
    S = rng.normal(size=(N, K))
    caps = rng.multinomial(N, np.ones(K) / K)
    price = np.where(caps > 0, 0.0, np.inf)
    left, _, off, hpt, hsize, hbid = _auction_phase(S, price, caps, m, eps, compiled)
    assert left == 0 and np.array_equal(hsize, caps)
    for y in range(K):  # a full label's price is the lowest bid it holds, at its heap's root
        bids = hbid[off[y]:off[y + 1]]
        children = np.arange(1, bids.size)
        assert np.all(bids[(children - 1) // 2] <= bids[children])
        assert bids.size == 0 or price[y] == bids.min()
    labels = np.empty(N, np.int64)
    for y in range(K):
        labels[hpt[off[y]:off[y + 1]]] = y
    assert np.array_equal(np.sort(hpt), np.arange(N))  # every point held once
    values = S - price
    own = values[np.arange(N), labels]
    assert np.all(own >= values.max(axis=1) - eps - 1e-12)


@pytest.mark.parametrize("compiled", [True, False])
def test_auction_phase_returns_a_point_with_no_open_label_unassigned(compiled):
    """A point whose only finite score is at a closed label (no copies, infinite price) has
    no candidate of finite value: the phase must hand it back unassigned (found by mutation
    testing: starting the best candidate at a real label instead of -1 made it bid NaN on
    that label and report every point held)."""
    N, K, m = 3, 3, 2
    S = np.zeros((N, K))
    S[0] = [0.0, -np.inf, -np.inf]
    caps = np.array([0, 2, 1])
    price = np.array([np.inf, 0.0, 0.0])
    left, stack, _, _, hsize, _ = _auction_phase(S, price, caps, m, 1e-3, compiled)
    assert left == 1 and stack[0] == 0
    assert hsize[0] == 0 and hsize.sum() == 2 and np.isfinite(price[1:]).all()


@pytest.mark.parametrize("compiled", [True, False])
def test_argmax_from_candidates_reads_full_rows_where_they_cannot_tell(compiled):
    """The candidates answer a row only when their best reaches the bound on the rest;
    otherwise the row's argmax may lie outside them and the whole row is read."""
    rng = np.random.default_rng(3)
    N, K, m = 400, 12, 3
    S = rng.normal(size=(N, K))
    v = rng.normal(size=K)
    values = S + v
    best = values.argmax(axis=1)
    listed = rng.random(N) < 0.5  # half the rows list their best label among the candidates
    others = [rng.permutation(np.delete(np.arange(K), b)) for b in best]
    cand = np.array([rng.permutation(np.r_[b, o[:m - 1]]) if keep else o[:m]
                     for b, o, keep in zip(best, others, listed, strict=True)])
    rows = np.arange(N)[:, None]
    rest = values.copy()
    rest[rows, cand] = -np.inf
    bound = rest.max(axis=1) + rng.random(N) * 0.1 * listed  # a loose bound is still a bound
    labels, margin = np.empty(N, np.int64), np.empty(N)
    argmax = _transport_loops.argmax_labels
    (argmax if compiled else argmax.py_func)(S, cand, S[rows, cand], bound, v, labels, margin)
    assert np.array_equal(labels, best)
    ordered = np.sort(values, axis=1)
    exact = ordered[:, -1] - ordered[:, -2]
    assert np.all((margin > 0) & (margin <= exact + 1e-12))
    assert np.array_equal(margin[~listed], exact[~listed])


def test_exact_solver_runs_without_numba():
    """Without numba installed the loops run as plain Python: the same optimum, warm or cold."""
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import numpy as np, sinklabel\n"
        "from sinklabel import _transport_loops\n"
        "from sinklabel.datasets import make_scores\n"
        "assert not _transport_loops.HAVE_NUMBA\n"
        "S = make_scores(300, 6, regime='peaked', seed=1).scores\n"
        "S[::5, 2] = -np.inf\n"
        "for prices in (None, np.zeros(6)):\n"
        "    result = sinklabel.solve_exact(S, 6, prices=prices, backend='numpy')\n"
        "    assert result.certificate.optimal\n"
        "    print(repr(result.objective))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, check=True)
    S = make_scores(300, 6, regime="peaked", seed=1).scores
    S[::5, 2] = -np.inf
    highs = sinklabel.solve_exact(S, 6, method="highs")
    for line in done.stdout.split():
        assert float(line) == pytest.approx(highs.objective, rel=1e-9)
    assert len(done.stdout.split()) == 2


def test_big_endian_float64_scores_are_solved_in_float64():
    """Scores from a file written on a big-endian machine ('>f8') keep float64: differences
    of 1e-9, which float32 rounds away, still decide the optimum."""
    S = 1.0 + np.random.default_rng(0).uniform(0, 1e-9, (40, 4))
    native = sinklabel.solve_exact(S, 4)
    big = sinklabel.solve_exact(S.astype(">f8"), 4)
    assert big.certificate.optimal
    np.testing.assert_array_equal(big.labels, native.labels)


# ---------------------------------------------------------------------------------------------
# Certificates of 16- and 32-bit scores at prices float32 cannot hold, and check's verdict
# once the optimum is solved.
# ---------------------------------------------------------------------------------------------


def assignment_optimum(S: np.ndarray, sizes: np.ndarray) -> float:
    """Least cost ``sum_i -S[i, y_i]`` with ``sizes[y]`` points per label: an assignment of the
    points to the labels' columns, each repeated ``sizes[y]`` times (SciPy, in float64)."""
    columns = np.repeat(np.arange(S.shape[1]), sizes)
    cost = -S.astype(np.float64)[:, columns]
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].sum())


def test_exact_takes_scores_near_the_float32_limit():
    """The exact problem has no lam: its scores are checked as they are, so float32 scores
    within float32's range are accepted whatever their size, and solved to the optimum. The
    auction took the range of these in float32, which overflowed (a RuntimeWarning)."""
    S = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    S[0, 1], S[3, 2] = 2e38, -3e38
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = sinklabel.solve_exact(S, 3)
    assert result.objective == pytest.approx(assignment_optimum(S, np.full(3, 2)), rel=1e-12)
    assert result.certificate.optimal


def _costly_label_problem() -> tuple[np.ndarray, np.ndarray]:
    """Five points; label 1 costs about 1e6 and takes exactly one of them, label 2 none. Only
    points 0 and 1 care which: moving point 0 costs 0.01 less than moving point 1."""
    S = np.zeros((5, 3), np.float32)
    S[:, 1] = -1e7
    S[0] = [0.01, -1e6, 0.0]
    S[1] = [0.02, -1e6, 0.0]
    return S, np.array([4, 1, 0])


def test_float32_certificate_holds_at_prices_float32_cannot_hold():
    """Prices 1e6 + 0.03 for label 1, and its negative for the closed label 2 (centring the
    prices on label 0's): the kernel added them to the float32 scores as float32, 1e6, so it
    picked label 0 for points 0 and 1, where the prices prefer label 1 by 0.02 and 0.01. The
    bound came out 0.02 above the optimum with an allowance of 1e-8 (from label 0's small
    winners), and a labelling 0.01 worse than the optimum was certified optimal; check, even
    after solving the exact problem, called it optimal too."""
    S, caps = _costly_label_problem()
    best, worse = np.zeros(5, np.int64), np.zeros(5, np.int64)
    best[0] = worse[1] = 1
    optimum = assignment_optimum(S, caps)
    assert optimum == pytest.approx(1e6 - 0.02, abs=1e-6)
    prices = np.array([0.0, 1e6 + 0.03, -1e6 - 0.03])
    for labels in (best, worse):
        cert = sinklabel.duality_gap(S, labels, prices, caps)
        assert cert.dual - cert.rounding <= optimum
        assert not cert.optimal  # these prices prove 0.01 below the optimum, and no more
    assert not sinklabel.check(worse, S, capacities=caps, prices=prices, exact=False).optimal
    exact = sinklabel.solve_exact(S, 3, capacities=caps)
    np.testing.assert_array_equal(exact.labels, best)
    assert exact.certificate.optimal
    assert exact.certificate.dual - exact.certificate.rounding <= optimum
    assert sinklabel.check(best, S, capacities=caps).optimal
    assert not sinklabel.check(worse, S, capacities=caps).optimal


@st.composite
def costly_label_problems(draw):
    """That problem at random: N points scoring label 0 near 0, label 1 the same less an
    offset up to 1e7 (3e4 in float16), which takes m of them, and a closed label 2. Prices:
    the optimal ones (solved in float64) with label 1's raised by up to half a unit of
    float32's rounding, label 2's its negative, plus a constant; any labelling of those sizes.
    """
    dtype = draw(st.sampled_from([np.float32, np.float16]))
    N = draw(st.integers(2, 8))
    m = draw(st.integers(1, N - 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    offset = 3e4 if dtype == np.float16 else 10 ** rng.uniform(3, 7)
    S = rng.normal(size=(N, 3)) * 2.0**-22 * offset
    S[:, 1] -= offset
    S = S.astype(dtype)
    sizes = np.array([N - m, m, 0])
    prices = sinklabel.solve_exact(S.astype(np.float64), 3, capacities=sizes).prices
    prices = prices - prices[0]
    prices[1] += rng.uniform(0, 2.0**-24) * abs(prices[1])
    prices[2] = -prices[1]
    prices += draw(st.sampled_from([0.0, 1e3, -1e6, 1e7]))
    return S, sizes, prices, rng.permutation(np.repeat(np.arange(3), sizes))


@settings(max_examples=200, deadline=None)
@given(problem=costly_label_problems())
def test_float32_certificate_never_bounds_above_the_optimum(problem):
    """Weak duality less the stated rounding, against an optimum found independently."""
    S, sizes, prices, labels = problem
    optimum = assignment_optimum(S, sizes)
    cert = sinklabel.duality_gap(S, labels, prices, sizes)
    assert cert.dual - cert.rounding <= optimum + 4 * len(S) * 2.0**-53 * abs(optimum)
    assert cert.gap >= -cert.rounding


def test_float64_rows_beside_float32_rows_keep_the_bound():
    """Across ranks, float64 rows are compared at the prices as given and float32 rows at
    the prices rounded to float32, which the bound is then for: a float64 row's maximum can
    sit up to the prices' rounding off its maximum at those. Point 0, on the float64 rank,
    prefers label 1 by 0.0375 at the given 1e6 + 0.1, but by 0.0625 at the rounded (and
    optimal) 1e6 + 0.125."""
    S = np.zeros((5, 3))
    S[:, 1] = -1e7
    S[0] = [0.0625, -1e6, 0.0]
    S[1] = [0.125, -1e6, 0.0]
    caps = np.array([4, 1, 0])
    labels = np.array([1, 0, 0, 0, 0])
    prices = np.array([0.0, 1e6 + 0.1, -1e6 - 0.1])
    kernel = resolve_kernel("numpy", "numpy")
    ranks = [(S[:1], labels[:1]), (S[1:].astype(np.float32), labels[1:])]
    sums = sum(_partial_sums(as_source(rows), kernel, own, prices, 8) for rows, own in ranks)
    cert = _certificate_from_sums(sums, prices, caps, caps)
    assert assignment_optimum(S, caps) == 1e6 - 0.125
    assert cert.dual - cert.rounding <= 1e6 - 0.125
    assert cert.rounding < 0.03  # for the one float64 row: 0.025, its price's rounding


@pytest.mark.parametrize("shift", [0.0, 1000.0])
def test_check_measures_against_the_solved_optimum_in_float64(tmp_path, shift):
    """Raw logits around 1000: swapping five pairs of the exact labels loses 0.088, but check
    (and ``sinklabel check``, with exit status 0) called that optimal: it allowed the
    certificate's float32 rounding above the solved optimum, 0.24 here, which grows with N and
    the scores' size; the same scores less 1000 had the right verdict."""
    rng = np.random.default_rng(0)
    S = (1000 + rng.normal(size=(1000, 2))).astype(np.float32) - np.float32(shift)
    exact = np.asarray(sinklabel.solve_exact(S, 2).labels)
    swapped = exact.copy()
    margin = S[:, 0].astype(np.float64) - S[:, 1]
    zeros, ones = np.flatnonzero(exact == 0), np.flatnonzero(exact == 1)
    swapped[zeros[np.argsort(margin[zeros])[:5]]] = 1
    swapped[ones[np.argsort(-margin[ones])[:5]]] = 0
    worse = sinklabel.check(swapped, S)
    assert worse.gap == pytest.approx(0.0878, abs=1e-4) and not worse.optimal
    assert sinklabel.check(exact, S).optimal
    for name, labels in (("scores", S), ("exact", exact), ("worse", swapped)):
        np.save(tmp_path / f"{name}.npy", labels)
    scores = str(tmp_path / "scores.npy")
    for name, status in (("exact", 0), ("worse", 1)):
        assert main(["check", scores, str(tmp_path / f"{name}.npy")]) == status


def test_check_never_calls_an_infinite_cost_optimal():
    """A labelling that takes a -inf score costs +inf: no finite optimum is within rounding."""
    S = np.zeros((4, 2))
    S[0, 1] = -np.inf
    labels = np.array([1, 0, 0, 1])
    report = sinklabel.check(labels, S)
    assert report.objective == np.inf and report.feasible and not report.optimal


@pytest.mark.parametrize(("scores", "error", "message"), [
    (np.zeros((0, 3)), ValueError, "logp must be non-empty"),
    (np.zeros((4, 3), dtype=np.int32), TypeError, "logp must hold floating-point scores"),
])
def test_check_names_bad_scores_before_the_labels(scores, error, message):
    """Empty scores were reported as 'labels must be 0 integers', blaming the labels."""
    with pytest.raises(error, match=message):
        sinklabel.check(np.zeros(len(scores), dtype=np.int64), scores)


@pytest.mark.parametrize("seed", range(4))
def test_ranges_whose_lower_bounds_take_every_point_are_certified(seed):
    """With sum(lower) = N no label takes an extra point, so the range threshold is the
    least open price: any higher one leaves open labels with negative prices, whose upper
    bounds then enter the dual bound and open a gap."""
    S = np.random.default_rng(seed).normal(size=(8, 4))
    lower, upper = np.array([2, 2, 2, 2]), np.array([3, 2, 4, 2])
    result = sinklabel.solve_exact(S, 4, capacities=(lower, upper))
    assert result.certificate.optimal
    assert result.objective == pytest.approx(milp_optimum(S, lower, upper), abs=1e-9)
    primal, dual = plain_certificate(S, result.labels, result.prices, lower, upper)
    assert primal - dual == pytest.approx(0, abs=1e-9)


def test_highs_names_a_label_without_enough_finite_scores():
    """HiGHS alone can only say that no labelling exists: the label short of finite scores
    is named before it runs, as the auction names it."""
    S = np.zeros((6, 3))
    S[:, 2] = -np.inf
    with pytest.raises(ValueError, match="label 2 must take at least 2 points"):
        sinklabel.solve_exact(S, 3, method="highs")


def test_a_highs_failure_other_than_infeasible_is_raised_not_read_as_labels(monkeypatch):
    """Stopped early (an iteration limit, numerical trouble), HiGHS returns no vertex: its
    message is raised, not an arbitrary labelling read from whatever x it holds."""
    from types import SimpleNamespace

    from sinklabel import _highs

    stopped = SimpleNamespace(status=1, message="Iteration limit reached.", x=None)
    monkeypatch.setattr(_highs, "linprog", lambda *args, **kwargs: stopped)
    with pytest.raises(RuntimeError, match="HiGHS failed: Iteration limit reached"):
        sinklabel.solve_exact(np.zeros((6, 3)), 3, method="highs")
