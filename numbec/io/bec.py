"""``read_bec`` / ``write_bec``: Born effective charges in and out, any format.

Every reader returns a list of :class:`ase.Atoms` with ``atoms.arrays["bec"]`` of
shape (N, 3, 3), float64, in e, in the one canonical layout
``Z[a, i, j] = dP_i / dr_{a,j}`` (row = polarisation/field direction, see
:mod:`numbec.conventions`), ``atoms.info["source"] = "file@frame"`` and, when the
file has them, ``atoms.info["dipole"]`` / ``atoms.info["polarization"]`` in e·Å.

Formats (detected from the file name, or forced with ``format=``):

==========  ==========================================  ======================
format      files                                        layout in the file
==========  ==========================================  ======================
``outcar``  ``OUTCAR*`` (plain, .gz, .xz, .bz2)          pol-disp
``vasprun`` ``vasprun*.xml`` (via ASE)                   pol-disp
``extxyz``  ``*.xyz``, ``*.extxyz`` (+ compression)      as ``layout``/comment
``born``    phonopy ``BORN`` + ``POSCAR-unitcell``        pol-disp
``qe-ph``   Quantum ESPRESSO ph.x output (via ASE)       pol-disp
==========  ==========================================  ======================
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from numbec.conventions import CANONICAL_LAYOUT, as_bec_array, check_layout, to_canonical
from numbec.io._files import expand_paths, strip_compression
from numbec.io._index import forward_range, parse_index

FORMATS = ("outcar", "vasprun", "extxyz", "born", "qe-ph")


def detect_format(path) -> str:
    """Guess the BEC file format from the name of ``path`` (compression ignored).

    Raises :class:`ValueError` naming the file when the name says nothing; pass
    ``format=`` then.
    """
    name = strip_compression(Path(path).name)
    lower = name.lower()
    if lower.startswith("outcar"):
        return "outcar"
    if lower.startswith("vasprun") and ".xml" in lower:
        return "vasprun"
    if lower.endswith((".xyz", ".extxyz")):
        return "extxyz"
    if lower == "born" or lower.startswith("born."):
        return "born"
    if lower.endswith((".phout", ".ph.out")) or lower.startswith("ph.") and "out" in lower:
        return "qe-ph"
    raise ValueError(
        f"{os.fspath(path)}: cannot tell the BEC file format from its name; pass format= one "
        f"of {', '.join(FORMATS)}"
    )


def _select(frames: list, index, where: str) -> list:
    sel = parse_index(index)
    try:
        return [frames[i] for i in forward_range(sel, len(frames))]
    except IndexError as exc:
        raise IndexError(f"{where}: {exc}") from None


def _move_calc_results(atoms) -> None:
    """Move dipole/polarisation from ``atoms.calc.results`` into ``atoms.info``."""
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", {}) if calc is not None else {}
    for name in ("dipole", "polarization"):
        if name in results and name not in atoms.info and results[name] is not None:
            atoms.info[name] = np.asarray(results[name], dtype=np.float64)


def _read_vasprun(path, layout, index):
    import ase.io

    where = os.fspath(path)
    try:
        images = ase.io.read(where, format="vasp-xml", index=":")
    except Exception as exc:
        raise ValueError(f"{where}: cannot read vasprun.xml ({exc})") from exc
    out = []
    for k, atoms in enumerate(images):
        results = atoms.calc.results if atoms.calc is not None else {}
        bec = results.get("born_effective_charges")
        if bec is None:
            continue
        raw = as_bec_array(bec, len(atoms), where=f"{where}, frame {k}")
        _move_calc_results(atoms)
        atoms.arrays["bec"] = to_canonical(raw, layout)
        if results.get("dielectric_tensor") is not None:
            atoms.info["eps_inf"] = np.asarray(results["dielectric_tensor"], float)
        atoms.info["source"] = f"{where}@{k}"
        atoms.info["bec_layout_in_file"] = layout
        out.append(atoms)
    if not out:
        raise ValueError(f"{where}: no Born effective charges (born_charges) in vasprun.xml")
    return _select(out, index, where)


def _read_qe_ph(path, layout, index):
    from ase.io.espresso import read_espresso_ph

    from numbec.io._files import open_text

    where = os.fspath(path)
    with open_text(path) as fh:
        try:
            data = read_espresso_ph(fh)
        except Exception as exc:
            raise ValueError(f"{where}: cannot parse ph.x output ({exc})") from exc
    out = []
    for q in sorted(data):
        entry = data[q]
        bec = entry.get("borneffcharge_dfpt")
        if bec is None:
            bec = entry.get("borneffcharge")
        atoms = entry.get("atoms")
        if bec is None or atoms is None:
            continue
        raw = as_bec_array(np.asarray(bec), len(atoms), where=f"{where}, q-point {q}")
        atoms = atoms.copy()
        atoms.arrays["bec"] = to_canonical(raw, layout)
        if entry.get("dieltensor") is not None:
            atoms.info["eps_inf"] = np.asarray(entry["dieltensor"], float)
        atoms.info["source"] = f"{where}@{len(out)}"
        atoms.info["bec_layout_in_file"] = layout
        out.append(atoms)
    if not out:
        raise ValueError(f"{where}: no effective charges with a structure in this ph.x output")
    return _select(out, index, where)


def _read_one(path, fmt, layout, index, key):
    if fmt == "extxyz":  # the only format that can say its layout itself
        from numbec.io.extxyz import read_extxyz_bec

        return read_extxyz_bec(path, layout=layout, index=index, key=key)
    layout = layout or CANONICAL_LAYOUT
    if fmt == "outcar":
        from numbec.io.outcar import read_outcar_bec

        return _select([read_outcar_bec(path, layout=layout)], index, os.fspath(path))
    if fmt == "born":
        from numbec.io.phonopy_born import read_phonopy_born

        return _select(read_phonopy_born(path, layout=layout), index, os.fspath(path))
    if fmt == "vasprun":
        return _read_vasprun(path, layout, index)
    if fmt == "qe-ph":
        return _read_qe_ph(path, layout, index)
    raise ValueError(f"unknown BEC file format {fmt!r}; use one of {', '.join(FORMATS)}")


def read_bec(path_or_paths, *, format: str | None = None, layout: str | None = None,
             index: str | int | slice = ":", key: str | None = None) -> list:
    """Read structures with Born effective charges from one or many files.

    Parameters
    ----------
    path_or_paths : str, PathLike, glob pattern, or list of them
        Files to read; glob matches are sorted naturally (``OUTCAR.2.xz`` before
        ``OUTCAR.10.xz``), explicit lists keep their order.
    format : {"outcar", "vasprun", "extxyz", "born", "qe-ph"}, optional
        File format; detected from each file name when omitted.
    layout : {"pol-disp", "disp-pol"} or None
        Layout of the BEC numbers in the files: ``"pol-disp"`` (row =
        polarisation/field; VASP, phonopy, QE, allegro-pol) or ``"disp-pol"``
        (row = displacement). None (default): what an extxyz comment line says
        (``layout=...``), else ``"pol-disp"``. An explicit layout that contradicts a
        comment line is an error.
    index : str, int or slice
        Frame selection within each file (``":"`` all, ``-1`` last, ``"0:10"``).
    key : str, optional
        extxyz only: name of the per-atom 9-column BEC array.

    Returns
    -------
    list of ase.Atoms
        ``arrays["bec"]``: (N, 3, 3) float64, e, canonical
        ``Z[a, i, j] = dP_i/dr_{a,j}``; ``info["source"]``: ``"file@frame"``;
        ``info["dipole"]``/``info["polarization"]`` (3,) e·Å where the file has them;
        ``info["eps_inf"]`` (3, 3) for DFPT files that give it.

    Raises
    ------
    FileNotFoundError, OSError
        Missing or unreadable file (named).
    ValueError
        Unknown layout or format, a layout contradicting the file's own, a missing or
        truncated BEC block, NaN/inf values, atom-count mismatches, a structure of no
        atoms, binary or garbled files; the message names the file, frame and atom.
    """
    if layout is not None:
        check_layout(layout)
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown BEC file format {format!r}; use one of {', '.join(FORMATS)}")
    frames = []
    for path in expand_paths(path_or_paths):
        fmt = format or detect_format(path)
        for k, atoms in enumerate(_read_one(path, fmt, layout, index, key)):
            if len(atoms) == 0:
                # a BEC set of no atoms teaches nothing and divides by zero downstream
                where = atoms.info.get("source", f"{os.fspath(path)}@{k}")
                raise ValueError(f"{where.rpartition('@')[0] or where}, frame "
                                 f"{where.rpartition('@')[2]}: the structure has no atoms")
            _move_calc_results(atoms)
            frames.append(atoms)
    return frames


def write_bec(path, frames) -> None:
    """Write frames with BECs as extxyz: per-atom ``bec:R:9`` and ``layout="pol-disp"``.

    Parameters
    ----------
    path : str or PathLike
        Output ``.xyz``/``.extxyz`` file (``.gz``/``.xz``/``.bz2`` compress it).
    frames : ase.Atoms or list of ase.Atoms
        Each with ``arrays["bec"]`` (N, 3, 3) in the canonical layout
        ``Z[a, i, j] = dP_i/dr_{a,j}``, e. ``info`` entries (e.g. ``polarization``)
        are written on the comment line.
    """
    from ase import Atoms

    from numbec.io.extxyz import write_extxyz_bec

    if isinstance(frames, Atoms):
        frames = [frames]
    write_extxyz_bec(path, frames)
