"""sinklabel called from a torch.compile'd function (a compiled training step) runs eagerly:
dynamo traced into the solver's NumPy and Numba code and failed there."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

import sinklabel
from sinklabel.datasets import make_scores

torch = pytest.importorskip("torch")

K = 12


@pytest.fixture(scope="module")
def scores():
    return torch.from_numpy(make_scores(600, K, regime="peaked", seed=4).scores)


def _entry_points(scores) -> dict:
    """Each public call a training step may make, as a function of the step's scores."""
    result = sinklabel.sinkhorn(scores, K)
    exact = sinklabel.solve_exact(scores, K)
    labeler = sinklabel.SinkhornLabeler(K).fit(scores)
    return {
        "assign_labels": lambda x: sinklabel.assign_labels(x, K),
        "sinkhorn": lambda x: sinklabel.sinkhorn(x, K).potentials,
        "balance='exact'": lambda x: sinklabel.assign_labels(x, K, balance="exact"),
        "sinkhorn_heads": lambda x: sinklabel.sinkhorn_heads(x, [K])[0].labels,
        "solve_exact": lambda x: sinklabel.solve_exact(x, K).labels,
        "duality_gap": lambda x: sinklabel.duality_gap(x, exact.labels, exact.prices).gap,
        "check": lambda x: sinklabel.check(exact.labels, x).optimal,
        "predict": result.predict,
        "soft_assignments": result.soft_assignments,
        "SinkhornLabeler.fit_predict": lambda x: sinklabel.SinkhornLabeler(K).fit_predict(x),
        "SinkhornLabeler.partial_fit": lambda x: labeler.partial_fit(x).labels_,
        "SinkhornLabeler.predict": labeler.predict,
    }


NAMES = ["assign_labels", "sinkhorn", "balance='exact'", "sinkhorn_heads", "solve_exact",
         "duality_gap", "check", "predict", "soft_assignments", "SinkhornLabeler.fit_predict",
         "SinkhornLabeler.partial_fit", "SinkhornLabeler.predict"]


def test_every_entry_point_is_tried(scores):
    assert sorted(_entry_points(scores)) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_a_compiled_step_calls_sinklabel_as_plain_python(scores, name):
    call = _entry_points(scores)[name]
    expected = call(scores)

    def step(x):
        return call(x * 2.0 / 2.0)  # traced torch work on either side of the call

    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning of dynamo's about what it traced
        # dynamo's own advice on Python 3.13.0, whatever it traces
        warnings.filterwarnings("ignore", "Guards may run slower on Python 3.13.0")
        got = torch.compile(step, backend="eager")(scores)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_outside_torch_compile_torch_is_not_imported():
    """The check looks torch up in sys.modules; a NumPy user never imports it."""
    import subprocess

    code = ("import numpy as np, sys, sinklabel; "
            "sinklabel.assign_labels(np.zeros((8, 2)), 2, backend='numpy'); "
            "sinklabel.solve_exact(np.zeros((8, 2)), 2); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
