"""The harmonic route to IR spectra: phonon modes at Gamma and Born effective charges.

For a phonon mode ``m`` with mass-weighted eigenvector ``e[m, a, j]`` (orthonormal over
``(a, j)``, phonopy's convention) the *mode effective charge* (the dipole derivative
along the mass-weighted normal coordinate ``Q_m``, unit e/amu^0.5) is

``mu[m, i] = dM_i / dQ_m = sum_a sum_j Z[a, i, j] e[m, a, j] / sqrt(M_a)``

and its IR intensity ``|mu_m|^2`` (e^2/amu); in km/mol
``A_m = N_A |mu_m|^2 / (12 eps0 c^2)`` (974.86 km/mol per e^2/amu). For a crystal of
cell volume ``V`` the mode absorbs

``integral alpha n d(nu~) = |mu_m|^2 / (12 eps0 c^2 V)``  (cm^-2)

the same absolute units as :func:`numbec.spectra.ir_spectrum` (the integral of its
``absorption`` over wavenumber), so MD and harmonic spectra can be overlaid:
:func:`harmonic_spectrum` broadens the sticks with unit-area lines, by default those of a
damped harmonic oscillator, whose ``eps''`` vanishes at zero frequency as a crystal's does.

Frequencies come from the force constants without the non-analytical term, i.e. the
transverse-optical (TO) frequencies, which are what MD in a periodic cell with
short-range force constants shows.

:func:`harmonic_md` integrates classical MD on a harmonic force field (velocity
Verlet), the reference trajectory used to validate the MD route against this one.
phonopy is optional (``pip install numbec[phonopy]``); only :func:`load_phonopy` and
:func:`gamma_modes` need it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from numbec.conventions import (
    AMU,
    ANGSTROM,
    AVOGADRO,
    BOLTZMANN,
    ELEMENTARY_CHARGE,
    FEMTOSECOND,
    INVCM_TO_RAD_PER_FS,
    MEV_TO_INVCM,
    SPEED_OF_LIGHT,
    THZ_TO_INVCM,
    VACUUM_PERMITTIVITY,
    as_bec_array,
)

if TYPE_CHECKING:
    import xarray as xr

#: km/mol of IR intensity per e^2/amu of |dM/dQ|^2: N_A e^2 / (12 eps0 c^2 amu) / 1000.
KM_PER_MOL_PER_E2_AMU = (AVOGADRO * ELEMENTARY_CHARGE**2
                         / (12.0 * VACUUM_PERMITTIVITY * SPEED_OF_LIGHT**2 * AMU) / 1e3)
#: eV / (Å amu) in Å/fs^2 (acceleration of a force in eV/Å on a mass in amu).
EV_PER_ANGSTROM_AMU_TO_ANGSTROM_PER_FS2 = (ELEMENTARY_CHARGE / ANGSTROM / AMU
                                           * FEMTOSECOND**2 / ANGSTROM)

__all__ = [
    "KM_PER_MOL_PER_E2_AMU",
    "gamma_modes",
    "harmonic_ir",
    "harmonic_md",
    "harmonic_spectrum",
    "load_phonopy",
    "mode_effective_charges",
    "mode_oscillator_strengths",
    "static_dielectric",
    "supercell_bec",
]


def _import_phonopy():
    try:
        import phonopy
        from phonopy.file_IO import parse_BORN
    except ImportError as exc:  # pragma: no cover - phonopy is in the test extra
        raise ImportError(
            "the harmonic route needs phonopy: pip install 'numbec[phonopy]'"
        ) from exc
    return phonopy, parse_BORN


def load_phonopy(path, force_sets=None, born=None, primitive_matrix="auto"):
    """Load a phonopy calculation with force constants, and its BECs if there is a BORN.

    Parameters
    ----------
    path : str or Path
        ``phonopy_disp.yaml`` / ``phonopy.yaml``, or the folder holding it.
    force_sets : str or Path, optional
        Default ``FORCE_SETS`` beside the yaml (if present).
    born : str or Path, optional
        Default ``BORN`` beside the yaml (if present).
    primitive_matrix : str or (3, 3)
        Passed to ``phonopy.load`` ("auto" finds the primitive cell).

    Returns
    -------
    phonon : phonopy.Phonopy
        With full (not compact) force constants, no non-analytical correction.
    bec : (P, 3, 3) float64 array or None
        Canonical BECs (e) of the atoms of ``phonon.primitive``, from BORN.
    """
    phonopy, parse_born = _import_phonopy()
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        for name in ("phonopy_disp.yaml", "phonopy.yaml", "phonopy_params.yaml"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"{folder}: no phonopy_disp.yaml or phonopy.yaml")
    if force_sets is None and (folder / "FORCE_SETS").is_file():
        force_sets = folder / "FORCE_SETS"
    if born is None and (folder / "BORN").is_file():
        born = folder / "BORN"
    try:
        phonon = phonopy.load(
            os.fspath(path),
            force_sets_filename=None if force_sets is None else os.fspath(force_sets),
            primitive_matrix=primitive_matrix,
            is_nac=False,
            is_compact_fc=False,
            log_level=0,
        )
    except Exception as exc:
        raise ValueError(f"{path}: phonopy cannot load it ({exc})") from exc
    if phonon.force_constants is None:
        raise ValueError(f"{path}: no force constants (give force_sets=FORCE_SETS)")
    bec = None
    if born is not None:
        try:
            params = parse_born(phonon.primitive, filename=os.fspath(born))
        except Exception as exc:
            raise ValueError(f"{born}: not a BORN file for {path} ({exc})") from exc
        bec = as_bec_array(params["born"], len(phonon.primitive), where=os.fspath(born))
    return phonon, bec


def gamma_modes(phonon):
    """Gamma-point modes of a phonopy calculation (no non-analytical term: TO modes).

    Returns
    -------
    frequencies : (3P,) float64, cm^-1
        Ascending; imaginary modes as negative numbers (phonopy's convention).
    eigenvectors : (3P, P, 3) float64
        Real, mass-weighted, orthonormal: ``eigenvectors[m, a, j]`` (the Gamma dynamical
        matrix is real, diagonalised here with ``numpy.linalg.eigh``).
    masses : (P,) float64, amu
        Of ``phonon.primitive``.
    """
    phonon.dynamical_matrix.run([0.0, 0.0, 0.0])
    dyn = np.asarray(phonon.dynamical_matrix.dynamical_matrix)
    lam, vec = np.linalg.eigh(dyn.real)
    freq_thz = np.sign(lam) * np.sqrt(np.abs(lam)) * phonon.unit_conversion_factor
    n = len(phonon.primitive)
    return (freq_thz * THZ_TO_INVCM, vec.T.reshape(3 * n, n, 3).copy(),
            np.asarray(phonon.primitive.masses, dtype=np.float64))


def mode_effective_charges(bec, eigenvectors, masses) -> np.ndarray:
    """``mu[m, i] = sum_{a,j} Z[a, i, j] e[m, a, j] / sqrt(M_a)``, shape (M, 3), e/amu^0.5.

    Parameters
    ----------
    bec : (N, 3, 3) float, e, canonical ``Z[a, i, j] = dP_i / dr_{a,j}``.
    eigenvectors : (M, N, 3) float or complex, mass-weighted orthonormal modes.
    masses : (N,) float, amu.
    """
    z = as_bec_array(bec)
    e = np.asarray(eigenvectors)
    masses = np.asarray(masses, dtype=np.float64)
    if e.ndim != 3 or e.shape[1:] != (z.shape[0], 3) or masses.shape != (z.shape[0],):
        raise ValueError(
            f"eigenvectors {e.shape}, masses {masses.shape} and BECs {z.shape} do not "
            "describe the same atoms: expected (M, N, 3), (N,), (N, 3, 3)"
        )
    return np.einsum("aij,maj->mi", z, e / np.sqrt(masses)[None, :, None])


def _oscillator(x, x0, fwhm):
    """Unit-area line of a damped harmonic oscillator (damping ``fwhm``) in ``alpha n``:
    ``(2 / pi) gamma x^2 / ((x0^2 - x^2)^2 + gamma^2 x^2)``, i.e. ``x eps''(x)`` of the Lorentz
    oscillator ``eps = S x0^2 / (x0^2 - x^2 - i gamma x)`` divided by its exact integral
    over ``[0, inf)``, ``(pi / 2) S x0^2``."""
    gamma = float(fwhm)
    return (2.0 / np.pi) * gamma * x**2 / ((x0**2 - x**2) ** 2 + (gamma * x) ** 2)


def _lorentzian(x, x0, fwhm):
    half = 0.5 * fwhm
    return half / np.pi / ((x - x0) ** 2 + half**2)


def _gaussian(x, x0, fwhm):
    sigma = fwhm / np.sqrt(8.0 * np.log(2.0))
    return np.exp(-0.5 * ((x - x0) / sigma) ** 2) / (sigma * np.sqrt(2.0 * np.pi))


#: Unit-area line shapes of :func:`harmonic_spectrum` on an explicit grid.
_LINES = {"oscillator": _oscillator, "lorentzian": _lorentzian, "gaussian": _gaussian}


def _window_lines(nu, area, window, correlation_time, timestep, zero_padding):
    """Grid (cm^-1) and sum of area * (unit-area window line at nu), as ir_spectrum."""
    from numbec.spectra.correlation import cosine_transform, lag_window

    if correlation_time is None:
        raise ValueError("lineshape='window' needs correlation_time (fs)")
    dt = float(timestep)
    n_lags = int(round(float(correlation_time) / dt))
    t = np.arange(n_lags) * dt
    g = lag_window(window, n_lags) * (area[:, None] * np.cos(
        np.outer(nu * INVCM_TO_RAD_PER_FS, t))).sum(axis=0)
    omega, spectrum = cosine_transform(g, dt, zero_padding)
    # integral_0^Nyquist of the transform of g is pi g[0]: unit area per unit g[0]
    return omega / INVCM_TO_RAD_PER_FS, spectrum * INVCM_TO_RAD_PER_FS / np.pi


def harmonic_spectrum(mode_frequency, intensity, volume: float | None = None, *,
                      width: float = 5.0, frequency=None, lineshape: str = "oscillator",
                      window: str = "parzen", correlation_time: float | None = None,
                      timestep: float = 1.0, zero_padding: int = 8) -> xr.Dataset:
    """Stick spectrum broadened to unit-area lines, in ir_spectrum's units.

    Parameters
    ----------
    mode_frequency : (M,) float, cm^-1
    intensity : (M,) float, e^2/amu (``|dM/dQ|^2``)
    volume : float, Å^3, optional
        Cell volume the modes belong to; without it only ``cross_section``.
    width : float, cm^-1
        Damping ``gamma`` of the oscillator lines (their FWHM for ``width`` much below the
        mode frequency), FWHM of the Lorentzian or Gaussian lines.
    frequency : (F,) float, cm^-1, optional
        Grid for "oscillator"/"lorentzian"/"gaussian"; default 0 .. 1.2 max(mode_frequency)
        + 10 width in steps of width / 10.
    lineshape : {"oscillator", "lorentzian", "gaussian", "window"}
        ``"oscillator"`` (default): the damped harmonic oscillator, ``eps = eps_inf + sum_m
        S_m nu_m^2 / (nu_m^2 - nu^2 - i gamma nu)``; its ``eps''`` goes to 0 linearly at
        zero frequency, so :func:`numbec.spectra.dielectric_function` of it gives the
        harmonic ``eps0`` (:func:`static_dielectric`). ``"lorentzian"``: a line symmetric in
        ``alpha n``; its tail makes ``eps'' = alpha n / (2 pi nu)`` grow as ``1 / nu``
        towards zero frequency, which inflates ``eps0`` (MgO: 35 instead of 10.76 with
        width 5): use it for band shapes only. ``"window"``: the line shape
        :func:`numbec.ir_spectrum` gives an undamped mode
        with the same ``window``, ``correlation_time`` (fs), ``timestep`` (fs) and
        ``zero_padding``, on the same frequency grid: the transform of
        ``w(t) cos(omega_m t)``, scaled to unit area. An infinitely long classical
        trajectory of the harmonic system gives exactly this spectrum.

    Returns
    -------
    xarray.Dataset
        ``cross_section`` (frequency) cm^2 per cell (integrates to
        ``|mu|^2 / (12 eps0 c^2)`` per mode); with a volume ``absorption`` cm^-1 and
        ``imag_dielectric``; coordinates as :func:`numbec.ir_spectrum`.
    """
    import xarray as xr

    nu = np.asarray(mode_frequency, dtype=np.float64)
    inten = np.asarray(intensity, dtype=np.float64)
    # integral sigma d(nu~) = |mu|^2 / (12 eps0 c^2) in m, -> cm: *100
    area_cm = inten * ELEMENTARY_CHARGE**2 / AMU / (
        12.0 * VACUUM_PERMITTIVITY * SPEED_OF_LIGHT**2) * 100.0
    real = nu > 0
    if lineshape == "window":
        f, sigma = _window_lines(nu[real], area_cm[real], window, correlation_time, timestep,
                                 zero_padding)
        width = float("nan")
    elif lineshape in _LINES:
        if frequency is None:
            top = 1.2 * max(float(nu.max(initial=0.0)), 0.0) + 10.0 * width
            frequency = np.arange(0.0, top, width / 10.0)
        f = np.asarray(frequency, dtype=np.float64)
        line = _LINES[lineshape]
        sigma = (area_cm[real, None] * line(f[None, :], nu[real, None], width)).sum(axis=0)
    else:
        raise ValueError(f"lineshape must be one of {(*_LINES, 'window')}, got "
                         f"{lineshape!r}")
    coords = {
        "frequency": ("frequency", f, {"units": "cm^-1"}),
        "frequency_thz": ("frequency", f / THZ_TO_INVCM, {"units": "THz"}),
        "frequency_mev": ("frequency", f / MEV_TO_INVCM, {"units": "meV"}),
    }
    data = {"cross_section": ("frequency", sigma, {"units": "cm^2"})}
    attrs = {"units": "cm^2", "spectrum": "cross_section", "lineshape": lineshape,
             "width": float(width), "width_units": "cm^-1", "volume": float("nan")}
    if volume is not None:
        absorption = sigma / (float(volume) * 1e-24)
        data["absorption"] = ("frequency", absorption, {"units": "cm^-1"})
        with np.errstate(divide="ignore", invalid="ignore"):
            eps = np.where(f > 0, absorption / (2 * np.pi * f), np.nan)
        data["imag_dielectric"] = ("frequency", eps, {"units": "1"})
        attrs.update(units="cm^-1", spectrum="absorption", volume=float(volume))
    return xr.Dataset(data, coords=coords, attrs=attrs)


def harmonic_ir(phonon=None, bec=None, *, frequencies=None, eigenvectors=None, masses=None,
                volume=None, width=5.0, frequency=None, **lines):
    """IR intensities per Gamma mode and the broadened harmonic spectrum.

    Either ``phonon`` (a ``phonopy.Phonopy``, or a path for :func:`load_phonopy`, whose
    BORN supplies ``bec`` when not given) or the arrays ``frequencies`` (M,) cm^-1,
    ``eigenvectors`` (M, N, 3), ``masses`` (N,) amu with ``bec`` (N, 3, 3) e.
    ``width``, ``frequency`` and ``**lines`` (``lineshape``, ``window``,
    ``correlation_time``, ``timestep``, ``zero_padding``) go to :func:`harmonic_spectrum`.

    Returns
    -------
    xarray.Dataset
        Per mode (dim ``mode``): ``mode_frequency`` cm^-1, ``mode_charge`` (mode, pol)
        e/amu^0.5, ``intensity`` e^2/amu, ``intensity_km_mol`` km/mol; and the
        spectrum of :func:`harmonic_spectrum` on ``frequency``. attrs ``volume``
        (Å^3, the primitive cell's for phonopy input).
    """
    if phonon is not None:
        if isinstance(phonon, (str, os.PathLike)):
            phonon, born_bec = load_phonopy(phonon)
            bec = born_bec if bec is None else bec
        frequencies, eigenvectors, masses = gamma_modes(phonon)
        if volume is None:
            volume = float(phonon.primitive.volume)
    if bec is None or frequencies is None or eigenvectors is None or masses is None:
        raise ValueError("harmonic_ir needs bec and phonon modes (phonon=, or frequencies=, "
                         "eigenvectors= and masses=)")
    mu = mode_effective_charges(bec, eigenvectors, masses)
    intensity = np.sum(np.abs(mu) ** 2, axis=1)
    spectrum = harmonic_spectrum(frequencies, intensity, volume, width=width,
                                 frequency=frequency, **lines)
    spectrum = spectrum.assign_coords(mode=np.arange(len(intensity)))
    spectrum["mode_frequency"] = ("mode", np.asarray(frequencies, float), {"units": "cm^-1"})
    spectrum["mode_charge"] = (("mode", "pol"), mu.real if np.isrealobj(mu) else mu,
                               {"units": "e/amu^0.5", "long_name": "dM/dQ"})
    spectrum["intensity"] = ("mode", intensity, {"units": "e^2/amu"})
    spectrum["intensity_km_mol"] = ("mode", intensity * KM_PER_MOL_PER_E2_AMU,
                                    {"units": "km/mol"})
    spectrum.attrs["source"] = "harmonic (Gamma modes and BECs)"
    return spectrum


def harmonic_md(force_constants, masses, positions, cell, numbers, temperature, timestep,
                n_steps, seed=0, initial="equipartition"):
    """Classical MD on a harmonic force field, velocity Verlet; a Trajectory dataset.

    ``F_a = - sum_b Phi[a, b] u_b`` with ``u`` the displacements from ``positions``.

    Parameters
    ----------
    force_constants : (N, N, 3, 3) float, eV/Å^2
        Full force constants of the (super)cell, e.g. ``phonon.force_constants``.
    masses : (N,) amu.   positions : (N, 3) Å, equilibrium.   cell : (3, 3) Å, rows.
    numbers : (N,) int atomic numbers.
    temperature : float, K
    timestep : float, fs
    n_steps : int
        Frames returned (the first is the initial state).
    initial : {"equipartition", "boltzmann"}
        Initial state in normal modes (zero-frequency modes at rest):
        ``"equipartition"``: every mode has energy exactly ``kB T`` with a random phase,
        so the time average of each ``Qdot_m^2`` is exactly ``kB T``;
        ``"boltzmann"``: amplitudes drawn from the canonical distribution.

    Returns
    -------
    xarray.Dataset
        Trajectory layout of :func:`numbec.open_trajectory`: ``positions``,
        ``velocities`` (Å/fs), ``cell``, ``numbers``, ``pbc``, ``time``; attrs
        ``timestep`` fs, ``temperature`` K.
    """
    from numbec.io.trajectory import trajectory_dataset

    phi = np.asarray(force_constants, dtype=np.float64)
    masses = np.asarray(masses, dtype=np.float64)
    n = masses.size
    if phi.shape != (n, n, 3, 3):
        raise ValueError(f"force constants {phi.shape} do not match {n} atoms (N, N, 3, 3)")
    k = phi.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)
    k = 0.5 * (k + k.T)
    minv = np.repeat(1.0 / masses, 3)
    dyn = np.sqrt(minv)[:, None] * k * np.sqrt(minv)[None, :]
    lam, vec = np.linalg.eigh(dyn * EV_PER_ANGSTROM_AMU_TO_ANGSTROM_PER_FS2)
    omega = np.sqrt(np.clip(lam, 0.0, None))  # rad/fs
    moving = omega > 1e-5 * omega.max()
    kt = BOLTZMANN * float(temperature) / AMU * (FEMTOSECOND / ANGSTROM) ** 2  # amu Å^2/fs^2
    rng = np.random.default_rng(seed)
    if initial == "equipartition":
        energy = np.full(omega.size, kt)
    elif initial == "boltzmann":
        energy = rng.exponential(kt, omega.size)
    else:
        raise ValueError(f"initial must be 'equipartition' or 'boltzmann', got {initial!r}")
    phase = rng.uniform(0.0, 2.0 * np.pi, omega.size)
    amp = np.where(moving, np.sqrt(2.0 * energy) / np.where(moving, omega, 1.0), 0.0)
    q = amp * np.cos(phase)
    qdot = -amp * omega * np.sin(phase)
    sqrt_minv = np.sqrt(minv)
    u = sqrt_minv * (vec @ q)
    v = sqrt_minv * (vec @ qdot)
    accel = -(minv * EV_PER_ANGSTROM_AMU_TO_ANGSTROM_PER_FS2)[:, None] * k
    dt = float(timestep)
    pos = np.empty((n_steps, 3 * n))
    vel = np.empty((n_steps, 3 * n))
    a = accel @ u
    for step in range(n_steps):
        pos[step], vel[step] = u, v
        v_half = v + 0.5 * dt * a
        u = u + dt * v_half
        a = accel @ u
        v = v_half + 0.5 * dt * a
    eq = np.asarray(positions, dtype=np.float64).reshape(1, n, 3)
    cell = np.asarray(cell, dtype=np.float64)
    return trajectory_dataset(
        positions=eq + pos.reshape(n_steps, n, 3),
        velocities=vel.reshape(n_steps, n, 3),
        cell=np.broadcast_to(cell, (n_steps, 3, 3)),
        numbers=numbers,
        pbc=np.ones(3, dtype=bool),
        time=np.arange(n_steps) * dt,
        attrs={"timestep": dt, "temperature": float(temperature),
               "source": "numbec.spectra.harmonic.harmonic_md"},
    )


def supercell_bec(phonon, bec) -> np.ndarray:
    """Expand primitive-cell BECs (P, 3, 3) to every atom of ``phonon.supercell``."""
    prim = phonon.primitive
    index = np.array([prim.p2p_map[s] for s in prim.s2p_map])
    return as_bec_array(bec)[index]


def mode_oscillator_strengths(mode_charge, mode_frequency, volume, acoustic_below=5.0):
    """Dielectric oscillator strength of every mode, shape (M, 3, 3), dimensionless.

    ``S[m, i, j] = mu[m, i] mu[m, j] / (eps0 V omega_m^2)`` (SI: ``mu`` the mode charge in
    C/kg^0.5, ``omega_m = 2 pi c nu~_m``, ``V`` the cell volume), the step mode ``m`` adds to
    the dielectric tensor below its frequency: ``eps0 = eps_inf + sum_m S[m]``.

    Parameters
    ----------
    mode_charge : (M, 3) float, e/amu^0.5 (:func:`mode_effective_charges`).
    mode_frequency : (M,) float, cm^-1 (TO modes, no non-analytical term).
    volume : float, Å^3, of the cell the modes belong to.
    acoustic_below : float, cm^-1
        Modes with ``|nu~| <`` this are acoustic (zero strength: their mode charge vanishes by
        the acoustic sum rule and the division would not). Imaginary modes above it are an
        error.
    """
    mu = np.asarray(mode_charge, dtype=np.float64)
    nu = np.asarray(mode_frequency, dtype=np.float64)
    if mu.ndim != 2 or mu.shape[1] != 3 or nu.shape != (mu.shape[0],):
        raise ValueError(f"mode_charge {mu.shape} and mode_frequency {nu.shape} must be "
                         "(M, 3) and (M,)")
    unstable = nu <= -acoustic_below
    if unstable.any():
        raise ValueError(f"mode {int(np.argmax(unstable))} is imaginary ({nu[unstable][0]:.1f} "
                         "cm^-1): no static dielectric constant of an unstable structure")
    optical = np.abs(nu) >= acoustic_below
    omega = nu * 2.0 * np.pi * SPEED_OF_LIGHT * 100.0  # rad/s
    mu_si = mu * ELEMENTARY_CHARGE / np.sqrt(AMU)
    weight = np.zeros_like(nu)
    weight[optical] = 1.0 / (VACUUM_PERMITTIVITY * float(volume) * ANGSTROM**3
                             * omega[optical] ** 2)
    return weight[:, None, None] * mu_si[:, :, None] * mu_si[:, None, :]


def static_dielectric(phonon=None, bec=None, eps_inf=None, *, frequencies=None,
                      eigenvectors=None, masses=None, volume=None, acoustic_below=5.0):
    """The static dielectric tensor of the harmonic crystal, ``eps0 = eps_inf + sum_m S_m``.

    Inputs as :func:`harmonic_ir` (a ``phonopy.Phonopy`` or a path, whose BORN supplies
    ``bec`` and ``eps_inf`` when not given; or the mode arrays with ``bec`` and ``volume``).
    ``eps_inf`` is a number or (3, 3) tensor (dimensionless). Oscillator strengths are those
    of :func:`mode_oscillator_strengths`, so the result obeys the generalised
    Lyddane-Sachs-Teller relation with the LO frequencies phonopy gives with the same BECs
    and ``eps_inf``.

    Returns
    -------
    (3, 3) float64, dimensionless
    """
    if phonon is not None:
        if isinstance(phonon, (str, os.PathLike)):
            path = Path(phonon)
            phonon, born_bec = load_phonopy(path)
            bec = born_bec if bec is None else bec
            if eps_inf is None:
                born = (path if path.is_dir() else path.parent) / "BORN"
                _, parse_born = _import_phonopy()
                eps_inf = parse_born(phonon.primitive, filename=os.fspath(born))["dielectric"]
        frequencies, eigenvectors, masses = gamma_modes(phonon)
        if volume is None:
            volume = float(phonon.primitive.volume)
    if bec is None or frequencies is None or eigenvectors is None or masses is None \
            or volume is None or eps_inf is None:
        raise ValueError("static_dielectric needs bec, eps_inf, the modes and the volume")
    eps = np.asarray(eps_inf, dtype=np.float64)
    eps = eps * np.eye(3) if eps.shape in ((), (1,)) else eps.reshape(3, 3)
    mu = mode_effective_charges(bec, eigenvectors, masses).real
    return eps + mode_oscillator_strengths(mu, frequencies, volume, acoustic_below).sum(axis=0)
