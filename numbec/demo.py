"""The offline end-to-end demo: water clusters with GFN2-xTB as the exact reference.

``numbec demo [--out DIR] [--quick]`` runs the whole job of numbec in a few minutes on
a laptop, with a reference that is exact for its level of theory:

1. :func:`generate_reference` — small water clusters (H2O)_n, thermalised by a short
   Langevin MD with GFN2-xTB (``tblite``), and their *exact* atomic polar tensors
   ``Z[a, i, j] = dP_i / dr_{a,j}`` by central finite differences of the xTB dipole;
2. :func:`train_models` — monopole, dipole and combined kernel models (and the
   species-mean baseline) fitted to those APTs and dipoles;
3. :func:`run_md` — an independent NVE trajectory of another cluster, written as an
   ASE ``.traj`` with the exact xTB dipole of every MD step, converted to a Zarr
   trajectory store (:func:`numbec.convert_trajectory`) and streamed through every model
   (:func:`numbec.predict`);
4. :func:`compare` — the IR spectrum from the predicted ``dM/dt = sum_a Z_a v_a`` and from
   the time derivative of the exact xTB dipole, the BEC error along the trajectory against
   exact APTs of some MD frames, and the agreement of the spectra (cosine similarity,
   band intensities, peak positions); the calibration of every kernel model's
   ``bec_std`` at those frames (the combined model's variance recalibrated by
   cross-validation on the training structures), and the combined model's spectrum with
   its model-uncertainty band from posterior weight samples (:func:`band_agreement`).
   :func:`run_demo` ties it together and writes ``ir.png`` and ``results.json`` into the
   output directory.

Everything xTB produces is cached in ``DIR/cache`` under names that hash the settings
that made it, so a second run only redoes the cheap steps. Seeds are fixed; with one
OpenMP thread for xTB (set here) the run is deterministic.

Units: Å, fs, e, e·Å, e·Å/fs, cm^-1, K. The clusters are isolated (no volume), so the
spectra are absorption cross-sections per cluster (cm^2, ``cross_section`` of
:func:`numbec.ir_spectrum`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from numbec.io._files import atomic_write
from numbec.io.prediction import model_fingerprint
from numbec.parallel import blas_limit

__all__ = [
    "DemoConfig",
    "MissingDependencyError",
    "band_agreement",
    "compare",
    "exact_dipole_derivative",
    "finite_difference_apt",
    "generate_reference",
    "run_demo",
    "run_md",
    "spectral_agreement",
    "train_models",
    "water_cluster",
    "xtb_calculator",
]

INSTALL_HINT = 'the demo needs tblite (GFN2-xTB) and matplotlib: pip install "numbec[demo]"'

#: Frequency bands of water (cm^-1) whose integrated intensities the demo compares.
BANDS = {"librations": (0.0, 1200.0), "bend": (1200.0, 2200.0), "stretch": (2200.0, 4200.0)}

MODEL_NAMES = ("monopole", "dipole", "combined")


class MissingDependencyError(RuntimeError):
    """An optional dependency of the demo (tblite, matplotlib) is not installed."""


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes and settings of one demo run (:meth:`full` and :meth:`quick` presets).

    Attributes
    ----------
    train_sizes : tuple of int
        Cluster sizes n of (H2O)_n in the training set, one cluster (its own random
        geometry and trajectory) per entry; repeat a size for more of its environments.
    snapshots_per_size : int
        Training structures taken from each cluster's MD.
    train_temperature : float, K
        Langevin temperature of the training MD (above the test MD's, to cover it).
    sample_every : int
        MD steps between training snapshots (after ``sample_every`` steps of equilibration).
    md_size : int
        n of the (H2O)_n cluster of the independent test MD.
    temperature : float, K
        Temperature of the test MD's Langevin thermalisation.
    thermal_steps, md_steps : int
        Langevin thermalisation steps, then NVE steps of the test MD.
    timestep : float, fs
        MD time step (0.5 fs resolves the O-H stretch).
    stride : int
        Every ``stride``-th NVE step is a trajectory frame (the dipole is kept every step);
        4 gives frames 2 fs apart, a Nyquist frequency of 8300 cm^-1.
    n_check : int
        MD frames at which exact APTs are computed to measure the BEC error.
    n_sparse : int
        Sparse reference environments per species for every kernel model.
    fd_step : float, Å
        Displacement of the central finite differences for the APTs.
    seed : int
        Seed of every random choice (cluster geometries, velocities, Langevin noise, models).
    recalibrate_folds : int
        Folds of the cross-validated variance scale of the combined model
        (:func:`numbec.models.uncertainty.recalibrate`), learned from the training
        structures only; 0 keeps the raw Bayesian variance.
    posterior_samples : int
        Posterior weight samples of the combined model streamed over the test MD for the
        model-uncertainty band of its spectrum (0: no band).
    """

    train_sizes: tuple = (2, 4, 5, 6, 6)
    snapshots_per_size: int = 8
    train_temperature: float = 400.0
    sample_every: int = 40
    md_size: int = 6
    temperature: float = 300.0
    thermal_steps: int = 800
    md_steps: int = 5000
    timestep: float = 0.5
    stride: int = 4
    n_check: int = 8
    n_sparse: int = 60
    fd_step: float = 0.005
    seed: int = 7
    recalibrate_folds: int = 3
    posterior_samples: int = 16

    @classmethod
    def full(cls) -> DemoConfig:
        """The default demo (a few minutes on 2 cores)."""
        return cls()

    @classmethod
    def quick(cls) -> DemoConfig:
        """A reduced run for tests (about a minute): fewer, smaller clusters, 0.6 ps NVE."""
        return cls(
            train_sizes=(2, 3, 4, 5),
            snapshots_per_size=5,
            sample_every=30,
            md_size=4,
            thermal_steps=200,
            md_steps=1200,
            n_check=4,
            n_sparse=30,
        )

    def key(self, *fields) -> str:
        """Short hash of the named fields (all when none): names cache files."""
        data = dataclasses.asdict(self)
        if fields:
            data = {name: data[name] for name in fields}
        text = json.dumps(data, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


# ------------------------------------------------------------------------------ xTB
def _single_openmp_thread() -> None:
    """Run xTB on one OpenMP thread: for clusters of a few dozen atoms, more threads on a
    shared machine make every SCF several times slower, and one thread is deterministic."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import ctypes

        ctypes.CDLL("libgomp.so.1").omp_set_num_threads(1)
    except OSError:  # another OpenMP runtime: the environment variable does it
        pass


def xtb_calculator(accuracy: float = 0.01):
    """A GFN2-xTB ASE calculator (``tblite.ase.TBLite``), quiet and on one thread.

    ``accuracy=0.01`` converges the SCF tightly enough that finite-difference APTs obey
    the acoustic sum rule to ~1e-4 e. Raises :class:`MissingDependencyError` with the
    install command when tblite is not installed.
    """
    _single_openmp_thread()
    try:
        from tblite.ase import TBLite
    except ImportError as exc:
        raise MissingDependencyError(INSTALL_HINT) from exc
    return TBLite(method="GFN2-xTB", accuracy=accuracy, verbosity=0)


def water_cluster(n: int, seed: int, calc=None, fmax: float = 0.1, steps: int = 150):
    """A (H2O)_n cluster: randomly placed and oriented molecules, relaxed with xTB.

    Molecule centres are drawn in a sphere with O–O distances of at least 2.7 Å, so the
    relaxation (BFGS, ``fmax`` eV/Å, at most ``steps`` steps) forms hydrogen bonds
    without breaking molecules. Returns an :class:`ase.Atoms` (O, H, H per molecule,
    positions in Å, no cell, ``pbc`` False) with ``calc`` attached when given.
    """
    from ase import Atoms
    from ase.build import molecule
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    water = molecule("H2O")
    water.positions -= water.get_center_of_mass()
    radius = 1.6 * n ** (1.0 / 3.0) + 0.5
    centres: list[np.ndarray] = []
    while len(centres) < n:
        point = rng.uniform(-radius, radius, 3)
        if np.linalg.norm(point) <= radius and all(
            np.linalg.norm(point - c) >= 2.7 for c in centres
        ):
            centres.append(point)
    atoms = Atoms()
    for centre in centres:
        rotation = Rotation.random(random_state=rng)
        atoms += Atoms(water.numbers, rotation.apply(water.positions) + centre)
    atoms.positions -= atoms.get_center_of_mass()
    if calc is not None:
        from ase.optimize import BFGS

        atoms.calc = calc
        BFGS(atoms, logfile=None).run(fmax=fmax, steps=steps)
    return atoms


def finite_difference_apt(atoms, h: float = 0.005) -> tuple[np.ndarray, np.ndarray]:
    """Exact atomic polar tensors of a molecule by central differences of its dipole.

    ``Z[a, i, j] = (P_i(r_{a,j} + h) - P_i(r_{a,j} - h)) / (2 h)`` with ``P`` the dipole
    of ``atoms.calc`` (ASE: e·Å). Costs 6 N single points.

    Parameters
    ----------
    atoms : ase.Atoms with a calculator that gives ``get_dipole_moment()``
    h : float, Å

    Returns
    -------
    bec : (N, 3, 3) float64, e, canonical layout ``Z[a, i, j] = dP_i / dr_{a,j}``
    dipole : (3,) float64, e·Å, at the undisplaced geometry
    """
    positions = atoms.get_positions()
    dipole = np.asarray(atoms.get_dipole_moment(), dtype=np.float64)
    bec = np.empty((len(atoms), 3, 3))
    for a in range(len(atoms)):
        for j in range(3):
            shifted = []
            for sign in (1.0, -1.0):
                moved = positions.copy()
                moved[a, j] += sign * h
                atoms.set_positions(moved)
                shifted.append(np.asarray(atoms.get_dipole_moment(), dtype=np.float64))
            bec[a, :, j] = (shifted[0] - shifted[1]) / (2.0 * h)
    atoms.set_positions(positions)
    return bec, dipole


def _thermal_momenta(atoms, temperature: float, rng) -> None:
    """Maxwell–Boltzmann momenta at ``temperature`` K (ASE units), without net momentum
    or angular momentum (an isolated cluster neither drifts nor spins)."""
    from ase import units
    from ase.md.velocitydistribution import Stationary, ZeroRotation

    masses = atoms.get_masses()[:, None]
    atoms.set_momenta(rng.standard_normal((len(atoms), 3)) * np.sqrt(masses * units.kB
                                                                     * temperature))
    Stationary(atoms)
    ZeroRotation(atoms)


def _langevin(atoms, timestep: float, temperature: float, rng):
    from ase import units
    from ase.md.langevin import Langevin

    return Langevin(atoms, timestep * units.fs, temperature_K=temperature,
                    friction=0.02 / units.fs, fixcm=False, rng=rng)


def generate_reference(config: DemoConfig, cache: Path, log=print) -> list:
    """Training structures with exact xTB APTs and dipoles (cached as extxyz).

    For every size n in ``config.train_sizes``: a relaxed (H2O)_n cluster, Langevin MD at
    ``config.train_temperature``, and ``config.snapshots_per_size`` snapshots every
    ``config.sample_every`` steps, each with its APTs from :func:`finite_difference_apt`.

    Returns
    -------
    list of ase.Atoms
        ``arrays["bec"]`` (N, 3, 3) e canonical; ``info["dipole"]`` (3,) e·Å.
    """
    import numbec

    key = config.key("train_sizes", "snapshots_per_size", "train_temperature", "sample_every",
                     "timestep", "fd_step", "seed")
    path = cache / f"reference-{key}.extxyz"
    if path.exists():
        log(f"  reference APTs: cached ({path.name})")
        return numbec.read_bec(path)
    calc = xtb_calculator()
    frames = []
    t0 = time.perf_counter()
    for k, n in enumerate(config.train_sizes):
        rng = np.random.default_rng([config.seed, k, n])  # a new cluster for every entry
        atoms = water_cluster(n, seed=int(rng.integers(2**31)), calc=calc)
        _thermal_momenta(atoms, config.train_temperature, rng)
        dyn = _langevin(atoms, config.timestep, config.train_temperature, rng)
        for _ in range(config.snapshots_per_size):
            dyn.run(config.sample_every)
            bec, dipole = finite_difference_apt(atoms, config.fd_step)
            snapshot = atoms.copy()
            snapshot.set_momenta(None)
            snapshot.arrays["bec"] = bec
            snapshot.info["dipole"] = dipole
            frames.append(snapshot)
    atomic_write(path, lambda tmp: numbec.write_bec(tmp, frames))
    asr = max(float(np.abs(f.arrays["bec"].sum(axis=0)).max()) for f in frames)
    log(f"  reference APTs: {len(frames)} clusters (H2O)_n, n = "
        f"{','.join(map(str, config.train_sizes))}, max |ASR| {asr:.1e} e "
        f"({time.perf_counter() - t0:.0f} s)")
    return frames


def run_md(config: DemoConfig, cache: Path, log=print) -> dict:
    """The independent test MD of an (H2O)_``md_size`` cluster, with the exact dipole.

    A relaxed cluster (another geometry than any training cluster), Langevin
    thermalisation at ``config.temperature`` for ``thermal_steps``, then velocity-Verlet
    NVE for ``md_steps`` steps of ``timestep`` fs. Every ``stride``-th NVE step is written
    to an ASE ``.traj`` (positions, momenta); the xTB dipole is kept at every step, so
    its time derivative is accurate to fourth order (:func:`exact_dipole_derivative`).
    Cached in ``cache``.

    Returns
    -------
    dict
        ``traj`` Path of the ``.traj``; ``frame_dt`` fs between frames; ``dipole_dt`` (F, 3)
        e·Å/fs, the exact ``dM/dt`` at every frame; ``n_frames``.
    """
    key = config.key("md_size", "temperature", "thermal_steps", "md_steps", "timestep",
                     "stride", "seed")
    traj_path = cache / f"md-{key}.traj"
    dip_path = cache / f"md-{key}-dipole.npz"
    frame_dt = config.timestep * config.stride
    if traj_path.exists() and dip_path.exists():
        with np.load(dip_path) as data:
            dipole_dt = data["dipole_derivative"]
        log(f"  test MD: cached ({traj_path.name}, {len(dipole_dt)} frames)")
        return {"traj": traj_path, "frame_dt": frame_dt, "dipole_dt": dipole_dt,
                "n_frames": len(dipole_dt)}

    from ase.io.trajectory import Trajectory
    from ase.md.verlet import VelocityVerlet

    calc = xtb_calculator()
    t0 = time.perf_counter()
    rng = np.random.default_rng([config.seed, 1000 + config.md_size])
    atoms = water_cluster(config.md_size, seed=int(rng.integers(2**31)), calc=calc)
    _thermal_momenta(atoms, config.temperature, rng)
    _langevin(atoms, config.timestep, config.temperature, rng).run(config.thermal_steps)
    from ase.md.velocitydistribution import Stationary, ZeroRotation

    Stationary(atoms)
    ZeroRotation(atoms)

    # frame k is NVE step 2 + k * stride: two extra steps on each side give the
    # fourth-order central difference of the dipole at every frame
    n_frames = (config.md_steps - 4) // config.stride + 1
    n_steps = 2 + (n_frames - 1) * config.stride + 3
    dipoles = np.empty((n_steps, 3))
    dyn = VelocityVerlet(atoms, config.timestep * _ase_fs())

    def write_md(tmp):
        with Trajectory(tmp, "w") as traj:
            for step in range(n_steps):
                if step:
                    dyn.step()
                else:
                    atoms.get_forces()
                dipoles[step] = atoms.get_dipole_moment()
                if step >= 2 and (step - 2) % config.stride == 0 \
                        and (step - 2) // config.stride < n_frames:
                    frame = atoms.copy()  # without the calculator: positions and momenta only
                    traj.write(frame)

    atomic_write(traj_path, write_md)
    dipole_dt = exact_dipole_derivative(dipoles, config.timestep)[2::config.stride][:n_frames]
    def write_dipoles(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, dipole_derivative=dipole_dt, dipole=dipoles, timestep=config.timestep)

    atomic_write(dip_path, write_dipoles)
    log(f"  test MD: (H2O)_{config.md_size}, {config.thermal_steps} Langevin + {n_steps} NVE "
        f"steps of {config.timestep:g} fs, {n_frames} frames "
        f"({time.perf_counter() - t0:.0f} s)")
    return {"traj": traj_path, "frame_dt": frame_dt, "dipole_dt": dipole_dt,
            "n_frames": n_frames}


def _ase_fs() -> float:
    from ase import units

    return units.fs


def exact_dipole_derivative(dipoles, timestep: float) -> np.ndarray:
    """Fourth-order central difference ``dM/dt`` of a dipole series.

    ``Mdot[s] = (M[s-2] - 8 M[s-1] + 8 M[s+1] - M[s+2]) / (12 dt)``; the first and last two
    steps, where it is undefined, are NaN. Relative error ``(omega dt)^4 / 30``: 1e-4 for
    the O–H stretch at dt = 0.5 fs.

    Parameters
    ----------
    dipoles : (S, 3) float64, e·Å, one per MD step
    timestep : float, fs

    Returns
    -------
    (S, 3) float64, e·Å/fs
    """
    m = np.asarray(dipoles, dtype=np.float64)
    out = np.full_like(m, np.nan)
    out[2:-2] = (m[:-4] - 8.0 * m[1:-3] + 8.0 * m[3:-1] - m[4:]) / (12.0 * timestep)
    return out


def exact_check_frames(config: DemoConfig, md: dict, cache: Path, log=print) -> list:
    """Exact APTs at ``config.n_check`` evenly spaced frames of the test MD (cached).

    Returns a list of ase.Atoms with ``arrays["bec"]`` (N, 3, 3) e, ``info["frame"]`` (the
    trajectory frame index) and ``info["dipole"]`` e·Å.
    """
    import ase.io

    import numbec

    path = cache / f"{Path(md['traj']).stem}-apt-{config.key('n_check', 'fd_step')}.extxyz"
    if path.exists():
        log(f"  exact APTs along the MD: cached ({path.name})")
        return numbec.read_bec(path)
    t0 = time.perf_counter()
    calc = xtb_calculator()
    indices = np.linspace(0, md["n_frames"] - 1, config.n_check + 2).round().astype(int)[1:-1]
    frames = []
    for k in indices:
        atoms = ase.io.read(md["traj"], index=int(k))
        atoms.calc = calc
        bec, dipole = finite_difference_apt(atoms, config.fd_step)
        snapshot = atoms.copy()
        snapshot.set_momenta(None)
        snapshot.arrays["bec"] = bec
        snapshot.info["dipole"] = dipole
        snapshot.info["frame"] = int(k)
        frames.append(snapshot)
    atomic_write(path, lambda tmp: numbec.write_bec(tmp, frames))
    log(f"  exact APTs along the MD: {len(frames)} frames ({time.perf_counter() - t0:.0f} s)")
    return numbec.read_bec(path)


# ------------------------------------------------------------------------------ models
def _settings():
    from numbec.descriptors import DescriptorSettings

    # a small basis: clusters of a few molecules, trained in seconds
    return DescriptorSettings(species=(1, 8), cutoff_radial=6.0, cutoff_angular=4.5,
                              sigma=0.5, n_radial=6, n_angular=6, l_max=3)


#: The combined model's recalibration method (numbec.models.uncertainty.recalibrate); part of
#: its cache name, so that a cached model never carries the scales of another method.
RECALIBRATION = "two_part"


def train_models(frames, config: DemoConfig, cache: Path, log=print) -> dict:
    """Fit the monopole, dipole and combined models and the species-mean baseline.

    Models are fitted to ``arrays["bec"]`` and ``info["dipole"]`` of ``frames`` and saved
    as ``.npz`` in ``cache`` (keyed by the training data and settings); a cached model is
    loaded instead of refitted. With ``config.recalibrate_folds`` the combined model's
    predictive variance is rescaled by a cross-validated factor learned from ``frames``
    (the training structures, never the test MD) before it is saved. A model class that
    this numbec does not have yet is skipped with a message.

    Returns
    -------
    dict name -> model, names from ``("monopole", "dipole", "combined", "species-mean")``
    """
    import numbec
    from numbec.models import SpeciesMeanModel

    digest = hashlib.sha256()
    for atoms in frames:
        digest.update(np.ascontiguousarray(atoms.positions).tobytes())
        digest.update(np.ascontiguousarray(atoms.arrays["bec"]).tobytes())
    settings = _settings()
    key = hashlib.sha256(
        (digest.hexdigest() + json.dumps(settings.to_dict(), sort_keys=True)
         + str(config.n_sparse) + str(config.seed)).encode()
    ).hexdigest()[:10]
    models = {}
    for name, cls_name in zip(MODEL_NAMES, ("MonopoleModel", "DipoleModel", "CombinedModel"),
                              strict=True):
        folds = config.recalibrate_folds if name == "combined" else 0
        # the recalibration method is in the name: a cached model keeps the scale it had
        path = cache / f"model-{name}-{key}{f'-cv{folds}-{RECALIBRATION}' if folds else ''}.npz"
        if path.exists():
            models[name] = numbec.load_model(path)
            log(f"  {name} model: cached ({path.name})")
            continue
        try:
            cls = getattr(numbec, cls_name)
        except (AttributeError, ImportError):
            log(f"  {name} model: numbec.{cls_name} is not available in this build; skipped")
            continue
        t0 = time.perf_counter()
        model = cls(settings=settings, zeta=4, n_sparse=config.n_sparse, seed=config.seed)
        model.fit(frames)
        log(f"  {name} model: fitted on {len(frames)} structures "
            f"({time.perf_counter() - t0:.0f} s)")
        if folds:
            from numbec.models.uncertainty import recalibrate

            t1 = time.perf_counter()
            recalibrate(model, frames, folds=folds, method=RECALIBRATION)
            model.training["variance_scale_fit"]["seconds"] = time.perf_counter() - t1
            log(f"  {name} model: variance scales {model.variance_scale:.3g} (epistemic) / "
                f"{model.noise_scale:.3g} (noise) from {folds}-fold "
                f"cross-validation on the training structures "
                f"({time.perf_counter() - t1:.0f} s)")
        model.save(path)
        models[name] = model
    models["species-mean"] = SpeciesMeanModel.fit(frames)
    return models


# ------------------------------------------------------------------------------ spectra
def _spectrum(dipole_dt, timestep: float, temperature: float, samples=None):
    """IR spectrum of one dM/dt series (F, 3) e·Å/fs of an isolated cluster.

    Returns (frequency (M,) cm^-1, cross-section (M,) cm^2 per cluster); harmonic quantum
    correction, default (Parzen, non-negative) window, correlation time up to 1 ps (line
    FWHM 42.5 cm^-1). With ``samples`` (F, S, 3) e·Å/fs, dM/dt of S posterior weight
    samples, also the model band: a dict ``p16``, ``p84``, ``std`` of (M,) cm^2 as third
    item.
    """
    import numbec

    corr = min(1000.0, 0.5 * len(dipole_dt) * timestep)
    spec = numbec.ir_spectrum(np.asarray(dipole_dt), timestep=timestep,
                              temperature=temperature, correlation_time=corr,
                              samples=None if samples is None else np.asarray(samples))
    result = np.asarray(spec["frequency"].values), np.asarray(spec["cross_section"].values)
    if samples is None:
        return result
    band = {key: np.asarray(spec[f"cross_section_model_{key}"].values)
            for key in ("p16", "p84", "std")}
    return (*result, band)


def band_agreement(frequency, exact, predicted, band, fmax: float = 4200.0,
                   signal: float = 0.05) -> dict:
    """How the model band of a predicted spectrum relates to the exact spectrum.

    Parameters
    ----------
    frequency : (M,) cm^-1; exact, predicted : (M,) cm^2 per cluster
    band : dict ``p16``, ``p84``, ``std`` (M,) cm^2 (from the posterior samples)
    fmax : upper frequency (cm^-1) of the comparison
    signal : frequencies where the exact spectrum exceeds this fraction of its maximum
        count for the coverage

    Returns
    -------
    dict
        ``coverage``: fraction of those frequencies where ``p16 <= exact <= p84`` (nominal
        0.68 for a calibrated band); ``area_exact``, ``area_predicted`` (cm^2·cm^-1, the
        integrals up to ``fmax``); ``area_band_halfwidth``: the integral of
        ``(p84 - p16) / 2``, the spread of the predicted area if the errors at all
        frequencies moved together (an upper bound of its standard deviation);
        ``relative_width``: mean ``(p84 - p16) / (2 predicted)`` over the signal
        frequencies.
    """
    f = np.asarray(frequency)
    sel = (f >= 0.0) & (f <= fmax)
    df = float(f[1] - f[0])
    ex, pr = np.asarray(exact)[sel], np.asarray(predicted)[sel]
    lo, hi = np.asarray(band["p16"])[sel], np.asarray(band["p84"])[sel]
    strong = ex > signal * ex.max()
    return {
        "coverage": float(np.mean((lo[strong] <= ex[strong]) & (ex[strong] <= hi[strong]))),
        "area_exact": float(ex.sum() * df),
        "area_predicted": float(pr.sum() * df),
        "area_band_halfwidth": float(0.5 * (hi - lo).sum() * df),
        "relative_width": float(np.mean(0.5 * (hi - lo)[strong] / pr[strong])),
        "signal_fraction": signal,
        "fmax": fmax,
    }


def spectral_agreement(frequency, reference, other, fmax: float = 4200.0) -> dict:
    """Compare two spectra on the same frequency grid (cm^-1).

    Returns
    -------
    dict
        ``cosine``: cosine similarity of the two spectra on ``[0, fmax]`` (1 = same shape);
        ``intensity_ratio``: integral of ``other`` over that of ``reference``;
        ``bands``: per band of :data:`BANDS`, the ratio of integrated intensities and the
        peak positions (cm^-1) of both.
    """
    f = np.asarray(frequency)
    a = np.asarray(reference)
    b = np.asarray(other)
    sel = (f >= 0.0) & (f <= fmax)
    cosine = float(a[sel] @ b[sel] / (np.linalg.norm(a[sel]) * np.linalg.norm(b[sel])))
    result = {"cosine": cosine, "intensity_ratio": float(b[sel].sum() / a[sel].sum()),
              "bands": {}}
    for band, (lo, hi) in BANDS.items():
        m = (f >= lo) & (f < hi)
        result["bands"][band] = {
            "intensity_ratio": float(b[m].sum() / a[m].sum()),
            "peak_reference": float(f[m][np.argmax(a[m])]),
            "peak": float(f[m][np.argmax(b[m])]),
        }
    return result


def _rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def compare(models: dict, store, md: dict, checks: list, config: DemoConfig, cache: Path,
            log=print, progress: bool = False) -> dict:
    """Stream every model over the test trajectory and compare with the exact xTB results.

    Parameters
    ----------
    models : dict name -> BECModel (from :func:`train_models`)
    store : path of the Zarr trajectory store of the test MD
    md : dict from :func:`run_md` (exact ``dipole_dt`` (F, 3) e·Å/fs)
    checks : frames from :func:`exact_check_frames` (exact APTs at some MD frames)
    progress : bool
        Progress bars of the streamed predictions (on stderr).

    Returns
    -------
    dict
        ``exact``: ASR of the check APTs and the consistency of ``sum_a Z_a v_a`` with the
        exact dipole derivative; ``models``: per model the BEC RMSE (all, per species) at
        the check frames, the relative RMSE of its dM/dt over all frames, and
        :func:`spectral_agreement` with the exact spectrum and, for models with
        ``bec_std``, its ``calibration`` at the check frames (:func:`numbec.evaluate`);
        ``model_band`` (with ``config.posterior_samples``): the combined model's band;
        ``spectra``: frequency and absorption arrays (for the figure).
    """
    import numbec
    from numbec.spectra.ir import kinetic_temperature

    exact_dd = md["dipole_dt"]
    idx = [int(atoms.info["frame"]) for atoms in checks]
    z_exact = np.stack([atoms.arrays["bec"] for atoms in checks])  # (C, N, 3, 3)
    numbers = checks[0].numbers
    # velocities as the store holds them (Å/fs, converted from ASE units by convert_trajectory)
    v = np.asarray(numbec.open_trajectory(store)["velocities"][idx].values)  # (C, N, 3)
    apt_dd = np.einsum("cnij,cnj->ci", z_exact, v)
    consistency = _rmse(apt_dd, exact_dd[idx]) / float(np.sqrt(np.mean(exact_dd[idx] ** 2)))
    # the cluster runs NVE with drift and rotation removed: 3N - 6 degrees of freedom,
    # which kinetic_temperature finds from the velocities themselves
    temperature = kinetic_temperature(numbec.open_trajectory(store))
    results = {
        "exact": {
            "asr_max_e": float(np.abs(z_exact.sum(axis=1)).max()),
            "apt_velocity_vs_dipole_derivative_relative_rmse": consistency,
            "temperature_K": temperature,
        },
        "models": {},
    }
    freq, exact_spec = _spectrum(exact_dd, md["frame_dt"], temperature)
    spectra = {"frequency": freq, "exact": exact_spec}
    for name, model in models.items():
        t0 = time.perf_counter()
        model_hash = model_fingerprint(model)["sha256"][:10]
        n_samples = config.posterior_samples if name == "combined" else 0
        # "full": full-posterior samples (forward mode); caches of the former low-rank
        # samples have other variables and must not be resumed
        suffix = f"-samples{n_samples}-full" if n_samples else ""
        out = cache / f"pred-{name}-{Path(store).stem}-{model_hash}{suffix}.zarr"
        log(f"  {name} model: streaming BEC predictions over {md['n_frames']} frames"
            + (f" with {n_samples} posterior samples" if n_samples else ""))
        # the samples ride on the same descriptor pass (forward mode along the velocities,
        # numbec.models.forward_mode): one prediction gives BECs and band
        pred = numbec.predict(model, store, out=out, progress=progress,
                              posterior_samples=n_samples, seed=config.seed)
        bec = np.asarray(pred["bec"].values)
        dd = np.asarray(pred["dipole_derivative"].values)
        predict_seconds = time.perf_counter() - t0
        z_pred = bec[idx]
        per_species = {}
        for z in np.unique(numbers):
            from ase.data import chemical_symbols

            per_species[chemical_symbols[z]] = _rmse(z_pred[:, numbers == z],
                                                     z_exact[:, numbers == z])
        entry = {
            "bec_rmse_e": _rmse(z_pred, z_exact),
            "bec_rmse_per_species_e": per_species,
            "dipole_derivative_relative_rmse": _rmse(dd, exact_dd)
            / float(np.sqrt(np.mean(exact_dd**2))),
            "predict_seconds": predict_seconds,
        }
        if n_samples:
            t1 = time.perf_counter()
            freq_m, spec_m, band = _spectrum(
                dd, md["frame_dt"], temperature,
                samples=pred["dipole_derivative_samples"].values)
            sel = freq_m <= 4200.0
            results["model_band"] = {
                "model": name,
                "n_posterior_samples": n_samples,
                "variance_scale": float(getattr(model, "variance_scale", 1.0) or 1.0),
                **band_agreement(freq_m, exact_spec, spec_m, band),
                "frequency_cm-1": freq_m[sel].tolist(),
                "cross_section_exact_cm2": exact_spec[sel].tolist(),
                "cross_section_cm2": spec_m[sel].tolist(),
                **{f"cross_section_model_{k}_cm2": v[sel].tolist() for k, v in band.items()},
                "spectra_seconds": time.perf_counter() - t1,
            }
            spectra[f"{name}_model_p16"] = band["p16"]
            spectra[f"{name}_model_p84"] = band["p84"]
        else:
            freq_m, spec_m = _spectrum(dd, md["frame_dt"], temperature)
        spectra[name] = spec_m
        entry["spectrum"] = spectral_agreement(freq, exact_spec, spec_m)
        if "bec_std" in getattr(model, "outputs", ()):
            t1 = time.perf_counter()
            # exact bec_std at the test frames with exact APTs (design rows: cheap for a
            # few frames); the combined model's variance is recalibrated on training data
            cal = numbec.evaluate(model, checks, baseline=False, calibration=True,
                                  progress=False)["calibration"]
            entry["calibration"] = {
                **{k: cal[k] for k in ("coverage_68", "coverage_95", "coverage_68_interval",
                                       "coverage_95_interval", "coverage_68_block",
                                       "coverage_95_block", "nll", "z_rms", "mean_std",
                                       "frame_rank_correlation", "n_frames")},
                "variance_scale": float(getattr(model, "variance_scale", 1.0) or 1.0),
                "noise_scale": getattr(model, "noise_scale", None),
                "seconds": time.perf_counter() - t1,
            }
        results["models"][name] = entry
    results["spectra"] = spectra
    return results




def _plot(spectra: dict, path: Path, title: str) -> None:
    """Top: the exact spectrum and every model's. Bottom (when the combined model has a
    band): the combined model with its model-uncertainty band (16th-84th percentile of the
    posterior samples' spectra) against the exact spectrum. Absolute units."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    band = "combined_model_p16" in spectra
    fig, axes = plt.subplots(2 if band else 1, 1, figsize=(7.0, 6.8 if band else 4.0),
                             sharex=True, squeeze=False)
    axes = axes[:, 0]
    f = spectra["frequency"]
    sel = f <= 4200.0
    scale = 1e-18  # cm^2: absolute cross-sections of one cluster, readable tick labels
    ylabel = "cross-section per cluster (10$^{-18}$ cm$^2$)"
    ax = axes[0]
    ax.plot(f[sel], spectra["exact"][sel] / scale, color="black", lw=2.0,
            label="exact xTB dipole")
    styles = {"monopole": "C0", "dipole": "C1", "combined": "C3", "species-mean": "0.6"}
    for name, color in styles.items():
        if name in spectra:
            ax.plot(f[sel], spectra[name][sel] / scale, color=color, lw=1.0,
                    ls="--" if name == "species-mean" else "-", label=f"{name} model")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    if band:
        ax = axes[1]
        ax.fill_between(f[sel], spectra["combined_model_p16"][sel] / scale,
                        spectra["combined_model_p84"][sel] / scale, color="C3", alpha=0.3,
                        lw=0, label="model band (16-84 %, posterior samples)")
        ax.plot(f[sel], spectra["combined"][sel] / scale, color="C3", lw=1.0,
                label="combined model")
        ax.plot(f[sel], spectra["exact"][sel] / scale, color="black", lw=1.5,
                label="exact xTB dipole")
        ax.set_ylabel(ylabel)
        ax.legend(frameon=False, fontsize=8)
    axes[-1].set_xlabel("frequency (cm$^{-1}$)")
    axes[-1].set_xlim(0.0, 4200.0)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------ driver
def run_demo(out="numbec-demo", quick: bool = False, fresh: bool = False, log=print,
             progress: bool = False) -> dict:
    """Run the whole demo; write ``ir.png``, ``spectra.csv`` and ``results.json`` to ``out``.

    Parameters
    ----------
    out : str or Path
        Output directory (created); ``out/cache`` keeps the xTB data, trajectory store,
        models and predictions for the next run.
    quick : bool
        The reduced :meth:`DemoConfig.quick` run (smaller clusters, shorter MD).
    fresh : bool
        Ignore (delete) the cache of this configuration first.
    log : callable
        Receives one progress line at a time.
    progress : bool
        Also show progress bars (stderr) for the streamed predictions, the longest step.

    Returns
    -------
    dict
        What ``results.json`` holds: configuration, timings (``uncertainty``: seconds of
        the recalibration, calibration, sampled prediction and band spectra), the
        exact-reference checks, per model the BEC RMSE, dM/dt error, spectral agreement
        and (kernel models) ``calibration`` of ``bec_std`` at the test frames with exact
        APTs; ``model_band``: the combined model's spectrum with its model band (cm^2 per
        cluster) and the exact one up to 4200 cm^-1, and :func:`band_agreement`.
    """
    try:  # fail before any work when an optional dependency is missing
        import matplotlib  # noqa: F401
        import tblite.ase  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(INSTALL_HINT) from exc

    with blas_limit(1):
        return _run(DemoConfig.quick() if quick else DemoConfig.full(), Path(out), quick,
                    fresh, log, progress)


def _run(config: DemoConfig, out: Path, quick: bool, fresh: bool, log,
         progress: bool = False) -> dict:
    import shutil

    import numbec

    cache = out / "cache"
    if fresh and cache.exists():
        shutil.rmtree(cache)
    cache.mkdir(parents=True, exist_ok=True)
    timings = {}
    t_start = time.perf_counter()

    log(f"numbec demo ({'quick' if quick else 'full'}) -> {out}")
    log("1. reference: water clusters, GFN2-xTB, exact APTs by finite differences")
    t0 = time.perf_counter()
    frames = generate_reference(config, cache, log)
    timings["reference"] = time.perf_counter() - t0

    log("2. training monopole, dipole and combined models")
    t0 = time.perf_counter()
    models = train_models(frames, config, cache, log)
    timings["training"] = time.perf_counter() - t0

    log("3. independent xTB MD -> trajectory store -> streamed BEC predictions")
    t0 = time.perf_counter()
    md = run_md(config, cache, log)
    store = cache / (Path(md["traj"]).stem + ".zarr")
    if not store.exists():
        atomic_write(store, lambda tmp: numbec.convert_trajectory(
            md["traj"], tmp, timestep=md["frame_dt"], progress=False))
    checks = exact_check_frames(config, md, cache, log)
    timings["md"] = time.perf_counter() - t0

    log("4. IR spectra: predicted sum_a Z_a v_a vs the exact xTB dipole derivative")
    t0 = time.perf_counter()
    comparison = compare(models, store, md, checks, config, cache, log, progress)
    spectra = comparison.pop("spectra")
    _plot(spectra, out / "ir.png",
          f"(H$_2$O)$_{{{config.md_size}}}$, GFN2-xTB NVE MD, "
          f"{md['n_frames'] * md['frame_dt'] / 1000:.1f} ps, "
          f"T = {comparison['exact']['temperature_K']:.0f} K")
    names = [k for k in spectra if k != "frequency"]
    atomic_write(out / "spectra.csv", lambda tmp: np.savetxt(
        tmp, np.column_stack([spectra[k] for k in ["frequency"] + names]), delimiter=",",
        fmt="%.6g", header="frequency [cm^-1]," + ",".join(f"{k} [cm^2]" for k in names)))
    timings["predict_and_spectra"] = time.perf_counter() - t0
    # the cost of the uncertainty steps, measured where they ran (a cached model or
    # prediction keeps the cost of the run that made it)
    combined = comparison["models"].get("combined", {})
    fit = (getattr(models.get("combined"), "training", None) or {}).get(
        "variance_scale_fit") or {}
    timings["uncertainty"] = {
        "recalibration": fit.get("seconds"),
        "calibration": sum(r["calibration"]["seconds"]
                           for r in comparison["models"].values() if "calibration" in r),
        "combined_predict_with_samples": combined.get("predict_seconds")
        if "model_band" in comparison else None,
        "band_spectra": comparison.get("model_band", {}).get("spectra_seconds"),
    }
    timings["total"] = time.perf_counter() - t_start

    results = {
        "numbec_version": numbec.__version__,
        "mode": "quick" if quick else "full",
        "config": dataclasses.asdict(config),
        "n_train_structures": len(frames),
        "n_md_frames": md["n_frames"],
        "frame_timestep_fs": md["frame_dt"],
        **comparison,
        "timings_s": timings,
    }
    text = json.dumps(results, indent=2) + "\n"
    atomic_write(out / "results.json", lambda tmp: tmp.write_text(text))
    _report(results, log)
    log(f"wrote {out / 'ir.png'}, {out / 'spectra.csv'}, {out / 'results.json'} "
        f"({timings['total']:.0f} s)")
    return results


def _report(results: dict, log=print) -> None:
    exact = results["exact"]
    log(f"exact reference: ASR max {exact['asr_max_e']:.1e} e; sum_a Z_a v_a vs d(dipole)/dt "
        f"relative RMSE {exact['apt_velocity_vs_dipole_derivative_relative_rmse']:.1e}; "
        f"T = {exact['temperature_K']:.0f} K")
    log(f"{'model':<14}{'BEC RMSE (e)':>13}{'  O / H':>14}{'dM/dt rel.':>12}"
        f"{'cosine':>8}{'bend':>7}{'stretch':>9}  peaks bend/stretch (cm^-1)")
    for name, r in results["models"].items():
        s = r["spectrum"]
        sp = r["bec_rmse_per_species_e"]
        bands = s["bands"]
        log(f"{name:<14}{r['bec_rmse_e']:>13.3f}{sp.get('O', np.nan):>8.3f}/"
            f"{sp.get('H', np.nan):.3f}{r['dipole_derivative_relative_rmse']:>12.3f}"
            f"{s['cosine']:>8.3f}{bands['bend']['intensity_ratio']:>7.2f}"
            f"{bands['stretch']['intensity_ratio']:>9.2f}  "
            f"{bands['bend']['peak']:.0f}/{bands['stretch']['peak']:.0f} "
            f"(exact {bands['bend']['peak_reference']:.0f}/"
            f"{bands['stretch']['peak_reference']:.0f})")
    calibrated = {name: r["calibration"] for name, r in results["models"].items()
                  if "calibration" in r}
    if calibrated:
        n = next(iter(calibrated.values()))["n_frames"]
        log(f"calibration of bec_std on the {n} test frames with exact APTs (nominal 95 % "
            "coverage 0.95; rank correlation of each frame's predicted uncertainty with its "
            f"error, 1 = perfect; {n} snapshots of one MD differ little, so it is coarse "
            "here: docs/benchmarks_models.md measures it on independent clusters)")
        for name, c in calibrated.items():
            if c.get("noise_scale") is not None:
                how = (f"recalibrated on the training data: epistemic variance x "
                       f"{c['variance_scale']:.3g}, noise variance x {c['noise_scale']:.3g}")
            elif c["variance_scale"] != 1.0:
                how = f"recalibrated on the training data, variance x {c['variance_scale']:.2f}"
            else:
                how = "raw Bayesian variance"
            low, high = c["coverage_95_interval"]
            log(f"  {name:<12} 95 % coverage {c['coverage_95']:.2f} ({low:.2f}-{high:.2f} over "
                f"resampled frames), 68 % coverage {c['coverage_68']:.2f}, frame rank correlation "
                f"{c['frame_rank_correlation']:.2f} ({how})")
    band = results.get("model_band")
    if band:
        log(f"model band of the {band['model']} spectrum ({band['n_posterior_samples']} "
            f"posterior samples): covers the exact spectrum at {band['coverage']:.0%} of the "
            f"frequencies with signal (nominal 68 %); mean half width "
            f"{band['relative_width']:.0%}; area exact/predicted "
            f"{band['area_exact'] / band['area_predicted']:.2f} "
            f"(band: +/- {band['area_band_halfwidth'] / band['area_predicted']:.2f})")
