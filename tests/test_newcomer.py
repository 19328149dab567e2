"""What a first-time user meets: progress lines without tqdm, and each command's help."""

from __future__ import annotations

import io
import sys
import types

import pytest

from sinklabel import progress
from sinklabel.cli import main
from sinklabel.progress import Progress


@pytest.fixture
def without_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)


@pytest.mark.usefixtures("without_tqdm")
@pytest.mark.parametrize(("tol", "history", "error", "shown"), [
    # "iteration 1/1000, ..., about 33 s left" opened a solve of 52 passes and 1.5 s: until
    # the error has fallen for a few passes the total is only max_iter.
    (1e-3, [], 0.1, "sinkhorn: iteration 1, error 1.00e-01, "),
    # "iteration 7/1000, ..., about 426 s left" opened a demo of 61 passes: a rate was
    # measured, but so slow that the estimate was max_iter itself.
    (1e-12, [1.0 - 0.001 * i for i in range(1, 11)], 0.98, "sinkhorn: iteration 11, error "),
])
def test_plain_progress_announces_no_total_while_it_is_only_max_iter(tol, history, error, shown,
                                                                   capsys):
    bar = Progress(True, total=1000, tol=tol)
    bar.history += history
    bar.update(len(history) + 1, error)
    line = capsys.readouterr().err
    assert line.startswith(shown)
    assert "/1000" not in line and "left" not in line


@pytest.mark.usefixtures("without_tqdm")
def test_plain_progress_gives_the_estimate_once_the_rate_is_known(capsys):
    bar = Progress(True, total=1000, tol=0.5**20)
    bar.history += [0.5**i for i in range(1, 11)]
    bar.update(11, 0.5**11)
    assert capsys.readouterr().err.startswith("sinkhorn: iteration 11/20, error ")


@pytest.mark.usefixtures("without_tqdm")
def test_plain_progress_shows_the_best_error_not_an_overshooting_trial(capsys):
    """The solver returns the best point it saw; a line search's trial step that overshoots
    (6.8e-2, then 1.56) is not where the solve stands."""
    bar = Progress(True, total=1000, tol=1e-3)
    bar.history += [0.5, 0.068]
    bar.update(3, 1.56)
    assert ", error 6.80e-02, " in capsys.readouterr().err


def test_the_bar_shows_the_best_error_so_far(monkeypatch: pytest.MonkeyPatch):
    """With tqdm, the bar's postfix is the best error as well."""
    tqdm = pytest.importorskip("tqdm")
    assert tqdm is not None
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # a terminal
    bar = Progress(True, total=1000, tol=1e-3)
    try:
        postfixes = []
        monkeypatch.setattr(bar._bar, "set_postfix",
                            lambda refresh=True, **values: postfixes.append(values))
        for iteration, error in enumerate((0.5, 0.068, 1.56), start=1):
            bar.update(iteration, error)
    finally:
        bar.close()
    assert [p["error"] for p in postfixes] == ["5.00e-01", "6.80e-02", "6.80e-02"]


def test_the_library_draws_lines_in_a_log_and_the_bar_on_a_terminal_or_in_a_notebook(
        monkeypatch: pytest.MonkeyPatch):
    """A training script run as ``python train.py > log 2>&1`` got tqdm's redraws, a
    carriage return per pass on one line, and no line saying how the solve ended (the bar
    closes without leaving one): the command line wrote plain lines there, the library did
    not. A notebook's widget is no terminal, and keeps its bar."""
    tqdm_auto = pytest.importorskip("tqdm.auto")
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    bar = Progress(True, total=1000, tol=0.25)
    assert bar._bar is None
    bar.update(1, 0.5)
    bar.update(2, 0.125)
    bar.close()
    assert "\r" not in log.getvalue()
    assert log.getvalue().splitlines()[-1].startswith("sinkhorn: converged after 2 iterations")
    monkeypatch.setattr(log, "isatty", lambda: True, raising=False)
    bar = Progress(True, total=1000, tol=0.25)
    try:
        assert isinstance(bar._bar, tqdm_auto.tqdm)
    finally:
        bar.close()
    monkeypatch.setattr(log, "isatty", lambda: False, raising=False)
    widget = type("tqdm_notebook", (), {"__module__": "tqdm.notebook"})
    drawn = []
    notebook = type("tqdm", (widget,), {"__init__": lambda self, **kw: drawn.append(kw)})
    monkeypatch.setattr(tqdm_auto, "tqdm", notebook)
    assert isinstance(Progress(True, total=1000, tol=0.25)._bar, notebook) and drawn


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The progress module's clock, set by the test: ``clock[0]`` seconds."""
    now = [100.0]
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    return now


@pytest.mark.usefixtures("without_tqdm")
def test_plain_progress_lines_come_once_a_second_with_their_times(clock, capsys):
    """At most a line a second, each with the time since the start and, once the rate is
    known, the time left at this pace; the closing line says how the solve ended."""
    bar = Progress(True, total=1000, tol=1.5 * 0.5**20)
    for clock[0], iteration in ((100.5, 1), (101.2, 2), (101.6, 3)):
        bar.update(iteration, 0.5**iteration)
    clock[0] = 103.0
    bar.close()
    assert capsys.readouterr().err.splitlines() == [
        "sinkhorn: iteration 1, error 5.00e-01, 0.5 s",
        # 16.4 more halvings to the tolerance (17 passes), at 1.6 s / 3 passes: 9.07 s
        "sinkhorn: iteration 3/20, error 1.25e-01, 1.6 s, about 9 s left",
        "sinkhorn: stopped after 3 iterations, error 1.25e-01, 3.0 s",
    ]


@pytest.mark.usefixtures("without_tqdm")
def test_plain_progress_lines_a_second_apart_are_both_shown(clock, capsys):
    """"At most a line a second" lets one through exactly a second after the last."""
    bar = Progress(True, total=1000, tol=None)
    for clock[0], iteration in ((101.0, 1), (102.0, 2), (102.5, 3), (103.0, 4)):
        bar.update(iteration, 0.5)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "sinkhorn: iteration 1", "sinkhorn: iteration 2", "sinkhorn: iteration 4"]


@pytest.mark.usefixtures("without_tqdm")
@pytest.mark.parametrize(("tol", "ended"), [(0.125, "converged"), (0.124, "stopped"),
                                             (None, "stopped")])
def test_plain_progress_ends_converged_only_at_the_tolerance(tol, ended, clock, capsys):
    bar = Progress(True, total=1000, tol=tol)
    for iteration, error in enumerate((0.5, 0.125, 0.25), start=1):
        bar.update(iteration, error)
    bar.close()
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == f"sinkhorn: {ended} after 3 iterations, error 1.25e-01, 0.0 s"


@pytest.mark.parametrize("command", ["demo", "assign", "check"])
def test_command_help_is_plain_text(command, capsys):
    """A command's help is its module docstring: reStructuredText markup showed as is
    ("warm-start the next (``--init``)")."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "``" not in capsys.readouterr().out
