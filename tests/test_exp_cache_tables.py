"""The tables of ``cache=True`` (``sinklabel/kernels/_exp_cache.py``) against plain float64
computations written here: what a table keeps, its bounds, and which rows a pass answers.

The module notes define a table built at potentials ``b``: ``z = lam * S + b`` in float64,
``K_i = {j : z_ij >= top_i - w_i}``, ``floor_i = exp(shift + T - gap_i)`` with ``gap_i`` the
distance from ``top_i`` to the largest dropped ``z``, and a row answered ("good") exactly when
its largest kept term ``E_ij w_j`` reaches ``floor_i``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("numba")

from sinklabel.datasets import make_scores  # noqa: E402
from sinklabel.kernels import _exp_cache as tables_module  # noqa: E402
from sinklabel.kernels import get_kernel  # noqa: E402

NUMBA = get_kernel("numba")


def _tables():
    return tables_module.NumbaExpTables(NUMBA)


def _rows(table):
    """Per row: its labels and values, as slices of the table's entries."""
    o = table.offsets
    return [(table.labels[o[i]:o[i + 1]], table.values[o[i]:o[i + 1]]) for i in range(o.size - 1)]


def test_label_and_roundoff_constants_follow_the_module_notes():
    """uint16 labels up to K = 65535 (6 bytes per float32 entry), and
    ``T = ln K + ln(1/u)`` with u = 2**-24 (float32), 2**-53 (float64)."""
    assert tables_module.label_dtype(65535) == np.uint16
    assert tables_module.label_dtype(65536) == np.uint32
    assert tables_module.entry_bytes(65535, "float32") == 6
    for dtype, bits in ((np.float32, 24), (np.float64, 53)):
        expected = math.log(1000) + bits * math.log(2)
        assert tables_module.tolerance(1000, np.dtype(dtype)) == pytest.approx(expected, rel=1e-15)


def _expected_row(z: np.ndarray, window: float, cap: int):
    """The module notes' kept set and gap of one row: the window halved (up to 8 times) until
    at most ``cap`` entries remain; ``None`` for a row still too full (kept empty)."""
    top = z.max()
    width = window
    for _ in range(8):
        if np.count_nonzero(z >= top - width) <= cap:
            break
        width *= 0.5
    kept = z >= top - width
    if np.count_nonzero(kept) > cap:
        return None
    return np.flatnonzero(kept), top - z[~kept].max() if (~kept).any() else np.inf


@pytest.mark.parametrize("cap", [37, 12, 2])
def test_a_table_keeps_exactly_the_window_and_its_floor_is_the_gap(cap):
    """Rows with entries exactly at the cut ``top - w`` (kept) and just below it (dropped),
    in the vector blocks and in the tail after the last whole block of 8 (K = 37). Row 0
    holds 3 entries down to the cut, so a cap of 2 halves its window once; row 1's largest
    dropped entry lies 1 below the cut."""
    k = 37
    tol = tables_module.tolerance(k, np.dtype(np.float64))
    window = min(700.0, tol + max(tol, 0.0))  # a first build: need = 0
    rng = np.random.default_rng(3)
    scores = -rng.uniform(0.0, 2 * window, size=(6, k))
    scores[:2] = -window - 1.0 - rng.uniform(0.0, window, size=(2, k))
    scores[:, 0] = 0.0  # the row maximum (lam = 1, f = 0: z = S exactly)
    scores[0, 7] = -window / 4
    scores[0, 3] = -window  # at the cut
    scores[1:, [3, 35]] = -window  # at the cut
    scores[2:, [4, 36]] = np.nextafter(-window, -np.inf)  # just below
    scores[1, 20] = -window - 1.0
    table = _tables().build(scores, np.zeros(k), 1.0, 0.0, cap=cap)
    rows = _rows(table)
    for i, z in enumerate(scores):
        labels, values = rows[i]
        expected = _expected_row(z, window, cap)
        assert table.top[i] == z.max()
        if expected is None:
            assert labels.size == 0 and table.floor[i] == np.inf
            continue
        kept, gap = expected
        np.testing.assert_array_equal(labels, kept)
        np.testing.assert_allclose(values, np.exp(z[kept] - z.max()), rtol=1e-14)
        assert table.floor[i] == pytest.approx(math.exp(tol - gap), rel=1e-12, abs=0.0)


@pytest.mark.parametrize("task_entries", [40, None], ids=["tasks", "one task"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("regime", ["flat", "peaked"])
def test_a_pass_answers_exactly_the_rows_whose_largest_term_reaches_the_floor(
        dtype, regime, task_entries, monkeypatch):
    """``sweep_lse`` and ``best`` at potentials moved away from the build's: the rows listed
    bad are exactly those failing the test, and the good rows' masses, log-sum-exp, maxima and
    labels are the float64 formula's; ``need`` is how far the potentials moved, over the rows
    that keep entries, in a table passed as one task or as many (``task_entries``)."""
    if task_entries is not None:
        monkeypatch.setattr(tables_module, "_TASK_ENTRIES", task_entries)
    n, k, lam = 300, 40, 25.0
    scores = make_scores(n, k, regime=regime, seed=7, dtype=dtype).scores
    scores[::25] = -1.0  # tied in every label: beyond the cap, kept empty, always bad
    rng = np.random.default_rng(1)
    b = 0.01 * rng.normal(size=k)  # within the 8th halving of the window: tied rows stay tied
    table = _tables().build(scores, b, lam, 0.0, cap=8)
    assert table.n_entries == table.offsets[-1] <= 8 * n
    shift = table.shift
    assert np.flatnonzero(np.isinf(table.floor)).tolist() == list(range(0, n, 25))
    for step in (0.0, 0.5, 3.0, 30.0):
        f = b + step * rng.normal(size=k)
        z = lam * scores.astype(np.float64) + f
        g = f - b
        w = np.exp(g - g.max())
        largest = np.zeros(n)
        for i, (labels, values) in enumerate(_rows(table)):
            if labels.size:
                largest[i] = (values.astype(np.float64) * w[labels]).max()
        bad_expected = np.flatnonzero(~((largest >= table.floor) & (largest >= 1e-250)))
        result = table.sweep_lse(f)
        np.testing.assert_array_equal(np.sort(result.bad), bad_expected)
        good = np.setdiff1d(np.arange(n), bad_expected)
        zg = z[good]
        top = zg.max(axis=1, keepdims=True)
        p = np.exp(zg - top)
        lse = (top[:, 0] + np.log(p.sum(axis=1))).sum()
        mass = (p / p.sum(axis=1, keepdims=True)).sum(axis=0)
        rtol = 1e-5 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(result.mass, mass, rtol=rtol, atol=1e-9)
        assert result.lse == pytest.approx(lse, rel=rtol, abs=1e-6)
        kept = np.isfinite(table.floor)
        smallest = largest[kept].min() if kept.any() else np.inf
        assert result.need == pytest.approx(shift - math.log(smallest), rel=1e-9)
        best, labels, bad = table.best(f)
        np.testing.assert_array_equal(np.sort(bad), bad_expected)
        np.testing.assert_allclose(best[good], zg.max(axis=1), rtol=1e-6 if dtype == np.float32
                                   else 1e-12)
        np.testing.assert_array_equal(labels[good], zg.argmax(axis=1))


def _layouts(scores: np.ndarray) -> dict[str, np.ndarray]:
    """The same scores stored in layouts the kernels cannot walk, or in another byte order."""
    doubled = np.repeat(scores, 2, axis=1)
    return {"fortran": np.asfortranarray(scores), "column-strided": doubled[:, ::2],
            "big-endian": scores.astype(scores.dtype.newbyteorder(">"))}


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_tables_and_repairs_of_any_layout_are_those_of_its_rows(dtype):
    """Tables are built from each task's rows copied where the kernels cannot read them, and
    repairs copy only the listed rows: the tables, the repaired masses and the repaired labels
    are the bits of the same scores stored by rows. 3000 labels: several tasks, several rows
    each; 3 copies' worth of listed rows, unsorted gaps between them."""
    scores = make_scores(200, 3000, regime="peaked", seed=5)[0].astype(dtype)
    f = np.random.default_rng(5).normal(scale=0.5, size=3000)
    listed = np.array([0, 3, 4, 57, 58, 120, 199])
    reference = _tables().build(scores, f, 25.0, need=3.0, cap=64)
    mass, lse = _tables().sweep_rows(scores, listed, f, 25.0)
    top, labels = np.full(200, -7.0, np.float32), np.full(200, -7)
    _tables().best_rows(scores, listed, f, 25.0, top, labels)
    for name, chunk in _layouts(scores).items():
        table = _tables().build(chunk, f, 25.0, need=3.0, cap=64)
        for part in ("values", "labels", "offsets", "top", "floor", "f"):
            assert np.array_equal(getattr(table, part), getattr(reference, part)), (name, part)
        got_mass, got_lse = _tables().sweep_rows(chunk, listed, f, 25.0)
        assert np.array_equal(got_mass, mass) and got_lse == lse, name
        got_top, got_labels = np.full(200, -7.0, np.float32), np.full(200, -7)
        _tables().best_rows(chunk, listed, f, 25.0, got_top, got_labels)
        assert np.array_equal(got_top, top) and np.array_equal(got_labels, labels), name
    assert np.all(labels[listed] >= 0) and np.all(np.delete(labels, listed) == -7)
