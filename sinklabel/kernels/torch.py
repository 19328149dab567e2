"""The torch backend: CUDA tensors through fused Triton kernels (``_triton``); float64, float32,
float16 and bfloat16 CPU tensors through the Numba kernels on a NumPy view of their memory
(bfloat16 as its bits; layouts they cannot read in place copied a task's rows at a time),
4-6x faster than torch's own ops for float32, 4-7x for the 16-bit types and 2.7-4.4x for
float64 (measured side by side: torch's take several passes over each block of temporaries);
everything else (Numba or Triton not installed) through blocked vectorised torch ops.

Every operation runs on detached tensors: no autograd graph is recorded through a solve, and
inputs that require grad are read as they are. float16 and bfloat16 scores are computed in
float32, float64 in float64; results stay on the input's device.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from .._arrays import to_host
from ._base import Array, Kernel, compute_dtype

if TYPE_CHECKING:
    import torch

#: Bytes of float32 temporaries per block on the CPU: small enough to stay in cache.
CPU_BLOCK_BYTES = 4 << 20
#: The same on a CUDA device without Triton: large enough to keep the device busy.
CUDA_BLOCK_BYTES = 64 << 20
#: Rows whose softmax is summed in the compute dtype before joining the float64 label masses.
SUM_ROWS = 256
#: ``exp`` of anything below this underflows; torch's CPU exp is ~10x slower on such inputs,
#: so they are clamped first and their (denormal) results set to exactly zero.
_EXP_FLOOR = {"float32": -87.0, "float64": -708.0}


class TorchKernel(Kernel):
    name = "torch"
    libraries = ("torch",)

    def __init__(self) -> None:
        import torch  # noqa: F401  (fails here, with an install hint, when torch is missing)

    @cached_property
    def _numba(self):
        """The Numba kernel for CPU tensors, or None when Numba is missing; imported on the
        first CPU solve only. It runs on torch's thread count (e.g. 1 per rank of a CPU job)."""
        import torch

        try:
            from .numba import NumbaKernel
        except ImportError:
            return None
        return NumbaKernel(torch.get_num_threads)

    def chunk_rows(self, n_labels: int, itemsize: int) -> int:
        """All rows: in-memory chunks are views, the CPU path blocks its temporaries itself
        and the CUDA kernels have none, so one chunk means one host sync per iteration."""
        return 1 << 62

    def sweep_lse(self, chunk: torch.Tensor, f: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
        x = _readable(chunk)
        fused = _fused(x)
        if fused is not None:
            with _on_device(x):
                return fused.sweep_lse(x, f, lam)
        view = self._numba_view(x)
        if view is not None:
            host_mass, host_lse = np.zeros(x.shape[1]), 0.0
            for _, block in self._numba_blocks(view):
                block_mass, block_lse = self._numba.sweep_lse(block, f, lam)
                host_mass += block_mass
                host_lse += block_lse
            return host_mass, host_lse
        import torch

        # Accumulated on the device: one host sync per chunk, as in the fused kernels.
        mass = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        lse = torch.zeros((), dtype=torch.float64, device=x.device)
        for _, z in _logit_blocks(x, f, lam):
            top = z.amax(dim=1, keepdim=True)
            p = _exp_nonpositive(z.sub_(top))
            row_sums = p.sum(dim=1)
            mass += _label_mass(p, row_sums)
            lse += (top[:, 0].double() + row_sums.double().log()).sum()
        return mass.cpu().numpy(), float(lse)

    def best(
        self, chunk: torch.Tensor, f: np.ndarray, lam: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = _readable(chunk)
        fused = _fused(x)
        if fused is not None:
            with _on_device(x):
                return fused.best(x, f, lam)
        view = self._numba_view(x)
        if view is not None:
            host_top = np.empty(len(view), compute_dtype(view.dtype))
            host_labels = np.empty(len(view), np.int64)
            for start, block in self._numba_blocks(view):
                host_top[start:start + len(block)], host_labels[start:start + len(block)] = (
                    self._numba.best(block, f, lam))
            return _from_numpy(host_top), _from_numpy(host_labels)
        import torch

        top = torch.empty(x.shape[0], dtype=_compute_dtype(x), device=x.device)
        labels = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
        for start, z in _logit_blocks(x, f, lam):
            torch.max(z, dim=1, out=(top[start:start + len(z)], labels[start:start + len(z)]))
        return top, labels

    def slack(self, chunk: torch.Tensor, f: np.ndarray, lam: float) -> np.ndarray:
        import torch

        x = _readable(chunk)
        view = self._numba_view(x)
        if view is not None:
            blocks = self._numba_blocks(view)
            return np.max([self._numba.slack(block, f, lam) for _, block in blocks], axis=0)
        result = None
        for _, z in _shifted_blocks(x, f, lam):
            top = z.amax(dim=0)
            result = top if result is None else torch.maximum(result, top)
        assert result is not None  # a chunk has rows: sources yield range(0, n, rows)
        return result.double().cpu().numpy()

    def soft(self, chunk: torch.Tensor, f: np.ndarray, lam: float) -> torch.Tensor:
        import torch

        x = _readable(chunk)
        view = self._numba_view(x)
        if view is not None:
            host_out = np.empty(view.shape, compute_dtype(view.dtype))
            for start, block in self._numba_blocks(view):
                host_out[start:start + len(block)] = self._numba.soft(block, f, lam)
            return _from_numpy(host_out)
        out = torch.empty(x.shape, dtype=_compute_dtype(x), device=x.device)
        for start, z in _shifted_blocks(x, f, lam):
            p = _exp_nonpositive(z)
            out[start:start + p.shape[0]] = p.div_(p.sum(dim=1, keepdim=True))
        return out

    def gather(self, chunk: torch.Tensor, labels: Array) -> np.ndarray:
        import torch

        x = _readable(chunk)
        index = torch.as_tensor(labels, device=x.device).long()[:, None]
        return x.gather(1, index)[:, 0].double().cpu().numpy()

    def to_numpy(self, x: Array) -> np.ndarray:
        return to_host(x)

    def empty_labels(self, n: int, like: torch.Tensor | None) -> torch.Tensor:
        import torch

        device = like.device if like is not None else "cpu"
        return torch.empty(n, dtype=torch.int64, device=device)

    def empty_rows(self, n: int, like: torch.Tensor) -> torch.Tensor:
        return like.new_empty((n, *like.shape[1:]))

    def _numba_view(self, x: torch.Tensor) -> np.ndarray | None:
        """A NumPy view of ``x`` for the Numba kernels, or None: float64, float32, float16 and
        bfloat16 (as its bits) CPU tensors. Rows Numba reads in place cost no copy; other
        layouts (transposed, strided columns) are copied a task's rows at a time, as NumPy
        arrays are (docs/benchmarks.md: 1.5x faster than torch's ops at 200,000 x 1000
        float32, side by side). float64 takes this route since the kernels' float64 exp
        vectorises (2.7-4.4x faster than torch's ops at 1000 labels, measured side by side;
        with libm's scalar exp the two were within 1.5x of each other)."""
        import torch

        if x.device.type != "cpu" or x.is_neg() or self._numba is None:
            return None
        if x.dtype not in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
            return None
        if x.dtype == torch.bfloat16:
            from .numba import bfloat16_rows

            return bfloat16_rows(x.view(torch.int16).numpy())
        return x.numpy()

    def _numba_blocks(self, view: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, block) in the Numba backend's own chunk size: its per-task buffers
        stay as small as for NumPy input, and its results are the same bits."""
        n_rows, n_labels = view.shape
        rows = self._numba.chunk_rows(n_labels, view.itemsize)
        for start in range(0, max(n_rows, 1), rows):
            yield start, view[start:start + rows]


def _readable(chunk: torch.Tensor) -> torch.Tensor:
    """The chunk detached from autograd; TypeError for devices other than the CPU and CUDA
    (MPS has no float64 for the accumulators, meta tensors no data), before any work."""
    if chunk.device.type not in ("cpu", "cuda"):
        raise TypeError(
            f"the torch backend computes on CPU and CUDA tensors, got one on {chunk.device}: "
            f"pass logp.cpu() or a CUDA tensor"
        )
    return chunk.detach()


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(array)


def _fused(x: torch.Tensor):
    """The Triton kernels for a CUDA tensor, or None (CPU tensor, Triton not installed, or a
    view with the negative bit set: Triton reads its memory, which holds -x, so torch's own
    ops take it, as on the CPU)."""
    if not x.is_cuda or x.is_neg():
        return None
    try:
        from . import _triton
    except ImportError:
        return None
    return _triton


def _on_device(x: torch.Tensor):
    """``x``'s CUDA device as the current one while the Triton kernels run: Triton launches
    on the current device and its stream, not on the device of the tensors it is given (a
    tensor on cuda:1 under cuda:0 was refused as 'cannot be accessed from Triton')."""
    import torch

    return torch.cuda.device(x.device)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    import torch

    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _blocks(x: torch.Tensor) -> Iterator[tuple[int, int]]:
    budget = CUDA_BLOCK_BYTES if x.is_cuda else CPU_BLOCK_BYTES
    n_rows, n_cols = x.shape
    rows = max(1, budget // (4 * max(1, n_cols)))
    for start in range(0, n_rows, rows):
        yield start, min(n_rows, start + rows)


def _logit_blocks(
    x: torch.Tensor, f: np.ndarray, lam: float
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, lam * block + f) block by block, in the compute dtype and rounded like the
    NumPy backend, in one buffer that every block reuses (valid until the next block). A
    fresh 4 MB temporary per block, freed among the small results kept for the chunk,
    fragmented glibc's heap: a pass held N x K x 4 bytes of memory after it ended."""
    import torch

    dtype = _compute_dtype(x)
    shift = torch.as_tensor(f, dtype=dtype, device=x.device)
    buffer = None
    for start, stop in _blocks(x):
        if buffer is None:
            buffer = torch.empty((stop - start, x.shape[1]), dtype=dtype, device=x.device)
        z = buffer[:stop - start]
        # Resolved first: torch 2.13's copy_ of a negated float16 view into float32 dropped
        # the negation (a block of -x; a no-op for any tensor without the negative bit).
        z.copy_(x[start:stop].resolve_neg())
        yield start, z.mul_(lam).add_(shift)


def _shifted_blocks(
    x: torch.Tensor, f: np.ndarray, lam: float
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, z - rowmax(z)) block by block, with z = lam * x + f (one buffer, as in
    :func:`_logit_blocks`)."""
    for start, z in _logit_blocks(x, f, lam):
        yield start, z.sub_(z.amax(dim=1, keepdim=True))


def _exp_nonpositive(z: torch.Tensor) -> torch.Tensor:
    """exp of z <= 0 in place; results that would be denormal (or underflow) are exactly 0."""
    from torch.nn.functional import threshold_  # type: ignore[attr-defined]

    floor = _EXP_FLOOR[str(z.dtype).removeprefix("torch.")]
    z.clamp_(min=floor).exp_()
    return threshold_(z, 2.0 * float(np.exp(floor)), 0.0)


def _label_mass(p: torch.Tensor, row_sums: torch.Tensor) -> torch.Tensor:
    """Column sums of ``p / row_sums[:, None]`` in float64 (``p``, a temporary, is scaled in
    place): sums over ``SUM_ROWS`` rows at a time in the compute dtype, added in float64. A
    float32 product over a whole block (100,000 rows at K = 10) was off by 1e-5 of the mass.
    No matrix product: with TF32 allowed (``torch.backends.cuda.matmul.allow_tf32``, common
    in training), CUDA would round its inputs to 10 bits."""
    import torch

    p.mul_(row_sums.reciprocal()[:, None])
    whole = p.shape[0] - p.shape[0] % SUM_ROWS
    parts = p[:whole].view(-1, SUM_ROWS, p.shape[1]).sum(dim=1)
    return parts.sum(dim=0, dtype=torch.float64) + p[whole:].sum(dim=0, dtype=torch.float64)

