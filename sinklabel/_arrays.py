"""Which array library an object belongs to, found without importing any library."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import numpy as np

LIBRARIES = ("numpy", "torch", "cupy")


def array_library(x: Any) -> str | None:
    """Name of the array library owning ``x`` ("numpy", "torch", "cupy"), or None.

    Detection reads the class's module so that torch and CuPy are never imported
    (and CUDA never initialised) just to ask the question.
    """
    for cls in type(x).__mro__:
        root = cls.__module__.split(".", 1)[0]
        if root in LIBRARIES:
            return root
    return None


def is_cuda(x: Any) -> bool:
    """True when ``x`` lives on a CUDA device (a CUDA torch tensor or any CuPy array)."""
    library = array_library(x)
    if library == "cupy":
        return True
    return library == "torch" and x.device.type == "cuda"


def device_scope(x: Any) -> contextlib.AbstractContextManager:
    """For a CuPy array, its GPU made the current one; otherwise nothing. CuPy allocates and
    launches on the current device, so a solve of an array on another GPU would put its
    labels there and read the array through peer access (torch follows each tensor)."""
    if array_library(x) == "cupy":
        return x.device
    return contextlib.nullcontext()


def to_host(x: Any) -> np.ndarray:
    """A host NumPy copy of a NumPy, torch or CuPy array (bfloat16, which NumPy lacks, as
    float32); NumPy input and anything NumPy can read are returned as ``np.asarray`` gives.
    A torch view with the negative or conjugate bit set (``x.conj().imag``) is resolved first:
    ``.numpy()`` refuses it."""
    library = array_library(x)
    if library == "torch":
        import torch

        x = x.detach().cpu().resolve_conj().resolve_neg()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    if library == "cupy":
        return x.get()
    return np.asarray(x)


#: What NumPy before 1.24 warned, instead of raising, for nested lists of unequal lengths.
_RAGGED = getattr(np, "exceptions", np).VisibleDeprecationWarning


def host_array(name: str, value: Any) -> np.ndarray:
    """:func:`to_host`, naming the argument where NumPy cannot read a Python value as one
    array: nested lists of unequal lengths, a list of tensors that require grad."""
    if array_library(value) is not None:
        return to_host(value)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", _RAGGED)
            return np.asarray(value)
    except (ValueError, RuntimeError, _RAGGED) as exc:
        raise ValueError(f"{name} could not be read as one array: {exc}") from exc


def from_host(values: np.ndarray, like: Any) -> Any:
    """Host values as an array of ``like``'s library, so that results go back in the library
    the caller passed the scores in: a torch tensor or a CuPy array on ``like``'s device,
    NumPy values as they are."""
    library = array_library(like)
    if library == "torch":
        import torch

        return torch.as_tensor(values, device=like.device)
    if library == "cupy":
        import cupy

        with like.device:  # CuPy allocates on the current device
            return cupy.asarray(values)
    return values
