"""Labels in any NumPy layout are certified on every backend: torch takes neither a reversed
view nor a big-endian array, so the checks hand the kernels a native int64 copy."""

import numpy as np
import pytest

import sinklabel as sl

torch = pytest.importorskip("torch")


LAYOUTS = {
    "reversed view": lambda labels: np.ascontiguousarray(labels[::-1])[::-1],
    "big-endian": lambda labels: labels.astype(">i8"),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_duality_gap_and_check_take_any_label_layout(layout):
    scores = np.random.default_rng(0).standard_normal((40, 4))
    exact = sl.solve_exact(scores, 4)
    labels = LAYOUTS[layout](exact.labels)
    tensor = torch.from_numpy(scores)
    expected = sl.duality_gap(scores, exact.labels, exact.prices)
    assert sl.duality_gap(tensor, labels, exact.prices).gap == pytest.approx(expected.gap, abs=1e-9)
    report = sl.check(labels, tensor)
    assert report.objective == pytest.approx(expected.primal)
    assert report.agreement == 1.0
