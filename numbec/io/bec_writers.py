"""BECs where other tools read them: phonopy ``BORN``, i-PI ``bec.txt``, extxyz variants.

Every writer takes BECs in numbec's canonical layout ``Z[a, i, j] = dP_i / dr_{a,j}`` (e;
row = polarisation / field, column = displacement) and writes the layout and units the
target tool expects; every file is written whole or not at all (temporary name, rename).

=====================  ========================================================================
writer                 target layout and units
=====================  ========================================================================
phonopy ``BORN``       line 1 comment, line 2 ``eps_inf`` (9 numbers, row-major), then one line
                       of 9 numbers per *symmetry-independent* atom of the unit cell, row-major
                       with row = field direction (pol-disp), in e; phonopy expands them with
                       the crystal's symmetry. Symmetrised and sum-rule-projected first.
i-PI ``bec.txt``       ``(3N, 3)`` matrix as plain text: row ``3a + j`` = displacement ``j`` of
                       atom ``a``, column ``i`` = dipole direction, i.e. ``dP_i / dR_{a,j}``
                       (disp-pol), in units of the elementary charge (i-PI's atomic unit of
                       charge), read by ``<bec mode="file">`` of ``eda-nve`` dynamics.
extxyz ``allegro-pol`` per-atom ``born_charge:R:9``, row-major pol-disp (the allegro-pol /
                       Falletta et al. SiO2 and BaTiO3 data sets), e.
extxyz ``mace-field``  per-atom ``REF_becs:R:9``, row-major pol-disp (``--becs_key=REF_becs`` of
                       MACE-Field training), e; ``REF_electric_field`` (V/Å) on the comment line.
extxyz ``numbec``      per-atom ``bec:R:9`` pol-disp with ``layout=pol-disp``
                       (:func:`numbec.io.extxyz.write_extxyz_bec`).
=====================  ========================================================================

Every extxyz variant also carries ``layout="pol-disp"`` on the comment line, which
:func:`numbec.read_bec` honours when it reads the file back.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from numbec.conventions import as_bec_array, asr_project, from_canonical
from numbec.io._files import atomic_write
from numbec.io.extxyz import BEC_KEYS

__all__ = [
    "EXTXYZ_FLAVOURS",
    "phonopy_born_lines",
    "read_ipi_bec",
    "write_extxyz_flavour",
    "write_ipi_bec",
    "write_phonopy_born",
]

#: extxyz flavour -> (per-atom key, layout of its nine row-major numbers).
EXTXYZ_FLAVOURS = {
    "numbec": ("bec", "pol-disp"),
    "allegro-pol": ("born_charge", "pol-disp"),
    "mace-field": ("REF_becs", "pol-disp"),
}


#: Per-atom arrays holding BECs in one flavour or another.
_BEC_LIKE = {*BEC_KEYS, *(key for key, _ in EXTXYZ_FLAVOURS.values())}


def _write_text_atomic(path, text: str) -> Path:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return atomic_write(path, write)


def _bec_of(atoms, bec, where):
    if bec is None:
        if "bec" not in atoms.arrays:
            raise ValueError(f"{where}: no BECs given and the structure has no arrays['bec']")
        bec = atoms.arrays["bec"]
    return as_bec_array(bec, len(atoms), where=where)


def _eps_tensor(eps_inf, where):
    eps = np.asarray(eps_inf, dtype=np.float64)
    if eps.shape in ((), (1,)):
        eps = float(eps.reshape(())) * np.eye(3)
    elif eps.shape == (9,):
        eps = eps.reshape(3, 3)
    if eps.shape != (3, 3) or not np.isfinite(eps).all():
        raise ValueError(f"{where}: eps_inf must be a finite number, 9 numbers or a (3, 3) "
                         f"tensor, got {np.asarray(eps_inf).tolist()}")
    if np.any(np.linalg.eigvalsh(0.5 * (eps + eps.T)) < 1.0):
        raise ValueError(f"{where}: eps_inf must have eigenvalues >= 1 (an electronic "
                         f"dielectric tensor), got {eps.tolist()}")
    return eps


def phonopy_born_lines(atoms, bec=None, eps_inf=1.0, symprec=1e-5, asr=True,
                       primitive_matrix=None):
    """The lines of a phonopy ``BORN`` file and what was done to the BECs.

    Parameters
    ----------
    atoms : ase.Atoms
        The unit cell phonopy is run with (its ``POSCAR-unitcell``), periodic.
    bec : (N, 3, 3) float, e, canonical; default ``atoms.arrays["bec"]``.
    eps_inf : float, 9 floats or (3, 3)
        High-frequency dielectric tensor (dimensionless), written after symmetrisation.
    symprec : float, Å
        Symmetry tolerance of phonopy / spglib.
    asr : bool
        Subtract ``sum_a Z_a / N`` first (the acoustic sum rule, which phonopy's NAC assumes).
    primitive_matrix : (3, 3), optional
        Passed to phonopy: the independent atoms are then those of this primitive cell.

    Returns
    -------
    lines : list of str
    info : dict
        ``independent_atoms`` (0-based indices in ``atoms``), ``bec`` (N, 3, 3) the
        symmetrised, projected BECs of every atom, ``eps_inf`` (3, 3) symmetrised,
        ``asr_violation`` (3, 3) ``sum_a Z_a`` of the input, ``symmetrisation_change``
        (max |change| in e made by the symmetrisation).
    """
    from phonopy.file_IO import get_BORN_lines
    from phonopy.structure.atoms import PhonopyAtoms
    from phonopy.structure.symmetry import (
        elaborate_borns_and_epsilon,
        symmetrize_borns_and_epsilon,
    )

    where = "phonopy BORN"
    if not np.all(atoms.pbc):
        raise ValueError(f"{where}: the structure must be a periodic unit cell (pbc all True)")
    z = _bec_of(atoms, bec, where)
    eps = _eps_tensor(eps_inf, where)
    unit = PhonopyAtoms(symbols=list(atoms.get_chemical_symbols()), cell=np.asarray(atoms.cell),
                        scaled_positions=atoms.get_scaled_positions(wrap=True))
    violation = z.sum(axis=0)
    projected = asr_project(z) if asr else z.copy()
    sym_bec, sym_eps = symmetrize_borns_and_epsilon(projected, eps, unit, symprec=symprec)
    _, _, independent = elaborate_borns_and_epsilon(
        unit, sym_bec, sym_eps, primitive_matrix=primitive_matrix, symprec=symprec)
    lines = get_BORN_lines(unit, sym_bec, sym_eps, primitive_matrix=primitive_matrix,
                           symprec=symprec)
    lines[0] += f" (numbec; ASR-projected: {bool(asr)}, symprec {symprec:g})"
    info = {
        "independent_atoms": np.asarray(independent, dtype=np.int64),
        "bec": np.asarray(sym_bec, dtype=np.float64),
        "eps_inf": np.asarray(sym_eps, dtype=np.float64),
        "asr_violation": violation,
        "symmetrisation_change": float(np.abs(sym_bec - projected).max()),
    }
    return lines, info


def write_phonopy_born(path, atoms, bec=None, eps_inf=1.0, symprec=1e-5, asr=True,
                       primitive_matrix=None) -> dict:
    """Write a phonopy ``BORN`` file for the unit cell ``atoms``; see :func:`phonopy_born_lines`.

    BECs are projected onto the acoustic sum rule (``asr=True``), symmetrised with the
    crystal's space group by phonopy (``symmetrize_borns_and_epsilon``, the average of
    ``R Z_{p(a)} R^T`` over the operations), and only the symmetry-independent atoms are
    written, as phonopy expects (its own ``get_BORN_lines``). Returns the ``info`` dict.
    """
    lines, info = phonopy_born_lines(atoms, bec, eps_inf, symprec, asr, primitive_matrix)
    _write_text_atomic(path, "\n".join(lines) + "\n")
    return info


def write_ipi_bec(path, bec) -> Path:
    """Write i-PI's ``bec.txt``: a ``(3N, 3)`` text matrix, row ``3a + j`` = ``dP / dR_{a,j}``.

    ``bec`` (N, 3, 3) e canonical; written transposed per atom (disp-pol), in e, 16
    significant digits.
    """
    z = as_bec_array(bec, where=os.fspath(path))
    rows = from_canonical(z, "disp-pol").reshape(-1, 3)
    text = "# Born effective charges for i-PI: row 3a+j = dP/dR_(a,j), columns P_x P_y P_z (e)\n"
    text += "\n".join(" ".join(f"{v: .16e}" for v in row) for row in rows) + "\n"
    return _write_text_atomic(path, text)


def read_ipi_bec(path, n_atoms=None) -> np.ndarray:
    """Read an i-PI ``bec.txt`` (``(3N, 3)``, disp-pol) into canonical (N, 3, 3) e."""
    from numbec.conventions import to_canonical

    where = os.fspath(path)
    try:
        rows = np.loadtxt(where, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{where}: not a numeric (3N, 3) matrix ({exc})") from exc
    if rows.shape[1] != 3 or rows.shape[0] % 3:
        raise ValueError(f"{where}: i-PI BECs are a (3N, 3) matrix, got {rows.shape}")
    if n_atoms is not None and rows.shape[0] != 3 * n_atoms:
        raise ValueError(f"{where}: {rows.shape[0] // 3} atoms, expected {n_atoms}")
    if not np.isfinite(rows).all():
        raise ValueError(f"{where}: NaN or inf in row {int(np.argmax(~np.isfinite(rows).all(1)))}")
    return to_canonical(rows.reshape(-1, 3, 3), "disp-pol")


def write_extxyz_flavour(path, frames, flavour="numbec", field=None) -> Path:
    """Write frames with ``arrays["bec"]`` (canonical) as extxyz for another code.

    Parameters
    ----------
    frames : ase.Atoms or list of them, each with ``arrays["bec"]`` (N, 3, 3) e canonical.
    flavour : {"numbec", "allegro-pol", "mace-field"} (:data:`EXTXYZ_FLAVOURS`)
    field : (3,) float, V/Å, optional
        Written as ``REF_electric_field`` for ``"mace-field"`` (default zero field).
    """
    from ase import Atoms

    from numbec.io.extxyz import format_frame, open_text_for_writing

    if flavour not in EXTXYZ_FLAVOURS:
        raise ValueError(f"unknown extxyz flavour {flavour!r}; use one of "
                         f"{sorted(EXTXYZ_FLAVOURS)}")
    key, layout = EXTXYZ_FLAVOURS[flavour]
    frames = [frames] if isinstance(frames, Atoms) else list(frames)
    texts = []
    for k, atoms in enumerate(frames):
        z = _bec_of(atoms, None, f"{os.fspath(path)}, frame {k}")
        # other BEC arrays of the frame (the reference charges of a DFT input, say) would be
        # read back in place of these: readers take the first BEC-like array they find
        arrays = {name: value for name, value in atoms.arrays.items()
                  if name not in ("numbers", "positions") and name not in _BEC_LIKE}
        arrays[key] = from_canonical(z, layout).reshape(len(atoms), 9)
        info = {name: value for name, value in atoms.info.items()
                if name != "bec_layout_in_file"}
        info["layout"] = layout
        if flavour == "mace-field":
            info["REF_electric_field"] = np.zeros(3) if field is None else np.asarray(
                field, dtype=np.float64).reshape(3)
        texts.append(format_frame(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc,
                                  arrays, info))
    def write(tmp):  # the temporary keeps the suffix: .gz/.xz/.bz2 still compress
        with open_text_for_writing(tmp) as fh:
            fh.writelines(texts)

    return atomic_write(path, write)
