"""Which array library an object belongs to, found without importing any library."""

from __future__ import annotations

from typing import Any

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
