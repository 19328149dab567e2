"""Backend registry: a backend is one module here plus one line in ``_KERNELS``."""

from __future__ import annotations

import importlib
from functools import cache

from ._base import Kernel

# name -> (module, class, what to install when its library is missing)
_KERNELS: dict[str, tuple[str, str, str]] = {
    "numpy": ("sinklabel.kernels.numpy", "NumpyKernel", "numpy"),
    "numba": ("sinklabel.kernels.numba", "NumbaKernel", "numba"),
}

#: Per input library, the backends "auto" tries in order.
_AUTO: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
}
_AUTO["numpy"] = ("numba", "numpy")


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


@cache
def get_kernel(name: str) -> Kernel:
    """The kernel object of backend ``name``; ImportError says what to install."""
    if name not in _KERNELS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(_KERNELS)}, got {name!r}")
    module, cls, requirement = _KERNELS[name]
    try:
        return getattr(importlib.import_module(module), cls)()
    except ImportError as exc:
        raise ImportError(
            f"backend {name!r} needs {requirement}: pip install 'sinklabel[{name}]' ({exc})"
        ) from exc


def resolve_kernel(backend: str, library: str) -> Kernel:
    """The kernel for ``backend`` on arrays of ``library``, checking they fit together."""
    if backend == "auto":
        for name in _AUTO.get(library, ()):
            try:
                return get_kernel(name)
            except ImportError:
                continue
        raise TypeError(f"no installed backend takes {library} arrays")
    kernel = get_kernel(backend)
    if library not in kernel.libraries:
        raise TypeError(
            f"backend {backend!r} takes {' or '.join(kernel.libraries)} arrays, not {library}; "
            f"pass backend='auto' or convert the input"
        )
    return kernel


__all__ = ["Kernel", "available_backends", "get_kernel", "resolve_kernel"]
