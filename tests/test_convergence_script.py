"""benchmarks/convergence.py reports a method capped by --max-iter as "> cap", never as a
pass count that reads like convergence."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import convergence
from sinklabel.datasets import make_scores


@pytest.mark.parametrize("name", list(convergence.METHODS))
def test_methods_return_passes_only_when_they_reach_the_tolerance(name):
    scores = make_scores(2000, 20, regime="peaked", seed=0).scores
    method = convergence.METHODS[name]
    assert method(scores, 3) is None  # no method reaches 1e-3 on peaked scores in 3 passes
    passes = method(make_scores(2000, 20, regime="flat", seed=0).scores, 3000)
    assert passes is not None and 1 <= passes <= 3000


def test_the_table_writes_a_capped_method_as_beyond_the_cap(monkeypatch, capsys):
    monkeypatch.setattr(convergence, "METHODS", {"capped": lambda s, m: None,
                                                 "converged": lambda s, m: 7})
    monkeypatch.setattr(convergence, "make_scores", lambda n, k, **kw: _Scores())
    monkeypatch.setattr(convergence, "warm_start", lambda *args, **kwargs: "")
    convergence.main(["--max-iter", "40"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| flat")]
    assert rows and all(line.endswith("| > 40 | 7 |") for line in rows)


class _Scores:
    scores = np.zeros((4, 2), dtype=np.float32)


def test_the_lam_study_reports_passes_warnings_and_caps(monkeypatch, capsys):
    """Each regime, dtype and lam gets a row; a solve capped short of the tolerance reads as
    beyond the cap, and only float32 at a large lam is said to lose precision."""
    monkeypatch.setattr(convergence, "LAMS", (25.0, 1e6))
    monkeypatch.setattr(convergence, "lam_study", _small(convergence.lam_study))
    convergence.main(["--lam-study", "--max-iter", "60"])
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()
            if line.startswith(("| flat", "| peaked"))]
    assert [(row[0], row[1], row[2]) for row in rows] == [
        (f"| {regime}", dtype, lam) for regime in ("flat", "peaked")
        for dtype in ("float32", "float64") for lam in ("25", "1e+06")]
    warned = {(row[0], row[1], row[2]): row[4] for row in rows}
    assert warned[("| flat", "float32", "1e+06")] == "yes |"
    assert warned[("| flat", "float64", "1e+06")] == "no |"
    assert warned[("| flat", "float32", "25")] == "no |"
    passes = [row[3] for row in rows]
    assert "> 60" in passes  # peaked scores need more than 60 passes at lam = 1e6
    assert all(p == "> 60" or 1 <= int(p) <= 60 for p in passes)


def _small(study):
    """The study at N = 2000 and K = 20, which keeps the test under a few seconds."""
    return lambda n, k, regime, seed, max_iter: study(2000, 20, regime, seed, max_iter)



def test_the_lam_change_study_reports_each_change_and_scaled_starts_win(monkeypatch, capsys):
    """Every regime and change of lam gets a row; on peaked scores the scaled start of
    partial_fit needs fewer passes than the last potentials as they were."""
    study = convergence.lam_change
    monkeypatch.setattr(convergence, "lam_change",
                        lambda n, k, regime, seed, sigma: study(2000, 20, regime, seed, sigma))
    convergence.main(["--lam-change"])
    rows = [line.strip("| ").split(" | ") for line in capsys.readouterr().out.splitlines()
            if line.startswith(("| flat", "| peaked"))]
    changes = [(f"{a:g}", f"{b:g}") for a, b in convergence.LAM_CHANGES]
    assert [tuple(row[:3]) for row in rows] == [
        (regime, *change) for regime in ("flat", "peaked") for change in changes]
    for regime, _, _, *passes in rows:
        cold, kept, scaled = map(int, passes)
        assert min(cold, kept, scaled) >= 1
        if regime == "peaked":
            assert scaled < kept
