"""The exact problem at the edges of float64 and of memory: certificates, check and the
exact solvers against independent oracles (scipy's linear_sum_assignment on the problem with
each label's column replicated to its size, and plain reference code written here)."""

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from reference import sizes
from scipy.optimize import linear_sum_assignment

import sinklabel
from sinklabel._capacities import balanced_range, finite_per_label
from sinklabel._validation import check_label_weights
from sinklabel.sources import CallableSource


def assignment_labels(S: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The optimal labelling of sizes ``sizes`` (summing to N): an assignment of the N points
    to N slots, label y's column repeated ``sizes[y]`` times."""
    columns = np.repeat(np.arange(S.shape[1]), sizes)
    rows, slots = linear_sum_assignment(-S[:, columns])
    labels = np.empty(S.shape[0], np.int64)
    labels[rows] = columns[slots]
    return labels


def exact_cost(S: np.ndarray, labels: np.ndarray) -> float:
    """The labelling's cost, correctly rounded (math.fsum)."""
    return math.fsum(-S[np.arange(S.shape[0]), labels])


def cancelling_logits(n_points: int, n_labels: int, seed: int) -> np.ndarray:
    """Logits near +1e6 for the first half of the rows and -1e6 for the rest: every cost is
    near 0, a float64 sum of terms of size 1e6."""
    rng = np.random.default_rng(seed)
    base = np.where(np.arange(n_points) < n_points // 2, 1e6, -1e6)
    return base[:, None] + rng.random((n_points, n_labels))


@pytest.mark.parametrize("seed", [0, 4, 6])
def test_certificate_of_the_optimum_of_cancelling_logits_is_optimal(seed):
    """The certificate allowed float64 summation error of ``4 N u |sum|``; with logits of
    both signs the sums cancel to ~0 while their rounding is that of terms of size 1e6: the
    optimum (seed 0: gap 1.2e-6 against an allowance of 4.4e-7) was "not optimal"."""
    S = cancelling_logits(1000, 4, seed)
    sizes = np.full(4, 250)
    exact = sinklabel.solve_exact(S, 4, chunk_size=1)
    oracle = assignment_labels(S, sizes)
    assert exact_cost(S, exact.labels) == exact_cost(S, oracle)
    assert exact.certificate.optimal
    oracle_certificate = sinklabel.duality_gap(S, oracle, exact.prices, chunk_size=1)
    assert oracle_certificate.optimal


def test_certificate_still_rejects_a_measurably_worse_labelling():
    """The summation allowance scales with the terms, but stays far below a swap's cost."""
    S = cancelling_logits(1000, 4, 0)
    exact = sinklabel.solve_exact(S, 4, chunk_size=1)
    labels = exact.labels.copy()
    rows = np.arange(S.shape[0])
    first = int(np.flatnonzero(labels == 0)[0])
    second = int(np.flatnonzero(labels == 1)[0])
    labels[[first, second]] = labels[[second, first]]
    loss = exact_cost(S, labels) - exact_cost(S, exact.labels)
    assert loss > 1e-3 and np.array_equal(np.bincount(labels), np.bincount(exact.labels))
    certificate = sinklabel.duality_gap(S, labels, exact.prices, chunk_size=1)
    assert not certificate.optimal and certificate.gap >= loss - certificate.rounding
    assert -S[rows, labels].sum() == pytest.approx(certificate.primal, abs=1e-6)


def tied_cancelling_logits(n_points: int, seed: int) -> np.ndarray:
    """Two labels whose scores differ by the same exact amount on every row: every balanced
    labelling is optimal, and their costs are float64 sums of different terms near +-1e6."""
    rng = np.random.default_rng(seed)
    a = np.where(np.arange(n_points) < n_points // 2, 1e6, -1e6) + rng.random(n_points)
    shift = np.round(0.3 * 2.0**33) / 2.0**33  # a multiple of the scores' ulp: exact sums
    return np.stack([a, a + shift], axis=1)


@pytest.mark.parametrize("seed", [1, 5, 6, 9])
def test_check_calls_a_tied_optimum_of_cancelling_logits_optimal(seed):
    """check allowed ``4 N u (|cost| + |optimum|)`` between the two sums: near 0 for logits
    that cancel, so a labelling as good as the solved one was reported not optimal (gap
    6e-8 against an allowance of 1e-9)."""
    S = tied_cancelling_logits(1000, seed)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat([0, 1], 500))
    oracle = assignment_labels(S, np.array([500, 500]))
    assert exact_cost(S, labels) == exact_cost(S, oracle)
    report = sinklabel.check(labels, S)
    assert report.optimal


def test_check_still_rejects_a_slightly_worse_labelling_of_cancelling_logits():
    """One tie broken by 1e-3: the labelling that loses it is measurably worse."""
    S = tied_cancelling_logits(1000, 0)
    S[0, 1] += 1e-3
    labels = np.repeat([0, 1], 500)
    labels[0], labels[-1] = 0, 1
    oracle = assignment_labels(S, np.array([500, 500]))
    assert exact_cost(S, labels) - exact_cost(S, oracle) == pytest.approx(1e-3, rel=1e-3)
    report = sinklabel.check(labels, S)
    assert not report.optimal and report.gap == pytest.approx(1e-3, rel=1e-2)


@pytest.mark.parametrize("prices", [[1e308, -1e308, 0.0], [1.7e308, 0.0, -1.7e308]])
def test_prices_whose_terms_overflow_both_ways_certify_nothing(prices):
    """The sizes times prices sum to inf - inf = NaN: the bound is -inf (the prices prove
    nothing), never +inf, which would make any labelling look optimal."""
    S = np.random.default_rng(0).normal(size=(9, 3))
    certificate = sinklabel.duality_gap(S, np.arange(9) % 3, np.array(prices))
    assert certificate.dual == -np.inf and certificate.gap == np.inf
    assert not certificate.optimal


def test_finite_per_label_counts_as_a_plain_count():
    rng = np.random.default_rng(0)
    S = rng.normal(size=(300, 7))
    S[rng.random(S.shape) < 0.3] = -np.inf
    rows = np.flatnonzero(rng.random(300) < 0.5)
    assert np.array_equal(finite_per_label(S), np.isfinite(S).sum(axis=0))
    assert np.array_equal(finite_per_label(S, rows), np.isfinite(S[rows]).sum(axis=0))
    assert np.array_equal(finite_per_label(S[:0]), np.zeros(7))


class _RecordedRows:
    """Host scores that record how many rows each read takes."""

    def __init__(self, scores: np.ndarray):
        self.scores, self.shape, self.reads = scores, scores.shape, []

    def __getitem__(self, rows):
        block = self.scores[rows]
        self.reads.append(len(block))
        return block


def test_finite_per_label_counts_in_blocks_of_the_budget(monkeypatch):
    """No N x K mask: blocks of COUNT_BLOCK scores (10 rows of 7 labels here)."""
    from sinklabel import _capacities

    monkeypatch.setattr(_capacities, "COUNT_BLOCK", 70)
    S = np.random.default_rng(1).normal(size=(95, 7))
    S[::3, 2] = -np.inf
    recorded = _RecordedRows(S)
    assert np.array_equal(finite_per_label(recorded), np.isfinite(S).sum(axis=0))
    assert recorded.reads == [10] * 9 + [5]


def refusing_rows(start: int, stop: int) -> np.ndarray:
    raise AssertionError(f"rows [{start}, {stop}) read before the memory check")


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10**7), st.lists(st.integers(1, 1000), min_size=1, max_size=20))
@example(157_035, [32, 26, 14, 16, 3, 4])  # integer shares that N * w misses by ulps
@example(184_080, [24, 21, 20])
def test_balanced_sizes_are_the_floor_and_ceil_of_the_exact_shares(n, parts):
    """N * w with w = parts / sum(parts), in exact rational arithmetic: its floor and ceil,
    one size where the share is an integer, though the normalised weights times N may miss
    it by a few ulps (found by search; draws rarely hit them)."""
    weights = check_label_weights(np.array(parts, dtype=float), len(parts))
    lower, upper = balanced_range(n, weights)
    exact_lower, exact_upper = sizes(n, np.array(parts))
    assert lower.tolist() == exact_lower.tolist() and upper.tolist() == exact_upper.tolist()


def test_solve_exact_refuses_a_stream_too_large_for_memory_before_reading_it():
    """A 1e9 x 1e4 stream needs a 37 TiB host copy: the solver read the stream in full
    (its check pass) before the copy failed; now it refuses before the first block."""
    source = CallableSource(refusing_rows, (10**9, 10**4), dtype="float32")
    with pytest.raises(MemoryError, match="host memory for N=1000000000, K=10000"):
        sinklabel.solve_exact(source, 10**4)


def test_exact_balance_refuses_a_stream_too_large_for_memory_before_the_sinkhorn_solve():
    """balance="exact" needs the same host copy: refused before the Sinkhorn solve reads
    the stream, not after it."""
    source = CallableSource(refusing_rows, (10**9, 10**4), dtype="float32")
    with pytest.raises(MemoryError, match="host memory for N=1000000000, K=10000"):
        sinklabel.sinkhorn(source, 10**4, balance="exact")


def test_host_memory_check_counts_a_copy_only_where_one_is_made(monkeypatch):
    """With 3 MiB of memory, 2.3 MiB of float32 scores read in place still solve (the
    solver's own arrays take 2 MiB); a float16 copy of them, or a stream of them, is
    refused."""
    from sinklabel import exact

    monkeypatch.setattr(exact, "physical_memory", lambda: 3 << 20)
    S = np.log(np.random.default_rng(0).dirichlet(np.ones(100), size=6000)).astype(np.float32)
    solved = sinklabel.solve_exact(S, 100)
    assert np.array_equal(np.bincount(solved.labels, minlength=100), np.full(100, 60))
    with pytest.raises(MemoryError, match="copy of the scores"):
        sinklabel.solve_exact(S.astype(np.float16), 100)
    stream = CallableSource(refusing_rows, S.shape, dtype="float32")
    with pytest.raises(MemoryError):
        sinklabel.solve_exact(stream, 100)


def test_certificate_summed_over_ranks_of_cancelling_logits_is_optimal():
    """The same bound where several processes' sums are added (as across ranks): one rank
    holds the rows near +1e6, the other those near -1e6."""
    from sinklabel.certificate import _certificate_from_sums, _partial_sums
    from sinklabel.kernels import resolve_kernel
    from sinklabel.sources import as_source

    S = cancelling_logits(1000, 4, 0)
    sizes = np.full(4, 250)
    exact = sinklabel.solve_exact(S, 4)
    kernel = resolve_kernel("numpy", "numpy")
    labels = np.asarray(exact.labels)
    sums = sum(
        _partial_sums(as_source(S[part]), kernel, labels[part], exact.prices, 1, ranks=2)
        for part in (slice(0, 500), slice(500, None))
    )
    certificate = _certificate_from_sums(sums, exact.prices, sizes, sizes)
    assert exact_cost(S, labels) == exact_cost(S, assignment_labels(S, sizes))
    assert certificate.optimal


def range_assignment_cost(S: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """The optimum with sizes in ``[lower, upper]``: label y's column replicated ``upper[y]``
    times, its first ``lower[y]`` copies with a bonus large enough that all are filled."""
    K = S.shape[1]
    labels = np.arange(K)
    columns = np.concatenate([np.repeat(labels, lower), np.repeat(labels, upper - lower)])
    bonus = np.zeros(columns.size)
    bonus[:lower.sum()] = 1e3 * (1 + np.abs(S).max() * S.shape[0])
    rows, slots = linear_sum_assignment(-S[:, columns] - bonus)
    labels = np.empty(S.shape[0], np.int64)
    labels[rows] = columns[slots]
    return exact_cost(S, labels)


@st.composite
def balance_problems(draw):
    """Small problems with ties (integer scores) or without, label weights or none."""
    N = draw(st.integers(1, 16))
    K = draw(st.integers(1, N))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tied = draw(st.booleans())
    S = rng.integers(-3, 1, size=(N, K)).astype(float) if tied else rng.normal(size=(N, K)) * 3
    weights = rng.random(K) + 0.1 if draw(st.booleans()) else None
    dtype = draw(st.sampled_from([np.float64, np.float32, np.float16]))
    return S.astype(dtype), weights


@settings(max_examples=20, deadline=None)
@given(problem=balance_problems())
def test_balance_exact_reaches_the_assignment_optimum(problem):
    S, weights = problem
    N, K = S.shape
    result = sinklabel.sinkhorn(S, K, label_weights=weights, balance="exact", max_iter=200)
    lower, upper = balanced_range(N, check_label_weights(weights, K))
    counts = np.bincount(result.labels, minlength=K)
    assert np.all(counts >= lower) and np.all(counts <= upper)
    S64 = S.astype(np.float64)
    assert exact_cost(S64, result.labels) == pytest.approx(
        range_assignment_cost(S64, lower, upper), rel=1e-12, abs=1e-12)
    assert result.certificate.optimal


def _capped_peaked(n_points: int, n_labels: int, seed: int) -> np.ndarray:
    """float32 log-softmax scores, each row peaked on a random label by 12 nats."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_points, n_labels))
    z[np.arange(n_points), rng.integers(0, n_labels, n_points)] += 12
    z -= z.max(axis=1, keepdims=True)
    return (z - np.log(np.exp(z).sum(axis=1, keepdims=True))).astype(np.float32)


@pytest.mark.parametrize("method", ["auction", "highs"])
def test_float32_certificate_of_capacity_ranges_keeps_zero_prices_exact(method):
    """Under capacity ranges every label with room to spare has price exactly 0 at the
    optimum. The float32 pass rounded the prices' offsets from their centre (here about
    -4.5), which turned those zeros into about +-2.4e-7 and moved the bound by that times each
    label's slack (up to 200 points each, 99 labels): the optimum's own certificate had a gap
    of 4.5e-3 against a rounding allowance of 2.2e-4, and was "not optimal"."""
    S = _capped_peaked(200, 100, 2)
    lower = np.zeros(100, np.int64)
    upper = np.full(100, 200)
    upper[:3] = 1  # three labels capped, the rest free
    exact = sinklabel.solve_exact(S, 100, capacities=(lower, upper), method=method)
    reference = sinklabel.solve_exact(S.astype(np.float64), 100, capacities=(lower, upper))
    assert exact.objective == reference.objective
    assert exact.certificate.optimal
    again = sinklabel.duality_gap(S, reference.labels, exact.prices, (lower, upper))
    assert again.optimal
    report = sinklabel.check(exact.labels, S, capacities=(lower, upper), exact=False,
                             prices=exact.prices)
    assert report.optimal


def test_rounding_bounds_the_float64_sums_of_one_large_chunk():
    """Costs of +-2**53 at both ends of one chunk absorb the 0.001s summed beside them (NumPy
    adds in groups): ``rounding`` must bound that error of primal and dual, from the additions
    within the chunk, not only those between chunks (which there are none of here)."""
    n = 1_000_000
    S = np.full((n, 2), -0.001)
    S[0], S[-1] = -(2.0**53), 2.0**53
    labels = np.arange(n) % 2
    certificate = sinklabel.duality_gap(S, labels, np.zeros(2), chunk_size=n)
    exact = math.fsum(-S[:, 0])
    assert certificate.primal != exact  # the sums did lose the small costs
    assert abs(certificate.primal - exact) <= certificate.rounding
    assert abs(certificate.dual - exact) <= certificate.rounding


def test_rounding_bounds_the_float64_product_of_the_prices_centre():
    """Equal prices ``B = 2**52 + 1`` under sizes in [0, N]: the dual is ``-N * B`` exactly
    (every label at its lower size 0), which float64 rounds by 1 for N = 3. The rows' terms
    are all 0, so ``rounding`` must bound that product on its own."""
    from fractions import Fraction

    B = 2.0**52 + 1
    S = np.zeros((3, 2))
    capacities = (np.zeros(2, np.int64), np.full(2, 3))
    certificate = sinklabel.duality_gap(S, np.array([0, 0, 1]), np.full(2, B), capacities)
    exact_dual = -3 * Fraction(B)
    assert certificate.dual != exact_dual  # the product did round
    assert abs(Fraction(certificate.dual) - exact_dual) <= certificate.rounding
    assert abs(Fraction(certificate.gap) - (0 - exact_dual)) <= certificate.rounding


def test_float64_rows_keep_the_bound_where_only_a_middle_price_rounds():
    """As test_exact's float64-beside-float32 case, with the extreme prices (and so their
    centre, 0) exact in float32: only label 1's price rounds, up, from 1e6 + 0.1 to
    1e6 + 0.125, and the float64 row's allowance is that rounding's size, not its signed
    value. Labels 2 and 3 have no room and are never picked."""
    from sinklabel.certificate import _certificate_from_sums, _partial_sums
    from sinklabel.kernels import resolve_kernel
    from sinklabel.sources import as_source

    S = np.zeros((5, 4))
    S[:, 1] = S[:, 3] = -1e7
    S[0, :2] = [0.0625, -1e6]
    S[1, :2] = [0.125, -1e6]
    caps = np.array([4, 1, 0, 0])
    labels = np.array([1, 0, 0, 0, 0])
    prices = np.array([0.0, 1e6 + 0.1, -2e6, 2e6])
    kernel = resolve_kernel("numpy", "numpy")
    ranks = [(S[:1], labels[:1]), (S[1:].astype(np.float32), labels[1:])]
    sums = sum(_partial_sums(as_source(rows), kernel, own, prices, 8) for rows, own in ranks)
    certificate = _certificate_from_sums(sums, prices, caps, caps)
    optimum = exact_cost(S, assignment_labels(S[:, :2], caps[:2]))
    assert optimum == 1e6 - 0.125
    assert certificate.dual - certificate.rounding <= optimum


def test_cost_difference_bounds_its_rounding_across_many_chunks():
    """Differences of +-2**53 at both ends and 0.01s between, one row a chunk: the 0.01s are
    lost in the additions between chunks, which check's cost rounding must count."""
    from sinklabel.certificate import _cost_difference
    from sinklabel.kernels import resolve_kernel
    from sinklabel.sources import as_source

    n = 2000
    S = np.zeros((n, 2))
    S[:, 1] = -0.01
    S[0, 1], S[-1, 1] = -(2.0**53), 2.0**53
    labels, reference = np.ones(n, np.int64), np.zeros(n, np.int64)
    difference, bound = _cost_difference(as_source(S), resolve_kernel("numpy", "numpy"),
                                         labels, reference, 1)
    exact = exact_cost(S, labels) - exact_cost(S, reference)
    assert difference != exact  # the sum did lose the small differences
    assert abs(difference - exact) <= bound
