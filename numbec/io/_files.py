"""Opening (possibly compressed) text files and expanding path patterns.

One job: turn what a user passes (a path, a glob pattern, a list of either) into
an ordered list of existing files, and open any of them as a text stream whether
it is plain or compressed with gzip, xz or bzip2.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import lzma
import os
import re
from pathlib import Path

#: Compression suffixes understood everywhere numbec reads text files.
COMPRESSION_SUFFIXES = (".gz", ".xz", ".bz2")

_MAGIC = (
    (b"\x1f\x8b", gzip.open),
    (b"\xfd7zXZ\x00", lzma.open),
    (b"BZh", bz2.open),
)


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
    does not exist or cannot be read.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError as exc:
        raise OSError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    for magic, opener in _MAGIC:
        if head.startswith(magic):
            return opener(path, "rt", encoding="utf-8", errors="replace")
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
