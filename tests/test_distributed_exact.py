"""The contested-rows reduction of ``balance="exact"`` across ranks, run in one process.

The reduction does the same arithmetic whatever the number of ranks (thresholds come from
global counts, contested rows are stacked in rank order), so its logic is tested here with the
one-process collective, quickly and on many problems; test_distributed.py runs it across real
ranks. Oracles: HiGHS on the whole linear program, and the single-process ``balance="exact"``.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import sinklabel
from sinklabel import _distributed_exact, api
from sinklabel._capacities import balanced_range
from sinklabel.collective import LOCAL
from sinklabel.datasets import make_scores
from sinklabel.kernels import resolve_kernel
from sinklabel.sources import CallableSource, SourceError, as_source, checked


def _balance(scores, K, *, first_contested=None, backend="numpy", **options):
    """Sinkhorn in one process, then the reduction of the distributed path on its result
    (which gives the labels that the plain solve warns it left empty their points)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
        warnings.filterwarnings("ignore", ".*labels received no points", UserWarning)
        result = sinklabel.sinkhorn(scores, K, backend=backend, **options)
    source = as_source(scores)
    kernel = resolve_kernel(backend, source.library)
    return result, _distributed_exact.balance_across_ranks(
        source, kernel, result, 64, LOCAL, first_contested=first_contested
    )


@pytest.fixture
def rounds(monkeypatch) -> list[int]:
    """The number of contested rows of each reduced solve."""
    sizes: list[int] = []
    solve = _distributed_exact._solve_reduced

    def counted(S, lower, upper, v):
        sizes.append(S.shape[0])
        return solve(S, lower, upper, v)

    monkeypatch.setattr(_distributed_exact, "_solve_reduced", counted)
    return sizes


def _objective(scores: np.ndarray, labels) -> float:
    labels = np.asarray(labels)
    return float(scores[np.arange(labels.size), labels].astype(np.float64).sum())


def _assert_optimal(scores, weights, result) -> None:
    """Sizes within floor/ceil of N * w, certified, and the HiGHS optimum's objective."""
    N, K = scores.shape
    lower, upper = balanced_range(N, weights)
    labels = np.asarray(result.labels)
    counts = np.bincount(labels, minlength=K)
    np.testing.assert_array_equal(counts, result.label_counts)
    assert np.all((lower <= counts) & (counts <= upper))
    assert result.balance == "exact" and result.certificate.feasible
    # optimal up to rounding; where the objective cancels to ~0, up to float64 noise of the
    # scale (the single-process certificate reports such gaps of ~1e-16 too)
    certificate = result.certificate
    scale = abs(certificate.primal) + np.abs(scores[np.isfinite(scores)]).sum()
    assert certificate.optimal or certificate.gap <= 1e-12 * scale, certificate
    highs = sinklabel.solve_exact(scores, K, capacities=(lower, upper), method="highs")
    assert _objective(scores, labels) == pytest.approx(-highs.objective, rel=1e-9, abs=1e-9)


@st.composite
def problems(draw):
    """Small scores with ties and -inf entries, uneven label weights, any first target."""
    N = draw(st.integers(2, 40))
    K = draw(st.integers(1, min(N, 5)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    S = rng.normal(scale=draw(st.sampled_from([0.3, 3.0])), size=(N, K))
    if draw(st.booleans()):
        S = np.round(S, 1)  # ties
    if K > 1 and draw(st.booleans()):
        S[rng.random((N, K)) < 0.15] = -np.inf
        S[np.arange(N), rng.integers(0, K, N)] = 0.0  # every row keeps a finite score
    weights = rng.uniform(0.5, 2.0, K) if draw(st.booleans()) else np.ones(K)
    first = draw(st.integers(1, N))
    lam = draw(st.sampled_from([1.0, 25.0]))
    return S, weights / weights.sum(), first, lam


#: A label short of its exact share by less than a point: the plain solve refuses it, while
#: balance="exact" (sizes rounded down) serves it.
SHORT_BY_LESS_THAN_A_POINT = (
    np.array([[-0.10790054, 0.36110253, 0.0], [0.0, -np.inf, -np.inf],
              [-0.27423621, 0.0, -np.inf]]),
    np.array([0.30389691, 0.36068889, 0.3354142]), 1, 1.0,
)


@settings(max_examples=60, deadline=None)
@given(problems())
@example(SHORT_BY_LESS_THAN_A_POINT)
def test_reduction_reaches_the_optimum_of_the_whole_problem(problem):
    S, weights, first, lam = problem
    options = {"label_weights": weights, "lam": lam, "max_iter": 20}
    try:
        _, result = _balance(S, S.shape[1], first_contested=first, **options)
    except ValueError as error:  # -inf entries may leave no labelling within the sizes
        assert "no labelling meets" in str(error) or "finite score" in str(error), error
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
                sinklabel.sinkhorn(S, S.shape[1], balance="exact", **options)
        except ValueError:
            return
        # The plain solve of _balance holds a label to its exact share, balance="exact" to
        # that share rounded down: only a label short by less than a point differs.
        assert "should take" in str(error), error
        return
    _assert_optimal(S, weights, result)


@pytest.mark.parametrize("regime", ["flat", "peaked"])
def test_a_small_first_set_forces_retries_that_end_at_the_optimum(regime, rounds):
    """Too few contested rows: settled rows move under the first exact prices, the round is
    repeated with more rows, and the end is the single-process optimum."""
    S = make_scores(239, 6, regime=regime, seed=1, dtype=np.float64, margin=4.0).scores
    weights = np.full(6, 1 / 6)
    sinkhorn, result = _balance(S, 6, first_contested=1)
    assert len(rounds) >= 2 and rounds == sorted(rounds)  # the contested set only grows
    assert rounds[-1] < 239  # and never needed every row
    _assert_optimal(S, weights, result)
    single = sinklabel.sinkhorn(S, 6, balance="exact", backend="numpy")
    assert result.certificate.primal == pytest.approx(single.certificate.primal, rel=1e-12)
    # the Sinkhorn part of the result is untouched
    np.testing.assert_array_equal(result.potentials, sinkhorn.potentials)
    assert result.n_iter == sinkhorn.n_iter


@pytest.mark.parametrize(("weights", "seed"), [(np.ones(6), 0), (np.array([1e-15, *[1.0] * 5]), 2)],
                         ids=["equal", "an empty label"])
def test_retries_double_the_contested_rows_and_leave_every_label_room(weights, seed,
                                                                       monkeypatch):
    """What the module docstring promises of each round: the reduced problem's lower sizes
    are not negative, every label keeps room for a contested row (settled rows stop one short
    of its upper size) but a label of size 0 takes none, and a failed round at least doubles
    the contested rows. N = 240: every size is exactly 40 (or 48, and 0), where the caps
    differ from the lower sizes."""
    S = make_scores(240, 6, regime="flat", seed=seed, dtype=np.float64, margin=4.0).scores
    reduced = []
    solve = _distributed_exact._solve_reduced

    def recorded(rows, lower, upper, v):
        reduced.append((rows.shape[0], lower.copy(), upper.copy()))
        return solve(rows, lower, upper, v)

    monkeypatch.setattr(_distributed_exact, "_solve_reduced", recorded)
    _, result = _balance(S, 6, first_contested=1, label_weights=weights)
    assert result.certificate.optimal
    sizes = [size for size, _, _ in reduced]
    labels_with_room = np.count_nonzero(balanced_range(240, weights / weights.sum())[1])
    assert sizes[0] == labels_with_room and len(sizes) >= 2  # a first target of 1 row
    assert all(after >= min(2 * before, 240) for before, after in itertools.pairwise(sizes))
    for _, lower, upper in reduced:
        assert np.all(lower >= 0)
        np.testing.assert_array_equal(upper >= 1, weights > 1e-9)
        assert np.all(upper >= 0)


def test_default_first_set_settles_most_rows_in_one_round(rounds):
    """At N/K = 100 the default first round (16 rows per label) is enough, and solves a
    small share of the rows."""
    S = make_scores(20_000, 200, regime="flat", seed=4).scores
    _, result = _balance(S, 200)
    assert rounds == [4096]
    assert result.certificate.optimal
    np.testing.assert_array_equal(result.label_counts, np.full(200, 100))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_torch_scores_give_torch_labels(dtype):
    torch = pytest.importorskip("torch")
    S = make_scores(300, 7, regime="peaked", seed=3).scores  # N not divisible by K
    scores = torch.from_numpy(S).to(getattr(torch, dtype))
    _, result = _balance(scores, 7, first_contested=5, backend="torch")
    assert isinstance(result.labels, torch.Tensor) and result.labels.dtype == torch.int64
    _assert_optimal(scores.float().numpy(), np.full(7, 1 / 7), result)


@pytest.mark.parametrize("dtype", ["float16", ">f8"])
@pytest.mark.parametrize("compiled", [True, False])
def test_float16_and_big_endian_scores_reach_the_optimum(compiled, dtype, monkeypatch):
    """numba has neither float16 nor another byte order: the scans must convert the blocks,
    with or without it."""
    monkeypatch.setattr(_distributed_exact, "HAVE_NUMBA", compiled)
    S = make_scores(300, 7, regime="peaked", seed=3).scores.astype(dtype)
    _, result = _balance(S, 7, first_contested=5)
    _assert_optimal(S.astype(np.float64), np.full(7, 1 / 7), result)


def test_contested_set_beyond_its_limit_raises(monkeypatch):
    """Retries that would move more rows to rank 0 than allowed stop with an explanation."""
    S = make_scores(239, 6, regime="flat", seed=1, dtype=np.float64).scores
    monkeypatch.setattr(_distributed_exact, "MAX_CONTESTED_FRACTION", 0.0)
    monkeypatch.setattr(_distributed_exact, "SMALL_BYTES", 12 * 6 * 8)  # 12 rows
    with pytest.raises(RuntimeError, match="Solve Sinkhorn further"):
        _balance(S, 6, first_contested=1, max_iter=2)


def test_reduced_problems_that_stay_infeasible_end_at_the_limit(monkeypatch):
    """An infeasible reduced problem changes no row's state: only the doubling target grows
    the contested set, so the round at the limit must be the last (repeating it would solve
    the same rows again, forever)."""
    S = make_scores(240, 6, regime="flat", seed=1, dtype=np.float64).scores
    monkeypatch.setattr(_distributed_exact, "SMALL_BYTES", 0)  # limit: half the rows, 120
    sizes = []

    def infeasible(rows, lower, upper, v):
        sizes.append(rows.shape[0])
        assert len(sizes) < 20, sizes  # a loop that does not end
        return _distributed_exact._INFEASIBLE, v, np.zeros(rows.shape[0])

    monkeypatch.setattr(_distributed_exact, "_solve_reduced", infeasible)
    with pytest.raises(RuntimeError, match="pass its limit"):
        _balance(S, 6, first_contested=1)
    assert sizes[-1] == 120 and sizes.count(120) == 1, sizes


def test_labels_that_cannot_be_filled_raise_before_any_solve(rounds):
    S = np.zeros((12, 3))
    S[:, 2] = -np.inf
    S[0, 2] = 0.0  # label 2 must take 4 rows, only one may
    # The Sinkhorn solve, which cannot converge, says so first (or the exact step).
    with pytest.raises(ValueError, match="label 2 (must take at least|should take) 4 points"):
        _balance(S, 3)
    assert rounds == []


@pytest.mark.filterwarnings("ignore::sinklabel.ConvergenceWarning")
@pytest.mark.parametrize("first", [None, 1])
def test_sizes_no_labelling_can_meet_raise_like_one_process(first):
    """Every label has enough rows with a finite score, yet three rows can only take label
    0, which must take two: infeasible, found when every row is contested."""
    S = np.full((6, 3), -np.inf)
    S[:3, 0] = 0.0
    S[3:, 1:] = np.arange(6).reshape(3, 2)
    with pytest.raises(ValueError, match="no labelling meets"):
        sinklabel.sinkhorn(S, 3, balance="exact")
    with pytest.raises(ValueError, match="no labelling meets"):
        _balance(S, 3, first_contested=first)


def test_sizes_exceeded_by_rows_with_one_finite_label_say_so():
    """Two rows can take only label 2, whose size is at most 1: the error said labels need
    more rows than have finite scores, the opposite of what is wrong."""
    S = np.array([[0.0, 0.4, -0.1], [-np.inf, -np.inf, 0.0], [0.1, 0.0, -0.5],
                  [0.4, 0.2, 0.0], [-np.inf, -np.inf, 0.0]])
    with pytest.raises(ValueError, match="more points than they may take"):
        _balance(S, 3, first_contested=1, label_weights=np.array([0.39, 0.42, 0.19]), lam=1.0,
                 max_iter=20)


@pytest.mark.parametrize("compiled", [True, False, "torch"])
def test_scan_finds_best_label_margin_and_moved_rows(compiled, monkeypatch):
    """Against a per-row sort: ties (margin 0, first label wins), -inf, a single finite
    label (margin +inf), labels off their arg-max or on a -inf score. Halves keep every sum
    exact, so ties are exact. "torch": the scan a GPU rank runs on its device, here on CPU
    tensors that require grad (training logits: numpy() refused the scan's results)."""
    if compiled == "torch":
        torch = pytest.importorskip("torch")
        monkeypatch.setattr(_distributed_exact, "DEVICE_SCANS", ("cuda", "cpu"))
        monkeypatch.setattr(_distributed_exact, "_scan_rows", _no_host_scan)
        monkeypatch.setattr(_distributed_exact, "_scan_rows_numpy", _no_host_scan)
    else:
        monkeypatch.setattr(_distributed_exact, "HAVE_NUMBA", compiled)
    rng = np.random.default_rng(5)
    S = (np.round(2 * rng.normal(size=(500, 7))) / 2).astype(np.float32)
    S[rng.random(S.shape) < 0.2] = -np.inf
    S[:, 3] = np.where(np.isfinite(S).any(axis=1), S[:, 3], 0.0)
    S[0] = [-np.inf, -np.inf, 1.0, -np.inf, -np.inf, -np.inf, -np.inf]
    v = np.round(2 * rng.normal(size=7)) / 2
    labels = rng.integers(0, 7, 500)
    z = S.astype(np.float64) + v
    labels[:50] = z[:50].argmax(axis=1)
    source = as_source(torch.from_numpy(S).requires_grad_() if compiled == "torch" else S)
    scan = _distributed_exact._scan(source, 7, v, labels)

    ordered = np.sort(z, axis=1)
    np.testing.assert_array_equal(scan.best, z.argmax(axis=1))
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(scan.margin, ordered[:, -1] - ordered[:, -2])
    assert scan.margin[0] == np.inf and np.any(scan.margin == 0.0)
    own = z[np.arange(500), labels]
    np.testing.assert_array_equal(scan.off, own < ordered[:, -1])
    assert not scan.off[:50].any() and scan.off[own == -np.inf].all()
    assert np.any(own == -np.inf)
    np.testing.assert_array_equal(scan.finite, np.isfinite(S).sum(axis=0))
    # without labels, nothing is off
    assert not _distributed_exact._scan(source, 7, v).off.any()


def _no_host_scan(*args):
    raise AssertionError("a device's rows went to the host scan")


def test_reduction_without_numba_matches(monkeypatch, rounds):
    monkeypatch.setattr(_distributed_exact, "HAVE_NUMBA", False)
    S = make_scores(239, 6, regime="peaked", seed=1, dtype=np.float64, margin=4.0).scores
    _, result = _balance(S, 6, first_contested=1)
    assert len(rounds) >= 2
    _assert_optimal(S, np.full(6, 1 / 6), result)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_reduction_on_the_device_matches(monkeypatch, rounds, dtype):
    """A GPU rank's scan runs on its device and sends only contested rows to the host: here
    CPU tensors take that path, over several rounds, with -inf entries, and the labels are
    the host path's, certified optimal."""
    torch = pytest.importorskip("torch")
    S = make_scores(239, 6, regime="peaked", seed=1, margin=4.0).scores
    S[::7, 2] = -np.inf
    tensor = torch.from_numpy(S).to(getattr(torch, dtype))
    _, host = _balance(tensor, 6, first_contested=1, backend="torch")
    host_rounds = list(rounds)
    rounds.clear()
    monkeypatch.setattr(_distributed_exact, "DEVICE_SCANS", ("cuda", "cpu"))
    monkeypatch.setattr(_distributed_exact, "_scan_rows", _no_host_scan)
    monkeypatch.setattr(_distributed_exact, "_scan_rows_numpy", _no_host_scan)
    _, device = _balance(tensor, 6, first_contested=1, backend="torch")
    assert len(rounds) >= 2 and rounds == host_rounds
    np.testing.assert_array_equal(device.labels.numpy(), host.labels.numpy())
    np.testing.assert_array_equal(device.prices, host.prices)
    assert device.certificate.optimal


def test_scores_that_change_after_the_solve_are_noticed_by_the_reduction(rounds):
    """The reduction reads a stream in the solve's chunks, behind its checking layer: scores
    that changed between the Sinkhorn solve and the exact stage stop its first scan, before
    any rows are gathered and solved for scores other than the solve's (reads in blocks of
    their own went unchecked until the final certificate's pass)."""
    scores = make_scores(300, 5, regime="peaked", seed=4).scores
    drift = np.zeros(1, dtype=np.float32)

    def drifting(start, stop):
        return scores[start:stop] + drift * np.arange(5, dtype=np.float32)

    # One checked source for the solve and the reduction, as distributed_sinkhorn has it.
    source = checked(CallableSource(drifting, scores.shape, "float32"))
    kernel = resolve_kernel("numpy", "numpy")
    result = api._sinkhorn(source, kernel, scores=source, lam=25.0,
                           label_weights=np.full(5, 0.2), tol=1e-6, max_iter=1000, init=None,
                           rows=64, progress=False)
    drift[0] = 0.5
    with pytest.raises(SourceError, match="changed since the first pass"):
        _distributed_exact.balance_across_ranks(source, kernel, result, 64, LOCAL)
    assert rounds == []


def test_scans_read_bounded_blocks_when_the_solve_takes_all_rows_at_once(monkeypatch):
    """GPU kernels solve in one chunk of all rows; the scans copy blocks to the host, so they
    read at most SCAN_BYTES (as float64) at a time, while the certificate keeps the solve's
    chunk (one block)."""
    monkeypatch.setattr(_distributed_exact, "SCAN_BYTES", 50 * 5 * 8)
    scores = make_scores(300, 5, regime="peaked", seed=5).scores
    sizes = []

    def recorded(start, stop):
        sizes.append(stop - start)
        return scores[start:stop]

    source = CallableSource(recorded, scores.shape, "float32")
    kernel = resolve_kernel("numpy", "numpy")
    result = sinklabel.sinkhorn(scores, 5, backend="numpy")
    balanced = _distributed_exact.balance_across_ranks(source, kernel, result, 1 << 62, LOCAL)
    assert set(sizes) == {50, 300}
    assert balanced.certificate.optimal


@pytest.fixture
def small_limit(monkeypatch) -> None:
    """Rank 0 may take at most 40 rows of 5 float64 scores: far fewer than the rows below."""
    monkeypatch.setattr(_distributed_exact, "MAX_CONTESTED_FRACTION", 0.0)
    monkeypatch.setattr(_distributed_exact, "SMALL_BYTES", 40 * 5 * 8)


@pytest.mark.filterwarnings("ignore:.*labels received no points:UserWarning")
@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("n", [300, 303])
def test_rows_tied_on_every_label_settle_past_the_limit(compiled, n, small_limit, monkeypatch,
                                                        rounds):
    """A zero-initialised head: every row ties on every label, every margin is 0. Such rows
    may take any label, so they settle in the caps' room, and the exact sizes come out
    certified with one small reduced solve (left contested, they all were, past the limit)."""
    monkeypatch.setattr(_distributed_exact, "HAVE_NUMBA", compiled)
    S = np.full((n, 5), -np.log(5.0))
    _, result = _balance(S, 5)
    assert rounds == [40]
    _assert_optimal(S, np.full(5, 0.2), result)


@pytest.mark.filterwarnings("ignore:.*labels received no points:UserWarning")
def test_rows_tied_on_some_labels_past_the_limit_say_so(small_limit):
    """Rows tied between two labels but not all cannot settle: the error names the ties
    rather than asking for more Sinkhorn iterations, which cannot separate them."""
    S = np.full((300, 5), -5.0)
    S[::2, :2] = 0.0
    S[1::2, 2:4] = 0.0
    S[:, 4] = -1.0
    with pytest.raises(RuntimeError, match="tie exactly with a runner-up label") as error:
        _balance(S, 5)
    assert "Solve Sinkhorn further" not in str(error.value)


@pytest.mark.filterwarnings("ignore:.*labels received no points:UserWarning")
def test_rows_crowding_one_label_past_the_limit_say_so(small_limit):
    """Two thirds of the rows repeat one row: they share its best label and margin, so at most
    that label's size settle and the rest stay contested whatever the prices. The error says
    so rather than asking for more Sinkhorn iterations, which left it unchanged."""
    rng = np.random.default_rng(0)
    S = rng.normal(size=(300, 5))
    S[:200] = [0.3, 1.0, -0.2, 0.1, -1.0]
    with pytest.raises(RuntimeError, match=r"of them have label 1 as their best, and it may "
                                           r"take 60: rows settle only") as error:
        _balance(S, 5)
    assert "Solve Sinkhorn further" not in str(error.value)
    with pytest.raises(RuntimeError, match="label 1 as their best"):
        _balance(S, 5, tol=1e-6, max_iter=500)


# --- the settling rules, against brute force -------------------------------------------------

MARGINS = st.sampled_from([0.0, 5e-324, 1e-300, 0.5, 1.0, 1.0 + 2**-52, 3.0, np.inf])


def _smallest_threshold(margins: np.ndarray, limit: int) -> float:
    """The smallest t >= 0 with at most ``limit`` of ``margins`` above it, by trying every
    candidate: 0 and the margins themselves (the count changes only there)."""
    return min(t for t in [0.0, *margins] if np.count_nonzero(margins > t) <= limit)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), k=st.integers(1, 5), n=st.integers(0, 30))
def test_thresholds_are_the_smallest_that_respect_caps_and_keep(data, k, n):
    """Per label, the smallest margin threshold leaving at most ``caps[y]`` of its rows above
    it, raised to the one leaving at most ``keep`` rows above it in all; exact to the bit."""
    best = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)),
                    dtype=np.int64)
    margin = np.array(data.draw(st.lists(MARGINS, min_size=n, max_size=n)), dtype=np.float64)
    caps = np.array(data.draw(st.lists(st.integers(0, n), min_size=k, max_size=k)))
    keep = data.draw(st.integers(0, n))
    scan = _distributed_exact._Scan(best, margin, None, None, None)
    got = _distributed_exact._thresholds(scan, caps, keep, LOCAL)
    overall = _smallest_threshold(margin, keep)
    expected = [max(_smallest_threshold(margin[best == y], caps[y]), overall) for y in range(k)]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(("keep", "tied"), [(6, 2), (3, 1)])
def test_tied_rows_fill_only_the_room_the_rows_above_the_thresholds_leave(keep, tied):
    """Rows tied on every label settle after the rows with a margin, into what is left of each
    label's cap and of ``keep``: a label those rows filled takes none (more would push its
    reduced lower size below 0). Label 0's cap is 2 and two rows prefer it clearly; of the
    four tied rows, label 1 takes two (its cap), or one where only 3 rows may settle."""
    margin = np.array([5.0, 5.0, 0.0, 0.0, 0.0, 0.0])
    scan = _distributed_exact._Scan(np.zeros(6, np.int64), margin, np.zeros(6, bool),
                                    margin == 0, np.full(2, 6))
    settled, labels, counts = _distributed_exact._settle(scan, np.ones(6, bool),
                                                         np.array([2, 2]), keep, LOCAL)
    np.testing.assert_array_equal(settled, [True] * (2 + tied) + [False] * (4 - tied))
    np.testing.assert_array_equal(labels[settled], [0, 0] + [1] * tied)
    np.testing.assert_array_equal(counts, [2, tied])


@pytest.mark.filterwarnings("error")  # no room anywhere deals nothing, without a 0 / 0
@settings(max_examples=200, deadline=None)
@given(room=st.lists(st.integers(0, 20), min_size=1, max_size=6), n=st.integers(-3, 80))
@example(room=[0, 0], n=5)
def test_tied_rows_are_dealt_by_largest_remainders(room, n):
    """``min(n, room)`` tied rows in all, at most each label's room, in proportion to it: the
    whole parts first, then one more to the largest remainders (ties to the lower label).
    Where every label is full, none, and silently: a solve must not print NumPy's warning."""
    room = np.array(room, dtype=np.int64)
    quota = _distributed_exact._tie_quota(room, n)
    dealt = max(0, min(n, int(room.sum())))
    expected = np.zeros_like(room)
    if dealt:
        expected = room * dealt // room.sum()
        remainders = room * dealt % room.sum()
        order = sorted(range(room.size), key=lambda y: (-remainders[y], y))
        expected[order[:dealt - int(expected.sum())]] += 1
    np.testing.assert_array_equal(quota, expected)
    assert np.all(quota <= room)


@pytest.mark.parametrize(("gap", "feasible", "proved"), [
    (0.0, True, True),
    (0.5 + 2.0**-44 * 39, True, True),  # the pass's rounding plus float64 noise of the scale
    (0.5 + 2.0**-44 * 39 + 2.0**-50, True, False),
    (0.0, False, False),  # sizes outside the capacities: never certified, whatever the gap
])
def test_the_final_certificate_needs_feasible_sizes_and_a_gap_within_its_bounds(gap, feasible,
                                                                                 proved):
    """The last guard of the distributed exact labels: a certificate that does not prove
    optimality raises rather than return labels. Scale: |primal| + |dual| + upper @ |v| = 39,
    every bound exact in float64."""
    certificate = sinklabel.Certificate(primal=20.0, dual=12.0, gap=gap, rounding=0.5,
                                        feasible=feasible)
    v, upper = np.array([1.0, -2.0]), np.array([3.0, 2.0])  # upper @ |v| = 7
    assert _distributed_exact._proves_optimal(certificate, v, upper) == proved
