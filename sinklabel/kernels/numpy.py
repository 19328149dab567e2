"""The reference NumPy backend: plain vectorised NumPy, chunk-sized temporaries."""

from __future__ import annotations

import numpy as np

from ._base import Array, Kernel, compute_dtype

#: Rows whose normalised exponentials are summed in the compute dtype before they join the
#: float64 label masses: float32 sums over a whole chunk (100,000 rows at K = 10) were off by
#: 1e-5 of the total mass, which the solver then reported as its error.
SUM_ROWS = 256


def _logits(chunk: np.ndarray, f: np.ndarray, lam: float) -> np.ndarray:
    """z = lam * chunk + f in the compute dtype (a fresh array). A score so low that lam
    times it overflows (a mask such as ``finfo(float32).min``) becomes -inf, as the other
    backends make it, without NumPy's overflow warning; +inf was refused before the solve.
    z is C-ordered whatever the chunk's layout: NumPy sums the rows of a Fortran-ordered
    array in another order, which moved float32 potentials by up to 3e-4."""
    dtype = compute_dtype(chunk.dtype)
    with np.errstate(over="ignore"):
        z = np.multiply(chunk, dtype.type(lam), dtype=dtype, order="C")
        z += f.astype(dtype)
    return z


def _shifted_logits(chunk: np.ndarray, f: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """z - max(z) per row (a fresh array) and the row maxima, with z = lam * chunk + f."""
    z = _logits(chunk, f, lam)
    zmax = z.max(axis=1)
    z -= zmax[:, None]
    return z, zmax


def _label_mass(p: np.ndarray, row_sums: np.ndarray) -> np.ndarray:
    """Column sums of ``p / row_sums[:, None]`` in float64, in blocks of ``SUM_ROWS`` rows
    (one matrix-vector product each, no float64 copy of ``p``)."""
    weights = (1.0 / row_sums).astype(p.dtype)
    mass = np.zeros(p.shape[1])
    for start in range(0, p.shape[0], SUM_ROWS):
        mass += weights[start:start + SUM_ROWS] @ p[start:start + SUM_ROWS]
    return mass


class NumpyKernel(Kernel):
    name = "numpy"
    libraries = ("numpy",)

    def sweep_lse(self, chunk: np.ndarray, f: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
        p, zmax = _shifted_logits(chunk, f, lam)
        np.exp(p, out=p)
        row_sums = p.sum(axis=1, dtype=np.float64)
        # Normalising the rows is a weighted column sum: matrix-vector products.
        mass = _label_mass(p, row_sums)
        return mass, float((zmax.astype(np.float64) + np.log(row_sums)).sum())

    def best(self, chunk: np.ndarray, f: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
        z = _logits(chunk, f, lam)
        labels = z.argmax(axis=1)
        return np.take_along_axis(z, labels[:, None], axis=1)[:, 0], labels.astype(np.int64)

    def slack(self, chunk: np.ndarray, f: np.ndarray, lam: float) -> np.ndarray:
        z, _ = _shifted_logits(chunk, f, lam)
        return z.max(axis=0).astype(np.float64)

    def soft(self, chunk: np.ndarray, f: np.ndarray, lam: float) -> np.ndarray:
        p, _ = _shifted_logits(chunk, f, lam)
        np.exp(p, out=p)
        p /= p.sum(axis=1, keepdims=True)
        return p

    def gather(self, chunk: np.ndarray, labels: np.ndarray) -> np.ndarray:
        rows = np.take_along_axis(chunk, labels[:, None].astype(np.intp), axis=1)[:, 0]
        return rows.astype(np.float64)

    def to_numpy(self, x: Array) -> np.ndarray:
        return np.asarray(x)

    def empty_labels(self, n: int, like: np.ndarray | None) -> np.ndarray:
        return np.empty(n, dtype=np.int64)

    def empty_rows(self, n: int, like: np.ndarray) -> np.ndarray:
        return np.empty((n, *like.shape[1:]), dtype=like.dtype)
