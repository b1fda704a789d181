"""Synthetic VASP OUTCARs for the reader tests (the real ZrO2 OUTCARs cannot be shipped).

:func:`make_outcar` writes the text of a DFPT run (``LEPSILON = .TRUE.``) for a seeded
random structure, with the blocks that :mod:`numbec.io.outcar` and ASE's ``vasp-out``
reader parse, in VASP's own line formats (VASP 6 unless told otherwise):

* header: the ``POTCAR:`` lines (twice per species, as VASP prints them), ``TITEL``,
  ``POMASS``/``ZVAL``, ``NKPTS``/``NBANDS``, ``NIONS``, ``ions per type``, ``ISPIN``, the
  starting ``direct lattice vectors`` and the k-point list;
* one chunk per ionic step, from its ``Iteration`` line: ``in kB`` stress, ``E-fermi``,
  ``direct lattice vectors`` with the reciprocal vectors (``inv(cell).T``, no 2 pi),
  ``POSITION ... TOTAL-FORCE (eV/Angst)`` and ``FREE ENERGIE OF THE ION-ELECTRON SYSTEM``;
* after the last step, the linear-response output: the per-direction ``POSITION
  DIRECTION k  BORN EFFECTIVE CHARGE (rigid.aug. ionic)`` tables (which are not the
  BECs), ``MACROSCOPIC STATIC DIELECTRIC TENSOR (including local field effects in DFT)``
  and the ``BORN EFFECTIVE CHARGES`` block: `` ion    n`` then three rows
  ``field-direction  Z[n, i, x]  Z[n, i, y]  Z[n, i, z]`` (``I5, 3F12.5``).

Every number is drawn from ``numpy.random.default_rng(seed)``; the returned
:class:`SyntheticOutcar` holds the final structure and the BECs exactly as printed (rounded
to the printed digits), so a reader can be checked against them to the last digit.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: BEC block headers, by VASP version / setting.
BEC_HEADERS = {
    # VASP 6, LEPSILON or LCALCEPS, local-field effects included (the physical charges)
    "vasp6": " BORN EFFECTIVE CHARGES (including local field effects) (in |e|, cummulative "
             "output)",
    # VASP 5.x LEPSILON
    "vasp5": " BORN EFFECTIVE CHARGES (in e, cummulative output)",
    # LCALCEPS / LRPA: the charges without local-field effects (printed as well)
    "rpa": " BORN EFFECTIVE CHARGES (excluding local field effects) (in |e|, cummulative "
           "output)",
}

_RULE = " " + "-" * 103
_ITERATION = "-" * 39 + " Iteration {step:6d}({scf:4d})  " + "-" * 39

#: (symbol, POTCAR label, mass, valence) of the species the factory knows.
_POTCARS = {"Zr": ("Zr_sv", 91.224, 12.0), "O": ("O", 16.0, 6.0), "Ti": ("Ti_pv", 47.88, 10.0),
            "Ba": ("Ba_sv", 137.327, 10.0), "H": ("H", 1.0, 1.0), "Si": ("Si", 28.085, 4.0)}

#: Mean isotropic BEC per species, e (any values summing to zero over the cell will do).
_NOMINAL = {"Zr": 5.2, "O": -2.6, "Ti": 7.2, "Ba": 2.7, "H": 0.4, "Si": 3.2}


@dataclass
class SyntheticOutcar:
    """A synthetic OUTCAR and what a correct reader returns from it.

    Attributes
    ----------
    text : str
        The whole OUTCAR.
    symbols : list of str
        Chemical symbols, N, in VASP's order (grouped by species).
    cell : ndarray, shape (3, 3), float64, Å
        Final cell, rows = lattice vectors, as printed.
    positions : ndarray, shape (N, 3), float64, Å
        Final Cartesian positions, as printed (not wrapped).
    bec : ndarray, shape (N, 3, 3), float64, e
        ``Z[a, i, j] = dP_i / dr_{a,j}`` as printed in the block the reader must take (the
        one with local-field effects when there are several).
    bec_rpa : ndarray or None
        The charges of the ``excluding local field effects`` block, when there is one.
    """

    text: str
    symbols: list
    cell: np.ndarray
    positions: np.ndarray
    bec: np.ndarray
    bec_rpa: np.ndarray | None = None


def _lattice_lines(cell: np.ndarray, indent: str) -> list[str]:
    recip = np.linalg.inv(cell).T
    lines = [f"{indent}direct lattice vectors                 reciprocal lattice vectors"]
    for a, b in zip(cell, recip, strict=True):
        lines.append("   " + "".join(f"{x:13.9f}" for x in a) + "   "
                     + "".join(f"{x:13.9f}" for x in b))
    lines += ["", "  length of vectors",
              "   " + "".join(f"{x:13.9f}" for x in np.linalg.norm(cell, axis=1)) + "   "
              + "".join(f"{x:13.9f}" for x in np.linalg.norm(recip, axis=1)), ""]
    return lines


def _bec_block(header: str, bec: np.ndarray) -> list[str]:
    lines = [header, " " + "-" * 81]
    for n, z in enumerate(bec, start=1):
        lines.append(f" ion {n:4d}")
        for i in range(3):
            lines.append(f"{i + 1:5d}" + "".join(f"{x:12.5f}" for x in z[i]))
    return lines


def random_becs(rng, symbols, spread: float = 0.4) -> np.ndarray:
    """BECs (N, 3, 3) e: a species' nominal charge times I plus an asymmetric random part,
    projected onto the acoustic sum rule (``sum_a Z[a] = 0``) as DFPT charges nearly are."""
    z = np.array([_NOMINAL[s] * np.eye(3) for s in symbols])
    z += spread * rng.normal(size=z.shape)
    return z - z.mean(axis=0)


def make_outcar(seed: int = 0, species=(("Zr", 4), ("O", 8)), *, steps: int = 1,
                header: str = "vasp6", rpa_block: str | None = None,
                spacing: float = 2.3, cell=None, positions=None,
                bec=None) -> SyntheticOutcar:
    """The text of a synthetic VASP DFPT OUTCAR and the values a reader must return.

    Parameters
    ----------
    seed : int
        Seed of every random number (structure, forces, energies, BECs).
    species : sequence of (symbol, count)
        Species in POTCAR order and their number of ions (``ions per type``).
    steps : int
        Ionic steps; the positions and the cell change at every step and only the last
        ones go with the BECs.
    header : {"vasp6", "vasp5", "rpa"}
        Header of the BEC block (:data:`BEC_HEADERS`).
    rpa_block : {None, "before", "after"}
        Also print a block ``excluding local field effects`` (different charges) before or
        after the main one, as LCALCEPS does.
    spacing : float, Å
        Mean distance between neighbouring atoms (a jittered simple-cubic arrangement, so
        that no two atoms come closer than about half of it).
    cell, positions, bec : (3, 3) Å, (N, 3) Å, (N, 3, 3) e (canonical ``Z[n, i, j] =
        dP_i/dr_{n,j}``), optional
        The structure and BECs of the final step instead of random ones (atoms in the order
        of ``species``), e.g. those of a POSCAR written by ``numbec select``; the other
        numbers stay seeded random.
    """
    given = (cell, positions, bec)
    rng = np.random.default_rng(seed)
    symbols = [s for s, count in species for _ in range(count)]
    n_atoms = len(symbols)
    per_side = int(np.ceil(n_atoms ** (1 / 3)))
    sites = np.array([(i, j, k) for i in range(per_side) for j in range(per_side)
                      for k in range(per_side)], dtype=float)
    sites = sites[rng.permutation(len(sites))[:n_atoms]]
    cell = spacing * per_side * (np.eye(3) + 0.03 * rng.normal(size=(3, 3)))
    cell = np.round(cell, 9)
    fractional = (sites + 0.5 + 0.08 * rng.normal(size=sites.shape)) / per_side
    positions = np.round(fractional @ cell, 5)
    bec = np.round(random_becs(rng, symbols), 5)
    bec_rpa = np.round(random_becs(rng, symbols), 5) if rpa_block else None
    # after every draw above, so that a given structure leaves the other numbers unchanged
    if given[0] is not None:
        cell = np.round(np.asarray(given[0], dtype=float), 9)
    if given[1] is not None:
        positions = np.round(np.asarray(given[1], dtype=float), 5)
    if given[2] is not None:
        bec = np.round(np.asarray(given[2], dtype=float), 5)
    if positions.shape != (n_atoms, 3) or bec.shape != (n_atoms, 3, 3):
        raise ValueError(f"{n_atoms} atoms in species, positions {positions.shape}, "
                         f"bec {bec.shape}")

    lines = [" vasp.6.4.2 20Jul23 (build Jan 01 2024 00:00:00) complex", "",
             " executed on             LinuxIFC date 2024.01.01  00:00:00",
             " running on    2 total cores", "", " INCAR:"]
    lines += [f" POTCAR:    PAW_PBE {_POTCARS[s][0]} 01Jan2000" for s, _ in species]
    lines += ["   PREC = Accurate", "   IBRION = 8", "   LEPSILON = .TRUE.", ""]
    for s, _ in species:
        label, mass, valence = _POTCARS[s]
        lines += [f" POTCAR:    PAW_PBE {label} 01Jan2000",
                  "   SHA256 = 0000000000000000000000000000000000000000000000000000000000000000",
                  f"   VRHFIN ={s}: synthetic",
                  f"   TITEL  = PAW_PBE {label} 01Jan2000",
                  f"   POMASS = {mass:8.3f}; ZVAL   = {valence:8.3f}    mass and valenz", ""]
    lines += _lattice_lines(cell, "  ")
    lines += [" Dimension of arrays:",
              "   k-points           NKPTS =      1   k-points in BZ     NKDIM =      1   "
              f"number of bands    NBANDS= {8 * n_atoms:6d}",
              f"   number of dos      NEDOS =    301   number of ions     NIONS = {n_atoms:6d}",
              "   ions per type =           " + "".join(f"{c:4d}" for _, c in species),
              "", " SYSTEM =  synthetic", " POSCAR =  synthetic", "",
              "   ISPIN  =      1    spin polarized calculation?",
              "   ZVAL   = " + "".join(f"{_POTCARS[s][2]:6.2f}" for s, _ in species), "",
              " k-points in reciprocal lattice and weights: scf",
              "   0.00000000  0.00000000  0.00000000       1.000", ""]

    start_positions = positions.copy()
    for step in range(1, steps + 1):
        if step < steps:  # an earlier ionic step: another cell, other positions
            step_cell = np.round(cell * (1 + 0.02 * rng.normal()), 9)
            step_positions = np.round(start_positions + 0.05 * rng.normal(size=(n_atoms, 3)),
                                      5)
        else:
            step_cell, step_positions = cell, positions
        energy = -9.0 * n_atoms + rng.normal()
        forces = 0.2 * rng.normal(size=(n_atoms, 3))
        forces -= forces.mean(axis=0)
        lines += [_ITERATION.format(step=step, scf=1), "",
                  f"  free energy    TOTEN  = {energy + 50:20.8f} eV", "",
                  _RULE, "", f" E-fermi : {rng.normal():8.4f}     XC(G=0): -11.0000"
                  "     alpha+bet :-15.0000", "",
                  "  in kB  " + "".join(f"{x:12.5f}" for x in 10 * rng.normal(size=6)), "",
                  " VOLUME and BASIS-vectors are now :", _RULE,
                  "  energy-cutoff  :      450.00",
                  f"  volume of cell : {abs(np.linalg.det(step_cell)):11.2f}"]
        lines += _lattice_lines(step_cell, "      ")
        lines += [" POSITION                                       TOTAL-FORCE (eV/Angst)",
                  " " + "-" * 83]
        for r, f in zip(step_positions, forces, strict=True):
            lines.append("".join(f"{x:13.5f}" for x in r) + "   "
                         + "".join(f"{x:14.6f}" for x in f))
        lines += [" " + "-" * 83,
                  "    total drift:                         "
                  + "".join(f"{x:14.6f}" for x in 1e-4 * rng.normal(size=3)), "", "", _RULE,
                  "", "", "", "  FREE ENERGIE OF THE ION-ELECTRON SYSTEM (eV)",
                  "  " + "-" * 51, f"  free  energy   TOTEN  = {energy:18.8f} eV", "",
                  f"  energy  without entropy= {energy:17.8f}  energy(sigma->0) = "
                  f"{energy:17.8f}", " ", ""]

    # linear response: tables that mention BORN EFFECTIVE CHARGE but are not the block
    for direction in (1, 2, 3):
        lines += ["",
                  f"      POSITION         DIRECTION {direction}           BORN EFFECTIVE "
                  "CHARGE    (rigid.aug.   ionic)", " " + "-" * 89]
        for r in positions:
            rigid, ionic = rng.normal(size=3), rng.normal(size=2)
            lines.append("".join(f"{x:13.5f}" for x in r) + "  "
                         + "".join(f"{x:9.5f}" for x in rigid)
                         + f" ({ionic[0]:9.5f}{ionic[1]:9.5f})")
    epsilon = np.diag(4 + rng.uniform(size=3))
    lines += ["", " MACROSCOPIC STATIC DIELECTRIC TENSOR (including local field effects in DFT)",
              " " + "-" * 54]
    lines += ["      " + "".join(f"{x:13.6f}" for x in row) for row in epsilon]
    lines += [" " + "-" * 54, "", ""]
    main = _bec_block(BEC_HEADERS[header], bec)
    if rpa_block == "before":
        lines += _bec_block(BEC_HEADERS["rpa"], bec_rpa) + ["", ""] + main
    elif rpa_block == "after":
        lines += main + ["", ""] + _bec_block(BEC_HEADERS["rpa"], bec_rpa)
    else:
        lines += main
    lines += ["", "", _RULE, "", "", "     LOOP+:  cpu time     12.3456: real time     12.4567",
              "", " General timing and accounting informations for this job:",
              " ========================================================", "",
              "                  Total CPU time used (sec):       12.345", ""]
    return SyntheticOutcar("\n".join(lines) + "\n", symbols, cell, positions, bec, bec_rpa)


def write_outcar(path, text: str) -> Path:
    """Write ``text`` to ``path``, compressed as its suffix says (.gz, .xz, .bz2)."""
    path = Path(path)
    opener = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}.get(path.suffix, open)
    with opener(path, "wt") as fh:
        fh.write(text)
    return path
