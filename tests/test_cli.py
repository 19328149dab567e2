"""The command line, called through ``main(argv)`` as a user would type it."""

from __future__ import annotations

import importlib
import io
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

import sinklabel
from sinklabel.cli import COMMANDS, in_cli_terms, main
from sinklabel.datasets import make_scores


def test_demo_runs_and_summarises(capsys):
    assert main(["demo", "-n", "3000", "-k", "30", "--regime", "flat", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "converged" in out and "label sizes" in out


def test_demo_on_peaked_scores_finds_the_generator_clusters_and_exits_1_unconverged(capsys):
    """On peaked scores the demo reports how many points keep the generator's cluster (most
    do: the balance moves the rest); stopped at --max-iter, it exits 1."""
    argv = ["demo", "-n", "3000", "-k", "30", "--no-progress"]
    assert main(argv) == 0
    line = [s for s in capsys.readouterr().out.splitlines()
            if s.startswith("same cluster as generated")]
    scores, truth = make_scores(3000, 30, regime="peaked", seed=0)
    agreement = np.mean(sinklabel.sinkhorn(scores, 30).labels == truth)
    assert line == [f"same cluster as generated: {100 * agreement:.1f}% of points"]
    assert agreement > 0.9
    assert main([*argv, "--max-iter", "1", "--tol", "1e-9"]) == 1


def test_demo_by_default_is_the_readme_s_main_job(monkeypatch):
    """The README's first command, a bare 'sinklabel demo', is "200,000 points x 1,000
    labels" of peaked scores."""
    with open(os.path.join(os.path.dirname(__file__), "..", "README.md")) as file:
        readme = file.read()
    assert "sinklabel demo" in readme and "(200,000 points x 1,000 labels)" in readme
    drawn = []
    monkeypatch.setattr("sinklabel.commands.demo.make_scores",
                        lambda *a, **kw: drawn.append((a, kw)) or _interrupted())
    assert main(["demo"]) == 130  # stopped before generating 200,000 x 1000 scores
    assert drawn == [((200_000, 1000), {"regime": "peaked", "seed": 0})]


def test_demo_seeds_from_zero_up_give_their_own_scores(monkeypatch):
    """An explicit --seed 0 is the default's scores; another seed gives others."""
    drawn = []
    monkeypatch.setattr("sinklabel.commands.demo.make_scores",
                        lambda *a, **kw: drawn.append(kw["seed"]) or make_scores(*a, **kw))
    for seed in ([], ["--seed", "0"], ["--seed", "1"]):
        assert main(["demo", "-n", "200", "-k", "4", "--no-progress", *seed]) == 0
    assert drawn == [0, 0, 1]


def test_version_prints_the_installed_version_and_needs_no_command(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"sinklabel {sinklabel.__version__}\n"


def test_no_command_is_a_usage_error_not_an_internal_one(capsys):
    """Without a command there is nothing to run: argparse's exit 2 and its message, not
    exit 3 and a traceback from looking up the missing command's function."""
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "the following arguments are required: command" in err
    assert "Traceback" not in err


def test_assign_requires_the_output(scores_file, tmp_path, capsys, monkeypatch):
    err = _rejected_before_work(["assign", str(scores_file), "-k", "6"], capsys, monkeypatch)
    assert "the following arguments are required: -o/--output" in err


def test_assign_takes_k_from_the_scores_and_refuses_another_by_its_flag(scores_file, tmp_path,
                                                                        capsys):
    """-k had to be given and could only repeat the scores' column count; a wrong one was
    refused in the library's terms ("K=5 but logp has shape (300, 6): K must be
    logp.shape[1]"), naming neither the flag nor the file."""
    out = tmp_path / "labels.npy"
    assert main(["assign", str(scores_file), "-o", str(out), "--no-progress"]) == 0
    labels = np.load(out)
    assert labels.shape == (300,) and np.bincount(labels, minlength=6).min() > 0
    assert labels.max() == 5
    assert "labels saved to" in capsys.readouterr().err
    out.unlink()
    assert main(["assign", str(scores_file), "-k", "5", "-o", str(out)]) == 2
    assert capsys.readouterr().err == (
        "sinklabel assign: error: -k 5 but the scores have shape (300, 6)\n")
    assert not out.exists()


def test_the_help_gives_each_command_the_first_line_of_its_docstring(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name, module_name in COMMANDS.items():
        first = importlib.import_module(module_name).__doc__.strip().splitlines()[0]
        assert first in out, name


def test_the_summary_gives_the_sizes_against_their_targets():
    """Weights 1:2:3:4 over 100 points: targets 10 to 40. Identical rows all take one label,
    which leaves three empty."""
    from sinklabel.commands._options import summarize

    weights = [1.0, 2.0, 3.0, 4.0]
    scores = make_scores(100, 4, regime="peaked", seed=1).scores
    result = sinklabel.sinkhorn(scores, 4, label_weights=weights)
    counts, target = result.label_counts, np.array([10.0, 20.0, 30.0, 40.0])
    lines = summarize(result, 1.234).splitlines()
    assert lines[3] == (f"label sizes       min {counts.min()}, max {counts.max()}, "
                        "target 10.0..40.0")
    ratios = counts / target
    assert lines[4] == f"size / target     {ratios.min():.3f} .. {ratios.max():.3f}"
    assert lines[5:] == ["empty labels      0", "time              1.23 s"]
    with pytest.warns(UserWarning, match="received no points"):
        tied = sinklabel.sinkhorn(np.zeros((100, 4)), 4, label_weights=weights)
    lines = summarize(tied, 0.0).splitlines()
    ratios = tied.label_counts / target
    assert lines[4] == f"size / target     0.000 .. {ratios.max():.3f}" and ratios.max() > 1
    assert lines[5] == "empty labels      3"
    even = sinklabel.sinkhorn(scores, 4)  # even targets: one number, not "25.0..25.0"
    assert summarize(even, 0.0).splitlines()[3].endswith(", target 25.0")


def test_assign_writes_balanced_labels(tmp_path, capsys):
    scores, _ = make_scores(2000, 20, regime="flat", seed=3)
    path = tmp_path / "scores.npy"
    np.save(path, scores)
    out, potentials = tmp_path / "labels.npy", tmp_path / "f.npy"
    code = main(["assign", str(path), "-k", "20", "-o", str(out), "--potentials", str(potentials),
                 "--no-progress"])
    assert code == 0
    labels = np.load(out)
    assert labels.shape == (2000,) and np.abs(np.bincount(labels, minlength=20) - 100).max() <= 10
    assert np.load(potentials).shape == (20,)
    assert "labels saved" in capsys.readouterr().err


def test_assign_reports_bad_input_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "scores.npy"
    np.save(path, np.zeros((10, 4), dtype=np.float32))
    assert main(["assign", str(path), "-k", "10", "-o", str(tmp_path / "x.npy")]) == 2
    assert capsys.readouterr().err == (
        "sinklabel assign: error: -k 10 but the scores have shape (10, 4) (the file looks "
        "transposed: save the scores transposed)\n")


def test_missing_file_is_an_error(tmp_path, capsys):
    assert main(["assign", str(tmp_path / "nope.npy"), "-k", "3", "-o", "x.npy"]) == 2
    assert "error" in capsys.readouterr().err


def test_a_file_failing_during_the_solve_is_an_error_not_a_traceback(scores_file, tmp_path,
                                                                    capsys, monkeypatch):
    """A scores file that cannot be read (or changes) mid-solve stops it with SourceError."""
    from sinklabel.sources import SourceError

    def failing(*args, **kwargs):
        raise SourceError("the source raised OSError: Input/output error", 0, 300, 2)

    monkeypatch.setattr("sinklabel.commands.assign.sinkhorn", failing)
    argv = ["assign", str(scores_file), "-k", "6", "-o", str(tmp_path / "l.npy")]
    assert main(argv) == 2
    assert "sinklabel assign: error: rows [0, 300) on pass 2" in capsys.readouterr().err


def test_an_unexpected_failure_exits_3_not_1_which_means_labels_saved(scores_file, tmp_path,
                                                                     capsys, monkeypatch):
    """A bug raised an unexpected exception, and Python exits with 1 for it: the exit code
    that means "stopped at --max-iter, labels saved" to a script. It now exits with 3."""
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("sinklabel.commands.assign.sinkhorn", broken)
    argv = ["assign", str(scores_file), "-k", "6", "-o", str(tmp_path / "l.npy")]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "RuntimeError: a bug" in err and "internal error (exit 3)" in err
    assert not (tmp_path / "l.npy").exists()


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "assign" in out


def test_module_entry_point():
    command = [sys.executable, "-m", "sinklabel", "demo", "-n", "500", "-k", "5",
               "--regime", "flat", "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "iterations" in done.stdout


@pytest.fixture
def scores_file(tmp_path):
    path = tmp_path / "scores.npy"
    np.save(path, make_scores(300, 6, regime="flat", seed=1).scores)
    return path


def test_assign_reports_a_solve_time_within_the_command_s_own(scores_file, tmp_path, capsys):
    """The summary's time is the solve's: between zero and what the whole command took."""
    start = time.perf_counter()
    assert main(["assign", str(scores_file), "-k", "6", "-o", str(tmp_path / "labels.npy"),
                 "--no-progress"]) == 0
    elapsed = time.perf_counter() - start
    line = [s for s in capsys.readouterr().err.splitlines() if s.startswith("time ")]
    assert len(line) == 1 and line[0].endswith(" s")
    assert 0 <= float(line[0].split()[1]) <= elapsed + 0.005  # printed to 2 decimals


def test_check_refuses_a_k_other_than_the_scores(scores_file, tmp_path, capsys):
    """-k only confirms the scores' K: another is bad input, not labels checked over K=6."""
    labels = tmp_path / "labels.npy"
    np.save(labels, np.arange(300) % 5)
    assert main(["check", str(scores_file), str(labels), "-k", "5"]) == 2
    assert capsys.readouterr().err == (
        "sinklabel check: error: -k 5 but the scores have shape (300, 6)\n")


def test_assign_writes_exactly_the_output_path_it_names(scores_file, tmp_path, capsys):
    out, potentials = tmp_path / "labels", tmp_path / "f.bin"
    assert main(["assign", str(scores_file), "-k", "6", "-o", str(out),
                 "--potentials", str(potentials), "--no-progress"]) == 0
    assert np.load(out).shape == (300,) and np.load(potentials).shape == (6,)
    assert not (tmp_path / "labels.npy").exists()
    assert f"labels saved to {out}\n" in capsys.readouterr().err


def _no_solve(*args, **kwargs):
    raise AssertionError("the solve ran before the outputs were checked")


@pytest.mark.parametrize("option", ["-o", "--potentials"])
@pytest.mark.parametrize("bad, match", [("missing/out.npy", "no such folder"), (".", "a folder")])
def test_assign_checks_its_outputs_before_solving(scores_file, tmp_path, capsys, monkeypatch,
                                                  option, bad, match):
    monkeypatch.setattr("sinklabel.commands.assign.sinkhorn", _no_solve)
    paths = {"-o": str(tmp_path / "labels.npy"), "--potentials": str(tmp_path / "f.npy")}
    paths[option] = str(tmp_path / bad)
    argv = ["assign", str(scores_file), "-k", "6", "--no-progress"]
    assert main(argv + [arg for pair in paths.items() for arg in pair]) == 2
    assert match in capsys.readouterr().err


def test_assign_never_overwrites_the_scores(scores_file, capsys, monkeypatch):
    monkeypatch.setattr("sinklabel.commands.assign.sinkhorn", _no_solve)
    before = np.load(scores_file)
    assert main(["assign", str(scores_file), "-k", "6", "-o", str(scores_file)]) == 2
    assert "is the scores file" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(scores_file), before)


@pytest.mark.parametrize("command", ["assign", "check"])
def test_files_that_are_not_npy_arrays_are_named(tmp_path, capsys, command):
    npz, text = tmp_path / "scores.npz", tmp_path / "text.npy"
    np.savez(npz, scores=np.zeros((5, 3), dtype=np.float32))
    text.write_text("not an array")
    labels = tmp_path / "labels.npy"
    np.save(labels, np.zeros(5, dtype=np.int64))
    rest = ["-k", "3", "-o", str(tmp_path / "out.npy")] if command == "assign" else [str(labels)]
    for path in (npz, text):
        assert main([command, str(path)] + rest) == 2
        assert f"{str(path)!r} is not a .npy array file" in capsys.readouterr().err
    if command == "check":
        scores = tmp_path / "scores.npy"
        np.save(scores, np.zeros((5, 3), dtype=np.float32))
        assert main(["check", str(scores), str(text)]) == 2
        assert f"labels: {str(text)!r} is not a .npy array file" in capsys.readouterr().err


class _Unpickled:
    """Whatever unpickles this runs code: a file that holds it must never be unpickled."""

    calls: list = []

    def __reduce__(self):
        return (_Unpickled.calls.append, ("unpickled",))


def test_a_pickled_weights_file_is_refused_unread(scores_file, tmp_path, capsys):
    weights = tmp_path / "w.npy"
    np.save(weights, np.array([_Unpickled()] * 6, dtype=object), allow_pickle=True)
    assert main(["assign", str(scores_file), "-k", "6", "-o", str(tmp_path / "out.npy"),
                 "--weights", str(weights), "--no-progress"]) == 2
    assert f"{str(weights)!r} is not a .npy array file" in capsys.readouterr().err
    assert _Unpickled.calls == []


def _rejected_before_work(argv, capsys, monkeypatch) -> str:
    """Exit code 2 from the argument parser, nothing generated or solved; the message."""
    monkeypatch.setattr("sinklabel.commands.demo.make_scores", _no_solve)
    monkeypatch.setattr("sinklabel.commands.demo.sinkhorn", _no_solve)
    monkeypatch.setattr("sinklabel.commands.assign.sinkhorn", _no_solve)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("option, value", [
    ("-k", "0"), ("-n", "-5"), ("--lam", "-1"), ("--lam", "nan"), ("--tol", "0"),
    ("--tol", "inf"), ("--max-iter", "0"), ("--chunk-size", "-3"), ("--max-iter", "1.5"),
])
def test_demo_rejects_bad_numbers_by_option_name_before_any_work(capsys, monkeypatch, option,
                                                                 value):
    """A bad value names the option a user typed (not the Python parameter) and stops before
    200,000 x 1000 scores are generated."""
    err = _rejected_before_work(["demo", option, value], capsys, monkeypatch)
    noun = "number" if option in ("--lam", "--tol") else "integer"
    assert f"argument {option}" in err
    assert f": must be a positive {noun}, got {value!r}" in err


@pytest.mark.parametrize("backend", ["torch", "cupy", "nope"])
def test_backends_that_cannot_take_npy_scores_are_refused(scores_file, tmp_path, capsys,
                                                         monkeypatch, backend):
    """The commands hold NumPy arrays, so only auto, numba and numpy can run them; the help
    lists those instead of a free-form name that fails after the file is opened."""
    argv = ["assign", str(scores_file), "-k", "6", "-o", str(tmp_path / "l.npy"),
            "--backend", backend]
    err = _rejected_before_work(argv, capsys, monkeypatch)
    assert "argument --backend: invalid choice" in err and "'numba'" in err


def test_assign_refuses_one_path_for_labels_and_potentials(scores_file, tmp_path, capsys,
                                                           monkeypatch):
    """Saving both to one file left the potentials where "labels saved to" pointed."""
    monkeypatch.setattr("sinklabel.commands.assign.sinkhorn", _no_solve)
    out = tmp_path / "out.npy"
    alias = tmp_path / "sub" / ".." / "out.npy"
    (tmp_path / "sub").mkdir()
    for potentials in (out, alias):
        assert main(["assign", str(scores_file), "-k", "6", "-o", str(out),
                     "--potentials", str(potentials)]) == 2
        assert "named for two outputs" in capsys.readouterr().err
    assert not out.exists()


def test_progress_bar_shows_the_error_of_the_pass_it_counts(capsys, monkeypatch):
    """The bar the commands show by default drew pass i with pass i-1's error."""
    pytest.importorskip("tqdm")
    from sinklabel.progress import Progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # a terminal
    bar = Progress(True, total=100, tol=1e-9)
    bar._bar.mininterval = 0  # draw every update
    for iteration, error in enumerate([0.5, 0.25, 0.125], 1):
        bar.update(iteration, error)
    bar.close()
    drawn = [line for line in capsys.readouterr().err.split("\r") if "error=" in line]
    assert drawn
    for line in drawn:
        iteration = int(line.split("/")[0].split()[-1])
        assert f"error={0.5 ** iteration:.2e}" in line, line


def test_assign_exact_gives_labels_that_check_certifies(scores_file, tmp_path, capsys):
    """The README's pipeline, assign then check: --exact labels have the exact sizes and are
    certified optimal (exit 0), with the exact solver's objective."""
    labels = tmp_path / "labels.npy"
    assert main(["assign", str(scores_file), "-k", "6", "-o", str(labels), "--exact",
                 "--no-progress"]) == 0
    assert "certified optimal" in capsys.readouterr().err
    assert sorted(np.bincount(np.load(labels), minlength=6)) == [50] * 6
    assert main(["check", str(scores_file), str(labels)]) == 0
    assert "-> optimal" in capsys.readouterr().out
    exact = sinklabel.solve_exact(np.load(scores_file), 6)
    np.testing.assert_allclose(
        -np.load(scores_file)[np.arange(300), np.load(labels)].sum(), exact.objective,
        rtol=1e-6)


def test_prices_saved_by_assign_certify_its_labels_without_the_exact_solve(
        scores_file, tmp_path, capsys, monkeypatch):
    """For inputs too large for the exact solve: ``assign --exact --prices`` then ``check
    --no-exact --prices`` certifies the labels from the saved prices alone; the same check
    without prices only has zero prices' weak bound and cannot."""
    labels, prices = tmp_path / "labels.npy", tmp_path / "prices.npy"
    assert main(["assign", str(scores_file), "-k", "6", "-o", str(labels), "--exact",
                 "--prices", str(prices), "--no-progress"]) == 0
    scores = np.load(scores_file)
    exact = sinklabel.solve_exact(scores, 6)
    # The saved prices bound the optimum by the LP dual, computed here directly, and the
    # bound meets the saved labels' score: for every balanced labelling (n_y points per label)
    # sum_i S[i, y_i] <= sum_i max_y (S[i, y] + v[y]) - sum_y n_y v[y].
    v = np.load(prices)
    sizes = np.bincount(np.load(labels), minlength=6)
    dual = (scores + v).max(axis=1).sum() - (sizes * v).sum()
    score = scores[np.arange(300), np.load(labels)].sum()
    np.testing.assert_allclose([dual, score], -exact.objective, rtol=1e-6)
    capsys.readouterr()
    monkeypatch.setattr(importlib.import_module("sinklabel.check"), "solve_exact", _no_solve)
    assert main(["check", str(scores_file), str(labels), "--no-exact",
                 "--prices", str(prices)]) == 0
    assert "-> optimal" in capsys.readouterr().out
    assert main(["check", str(scores_file), str(labels), "--no-exact"]) == 1


def test_assign_saves_sinkhorn_prices_as_potentials_over_lam(scores_file, tmp_path):
    prices, potentials = tmp_path / "prices.npy", tmp_path / "potentials.npy"
    main(["assign", str(scores_file), "-k", "6", "-o", str(tmp_path / "labels.npy"),
          "--lam", "10", "--prices", str(prices), "--potentials", str(potentials),
          "--no-progress"])
    np.testing.assert_allclose(np.load(prices), np.load(potentials) / 10.0, rtol=1e-15)


def test_check_names_prices_of_the_wrong_length(scores_file, tmp_path, capsys):
    labels, prices = tmp_path / "labels.npy", tmp_path / "prices.npy"
    np.save(labels, np.arange(300) % 6)
    np.save(prices, np.zeros(5))
    assert main(["check", str(scores_file), str(labels), "--prices", str(prices)]) == 2
    assert "prices" in capsys.readouterr().err


def test_check_skips_the_exact_solve_beyond_the_library_limit(scores_file, tmp_path, capsys,
                                                              monkeypatch):
    """The command follows the library's default: no exact solve beyond EXACT_LIMIT."""
    check_module = importlib.import_module("sinklabel.check")
    monkeypatch.setattr(check_module, "EXACT_LIMIT", 300 * 6 - 1)
    monkeypatch.setattr(check_module, "solve_exact", _no_solve)
    labels = tmp_path / "labels.npy"
    np.save(labels, np.arange(300) % 6)
    assert main(["check", str(scores_file), str(labels)]) == 1
    assert "bound" in capsys.readouterr().out


def test_assign_weights_then_check_weights_certifies_the_sizes(scores_file, tmp_path, capsys):
    """Proportions reach the solve (sizes floor or ceil of N * w with --exact, the optimum of
    those sizes by the exact solver) and the check measures against the same sizes."""
    weights, labels = tmp_path / "w.npy", tmp_path / "labels.npy"
    w = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 1.0])  # normalised: 30, 60, 90, 30, 60, 30 of 300
    np.save(weights, w)
    assert main(["assign", str(scores_file), "-k", "6", "-o", str(labels), "--weights",
                 str(weights), "--exact", "--no-progress"]) == 0
    sizes = (300 * w / w.sum()).astype(np.int64)
    np.testing.assert_array_equal(np.bincount(np.load(labels), minlength=6), sizes)
    scores = np.load(scores_file)
    exact = sinklabel.solve_exact(scores, 6, capacities=sizes)
    np.testing.assert_allclose(-scores[np.arange(300), np.load(labels)].sum(), exact.objective,
                               rtol=1e-6)
    capsys.readouterr()
    assert main(["check", str(scores_file), str(labels), "--weights", str(weights)]) == 0
    assert main(["check", str(scores_file), str(labels)]) == 1  # not the uniform sizes
    np.save(weights, w[:5])
    assert main(["check", str(scores_file), str(labels), "--weights", str(weights)]) == 2
    assert "--weights must have shape (6,)" in capsys.readouterr().err


def test_assign_warm_starts_from_saved_potentials(scores_file, tmp_path, capsys):
    """Potentials saved by one run, given back with --init, already meet the tolerance on the
    first pass (the cold run needs several)."""
    potentials = tmp_path / "f.npy"
    argv = ["assign", str(scores_file), "-k", "6", "-o", str(tmp_path / "labels.npy"),
            "--no-progress", "--tol", "1e-6"]
    assert main(argv + ["--potentials", str(potentials)]) == 0
    cold = capsys.readouterr().err
    assert main(argv + ["--init", str(potentials)]) == 0
    warm = capsys.readouterr().err
    assert "iterations        1 (converged)" in warm
    assert "iterations        1 " not in cold


def test_assign_passes_memory_limit_and_cache_to_the_solve(scores_file, tmp_path, monkeypatch):
    pytest.importorskip("numba")
    solves = []

    def recording(*args, **kwargs):
        solves.append(kwargs)
        return sinklabel.sinkhorn(*args, **kwargs)

    monkeypatch.setattr("sinklabel.commands.assign.sinkhorn", recording)
    labels = []
    for extra in ([], ["--memory-limit", "64KiB", "--cache"]):
        out = tmp_path / f"labels{len(labels)}.npy"
        assert main(["assign", str(scores_file), "-k", "6", "-o", str(out), "--no-progress",
                     "--backend", "numba", *extra]) == 0
        labels.append(np.load(out))
    assert solves[1]["memory_limit"] == "64KiB" and solves[1]["cache"] is True
    assert solves[0]["memory_limit"] is None and solves[0]["cache"] is False
    np.testing.assert_array_equal(labels[0], labels[1])


def test_cache_with_a_backend_that_has_none_is_an_error(scores_file, tmp_path, capsys):
    assert main(["assign", str(scores_file), "-k", "6", "-o", str(tmp_path / "l.npy"),
                 "--backend", "numpy", "--cache"]) == 2
    assert "cache" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["lots", "0", "-1GB"])
def test_a_bad_memory_limit_is_refused_by_name_before_any_work(capsys, monkeypatch, value):
    err = _rejected_before_work(["demo", f"--memory-limit={value}"], capsys, monkeypatch)
    assert "argument --memory-limit" in err and repr(value) in err


def test_chunk_size_and_memory_limit_are_refused_together(capsys, monkeypatch):
    err = _rejected_before_work(["demo", "--chunk-size", "100", "--memory-limit", "1GB"],
                                capsys, monkeypatch)
    assert "not allowed with argument --chunk-size" in err


@pytest.mark.parametrize("command, target, hint", [
    ("demo", "sinklabel.commands.demo.make_scores", "use a smaller -n or -k"),
    ("assign", "sinklabel.commands.assign.sinkhorn", "--memory-limit"),
    ("check", "sinklabel.commands.check.check", "--no-exact"),
])
def test_running_out_of_memory_is_exit_2_with_what_to_do(scores_file, tmp_path, capsys,
                                                         monkeypatch, command, target, hint):
    """Not a traceback and exit code 1 (the code of "stopped at --max-iter"): one line with
    NumPy's account of the size needed and the options that need less."""
    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 373. GiB for an array with shape (100000000, "
                          "1000) and data type float32")

    monkeypatch.setattr(target, out_of_memory)
    labels = tmp_path / "labels.npy"
    np.save(labels, np.arange(300) % 6)
    argv = {"demo": ["demo", "-n", "300", "-k", "6"],
            "assign": ["assign", str(scores_file), "-k", "6", "-o", str(tmp_path / "out.npy")],
            "check": ["check", str(scores_file), str(labels)]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sinklabel {command}: error: not enough memory (Unable to allocate "
                          "373. GiB") and hint in err and err.count("\n") == 1


def test_demo_refuses_scores_larger_than_memory_before_generating(capsys, monkeypatch):
    """Generating 1e12 x 1000 scores would fail only after minutes of drawing clusters."""
    monkeypatch.setattr("sinklabel.commands.demo.make_scores", _no_solve)
    assert main(["demo", "-n", str(10**12), "-k", "1000"]) == 2
    err = capsys.readouterr().err
    assert "not enough memory" in err and "need 3.73e+06 GiB" in err
    monkeypatch.setattr("sinklabel.commands.demo.physical_memory", lambda: 2**30)
    assert main(["demo", "-n", "100000", "-k", "10000"]) == 2
    assert "need 3.73 GiB, more than the 1 GiB of memory" in capsys.readouterr().err


def test_generated_scores_fail_on_memory_before_the_clusters_are_drawn(monkeypatch):
    monkeypatch.setattr("sinklabel.datasets.np.random.default_rng", _no_solve)
    with pytest.raises(MemoryError):
        make_scores(10**13, 1000)


def _assign_outputs(scores_file, tmp_path, **paths) -> list[str]:
    """An ``assign`` command line saving labels, potentials and prices in ``tmp_path``, or
    where ``paths`` (by option name without dashes) say."""
    names = {"output": "labels.npy", "potentials": "f.npy", "prices": "v.npy"}
    argv = ["assign", str(scores_file), "-k", "6", "--no-progress"]
    for option, name in names.items():
        argv += [f"--{option}", str(paths.get(option, tmp_path / name))]
    return argv


@pytest.mark.parametrize("option", ["output", "potentials", "prices"])
def test_assign_checks_that_each_output_can_be_created_before_solving(
        scores_file, tmp_path, capsys, monkeypatch, option):
    """/proc's mode lets root write, yet no file can be created there: the save failed after
    the whole solve, leaving the outputs named before it written."""
    if not os.path.isdir("/proc"):
        pytest.skip("needs a folder where no file can be created")
    monkeypatch.setattr("sinklabel.commands.assign.sinkhorn", _no_solve)
    argv = _assign_outputs(scores_file, tmp_path, **{option: "/proc/out.npy"})
    assert main(argv) == 2
    assert "cannot write '/proc/out.npy': no file can be created in '/proc'" in \
        capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["scores.npy"]


def test_assign_checks_that_an_existing_output_is_writable_before_solving(
        scores_file, tmp_path, capsys, monkeypatch):
    """A read-only file (faked: the tests may run as root, whom no mode stops)."""
    monkeypatch.setattr("sinklabel.commands.assign.sinkhorn", _no_solve)
    prices = tmp_path / "v.npy"
    prices.write_bytes(b"old")
    monkeypatch.setattr("sinklabel.commands._options.os.access",
                        lambda path, mode: os.path.abspath(path) != str(prices))
    assert main(_assign_outputs(scores_file, tmp_path)) == 2
    assert f"cannot write {str(prices)!r}: the file is not writable" in capsys.readouterr().err


def test_assign_saves_all_outputs_or_none(scores_file, tmp_path, capsys, monkeypatch):
    """A save failing (a full disk) after the labels were saved left new labels beside old
    potentials; now every output keeps its old content and no temporary file is left."""
    old = tmp_path / "labels.npy"
    np.save(old, np.full(300, 7))
    saves = []

    def full_disk_on_the_second(file, array):
        saves.append(array)
        if len(saves) == 2:
            raise OSError(28, "No space left on device")
        file.write(b"new")

    monkeypatch.setattr("sinklabel.commands._options.np.save", full_disk_on_the_second)
    assert main(_assign_outputs(scores_file, tmp_path)) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["labels.npy", "scores.npy"]
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(old), np.full(300, 7))


def test_assign_saves_through_links_with_the_usual_permissions(scores_file, tmp_path):
    """Outputs are written to temporary files and then moved onto their paths: a link
    still gets the file it points to, and a new file the mode the umask gives."""
    target, link = tmp_path / "target.npy", tmp_path / "link.npy"
    target.write_bytes(b"old")
    link.symlink_to(target)
    assert main(_assign_outputs(scores_file, tmp_path, output=link)) == 0
    assert link.is_symlink() and np.load(target).shape == (300,)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "f.npy").st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_assign_writes_into_a_pipe_instead_of_replacing_it(scores_file, tmp_path):
    """Outputs were moved onto their paths, which replaced a pipe or a device with a regular
    file: as root, ``-o /dev/null`` turned /dev/null itself into a file of labels."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)  # the labels fit in its buffer
    try:
        assert main(_assign_outputs(scores_file, tmp_path, output=pipe)) == 0
        assert stat.S_ISFIFO(os.stat(pipe).st_mode)
        labels = np.load(io.BytesIO(os.read(reader, 1 << 16)))
    finally:
        os.close(reader)
    assert labels.shape == (300,) and np.load(tmp_path / "f.npy").shape == (6,)
    assert sorted(os.listdir(tmp_path)) == ["f.npy", "pipe", "scores.npy", "v.npy"]


def test_a_missing_scores_file_is_named_even_when_the_output_exists(tmp_path, capsys):
    """The check that the output is not the scores file ran first and failed on the missing
    scores with a bare "[Errno 2]"."""
    out = tmp_path / "labels.npy"
    np.save(out, np.zeros(3))
    missing = tmp_path / "missing.npy"
    assert main(["assign", str(missing), "-k", "3", "-o", str(out)]) == 2
    assert f"no such file {str(missing)!r}" in capsys.readouterr().err


def test_assign_help_gives_the_exact_sizes_with_weights(capsys):
    with pytest.raises(SystemExit):
        main(["assign", "--help"])
    assert "floor or ceil of N/K, or of N * weight with --weights" in \
        " ".join(capsys.readouterr().out.split())


def test_a_negative_seed_is_refused_by_name_before_any_work(capsys, monkeypatch):
    err = _rejected_before_work(["demo", "--seed", "-1"], capsys, monkeypatch)
    assert "argument --seed: must be a non-negative integer, got '-1'" in err


@pytest.mark.parametrize("options, match", [
    (["--memory-limit", "1KB"], "--memory-limit 1000 bytes is too small"),
    (["--backend", "numpy", "--cache"], "--cache is an option of the 'numba' backend"),
    (["--lam", "1e39"], "--lam 1e+39 is beyond the largest float32"),
])
def test_demo_refuses_solve_options_before_generating(capsys, monkeypatch, options, match):
    """These were refused by the solve, after seconds of generating 200,000 x 1000 scores."""
    monkeypatch.setattr("sinklabel.commands.demo.make_scores", _no_solve)
    assert main(["demo", *options]) == 2
    assert match in capsys.readouterr().err


def test_demo_refuses_a_budget_without_room_for_the_cache_before_generating(capsys,
                                                                           monkeypatch):
    """5 MB holds the blocks of 100,000 x 100 scores but not one cached entry per row."""
    pytest.importorskip("numba")
    monkeypatch.setattr("sinklabel.commands.demo.make_scores", _no_solve)
    argv = ["demo", "-n", "100000", "-k", "100", "--backend", "numba", "--memory-limit", "5MB"]
    assert main([*argv, "--cache"]) == 2
    assert "for --cache after the chunks and per-point state" in capsys.readouterr().err


def test_warnings_are_lines_in_the_style_of_the_errors(scores_file, tmp_path, capsys):
    """Python's format named the first line outside sinklabel: "<frozen runpy>:88"."""
    argv = ["assign", str(scores_file), "-k", "6", "-o", str(tmp_path / "labels.npy"),
            "--max-iter", "1", "--tol", "1e-9", "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "sinklabel assign: warning: Sinkhorn did not reach --tol 1e-09" in err
    assert "Warning:" not in err


def test_messages_name_the_flags_not_the_library_options(tmp_path, capsys):
    """The library's advice ("Pass balance='exact'", "raise max_iter or tol") named options
    a user of the command line cannot pass."""
    tied = tmp_path / "tied.npy"
    np.save(tied, np.zeros((12, 4), dtype=np.float32))  # identical rows: labels left empty
    out = str(tmp_path / "labels.npy")
    assert main(["assign", str(tied), "-k", "4", "-o", out, "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "labels received no points" in err and "Pass --exact for labels" in err
    assert main(["assign", str(tied), "-k", "12", "-o", out]) == 2
    assert "looks transposed: save the scores transposed" in capsys.readouterr().err
    assert main(["assign", str(tied), "-k", "4", "-o", out, "--memory-limit", "100B"]) == 2
    assert "error: --memory-limit 100 bytes is too small" in capsys.readouterr().err


def test_more_labels_than_points_says_which_option_to_change(tmp_path, capsys):
    """The library's "(solve_exact with capacities allows empty labels)" read, reworded,
    "(sinklabel.solve_exact in Python with capacities allows empty labels)", and check's
    "pass capacities explicitly" named no option of the command."""
    scores = tmp_path / "scores.npy"
    np.save(scores, np.zeros((3, 5), dtype=np.float32))
    out = tmp_path / "labels.npy"
    assert main(["assign", str(scores), "-k", "5", "-o", str(out), "--exact"]) == 2
    assert capsys.readouterr().err == (
        "sinklabel assign: error: --exact needs at least as many points as labels, got N=3 < "
        "K=5: some labels would be empty; leave out --exact to allow empty labels (or, in "
        "Python, give sinklabel.solve_exact capacities that allow them)\n")
    assert not out.exists()
    np.save(out, np.arange(3))
    assert main(["check", str(scores), str(out)]) == 2
    assert capsys.readouterr().err.endswith(
        "would leave labels empty; give the sizes with --capacities\n")


def test_cli_terms_leave_the_formula_and_other_words_alone():
    assert in_cli_terms("its label_weights-weighted mean") == "its label_weights-weighted mean"
    message = ("lam * logp + potentials reach 1e+30; lower lam, raise max_iter or tol "
               "(tolerance), label_weights=w, lam=25, cache=True, balance=\"exact\"")
    assert in_cli_terms(message) == (
        "lam * logp + potentials reach 1e+30; lower --lam, raise --max-iter or --tol "
        "(tolerance), --weights=w, --lam 25, --cache, --exact")


@pytest.mark.parametrize(("message", "in_cli"), [
    ("this solve runs on backend 'numpy'. Pass cache=False, or backend='numba' for NumPy input",
     "this solve runs on backend 'numpy'. Leave out --cache, or pass --backend numba for NumPy "
     "input"),
    ("not installed: pip install 'sinklabel[numba]', or pass cache=False",
     "not installed: pip install 'sinklabel[numba]', or leave out --cache"),
    ("init must have shape (50,), got (40,)", "--init must have shape (50,), got (40,)"),
    ("capacities must sum to N=5000, got 4950", "--capacities must sum to N=5000, got 4950"),
    # a file named as the command names the others ("weights: no such file ...")
    ("capacities: lower[2]=5 exceeds upper[2]=4", "capacities: lower[2]=5 exceeds upper[2]=4"),
    ("init: no such file 'f.npy'", "init: no such file 'f.npy'"),
    ("prices must be finite", "--prices must be finite"),
    ("the prices' spread", "the prices' spread"),
    ("Raise those labels' weights or unmask more rows",
     "Raise those labels' --weights or unmask more rows"),
    ("on its way (see the PrecisionWarning)", "on its way (see the precision warning)"),
    ("expected a result or a 1-D integer label array, got ndarray with shape (3, 2)",
     "the labels file must hold a 1-D integer array, got ndarray with shape (3, 2)"),
    ("logp contains NaN (row 0)", "the scores file contains NaN (row 0)"),
    ("row 7 of logp has no finite score", "row 7 of the scores file has no finite score"),
    ("logp: no such file 'logp.npy'", "scores: no such file 'logp.npy'"),
    ("lam * logp + potentials reach 1e+30", "lam * logp + potentials reach 1e+30"),
])
def test_cli_terms_name_the_flags_and_files_not_the_arguments(message, in_cli):
    """Errors said "init must have shape (50,)", "Pass cache=False" and "logp contains NaN"
    to a user who gave --init, --cache and a scores file."""
    assert in_cli_terms(message) == in_cli


def test_the_demos_scores_are_the_generated_ones_not_a_file():
    """The demo reads no file: its precision advice said "subtract each row's maximum from
    the scores file"."""
    message = "subtract each row's maximum from logp, or lower lam=1e+07"
    assert in_cli_terms(message, "demo") == (
        "subtract each row's maximum from the generated scores, or lower --lam 1e+07")


def test_cli_terms_leave_the_paths_the_user_named(tmp_path, capsys):
    """A path is the user's, not the library's option: 'label_weights.npy' was printed as
    '--weights.npy', and a folder 'tol=0.01' as '--tol 0.01', naming files that do not exist."""
    assert in_cli_terms("no such file 'label_weights.npy'; raise max_iter") == (
        "no such file 'label_weights.npy'; raise --max-iter")
    assert in_cli_terms("the solve's tol=1, \"it's tol.npy\", balance='exact'") == (
        "the solve's --tol 1, \"it's tol.npy\", --exact")
    scores = tmp_path / "scores.npy"
    np.save(scores, np.zeros((6, 3), dtype=np.float32))
    out = str(tmp_path / "labels.npy")
    for argv in (["--weights", "label_weights.npy"], ["--init", str(tmp_path / "tol=0.01")]):
        assert main(["assign", str(scores), "-k", "3", "-o", out, *argv]) == 2
        assert repr(argv[1]) in capsys.readouterr().err
    assert main(["assign", str(scores), "-k", "3", "-o", str(tmp_path / "max_iter" / "x")]) == 2
    assert os.sep + "max_iter" in capsys.readouterr().err


def _interrupted(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("command", ["assign", "check", "demo"])
def test_ctrl_c_is_one_line_and_exit_130_not_a_traceback(scores_file, tmp_path, capsys,
                                                          monkeypatch, command):
    """Ctrl-C mid-solve printed the traceback of whichever Numba kernel was running."""
    monkeypatch.setattr("sinklabel.commands.assign.sinkhorn", _interrupted)
    monkeypatch.setattr("sinklabel.commands.demo.sinkhorn", _interrupted)
    monkeypatch.setattr("sinklabel.commands.check.check", _interrupted)
    labels = tmp_path / "labels.npy"
    argv = {"assign": ["assign", str(scores_file), "-k", "6", "-o", str(labels)],
            "check": ["check", str(scores_file), str(labels)],
            "demo": ["demo", "-n", "100", "-k", "4"]}[command]
    if command == "check":
        np.save(labels, np.arange(300) % 6)
    try:
        code = main([*argv, "--no-progress"] if command != "check" else argv)
    except KeyboardInterrupt:  # let pytest report a failure, not stop the session
        pytest.fail("Ctrl-C escaped main() as a traceback")
    assert code == 130
    err = capsys.readouterr().err
    assert err == f"sinklabel {command}: interrupted\n"
    if command == "assign":
        assert not labels.exists() and list(tmp_path.iterdir()) == [scores_file]


@pytest.mark.parametrize("output, given", [
    ("--potentials", "--weights"), ("-o", "--weights"), ("--prices", "--weights"),
    ("-o", "--init"), ("--prices", "--init"),
])
def test_assign_never_overwrites_its_weights_or_init_file(scores_file, tmp_path, capsys,
                                                          monkeypatch, output, given):
    """Only the scores were protected: --potentials w.npy --weights w.npy replaced the
    caller's weights with the potentials."""
    monkeypatch.setattr("sinklabel.commands.assign.sinkhorn", _no_solve)
    vector = tmp_path / "vector.npy"
    np.save(vector, np.arange(1.0, 7.0))
    paths = {"-o": str(tmp_path / "labels.npy"), output: str(vector), given: str(vector)}
    argv = ["assign", str(scores_file), "-k", "6", "--no-progress"]
    assert main(argv + [arg for pair in paths.items() for arg in pair]) == 2
    what = given.removeprefix("--")
    assert f"{str(vector)!r} is the --{what} file" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(vector), np.arange(1.0, 7.0))


def test_assign_may_update_its_init_potentials_in_place(scores_file, tmp_path):
    potentials = tmp_path / "f.npy"
    np.save(potentials, np.zeros(6))
    assert main(["assign", str(scores_file), "-k", "6", "-o", str(tmp_path / "labels.npy"),
                 "--init", str(potentials), "--potentials", str(potentials),
                 "--no-progress"]) == 0
    assert np.any(np.load(potentials) != 0)


@pytest.mark.parametrize("option", ["-o", "--potentials", "--prices"])
@pytest.mark.parametrize("bad", ["", "newdir/"])
def test_assign_refuses_an_empty_or_folder_output_path_before_solving(
        scores_file, tmp_path, capsys, monkeypatch, option, bad):
    """-o '' solved, then failed to replace the working folder and left its temporary file
    in the folder above; --potentials '' was ignored; -o newdir/ saved a file 'newdir'."""
    monkeypatch.setattr("sinklabel.commands.assign.sinkhorn", _no_solve)
    monkeypatch.chdir(tmp_path)
    paths = {"-o": "labels.npy", option: bad}
    argv = ["assign", str(scores_file), "-k", "6", "--no-progress"]
    assert main(argv + [arg for pair in paths.items() for arg in pair]) == 2
    assert f"cannot write {bad!r}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [scores_file]
    assert not list(tmp_path.parent.glob(f"{tmp_path.name}.*.tmp"))


def test_assign_leaves_no_temporary_file_when_an_output_cannot_replace_its_path(
        scores_file, tmp_path, capsys, monkeypatch):
    def refuse(source, target):
        raise IsADirectoryError(21, "Is a directory")

    monkeypatch.setattr(os, "replace", refuse)
    argv = ["assign", str(scores_file), "-k", "6", "-o", str(tmp_path / "labels.npy"),
            "--potentials", str(tmp_path / "f.npy"), "--no-progress"]
    assert main(argv) == 2
    assert "Is a directory" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [scores_file]


def test_progress_in_a_log_is_lines_not_a_bar(scores_file, tmp_path, monkeypatch):
    """With stderr redirected to a file, tqdm's bar wrote one carriage-return redraw per pass
    (100 KB on one line for 1000 passes); the command line now writes plain lines there, and
    still draws the bar on a terminal."""
    pytest.importorskip("tqdm")
    from sinklabel import progress

    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    bars = []
    real = progress.Progress.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        bars.append(self._bar)

    monkeypatch.setattr(progress.Progress, "__init__", spy)
    argv = ["assign", str(scores_file), "-k", "6", "-o", str(tmp_path / "labels.npy")]
    assert main(argv) == 0
    assert [bar is None for bar in bars] == [True] and "\r" not in log.getvalue()
    assert "sinkhorn: converged after" in log.getvalue()
    monkeypatch.setattr(log, "isatty", lambda: True, raising=False)
    assert main(argv) == 0
    assert bars[1] is not None


class _Writer:
    """A stderr with write and flush only, as some harnesses substitute: no isatty."""

    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_progress_on_a_stderr_without_isatty_is_lines(scores_file, tmp_path, monkeypatch):
    """A stream that cannot say it is a terminal is taken for a log: lines, not a bar."""
    pytest.importorskip("tqdm")
    log = _Writer()
    monkeypatch.setattr(sys, "stderr", log)
    argv = ["assign", str(scores_file), "-k", "6", "-o", str(tmp_path / "labels.npy")]
    assert main(argv) == 0
    assert "sinkhorn: converged after" in log.text and "\r" not in log.text


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
@pytest.mark.parametrize("which", ["scores", "labels"])
def test_a_pipe_given_for_a_npy_file_is_named(scores_file, tmp_path, capsys, which):
    """A named pipe (or /dev/stdin fed by a pipe) failed with '[Errno 29] Illegal seek' or
    'obtaining file position failed', naming neither the file nor what it should hold."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    labels = tmp_path / "labels.npy"
    np.save(labels, np.arange(300) % 6)
    argv = (["check", str(pipe), str(labels)] if which == "scores"
            else ["check", str(scores_file), str(pipe)])
    # Held open for reading and writing (Linux), with the file's bytes in it: opening it
    # again does not block, and NumPy reads what a shell's pipe would give it.
    held = os.open(pipe, os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(held, (scores_file if which == "scores" else labels).read_bytes())
        assert main(argv) == 2
    finally:
        os.close(held)
    assert f"{which}: {str(pipe)!r} is not a regular file" in capsys.readouterr().err


class _ClosedPipe(io.StringIO):
    """stdout whose reader went away (`| head -1`)."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_stdout_pipe_exits_141_silently_not_2(scores_file, tmp_path, capsys,
                                                        monkeypatch):
    """'sinklabel check s.npy l.npy | head -1' printed 'error: [Errno 32] Broken pipe' and
    exited 2, which the table of exit codes gives to bad input."""
    labels = tmp_path / "labels.npy"
    np.save(labels, np.arange(300) % 6)
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["check", str(scores_file), str(labels)]) == 141
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("buffered", [True, False])
def test_a_closed_stdout_pipe_from_the_shell_leaves_no_error_lines(scores_file, tmp_path,
                                                                   buffered):
    """Nor "Exception ignored ... BrokenPipeError" from Python's flush at exit. Buffered (a
    shell's default; PYTHONUNBUFFERED unset) the report waited in the buffer until that
    flush, which failed after main() had returned: exit 120 and those lines."""
    labels = tmp_path / "labels.npy"
    np.save(labels, np.arange(300) % 6)
    read, write = os.pipe()
    os.close(read)  # no reader: the first write fails
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(sinklabel.__file__))}
    env.pop("PYTHONUNBUFFERED", None)
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    try:
        done = subprocess.run([sys.executable, "-m", "sinklabel", "check", str(scores_file),
                               str(labels)], stdout=write, stderr=subprocess.PIPE, text=True,
                              env=env, timeout=300)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, "")
