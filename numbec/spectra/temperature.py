"""Kinetic temperature of a trajectory: the data's masses and degrees of freedom.

Used by :func:`numbec.ir_spectrum` when no temperature is given, and to check a nominal
temperature against the velocities (docs/method.md#ir-spectrum-from-a-trajectory).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from numbec.conventions import AMU, ANGSTROM, BOLTZMANN, FEMTOSECOND

__all__ = ["KineticTemperature", "kinetic_temperature", "kinetic_temperature_from_positions",
           "kinetic_temperature_statistics"]


@dataclasses.dataclass(frozen=True)
class KineticTemperature:
    """Kinetic temperature of a trajectory (:func:`kinetic_temperature_statistics`).

    mean : float, K, the mean over frames; stderr : float, K, its standard error from block
    averages (NaN with fewer than 2 frames); degrees_of_freedom : int; how : str, which masses
    and constraints were used (for provenance and messages); from_positions : bool, the
    velocities are central differences of the positions
    (:func:`kinetic_temperature_from_positions`), which see fast motion slowed down: a lower
    bound of the temperature, for checks only.
    """

    mean: float
    stderr: float
    degrees_of_freedom: int
    how: str
    from_positions: bool = False


#: Range of (kinetic temperature of central differences of the positions) / (nominal
#: temperature) in which a nominal temperature is not questioned. Central differences of
#: frames dt apart scale the velocity of a vibration of angular frequency w by sin(w dt) /
#: (w dt) <= 1, so the derived temperature is at most the true one (up to its noise), and
#: lower the coarser the frames: with equipartition over the stretches, bends, librations
#: and translations of water clusters about 0.87, 0.68 and 0.5 of it for frames 2, 5 and 10
#: fs apart. A time step given twice too short (frames written every second MD step, e.g.
#: VASP's POTIM without NBLOCK) makes it about 4x too high (3.5x at 2 fs), twice too long
#: about 0.2x.
POSITIONS_TEMPERATURE_RANGE = (0.25, 1.2)


#: A conserved quantity is taken as constrained to zero when its share of the kinetic energy
#: stays below this in every frame (removed momenta leave ~1e-30; thermal ones ~1/N).
_CONSTRAINED_FRACTION = 1e-8


def _trajectory_masses(trajectory, masses, source):
    """(N,) float64 amu: ``masses`` if given, else the trajectory's ``masses`` variable, else
    ASE's standard masses of ``numbers``; and a word on which."""
    from ase.data import atomic_masses

    numbers = np.asarray(trajectory["numbers"].values, dtype=np.int64)
    if masses is not None:
        how = "given masses"
    elif "masses" in trajectory:
        masses, how = trajectory["masses"].values, "trajectory masses"
    else:
        return atomic_masses[numbers], "standard masses"
    masses = np.asarray(masses, dtype=np.float64)
    if masses.ndim == 2:  # (frame, atom): the masses of a trajectory do not change
        masses = masses[0]
    if masses.shape != numbers.shape:
        raise ValueError(f"{source}: masses have shape {masses.shape}, expected "
                         f"{numbers.shape} (one per atom)")
    bad = ~(np.isfinite(masses) & (masses > 0))
    if bad.any():
        a = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{source}: mass of atom {a} is {masses[a]} amu; masses must be > 0")
    return masses, how


def kinetic_temperature_statistics(trajectory, *, masses=None,
                                   chunk_frames: int = 1000) -> KineticTemperature:
    """Kinetic temperature of a trajectory with velocities, with its standard error.

    Parameters
    ----------
    trajectory : xarray.Dataset
        A trajectory store (:func:`numbec.open_trajectory`): ``velocities`` (frame, atom,
        xyz) Å/fs, ``numbers`` (atom,), ``positions`` (frame, atom, xyz) Å and ``pbc``
        (3,); optionally ``masses`` (atom,) amu.
    masses : (N,) array of float, amu, optional
        Overrides the trajectory's masses. Without either, ASE's standard masses of
        ``numbers`` (wrong for isotope-substituted MD, e.g. deuterated water: pass them).
    chunk_frames : int
        Frames read at a time.

    Returns
    -------
    KineticTemperature
        ``T = <sum_a m_a |v_a|^2> / (kB f)``. The degrees of freedom ``f`` are those the data
        actually have: ``3N``, minus 3 when the centre-of-mass momentum is zero in every
        frame (an MD run with the drift removed, the usual case for periodic cells and
        isolated molecules alike), minus 3 more (2 for a linear molecule) when the system
        has no periodic direction and its angular momentum about the centre of mass is zero
        in every frame too (an isolated molecule or cluster started without rotation and
        run without a thermostat, which conserves it). A thermostat that lets the system
        rotate or drift keeps those degrees of freedom, and so does this count. Holonomic
        constraints (rigid bonds or molecules, SHAKE/RATTLE) are not detected: with them,
        pass the thermostat temperature instead. The standard error is that of the mean of
        up to 10 contiguous blocks of frames.

    Raises
    ------
    ValueError
        No velocities, non-positive or misshaped masses, or no degree of freedom left
        (the message names the trajectory).
    """
    source = str(trajectory.attrs.get("source") or "trajectory")
    if "velocities" not in trajectory:
        raise ValueError(f"{source}: no velocities; the kinetic temperature needs them")
    masses, how = _trajectory_masses(trajectory, masses, source)
    n_atoms = masses.size
    n_frames = trajectory.sizes["frame"]
    pbc = np.asarray(trajectory["pbc"].values, dtype=bool) if "pbc" in trajectory else \
        np.zeros(3, dtype=bool)
    isolated = not pbc.any() and "positions" in trajectory and n_atoms > 1
    two_ke = np.empty(n_frames)
    com_free, rotation_free, linear = True, isolated, isolated
    total_mass = masses.sum()
    for start in range(0, n_frames, chunk_frames):
        v = np.asarray(trajectory["velocities"][start:start + chunk_frames].values, float)
        ke = np.einsum("a,fai,fai->f", masses, v, v)
        two_ke[start:start + v.shape[0]] = ke
        momentum = np.einsum("a,fai->fi", masses, v)
        scale = np.where(ke > 0, ke, 1.0)
        com_free &= bool(np.all(np.einsum("fi,fi->f", momentum, momentum) / total_mass
                                <= _CONSTRAINED_FRACTION * scale))
        if rotation_free or linear:
            r = np.asarray(trajectory["positions"][start:start + chunk_frames].values, float)
            r = r - np.einsum("a,fai->fi", masses, r)[:, None, :] / total_mass
            spin = np.einsum("a,faj->fj", masses, np.cross(r, v))
            inertia = np.einsum("a,fai,fai->f", masses, r, r)
            rotation_free &= bool(np.all(np.einsum("fi,fi->f", spin, spin)
                                         <= _CONSTRAINED_FRACTION * scale * inertia))
            gyration = np.einsum("a,fai,faj->fij", masses, r, r)
            smallest = np.linalg.eigvalsh(gyration)[:, 1]  # two zero eigenvalues if linear
            linear &= bool(np.all(smallest <= 1e-10 * inertia))
    removed = []  # (degrees of freedom, the conserved quantity that is zero)
    if com_free:
        removed.append((3, "centre-of-mass momentum"))
        if rotation_free:
            removed.append((2 if linear else 3, "angular momentum"))
    dof = 3 * n_atoms - sum(n for n, _ in removed)
    if dof < 1:
        raise ValueError(f"{source}: no kinetic degree of freedom left ({n_atoms} atoms, "
                         f"{' and '.join(what for _, what in removed)} zero)")
    frame_t = two_ke * AMU * (ANGSTROM / FEMTOSECOND) ** 2 / (dof * BOLTZMANN)
    n_blocks = min(10, n_frames)
    if n_blocks < 2:
        stderr = float("nan")
    else:
        means = [b.mean() for b in np.array_split(frame_t, n_blocks)]
        stderr = float(np.std(means, ddof=1) / np.sqrt(n_blocks))
    how += f", {dof} = 3N" + "".join(f" - {n} ({what} zero)" for n, what in removed)
    how += " degrees of freedom"
    return KineticTemperature(float(frame_t.mean()), stderr, dof, how)


def kinetic_temperature_from_positions(trajectory, timestep: float, *, max_frames: int = 2000,
                                       masses=None) -> KineticTemperature:
    """Kinetic temperature of central differences of the positions: a check without velocities.

    At up to ``max_frames`` evenly spaced interior frames k, ``v_k = (r_{k+1} - r_{k-1}) /
    (2 dt)`` (minimum image along periodic directions,
    :func:`numbec.io.trajectory.central_differences`), then as
    :func:`kinetic_temperature_statistics`. Reads three frames per sampled frame. The result
    is a lower bound of the temperature (fast motion between the frames is missed, see
    :data:`POSITIONS_TEMPERATURE_RANGE`), which is enough to catch a time step off by a
    factor of two or more; it is not a temperature to compute a spectrum with.

    Parameters
    ----------
    trajectory : xarray.Dataset, a trajectory store (:func:`numbec.open_trajectory`):
        ``positions`` (frame, atom, xyz) Å, ``cell`` (frame, 3, 3) Å, ``pbc`` (3,), ``numbers``.
    timestep : float, fs between stored frames.
    max_frames : int, frames sampled (at least 1).
    masses : (N,) amu, optional, as for :func:`kinetic_temperature_statistics`.

    Returns
    -------
    KineticTemperature with ``from_positions=True``.

    Raises
    ------
    ValueError
        Fewer than 3 frames, or a time step that is not a positive number of fs.
    """
    import xarray as xr

    from numbec.io.trajectory import central_differences

    source = str(trajectory.attrs.get("source") or "trajectory")
    n = int(trajectory.sizes["frame"])
    if n < 3:
        raise ValueError(f"{source}: {n} frames; central differences need at least 3")
    if not (np.isfinite(timestep) and timestep > 0):
        raise ValueError(f"{source}: time step {timestep!r} fs; must be a positive number")
    centres = np.unique(np.linspace(1, n - 2, max(1, min(int(max_frames), n - 2)))
                        .round().astype(np.int64))
    # one read of every frame needed (a store chunk is then read once, not three times)
    needed = np.unique(np.concatenate([centres - 1, centres, centres + 1]))
    positions = np.asarray(trajectory["positions"].isel(frame=needed).values, np.float64)
    pbc = np.asarray(trajectory["pbc"].values, dtype=bool).reshape(3)
    velocities = central_differences(positions[np.searchsorted(needed, centres - 1)],
                                     positions[np.searchsorted(needed, centres + 1)],
                                     trajectory["cell"].isel(frame=centres).values, pbc,
                                     timestep)
    sample = xr.Dataset(
        {"velocities": (("frame", "atom", "xyz"), velocities),
         "positions": (("frame", "atom", "xyz"),
                       positions[np.searchsorted(needed, centres)]),
         "numbers": ("atom", np.asarray(trajectory["numbers"].values)),
         "pbc": ("xyz", pbc)},
        attrs={"source": source})
    if "masses" in trajectory:
        stored = np.asarray(trajectory["masses"].values)
        sample["masses"] = ("atom", stored[0] if stored.ndim == 2 else stored)
    kin = kinetic_temperature_statistics(sample, masses=masses)
    return dataclasses.replace(
        kin, how=f"central differences of the positions {timestep:g} fs apart at "
                 f"{centres.size} frames, {kin.how}", from_positions=True)


def kinetic_temperature(trajectory, *, masses=None, chunk_frames: int = 1000) -> float:
    """Mean kinetic temperature (K) of a trajectory with velocities (Å/fs).

    ``T = <sum_a m_a |v_a|^2> / (kB f)`` with the trajectory's masses and the degrees of
    freedom ``f`` the data have; see :func:`kinetic_temperature_statistics` (same
    parameters, and why ``f`` is ``3N - 3`` or ``3N - 6``).
    """
    return kinetic_temperature_statistics(trajectory, masses=masses,
                                          chunk_frames=chunk_frames).mean
