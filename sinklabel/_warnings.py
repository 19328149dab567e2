"""Warnings that name the caller's line, whichever entry point led to them."""

from __future__ import annotations

import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` at the first frame outside sinklabel: a fixed ``stacklevel`` would
    name a line of sinklabel for every entry point but one (``assign_labels``, ``sinkhorn``,
    a labeler, the heads), and the default filter would then show it only once in all."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
