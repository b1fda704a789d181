"""Streaming BEC prediction over long MD trajectories: plan, chunk tasks, combine.

:func:`predict` applies a :class:`numbec.models.base.BECModel` frame by frame to a
trajectory (a Trajectory store path or an :class:`xarray.Dataset` in its layout) and
returns the *Prediction dataset* (stored layout and resume rules:
:mod:`numbec.io.prediction`):

``bec`` (frame, atom, pol, disp), e
    Canonical BECs ``Z[f, a, i, j] = dP_i / dr_{a,j}`` of every frame.
``charges`` (frame, atom), e; ``bec_monopole``, ``bec_dipole``, ``bec_std``
    When the model provides them (``bec_std`` with ``uncertainty=True``).
``charge_std`` (frame, atom), e; ``local_dipole_std`` (frame, atom), e·Å
    Kernel models with ``atom_std=True``: the exact posterior standard deviations of each
    atom's charge and local dipole (:mod:`numbec.models.atom_std`).
``dipole_derivative`` (frame, pol), e·Å/fs
    ``dM_i/dt = sum_a sum_j Z[f, a, i, j] v[f, a, j]`` (needs velocities).
``dipole_derivative_by_species`` (frame, species, pol), e·Å/fs
    The same sum restricted to the atoms of each species (coordinate ``species`` =
    atomic numbers); the parts sum to ``dipole_derivative``.
``dipole_derivative_monopole``, ``dipole_derivative_dipole`` (frame, pol), e·Å/fs
    The partition of a combined model (from ``bec_monopole`` / ``bec_dipole``).
``dipole_derivative_samples`` (frame, sample, pol), ``dipole_derivative_by_species_samples``
(frame, sample, species, pol), ``dipole_derivative_std`` (frame, pol), e·Å/fs
    Kernel models with ``posterior_samples=S`` (the std also with ``uncertainty=True``): dM/dt
    of S full-posterior weight samples, total and per species, and its exact epistemic
    standard deviation, in forward mode (:mod:`numbec.models.forward_mode`).
``dipole`` (frame, pol), e·Å
    Non-periodic systems whose model defines a dipole: the model's dipole.
    Periodic cells (or models without a dipole): the time integral of
    ``dipole_derivative`` by the trapezoid rule, starting at 0 at frame 0. It is
    continuous across the polarisation quantum (an atom wrapped back into the cell
    does not make it jump) and defined up to a constant; ``attrs["dipole_method"]``
    says which of the two it is.

How it runs: plan -> chunk tasks -> combine
-------------------------------------------
1. **Plan** (:func:`_make_plan`): variables, frame chunks, time step, attributes.
2. **Chunk task** (:func:`predict_chunk`): the frames of one chunk, under the thread
   policy of :mod:`numbec.parallel` whatever runs it. Besides the variables it returns the
   chunk's *integration record*: its local trapezoid integral of ``dipole_derivative`` (0
   at its first frame) and its first and last ``dipole_derivative``.
3. **Executor**, chosen once: a dask-backed input without ``out`` gives a lazy result (one
   graph task per chunk, on any Dask scheduler; the model is one node of the graph, so it
   travels to each worker once); otherwise the chunks run in this process, one after
   another or on a thread pool, or on the active ``distributed`` client
   (:func:`numbec.parallel.chunk_executor_kind`), into memory or into the ``out`` store.
4. **Combine**: the integrated dipole of chunk ``c`` is its local integral plus an offset
   that depends only on the integration records of chunks ``0..c``
   (:func:`numbec.io.prediction.next_offset`, a float64 pass over a few numbers per chunk).
   Lazily the offsets form a chain of tiny tasks, so selecting frames computes only the
   chunks up to the last one selected. Lazy, eager and stored results use the same
   arithmetic and agree bit for bit.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import operator
import os
import sys
import uuid
from pathlib import Path
from time import perf_counter

import numpy as np

from numbec import parallel
from numbec._heap import keep_freed_memory
from numbec.conventions import first_non_finite
from numbec.io import prediction as store_format
from numbec.io._files import consolidate, naming_disk_full
from numbec.io.prediction import (
    VARIABLES,
    OutputLockedError,
    OutputMismatchError,
    model_fingerprint,
)
from numbec.parallel import MIN_THREADED_FRAME_S

__all__ = [
    "MIN_THREADED_FRAME_S",
    "OutputLockedError",
    "OutputMismatchError",
    "VARIABLES",
    "default_chunk_frames",
    "model_fingerprint",
    "predict",
    "predict_chunk",
    "species_sums",
]


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
    frame_threads: int = 0  # frames computed concurrently; 0: automatic
    blas_threads: int | None = 1  # BLAS threads inside the task (None: unchanged)
    n_samples: int = 0  # posterior weight samples (numbec.models.uncertainty)
    total_charge: float = 0.0  # e, passed to the model when non-zero
    atom_std: bool = False  # per-atom charge_std / local_dipole_std (numbec.models.atom_std)
    call_id: str = ""  # one predict call: its chunks share the way batches run (_BATCH_MODES)
    call_frames: int = 0  # frames of the whole call

    @property
    def integrated_dipole(self) -> bool:
        return self.dipole_method == "integrated"


@dataclasses.dataclass
class _Plan:
    spec: _ChunkSpec
    chunk_frames: int
    bounds: list  # [(start, stop)] frames of each chunk
    time: np.ndarray  # (F,) fs
    attrs: dict
    inputs: _InputChunks
    model_fp: dict  # model_fingerprint(model)


def _model_outputs(model) -> tuple:
    return tuple(getattr(model, "outputs", ("bec",)))


def _plan_variables(model, want_dd, periodic, uncertainty, atom_std=False):
    outputs = _model_outputs(model)
    names = ["bec"]
    if atom_std:
        per_atom = [k for k in ("charge_std", "local_dipole_std") if k in outputs]
        if not per_atom:
            raise ValueError(
                f"{getattr(model, 'class_name', type(model).__name__)} has no per-atom "
                f"posterior std (its outputs are {outputs}); atom_std needs a kernel model "
                "with a posterior covariance")
        names += per_atom
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
    if "asr_violation" in outputs:
        names.append("asr_violation")
    if want_dd:
        names += ["dipole_derivative", "dipole_derivative_by_species"]
        if combined:
            names += ["dipole_derivative_monopole", "dipole_derivative_dipole"]
        if "bec_samples" in outputs:
            names.append("dipole_derivative_samples")
        # forward-mode dM/dt uncertainty (numbec.models.forward_mode)
        names += [k for k in ("dipole_derivative_std", "dipole_derivative_samples",
                              "dipole_derivative_by_species_samples")
                  if k in outputs and k not in names]
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


def default_chunk_frames(n_atoms: int) -> int:
    """Frames per chunk of an in-memory trajectory: about 2e6 BEC components (16 MB of
    float64 BECs), at most 1000 frames."""
    return max(1, min(1000, 2_000_000 // (9 * n_atoms)))


def _choose_chunks(ds, chunk_frames, n_atoms):
    n_frames = ds.sizes["frame"]
    if chunk_frames is None:
        data = ds["positions"].data
        if hasattr(data, "chunks") and not isinstance(data, np.ndarray):
            chunk_frames = int(data.chunks[0][0])
        else:
            chunk_frames = default_chunk_frames(n_atoms)
    chunk_frames = int(chunk_frames)
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    n_full, rest = divmod(n_frames, chunk_frames)
    chunks = [chunk_frames] * n_full + ([rest] if rest else [])
    edges = np.concatenate([[0], np.cumsum(chunks)])
    bounds = [(int(edges[i]), int(edges[i + 1])) for i in range(len(chunks))]
    return chunk_frames, chunks, bounds


# ---------------------------------------------------------------------------- chunk task
def predict_chunk(model, positions, cell, velocities, spec: _ChunkSpec, frame0: int,
                  on_frame=None) -> dict:
    """Predict frames ``frame0 .. frame0 + F - 1``: the task of one chunk.

    Parameters
    ----------
    positions : (F, N, 3) float64, Å.   cell : (F, 3, 3) float64, Å, rows = lattice vectors.
    velocities : (F, N, 3) float64, Å/fs, or None.
    on_frame : callable, optional
        Called once per finished frame (progress), from the thread that computed it.

    Returns a dict of the output variables (cast to ``spec.dtype``) and, for the
    integrated dipole, the chunk's integration record: float64 ``dipole_local`` (F, 3)
    (trapezoid integral from the chunk's first frame), ``dd_first``/``dd_last`` (3,)
    (first/last dipole derivative).
    """
    keep_freed_memory()  # in every process that runs chunks
    with parallel.chunk_task_threads(spec.blas_threads):
        return _predict_chunk(model, positions, cell, velocities, spec, frame0, on_frame)


def _predict_chunk(model, positions, cell, velocities, spec, frame0, on_frame):
    positions = np.asarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    n_frames, n_atoms = positions.shape[:2]
    _check_finite(positions, "position", spec.source, frame0)
    if velocities is not None:
        velocities = np.asarray(velocities, dtype=np.float64)
        _check_finite(velocities, "velocity", spec.source, frame0)

    per_frame = {}
    model_keys = [k for k in ("bec", "bec_std", "bec_monopole", "bec_dipole", "charges",
                              "charge_std", "local_dipole_std", "asr_violation")
                  if k in spec.variables]
    if spec.dipole_method == "model":
        model_keys.append("dipole")
    velocity_keys = [k for k in getattr(model, "velocity_outputs", ()) if k in spec.variables]
    if "dipole_derivative_samples" in spec.variables and not velocity_keys:
        model_keys.append("bec_samples")
    model_keys += velocity_keys
    n_species = spec.species.size
    shapes = {"charges": (n_atoms,), "charge_std": (n_atoms,), "local_dipole_std": (n_atoms,),
              "dipole": (3,), "asr_violation": (3, 3),
              "bec_samples": (spec.n_samples, n_atoms, 3, 3),
              "dipole_derivative_std": (3,), "dipole_derivative_samples": (spec.n_samples, 3),
              "dipole_derivative_by_species_samples": (spec.n_samples, n_species, 3)}
    for key in model_keys:
        per_frame[key] = np.empty((n_frames,) + shapes.get(key, (n_atoms, 3, 3)))
    _model_frames(model, positions, cell, spec, frame0, model_keys, per_frame, on_frame,
                  velocities if velocity_keys else None)

    out = dict(per_frame)
    if "dipole_derivative" in spec.variables:
        # contributions c[f, a, i] = sum_j Z[f, a, i, j] v[f, a, j]
        contrib = np.einsum("faij,faj->fai", per_frame["bec"], velocities)
        out["dipole_derivative"] = contrib.sum(axis=1)
        out["dipole_derivative_by_species"] = species_sums(contrib, spec.numbers, spec.species)
        for part in ("monopole", "dipole"):
            name = f"dipole_derivative_{part}"
            if name in spec.variables:
                out[name] = np.einsum("faij,faj->fi", per_frame[f"bec_{part}"], velocities)
        if "bec_samples" in out:
            out["dipole_derivative_samples"] = np.einsum(
                "fsaij,faj->fsi", out.pop("bec_samples"), velocities)
        if spec.integrated_dipole:
            dd = out["dipole_derivative"]
            steps = 0.5 * spec.timestep * (dd[1:] + dd[:-1])
            local = np.zeros_like(dd)
            np.cumsum(steps, axis=0, out=local[1:])
            out["dipole_local"] = local
            out["dd_first"] = dd[0].copy()
            out["dd_last"] = dd[-1].copy()
    dtype = np.dtype(spec.dtype)
    for key in spec.variables:
        if key in out:
            out[key] = out[key].astype(dtype, copy=False)
    return out


def species_sums(contributions, numbers, species) -> np.ndarray:
    """Per-species sums of per-atom contributions.

    contributions (F, N, 3), numbers (N,) atomic numbers, species (S,) atomic numbers;
    returns (F, S, 3): ``out[f, s] = sum over atoms a with numbers[a] == species[s] of
    contributions[f, a]``.
    """
    onehot = (np.asarray(numbers)[:, None] == np.asarray(species)[None, :]).astype(np.float64)
    return np.einsum("fai,as->fsi", contributions, onehot)


def _check_finite(array, what, source, frame0):
    bad = first_non_finite(array, 2)
    if bad is not None:
        f, a = bad
        raise ValueError(f"{source}: frame {frame0 + f}: {what} of atom {a} is NaN or inf")


def _batched(model, spec, n_atoms) -> bool:
    """Whether the frames of a chunk go through ``model.predict_frames`` in batches: frames of
    fewer than :data:`~numbec.parallel.BATCH_BELOW_ATOMS` atoms, models that compute a batch
    in one pass, and no per-frame design-row uncertainty."""
    return (n_atoms < parallel.BATCH_BELOW_ATOMS and not spec.uncertainty
            and bool(getattr(model, "batched_frames", False))
            and callable(getattr(model, "predict_frames", None)))


def _batched_with_velocities(model, spec, n_atoms) -> bool:
    """Whether the frames of a chunk whose model also needs the velocities (the forward-mode
    dM/dt uncertainty) go through ``model.predict_frames_with_velocities`` in batches: the
    conditions of :func:`_batched`, float64, and no per-atom ``bec_std``."""
    return (n_atoms < parallel.BATCH_BELOW_ATOMS and not spec.uncertainty
            and spec.precision == "float64"
            and callable(getattr(model, "predict_frames_with_velocities", None)))


def _model_frames(model, positions, cell, spec, frame0, model_keys, per_frame, on_frame,
                  velocities=None):
    """All frames of a chunk, on :func:`numbec.parallel.frame_threads` threads: each frame
    is independent and its Numba kernels run on one thread (splitting frames parallelises
    better than splitting the atoms of one frame, and gives identical results). With the
    automatic choice, a chunk whose second frame took less than
    :data:`~numbec.parallel.MIN_THREADED_FRAME_S` runs serially. Small frames go in batches
    (:func:`_model_batches`). ``velocities`` (F, N, 3) Å/fs: given to models with
    ``velocity_outputs`` (``predict_arrays_with_velocities``), frame by frame."""
    n_frames = positions.shape[0]
    if (_batched(model, spec, positions.shape[1]) if velocities is None
            else _batched_with_velocities(model, spec, positions.shape[1])):
        _model_batches(model, positions, cell, spec, frame0, model_keys, per_frame, on_frame,
                       velocities)
        return

    def one_frame(f):
        _model_frame(model, positions[f], cell[f], spec, frame0 + f, f, model_keys, per_frame,
                     None if velocities is None else velocities[f])
        if on_frame is not None:
            on_frame()

    # the first frame alone: compiles or loads the kernels and fixes the threading layer
    one_frame(0)
    n_threads = parallel.frame_threads(spec.frame_threads,
                                       bool(getattr(model, "concurrent_frames", False)),
                                       n_frames)
    start = 1
    if n_threads > 1 and spec.frame_threads == 0:
        started = perf_counter()
        one_frame(1)
        start = 2
        if perf_counter() - started < MIN_THREADED_FRAME_S:
            n_threads = 1
    _run_in_order(one_frame, range(start, n_frames), n_threads)


def charge_keyword(total_charge: float) -> dict:
    """``{"total_charge": Q}`` for a non-zero Q (e), else ``{}``: models written before the
    keyword existed keep working for neutral input."""
    return {"total_charge": float(total_charge)} if total_charge else {}


def _check_total_charge(model, total_charge) -> float:
    """The total charge (e) as a finite float; a clear error when a non-zero one is given
    to a model whose ``predict_arrays`` has no ``total_charge`` keyword."""
    import inspect

    from numbec.models.base import total_charge_value

    charge = total_charge_value(total_charge)
    if charge:
        try:
            parameters = inspect.signature(model.predict_arrays).parameters.values()
        except (TypeError, ValueError):
            parameters = ()
        if not any(p.name == "total_charge" or p.kind is p.VAR_KEYWORD for p in parameters):
            raise ValueError(f"{type(model).__name__} does not accept a total charge "
                             f"(total_charge={charge:g} e); predict neutral structures only")
    return charge


#: The way the batches of small frames run (:func:`numbec.parallel.fastest_batch_mode`), per
#: predict call (``_ChunkSpec.call_id``): probed in the first chunk that has room for the
#: probe, then kept for the call's other chunks. A chunk of 1,000 water dimers holds only 8
#: batches; probing each chunk would cost 7 of them, and not probing left the second core
#: idle. Per process (dask workers each keep their own); bounded by :data:`_MAX_BATCH_MODES`.
_BATCH_MODES: dict = {}
_MAX_BATCH_MODES = 256
#: Rounds of concurrent batches the probe times (up to, in a chunk of fewer batches): one round
#: of two water-dimer batches ran them one after the other more often than not (6-7 ms per
#: batch, as on one thread), while whole runs on two batch threads took 4.5 ms per batch; the
#: threads start in step and queue for the interpreter lock at the same places.
PROBE_ROUNDS = 4


def _model_batches(model, positions, cell, spec, frame0, model_keys, per_frame, on_frame,
                   velocities=None):
    """The frames of a chunk in batches of :func:`numbec.parallel.batch_frames` frames, each
    one ``model.predict_frames`` call (with ``velocities`` (F, N, 3) Å/fs:
    ``model.predict_frames_with_velocities``); batches on concurrent threads as frames are in
    :func:`_model_frames` (the per-frame numbers, tested to 1e-12)."""
    n_frames, n_atoms = positions.shape[:2]
    step = parallel.batch_frames(n_atoms, getattr(model, "batch_atoms", None))
    starts = list(range(0, n_frames, step))
    method = "predict_frames" if velocities is None else "predict_frames_with_velocities"

    def one_batch(start):
        stop = min(start + step, n_frames)
        extra = () if velocities is None else (velocities[start:stop],)
        try:
            result = getattr(model, method)(positions[start:stop], spec.numbers,
                                            cell[start:stop], spec.pbc, *extra,
                                            precision=spec.precision,
                                            **charge_keyword(spec.total_charge),
                                            **({"atom_std": True} if spec.atom_std else {}))
        except ValueError as exc:
            raise ValueError(f"{spec.source}: "
                             f"{_frame_in_trajectory(exc, frame0 + start, frame0 + stop - 1)}"
                             ) from exc
        _store_outputs(model, result, model_keys, per_frame, slice(start, stop),
                       f"{spec.source}: frames {frame0 + start}-{frame0 + stop - 1}",
                       method)
        if on_frame is not None:
            for _ in range(stop - start):
                on_frame()

    n_threads = parallel.frame_threads(spec.frame_threads,
                                       bool(getattr(model, "concurrent_frames", False)),
                                       len(starts))
    if n_threads > 1 and spec.frame_threads == 0:
        mode = _BATCH_MODES.get(spec.call_id) if spec.call_id else None
        if mode is None:
            in_call = -(-spec.call_frames // step) if spec.call_frames else len(starts)
            if len(starts) < 3 + n_threads or in_call < parallel.PROBE_FROM_BATCHES:
                # too few batches to pay for a probe: one at a time, Numba on its threads
                _run_in_order(one_batch, starts, 1)
                return
            # automatic threads: probe the ways to run batches, keep the fastest
            one_batch(starts[0])  # kernels compiled or loaded, caches warm
            seconds = {"numba": _timed(one_batch, starts[1])}
            with parallel.numba_threads(1):
                seconds["serial"] = _timed(one_batch, starts[2])
            # whole rounds: an odd batch out would leave a thread idle and favour the others
            rounds = min(PROBE_ROUNDS, (len(starts) - 3) // n_threads)
            probe = starts[3:3 + rounds * n_threads]
            seconds["batch threads"] = _timed(
                lambda items: _run_in_order(one_batch, items, n_threads), probe) / len(probe)
            starts = starts[3 + len(probe):]
            mode = parallel.fastest_batch_mode(seconds)
            if spec.call_id:
                if len(_BATCH_MODES) >= _MAX_BATCH_MODES:
                    _BATCH_MODES.clear()
                _BATCH_MODES[spec.call_id] = mode
            if not starts:
                return
        if mode != "batch threads":
            with parallel.numba_threads(1) if mode == "serial" else contextlib.nullcontext():
                _run_in_order(one_batch, starts, 1)
            return
    _run_in_order(one_batch, starts, n_threads)


def _timed(task, item) -> float:
    """Wall seconds of ``task(item)``."""
    started = perf_counter()
    task(item)
    return perf_counter() - started


def _run_in_order(task, items, n_threads):
    """``task(item)`` for every item: in this thread when ``n_threads`` is 1, else on a pool
    of ``n_threads`` threads whose Numba kernels each use one thread. Errors are raised in
    item order, so the first bad frame is the one reported."""
    if n_threads == 1:
        for item in items:
            task(item)
        return

    def on_one_numba_thread(item):
        with parallel.numba_threads(1):
            task(item)

    with concurrent.futures.ThreadPoolExecutor(n_threads) as pool:
        futures = [pool.submit(on_one_numba_thread, item) for item in items]
        try:
            for future in futures:
                future.result()
        finally:
            for future in futures:
                future.cancel()


def _frame_in_trajectory(exc: ValueError, first: int, last: int) -> str:
    """The message of an error of ``predict_frames`` for trajectory frames ``first..last``
    (or of ``predict_arrays`` for frame ``first == last``, which some models answer by a
    batch of one): "frame k: ..." (k counted in the batch) with the frame counted in the
    trajectory, else the message with the frame(s) named."""
    message = str(exc)
    head, sep, rest = message.partition(":")
    if sep and head.startswith("frame ") and head[6:].strip().isdigit():
        return f"frame {first + int(head[6:])}:{rest}"
    return f"frame {first}: {message}" if first == last else f"frames {first}-{last}: {message}"


def _model_frame(model, positions, cell, spec, frame, f, model_keys, per_frame,
                 velocities=None):
    """Predict one frame (trajectory index ``frame``) into row ``f`` of ``per_frame``
    (with ``velocities`` (N, 3) Å/fs: through ``model.predict_arrays_with_velocities``)."""
    keywords = dict(uncertainty=spec.uncertainty,
                    **({} if spec.precision == "float64" else {"precision": spec.precision}),
                    **charge_keyword(spec.total_charge),
                    **({"atom_std": True} if spec.atom_std else {}))
    method = "predict_arrays" if velocities is None else "predict_arrays_with_velocities"
    try:
        if velocities is None:
            result = model.predict_arrays(positions, spec.numbers, cell, spec.pbc, **keywords)
        else:
            result = model.predict_arrays_with_velocities(positions, spec.numbers, cell,
                                                          spec.pbc, velocities, **keywords)
    except ValueError as exc:
        raise ValueError(f"{spec.source}: {_frame_in_trajectory(exc, frame, frame)}") from exc
    _store_outputs(model, result, model_keys, per_frame, f, f"{spec.source}: frame {frame}",
                   method)


def _store_outputs(model, result, model_keys, per_frame, rows, where, method):
    """Copy the model outputs ``model_keys`` of one frame (``rows`` an int) or of a batch
    (``rows`` a slice) into ``per_frame``, checking that each is there with its shape."""
    for key in model_keys:
        if key not in result:
            raise ValueError(f"{where}: {type(model).__name__}.{method} returned no {key!r} "
                             "although the model lists it in its outputs")
        value = np.asarray(result[key], dtype=np.float64)
        expected = per_frame[key][rows].shape
        if value.shape != expected:
            raise ValueError(f"{where}: model output {key!r} has shape {value.shape}, "
                             f"expected {expected}")
        per_frame[key][rows] = value


def _predict_and_write(model, positions, cell, velocities, spec, c, start, stop, out,
                       on_frame=None):
    """Chunk task of a run into a store: predict chunk ``c``, write it, flag it done."""
    result = predict_chunk(model, positions, cell, velocities, spec, start, on_frame)
    store_format.write_chunk(out, spec.variables, spec.integrated_dipole, c, start, stop,
                             result)
    return c


# ---------------------------------------------------------------------------- combine
def _integration_record(result):
    """The few numbers of a chunk result that the offsets of later chunks need:
    (last value of the local integral, first and last dipole derivative), each (3,)."""
    return result["dipole_local"][-1], result["dd_first"], result["dd_last"]


def _first_offset():
    return np.zeros(3)


def _next_offset(timestep, offset, previous_record, record):
    local_last, _dd_first, dd_last = previous_record
    return store_format.next_offset(timestep, offset, local_last, dd_last, record[1])


def _integrated_chunk(local, offset, dtype):
    return (offset + local).astype(dtype, copy=False)


def _combine_in_memory(results, spec):
    """Concatenate chunk results (in chunk order) into arrays; integrate the dipole."""
    arrays = {name: np.concatenate([r[name] for r in results]) for name in spec.variables
              if name != "dipole" or not spec.integrated_dipole}
    if spec.integrated_dipole:
        records = [_integration_record(r) for r in results]
        offsets = store_format.dipole_offsets(
            spec.timestep, [r[0] for r in records], [r[1] for r in records],
            [r[2] for r in records])
        arrays["dipole"] = np.concatenate([
            _integrated_chunk(r["dipole_local"], offsets[c], spec.dtype)
            for c, r in enumerate(results)])
    return arrays


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
        from numbec.io.trajectory import open_trajectory

        path = Path(trajectory)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such trajectory store")
        return open_trajectory(path), str(path), str(path.resolve())
    raise TypeError(
        f"trajectory must be a Trajectory store path or an xarray.Dataset, got "
        f"{type(trajectory).__name__}"
    )


def _check_complete(ds, source, allow_incomplete) -> bool:
    """Whether ``ds`` comes from a trajectory store whose conversion has not finished
    (``attrs["complete"]`` of :func:`numbec.open_trajectory`); refused unless
    ``allow_incomplete``."""
    if ds.attrs.get("complete", True) is not False:
        return False
    if not allow_incomplete:
        segments = json.loads(ds.attrs.get("segments") or "[]")
        last = segments[-1] if segments else {}
        command = f"numbec convert {last.get('source', 'SRC')} {source} --append"
        if last.get("index", ":") != ":":
            command += f" --index {last['index']}"
        raise ValueError(
            f"{source}: the trajectory store is incomplete: {ds.sizes['frame']} frames "
            "converted so far, its conversion was interrupted or is still running; finish "
            f"it with '{command}', or predict the frames converted so far with "
            "allow_incomplete=True (--allow-incomplete)")
    return True


def _validate(ds, source):
    from numbec.io.trajectory import LAYOUT, OPTIONAL

    for name, (dims, _dtype, _units) in LAYOUT.items():
        if name == "time":
            continue
        if name not in ds:
            if name in OPTIONAL:
                continue
            raise ValueError(f"{source}: trajectory has no {name!r} variable")
        if tuple(ds[name].dims) != dims:
            raise ValueError(
                f"{source}: {name!r} has dimensions {tuple(ds[name].dims)}, expected {dims}"
            )
    if ds.sizes["xyz"] != 3 or ds.sizes["cell_vector"] != 3:
        raise ValueError(f"{source}: dimensions xyz and cell_vector must have size 3")
    if ds.sizes["frame"] == 0:
        raise ValueError(f"{source}: trajectory has no frames")


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


class _InputChunks:
    """Per-chunk access to positions, cell and velocities (numpy slices or dask delayed)."""

    def __init__(self, ds, chunks, with_velocities):
        self.names = ["positions", "cell"] + (["velocities"] if with_velocities else [])
        self.lazy = any(_is_dask(ds[name].data) for name in self.names)
        self.ds = ds
        self.chunks = chunks
        self._delayed = None
        self.dask_names = []
        if self.lazy:
            import dask
            import dask.array as da
            from dask.core import flatten

            self._delayed = {}
            self._keys = {}
            arrays = []
            for name in self.names:
                data = ds[name].data
                if not _is_dask(data):
                    data = da.from_array(np.asarray(data), chunks=(tuple(chunks), -1, -1))
                data = data.rechunk((tuple(chunks), -1, -1))
                self.dask_names.append(data.name)
                self._delayed[name] = list(data.to_delayed().ravel())
                arrays.append(data)
            # one optimised graph of the inputs; each chunk computes only its own part of
            # it (a whole-graph compute per chunk would cost time and memory in proportion
            # to the number of chunks, for every chunk)
            self._graph = {}
            for name, data in zip(self.names, dask.optimize(*arrays), strict=True):
                self._graph.update(dict(data.__dask_graph__()))
                self._keys[name] = list(flatten(data.__dask_keys__()))
        self.with_velocities = with_velocities

    def numpy(self, c, start, stop):
        """(positions, cell, velocities or None) of chunk ``c`` as numpy arrays."""
        if self.lazy:
            from dask.local import get_sync
            from dask.optimization import cull

            keys = [self._keys[n][c] for n in self.names]
            # callbacks=(): without it Dask swaps its global set of callbacks out and back in
            # around every read, and reads that overlap in the chunk threads put back each
            # other's empty set, so a registered callback (a user's ProgressBar, or numbec's
            # BLAS limit for lazy results) was dropped for good after a run over a Zarr store
            values = get_sync(cull(self._graph, keys)[0], keys, callbacks=())
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


# ---------------------------------------------------------------------------- the API
def predict(
    model,
    trajectory,
    out=None,
    *,
    chunk_frames: int | None = None,
    progress: bool | None = None,
    dtype=np.float64,
    uncertainty: bool = False,
    dipole_derivative: bool | None = None,
    model_file=None,
    blas_threads: int | None = 1,
    threads: int | None = None,
    precision: str = "float64",
    overwrite: bool = False,
    posterior_samples: int = 0,
    species_samples: bool = True,
    uncertainty_rank: int | None = None,
    seed: int = 0,
    total_charge: float = 0.0,
    atom_std: bool = False,
    allow_incomplete: bool = False,
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
        Zarr v3 store to write (:mod:`numbec.io.prediction`). Written chunk by chunk; a
        chunk counts as done only after all its data are written and flushed
        (``_progress/chunks_done``). A run killed at any point and started again computes
        only the unfinished chunks. An operating-system lock on ``<out>.lock`` makes a
        second concurrent run refuse (:class:`OutputLockedError`); the lock dies with its
        process. Resuming into a store made by another model, input or settings raises
        :class:`OutputMismatchError`.
    chunk_frames : int, optional
        Frames per chunk (at most the number of frames). Default: the input's frame chunks
        (dask-backed), else ``min(1000, 2e6 / (9 N))``. Peak memory is proportional to it.
    progress : bool, optional
        tqdm progress bar over frames (eager and ``out`` runs); default: when stderr is a
        terminal.
    dtype : numpy dtype
        Storage dtype of the outputs (float64 or float32); computation is float64 unless
        ``precision`` says otherwise.
    uncertainty : bool
        Also predict ``bec_std`` (the model must list it in ``model.outputs``; for a kernel
        model exact, from the design rows of every frame: about one training step per frame,
        so with more than :data:`EXACT_UNCERTAINTY_WARN_FRAMES` frames a warning points to
        ``uncertainty_rank`` and ``atom_std``); for a kernel
        model with dM/dt also ``dipole_derivative_std`` (frame, pol) e·Å/fs, the exact
        standard deviation of dM/dt from the posterior of the weights alone
        (:mod:`numbec.models.forward_mode`; not the error of the representation nor of the
        reference method).
    dipole_derivative : bool, optional
        None (default): computed when the trajectory has velocities, otherwise omitted
        with a warning. True: required (error without velocities). False: skipped.
    model_file : str or Path, optional
        Where the model was loaded from, recorded in the provenance attribute
        ``model_file`` (the model itself is identified by ``model_sha256``, the hash of its
        saved state, as ``numbec info MODEL.npz`` prints it; resuming checks that hash).
        Set automatically when ``model`` is a path.
    blas_threads : int or None
        Threads of the BLAS library (numpy's matrix products) inside every chunk task,
        default 1 (:mod:`numbec.parallel`): per-frame matrices are too small for threaded
        BLAS to pay off. Applies on every scheduler, lazy results included. None leaves the
        BLAS setting alone. Needs threadpoolctl (else ignored).
    threads : int, optional
        Frames of a chunk computed concurrently, each with its Numba kernels on one thread
        (frames are independent: this parallelises better than the atoms of one frame, and
        the results are the same). Default (:func:`numbec.parallel.frame_threads`): for
        models with ``concurrent_frames`` (the kernel models), ``numba.get_num_threads()``
        (set by ``NUMBA_NUM_THREADS``) when the chunk runs in the main thread, 1 in Dask
        tasks on other threads, processes or workers (those parallelise over chunks); 1 for
        other models; and 1 for a chunk whose second frame took less than 3 ms (small
        molecules, where two threads were slower than one). Needs Numba's OpenMP or TBB
        threading layer (the usual ones); with the 'workqueue' fallback frames run one
        after another and a warning says so.
    precision : {"float64", "mixed"}
        Arithmetic of the model's prediction, one of ``model.precisions``. "float64" (default):
        everything in double precision. "mixed" (models with a dipole kernel: DipoleModel,
        CombinedModel): the dipole kernel's large matrix products in float32, the rest in
        float64; about 15 % faster for the combined model on quartz, BECs within 2e-5 e of
        float64 there and charges identical (docs/streaming.md). Recorded in the attribute
        ``precision``; resuming checks it.
    overwrite : bool
        Replace an existing Prediction store at ``out`` (any model, input, settings or
        state) instead of resuming it. Anything at ``out`` that is not a Prediction store
        is never replaced.
    posterior_samples : int
        S > 0 (kernel models): also ``dipole_derivative_samples`` (frame, sample, pol) and
        ``dipole_derivative_by_species_samples`` (frame, sample, species, pol) e·Å/fs, dM/dt
        (total and per species) of S weight vectors drawn once (``seed``) from the model's
        full recalibrated posterior ``N(w, s_w Sigma)``, the same for every frame, and
        ``dipole_derivative_std``; :func:`numbec.ir_spectrum` turns the samples into a
        model-uncertainty band. Computed in forward mode: the design row of dM/dt along the
        velocities, one extra pass over the pairs whatever S, exact (no low-rank posterior;
        :mod:`numbec.models.forward_mode`). Needs velocities; float64 precision.
    species_samples : bool
        With ``posterior_samples``: also ``dipole_derivative_by_species_samples`` (default).
        False stores the total samples only (partial spectra then have no model band), at
        about the cost of ``dipole_derivative_std`` alone instead of one design row per
        species (docs/streaming.md); a store written with one setting is not resumed with
        the other.
    uncertainty_rank : int, optional
        With ``uncertainty``: compute ``bec_std`` from a rank-K factor of the posterior
        (K / 4 leading directions, ordered on the 4 evenly spaced frames of
        :func:`direction_frame_indices`, and random probes of the rest, as adjoint channels;
        :func:`numbec.models.uncertainty.posterior_factor`) instead of the design rows: an
        unbiased estimate, much cheaper than the exact ``bec_std``; at K = 32 the per-frame
        uncertainty is within 0.8-5.0 % of the exact one on the 24 benchmark test sets
        (docs/benchmarks_models.md, section 6). Not used for the dM/dt samples and
        ``dipole_derivative_std``, which are exact.
    seed : int
        Seed of the posterior samples.
    total_charge : float
        Total charge Q of every frame, e (0: neutral). Passed to the model, whose BECs then
        sum to ``Q I`` (acoustic sum rule of a charged system); recorded in the attribute
        ``total_charge``; resuming checks it. A model whose ``predict_arrays`` has no
        ``total_charge`` keyword is refused for Q != 0.
    atom_std : bool
        Kernel models: also ``charge_std`` (frame, atom) e (models with charges) and
        ``local_dipole_std`` (frame, atom) e·Å (models with the dipole kernel), the exact
        posterior standard deviations of each atom's neutral charge and of its local dipole
        (root of the trace of its 3 x 3 covariance) with the recalibrated ``s_w Sigma``
        (:mod:`numbec.models.atom_std`), from the kernel rows of the plain prediction: a
        cheap per-atom uncertainty (docs/streaming.md for its cost and how it ranks atoms),
        not the BEC's standard deviation. Independent of ``uncertainty``. Recorded in the
        attribute ``atom_std``; a store written without it is not resumed with it (and the
        reverse).
    allow_incomplete : bool
        Predict the frames converted so far of a trajectory store whose conversion was
        interrupted or is still running (``numbec info`` says INCOMPLETE). Without it such a
        store is refused: its prediction would look like one of the whole trajectory. The
        attributes ``input_complete`` (False) and ``input_frames`` of the result record it.

    Returns
    -------
    xarray.Dataset
        The Prediction dataset (see the module docstring): lazy for a dask-backed input
        without ``out``, in memory for an in-memory input, opened from ``out`` otherwise.

    Raises
    ------
    FileNotFoundError
        No trajectory store at ``trajectory``.
    ValueError
        Bad input (missing variables, no time step, NaN positions, unknown species: the
        message names the trajectory, frame and atom), an incomplete trajectory store
        without ``allow_incomplete``, or options the model does not offer.
    OutputLockedError
        Another process is writing ``out``.
    OutputMismatchError
        ``out`` holds something else than a resumable Prediction of this run.
    """
    if isinstance(model, (str, os.PathLike)):
        from numbec.models.base import load_model

        model_file = model if model_file is None else model_file
        model = load_model(model)
    ds, source, store_path = _open_input(trajectory)
    incomplete = _check_complete(ds, source, allow_incomplete)
    environments = _check_environments(model, ds, source)
    model = _uncertainty_model(model, ds, source, uncertainty=uncertainty,
                               dipole_derivative=dipole_derivative,
                               posterior_samples=int(posterior_samples),
                               species_samples=bool(species_samples),
                               uncertainty_rank=uncertainty_rank, seed=int(seed))
    plan = _make_plan(model, ds, source, store_path, chunk_frames=chunk_frames, dtype=dtype,
                      uncertainty=uncertainty, dipole_derivative=dipole_derivative,
                      model_file=model_file, blas_threads=blas_threads, threads=threads,
                      precision=precision, posterior_samples=int(posterior_samples),
                      total_charge=total_charge, atom_std=bool(atom_std))
    if posterior_samples:
        plan.attrs.update(posterior_samples=int(posterior_samples), seed=int(seed),
                          posterior_method="forward mode, full posterior")
    if uncertainty and uncertainty_rank:
        plan.attrs.update(uncertainty_rank=int(uncertainty_rank),
                          uncertainty_direction_frames=direction_frame_indices(
                              ds.sizes["frame"]).tolist())
    if atom_std:
        plan.attrs.update(atom_std=True)
    if environments is not None:
        plan.attrs.update(environment_check=json.dumps(environments))
    if incomplete:
        plan.attrs.update(input_complete=False, input_frames=int(ds.sizes["frame"]))
    if progress is None:
        progress = sys.stderr.isatty()
    if out is None and plan.inputs.lazy:
        return _lazy_dataset(model, plan)
    with parallel.blas_limit(plan.spec.blas_threads, refresh=True):
        if out is None:
            return _predict_in_memory(model, plan, progress)
        return _predict_to_store(model, plan, Path(out), progress, ds, store_path,
                                 overwrite)


#: Frames above which ``predict(..., uncertainty=True)`` without ``uncertainty_rank`` warns that
#: the exact ``bec_std`` costs about one training step per frame (a 72-atom quartz frame:
#: about 0.5 s, so 1,000 frames take minutes and 10^5 frames most of a day).
EXACT_UNCERTAINTY_WARN_FRAMES = 1000


def _uncertainty_model(model, ds, source, *, uncertainty, dipole_derivative,
                       posterior_samples, uncertainty_rank, seed, species_samples=True):
    """The model wrapped for the uncertainty asked for: the low-rank ``bec_std``
    (:class:`~numbec.models.uncertainty.StreamedUncertaintyModel`) with ``uncertainty`` and
    ``uncertainty_rank``; the forward-mode dM/dt uncertainty
    (:class:`~numbec.models.forward_mode.DipoleDerivativeSamplesModel`: the exact
    ``dipole_derivative_std``, and S full-posterior samples) with ``posterior_samples`` S,
    or with ``uncertainty`` for a kernel model, when dM/dt is computed; per species too
    unless ``species_samples`` is False."""
    n_frames = ds.sizes["frame"]
    if (uncertainty and not uncertainty_rank and hasattr(model, "covariance")
            and n_frames > EXACT_UNCERTAINTY_WARN_FRAMES):
        import warnings

        warnings.warn(
            f"{source}: uncertainty without uncertainty_rank computes the exact bec_std from "
            f"the design rows of each of the {n_frames} frames, about one training step per "
            "frame (16-160x a plain prediction for the models of docs/streaming.md). For a "
            "long trajectory pass uncertainty_rank=32 (--uncertainty-rank 32: an unbiased "
            "estimate at 6-26x), or for cheap per-atom scalars atom_std=True (--atom-std, "
            "1.1-1.8x); posterior_samples (--posterior-samples) give the spectrum's model "
            "band without bec_std", stacklevel=3)
    if uncertainty and uncertainty_rank:
        from numbec.models.uncertainty import StreamedUncertaintyModel

        model = StreamedUncertaintyModel(model, rank=uncertainty_rank, seed=seed,
                                         frames=_direction_frames(model, ds, source))
    with_dd = "velocities" in ds and dipole_derivative is not False
    kernel = getattr(model, "model", model)
    if with_dd and (posterior_samples or (uncertainty and hasattr(kernel, "covariance"))):
        from numbec.models.forward_mode import DipoleDerivativeSamplesModel

        model = DipoleDerivativeSamplesModel(model, n_samples=posterior_samples, seed=seed,
                                             species_samples=species_samples)
    elif posterior_samples and not hasattr(kernel, "covariance"):
        raise TypeError(f"{type(kernel).__name__} has no posterior covariance; "
                        "posterior_samples need a fitted kernel model")
    return model


def _velocities_source(ds) -> str:
    """Where the velocities of ``ds`` come from, for the prediction's provenance:
    ``attrs["velocities_source"]``, else "central differences of positions" when they are
    :func:`numbec.io.trajectory.velocities_from_positions`, else "trajectory"."""
    from numbec.io.trajectory import VELOCITIES_FROM_POSITIONS, velocities_from_positions_used

    if "velocities_source" in ds.attrs:
        return str(ds.attrs["velocities_source"])
    if "velocities" in ds and velocities_from_positions_used(ds["velocities"]):
        return VELOCITIES_FROM_POSITIONS
    return "trajectory"


#: Evenly spaced frames of a trajectory whose environments :func:`predict` compares with the
#: model's training environments (:func:`numbec.models.representation.environment_check`):
#: one in :data:`ENVIRONMENT_CHECK_STRIDE`, at most this many. A checked frame costs its
#: descriptors without gradients and the residual: 0.22x a plain prediction of a combined
#: model and 0.49x of a monopole model (72-atom quartz, 100 sparse points per species), so
#: the check adds 2-5 % to a call of ten frames or more and nothing to a long one.
ENVIRONMENT_CHECK_FRAMES = 32
ENVIRONMENT_CHECK_STRIDE = 10


def _check_environments(model, ds, source) -> dict | None:
    """The environment check of :func:`predict` (None for a model without its reference):
    warns when a species' atoms lie beyond the training environments' residual quantile
    far more often than training-like atoms do."""
    import warnings

    from numbec.models.representation import environment_check

    if not (getattr(model, "training", None) or {}).get("environment_residual"):
        return None
    n = int(ds.sizes["frame"])
    count = min(ENVIRONMENT_CHECK_FRAMES, -(-n // ENVIRONMENT_CHECK_STRIDE))
    indices = np.unique(np.linspace(0, n - 1, count).round().astype(np.int64))
    try:
        report = environment_check(model, _frames_at(model, ds, source, indices), indices)
    except ValueError as err:
        message = str(err)
        raise type(err)(message if message.startswith(source)
                        else f"{source}: {message}") from None
    if report and report["extrapolated"]:
        parts = []
        for symbol in report["extrapolated"]:
            entry = report[symbol]
            parts.append(f"{symbol}: {100 * entry['beyond']:.0f} % of {entry['checked']} "
                         f"atoms (worst: frame {entry['worst_frame']}, atom "
                         f"{entry['worst_atom']}, {entry['worst']:.3g} against at most "
                         f"{entry['training_max']:.3g} in training)")
        quantile = 100 * report[report["extrapolated"][0]]["quantile"]
        warnings.warn(
            f"{source}: in {indices.size} evenly spaced frame"
            f"{'s' if indices.size > 1 else ''} (of {n}), atoms lie further from the "
            f"model's sparse points than {quantile:g} % of its training environments (the "
            f"Nyström residual; about {100 - quantile:g} % of atoms like the training ones "
            f"do): {'; '.join(parts)}. The model extrapolates in these frames, and bec_std "
            "does not include the representation error; label some of them (numbec select)",
            stacklevel=3)
    return report


def direction_frame_indices(n_frames: int) -> np.ndarray:
    """The frames (int64 indices) of an ``n_frames`` trajectory on which the streamed
    uncertainty orders its directions: :data:`~numbec.models.uncertainty.DIRECTION_FRAMES`
    evenly spaced, first and last included (all frames of a shorter trajectory)."""
    from numbec.models.uncertainty import DIRECTION_FRAMES

    return np.unique(np.linspace(0, n_frames - 1, min(DIRECTION_FRAMES, n_frames))
                     .round().astype(np.int64))


def _direction_frames(model, ds, source) -> list:
    """``(positions, numbers, cell, pbc)`` of the :func:`direction_frame_indices` of ``ds``,
    checked like every predicted frame (a NaN position names its frame and atom)."""
    return _frames_at(model, ds, source, direction_frame_indices(ds.sizes["frame"]))


def _frames_at(model, ds, source, indices) -> list:
    """``(positions, numbers, cell, pbc)`` of frames ``indices`` of ``ds``, checked like every
    predicted frame (a NaN position names its frame and atom)."""
    _validate(ds, source)  # the layout and species first, as for any prediction
    numbers = np.asarray(ds["numbers"].values, dtype=np.int64)
    _check_species(model, numbers, source)
    pbc = np.asarray(ds["pbc"].values, dtype=bool).reshape(3)
    indices = np.asarray(indices, dtype=np.int64)
    # one selection: a lazy store computes one task graph, not one per frame
    all_positions = np.asarray(ds["positions"].isel(frame=indices).values, dtype=np.float64)
    all_cells = np.asarray(ds["cell"].isel(frame=indices).values, dtype=np.float64)
    frames = []
    for i, positions, cell in zip(indices, all_positions, all_cells, strict=True):
        _check_finite(positions[None], "position", source, int(i))
        if pbc.any() and not np.isfinite(cell).all():
            raise ValueError(f"{source}: frame {int(i)}: the cell is NaN or inf")
        frames.append((positions, numbers, cell, pbc))
    return frames


def _make_plan(model, ds, source, store_path, *, chunk_frames, dtype, uncertainty,
               dipole_derivative, model_file, blas_threads, threads, precision,
               posterior_samples=0, total_charge=0.0, atom_std=False) -> _Plan:
    import warnings

    from numbec.io.trajectory import dataset_timestep

    _validate(ds, source)
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise ValueError(f"dtype must be float64 or float32, got {dtype}")
    numbers = np.asarray(ds["numbers"].values, dtype=np.int64)
    pbc = np.asarray(ds["pbc"].values, dtype=bool).reshape(3)
    n_frames, n_atoms = ds.sizes["frame"], ds.sizes["atom"]
    _check_species(model, numbers, source)
    total_charge = _check_total_charge(model, total_charge)
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
                stacklevel=3,
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
    variables, dipole_method = _plan_variables(model, want_dd, bool(pbc.any()), uncertainty,
                                               atom_std)
    timestep = dataset_timestep(ds)
    timestep = float("nan") if timestep is None else timestep
    # frames that are not a time series (convert --no-time) still get their BECs and
    # charges; only dM/dt and the integrated dipole need the time step
    if not np.isfinite(timestep) and ((want_dd and n_frames > 1)
                                      or dipole_method == "integrated"):
        raise ValueError(
            f"{source}: no timestep (attrs['timestep'] in fs, or a uniform 'time' "
            "coordinate); set it when converting the trajectory (--timestep FS), or in "
            f"place with 'numbec info --set-timestep FS {source}'"
        )

    chunk_frames, chunks, bounds = _choose_chunks(ds, chunk_frames, n_atoms)
    spec = _ChunkSpec(
        source=source, numbers=numbers, pbc=pbc, species=np.unique(numbers),
        variables=variables, dipole_method=dipole_method, timestep=timestep,
        uncertainty=bool(uncertainty), dtype=dtype.str, frame_threads=_check_threads(threads),
        precision=precision, blas_threads=None if blas_threads is None else int(blas_threads),
        n_samples=int(posterior_samples), total_charge=total_charge, atom_std=atom_std,
        call_id=uuid.uuid4().hex, call_frames=int(n_frames),
    )
    if "time" in ds.coords:
        time = np.asarray(ds["time"].values, dtype=np.float64)
    else:
        time = np.arange(n_frames) * timestep  # NaN without a time step: no time axis

    # hashed once per call (the state of a learned model is megabytes); the provenance names
    # the model as saved, the resume fingerprint also the uncertainty settings of a wrapper,
    # whose state holds the same arrays: their digests are shared
    digests = {}
    model_fp = model_fingerprint(model, digests)
    saved = getattr(model, "saved_model", model)
    saved_sha256 = (model_fp["sha256"] if saved is model
                    else model_fingerprint(saved, digests)["sha256"])
    volume = None
    if bool(np.all(pbc)):
        cell = ds["cell"].data
        cells = np.asarray(cell.compute() if hasattr(cell, "compute") else cell,
                           dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(cells).all(axis=(1, 2)))
        if bad.size:  # before the volume, which it would turn into NaN
            raise ValueError(f"{source}: frame {int(bad[0])}: the cell is NaN or inf")
        volume = float(np.abs(np.linalg.det(cells)).mean())
    attrs = store_format.prediction_attrs(
        model_class=getattr(model, "class_name", type(model).__name__),
        model_sha256=saved_sha256,
        model_file=model_file, input_name=store_path or source, timestep=timestep, pbc=pbc,
        dipole_method=dipole_method, uncertainty=uncertainty, dtype=dtype,
        precision=precision, volume=volume,
        velocities_source=_velocities_source(ds) if has_velocities else None,
        temperature=ds.attrs.get("temperature"), total_charge=total_charge,
    )
    inputs = _InputChunks(ds, chunks, has_velocities and want_dd)
    return _Plan(spec, chunk_frames, bounds, time, attrs, inputs, model_fp)


def _check_threads(threads) -> int:
    if threads is None:
        return 0
    if int(threads) != threads or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    return int(threads)


def _dataset(arrays, plan):
    return store_format.prediction_dataset(arrays, plan.spec.variables, plan.time,
                                           plan.spec.species, plan.attrs, plan.spec.numbers)


# ---------------------------------------------------------------------------- executors
def _progress_bar(progress, n_frames, frames_done):
    from tqdm.auto import tqdm

    return tqdm(total=n_frames, initial=frames_done, desc="numbec predict", unit="frame",
                disable=not progress, file=sys.stderr)


def _run_chunks(model, task, plan, pending, bar, *, lazy_input):
    """Run ``task`` for every chunk in ``pending`` on the executor
    :func:`numbec.parallel.chunk_executor_kind` chooses, and return {c: result}. The first
    failure (in chunk order) is raised."""
    kind, workers = parallel.chunk_executor_kind(lazy_input)
    if kind == "distributed":
        return _run_distributed(model, task, plan, pending, bar)

    def run(c):
        start, stop = plan.bounds[c]
        positions, cell, velocities = plan.inputs.numpy(c, start, stop)
        return task(model, c, positions, cell, velocities, bar.update)

    if kind == "serial" or len(pending) < 2:
        return {c: run(c) for c in pending}
    results = {}
    with concurrent.futures.ThreadPoolExecutor(min(workers, len(pending))) as pool:
        futures = {c: pool.submit(run, c) for c in pending}
        try:
            for c, future in futures.items():
                results[c] = future.result()
        finally:
            for future in futures.values():
                future.cancel()
    return results


def _run_distributed(model, task, plan, pending, bar):
    import dask
    from distributed import as_completed

    model_node, token = plan_model_node(model, plan)
    delayed_task = dask.delayed(task, pure=True)
    tasks = {}
    for c in pending:
        positions, cell, velocities = plan.inputs.delayed(c)
        tasks[c] = delayed_task(model_node, c, positions, cell, velocities,
                                dask_key_name=f"numbec-{task.name}-{token}-{c}")
    client = parallel.distributed_client()
    futures = client.compute(list(tasks.values()))
    by_key = {future.key: c for future, c in zip(futures, tasks, strict=True)}
    results = {}
    try:
        for future in as_completed(futures):
            c = by_key[future.key]
            results[c] = future.result()
            start, stop = plan.bounds[c]
            bar.update(stop - start)
    except BaseException:
        client.cancel(futures)
        raise
    return results


@dataclasses.dataclass(frozen=True)
class _ChunkTask:
    """The task of one chunk, given the model: predict (``out`` None) or predict and write
    into the store ``out``. Small and picklable (the model travels separately)."""

    spec: _ChunkSpec
    bounds: tuple
    out: str | None
    name: str

    def __call__(self, model, c, positions, cell, velocities, on_frame=None):
        start, stop = self.bounds[c]
        if self.out is None:
            return predict_chunk(model, positions, cell, velocities, self.spec, start,
                                 on_frame)
        return _predict_and_write(model, positions, cell, velocities, self.spec, c, start,
                                  stop, self.out, on_frame)


def _predict_in_memory(model, plan, progress):
    task = _ChunkTask(plan.spec, tuple(plan.bounds), None, "predict")
    n_frames = plan.time.size
    with _progress_bar(progress, n_frames, 0) as bar:
        results = _run_chunks(model, task, plan, range(len(plan.bounds)), bar,
                              lazy_input=plan.inputs.lazy)
    ordered = [results[c] for c in range(len(plan.bounds))]
    return _dataset(_combine_in_memory(ordered, plan.spec), plan)


def _predict_to_store(model, plan, out: Path, progress, ds, store_path, overwrite):
    spec, bounds = plan.spec, plan.bounds
    old = store_format.stored_variables(out) if not overwrite else None
    if old is not None and "asr_violation" in spec.variables and "asr_violation" not in old:
        # a store written before the sum-rule diagnostic existed: resumed without it
        spec = dataclasses.replace(spec, variables=tuple(v for v in spec.variables
                                                         if v != "asr_violation"))
    n_chunks = len(bounds)
    first, last = plan.inputs.first_last_frames()
    expected = store_format.fingerprint(
        model_fp=plan.model_fp, input_name=store_path or spec.source,
        n_frames=plan.time.size, n_atoms=spec.numbers.size, numbers=spec.numbers,
        first_positions=first, last_positions=last, timestep=spec.timestep,
        chunk_frames=plan.chunk_frames, variables=spec.variables,
        velocities_source=_velocities_source(ds), dtype=spec.dtype,
        uncertainty=spec.uncertainty, precision=spec.precision,
        total_charge=spec.total_charge)
    attrs = dict(plan.attrs, fingerprint=json.dumps(expected, sort_keys=True))
    with store_format.locked(out), naming_disk_full(
            out, "the chunks written so far are kept: free space and run the same command "
            "again to resume"):
        root = store_format.open_for_resume(out, expected, overwrite=overwrite)
        if root is None:
            root = store_format.create_store(
                out, variables=spec.variables, integrated_dipole=spec.integrated_dipole,
                numbers=spec.numbers, species=spec.species,
                chunk_frames=plan.chunk_frames, n_chunks=n_chunks, time=plan.time,
                attrs=attrs, dtype=spec.dtype, n_samples=spec.n_samples)
        done = store_format.chunks_done(root, n_chunks)
        pending = [c for c in range(n_chunks) if not done[c]]
        if pending:
            frames_done = sum(stop - start for c, (start, stop) in enumerate(bounds)
                              if done[c])
            task = _ChunkTask(spec, tuple(bounds), str(out), "write")
            with _progress_bar(progress, plan.time.size, frames_done) as bar:
                _run_chunks(model, task, plan, pending, bar, lazy_input=plan.inputs.lazy)
        if spec.integrated_dipole:
            store_format.integrate_dipole(root, spec.timestep, spec.dtype, bounds)
        root.attrs["complete"] = True
        consolidate(out)
    return store_format.open_store(out)


# ---------------------------------------------------------------------------- lazy graph
def plan_model_node(model, plan):
    """The model as one node of the Dask graph, so it is shipped to each worker once, and
    the graph token of this plan (inputs, model, settings)."""
    import hashlib

    import dask

    model_token = plan.model_fp["sha256"] or f"{id(model):x}"
    node = dask.delayed(model, name=f"numbec-model-{model_token}", traverse=False)
    spec = plan.spec
    payload = json.dumps([plan.inputs.dask_names, model_token, list(spec.variables),
                          spec.dtype, spec.uncertainty, spec.timestep, spec.precision,
                          spec.blas_threads, spec.total_charge], default=str)
    return node, hashlib.sha256(payload.encode()).hexdigest()[:16]


def _lazy_dataset(model, plan):
    import dask
    import dask.array as da

    spec, bounds = plan.spec, plan.bounds
    model_node, token = plan_model_node(model, plan)
    parallel.limit_blas_for_graph(f"numbec-predict-{token}", spec.blas_threads)
    chunk_task = dask.delayed(predict_chunk, pure=True)
    getitem = dask.delayed(operator.getitem, pure=True)
    results = []
    for c, (start, _stop) in enumerate(bounds):
        positions, cell, velocities = plan.inputs.delayed(c)
        results.append(chunk_task(model_node, positions, cell, velocities, spec, start,
                                  dask_key_name=f"numbec-predict-{token}-{c}"))
    n_species = spec.species.size
    arrays = {}
    for name in spec.variables:
        if name == "dipole" and spec.integrated_dipole:
            continue
        arrays[name] = da.concatenate([
            da.from_delayed(getitem(r, name), dtype=spec.dtype,
                            shape=store_format.variable_shape(name, stop - start,
                                                              spec.numbers.size, n_species,
                                                              spec.n_samples))
            for r, (start, stop) in zip(results, bounds, strict=True)
        ])
    if spec.integrated_dipole:
        # a chain of tiny offset tasks: the offset of chunk c needs chunks 0..c only
        record = dask.delayed(_integration_record, pure=True)
        step = dask.delayed(_next_offset, pure=True)
        records = [record(r, dask_key_name=f"numbec-record-{token}-{c}")
                   for c, r in enumerate(results)]
        offsets = [dask.delayed(_first_offset, pure=True)(
            dask_key_name=f"numbec-offset-{token}-0")]
        for c in range(1, len(results)):
            offsets.append(step(spec.timestep, offsets[-1], records[c - 1], records[c],
                                dask_key_name=f"numbec-offset-{token}-{c}"))
        chunk = dask.delayed(_integrated_chunk, pure=True)
        arrays["dipole"] = da.concatenate([
            da.from_delayed(chunk(getitem(r, "dipole_local"), offsets[c], spec.dtype),
                            shape=(stop - start, 3), dtype=spec.dtype)
            for c, (r, (start, stop)) in enumerate(zip(results, bounds, strict=True))
        ])
    return _dataset(arrays, plan)
