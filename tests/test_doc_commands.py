"""The shell commands of README.md and docs/*.md name what exists, and the cheap ones run.

A reader copies these lines into a terminal, but test_docs.py runs only the Python blocks. Here
every command found in a shell block, an indented block or an inline code span is checked
without doing its (often long) work: the program's options are parsed by the program's own
argument parser, so a renamed or removed option fails; the scripts, files, pip extras and
environment variables it names must exist. The ``sinklabel`` commands also run, on small
scores in a scratch folder (``demo`` with its sizes shrunk).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from sinklabel.cli import build_parser, main
from sinklabel.datasets import make_scores

# The package supports Python 3.10, whose standard library cannot read pyproject.toml yet.
tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = ("sinklabel", "python", "python3", "torchrun", "pytest", "pip", "mkdocs")
#: A command line: optional VAR=value assignments, then one of the programs and its arguments.
COMMAND = re.compile(rf"^(?:\$ )?((?:[A-Z][A-Z0-9_]*=\S+ )*(?:{'|'.join(PROGRAMS)}) .*)$")
FENCE = re.compile(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
SHELL_FENCES = {"bash", "sh", "shell", "console", ""}
EXTRAS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
    "optional-dependencies"])
#: ``sinklabel demo`` generates 200,000 x 1000 scores by default; these options come last.
SHRUNK_DEMO = ["-n", "2000", "-k", "20", "--no-progress"]


def _lines(text: str) -> list[str]:
    return re.sub(r"\\\n\s*", " ", text).splitlines()  # join shell line continuations


def shell_commands(text: str) -> list[str]:
    """Command lines in shell fences, indented blocks and inline code, comments removed;
    ``a && b`` gives two, and ``--regime flat|peaked`` one per alternative."""
    found = []
    for language, body in FENCE.findall(text):
        if language in SHELL_FENCES:
            found += [line.strip() for line in _lines(body)]
    prose = FENCE.sub("", text)
    found += [line.strip() for line in _lines(prose) if line.startswith("    ")]
    found += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
    commands = []
    for line in found:
        for part in re.split(r"\s+#", line)[0].split("&&"):
            match = COMMAND.match(part.strip())
            if match:
                commands += _alternatives(match.group(1))
    return commands


def _alternatives(command: str) -> list[str]:
    words = command.split(" ")
    for index, word in enumerate(words):
        if re.fullmatch(r"\w+(\|\w+)+", word):
            return [" ".join(words[:index] + [choice] + words[index + 1:])
                    for choice in word.split("|")]
    return [command]


COMMANDS = [(page.name, command) for page in PAGES for command in shell_commands(page.read_text())]


class _Parsed(Exception):
    """Raised instead of running a script once its arguments parsed."""


def _parse_only(monkeypatch: pytest.MonkeyPatch) -> None:
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        parse_args(self, args, namespace)  # a bad option exits here, as in a terminal
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)


def _script_module(script: str, monkeypatch: pytest.MonkeyPatch):
    """The module a command runs: ``-m package.module`` imported, a file path loaded alone,
    as ``python path.py`` runs it (a relative import fails here as it would there)."""
    if not script.endswith(".py"):
        monkeypatch.syspath_prepend(str(ROOT))  # python -m runs from the repository root
        return importlib.import_module(script)
    name = "doc_command_" + Path(script).stem
    spec = importlib.util.spec_from_file_location(name, ROOT / script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _check_script(script: str, args: list[str], env: list[str], command: str,
                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    path = ROOT / (script if script.endswith(".py") else script.replace(".", "/") + ".py")
    assert path.is_file(), f"{command!r}: no file {path.relative_to(ROOT)}"
    source = path.read_text()
    for name in env:
        assert name in source, f"{command!r}: {path.name} does not read ${name}"
    if "parse_args(" not in source:
        return  # reads sys.argv itself: only that it exists is checked
    try:
        module = _script_module(script, monkeypatch)
    except ModuleNotFoundError as exc:  # an optional library (scikit-learn, torch, POT)
        if exc.name.split(".")[0] in ("sinklabel", "benchmarks", "examples"):
            raise
        pytest.skip(f"{command!r} needs {exc.name}, which is not installed")
    _parse_only(monkeypatch)
    try:
        module.main(args)
    except _Parsed:
        return
    except SystemExit as exc:
        pytest.fail(f"{command!r} exits {exc.code}: {capsys.readouterr().err.strip()}")
    pytest.fail(f"{command!r}: main() returned without parsing its arguments")


def _check_pip(words: list[str], command: str) -> None:
    """The requirement files exist, and the extras asked of sinklabel (in the command or a
    requirement file) are in pyproject.toml."""
    assert words[0] == "install", command
    for index, word in enumerate(words[1:], 1):
        if words[index - 1] == "-r":
            assert (ROOT / word).is_file(), f"{command!r}: no file {word}"
            _check_pip(["install", *(ROOT / word).read_text().split()], f"{command} ({word})")
        requirement = re.fullmatch(r"(\.|sinklabel)(?:\[([\w,]+)\])?", word)
        if requirement and requirement.group(2):
            unknown = set(requirement.group(2).split(",")) - EXTRAS
            assert not unknown, f"{command!r}: no extra {sorted(unknown)} in pyproject.toml"


class _ConftestOptions:
    """The part of pytest's parser that a conftest's ``pytest_addoption`` uses."""

    def __init__(self) -> None:
        self.parser = argparse.ArgumentParser(add_help=False)

    def addoption(self, *names: str, **options) -> None:
        self.parser.add_argument(*names, **options)


def _check_pytest(words: list[str], env: list[str], command: str,
                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Paths exist, the environment variables are read there, and the options that the
    folder's conftest.py adds take the values given (pytest's own options are not checked)."""
    targets = [ROOT / word for word in words if "/" in word or word.endswith(".py")]
    for target in targets:
        assert target.exists(), f"{command!r}: no {target.relative_to(ROOT)}"
    files = [path for target in targets
             for path in ([target] if target.is_file() else target.glob("*.py"))]
    for name in env:
        assert any(name in path.read_text() for path in files), f"{command!r}: no ${name}"
    for folder in {target if target.is_dir() else target.parent for target in targets}:
        if (folder / "conftest.py").is_file() and folder != ROOT / "tests":
            monkeypatch.syspath_prepend(str(ROOT))
            conftest = importlib.import_module(f"{folder.name}.conftest")
            options = _ConftestOptions()
            conftest.pytest_addoption(options)
            options.parser.parse_known_args(words)  # SystemExit(2) on a bad value


def check_command(command: str, monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture) -> None:
    words = shlex.split(command)
    env = [word.split("=")[0] for word in words if re.fullmatch(r"[A-Z][A-Z0-9_]*=\S+", word)]
    words = words[len(env):]
    program, rest = words[0], words[1:]
    if program in ("python", "python3") and rest[:1] == ["-m"]:
        program, rest = rest[1], rest[2:]
    if program == "sinklabel":
        build_parser().parse_args(rest)  # SystemExit(2) with the reason on stderr
    elif program == "pip":
        _check_pip(rest, command)
    elif program == "pytest":
        _check_pytest(rest, env, command, monkeypatch)
    elif program == "mkdocs":
        assert rest[0] in ("serve", "build"), command
    elif program == "venv":  # the standard library's: one folder to create
        assert len(rest) == 1 and not rest[0].startswith("-"), command
    elif program == "torchrun":
        script = next(word for word in rest if word.endswith(".py"))
        args = rest[rest.index(script) + 1:]
        _check_script(script, args, env, command, monkeypatch, capsys)
    elif program in ("python", "python3"):
        _check_script(rest[0], rest[1:], env, command, monkeypatch, capsys)
    elif program.startswith(("benchmarks.", "examples.")):
        _check_script(program, rest, env, command, monkeypatch, capsys)
    else:
        pytest.fail(f"{command!r}: no check for {program}")


def test_commands_are_found():
    """The extraction sees every kind of place a command is written."""
    found = {command for _, command in COMMANDS}
    assert "sinklabel check scores.npy labels.npy" in found  # inline, across a line break
    assert "sinklabel check scores.npy labels.npy -k 1000" in found  # indented block
    assert "python -m benchmarks.compare --quick" in found  # fenced, comment removed
    assert "sinklabel demo" in found and "python3 -m pytest -q" in found  # split at &&
    assert {f"torchrun --nproc_per_node=2 benchmarks/distributed_exact.py --rows 200000 "
            f"--labels 1000 --regime {regime}" for regime in ("flat", "peaked")} <= found
    assert len(found) > 40


@pytest.mark.parametrize("page, command", COMMANDS, ids=[f"{p}: {c}" for p, c in COMMANDS])
def test_command_names_what_exists(page, command, monkeypatch, capsys):
    check_command(command, monkeypatch, capsys)


@pytest.mark.parametrize("command, error", [
    ("sinklabel assign s.npy -k 10 -o l.npy --potential-file p.npy", "unrecognized arguments"),
    ("sinklabel demo --regime sharp", "invalid choice: 'sharp'"),
    ("python -m benchmarks.compare --quik", "unrecognized arguments: --quik"),
    ("python examples/balanced_kmeans.py --n-seeds 3", "unrecognized arguments: --n-seeds"),
    ("torchrun --nproc_per_node=2 examples/distributed_torchrun.py --k 5", "unrecognized"),
    ("pytest benchmarks/ --benchmark-only --bench-size huge", "invalid choice: 'huge'"),
])
def test_a_wrong_option_fails(command, error, monkeypatch, capsys):
    """What the test above reports when the docs name an option that does not exist.
    (argparse takes unambiguous prefixes, ``--seed`` for ``--seeds``, and so does this.)"""
    with pytest.raises((SystemExit, pytest.fail.Exception)) as info:
        check_command(command, monkeypatch, capsys)
    assert error in str(info.value) + capsys.readouterr().err


@pytest.mark.parametrize("command", [
    'pip install "sinklabel[nope]"', "pip install -r requirements-nope.txt",
    "python benchmarks/nope.py", "SINKLABEL_NOPE=1 python benchmarks/streaming_scale.py npy",
    "pytest benchmarks/nope.py",
])
def test_a_missing_thing_fails(command, monkeypatch, capsys):
    with pytest.raises(AssertionError):
        check_command(command, monkeypatch, capsys)


def test_sinklabel_commands_run_as_written(tmp_path, monkeypatch, capsys):
    """Every ``sinklabel`` command of the docs, in page order, on 2000 x 1000 scores (K as
    the docs' ``-k 1000``) in a scratch folder: exit 0 or 1 (not converged, not optimal), never
    2 (bad input) or a traceback. ``assign`` writes the labels.npy that ``check`` reads (and the
    potentials a later ``--init`` reads); the other inputs the docs name are made here."""
    monkeypatch.chdir(tmp_path)
    for seed, name in enumerate(["scores.npy", "epoch1.npy", "epoch2.npy"]):
        np.save(name, make_scores(2000, 1000, regime="flat", seed=seed).scores)
    np.save("priors.npy", np.random.default_rng(0).uniform(0.5, 1.5, 1000))
    ran = 0
    for _, command in COMMANDS:
        words = shlex.split(command)
        if words[0] != "sinklabel":
            continue
        argv = words[1:] + (SHRUNK_DEMO if words[1] == "demo" else ["--no-progress"] * (
            words[1] == "assign"))
        code = main(argv)
        assert code in (0, 1), f"{command!r} exited {code}: {capsys.readouterr().err}"
        ran += 1
    assert ran >= 3 and Path("labels.npy").is_file()
