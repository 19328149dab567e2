"""``check``'s report: the sizes it measures, the verdict it gives and the text it prints,
against counts, moves and gaps worked out here."""

from __future__ import annotations

import dataclasses
import importlib
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sinklabel
from sinklabel.datasets import make_scores


def fewest_moves(counts: tuple[int, ...], lower: np.ndarray, upper: np.ndarray) -> int:
    """Relabelled points needed to bring the sizes within capacity: a breadth-first search
    over size vectors, one point moved from a label to another per step."""
    seen, frontier, moves = {counts}, [counts], 0
    while frontier:
        if any(np.all((lower <= c) & (c <= upper)) for c in map(np.array, frontier)):
            return moves
        step = []
        for c in frontier:
            for a, b in itertools.permutations(range(len(c)), 2):
                if c[a]:
                    moved = list(c)
                    moved[a] -= 1
                    moved[b] += 1
                    if tuple(moved) not in seen:
                        seen.add(tuple(moved))
                        step.append(tuple(moved))
        frontier, moves = step, moves + 1
    raise AssertionError("no sizes within capacity")


@st.composite
def labellings_and_capacities(draw):
    """Any labelling of up to 8 points over up to 4 labels, and capacities it can be moved
    within: lower <= upper with sum(lower) <= N <= sum(upper)."""
    K = draw(st.integers(2, 4))
    N = draw(st.integers(1, 8))
    labels = np.array(draw(st.lists(st.integers(0, K - 1), min_size=N, max_size=N)))
    upper = np.array(draw(st.lists(st.integers(0, N), min_size=K, max_size=K)))
    upper[draw(st.integers(0, K - 1))] = N
    lower = np.array([draw(st.integers(0, u)) for u in upper])
    while lower.sum() > N:
        lower[np.argmax(lower)] -= 1
    return labels, K, lower, upper


@settings(max_examples=150, deadline=None)
@given(problem=labellings_and_capacities())
def test_misplaced_is_the_fewest_points_that_must_move(problem):
    labels, K, lower, upper = problem
    scores = np.zeros((labels.size, K))
    report = sinklabel.check(labels, scores, capacities=(lower, upper), exact=False)
    counts = np.bincount(labels, minlength=K)
    np.testing.assert_array_equal(report.label_counts, counts)
    assert report.misplaced == fewest_moves(tuple(counts), lower, upper)
    assert type(report.misplaced) is int  # a NumPy integer is not JSON-serialisable
    assert report.feasible == (report.misplaced == 0)


def test_report_prints_the_capacity_range_and_what_lies_outside_it():
    """Points 0-5 all on label 0 of three, with capacities 1..3 each: two labels are short,
    label 0 is three over, so three points must move."""
    labels = np.zeros(6, np.int64)
    scores = np.log(np.full((6, 3), 1 / 3))
    report = sinklabel.check(labels, scores, capacities=([1, 1, 1], [3, 3, 3]))
    assert not report.feasible and report.misplaced == 3 and not report.optimal
    lines = str(report).splitlines()
    assert lines[-2] == "sizes     min 0, max 6, std 2.83; target 1..3"
    assert lines[-1] == ("          3 labels outside capacity; 3 points must move "
                         "(the gap can then be negative)")
    balanced = sinklabel.check(np.arange(6) % 3, scores)
    assert str(balanced).splitlines()[-1] == "sizes     min 2, max 2, std 0; target 2"
    assert "outside capacity" not in str(balanced)
    one_fixed = sinklabel.check(np.arange(6) % 3, scores, capacities=([1, 1, 1], [1, 3, 3]))
    assert str(one_fixed).splitlines()[-2].endswith("target 1..3")
    raised = sinklabel.check(np.arange(6) % 3, scores, capacities=([1, 2, 1], [3, 3, 3]))
    assert str(raised).splitlines()[-1].endswith("target 1..3")


@pytest.mark.parametrize("labels", [[0, 0, 0, 0, 1, 2], [0, 0, 0, 1, 1, 1]],
                         ids=["others at lower", "others at upper"])
def test_a_label_at_a_capacity_bound_is_within_capacity(labels):
    """Sizes (4, 1, 1) and (3, 3, 0) against capacities 1..3: one label is outside and one
    point must move; the labels exactly at a bound are inside."""
    scores = np.log(np.full((6, 3), 1 / 3))
    report = sinklabel.check(np.array(labels), scores, capacities=([1, 1, 1], [3, 3, 3]))
    assert report.misplaced == 1
    assert str(report).splitlines()[-1].startswith("          1 labels outside capacity; 1 ")


def test_a_labelling_that_costs_exactly_the_optimum_is_optimal_with_no_allowance():
    """Zero scores: every labelling costs 0, the optimum is 0 and the rounding allowance is 0
    (no term to round), so a gap of exactly 0 must still be judged optimal."""
    report = sinklabel.check(np.arange(6) % 3, np.zeros((6, 3)))
    assert report.gap == 0.0 and report.cost_rounding == 0.0
    assert report.optimal and "-> optimal" in str(report)


def test_a_loss_small_beside_the_scores_is_not_lost_in_the_totals():
    """Scores near -1e12 (float64, a unit of 2**-13 each): two points swapped from the
    optimal labels lose about 0.01 exactly, and the totals near 1e15 (a unit of 0.125) lost
    it, so check called the worse labelling optimal. The gap is now summed row by row."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(1000, 4)) - 1e12
    best = np.asarray(sinklabel.solve_exact(scores, 4).labels)
    i = 0
    j = next(j for j in range(1, 1000) if best[j] != best[i])
    worse = best.copy()
    worse[i], worse[j] = best[j], best[i]
    loss = (scores[i, best[i]] - scores[i, best[j]]) + (scores[j, best[j]] - scores[j, best[i]])
    assert loss > 0  # exact: each difference of two nearby float64 scores is
    report = sinklabel.check(worse, scores)
    assert report.feasible and not report.optimal
    assert report.gap == pytest.approx(loss, rel=1e-12)
    assert report.cost_rounding < 1e-12
    optimal = sinklabel.check(best, scores)
    assert optimal.optimal and optimal.gap == 0.0 and optimal.cost_rounding == 0.0


def test_relative_gap_is_the_gap_over_the_optimum():
    """Labels 0,0,1,1 where 0,1,0,1 takes every point's log 0.6: two points take log 0.4
    instead, a gap of 2 log 1.5 over an optimum of -4 log 0.6. Where the optimum is 0 (the
    same scores less each row's top) the relative gap is the gap itself."""
    scores = np.log(np.array([[0.6, 0.4], [0.4, 0.6], [0.6, 0.4], [0.4, 0.6]]))
    report = sinklabel.check(np.array([0, 0, 1, 1]), scores)
    optimum = -4 * np.log(0.6)
    assert report.optimum == pytest.approx(optimum, rel=1e-12)
    assert report.gap == pytest.approx(2 * np.log(0.6 / 0.4), rel=1e-12)
    assert report.relative_gap == pytest.approx(report.gap / optimum, rel=1e-12)
    assert "agreement 50.00% of points labelled as the optimum" in str(report).splitlines()
    shifted = sinklabel.check(np.array([0, 0, 1, 1]), scores - scores.max(axis=1, keepdims=True))
    assert shifted.optimum == 0.0
    assert shifted.relative_gap == shifted.gap == pytest.approx(report.gap, rel=1e-12)


def test_exact_result_is_checked_against_the_capacities_it_was_solved_for():
    S = make_scores(60, 3, regime="peaked", seed=4).scores
    capacities = (np.array([10, 10, 30]), np.array([15, 20, 40]))
    exact = sinklabel.solve_exact(S, 3, capacities=capacities)
    report = sinklabel.check(exact, S)
    np.testing.assert_array_equal(report.lower, capacities[0])
    np.testing.assert_array_equal(report.upper, capacities[1])
    assert report.feasible and report.optimal and report.agreement == 1.0
    overruled = sinklabel.check(exact, S, capacities=[20, 20, 20])
    np.testing.assert_array_equal(overruled.lower, [20, 20, 20])
    assert overruled.feasible == bool(np.all(exact.label_counts == 20))


def test_sinkhorn_result_is_checked_against_its_label_weights():
    """Weights (1/2, 1/4, 1/4) over 60 points ask for sizes of exactly 30, 15 and 15, not the
    balanced 20 each."""
    S = make_scores(60, 3, regime="peaked", seed=4).scores
    result = sinklabel.sinkhorn(S, 3, label_weights=[0.5, 0.25, 0.25])
    report = sinklabel.check(result, S)
    np.testing.assert_array_equal(report.lower, [30, 15, 15])
    np.testing.assert_array_equal(report.upper, [30, 15, 15])


def test_a_single_label_is_reported():
    """With K = 1 every point takes the one label: its size is the target, N."""
    report = sinklabel.check(np.zeros(3, np.int64), np.zeros((3, 1)))
    assert report.feasible and report.optimal
    assert str(report).splitlines()[-1] == "sizes     min 3, max 3, std 0; target 3"


@pytest.mark.parametrize(("limit_less", "solved"), [(0, True), (1, False)])
def test_exact_is_solved_by_default_up_to_the_limit(monkeypatch, limit_less, solved):
    monkeypatch.setattr(importlib.import_module("sinklabel.check"), "EXACT_LIMIT",
                        40 * 4 - limit_less)
    S = make_scores(40, 4, regime="flat", seed=1).scores
    report = sinklabel.check(np.arange(40) % 4, S)
    assert (report.optimum is not None) == solved
    assert (report.agreement is not None) == solved


def test_no_verdict_of_optimal_when_the_rounding_is_unbounded():
    """An infinite allowance (a sum whose rounding could not be bounded) proves nothing, even
    for a labelling at the optimum."""
    S = make_scores(30, 3, regime="peaked", seed=2).scores
    exact = sinklabel.solve_exact(S, 3)
    solved = sinklabel.check(exact, S)
    bounded = sinklabel.check(exact, S, exact=False)
    assert solved.optimal and bounded.optimal
    assert not dataclasses.replace(solved, cost_rounding=np.inf).optimal
    unbounded = dataclasses.replace(bounded.certificate, rounding=np.inf)
    assert not dataclasses.replace(bounded, certificate=unbounded).optimal


def test_certificate_relative_gap_is_the_gap_over_the_labelling_cost():
    """The certificate's relative gap is over its own labelling's cost, whatever its sign (the
    report's is over the optimum); a cost of 0 leaves the gap itself. Hand-computed."""
    S = np.array([[1.0, 3.0], [2.0, 0.5]])  # positive logits: costs below 0
    certificate = sinklabel.duality_gap(S, np.array([0, 1]), np.zeros(2))
    assert certificate.primal == -1.5 and certificate.dual == -5.0 and certificate.gap == 3.5
    assert certificate.relative_gap == 3.5 / 1.5
    free = sinklabel.duality_gap(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([0, 1]),
                                 np.zeros(2))
    assert free.primal == 0.0 and free.relative_gap == free.gap == 2.0
