"""sinklabel's entry points inside ``torch.compile``: run as plain Python, never traced."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

Function = TypeVar("Function", bound=Callable[..., Any])


def eager_in_torch_compile(fn: Function) -> Function:
    """``fn``, called from a ``torch.compile``d function, runs eagerly as a graph break, as
    if the caller had wrapped it in ``torch.compiler.disable``.

    Dynamo would otherwise trace through the solver's NumPy and Numba code and fail there
    (an AssertionError from its NumPy support, deep in a kernel's setup). torch is looked
    up, never imported; outside a compiled function the check costs a dictionary lookup.
    """

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        compiler: Any = getattr(sys.modules.get("torch"), "compiler", None)
        compiling = getattr(compiler, "is_compiling", None)
        if compiling is not None and compiling():
            return compiler.disable(fn)(*args, **kwargs)
        return fn(*args, **kwargs)

    return call  # type: ignore[return-value]
