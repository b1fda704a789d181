"""The ``numbec`` command line: thin subcommands over the Python API.

Each subcommand lives in its own module ``numbec.cli.<name>`` with two functions,
``register(subparsers)`` (adds its parser and sets ``func``) and the function it sets.
Only the module of the command being run is imported (``numbec --help`` lists the commands
from :data:`COMMANDS` without importing Numba, SciPy or xarray).

What this entry point adds to every subcommand, so the commands do not repeat it:

* ``--debug`` (before or after the command; or ``NUMBEC_DEBUG=1``): tracebacks;
* ``--no-progress`` (before or after the command): no progress bars. The command reads
  ``args.progress`` (bool: on by default when stderr is a terminal; a command's own
  ``--progress`` flag forces it on) or, equivalently, ``args.no_progress``;
* help that keeps paragraphs and lists and shows every default (:class:`HelpFormatter`);
* one-line errors naming the command-line flag (see :mod:`numbec.cli._errors`), and the
  subcommand's usage, not the top-level one, for a misused option.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading

#: Subcommands in the order ``numbec --help`` lists them, with the one-line summary it shows.
#: ``tests/test_cli_main.py`` checks that each equals the ``help=`` its module registers.
COMMANDS = {
    "demo": "offline end-to-end demo: xTB water clusters -> models -> MD -> IR spectra",
    "convert": "convert a trajectory (extxyz, ASE .traj, XDATCAR, LAMMPS dump, ...) to a store",
    "info": "describe a trajectory store, prediction store or model file",
    "train": "fit a monopole, dipole or combined kernel model to reference BECs",
    "evaluate": "RMSE/MAE/R2 of a saved model on reference BECs, with a species-mean baseline",
    "predict": "predict BECs and dipole derivatives along a trajectory store",
    "select": "choose the trajectory frames to compute reference BECs for (active learning)",
    "ir": "IR spectrum (absolute units, error bars) from a prediction store",
    "born": "predict the BECs of one structure and write them for phonopy (BORN), i-PI, ...",
}

#: Environment variable that turns on tracebacks like ``--debug``.
DEBUG_ENV = "NUMBEC_DEBUG"

_EPILOG = """\
Run 'numbec COMMAND --help' for the options of a command. Every command accepts
--debug (tracebacks; or set NUMBEC_DEBUG=1) and --no-progress (no progress bars,
which are on by default when stderr is a terminal), before or after COMMAND."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's paragraphs and lists, and appends ``(default: X)`` to options.

    The default is not repeated where the help already states one, and not shown for flags
    (``store_true``) or options whose default is ``None`` (their help says what happens).
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or "%(default)" in text:
            return text
        if action.default is None or action.default is argparse.SUPPRESS:
            return text
        if action.nargs == 0:  # flags: store_true / store_false / count
            return text
        return super()._get_help_string(action)


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The ``numbec`` parser.

    Parameters
    ----------
    command : str or None
        ``"*"`` (default) registers every subcommand fully (imports every ``numbec.cli``
        module); a command name registers only that one and lists the others by name;
        ``None`` lists them all by name (enough for ``numbec --help``).
    """
    from numbec import __version__

    parser = argparse.ArgumentParser(
        prog="numbec",
        description="Learn Born effective charges and compute IR spectra from MD trajectories.",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"numbec {__version__}")
    parser.add_argument("--debug", dest="debug_global", action="store_true",
                        help=f"show tracebacks (or set {DEBUG_ENV}=1)")
    parser.add_argument("--no-progress", dest="no_progress_global", action="store_true",
                        help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.commands = sub.choices  # name -> subcommand parser
    for name, summary in COMMANDS.items():
        if command == "*" or command == name:
            importlib.import_module(f"numbec.cli.{name}").register(sub)
            _add_common_options(sub.choices[name])
        else:
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    """Help format, ``--debug`` and ``--no-progress`` for a subcommand's parser.

    A command that defines one of these flags itself keeps its own definition.
    """
    parser.formatter_class = HelpFormatter
    for flags, dest, text in (
        (("--debug",), "debug", f"show tracebacks (or set {DEBUG_ENV}=1)"),
        (("--no-progress",), "no_progress", "no progress bars (on by default when stderr "
                                            "is a terminal)"),
    ):
        try:
            parser.add_argument(*flags, dest=dest, action="store_true", help=text)
        except argparse.ArgumentError:  # the command defines it itself
            pass
    # None = "not given": a command's own --progress flag sets True
    parser.set_defaults(progress=None)


def _command_in(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not an option), if known."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def _debug_wanted(args) -> bool:
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return env not in ("", "0", "no", "false", "off") or bool(
        getattr(args, "debug_global", False) or getattr(args, "debug", False))


def main(argv=None) -> int:
    """Run the ``numbec`` command line on ``argv`` (default ``sys.argv[1:]``); exit status.

    0 on success, 1 when the command fails (one line on stderr), 2 for a misused option
    (with the usage of the command), 130 when interrupted (Ctrl-C), 143 when terminated
    (SIGTERM).
    """
    from numbec.cli._errors import report

    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_in(argv)
    parser = build_parser(command)
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "func", None):
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        parser.print_help()
        return 2
    sub = parser.commands[args.command]
    if extra:  # argparse would print the top-level usage for options of the subcommand
        before = argv[:argv.index(args.command)]
        (parser if any(word in before for word in extra) else sub).error(
            f"unrecognized arguments: {' '.join(extra)}")
    args.debug = _debug_wanted(args)
    no_progress = bool(args.no_progress_global or getattr(args, "no_progress", False))
    if args.progress is None:
        args.progress = not no_progress and _stderr_is_terminal()
    args.no_progress = not args.progress
    try:
        with _sigterm_interrupts(), _warnings_as_lines(sub.prog):
            return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        if args.debug:
            raise
        if isinstance(exc, Terminated):
            print(f"{sub.prog}: interrupted (terminated)", file=sys.stderr)
            return 128 + signal.SIGTERM
        print(f"{sub.prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        return report(exc, sub, args, argv)


@contextlib.contextmanager
def _warnings_as_lines(prog: str):
    """Show warnings as ``numbec ir: warning: MESSAGE``, each distinct message once.

    Python's format names numbec's source file and line and quotes the code line, which
    mean nothing to a user of the command line. Only the formatting changes: filters and
    any recording of warnings (tests) work as before.
    """
    import warnings

    from numbec.io._files import printable

    seen = set()

    def one_line(message, category, filename, lineno, line=None):
        text = printable(" ".join(str(message).split()))
        if text in seen:
            return ""
        seen.add(text)
        return f"{prog}: warning: {text}\n"

    previous = warnings.formatwarning
    warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = previous


class Terminated(KeyboardInterrupt):
    """SIGTERM received (``kill``, a batch system's time limit)."""


@contextlib.contextmanager
def _sigterm_interrupts():
    """Make SIGTERM interrupt the command as Ctrl-C does.

    By default SIGTERM kills Python at once: no ``finally`` block runs, so a store's lock
    and its temporaries stay behind. Raised as a KeyboardInterrupt, it goes through the
    same clean-up as Ctrl-C. Worker processes forked meanwhile keep the default action,
    so that a pool can still stop them.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
