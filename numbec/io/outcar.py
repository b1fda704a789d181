"""VASP OUTCAR reader for Born effective charges (``LEPSILON``/``LCALCEPS`` runs).

ASE reads the structure (species from the POTCAR/TITEL and ``ions per type``
lines, the final cell and positions); the BEC block, which ASE does not parse,
is read here. VASP prints, for each ion, three rows ``i  Z[i, x] Z[i, y] Z[i, z]``
where ``i`` is the electric-field direction, i.e. the canonical ``pol-disp``
layout ``Z[a, i, j] = dP_i / dr_{a,j}`` in e.
"""

from __future__ import annotations

import io
import os
import re

import ase.io
import numpy as np

from numbec.conventions import as_bec_array, to_canonical
from numbec.io._files import quote, read_text

_BLOCK_HEADER = re.compile(r"^\s*BORN EFFECTIVE CHARGES\b.*$", re.MULTILINE)
_ION_LINE = re.compile(r"^\s*ion\s+(\d+)\s*$")


class BECBlockError(ValueError):
    """A missing, truncated or malformed BORN EFFECTIVE CHARGES block."""


def parse_outcar_bec_block(text: str, where: str = "OUTCAR") -> np.ndarray:
    """Parse the final ``BORN EFFECTIVE CHARGES`` block of an OUTCAR text.

    When the file has blocks both with and without local-field effects, the last
    one "including local field effects" is taken (the physical DFPT charges).

    Parameters
    ----------
    text : str
        Whole OUTCAR text.
    where : str
        Name of the file, used in error messages.

    Returns
    -------
    ndarray, shape (N, 3, 3), float64
        ``Z[a, i, j]`` as printed: row ``i`` = field direction (pol-disp), e.

    Raises
    ------
    BECBlockError
        No block, an ion with other than three rows, rows out of order,
        non-numeric entries, or ions not numbered 1..N.
    """
    headers = list(_BLOCK_HEADER.finditer(text))
    if not headers:
        raise BECBlockError(
            f"{where}: no 'BORN EFFECTIVE CHARGES' block (was the run LEPSILON/LCALCEPS "
            f"and did it finish?)"
        )
    with_lfe = [m for m in headers if "including local field" in m.group(0)]
    header = (with_lfe or headers)[-1]
    lines = text[header.end() :].splitlines()[1:]  # first line is the end of the header
    pos = 0
    while pos < len(lines) and (not lines[pos].strip() or set(lines[pos].strip()) == {"-"}):
        pos += 1
    ions: list[np.ndarray] = []
    while pos < len(lines):
        match = _ION_LINE.match(lines[pos])
        if not match:
            break
        number = int(match.group(1))
        if number != len(ions) + 1:
            raise BECBlockError(
                f"{where}: BEC block lists ion {number} where ion {len(ions) + 1} was expected"
            )
        rows = []
        for direction in (1, 2, 3):
            line_no = pos + direction
            tokens = lines[line_no].split() if line_no < len(lines) else []
            if len(tokens) != 4 or tokens[0] != str(direction):
                raise BECBlockError(
                    f"{where}: BEC block truncated or malformed at ion {number} "
                    f"(expected row {direction} as 'direction Zx Zy Zz', got "
                    f"{quote(lines[line_no]) if line_no < len(lines) else 'end of file'})"
                )
            try:
                rows.append([float(t) for t in tokens[1:]])
            except ValueError as exc:
                raise BECBlockError(
                    f"{where}: BEC of ion {number}, row {direction} is not numeric: "
                    f"{quote(lines[line_no])}"
                ) from exc
        ions.append(np.array(rows))
        pos += 4
    if not ions:
        raise BECBlockError(f"{where}: 'BORN EFFECTIVE CHARGES' block has no ion entries")
    return np.array(ions)


def read_outcar_bec(path, *, layout: str = "pol-disp") -> ase.Atoms:
    """Read the final structure and BEC block of a VASP OUTCAR.

    Parameters
    ----------
    path : str or PathLike
        ``OUTCAR`` file, plain or compressed (``.gz``, ``.xz``, ``.bz2``).
    layout : {"pol-disp", "disp-pol"}
        Layout of the numbers in the file. VASP writes ``pol-disp``; give
        ``"disp-pol"`` only for files known to be transposed.

    Returns
    -------
    ase.Atoms
        Final structure (Å, cell rows = lattice vectors) with
        ``atoms.arrays["bec"]`` of shape (N, 3, 3), float64, e, canonical
        ``Z[a, i, j] = dP_i/dr_{a,j}``, and ``atoms.info["source"]``.

    Raises
    ------
    OSError
        Missing, unreadable or undecompressible file (named).
    ValueError (BECBlockError)
        No or a truncated BEC block, NaN/inf, an unreadable structure, a block whose ion
        count differs from the structure's; naming the file.
    """
    where = os.fspath(path)
    text = read_text(path)
    bec = parse_outcar_bec_block(text, where)
    stream = io.StringIO(text)
    stream.name = where  # ASE's OUTCAR chunker looks for a sibling POTCAR by name
    try:
        atoms = ase.io.read(stream, format="vasp-out", index=-1)
    except Exception as exc:  # ASE raises assorted errors on broken files
        raise ValueError(f"{where}: cannot read the structure from the OUTCAR ({exc})") from exc
    n_atoms = len(atoms)
    if bec.shape[0] != n_atoms:
        raise BECBlockError(
            f"{where}: BEC block has {bec.shape[0]} ions but the structure has {n_atoms} "
            f"atoms (truncated block?)"
        )
    as_bec_array(bec, n_atoms, where=where)  # NaN/inf check naming the atom
    atoms.arrays["bec"] = to_canonical(bec, layout)
    atoms.info["source"] = f"{where}@-1"
    atoms.info["bec_layout_in_file"] = layout
    return atoms
