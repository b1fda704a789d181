"""The chunked Zarr trajectory store: conversion, opening as xarray, derived velocities.

Store layout (Zarr v3 group, format ``numbec-trajectory`` version 1)
--------------------------------------------------------------------
Group attributes: ``format``, ``format_version``, ``timestep`` (fs between stored
frames; absent when unknown), ``source`` (first source file), ``segments`` (list of
``{"source", "index", "start", "frames"}``: which store frames came from which
file), ``numbec_version``, ``units`` (dict), ``frames_complete`` (int) and
``finished`` (bool: the last conversion ran to the end of its source).

``frames_complete`` is the number of leading frames that are fully written; it is
updated only after every array of a chunk has been written, so it is the only
count a reader trusts. A conversion that is killed leaves a store whose first
``frames_complete`` frames are valid; :func:`open_trajectory` reads exactly those,
and :func:`convert_trajectory` with ``append=True`` resumes after them. Zarr's
local store writes every chunk and metadata file atomically (temporary file, then
rename), so a kill leaves each file either old or new, never half written; a
partial last chunk that is rewritten on resume keeps its complete frames.

One writer at a time: :func:`convert_trajectory` and :func:`set_timestep` hold the
store's lock (:func:`numbec.io._files.store_lock`, the same operating-system lock as
``numbec predict``). A finished conversion consolidates the metadata (so that
``xarray.open_zarr`` opens the store without a warning); numbec's own readers ignore
consolidated metadata, which the next append invalidates. The ``units`` attributes are
spelled ``Angstrom``, ``Angstrom/fs``, ``fs`` (as in prediction stores; stores written
before numbec 0.1 say ``Å``). Arrays: :data:`LAYOUT`.

========== ======================= ======= ==================================
array      dims                    dtype   unit / meaning
========== ======================= ======= ==================================
positions  (frame, atom, xyz)      float64 Å, Cartesian, as in the source
velocities (frame, atom, xyz)      float64 Å/fs (only when the source has them)
cell       (frame, cell_vector, xyz) float64 Å, rows = lattice vectors
numbers    (atom,)                 int64   atomic numbers
masses     (atom,)                 float64 amu, the source's (isotopes kept; optional:
                                           stores written before numbec 0.1 lack it)
time       (frame,)                float64 fs (NaN when no time step is known)
pbc        (xyz,)                  bool    periodic directions
========== ======================= ======= ==================================

Velocity units: ASE keeps momenta in amu·Å per ASE time unit, so an ASE velocity
is in Å per ASE time unit; multiplying by ``ase.units.fs`` (=
:data:`numbec.conventions.ASE_TIME_UNITS_PER_FS`, ≈ 0.0982) gives Å/fs.
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from numbec.conventions import ASE_TIME_UNITS_PER_FS, first_non_finite
from numbec.io._files import (
    OutputLockedError,  # noqa: F401 - raised by convert_trajectory, documented there
    check_output_location,
    naming_disk_full,
    store_lock,
    strip_compression,
)
from numbec.io._index import forward_range, needs_length, parse_index

STORE_FORMAT = "numbec-trajectory"
STORE_FORMAT_VERSION = 1
#: The store's arrays (and the variables of a Trajectory dataset): name -> (dims, dtype,
#: units or None). ``velocities`` is optional.
LAYOUT = {
    "positions": (("frame", "atom", "xyz"), "float64", "Angstrom"),
    "velocities": (("frame", "atom", "xyz"), "float64", "Angstrom/fs"),
    "cell": (("frame", "cell_vector", "xyz"), "float64", "Angstrom"),
    "time": (("frame",), "float64", "fs"),
    "numbers": (("atom",), "int64", None),
    "masses": (("atom",), "float64", "amu"),
    "pbc": (("xyz",), "bool", None),
}
#: Arrays of :data:`LAYOUT` a store or Trajectory dataset may lack.
OPTIONAL = ("velocities", "masses")
UNITS = {name: units for name, (_dims, _dtype, units) in LAYOUT.items() if units}
UNITS["timestep"] = "fs"
#: Target size of one positions chunk when ``chunk_frames`` is not given (bytes).
DEFAULT_CHUNK_BYTES = 4 * 2**20
_FRAME_ARRAYS = tuple(name for name, (dims, _dtype, _units) in LAYOUT.items()
                      if dims[0] == "frame")


class StoreError(ValueError):
    """A trajectory store that is missing, corrupt or inconsistent."""


@dataclass
class SourceFrame:
    """One frame of a source trajectory as plain arrays.

    numbers (N,) int64; positions (N, 3) float64 Å; cell (3, 3) float64 Å rows =
    lattice vectors; pbc (3,) bool; velocities (N, 3) float64 Å/fs or None;
    frame: 0-based frame number in the source file; masses (N,) float64 amu or None
    (then the standard masses of ``numbers``).
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    velocities: np.ndarray | None
    frame: int
    masses: np.ndarray | None = None


# --- reading sources ---------------------------------------------------------------------


def _is_extxyz(path) -> bool:
    return strip_compression(Path(path).name).lower().endswith((".xyz", ".extxyz"))


def source_timestep(src) -> float | None:
    """Time between consecutive frames of ``src`` in fs, when the file records it.

    ASE ``.traj`` files written by ASE molecular dynamics store the MD time step
    (ASE units) and the write interval in their description; the frame spacing is
    their product converted to fs. Other formats: ``None``.
    """
    if Path(src).suffix != ".traj":
        return None
    from ase.io.trajectory import Trajectory

    with Trajectory(os.fspath(src)) as traj:
        desc = getattr(traj, "description", {}) or {}
    if "timestep" not in desc:
        return None
    return float(desc["timestep"]) / ASE_TIME_UNITS_PER_FS * int(desc.get("interval", 1))


class _NamedTextStream:
    """A decompressing text stream that also has a ``name`` (ASE's OUTCAR reader needs it)."""

    def __init__(self, stream, name: str):
        self._stream = stream
        self.name = name

    def __getattr__(self, attr):
        return getattr(self._stream, attr)

    def __iter__(self):
        return iter(self._stream)

    def __next__(self):
        return next(self._stream)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stream.close()


def _ase_iread(src, index):
    """``ase.io.iread`` that also streams compressed files whose ASE reader needs ``name``."""
    import ase.io
    from ase.io.formats import filetype

    from numbec.io._files import open_text

    name = os.fspath(src)
    plain = strip_compression(name)
    if plain == name:
        return ase.io.iread(name, index=index)
    fmt = filetype(name)
    stream = _NamedTextStream(open_text(name), plain)
    return ase.io.iread(stream, index=index, format=fmt)


def _frames_from_ase(src, index) -> Iterator[SourceFrame]:
    sel = parse_index(index)
    if needs_length(sel):
        # ASE resolves negative indices itself; frame numbers are then unknown
        for k, atoms in enumerate(_ase_iread(src, sel)):
            yield _from_atoms(atoms, k)
        return
    wanted = forward_range(sel)
    for k, atoms in enumerate(_ase_iread(src, slice(None))):
        if k > wanted[-1]:
            break
        if k in wanted:
            yield _from_atoms(atoms, k)


def _from_atoms(atoms, frame: int) -> SourceFrame:
    velocities = None
    if "momenta" in atoms.arrays:
        velocities = atoms.get_velocities() * ASE_TIME_UNITS_PER_FS
    return SourceFrame(
        numbers=np.asarray(atoms.numbers, dtype=np.int64),
        positions=np.asarray(atoms.positions, dtype=np.float64),
        cell=np.asarray(atoms.cell[:], dtype=np.float64),
        pbc=np.asarray(atoms.pbc, dtype=bool),
        velocities=velocities,
        frame=frame,
        masses=np.asarray(atoms.get_masses(), dtype=np.float64),  # isotopes as set
    )


def iter_source_frames(src, index=":") -> Iterator[SourceFrame]:
    """Stream the selected frames of any ASE-readable trajectory, one at a time.

    extxyz files (plain or ``.gz``/``.xz``/``.bz2``) go through numbec's strictly
    forward reader (:func:`numbec.io.extxyz.iter_extxyz`), so compressed files
    stream in linear time; everything else through :func:`ase.io.iread`.
    """
    if _is_extxyz(src):
        from numbec.io.extxyz import iter_extxyz

        for frame in iter_extxyz(src, index):
            yield SourceFrame(
                frame.numbers,
                frame.positions,
                frame.cell,
                frame.pbc,
                frame.velocities(),
                frame.frame,
                frame.masses(),
            )
    else:
        yield from _frames_from_ase(src, index)


# --- writing the store -------------------------------------------------------------------


def _open_existing(store) -> tuple[object, dict]:
    """Open a store group read-write and validate its attributes."""
    import zarr

    try:
        group = zarr.open_group(os.fspath(store), mode="r+", use_consolidated=False)
        attrs = dict(group.attrs)
    except Exception as exc:
        raise StoreError(f"{os.fspath(store)}: cannot open as a Zarr group ({exc})") from exc
    _check_attrs(attrs, store)
    return group, attrs


def _check_attrs(attrs: dict, store) -> None:
    where = os.fspath(store)
    kind = attrs.get("format")
    if isinstance(kind, str) and kind.startswith("numbec-") and kind != STORE_FORMAT:
        # another numbec format (a prediction store names the trajectory it was made from)
        made_from = attrs.get("input")
        raise StoreError(
            f"{where} is a {kind.removeprefix('numbec-')} store (format={kind!r}), not a "
            "trajectory store" + (f"; its trajectory store is {made_from}" if made_from else "")
        )
    if attrs.get("format") != STORE_FORMAT:
        raise StoreError(
            f"{where}: not a numbec trajectory store (attribute format="
            f"{attrs.get('format')!r}, expected {STORE_FORMAT!r})"
        )
    if attrs.get("format_version") != STORE_FORMAT_VERSION:
        raise StoreError(
            f"{where}: store format_version {attrs.get('format_version')!r} is not supported "
            f"(this numbec reads version {STORE_FORMAT_VERSION})"
        )
    done = attrs.get("frames_complete")
    if not isinstance(done, int) or isinstance(done, bool) or done < 0:
        raise StoreError(
            f"{where}: attribute frames_complete is missing or invalid ({done!r}); the store "
            f"is corrupt or was not written by numbec"
        )


def _create_store(store, first: SourceFrame, chunk_frames: int, timestep, src, has_vel):
    import zarr

    from numbec import __version__

    n_atoms = len(first.numbers)
    group = zarr.open_group(os.fspath(store), mode="w-")
    for name in ("positions", "cell", "time", "velocities"):
        if name == "velocities" and not has_vel:
            continue
        dims, dtype, units = LAYOUT[name]
        tail = _frame_tail(name, n_atoms)
        arr = group.create_array(
            name,
            shape=(0, *tail),
            chunks=(chunk_frames, *tail),
            dtype=dtype,
            dimension_names=dims,
            fill_value=np.nan,
        )
        arr.attrs["units"] = units
    numbers = group.create_array(
        "numbers", shape=(n_atoms,), dtype="int64", dimension_names=("atom",), fill_value=0
    )
    numbers[:] = first.numbers
    masses = group.create_array(
        "masses", shape=(n_atoms,), dtype="float64", dimension_names=("atom",), fill_value=0
    )
    masses[:] = frame_masses(first)
    masses.attrs["units"] = LAYOUT["masses"][2]
    pbc = group.create_array("pbc", shape=(3,), dtype="bool", dimension_names=("xyz",))
    pbc[:] = first.pbc
    attrs = {
        "format": STORE_FORMAT,
        "format_version": STORE_FORMAT_VERSION,
        "source": os.fspath(src),
        "segments": [],
        "numbec_version": __version__,
        "units": dict(UNITS),
        "frames_complete": 0,
    }
    if timestep is not None:
        attrs["timestep"] = float(timestep)
    group.attrs.update(attrs)
    return group, attrs


def frame_masses(frame: SourceFrame) -> np.ndarray:
    """(N,) float64 amu: the frame's masses, or the standard masses of its atoms."""
    if frame.masses is not None:
        return np.asarray(frame.masses, dtype=np.float64)
    from ase.data import atomic_masses

    return atomic_masses[frame.numbers]


def _check_masses(frame: SourceFrame, ref_masses, where: str) -> None:
    """Masses of a frame: finite, positive and (given ``ref_masses``) those of the store."""
    masses = frame_masses(frame)
    bad = ~(np.isfinite(masses) & (masses > 0))
    if bad.any():
        atom = int(np.argmax(bad))
        raise ValueError(f"{where}: mass of atom {atom} is {masses[atom]} amu; masses must "
                         "be positive")
    if ref_masses is not None and not np.allclose(masses, ref_masses, rtol=1e-9, atol=0):
        atom = int(np.argmax(~np.isclose(masses, ref_masses, rtol=1e-9, atol=0)))
        raise ValueError(f"{where}: atom {atom} has mass {masses[atom]} amu, earlier frames "
                         f"have {ref_masses[atom]} amu (isotopes must not change)")


def _frame_tail(name: str, n_atoms: int) -> tuple:
    """Shape of one frame of array ``name`` (dims after ``frame`` in :data:`LAYOUT`)."""
    sizes = {"atom": n_atoms, "xyz": 3, "cell_vector": 3}
    return tuple(sizes[d] for d in LAYOUT[name][0][1:])


def _auto_chunk_frames(n_atoms: int) -> int:
    return int(max(16, min(4096, DEFAULT_CHUNK_BYTES // max(1, n_atoms * 24))))


def _check_frame(frame: SourceFrame, ref_numbers, ref_pbc, has_vel: bool, where: str):
    n = len(ref_numbers)
    if len(frame.numbers) != n:
        raise ValueError(
            f"{where}: has {len(frame.numbers)} atoms, earlier frames have {n}; a trajectory "
            f"store needs a fixed number of atoms"
        )
    if not np.array_equal(frame.numbers, ref_numbers):
        atom = int(np.argmax(frame.numbers != ref_numbers))
        raise ValueError(
            f"{where}: atom {atom} is element {frame.numbers[atom]}, was {ref_numbers[atom]} "
            f"in earlier frames (atoms reordered?)"
        )
    if not np.array_equal(frame.pbc, ref_pbc):
        raise ValueError(f"{where}: pbc {frame.pbc.tolist()} differs from {ref_pbc.tolist()}")
    for name, value in (("position", frame.positions), ("velocity", frame.velocities)):
        if value is not None:
            bad = first_non_finite(value, 1)
            if bad is not None:
                raise ValueError(f"{where}: {name} of atom {bad[0]} (0-based) is NaN or inf")
    if not np.isfinite(frame.cell).all():
        raise ValueError(f"{where}: cell contains NaN or inf")
    if has_vel and frame.velocities is None:
        raise ValueError(f"{where}: has no velocities but earlier frames have")
    if not has_vel and frame.velocities is not None:
        raise ValueError(f"{where}: has velocities but earlier frames (or the store) have none")


def _progress(enabled):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(unit=" frames", desc="convert", file=sys.stderr)


def convert_trajectory(
    src,
    store,
    *,
    chunk_frames: int | None = None,
    timestep: float | None = None,
    index=":",
    append: bool = False,
    progress: bool | None = None,
    time_series: bool = True,
) -> int:
    """Stream a trajectory file into a chunked Zarr v3 trajectory store.

    Frames are read one at a time and written a chunk at a time, so memory stays
    constant whatever the length of the trajectory. After each chunk is written the
    group attribute ``frames_complete`` is advanced; a killed conversion resumes
    with ``append=True``.

    Parameters
    ----------
    src : str or PathLike
        Any trajectory ASE reads (ASE ``.traj``, VASP XDATCAR/vasprun.xml/OUTCAR,
        LAMMPS dump, …) or extxyz, plain or compressed (``.gz``/``.xz``/``.bz2``;
        extxyz is read by numbec's forward-only reader in linear time).
    store : str or PathLike
        Directory of the Zarr store to create (or to extend with ``append=True``).
    chunk_frames : int, optional
        Frames per chunk; by default about 4 MiB of positions per chunk.
    timestep : float, optional
        Time between consecutive frames of ``src`` in fs. Default: read from an ASE
        MD ``.traj`` (time step × write interval); otherwise unknown, and ``time``
        is NaN. With an ``index`` step ``s`` the stored spacing is ``s * timestep``.
    index : str, int or slice
        Frames of ``src`` to convert (``":"``, ``"1000:"``, ``"::10"``).
    append : bool
        Extend an existing store. If its last segment came from the same ``src``
        and ``index``, conversion resumes after the frames already complete (after a
        kill or interruption); otherwise all selected frames of ``src`` are appended
        after the existing ones (a continuation run: same atoms, same time step).
    progress : bool, optional
        Show a tqdm progress bar; default only when stderr is a terminal.
    time_series : bool
        True (default): the frames are a time series, so a time step is required (from
        the file, ``timestep``, or the store appended to), as ``numbec convert`` requires
        it. False (``--no-time``): the frames are not a time series (e.g. a set of
        structures); without a time step ``time`` is NaN and ``numbec predict`` refuses
        the store until ``numbec info --set-timestep`` sets one.

    Returns
    -------
    int
        ``frames_complete`` of the store after conversion.

    Raises
    ------
    FileExistsError
        ``store`` exists and ``append`` is false.
    FileNotFoundError
        ``src`` does not exist, or the directory of ``store`` does not.
    OutputLockedError
        Another process is writing ``store``.
    OSError
        The disk is full (the message names the store; the frames written are kept).
    ValueError
        Frames with a different number/order of atoms, NaN positions, velocities in
        some frames only, a time step that differs from the store's (or none, unless
        ``time_series=False``), a truncated compressed file; the message names the
        source file and frame.
    """
    src_name = os.fspath(src)
    if not os.path.isfile(src_name):
        raise FileNotFoundError(f"{src_name}: no such trajectory file")
    sel = parse_index(index)
    step = 1 if isinstance(sel, int) else (sel.step or 1)
    if timestep is None:
        timestep = source_timestep(src)
    elif not (np.isfinite(timestep) and timestep > 0):
        raise ValueError(f"time step must be a positive number of fs, got {timestep!r}")
    frame_dt = None if timestep is None else float(timestep) * step
    index_text = (
        str(index) if not isinstance(index, slice) else f"{sel.start}:{sel.stop}:{sel.step}"
    )

    if chunk_frames is not None and (int(chunk_frames) != chunk_frames or chunk_frames < 1):
        raise ValueError(f"chunk_frames must be a positive number of frames, got "
                         f"{chunk_frames!r}")
    check_output_location(store, "trajectory store")
    with store_lock(store, "numbec convert"), naming_disk_full(
            store, "the frames written so far are kept: free space and run again with "
            "--append"):
        return _convert_locked(src, src_name, store, index, index_text, frame_dt,
                               chunk_frames, append, progress, time_series)


def _convert_locked(src, src_name, store, index, index_text, frame_dt, chunk_frames, append,
                    progress, time_series) -> int:
    frames = iter_source_frames(src, index)
    store_exists = os.path.exists(os.fspath(store))
    if store_exists and not append:
        raise FileExistsError(
            f"{os.fspath(store)}: store exists; use append=True (--append) to resume or extend "
            f"it, or remove it"
        )
    skip = 0
    first = None
    if store_exists:
        group, attrs = _open_existing(store)
        done = attrs["frames_complete"]
        segments = list(attrs.get("segments", []))
        stored_dt = _stored_timestep(attrs, store)
        if frame_dt is not None and stored_dt is not None and not np.isclose(frame_dt, stored_dt):
            raise ValueError(
                f"{src_name}: frame spacing {frame_dt} fs differs from the store's {stored_dt} fs"
            )
        if stored_dt is None and frame_dt is not None and done > 0:
            raise ValueError(
                f"{src_name}: the store has no time step but this source has {frame_dt} fs"
            )
        frame_dt = stored_dt if stored_dt is not None else frame_dt
        _require_timestep(frame_dt, time_series, src_name)
        last = segments[-1] if segments else None
        if last and last["source"] == src_name and last["index"] == index_text:
            skip = done - last["start"]
        else:
            segments.append({"source": src_name, "index": index_text, "start": done, "frames": 0})
        numbers = np.asarray(group["numbers"][:])
        ref_masses = np.asarray(group["masses"][:]) if "masses" in group else None
        pbc = np.asarray(group["pbc"][:])
        has_vel = "velocities" in group
        chunk = group["positions"].chunks[0]
        names = ["positions", "cell", "time"] + (["velocities"] if has_vel else [])
        arrays = {name: group[name] for name in names}
        # drop anything a killed run wrote beyond the last complete chunk
        for arr in arrays.values():
            if arr.shape[0] != done:
                arr.resize((done, *arr.shape[1:]))
        group.attrs.update({"finished": False})
    else:
        _require_timestep(frame_dt, time_series, src_name)
        try:
            first = _next_frame(frames, src_name, -1)
        except StopIteration:
            raise ValueError(f"{src_name}: no frames selected by index {index!r}") from None
        if len(first.numbers) == 0:
            raise ValueError(f"{src_name}, frame {first.frame}: has no atoms")
        has_vel = first.velocities is not None
        chunk = chunk_frames or _auto_chunk_frames(len(first.numbers))
        group = arrays = None  # the store is created at the first flush
        segments = [{"source": src_name, "index": index_text, "start": 0, "frames": 0}]
        numbers, pbc = first.numbers, first.pbc
        ref_masses = frame_masses(first)
        done = 0
        frames = _chain([first], frames)

    names = ["positions", "cell", "time"] + (["velocities"] if has_vel else [])
    buffers = {name: [] for name in names}  # frames of the chunk being filled
    # the first flush fills the partial chunk at the end of the store, so that later
    # chunks are written whole
    capacity = chunk - done % chunk
    bar = _progress(progress)
    segment = segments[-1]
    # the first frames of this run, for the check of the velocity units
    probe = [] if has_vel and frame_dt is not None else None

    def flush(final):
        nonlocal done, capacity, group, arrays
        fill = len(buffers["positions"])
        if fill == 0:
            return
        if group is None:
            # a request larger than the whole source gets chunks of the source's length
            size = min(chunk, fill) if final else chunk
            group, _attrs = _create_store(store, first, size, frame_dt, src, has_vel)
            group.attrs.update({"finished": False})
            arrays = {name: group[name] for name in names}
        new_total = done + fill
        for name, arr in arrays.items():
            arr.resize((new_total, *arr.shape[1:]))
            arr[done:new_total] = np.stack(buffers[name])
            buffers[name].clear()
        done = new_total
        segment["frames"] = done - segment["start"]
        # advanced only now that every array of the chunk is on disk
        update = {"frames_complete": done, "segments": segments}
        if frame_dt is not None:
            update["timestep"] = frame_dt
        group.attrs.update(update)
        if bar is not None:
            bar.update(fill)
        capacity = chunk

    try:
        k = -1
        source_frame = -1
        while True:
            try:
                frame = _next_frame(frames, src_name, source_frame)
            except StopIteration:
                break
            k += 1
            if k < skip:
                continue
            source_frame = frame.frame
            where = f"{src_name}, frame {frame.frame}"
            _check_frame(frame, numbers, pbc, has_vel, where)
            _check_masses(frame, ref_masses, where)
            buffers["positions"].append(frame.positions)
            buffers["cell"].append(frame.cell)
            fill = len(buffers["positions"])
            buffers["time"].append(np.nan if frame_dt is None else (done + fill - 1) * frame_dt)
            if has_vel:
                buffers["velocities"].append(frame.velocities)
            if probe is not None:
                probe.append(frame)
                if len(probe) == VELOCITY_CHECK_FRAMES:
                    check_velocity_units(probe, frame_masses(probe[0]), frame_dt, src_name)
                    probe = None
            if fill == capacity:
                flush(final=False)
        flush(final=True)
        if probe is not None and len(probe) >= 3:
            check_velocity_units(probe, frame_masses(probe[0]), frame_dt, src_name)
        group.attrs.update({"finished": True})
        from numbec.io._files import consolidate

        consolidate(store)
    finally:
        if bar is not None:
            bar.close()
    return done


#: Consecutive frames whose velocities :func:`check_velocity_units` compares with the
#: positions at the start of a conversion.
VELOCITY_CHECK_FRAMES = 8
#: Range of rms(stored) / rms(central differences) in which :func:`check_velocity_units`
#: is quiet. Central differences of frames written every n MD steps miss fast motion, which
#: raises the ratio: 1.3 for GFN2-xTB water 20 fs apart, 1.6 (4.1) for quartz vibrating at
#: 460-1050 cm^-1 10 (20) fs apart; hence the wider upper side. A unit slip is a factor of
#: 10 (Å/ps, Å/(10 fs)) or about 100 (ASE units divided instead of multiplied by
#: ``ase.units.fs``).
VELOCITY_RATIO_RANGE = (1 / 3, 5.0)


def central_differences(before, after, cells, pbc, dt) -> np.ndarray:
    """Velocities ``(r_{k+1} - r_{k-1}) / (2 dt)`` (F, N, 3) Å/fs of frames k.

    before, after : (F, N, 3) Å, the positions of frames k - 1 and k + 1 (wrapped or not);
    cells : (F, 3, 3) Å, rows = lattice vectors, of frames k; pbc : (3,) bool; dt : fs
    between consecutive frames. Along periodic directions the displacement is the minimum
    image, which assumes no atom moves half a cell in two frames.
    """
    disp = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    cells = np.asarray(cells, dtype=np.float64)
    if pbc.any() and np.all(np.abs(np.linalg.det(cells)) > 1e-12):
        frac = np.einsum("fnj,fjk->fnk", disp, np.linalg.inv(cells))
        frac -= np.round(frac) * pbc
        disp = np.einsum("fnk,fkj->fnj", frac, cells)
    return disp / (2.0 * float(dt))


def check_velocity_units(frames, masses, dt, where) -> float | None:
    """Warn when stored velocities disagree with the motion of the positions.

    Compares the mass-weighted rms of the stored velocities of the interior ``frames``
    with that of central differences of their positions (minimum image along periodic
    directions, since positions may be wrapped into the cell). Mass weighting makes
    every degree of freedom count by its kinetic energy, so light atoms vibrating faster
    than the frame spacing resolves do not dominate.

    Parameters
    ----------
    frames : list of SourceFrame
        At least 3 consecutive frames, ``dt`` apart, with velocities (Å/fs).
    masses : (N,) float64, amu.
    dt : float
        fs between the frames.
    where : str
        Named in the warning (the source file).

    Returns
    -------
    float or None
        The ratio rms(stored) / rms(central differences), or None when the positions do
        not move (nothing to compare).
    """
    import warnings

    positions = np.stack([f.positions for f in frames])
    differences = central_differences(positions[:-2], positions[2:],
                                      np.stack([f.cell for f in frames[1:-1]]),
                                      frames[0].pbc, dt)
    stored = np.stack([f.velocities for f in frames[1:-1]])
    weights = np.asarray(masses, dtype=np.float64)[None, :, None] / np.sum(masses)

    def rms(v):
        return float(np.sqrt(np.sum(weights * v**2) / v.shape[0]))

    rms_stored, rms_differences = rms(stored), rms(differences)
    if rms_differences == 0.0:
        return None
    ratio = rms_stored / rms_differences
    low, high = VELOCITY_RATIO_RANGE
    if not low <= ratio <= high:
        warnings.warn(
            f"{where}: the velocities do not match the motion of the positions in frames "
            f"{frames[0].frame}-{frames[-1].frame}: mass-weighted rms {rms_stored:.3g} Å/fs "
            f"stored, {rms_differences:.3g} Å/fs from central differences of the positions "
            f"{dt:g} fs apart (ratio {ratio:.3g}). The likely cause is velocities written in "
            "other units than the file claims (ASE velocities are in Å per ASE time unit: "
            "Å/fs times 1/ase.units.fs), or a wrong time step"
            + (", or frames too far apart for differences to follow the motion" if ratio > 1
               else "") + "; the dipole derivative and the IR intensities scale with the "
            "velocities",
            stacklevel=2,
        )
    return ratio


def _require_timestep(frame_dt, time_series, src_name):
    if frame_dt is None and time_series:
        raise ValueError(
            f"{src_name}: the file records no time step; give the time between its frames "
            "(timestep=FS, --timestep FS), or say that the frames are not a time series "
            "(time_series=False, --no-time)"
        )


def _next_frame(frames, src_name, previous):
    """The next frame of a source; a truncated or corrupt (compressed) file raises a
    ValueError naming the file and the last frame read."""
    try:
        return next(frames)
    except (EOFError, lzma.LZMAError, zlib.error, gzip.BadGzipFile) as exc:
        after = "before its first frame" if previous < 0 else f"after frame {previous}"
        raise ValueError(f"{src_name}: the file is truncated or corrupt {after} "
                         f"({type(exc).__name__}: {exc})") from exc


def _stored_timestep(attrs, store):
    """The store's ``timestep`` attribute (fs) or None; anything but a positive number is
    an error naming the store."""
    dt = attrs.get("timestep")
    if dt is None:
        return None
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not (
            np.isfinite(dt) and dt > 0):
        raise StoreError(f"{os.fspath(store)}: attribute timestep = {dt!r} is not a positive "
                         "number of fs; fix it with 'numbec info --set-timestep FS STORE'")
    return float(dt)


def _chain(head, tail):
    yield from head
    yield from tail


# --- reading the store -------------------------------------------------------------------


def _open_group_readonly(store):
    import zarr

    where = os.fspath(store)
    if not os.path.exists(where):
        raise FileNotFoundError(f"{where}: no such trajectory store")
    if os.path.isfile(where):
        raise StoreError(f"{where} is a trajectory file, not a trajectory store: run "
                         f"'numbec convert {where} STORE.zarr' first and use STORE.zarr")
    try:
        group = zarr.open_group(where, mode="r", use_consolidated=False)
        attrs = dict(group.attrs)
    except (json.JSONDecodeError, Exception) as exc:
        raise StoreError(
            f"{where}: cannot open as a Zarr group ({type(exc).__name__}: {exc}); the store "
            f"metadata is missing or corrupt"
        ) from exc
    _check_attrs(attrs, store)
    return group, attrs


def _validated_arrays(group, attrs, store) -> dict:
    from ase.data import chemical_symbols

    where = os.fspath(store)
    required = ("positions", "cell", "numbers", "time", "pbc")
    try:
        keys = set(group.array_keys())
    except Exception as exc:
        raise StoreError(f"{where}: cannot list the store's arrays ({exc})") from exc
    missing = [name for name in required if name not in keys]
    if missing:
        raise StoreError(f"{where}: store lacks array(s) {', '.join(missing)}")
    arrays = {}
    for name in (*required, *OPTIONAL):
        if name not in keys:
            continue
        try:
            arrays[name] = group[name]
        except Exception as exc:
            raise StoreError(
                f"{where}: array {name} is unreadable ({type(exc).__name__}: {exc}); the store "
                f"is corrupt"
            ) from exc
    n_atoms = arrays["numbers"].shape[0]
    if n_atoms == 0:
        raise StoreError(f"{where}: the store holds frames of 0 atoms")
    for name, arr in arrays.items():
        _check_units(arr, name, where)
    done = attrs["frames_complete"]
    for name in _FRAME_ARRAYS:
        if name not in arrays:
            continue
        tail = _frame_tail(name, n_atoms)
        shape = arrays[name].shape
        if tuple(shape[1:]) != tail:
            raise StoreError(
                f"{where}: array {name} has shape {shape}, expected (frame, *{tail}) for "
                f"{n_atoms} atoms"
            )
        if shape[0] < done:
            raise StoreError(
                f"{where}: frames_complete = {done} but array {name} holds only {shape[0]} "
                f"frames; the store is inconsistent"
            )
    numbers = _read(arrays["numbers"], "numbers", where)
    bad = ~((numbers >= 1) & (numbers < len(chemical_symbols)))
    if bad.any():
        atom = int(np.argmax(bad))
        raise StoreError(f"{where}: array numbers gives atom {atom} the atomic number "
                         f"{numbers[atom]}, not one of 1-{len(chemical_symbols) - 1}; the "
                         "store is corrupt")
    if "masses" in arrays:
        masses = np.asarray(_read(arrays["masses"], "masses", where), dtype=np.float64)
        if masses.shape != (n_atoms,) or not np.all(np.isfinite(masses) & (masses > 0)):
            raise StoreError(f"{where}: array masses must hold {n_atoms} positive amu values "
                             f"(shape {masses.shape}); the store is corrupt")
    if arrays["pbc"].shape != (3,):
        raise StoreError(f"{where}: array pbc has shape {arrays['pbc'].shape}, expected (3,)")
    return arrays


#: Spellings of the units of :data:`LAYOUT` a store may carry: numbec's, and ``Å`` as
#: written before numbec 0.1.
_UNIT_SPELLINGS = {units: {units, units.replace("Angstrom", "Å")}
                   for units in UNITS.values()}


def _check_units(arr, name, where):
    """Refuse an array whose ``units`` attribute is not the one of :data:`LAYOUT`: numbec
    reads the values as they are, so other units would give silently wrong results."""
    expected = LAYOUT[name][2]
    if expected is None:
        return
    units = dict(arr.attrs).get("units")
    if units not in _UNIT_SPELLINGS[expected]:
        raise StoreError(f"{where}: array {name} has units {units!r}, numbec reads it in "
                         f"{expected!r} only; convert the trajectory again from its source")


def _read(arr, name, where, frames=None):
    """``arr[:]`` (or its ``frames`` slice) as numpy; a chunk that cannot be read (deleted
    metadata, garbage bytes) raises a :class:`StoreError` naming the store, the array and
    the frames."""
    key = slice(None) if frames is None else frames
    try:
        return np.asarray(arr[key])
    except Exception as exc:
        raise StoreError(_unreadable(where, name, key, arr.shape, exc)) from exc


def _unreadable(where, name, key, shape, exc) -> str:
    span = ""
    if LAYOUT[name][0][0] == "frame" and shape and shape[0]:
        first, stop, _step = key.indices(shape[0])
        span = f", frames {first}-{stop - 1}"
    return (f"{where}: cannot read array {name}{span} ({type(exc).__name__}: {exc}); the "
            "store is damaged: convert the trajectory again")


class _NamedReads:
    """A Zarr array whose read errors name the store, the array and the frames, so that a
    damaged chunk met while streaming (in any Dask task) says where it is."""

    def __init__(self, arr, name, where):
        self.arr, self.name, self.where = arr, name, where
        self.shape, self.dtype, self.ndim = arr.shape, arr.dtype, arr.ndim
        self.chunks = arr.chunks

    def __getitem__(self, key):
        try:
            return self.arr[key]
        except Exception as exc:
            first = key[0] if isinstance(key, tuple) and key else key
            first = first if isinstance(first, slice) else slice(None)
            raise StoreError(_unreadable(self.where, self.name, first, self.shape,
                                         exc)) from exc

    def __dask_tokenize__(self):
        from dask.base import tokenize

        return "numbec-named-reads", self.name, tokenize(self.arr)


def open_trajectory(store, chunks=None):
    """Open a trajectory store as a lazy, dask-backed :class:`xarray.Dataset`.

    Only the first ``frames_complete`` frames are exposed (a store left by a killed
    conversion is read up to its last complete chunk).

    Parameters
    ----------
    store : str or PathLike
        A store written by :func:`convert_trajectory`.
    chunks : int or dict, optional
        Frames per dask chunk (int) or ``{"frame": n}``; default: the store's chunks.

    Returns
    -------
    xarray.Dataset
        Dims ``frame``, ``atom``, ``xyz`` (3), ``cell_vector`` (3). Variables
        ``positions`` (frame, atom, xyz) float64 Å; ``velocities`` (frame, atom,
        xyz) float64 Å/fs if stored; ``cell`` (frame, cell_vector, xyz) float64 Å,
        rows = lattice vectors; ``numbers`` (atom) int64; ``masses`` (atom) float64 amu
        if stored (stores written before numbec 0.1 lack it); ``pbc`` (xyz) bool.
        Coordinate ``time`` (frame) fs. Attributes: ``timestep`` (fs, if known),
        ``source``, ``segments``, ``frames_complete``, ``chunk_frames``, ``store``.

    Raises
    ------
    FileNotFoundError
        No store at ``store``.
    StoreError
        Missing or corrupt attributes, missing arrays, arrays shorter than
        ``frames_complete`` or of the wrong shape, or no complete frame.
    """
    import dask.array as da

    where = os.fspath(store)
    group, attrs = _open_group_readonly(store)
    arrays = _validated_arrays(group, attrs, store)
    done = attrs["frames_complete"]
    if done == 0:
        raise StoreError(f"{where}: store has no complete frame yet (frames_complete = 0)")
    store_chunk = arrays["positions"].chunks[0]
    if chunks is None:
        frame_chunk = store_chunk
    elif isinstance(chunks, int):
        frame_chunk = chunks
    elif isinstance(chunks, dict) and set(chunks) <= {"frame"}:
        frame_chunk = chunks.get("frame", store_chunk)
    else:
        raise ValueError(f"chunks must be an int or {{'frame': n}}, got {chunks!r}")

    def lazy(name):
        arr = _NamedReads(arrays[name], name, where)
        data = da.from_array(arr, chunks=(store_chunk, *arr.shape[1:]), lock=False)[:done]
        return data.rechunk((frame_chunk, *arr.shape[1:])) if frame_chunk != store_chunk else data

    ds = trajectory_dataset(
        positions=lazy("positions"),
        velocities=lazy("velocities") if "velocities" in arrays else None,
        cell=lazy("cell"),
        numbers=np.asarray(_read(arrays["numbers"], "numbers", where), dtype=np.int64),
        pbc=np.asarray(_read(arrays["pbc"], "pbc", where), dtype=bool),
        time=np.asarray(_read(arrays["time"], "time", where, slice(0, done)),
                        dtype=np.float64),
        masses=(np.asarray(_read(arrays["masses"], "masses", where), dtype=np.float64)
                if "masses" in arrays else None),
    )
    ds.attrs.update(
        {
            "format": STORE_FORMAT,
            "source": attrs.get("source", ""),
            "segments": json.dumps(attrs.get("segments", [])),
            "numbec_version": attrs.get("numbec_version", ""),
            "frames_complete": done,
            "complete": _conversion_complete(arrays, attrs),
            "chunk_frames": store_chunk,
            "store": where,
        }
    )
    dt = _stored_timestep(attrs, store)
    if dt is not None:
        ds.attrs["timestep"] = dt
        _check_time_coordinate(ds["time"].values, dt, where)
    return ds


def _conversion_complete(arrays, attrs) -> bool:
    """Whether the last conversion into the store ran to the end of its source and left no
    partial chunk beyond ``frames_complete``."""
    allocated = max(arrays[name].shape[0] for name in _FRAME_ARRAYS if name in arrays)
    return allocated == attrs["frames_complete"] and attrs.get("finished") is True


def _check_time_coordinate(time, dt, where):
    """Refuse a ``time`` coordinate (fs) that is not ``k * dt`` spaced: NaN (a deleted or
    damaged chunk), going backwards, or advancing by other than the ``timestep``
    attribute. Predictions copy it and spectra trust the time step, so a contradiction
    would be silent garbage."""
    time = np.asarray(time, dtype=np.float64)
    fix = "; set the time of every frame with 'numbec info --set-timestep FS STORE'"
    nan = ~np.isfinite(time)
    if nan.any():
        first = int(np.argmax(nan))
        run = nan[first:]
        last = first + (int(np.argmin(run)) if not run.all() else run.size) - 1
        raise StoreError(f"{where}: time of frames {first}-{last} is NaN or inf although the "
                         f"store has a time step ({dt:g} fs): a deleted or damaged chunk of "
                         f"array time{fix}")
    spacing = np.diff(time)
    bad = ~np.isclose(spacing, dt, rtol=1e-6, atol=0.0)
    if bad.any():
        k = int(np.argmax(bad)) + 1
        how = ("goes backwards" if spacing[k - 1] <= 0
               else f"advances by {spacing[k - 1]:g} fs")
        raise StoreError(f"{where}: time {how} from frame {k - 1} to frame {k} ({time[k - 1]:g} "
                         f"-> {time[k]:g} fs), but the attribute timestep says {dt:g} fs per "
                         f"frame{fix}")


def trajectory_dataset(positions, cell, numbers, pbc, time, velocities=None, attrs=None,
                       masses=None):
    """A Trajectory dataset (the layout :func:`open_trajectory` returns, :data:`LAYOUT`)
    from arrays: positions (F, N, 3) Å, cell (F, 3, 3) Å rows = lattice vectors, numbers
    (N,) int, pbc (3,) bool, time (F,) fs, velocities (F, N, 3) Å/fs or None, masses (N,)
    amu or None; numpy or dask. ``attrs``: dataset attributes (e.g. ``timestep`` fs,
    ``temperature`` K)."""
    import xarray as xr

    values = {"positions": positions, "cell": cell,
              "numbers": np.asarray(numbers, dtype=np.int64),
              "pbc": np.asarray(pbc, dtype=bool), "velocities": velocities,
              "masses": None if masses is None else np.asarray(masses, dtype=np.float64)}
    data_vars = {}
    for name, data in values.items():
        if data is None:
            continue
        dims, _dtype, units = LAYOUT[name]
        data_vars[name] = (dims, data, {"units": units} if units else {})
    ds = xr.Dataset(data_vars, coords={"time": ("frame", np.asarray(time, dtype=np.float64),
                                                {"units": LAYOUT["time"][2]})},
                    attrs=dict(attrs or {}))
    ds["numbers"].attrs["long_name"] = "atomic numbers"
    ds["cell"].attrs["long_name"] = "cell, rows = lattice vectors"
    return ds


def dataset_timestep(ds) -> float | None:
    """Frame spacing in fs of a Trajectory or Prediction dataset, or None if unknown.

    From ``attrs["timestep"]`` when it is a finite number > 0, else from a uniformly spaced
    ``time`` coordinate (fs).
    """
    dt = ds.attrs.get("timestep")
    if dt is not None and np.isfinite(float(dt)) and float(dt) > 0:
        return float(dt)
    if "time" in ds.coords and ds.sizes.get("frame", 0) > 1:
        diffs = np.diff(np.asarray(ds["time"].values, dtype=np.float64))
        if diffs.size and np.allclose(diffs, diffs[0], rtol=1e-9) and diffs[0] > 0:
            return float(diffs[0])
    return None


def velocities_from_positions(ds, timestep: float | None = None):
    """Velocities from positions by central differences, lazily (dask).

    ``v_k = (r_{k+1} - r_{k-1}) / (2 dt)`` for interior frames and the one-sided
    second-order formulas ``v_0 = (-3 r_0 + 4 r_1 - r_2) / (2 dt)``,
    ``v_{n-1} = (3 r_{n-1} - 4 r_{n-2} + r_{n-3}) / (2 dt)`` at the two ends, so the
    truncation error is O(dt^2) everywhere: ``-dt^2/6 * d^3r/dt^3`` inside and
    ``+dt^2/3 * d^3r/dt^3`` at the ends. For a vibration of angular frequency
    ``omega`` the relative error is ``(omega dt)^2 / 6`` (1 % at omega dt = 0.25;
    a 1 fs step resolves 1300 cm^-1 to 0.1 %).

    Positions need not be unwrapped: frame-to-frame displacements are taken with
    the minimum-image convention along periodic directions (using the cell of the
    later frame), which assumes no atom moves more than half a cell length between
    stored frames.

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`open_trajectory`: ``positions`` (frame, atom, xyz) Å, ``cell``,
        ``pbc``; at least 3 frames, equally spaced in time.
    timestep : float, optional
        Frame spacing in fs; default ``ds.attrs["timestep"]``.

    Returns
    -------
    xarray.DataArray
        (frame, atom, xyz) float64 Å/fs, chunked like ``positions``.

    Raises
    ------
    ValueError
        No time step known, or fewer than 3 frames.
    """
    import dask.array as da
    import xarray as xr

    dt = timestep if timestep is not None else ds.attrs.get("timestep")
    if dt is None or not np.isfinite(dt) or dt <= 0:
        raise ValueError(
            f"{ds.attrs.get('store', 'trajectory')}: no time step known, cannot derive "
            "velocities from positions; set it with 'numbec info --set-timestep FS STORE' "
            "(or convert with --timestep FS, or pass timestep=)"
        )
    n = ds.sizes["frame"]
    if n < 3:
        raise ValueError(f"need at least 3 frames to derive velocities, got {n}")
    pos = ds["positions"].data
    if not isinstance(pos, da.Array):
        pos = da.from_array(np.asarray(pos), chunks=(max(n // 4, 3), -1, -1))
    cell = ds["cell"].data
    if not isinstance(cell, da.Array):
        cell = da.from_array(np.asarray(cell), chunks=(pos.chunks[0], 3, 3))
    disp = pos[1:] - pos[:-1]
    periodic = np.asarray(ds["pbc"].values, dtype=bool)
    if periodic.any():
        later = cell[1:].rechunk((disp.chunks[0], 3, 3))
        inverse = later.map_blocks(_safe_inverse, dtype=np.float64)
        frac = da.einsum("fnj,fjk->fnk", disp, inverse)
        frac = frac - da.round(frac) * periodic[None, None, :]
        disp = da.einsum("fnk,fkj->fnj", frac, later)
    first = (3.0 * disp[:1] - disp[1:2]) / 2.0
    inner = (disp[1:] + disp[:-1]) / 2.0
    last = (3.0 * disp[-1:] - disp[-2:-1]) / 2.0
    vel = da.concatenate([first, inner, last], axis=0) / float(dt)
    vel = vel.rechunk(pos.chunks)
    return xr.DataArray(
        vel,
        dims=("frame", "atom", "xyz"),
        coords={"time": ds["time"]} if "time" in ds.coords else None,
        name="velocities",
        attrs={
            "units": LAYOUT["velocities"][2],
            "method": "central differences of minimum-image displacements, "
            "second-order one-sided at the ends; error O(dt^2)",
            "timestep": float(dt),
        },
    )


#: ``velocities_source`` of a prediction whose velocities came from
#: :func:`velocities_from_positions` (their ``method`` attribute starts the same way).
VELOCITIES_FROM_POSITIONS = "central differences of positions"


def velocities_from_positions_used(velocities) -> bool:
    """Whether a velocities DataArray was made by :func:`velocities_from_positions` (its
    ``method`` attribute), or a recorded ``velocities_source`` string names that method."""
    if velocities is None or isinstance(velocities, str):
        text = velocities
    else:
        text = velocities.attrs.get("method")
    return isinstance(text, str) and text.startswith("central differences")


def _safe_inverse(cells):
    """Batched inverse of (F, 3, 3) cells; singular (non-periodic) ones give zeros."""
    out = np.zeros_like(cells)
    ok = np.abs(np.linalg.det(cells)) > 1e-12
    out[ok] = np.linalg.inv(cells[ok])
    return out


def set_timestep(store, timestep: float) -> None:
    """Set the time step of an existing trajectory store in place (under its lock).

    Rewrites the ``timestep`` attribute (fs between stored frames) and the ``time``
    coordinate of the complete frames (``time[k] = k * timestep``), e.g. for a store
    converted without a time step.

    Raises
    ------
    ValueError
        ``timestep`` is not a positive number of fs.
    StoreError, FileNotFoundError
        ``store`` is not a trajectory store.
    OutputLockedError
        Another process is writing ``store``.
    """
    if isinstance(timestep, bool) or not (np.isfinite(timestep) and timestep > 0):
        raise ValueError(f"time step must be a positive number of fs, got {timestep!r}")
    _open_group_readonly(store)  # a clear error for what is not a trajectory store
    with store_lock(store, "numbec info --set-timestep"):
        group, attrs = _open_existing(store)
        done = attrs["frames_complete"]
        time = group["time"]
        if time.shape[0] > done:
            time.resize((done,))  # frames beyond the complete ones are rewritten on resume
        time[:done] = np.arange(done) * float(timestep)
        group.attrs.update({"timestep": float(timestep)})
        if attrs.get("finished"):
            from numbec.io._files import consolidate

            consolidate(store)


def trajectory_summary(store) -> dict:
    """Facts about a store for ``numbec info``, without reading frame data.

    Returns a dict: ``frames`` (complete), ``frames_allocated``, ``atoms``,
    ``species`` ({symbol: count}), ``timestep`` (fs or None), ``duration`` (fs or
    None), ``chunk_frames``, ``velocities`` (bool), ``complete`` (bool: no partial
    chunk beyond ``frames`` and the last conversion finished), ``source``,
    ``segments``, ``time_error`` (None, or why :func:`open_trajectory` would refuse the
    ``time`` coordinate: the only frame-indexed array it reads, 8 bytes per frame).
    """
    from ase.data import chemical_symbols

    group, attrs = _open_group_readonly(store)
    arrays = _validated_arrays(group, attrs, store)
    numbers = _read(arrays["numbers"], "numbers", os.fspath(store))
    done = attrs["frames_complete"]
    species: dict[str, int] = {}
    for z in numbers:
        species[chemical_symbols[int(z)]] = species.get(chemical_symbols[int(z)], 0) + 1
    dt = _stored_timestep(attrs, store)
    allocated = max(arrays[name].shape[0] for name in _FRAME_ARRAYS if name in arrays)
    time_error = None
    if dt is not None:
        try:
            _check_time_coordinate(_read(arrays["time"], "time", os.fspath(store),
                                         slice(0, done)), dt, os.fspath(store))
        except StoreError as exc:
            time_error = str(exc)
    return {
        "store": os.fspath(store),
        "frames": done,
        "frames_allocated": allocated,
        "atoms": len(numbers),
        "species": species,
        "timestep": dt,
        "duration": None if dt is None or done == 0 else (done - 1) * dt,
        "chunk_frames": arrays["positions"].chunks[0],
        "velocities": "velocities" in arrays,
        "pbc": _read(arrays["pbc"], "pbc", os.fspath(store)).tolist(),
        "complete": _conversion_complete(arrays, attrs),
        "source": attrs.get("source"),
        "segments": attrs.get("segments", []),
        "time_error": time_error,
    }
