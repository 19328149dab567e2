"""Warnings that name the caller's line, whichever entry point led to them."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from types import FrameType

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_held: ContextVar[list[tuple[str, type[Warning]]] | None] = ContextVar(
    "sinklabel_held_warnings", default=None
)


@contextlib.contextmanager
def held_warnings() -> Iterator[list[tuple[str, type[Warning]]]]:
    """Inside, :func:`warn` keeps its warnings in the yielded list instead of showing them.

    For worker threads (the heads of a multi-head solve): a warning shown there names the
    thread's first frame (threading.py), not the caller's line, and ``catch_warnings`` is
    not thread-safe. The thread that waits for the workers shows what they held.
    """
    held: list[tuple[str, type[Warning]]] = []
    token = _held.set(held)
    try:
        yield held
    finally:
        _held.reset(token)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` at the first frame outside sinklabel: a fixed ``stacklevel`` would
    name a line of sinklabel for every entry point but one (``assign_labels``, ``sinkhorn``,
    a labeler, the heads), and the default filter would then show it only once in all."""
    held = _held.get()
    if held is not None:
        held.append((message, category))
        return
    level = 2
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
