"""The reference NumPy backend: plain vectorised NumPy, chunk-sized temporaries."""

from __future__ import annotations

import numpy as np

from ._base import Array, Kernel, compute_dtype


def _logits(chunk: np.ndarray, f: np.ndarray, lam: float) -> np.ndarray:
    """z = lam * chunk + f in the compute dtype (a fresh array). A score so low that lam
    times it overflows (a mask such as ``finfo(float32).min``) becomes -inf, as the other
    backends make it, without NumPy's overflow warning; +inf was refused before the solve."""
    dtype = compute_dtype(chunk.dtype)
    with np.errstate(over="ignore"):
        z = np.multiply(chunk, dtype.type(lam), dtype=dtype)
        z += f.astype(dtype)
    return z


def _shifted_logits(chunk: np.ndarray, f: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """z - max(z) per row (a fresh array) and the row maxima, with z = lam * chunk + f."""
    z = _logits(chunk, f, lam)
    zmax = z.max(axis=1)
    z -= zmax[:, None]
    return z, zmax


class NumpyKernel(Kernel):
    name = "numpy"
    libraries = ("numpy",)

    def sweep(self, chunk: np.ndarray, f: np.ndarray, lam: float) -> np.ndarray:
        p, _ = _shifted_logits(chunk, f, lam)
        np.exp(p, out=p)
        # Normalising the rows is a weighted column sum: one matrix-vector product.
        return ((1.0 / p.sum(axis=1)) @ p).astype(np.float64)

    def sweep_lse(self, chunk: np.ndarray, f: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
        p, zmax = _shifted_logits(chunk, f, lam)
        np.exp(p, out=p)
        row_sums = p.sum(axis=1, dtype=np.float64)
        mass = ((1.0 / row_sums).astype(p.dtype) @ p).astype(np.float64)
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

    def concat(self, parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts)
