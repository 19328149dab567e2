"""Backend registry: a backend is one module here plus one line in ``_KERNELS``."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from ._base import BackendUnavailable, Kernel

# name -> (module, class, what to install when its library is missing)
_KERNELS: dict[str, tuple[str, str, str]] = {
    "numpy": ("sinklabel.kernels.numpy", "NumpyKernel", "numpy"),
    "numba": ("sinklabel.kernels.numba", "NumbaKernel", "numba"),
    "torch": ("sinklabel.kernels.torch", "TorchKernel", "torch"),
    "cupy": ("sinklabel.kernels.cupy", "CupyKernel", "cupy"),
}

#: Backends that can cache screened exponentials between passes (``cache=True``): name ->
#: (module, class of the table builder, which takes the backend's kernel; what it needs).
_EXP_TABLES: dict[str, tuple[str, str, str]] = {
    "numba": ("sinklabel.kernels._exp_cache", "NumbaExpTables", "numba"),
    "torch": ("sinklabel.kernels._torch_exp_cache", "TorchCpuExpTables", "numba"),
}

#: Per input library, the backends "auto" tries in order.
_AUTO: dict[str, tuple[str, ...]] = {
    "numpy": ("numba", "numpy"),
    "torch": ("torch",),
    "cupy": ("cupy",),
}


def available_backends() -> list[str]:
    """Names of the backends whose libraries import on this machine."""
    names = []
    for name in _KERNELS:
        try:
            get_kernel(name)
        except ImportError:
            continue
        names.append(name)
    return names


def get_kernel(name: str) -> Kernel:
    """A new kernel object of backend ``name``; ImportError says what to install. Each solve
    takes its own, so that nothing a kernel keeps is shared between solves or threads (a
    cached one once carried a solve's stored row shifts into the next solve)."""
    if name not in _KERNELS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(_KERNELS)}, got {name!r}")
    module, cls, requirement = _KERNELS[name]
    try:
        if importlib.util.find_spec(requirement) is None:
            # Said before the backend's module is read: a plain install would otherwise
            # compile it anew (where no bytecode is written) on every solve that tries it,
            # as "auto" tries numba first, only to fail at its import of the library.
            raise ModuleNotFoundError(f"No module named {requirement!r}", name=requirement)
        return getattr(importlib.import_module(module), cls)()
    except BackendUnavailable as exc:
        raise ImportError(f"backend {name!r} cannot run here: {exc}") from exc
    except ImportError as exc:
        raise ImportError(
            f"backend {name!r} needs {requirement}: pip install 'sinklabel[{name}]' ({exc})"
        ) from exc


def resolve_kernel(backend: str, library: str) -> Kernel:
    """The kernel for ``backend`` on arrays of ``library``, checking they fit together."""
    if not isinstance(backend, str):  # the registry's lookups would fail on unhashable ones
        raise TypeError(f"backend must be 'auto' or one of {sorted(_KERNELS)}, got {backend!r}")
    if backend == "auto":
        for name in _AUTO.get(library, ()):
            try:
                return get_kernel(name)
            except ImportError:
                continue
        hint = f": pip install 'sinklabel[{library}]'" if library in _KERNELS else ""
        raise TypeError(f"no installed backend takes {library} arrays{hint}")
    takes = _libraries(backend)
    if library not in takes:
        names = _AUTO.get(library, ())
        fits = f" (or {' or '.join(map(repr, names))})" if names else ""
        raise TypeError(
            f"backend {backend!r} takes {' or '.join(takes)} arrays, not {library} ones; "
            f"pass backend='auto'{fits} or convert the input to {' or '.join(takes)}"
        )
    return get_kernel(backend)


def exp_tables(kernel: Kernel, scores: Any = None) -> Any:
    """The builder of cached exponential tables for ``kernel``'s backend (``cache=True``);
    ValueError, before any work, naming the backends that have one when this one does not,
    refusing ``scores`` known to live off the CPU, or saying what to install.

    A builder provides ``build``, ``max_bytes``, ``sweep_rows`` and ``best_rows`` (see
    ``sinklabel.exp_cache``) and ``chunk_rows`` (the rows per chunk its tables are kept for).
    """
    if kernel.name not in _EXP_TABLES:
        install = ("; numba is not installed: pip install 'sinklabel[numba]'"
                   if importlib.util.find_spec("numba") is None else "")
        raise ValueError(
            "cache=True is an option of the 'numba' backend, and of 'torch' for CPU tensors; "
            f"this solve runs on backend {kernel.name!r}. Pass cache=False, or "
            f"backend='numba' for NumPy input{install}"
        )
    # The device first: installing numba would not help a CUDA tensor.
    refuse_off_the_cpu(scores)
    module, cls, needs = _EXP_TABLES[kernel.name]
    if importlib.util.find_spec(needs) is None:
        raise ValueError(
            f"cache=True on backend {kernel.name!r} keeps its tables with the {needs} kernels, "
            f"and {needs} is not installed: pip install 'sinklabel[{needs}]', or pass "
            "cache=False"
        )
    try:
        return getattr(importlib.import_module(module), cls)(kernel)
    except BackendUnavailable as exc:  # installed, but cannot run (e.g. its JIT switched off)
        raise ValueError(
            f"cache=True on backend {kernel.name!r} keeps its tables with the {needs} kernels, "
            f"which cannot run here ({exc}); pass cache=False"
        ) from exc


def refuse_off_the_cpu(scores: Any) -> None:
    """ValueError for scores known to live off the CPU (a tensor, or a source that names its
    device, or a block read): every table is kept by the Numba kernels, in host memory."""
    device = getattr(getattr(scores, "array", scores), "device", None)
    if device is not None and getattr(device, "type", str(device)) != "cpu":
        raise ValueError(
            "cache=True keeps tables of CPU scores (with the Numba kernels), and these are on "
            f"{device}: pass cache=False (a GPU's passes read the scores at memory speed "
            "already)"
        )


def _libraries(backend: str) -> tuple[str, ...]:
    """The array libraries ``backend`` takes, read without importing them where possible."""
    if backend not in _KERNELS:
        return get_kernel(backend).libraries  # raises the "unknown backend" ValueError
    module, cls, _ = _KERNELS[backend]
    try:
        return getattr(importlib.import_module(module), cls).libraries
    except ImportError:
        return get_kernel(backend).libraries  # raises the install hint


__all__ = ["Kernel", "available_backends", "exp_tables", "get_kernel", "resolve_kernel"]
