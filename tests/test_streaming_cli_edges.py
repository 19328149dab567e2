"""Edges of the streaming sources and the command line found by a second audit."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import sinklabel
from sinklabel.cli import main
from sinklabel.datasets import make_scores
from sinklabel.sources import CallableSource, SourceError, checked


def _changing(scores: np.ndarray, change) -> CallableSource:
    """A function source that returns ``scores`` on the first pass over a block and
    ``change(copy of the block)`` on every later one."""
    seen: set[tuple[int, int]] = set()

    def rows(start: int, stop: int) -> np.ndarray:
        block = scores[start:stop].copy()
        if (start, stop) in seen:
            change(block)
        seen.add((start, stop))
        return block

    return CallableSource(rows, scores.shape, scores.dtype)


def test_a_source_error_survives_pickling():
    """A solve in a worker process (ProcessPoolExecutor) sends its error back pickled: the
    error must unpickle as itself, or the pool reports itself broken instead."""
    error = SourceError("the source raised OSError: gone", 40, 50, 3)
    notes = ["(in head 1)"] if hasattr(error, "add_note") else []  # notes: Python 3.11+
    for note in notes:
        error.add_note(note)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is SourceError
    assert str(copy) == "rows [40, 50) on pass 3: the source raised OSError: gone"
    assert (copy.start, copy.stop, copy.pass_index) == (40, 50, 3)
    assert getattr(copy, "__notes__", []) == notes


def _raise_in_first_row_at_unsampled_label(block: np.ndarray) -> None:
    block[0, 1] += 3.0  # label 1: not among the 16 sampled of K=1000 (every 62nd)


def _unmask_first_row_at_unsampled_label(block: np.ndarray) -> None:
    block[0, 3] = 0.0  # label 3 was -inf: its sum and magnitude stay what they were


@pytest.mark.parametrize("change", [_raise_in_first_row_at_unsampled_label,
                                    _unmask_first_row_at_unsampled_label])
def test_a_row_with_a_masked_label_is_still_fingerprinted(change):
    """A row with a label masked by -inf summed to -inf whatever its other scores did, so
    only its 16 sampled scores were compared."""
    scores = make_scores(200, 1000, regime="flat", seed=4).scores
    scores[:, 0] = -np.inf  # a sampled label, masked everywhere
    scores[:, 3] = -np.inf
    source = checked(_changing(scores, change))
    assert len(list(source.chunks(100))) == 2
    with pytest.raises(SourceError, match=r"rows \[0, 100\) on pass 2: the scores changed"):
        list(source.chunks(100))


def test_masked_rows_read_again_unchanged_are_not_a_change():
    scores = make_scores(200, 1000, regime="flat", seed=4).scores
    scores[::3, 5] = -np.inf
    source = checked(_changing(scores, lambda block: None))
    for _ in range(3):
        assert len(list(source.chunks(100))) == 2


@pytest.mark.parametrize(("dtype", "name"), [(np.float32, "float32"), (float, "float64"),
                                             (np.float16, "float16"), ("f4", "float32"),
                                             (np.dtype("float16"), "float16")])
def test_a_callable_source_takes_numpy_scalar_types(dtype, name):
    """``dtype=np.float32`` is how NumPy users write a dtype; it was read as the string
    "<class 'numpy.float32'>" and refused as no data type. Aliases and dtype objects are
    named canonically too."""
    scores = make_scores(90, 4, regime="flat", seed=2).scores.astype(dtype)
    source = CallableSource(lambda start, stop: scores[start:stop], scores.shape, dtype)
    assert source.dtype == name
    streamed = sinklabel.sinkhorn(source, 4, chunk_size=20, backend="numpy")
    in_memory = sinklabel.sinkhorn(scores, 4, chunk_size=20, backend="numpy")
    assert np.array_equal(streamed.potentials, in_memory.potentials)


@pytest.mark.parametrize(("options", "error", "match"), [
    ({"chunk_rows": -1}, ValueError, "chunk_rows must be >= 1"),
    ({"chunk_rows": 0}, ValueError, "chunk_rows must be >= 1"),
    ({"chunk_rows": 2.5}, TypeError, "chunk_rows must be an integer"),
    ({"chunk_rows": True}, TypeError, "chunk_rows must be an integer"),
    ({"margin": np.inf}, ValueError, "margin must be finite"),
    ({"size_spread": np.nan}, ValueError, "size_spread must be finite"),
    ({"seed": -1}, ValueError, "seed must be a non-negative integer, got -1"),
    ({"seed": 1.5}, ValueError, "seed must be a non-negative integer, got 1.5"),
    ({"n": 5.0}, TypeError, "n must be an integer, got 5.0"),
    ({"k": True}, TypeError, "k must be an integer, got True"),
])
def test_generated_scores_refuse_options_that_leave_them_unfilled(options, error, match):
    """chunk_rows=-1 generated no block and returned np.empty's memory as scores."""
    with pytest.raises(error, match=match):
        make_scores(**{"n": 5, "k": 3, **options})


def test_generated_scores_fill_every_row_whatever_the_chunk():
    whole = make_scores(7, 3, seed=1).scores
    for chunk_rows in (1, 3, 7, 8):
        assert np.array_equal(make_scores(7, 3, seed=1, chunk_rows=chunk_rows).scores, whole)
    assert np.allclose(np.exp(whole).sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_generated_scores_are_log_probabilities_even_past_the_exponent_range(dtype):
    """A 1000-nat margin: exp of the raw logits overflows float64 (and float32 from 89), so
    each row is shifted by its maximum before it is normalised."""
    scores, truth = make_scores(50, 4, margin=1000.0, dtype=dtype, seed=3)
    assert scores.dtype == dtype and np.isfinite(scores).all()
    np.testing.assert_allclose(np.exp(scores.astype(np.float64)).sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(scores.argmax(axis=1), truth)


def test_generated_scores_follow_their_documented_parameters():
    """Flat logits have scale 3 (two columns differ by 3 * sqrt(2) in standard deviation);
    a peaked row's own cluster stands ``margin`` nats above the mean of the others; cluster
    sizes spread by ``size_spread`` (relative), beside the draw's own 1/sqrt(1000) = 3%."""
    n, k = 50_000, 50
    flat = make_scores(n, k, regime="flat", seed=5).scores.astype(np.float64)
    assert np.std(flat[:, 0] - flat[:, 1]) == pytest.approx(3 * np.sqrt(2), rel=0.03)
    scores, truth = make_scores(n, k, regime="peaked", seed=5, margin=7.0)
    own = scores[np.arange(n), truth].astype(np.float64)
    others = (scores.sum(axis=1, dtype=np.float64) - own) / (k - 1)
    assert np.mean(own - others) == pytest.approx(7.0, abs=0.05)
    for spread, low, high in [(0.2, 0.15, 0.26), (0.0, 0.0, 0.05)]:
        sizes = np.bincount(make_scores(n, k, regime="flat", size_spread=spread).truth,
                            minlength=k)
        assert low < sizes.std() / sizes.mean() < high, spread


def test_generated_scores_of_no_rows_or_one_label():
    assert make_scores(0, 3).scores.shape == (0, 3)
    scores, truth = make_scores(4, 1, regime="flat")
    np.testing.assert_array_equal(scores, np.zeros((4, 1), np.float32))
    np.testing.assert_array_equal(truth, np.zeros(4))


@pytest.fixture
def scores_file(tmp_path):
    path = tmp_path / "scores.npy"
    np.save(path, make_scores(60, 4, regime="flat", seed=3).scores)
    return str(path)


@pytest.mark.parametrize(("argv", "named"), [
    (["assign", "{folder}", "-k", "4", "-o", "{out}"], "scores: '{folder}' is a folder"),
    (["assign", "{scores}", "-k", "4", "-o", "{out}", "--init", "{folder}"],
     "init: '{folder}' is a folder"),
    (["check", "{scores}", "{folder}"], "labels: '{folder}' is a folder"),
    (["check", "{scores}", "{missing}"], "labels: no such file '{missing}'"),
    (["assign", "{scores}", "-k", "4", "-o", "{out}", "--weights", "{missing}"],
     "weights: no such file '{missing}'"),
])
def test_missing_files_and_folders_are_named_by_what_they_should_hold(
        scores_file, tmp_path, capsys, argv, named):
    """open()'s own errors ("[Errno 21] Is a directory: ...") named no argument."""
    paths = {"folder": str(tmp_path), "out": str(tmp_path / "labels.npy"),
             "scores": scores_file, "missing": str(tmp_path / "missing.npy")}
    assert main([part.format(**paths) for part in argv]) == 2
    err = capsys.readouterr().err
    assert f": error: {named.format(**paths)}" in err  # the message opens with its name
    assert err.count("\n") == 1


def test_max_iter_help_counts_iterations_as_the_summary_does(scores_file, tmp_path, capsys):
    """--max-iter bounds iterations (the summary's count), not passes: labelling reads the
    scores once more."""
    with pytest.raises(SystemExit):
        main(["assign", "--help"])
    assert "most iterations, one pass over the scores each" in capsys.readouterr().out
    out = str(tmp_path / "labels.npy")
    peaked = tmp_path / "peaked.npy"
    np.save(peaked, make_scores(200, 10, regime="peaked", seed=1).scores)
    assert main(["assign", str(peaked), "-k", "10", "-o", out, "--max-iter", "2",
                 "--no-progress"]) == 1
    assert "iterations        2 (NOT converged)" in capsys.readouterr().err
