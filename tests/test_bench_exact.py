"""benchmarks/bench_exact.py times each solver's solve alike: no one-off start-up inside."""

from __future__ import annotations

import re
import sys
import types

import numpy as np
import pytest

import sinklabel
from benchmarks import bench_exact

#: Virtual seconds a peer's first call costs on top of its solve (POT imports its backends,
#: torch among them, on ``import ot``: about 5 s here).
FIRST_CALL = 100.0


class VirtualClock:
    """Stands in for the ``time`` module of bench_exact: every reading moves it on by a
    millisecond (so nothing takes 0 s), the fake peer's first call by FIRST_CALL."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1e-3
        return self.now


def fake_pot(clock: VirtualClock) -> types.ModuleType:
    """``ot.emd`` returning the optimal plan, slow on its first call only."""
    module = types.ModuleType("ot")
    calls = []

    def emd(a, b, M, numItermax):
        if not calls:
            clock.now += FIRST_CALL
        calls.append(M.shape)
        labels = np.asarray(sinklabel.solve_exact(-M, M.shape[1]).labels)
        plan = np.zeros(M.shape)
        plan[np.arange(M.shape[0]), labels] = 1.0 / M.shape[0]
        return plan

    module.emd = emd
    return module


@pytest.fixture
def quick_without_highs(monkeypatch):
    """--quick, with HiGHS (a minute at its size here) replaced by the default solver."""
    solve_exact = sinklabel.solve_exact

    def no_highs(S, K, method=None, **options):
        return solve_exact(S, K, **options)

    monkeypatch.setattr(sinklabel, "solve_exact", no_highs)


@pytest.mark.filterwarnings("ignore::sinklabel.ConvergenceWarning")
def test_peer_first_call_is_not_timed(monkeypatch, capsys, quick_without_highs):
    clock = VirtualClock()
    monkeypatch.setattr(bench_exact, "time", clock)
    monkeypatch.setitem(sys.modules, "ot", fake_pot(clock))
    assert bench_exact.main(["--quick"]) == 0
    out = capsys.readouterr().out
    emd = re.search(r"ot\.emd +([0-9.]+) s \(objective diff ([0-9.e+-]+)\)", out)
    assert emd, out
    assert float(emd[1]) < 1.0  # the solve only, as for sinklabel's (warmed-up) solvers
    assert float(emd[2]) < 1e-9


def test_missing_pot_is_named_before_any_work(monkeypatch, quick_without_highs):
    monkeypatch.setitem(sys.modules, "ot", None)  # import ot raises ImportError
    monkeypatch.setattr(bench_exact, "case", lambda *args, **kwargs: pytest.fail("ran"))
    with pytest.raises(SystemExit, match="POT"):
        bench_exact.main(["--quick"])
