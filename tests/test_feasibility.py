"""-inf scores that leave a group of labels short of rows: the failed solve says which group.

The oracle is the labelling problem itself, row by row, as a linear program (HiGHS through
scipy.optimize.linprog): every row takes one label with a finite score, label k between
N * w_k rounded down and rounded up (the constraints are totally unimodular, so a fractional
solution means an integral one).
"""

from __future__ import annotations

import itertools
import re
import warnings

import numpy as np
import pytest
from conftest import to_backend
from reference import sizes
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

import sinklabel
from sinklabel import _feasibility
from sinklabel._validation import check_labels_reachable
from sinklabel.collective import LOCAL
from sinklabel.solver import ConvergenceWarning, PrecisionWarning
from sinklabel.sources import as_source

#: Two thirds of the rows can take only label 0, whose share is a third; each label alone has
#: rows enough (20, 10 and 10 for shares of 10).
CONFINED = np.repeat(np.array([[0.0, -np.inf, -np.inf], [0.0, -np.inf, -np.inf],
                               [0.0, 0.0, 0.0]]), 10, axis=0)


def labelling_exists(finite: np.ndarray, weights: np.ndarray) -> bool:
    """Whether some x >= 0 on the finite entries has row sums 1 and label sums between the
    rounded sizes."""
    n, k = finite.shape
    lower, upper = sizes(n, weights)
    rows, labels = np.nonzero(finite)
    entries = np.arange(rows.size)
    per_row = coo_matrix((np.ones(rows.size), (rows, entries)), shape=(n, rows.size))
    per_label = coo_matrix((np.ones(rows.size), (labels, entries)), shape=(k, rows.size))
    outcome = linprog(
        np.zeros(rows.size), A_eq=per_row, b_eq=np.ones(n),
        A_ub=np.vstack([per_label.toarray(), -per_label.toarray()]),
        b_ub=np.concatenate([upper, -lower]), method="highs",
    )
    assert outcome.status in (0, 2), outcome.message
    return outcome.status == 0


def plan_exists(finite: np.ndarray, weights: np.ndarray) -> bool:
    """Whether some x >= 0 on the finite entries has row sums 1 and label sums exactly
    N * w_k / sum(w): the proportions a Sinkhorn plan meets (any positive weights)."""
    n, k = finite.shape
    rows, labels = np.nonzero(finite)
    entries = np.arange(rows.size)
    per_row = coo_matrix((np.ones(rows.size), (rows, entries)), shape=(n, rows.size))
    per_label = coo_matrix((np.ones(rows.size), (labels, entries)), shape=(k, rows.size))
    outcome = linprog(
        np.zeros(rows.size), A_eq=np.vstack([per_row.toarray(), per_label.toarray()]),
        b_eq=np.concatenate([np.ones(n), n * weights / weights.sum()]), method="highs",
    )
    assert outcome.status in (0, 2), outcome.message
    return outcome.status == 0


def reason(scores: np.ndarray, weights: np.ndarray, rows: int = 64,
           exact_sizes: bool = True) -> str | None:
    """The ValueError the failed-solve check raises, or None when it finds nothing."""
    try:
        check_labels_reachable(as_source(scores), weights / weights.sum(), rows,
                               exact_sizes=exact_sizes)
    except ValueError as exc:
        return str(exc)
    return None


def cap_patterns(monkeypatch, cap: int, n_labels: int = 3) -> None:
    """Count at most ``cap`` distinct patterns of ``n_labels`` labels (the graph's edges cut
    to match, which otherwise raise the cap)."""
    monkeypatch.setattr(_feasibility, "MAX_PATTERNS", cap)
    monkeypatch.setattr(_feasibility, "MAX_EDGES", cap * n_labels)


def _labels(text: str) -> list[int]:
    return [int(y) for y in text.split(", ")]


def named_group_is_short(message: str, finite: np.ndarray, weights: np.ndarray) -> bool:
    """Whether the labels the message names really cannot be served: read back from its text."""
    lower, upper = sizes(finite.shape[0], weights)
    if match := re.search(r"^label (\d+) should take", message):
        group = [int(match[1])]
    elif match := re.search(r"^labels \{([\d, ]+)\} must take", message):
        group = _labels(match[1])
    else:
        confined_to = _labels(re.search(r"only for labels among \{([\d, ]+)\}", message)[1])
        others = np.setdiff1d(np.arange(finite.shape[1]), confined_to)
        return (~finite[:, others].any(axis=1)).sum() > upper[confined_to].sum()
    return finite[:, group].any(axis=1).sum() < lower[group].sum()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_confined_to_a_label_group_are_named(backend, dtype):
    """The failed solve ended in a ConvergenceWarning and a PrecisionWarning that only said
    "or because no potentials balance these scores"; it names the rows and their labels."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        with pytest.raises(ValueError, match=r"^20 rows of 30 have a finite score only for "
                           r"labels among \{0\}: more points than they may take \(10 at most: "
                           r"their weights times N\), so no labelling meets these "
                           r"proportions"):
            sinklabel.sinkhorn(to_backend(CONFINED.astype(dtype), backend), 3, backend=backend)


def test_a_short_float64_solve_is_explained_too():
    """Unbalanceable float64 potentials passed float32's resolution within ten passes but
    float64's only after tens: a solve with max_iter=15 warned without saying why."""
    with pytest.raises(ValueError, match="only for labels among"):
        sinklabel.sinkhorn(CONFINED, 3, max_iter=15, backend="numpy")


def test_a_label_group_short_of_rows_is_named_by_its_labels():
    """When the group is the smaller side, its labels are named: labels 1 and 2 must take two
    thirds of the points, and only the third of the rows not confined to label 0 can."""
    scores = np.zeros((30, 6))
    scores[:20, 3:] = -np.inf  # labels 3..5 (share 1/2) reachable by 10 rows only
    message = reason(scores, np.ones(6))
    assert message is not None and message.startswith(
        "labels {3, 4, 5} must take 15 points (their weights times N) but only 10 rows of 30 "
        "have a finite score for any of them")


def random_masked_problem(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores whose -inf masks are drawn from a few row patterns, and integer label weights."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 7)) if seed % 2 else int(rng.integers(7, 20))  # 1 to 3 bytes
    patterns = rng.random((int(rng.integers(1, 6)), k)) < 0.4
    patterns[np.arange(len(patterns)), rng.integers(0, k, len(patterns))] = True
    n = int(rng.integers(k, 81))
    finite = patterns[rng.integers(0, len(patterns), n)]
    finite[rng.random(n) < 0.1] = True  # some rows allow every label
    weights = rng.integers(1, 4, k).astype(np.float64)
    return np.where(finite, rng.standard_normal((n, k)), -np.inf).astype(np.float32), weights


@pytest.mark.parametrize("seed", range(60))
def test_the_check_agrees_with_the_labelling_problem(seed):
    """An error exactly when no labelling exists, and the group it names cannot be served;
    the max-flow alone (without the per-label check before it) finds such a group whenever
    one exists. Tight problems (a group with exactly its share) are feasible and must pass."""
    scores, weights = random_masked_problem(seed)
    finite = np.isfinite(scores)
    message = reason(scores, weights, rows=1 + seed % finite.shape[0])
    patterns = _feasibility.FinitePatterns(finite.shape[1])
    patterns.add(finite)
    lower, upper = sizes(finite.shape[0], weights)
    decided, shortage = _feasibility.find_shortage(patterns, lower, upper, LOCAL)
    assert decided
    if labelling_exists(finite, weights):
        assert message is None, message
        assert shortage is None
        return
    assert message is not None
    assert named_group_is_short(message, finite, weights), message
    group = shortage.labels
    if shortage.confined:
        rows = (~finite[:, ~group].any(axis=1)).sum()
        assert shortage.rows == rows > shortage.size == upper[group].sum()
    else:
        rows = finite[:, group].any(axis=1).sum()
        assert shortage.rows == rows < shortage.size == lower[group].sum()


@pytest.mark.parametrize("seed", range(1, 60, 2))  # K from 2 to 6: every group enumerated
def test_the_flow_names_the_group_missing_its_sizes_by_the_most(seed):
    """Max-flow min-cut: the labels the flow's residual graph reaches miss their upper sizes
    by the most rows of all 2**K - 1 groups, and the labels it does not reach their lower
    sizes; each found by enumerating every group, for the patterns in either order (a
    pattern node once counted as a label when it came last)."""
    scores, weights = random_masked_problem(seed)
    finite = np.isfinite(scores)
    lower, upper = sizes(finite.shape[0], weights)
    groups = [np.array(bits) for bits in itertools.product([False, True], repeat=len(weights))]
    over = max((~finite[:, ~g].any(axis=1)).sum() - upper[g].sum() for g in groups[1:])
    short = max(lower[g].sum() - finite[:, g].any(axis=1).sum() for g in groups[1:])
    patterns, counts = np.unique(finite, axis=0, return_counts=True)
    for order in (slice(None), slice(None, None, -1)):
        confined = _feasibility._confined_rows(patterns[order], counts[order], upper)
        assert (confined.rows - confined.size if confined else 0) == max(over, 0)
        missing = _feasibility._short_labels(patterns[order], counts[order], lower)
        assert (missing.size - missing.rows if missing else 0) == max(short, 0)


def test_a_group_with_exactly_its_share_is_not_an_error():
    """Rows confined to label 0 exactly fill its share: a plan exists (on the boundary)."""
    scores = np.zeros((30, 3))
    scores[:10, 1:] = -np.inf
    assert labelling_exists(np.isfinite(scores), np.ones(3))
    assert reason(scores, np.ones(3)) is None


def test_the_check_reads_host_blocks_of_its_budget(monkeypatch):
    """No chunk-sized host mask or copy (a chunk may be a whole GPU array): blocks of
    COUNT_BLOCK_BYTES, 4 rows of 3 labels here, and the counts across them still add up."""
    from sinklabel import _validation

    reads = []
    monkeypatch.setattr(_validation, "COUNT_BLOCK_BYTES", 8 * 3 * 4)
    monkeypatch.setattr(_validation, "to_host",
                        lambda block: reads.append(len(block)) or np.asarray(block))
    assert reason(CONFINED, np.ones(3), rows=30).startswith("20 rows of 30 have a finite score")
    assert reads == [4] * 7 + [2]


def test_a_budget_below_one_row_reads_a_row_at_a_time(monkeypatch):
    """As with a row of more than COUNT_BLOCK_BYTES / 8 labels: the check still runs, one
    row per block, instead of failing on a block of no rows."""
    from sinklabel import _validation

    reads = []
    monkeypatch.setattr(_validation, "COUNT_BLOCK_BYTES", 8)
    monkeypatch.setattr(_validation, "to_host",
                        lambda block: reads.append(len(block)) or np.asarray(block))
    assert reason(CONFINED, np.ones(3), rows=30).startswith("20 rows of 30 have a finite score")
    assert reads == [1] * 30


def test_beyond_the_pattern_cap_only_single_labels_are_checked(monkeypatch):
    """Too many distinct patterns to decide: the group check stands aside (the solve then
    warns as before), the per-label check still runs."""
    cap_patterns(monkeypatch, 1)
    assert reason(CONFINED, np.ones(3)) is None
    one_row = np.zeros((30, 3))
    one_row[1:, 2] = -np.inf
    assert reason(one_row, np.ones(3)).startswith("label 2 should take 10 points")


@pytest.mark.parametrize("count, listed", [
    (3, "{0, 1, 2}"), (10, "{" + ", ".join(map(str, range(10))) + "}"),
    (12, "{" + ", ".join(map(str, range(10))) + ", and 2 more}"),
])
def test_a_group_lists_ten_labels_and_counts_the_rest(count, listed):
    labels = np.zeros(20, dtype=bool)
    labels[:count] = True
    assert _feasibility._listed(labels) == listed


def test_at_the_pattern_cap_the_group_is_still_named(monkeypatch):
    """CONFINED has two distinct patterns: a cap of two still decides the group."""
    cap_patterns(monkeypatch, 2)
    assert reason(CONFINED, np.ones(3)).startswith("20 rows of 30 have a finite score")


def test_patterns_merged_from_ranks_beyond_the_cap_are_not_decided(monkeypatch):
    """Each rank counted within the cap, but their tables together hold more patterns:
    process 0 stands aside (answers nothing) rather than decide on a table too large."""
    counts = _feasibility.FinitePatterns(3)
    counts.add(np.isfinite(CONFINED))
    table = _feasibility._encode(counts.counts, 3)
    lower, upper = np.full(3, 10), np.full(3, 10)
    assert _feasibility._decided(table, lower, upper)[3] == 2  # rows confined to a group
    cap_patterns(monkeypatch, 1)
    undecided = np.zeros(6)
    undecided[3] = -1.0  # the kind that says so, and no group
    np.testing.assert_array_equal(_feasibility._decided(table, lower, upper), undecided)


def test_beyond_the_pattern_cap_the_solve_still_warns(monkeypatch):
    """With the group check standing aside the solve warns that a group may be short of rows,
    too many patterns to say which, and does not advise more iterations."""
    cap_patterns(monkeypatch, 1)
    said = _failure_warnings(CONFINED.astype(np.float32), max_iter=60)
    suspect = "leave a group of labels short of rows (their rows fall into more than 1 distinct"
    assert suspect in said[PrecisionWarning] and suspect in said[ConvergenceWarning]
    assert "raise max_iter" not in said[ConvergenceWarning]
    assert said[UserWarning].endswith("did not converge (see its ConvergenceWarning), so its "
                                      "plan leaves them short too")


def _failure_warnings(scores: np.ndarray, **options) -> dict:
    """The warnings of a solve that fails, by category."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = sinklabel.sinkhorn(scores, scores.shape[1], backend="numpy", **options)
    assert not result.converged
    return {w.category: str(w.message) for w in caught}


def test_a_group_beside_masks_drawn_per_row_is_named():
    """Labels 0 and 1 may take only a tenth of the rows, short of their share of two
    sixteenths, beside labels masked at random per row: a pattern per row, 20,000 in all.
    The group was not checked beyond 4096 patterns; the graph at K = 16 holds them."""
    rng = np.random.default_rng(0)
    n, k = 20000, 16
    scores = rng.normal(size=(n, k)).astype(np.float32)
    scores[n // 10:, :2] = -np.inf
    scores[:, 2:][rng.random((n, k - 2)) < 0.3] = -np.inf
    scores[np.arange(n), 2 + rng.integers(0, k - 2, n)] = 0.0  # every row keeps a label
    assert len(np.unique(np.isfinite(scores), axis=0)) > _feasibility.MAX_PATTERNS
    assert reason(scores, np.ones(k), rows=4096).startswith(
        "labels {0, 1} must take 2500 points (their weights times N) but only 2000 rows")


def test_a_group_short_by_less_than_a_row_is_suspected_in_the_warnings():
    """Labels 0 and 1 should take 6.67 of 10 points and 6 rows can take them: no plan, but
    the check, at rounded sizes, names no group. The failed solve says what it suspects."""
    scores = np.random.default_rng(0).normal(size=(10, 3))
    scores[6:, :2] = -np.inf
    assert reason(scores, np.ones(3), exact_sizes=False) is None
    said = _failure_warnings(scores, max_iter=200)
    suspect = "leave a label or a group of labels short of its share by less than one row"
    assert suspect in said[ConvergenceWarning] and "raise max_iter" not in said[ConvergenceWarning]
    assert suspect in said[PrecisionWarning]


def test_whole_shares_that_the_check_passed_suspect_no_mask():
    """10 points per label of 30, one -inf score: the check at those very sizes found a
    plan, so a solve stopped by max_iter (its potentials large with scores of 1e4) was told
    to raise max_iter, not that the -inf scores might leave a group short."""
    scores = np.random.default_rng(0).normal(size=(30, 3)) * 1e4
    scores[0, 0] = -np.inf
    assert check_labels_reachable(as_source(scores), np.full(3, 1 / 3), 64) is None
    said = _failure_warnings(scores, lam=1.0, max_iter=5)[ConvergenceWarning]
    assert "-inf" not in said and "raise max_iter" in said


def test_without_minus_inf_the_check_suspects_no_mask():
    """All scores finite: any proportions have a plan, so the check names nothing and gives
    the warnings nothing to suspect (a huge finite mask grows the potentials too)."""
    scores = np.random.default_rng(1).normal(size=(200, 3)).astype(np.float32)
    scores[:, 2] = -1e4
    assert check_labels_reachable(as_source(scores), np.array([0.1, 0.1, 0.8]), 64) is None


def test_the_scores_are_left_as_they_were():
    scores = CONFINED.astype(np.float32)
    before = scores.copy()
    reason(scores, np.ones(3))
    np.testing.assert_array_equal(scores, before)


#: Rows of the confined problem in an order that mixes the patterns, and two ways to shard them.
MIXED = CONFINED[np.random.default_rng(0).permutation(30)].astype(np.float32)
SHARDS = {"split": [13, 17], "one empty": [0, 30]}


def _rank_cases(rank: int, world: int) -> dict:
    """On each rank: the confined problem in both shardings, and with the pattern cap passed
    on this rank only (the other must stand aside too, not wait for it)."""
    from test_distributed import _caught, _shard

    out = {}
    for name, shard_rows in SHARDS.items():
        out[name] = _caught(sinklabel.sinkhorn, _shard(MIXED, shard_rows, rank), 3, chunk_size=4,
                            distributed=True)[:3]
    if rank == 0:
        _feasibility.MAX_PATTERNS, _feasibility.MAX_EDGES = 1, 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        capped = _caught(sinklabel.sinkhorn, _shard(MIXED, [13, 17], rank), 3, chunk_size=4,
                         max_iter=60, distributed=True)
    out["capped"] = capped[0] if capped[0] == "error" else ("ok", capped[1].converged)
    return out


def test_ranks_combine_their_patterns_and_agree_with_one_process(tmp_path):
    """Every rank raises the single-process message, whose counts are of both ranks' rows
    (20 of 30). A rank past the pattern cap makes every rank skip the group check (the same
    collective calls everywhere: no rank waits for another)."""
    helpers = pytest.importorskip("test_distributed")
    expected = reason(MIXED, np.ones(3))
    assert expected is not None and expected.startswith("20 rows of 30 ")
    per_rank = helpers._values_of_every_rank(tmp_path, 2, _rank_cases)
    for ranked in per_rank:
        for name in SHARDS:
            assert ranked[name] == ("error", "ValueError", expected), (name, ranked[name])
        assert ranked["capped"] == ("ok", False), ranked["capped"]


@pytest.mark.parametrize("case", ["confined rows", "one label"])
def test_a_share_missed_by_less_than_its_rounding_is_left_to_exact_balancing(case):
    """No plan has these proportions, but a labelling with sizes rounded does, and
    balance="exact" finds it; the check must not refuse it. Confined rows: one row can take
    only label 2, whose share is 0.95 of a point (it may take one). One label: label 2 should
    take 1.9 points and only row 1 has a finite score for it (it must take one)."""
    scores = np.array([[0.0, 0.4, -0.1], [-np.inf, -np.inf, 0.0], [0.1, 0.0, -0.5],
                       [0.4, 0.2, 0.0], [0.3, 0.1, 0.2]])
    weights = np.array([0.39, 0.42, 0.19])
    if case == "one label":
        scores[[0, 2, 3, 4], 2] = -np.inf
        scores[1, 0] = 0.0
        weights = np.array([0.31, 0.31, 0.38])
    assert reason(scores, weights) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sinklabel.sinkhorn(scores, 3, label_weights=weights, balance="exact",
                                    max_iter=100)
    assert result.labels[1] == 2 and result.certificate.optimal


def test_method_page_quotes_the_error_and_the_cap():
    """docs/method.md quotes the error for the confined rows and the pattern cap."""
    from pathlib import Path

    page = " ".join((Path(__file__).parents[1] / "docs" / "method.md").read_text().split())
    message = reason(CONFINED, np.ones(3))
    assert message.split(". Raise")[0] + "." in page
    assert f"at least {_feasibility.MAX_PATTERNS}" in page
    assert f"{_feasibility.MAX_EDGES:,} edges" in page
    assert f"{_feasibility.pattern_cap(16):,} at K = 16" in page


def test_without_exact_balance_a_label_short_by_less_than_a_point_is_still_named():
    """The plan of a Sinkhorn solve has the proportions exactly: a label that should take
    1.9 points with one finite row has no plan, and the failed solve names it (only
    balance="exact", which rounds sizes, can serve it)."""
    scores = np.array([[0.0, 0.4, -np.inf], [0.0, -np.inf, 0.0], [0.1, 0.0, -np.inf],
                       [0.4, 0.2, -np.inf], [0.3, 0.1, -np.inf]])
    weights = np.array([0.31, 0.31, 0.38])
    assert reason(scores, weights) is None
    assert "label 2 should take 1.9 points" in reason(scores, weights, exact_sizes=False)
    with pytest.raises(ValueError, match="label 2 should take 1.9 points"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sinklabel.sinkhorn(scores, 3, label_weights=weights, max_iter=100)
