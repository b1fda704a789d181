"""The Prediction store: the Zarr v3 format :func:`numbec.predict` writes, and its resume rules.

Store layout (Zarr v3 group, format ``numbec-prediction`` version 1)
--------------------------------------------------------------------
Variables (:data:`VARIABLES`), each with attributes ``units`` and ``long_name`` and frame
chunks of ``chunk_frames``:

=============================== ====================== ============ =======================
variable                        dims                   units        meaning
=============================== ====================== ============ =======================
bec                             (frame, atom, pol,     e            ``Z[f, a, i, j] = dP_i /
                                disp)                               dr_{a,j}``
bec_std                         (frame, atom, pol,     e            predictive standard
                                disp)                               deviation of ``bec``
bec_monopole, bec_dipole        (frame, atom, pol,     e            partition of a combined
                                disp)                               model
charges                         (frame, atom)          e            monopole charges
charge_std                      (frame, atom)          e            posterior std of each
                                                                    atom's charge
local_dipole_std                (frame, atom)          e*Angstrom   sqrt(trace of the
                                                                    posterior covariance of
                                                                    each local dipole)
asr_violation                   (frame, pol, disp)     e            ``sum_a Z_local[a] - Q I``
                                                                    before the sum-rule
                                                                    projection
dipole_derivative               (frame, pol)           e*Angstrom   ``dM/dt = sum_a Z_a v_a``
                                                       /fs
dipole_derivative_by_species    (frame, species, pol)  e*Angstrom   the same per species
                                                       /fs
dipole_derivative_monopole,     (frame, pol)           e*Angstrom   partition of dM/dt
dipole_derivative_dipole                               /fs
dipole                          (frame, pol)           e*Angstrom   model dipole, or the
                                                                    time integral of dM/dt
dipole_derivative_samples       (frame, sample, pol)   e*Angstrom   dM/dt of posterior
                                                       /fs          weight samples
dipole_derivative_by_species_   (frame, sample,        e*Angstrom   the same per species
samples                         species, pol)          /fs
dipole_derivative_std           (frame, pol)           e*Angstrom   epistemic standard
                                                       /fs          deviation of dM/dt
=============================== ====================== ============ =======================

Coordinates: ``time`` (frame) fs; ``species`` (species) atomic numbers, with
``dipole_derivative_by_species``.

Group attributes: ``format``, ``format_version``, ``bec_convention``, ``timestep`` (fs),
``numbec_version``, ``model_class``, ``model_sha256``, ``model_file``, ``input`` (the
trajectory store), ``created``, ``pbc``, ``uncertainty``, ``storage_dtype``, optional
``precision``, ``total_charge`` (e, the Q given to the model), ``dipole_method``,
``volume`` (Å^3, periodic cells), ``velocities_source``,
``temperature`` (K), ``uncertainty_rank`` (K of the streamed ``bec_std``) and
``uncertainty_direction_frames`` (the frames its directions are ordered on,
:func:`numbec.stream.direction_frame_indices`) when it was streamed,
``input_complete`` (False) and ``input_frames`` when the trajectory
store was still incomplete (``predict(allow_incomplete=True)``); and the resume
bookkeeping: ``fingerprint`` (JSON of :func:`fingerprint`), ``initialised`` (the layout
is complete), ``complete`` (every chunk and the integrated dipole are written).

Resume rules
------------
The subgroup ``_progress`` (:data:`PROGRESS_GROUP`, not part of the dataset) holds
``chunks_done`` (one bool per chunk) and, for the integrated dipole, ``dipole_local``
(frame, 3) float64 (the trapezoid integral of ``dipole_derivative`` from each chunk's first
frame) and ``dd_first``/``dd_last`` (chunk, 3) float64 (each chunk's first and last
``dipole_derivative``). A chunk is flagged done only after all its data are written and
flushed to disk (:func:`write_chunk`), so a run killed at any moment and started again
computes exactly the chunks not flagged. A store made by another model, input or settings
(different :func:`fingerprint`) is never resumed (:class:`OutputMismatchError`). One writer
at a time: :func:`numbec.io._files.store_lock`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from numbec.io._files import OutputLockedError, lock_holder, store_lock

PREDICTION_FORMAT = "numbec-prediction"
#: Version of the stored Prediction layout (bump when the meaning of stored arrays changes).
PREDICTION_FORMAT_VERSION = 1
#: Name of the bookkeeping subgroup of an output store (not part of the dataset).
PROGRESS_GROUP = "_progress"

BEC_CONVENTION = (
    "Z[frame, atom, pol, disp] = dP_pol / dr_{atom, disp} (e); P = cell dipole in e*Angstrom"
)

#: name -> (dims, units, description) of every variable :func:`numbec.predict` can produce.
VARIABLES = {
    "bec": (("frame", "atom", "pol", "disp"), "e", "Born effective charges"),
    "bec_std": (("frame", "atom", "pol", "disp"), "e", "predictive standard deviation of bec"),
    "bec_monopole": (("frame", "atom", "pol", "disp"), "e", "monopole (charge) part of bec"),
    "bec_dipole": (("frame", "atom", "pol", "disp"), "e", "dipole part of bec"),
    "charges": (("frame", "atom"), "e", "monopole charges"),
    "charge_std": (
        ("frame", "atom"),
        "e",
        "posterior standard deviation of each atom's charge from the weights' posterior "
        "alone (epistemic; not the BEC's)",
    ),
    "local_dipole_std": (
        ("frame", "atom"),
        "e*Angstrom",
        "root of the trace of the posterior covariance of each atom's local dipole, from "
        "the weights' posterior alone (epistemic; not the BEC's)",
    ),
    "asr_violation": (
        ("frame", "pol", "disp"),
        "e",
        "acoustic sum-rule violation of the local-formula BECs before projection: "
        "sum over atoms of Z_local minus Q I (Q the total charge); the projection "
        "subtracts 1/N of it from every atom (periodic cells; ~0 for molecules)",
    ),
    "dipole_derivative": (("frame", "pol"), "e*Angstrom/fs", "dM/dt = sum_a Z_a v_a"),
    "dipole_derivative_by_species": (
        ("frame", "species", "pol"),
        "e*Angstrom/fs",
        "sum of Z_a v_a over the atoms of each species",
    ),
    "dipole_derivative_monopole": (("frame", "pol"), "e*Angstrom/fs", "sum_a Z^monopole_a v_a"),
    "dipole_derivative_dipole": (("frame", "pol"), "e*Angstrom/fs", "sum_a Z^dipole_a v_a"),
    "dipole": (("frame", "pol"), "e*Angstrom", "dipole moment"),
    "dipole_derivative_samples": (
        ("frame", "sample", "pol"),
        "e*Angstrom/fs",
        "dM/dt of posterior weight samples (predict(posterior_samples=S))",
    ),
    "dipole_derivative_by_species_samples": (
        ("frame", "sample", "species", "pol"),
        "e*Angstrom/fs",
        "sum of Z_a v_a over the atoms of each species, per posterior weight sample",
    ),
    "dipole_derivative_std": (
        ("frame", "pol"),
        "e*Angstrom/fs",
        "standard deviation of dM/dt from the weights' posterior alone (epistemic)",
    ),
}

__all__ = [
    "BEC_CONVENTION",
    "OutputLockedError",
    "OutputMismatchError",
    "PREDICTION_FORMAT",
    "PREDICTION_FORMAT_VERSION",
    "PROGRESS_GROUP",
    "VARIABLES",
    "group_attrs",
    "open_prediction",
    "prediction_summary",
]


class OutputMismatchError(ValueError):
    """An existing output store was made by another model, input or settings."""


# ---------------------------------------------------------------------------- dataset
def variable_shape(name, n_frames, n_atoms, n_species, n_samples=0) -> tuple:
    """Shape of variable ``name`` for ``n_frames`` frames (dims in :data:`VARIABLES`)."""
    sizes = {"frame": n_frames, "atom": n_atoms, "pol": 3, "disp": 3, "species": n_species,
             "sample": n_samples}
    return tuple(sizes[d] for d in VARIABLES[name][0])


#: Labels of the Cartesian dimensions ``pol`` (polarisation / field) and ``disp``
#: (displacement).
CARTESIAN = ("x", "y", "z")


def prediction_dataset(arrays, variables, time, species, attrs, numbers=None):
    """The Prediction dataset of ``arrays`` (name -> numpy or dask array, shapes as in
    :data:`VARIABLES`): every variable with its units and description; coordinates ``time``
    (frame) fs, ``pol`` and ``disp`` labelled x, y, z, ``symbol`` (atom) the chemical
    symbol of every atom (given ``numbers``, so that ``ds.bec.groupby("symbol")`` works)
    and, with per-species sums, ``species`` (atomic numbers)."""
    import xarray as xr

    data_vars = {}
    for name in variables:
        dims, units, description = VARIABLES[name]
        data_vars[name] = xr.Variable(dims, arrays[name],
                                      attrs={"units": units, "long_name": description})
    coords = {"time": ("frame", time, {"units": "fs"})}
    dims = {d for name in variables for d in VARIABLES[name][0]}
    for dim, meaning in (("pol", "polarisation (field) direction"),
                         ("disp", "displacement direction")):
        if dim in dims:
            coords[dim] = (dim, np.array(CARTESIAN, dtype=object), {"long_name": meaning})
    if numbers is not None and "atom" in dims:
        from ase.data import chemical_symbols

        coords["symbol"] = ("atom", np.array([chemical_symbols[int(z)] for z in numbers],
                                             dtype=object), {"long_name": "chemical symbol"})
    if "species" in dims:
        coords["species"] = ("species", species, {"long_name": "atomic number"})
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def prediction_attrs(*, model_class, model_sha256, model_file, input_name, timestep, pbc,
                     dipole_method, uncertainty, dtype, precision, volume, velocities_source,
                     temperature, total_charge=0.0) -> dict:
    """The group attributes of a Prediction (see the module docstring)."""
    from numbec import __version__

    attrs = {
        "format": PREDICTION_FORMAT,
        "format_version": PREDICTION_FORMAT_VERSION,
        "bec_convention": BEC_CONVENTION,
        "timestep": timestep,
        "timestep_units": "fs",
        "numbec_version": __version__,
        "model_class": model_class,
        "model_sha256": model_sha256 or "",
        "input": input_name,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "pbc": [bool(p) for p in pbc],
        "uncertainty": bool(uncertainty),
        "storage_dtype": np.dtype(dtype).name,
        "total_charge": float(total_charge),
        "total_charge_units": "e",
    }
    if precision != "float64":
        attrs["precision"] = precision
    if dipole_method == "model":
        attrs["dipole_method"] = "model: the model's own dipole of each frame"
    elif dipole_method == "integrated":
        attrs["dipole_method"] = (
            "integrated: trapezoid time integral of dipole_derivative from 0 at frame 0 "
            "(continuous across the polarisation quantum; defined up to a constant)"
        )
    if volume is not None:
        attrs["volume"] = float(volume)
        attrs["volume_units"] = "Angstrom^3"
    if velocities_source is not None:
        attrs["velocities_source"] = str(velocities_source)
    if temperature is not None:
        attrs["temperature"] = float(temperature)
        attrs["temperature_units"] = "K"
    attrs["model_file"] = str(model_file) if model_file is not None else ""
    return attrs


# ---------------------------------------------------------------------------- fingerprint
def sha256_arrays(*arrays) -> str:
    """SHA-256 of arrays: dtype, shape and buffer of each, in order."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.data)  # the buffer itself: tobytes() would copy it first
    return h.hexdigest()


def model_fingerprint(model, digests: dict | None = None) -> dict:
    """Class name and SHA-256 of a model's saved state (metadata JSON and arrays); the
    hash is None for a model without a saved state.

    digests : dict, optional
        Array digests already computed, shared between calls that hash the same arrays
        (a wrapper and the model it wraps, whose state holds the same array objects): keyed
        by ``id``, holding the array so that its id is not reused. Valid only while the
        arrays are not modified in place, i.e. within one caller's scope.
    """
    state = getattr(model, "state", None) or getattr(model, "_state", None)
    try:
        if state is None:
            raise AttributeError
        metadata, arrays = state()
    except (AttributeError, NotImplementedError):
        return {"class": type(model).__name__, "sha256": None}
    h = hashlib.sha256(json.dumps(metadata, sort_keys=True, default=str).encode())
    for name in sorted(arrays):
        array = np.asarray(arrays[name])
        known = None if digests is None else digests.get(id(array))
        if known is None or known[0] is not array:
            known = (array, sha256_arrays(array))
            if digests is not None:
                digests[id(array)] = known
        h.update(name.encode())
        h.update(known[1].encode())
    return {"class": type(model).__name__, "sha256": h.hexdigest()}


def input_hash(numbers, first_positions, last_positions) -> str:
    """``numbers_positions_sha256`` of a prediction's fingerprint: SHA-256 of the atomic
    numbers (N,) int64 and of the first and last frames' positions (N, 3) Å, as read from
    the input. What :func:`numbec.spectra.ir.recorded_trajectory` checks a trajectory store
    against."""
    return sha256_arrays(numbers, first_positions, last_positions)


def fingerprint(*, model_fp, input_name, n_frames, n_atoms, numbers, first_positions,
                last_positions, timestep, chunk_frames, variables, velocities_source, dtype,
                uncertainty, precision, total_charge=0.0) -> dict:
    """What must be equal for an existing store to be resumed: the model (its state hash),
    the input (name, size, atoms, first and last positions), and every setting that
    changes stored numbers or the chunking."""
    return {
        "model": model_fp,
        "input": input_name,
        "n_frames": int(n_frames),
        "n_atoms": int(n_atoms),
        "numbers_positions_sha256": input_hash(numbers, first_positions, last_positions),
        "timestep": timestep if np.isfinite(timestep) else None,
        "chunk_frames": int(chunk_frames),
        "variables": list(variables),
        "velocities_source": velocities_source,
        "dtype": dtype,
        "uncertainty": uncertainty,
        **({} if precision == "float64" else {"precision": precision}),
        # only when non-zero, so that stores written before the keyword existed resume
        **({} if not total_charge else {"total_charge": float(total_charge)}),
    }


def stored_variables(out: Path):
    """The variables in the fingerprint of an initialised Prediction store at ``out``, or
    None (no such store, or not readable): lets a run resume a store written before a
    variable was added (such a store simply lacks it)."""
    import zarr

    try:
        root = zarr.open_group(str(out), mode="r", zarr_format=3, use_consolidated=False)
        attrs = dict(root.attrs)
        if attrs.get("format") != PREDICTION_FORMAT or not attrs.get("initialised"):
            return None
        return tuple(json.loads(attrs.get("fingerprint", "{}")).get("variables", ()))
    except Exception:  # noqa: BLE001 - anything else is judged by open_for_resume
        return None


# ---------------------------------------------------------------------------- writing
def open_for_resume(out: Path, expected_fingerprint, overwrite=False):
    """The zarr group of a resumable store at ``out``, or None if a new one must be made
    (always None for a Prediction store with ``overwrite``: it is laid out anew).

    Raises
    ------
    OutputMismatchError
        ``out`` holds something else, or a Prediction of another model/input/settings.
    """
    import zarr

    if not out.exists() or not any(out.iterdir()):
        return None
    try:
        root = zarr.open_group(str(out), mode="r+", zarr_format=3, use_consolidated=False)
    except Exception as exc:  # noqa: BLE001 - any failure means: not our store
        raise OutputMismatchError(
            f"{out} exists and is not a numbec prediction store ({exc}); choose another "
            "output or delete it"
        ) from exc
    attrs = dict(root.attrs)
    if attrs.get("format") != PREDICTION_FORMAT:
        raise OutputMismatchError(
            f"{out} exists and is not a numbec prediction store; choose another output "
            "or delete it"
        )
    if overwrite or not attrs.get("initialised"):
        return None  # replaced; or a run died while laying it out: no chunk is done yet
    stored = json.loads(attrs.get("fingerprint", "{}"))
    if stored != expected_fingerprint:
        keys = sorted(k for k in set(stored) | set(expected_fingerprint)
                      if stored.get(k) != expected_fingerprint.get(k))
        raise OutputMismatchError(
            f"{out} was made by another model, input or settings (differs in: "
            f"{', '.join(keys)}); it cannot be resumed. Replace it (overwrite=True, "
            "--overwrite) or choose another output"
        )
    return root


def create_store(out: Path, *, variables, integrated_dipole, numbers, species, chunk_frames,
                 n_chunks, time, attrs, dtype, n_samples=0):
    """Lay out an empty Prediction store at ``out`` (see the module docstring)."""
    import dask.array as da
    import zarr

    n_frames = time.size
    arrays = {}
    for name in variables:
        shape = variable_shape(name, n_frames, len(numbers), species.size, n_samples)
        arrays[name] = da.zeros(shape, chunks=(chunk_frames,) + shape[1:], dtype=dtype)
    attrs = dict(attrs, initialised=False, complete=False)
    # the format attribute goes first, so that a run killed while laying out the store
    # finds a store it recognises as its own and simply lays it out again
    zarr.open_group(str(out), mode="w", zarr_format=3, attributes=attrs)
    template = prediction_dataset(arrays, variables, time, species, attrs, numbers)
    template.to_zarr(str(out), mode="a", compute=False, zarr_format=3, consolidated=False)
    root = zarr.open_group(str(out), mode="r+", zarr_format=3)
    progress = root.create_group(PROGRESS_GROUP)
    progress.create_array("chunks_done", shape=(n_chunks,), chunks=(1,), dtype=bool,
                          fill_value=False)
    if integrated_dipole:
        progress.create_array("dipole_local", shape=(n_frames, 3), chunks=(chunk_frames, 3),
                              dtype=np.float64, fill_value=np.nan)
        for name in ("dd_first", "dd_last"):
            progress.create_array(name, shape=(n_chunks, 3), chunks=(1, 3),
                                  dtype=np.float64, fill_value=np.nan)
    root.attrs["initialised"] = True
    return root


def fsync_tree(path):
    """Flush every file under ``path`` (a str) to disk (no-op if it does not exist)."""
    if not os.path.exists(path):
        return
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def write_chunk(out: str, variables, integrated_dipole, c: int, start: int, stop: int,
                result: dict):
    """Write chunk ``c`` (frames ``start:stop``) of every variable, flush it, and only then
    flag it done. ``result``: the chunk's variables, and for the integrated dipole its
    ``dipole_local``, ``dd_first``, ``dd_last`` records (the stored ``dipole`` is written
    by :func:`integrate_dipole`)."""
    import zarr

    root = zarr.open_group(out, mode="r+", zarr_format=3)
    progress = root[PROGRESS_GROUP]
    for name in variables:
        if name == "dipole" and integrated_dipole:
            continue  # written by the final integration pass
        root[name][start:stop] = result[name]
    if integrated_dipole:
        progress["dipole_local"][start:stop] = result["dipole_local"]
        progress["dd_first"][c] = result["dd_first"]
        progress["dd_last"][c] = result["dd_last"]
    # plain strings, not pathlib: Path interns every part, and thousands of chunk paths
    # would grow the interpreter's table of interned strings
    join = os.path.join
    for name in variables:
        fsync_tree(join(out, name, "c", str(c)))
    for name in ("dipole_local", "dd_first", "dd_last"):
        fsync_tree(join(out, PROGRESS_GROUP, name, "c", str(c)))
    progress["chunks_done"][c] = True
    fsync_tree(join(out, PROGRESS_GROUP, "chunks_done", "c", str(c)))


def chunks_done(root, n_chunks) -> np.ndarray:
    """Completion flags (n_chunks,) bool; a flag whose chunk cannot be read counts as not
    done."""
    array = root[PROGRESS_GROUP]["chunks_done"]
    try:
        return np.asarray(array[:], dtype=bool)
    except Exception:  # noqa: BLE001 - a damaged flag chunk: check one by one
        done = np.zeros(n_chunks, dtype=bool)
        for c in range(n_chunks):
            with contextlib.suppress(Exception):
                done[c] = bool(array[c])
        return done


def dipole_offsets(timestep, local_last, dd_first, dd_last):
    """Running offset of the integrated dipole at the first frame of every chunk.

    ``local_last``, ``dd_first``, ``dd_last``: (C, 3) float64 per chunk (last value of the
    local integral, first and last dipole derivative, e*Å and e*Å/fs). Returns (C, 3)
    float64 e*Å with ``offset[0] = 0`` and ``offset[c] = offset[c-1] + local_last[c-1]
    + dt/2 (dd_last[c-1] + dd_first[c])`` (the trapezoid across the chunk boundary).
    """
    local_last = np.asarray(local_last, dtype=np.float64).reshape(-1, 3)
    offsets = np.zeros_like(local_last)
    for c in range(1, len(offsets)):
        offsets[c] = next_offset(timestep, offsets[c - 1], local_last[c - 1], dd_last[c - 1],
                                 dd_first[c])
    return offsets


def next_offset(timestep, offset, local_last, dd_last, dd_first_next):
    """Dipole offset (3,) of a chunk from the previous chunk's offset, local-integral end
    and last dipole derivative, and this chunk's first dipole derivative."""
    return (offset + local_last) + 0.5 * timestep * (dd_last + dd_first_next)


def integrate_dipole(root, timestep, dtype, bounds):
    """Write ``dipole`` from the stored local integrals and per-chunk boundary values.

    Idempotent (it only reads ``_progress`` and overwrites ``dipole``), so a run killed
    here simply repeats it.
    """
    progress = root[PROGRESS_GROUP]
    local = progress["dipole_local"]
    local_last = np.array([local[stop - 1] for _start, stop in bounds])
    offsets = dipole_offsets(timestep, local_last, progress["dd_first"][:],
                             progress["dd_last"][:])
    dipole = root["dipole"]
    for c, (start, stop) in enumerate(bounds):
        dipole[start:stop] = (offsets[c] + local[start:stop]).astype(dtype, copy=False)


@contextlib.contextmanager
def locked(out: Path):
    """The writer's lock of a Prediction store (:func:`numbec.io._files.store_lock`)."""
    with store_lock(out, "numbec predict") as lock:
        yield lock


# ---------------------------------------------------------------------------- reading
def open_store(path):
    """A finished Prediction store as a lazy dataset, its small coordinates in memory (so
    that ``groupby("symbol")`` works)."""
    import xarray as xr

    ds = xr.open_zarr(str(path), zarr_format=3)
    small = [name for name in ("symbol", "pol", "disp") if name in ds.coords]
    return ds.assign_coords({name: ds[name].load() for name in small})


def group_attrs(path) -> dict:
    """The attributes of the Zarr group at ``path`` as they are on disk (not consolidated,
    so also those of an unfinished store), or {} when there is no readable group there: the
    caller's reader then says what is wrong."""
    import zarr

    try:
        return dict(zarr.open_group(str(path), mode="r", use_consolidated=False).attrs)
    except Exception:  # noqa: BLE001 - judged by the caller's reader
        return {}


def _json_attr(attrs, name, where):
    """A group attribute stored as JSON text, parsed; None when absent."""
    text = attrs.get(name)
    if text is None:
        return None
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        raise ValueError(f"{where}: attribute {name!r} is not valid JSON; the store's "
                         "metadata is damaged") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: attribute {name!r} is not a JSON object")
    return value


def _number_attr(attrs, name, where, default=None, integer=False):
    """A numeric group attribute, checked (``default`` when absent or null)."""
    value = attrs.get(name)
    if value is None:
        return default
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if not ok or isinstance(value, bool):
        raise ValueError(f"{where}: attribute {name!r} = {value!r} is not "
                         f"{'an integer' if integer else 'a number'}; the store's metadata "
                         "is damaged")
    return int(value) if integer else float(value)


def _environment_report(attrs, where) -> dict | None:
    """The ``environment_check`` attribute, checked: ``frames`` and ``extrapolated`` lists,
    and per species ``checked`` (int) and ``beyond`` (a fraction)."""
    report = _json_attr(attrs, "environment_check", where)
    if report is None:
        return None
    problem = None
    if not isinstance(report.get("frames", []), list):
        problem = "'frames' is not a list"
    elif not all(isinstance(s, str) for s in report.get("extrapolated", [])):
        problem = "'extrapolated' is not a list of species"
    for key, entry in report.items():
        if key in ("frames", "extrapolated") or problem:
            continue
        beyond = entry.get("beyond") if isinstance(entry, dict) else None
        if not (isinstance(beyond, int | float) and 0.0 <= beyond <= 1.0
                and isinstance(entry.get("checked"), int)):
            problem = f"species {key!r} has no valid 'checked' count and 'beyond' fraction"
    if problem:
        raise ValueError(f"{where}: attribute 'environment_check': {problem}; the store's "
                         "metadata is damaged")
    return report


def prediction_summary(path) -> dict:
    """Facts about a Prediction store for ``numbec info``, finished or not, without reading
    its data: what was predicted, from which trajectory and model, how far the run got.

    Returns a dict (JSON-ready): ``store``, ``kind`` (``"prediction"``), ``format_version``,
    ``numbec_version``, ``created``, ``input`` (the trajectory), ``model_class``,
    ``model_file``, ``model_sha256``, ``frames`` (of the trajectory), ``frames_done`` (in
    chunks flagged done), ``chunks``, ``chunks_done``, ``chunk_frames``, ``atoms``,
    ``species`` ({symbol: count}), ``timestep`` (fs or None), ``variables`` ({name:
    {``dims``, ``units``}}), ``storage_dtype``, ``precision``, ``uncertainty`` (per-atom
    ``bec_std``), ``uncertainty_rank``, ``posterior_samples``, ``total_charge`` (e),
    ``velocities_source``, ``dipole_method``, ``temperature`` (K or None),
    ``environment_check`` (the report of
    :func:`numbec.models.representation.environment_check` or None), ``complete`` (bool),
    ``writer`` (the live process writing it: pid, host, command, started; or None),
    ``input_complete`` (False when the trajectory store was still being converted,
    ``predict(allow_incomplete=True)``).

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    ValueError
        Not a Prediction store, a ``format_version`` this numbec does not read, or damaged
        metadata (naming the attribute or array).
    """
    import zarr

    where = os.fspath(path)
    if not os.path.exists(where):
        raise FileNotFoundError(f"{where}: no such store")
    try:
        root = zarr.open_group(where, mode="r", zarr_format=3, use_consolidated=False)
        attrs = dict(root.attrs)
    except Exception as exc:  # noqa: BLE001 - any failure: not a readable store
        raise ValueError(f"{where}: cannot open as a Zarr group ({type(exc).__name__}: "
                         f"{exc})") from exc
    if attrs.get("format") != PREDICTION_FORMAT:
        raise ValueError(f"{where} is not a prediction store (format="
                         f"{attrs.get('format')!r})")
    version = attrs.get("format_version")
    if version != PREDICTION_FORMAT_VERSION:
        raise ValueError(f"{where}: prediction store format_version {version!r} is not "
                         f"supported (this numbec reads version {PREDICTION_FORMAT_VERSION})")
    writer = lock_holder(where)
    fingerprint = _json_attr(attrs, "fingerprint", where) or {}
    summary = {"store": where, "kind": "prediction", "format_version": version,
               "numbec_version": attrs.get("numbec_version"), "created": attrs.get("created"),
               "input": attrs.get("input"), "model_class": attrs.get("model_class"),
               "model_file": attrs.get("model_file") or None,
               "model_sha256": attrs.get("model_sha256") or None, "writer": writer,
               "input_complete": attrs.get("input_complete", True) is not False}
    if not attrs.get("initialised"):  # a run that died (or is) laying out the store
        return dict(summary, frames=None, frames_done=0, complete=False, initialised=False)
    try:
        time = root["time"]
        n_frames = int(time.shape[0])
        progress = root[PROGRESS_GROUP]
        flags = progress["chunks_done"]
    except KeyError as exc:
        raise ValueError(f"{where}: the prediction store lacks {exc}; its layout is "
                         "damaged") from None
    chunk_frames = fingerprint.get("chunk_frames")
    if not isinstance(chunk_frames, int) or chunk_frames < 1:
        raise ValueError(f"{where}: the fingerprint's chunk_frames is {chunk_frames!r}, not "
                         "a positive integer; the store's metadata is damaged")
    n_chunks = int(flags.shape[0])
    if n_chunks != -(-n_frames // chunk_frames):
        raise ValueError(f"{where}: {n_chunks} chunk flags for {n_frames} frames in chunks "
                         f"of {chunk_frames}; the store's layout is damaged")
    done = chunks_done(root, n_chunks)
    starts = np.arange(n_chunks) * chunk_frames
    sizes = np.minimum(starts + chunk_frames, n_frames) - starts
    variables = {}
    for name in sorted(VARIABLES):
        if name in root:
            variables[name] = {"dims": list(VARIABLES[name][0]),
                               "units": dict(root[name].attrs).get("units")}
    species: dict[str, int] = {}
    if "symbol" in root:
        for symbol in (str(x) for x in root["symbol"][:]):
            species[symbol] = species.get(symbol, 0) + 1
    timestep = _number_attr(attrs, "timestep", where)
    return dict(
        summary, initialised=True, frames=n_frames, frames_done=int(sizes[done].sum()),
        chunks=n_chunks, chunks_done=int(done.sum()), chunk_frames=chunk_frames,
        atoms=int(fingerprint.get("n_atoms", sum(species.values()))), species=species,
        timestep=timestep if timestep is not None and np.isfinite(timestep) else None,
        variables=variables, storage_dtype=attrs.get("storage_dtype"),
        precision=attrs.get("precision", "float64"),
        uncertainty=bool(attrs.get("uncertainty")),
        uncertainty_rank=_number_attr(attrs, "uncertainty_rank", where, integer=True),
        posterior_samples=_number_attr(attrs, "posterior_samples", where, 0, integer=True),
        total_charge=_number_attr(attrs, "total_charge", where, 0.0),
        velocities_source=attrs.get("velocities_source"),
        dipole_method=attrs.get("dipole_method"),
        temperature=_number_attr(attrs, "temperature", where),
        environment_check=_environment_report(attrs, where),
        complete=bool(attrs.get("complete")),
    )


def open_prediction(path):
    """Open a finished Prediction store (Zarr) or a netCDF file as an xarray Dataset.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    ValueError
        Not a readable store, a Prediction store whose run has not finished, or one of
        another ``format_version``.
    """
    import xarray as xr

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{os.fspath(path)}: no such prediction store")
    if path.suffix == ".nc":
        ds = xr.open_dataset(path)
    else:
        attrs = group_attrs(path)  # before xarray, which warns on an unfinished store
        kind = attrs.get("format")
        if kind == PREDICTION_FORMAT and not attrs.get("complete"):
            raise ValueError(f"{path}: the prediction is incomplete; run numbec predict "
                             f"again to finish it ('numbec info {path}' shows how far it got "
                             "and whether a run is still writing it)")
        from numbec.io.trajectory import STORE_FORMAT

        if kind == STORE_FORMAT:
            raise ValueError(f"{path} is a trajectory store, not a prediction; run "
                             f"'numbec predict MODEL {path} -o PREDICTION.zarr' first")
        try:
            ds = open_store(path)
        except Exception as exc:
            raise ValueError(f"{path}: not a readable Zarr store ({exc})") from exc
    version = ds.attrs.get("format_version")
    if ds.attrs.get("format") == PREDICTION_FORMAT and version != PREDICTION_FORMAT_VERSION:
        # a later layout may change what the stored arrays mean
        raise ValueError(f"{path}: prediction store format_version {version!r} is not "
                         f"supported (this numbec reads version {PREDICTION_FORMAT_VERSION})")
    ds.attrs.setdefault("input", os.fspath(path))
    return ds
