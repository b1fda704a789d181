"""Inputs for the reference calculations of selected frames: extxyz, VASP and pw.x folders.

:func:`write_selected` writes the frames picked by :func:`numbec.selection.select` into a
directory, ready for DFT:

``selected.extxyz``
    every frame with ``info["frame"]`` (index in the trajectory) and ``info["time"]`` (fs,
    when known); positions Å, cell Å (rows = lattice vectors), pbc;
``selection.json``
    what was selected and how (written last: its presence means the directory is complete);
``frame_000123/`` (``format="vasp"`` or ``"espresso"``), one folder per frame:
    ``POSCAR`` (VASP 5, Cartesian positions in Å as in the trajectory) plus the files of the
    template (``INCAR``, ``KPOINTS``, ``POTCAR``, ... copied unchanged), or ``pw.in``, a
    Quantum ESPRESSO pw.x input whose namelists (``&control``, ``&system``, ``&electrons``,
    ...) and ``ATOMIC_SPECIES`` / ``K_POINTS`` cards come from the template and whose
    structure is the frame's (``ibrav = 0``, ``CELL_PARAMETERS angstrom``,
    ``ATOMIC_POSITIONS angstrom``); and ``frame.json`` with the frame index, time and
    ``atom_order`` (see below).

Atom order: POSCAR lists atoms in blocks of one species. When the trajectory's atoms are
not already so grouped, they are sorted by species (stable, in order of first appearance)
and ``frame.json`` holds ``atom_order``: POSCAR atom ``p`` is trajectory atom
``atom_order[p]``. The BECs of the finished calculation (read by ``numbec train`` from its
OUTCAR together with its positions) are self-consistent in either order. The POSCAR's
species line follows the same order (first appearance in the frame), and a template
``POTCAR`` must list its potentials (``TITEL`` lines) in that order: one that does not is
refused, since VASP would take each potential for another species. Without a template a
folder holds only ``POSCAR`` and ``frame.json`` (a warning and ``selection.json`` say so).

Every file is written whole or not at all, each frame folder under a temporary name that
is renamed into place when complete.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from numbec.io._files import atomic_write

__all__ = ["FORMATS", "read_espresso_template", "write_selected"]

#: Output formats of :func:`write_selected`.
FORMATS = ("extxyz", "vasp", "espresso")

_QE_CARDS = ("ATOMIC_SPECIES", "ATOMIC_POSITIONS", "K_POINTS", "CELL_PARAMETERS",
             "OCCUPATIONS", "CONSTRAINTS", "ATOMIC_FORCES", "ADDITIONAL_K_POINTS",
             "SOLVENTS", "HUBBARD", "ATOMIC_VELOCITIES")
#: &system keys that describe the structure: set from each frame, not from the template.
_QE_STRUCTURE_KEYS = ("nat", "ntyp", "ibrav", "a", "b", "c", "cosab", "cosac", "cosbc")


def _atomic_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _frame_name(k: int) -> str:
    return f"frame_{int(k):06d}"


# ---------------------------------------------------------------------------- VASP
def _species_blocks_order(numbers: np.ndarray) -> np.ndarray | None:
    """None if the atoms are already in one block per species, else the stable order that
    groups them (species in order of first appearance)."""
    numbers = np.asarray(numbers)
    changes = np.count_nonzero(numbers[1:] != numbers[:-1]) + 1 if numbers.size else 0
    if changes == np.unique(numbers).size:
        return None
    _, first = np.unique(numbers, return_index=True)
    rank = {int(numbers[i]): r for r, i in enumerate(sorted(first))}
    return np.argsort([rank[int(z)] for z in numbers], kind="stable")


def _poscar_text(atoms, comment: str) -> str:
    from ase.io import write

    buf = io.StringIO()
    write(buf, atoms, format="vasp", direct=False, sort=False, vasp5=True)
    lines = buf.getvalue().split("\n", 1)  # first line: a free comment
    return comment + "\n" + lines[1]


def _potcar_species(path: Path) -> list[str]:
    """Elements of a POTCAR's potentials, in order (``TITEL = PAW_PBE Zr_sv 04Jan2005``:
    ``Zr``)."""
    import re

    titles = re.findall(r"^\s*TITEL\s*=\s*\S+\s+(\S+)", path.read_text(errors="replace"),
                        flags=re.MULTILINE)
    return [t.split("_")[0].split(".")[0] for t in titles]


def _check_potcar(files: list[Path], frames) -> None:
    """Refuse a template POTCAR whose potentials are not in the POSCAR's species order."""
    from ase.data import chemical_symbols

    for f in files:
        if f.name != "POTCAR" or not frames:
            continue
        numbers = np.asarray(frames[0].numbers)
        _, first = np.unique(numbers, return_index=True)
        poscar = [chemical_symbols[int(numbers[i])] for i in sorted(first)]
        potcar = _potcar_species(f)
        if potcar and potcar != poscar:
            raise ValueError(
                f"{f}: the POTCAR's potentials are for {' '.join(potcar)} (TITEL lines), but "
                f"the POSCARs list the species {' '.join(poscar)} (order of first appearance "
                "in the trajectory); concatenate the POTCARs in that order")


def _template_files(template) -> list[Path]:
    if template is None:
        return []
    paths = [Path(p) for p in (template if isinstance(template, (list, tuple)) else [template])]
    files = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: template file or directory not found")
    for f in files:
        if f.name == "POSCAR":
            raise ValueError(f"{f}: a template must not contain a POSCAR (each frame writes its "
                             "own)")
    return files


# ---------------------------------------------------------------------------- pw.x
def read_espresso_template(path) -> dict:
    """Settings of a pw.x input used as a template.

    Returns a dict with ``input_data`` (namelist sections -> {key: value}, the structure keys
    ``nat``, ``ntyp``, ``ibrav``, ``celldm``, ``a``... removed), ``pseudopotentials``
    ({symbol: file} from ``ATOMIC_SPECIES``), ``kpts`` ((3,) int or None for ``K_POINTS
    gamma``), ``koffset`` ((3,) int) and ``additional_cards`` (other cards, verbatim lines).
    Raises ValueError naming the file for a template without ``ATOMIC_SPECIES`` or with
    ``K_POINTS`` other than ``automatic`` or ``gamma``.
    """
    from ase.io.espresso import read_fortran_namelist

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pw.x template not found")
    with open(path, encoding="utf-8") as fh:
        data, card_lines = read_fortran_namelist(fh)
    if not data:
        raise ValueError(f"{path}: no Fortran namelist (&control, &system, ...): not a pw.x "
                         "input")
    input_data = {section: dict(values) for section, values in data.items()
                  if section != "_ignored"}
    system = input_data.setdefault("system", {})
    for key in list(system):
        if key.lower() in _QE_STRUCTURE_KEYS or key.lower().startswith("celldm"):
            del system[key]
    cards: dict[str, list[str]] = {}
    current = None
    for line in card_lines:
        word = line.split()[0].upper()
        if word in _QE_CARDS:
            current = word
            cards[current] = [line]
        elif current is not None:
            cards[current].append(line)
    if "ATOMIC_SPECIES" not in cards:
        raise ValueError(f"{path}: no ATOMIC_SPECIES card (the pseudopotential of each species)")
    pseudos = {}
    for line in cards["ATOMIC_SPECIES"][1:]:
        parts = line.split()
        if len(parts) < 3:
            raise ValueError(f"{path}: ATOMIC_SPECIES line {line!r}: expected 'X mass file'")
        pseudos[parts[0]] = parts[2]
    kpts, koffset = None, (0, 0, 0)
    if "K_POINTS" in cards:
        head = cards["K_POINTS"][0].lower()
        if "automatic" in head:
            try:
                values = [int(v) for v in cards["K_POINTS"][1].split()[:6]]
            except (IndexError, ValueError):
                raise ValueError(f"{path}: K_POINTS automatic needs 'k1 k2 k3 s1 s2 s3'") \
                    from None
            if len(values) != 6:
                raise ValueError(f"{path}: K_POINTS automatic needs 'k1 k2 k3 s1 s2 s3'")
            kpts, koffset = tuple(values[:3]), tuple(values[3:])
        elif "gamma" not in head:
            raise ValueError(f"{path}: K_POINTS {head.split()[1:] or ''}: only 'automatic' and "
                             "'gamma' can be reused for other structures")
    additional = []
    for name, lines in cards.items():
        if name not in ("ATOMIC_SPECIES", "ATOMIC_POSITIONS", "K_POINTS", "CELL_PARAMETERS"):
            additional.extend(lines)
    return {"input_data": input_data, "pseudopotentials": pseudos, "kpts": kpts,
            "koffset": koffset, "additional_cards": additional, "path": str(path)}


def _pw_text(atoms, settings: dict) -> str:
    from ase.io.espresso import write_espresso_in

    missing = sorted(set(atoms.get_chemical_symbols()) - set(settings["pseudopotentials"]))
    if missing:
        raise ValueError(f"{settings['path']}: ATOMIC_SPECIES has no pseudopotential for "
                         f"{', '.join(missing)} (the frames contain them)")
    used = {s: settings["pseudopotentials"][s] for s in dict.fromkeys(atoms.get_chemical_symbols())}
    input_data = json.loads(json.dumps(settings["input_data"]))  # a private copy
    buf = io.StringIO()
    write_espresso_in(buf, atoms, input_data=input_data, pseudopotentials=used,
                      kpts=settings["kpts"], koffset=settings["koffset"],
                      additional_cards=settings["additional_cards"] or None)
    return buf.getvalue()


# ---------------------------------------------------------------------------- all formats
def _bare(atoms, k: int):
    """Structure only (numbers, positions, cell, pbc) with ``info`` frame and time."""
    from ase import Atoms

    if "frame" not in atoms.info:
        raise ValueError(f"selected structure {k} has no info['frame'] (its trajectory index)")
    bare = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell,
                 pbc=atoms.pbc)
    bare.info["frame"] = int(atoms.info["frame"])
    time = atoms.info.get("time")
    if time is not None and math.isfinite(float(time)):
        bare.info["time"] = float(time)
    return bare


def write_selected(out, frames, fmt: str = "extxyz", template=None, metadata: dict | None = None,
                   overwrite: bool = False) -> Path:
    """Write selected frames for DFT into the directory ``out`` (see the module docstring).

    Parameters
    ----------
    out : directory (created; an existing ``selection.json`` in it is an error unless
        ``overwrite``).
    frames : list of ase.Atoms with ``info["frame"]`` (int) and optionally ``info["time"]`` fs
        (as :meth:`numbec.selection` frames carry them).
    fmt : "extxyz", "vasp" or "espresso".
    template : vasp: files or a directory copied into every frame folder (INCAR, KPOINTS,
        POTCAR, ...); espresso: a pw.x input (required) with the DFPT / finite-field settings.
    metadata : extra JSON-ready entries for ``selection.json``.

    Returns the path of ``selection.json``.
    """
    from ase.io import write

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "selection.json"
    if summary_path.exists() and not overwrite:
        raise FileExistsError(f"{summary_path}: a selection is already there; choose another "
                              "output directory, or replace it (overwrite=True, --overwrite)")
    frames = [_bare(atoms, k) for k, atoms in enumerate(frames)]
    if fmt == "espresso":
        if template is None:
            raise ValueError("format espresso needs a template: a pw.x input with the settings "
                             "of the calculation (namelists, ATOMIC_SPECIES, K_POINTS)")
        settings = read_espresso_template(template)
        files = []
    else:
        settings = None
        files = _template_files(template) if fmt == "vasp" else []
        _check_potcar(files, frames)
        if fmt == "vasp" and template is None:
            note = ("no template: each frame folder holds only POSCAR and frame.json; add "
                    "INCAR, KPOINTS and POTCAR (potentials in the POSCAR's species order) "
                    "before running VASP")
            warnings.warn(f"{out}: {note}", stacklevel=2)
            metadata = {**(metadata or {}), "note": note}
        if template is not None and fmt == "extxyz":
            raise ValueError("format extxyz takes no template")

    xyz = out / "selected.extxyz"
    atomic_write(xyz, lambda tmp: write(tmp, frames, format="extxyz"))

    folders = []
    if fmt in ("vasp", "espresso"):
        for atoms in frames:
            k = int(atoms.info["frame"])
            time = atoms.info.get("time")
            final = out / _frame_name(k)
            if final.exists():
                if not overwrite:
                    raise FileExistsError(f"{final}: exists; choose another output directory, "
                                          "or replace it (overwrite=True, --overwrite)")
                shutil.rmtree(final)
            work = out / (_frame_name(k) + ".partial")
            if work.exists():
                shutil.rmtree(work)
            work.mkdir()
            try:
                info = {"frame": k, "time_fs": time, "atom_order": None}
                if fmt == "vasp":
                    order = _species_blocks_order(atoms.numbers)
                    written = atoms if order is None else atoms[order]
                    if order is not None:
                        info["atom_order"] = [int(i) for i in order]
                    label = f"numbec frame {k}" + (f" time {time:g} fs" if time is not None else "")
                    (work / "POSCAR").write_text(_poscar_text(written, label))
                    for f in files:
                        shutil.copyfile(f, work / f.name)
                else:
                    (work / "pw.in").write_text(_pw_text(atoms, settings))
                (work / "frame.json").write_text(json.dumps(info, indent=1) + "\n")
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
            os.replace(work, final)
            folders.append(final.name)

    summary = {"format": "numbec-selection", "format_version": 1, "output_format": fmt,
               "n_selected": len(frames), "extxyz": xyz.name, "folders": folders,
               "template": None if template is None else
               ([str(p) for p in template] if isinstance(template, (list, tuple))
                else str(template)),
               **(metadata or {})}
    _atomic_text(summary_path, json.dumps(summary, indent=1) + "\n")
    return summary_path
