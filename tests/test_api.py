"""The public boundary: validation errors, input safety, output types, the estimator."""

from __future__ import annotations

import sys
import threading
import warnings

import numpy as np
import pytest
import scipy.special
from conftest import CPU_BACKENDS, NUMPY_BACKENDS, to_backend, to_host

import sinklabel
from sinklabel import ConvergenceWarning, SinkhornLabeler, assign_labels, sinkhorn


@pytest.fixture
def logp(rng) -> np.ndarray:
    logits = 3.0 * rng.standard_normal((240, 6)).astype(np.float32)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def test_assign_labels_returns_int64_labels_in_the_callers_library(backend, logp):
    labels = assign_labels(to_backend(logp, backend), 6, backend=backend)
    assert type(labels) is type(to_backend(logp, backend))
    host = to_host(labels)
    assert host.shape == (240,) and host.dtype == np.int64
    assert np.all(np.abs(np.bincount(host, minlength=6) - 40) <= 4)


def test_caller_array_is_never_modified(backend, logp):
    original = logp.copy()
    sinkhorn(to_backend(logp, backend), 6, backend=backend, chunk_size=7)
    np.testing.assert_array_equal(logp, original)


@pytest.mark.parametrize(
    "view",
    [
        lambda a: np.asfortranarray(a),
        lambda a: np.repeat(a, 2, axis=0)[::2],
        lambda a: np.concatenate([a, a], axis=1)[:, ::2] * 0 + a,
        lambda a: np.concatenate([a, a], axis=1)[:, :6],
    ],
    ids=["fortran", "row-strided", "copy", "column-slice"],
)
def test_layouts_give_the_same_answer(logp, view):
    expected = sinkhorn(logp, 6, backend="numpy")
    got = sinkhorn(view(logp), 6, backend="numpy")
    np.testing.assert_allclose(got.potentials, expected.potentials, atol=1e-5)
    np.testing.assert_array_equal(got.labels, expected.labels)


def test_read_only_arrays_work(logp):
    frozen = logp.copy()
    frozen.setflags(write=False)
    np.testing.assert_array_equal(assign_labels(frozen, 6), assign_labels(logp, 6))


def test_float16_and_float64_inputs(logp):
    f32 = sinkhorn(logp, 6, backend="numpy")
    f16 = sinkhorn(logp.astype(np.float16), 6, backend="numpy")
    f64 = sinkhorn(logp.astype(np.float64), 6, backend="numpy")
    np.testing.assert_allclose(f64.potentials, f32.potentials, atol=1e-3)
    assert f16.converged and np.all(np.isfinite(f16.potentials))


def test_nested_lists_are_accepted():
    labels = assign_labels([[0.0, -5.0], [-5.0, 0.0], [0.0, -1.0], [-1.0, 0.0]], 2)
    np.testing.assert_array_equal(labels, [0, 1, 0, 1])


BAD_SCORES = [
    (np.zeros(5), 5, ValueError, "2-D"),
    (np.zeros((2, 3, 4)), 3, ValueError, "2-D"),
    (np.zeros((0, 3)), 3, ValueError, "non-empty"),
    (np.zeros((4, 0)), 0, ValueError, "non-empty"),
    (np.zeros((4, 3), dtype=np.int64), 3, TypeError, "floating-point"),
    (np.zeros((4, 3), dtype=bool), 3, TypeError, "floating-point"),
    (np.zeros((4, 3), dtype=np.complex128), 3, TypeError, "floating-point"),
    (np.zeros((4, 3)), 2, ValueError, "K must be logp.shape"),
    (np.zeros((4, 3)), 4, ValueError, "transposed"),
    (np.zeros((4, 3)), 0, ValueError, "K must be finite and > 0"),
    (np.zeros((4, 3)), 2.5, TypeError, "K must be an integer"),
    ([[0.0, 1.0], [0.0]], 2, ValueError, "logp could not be read as one array: "),
    ({"a": 1.0}, 2, ValueError, r"logp must be 2-D \(N, K\), got shape \(\) \(a dict\)"),
]


def test_a_list_of_tensors_that_require_grad_is_named():
    """NumPy cannot read it as one array; the error was torch's, naming no argument."""
    torch = pytest.importorskip("torch")
    rows = [torch.zeros(3, requires_grad=True)] * 4
    with pytest.raises(ValueError, match="logp could not be read as one array: .*requires grad"):
        sinkhorn(rows, 3)


def test_a_closed_dataset_is_named():
    """h5py raises a RuntimeError from deep inside for the shape of a closed dataset."""
    h5py = pytest.importorskip("h5py")
    with h5py.File("closed.h5", "w", driver="core", backing_store=False) as file:
        dataset = file.create_dataset("scores", data=np.zeros((4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="Dataset could not say its shape .* still open"):
        sinkhorn(dataset, 3)


@pytest.mark.parametrize("scores, k, error, match", BAD_SCORES)
def test_bad_scores_are_named(scores, k, error, match):
    with pytest.raises(error, match=match):
        sinkhorn(scores, k)


@pytest.mark.parametrize(
    "value, match",
    [(np.nan, "NaN"), (np.inf, r"\+inf"), (3e37, "overflows")],
)
def test_non_finite_scores_are_named_with_their_row(value, match):
    scores = np.zeros((5, 3), dtype=np.float32)
    scores[3, 1] = value
    with pytest.raises(ValueError, match=f"{match}.*row 3"):
        sinkhorn(scores, 3)


def test_row_without_finite_score_is_named():
    scores = np.zeros((5, 3))
    scores[2] = -np.inf
    with pytest.raises(ValueError, match="row 2 .*no finite score"):
        sinkhorn(scores, 3)


def test_label_without_finite_score_is_named():
    scores = np.zeros((5, 3))
    scores[:, 1] = -np.inf
    with pytest.raises(ValueError, match=r"labels \[1\] have no finite score"):
        sinkhorn(scores, 3)


@pytest.mark.parametrize("backend", NUMPY_BACKENDS)
def test_a_label_whose_finite_scores_overflow_times_lam_is_not_called_without_scores(backend):
    """float32 scores of -3e38 are finite, but 25 times each is -inf: the solve said "labels
    [1] have no finite score in any row ... drop those labels", advice that did not fit. A
    label with no finite score at all beside it is still named as such."""
    scores = np.zeros((30, 4), np.float32)
    scores[:, 1] = -3e38
    with pytest.raises(ValueError, match=r"labels \[1\] have finite scores, but lam=25 times "
                       r"every one of them overflows to -inf.*lower lam"):
        sinkhorn(scores, 4, backend=backend)
    scores[:, 3] = -np.inf
    with pytest.raises(ValueError, match=r"no finite score in any row \(labels \[3\]\) or "
                       r"finite scores, .* \(labels \[1\]\)"):
        sinkhorn(scores, 4, backend=backend)
    with pytest.warns(sinklabel.ConvergenceWarning, match=r"labels \[1, 3\] have no finite "
                      r"score in any row \(labels \[3\]\) or finite scores"):
        sinkhorn(scores, 4, label_weights=[1, 0.01, 1, 0.01], balance="exact")


def test_exact_balance_leaves_empty_a_label_without_finite_score_whose_share_rounds_to_none():
    """docs/method.md: single labels under balance="exact" are held to their share rounded
    down. Label 2's share is 0.49 points, so exact sizes may leave it empty, and the exact
    step balances the rest; the solve raised "labels [2] have no finite score" instead."""
    scores = np.random.default_rng(0).standard_normal((10, 3))
    scores[:, 2] = -np.inf
    weights = [1.0, 1.0, 0.05]
    with pytest.warns(sinklabel.ConvergenceWarning, match=r"labels \[2\] have no finite"):
        result = sinkhorn(scores, 3, label_weights=weights, balance="exact")
    exact = sinklabel.solve_exact(scores, 3, capacities=([4, 4, 0], [6, 6, 1]))
    assert result.label_counts.tolist() == [5, 5, 0]
    assert result.certificate.optimal and result.certificate.primal == exact.objective
    with pytest.raises(ValueError, match=r"labels \[2\] have no finite score"):
        sinkhorn(scores, 3, label_weights=weights)  # no plan has these proportions
    with pytest.raises(ValueError, match="label 2 should take 3.33333 points"):
        sinkhorn(scores, 3, balance="exact")  # a share of 3.3 points: 3 at least


def test_only_the_labels_without_finite_score_are_named():
    """Two labels start without mass: label 1 has no finite score (named), label 2 only scores
    far below the rest (its mass underflows, but it can be revived: not named)."""
    scores = np.zeros((6, 4))
    scores[:, 1] = -np.inf
    scores[:, 2] = -1e4
    with pytest.raises(ValueError, match=r"labels \[1\] have no finite score"):
        sinkhorn(scores, 4)


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"lam": 0.0}, ValueError, "lam"),
        ({"lam": -1.0}, ValueError, "lam"),
        ({"lam": np.inf}, ValueError, "lam"),
        ({"lam": "25"}, TypeError, "lam"),
        ({"tol": 0.0}, ValueError, "tol"),
        ({"max_iter": 0}, ValueError, "max_iter"),
        ({"max_iter": 1.5}, TypeError, "max_iter"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"label_weights": [1.0, 1.0]}, ValueError, r"label_weights must have shape \(3,\)"),
        ({"label_weights": [1.0, 0.0, 1.0]}, ValueError,
         "label_weights must be finite and > 0 for every label, got 0 for label 1: to give"),
        ({"label_weights": [1.0, np.nan, 1.0]}, ValueError, "label_weights"),
        ({"init": [0.0, 0.0]}, ValueError, r"init must have shape \(3,\)"),
        ({"label_weights": [[1.0], [1.0, 2.0]]}, ValueError,
         "label_weights could not be read as one array: "),
        ({"init": [0.0, np.inf, 0.0]}, ValueError, "init must hold finite"),
        ({"backend": "fortran"}, ValueError, "backend must be"),
        ({"label_weights": [1.0, 1j, 1.0]}, TypeError, "label_weights must hold real numbers"),
        ({"label_weights": ["a", "b", "c"]}, TypeError, "label_weights must hold real numbers"),
        ({"init": np.zeros(3, dtype=complex)}, TypeError, "init must hold real numbers"),
        ({"progress": "yes"}, TypeError, "progress must be True or False"),
        ({"distributed": "no"}, TypeError, "distributed must be True or False"),
    ],
)
def test_bad_options_are_named(options, error, match):
    with pytest.raises(error, match=match):
        sinkhorn(np.zeros((6, 3)), 3, **options)


@pytest.mark.parametrize("balance", [None, "exact"])
def test_identical_rows_never_empty_labels_silently(backend, balance):
    """Constant rows (a zero-initialised head) tie in every label: the argmax puts them all
    in one label. That must warn, and balance="exact" must split them evenly."""
    scores = to_backend(np.zeros((100, 5), dtype=np.float32), backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = sinkhorn(scores, 5, backend=backend, balance=balance)
    empty_warnings = [w for w in caught if "received no points" in str(w.message)]
    if balance == "exact":
        np.testing.assert_array_equal(result.label_counts, [20] * 5)
        assert not empty_warnings
    else:
        assert (result.label_counts == 0).any()
        assert len(empty_warnings) == 1 and "balance='exact'" in str(empty_warnings[0].message)


def test_exact_balance_with_fewer_points_than_labels_is_refused_before_solving(rng, monkeypatch):
    """floor(N / K) = 0 points per label would leave labels empty: refused, as solve_exact's
    default sizes are, and before the Sinkhorn solve runs."""
    monkeypatch.setattr(sinklabel.api, "_sinkhorn", lambda *a, **k: pytest.fail("solved"))
    with pytest.raises(ValueError, match="N=3 < K=5"):
        sinkhorn(rng.standard_normal((3, 5)), 5, balance="exact")
    monkeypatch.undo()
    labels = sinklabel.assign_labels(rng.standard_normal((5, 5)), 5, balance="exact")
    assert sorted(labels.tolist()) == [0, 1, 2, 3, 4]  # N = K: one point each


def test_labels_with_less_than_one_point_of_target_may_be_empty_quietly(rng):
    """N < K: some labels must stay empty; that is no reason to warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = sinkhorn(rng.standard_normal((3, 5)), 5)
    assert result.label_counts.sum() == 3


def test_labels_with_a_target_of_exactly_one_point_that_stay_empty_warn():
    """N = K identical rows: each label should take one, the argmax gives all to one."""
    with pytest.warns(UserWarning, match=r"3 labels received no points .* at least 1"):
        result = sinkhorn(np.zeros((4, 4)), 4)
    assert sorted(result.label_counts.tolist()) == [0, 0, 0, 4]


def test_the_empty_label_warning_names_the_smallest_target_and_up_to_ten_labels():
    """Weights 1..11 over identical rows: all go to label 10, the heaviest; labels 0-9 stay
    empty, the lightest meant for 110 / 66 points."""
    with pytest.warns(UserWarning) as record:
        sinkhorn(np.zeros((110, 11)), 11, label_weights=np.arange(1.0, 12.0))
    assert str(record[0].message).startswith(
        "10 labels received no points although each should take at least 1.67 "
        "(labels [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]): ")
    with pytest.warns(UserWarning, match=r"\(labels \[0, 1, .*, 9\], \.\.\.\)"):
        sinkhorn(np.zeros((120, 12)), 12, label_weights=np.arange(1.0, 13.0))


def test_unnormalised_label_weights_are_normalised(logp):
    a = sinkhorn(logp, 6, label_weights=np.arange(1.0, 7.0))
    b = sinkhorn(logp, 6, label_weights=np.arange(1.0, 7.0) / 21.0)
    np.testing.assert_allclose(a.potentials, b.potentials, atol=1e-9)


def test_label_weights_whose_sum_overflows_are_normalised(logp):
    huge = sinkhorn(logp, 6, label_weights=np.full(6, 1e308))
    uniform = sinkhorn(logp, 6)
    np.testing.assert_allclose(huge.label_weights, 1.0 / 6)
    np.testing.assert_allclose(huge.potentials, uniform.potentials, atol=1e-9)


def test_half_precision_tensors_as_weights_and_init(logp):
    torch = pytest.importorskip("torch")
    expected = sinkhorn(logp, 6, label_weights=np.arange(1.0, 7.0), init=np.full(6, 0.5))
    for dtype in (torch.float16, torch.bfloat16):
        got = sinkhorn(logp, 6, label_weights=torch.arange(1.0, 7.0, dtype=dtype),
                       init=torch.full((6,), 0.5, dtype=dtype))
        np.testing.assert_allclose(got.potentials, expected.potentials, atol=1e-9)


def test_soft_assignments_rows_sum_to_one(logp):
    result = sinkhorn(logp, 6)
    soft = result.soft_assignments(logp)
    assert soft.shape == logp.shape
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(soft.argmax(axis=1), result.labels)


@pytest.mark.parametrize("chunk_size", [1, 6, 7, 200, None])
def test_soft_assignments_in_any_chunks_are_the_plans_rows(logp, chunk_size):
    """softmax(lam * logp + potentials) row by row, whatever the chunks (6 = K rows too)."""
    result = sinkhorn(logp, 6)
    expected = scipy.special.softmax(result.lam * logp.astype(np.float64) + result.potentials,
                                     axis=1)
    soft = result.soft_assignments(logp, chunk_size=chunk_size)
    np.testing.assert_allclose(soft, expected, rtol=1e-4, atol=1e-7)


def test_estimator_fit_predict_and_partial_fit(logp, rng):
    labeler = SinkhornLabeler(lam=25.0)
    labels = labeler.fit_predict(logp)
    np.testing.assert_array_equal(labels, labeler.labels_)
    np.testing.assert_array_equal(labeler.predict(logp), labels)
    cold_iterations = labeler.n_iter_
    drifted = logp + 0.01 * rng.standard_normal(logp.shape).astype(np.float32)
    labeler.partial_fit(drifted)
    assert labeler.converged_ and labeler.n_iter_ < cold_iterations
    assert labeler.potentials_.shape == (6,)


def test_estimator_params_and_unfitted_error(logp):
    labeler = SinkhornLabeler(4, lam=10.0)
    assert labeler.get_params()["lam"] == 10.0 and labeler.get_params()["n_labels"] == 4
    assert labeler.set_params(lam=5.0).lam == 5.0
    with pytest.raises(ValueError, match="unknown parameter"):
        labeler.set_params(gamma=1.0)
    with pytest.raises(sinklabel.NotFittedError, match="not fitted") as unfitted:
        labeler.predict(logp)
    # caught as scikit-learn's NotFittedError is, by either of its bases
    assert isinstance(unfitted.value, ValueError) and isinstance(unfitted.value, AttributeError)
    with pytest.raises(sinklabel.NotFittedError, match="not fitted"):
        labeler.soft_assignments(logp)
    with pytest.raises(ValueError, match="K=4"):
        labeler.fit(logp)


def test_partial_fit_with_another_number_of_labels_says_so(logp, rng):
    labeler = SinkhornLabeler().fit(logp)
    with pytest.raises(ValueError, match="6 labels.*logp has 4.*call fit"):
        labeler.partial_fit(rng.standard_normal((30, 4)))
    labeler.fit(rng.standard_normal((30, 4)))  # fit starts over with the new K
    assert labeler.potentials_.shape == (4,)


def test_estimator_repr_shows_the_parameters_that_differ_from_the_defaults():
    assert repr(SinkhornLabeler()) == "SinkhornLabeler()"
    assert repr(SinkhornLabeler(10, lam=5.0, backend="numpy")) == (
        "SinkhornLabeler(n_labels=10, lam=5.0, backend='numpy')"
    )


def test_estimator_is_cloneable_by_scikit_learn():
    sklearn_base = pytest.importorskip("sklearn.base")
    labeler = SinkhornLabeler(6, lam=3.0, tol=1e-4)
    clone = sklearn_base.clone(labeler)
    assert clone.get_params() == labeler.get_params() and clone is not labeler


@pytest.mark.parametrize("option", [{"balance": "exact"}, {"cache": True}, {"lamda": 1.0}])
def test_heads_name_the_options_they_do_not_take(logp, option):
    with pytest.raises(TypeError, match=f"sinkhorn_heads.*{next(iter(option))}"):
        sinklabel.sinkhorn_heads(logp, [2, 4], **option)


@pytest.mark.parametrize("ks, error, message", [
    ([0, 6], ValueError, "every entry of Ks must be a positive int"),
    ([-1, 7], ValueError, "every entry of Ks must be a positive int"),
    ([2.0, 4.0], ValueError, "every entry of Ks must be a positive int"),
    ([True, 5], ValueError, "every entry of Ks must be a positive int"),
    ([2, 3], ValueError, r"sum to 5, but logp has shape \(\d+, 6\)"),
    ([], TypeError, "non-empty sequence"),
    ("24", TypeError, "non-empty sequence"),
])
def test_heads_name_label_counts_they_cannot_split_the_columns_by(logp, ks, error, message):
    with pytest.raises(error, match=message):
        sinklabel.sinkhorn_heads(logp, ks)


def test_heads_take_numpy_label_counts(logp):
    expected = sinklabel.sinkhorn_heads(logp, [2, 4])
    for ks in ([np.int64(2), np.int64(4)], np.array([2, 4])):
        got = sinklabel.sinkhorn_heads(logp, ks)
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a.labels, b.labels)


def test_heads_warnings_name_the_caller_and_the_head(logp):
    """A head solves in its own thread, where a warning named threading.py's line; the
    caller's thread now shows each head's warnings, naming this file and the head."""
    with pytest.warns(ConvergenceWarning) as caught:
        sinklabel.sinkhorn_heads(logp, [2, 4], tol=1e-14, max_iter=2)
    assert sorted(str(w.message)[:7] for w in caught) == ["head 0:", "head 1:"]
    assert {w.filename for w in caught} == {__file__}


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are Python 3.11+")
def test_a_heads_error_names_its_head_and_columns(logp):
    """A head's error counts labels from 0 within the head: a note says which head and
    which columns of logp those are."""
    scores = np.array(logp, dtype=np.float64)
    scores[:, 3] = -np.inf  # head 1's label 1
    with pytest.raises(ValueError, match=r"labels \[1\]") as error:
        sinklabel.sinkhorn_heads(scores, [2, 4])
    assert "(in head 1: its labels are columns 2 to 5 of logp" in error.value.__notes__[0]


def test_import_touches_no_optional_library():
    import subprocess
    import sys

    code = (
        "import sys, sinklabel; "
        "print(sorted(m for m in ('torch', 'cupy', 'numba', 'triton', 'tqdm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert "sinkhorn" in sinklabel.__all__


def test_result_state_is_read_only_and_the_callers_arrays_stay_writable():
    """A result is immutable: its potentials (which ``predict`` uses), counts, weights and
    history cannot be changed in place; the caller's weights and init stay writable, and the
    labels are the caller's to edit."""
    rng = np.random.default_rng(3)
    logp = np.log(rng.dirichlet(np.ones(4), size=200))
    weights, init = np.array([0.1, 0.2, 0.3, 0.4]), np.zeros(4)
    result = sinklabel.sinkhorn(logp, 4, label_weights=weights, init=init)
    for name in ("potentials", "label_counts", "label_weights", "error_history"):
        with pytest.raises(ValueError, match="read-only"):
            getattr(result, name)[0] = 1
    assert weights.flags.writeable and init.flags.writeable
    result.labels[0] = 3
    labeler = sinklabel.SinkhornLabeler(4).fit(logp)
    with pytest.raises(ValueError, match="read-only"):
        labeler.potentials_[0] = 5.0
    labeler.partial_fit(logp)  # warm-starts from the read-only potentials


def test_exact_balance_keeps_both_sizes_a_near_integer_share_allows():
    """Label shares N * w of 0.99999 and 99998.00002 (N = 1e5) allow sizes 0-1 and
    99998-99999: the exact optimum within them (solve_exact's) is returned, not that of the
    narrower sizes a loose integer test made of them."""
    n = 100_000
    logp = np.log(np.random.default_rng(0).dirichlet(np.ones(3), size=n))
    logp[:, 2] += 50
    weights = np.array([1.0, 1.0, 99_999.0])
    result = sinkhorn(logp, 3, label_weights=weights, balance="exact")
    exact = sinklabel.solve_exact(logp, 3, capacities=([0, 0, 99998], [1, 1, 99999]))
    np.testing.assert_array_equal(result.label_counts, exact.label_counts)
    np.testing.assert_allclose(result.certificate.primal, exact.objective, rtol=1e-12)


def test_predict_keeps_the_labelers_memory_limit():
    """A labeler's memory_limit bounds its predict and soft_assignments as it bounds its
    solve: a function source is asked for blocks of the same size, not the backend's default
    (83,886 rows of 200 labels, 67 MB, where the solve asked for 963)."""
    from sinklabel.sources import CallableSource

    scores = np.log(np.random.default_rng(1).dirichlet(np.ones(200), size=20_000))
    scores = scores.astype(np.float32)
    sizes: list[int] = []

    def rows(start: int, stop: int) -> np.ndarray:
        sizes.append(stop - start)
        return scores[start:stop]

    source = CallableSource(rows, scores.shape, "float32")
    labeler = SinkhornLabeler(200, memory_limit="4MB").fit(source)
    solve_block = max(sizes)
    for method in (labeler.predict, labeler.soft_assignments):
        sizes.clear()
        method(source)
        assert max(sizes) == solve_block < scores.shape[0]
    np.testing.assert_array_equal(labeler.predict(source), labeler.predict(scores))


@pytest.mark.parametrize("backend", [name for name in CPU_BACKENDS if name != "torch"])
def test_soft_assignments_within_memory_limit_hold_the_result_once(backend):
    """The chunks' soft assignments were kept in a list and then joined: the N x K result
    was held twice, 8 MB over a 1 MB budget here. Oracle: tracemalloc's peak (it sees NumPy's
    allocations, not torch's), and a float64 softmax computed here."""
    import tracemalloc

    scores = np.log(np.random.default_rng(2).dirichlet(np.ones(100), size=20_000))
    scores = scores.astype(np.float32)
    result = sinkhorn(scores, 100, backend=backend)
    limit = 1 << 20
    result.soft_assignments(scores[:1000], memory_limit=limit)  # compile outside the count
    tracemalloc.start()
    try:
        soft = result.soft_assignments(scores, memory_limit=limit)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= soft.nbytes + limit
    z = result.lam * scores.astype(np.float64) + result.potentials
    want = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(soft, want / want.sum(axis=1, keepdims=True), atol=2e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_lam_beyond_the_compute_dtype_is_refused_by_name(dtype):
    """lam = 1e39 became inf in float32, and inf times a score of 0 NaN: the error blamed
    the scores ("logp contains NaN"). float64 scores compute in float64 and take it."""
    scores = np.log(np.random.default_rng(5).dirichlet(np.ones(4), size=40))
    scores[0, 0] = 0.0
    with pytest.raises(ValueError, match=r"lam=1e\+39 is beyond the largest float32"):
        sinkhorn(scores.astype(dtype), 4, lam=1e39)
    with warnings.catch_warnings():  # five passes at this lam: not converged, imprecise
        warnings.simplefilter("ignore")
        result = sinkhorn(scores, 4, lam=1e39, max_iter=5)
    assert np.all(np.isfinite(result.potentials))


def test_lam_whose_base_2_scale_overflows_is_refused_too():
    """The CUDA kernels scale by lam * log2(e) in the compute dtype: lam = 3e38 passed the
    check (below float32's 3.4e38), and the GPU sweep turned a score of 0 into NaN (the
    NumPy kernel's stayed finite)."""
    scores = np.log(np.random.default_rng(5).dirichlet(np.ones(4), size=40)).astype(np.float32)
    with pytest.raises(ValueError, match=r"lam=3e\+38 is beyond the largest float32"):
        sinkhorn(scores, 4, lam=3e38)
    assert 3e38 * np.log2(np.e) > np.finfo(np.float32).max  # why: inf in float32


def test_labeler_gives_exactly_balanced_labels_across_partial_fits():
    """balance="exact" reaches sinkhorn from the labeler (the paper's equal partition in a
    training loop): every fit's labels have sizes floor/ceil of N/K and are optimal, oracle
    linear_sum_assignment on label columns repeated N/K times."""
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(11)
    labeler = SinkhornLabeler(5, balance="exact")
    for _ in range(3):
        logp = np.log(rng.dirichlet(np.full(5, 0.3), size=100))
        labels = labeler.partial_fit(logp).labels_
        np.testing.assert_array_equal(np.bincount(labels, minlength=5), np.full(5, 20))
        _, columns = linear_sum_assignment(-np.repeat(logp, 20, axis=1))
        best = logp[np.arange(100), columns // 20].sum()
        assert logp[np.arange(100), labels].sum() == pytest.approx(best, rel=1e-12)
        assert labeler.result_.certificate.optimal
    assert labeler.get_params()["balance"] == "exact"


def test_solves_in_several_threads_at_once_give_the_serial_answers():
    """Two threads of each kind of solve at once (every CPU backend, the cache, the exact
    solver, balanced labels, heads) must give bit for bit what the same solve gives alone:
    they share the Numba kernels' thread pool and the exact solver's parallel loops."""
    from sinklabel.datasets import make_scores

    peaked = make_scores(3000, 20, regime="peaked", seed=1).scores
    flat = make_scores(3000, 20, regime="flat", seed=2).scores
    jobs = {f"sinkhorn {b}": lambda b=b: sinkhorn(to_backend(flat, b), 20, backend=b).potentials
            for b in CPU_BACKENDS}
    jobs["heads"] = lambda: np.concatenate(
        [r.potentials for r in sinklabel.sinkhorn_heads(np.hstack([peaked, flat]), [20, 20])])
    jobs["exact"] = lambda: sinklabel.solve_exact(peaked, 20).prices
    jobs["balanced"] = lambda: assign_labels(flat, 20, balance="exact")
    if "numba" in CPU_BACKENDS:
        jobs["cache"] = lambda: sinkhorn(peaked, 20, backend="numba", cache=True).potentials
    alone = {name: to_host(job()) for name, job in jobs.items()}
    together: dict[str, list[np.ndarray]] = {name: [] for name in jobs}

    def run(name: str) -> None:
        together[name].append(to_host(jobs[name]()))

    threads = [threading.Thread(target=run, args=(name,)) for name in jobs for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, answers in together.items():
        assert len(answers) == 2, name
        for answer in answers:
            np.testing.assert_array_equal(answer, alone[name], err_msg=name)
