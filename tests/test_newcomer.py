"""What a first-time user meets: progress lines without tqdm, and each command's help."""

from __future__ import annotations

import sys

import pytest

from sinklabel.cli import main
from sinklabel.progress import Progress


@pytest.fixture
def without_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)


@pytest.mark.usefixtures("without_tqdm")
def test_plain_progress_announces_no_total_before_it_measured_a_rate(capsys):
    """The first line read "iteration 1/1000, ..., about 33 s left" for a solve of 52 passes
    and 1.5 s: until the error has fallen for a few passes the total is only ``max_iter``."""
    bar = Progress(True, total=1000, tol=1e-3)
    bar.update(1, 0.1)
    line = capsys.readouterr().err
    assert line.startswith("sinkhorn: iteration 1, error 1.00e-01, ")
    assert "/1000" not in line and "left" not in line


@pytest.mark.usefixtures("without_tqdm")
def test_plain_progress_gives_the_estimate_once_the_rate_is_known(capsys):
    bar = Progress(True, total=1000, tol=0.5**20)
    bar.history += [0.5**i for i in range(1, 11)]
    bar.update(11, 0.5**11)
    assert capsys.readouterr().err.startswith("sinkhorn: iteration 11/20, error ")


@pytest.mark.parametrize("command", ["demo", "assign", "check"])
def test_command_help_is_plain_text(command, capsys):
    """A command's help is its module docstring: reStructuredText markup showed as is
    ("warm-start the next (``--init``)")."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "``" not in capsys.readouterr().out
