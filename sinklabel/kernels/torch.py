"""The torch backend: CPU tensors through blocked vectorised torch ops, CUDA tensors through
fused Triton kernels (``_triton``), falling back to the blocked ops where Triton is missing.

Every operation runs on detached tensors: no autograd graph is recorded through a solve, and
inputs that require grad are read as they are. float16 and bfloat16 scores are computed in
float32, float64 in float64; results stay on the input's device.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from ._base import Kernel

if TYPE_CHECKING:
    import torch

#: Bytes of float32 temporaries per block on the CPU: small enough to stay in cache.
CPU_BLOCK_BYTES = 4 << 20
#: The same on a CUDA device without Triton: large enough to keep the device busy.
CUDA_BLOCK_BYTES = 64 << 20
#: ``exp`` of anything below this underflows; torch's CPU exp is ~10x slower on such inputs,
#: so they are clamped first and their (denormal) results set to exactly zero.
_EXP_FLOOR = {"float32": -87.0, "float64": -708.0}


class TorchKernel(Kernel):
    name = "torch"
    libraries = ("torch",)

    def __init__(self) -> None:
        import torch  # noqa: F401  (fails here, with an install hint, when torch is missing)

    def chunk_rows(self, n_labels: int, itemsize: int) -> int:
        """All rows: in-memory chunks are views, the CPU path blocks its temporaries itself
        and the CUDA kernels have none, so one chunk means one host sync per iteration."""
        return 1 << 62

    def sweep(self, chunk: torch.Tensor, f: np.ndarray, lam: float) -> np.ndarray:
        return self.sweep_lse(chunk, f, lam)[0]

    def sweep_lse(self, chunk: torch.Tensor, f: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
        x = chunk.detach()
        fused = _fused(x)
        if fused is not None:
            return fused.sweep_lse(x, f, lam)
        import torch

        # Accumulated on the device: one host sync per chunk, as in the fused kernels.
        mass = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        lse = torch.zeros((), dtype=torch.float64, device=x.device)
        for start, stop in _blocks(x):
            z = _logits(x[start:stop], f, lam)
            top = z.amax(dim=1, keepdim=True)
            p = _exp_nonpositive(z.sub_(top))
            row_sums = p.sum(dim=1)
            mass += (row_sums.reciprocal() @ p).double()
            lse += (top[:, 0].double() + row_sums.double().log()).sum()
        return mass.cpu().numpy(), float(lse)

    def best(self, chunk: torch.Tensor, f: np.ndarray, lam: float):
        x = chunk.detach()
        fused = _fused(x)
        if fused is not None:
            return fused.best(x, f, lam)
        parts = [_logits(x[start:stop], f, lam).max(dim=1) for start, stop in _blocks(x)]
        return _cat([p.values for p in parts]), _cat([p.indices for p in parts])

    def slack(self, chunk: torch.Tensor, f: np.ndarray, lam: float) -> np.ndarray:
        import torch

        result = None
        for _, z in _shifted_blocks(chunk.detach(), f, lam):
            top = z.amax(dim=0)
            result = top if result is None else torch.maximum(result, top)
        return result.double().cpu().numpy()

    def soft(self, chunk: torch.Tensor, f: np.ndarray, lam: float) -> torch.Tensor:
        import torch

        x = chunk.detach()
        out = torch.empty(x.shape, dtype=_compute_dtype(x), device=x.device)
        for start, z in _shifted_blocks(x, f, lam):
            p = _exp_nonpositive(z)
            out[start:start + p.shape[0]] = p.div_(p.sum(dim=1, keepdim=True))
        return out

    def gather(self, chunk: torch.Tensor, labels) -> np.ndarray:
        import torch

        x = chunk.detach()
        index = torch.as_tensor(labels, device=x.device).long()[:, None]
        return x.gather(1, index)[:, 0].double().cpu().numpy()

    def to_numpy(self, x) -> np.ndarray:
        import torch

        if not isinstance(x, torch.Tensor):
            return np.asarray(x)
        x = x.detach()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.cpu().numpy()

    def empty_labels(self, n: int, like) -> torch.Tensor:
        import torch

        device = like.device if like is not None else "cpu"
        return torch.empty(n, dtype=torch.int64, device=device)

    def concat(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return _cat(parts)


def _fused(x: torch.Tensor):
    """The Triton kernels for a CUDA tensor, or None (CPU tensor, or Triton not installed)."""
    if not x.is_cuda:
        return None
    try:
        from . import _triton
    except ImportError:
        return None
    return _triton


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    import torch

    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _blocks(x: torch.Tensor) -> Iterator[tuple[int, int]]:
    budget = CUDA_BLOCK_BYTES if x.is_cuda else CPU_BLOCK_BYTES
    n_rows, n_cols = x.shape
    rows = max(1, budget // (4 * max(1, n_cols)))
    for start in range(0, n_rows, rows):
        yield start, min(n_rows, start + rows)


def _logits(block: torch.Tensor, f: np.ndarray, lam: float) -> torch.Tensor:
    """lam * block + f in the compute dtype, as a fresh tensor (rounded like the NumPy backend)."""
    import torch

    dtype = _compute_dtype(block)
    z = block.to(dtype) * lam
    return z.add_(torch.as_tensor(f, dtype=dtype, device=block.device))


def _shifted_blocks(
    x: torch.Tensor, f: np.ndarray, lam: float
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, z - rowmax(z)) block by block, with z = lam * x + f."""
    for start, stop in _blocks(x):
        z = _logits(x[start:stop], f, lam)
        yield start, z.sub_(z.amax(dim=1, keepdim=True))


def _exp_nonpositive(z: torch.Tensor) -> torch.Tensor:
    """exp of z <= 0 in place; results that would be denormal (or underflow) are exactly 0."""
    from torch.nn.functional import threshold_

    floor = _EXP_FLOOR[str(z.dtype).removeprefix("torch.")]
    z.clamp_(min=floor).exp_()
    return threshold_(z, 2.0 * float(np.exp(floor)), 0.0)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    import torch

    return parts[0] if len(parts) == 1 else torch.cat(parts)
