"""The one Born-effective-charge convention of numbec, and its units.

Every array of Born effective charges (BECs) inside numbec is stored in the
*canonical* layout

    ``Z[a, i, j] = dP_i / dr_{a, j}``   shape ``(N, 3, 3)``, float64, unit e

where ``a`` is the atom index, row ``i`` the polarisation (electric-field)
direction and column ``j`` the Cartesian displacement direction. ``P`` is the
cell dipole in e·Å (not divided by the volume); for a molecule ``Z`` is the
atomic polar tensor. Cartesian axes are those of the cell/positions, never
fractional ones.

Files in the wild use two layouts, converted at the edges by
:func:`to_canonical` / :func:`from_canonical`:

``"pol-disp"`` (canonical, default)
    row = polarisation/field: VASP OUTCAR, phonopy ``BORN``, Quantum ESPRESSO,
    allegro-pol extxyz files (``born_charge:R:9`` row-major).
``"disp-pol"``
    row = displacement (the transpose): i-PI ``bec.txt``, the LES/SPICE extxyz
    files (``bec:R:9``), ASE's ``(3N, 3)`` arrays.

Units used throughout: length Å, time fs, velocity Å/fs, charge e, dipole e·Å,
mass amu, frequency cm^-1 (THz and meV on request), temperature K.
"""

from __future__ import annotations

import numpy as np
import scipy.constants as _si
from ase import units as _ase_units

#: Canonical layout name: row = polarisation/field direction, column = displacement.
CANONICAL_LAYOUT = "pol-disp"
#: All layouts readers accept.
LAYOUTS = ("pol-disp", "disp-pol")

# --- physical constants (SI), from scipy.constants (CODATA of the installed scipy) --------
ELEMENTARY_CHARGE = _si.elementary_charge  # C
SPEED_OF_LIGHT = _si.speed_of_light  # m/s
VACUUM_PERMITTIVITY = _si.epsilon_0  # F/m
BOLTZMANN = _si.Boltzmann  # J/K
HBAR = _si.hbar  # J s
PLANCK = _si.Planck  # J s
AVOGADRO = _si.Avogadro  # 1/mol
AMU = _si.atomic_mass  # kg
ANGSTROM = _si.angstrom  # m
FEMTOSECOND = _si.femto  # s
#: 1 debye in e·Å (1e-21 / c C m).
DEBYE_IN_E_ANGSTROM = 1e-21 / SPEED_OF_LIGHT / ELEMENTARY_CHARGE / ANGSTROM

# --- frequency conversions ----------------------------------------------------------------
#: 1 THz in cm^-1 (= 1e12 / (100 c)).
THZ_TO_INVCM = 1e12 / (100.0 * SPEED_OF_LIGHT)
#: 1 meV in cm^-1 (= 1e-3 e / (h c 100)).
MEV_TO_INVCM = 1e-3 * ELEMENTARY_CHARGE / (PLANCK * SPEED_OF_LIGHT * 100.0)
#: 1 cm^-1 as an angular frequency in rad/fs.
INVCM_TO_RAD_PER_FS = 2.0 * np.pi * 100.0 * SPEED_OF_LIGHT * FEMTOSECOND

#: ASE's time unit expressed in fs: ``1 fs = ase.units.fs`` ASE time units, so an ASE
#: velocity (Å per ASE time unit) times ``ase.units.fs`` is in Å/fs.
ASE_TIME_UNITS_PER_FS = float(_ase_units.fs)


class LayoutError(ValueError):
    """Raised for an unknown BEC layout string or an array of the wrong shape."""


def check_layout(layout: str) -> str:
    """Return ``layout`` if it is one of :data:`LAYOUTS`, else raise :class:`LayoutError`."""
    if layout not in LAYOUTS:
        raise LayoutError(
            f"unknown BEC layout {layout!r}; use 'pol-disp' (row = polarisation/field, the "
            f"VASP/phonopy/QE convention) or 'disp-pol' (row = displacement, the transpose)"
        )
    return layout


def as_bec_array(values, n_atoms: int | None = None, *, where: str = "") -> np.ndarray:
    """Reshape per-atom BEC data to ``(N, 3, 3)`` float64 without changing the layout.

    Parameters
    ----------
    values : array_like, shape (N, 9), (N, 3, 3) or (3N, 3)
        Nine numbers per atom, row-major within each atom.
    n_atoms : int, optional
        Expected number of atoms; a mismatch raises :class:`LayoutError`.
    where : str
        Text naming the file/frame, used in error messages.
    """
    arr = np.asarray(values, dtype=np.float64)
    prefix = f"{where}: " if where else ""
    if arr.ndim == 3 and arr.shape[1:] == (3, 3):
        out = arr
    elif arr.ndim == 2 and arr.shape[1] == 9:
        out = arr.reshape(-1, 3, 3)
    elif arr.ndim == 2 and arr.shape[1] == 3 and arr.shape[0] % 3 == 0:
        out = arr.reshape(-1, 3, 3)
    else:
        raise LayoutError(
            f"{prefix}BEC array of shape {arr.shape} is not (N, 9), (N, 3, 3) or (3N, 3)"
        )
    if n_atoms is not None and out.shape[0] != n_atoms:
        raise LayoutError(f"{prefix}BEC array has {out.shape[0]} atoms, structure has {n_atoms}")
    atom = first_non_finite(out, 1)
    if atom is not None:
        raise ValueError(f"{prefix}BEC of atom {atom[0]} (0-based) contains NaN or inf")
    return out


def to_canonical(bec, layout: str = CANONICAL_LAYOUT) -> np.ndarray:
    """Convert BECs given in ``layout`` to the canonical ``(N, 3, 3)`` pol-disp layout.

    ``bec`` may be ``(N, 9)``, ``(N, 3, 3)`` or ``(3N, 3)``; the result is a new
    float64 array ``Z[a, i, j] = dP_i/dr_{a,j}`` in e.
    """
    check_layout(layout)
    z = as_bec_array(bec)
    if layout == "disp-pol":
        z = np.swapaxes(z, 1, 2)
    return np.ascontiguousarray(z)


def from_canonical(bec, layout: str = CANONICAL_LAYOUT) -> np.ndarray:
    """Convert canonical ``(N, 3, 3)`` BECs to ``layout`` (inverse of :func:`to_canonical`)."""
    return to_canonical(bec, layout)  # the transpose is its own inverse


def acoustic_sum(bec) -> np.ndarray:
    """Return ``sum_a Z[a]``, shape (3, 3), e: zero for a neutral system, ``Q I`` for one of
    total charge Q (the acoustic sum rule, ASR). ``bec`` (N, 3, 3), or (F, N, 3, 3) for
    frames, giving (F, 3, 3)."""
    return np.asarray(bec, dtype=np.float64).sum(axis=-3)


def asr_project(bec, total_charge: float = 0.0) -> np.ndarray:
    """Project BECs onto the acoustic sum rule ``sum_a Z[a] = Q I``.

    Parameters
    ----------
    bec : array_like, shape (N, 3, 3) or (F, N, 3, 3), e
        Canonical BECs ``Z[a, i, j] = dP_i/dr_{a,j}`` (of F frames: each projected alone).
    total_charge : float, e
        Total charge Q of the structure (0: neutral).

    Returns
    -------
    numpy.ndarray, the shape of ``bec``, float64, e
        A new array ``Z[a] - (1/N) (sum_b Z[b] - Q I)``: the violation is spread evenly over
        the atoms (the projection used for training targets and periodic predictions).
    """
    z = np.asarray(bec, dtype=np.float64)
    excess = z.sum(axis=-3) - float(total_charge) * np.eye(3)
    share = 1.0 / z.shape[-3]  # multiplied, not divided: the numbers of numbec <= 0.1 exactly
    return z - share * excess[..., None, :, :]


def first_non_finite(array, n_index: int = 1) -> tuple[int, ...] | None:
    """Index of the first entry of ``array`` that holds a NaN or inf, or None.

    The first ``n_index`` axes are the ones named in an error message (e.g. 1 for
    ``(atom, xyz)`` arrays: the atom; 2 for ``(frame, atom, xyz)``: frame and atom); the
    remaining axes are reduced. Returns a tuple of ``n_index`` ints, in C order.
    """
    finite = np.isfinite(np.asarray(array))
    if finite.ndim > n_index:
        finite = finite.all(axis=tuple(range(n_index, finite.ndim)))
    if finite.all():
        return None
    return tuple(int(i) for i in np.argwhere(~finite)[0])
