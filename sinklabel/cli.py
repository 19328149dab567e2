"""The ``sinklabel`` command line: one module per command under ``sinklabel.commands``.

Run ``sinklabel <command> --help`` for each command's options, ``sinklabel --version`` for the
installed version.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import TextIO

from . import __version__
from .sources import SourceError

#: Exit code of a failure no command expects (a bug): 1 and 2 have their own meanings.
INTERNAL_ERROR = 3
#: Exit code after Ctrl-C (SIGINT): 128 + 2, as a shell reports a command the signal ended.
INTERRUPTED = 130
#: Exit code when the reader of a pipe went away (``| head``): 128 + 13 (SIGPIPE), as a
#: shell reports a command that signal ended, not 2 ("bad input").
BROKEN_PIPE = 141

#: The library's advice in its errors and warnings, in this command line's terms: a user
#: of ``sinklabel assign`` reads "pass --exact", not "balance='exact'".
CLI_TERMS = (
    (re.compile(r"\bbalance=(['\"])exact\1"), "--exact"),
    (re.compile(r"\bcache=True\b"), "--cache"),
    (re.compile(r"\blabel_weights\b(?!-)"), "--weights"),  # not "label_weights-weighted"
    (re.compile(r"\b(max_iter|memory_limit|tol)(=|\b)"),
     lambda match: "--" + match[1].replace("_", "-") + (" " if match[2] else "")),
    (re.compile(r"\blam="), "--lam "),  # not lam alone: "lam * logp" is the formula
    (re.compile(r"\blower lam\b"), "lower --lam"),
    (re.compile(r"\bpass logp\.T\b"), "save the scores transposed"),
    # --exact with K > N: the command line has no capacities; say which option to drop.
    (re.compile(r" \(solve_exact with capacities allows empty labels\)"),
     "; leave out --exact to allow empty labels (or, in Python, give sinklabel.solve_exact "
     "capacities that allow them)"),
    (re.compile(r"\bpass capacities explicitly\b"), "give the sizes with --capacities"),
    (re.compile(r"(?<!sinklabel\.)\bsolve_exact\b"), "sinklabel.solve_exact in Python"),
    (re.compile(r"\b([Pp])ass cache=False\b"),
     lambda match: ("L" if match[1] == "P" else "l") + "eave out --cache"),
    (re.compile(r"\bor backend=(['\"])(\w+)\1"), r"or pass --backend \2"),
    (re.compile(r"\bbackend=(['\"])(\w+)\1"), r"--backend \2"),
    # The options read from files, where the library names its argument ("init must hold").
    (re.compile(r"\b(init|capacities|prices)(?= must\b| of shape\b)"), r"--\1"),
    (re.compile(r"\bthose labels' weights\b"), "those labels' --weights"),
    (re.compile(r"\bthe PrecisionWarning\b"), "the precision warning"),
    (re.compile(r"\bexpected a result or a 1-D integer label array\b"),
     "the labels file must hold a 1-D integer array"),
    # A file named as the command names its others ("scores: no such file", "weights: ...").
    (re.compile(r"\blogp: "), "scores: "),
)
#: The library's name of the scores, except in a formula ("lam * logp + f"); the command
#: line's is SCORES, or what a command names them by in COMMAND_SCORES.
LOGP = re.compile(r"(?<!\* )\blogp\b(?![.\[])")
SCORES = "the scores file"
COMMAND_SCORES = {"demo": "the generated scores"}
#: What in_cli_terms leaves as it is: a quoted value, such as a path the user named
#: ('label_weights.npy', 'runs/tol=0.01/scores.npy'), opened by a quote after no letter and
#: no "=" (an apostrophe, "the solve's", follows a letter; balance='exact' is rewritten).
QUOTED = re.compile(r"""((?<![\w=])'[^']*'(?!\w)|(?<![\w=])"[^"]*"(?!\w))""")

#: command name -> module in sinklabel.commands defining ``configure(parser)``, ``run(args)``
#: and ``MEMORY_HINT``, what to do when its work does not fit in memory
COMMANDS = {
    "demo": "sinklabel.commands.demo",
    "assign": "sinklabel.commands.assign",
    "check": "sinklabel.commands.check",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sinklabel",
        description="Balanced label assignment by optimal transport (Sinkhorn self-labelling).",
    )
    # A flag, not argparse's exiting "version" action: main() returns its exit code, and
    # --version needs no command (which main() therefore requires itself).
    parser.add_argument("--version", action="store_true",
                        help="print the version of sinklabel and exit")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        summary = (module.__doc__ or "").strip().splitlines()[0]
        command = sub.add_parser(name, help=summary, description=module.__doc__)
        module.configure(command)
        command.set_defaults(run=module.run, memory_hint=module.MEMORY_HINT)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sinklabel`` and ``python -m sinklabel``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(f"sinklabel {__version__}")
        return 0
    if args.command is None:
        parser.error("the following arguments are required: command")
    with warnings.catch_warnings():
        warnings.showwarning = _warning_printer(args.command)
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """The command's exit code, or 2 with a one-line message on bad input or on work that
    does not fit in memory. Python would print a traceback and exit with 1, which the
    commands keep for "stopped at --max-iter" (assign: labels saved), so anything else
    that fails prints its traceback and exits with 3."""
    try:
        code: int = args.run(args)
        # Output to a pipe is buffered: flushed here, a reader that went away is a
        # BrokenPipeError below, not one in Python's own flush at exit (exit 120 and
        # "Exception ignored ... BrokenPipeError").
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        # Ctrl-C: a line, not the traceback of whichever kernel was running (outputs are
        # saved all or none, so none is left half written).
        print(f"sinklabel {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        # `sinklabel check ... | head -1`: the rest of the report has no reader. Silent, as
        # any command a pipe's end leaves, and with stdout on os.devnull so that Python's
        # own flush at exit does not fail again ("Exception ignored ... BrokenPipeError").
        _discard_stdout()
        return BROKEN_PIPE
    except (ValueError, TypeError, ImportError, OSError, SourceError) as exc:
        return _error(args.command, str(exc))
    except MemoryError as exc:
        # NumPy's says how much one array needed ("Unable to allocate 373. GiB for ...").
        needed = f" ({exc})" if str(exc) else ""
        return _error(args.command, f"not enough memory{needed}; {args.memory_hint}")
    except Exception:
        traceback.print_exc()
        print(f"sinklabel {args.command}: internal error (exit 3): please report it with "
              "the traceback above", file=sys.stderr)
        return INTERNAL_ERROR


def _discard_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no file descriptor (a captured stream)
        pass


def in_cli_terms(message: str, command: str = "assign") -> str:
    """``message`` with the library's option names replaced by the flags that set them, and
    its ``logp`` by what ``command`` reads, outside quoted values (a path such as
    'label_weights.npy' is the user's, kept as given)."""
    parts = QUOTED.split(message)
    scores = COMMAND_SCORES.get(command, SCORES)
    for index in range(0, len(parts), 2):  # the odd parts are the quoted values
        for pattern, flag in CLI_TERMS:
            parts[index] = pattern.sub(flag, parts[index])
        parts[index] = LOGP.sub(scores, parts[index])
    return "".join(parts)


def _error(command: str, message: str) -> int:
    print(f"sinklabel {command}: error: {in_cli_terms(message, command)}", file=sys.stderr)
    return 2


def _warning_printer(command: str) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints a line in the style of the errors: the default
    one names the line of the first frame outside sinklabel, for the CLI ``<frozen runpy>``."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        print(f"sinklabel {command}: warning: {in_cli_terms(str(message), command)}",
              file=sys.stderr if file is None else file)

    return show
