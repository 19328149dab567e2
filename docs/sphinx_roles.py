"""Griffe extension for the API reference: the docstrings' Sphinx roles (:func:`sinkhorn`),
which ``help()`` shows as they are, rendered as code instead of as raw markup."""

from __future__ import annotations

import re
from typing import Any

import griffe

#: ``:func:`~sinklabel.sinkhorn``` and the like: the role, an optional ``~``, the target.
ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):`~?([^`]+)`")


def plain(text: str) -> str:
    """``text`` with every role replaced by its target in backticks."""
    return ROLE.sub(r"`\1`", text)


class SphinxRoles(griffe.Extension):
    """Rewrites each object's docstring as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
