"""The public face: the estimator under scikit-learn, results kept and compared, heads."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
import typing

import numpy as np
import pytest

import sinklabel
from sinklabel.api import SinkhornOptions
from sinklabel.heads import HeadOptions
from sinklabel.sources import CallableSource


@pytest.fixture
def logp() -> np.ndarray:
    rng = np.random.default_rng(3)
    return np.log(rng.dirichlet(np.full(6, 0.5), size=300)).astype(np.float32)


def _assert_argmax(labels, logp: np.ndarray, result: sinklabel.SinkhornResult) -> None:
    """Each label maximises lam * logp + potentials (to float32 rounding: ties may go either
    way)."""
    z = result.lam * logp.astype(np.float64) + result.potentials
    chosen = np.take_along_axis(z, np.asarray(labels)[:, None], axis=1)[:, 0]
    np.testing.assert_allclose(chosen, z.max(axis=1), rtol=1e-5, atol=1e-4)


def test_heads_stream_in_blocks_no_larger_than_sinkhorns(monkeypatch):
    """A streamed source handed to sinkhorn_heads was asked for every row at once by the
    backends that take all rows at once (torch, CuPy): the whole N x K matrix in one block."""
    cap = 16 << 10
    monkeypatch.setattr(sinklabel._budget, "STREAM_BLOCK_BYTES", cap)
    ks = [4, 6]
    rng = np.random.default_rng(4)
    scores = np.log(rng.dirichlet(np.ones(sum(ks)), size=4000)).astype(np.float32)
    asked: list[int] = []

    def rows(start: int, stop: int) -> np.ndarray:
        asked.append(stop - start)
        return scores[start:stop]

    source = CallableSource(rows, scores.shape)
    results = sinklabel.sinkhorn_heads(source, ks, lam=5.0, backend="numpy")
    assert max(asked) * scores.shape[1] * scores.itemsize <= cap
    for head, (first, k) in enumerate([(0, ks[0]), (ks[0], ks[1])]):
        alone = scores[:, first:first + k]
        _assert_argmax(results[head].labels, alone, results[head])
        shares = results[head].label_counts / len(scores)
        assert np.abs(shares - 1 / k).sum() < 0.05


@pytest.mark.parametrize("duplicate", [lambda r: pickle.loads(pickle.dumps(r)), copy.deepcopy],
                         ids=["pickle", "deepcopy"])
def test_kept_results_stay_read_only_and_predict_the_same(logp, duplicate):
    """Unpickled results came back with writeable potentials: __post_init__ is not run."""
    result = sinklabel.sinkhorn(logp, 6, balance="exact")
    kept = duplicate(result)
    for name in ("potentials", "label_counts", "error_history", "label_weights", "prices"):
        with pytest.raises(ValueError, match="read-only"):
            getattr(kept, name)[0] = 0
    _assert_argmax(kept.predict(logp), logp, result)


def test_results_are_frozen_and_print_their_summary(logp):
    """A result is a record of one solve: no field can be rebound, and its repr shows the
    labels and figures, not the per-iteration history or the exact step's state."""
    result = sinklabel.sinkhorn(logp, 6, balance="exact")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.labels = result.labels[::-1]
    text = repr(result)
    for shown in ("labels=", "potentials=", "label_counts=", "n_iter=", "converged=", "error=",
                  "lam=", "backend=", "balance='exact'"):
        assert shown in text
    for hidden in ("error_history", "label_weights", "certificate", "prices"):
        assert hidden not in text


def test_results_compare_by_identity(logp):
    """The generated field-by-field == compared arrays and raised ValueError, so `in`,
    list.index and == failed on results (and hash raised TypeError)."""
    heads = sinklabel.sinkhorn_heads(np.concatenate([logp, logp], axis=1), [6, 6])
    assert heads.index(heads[1]) == 1
    assert heads[0] != heads[1] and heads[0] == heads[0]
    assert len({heads[0], heads[1]}) == 2
    exact = [sinklabel.solve_exact(logp, 6), sinklabel.solve_exact(logp, 6)]
    reports = [sinklabel.check(heads[0], logp), sinklabel.check(heads[0], logp)]
    assert exact.index(exact[1]) == 1 and exact[0] != exact[1]
    assert reports.index(reports[1]) == 1 and len({exact[0], reports[0]}) == 2


def test_scikit_learn_sees_whether_the_labeler_is_fitted(logp):
    """scikit-learn 1.6+ refused the labeler in check_is_fitted (no __sklearn_tags__)."""
    pytest.importorskip("sklearn", minversion="1.6")
    from sklearn.base import is_clusterer
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    labeler = sinklabel.SinkhornLabeler(6)
    with pytest.raises(NotFittedError):
        check_is_fitted(labeler)
    check_is_fitted(labeler.fit(logp))
    assert is_clusterer(labeler)
    assert labeler.__sklearn_tags__().target_tags.required is False  # fitted without targets
    _assert_argmax(labeler.labels_, logp, labeler.result_)


def test_heads_signature_admits_the_arrays_it_takes(logp):
    """Ks typed Sequence[int] although a NumPy array is taken (and not a Sequence)."""
    accepted = typing.get_args(typing.get_type_hints(sinklabel.sinkhorn_heads)["Ks"])
    assert np.ndarray in accepted
    results = sinklabel.sinkhorn_heads(np.concatenate([logp, logp], 1), np.array([6, 6]))
    _assert_argmax(results[1].labels, logp, results[1])


@pytest.mark.parametrize(("option", "error", "message"), [
    ({"chunk_size": 0}, ValueError, "chunk_size must be finite and > 0"),
    ({"chunk_size": True}, TypeError, "chunk_size must be an integer"),
    ({"init": 5}, TypeError, "init must be a sequence with one entry per head"),
])
def test_heads_blame_shared_arguments_on_no_head(logp, option, error, message):
    """A bad chunk_size was reported as head 0's, with head 0's columns; a bare number for a
    per-head option raised "object of type 'int' has no len()"."""
    with pytest.raises(error, match=message) as raised:
        sinklabel.sinkhorn_heads(np.concatenate([logp, logp], 1), [6, 6], **option)
    assert not getattr(raised.value, "__notes__", None)


def _public_callables():
    for name in sinklabel.__all__:
        obj = getattr(sinklabel, name)
        if isinstance(obj, type):
            yield from ((f"{name}.{attr}", member) for attr, member in vars(obj).items()
                        if callable(member) and (not attr.startswith("_") or attr == "__init__"))
        elif callable(obj):
            yield name, obj


@pytest.mark.parametrize(("name", "function"), list(_public_callables()))
def test_public_annotations_resolve_at_run_time(name, function):
    """Tools that read hints at run time (typing.get_type_hints: docs builders, validators)
    see the same names as a type checker, on every Python supported: none only under
    TYPE_CHECKING."""
    hints = typing.get_type_hints(function)
    assert "return" in hints, f"{name} has no return annotation"


def test_assign_labels_options_are_sinkhorns_keywords():
    """assign_labels(**options) passes them to sinkhorn: its typed options must name each
    keyword of sinkhorn with the same annotation, or a type checker rejects a valid call."""
    keywords = {name: param.annotation
                for name, param in inspect.signature(sinklabel.sinkhorn).parameters.items()
                if param.kind is inspect.Parameter.KEYWORD_ONLY}
    options = {name: ref.__forward_arg__ if isinstance(ref, typing.ForwardRef) else ref
               for name, ref in SinkhornOptions.__annotations__.items()}
    assert options == keywords


def test_heads_options_are_sinkhorns_keywords():
    keywords = inspect.signature(sinklabel.sinkhorn).parameters
    for name, ref in HeadOptions.__annotations__.items():
        annotation = ref.__forward_arg__ if isinstance(ref, typing.ForwardRef) else ref
        assert keywords[name].annotation == annotation
