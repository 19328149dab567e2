"""``cache=True`` for CPU tensors: the Numba backend's tables on a NumPy view of the tensor.

The torch backend computes CPU tensors with the Numba kernels on a view of their memory
(float64, float32, float16, and bfloat16 as its bits), in the Numba backend's own chunks. Its
tables are the Numba backend's on the same views, in chunks of the same size, so a cached
solve of a CPU tensor gives the bits of a cached ``backend="numba"`` solve of the same array;
only the labels and row maxima come back as tensors (views of the tables' results). CUDA
tensors are refused: their passes read the scores at memory speed, with no tables to keep.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import refuse_off_the_cpu
from ._exp_cache import ExpTable, NumbaExpTables, TablePass
from .torch import TorchKernel, _from_numpy, _readable

if TYPE_CHECKING:
    import torch


class TorchCpuExpTables:
    """Builds tables of CPU tensors' chunks with :class:`NumbaExpTables` (``cache=True``)."""

    max_bytes = staticmethod(NumbaExpTables.max_bytes)

    def __init__(self, kernel: TorchKernel):
        self._kernel = kernel
        self._tables = NumbaExpTables(kernel._numba)

    def chunk_rows(self, n_labels: int, itemsize: int) -> int:
        """The Numba backend's chunks (the torch backend's are all rows): each chunk's table
        is rebuilt or kept on its own, as for NumPy input."""
        return self._kernel._numba.chunk_rows(n_labels, itemsize)

    def build(self, block: torch.Tensor, f: np.ndarray, lam: float, need: float,
              cap: int) -> TensorTable:
        return TensorTable(self._tables.build(self._view(block), f, lam, need, cap))

    def sweep_rows(self, block: torch.Tensor, rows: np.ndarray, f: np.ndarray,
                   lam: float) -> tuple[np.ndarray, float]:
        return self._tables.sweep_rows(self._view(block), rows, f, lam)

    def best_rows(self, block: torch.Tensor, rows: np.ndarray, f: np.ndarray, lam: float,
                  top: torch.Tensor, labels: torch.Tensor) -> None:
        """Written into ``top`` and ``labels``, views of a table's arrays."""
        self._tables.best_rows(self._view(block), rows, f, lam, top.numpy(), labels.numpy())

    def _view(self, block: torch.Tensor) -> np.ndarray:
        """The NumPy view the torch backend's Numba route reads; for a negated view (memory
        holding -x, which that route does not take) a copy of its values."""
        x = _readable(block)
        refuse_off_the_cpu(x)  # a function's blocks, which no device was known for
        view = self._kernel._numba_view(x)
        if view is None:
            view = self._kernel._numba_view(x.resolve_neg())
        assert view is not None  # a CPU tensor of float scores, and Numba installed
        return view


class TensorTable:
    """A Numba table whose row maxima and labels come back as tensors (sharing its arrays)."""

    def __init__(self, table: ExpTable):
        self._table = table
        self.lam = table.lam

    @property
    def n_entries(self) -> int:
        return self._table.n_entries

    @property
    def nbytes(self) -> int:
        return self._table.nbytes

    def sweep_lse(self, f: np.ndarray) -> TablePass:
        return self._table.sweep_lse(f)

    def best(self, f: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        top, labels, bad = self._table.best(f)
        return _from_numpy(top), _from_numpy(labels), bad

