"""Streaming BEC prediction over long MD trajectories: chunked, lazy, resumable.

:func:`predict` applies a :class:`numbec.models.base.BECModel` frame by frame to a
trajectory (a Trajectory store path or an :class:`xarray.Dataset` in its layout) and
returns the *Prediction dataset*:

``bec`` (frame, atom, pol, disp), e
    Canonical BECs ``Z[f, a, i, j] = dP_i / dr_{a,j}`` of every frame.
``charges`` (frame, atom), e; ``bec_monopole``, ``bec_dipole``, ``bec_std``
    When the model provides them (``bec_std`` with ``uncertainty=True``).
``dipole_derivative`` (frame, pol), e·Å/fs
    ``dM_i/dt = sum_a sum_j Z[f, a, i, j] v[f, a, j]`` (needs velocities).
``dipole_derivative_by_species`` (frame, species, pol), e·Å/fs
    The same sum restricted to the atoms of each species (coordinate ``species`` =
    atomic numbers); the parts sum to ``dipole_derivative``.
``dipole_derivative_monopole``, ``dipole_derivative_dipole`` (frame, pol), e·Å/fs
    The partition of a combined model (from ``bec_monopole`` / ``bec_dipole``).
``dipole`` (frame, pol), e·Å
    Non-periodic systems whose model defines a dipole: the model's dipole.
    Periodic cells (or models without a dipole): the time integral of
    ``dipole_derivative`` by the trapezoid rule, starting at 0 at frame 0. It is
    continuous across the polarisation quantum (an atom wrapped back into the cell
    does not make it jump) and defined up to a constant; ``attrs["dipole_method"]``
    says which of the two it is.

Execution
---------
* in-memory (numpy-backed) dataset, no ``out``: computed eagerly, chunk by chunk;
* dask-backed dataset, no ``out``: a lazy result, one task per frame chunk (aligned
  with the input chunks or ``chunk_frames``), runnable on any Dask scheduler; the model
  is one node of the graph, so it travels to each worker once;
* ``out=`` a Zarr v3 store: written chunk by chunk (on the active Dask scheduler when
  the input is dask-backed), resumable and locked, see :func:`predict`.

The integrated dipole of chunk ``c`` needs every earlier chunk. Each chunk computes its
*local* trapezoid integral (0 at its first frame) and its first and last
``dipole_derivative``; a sequential float64 pass over these small per-chunk records
gives the running offset of each chunk. Lazy, eager and stored results use the same
arithmetic, so they agree bit for bit.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import operator
import os
import socket
import threading
import warnings
from pathlib import Path
from time import perf_counter

import numpy as np

PREDICTION_FORMAT = "numbec-prediction"
#: Version of the stored Prediction layout (bump when the meaning of stored arrays changes).
PREDICTION_FORMAT_VERSION = 1
#: Name of the bookkeeping subgroup of an output store (not part of the dataset).
PROGRESS_GROUP = "_progress"

BEC_CONVENTION = (
    "Z[frame, atom, pol, disp] = dP_pol / dr_{atom, disp} (e); P = cell dipole in e*Angstrom"
)

#: name -> (dims, units, description) of every variable :func:`predict` can produce.
VARIABLES = {
    "bec": (("frame", "atom", "pol", "disp"), "e", "Born effective charges"),
    "bec_std": (("frame", "atom", "pol", "disp"), "e", "predictive standard deviation of bec"),
    "bec_monopole": (("frame", "atom", "pol", "disp"), "e", "monopole (charge) part of bec"),
    "bec_dipole": (("frame", "atom", "pol", "disp"), "e", "dipole part of bec"),
    "charges": (("frame", "atom"), "e", "monopole charges"),
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
}
_PER_ATOM_TENSORS = ("bec", "bec_std", "bec_monopole", "bec_dipole")

__all__ = [
    "OutputLockedError",
    "OutputMismatchError",
    "VARIABLES",
    "predict",
]


class OutputLockedError(OSError):
    """Another run is writing the same output store."""


class OutputMismatchError(ValueError):
    """An existing output store was made by another model, input or settings."""


# ---------------------------------------------------------------------------- the plan
@dataclasses.dataclass(frozen=True)
class _ChunkSpec:
    """Static, small description of the per-chunk work (travels with every task)."""

    source: str
    numbers: np.ndarray  # (N,) int64
    pbc: np.ndarray  # (3,) bool
    species: np.ndarray  # (S,) int64, sorted atomic numbers present
    variables: tuple  # output variable names, in VARIABLES order
    dipole_method: str | None  # "model", "integrated" or None
    timestep: float  # fs (nan if unknown and not needed)
    uncertainty: bool
    dtype: str
    precision: str = "float64"  # arithmetic of the model (BECModel.precisions)
    frame_threads: int = 0  # frames computed concurrently; 0: automatic (_frame_threads)
    n_samples: int = 0  # posterior weight samples (numbec.models.uncertainty)


def _model_outputs(model) -> tuple:
    return tuple(getattr(model, "outputs", ("bec",)))


def _plan_variables(model, has_velocities, want_dd, periodic, uncertainty):
    outputs = _model_outputs(model)
    names = ["bec"]
    if uncertainty:
        if "bec_std" not in outputs:
            raise ValueError(
                f"{type(model).__name__} does not predict uncertainties "
                f"(its outputs are {outputs}); run without uncertainty"
            )
        names.append("bec_std")
    combined = "bec_monopole" in outputs and "bec_dipole" in outputs
    if combined:
        names += ["bec_monopole", "bec_dipole"]
    if "charges" in outputs:
        names.append("charges")
    if want_dd:
        names += ["dipole_derivative", "dipole_derivative_by_species"]
        if combined:
            names += ["dipole_derivative_monopole", "dipole_derivative_dipole"]
        if "bec_samples" in outputs:
            names.append("dipole_derivative_samples")
    if "dipole" in outputs and not periodic:
        method = "model"
    elif want_dd:
        method = "integrated"
    else:
        method = None
    if method:
        names.append("dipole")
    order = list(VARIABLES)
    return tuple(sorted(names, key=order.index)), method


# ---------------------------------------------------------------------------- per chunk
def _predict_chunk(model, positions, cell, velocities, spec: _ChunkSpec, frame0: int) -> dict:
    """Predict frames ``frame0 .. frame0 + F - 1``.

    Parameters
    ----------
    positions : (F, N, 3) float64, Å.   cell : (F, 3, 3) float64, Å, rows = lattice vectors.
    velocities : (F, N, 3) float64, Å/fs, or None.

    Returns a dict of the output variables (cast to ``spec.dtype``) and, for the
    integrated dipole, float64 ``_dipole_local`` (F, 3) (trapezoid integral from the
    chunk's first frame), ``_dd_first``/``_dd_last`` (3,) (first/last dipole derivative).
    """
    positions = np.asarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    n_frames, n_atoms = positions.shape[:2]
    _check_finite(positions, "position", spec.source, frame0)
    if velocities is not None:
        velocities = np.asarray(velocities, dtype=np.float64)
        _check_finite(velocities, "velocity", spec.source, frame0)

    per_frame = {}
    model_keys = [k for k in ("bec", "bec_std", "bec_monopole", "bec_dipole", "charges")
                  if k in spec.variables]
    if spec.dipole_method == "model":
        model_keys.append("dipole")
    if "dipole_derivative_samples" in spec.variables:
        model_keys.append("bec_samples")
    shapes = {"charges": (n_atoms,), "dipole": (3,),
              "bec_samples": (spec.n_samples, n_atoms, 3, 3)}
    for key in model_keys:
        per_frame[key] = np.empty((n_frames,) + shapes.get(key, (n_atoms, 3, 3)))
    _model_frames(model, positions, cell, spec, frame0, model_keys, per_frame)

    out = dict(per_frame)
    if "dipole_derivative" in spec.variables:
        # contributions c[f, a, i] = sum_j Z[f, a, i, j] v[f, a, j]
        contrib = np.einsum("faij,faj->fai", per_frame["bec"], velocities)
        onehot = (spec.numbers[:, None] == spec.species[None, :]).astype(np.float64)
        out["dipole_derivative"] = contrib.sum(axis=1)
        out["dipole_derivative_by_species"] = np.einsum("fai,as->fsi", contrib, onehot)
        for part in ("monopole", "dipole"):
            name = f"dipole_derivative_{part}"
            if name in spec.variables:
                out[name] = np.einsum("faij,faj->fi", per_frame[f"bec_{part}"], velocities)
        if "bec_samples" in out:
            out["dipole_derivative_samples"] = np.einsum(
                "fsaij,faj->fsi", out.pop("bec_samples"), velocities)
        if spec.dipole_method == "integrated":
            dd = out["dipole_derivative"]
            steps = 0.5 * spec.timestep * (dd[1:] + dd[:-1])
            local = np.zeros_like(dd)
            np.cumsum(steps, axis=0, out=local[1:])
            out["_dipole_local"] = local
            out["_dd_first"] = dd[0].copy()
            out["_dd_last"] = dd[-1].copy()
    dtype = np.dtype(spec.dtype)
    for key in spec.variables:
        if key in out:
            out[key] = out[key].astype(dtype, copy=False)
    return out


def _frame_threads(model, spec: _ChunkSpec, n_frames: int) -> int:
    """Threads that compute the frames of a chunk concurrently.

    Automatic (``spec.frame_threads == 0``), for models that declare ``concurrent_frames``
    (the kernel models): ``numba.get_num_threads()`` in the main thread (eager runs, ``out=``
    runs on the synchronous scheduler), 1 inside Dask tasks on other threads or workers (they
    parallelise over chunks). Threads need a thread-safe Numba
    threading layer (OpenMP or TBB; with 'workqueue', concurrent kernels would abort the
    process), so with any other layer frames run one after another.
    """
    import numba

    n = spec.frame_threads
    if n == 0:
        if not getattr(model, "concurrent_frames", False):
            return 1
        n = numba.get_num_threads() if threading.current_thread() is threading.main_thread() \
            else 1
    if n < 2 or n_frames < 3:
        return 1
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet: the layer is not chosen
        return 1
    return min(n, n_frames) if layer in ("omp", "tbb") else 1


#: With the automatic number of threads, frames run on concurrent threads only if one frame
#: alone takes at least this long (s). Shorter frames are mostly Python between the kernels,
#: which holds the GIL: for water clusters two threads ran at 0.5-0.8x the speed of one up to
#: 24 atoms (1-2.4 ms per frame) and at 1.2-1.6x from 48 atoms (2.4-11 ms per frame).
MIN_THREADED_FRAME_S = 3e-3


def _model_frames(model, positions, cell, spec, frame0, model_keys, per_frame):
    """All frames of a chunk, on :func:`_frame_threads` threads: each frame is independent
    and its Numba kernels run on one thread (splitting frames parallelises better than
    splitting the atoms of one frame, and gives identical results). With the automatic
    choice, a chunk whose second frame took less than :data:`MIN_THREADED_FRAME_S` runs
    serially."""
    n_frames = positions.shape[0]
    # the first frame alone: compiles or loads the kernels and fixes the threading layer
    _model_frame(model, positions[0], cell[0], spec, frame0, 0, model_keys, per_frame)
    n_threads = _frame_threads(model, spec, n_frames)
    start = 1
    if n_threads > 1 and spec.frame_threads == 0:
        started = perf_counter()
        _model_frame(model, positions[1], cell[1], spec, frame0 + 1, 1, model_keys, per_frame)
        start = 2
        if perf_counter() - started < MIN_THREADED_FRAME_S:
            n_threads = 1
    if n_threads == 1:
        for f in range(start, n_frames):
            _model_frame(model, positions[f], cell[f], spec, frame0 + f, f, model_keys,
                         per_frame)
        return

    def one_frame(f):
        with _numba_threads(1):
            _model_frame(model, positions[f], cell[f], spec, frame0 + f, f, model_keys,
                         per_frame)

    with concurrent.futures.ThreadPoolExecutor(n_threads) as pool:
        futures = [pool.submit(one_frame, f) for f in range(start, n_frames)]
        try:
            for future in futures:  # in frame order: the first bad frame is reported
                future.result()
        finally:
            for future in futures:
                future.cancel()


@contextlib.contextmanager
def _numba_threads(n):
    """Numba kernels called from this thread use ``n`` threads (the setting is per thread)."""
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _model_frame(model, positions, cell, spec, frame, f, model_keys, per_frame):
    """Predict one frame (trajectory index ``frame``) into row ``f`` of ``per_frame``."""
    try:
        result = model.predict_arrays(positions, spec.numbers, cell, spec.pbc,
                                      uncertainty=spec.uncertainty,
                                      **({} if spec.precision == "float64"
                                         else {"precision": spec.precision}))
    except ValueError as exc:
        raise ValueError(f"{spec.source}: frame {frame}: {exc}") from exc
    for key in model_keys:
        if key not in result:
            raise ValueError(
                f"{spec.source}: frame {frame}: {type(model).__name__}.predict_arrays "
                f"returned no {key!r} although the model lists it in its outputs"
            )
        value = np.asarray(result[key], dtype=np.float64)
        if value.shape != per_frame[key].shape[1:]:
            raise ValueError(
                f"{spec.source}: frame {frame}: model output {key!r} has shape "
                f"{value.shape}, expected {per_frame[key].shape[1:]}"
            )
        per_frame[key][f] = value


def _blas_limit(n_threads):
    """Context in which BLAS runs on at most ``n_threads`` threads (None: unchanged).

    Per-frame model matrices have a few hundred rows; a multi-threaded BLAS spends longer
    synchronising than computing (2.5x slower per frame measured on a busy 2-core
    machine), and streaming parallelises over atoms (Numba) and chunks (Dask) already.
    OpenBLAS takes the setting only from the main thread, where it then holds for every
    thread (the threaded Dask scheduler included); distributed workers need
    ``OPENBLAS_NUM_THREADS=1`` in their environment (``numbec predict --workers`` sets
    it). Needs threadpoolctl; without it, a no-op.
    """
    if n_threads is not None:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - optional
            pass
        else:
            return threadpool_limits(limits=int(n_threads), user_api="blas")
    return contextlib.nullcontext()


def _check_finite(array, what, source, frame0):
    bad = ~np.isfinite(array).all(axis=-1)
    if bad.any():
        f, a = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{source}: frame {frame0 + f}: {what} of atom {a} is NaN or inf")


def _dipole_offsets(timestep, local_last, dd_first, dd_last):
    """Running offset of the integrated dipole at the first frame of every chunk.

    ``local_last``, ``dd_first``, ``dd_last``: (C, 3) float64 per chunk (last value of the
    local integral, first and last dipole derivative). Returns (C, 3) float64 with
    ``offset[0] = 0`` and ``offset[c] = offset[c-1] + local_last[c-1]
    + dt/2 (dd_last[c-1] + dd_first[c])`` (the trapezoid across the chunk boundary).
    """
    local_last = np.asarray(local_last, dtype=np.float64).reshape(-1, 3)
    offsets = np.zeros_like(local_last)
    for c in range(1, len(offsets)):
        bridge = 0.5 * timestep * (dd_last[c - 1] + dd_first[c])
        offsets[c] = (offsets[c - 1] + local_last[c - 1]) + bridge
    return offsets


def _integrated_block(local, offsets, c, dtype):
    return (offsets[c] + local).astype(dtype, copy=False)


def _offsets_from_results(timestep, *aux):
    """``aux`` = per chunk (local (F, 3), dd_first (3,), dd_last (3,))."""
    local_last = np.array([a[0][-1] for a in aux])
    dd_first = np.array([a[1] for a in aux])
    dd_last = np.array([a[2] for a in aux])
    return _dipole_offsets(timestep, local_last, dd_first, dd_last)


def _aux(result):
    return result["_dipole_local"], result["_dd_first"], result["_dd_last"]


# ---------------------------------------------------------------------------- inputs
def _open_input(trajectory):
    import xarray as xr

    if isinstance(trajectory, xr.Dataset):
        store = trajectory.attrs.get("store")  # set by open_trajectory
        if store:
            return trajectory, str(store), str(Path(store).resolve())
        source = str(trajectory.attrs.get("source") or trajectory.encoding.get("source")
                     or "<dataset>")
        return trajectory, source, None
    if isinstance(trajectory, (str, os.PathLike)):
        path = Path(trajectory)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such trajectory store")
        try:
            from numbec.io.trajectory import open_trajectory
        except ImportError as exc:  # pragma: no cover - io module not present
            raise ImportError(
                "numbec.io.trajectory.open_trajectory is needed to read trajectory stores"
            ) from exc
        return open_trajectory(path), str(path), str(path.resolve())
    raise TypeError(
        f"trajectory must be a Trajectory store path or an xarray.Dataset, got "
        f"{type(trajectory).__name__}"
    )


def _validate(ds, source):
    for name, dims in (
        ("positions", ("frame", "atom", "xyz")),
        ("cell", ("frame", "cell_vector", "xyz")),
        ("numbers", ("atom",)),
        ("pbc", ("xyz",)),
    ):
        if name not in ds:
            raise ValueError(f"{source}: trajectory has no {name!r} variable")
        if tuple(ds[name].dims) != dims:
            raise ValueError(
                f"{source}: {name!r} has dimensions {tuple(ds[name].dims)}, expected {dims}"
            )
    if "velocities" in ds and tuple(ds["velocities"].dims) != ("frame", "atom", "xyz"):
        raise ValueError(f"{source}: 'velocities' has dimensions {ds['velocities'].dims}")
    if ds.sizes["xyz"] != 3 or ds.sizes["cell_vector"] != 3:
        raise ValueError(f"{source}: dimensions xyz and cell_vector must have size 3")
    if ds.sizes["frame"] == 0:
        raise ValueError(f"{source}: trajectory has no frames")


def _timestep(ds, source):
    """Time step in fs from attrs, else from a uniform ``time`` coordinate; nan if unknown."""
    dt = ds.attrs.get("timestep")
    if dt is not None and np.isfinite(float(dt)) and float(dt) > 0:
        return float(dt)
    if "time" in ds.coords and ds.sizes["frame"] > 1:
        diffs = np.diff(np.asarray(ds["time"].values, dtype=np.float64))
        if diffs.size and np.allclose(diffs, diffs[0], rtol=1e-9) and diffs[0] > 0:
            return float(diffs[0])
    return float("nan")


def _check_species(model, numbers, source):
    known = set(getattr(model, "species", ()))
    if not known:
        return
    unknown = [(a, int(z)) for a, z in enumerate(numbers.tolist()) if z not in known]
    if unknown:
        from ase.data import chemical_symbols

        from numbec.models.base import UnknownSpeciesError

        a, z = unknown[0]
        trained = ", ".join(chemical_symbols[s] for s in sorted(known))
        raise UnknownSpeciesError(
            f"{source}: frame 0: atom {a} is {chemical_symbols[z]} (Z={z}), a species "
            f"{type(model).__name__} was not trained on (it knows {trained}); "
            f"{len(unknown)} atom(s) affected in every frame"
        )


def _frame_bounds(n_frames, chunks):
    edges = np.concatenate([[0], np.cumsum(chunks)])
    return [(int(edges[i]), int(edges[i + 1])) for i in range(len(chunks))]


def _choose_chunks(ds, chunk_frames, n_atoms):
    n_frames = ds.sizes["frame"]
    if chunk_frames is None:
        data = ds["positions"].data
        if hasattr(data, "chunks") and not isinstance(data, np.ndarray):
            chunk_frames = int(data.chunks[0][0])
        else:
            chunk_frames = max(1, min(1000, 2_000_000 // (9 * n_atoms)))
    chunk_frames = int(chunk_frames)
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    n_full, rest = divmod(n_frames, chunk_frames)
    chunks = [chunk_frames] * n_full + ([rest] if rest else [])
    return chunk_frames, chunks


def _sha256_arrays(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.data)  # the buffer itself: tobytes() would copy it first
    return h.hexdigest()


def model_fingerprint(model) -> dict:
    """Class name and SHA-256 of a model's saved state (metadata JSON and arrays)."""
    try:
        metadata, arrays = model._state()
    except (AttributeError, NotImplementedError):
        return {"class": type(model).__name__, "sha256": None}
    h = hashlib.sha256(json.dumps(metadata, sort_keys=True, default=str).encode())
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(_sha256_arrays(np.asarray(arrays[name])).encode())
    return {"class": type(model).__name__, "sha256": h.hexdigest()}


# ---------------------------------------------------------------------------- the API
def predict(
    model,
    trajectory,
    out=None,
    chunk_frames=None,
    progress=True,
    dtype=np.float64,
    uncertainty=False,
    dipole_derivative=None,
    model_file=None,
    blas_threads=1,
    threads=None,
    precision="float64",
    posterior_samples=0,
    uncertainty_rank=None,
    seed=0,
):
    """Predict BECs (and dipole derivatives) for every frame of a trajectory.

    Parameters
    ----------
    model : BECModel, or str or Path
        Any model of the :mod:`numbec.models.base` protocol, or a saved model file
        (read with :func:`numbec.models.load_model`; its path becomes ``model_file``).
    trajectory : str, Path or xarray.Dataset
        A Trajectory store (opened with :func:`numbec.open_trajectory`) or a dataset in
        its layout: ``positions`` (frame, atom, xyz) Å, ``cell`` (frame, cell_vector,
        xyz) Å, ``numbers`` (atom), ``pbc`` (xyz), optional ``velocities`` (frame, atom,
        xyz) Å/fs, coordinate ``time`` (frame) fs, ``attrs["timestep"]`` fs.
    out : str or Path, optional
        Zarr v3 store to write. Written chunk by chunk; a chunk counts as done only after
        all its data are written and flushed (``_progress/chunks_done``). A run killed at
        any point and started again computes only the unfinished chunks. A lock file
        ``<out>.lock`` (pid, host, time) makes a second concurrent run refuse
        (:class:`OutputLockedError`); a lock of a dead process on the same host is
        removed with a warning. Resuming into a store made by another model, input or
        settings raises :class:`OutputMismatchError`.
    chunk_frames : int, optional
        Frames per chunk. Default: the input's frame chunks (dask-backed), else
        ``min(1000, 2e6 / (9 N))``. Peak memory is proportional to it.
    progress : bool
        tqdm progress bar over chunks (eager and ``out`` runs).
    dtype : numpy dtype
        Storage dtype of the outputs (float64 or float32); computation is float64 unless
        ``precision`` says otherwise.
    uncertainty : bool
        Also predict ``bec_std`` (the model must list it in ``model.outputs``).
    dipole_derivative : bool, optional
        None (default): computed when the trajectory has velocities, otherwise omitted
        with a warning. True: required (error without velocities). False: skipped.
    blas_threads : int or None
        Threads of the BLAS library (numpy's matrix products) while ``predict`` computes,
        default 1: per-frame matrices are too small for threaded BLAS to pay off, and the
        parallelism is over atoms (Numba, ``NUMBA_NUM_THREADS``) and chunks (Dask
        workers). None leaves the BLAS setting alone. Applies to what runs inside this
        call (eager and ``out=`` runs on local schedulers), not to a lazy result computed
        later nor to distributed workers (set ``OPENBLAS_NUM_THREADS=1`` there). Needs
        threadpoolctl (else ignored).
    threads : int, optional
        Frames of a chunk computed concurrently, each with its Numba kernels on one thread
        (frames are independent: this parallelises better than the atoms of one frame, and
        the results are the same). Default: for models with ``concurrent_frames`` (the kernel
        models), ``numba.get_num_threads()`` (set by ``NUMBA_NUM_THREADS``) when the chunk is
        computed in the main thread (eager and ``out=`` runs on the synchronous scheduler), 1
        inside Dask tasks elsewhere (those parallelise over chunks); 1 for other models; and
        1 for a chunk whose second frame took less than 3 ms (``MIN_THREADED_FRAME_S``: small
        molecules, where two threads were slower than one).
        Needs Numba's OpenMP or TBB threading layer (the usual ones); with the 'workqueue'
        fallback frames run one after another.
    model_file : str or Path, optional
        Where the model was loaded from, recorded in the provenance attribute
        ``model_file`` (the model itself is identified by ``model_sha256``, the hash of its
        state, which is what resuming checks). Set automatically when ``model`` is a path.
    precision : {"float64", "mixed"}
        Arithmetic of the model's prediction, one of ``model.precisions``. "float64" (default):
        everything in double precision. "mixed" (models with a dipole kernel: DipoleModel,
        CombinedModel): the dipole kernel's large matrix products in float32, the rest in
        float64; about 15 % faster for the combined model on quartz, BECs within 2e-5 e of
        float64 there and charges identical (docs/streaming.md). Recorded in the attribute
        ``precision``; resuming checks it.
    posterior_samples : int
        S > 0 (kernel models): also ``dipole_derivative_samples`` (frame, sample, pol)
        e·Å/fs, dM/dt of S weight vectors drawn once (``seed``) from the model's recalibrated
        posterior, the same for every frame; :func:`numbec.ir_spectrum` turns them into a
        model-uncertainty band. Computed as extra adjoint channels of the same descriptor pass
        through a rank-``uncertainty_rank`` factor of the posterior (default 32;
        :mod:`numbec.models.uncertainty`). Needs velocities; float64 precision.
    uncertainty_rank : int, optional
        Compute ``bec_std`` (with ``uncertainty=True``) and the samples from the leading K
        directions of the posterior (adjoint channels) instead of the design rows: much
        cheaper than the exact ``bec_std``, accurate to a few % per frame (docs/models.md).
    seed : int
        Seed of the posterior samples.

    Returns
    -------
    xarray.Dataset
        The Prediction dataset (see the module docstring): lazy for a dask-backed input
        without ``out``, in memory for an in-memory input, opened from ``out`` otherwise.
    """
    if isinstance(model, (str, os.PathLike)):
        from numbec.models.base import load_model

        model_file = model if model_file is None else model_file
        model = load_model(model)
    if posterior_samples or uncertainty_rank:
        from numbec.models.uncertainty import StreamedUncertaintyModel

        model = StreamedUncertaintyModel(model, rank=uncertainty_rank or 32,
                                         n_samples=int(posterior_samples), seed=seed)
    ds, source, store_path = _open_input(trajectory)
    _validate(ds, source)
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise ValueError(f"dtype must be float64 or float32, got {dtype}")

    numbers = np.asarray(ds["numbers"].values, dtype=np.int64)
    pbc = np.asarray(ds["pbc"].values, dtype=bool).reshape(3)
    periodic = bool(pbc.any())
    n_frames, n_atoms = ds.sizes["frame"], ds.sizes["atom"]
    _check_species(model, numbers, source)
    model_precisions = tuple(getattr(model, "precisions", ("float64",)))
    if precision not in model_precisions:
        raise ValueError(f"precision={precision!r}: {type(model).__name__} offers "
                         f"{', '.join(model_precisions)}")

    has_velocities = "velocities" in ds
    if dipole_derivative is None:
        want_dd = has_velocities
        if not has_velocities:
            warnings.warn(
                f"{source}: trajectory has no velocities; dipole_derivative (and the "
                "dipole of periodic systems) omitted",
                stacklevel=2,
            )
    elif dipole_derivative:
        if not has_velocities:
            raise ValueError(
                f"{source}: dipole_derivative needs velocities, the trajectory has none "
                "(convert it with velocities)"
            )
        want_dd = True
    else:
        want_dd = False
    if posterior_samples and not want_dd:
        raise ValueError(f"{source}: posterior_samples need dM/dt, i.e. velocities and "
                         "dipole_derivative not False")
    variables, dipole_method = _plan_variables(model, has_velocities, want_dd, periodic,
                                               uncertainty)
    timestep = _timestep(ds, source)
    if not np.isfinite(timestep) and (n_frames > 1 or dipole_method == "integrated"):
        raise ValueError(
            f"{source}: no timestep (attrs['timestep'] in fs, or a uniform 'time' "
            "coordinate); set it when converting the trajectory"
        )

    chunk_frames, chunks = _choose_chunks(ds, chunk_frames, n_atoms)
    bounds = _frame_bounds(n_frames, chunks)
    species = np.unique(numbers)
    spec = _ChunkSpec(
        source=source, numbers=numbers, pbc=pbc, species=species, variables=variables,
        dipole_method=dipole_method, timestep=timestep, uncertainty=bool(uncertainty),
        dtype=dtype.str, frame_threads=_check_threads(threads), precision=precision,
        n_samples=int(posterior_samples),
    )
    if "time" in ds.coords:
        time = np.asarray(ds["time"].values, dtype=np.float64)
    else:
        time = np.arange(n_frames) * (timestep if np.isfinite(timestep) else 1.0)

    # hashed once per call (the state of a learned model is megabytes)
    model_fp = model_fingerprint(model)
    attrs = _dataset_attrs(ds, model, model_fp, source, store_path, timestep, pbc,
                           dipole_method, uncertainty, dtype, precision)
    attrs["model_file"] = str(model_file) if model_file is not None else ""
    if posterior_samples or uncertainty_rank:
        attrs.update(posterior_samples=int(posterior_samples), seed=int(seed),
                     uncertainty_rank=int(uncertainty_rank or 32))
    blocks = _InputBlocks(ds, chunks, has_velocities and want_dd)
    if out is not None:
        fingerprint = _fingerprint(model_fp, ds, source, store_path, spec, chunk_frames,
                                   n_frames, n_atoms, blocks)
        attrs["fingerprint"] = json.dumps(fingerprint, sort_keys=True)
        with _blas_limit(blas_threads):
            return _predict_to_store(model, blocks, spec, bounds, chunk_frames, time, attrs,
                                     Path(out), fingerprint, progress)
    if blocks.lazy:
        return _predict_lazy(model, blocks, spec, bounds, time, attrs)
    with _blas_limit(blas_threads):
        return _predict_eager(model, blocks, spec, bounds, time, attrs, progress)


def _check_threads(threads) -> int:
    if threads is None:
        return 0
    if int(threads) != threads or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    return int(threads)


def _dataset_attrs(ds, model, model_fp, source, store_path, timestep, pbc, dipole_method,
                   uncertainty, dtype, precision="float64"):
    from numbec import __version__

    attrs = {
        "format": PREDICTION_FORMAT,
        "format_version": PREDICTION_FORMAT_VERSION,
        "bec_convention": BEC_CONVENTION,
        "timestep": timestep,
        "timestep_units": "fs",
        "numbec_version": __version__,
        "model_class": getattr(model, "class_name", type(model).__name__),
        "model_sha256": model_fp["sha256"] or "",
        "input": store_path or source,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "pbc": [bool(p) for p in pbc],
        "uncertainty": bool(uncertainty),
        "storage_dtype": dtype.name,
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
    if bool(np.all(pbc)):
        cell = ds["cell"].data
        volumes = np.abs(np.linalg.det(np.asarray(cell.compute() if hasattr(cell, "compute")
                                                  else cell, dtype=np.float64)))
        attrs["volume"] = float(volumes.mean())
        attrs["volume_units"] = "Angstrom^3"
    if "velocities" in ds:
        attrs["velocities_source"] = str(ds.attrs.get("velocities_source", "trajectory"))
    if "temperature" in ds.attrs:
        attrs["temperature"] = float(ds.attrs["temperature"])
        attrs["temperature_units"] = "K"
    return attrs


class _InputBlocks:
    """Per-chunk access to positions, cell and velocities (numpy slices or dask delayed)."""

    def __init__(self, ds, chunks, with_velocities):
        self.names = ["positions", "cell"] + (["velocities"] if with_velocities else [])
        self.lazy = any(_is_dask(ds[name].data) for name in self.names)
        self.ds = ds
        self.chunks = chunks
        self._delayed = None
        self.dask_names = []
        if self.lazy:
            import dask.array as da

            self._delayed = {}
            for name in self.names:
                data = ds[name].data
                if not _is_dask(data):
                    data = da.from_array(np.asarray(data), chunks=(tuple(chunks), -1, -1))
                data = data.rechunk((tuple(chunks), -1, -1))
                self.dask_names.append(data.name)
                self._delayed[name] = list(data.to_delayed().ravel())
        self.with_velocities = with_velocities

    def numpy(self, c, start, stop):
        """(positions, cell, velocities or None) of chunk ``c`` as numpy arrays."""
        if self.lazy:
            import dask

            values = dask.compute(*(self._delayed[n][c] for n in self.names),
                                  scheduler="synchronous")
        else:
            values = [np.asarray(self.ds[n].values[start:stop]) for n in self.names]
        return values[0], values[1], (values[2] if self.with_velocities else None)

    def delayed(self, c):
        d = self._delayed
        return d["positions"][c], d["cell"][c], (d["velocities"][c] if self.with_velocities
                                                 else None)

    def first_last_frames(self):
        n = self.ds.sizes["frame"]
        pos = self.ds["positions"]
        return np.asarray(pos[0].values), np.asarray(pos[n - 1].values)


def _is_dask(data):
    return type(data).__module__.startswith("dask")


def _fingerprint(model_fp, ds, source, store_path, spec, chunk_frames, n_frames, n_atoms,
                 blocks):
    first, last = blocks.first_last_frames()
    return {
        "model": model_fp,
        "input": store_path or source,
        "n_frames": int(n_frames),
        "n_atoms": int(n_atoms),
        "numbers_positions_sha256": _sha256_arrays(spec.numbers, first, last),
        "timestep": spec.timestep if np.isfinite(spec.timestep) else None,
        "chunk_frames": int(chunk_frames),
        "variables": list(spec.variables),
        "velocities_source": ds.attrs.get("velocities_source", "trajectory"),
        "dtype": spec.dtype,
        "uncertainty": spec.uncertainty,
        **({} if spec.precision == "float64" else {"precision": spec.precision}),
    }


def _make_dataset(arrays, spec, time, attrs):
    import xarray as xr

    data_vars = {}
    for name in spec.variables:
        dims, units, description = VARIABLES[name]
        data_vars[name] = xr.Variable(dims, arrays[name],
                                      attrs={"units": units, "long_name": description})
    coords = {"time": ("frame", time, {"units": "fs"})}
    if "dipole_derivative_by_species" in spec.variables:
        coords["species"] = ("species", spec.species, {"long_name": "atomic number"})
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _predict_eager(model, blocks, spec, bounds, time, attrs, progress):
    from tqdm.auto import tqdm

    results = []
    with tqdm(total=len(bounds), desc="numbec predict", unit="chunk",
              disable=not progress) as bar:
        for c, (start, stop) in enumerate(bounds):
            positions, cell, velocities = blocks.numpy(c, start, stop)
            results.append(_predict_chunk(model, positions, cell, velocities, spec, start))
            bar.update()
    arrays = {name: np.concatenate([r[name] for r in results]) for name in spec.variables
              if name != "dipole" or spec.dipole_method == "model"}
    if spec.dipole_method == "integrated":
        offsets = _offsets_from_results(spec.timestep, *(_aux(r) for r in results))
        arrays["dipole"] = np.concatenate([
            _integrated_block(r["_dipole_local"], offsets, c, spec.dtype)
            for c, r in enumerate(results)
        ])
    return _make_dataset(arrays, spec, time, attrs)


def _graph_token(spec, blocks, model_token):
    payload = json.dumps([blocks.dask_names, model_token, list(spec.variables), spec.dtype,
                          spec.uncertainty, spec.timestep, spec.precision], default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _model_node(model, model_sha256):
    """The model as one node of the Dask graph, so it is shipped to each worker once
    (``model_sha256``: its fingerprint, "" if it has none)."""
    import dask

    token = model_sha256 or f"{id(model):x}"
    return dask.delayed(model, name=f"numbec-model-{token}", traverse=False), token


def _predict_lazy(model, blocks, spec, bounds, time, attrs):
    import dask
    import dask.array as da

    model_node, model_token = _model_node(model, attrs["model_sha256"])
    token = _graph_token(spec, blocks, model_token)
    chunk_task = dask.delayed(_predict_chunk, pure=True)
    getitem = dask.delayed(operator.getitem, pure=True)
    results = []
    for c, (start, _stop) in enumerate(bounds):
        positions, cell, velocities = blocks.delayed(c)
        results.append(chunk_task(model_node, positions, cell, velocities, spec, start,
                                  dask_key_name=f"numbec-predict-{token}-{c}"))
    n_atoms, n_species = spec.numbers.size, spec.species.size
    tails = {"atom": n_atoms, "pol": 3, "disp": 3, "species": n_species,
             "sample": spec.n_samples}
    arrays = {}
    for name in spec.variables:
        if name == "dipole" and spec.dipole_method == "integrated":
            continue
        tail = tuple(tails[d] for d in VARIABLES[name][0][1:])
        arrays[name] = da.concatenate([
            da.from_delayed(getitem(r, name), shape=(stop - start,) + tail, dtype=spec.dtype)
            for r, (start, stop) in zip(results, bounds, strict=True)
        ])
    if spec.dipole_method == "integrated":
        aux = [dask.delayed(_aux, pure=True)(r) for r in results]
        offsets = dask.delayed(_offsets_from_results, pure=True)(spec.timestep, *aux)
        block = dask.delayed(_integrated_block, pure=True)
        arrays["dipole"] = da.concatenate([
            da.from_delayed(block(getitem(r, "_dipole_local"), offsets, c, spec.dtype),
                            shape=(stop - start, 3), dtype=spec.dtype)
            for c, (r, (start, stop)) in enumerate(zip(results, bounds, strict=True))
        ])
    return _make_dataset(arrays, spec, time, attrs)


# ---------------------------------------------------------------------------- output store
_LOCK_SUFFIX = ".lock"


def _lock_path(out: Path) -> Path:
    return out.with_name(out.name + _LOCK_SUFFIX)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def output_lock(out: Path):
    """Hold ``<out>.lock`` (created with O_EXCL) for the duration of a run.

    Raises :class:`OutputLockedError` if a live process holds it; removes (with a
    warning) a lock left by a dead process on this host.
    """
    lock = _lock_path(out)
    lock.parent.mkdir(parents=True, exist_ok=True)
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    for _attempt in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                holder = {}
            pid, host = holder.get("pid"), holder.get("host")
            if host == info["host"] and isinstance(pid, int) and not _pid_alive(pid):
                warnings.warn(f"{lock}: removing stale lock of dead process {pid}")
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            raise OutputLockedError(
                f"{out} is being written by another numbec predict run (pid {pid} on host "
                f"{host} since {holder.get('started')}); wait for it to finish, or delete "
                f"{lock} if that run is dead"
            ) from None
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh)
        break
    else:  # pragma: no cover - the stale lock reappeared
        raise OutputLockedError(f"{out}: could not take the lock {lock}")
    try:
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def _open_existing(out: Path, fingerprint):
    """Return the zarr group of a resumable store, or None if a new one must be made."""
    import zarr

    if not out.exists() or not any(out.iterdir()):
        return None
    try:
        root = zarr.open_group(str(out), mode="r+", zarr_format=3)
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
    if not attrs.get("initialised"):
        return None  # a run died while creating the layout: no chunk can be done yet
    stored = json.loads(attrs.get("fingerprint", "{}"))
    if stored != fingerprint:
        keys = sorted(k for k in set(stored) | set(fingerprint)
                      if stored.get(k) != fingerprint.get(k))
        raise OutputMismatchError(
            f"{out} was made by another model, input or settings (differs in: "
            f"{', '.join(keys)}); it cannot be resumed. Delete it or choose another output"
        )
    return root


def _create_store(out, spec, chunk_frames, n_chunks, time, attrs):
    import dask.array as da
    import xarray as xr
    import zarr

    n_frames = time.size
    tails = {"atom": spec.numbers.size, "pol": 3, "disp": 3, "species": spec.species.size,
             "sample": spec.n_samples}
    data_vars = {}
    for name in spec.variables:
        dims, units, description = VARIABLES[name]
        shape = (n_frames,) + tuple(tails[d] for d in dims[1:])
        chunks = (chunk_frames,) + shape[1:]
        data = da.zeros(shape, chunks=chunks, dtype=spec.dtype)
        data_vars[name] = xr.Variable(dims, data, attrs={"units": units,
                                                          "long_name": description})
    coords = {"time": ("frame", time, {"units": "fs"})}
    if "dipole_derivative_by_species" in spec.variables:
        coords["species"] = ("species", spec.species, {"long_name": "atomic number"})
    attrs = dict(attrs, initialised=False, complete=False)
    # the format attribute goes first, so that a run killed while laying out the store
    # finds a store it recognises as its own and simply lays it out again
    zarr.open_group(str(out), mode="w", zarr_format=3, attributes=attrs)
    template = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    template.to_zarr(str(out), mode="a", compute=False, zarr_format=3, consolidated=False)
    root = zarr.open_group(str(out), mode="r+", zarr_format=3)
    progress = root.create_group(PROGRESS_GROUP)
    progress.create_array("chunks_done", shape=(n_chunks,), chunks=(1,), dtype=bool,
                          fill_value=False)
    if spec.dipole_method == "integrated":
        progress.create_array("dipole_local", shape=(n_frames, 3), chunks=(chunk_frames, 3),
                              dtype=np.float64, fill_value=np.nan)
        for name in ("dd_first", "dd_last"):
            progress.create_array(name, shape=(n_chunks, 3), chunks=(1, 3),
                                  dtype=np.float64, fill_value=np.nan)
    root.attrs["initialised"] = True
    return root


def _fsync_tree(path: Path):
    """Flush every file under ``path`` to disk (no-op if it does not exist)."""
    if not path.exists():
        return
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _write_chunk(out: str, spec: _ChunkSpec, c: int, start: int, stop: int, result: dict):
    """Write chunk ``c`` of every variable, flush it, and only then mark it done."""
    import zarr

    root = zarr.open_group(out, mode="r+", zarr_format=3)
    progress = root[PROGRESS_GROUP]
    for name in spec.variables:
        if name == "dipole" and spec.dipole_method == "integrated":
            continue  # written by the final integration pass
        root[name][start:stop] = result[name]
    if spec.dipole_method == "integrated":
        progress["dipole_local"][start:stop] = result["_dipole_local"]
        progress["dd_first"][c] = result["_dd_first"]
        progress["dd_last"][c] = result["_dd_last"]
    base = Path(out)
    for name in spec.variables:
        _fsync_tree(base / name / "c" / str(c))
    for name in ("dipole_local", "dd_first", "dd_last"):
        _fsync_tree(base / PROGRESS_GROUP / name / "c" / str(c))
    progress["chunks_done"][c] = True
    _fsync_tree(base / PROGRESS_GROUP / "chunks_done" / "c" / str(c))


def _compute_and_write(model, positions, cell, velocities, spec, c, start, stop, out):
    result = _predict_chunk(model, positions, cell, velocities, spec, start)
    _write_chunk(out, spec, c, start, stop, result)
    return c


def _chunks_done(root, n_chunks) -> np.ndarray:
    """Completion flags; a flag whose chunk cannot be read counts as not done."""
    array = root[PROGRESS_GROUP]["chunks_done"]
    try:
        return np.asarray(array[:], dtype=bool)
    except Exception:  # noqa: BLE001 - a damaged flag chunk: check one by one
        done = np.zeros(n_chunks, dtype=bool)
        for c in range(n_chunks):
            with contextlib.suppress(Exception):
                done[c] = bool(array[c])
        return done


def _predict_to_store(model, blocks, spec, bounds, chunk_frames, time, attrs, out,
                      fingerprint, progress):
    import xarray as xr

    n_chunks = len(bounds)
    with output_lock(out):
        root = _open_existing(out, fingerprint)
        if root is None:
            root = _create_store(out, spec, chunk_frames, n_chunks, time, attrs)
        done = _chunks_done(root, n_chunks)
        pending = [c for c in range(n_chunks) if not done[c]]
        if pending:
            if blocks.lazy:
                _run_lazy_chunks(model, attrs["model_sha256"], blocks, spec, bounds, pending,
                                 out, progress)
            else:
                _run_eager_chunks(model, blocks, spec, bounds, pending, out, progress,
                                  n_chunks)
        if spec.dipole_method == "integrated":
            _integrate_stored_dipole(root, spec, bounds)
        root.attrs["complete"] = True
        _consolidate(out)
    return xr.open_zarr(str(out), consolidated=True, zarr_format=3)


def _consolidate(out: Path):
    """Consolidate the metadata of a finished store so that readers open it in one read
    (``xarray.open_zarr(out)`` without warnings). Zarr v3 has no consolidated metadata in
    its specification yet; zarr-python's extension is used and its warning silenced."""
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(out))


def _run_eager_chunks(model, blocks, spec, bounds, pending, out, progress, n_chunks):
    from tqdm.auto import tqdm

    with tqdm(total=n_chunks, initial=n_chunks - len(pending), desc="numbec predict",
              unit="chunk", disable=not progress) as bar:
        for c in pending:
            start, stop = bounds[c]
            positions, cell, velocities = blocks.numpy(c, start, stop)
            _compute_and_write(model, positions, cell, velocities, spec, c, start, stop,
                               str(out))
            bar.update()


def _run_lazy_chunks(model, model_sha256, blocks, spec, bounds, pending, out, progress):
    import dask
    from tqdm.auto import tqdm

    model_node, model_token = _model_node(model, model_sha256)
    token = _graph_token(spec, blocks, model_token)
    task = dask.delayed(_compute_and_write, pure=True)
    tasks = []
    for c in pending:
        start, stop = bounds[c]
        positions, cell, velocities = blocks.delayed(c)
        tasks.append(task(model_node, positions, cell, velocities, spec, c, start, stop,
                          str(out), dask_key_name=f"numbec-write-{token}-{c}"))
    n_chunks = len(bounds)
    with tqdm(total=n_chunks, initial=n_chunks - len(pending), desc="numbec predict",
              unit="chunk", disable=not progress) as bar:
        client = _distributed_client()
        if client is not None:
            from distributed import as_completed

            futures = client.compute(tasks)
            try:
                for future in as_completed(futures):
                    future.result()
                    bar.update()
            except BaseException:
                client.cancel(futures)
                raise
        else:
            from dask.callbacks import Callback

            keys = {t.key for t in tasks}

            class _Bar(Callback):
                def _posttask(self, key, result, dsk, state, worker_id):
                    if key in keys:
                        bar.update()

            with _Bar():
                dask.compute(*tasks)


def _distributed_client():
    """The active dask.distributed client, if any."""
    try:
        from distributed import get_client
    except ImportError:  # pragma: no cover
        return None
    import dask

    if dask.config.get("scheduler", None) not in (None, "dask.distributed", "distributed"):
        return None
    try:
        return get_client()
    except ValueError:
        return None


def _integrate_stored_dipole(root, spec, bounds):
    """Write ``dipole`` from the stored local integrals and per-chunk boundary values.

    Idempotent (it only reads ``_progress`` and overwrites ``dipole``), so a run killed
    here simply repeats it.
    """
    progress = root[PROGRESS_GROUP]
    local = progress["dipole_local"]
    local_last = np.array([local[stop - 1] for _start, stop in bounds])
    offsets = _dipole_offsets(spec.timestep, local_last, progress["dd_first"][:],
                              progress["dd_last"][:])
    dipole = root["dipole"]
    for c, (start, stop) in enumerate(bounds):
        dipole[start:stop] = _integrated_block(local[start:stop], offsets, c, spec.dtype)
