"""Typing names newer than Python 3.10, from ``typing_extensions`` there (a dependency on
3.10 only). Imported at run time: ``typing.get_type_hints`` resolves them too."""

import sys

if sys.version_info >= (3, 11):
    from typing import Self, Unpack
else:
    from typing_extensions import Self, Unpack

__all__ = ["Self", "Unpack"]
