"""Infrared spectra from dipole-derivative time series.

Equations: docs/method.md#ir-spectrum-from-a-trajectory.

:func:`ir_spectrum` turns ``dM/dt`` (e·Å/fs, from :func:`numbec.predict` or any array)
into the absorption coefficient times refractive index, in absolute units:

``alpha(omega) n(omega) = F(x) / (6 eps0 V c kB T)``
``                         * integral dt exp(-i omega t) <Mdot(0) . Mdot(t)>``

(SI; ``F`` the quantum correction of :mod:`numbec.spectra.quantum`, 1 for the default
``"harmonic"``), ``eps''(omega) = c alpha n / omega`` and, needing no volume, the
absorption cross-section of the whole simulation cell ``sigma = alpha n V`` (cm^2).
For one harmonic mode of mode charge ``dM/dQ`` the absorption integrates to
``integral alpha n d(omega) = pi |dM/dQ|^2 / (6 eps0 c V)``, i.e.
``integral alpha n d(nu~) = |dM/dQ|^2 / (12 eps0 c^2 V)`` over wavenumbers, and
``integral sigma d(nu~) * N_A`` is the familiar intensity in km/mol
(:func:`integrated_intensity`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import TYPE_CHECKING

import numpy as np

from numbec.conventions import (
    AVOGADRO,
    BOLTZMANN,
    ELEMENTARY_CHARGE,
    INVCM_TO_RAD_PER_FS,
    MEV_TO_INVCM,
    SPEED_OF_LIGHT,
    THZ_TO_INVCM,
    VACUUM_PERMITTIVITY,
)
from numbec.io.prediction import PREDICTION_FORMAT, open_prediction
from numbec.spectra.correlation import (
    NON_NEGATIVE_WINDOWS,
    correlations,
    cosine_transform,
    lag_window,
    segment_spectra,
    window_fwhm,
)
from numbec.spectra.quantum import correction_factor
from numbec.spectra.temperature import (
    POSITIONS_TEMPERATURE_RANGE,
    KineticTemperature,
    kinetic_temperature,
    kinetic_temperature_from_positions,
    kinetic_temperature_statistics,
)

if TYPE_CHECKING:
    import xarray as xr

#: (e·Å/fs)^2·fs expressed in SI (C^2 m^2 / s).
_SPECTRUM_TO_SI = ELEMENTARY_CHARGE**2 * 1e-20 / 1e-15
#: Default longest correlation time (fs) when ``correlation_time`` is not given.
DEFAULT_MAX_CORRELATION_TIME = 2000.0
#: Partial kinds accepted by ``ir_spectrum(..., partials=...)``.
PARTIAL_KINDS = ("species", "partition")
#: Prediction variable with dM/dt of the posterior samples per species (frame, sample,
#: species, pol), e·Å/fs: the model band of the species partial spectra.
SPECIES_SAMPLES = "dipole_derivative_by_species_samples"
#: Fewer blocks (over all runs) than this: the standard error is itself too uncertain to use.
MIN_BLOCKS_FOR_ERRORS = 4
#: A nominal and the kinetic temperature further apart than this many standard errors of the
#: kinetic mean are reported.
TEMPERATURE_MISMATCH_STDERRS = 3.0

__all__ = [
    "cross_section_prefactor",
    "integrated_intensity",
    "ir_spectrum",
    "KineticTemperature",
    "kinetic_temperature",
    "kinetic_temperature_statistics",
    "open_prediction",
    "recorded_trajectory",
    "spectral_peaks",
]


@dataclasses.dataclass
class _Run:
    """One independent trajectory: total dM/dt (n, 3), optional parts (P, n, 3)."""

    total: np.ndarray
    parts: np.ndarray | None
    part_names: list
    timestep: float
    temperature: float | None
    volume: float | None
    source: str
    differentiated: bool = False
    temperature_source: str | None = None
    kinetic: KineticTemperature | None = None
    system: str = ""
    model: str = ""
    samples: np.ndarray | None = None  # (S, n, 3) dM/dt of posterior weight samples
    part_samples: np.ndarray | None = None  # (S, P, n, 3) the samples' parts (species)
    trajectory_note: str | None = None  # why the recorded trajectory store was not used


def cross_section_prefactor(temperature: float) -> float:
    """``sigma [cm^2] = prefactor * S`` for ``S`` = transform of <Mdot Mdot> in (e·Å/fs)^2·fs.

    ``prefactor = e^2 * 1e-5 / (6 eps0 c kB T) * 1e4`` (SI, then m^2 -> cm^2).
    """
    return _SPECTRUM_TO_SI / (6.0 * VACUUM_PERMITTIVITY * SPEED_OF_LIGHT * BOLTZMANN
                              * float(temperature)) * 1e4


# ---------------------------------------------------------------------------- inputs
def _positive(value, what, where=None):
    """``value`` as a finite float > 0 (None stays None); ValueError naming ``where`` (a
    file and attribute, or the argument) otherwise: the same check for command-line options,
    keyword arguments and attributes read from stores."""
    if value is None:
        return None
    prefix = f"{where}: " if where else ""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{prefix}{what} must be a number, got {value!r} "
                         f"({type(value).__name__})")
    value = float(value)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{prefix}{what} must be a finite number > 0, got {value}")
    return value


def _attribute(ds, name, what, source):
    """Attribute ``name`` of a store, validated like the option it stands for (or None)."""
    value = ds.attrs.get(name)
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    return _positive(value, what, f"{source}: attrs[{name!r}]")


def _as_series(values, source, what="dM/dt"):
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{source}: {what} must have shape (n_frames, 3), got {arr.shape}")
    if arr.shape[0] < 4:
        raise ValueError(f"{source}: {what} has {arr.shape[0]} frames; a spectrum needs more")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(f"{source}: {what} of frame {int(np.argmax(bad))} is NaN or inf")
    return arr


def _timestep_of(ds):
    from numbec.io.trajectory import dataset_timestep

    return dataset_timestep(ds)


def _volume_of(ds, source):
    if "volume" in ds.attrs:
        return _attribute(ds, "volume", "volume (Å^3)", source)
    if "cell" in ds and ("pbc" not in ds or bool(np.all(ds["pbc"].values))):
        cell = np.asarray(ds["cell"].values, dtype=np.float64).reshape(-1, 3, 3)
        vol = float(np.abs(np.linalg.det(cell)).mean())
        return _positive(vol, "volume (Å^3, mean |det cell|)", f"{source}: cell")
    return None


def _source_of(ds, fallback):
    """How errors name a dataset: the prediction store the user passed (recorded by
    :func:`open_prediction`), else what the dataset says it was made from."""
    attrs = ds.attrs
    if attrs.get("prediction_store"):
        return str(attrs["prediction_store"])
    made_from = attrs.get("input") or attrs.get("source")
    if made_from and attrs.get("format") == PREDICTION_FORMAT:
        return f"prediction of {made_from}"
    return str(made_from or fallback)


def _species_parts_from_bec(ds, trajectory, source):
    """dM/dt per species from ``bec`` (frame, atom, pol, disp) and trajectory velocities."""
    from ase.data import chemical_symbols

    if trajectory is None or "velocities" not in trajectory:
        raise ValueError(
            f"{source}: species partials need 'dipole_derivative_by_species' in the "
            "prediction, or its 'bec' with trajectory=<the trajectory with velocities>"
        )
    numbers = np.asarray(trajectory["numbers"].values, dtype=np.int64)
    n_frames = ds.sizes["frame"]
    if trajectory.sizes["frame"] != n_frames or trajectory.sizes["atom"] != ds.sizes["atom"]:
        raise ValueError(
            f"{source}: the trajectory has {trajectory.sizes['frame']} frames x "
            f"{trajectory.sizes['atom']} atoms, the prediction {n_frames} x {ds.sizes['atom']}"
        )
    from numbec.stream import default_chunk_frames, species_sums

    species = np.unique(numbers)
    parts = np.zeros((species.size, n_frames, 3))
    step = default_chunk_frames(numbers.size)
    for start in range(0, n_frames, step):
        stop = min(n_frames, start + step)
        z = np.asarray(ds["bec"][start:stop].values, dtype=np.float64)
        v = np.asarray(trajectory["velocities"][start:stop].values, dtype=np.float64)
        contrib = np.einsum("faij,faj->fai", z, v)
        parts[:, start:stop] = species_sums(contrib, numbers, species).transpose(1, 0, 2)
    return parts, [chemical_symbols[int(z)] for z in species]


def _parts_of(ds, kind, trajectory, source):
    from ase.data import chemical_symbols

    if kind == "species":
        if "dipole_derivative_by_species" in ds:
            var = ds["dipole_derivative_by_species"].transpose("species", "frame", "pol")
            numbers = np.asarray(ds["species"].values, dtype=np.int64)
            return (np.asarray(var.values, dtype=np.float64),
                    [chemical_symbols[int(z)] for z in numbers])
        if "bec" in ds:
            return _species_parts_from_bec(ds, trajectory, source)
        raise ValueError(
            f"{source}: species partials need 'dipole_derivative_by_species' or 'bec' "
            "(a dataset from numbec.predict)"
        )
    names = ("dipole_derivative_monopole", "dipole_derivative_dipole")
    if not all(n in ds for n in names):
        raise ValueError(
            f"{source}: partition partials need {names[0]!r} and {names[1]!r}, which "
            "numbec.predict writes for a combined (monopole + dipole) model only"
        )
    return np.stack([np.asarray(ds[n].values, dtype=np.float64) for n in names]), [
        "monopole", "dipole"]


def recorded_trajectory(ds):
    """The trajectory store a prediction store was made from, when it is still there and
    still holds the trajectory that was predicted.

    ``numbec.predict(..., out=)`` records the resolved path of its input store
    (``attrs["input"]``) and, in ``attrs["fingerprint"]``, a SHA-256 of the atomic numbers
    and of the first and last frames' positions. The store at that path is used only if the
    same hash comes out of it, and if it has the prediction's frame and atom counts.

    Returns ``(trajectory, note)``: the opened trajectory (xarray.Dataset) and None, or None
    and a sentence saying why not (None when the dataset records no trajectory store: an
    in-memory prediction, or a prediction of an in-memory trajectory).
    """
    from numbec.io.prediction import input_hash
    from numbec.io.trajectory import open_trajectory

    attrs = ds.attrs
    path = attrs.get("input")
    if attrs.get("format") != PREDICTION_FORMAT or not isinstance(path, str) or not path:
        return None, None
    try:
        recorded = json.loads(attrs.get("fingerprint") or "{}")
    except (TypeError, ValueError):
        return None, None
    expected = recorded.get("numbers_positions_sha256") if isinstance(recorded, dict) else None
    if not isinstance(expected, str) or recorded.get("input") != path:
        return None, None
    if not os.path.isdir(path):
        return None, f"the trajectory store it was made from, {path}, is not there any more"
    try:
        trajectory = open_trajectory(path)
    except (OSError, ValueError, KeyError) as err:
        return None, f"the trajectory store it was made from, {path}, cannot be read ({err})"
    n = trajectory.sizes.get("frame", 0)
    same = (n == ds.sizes.get("frame") and trajectory.sizes.get("atom") == ds.sizes.get("atom")
            and "positions" in trajectory and "numbers" in trajectory)
    if same:
        positions = trajectory["positions"]
        same = input_hash(np.asarray(trajectory["numbers"].values, dtype=np.int64),
                          np.asarray(positions[0].values),
                          np.asarray(positions[n - 1].values)) == expected
    if not same:
        return None, (f"the trajectory store it was made from, {path}, now holds another "
                      "trajectory")
    return trajectory, None


def _needs_trajectory(ds, kind, need_temperature) -> bool:
    """Whether the prediction lacks what only its trajectory can give: a temperature, or
    the velocities of species partials computed from ``bec``."""
    return bool((need_temperature and ds.attrs.get("temperature") is None)
                or (kind == "species" and "dipole_derivative_by_species" not in ds))


#: At most this many evenly spaced frames of a trajectory give the kinetic temperature that
#: checks a nominal one (all frames when the kinetic temperature is the one used).
TEMPERATURE_CHECK_FRAMES = 2000


def _run_from_dataset(ds, trajectory, kind, timestep, source, need_temperature=True,
                      need_volume=True):
    source = _source_of(ds, source)
    if ds.attrs.get("input_complete") is False:
        warnings.warn(f"{source}: predicted from a trajectory store whose conversion had not "
                      f"finished ({ds.attrs.get('input_frames', ds.sizes.get('frame'))} frames "
                      "then); the spectrum covers only those frames: finish the conversion "
                      "and predict again for the whole run", stacklevel=4)
    note, recorded = None, False
    if trajectory is None:
        # used like trajectory= whenever it is there and unchanged, so that its kinetic
        # temperature also checks a nominal one; only when the spectrum needs it does its
        # absence explain an error
        trajectory, found_note = recorded_trajectory(ds)
        recorded = trajectory is not None
        if _needs_trajectory(ds, kind, need_temperature):
            note = found_note
    if timestep is None:
        recorded_dt = ds.attrs.get("timestep")
        if isinstance(recorded_dt, float) and np.isnan(recorded_dt) and "time" in ds.coords \
                and np.isnan(np.asarray(ds["time"].values, dtype=np.float64)).all():
            raise ValueError(f"{source}: the predicted frames are not a time series (the "
                             "trajectory store has no time step, e.g. converted with "
                             "--no-time): an IR spectrum needs MD frames at a fixed time step")
        _attribute(ds, "timestep", "timestep (fs)", source)
    dt = timestep or _timestep_of(ds)
    if dt is None:
        raise ValueError(f"{source}: no time step (attrs['timestep'] fs); pass timestep=")
    temperature, temperature_source = None, None
    if need_temperature:
        temperature = _attribute(ds, "temperature", "temperature (K)", source)
        temperature_source = f"attrs of {source}"
    kinetic = None
    if trajectory is not None:
        traj_source = str(trajectory.attrs.get("source") or "the trajectory")
        if recorded:
            traj_source = f"{ds.attrs['input']} (the predicted trajectory, attrs['input'])"
        if temperature is None and need_temperature:
            temperature = _attribute(trajectory, "temperature", "temperature (K)",
                                     traj_source)
            temperature_source = f"attrs of {traj_source}"
        derived = _velocities_from_positions(ds, trajectory)
        if derived and (temperature is not None or not need_temperature):
            # a check only: differences of the positions are a lower bound of the motion
            kinetic = kinetic_temperature_from_positions(
                trajectory, float(dt), max_frames=TEMPERATURE_CHECK_FRAMES)
        elif derived and need_temperature:
            raise ValueError(
                f"{source}: no temperature, and the velocities are central differences of "
                f"the positions of {traj_source}, whose kinetic temperature is too low (fast "
                "motion between frames is missed); give the temperature of the MD")
        elif "velocities" in trajectory:
            sample = trajectory
            if temperature is not None or not need_temperature:
                # only a check of the nominal temperature: evenly spaced frames suffice, and
                # reading every velocity of a 10^6-frame store would take longer than the
                # spectrum
                stride = -(-trajectory.sizes["frame"] // TEMPERATURE_CHECK_FRAMES)
                sample = trajectory.isel(frame=slice(None, None, stride))
            kinetic = kinetic_temperature_statistics(sample)
            if temperature is None and need_temperature:
                temperature = kinetic.mean
                temperature_source = f"kinetic (trajectory velocities, {kinetic.how})"
                if recorded:
                    temperature_source = (f"kinetic (velocities of {traj_source}, "
                                          f"{kinetic.how})")
    volume = _volume_of(ds, source) if need_volume else None
    if need_volume and volume is None and trajectory is not None and (
        "pbc" in trajectory and bool(np.all(trajectory["pbc"].values))
    ):
        volume = _volume_of(trajectory, str(trajectory.attrs.get("source") or "trajectory"))
    differentiated = False
    if "dipole_derivative" in ds:
        total = _as_series(ds["dipole_derivative"].transpose("frame", "pol").values, source)
    elif "dipole" in ds:
        dipole = _as_series(ds["dipole"].transpose("frame", "pol").values, source, "dipole")
        total = np.gradient(dipole, dt, axis=0)
        differentiated = True
    else:
        raise ValueError(
            f"{source}: the dataset has neither 'dipole_derivative' nor 'dipole' "
            "(predict with velocities in the trajectory, or derive them from the positions: "
            "numbec predict --velocities-from-positions, or "
            "numbec.io.trajectory.velocities_from_positions)"
        )
    parts, names = (None, [])
    if kind is not None:
        if differentiated:
            raise ValueError(f"{source}: partials need 'dipole_derivative', not only 'dipole'")
        if note and trajectory is None and "dipole_derivative_by_species" not in ds:
            raise ValueError(f"{source}: species partials need the velocities of its "
                             f"trajectory, but {note}; pass trajectory=")
        parts, names = _parts_of(ds, kind, trajectory, source)
        mismatch = np.abs(parts.sum(axis=0) - total).max()
        scale = max(np.abs(total).max(), 1e-300)
        if mismatch > 1e-4 * scale:
            raise ValueError(
                f"{source}: the {kind} parts of dM/dt do not sum to dipole_derivative "
                f"(max difference {mismatch:.3g} e*Angstrom/fs of max {scale:.3g})"
            )
    run = _Run(total, parts, names, dt, None if temperature is None else float(temperature),
               volume, source, differentiated,
               temperature_source if temperature is not None else None, kinetic,
               *_system_and_model(ds, trajectory))
    run.trajectory_note = note
    if "dipole_derivative_samples" in ds and not differentiated:
        run.samples = _checked_samples(
            ds["dipole_derivative_samples"].transpose("frame", "sample", "pol").values,
            total.shape[0], source)
        if kind == "species" and SPECIES_SAMPLES in ds:
            run.part_samples = _species_samples(ds, run, source)
    return run


def _species_samples(ds, run, source):
    """``dipole_derivative_by_species_samples`` (frame, sample, species, pol) of a dataset as
    (sample, species, frame, pol) float64 in the order of the run's species parts, checked:
    finite, the same samples as ``dipole_derivative_samples`` and summing to them."""
    from ase.data import chemical_symbols

    var = ds[SPECIES_SAMPLES]
    if set(var.dims) != {"frame", "sample", "species", "pol"} or "species" not in ds.coords:
        raise ValueError(f"{source}: {SPECIES_SAMPLES} must have dims (frame, sample, "
                         f"species, pol) and a species coordinate, got {var.dims}")
    symbols = [chemical_symbols[int(z)] for z in np.asarray(var["species"].values)]
    missing = sorted(set(run.part_names) - set(symbols))
    if missing or len(symbols) != len(run.part_names):
        raise ValueError(f"{source}: {SPECIES_SAMPLES} has species {symbols}, the partials "
                         f"{run.part_names}")
    arr = np.asarray(var.transpose("sample", "species", "frame", "pol").values,
                     dtype=np.float64)[:, [symbols.index(n) for n in run.part_names]]
    n_samples, n_frames = run.samples.shape[:2]
    if arr.shape[0] != n_samples or arr.shape[2] != n_frames or arr.shape[3] != 3:
        raise ValueError(f"{source}: {SPECIES_SAMPLES} is {arr.shape[0]} samples x "
                         f"{arr.shape[2]} frames x {arr.shape[3]}, dipole_derivative_samples "
                         f"{n_samples} x {n_frames} x 3")
    bad = ~np.isfinite(arr).all(axis=(0, 1, 3))
    if bad.any():
        raise ValueError(f"{source}: {SPECIES_SAMPLES} of frame {int(np.flatnonzero(bad)[0])} "
                         "are NaN or inf")
    mismatch = np.abs(arr.sum(axis=1) - run.samples).max()
    scale = max(np.abs(run.samples).max(), 1e-300)
    if mismatch > 1e-4 * scale:
        raise ValueError(f"{source}: the species parts of the dM/dt samples do not sum to "
                         f"dipole_derivative_samples (max difference {mismatch:.3g} "
                         f"e*Angstrom/fs of max {scale:.3g})")
    return np.ascontiguousarray(arr)


def _checked_samples(samples, n_frames, source):
    """(frame, sample, pol) dM/dt samples -> (sample, frame, pol) float64, validated."""
    arr = np.asarray(samples, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[0] != n_frames or arr.shape[2] != 3 or arr.shape[1] < 1:
        raise ValueError(f"{source}: dM/dt samples must be (frames={n_frames}, samples, 3), "
                         f"got {arr.shape}")
    bad = ~np.isfinite(arr).all(axis=(1, 2))
    if bad.any():
        raise ValueError(f"{source}: dM/dt samples of frame {int(np.flatnonzero(bad)[0])} "
                         "are NaN or inf")
    return np.ascontiguousarray(arr.transpose(1, 0, 2))


def _system_and_model(ds, trajectory):
    """Chemical formula of the cell (e.g. "Si3O6") and the model's name (class and file)
    as recorded in a prediction, for labels; "" where unknown."""
    from ase import Atoms

    system = ""
    for source in (ds, trajectory, ds.attrs.get("input")):
        if isinstance(source, (str, os.PathLike)):  # the trajectory the prediction came from
            try:
                from numbec.io.trajectory import open_trajectory

                source = open_trajectory(source)
            except Exception:  # moved or deleted since: the label only loses the formula
                continue
        if source is None:
            continue
        if "numbers" in source:
            numbers = np.asarray(source["numbers"].values, dtype=np.int64).ravel()
            system = Atoms(numbers=numbers).get_chemical_formula(mode="metal")
            break
        if "symbol" in source.coords and "atom" in source["symbol"].dims:
            symbols = [str(s) for s in np.asarray(source["symbol"].values).ravel()]
            system = Atoms(symbols=symbols).get_chemical_formula(mode="metal")
            break
    model = str(ds.attrs.get("model_class") or "")
    model_file = str(ds.attrs.get("model_file") or "")
    if model_file:
        model += f" ({os.path.basename(model_file)})"
    return system, model


def _open_named(path):
    """:func:`open_prediction`, recording ``path`` in ``attrs["prediction_store"]`` so that
    errors about the data name it (``attrs["input"]`` is the trajectory it came from)."""
    ds = open_prediction(path)
    ds.attrs["prediction_store"] = os.fspath(path)
    return ds


def _runs(data, timestep, kind, trajectory, need_temperature=True, need_volume=True):
    import xarray as xr

    items = list(data) if isinstance(data, (list, tuple)) else [data]
    items = [_open_named(i) if isinstance(i, (str, os.PathLike)) else i for i in items]
    if not items:
        raise ValueError("no data: pass a prediction dataset, an array or a list of them")
    trajs = list(trajectory) if isinstance(trajectory, (list, tuple)) else [trajectory] * len(
        items)
    if len(trajs) != len(items):
        raise ValueError(f"{len(trajs)} trajectories for {len(items)} datasets")
    runs = []
    for i, (item, traj) in enumerate(zip(items, trajs, strict=True)):
        source = f"run {i}" if len(items) > 1 else "data"
        if isinstance(item, xr.Dataset):
            if traj is not None and not isinstance(traj, xr.Dataset):
                from numbec.io.trajectory import open_trajectory

                traj = open_trajectory(traj)
            runs.append(_run_from_dataset(item, traj, kind, timestep, source,
                                          need_temperature, need_volume))
        else:
            if kind is not None:
                raise ValueError(f"{source}: partials need a prediction dataset, not an array")
            if timestep is None:
                raise ValueError(f"{source}: an array of dM/dt needs timestep= (fs)")
            runs.append(_Run(_as_series(item, source), None, [], float(timestep), None, None,
                             source))
    dts = {r.timestep for r in runs}
    if max(dts) - min(dts) > 1e-9 * max(dts):
        raise ValueError(f"the runs have different time steps {sorted(dts)} fs")
    names = {tuple(r.part_names) for r in runs}
    if len(names) > 1:
        raise ValueError(f"the runs have different partials {sorted(names)}")
    return runs


# ---------------------------------------------------------------------------- the API
def ir_spectrum(
    data,
    *,
    timestep: float | None = None,
    temperature: float | None = None,
    volume: float | None = None,
    window: str = "parzen",
    correlation_time: float | None = None,
    blocks: int = 1,
    quantum_correction: str = "harmonic",
    zero_padding: int = 8,
    partials: bool | str = False,
    trajectory=None,
    max_frequency: float | None = None,
    samples=None,
) -> xr.Dataset:
    """Infrared absorption spectrum from dM/dt, in absolute units, with error bars.

    Parameters
    ----------
    data : xarray.Dataset, path, array or list of them
        * a Prediction dataset of :func:`numbec.predict` (or the path of its store):
          uses ``dipole_derivative`` (frame, pol) e·Å/fs; time step, temperature and
          volume from its attrs (``timestep`` fs, ``temperature`` K, ``volume`` Å^3,
          or the mean ``|det cell|`` of a ``cell`` variable). Without
          ``dipole_derivative`` its ``dipole`` (frame, pol) e·Å is differentiated by
          second-order central differences; the spectrum is then divided by the
          transfer function ``(sin(omega dt) / (omega dt))^2`` of the central
          difference and cut at half the Nyquist frequency, where it is still at
          least ``4/pi^2``;
        * an array (n_frames, 3) float of dM/dt in e·Å/fs (``timestep`` required);
        * a list of those: independent runs, averaged (error bars from their spread).
    timestep : float, fs
        Overrides the dataset's.
    temperature : float, K
        Overrides the dataset's. Without it and without ``attrs["temperature"]``, the
        mean kinetic temperature of ``trajectory`` velocities is used
        (:func:`kinetic_temperature`, recorded in ``provenance``); with none of these a
        clear error (every formula needs ``kB T``). With ``trajectory`` velocities and a
        nominal temperature (argument or attrs) that differs from the kinetic one by more
        than three standard errors, a warning.
    volume : float, Å^3
        Overrides the dataset's. Without a volume (a molecule or cluster in vacuum) the
        result has the cross-section only, no ``absorption`` or ``imag_dielectric``.
    window : {"parzen", "hann", "blackman", "gaussian", "cos2", "none"}
        Lag window (:func:`numbec.spectra.correlation.lag_window`). ``"parzen"`` (default)
        is applied to the biased correlation and gives a spectrum ``>= 0`` for any data
        (``attrs["non_negative"]``); the others can dip below zero by their side-lobe
        level (docs/method.md#ir-spectrum-from-a-trajectory).
    correlation_time : float, fs
        Longest lag T; sets the resolution ``1 / (c T)`` (1 ps: 33 cm^-1). Default
        ``min(block duration / 2, 2000 fs)``.
    blocks : int
        Each run is cut into this many contiguous blocks of equal length (a remainder
        of fewer than ``blocks`` frames at the end is dropped); the correlation time
        must fit into the shortest block. The spectrum is the (unweighted) mean over all
        blocks of all runs and
        ``*_stderr`` the standard error of that mean (sample standard deviation over
        blocks / sqrt(number of blocks); NaN for a single block; 2 or 3 blocks in all
        give a warning: such an error bar is itself uncertain by 40-70 %).
    quantum_correction : {"harmonic", "standard", "schofield", "none"}
        See :mod:`numbec.spectra.quantum`.
    zero_padding : int
        Frequency grid refinement: spacing ``~ 1 / (zero_padding * c * T)`` cm^-1.
    partials : False, True, "species" or "partition"
        Partial spectra. ``"species"`` (``True``): from ``dipole_derivative_by_species``
        (or from ``bec`` and ``trajectory`` velocities); ``"partition"``: monopole vs
        dipole parts of a combined model. The partial variables cover every diagonal
        term (``"O"``) and every symmetrised cross term (``"O-Si"`` = transform of
        ``<Mdot_O(0) . Mdot_Si(t)> + <Mdot_Si(0) . Mdot_O(t)>``), so they sum to the total.
    trajectory : Trajectory store path or Dataset (or a list, one per run), optional
        Supplies velocities for species partials computed from ``bec``, and a cell or
        temperature the prediction lacks. When it is not given and the prediction needs
        it, a prediction store uses the trajectory store it was made from, if that is
        still there and unchanged (:func:`recorded_trajectory`).
    max_frequency : float, cm^-1, optional
        Crop the output above this frequency (> 0).
    samples : array (n_frames, S, 3) float, e·Å/fs, optional
        dM/dt of S posterior weight samples for an array ``data`` (a prediction dataset
        brings its own ``dipole_derivative_samples``, from ``predict(...,
        posterior_samples=S)``). Adds the model-uncertainty band
        (:mod:`numbec.spectra.model_band`).

    Returns
    -------
    xarray.Dataset
        Coordinates ``frequency`` (cm^-1), ``frequency_thz``, ``frequency_mev``;
        ``cross_section`` and ``cross_section_stderr`` (frequency) cm^2 per simulation
        cell (``alpha n V``); with a volume also ``absorption`` and
        ``absorption_stderr`` (frequency) cm^-1 (alpha n) and ``imag_dielectric``
        (eps'', NaN at 0); with partials ``absorption_partial`` (or
        ``cross_section_partial``) (partial, frequency) and coordinate ``partial``.
        With posterior samples (every run must have the same number S, drawn with the same
        seed): the model band ``cross_section_model_p16``, ``cross_section_model_p84``,
        ``cross_section_model_std`` (and ``absorption_model_*`` with a volume), per
        frequency over the S sample spectra; attrs ``n_posterior_samples``.
        attrs: ``units``, ``window``, ``correlation_time`` (fs), ``resolution`` (cm^-1,
        ``1/(c T)``), ``resolution_fwhm`` (cm^-1, FWHM of the window's line shape),
        ``temperature`` (K), ``volume`` (Å^3, NaN without), ``quantum_correction``,
        ``n_blocks``, ``n_runs``, ``timestep`` (fs), ``zero_padding``, ``non_negative``
        (1 if the window guarantees a spectrum >= 0, else 0), ``system`` (chemical
        formula) and ``model`` (class and file) where the data record them, ``provenance``.

    Raises
    ------
    ValueError
        Invalid arguments, or invalid values read from a store (time step, temperature,
        volume <= 0, non-finite or not numbers; NaN/inf in dM/dt): the message names the
        prediction store (or argument) and the value.
    FileNotFoundError
        A path that does not exist.
    """
    kind = _partials_kind(partials)
    blocks = int(blocks)
    if blocks < 1:
        raise ValueError(f"blocks must be >= 1, got {blocks}")
    temperature = _positive(temperature, "temperature (K)", "temperature")
    volume = _positive(volume, "volume (Å^3)", "volume")
    max_frequency = _positive(max_frequency, "max_frequency (cm^-1)", "max_frequency")
    lag_window(window, 1)  # an unknown window fails before any data is read
    runs = _runs(data, _positive(timestep, "timestep (fs)", "timestep"), kind, trajectory,
                 need_temperature=temperature is None, need_volume=volume is None)
    if samples is not None:
        if len(runs) != 1 or runs[0].samples is not None:
            raise ValueError("samples= goes with one array of dM/dt (datasets bring "
                             "their own dipole_derivative_samples)")
        runs[0].samples = _checked_samples(samples, runs[0].total.shape[0], runs[0].source)
    for run in runs:
        if temperature is not None:
            run.temperature = temperature
            run.temperature_source = "argument"
        if volume is not None:
            run.volume = volume
        if run.temperature is None:
            why = f"; {run.trajectory_note}" if run.trajectory_note else ""
            raise ValueError(
                f"{run.source}: temperature unknown (no attrs['temperature']{why}); pass "
                "temperature= in K, or trajectory= (the predicted trajectory, for its "
                "kinetic temperature): the absolute spectrum and quantum corrections need it"
            )
    for run in runs:
        _check_against_kinetic(run)
    periodic = {r.volume is not None for r in runs}
    if len(periodic) > 1:
        raise ValueError("some runs have a volume and some do not; pass volume=")
    periodic = periodic.pop()
    dt = runs[0].timestep

    block_len = min(r.total.shape[0] // blocks for r in runs)
    if block_len < 4:
        raise ValueError(f"{blocks} blocks leave {block_len} frames per block; use fewer")
    if correlation_time is None:
        n_lags = max(2, min(block_len // 2, int(round(DEFAULT_MAX_CORRELATION_TIME / dt))))
    else:
        n_lags = int(round(_positive(correlation_time, "correlation_time") / dt))
        if not 2 <= n_lags <= block_len:
            raise ValueError(
                f"correlation_time {correlation_time} fs is {n_lags} lags; it must be "
                f"between 2 time steps and the block length ({block_len} frames = "
                f"{block_len * dt:g} fs)"
            )
    n_blocks_total = blocks * len(runs)
    if 1 < n_blocks_total < MIN_BLOCKS_FOR_ERRORS:
        warnings.warn(f"the standard error comes from only {n_blocks_total} blocks: it is "
                      f"itself unreliable; use at least {MIN_BLOCKS_FOR_ERRORS} "
                      "(blocks= per run, or more runs)", stacklevel=2)

    per_block_sigma, per_block_abs, per_block_parts = [], [], []
    omega = None
    for run in runs:
        series = run.total[None] if run.parts is None else np.concatenate(
            [run.total[None], run.parts])
        prefactor = cross_section_prefactor(run.temperature)
        for b in range(blocks):
            run_block = run.total.shape[0] // blocks  # longer runs: longer blocks
            chunk = series[:, b * run_block:(b + 1) * run_block]
            omega, spectra = _block_spectra(chunk, series.shape[0] - 1, n_lags, dt,
                                            zero_padding, window)
            sigma = prefactor * correction_factor(quantum_correction, omega,
                                                  run.temperature) * spectra
            if run.differentiated:
                sigma = sigma / _central_difference_transfer(omega, dt)
            per_block_sigma.append(sigma[0])
            per_block_parts.append(sigma[1:])
            if periodic:
                per_block_abs.append(sigma / (run.volume * 1e-24))

    wavenumber = omega / INVCM_TO_RAD_PER_FS
    keep = np.ones(wavenumber.size, dtype=bool)
    if any(r.differentiated for r in runs):
        keep &= omega * dt <= 0.5 * np.pi
    if max_frequency is not None:
        keep &= wavenumber <= float(max_frequency)
    out = _assemble(
        wavenumber[keep], keep, per_block_sigma, per_block_parts, per_block_abs, runs,
        periodic=periodic, window=window, n_lags=n_lags, block_len=block_len, dt=dt,
        quantum_correction=quantum_correction, zero_padding=zero_padding, kind=kind,
    )
    if any(r.samples is not None for r in runs):
        _add_model_band(out, runs, keep, blocks=blocks, n_lags=n_lags, window=window, dt=dt,
                        quantum_correction=quantum_correction, zero_padding=zero_padding)
    return out


def _block_spectra(chunk, n_parts, n_lags, dt, zero_padding, window):
    """(omega, rows) of one block of the dM/dt series [total, part 1, ..., part P]
    (1 + P, n, 3), the estimator of :func:`ir_spectrum` (Welch for non-negative windows,
    else windowed correlations): rows (1 + P + P(P-1)/2, n_frequencies) are the total, the
    parts and their symmetrised cross terms (:func:`_diagonal_and_symmetrised`)."""
    if window in NON_NEGATIVE_WINDOWS:
        omega, cross = segment_spectra(chunk, n_lags, dt, zero_padding, window)
        return omega, _diagonal_and_symmetrised(cross, n_parts)
    corr = correlations(chunk, n_lags) * lag_window(window, n_lags)
    return cosine_transform(_diagonal_and_symmetrised(corr, n_parts), dt, zero_padding)


def _add_model_band(out, runs, keep, **settings):
    """Add the model band of the posterior samples of all runs to ``out`` (in place): of the
    total, and of the partials when every run has the samples' parts."""
    from numbec.spectra.model_band import band_statistics, sample_spectra

    counts = {None if r.samples is None else r.samples.shape[0] for r in runs}
    if len(counts) != 1:
        raise ValueError(f"runs have different numbers of posterior samples {counts}; all "
                         "or none need them, drawn with the same seed")
    with_parts = {r.part_samples is not None for r in runs}
    if len(with_parts) != 1:
        raise ValueError(f"some runs have {SPECIES_SAMPLES} and some do not; the partials' "
                         "model band needs it in all of them")
    with_parts = with_parts.pop() and "partial" in out.coords
    dt = settings["dt"]
    sigma = abs_ = 0.0
    for run in runs:
        transfer = ((lambda om: _central_difference_transfer(om, dt))
                    if run.differentiated else None)
        series = run.samples[:, None] if not with_parts else np.concatenate(
            [run.samples[:, None], run.part_samples], axis=1)       # (S, 1 + P, n, 3)

        def block_spectrum(chunk, n_parts=series.shape[1] - 1):
            return _block_spectra(chunk, n_parts, settings["n_lags"], dt,
                                  settings["zero_padding"], settings["window"])

        spec = sample_spectra(
            series, block_spectrum, blocks=settings["blocks"],
            prefactor=cross_section_prefactor(run.temperature), temperature=run.temperature,
            quantum_correction=settings["quantum_correction"], transfer=transfer)[..., keep]
        sigma = sigma + spec / len(runs)
        if run.volume is not None:
            abs_ = abs_ + spec / (run.volume * 1e-24) / len(runs)
    periodic = "absorption" in out
    targets = [("cross_section", sigma, "cm^2")] + ([("absorption", abs_, "cm^-1")]
                                                    if periodic else [])
    for name, spectra, units in targets:
        for stat, values in band_statistics(spectra[:, 0]).items():
            out[f"{name}_model_{stat}"] = ("frequency", values, {
                "units": units,
                "long_name": f"{stat} of {name} over posterior weight samples (model band)"})
    if with_parts:  # the partial variable of _assemble: absorption with a volume
        name, spectra, units = targets[-1]
        for stat, values in band_statistics(spectra[:, 1:]).items():
            out[f"{name}_partial_model_{stat}"] = (("partial", "frequency"), values, {
                "units": units, "long_name": f"{stat} of the partial {name} over posterior "
                "weight samples (model band)"})
    out.attrs["n_posterior_samples"] = int(counts.pop())


def _diagonal_and_symmetrised(pairs, n_parts):
    """(1 + P + P(P-1)/2, L) rows from (1 + P, 1 + P, L) pair quantities (correlations or
    cross spectra) of [total, part 0, ...]: the total, each part, each symmetrised cross
    term."""
    rows = [pairs[0, 0]]
    rows += [pairs[1 + i, 1 + i] for i in range(n_parts)]
    rows += [pairs[1 + i, 1 + j] + pairs[1 + j, 1 + i]
             for i in range(n_parts) for j in range(i + 1, n_parts)]
    return np.array(rows)


def _velocities_from_positions(ds, trajectory) -> bool:
    """Whether the prediction's velocities were central differences of the positions: the
    trajectory's velocities say so (:func:`numbec.io.trajectory.velocities_from_positions`),
    or it has none and the prediction records that source (``predict
    --velocities-from-positions``)."""
    from numbec.io.trajectory import velocities_from_positions_used

    if "velocities" in trajectory:
        return velocities_from_positions_used(trajectory["velocities"])
    return velocities_from_positions_used(ds.attrs.get("velocities_source"))


def _check_against_kinetic(run):
    """Warn when a nominal temperature and the kinetic temperature of the run's trajectory
    differ by more than :data:`TEMPERATURE_MISMATCH_STDERRS` standard errors, or (velocities
    from the positions) when their ratio is outside
    :data:`~numbec.spectra.temperature.POSITIONS_TEMPERATURE_RANGE` by more than that."""
    kin = run.kinetic
    if kin is None or run.temperature is None or run.temperature_source.startswith("kinetic"):
        return
    if kin.from_positions:
        spread = TEMPERATURE_MISMATCH_STDERRS * (kin.stderr if np.isfinite(kin.stderr)
                                                  else 0.0)
        low, high = POSITIONS_TEMPERATURE_RANGE
        if kin.mean - spread > high * run.temperature or \
                kin.mean + spread < low * run.temperature:
            warnings.warn(
                f"{run.source}: the spectrum uses T = {run.temperature:g} K "
                f"({run.temperature_source}), but the velocities from the positions give "
                f"{kin.mean:.1f} +- {kin.stderr:.1f} K ({kin.how}), outside "
                f"{low:g}-{high:g} x {run.temperature:g} K. Central differences give at "
                "most the true temperature; this far off, the time step between stored "
                "frames is likely wrong (VASP: POTIM x NBLOCK; frequencies scale with it) "
                "or the frames are not consecutive MD steps", stacklevel=3)
        return
    spread = TEMPERATURE_MISMATCH_STDERRS * kin.stderr
    if np.isfinite(spread) and abs(run.temperature - kin.mean) > spread:
        warnings.warn(
            f"{run.source}: the spectrum uses T = {run.temperature:g} K "
            f"({run.temperature_source}), but the trajectory velocities give "
            f"{kin.mean:.1f} +- {kin.stderr:.1f} K ({kin.how}); check the temperature",
            stacklevel=3)


def _partials_kind(partials):
    if partials is False or partials is None:
        return None
    if partials is True:
        return "species"
    if partials in PARTIAL_KINDS:
        return partials
    raise ValueError(f"partials must be False, True, 'species' or 'partition', got {partials!r}")


def _central_difference_transfer(omega, dt):
    x = omega * dt
    return np.where(x > 0, (np.sin(x) / np.where(x > 0, x, 1.0)) ** 2, 1.0)


def _mean_stderr(blocks):
    arr = np.asarray(blocks)
    n = arr.shape[0]
    mean = arr.mean(axis=0)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    return mean, arr.std(axis=0, ddof=1) / np.sqrt(n)


def _partial_labels(names):
    n = len(names)
    return list(names) + [f"{names[i]}-{names[j]}" for i in range(n) for j in range(i + 1, n)]


def _assemble(wavenumber, keep, sigma_blocks, part_blocks, abs_blocks, runs, *, periodic,
              window, n_lags, block_len, dt, quantum_correction, zero_padding, kind):
    import xarray as xr

    from numbec import __version__

    coords = {
        "frequency": ("frequency", wavenumber, {"units": "cm^-1", "long_name": "wavenumber"}),
        "frequency_thz": ("frequency", wavenumber / THZ_TO_INVCM,
                          {"units": "THz", "long_name": "frequency"}),
        "frequency_mev": ("frequency", wavenumber / MEV_TO_INVCM,
                          {"units": "meV", "long_name": "photon energy"}),
    }
    data_vars = {}
    sigma, sigma_err = _mean_stderr([s[keep] for s in sigma_blocks])
    data_vars["cross_section"] = ("frequency", sigma, {
        "units": "cm^2", "long_name": "absorption cross-section of the simulation cell "
        "(alpha*n*V); integral over frequency times N_A = intensity in km/mol"})
    data_vars["cross_section_stderr"] = ("frequency", sigma_err, {
        "units": "cm^2", "long_name": "standard error of cross_section over blocks/runs"})
    if periodic:
        absorption, abs_err = _mean_stderr([a[0][keep] for a in abs_blocks])
        data_vars["absorption"] = ("frequency", absorption, {
            "units": "cm^-1", "long_name": "absorption coefficient times refractive index"})
        data_vars["absorption_stderr"] = ("frequency", abs_err, {
            "units": "cm^-1", "long_name": "standard error of absorption over blocks/runs"})
        with np.errstate(divide="ignore", invalid="ignore"):
            eps = np.where(wavenumber > 0, absorption / (2 * np.pi * wavenumber), np.nan)
        data_vars["imag_dielectric"] = ("frequency", eps, {
            "units": "1", "long_name": "imaginary part of the dielectric function, "
            "c*alpha*n/omega"})
    if kind is not None:
        coords["partial"] = ("partial", _partial_labels(runs[0].part_names))
        if periodic:
            parts, parts_err = _mean_stderr([a[1:][:, keep] for a in abs_blocks])
            name, units = "absorption_partial", "cm^-1"
        else:
            parts, parts_err = _mean_stderr([p[:, keep] for p in part_blocks])
            name, units = "cross_section_partial", "cm^2"
        data_vars[name] = (("partial", "frequency"), parts, {
            "units": units, "long_name": f"partial spectra by {kind}: diagonal terms and "
            "symmetrised cross terms; they sum to the total"})
        data_vars[f"{name}_stderr"] = (("partial", "frequency"), parts_err, {"units": units})

    temps = [r.temperature for r in runs]
    vols = [r.volume for r in runs]
    c_cm = SPEED_OF_LIGHT * 100.0
    t_corr = n_lags * dt
    attrs = {
        "units": "cm^-1" if periodic else "cm^2",
        "spectrum": "absorption" if periodic else "cross_section",
        "window": window,
        "correlation_time": t_corr,
        "correlation_time_units": "fs",
        "resolution": 1.0 / (c_cm * t_corr * 1e-15),
        "resolution_fwhm": window_fwhm(window, n_lags, dt) / INVCM_TO_RAD_PER_FS,
        "resolution_units": "cm^-1",
        "temperature": float(np.mean(temps)),
        "volume": float(np.mean(vols)) if periodic else float("nan"),
        "volume_units": "Angstrom^3",
        "quantum_correction": quantum_correction,
        "n_blocks": len(sigma_blocks),
        "n_runs": len(runs),
        "timestep": dt,
        "zero_padding": int(zero_padding),
        "non_negative": int(window in NON_NEGATIVE_WINDOWS),
        "temperature_units": "K",
        "timestep_units": "fs",

        "provenance": json.dumps({
            "numbec_version": __version__,
            "sources": [r.source for r in runs],
            "temperatures": temps,
            "temperature_sources": [r.temperature_source for r in runs],
            # which masses the kinetic temperature of each run's trajectory used
            "kinetic_temperatures": [None if r.kinetic is None else {
                "mean": r.kinetic.mean, "stderr": r.kinetic.stderr,
                "masses": r.kinetic.how} for r in runs],
            "volumes": vols if periodic else None,
            "dipole_derivative": ["central differences of dipole" if r.differentiated
                                  else "dipole_derivative" for r in runs],
        }),
    }
    for key in ("system", "model"):  # for labels; runs of several systems or models: all
        names = " + ".join(dict.fromkeys(getattr(r, key) for r in runs if getattr(r, key)))
        if names:
            attrs[key] = names
    if kind is not None:
        attrs["partial_kind"] = kind
    if not periodic:
        attrs["note"] = ("no volume (molecule or cluster): cross_section per system only; "
                         "pass volume= for absorption and imag_dielectric")
    if len(set(temps)) > 1:
        warnings.warn(f"runs at different temperatures {sorted(set(temps))} K averaged",
                      stacklevel=3)
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def integrated_intensity(spectrum, fmin: float | None = None, fmax: float | None = None, *,
                         variable: str | None = None) -> float | np.ndarray:
    """Integrate a spectrum over ``fmin <= frequency <= fmax`` (cm^-1, trapezoid rule).

    Parameters
    ----------
    spectrum : xarray.Dataset
        From :func:`ir_spectrum` or :func:`numbec.spectra.harmonic.harmonic_spectrum`.
    variable : str, optional
        ``"cross_section"`` (default): returns km/mol of simulation cells
        (``N_A * integral sigma d(nu~)``); ``"absorption"``: returns cm^-2; or any
        other variable (its units times cm^-1).
    """
    variable = variable or "cross_section"
    f = np.asarray(spectrum["frequency"].values, dtype=np.float64)
    sel = np.ones(f.size, dtype=bool)
    if fmin is not None:
        sel &= f >= fmin
    if fmax is not None:
        sel &= f <= fmax
    y = np.asarray(spectrum[variable].values, dtype=np.float64)[..., sel]
    value = np.trapezoid(y, f[sel], axis=-1)
    if variable.startswith("cross_section"):
        return value * AVOGADRO * 1e-5  # cm * N_A -> km/mol
    return value


def spectral_peaks(spectrum, *, variable: str | None = None, min_height: float = 0.05,
                   fmin: float | None = None, fmax: float | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of a spectrum, refined by a parabola through the three top points.

    Parameters
    ----------
    spectrum : xarray.Dataset
        From :func:`ir_spectrum` or :func:`numbec.spectra.harmonic.harmonic_spectrum`.
    variable : str, optional
        Default ``attrs["spectrum"]`` (``"absorption"`` or ``"cross_section"``).
    min_height : float
        Keep maxima above this fraction of the largest value in ``[fmin, fmax]``.

    Returns
    -------
    positions : (K,) float64, cm^-1, descending height.   heights : (K,) float64.
    """
    variable = variable or spectrum.attrs.get("spectrum", "absorption")
    f = np.asarray(spectrum["frequency"].values, dtype=np.float64)
    y = np.asarray(spectrum[variable].values, dtype=np.float64)
    inside = np.ones(f.size, dtype=bool)
    if fmin is not None:
        inside &= f >= fmin
    if fmax is not None:
        inside &= f <= fmax
    top = y[inside].max()
    j = np.arange(1, f.size - 1)
    is_max = (y[j] > y[j - 1]) & (y[j] >= y[j + 1]) & inside[j] & (y[j] >= min_height * top)
    j = j[is_max]
    a, b, c = y[j - 1], y[j], y[j + 1]
    curvature = a - 2 * b + c
    shift = np.where(curvature < 0, 0.5 * (a - c) / np.where(curvature < 0, curvature, -1.0),
                     0.0)
    positions = f[j] + shift * (f[j + 1] - f[j])
    heights = b - 0.25 * (a - c) * shift
    order = np.argsort(-heights)
    return positions[order], heights[order]
