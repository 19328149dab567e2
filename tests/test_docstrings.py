"""The API reference (docs/api.md, rendered from docstrings) matches the signatures.

Every object the reference lists documents each parameter of its signature (a class: of its
constructor; a dataclass result: each field, under Attributes), names no parameter that does
not exist, and states each default as the signature has it.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
import typing
from pathlib import Path

import numpy as np
import pytest

API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"
REFERENCED = re.findall(r"^::: ([\w.]+)$", API_PAGE.read_text(), flags=re.MULTILINE)


def _resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def section(doc: str, title: str) -> dict[str, str]:
    """Entries of a numpydoc section: name -> the text after `` : `` (empty for a group)."""
    lines = inspect.cleandoc(doc).splitlines()
    starts = [i + 2 for i in range(len(lines) - 1)
              if lines[i] == title and set(lines[i + 1]) == {"-"}]
    if not starts:
        return {}
    body = lines[starts[0]:]
    entries: dict[str, str] = {}
    for index, line in enumerate(body):
        if index + 1 < len(body) and body[index + 1] and set(body[index + 1]) == {"-"}:
            break  # the next section's title
        if line and not line[0].isspace():
            names, _, text = line.partition(" : ")
            for name in names.split(", "):
                entries[name.lstrip("*")] = text
    return entries


def _stated_default(text: str):
    stated = re.search(r"default=(.+)$", text).group(1).strip()
    try:
        return ast.literal_eval(stated)
    except (ValueError, SyntaxError):
        return eval(stated, {"np": np})  # noqa: S307 - our own docstring, e.g. np.float32


def _documented(obj) -> tuple[str, dict[str, str], dict[str, inspect.Parameter]]:
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        fields = {field.name: inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY)
                  for field in dataclasses.fields(obj)}
        return "Attributes", section(obj.__doc__, "Attributes"), fields
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return "Parameters", {}, {}  # the constructor is Exception's
    if typing.is_typeddict(obj):  # keys that another function's keywords document, and are
        return "Parameters", {}, {}  # held to in test_public_conventions
    target = obj.__init__ if inspect.isclass(obj) else obj
    parameters = dict(inspect.signature(target).parameters)
    parameters.pop("self", None)
    return "Parameters", section(obj.__doc__ or "", "Parameters"), parameters


def test_the_reference_lists_objects():
    assert "sinklabel.sinkhorn" in REFERENCED and "sinklabel.SinkhornResult" in REFERENCED
    assert len(REFERENCED) > 15


def test_section_parsing():
    doc = """Summary.

    Parameters
    ----------
    a : int, default=3
        Text.
    b, c
        Together.
    **options
        More.

    Returns
    -------
    x : int
    """
    assert section(doc, "Parameters") == {"a": "int, default=3", "b": "", "c": "",
                                          "options": ""}


@pytest.mark.parametrize("dotted", REFERENCED)
def test_docstring_matches_signature(dotted):
    obj = _resolve(dotted)
    title, entries, parameters = _documented(obj)
    if not parameters:
        return
    assert entries, f"{dotted}: no {title} section for {list(parameters)}"
    missing = [name for name in parameters if name not in entries]
    assert not missing, f"{dotted}: {title} does not describe {missing}"
    unknown = [name for name in entries if name not in parameters]
    assert not unknown, f"{dotted}: {title} describes {unknown}, which it does not take"
    for name, parameter in parameters.items():
        text = entries[name]
        if "default=" in text:
            assert parameter.default is not inspect.Parameter.empty, (
                f"{dotted}: {name} is required but documented as {text!r}")
            assert _stated_default(text) == parameter.default, (
                f"{dotted}: {name} documented as {text!r}, signature default "
                f"{parameter.default!r}")


@pytest.mark.filterwarnings("ignore::sinklabel.ConvergenceWarning")
def test_error_is_that_of_the_returned_potentials():
    """As SinkhornResult.error and docs/method.md say: stopped at max_iter on peaked scores
    (where L-BFGS steps can raise the error), the solver returns the best potentials it met;
    ``error`` is theirs, recomputed here in float64, and the smallest of the history."""
    import sinklabel
    from sinklabel.datasets import make_scores

    scores = make_scores(3000, 30, regime="peaked", seed=0).scores
    result = sinklabel.sinkhorn(scores, 30, max_iter=7, backend="numpy")
    assert not result.converged and result.n_iter == len(result.error_history) == 7
    z = result.lam * scores.astype(np.float64) + result.potentials
    plan = np.exp(z - z.max(axis=1, keepdims=True))
    plan /= plan.sum(axis=1, keepdims=True)
    error = np.abs(plan.mean(axis=0) - 1 / 30).sum()
    assert result.error == pytest.approx(error, rel=1e-3)
    assert result.error == min(result.error_history) < result.error_history[-1]
