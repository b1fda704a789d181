"""Files in and out: opening (possibly compressed) text, expanding path patterns,
writing whole or not at all.

Turn what a user passes (a path, a glob pattern, a list of either) into an ordered list
of existing files, and open any of them as a text stream whether it is plain or
compressed with gzip, xz or bzip2 -- refusing binary data with a message that names the
file, and quoting file content in messages as printable text (:func:`quote`). Write every
output through :func:`atomic_write` (a temporary name beside the target, then a rename),
so that a crash or a full disk never leaves a half-written file under the target's name.
"""

from __future__ import annotations

import bz2
import contextlib
import datetime as _dt
import errno
import glob
import gzip
import io
import json
import lzma
import os
import re
import shutil
import socket
import unicodedata
import warnings
import zlib
from collections.abc import Callable
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


#: Suffix of the temporary name an output is written under before it is renamed.
PARTIAL_SUFFIX = ".partial"


def partial_path(path) -> Path:
    """The temporary name :func:`atomic_write` writes ``path`` under: beside it, with
    :data:`PARTIAL_SUFFIX` before the file suffix (``ir.partial.csv``), so that writers
    that choose the format from the suffix (matplotlib, xarray) still recognise it."""
    path = Path(path)
    return path.with_name(path.stem + PARTIAL_SUFFIX + path.suffix)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def atomic_write(path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` whole or not at all: ``write(tmp)`` on a temporary name, then rename.

    ``write`` receives the temporary path (:func:`partial_path`) and creates a file or a
    directory there (a Zarr store, say). Only when it returns is the result renamed onto
    ``path`` (atomic on one file system; an existing file is replaced, an existing
    directory is removed first). If ``write`` raises, the temporary is removed and the
    error propagates: the target keeps its old content (or stays absent). A temporary left
    by a killed process is removed before writing.

    Raises
    ------
    FileNotFoundError
        The parent directory does not exist.
    OSError
        The disk is full (``ENOSPC``/``EFBIG``): the message names ``path``.
    """
    path = Path(path)
    tmp = partial_path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: the directory {path.parent} does not exist")
    _remove(tmp)
    try:
        with naming_disk_full(path):
            write(tmp)
            if path.is_dir() and not path.is_symlink() and tmp.is_dir():
                shutil.rmtree(path)
            tmp.replace(path)
    except BaseException:
        _remove(tmp)
        raise
    return path


#: errno values of a full disk or a file-size limit.
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class OutputWriteError(OSError):
    """An output could not be written (a full disk); the message names the output, so
    that no input file is named in its place."""


@contextlib.contextmanager
def naming_disk_full(path, advice: str = ""):
    """Re-raise a full-disk error (ENOSPC, EFBIG, EDQUOT) inside the block as an OSError
    whose message names ``path`` (and gives ``advice``); other errors pass unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        raise OutputWriteError(exc.errno, f"{os.fspath(path)}: cannot write "
                      f"({os.strerror(exc.errno)}){'; ' + advice if advice else ''}") from exc


def check_output_location(path, what: str = "output") -> Path:
    """Check, before any work starts, that ``path`` can be created: its directory exists
    and is writable. Returns ``path`` as a Path.

    Raises
    ------
    FileNotFoundError
        The directory does not exist.
    PermissionError
        The directory is not writable.
    """
    path = Path(path)
    parent = path.absolute().parent
    if not parent.is_dir():
        raise FileNotFoundError(f"{path}: cannot write the {what}: directory {parent} does "
                                "not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{path}: cannot write the {what}: directory {parent} is not "
                              "writable")
    return path


# ------------------------------------------------------------------------------ locks
#: Suffix of the lock file beside a store (``md.zarr`` -> ``md.zarr.lock``).
LOCK_SUFFIX = ".lock"


class OutputLockedError(OSError):
    """Another process is writing the same store."""


def lock_path(store) -> Path:
    """The lock file of ``store``, beside the *resolved* store (symlinks followed), so that
    two names of one store share one lock."""
    target = Path(store).resolve()
    return target.with_name(target.name + LOCK_SUFFIX)


def _read_holder(fd: int) -> dict:
    """The JSON a lock holder wrote into the lock file; {} if empty or unreadable."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
        holder = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def lock_holder(store) -> dict | None:
    """The process holding the writer's lock of ``store``, read from its lock file without
    taking the lock: ``{"pid", "host", "command", "started"}``, or None when no lock file
    names a pid, or it names a process of this host that is gone (a killed run's file)."""
    try:
        fd = os.open(lock_path(store), os.O_RDONLY)
    except OSError:
        return None
    try:
        holder = _read_holder(fd)
    finally:
        os.close(fd)
    if not isinstance(holder.get("pid"), int):
        return None
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, another user's
            pass
    return {k: holder.get(k) for k in ("pid", "host", "command", "started")}


@contextlib.contextmanager
def store_lock(store, command: str = "numbec"):
    """Hold the writer's lock of ``store`` for the duration of a run.

    The lock is an operating-system lock (``flock``) on ``<resolved store>.lock``: the
    kernel releases it when the holding process ends in any way (a kill included), so a
    lock file left behind, empty or garbled, never blocks a later run. The file holds the
    holder's pid, host, command and start time, for the message of a run that finds the
    store locked, and is removed on release.

    Raises
    ------
    OutputLockedError
        Another live process holds the lock (the message names it).
    """
    import fcntl

    lock = lock_path(store)
    lock.parent.mkdir(parents=True, exist_ok=True)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    for _attempt in range(10):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            who = (f"pid {holder.get('pid')} on host {holder.get('host')} "
                   f"({holder.get('command', 'numbec')}, since {holder.get('started')})"
                   if holder else "another process")
            raise OutputLockedError(
                f"{store} is locked by {who}: another numbec run is writing it; wait for it "
                "to finish"
            ) from None
        try:  # the file may have been removed by its previous holder meanwhile: retry
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:  # pragma: no cover - the lock file kept disappearing
        raise OutputLockedError(f"{store}: could not take the lock {lock}")
    try:
        previous = _read_holder(fd)
        if previous.get("pid") is not None:
            warnings.warn(f"{lock}: taking over the stale lock of process "
                          f"{previous.get('pid')}, which ended without releasing it",
                          stacklevel=3)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield lock
    finally:
        with contextlib.suppress(OSError):
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                lock.unlink()
        os.close(fd)


def consolidate(out) -> None:
    """Consolidate the metadata of a finished store so that readers open it in one read
    (``xarray.open_zarr(out)`` without warnings). Zarr v3 has no consolidated metadata in
    its specification yet; zarr-python's extension is used and its warning silenced."""
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(out))
