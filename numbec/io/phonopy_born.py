"""phonopy ``BORN`` files: expand symmetry-independent BECs to every atom.

A ``BORN`` file holds the high-frequency dielectric tensor and the BECs of the
symmetry-independent atoms of a unit cell only (row = field direction, the
canonical pol-disp layout). phonopy itself reads the unit cell and expands the
charges with the crystal's symmetry operations, ``Z_b = R Z_a R^T`` for the
rotation ``R`` (Cartesian) that maps atom ``a`` onto ``b``; this module uses
phonopy's reader and symmetry finder so that the result is exactly phonopy's.
phonopy is an optional dependency (``pip install numbec[phonopy]``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from ase import Atoms

from numbec.conventions import as_bec_array, to_canonical


def _import_phonopy():
    try:
        from phonopy.file_IO import get_born_parameters
        from phonopy.interface.calculator import read_crystal_structure
        from phonopy.structure.symmetry import Symmetry
    except ImportError as exc:  # pragma: no cover - phonopy is installed in the test env
        raise ImportError(
            "reading phonopy BORN files needs phonopy: pip install 'numbec[phonopy]' "
            "(or pip install phonopy)"
        ) from exc
    return get_born_parameters, read_crystal_structure, Symmetry


def find_unitcell(born_path) -> Path:
    """The unit-cell file next to ``BORN``: ``POSCAR-unitcell``, ``POSCAR`` or ``UPOSCAR``."""
    folder = Path(born_path).parent
    for name in ("POSCAR-unitcell", "UPOSCAR", "POSCAR", "phonopy_disp.yaml", "phonopy.yaml"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"{os.fspath(born_path)}: no unit cell found beside it (POSCAR-unitcell, UPOSCAR, "
        f"POSCAR); pass unitcell=..."
    )


def read_phonopy_born(path, unitcell=None, *, layout: str = "pol-disp",
                      symprec: float = 1e-5) -> list:
    """Read a phonopy ``BORN`` file and expand its BECs to every atom of the unit cell.

    Parameters
    ----------
    path : str or PathLike
        The ``BORN`` file.
    unitcell : str or PathLike, optional
        VASP POSCAR (or phonopy yaml) of the unit cell the BORN file refers to;
        by default ``POSCAR-unitcell``/``UPOSCAR``/``POSCAR`` beside ``BORN``.
    layout : {"pol-disp", "disp-pol"}
        Layout of the nine numbers per line. phonopy writes pol-disp.
    symprec : float
        Symmetry tolerance (Å) passed to phonopy.

    Returns
    -------
    list of one ase.Atoms
        The unit cell with ``arrays["bec"]`` (N, 3, 3) float64 e, canonical
        ``Z[a, i, j] = dP_i/dr_{a,j}``; ``info["eps_inf"]`` (3, 3) the
        high-frequency dielectric tensor (dimensionless) and ``info["source"]``.

    Raises
    ------
    FileNotFoundError
        No unit cell beside ``path`` and none given.
    OSError
        Unreadable file (named).
    ValueError
        An unreadable unit cell, or a BORN file that does not parse for that cell
        (binary or garbled content included); naming the files.
    """
    get_born_parameters, read_crystal_structure, Symmetry = _import_phonopy()
    where = os.fspath(path)
    cell_path = Path(unitcell) if unitcell is not None else find_unitcell(path)
    interface = "phonopy_yaml" if cell_path.suffix == ".yaml" else "vasp"
    try:
        unit, _ = read_crystal_structure(str(cell_path), interface_mode=interface)
    except Exception as exc:
        raise ValueError(f"{cell_path}: cannot read the unit cell ({exc})") from exc
    if unit is None:
        raise ValueError(f"{cell_path}: cannot read the unit cell")
    symmetry = Symmetry(unit, symprec=symprec)
    try:
        with open(where) as fh:
            params = get_born_parameters(fh, unit, symmetry)
    except OSError as exc:
        raise OSError(f"{where}: cannot read file ({exc.strerror or exc})") from exc
    except Exception as exc:  # phonopy's BORNFileParseError and friends
        raise ValueError(
            f"{where}: not a BORN file for the {len(unit)}-atom cell {cell_path} "
            f"(with {len(symmetry.get_independent_atoms())} independent atoms): {exc}"
        ) from exc
    # Expansion Z_b = R Z_a R^T commutes with the transpose, so a disp-pol file is
    # expanded as written and transposed afterwards.
    bec = to_canonical(as_bec_array(params["born"], len(unit), where=where), layout)
    atoms = Atoms(
        symbols=unit.symbols,
        cell=np.asarray(unit.cell),
        scaled_positions=np.asarray(unit.scaled_positions),
        pbc=True,
    )
    atoms.arrays["bec"] = bec
    atoms.info["eps_inf"] = np.asarray(params["dielectric"], dtype=np.float64)
    atoms.info["source"] = f"{where}@0"
    atoms.info["unitcell"] = os.fspath(cell_path)
    atoms.info["bec_layout_in_file"] = layout
    return [atoms]
