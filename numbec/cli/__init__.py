"""The ``numbec`` command line: thin subcommands over the Python API.

Each subcommand lives in its own module ``numbec.cli.<name>`` with two functions,
``register(subparsers)`` (adds its parser and sets ``func``) and the function it sets.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Subcommand modules, in the order ``numbec --help`` lists them.
COMMANDS = ("demo", "convert", "info", "train", "evaluate", "predict", "ir", "born")


def build_parser() -> argparse.ArgumentParser:
    from numbec import __version__

    parser = argparse.ArgumentParser(
        prog="numbec",
        description="Learn Born effective charges and compute IR spectra from MD trajectories.",
    )
    parser.add_argument("--version", action="version", version=f"numbec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"numbec.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"numbec.cli.{name}":
                continue  # subcommand not built yet
            raise
        module.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("numbec: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"numbec {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
