"""Turn an exception of a ``numbec`` command into one line on stderr and an exit status.

Anticipated failures -- bad input, missing or damaged files, impossible options -- are
numbec's own errors and the ``ValueError``, ``OSError``, ``KeyError``, ``EOFError`` and
``MemoryError`` the libraries underneath raise for them. They become one line that names
the file when the error does not (found from the open file in the traceback, or the
command's input arguments) and the command-line flag instead of the Python keyword
(``pass temperature=`` becomes ``use --temperature``; an error with a ``parameter``
attribute holding a keyword name is prefixed with that keyword's flag), with any
character that is not printable text escaped. Anything else is a bug: one line that says
so and how to get the traceback.
"""

from __future__ import annotations

import argparse
import io
import lzma
import os
import re
import sys
import zlib

from numbec.io._files import OutputWriteError, printable

#: Exit status of a failed command (argparse uses 2 for a misused option).
FAILED = 1

#: Exceptions that are bad input or a bad environment, not a bug in numbec.
ANTICIPATED = (ValueError, OSError, KeyError, EOFError, MemoryError, zlib.error, lzma.LZMAError)

# "pass temperature=" / "give force_sets=FORCE_SETS" / "pass key=..."
_KEYWORD_HINT = re.compile(r"\b(pass|give|set)\s+([a-z_][a-z0-9_]*)=(\.\.\.|[A-Z][A-Z0-9_]*)?")
# "use append=True (--append)": the keyword spelled next to its flag
_KEYWORD_AND_FLAG = re.compile(r"\b[a-z_][a-z0-9_]*=\S+ \((--[a-z0-9-]+)\)")
# "(overwrite=True, --overwrite)", "(timestep=FS, --timestep FS)": both spellings given
_KEYWORD_THEN_FLAG = re.compile(r"\(\s*[a-z_][a-z0-9_]*=[^,()]*,\s*(--[a-z0-9-][^()]*)\)")
# "or trajectory=": a bare keyword left over
_BARE_KEYWORD = re.compile(r"\b([a-z_][a-z0-9_]*)=(?=[\s,;:)]|$)")


def report(exc: BaseException, parser: argparse.ArgumentParser, args, argv) -> int:
    """Print ``exc`` as one line for the subcommand ``parser``; the exit status.

    Re-raises it when ``args.debug`` is set (``--debug`` or ``NUMBEC_DEBUG``).
    """
    if getattr(args, "debug", False):
        raise exc
    if isinstance(exc, BrokenPipeError):  # e.g. `numbec info --json | head -1`
        _silence_stdout()
        return FAILED
    if isinstance(exc, ANTICIPATED) or _is_numbec_error(exc):
        message = describe(exc, parser, args, argv)
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
    else:
        print(f"{parser.prog}: internal error: {type(exc).__name__}: {printable(_one_line(exc))} "
              f"(this is a bug in numbec; run again with --debug, or NUMBEC_DEBUG=1, for the "
              f"traceback and report it)", file=sys.stderr)
    return FAILED


def describe(exc: BaseException, parser: argparse.ArgumentParser, args=None, argv=()) -> str:
    """One line saying what failed, in the words of the command line of ``parser``."""
    if isinstance(exc, MemoryError):
        sizes = _size_options_given(parser, argv)
        given = f" (given: {sizes})" if sizes else ""
        return (f"not enough memory for this run{given}; ask for less, e.g. smaller "
                f"chunks or fewer frames")
    if isinstance(exc, UnicodeDecodeError):
        message = f"not a text file of the expected format ({exc.reason} at byte {exc.start})"
    elif isinstance(exc, EOFError):
        message = f"file ended unexpectedly, it is truncated or damaged ({_one_line(exc)})"
    elif isinstance(exc, OutputWriteError):
        message = exc.strerror or _one_line(exc)
    elif isinstance(exc, OSError) and exc.filename is not None:
        message = f"{os.fsdecode(exc.filename)}: {exc.strerror or _one_line(exc)}"
        if exc.filename2 is not None:
            message += f" (and {os.fsdecode(exc.filename2)})"
    elif isinstance(exc, KeyError) and type(exc) is KeyError:
        message = f"missing entry {exc.args[0]!r}" if exc.args else "missing entry"
    else:
        message = _one_line(exc) or type(exc).__name__
    message = _flags_for_keywords(message, parser)
    parameter = getattr(exc, "parameter", None)
    flag = _flag_of(parser, parameter) if isinstance(parameter, str) else None
    if flag and flag not in message:
        message = f"{flag}: {message}"
    if _is_about_file_content(exc):
        source = _file_in_traceback(exc)
        inputs = _existing_inputs(parser, args)
        if source is None and len(inputs) == 1:
            source = inputs[0]
        given = _input_values(parser, args) + _option_paths(parser, args) \
            if args is not None else []
        named = any(value in message for value in given)
        if source is None and inputs and not named:
            message = f"{message} (while reading {', '.join(inputs)})"
        elif (source and not named and source not in message
              and os.path.basename(source) not in message):
            message = f"{source}: {message}"
    # file content quoted by a library underneath may hold control characters or bytes
    # that are not text: never send them to the terminal
    return printable(message)


def _is_numbec_error(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] == "numbec"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _flag_of(parser: argparse.ArgumentParser, keyword: str) -> str | None:
    """The long option of ``parser`` storing ``keyword`` (``temperature``: ``--temperature``)."""
    for action in parser._actions:
        if action.dest == keyword and action.option_strings:
            return max(action.option_strings, key=len)
    return None


def _flags_for_keywords(message: str, parser: argparse.ArgumentParser) -> str:
    """``pass key=...`` -> ``use --key KEY``, ``(key=..., --key ...)`` -> ``(--key ...)`` and a
    bare ``key=`` -> ``--key``, for the keywords that are options of ``parser``."""

    def replace(match):
        flag = _flag_of(parser, match.group(2))
        if flag is None:
            return match.group(0)
        if match.group(3):
            action = next(a for a in parser._actions if flag in a.option_strings)
            metavar = action.metavar or action.dest.upper()
            return f"use {flag} {metavar}"
        return f"use {flag}"

    message = _KEYWORD_AND_FLAG.sub(lambda m: m.group(1), message)
    message = _KEYWORD_THEN_FLAG.sub(lambda m: f"({m.group(1).strip()})", message)
    message = _KEYWORD_HINT.sub(replace, message)
    return _BARE_KEYWORD.sub(lambda m: _flag_of(parser, m.group(1)) or m.group(0), message)


def _input_values(parser: argparse.ArgumentParser, args) -> list[str]:
    """The positional arguments (input files, stores) the user gave the command."""
    values = []
    for action in parser._actions:
        if action.option_strings or action.dest in ("help", argparse.SUPPRESS):
            continue
        value = getattr(args, action.dest, None)
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, str):
                values.append(item)
    return values


def _option_paths(parser: argparse.ArgumentParser, args) -> list[str]:
    """The string values of the options given (templates, references, ...): a message that
    names one of them says which file it is about."""
    values = []
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", argparse.SUPPRESS):
            continue
        value = getattr(args, action.dest, None)
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, str | os.PathLike) and os.fspath(item):
                values.append(os.fspath(item))
    return values


def _is_about_file_content(exc: BaseException) -> bool:
    """Errors the readers underneath raise without saying which file they were reading."""
    if isinstance(exc, OSError):
        return exc.filename is None and not isinstance(exc, BrokenPipeError | OutputWriteError)
    return isinstance(exc, EOFError | UnicodeDecodeError | KeyError | zlib.error | lzma.LZMAError)


def _existing_inputs(parser, args) -> list[str]:
    """The input paths the command was given that exist."""
    if args is None:
        return []
    return [p for p in _input_values(parser, args) if os.path.exists(p)]


def _file_in_traceback(exc: BaseException) -> str | None:
    """Name of the innermost open file in the frames ``exc`` passed through."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            name = _file_name(value)
            if name:
                return name
    return None


def _file_name(value) -> str | None:
    if not isinstance(value, io.IOBase):
        return None
    for candidate in (value, getattr(value, "_fp", None), getattr(value, "fileobj", None)):
        name = getattr(candidate, "name", None)
        if isinstance(name, bytes):
            name = os.fsdecode(name)
        if isinstance(name, str) and os.path.exists(name):
            return name
    return None


def _size_options_given(parser: argparse.ArgumentParser, argv) -> str:
    """``--chunk-frames 1000000000``: the options given an integer on the command line."""
    takes_value = {flag for action in parser._actions if action.nargs is None
                   and action.type is not None for flag in action.option_strings}
    given = []
    argv = list(argv)
    for k, word in enumerate(argv):
        flag, _, value = word.partition("=")
        if flag in takes_value:
            value = value or (argv[k + 1] if k + 1 < len(argv) else "")
            if value.lstrip("+-").isdigit():
                given.append(f"{flag} {value}")
    return ", ".join(given)


def _silence_stdout() -> None:
    """After a closed pipe, keep Python from failing again while flushing stdout at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass
