"""sinklabel as a training loop uses it: tensors of every kind, warm starts, new rows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

import sinklabel
from sinklabel import sinkhorn
from sinklabel.datasets import make_scores


@pytest.fixture
def logp(rng) -> np.ndarray:
    logits = 3.0 * rng.standard_normal((120, 5))
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def negative_view(values):
    """``values`` as a torch view with the negative bit set, as ``x.conj().imag`` gives."""
    torch = pytest.importorskip("torch")
    values = torch.as_tensor(values, dtype=torch.float64)
    view = torch.complex(torch.zeros_like(values), -values).conj().imag
    assert view.is_neg() and torch.equal(view.resolve_neg(), values)
    return view


def test_an_init_too_large_for_the_dtype_is_refused_before_the_check_pass(logp, monkeypatch):
    def no_pass(*args, **kwargs):
        raise AssertionError("the scores were read before the bad init was named")

    monkeypatch.setattr(sinklabel.api, "check_scores", no_pass)
    with pytest.raises(ValueError, match="init reaches"):
        sinkhorn(logp.astype(np.float32), 5, init=np.array([1e30, 0.0, 0.0, 0.0, 0.0]))


def test_negative_views_are_read_as_the_values_they_show(logp):
    """A view with the negative bit is a torch input like any other: as scores whose failed
    solve is explained, as label weights and as a warm start."""
    masked = logp.copy()
    masked[2:, 4] = -np.inf  # label 4 reachable by two rows, but its share is 24
    with pytest.raises(ValueError, match="only 2 rows have a finite score"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sinkhorn(negative_view(masked), 5, max_iter=200)
    weights = np.arange(1.0, 6.0)
    got = sinkhorn(logp, 5, label_weights=negative_view(weights), init=negative_view(weights))
    want = sinkhorn(logp, 5, label_weights=weights, init=weights)
    np.testing.assert_array_equal(got.potentials, want.potentials)


def test_tensors_that_require_grad_are_read_as_their_values(logp):
    """Label weights or a warm start that a training loop learns are read without their
    graph, as ``.detach()`` would, not refused by ``.numpy()``."""
    torch = pytest.importorskip("torch")
    weights = np.arange(1.0, 6.0)
    learned = torch.tensor(weights, requires_grad=True)
    got = sinkhorn(logp, 5, label_weights=learned, init=learned)
    want = sinkhorn(logp, 5, label_weights=weights, init=weights)
    np.testing.assert_array_equal(got.potentials, want.potentials)
    assert learned.requires_grad and learned.grad is None


def test_a_conjugate_view_is_named_as_complex_input(logp):
    """``x.conj()`` of a complex tensor sets the conjugate bit, which ``.numpy()`` refuses:
    the view is named as complex input is, not failed inside torch."""
    torch = pytest.importorskip("torch")
    view = torch.ones(5, dtype=torch.complex64).conj()
    assert view.is_conj()
    with pytest.raises(TypeError, match="init must hold real numbers, got dtype complex64"):
        sinkhorn(logp, 5, init=view)
    with pytest.raises(TypeError, match="label_weights must hold real numbers"):
        sinkhorn(logp, 5, label_weights=view)


def test_predicting_with_torchs_own_operations_warns_nothing():
    """Without Numba (here its compiler off) CPU tensors go through torch's own operations;
    the result's read-only potentials once made torch warn there (once per process: hence a
    fresh one, a transposed tensor as the layout they took before 2026-11-28)."""
    pytest.importorskip("torch")
    script = (
        "import warnings, torch, sinklabel\n"
        "warnings.simplefilter('error')\n"
        "logits = torch.randn(64, 8).T.contiguous().T\n"
        "result = sinklabel.sinkhorn(logits, 8)\n"
        "result.predict(logits)\n"
        "result.soft_assignments(logits)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "NUMBA_DISABLE_JIT": "1"})
    assert done.returncode == 0, done.stderr[-2000:]


class _JobHandle:
    """Stands for a torch.distributed process group: shared, never copied."""

    def __deepcopy__(self, memo):
        raise TypeError("cannot pickle 'ProcessGroup' object")


def test_scikit_learn_clone_shares_the_process_group_and_copies_the_rest():
    sklearn_base = pytest.importorskip("sklearn.base")
    group, weights = _JobHandle(), np.arange(1.0, 6.0)
    labeler = sinklabel.SinkhornLabeler(5, label_weights=weights, process_group=group)
    copied = sklearn_base.clone(labeler)
    assert copied.process_group is group
    assert copied.label_weights is not weights
    np.testing.assert_array_equal(copied.label_weights, weights)
    assert not hasattr(copied, "result_")


def test_a_tensor_that_requires_grad_takes_the_cache(logp):
    """Once refused with a hint to pass ``.detach().numpy()``; the torch backend now keeps
    the same tables itself, records no graph, and returns the labels as a tensor."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("numba")
    logits = torch.tensor(logp, dtype=torch.float32, requires_grad=True)
    cached = sinkhorn(logits, 5, cache=True)
    assert isinstance(cached.labels, torch.Tensor) and not cached.labels.requires_grad
    expected = sinkhorn(logits.detach().numpy(), 5, cache=True, backend="numba")
    np.testing.assert_array_equal(cached.potentials, expected.potentials)
    assert logits.grad is None and logits.grad_fn is None


def test_partial_fit_names_n_labels_when_that_changed_k(logp):
    labeler = sinklabel.SinkhornLabeler().fit(logp)
    labeler.set_params(n_labels=6)
    with pytest.raises(ValueError, match="had 5 labels, but n_labels is 6: call fit"):
        labeler.partial_fit(logp)


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf])
def test_a_label_weight_that_is_not_positive_is_named_with_its_label(logp, bad):
    weights = np.array([1.0, 1.0, bad, 1.0, bad])
    named = rf"got {bad:g} for label 2 \(and 1 more\): .*drop its column"
    with pytest.raises(ValueError, match=named):
        sinkhorn(logp, 5, label_weights=weights)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_predict_reads_in_memory_scores_once_and_still_names_bad_rows(logp, monkeypatch,
                                                                      backend):
    """predict checked in-memory scores in a pass of their own before labelling them in a
    second: the labelling pass's row maxima now carry the check (half the reads)."""
    pytest.importorskip(backend)
    result = sinkhorn(logp, 5, backend=backend)

    def no_pass(*args, **kwargs):
        raise AssertionError("a separate check pass read the scores")

    monkeypatch.setattr(sinklabel.api, "check_scores", no_pass)
    np.testing.assert_array_equal(result.predict(logp), result.labels)
    for row, value, message in [(3, np.nan, "NaN \\(row 3\\)"), (4, np.inf, "\\+inf")]:
        bad = logp.copy()
        bad[row, 1] = value
        with pytest.raises(ValueError, match=message):
            result.predict(bad)
    bad = logp.copy()
    bad[6] = -np.inf
    with pytest.raises(ValueError, match="row 6 of logp has no finite score"):
        result.predict(bad)


def _narrow_copies(values: np.ndarray) -> list:
    """``values`` as narrower scores a float64 result may be applied to, a streamed copy
    whose rows must not be read among them."""
    from sinklabel.sources import CallableSource

    def unread(start, stop):
        raise AssertionError("the scores were read before the result was refused")

    copies = [values.astype(np.float32), values.astype(np.float16),
              CallableSource(unread, values.shape, "float32")]
    try:
        import torch
    except ImportError:
        return copies
    return [*copies, torch.from_numpy(values).to(torch.bfloat16)]


def _beyond_float32(logp: np.ndarray) -> dict:
    """Float64 results that float32 cannot hold: lam = 1e39 (a float64 solve takes it), and
    potentials beyond 3.4e38 (a warm start up to 1.3e154 returned at max_iter)."""
    with warnings.catch_warnings():  # not converged, imprecise: not what is tested
        warnings.simplefilter("ignore")
        return {
            "lam is 1e+39": sinkhorn(logp, 5, lam=1e39, max_iter=5),
            "potentials reach 3e+39": sinkhorn(logp, 5, init=[1e39, 2e39, 0.0, 0.0, -3e39],
                                               max_iter=1),
        }


@pytest.mark.parametrize("kind", range(4))
def test_a_float64_result_beyond_float32_is_refused_on_narrower_scores(logp, kind):
    """Cast to float32, lam = 1e39 turned a score of 0 into NaN ("logp contains NaN" of
    scores that hold none), and potentials of 1e39 and 2e39 became the same inf: every row
    took label 0 where label 1's potential is larger, and soft assignments were NaN or raised
    ZeroDivisionError. Such a result is refused before any row is read; float64 scores
    still take it."""
    copies = _narrow_copies(logp)
    if kind >= len(copies):
        pytest.skip("torch is not installed")
    for beyond, result in _beyond_float32(logp).items():
        for apply in (result.predict, result.soft_assignments):
            message = f"this result's {re.escape(beyond)}, beyond the largest float32.*float64"
            with pytest.raises(ValueError, match=message):
                apply(copies[kind])
    far = _beyond_float32(logp)["potentials reach 3e+39"]
    np.testing.assert_array_equal(np.asarray(far.predict(logp)), np.ones(len(logp)))


@pytest.mark.parametrize("k", [48, 49, 98])
def test_an_empty_label_whose_share_is_one_point_warns_however_n_times_w_rounds(k):
    """49 * (1 / 49) is 0.9999999999999999 in float64: the share is still one point."""
    with pytest.warns(UserWarning, match=f"{k - 1} labels received no points"):
        result = sinkhorn(np.zeros((k, k), dtype=np.float32), k)
    assert np.count_nonzero(result.label_counts == 0) == k - 1


@pytest.mark.parametrize("bad, error", [("5", TypeError), (5.0, TypeError), (0, ValueError)])
def test_a_bad_n_labels_is_named_as_such_by_fit_and_by_partial_fit(logp, bad, error):
    """Not as a change of K ("which had 5 labels, but n_labels is 5") nor as an unknown K."""
    labeler = sinklabel.SinkhornLabeler(5).fit(logp).set_params(n_labels=bad)
    for method in (labeler.fit, labeler.partial_fit):
        with pytest.raises(error, match="^n_labels must be"):
            method(logp)


@pytest.mark.parametrize("new_lam", [10.0, 50.0])
def test_partial_fit_after_a_new_lam_starts_from_the_same_prices(new_lam):
    """potentials / lam are the label prices: unscaled, the old potentials were off by the
    ratio of the lams, and the solve took several times the passes."""
    scores = make_scores(4000, 40, regime="peaked", seed=3).scores
    labeler = sinklabel.SinkhornLabeler(40, lam=25.0).fit(scores)
    before = labeler.potentials_.copy()
    labeler.set_params(lam=new_lam).partial_fit(scores)
    unscaled = sinkhorn(scores, 40, lam=new_lam, init=before)
    np.testing.assert_array_equal(labeler.potentials_, sinkhorn(
        scores, 40, lam=new_lam, init=before * (new_lam / 25.0)).potentials)
    assert labeler.converged_ and 2 * labeler.n_iter_ < unscaled.n_iter


def test_a_bad_lam_on_partial_fit_is_named_before_any_work(logp):
    labeler = sinklabel.SinkhornLabeler(5).fit(logp).set_params(lam="25")
    with pytest.raises(TypeError, match="^lam must be a number"):
        labeler.partial_fit(logp)
