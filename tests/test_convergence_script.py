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
