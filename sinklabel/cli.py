"""The ``sinklabel`` command line: one module per command under ``sinklabel.commands``.

Run ``sinklabel <command> --help`` for each command's options, ``sinklabel --version`` for the
installed version.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .sources import SourceError

#: command name -> module in sinklabel.commands defining ``configure(parser)`` and ``run(args)``
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
        command.set_defaults(run=module.run)
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
    try:
        return args.run(args)
    except (ValueError, TypeError, ImportError, OSError, SourceError) as exc:
        print(f"sinklabel {args.command}: error: {exc}", file=sys.stderr)
        return 2
