"""benchmarks/streaming_scale.py at a small size, and its arguments."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import streaming_scale


@pytest.fixture
def bench_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SINKLABEL_BENCH_DIR", str(tmp_path))
    monkeypatch.setenv("SINKLABEL_BENCH_ITERS", "2")
    monkeypatch.delenv("SINKLABEL_BENCH_KEEP", raising=False)
    return tmp_path


@pytest.mark.filterwarnings("ignore:.*labels received no points")  # 2 iterations: far from it
@pytest.mark.parametrize("kind", ["memory", "npy", "callable", "overhead"])
def test_each_kind_runs_small_and_cleans_up(kind, bench_dir, capsys):
    assert streaming_scale.main([kind, "3000", "20"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["kind"], report["N"], report["K"]) == (kind, 3000, 20)
    if kind == "overhead":
        assert set(report["ratio_to_in_memory"]) == {"in_memory", "memmap", "callable"}
    else:
        assert (report["iterations"], report["passes"]) == (2, 3)
        assert sum(report["label_counts_min_max"]) > 0
    assert list(bench_dir.iterdir()) == []  # the generated file is gone


@pytest.mark.parametrize("argv, message", [
    (["memory", "3000"], "N and K"),  # not the 1,000,000 x 1000 default
    (["memory", "3000", "20", "5"], "N and K"),
    (["memroy", "3000", "20"], "invalid choice"),
    (["memory", "0", "20"], "positive"),
])
def test_bad_arguments_stop_before_any_work(argv, message, bench_dir, capsys, monkeypatch):
    monkeypatch.setattr(streaming_scale, "solve", lambda *args: pytest.fail("solved"))
    with pytest.raises(SystemExit) as stopped:
        streaming_scale.main(argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
    assert list(bench_dir.iterdir()) == []


@pytest.mark.parametrize("kind", ["memory", "npy"])
def test_a_write_stopped_midway_leaves_no_file_to_reuse(kind, bench_dir, monkeypatch):
    """Ctrl-C during the minutes-long write left the file (15 GB for ``npy``), half zeros,
    and the next run solved it as if it were the scores."""
    written = []

    def make_scores_then_stop(rows, k, **kwargs):
        if written:
            raise KeyboardInterrupt
        written.append(rows)
        return streaming_scale.make_scores(rows, k, **kwargs)

    monkeypatch.setattr(streaming_scale, "BLOCK_ROWS", 1000)
    monkeypatch.setattr(streaming_scale, "make_scores", make_scores_then_stop)
    with pytest.raises(KeyboardInterrupt):
        streaming_scale.main([kind, "3000", "20"])
    assert written and list(bench_dir.iterdir()) == []


@pytest.mark.parametrize("name, value, message", [
    ("SINKLABEL_BENCH_ITERS", "three", "positive integer"),
    ("SINKLABEL_BENCH_ITERS", "0", "positive integer"),
    ("SINKLABEL_BENCH_DIR", "/no/such/folder", "no folder"),
])
def test_bad_environment_options_stop_before_any_work(name, value, message, bench_dir, capsys,
                                                      monkeypatch):
    """A mistyped SINKLABEL_BENCH_ITERS failed after the scores were written (int() on it, or
    sinkhorn refusing max_iter=0), a missing folder with a bare FileNotFoundError."""
    monkeypatch.setenv(name, value)
    monkeypatch.setattr(streaming_scale, "write_scores", lambda *args: pytest.fail("wrote"))
    monkeypatch.setattr(streaming_scale, "solve", lambda *args: pytest.fail("solved"))
    with pytest.raises(SystemExit) as stopped:
        streaming_scale.main(["memory", "3000", "20"])
    assert stopped.value.code == 2
    assert name in capsys.readouterr().err
    assert list(bench_dir.iterdir()) == []


def test_help_lists_the_kinds(capsys):
    with pytest.raises(SystemExit) as stopped:
        streaming_scale.main(["--help"])
    assert stopped.value.code == 0
    assert "callable" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:.*labels received no points")
@pytest.mark.parametrize("kind", ["in_memory", "memmap", "callable"])
def test_passes_count_every_read_of_the_scores(kind, tmp_path, monkeypatch):
    """``passes`` (the divisor of s/pass) is the number of times the solve read the scores,
    counted here by wrapping the sources' ``chunks``: the in-memory check is a read too."""
    from sinklabel.datasets import make_scores
    from sinklabel.sources import ArraySource, CallableSource, MemmapSource

    scores = make_scores(3000, 20, regime="peaked", seed=0).scores
    np.save(tmp_path / "scores.npy", scores)
    inputs = {
        "in_memory": lambda: scores,
        "memmap": lambda: np.load(tmp_path / "scores.npy", mmap_mode="r"),
        "callable": lambda: CallableSource(lambda a, b: scores[a:b], scores.shape, "float32"),
    }
    logp = inputs[kind]()
    reads = []
    for source in (ArraySource, MemmapSource, CallableSource):
        monkeypatch.setattr(source, "chunks", _counted(source.chunks, reads))
    monkeypatch.setattr(streaming_scale, "warm_up", lambda k: None)
    report = streaming_scale.solve(logp, 20, iters=2)
    assert report["iterations"] == 2
    assert report["passes"] == len(reads)


def _counted(chunks, reads):
    def counting(self, rows):
        reads.append(rows)
        return chunks(self, rows)

    return counting
