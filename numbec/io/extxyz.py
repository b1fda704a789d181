"""Streaming extended-XYZ reader and the extxyz BEC writer.

ASE 3.29's extxyz reader seeks back one line per frame; on a compressed stream
each seek decompresses from the start, so a long ``.xz`` trajectory takes hours.
This reader goes strictly forwards through an open text stream: the atom count,
the comment line (parsed with ASE's ``key_val_str_to_dict``) and then exactly
that many atom lines, tokenised with NumPy. Time and memory per frame are
constant, so a whole file streams in time linear in its length.

Per-atom columns follow the ``Properties`` key (default ``species:S:1:pos:R:3``).
Velocity conventions:

``momenta:R:3``
    ASE's convention (amu·Å per ASE time unit), converted to Å/fs.
``velocities:R:3``, ``vel:R:3``, ``velo:R:3``
    taken to be Å/fs already (as GPUMD and i-PI style files write them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, atomic_numbers
from ase.io.extxyz import key_val_str_to_dict

from numbec.conventions import ASE_TIME_UNITS_PER_FS, check_layout, first_non_finite
from numbec.io._files import open_text, quote
from numbec.io._index import forward_range, needs_length, parse_index

#: Per-atom array names searched (in this order) for nine BEC components.
BEC_KEYS = ("bec", "born_charge", "born_charges", "born_effective_charges", "REF_becs")
#: Per-atom velocity columns taken to be in Å/fs.
VELOCITY_KEYS = ("velocities", "vel", "velo")

_DTYPES = {"R": np.float64, "I": np.int64, "S": str, "L": bool}


class ExtXYZError(ValueError):
    """A malformed extended-XYZ frame."""


@dataclass
class XYZFrame:
    """One parsed extxyz frame (plain arrays, no ASE objects).

    Attributes
    ----------
    numbers : ndarray, shape (N,), int64
    positions : ndarray, shape (N, 3), float64, Å
    cell : ndarray, shape (3, 3), float64, Å, rows = lattice vectors (zeros if none)
    pbc : ndarray, shape (3,), bool
    info : dict
        Comment-line key/values except ``Lattice``, ``Properties`` and ``pbc``.
    arrays : dict of name -> ndarray, shape (N,) or (N, k)
        Other per-atom columns.
    frame : int
        0-based frame number in the file.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    info: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)
    frame: int = 0

    def masses(self) -> np.ndarray:
        """Atomic masses in amu, shape (N,): a ``masses`` column if the frame has one (as
        ASE writes for isotopes), else the standard masses of ``numbers``."""
        if "masses" in self.arrays:
            return np.asarray(self.arrays["masses"], dtype=np.float64).reshape(-1)
        return atomic_masses[self.numbers]

    def velocities(self) -> np.ndarray | None:
        """Velocities in Å/fs, shape (N, 3), or ``None`` when the frame has none."""
        for key in VELOCITY_KEYS:
            if key in self.arrays:
                return np.asarray(self.arrays[key], dtype=np.float64)
        if "momenta" in self.arrays:
            return self.arrays["momenta"] / self.masses()[:, None] * ASE_TIME_UNITS_PER_FS
        return None

    def to_atoms(self) -> Atoms:
        """An :class:`ase.Atoms` with ``info`` and per-atom ``arrays`` copied over."""
        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
        atoms.info.update(self.info)
        for key, value in self.arrays.items():
            if key == "momenta":
                atoms.set_momenta(value)
            else:
                atoms.arrays[key] = value
        return atoms


def _parse_properties(text: str, where: str) -> list[tuple[str, str, int]]:
    parts = text.split(":")
    if len(parts) % 3:
        raise ExtXYZError(f"{where}: malformed Properties string {quote(text)}")
    props = []
    for k in range(0, len(parts), 3):
        name, kind, ncols = parts[k : k + 3]
        if kind not in _DTYPES or not ncols.isdigit():
            raise ExtXYZError(
                f"{where}: malformed Properties entry {quote(f'{name}:{kind}:{ncols}')}")
        props.append((name, kind, int(ncols)))
    return props


def _column_values(block: np.ndarray, kind: str, where: str, name: str) -> np.ndarray:
    try:
        if kind == "R":
            values = block.astype(np.float64)
        elif kind == "I":
            values = block.astype(np.int64)
        elif kind == "L":
            values = np.isin(block, ("T", "True", "true", "1"))
        else:
            values = block.astype(str)
    except ValueError as exc:
        raise ExtXYZError(f"{where}: column {name!r} is not of type {kind} ({exc})") from exc
    return values[:, 0] if values.shape[1] == 1 else values


def parse_frame(count: int, comment: str, lines: list[str], where: str, frame: int) -> XYZFrame:
    """Parse one frame from its atom count, comment line and ``count`` atom lines."""
    try:
        info = key_val_str_to_dict(comment)
    except Exception as exc:
        raise ExtXYZError(f"{where}: cannot parse comment line ({exc})") from exc
    props = _parse_properties(info.pop("Properties", "species:S:1:pos:R:3"), where)
    ncols = sum(p[2] for p in props)
    tokens = " ".join(lines).split()
    if len(tokens) != count * ncols:
        for k, line in enumerate(lines):
            if len(line.split()) != ncols:
                raise ExtXYZError(
                    f"{where}: atom {k} has {len(line.split())} columns, Properties "
                    f"declares {ncols}"
                )
    table = np.array(tokens).reshape(count, ncols)
    arrays: dict[str, np.ndarray] = {}
    col = 0
    for name, kind, width in props:
        arrays[name] = _column_values(table[:, col : col + width], kind, where, name)
        col += width
    if "species" in arrays:
        try:
            numbers = np.array([atomic_numbers[s] for s in arrays.pop("species")], dtype=np.int64)
        except KeyError as exc:
            raise ExtXYZError(
                f"{where}: unknown chemical species {quote(str(exc.args[0]))}") from None
        arrays.pop("Z", None)
    elif "Z" in arrays:
        numbers = np.asarray(arrays.pop("Z"), dtype=np.int64)
    else:
        raise ExtXYZError(f"{where}: no 'species' or 'Z' column")
    if "pos" not in arrays:
        raise ExtXYZError(f"{where}: no 'pos' column")
    positions = np.asarray(arrays.pop("pos"), dtype=np.float64).reshape(count, 3)
    bad = first_non_finite(positions, 1)
    if bad is not None:
        raise ExtXYZError(f"{where}: position of atom {bad[0]} (0-based) is NaN or inf")
    lattice = info.pop("Lattice", None)
    # ASE's key_val_str_to_dict reshapes Lattice in Fortran order: transpose to rows
    cell = np.zeros((3, 3)) if lattice is None else np.asarray(lattice, float).reshape(3, 3).T
    pbc_value = info.pop("pbc", None)
    if pbc_value is None:
        pbc = np.full(3, lattice is not None)
    else:
        pbc = np.array(pbc_value, dtype=bool).reshape(-1)
        pbc = np.repeat(pbc, 3) if pbc.size == 1 else pbc
    return XYZFrame(numbers, positions, cell, pbc, info, arrays, frame)


def _read_count(line: str, where: str) -> int:
    try:
        count = int(line.split()[0])
    except (ValueError, IndexError):
        raise ExtXYZError(f"{where}: expected the number of atoms, got {quote(line)}") from None
    if count < 0:
        raise ExtXYZError(f"{where}: negative number of atoms {count}")
    return count


def count_frames(path) -> int:
    """Number of frames in an extxyz file (one pass, atom lines skipped unparsed)."""
    n = 0
    with open_text(path) as fh:
        for line in fh:
            if not line.strip():
                continue
            count = _read_count(line, f"{os.fspath(path)}, frame {n}")
            for _ in range(count + 1):
                if not fh.readline():
                    raise ExtXYZError(f"{os.fspath(path)}, frame {n}: truncated frame")
            n += 1
    return n


def iter_extxyz(path, index=":") -> Iterator[XYZFrame]:
    """Yield the selected frames of an extxyz file one at a time, strictly forwards.

    Parameters
    ----------
    path : str or PathLike
        Plain or compressed (``.gz``, ``.xz``, ``.bz2``) extxyz file.
    index : str, int or slice
        Frame selection (``":"``, ``"100:2000:10"``, ``-1``, …). Negative entries
        cost one extra counting pass.

    Yields
    ------
    XYZFrame
        With ``frame`` set to the frame number in the file.
    """
    name = os.fspath(path)
    sel = parse_index(index)
    wanted = forward_range(sel, count_frames(path) if needs_length(sel) else None)
    if len(wanted) == 0:
        return
    last = wanted[-1]
    n = 0
    with open_text(path) as fh:
        for line in fh:
            if not line.strip():
                continue
            if n > last:
                break
            where = f"{name}, frame {n}"
            count = _read_count(line, where)
            comment = fh.readline()
            lines = [fh.readline() for _ in range(count)]
            if not comment or (count and not lines[-1]):
                raise ExtXYZError(f"{where}: truncated frame (file ends inside it)")
            if n in wanted:
                yield parse_frame(count, comment, lines, where, n)
            n += 1


def find_bec_key(frame: XYZFrame, key: str | None, where: str) -> str:
    """Name of the per-atom 9-column BEC array of ``frame`` (or check ``key``)."""
    candidates = [key] if key else [k for k in BEC_KEYS if k in frame.arrays]
    if key and key not in frame.arrays:
        raise ExtXYZError(f"{where}: no per-atom array {key!r}; has {sorted(frame.arrays)}")
    if not candidates:
        raise ExtXYZError(
            f"{where}: no BEC array (looked for {', '.join(BEC_KEYS)}; per-atom arrays are "
            f"{sorted(frame.arrays)}); pass key=... to name it"
        )
    name = candidates[0]
    shape = np.shape(frame.arrays[name])
    if len(shape) != 2 or shape[1] != 9:
        raise ExtXYZError(f"{where}: array {name!r} has shape {shape}, BECs need 9 columns")
    return name


def read_extxyz_bec(path, *, layout: str | None = None, index: str | int | slice = ":",
                    key: str | None = None) -> list:
    """Read BECs and structures from an extxyz file.

    Parameters
    ----------
    path : str or PathLike
        Plain or compressed extxyz file with a per-atom 9-column array.
    layout : {"pol-disp", "disp-pol"} or None
        Layout of the nine numbers (row-major 3x3 per atom). None (default): the
        comment-line key ``layout=...`` of each frame, else ``"pol-disp"``. A layout given
        here that contradicts a frame's comment line is an error naming both.
    index : str, int or slice
        Frame selection.
    key : str, optional
        Name of the BEC array; by default the first of :data:`BEC_KEYS` present.

    Returns
    -------
    list of ase.Atoms
        Each with ``arrays["bec"]`` (N, 3, 3) float64 e, canonical
        ``Z[a, i, j] = dP_i/dr_{a,j}``; per-frame comment-line values in ``info``
        (``polarization``/``dipole`` in e·Å where present) and
        ``info["source"] = "file@frame"``.

    Raises
    ------
    ValueError (ExtXYZError, LayoutError)
        Unknown layout, a ``layout`` contradicting a comment line, malformed or truncated
        frames, a missing BEC array, NaN/inf; naming the file and frame.
    OSError
        Missing or unreadable file.
    """
    from numbec.conventions import CANONICAL_LAYOUT, LayoutError, as_bec_array, to_canonical

    if layout is not None:
        check_layout(layout)
    name = os.fspath(path)
    out = []
    for frame in iter_extxyz(path, index):
        where = f"{name}, frame {frame.frame}"
        bec_key = find_bec_key(frame, key, where)
        frame_layout = frame.info.pop("layout", None)
        if frame_layout is not None:
            try:
                check_layout(str(frame_layout))
            except ValueError as exc:
                raise type(exc)(f"{where}: comment-line {exc}") from None
            if layout is not None and str(frame_layout) != layout:
                raise LayoutError(
                    f"{where}: the comment line says layout={frame_layout} but "
                    f"layout={layout} was given (--layout); drop the option to use the "
                    "file's, or fix the file")
        frame_layout = frame_layout or layout or CANONICAL_LAYOUT
        raw = as_bec_array(frame.arrays.pop(bec_key), len(frame.numbers), where=where)
        atoms = frame.to_atoms()
        atoms.arrays["bec"] = to_canonical(raw, str(frame_layout))
        atoms.info["source"] = f"{name}@{frame.frame}"
        atoms.info["bec_layout_in_file"] = str(frame_layout)
        out.append(atoms)
    return out


#: Comment-line keys that extxyz stores as 3x3 matrices in Fortran order.
_FORTRAN_3X3_KEYS = ("stress", "virial")


def _format_value(value, key: str = "") -> str | None:
    """Comment-line text of one ``info`` value, or None when it cannot be written."""
    if isinstance(value, str):
        if not value or any(c in value for c in " =\"'"):
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return value
    if isinstance(value, bool | np.bool_):
        return "T" if value else "F"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return repr(float(value))
    arr = np.asarray(value)
    if key in _FORTRAN_3X3_KEYS and arr.shape == (3, 3):
        arr = arr.T  # ASE reads these nine numbers back in Fortran order
    if arr.dtype.kind in "biuf" and 0 < arr.size <= 64:
        if arr.dtype.kind == "b":
            return '"' + " ".join("T" if v else "F" for v in arr.ravel()) + '"'
        if arr.dtype.kind == "f":
            return '"' + " ".join(repr(float(v)) for v in arr.ravel()) + '"'
        return '"' + " ".join(str(int(v)) for v in arr.ravel()) + '"'
    return None


def format_frame(numbers, positions, cell, pbc, arrays: dict, info: dict) -> str:
    """One extxyz frame as text, numbers at full double precision.

    ``arrays`` maps names to per-atom float/int arrays of shape (N,) or (N, k);
    ``info`` values that are str, bool, numbers or small numeric arrays go on the
    comment line (others are skipped). ``Lattice`` is written row by row
    (``"a1x a1y a1z a2x ..."``), as the extxyz standard has it.
    """
    from ase.data import chemical_symbols

    n = len(numbers)
    columns = [
        np.array([chemical_symbols[z] for z in numbers], dtype=object)[:, None],
        np.asarray(positions, float).reshape(n, 3),
    ]
    props = ["species:S:1", "pos:R:3"]
    for name, value in arrays.items():
        arr = np.asarray(value)
        arr = arr.reshape(n, -1)
        kind = "R" if arr.dtype.kind == "f" else "I" if arr.dtype.kind in "iu" else None
        if kind is None:
            continue
        props.append(f"{name}:{kind}:{arr.shape[1]}")
        columns.append(arr)
    head = []
    if np.any(np.asarray(cell) != 0):
        head.append('Lattice="' + " ".join(repr(float(v)) for v in np.ravel(cell)) + '"')
    head.append("Properties=" + ":".join(props))
    for key, value in info.items():
        text = _format_value(value, key)
        if text is not None and key not in ("Lattice", "Properties", "pbc"):
            head.append(f"{key}={text}")
    head.append('pbc="' + " ".join("T" if p else "F" for p in pbc) + '"')
    rows = []
    for a in range(n):
        fields = []
        for col in columns:
            for v in col[a]:
                fields.append(
                    v
                    if isinstance(v, str)
                    else repr(float(v))
                    if isinstance(v, float | np.floating)
                    else str(v)
                )
        rows.append(" ".join(fields))
    return f"{n}\n{' '.join(head)}\n" + "\n".join(rows) + "\n"


def open_text_for_writing(path):
    """Open ``path`` for writing text, compressing by suffix (.gz, .xz, .bz2)."""
    import bz2
    import gzip
    import lzma

    name = os.fspath(path)
    if name.endswith(".gz"):
        return gzip.open(name, "wt", encoding="utf-8")
    if name.endswith(".xz"):
        return lzma.open(name, "wt", encoding="utf-8")
    if name.endswith(".bz2"):
        return bz2.open(name, "wt", encoding="utf-8")
    return open(name, "w", encoding="utf-8")  # noqa: SIM115


def write_extxyz_bec(path, frames) -> None:
    """Write frames with canonical BECs to extxyz (``bec:R:9``, ``layout="pol-disp"``).

    ``frames`` are :class:`ase.Atoms` with ``arrays["bec"]`` of shape (N, 3, 3) in
    the canonical layout; the nine numbers are written row-major per atom, all
    numbers at full double precision. Calculator results are not written (ASE 3.29
    crashes writing ``born_effective_charges``); ``info`` entries that are strings,
    numbers or small numeric arrays are. The file is compressed by suffix.
    """
    from numbec.conventions import as_bec_array

    texts = []
    # other BEC arrays of a frame (the reference charges it was read with, say) are not
    # written: a reader could take them for the BECs of the file
    for k, atoms in enumerate(frames):
        if "bec" not in atoms.arrays:
            raise ValueError(f"{os.fspath(path)}: frame {k} has no arrays['bec'] to write")
        bec = as_bec_array(atoms.arrays["bec"], len(atoms), where=f"frame {k}")
        arrays = {
            name: value
            for name, value in atoms.arrays.items()
            if name not in ("numbers", "positions") and name not in BEC_KEYS
        }
        arrays["bec"] = bec.reshape(len(atoms), 9)
        info = {key: value for key, value in atoms.info.items() if key != "bec_layout_in_file"}
        info["layout"] = "pol-disp"
        texts.append(
            format_frame(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc, arrays, info)
        )
    from numbec.io._files import atomic_write

    def write(tmp):  # the temporary keeps the suffix: .gz/.xz/.bz2 still compress
        with open_text_for_writing(tmp) as fh:
            fh.writelines(texts)

    atomic_write(path, write)
