"""Opening (possibly compressed) text files and expanding path patterns.

One job: turn what a user passes (a path, a glob pattern, a list of either) into
an ordered list of existing files, and open any of them as a text stream whether
it is plain or compressed with gzip, xz or bzip2 -- refusing binary data with a message
that names the file, and quoting file content in messages as printable text (:func:`quote`).
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import lzma
import os
import re
import unicodedata
import zlib
from pathlib import Path

#: Compression suffixes understood everywhere numbec reads text files.
COMPRESSION_SUFFIXES = (".gz", ".xz", ".bz2")

_MAGIC = (
    (b"\x1f\x8b", gzip.open),
    (b"\xfd7zXZ\x00", lzma.open),
    (b"BZh", bz2.open),
)


#: Bytes at the start of a (decompressed) file examined to tell text from binary data.
SNIFF_BYTES = 8192

#: Share of undecodable or control characters above which the start of a file is binary.
#: Text with a few stray non-UTF-8 bytes (a Latin-1 comment) stays below it.
BINARY_SHARE = 0.1


class NotTextError(ValueError):
    """A file read as text holds binary data."""


def printable(text: str) -> str:
    """``text`` with every character a terminal would not show as text escaped.

    Control characters and undecodable bytes (read as U+FFFD) become ``\\x00``,
    ``\\ufffd`` etc.; printable characters, non-ASCII letters included, stay as they are.
    """
    return "".join(c if c.isprintable() and c != "\ufffd"
                   else c.encode("unicode_escape").decode("ascii") for c in text)


def quote(text: str, limit: int = 60) -> str:
    """``text`` read from a file, quoted for an error message.

    Stripped, at most ``limit`` characters (then ``... (N characters)``), with
    non-printable characters escaped (:func:`printable`).
    """
    text = text.strip()
    shown = printable(repr(text[:limit]))
    if len(text) > limit:
        shown += f"... ({len(text)} characters)"
    return shown


def _binary_offset(head: bytes) -> int | None:
    """Offset of the first byte that is not text when ``head`` is binary data; None for text.

    Binary: a NUL byte (no text format numbec reads has one), or more than
    :data:`BINARY_SHARE` of the characters undecodable as UTF-8 or control characters
    other than whitespace.
    """
    text = head.decode("utf-8", errors="replace")
    bad = [k for k, c in enumerate(text) if c == "\ufffd"
           or (unicodedata.category(c) == "Cc" and c not in "\t\n\r\f\v")]
    if b"\0" in head or len(bad) > BINARY_SHARE * len(text):
        return len(text[:bad[0]].encode("utf-8"))  # no U+FFFD before bad[0]: exact
    return None


def _refuse_binary(path: str, opener, compressed: bool) -> None:
    """Raise :class:`NotTextError` naming ``path`` when its content starts as binary data."""
    try:
        with opener(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except (EOFError, OSError, lzma.LZMAError, zlib.error):
        return  # damaged: reading the text reports it, in the reader's words
    offset = _binary_offset(head)
    if offset is not None:
        where = " of the decompressed content" if compressed else ""
        raise NotTextError(
            f"{path}: not a text file (binary data at byte {offset}{where}: "
            f"{head[offset:offset + 8].hex(' ')})")


def strip_compression(name: str) -> str:
    """Return ``name`` without a trailing ``.gz``, ``.xz`` or ``.bz2``."""
    for suffix in COMPRESSION_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def open_text(path) -> io.TextIOBase:
    """Open ``path`` for reading text, decompressing gzip/xz/bzip2 transparently.

    The compression is recognised by the file's magic bytes (not only its suffix),
    so a misnamed file still opens. Raises :class:`OSError` naming the file when it
    does not exist or cannot be read, and :class:`NotTextError` (a ``ValueError``) naming
    it when its (decompressed) start is binary data. Stray bytes that are not UTF-8 are
    read as U+FFFD.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError as exc:
        raise OSError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    for magic, opener in _MAGIC:
        if head.startswith(magic):
            _refuse_binary(path, opener, compressed=True)
            return opener(path, "rt", encoding="utf-8", errors="replace")
    _refuse_binary(path, open, compressed=False)
    return open(path, encoding="utf-8", errors="replace")  # noqa: SIM115


def read_text(path) -> str:
    """Whole (decompressed) text of ``path``; errors name the file."""
    try:
        with open_text(path) as fh:
            return fh.read()
    except (EOFError, lzma.LZMAError, gzip.BadGzipFile, OSError) as exc:
        if isinstance(exc, OSError) and str(exc).startswith(os.fspath(path)):
            raise
        raise OSError(f"{path}: cannot decompress or read file ({exc})") from exc


def _natural_key(path: str):
    """Sort key that orders ``OUTCAR.2.xz`` before ``OUTCAR.10.xz``."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", path)]


def expand_paths(path_or_paths) -> list[Path]:
    """Expand a path, a glob pattern or a list of them into existing files.

    Glob matches are sorted in natural order (``OUTCAR.2`` before ``OUTCAR.10``);
    the order of an explicit list is kept. A pattern matching nothing or a path
    that does not exist raises :class:`FileNotFoundError` naming it.
    """
    if isinstance(path_or_paths, str | os.PathLike):
        items = [path_or_paths]
    else:
        items = list(path_or_paths)
        if not items:
            raise ValueError("no input files given")
    out: list[Path] = []
    for item in items:
        text = os.fspath(item)
        if os.path.exists(text):
            out.append(Path(text))
        elif glob.has_magic(text):
            matches = sorted(glob.glob(text), key=_natural_key)
            if not matches:
                raise FileNotFoundError(f"{text}: pattern matches no file")
            out.extend(Path(m) for m in matches)
        else:
            raise FileNotFoundError(f"{text}: no such file")
    return out


#: Prefix that names a file bundled in ``numbec/data`` on the command line.
EXAMPLE_PREFIX = "example:"


def example_file(name: str) -> Path:
    """Path of a data file bundled with numbec (``numbec/data/NAME``).

    ``name`` may omit the ``.xyz`` suffix, e.g. ``"sio2_quartz_subset"`` (20 frames
    of the allegro-pol alpha-quartz set, MIT; see ``SIO2_LICENSE_AND_CITATION.txt``).
    """
    folder = Path(__file__).resolve().parents[1] / "data"
    for candidate in (folder / name, folder / f"{name}.xyz"):
        if candidate.is_file():
            return candidate
    available = sorted(p.name for p in folder.glob("*.xyz"))
    raise FileNotFoundError(f"no bundled example {name!r}; available: {', '.join(available)}")


def resolve_example(path):
    """``"example:NAME"`` -> the bundled file's path; anything else unchanged."""
    text = os.fspath(path)
    if text.startswith(EXAMPLE_PREFIX):
        return example_file(text[len(EXAMPLE_PREFIX) :])
    return path
