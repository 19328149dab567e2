"""The command line, called through ``main(argv)`` as a user would type it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sinklabel.cli import main
from sinklabel.datasets import make_scores


def test_demo_runs_and_summarises(capsys):
    assert main(["demo", "-n", "3000", "-k", "30", "--regime", "flat", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "converged" in out and "label sizes" in out


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
    assert "transposed" in capsys.readouterr().err


def test_missing_file_is_an_error(tmp_path, capsys):
    assert main(["assign", str(tmp_path / "nope.npy"), "-k", "3", "-o", "x.npy"]) == 2
    assert "error" in capsys.readouterr().err


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
