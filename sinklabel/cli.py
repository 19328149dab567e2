"""The ``sinklabel`` command line: one module per command under ``sinklabel.commands``.

Run ``sinklabel <command> --help`` for each command's options.
"""

from __future__ import annotations

import argparse
import importlib
import sys

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
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        summary = (module.__doc__ or "").strip().splitlines()[0]
        command = sub.add_parser(name, help=summary, description=module.__doc__)
        module.configure(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sinklabel`` and ``python -m sinklabel``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, ImportError, OSError, SourceError) as exc:
        print(f"sinklabel {args.command}: error: {exc}", file=sys.stderr)
        return 2
