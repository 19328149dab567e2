"""Same scores, same call -> same pseudo-labels: what a training loop may rely on.

Bitwise: repeated solves, fresh processes, thread counts, sources and layouts of the same
data (and numba against CPU tensors of any layout, which run the same kernels). Not bitwise:
other chunk sizes and other backends, whose sums run in another order; labels agree off
near-ties.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import CPU_BACKENDS, requires, run_python, threads, to_host

import sinklabel
from sinklabel.datasets import make_scores
from sinklabel.sources import CallableSource

N, K = 2000, 50
REGIMES = ["flat", "peaked"]
BALANCES = [None, "exact"]


@functools.cache
def _scores(regime: str, dtype: str = "float32") -> np.ndarray:
    """Read-only, so no test can change what the others compare against."""
    scores = make_scores(N, K, regime=regime, seed=1, dtype=np.dtype(dtype).type).scores
    scores.flags.writeable = False
    return scores


def _solve(logp, backend: str, balance: str | None, **options):
    return sinklabel.sinkhorn(logp, K, backend=backend, balance=balance, **options)


def _assert_same_bits(result, reference) -> None:
    np.testing.assert_array_equal(to_host(result.labels), to_host(reference.labels))
    assert result.potentials.tobytes() == reference.potentials.tobytes()
    assert result.n_iter == reference.n_iter
    if reference.prices is not None:
        assert result.prices.tobytes() == reference.prices.tobytes()


_FINGERPRINT = """
import hashlib, numpy as np, sinklabel
from sinklabel.datasets import make_scores
s = make_scores({n}, {k}, regime="peaked", seed=1).scores
r = sinklabel.sinkhorn(s, {k}, backend="numba", balance="exact")
e = sinklabel.solve_exact(s, {k})
print(hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in
      (r.labels, r.potentials, r.prices, e.labels, e.prices))).hexdigest())
"""


@requires("numba")
def test_fresh_processes_on_other_thread_counts_give_the_same_bits():
    """A run restarted (one thread, then two) reproduces the labels, potentials and prices."""
    code = _FINGERPRINT.format(n=N, k=K)
    prints = {run_python(code, env={"NUMBA_NUM_THREADS": str(count)}) for count in (1, 2)}
    assert len(prints) == 1, prints


@pytest.mark.parametrize("backend", ["numba", pytest.param("torch", marks=requires("torch"))])
@pytest.mark.parametrize("balance", BALANCES)
@pytest.mark.parametrize("regime", REGIMES)
@requires("numba")
def test_thread_counts_change_no_bit(backend, balance, regime):
    """numba.set_num_threads and torch.set_num_threads change how fast, not what."""
    logp = _scores(regime)
    if backend == "torch":
        import torch

        logp = torch.from_numpy(logp.copy())
    results = []
    for count in (1, 2):
        with threads("numba", count), threads("torch" if backend == "torch" else "numba", count):
            results.append(_solve(logp, backend, balance))
    _assert_same_bits(*results)


@requires("numba")
@pytest.mark.parametrize("regime", REGIMES)
def test_solve_exact_is_the_same_on_any_thread_count_chunk_size_and_backend(regime):
    """The exact solver's parallel loops, blocks and readers leave no trace in its answer."""
    logp = _scores(regime)
    with threads("numba", 1):
        reference = sinklabel.solve_exact(logp, K)
    runs = [dict(chunk_size=size) for size in (7, 333, None)]
    runs += [dict(backend=name) for name in CPU_BACKENDS]
    for options in runs:
        source = logp
        if options.get("backend") == "torch":
            import torch

            source = torch.from_numpy(logp.copy())
        result = sinklabel.solve_exact(source, K, **options)
        np.testing.assert_array_equal(to_host(result.labels), reference.labels)
        assert result.prices.tobytes() == reference.prices.tobytes()


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=requires("numba"))])
@pytest.mark.parametrize("balance", BALANCES)
@pytest.mark.parametrize("regime", REGIMES)
def test_every_source_of_the_same_scores_gives_the_same_bits(backend, balance, regime, tmp_path):
    """An array, its .npy file (path or memmap), an h5py dataset and a function of it are
    read in the same blocks, so they solve alike; so are zarr, dask and xarray arrays (what
    docs/streaming.md lists), where those libraries are installed."""
    h5py = pytest.importorskip("h5py")
    logp = _scores(regime)
    reference = _solve(logp, backend, balance)
    path = tmp_path / "scores.npy"
    np.save(path, logp)
    with h5py.File(tmp_path / "scores.h5", "w") as f:
        f["logits"] = logp
    with h5py.File(tmp_path / "scores.h5", "r") as f:
        sources = [str(path), np.load(path, mmap_mode="r"), f["logits"],
                   CallableSource(lambda start, stop: logp[start:stop], logp.shape, "float32"),
                   *_chunked_array_libraries(logp, tmp_path)]
        for source in sources:
            _assert_same_bits(_solve(source, backend, balance), reference)


def _chunked_array_libraries(logp: np.ndarray, directory) -> list:
    """The scores as a zarr array on disk, a dask array and an xarray DataArray over it, in
    storage chunks that do not line up with the solve's blocks."""
    found = []
    try:
        import zarr
    except ImportError:
        pass
    else:
        stored = zarr.open_array(str(directory / "scores.zarr"), mode="w", shape=logp.shape,
                                 chunks=(333, K), dtype=logp.dtype)
        stored[:] = logp
        found.append(stored)
    try:
        import dask.array
        import xarray
    except ImportError:
        return found
    lazy = dask.array.from_array(logp, chunks=(700, K))
    return [*found, lazy, xarray.DataArray(lazy, dims=("point", "label"))]


def _layouts(logp: np.ndarray) -> dict[str, np.ndarray]:
    wide = np.zeros((N, 2 * K), logp.dtype)
    wide[:, ::2] = logp
    return {
        "fortran": np.asfortranarray(logp),
        "column_step": wide[:, ::2],
        "wider_rows": np.concatenate([logp, wide[:, :7]], axis=1)[:, :K],
        "writeable": logp.copy(),
    }


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=requires("numba"))])
@pytest.mark.parametrize("balance", BALANCES)
@pytest.mark.parametrize("regime", REGIMES)
def test_array_layout_changes_no_bit(backend, balance, regime, dtype):
    """Fortran order, strided columns, a slice of wider rows and writeability leave the bits
    alone (the NumPy backend once summed Fortran-ordered rows in another order: 3e-4 off)."""
    logp = _scores(regime, dtype)
    reference = _solve(logp, backend, balance)
    for name, layout in _layouts(logp).items():
        np.testing.assert_array_equal(layout, logp, err_msg=name)
        _assert_same_bits(_solve(layout, backend, balance), reference)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=requires("numba"))])
@pytest.mark.parametrize("regime", REGIMES)
def test_chunk_sizes_and_backends_move_potentials_by_rounding_only(backend, regime):
    """Another chunk size or backend sums in another order: the same labels here (no
    near-ties), potentials within a few times the differences docs/backends.md reports
    (1.4e-12 with numba, 2.4e-4 with numpy)."""
    logp = _scores(regime)
    reference = _solve(logp, "numba" if "numba" in sinklabel.available_backends() else "numpy",
                       "exact")
    bound = 1e-3 if backend == "numpy" else 1e-11
    for chunk_size in (1, 7, 333):
        result = _solve(logp, backend, "exact", chunk_size=chunk_size)
        np.testing.assert_array_equal(result.labels, reference.labels)
        np.testing.assert_allclose(result.potentials, reference.potentials, rtol=0, atol=bound)


@requires("torch")
@requires("numba")
@pytest.mark.parametrize("regime", REGIMES)
def test_cpu_tensors_of_any_layout_give_the_numba_bits(regime):
    """A CPU tensor runs the Numba kernels, read in place (C order, rows of a wider tensor)
    or copied block by block (transposed, strided columns): their exact bits. torch's own ops
    once took the latter, with potentials off by float32 rounding (9e-5 on peaked scores)."""
    import torch

    logp = _scores(regime)
    reference = _solve(logp, "numba", "exact")
    wide = torch.zeros((N, 2 * K))
    wide[:, :K] = torch.from_numpy(logp.copy())
    strided = torch.zeros((N, 2 * K))
    strided[:, ::2] = torch.from_numpy(logp.copy())
    for tensor in (torch.from_numpy(logp.copy()), wide[:, :K], strided[:, ::2],
                   torch.from_numpy(logp.copy()).t().contiguous().t()):
        _assert_same_bits(_solve(tensor, "torch", "exact"), reference)
