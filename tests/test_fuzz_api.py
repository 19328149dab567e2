"""Property-based attacks on the public entry points, each with an independent oracle.

Every test here was written against a defect found by fuzzing the API (or guards a property
the fuzzing checked across backends): oracles are plain NumPy written in this file, HiGHS,
or another backend, never the package's own helpers. Runs are small and derandomised.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sinklabel
from tests.conftest import CPU_BACKENDS, NUMPY_BACKENDS, backend_params, to_backend, to_host
from tests.test_feasibility import plan_exists

FUZZ = settings(max_examples=25, deadline=None)
#: Whether torch tensors can be passed here (the torch backend imports).
HAVE_TORCH = "torch" in CPU_BACKENDS


def _plan(scores: np.ndarray, potentials: np.ndarray, lam: float) -> np.ndarray:
    """Rows of softmax(lam * scores + potentials), by a plain float64 log-sum-exp."""
    z = lam * scores.astype(np.float64) + potentials
    top = z.max(axis=1, keepdims=True)
    p = np.exp(z - top)
    return p / p.sum(axis=1, keepdims=True)


@st.composite
def far_below_zero(draw):
    """Scores whose lam * logp lies below -3e38 for a whole row: far from float32's range
    in float64, or within float32's last decade for float32 scores."""
    n = draw(st.integers(1, 12))
    k = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    uniform = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).random((n, k))
    if dtype == np.float64:
        scale = draw(st.sampled_from([1e39, 1e100, 1e300]))
        return -scale * (1.0 + uniform), 1.0
    lam = 25.0  # lam * logp in [-3.39e38, -3.0e38]: float32 still holds every product
    return (-(3.0e38 + 0.39e38 * uniform) / lam).astype(np.float32), lam


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@FUZZ
@given(far_below_zero())
def test_rows_far_below_zero_give_finite_results_on_every_backend(backend, problem):
    """Numba's kernels started each row maximum at -3e38 (float32's range even for float64
    scores): a row lying wholly below it had every exponential underflow, and the solve died
    in ZeroDivisionError; its soft assignments too."""
    scores, lam = problem
    n, k = scores.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sinklabel.sinkhorn(to_backend(scores, backend), k, lam=lam, max_iter=30,
                                    backend=backend)
    labels = to_host(result.labels)
    assert labels.dtype == np.int64 and np.all((labels >= 0) & (labels < k))
    assert np.all(np.isfinite(result.potentials)) and np.isfinite(result.error)
    soft = to_host(result.soft_assignments(to_backend(scores, backend))).astype(np.float64)
    assert np.all(np.isfinite(soft))
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-5)
    # The hard labels are arg-maxima of the plan the potentials define.
    z = np.float64(lam) * scores.astype(np.float64) + result.potentials
    assert np.all(z[np.arange(n), labels] >= z.max(axis=1) - 1e-6 * np.abs(z).max(axis=1))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@FUZZ
@given(st.integers(1, 8), st.integers(1, 5), st.floats(2.5, 1e4), st.integers(0, 2**32 - 1))
def test_a_row_that_overflows_to_minus_inf_is_not_called_all_minus_inf(backend, n, k, lam,
                                                                      seed):
    """lam * logp below float32's range rounds a finite float32 row to -inf: the check said
    the row "has no finite score (-inf for every label)", which its scores contradict."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((n, k)).astype(np.float32)
    row = int(seed % n)
    scores[row] = -3.5e38 / lam * (1.0 + 0.5 * rng.random(k))  # lam * row < -3.4e38
    assert np.all(np.isfinite(scores))
    with pytest.raises(ValueError, match=rf"row {row} of logp overflows to -inf .*lam="):
        sinklabel.sinkhorn(to_backend(scores, backend), k, lam=lam, backend=backend)
    # A row of true -inf keeps its own message.
    scores[row] = -np.inf
    with pytest.raises(ValueError, match=rf"row {row} of logp has no finite score"):
        sinklabel.sinkhorn(to_backend(scores, backend), k, lam=lam, backend=backend)


def _highs_optimum(scores: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """The optimal cost of eq. (6) with label sizes in [lower, upper], by SciPy's HiGHS on the
    dense LP (x[i, y] in [0, 1], one label per row; -inf scores fix x[i, y] = 0)."""
    from scipy.optimize import linprog

    n, k = scores.shape
    finite = np.isfinite(scores)
    cost = np.where(finite, -scores, 0.0).ravel()
    rows = np.kron(np.eye(n), np.ones((1, k)))
    columns = np.kron(np.ones((1, n)), np.eye(k))
    bounds = [(0.0, 1.0 if ok else 0.0) for ok in finite.ravel()]
    res = linprog(cost, A_ub=np.vstack([columns, -columns]),
                  b_ub=np.concatenate([upper, -lower]), A_eq=rows, b_eq=np.ones(n),
                  bounds=bounds, method="highs")
    assert res.status == 0, res.message
    return float(res.fun)


@st.composite
def huge_upper_bounds(draw):
    """(N x K scores, lower, upper) with upper bounds far beyond N, in int64, uint64, float64."""
    n = draw(st.integers(1, 7))
    k = draw(st.integers(1, 4))
    scores = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal((n, k))
    lower = np.array(draw(st.lists(st.integers(0, n // k), min_size=k, max_size=k)))
    kind = draw(st.sampled_from(["int64", "uint64", "float64"]))
    huge = {"int64": st.integers(2**62, 2**63 - 1), "uint64": st.integers(2**63, 2**64 - 1),
            "float64": st.floats(1e19, 1e300)}[kind]
    upper = draw(st.lists(huge, min_size=k, max_size=k))
    return scores, lower, np.array(upper, dtype=kind)


@FUZZ
@given(huge_upper_bounds())
def test_upper_bounds_beyond_int64_mean_no_bound(problem):
    """Capacities were cast to int64 and summed there: huge upper bounds (a plain "no limit")
    wrapped to negative numbers and were refused as below their lower bounds or summing below
    N, or wrapped around into a sum that passed by chance."""
    scores, lower, upper = problem
    n, k = scores.shape
    before = upper.copy()
    result = sinklabel.solve_exact(scores, k, capacities=(lower, upper))
    np.testing.assert_array_equal(upper, before)
    counts = np.bincount(to_host(result.labels), minlength=k)
    assert np.all(counts >= lower) and counts.sum() == n
    expected = _highs_optimum(scores, lower.astype(float), np.full(k, float(n)))
    assert result.objective == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert result.certificate.optimal
    # Fixed sizes beyond int64 are named with their true sum, not a wrapped one.
    sizes = np.zeros(k, dtype=upper.dtype)
    sizes[0] = upper[0]
    with pytest.raises(ValueError, match=f"must sum to N={n}, got {int(upper[0])}"):
        sinklabel.solve_exact(scores, k, capacities=sizes)


def _forms_of_prices(prices: np.ndarray) -> list:
    """The same K prices (exact in bfloat16) in every form the docs' "array of shape (K,)"
    covers: lists, NumPy of several dtypes, torch tensors incl. bfloat16 and requires_grad
    (where torch is installed)."""
    forms = [prices.tolist(), prices.astype(np.float32), prices.astype(np.float16)]
    if not HAVE_TORCH:
        return forms
    import torch

    for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        forms.append(torch.tensor(prices, dtype=dtype))
    forms.append(torch.tensor(prices, dtype=torch.float32, requires_grad=True))
    return forms


@FUZZ
@given(st.integers(2, 8), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_prices_in_any_real_form_give_the_same_certificate(n, k, seed):
    """Prices went through a bare ``.numpy()``: a bfloat16 tensor died in torch's "Got
    unsupported ScalarType BFloat16"; complex prices lost their imaginary part silently and a
    string died in NumPy's float conversion."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((n, k))
    labels = rng.integers(0, k, n)
    caps = (np.zeros(k, dtype=int), np.full(k, n))
    prices = rng.integers(-8, 8, k) / 4.0  # exact in every float format
    # The oracle: the weak-duality bound written out in NumPy.
    dual = (scores + prices).max(axis=1).sum() * -1 + np.minimum(0.0, n * prices).sum()
    primal = -scores[np.arange(n), labels].sum()
    for form in _forms_of_prices(prices):
        cert = sinklabel.duality_gap(scores, labels, form, caps)
        assert cert.primal == pytest.approx(primal, abs=1e-12)
        assert cert.dual == pytest.approx(dual, abs=1e-12)
        exact = sinklabel.solve_exact(scores, k, capacities=caps, prices=form)
        assert exact.certificate.optimal
    for bad, error in [(prices + 1j, TypeError), (np.array(["a"] * k), TypeError),
                       (np.array([None] * k), TypeError), (np.ones(k, dtype=bool), TypeError),
                       (prices[:-1], ValueError), (np.full(k, np.nan), ValueError)]:
        with pytest.raises(error, match="prices"):
            sinklabel.duality_gap(scores, labels, bad, caps)
        with pytest.raises(error, match="prices"):
            sinklabel.solve_exact(scores, k, capacities=caps, prices=bad)
    if not HAVE_TORCH:
        return
    import torch

    with pytest.raises(ValueError, match="labels must be"):  # bfloat16 labels: not integers
        sinklabel.duality_gap(scores, torch.tensor(labels, dtype=torch.bfloat16), prices, caps)


@FUZZ
@given(st.integers(1, 12), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_labeler_takes_every_form_sinkhorn_takes(n, k, seed):
    """``sinkhorn`` takes nested lists (anything ``np.asarray`` takes), but the labeler read
    K from a ``shape`` attribute and called a 2-D list "not 2-D (N, K)"."""
    scores = np.random.default_rng(seed).standard_normal((n, k))
    shifted = scores + np.random.default_rng(seed + 1).standard_normal((n, k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labeler = sinklabel.SinkhornLabeler().fit(scores.tolist())
        first = sinklabel.sinkhorn(scores, k)
        np.testing.assert_array_equal(labeler.labels_, first.labels)
        labeler.partial_fit(shifted.tolist())
        second = sinklabel.sinkhorn(shifted, k, init=first.potentials)
    np.testing.assert_array_equal(labeler.labels_, second.labels)
    np.testing.assert_array_equal(labeler.potentials_, second.potentials)
    with pytest.raises(ValueError, match=r"2-D \(N, K\).*got shape \(3,\)"):
        sinklabel.SinkhornLabeler().fit([0.0, 1.0, 2.0])


_BAD_MATRICES = [
    np.zeros((0, 5)), np.zeros((4, 5), dtype=np.int64), np.zeros((4, 5), dtype=bool),
    np.zeros((4, 5), dtype=np.complex128), np.zeros((4, 5), dtype=object), np.zeros(5),
    np.zeros((4, 5, 1)),
]


@pytest.mark.parametrize("bad", _BAD_MATRICES, ids=lambda a: f"{a.dtype}{a.shape}")
def test_heads_name_bad_scores_as_sinkhorn_does(bad):
    """sinkhorn_heads checked only the column count up front: an empty matrix was named by the
    first head's view ("got shape (0, 2)"), a shape the caller never passed."""
    with pytest.raises((TypeError, ValueError)) as direct:
        sinklabel.sinkhorn(bad, 5)
    with pytest.raises(direct.type) as heads:
        sinklabel.sinkhorn_heads(bad, [2, 3])
    assert str(heads.value) == str(direct.value)


@FUZZ
@given(st.integers(4, 8), st.integers(1, 4), st.sampled_from([np.float32, np.float64]),
       st.sampled_from([0.0, 1e4, -1e6, 1e8, -1e12, 1e300]), st.integers(0, 2**32 - 1))
def test_certificates_do_not_depend_on_a_constant_added_to_the_prices(n, k, dtype, shift, seed):
    """Any constant added to optimal prices gives optimal prices (the sizes sum to N), but the
    pass added the prices to float32 scores as they were: at +1e8 the scores vanished in the
    sum, the bound moved by hundreds and a random labelling was certified optimal; at 1e300
    the two sums of the bound cancelled to NaN or to a false 0."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((n, k)).astype(dtype)
    optimal = sinklabel.solve_exact(scores, k)
    # Fixed sizes (those the optimum took): only then is a constant shift of prices a no-op.
    sizes = optimal.label_counts
    optimum = _highs_optimum(scores.astype(np.float64), sizes.astype(float), sizes.astype(float))
    other = rng.permutation(to_host(optimal.labels))  # the same sizes, most likely worse
    cost = -scores.astype(np.float64)[np.arange(n), other].sum()
    prices = optimal.prices + shift
    # The shifted prices are the optimal ones rounded at the shift's scale: the bound they
    # prove can be that much below the optimum, and no more.
    slack = 1e-6 + 4 * n * float(np.spacing(abs(shift)))
    for labels, primal in [(optimal.labels, optimal.objective), (other, cost)]:
        cert = sinklabel.duality_gap(scores, labels, prices, sizes)
        assert cert.feasible and np.isfinite(cert.dual)
        assert cert.dual <= optimum + 1e-9 * max(1.0, abs(optimum)) + cert.rounding
        assert cert.dual >= optimum - slack
        if primal > optimum + 1e-6:
            assert not cert.optimal
    # Prices whose bound overflows prove nothing, and say so: never NaN, never "optimal", and
    # no NumPy overflow warnings on the way (the overflow is the answer, not an accident).
    huge = np.where(np.arange(k) % 2 == 0, 1e308, -1e308)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            cert = sinklabel.duality_gap(scores, optimal.labels, huge,
                                         (optimal.lower, optimal.upper))
    except ValueError as error:  # float32 scores: the kernel names the overflow
        assert dtype == np.float32 and "overflows" in str(error)
    else:
        assert not np.isnan(cert.dual) and not np.isnan(cert.gap)
        assert k == 1 or not cert.optimal


@FUZZ
@given(st.integers(6, 10), st.integers(2, 4), st.integers(0, 2**32 - 1),
       st.sampled_from(["sinkhorn", "exact"]))
def test_check_names_a_result_solved_for_other_labels(n, k, seed, kind):
    """A result checked against scores with another number of labels was refused only as
    "labels must lie in [0, K')" (or, when its labels happened to fit, checked with prices
    of the wrong length), never as a result of K labels meeting K' columns."""
    scores = np.random.default_rng(seed).standard_normal((n, k + 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = (sinklabel.sinkhorn(scores, k + 1) if kind == "sinkhorn"
                  else sinklabel.solve_exact(scores, k + 1))
    with pytest.raises(ValueError, match=rf"{k + 1} labels.*{k} columns"):
        sinklabel.check(result, scores[:, :k])


@pytest.mark.parametrize("flag", ["yes", 1, np.array([True, False])])
def test_check_takes_exact_as_a_flag_only(flag):
    """``exact`` was read by truthiness: "yes" or 1 passed as a request to solve."""
    scores = np.random.default_rng(0).standard_normal((6, 3))
    with pytest.raises(TypeError, match="exact must be True or False"):
        sinklabel.check(np.arange(6) % 3, scores, exact=flag)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@FUZZ
@given(st.integers(2, 6), st.floats(1e-300, 1e300), st.floats(1e-300, 1e300),
       st.integers(0, 2**32 - 1))
def test_label_weights_are_used_or_refused_never_rounded_to_zero(backend, k, a, b, seed):
    """Positive weights whose ratio underflowed in the normalisation became shares of exactly
    0 (or subnormal): the solver aimed at log(0) and spent max_iter passes without moving
    (error 1.67 from [1e308, 1e-308, 1]), where another backend converged or also stalled."""
    small, big = min(a, b), max(a, b)
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((4 * k, k))
    weights = np.where(rng.random(k) < 0.5, big, small)
    weights[0], weights[-1] = big, small
    share = (weights / big) / (weights / big).sum()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = sinklabel.sinkhorn(to_backend(scores, backend), k, label_weights=weights,
                                        backend=backend)
        except ValueError as error:
            assert "label_weights" in str(error)
            assert small / big < 1e-300  # refused only where float64 cannot hold the share
            return
    assert np.all(result.label_weights > 0) and result.converged
    np.testing.assert_allclose(result.label_weights, share, rtol=1e-12, atol=0)
    plan = _plan(scores, result.potentials, result.lam)
    assert np.abs(plan.mean(axis=0) - result.label_weights).sum() <= result.error + 1e-9


# ---------------------------------------------------------------------------------------------
# Properties the fuzzing checked on every backend, input form and layout (no defect left)
# ---------------------------------------------------------------------------------------------


def _input_form(scores: np.ndarray, form: str):
    """The scores as one of the forms the docs promise; returns (input, host float64 copy of
    what the library sees)."""
    if form.startswith("torch"):
        import torch

        dtype = {"torch16": torch.float16, "torchbf16": torch.bfloat16,
                 "torch32grad": torch.float32, "torch64t": torch.float64}[form]
        tensor = torch.tensor(scores.T.copy(), dtype=dtype).T if form == "torch64t" else \
            torch.tensor(scores, dtype=dtype)
        if form == "torch32grad":
            tensor.requires_grad_(True)
        return tensor, tensor.detach().double().numpy()
    dtype = {"np16": np.float16, "np32F": np.float32, "np64ro": np.float64,
             "np32cols": np.float32}[form]
    array = scores.astype(dtype)
    if form == "np32F":
        array = np.asfortranarray(array)
    elif form == "np64ro":
        array.flags.writeable = False
    elif form == "np32cols":
        wide = np.zeros((array.shape[0], 2 * array.shape[1]), dtype=dtype)
        wide[:, ::2] = array
        array = wide[:, ::2]
    return array, array.astype(np.float64)


_FORMS = ["np16", "np32F", "np64ro", "np32cols"] + (
    ["torch16", "torchbf16", "torch32grad", "torch64t"] if HAVE_TORCH else [])


@FUZZ
@given(st.integers(1, 16), st.integers(1, 5), st.sampled_from(_FORMS),
       st.sampled_from([0.5, 25.0, 300.0]), st.booleans(), st.integers(0, 2**32 - 1))
def test_every_form_gives_honest_labels_and_leaves_the_input_alone(n, k, form, lam, uneven,
                                                                   seed):
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((n, k)) * rng.choice([0.1, 3.0])
    if k > 1:
        scores[rng.random((n, k)) < 0.2] = -np.inf
        scores[np.arange(n), rng.integers(0, k, n)] = 0.5  # a finite score in every row
    logp, seen = _input_form(scores, form)
    before = logp.clone() if hasattr(logp, "clone") else logp.copy()
    weights = rng.random(k) + 0.1 if uneven else None
    backend = "torch" if form.startswith("torch") else str(rng.choice(NUMPY_BACKENDS))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = sinklabel.sinkhorn(logp, k, lam=lam, label_weights=weights, max_iter=200,
                                        backend=backend)
        except ValueError as error:  # -inf closes a label, or a group, to its share
            if "no labelling" in str(error):  # no plan then meets the proportions exactly
                assert not plan_exists(np.isfinite(seen),
                                       np.ones(k) if weights is None else weights)
                return
            assert "no finite score in any row" in str(error)
            assert np.any(np.all(np.isinf(seen), axis=0))
            return
    if hasattr(logp, "clone"):
        import torch

        assert torch.equal(logp.detach(), before.detach()) and isinstance(result.labels,
                                                                          torch.Tensor)
    else:
        assert logp.tobytes() == before.tobytes() and isinstance(result.labels, np.ndarray)
    labels = to_host(result.labels)
    assert labels.dtype == np.int64 and labels.shape == (n,)
    assert np.all((labels >= 0) & (labels < k)) and np.all(np.isfinite(seen[np.arange(n),
                                                                             labels]))
    assert np.all(np.isfinite(result.potentials)) and np.all(np.isfinite(result.error_history))
    np.testing.assert_array_equal(np.bincount(labels, minlength=k), result.label_counts)
    # The marginal of the plan the potentials define, computed here in float64 from the
    # scores the library saw, meets the target as closely as the result says (rounding of
    # float32 computation aside).
    plan = _plan(seen, result.potentials, result.lam)
    assert np.all(np.isfinite(plan))
    error = np.abs(plan.mean(axis=0) - result.label_weights).sum()
    exact_dtype = form in ("np64ro", "torch64t")
    if any(issubclass(w.category, sinklabel.PrecisionWarning) for w in caught):
        # Only as exact as the warning says: a group of labels short of its share by less
        # than a point (no plan, but rounded sizes fit) drives the potentials past float32.
        assert not result.converged
        return
    assert error <= result.error + (1e-9 if exact_dtype else 2e-3)
    if result.converged:
        assert error <= 1e-3 + (1e-9 if exact_dtype else 2e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@FUZZ
@given(st.integers(2, 6), st.integers(0, 2**32 - 1), st.sampled_from([1.0, 10.0, 50.0]))
def test_backends_agree_on_potentials_and_labels(dtype, k, seed, lam):
    """Issue #3: potentials within 1e-4 (float32) / 1e-10 (float64) of NumPy's, labels equal
    except on rows whose top two labels tie under the potentials."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((8 * k, k)).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = {name: sinklabel.sinkhorn(to_backend(scores, name), k, lam=lam,
                                            backend=name, max_iter=200)
                   for name in CPU_BACKENDS}
    reference = results["numpy"]
    z = lam * scores.astype(np.float64) + reference.potentials
    top_two = -np.sort(-z, axis=1)[:, :2] if k > 1 else np.zeros((len(z), 2))
    tied = np.abs(top_two[:, 0] - top_two[:, 1]) <= 1e-3 * np.maximum(1.0, np.abs(z).max(1))
    tolerance = 1e-4 if dtype == np.float32 else 1e-10
    for name, result in results.items():
        scale = max(1.0, float(np.abs(reference.potentials).max()))
        assert np.abs(result.potentials - reference.potentials).max() <= tolerance * scale, name
        differ = to_host(result.labels) != to_host(reference.labels)
        assert not np.any(differ & ~tied), name


@FUZZ
@given(st.integers(1, 4), st.integers(0, 3), st.sampled_from(_FORMS), st.booleans(),
       st.integers(0, 2**32 - 1))
def test_exact_balance_meets_the_sizes_at_the_highs_optimum(k, extra, form, uneven, seed):
    n = 2 * k + extra
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((n, k))
    logp, seen = _input_form(scores, form)
    weights = rng.integers(1, 4, k) if uneven else None  # integer weights, too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sinklabel.sinkhorn(logp, k, label_weights=weights, balance="exact",
                                    max_iter=200)
    counts = np.bincount(to_host(result.labels), minlength=k)
    target = n * result.label_weights
    lower, upper = np.floor(target + 1e-9), np.ceil(target - 1e-9)
    assert np.all(counts >= lower) and np.all(counts <= upper) and counts.sum() == n
    optimum = _highs_optimum(seen, lower, upper)
    cost = -seen[np.arange(n), to_host(result.labels)].sum()
    assert cost <= optimum + 1e-7 * max(1.0, abs(optimum))
    assert result.certificate.optimal
    report = sinklabel.check(result, logp)
    assert report.optimal and report.optimum == pytest.approx(optimum, abs=1e-6)


def _bad_inputs():
    """(name, scores, K, options, error type, words the message must hold)."""
    good = np.random.default_rng(7).standard_normal((6, 3))
    nan, pos_inf, row_inf = good.copy(), good.copy(), good.copy()
    nan[4, 1], pos_inf[2, 0], row_inf[5] = np.nan, np.inf, -np.inf
    return [
        ("nan", nan, 3, {}, ValueError, "NaN (row 4)"),
        ("+inf", pos_inf, 3, {}, ValueError, "+inf"),
        ("row of -inf", row_inf, 3, {}, ValueError, "row 5"),
        ("1-D", good[0], 3, {}, ValueError, "2-D"),
        ("3-D", good[None], 3, {}, ValueError, "2-D"),
        ("K mismatch", good, 4, {}, ValueError, "K=4"),
        ("empty", good[:0], 3, {}, ValueError, "non-empty"),
        ("int", good.astype(np.int64), 3, {}, TypeError, "floating-point"),
        ("bool", good > 0, 3, {}, TypeError, "floating-point"),
        ("complex", good.astype(complex), 3, {}, TypeError, "floating-point"),
        ("object", good.astype(object), 3, {}, TypeError, "floating-point"),
        ("negative weights", good, 3, {"label_weights": [1, -1, 1]}, ValueError,
         "label_weights"),
        ("init NaN", good, 3, {"init": [0, np.nan, 0]}, ValueError, "init"),
    ]


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda case: case[0])
@pytest.mark.parametrize("entry", [*backend_params("numpy", "numba", "torch"),
                                   "labeler", "heads", "predict"])
def test_bad_input_is_named_before_any_solving(case, entry, monkeypatch):
    name, scores, k, options, error, words = case
    # Documented exception: the heads' shared reads check each block as the first pass reads it.
    if not (entry == "heads" and name in ("nan", "+inf", "row of -inf")):
        monkeypatch.setattr(sinklabel.solver, "solve", lambda *a, **kw: pytest.fail("solved"))
    if entry == "heads" and name == "K mismatch":
        words = "must be sum(Ks)"
    if entry == "predict" and name == "K mismatch":
        pytest.skip("predict takes K from the potentials")
    logp = scores
    if entry == "torch":
        import torch

        if scores.dtype in (np.complex128, object):
            pytest.skip("torch has no such tensor to pass")
        logp = torch.from_numpy(scores)
    with pytest.raises(error, match=re.escape(words)):
        if entry in ("numpy", "numba", "torch"):
            sinklabel.sinkhorn(logp, k, backend=entry, **options)
        elif entry == "labeler":
            sinklabel.SinkhornLabeler(n_labels=k, **options).fit(logp)
        elif entry == "heads":
            if options:
                pytest.skip("per-head options are checked by sinkhorn, tested above")
            sinklabel.sinkhorn_heads(logp, [1, k - 1] if k == 3 else [k])
        else:
            if options:
                pytest.skip("predict takes no options")
            fitted = sinklabel.SinkhornResult(
                labels=np.zeros(1, dtype=np.int64), potentials=np.zeros(3),
                label_counts=np.ones(3, dtype=np.int64), n_iter=1, converged=True, error=0.0,
                error_history=np.zeros(1), lam=25.0, label_weights=np.full(3, 1 / 3),
                backend="numpy")
            fitted.predict(logp)


@pytest.mark.parametrize("case", _bad_inputs()[:11], ids=lambda case: case[0])
def test_bad_scores_are_named_before_the_exact_solve(case, monkeypatch):
    _, scores, k, _, error, words = case
    monkeypatch.setattr(sinklabel.exact, "_solve_exact", lambda *a, **kw: pytest.fail("solved"))
    with pytest.raises(error, match=re.escape(words)):
        sinklabel.solve_exact(scores, k)


_NUMBERS = st.one_of(
    st.integers(-2, 10**400), st.fractions(max_denominator=50), st.floats(allow_nan=True),
    st.sampled_from([np.float16(3.0), np.float32(0.5), np.int64(4), np.uint64(7), True]),
)


@FUZZ
@given(st.sampled_from(["lam", "tol", "max_iter", "chunk_size"]), _NUMBERS)
def test_numeric_options_of_any_number_type_work_or_are_named(option, value):
    """``lam=Fraction(1, 3)``, an int beyond int64 (``max_iter=10**30``, ``lam=10**400``)
    reached ``np.isfinite``, which raised its own "ufunc 'isfinite' not supported" TypeError."""
    scores = np.random.default_rng(3).standard_normal((6, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = sinklabel.sinkhorn(scores, 3, backend="numpy", **{option: value})
        except (TypeError, ValueError) as error:
            assert str(error).startswith(f"{option} must be"), error
            return
        expected = sinklabel.sinkhorn(scores, 3, backend="numpy",
                                      **{option: int(value) if option in ("max_iter",
                                         "chunk_size") else float(value)})
    np.testing.assert_array_equal(result.potentials, expected.potentials)


@pytest.mark.parametrize("backend", [["numpy"], {"numpy": 1}, None, 3])
def test_a_backend_that_is_not_a_name_is_named(backend):
    """An unhashable backend died in the registry's lookup: "unhashable type: 'list'"."""
    with pytest.raises((TypeError, ValueError), match="backend must be 'auto' or one of"):
        sinklabel.sinkhorn(np.zeros((4, 2)), 2, backend=backend)


@pytest.mark.parametrize("limit", ["1e400GB", "1e309", "9" * 400 + "KB"],
                         ids=["1e400GB", "1e309", "400 digits KB"])
def test_a_memory_limit_beyond_float_range_is_named(limit):
    """"1e400GB" parsed to float infinity and died in int(): "cannot convert float infinity
    to integer" (an OverflowError)."""
    with pytest.raises(ValueError, match="memory_limit"):
        sinklabel.sinkhorn(np.zeros((4, 2)), 2, memory_limit=limit)
