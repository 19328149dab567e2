"""benchmarks/streaming_scale.py at a small size, and its arguments."""

from __future__ import annotations

import json

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


def test_help_lists_the_kinds(capsys):
    with pytest.raises(SystemExit) as stopped:
        streaming_scale.main(["--help"])
    assert stopped.value.code == 0
    assert "callable" in capsys.readouterr().out
