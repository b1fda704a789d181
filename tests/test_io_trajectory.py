"""Trajectory store: conversion, units, resume after a kill, corrupt stores, velocities."""

from __future__ import annotations

import json
import lzma
import subprocess
import sys
import warnings
from pathlib import Path

import ase.io
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from ase import Atoms, units
from ase.data import chemical_symbols
from outcar_factory import make_outcar, write_outcar

import numbec
from numbec.io import trajectory as trajmod
from numbec.io.trajectory import StoreError, trajectory_summary, velocities_from_positions

AMU_A2_PER_FS2_IN_EV = 1.0 / (units.fs**2)  # 1 amu Å²/fs² in eV (ASE: amu Å²/t² = eV)


# --- sources -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def md_traj(tmp_path_factory):
    """ASE VelocityVerlet MD of fcc Cu (EMT), every 2nd step of 1 fs written."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    path = tmp_path_factory.mktemp("md") / "cu.traj"
    atoms = bulk("Cu", cubic=True).repeat(2)
    atoms.rattle(0.05, seed=1)
    atoms.calc = EMT()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(2))
    Stationary(atoms)
    md = VelocityVerlet(atoms, timestep=1.0 * units.fs, trajectory=str(path), loginterval=2)
    md.run(60)
    return path


def _synthetic_frames(n_frames=13, n_atoms=5, seed=0, with_velocities=True, cell=6.0):
    """Atoms moving at constant velocities (Å/fs), frames 1 fs apart (so the velocities
    agree with the positions, as convert checks)."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(0, cell, (n_atoms, 3))
    velocities = rng.normal(0, 0.01, (n_atoms, 3))
    frames = []
    for k in range(n_frames):
        atoms = Atoms(
            ["O", "H", "H", "Si", "O"][:n_atoms],
            positions=start + k * velocities,
            cell=np.diag([cell, cell + 1, cell + 2]) + 0.3 * np.eye(3)[::-1] * (k % 2),
            pbc=True,
        )
        if with_velocities:
            atoms.set_velocities(velocities / units.fs)  # ASE units
        frames.append(atoms)
    return frames


def _expected_velocities_fs(frames):
    return np.array([a.get_velocities() * units.fs for a in frames])


@pytest.fixture
def xyz_source(tmp_path):
    frames = _synthetic_frames()
    path = tmp_path / "traj.xyz"
    ase.io.write(path, frames, format="extxyz")  # ASE writes momenta:R:3
    return path, ase.io.read(path, ":")  # the reference: ASE's own reader of the file


# --- conversion --------------------------------------------------------------------------


def test_ase_md_velocities_are_converted_to_A_per_fs(md_traj, tmp_path):
    store = tmp_path / "cu.zarr"
    n = numbec.convert_trajectory(md_traj, store, chunk_frames=7)
    ds = numbec.open_trajectory(store)
    assert n == ds.sizes["frame"] == 31
    assert ds.attrs["timestep"] == pytest.approx(2.0)  # 1 fs step x interval 2
    np.testing.assert_allclose(ds.time.values, 2.0 * np.arange(31))
    pos = ds.positions.values
    vel = ds.velocities.values
    assert ds.velocities.attrs["units"] == "Angstrom/fs"
    # stored velocities = central differences of positions / fs, to MD accuracy (O(dt^2))
    fd = (pos[2:] - pos[:-2]) / (2 * 2.0)
    err = np.abs(fd - vel[1:-1]).max()
    assert err < 0.01 * np.abs(vel).max()
    # and the factor ase.units.fs (≈ 0.098) is really applied: ASE-unit values fail
    ase_units = np.array([a.get_velocities() for a in ase.io.read(md_traj, ":")])
    assert np.abs(fd - ase_units[1:-1]).max() > 5 * np.abs(vel).max()
    # kinetic energy from Å/fs and amu equals ASE's own, in eV
    traj = ase.io.read(md_traj, ":")
    masses = traj[0].get_masses()
    for k in (0, 15, 30):
        kin = 0.5 * np.sum(masses[:, None] * vel[k] ** 2) * AMU_A2_PER_FS2_IN_EV
        assert kin == pytest.approx(traj[k].get_kinetic_energy(), rel=1e-10)


def test_store_layout_matches_contract(xyz_source, tmp_path):
    import zarr

    src, frames = xyz_source
    store = tmp_path / "s.zarr"
    numbec.convert_trajectory(src, store, chunk_frames=4, timestep=0.5)
    group = zarr.open_group(str(store), mode="r")
    attrs = dict(group.attrs)
    assert attrs["format"] == "numbec-trajectory" and attrs["format_version"] == 1
    assert attrs["frames_complete"] == 13 and attrs["timestep"] == 0.5
    assert attrs["units"]["velocities"] == "Angstrom/fs" and attrs["source"] == str(src)
    assert group["positions"].shape == (13, 5, 3) and group["positions"].chunks == (4, 5, 3)
    assert group["positions"].dtype == np.float64 and group["numbers"].dtype == np.int64
    assert group["cell"].shape == (13, 3, 3) and group["pbc"].dtype == bool
    ds = numbec.open_trajectory(store)
    assert isinstance(ds.positions.data, da.Array) and isinstance(ds.velocities.data, da.Array)
    assert ds.positions.dims == ("frame", "atom", "xyz")
    assert ds.cell.dims == ("frame", "cell_vector", "xyz")
    assert ds.numbers.dims == ("atom",) and ds.pbc.dims == ("xyz",)
    assert ds.positions.chunks[0] == (4, 4, 4, 1)
    np.testing.assert_array_equal(ds.positions.values, [a.positions for a in frames])
    np.testing.assert_array_equal(ds.cell.values, [a.cell[:] for a in frames])
    np.testing.assert_array_equal(ds.numbers.values, frames[0].numbers)
    np.testing.assert_allclose(ds.velocities.values, _expected_velocities_fs(frames), rtol=1e-12)
    np.testing.assert_allclose(ds.time.values, 0.5 * np.arange(13))
    assert ds.time.attrs["units"] == "fs" and ds.positions.attrs["units"] == "Angstrom"
    rechunked = numbec.open_trajectory(store, chunks={"frame": 6})
    assert rechunked.positions.chunks[0] == (6, 6, 1)


def test_compressed_extxyz_gives_identical_store(xyz_source, tmp_path):
    src, _ = xyz_source
    xz = tmp_path / "traj.xyz.xz"
    with lzma.open(xz, "wb") as fh:
        fh.write(src.read_bytes())
    numbec.convert_trajectory(src, tmp_path / "plain.zarr", chunk_frames=5, timestep=1.0)
    numbec.convert_trajectory(xz, tmp_path / "xz.zarr", chunk_frames=5, timestep=1.0)
    a = numbec.open_trajectory(tmp_path / "plain.zarr")
    b = numbec.open_trajectory(tmp_path / "xz.zarr")
    for name in ("positions", "velocities", "cell", "numbers", "time", "pbc"):
        np.testing.assert_array_equal(a[name].values, b[name].values)


def test_compressed_source_is_read_forwards_only(xyz_source, tmp_path, monkeypatch):
    # ASE 3.29 seeks back on every frame; on .xz that re-decompresses from the start.
    src, _ = xyz_source
    xz = tmp_path / "traj.xyz.xz"
    with lzma.open(xz, "wb") as fh:
        fh.write(src.read_bytes())
    seeks = []
    original = lzma.LZMAFile.seek

    def counting_seek(self, *args):
        seeks.append(args)
        return original(self, *args)

    monkeypatch.setattr(lzma.LZMAFile, "seek", counting_seek)
    numbec.convert_trajectory(xz, tmp_path / "xz.zarr", timestep=1.0)
    assert seeks == []


def test_index_selection_and_time(xyz_source, tmp_path):
    src, frames = xyz_source
    numbec.convert_trajectory(src, tmp_path / "s.zarr", timestep=1.0, index="2::3")
    ds = numbec.open_trajectory(tmp_path / "s.zarr")
    np.testing.assert_array_equal(ds.positions.values, [frames[k].positions for k in (2, 5, 8, 11)])
    assert ds.attrs["timestep"] == pytest.approx(3.0)
    numbec.convert_trajectory(src, tmp_path / "t.zarr", index="-3:", time_series=False)
    ds = numbec.open_trajectory(tmp_path / "t.zarr")
    np.testing.assert_array_equal(ds.positions.values, [a.positions for a in frames[-3:]])
    assert "timestep" not in ds.attrs and np.isnan(ds.time.values).all()


def test_ase_reader_path_for_other_formats(tmp_path):
    # non-extxyz sources go through ase.io.iread: an ASE .traj without MD metadata
    frames = _synthetic_frames(n_frames=6, with_velocities=False)
    ase.io.write(tmp_path / "plain.traj", frames)
    numbec.convert_trajectory(tmp_path / "plain.traj", tmp_path / "s.zarr", index="1:5",
                              time_series=False)
    ds = numbec.open_trajectory(tmp_path / "s.zarr")
    assert "velocities" not in ds and "timestep" not in ds.attrs
    np.testing.assert_array_equal(ds.positions.values, [a.positions for a in frames[1:5]])


def test_bundled_quartz_subset_converts(tmp_path):
    src = Path(numbec.__file__).parent / "data" / "sio2_quartz_subset.xyz"
    numbec.convert_trajectory(src, tmp_path / "q.zarr", timestep=1.0)
    ds = numbec.open_trajectory(tmp_path / "q.zarr")
    assert ds.sizes == {"frame": 20, "atom": 72, "xyz": 3, "cell_vector": 3}
    assert sorted(set(ds.numbers.values.tolist())) == [8, 14]
    bec = numbec.read_bec(src)
    assert len(bec) == 20 and max(np.abs(a.arrays["bec"].sum(0)).max() for a in bec) < 1e-6


# --- resume and damaged stores -----------------------------------------------------------


def _crashing(after):
    original = trajmod.iter_source_frames

    def frames(src, index=":"):
        for k, frame in enumerate(original(src, index)):
            if k == after:
                raise RuntimeError("simulated crash")
            yield frame

    return frames


def _convert_until_crash(src, store, monkeypatch):
    """Convert in chunks of 3 frames with a reader that fails after frame 8."""
    monkeypatch.setattr(trajmod, "iter_source_frames", _crashing(after=8))
    with pytest.raises(RuntimeError, match="simulated crash"):
        numbec.convert_trajectory(src, store, chunk_frames=3, timestep=1.0)
    monkeypatch.undo()


def test_resume_after_crash_equals_one_shot(xyz_source, tmp_path, monkeypatch):
    src, frames = xyz_source
    store = tmp_path / "s.zarr"
    _convert_until_crash(src, store, monkeypatch)
    ds = numbec.open_trajectory(store)
    assert ds.sizes["frame"] == 6  # two complete chunks of 3; frames 6, 7 were in a buffer
    np.testing.assert_array_equal(ds.positions.values, [a.positions for a in frames[:6]])
    assert trajectory_summary(store)["complete"] is False
    numbec.convert_trajectory(src, store, append=True)
    numbec.convert_trajectory(src, tmp_path / "ref.zarr", chunk_frames=3, timestep=1.0)
    a, b = numbec.open_trajectory(store), numbec.open_trajectory(tmp_path / "ref.zarr")
    for name in ("positions", "velocities", "cell", "time"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert trajectory_summary(store)["complete"] is True
    assert json.loads(a.attrs["segments"]) == [
        {"source": str(src), "index": ":", "start": 0, "frames": 13}
    ]


KILL_SCRIPT = """
import os, signal, sys
import numbec
from numbec.io import trajectory as t
original = t.iter_source_frames
def frames(src, index=":"):
    for k, f in enumerate(original(src, index)):
        if k == 8:
            os.kill(os.getpid(), signal.SIGKILL)
        yield f
t.iter_source_frames = frames
numbec.convert_trajectory(sys.argv[1], sys.argv[2], chunk_frames=3, timestep=1.0)
"""


def test_sigkilled_conversion_is_readable_and_resumable(xyz_source, tmp_path):
    src, frames = xyz_source
    store = tmp_path / "killed.zarr"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(src), str(store)])
    assert proc.returncode == -9
    ds = numbec.open_trajectory(store)
    assert ds.sizes["frame"] == 6
    np.testing.assert_array_equal(ds.positions.values, [a.positions for a in frames[:6]])
    assert numbec.convert_trajectory(src, store, append=True) == 13
    ds = numbec.open_trajectory(store)
    np.testing.assert_array_equal(ds.positions.values, [a.positions for a in frames])


def test_frames_beyond_frames_complete_are_ignored_and_overwritten(xyz_source, tmp_path):
    import zarr

    src, frames = xyz_source
    store = tmp_path / "s.zarr"
    numbec.convert_trajectory(src, store, chunk_frames=3, timestep=1.0, index=":8")
    group = zarr.open_group(str(store), mode="r+")
    for name in ("positions", "velocities"):  # a half-written chunk of a killed run
        arr = group[name]
        arr.resize((10, 5, 3))
        arr[8:10] = 1e6
    ds = numbec.open_trajectory(store)
    assert ds.sizes["frame"] == 8 and np.abs(ds.positions.values).max() < 100
    assert trajectory_summary(store)["complete"] is False
    numbec.convert_trajectory(src, store, append=True, index=":8")  # same segment: nothing new
    assert numbec.open_trajectory(store).sizes["frame"] == 8
    # a continuation run from another file is appended after frame 8
    numbec.convert_trajectory(src, store, append=True, index="8:", timestep=1.0)
    ds = numbec.open_trajectory(store)
    np.testing.assert_array_equal(ds.positions.values, [a.positions for a in frames])
    np.testing.assert_allclose(ds.time.values, np.arange(13.0))


def _store(tmp_path, xyz_source):
    store = tmp_path / "s.zarr"
    numbec.convert_trajectory(xyz_source[0], store, chunk_frames=4, timestep=1.0)
    return store


def _edit_attrs(store, edit):
    meta_path = store / "zarr.json"
    meta = json.loads(meta_path.read_text())
    edit(meta["attributes"])
    meta_path.write_text(json.dumps(meta))


def test_corrupt_metadata_is_refused(tmp_path, xyz_source):
    store = _store(tmp_path, xyz_source)
    (store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gro')
    with pytest.raises(StoreError, match="s.zarr: cannot open as a Zarr group"):
        numbec.open_trajectory(store)


def test_corrupt_array_metadata_is_refused(tmp_path, xyz_source):
    store = _store(tmp_path, xyz_source)
    (store / "velocities" / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError, match="s.zarr: (array velocities is unreadable|cannot list)"):
        numbec.open_trajectory(store)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda a: a.pop("frames_complete"), "frames_complete is missing or invalid"),
        (lambda a: a.update(frames_complete="7"), "frames_complete is missing or invalid"),
        (lambda a: a.update(frames_complete=20), "frames_complete = 20 but array positions"),
        (lambda a: a.update(frames_complete=0), "no complete frame"),
        (lambda a: a.update(format="other"), "not a numbec trajectory store"),
        (lambda a: a.clear(), "not a numbec trajectory store"),
        (lambda a: a.update(format_version=9), "format_version 9 is not supported"),
    ],
)
def test_bad_store_attributes_are_refused(tmp_path, xyz_source, edit, message):
    store = _store(tmp_path, xyz_source)
    _edit_attrs(store, edit)
    with pytest.raises(StoreError, match=message):
        numbec.open_trajectory(store)


def test_inconsistent_arrays_are_refused(tmp_path, xyz_source):
    import zarr

    store = _store(tmp_path, xyz_source)
    group = zarr.open_group(str(store), mode="r+")
    group["cell"].resize((5, 3, 3))
    with pytest.raises(StoreError, match="frames_complete = 13 but array cell holds only 5"):
        numbec.open_trajectory(store)
    del group["cell"]
    with pytest.raises(StoreError, match="store lacks array.* cell"):
        numbec.open_trajectory(store)
    with pytest.raises(FileNotFoundError, match="nowhere.zarr: no such trajectory store"):
        numbec.open_trajectory(tmp_path / "nowhere.zarr")


# --- bad sources -------------------------------------------------------------------------


def test_bad_sources(tmp_path, xyz_source):
    src, frames = xyz_source
    with pytest.raises(FileNotFoundError, match="missing.xyz: no such trajectory file"):
        numbec.convert_trajectory(tmp_path / "missing.xyz", tmp_path / "a.zarr")
    numbec.convert_trajectory(src, tmp_path / "b.zarr", time_series=False)
    with pytest.raises(FileExistsError, match="b.zarr: store exists"):
        numbec.convert_trajectory(src, tmp_path / "b.zarr")
    # atom count changes in frame 3
    odd = frames[:3] + [frames[3][:4]] + frames[4:]
    ase.io.write(tmp_path / "odd.xyz", odd)
    with pytest.raises(ValueError, match=r"odd.xyz, frame 3: has 4 atoms, earlier frames have 5"):
        numbec.convert_trajectory(tmp_path / "odd.xyz", tmp_path / "c.zarr", chunk_frames=2,
                                  time_series=False)
    # the frames before the bad one are complete and readable
    assert numbec.open_trajectory(tmp_path / "c.zarr").sizes["frame"] == 2
    # reordered atoms
    swapped = [a.copy() for a in frames]
    swapped[5] = swapped[5][[1, 0, 2, 3, 4]]
    ase.io.write(tmp_path / "swap.xyz", swapped)
    with pytest.raises(ValueError, match=r"swap.xyz, frame 5: atom 0 is element 1, was 8"):
        numbec.convert_trajectory(tmp_path / "swap.xyz", tmp_path / "d.zarr", time_series=False)
    # NaN position
    nan = [a.copy() for a in frames]
    nan[4].positions[2, 1] = np.nan
    ase.io.write(tmp_path / "nan.xyz", nan)
    with pytest.raises(ValueError, match=r"nan.xyz, frame 4: position of atom 2"):
        numbec.convert_trajectory(tmp_path / "nan.xyz", tmp_path / "e.zarr", time_series=False)
    # velocities in some frames only
    mixed = [a.copy() for a in frames]
    for a in mixed[6:]:
        del a.arrays["momenta"]
    ase.io.write(tmp_path / "mixed.xyz", mixed)
    with pytest.raises(ValueError, match=r"mixed.xyz, frame 6: has no velocities"):
        numbec.convert_trajectory(tmp_path / "mixed.xyz", tmp_path / "f.zarr", time_series=False)
    with pytest.raises(ValueError, match="time step must be a positive"):
        numbec.convert_trajectory(src, tmp_path / "g.zarr", timestep=-1.0)
    with pytest.raises(ValueError, match="no frames selected"):
        numbec.convert_trajectory(src, tmp_path / "h.zarr", index="100:", time_series=False)
    with pytest.raises(ValueError, match="invalid frame index"):
        numbec.convert_trajectory(src, tmp_path / "i.zarr", index="a:b")


def test_append_with_other_time_step_is_refused(tmp_path, xyz_source):
    store = _store(tmp_path, xyz_source)
    with pytest.raises(ValueError, match="frame spacing 2.0 fs differs from the store's 1.0"):
        numbec.convert_trajectory(xyz_source[0], store, append=True, timestep=2.0, index="1:")


# --- velocities from positions -----------------------------------------------------------


def _analytic_dataset(dt, n_frames=60, chunk=7):
    """Atoms oscillating and drifting across a periodic cell, positions wrapped."""
    omega = 0.15  # rad/fs
    cell = np.array([[4.0, 0.0, 0.0], [0.5, 5.0, 0.0], [0.3, -0.4, 6.0]])
    rng = np.random.default_rng(5)
    r0 = rng.uniform(0, 4, (4, 3))
    amp = rng.uniform(0.2, 0.6, (4, 3))
    drift = rng.normal(0, 0.2, (4, 3))  # Å/fs: atoms cross the cell walls
    t = dt * np.arange(n_frames)
    r = r0 + amp * np.sin(omega * t)[:, None, None] + drift * t[:, None, None]
    v = amp * omega * np.cos(omega * t)[:, None, None] + drift
    frac = r @ np.linalg.inv(cell)
    wrapped = (frac - np.floor(frac)) @ cell
    ds = xr.Dataset(
        {
            "positions": (("frame", "atom", "xyz"), da.from_array(wrapped, chunks=(chunk, 4, 3))),
            "cell": (("frame", "cell_vector", "xyz"), np.broadcast_to(cell, (n_frames, 3, 3))),
            "pbc": (("xyz",), np.ones(3, bool)),
        },
        coords={"time": ("frame", t)},
        attrs={"timestep": dt},
    )
    return ds, v, amp * omega**3


def test_velocities_from_positions_is_second_order(tmp_path):
    errors = []
    for dt in (0.4, 0.2):
        ds, exact, third = _analytic_dataset(dt, n_frames=int(24 / dt))
        vel = velocities_from_positions(ds)
        assert isinstance(vel.data, da.Array) and vel.attrs["units"] == "Angstrom/fs"
        err = np.abs(vel.values - exact)
        # documented bounds: dt^2/6 |r'''| inside, dt^2/3 |r'''| at the ends
        assert (err[1:-1] <= dt**2 / 6 * third * 1.01 + 1e-12).all()
        assert (err[[0, -1]] <= dt**2 / 3 * third * 1.05 + 1e-12).all()
        errors.append(err.max())
    assert errors[0] / errors[1] == pytest.approx(4.0, rel=0.1)


def test_velocities_from_positions_through_a_store(tmp_path):
    ds, exact, _ = _analytic_dataset(0.2, n_frames=40)
    frames = [
        Atoms("H4", positions=p, cell=ds.cell.values[0], pbc=True) for p in ds.positions.values
    ]
    ase.io.write(tmp_path / "osc.xyz", frames)
    numbec.convert_trajectory(tmp_path / "osc.xyz", tmp_path / "o.zarr", chunk_frames=6,
                              time_series=False)
    stored = numbec.open_trajectory(tmp_path / "o.zarr")
    with pytest.raises(ValueError, match="no time step known"):
        velocities_from_positions(stored)
    vel = velocities_from_positions(stored, timestep=0.2)
    assert np.abs(vel.values - exact).max() < 0.2**2 / 3 * 0.6 * 0.15**3 * 1.1


def test_velocities_for_a_molecule_without_cell():
    n = 30
    t = 0.5 * np.arange(n)
    r = np.zeros((n, 2, 3))
    r[:, 1, 0] = 1.0 + 0.1 * np.sin(0.2 * t)
    ds = xr.Dataset(
        {
            "positions": (("frame", "atom", "xyz"), r),
            "cell": (("frame", "cell_vector", "xyz"), np.zeros((n, 3, 3))),
            "pbc": (("xyz",), np.zeros(3, bool)),
        },
        attrs={"timestep": 0.5},
    )
    vel = velocities_from_positions(ds).values
    np.testing.assert_allclose(vel[:, 1, 0], 0.02 * np.cos(0.2 * t), atol=0.5**2 / 3 * 0.1 * 0.008)


def test_vasp_xdatcar_source(tmp_path):
    frames = _synthetic_frames(n_frames=5, with_velocities=False)
    frames = [a[a.numbers.argsort(kind="stable")] for a in frames]  # XDATCAR groups species
    for a in frames:
        a.cell = frames[0].cell  # XDATCAR of a fixed cell
    ase.io.write(tmp_path / "XDATCAR", frames, format="vasp-xdatcar")
    numbec.convert_trajectory(tmp_path / "XDATCAR", tmp_path / "x.zarr", timestep=2.0)
    ds = numbec.open_trajectory(tmp_path / "x.zarr")
    ref = ase.io.read(tmp_path / "XDATCAR", ":", format="vasp-xdatcar")
    np.testing.assert_allclose(ds.positions.values, [a.positions for a in ref])
    np.testing.assert_allclose(ds.positions.values, [a.positions for a in frames], atol=1e-6)
    np.testing.assert_array_equal(ds.numbers.values, frames[0].numbers)


def test_progress_bar_on_request(xyz_source, tmp_path, capsys):
    numbec.convert_trajectory(xyz_source[0], tmp_path / "p.zarr", progress=True, time_series=False)
    assert "13 frames" in capsys.readouterr().err
    numbec.convert_trajectory(xyz_source[0], tmp_path / "q.zarr",
                              time_series=False)  # stderr is not a TTY here
    assert capsys.readouterr().err == ""


def test_compressed_sources_read_by_ase(tmp_path):
    # ASE's OUTCAR reader needs a file name, which a decompressing stream lacks
    synthetic = make_outcar(seed=7)
    src = write_outcar(tmp_path / "OUTCAR.7.xz", synthetic.text)
    numbec.convert_trajectory(src, tmp_path / "o.zarr", time_series=False)
    ds = numbec.open_trajectory(tmp_path / "o.zarr")
    np.testing.assert_allclose(ds.positions.values[0], synthetic.positions, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ds.cell.values[0], synthetic.cell, rtol=0, atol=1e-12)
    assert [chemical_symbols[z] for z in ds.numbers.values] == synthetic.symbols
    # a gzip-compressed XDATCAR equals the plain one
    import gzip

    frames = [
        a[a.numbers.argsort(kind="stable")]
        for a in _synthetic_frames(n_frames=4, with_velocities=False)
    ]
    for a in frames:
        a.cell = frames[0].cell
    ase.io.write(tmp_path / "XDATCAR", frames, format="vasp-xdatcar")
    with gzip.open(tmp_path / "XDATCAR.gz", "wb") as fh:
        fh.write((tmp_path / "XDATCAR").read_bytes())
    numbec.convert_trajectory(tmp_path / "XDATCAR", tmp_path / "a.zarr", time_series=False)
    numbec.convert_trajectory(tmp_path / "XDATCAR.gz", tmp_path / "b.zarr", time_series=False)
    a, b = numbec.open_trajectory(tmp_path / "a.zarr"), numbec.open_trajectory(tmp_path / "b.zarr")
    np.testing.assert_array_equal(a.positions.values, b.positions.values)


# --- writers: locks, full disks, attributes read back ------------------------------------
SLOW_APPEND = """
import sys, time
import numbec
from numbec.io import trajectory as t
original = t.iter_source_frames
def slow(src, index=":"):
    for f in original(src, index):
        time.sleep(0.3)
        yield f
t.iter_source_frames = slow
numbec.convert_trajectory(sys.argv[1], sys.argv[2], append=True, chunk_frames=3)
"""


def test_concurrent_appends_take_turns(xyz_source, tmp_path):
    """Two processes append to one store at once: the second refuses with the holder's
    pid, the first completes, and the store holds exactly the base plus its frames."""
    import os
    import time

    src, frames = xyz_source
    store = tmp_path / "s.zarr"
    numbec.convert_trajectory(src, store, chunk_frames=3, timestep=1.0, index=":4")
    first = subprocess.Popen([sys.executable, "-c", SLOW_APPEND, str(src), str(store)])
    lock = tmp_path / "s.zarr.lock"
    deadline = time.monotonic() + 60
    while not (lock.exists() and str(first.pid) in lock.read_text()):
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    second = subprocess.run([sys.executable, "-m", "numbec.cli", "convert", str(src), str(store),
                             "--append", "--index", "4:"], capture_output=True, text=True,
                            env=dict(os.environ))
    assert second.returncode == 1
    assert f"s.zarr is locked by pid {first.pid}" in second.stderr
    assert "numbec convert" in second.stderr
    assert first.wait(timeout=120) == 0
    ds = numbec.open_trajectory(store)
    np.testing.assert_array_equal(ds.positions.values,
                                  [a.positions for a in frames[:4] + frames])
    info = trajectory_summary(store)
    assert info["complete"] and [s["frames"] for s in info["segments"]] == [4, 13]


@pytest.mark.parametrize("content", [b"", b"\x00garbage{", b'{"pid": 1'])
def test_empty_or_garbled_lock_file_never_blocks(xyz_source, tmp_path, content):
    src, _frames = xyz_source
    (tmp_path / "s.zarr.lock").write_bytes(content)
    assert numbec.convert_trajectory(src, tmp_path / "s.zarr", timestep=1.0) == 13
    assert not (tmp_path / "s.zarr.lock").exists()


def test_lock_is_keyed_on_the_resolved_store(xyz_source, tmp_path):
    from numbec.io._files import OutputLockedError, store_lock

    src, _frames = xyz_source
    store = _store(tmp_path, xyz_source)
    link = tmp_path / "link.zarr"
    link.symlink_to(store)
    with store_lock(store, "numbec convert"), pytest.raises(OutputLockedError,
                                                             match="locked by pid"):
        numbec.convert_trajectory(src, link, append=True)


def test_full_disk_names_the_store(xyz_source, tmp_path, monkeypatch):
    import errno

    import zarr

    src, _frames = xyz_source

    def full(self, key, value):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zarr.Array, "__setitem__", full)
    with pytest.raises(OSError, match=r"f\.zarr: cannot write \(No space left on device\); "
                                      r"the frames written so far are kept"):
        numbec.convert_trajectory(src, tmp_path / "f.zarr", timestep=1.0)


@pytest.mark.parametrize("value", ["2", [1.0], -1.0, True])
def test_bad_timestep_attribute_is_a_clean_error(tmp_path, xyz_source, value):
    store = _store(tmp_path, xyz_source)
    _edit_attrs(store, lambda a: a.update(timestep=value))
    with pytest.raises(StoreError, match="attribute timestep = .* is not a positive number"):
        numbec.open_trajectory(store)
    with pytest.raises(StoreError, match="--set-timestep"):
        trajectory_summary(store)


def test_timestep_contradicting_time_is_refused(tmp_path, xyz_source):
    store = _store(tmp_path, xyz_source)  # time = 0, 1, 2, ... fs
    _edit_attrs(store, lambda a: a.update(timestep=2.0))
    with pytest.raises(StoreError, match=r"s.zarr: time advances by 1 fs from frame 0 to "
                                         r"frame 1 \(0 -> 1 fs\), but the attribute timestep "
                                         r"says 2 fs per frame; .*--set-timestep"):
        numbec.open_trajectory(store)
    from numbec.io.trajectory import set_timestep

    set_timestep(store, 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = numbec.open_trajectory(store)
    np.testing.assert_array_equal(ds.time.values, 2.0 * np.arange(13))



def _edit_array(store, name, edit):
    import zarr

    edit(zarr.open_group(str(store), mode="r+", use_consolidated=False)[name])


@pytest.mark.parametrize("time, message", [
    (np.r_[np.arange(6.0), np.arange(7.0)], r"time goes backwards from frame 5 to frame 6 "
                                            r"\(5 -> 0 fs\)"),
    (5.0 * np.arange(13), r"time advances by 5 fs from frame 0 to frame 1"),
])
def test_time_contradicting_the_time_step_is_refused(tmp_path, xyz_source, time, message):
    store = _store(tmp_path, xyz_source)
    _edit_array(store, "time", lambda arr: arr.__setitem__(slice(None), time))
    with pytest.raises(StoreError, match=r"s.zarr: " + message + ".*--set-timestep"):
        numbec.open_trajectory(store)


def test_deleted_time_chunk_is_refused_naming_the_frames(tmp_path, xyz_source):
    store = _store(tmp_path, xyz_source)  # chunks of 4 frames
    (store / "time" / "c" / "1").unlink()  # frames 4-7 read back as the fill value, NaN
    with pytest.raises(StoreError, match=r"s.zarr: time of frames 4-7 is NaN"):
        numbec.open_trajectory(store)
    assert trajectory_summary(store)["time_error"].startswith(
        f"{store}: time of frames 4-7 is NaN")


def test_info_describes_a_store_with_a_broken_time_and_fails(tmp_path, xyz_source, capsys):
    from numbec.cli import main

    store = _store(tmp_path, xyz_source)
    assert main(["info", str(store)]) == 0
    assert trajectory_summary(store)["time_error"] is None
    capsys.readouterr()
    _edit_array(store, "time", lambda arr: arr.__setitem__(slice(None), 5.0 * np.arange(13)))
    for extra in ([], ["--json"]):
        assert main(["info", str(store), *extra]) == 1
        out, err = capsys.readouterr()
        assert "13" in out  # the facts are still printed
        assert (f"numbec info: error: {store}: time advances by 5 fs from frame 0 to frame 1"
                in err)
    assert main(["info", "--set-timestep", "5", str(store)]) == 0


@pytest.mark.parametrize("name, units", [("velocities", "Angstrom/ps"), ("positions", "nm"),
                                         ("time", None)])
def test_other_units_are_refused(tmp_path, xyz_source, name, units):
    store = _store(tmp_path, xyz_source)

    def edit(arr):
        if units is None:
            del arr.attrs["units"]
        else:
            arr.attrs["units"] = units

    _edit_array(store, name, edit)
    with pytest.raises(StoreError, match=f"s.zarr: array {name} has units {units!r}, numbec "
                                         "reads it in"):
        numbec.open_trajectory(store)


def test_units_spelled_as_before_numbec_0_1_are_read(tmp_path, xyz_source):
    store = _store(tmp_path, xyz_source)
    _edit_array(store, "velocities", lambda arr: arr.attrs.update(units="Å/fs"))
    _edit_array(store, "positions", lambda arr: arr.attrs.update(units="Å"))
    assert numbec.open_trajectory(store).sizes["frame"] == 13


@pytest.mark.parametrize("z", [999, 0, -1])
def test_impossible_atomic_numbers_are_refused(tmp_path, xyz_source, z):
    store = _store(tmp_path, xyz_source)
    _edit_array(store, "numbers", lambda arr: arr.__setitem__(2, z))
    message = f"s.zarr: array numbers gives atom 2 the atomic number {z}, not one of 1-118"
    with pytest.raises(StoreError, match=message):
        trajectory_summary(store)
    with pytest.raises(StoreError, match=message):
        numbec.open_trajectory(store)


def test_damaged_chunk_names_the_store_array_and_frames(tmp_path, xyz_source):
    store = _store(tmp_path, xyz_source)  # chunks of 4 frames
    (store / "positions" / "c" / "1" / "0" / "0").write_bytes(
        np.random.default_rng(0).bytes(300))
    ds = numbec.open_trajectory(store)  # frame data are read lazily
    np.asarray(ds.positions[:4].values)  # the other chunks are fine
    with pytest.raises(StoreError, match=r"s.zarr: cannot read array positions, frames 4-7 "
                                         r"\(.*\); the store is damaged"):
        np.asarray(ds.positions.values)
    (store / "numbers" / "c" / "0").write_bytes(b"garbage")
    with pytest.raises(StoreError, match=r"s.zarr: cannot read array numbers \("):
        trajectory_summary(store)


def test_frames_without_atoms_are_refused(tmp_path, xyz_source):
    src = tmp_path / "empty.xyz"
    src.write_text('0\nLattice="6 0 0 0 6 0 0 0 6" Properties=species:S:1:pos:R:3 pbc="T T T"\n'
                   * 3)
    with pytest.raises(ValueError, match="empty.xyz, frame 0: has no atoms"):
        numbec.convert_trajectory(src, tmp_path / "empty.zarr", timestep=1.0)
    # a store of no atoms written before convert refused them
    store = _store(tmp_path, xyz_source)
    for name in ("positions", "velocities", "numbers", "masses"):
        _edit_array(store, name, lambda arr: arr.resize(
            (0,) if arr.ndim == 1 else (arr.shape[0], 0, 3)))
    with pytest.raises(StoreError, match="s.zarr: the store holds frames of 0 atoms"):
        numbec.open_trajectory(store)


def test_open_trajectory_says_whether_the_conversion_finished(xyz_source, tmp_path,
                                                              monkeypatch):
    src, _frames = xyz_source
    store = tmp_path / "s.zarr"
    _convert_until_crash(src, store, monkeypatch)
    assert numbec.open_trajectory(store).attrs["complete"] is False
    numbec.convert_trajectory(src, store, append=True)
    assert numbec.open_trajectory(store).attrs["complete"] is True


# --- velocities against positions --------------------------------------------------------


def _vibrating_frames(n_frames=12, dt=1.0, scale=1.0, cell=5.0):
    """Atoms of a small box vibrating in three modes (periods 10-300 fs) around points near
    the faces, so that the stored (wrapped) positions jump across the cell; ``scale`` times
    the true velocities stored (Å/fs)."""
    rng = np.random.default_rng(4)
    n = 6
    centre = rng.uniform(0, cell, (n, 3))
    centre[:, 0] = 0.02  # on the face: wrapping moves atoms by a whole cell length
    omega = 2 * np.pi / np.array([10.0, 60.0, 300.0])
    amp = rng.normal(0, 0.02, (3, n, 3))
    phase = rng.uniform(0, 2 * np.pi, (3, n, 3))
    frames = []
    for k in range(n_frames):
        arg = omega[:, None, None] * k * dt + phase
        atoms = Atoms("OHHOHH", positions=centre + (amp * np.sin(arg)).sum(0),
                      cell=cell * np.eye(3), pbc=True)
        atoms.wrap()
        velocities = (amp * omega[:, None, None] * np.cos(arg)).sum(0)  # Å/fs
        atoms.set_velocities(scale * velocities / units.fs)
        frames.append(atoms)
    return frames


def test_consistent_velocities_of_wrapped_positions_pass_silently(tmp_path):
    src = tmp_path / "v.xyz"
    ase.io.write(src, _vibrating_frames(), format="extxyz")
    positions = np.array([a.positions for a in ase.io.read(src, ":")])
    assert np.abs(np.diff(positions, axis=0)).max() > 4.0  # wrapped across the cell
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        numbec.convert_trajectory(src, tmp_path / "v.zarr", timestep=1.0)


@pytest.mark.parametrize("scale", [1 / 103.6, 0.1, 10.0])
def test_velocities_in_other_units_warn(tmp_path, scale):
    src = tmp_path / "v.xyz"
    ase.io.write(src, _vibrating_frames(scale=scale), format="extxyz")
    with pytest.warns(UserWarning, match=r"v.xyz: the velocities do not match the motion of the "
                                         r"positions in frames 0-7: mass-weighted rms .* Å/fs "
                                         r"stored, .* Å/fs from central differences .*"
                                         r"\(ratio .*\)\. The likely cause is velocities "
                                         r"written in other units"):
        numbec.convert_trajectory(src, tmp_path / "v.zarr", timestep=1.0)
    with pytest.warns(UserWarning, match=r"v: the velocities do not match"):
        ratio = trajmod.check_velocity_units(
            [trajmod._from_atoms(a, k) for k, a in enumerate(_vibrating_frames(scale=scale))],
            np.ones(6), 1.0, "v")
    assert ratio == pytest.approx(scale, rel=0.1)  # central differences: 0.93 at 10 fs


def test_wrong_time_step_warns_too(tmp_path):
    src = tmp_path / "v.xyz"
    ase.io.write(src, _vibrating_frames(), format="extxyz")
    with pytest.warns(UserWarning, match=r"or a wrong time step"):
        numbec.convert_trajectory(src, tmp_path / "v.zarr", timestep=10.0)


def test_strided_md_velocities_pass_silently(md_traj, tmp_path):
    # EMT copper written every 2nd fs, converted every 5th frame: 10 fs between frames
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        numbec.convert_trajectory(md_traj, tmp_path / "cu.zarr", index="::5")

# --- masses ------------------------------------------------------------------------------


def _heavy_water_frames(n_frames=40, seed=3):
    """D2O molecules whose velocities are drawn for the deuterium masses (ASE units), each
    frame 1 fs after the last at those velocities."""
    rng = np.random.default_rng(seed)
    frames = []
    positions = rng.uniform(0, 5, (6, 3))
    for _ in range(n_frames):
        atoms = Atoms("OHHOHH", positions=positions, cell=5 * np.eye(3), pbc=True)
        masses = atoms.get_masses()
        masses[atoms.numbers == 1] = 2.014102  # deuterium
        atoms.set_masses(masses)
        sigma = np.sqrt(units.kB * 300.0 / masses)[:, None]  # ASE velocity units
        atoms.set_velocities(rng.normal(0.0, 1.0, (6, 3)) * sigma)
        positions = positions + atoms.get_velocities() * units.fs
        frames.append(atoms)
    return frames


@pytest.mark.parametrize("suffix", [".traj", ".xyz"])
def test_converted_store_keeps_isotope_masses_for_the_kinetic_temperature(tmp_path, suffix):
    """A deuterated source keeps its masses in the store (ASE .traj and extxyz, whose
    momenta are divided by the file's masses), and the kinetic temperature uses them:
    it equals ASE's own (3N degrees of freedom: the drift is not removed here)."""
    from numbec.spectra.temperature import kinetic_temperature

    frames = _heavy_water_frames()
    src = tmp_path / f"d2o{suffix}"
    ase.io.write(src, frames)
    store = tmp_path / "d2o.zarr"
    numbec.convert_trajectory(src, store, timestep=1.0, chunk_frames=16)
    ds = numbec.open_trajectory(store)
    np.testing.assert_allclose(ds["masses"].values, frames[0].get_masses(), rtol=1e-12)
    assert ds["masses"].attrs["units"] == "amu"
    np.testing.assert_allclose(ds.velocities.values, _expected_velocities_fs(frames),
                               rtol=1e-6, atol=1e-9)  # extxyz keeps 8 decimals
    ase_mean = np.mean([a.get_temperature() for a in frames])
    # ASE's constants are CODATA 2014, numbec's scipy's (2018): 3e-7 apart
    assert kinetic_temperature(ds) == pytest.approx(ase_mean, rel=1e-6)
    # standard (hydrogen) masses would read the same velocities much colder
    assert kinetic_temperature(ds.drop_vars("masses")) < 0.8 * ase_mean


def test_store_written_without_masses_still_opens_and_appends(xyz_source, tmp_path):
    import shutil

    src, _frames = xyz_source
    store = tmp_path / "old.zarr"
    numbec.convert_trajectory(src, store, chunk_frames=4, timestep=1.0, index=":8")
    shutil.rmtree(store / "masses")  # as written before masses were stored
    numbec.convert_trajectory(src, store, append=True, index="8:", timestep=1.0)
    ds = numbec.open_trajectory(store)
    assert ds.sizes["frame"] == 13 and "masses" not in ds


def test_append_with_other_isotopes_is_refused(tmp_path):
    frames = _heavy_water_frames(n_frames=4)
    ase.io.write(tmp_path / "d.traj", frames)
    light = [a.copy() for a in frames]
    for a in light:
        a.set_masses()  # standard masses
    ase.io.write(tmp_path / "h.traj", light)
    store = tmp_path / "s.zarr"
    numbec.convert_trajectory(tmp_path / "d.traj", store, timestep=1.0)
    with pytest.raises(ValueError, match=r"h.traj, frame 0: atom 1 has mass 1.00\d+ amu"):
        numbec.convert_trajectory(tmp_path / "h.traj", store, append=True, timestep=1.0)


def test_convert_refuses_a_source_without_time_step_unless_told_it_is_no_time_series(
        xyz_source, tmp_path):
    """The Python API refuses like `numbec convert`: no time step in the file and none
    given is an error saying what to pass; time_series=False makes a store without one."""
    src, _frames = xyz_source
    with pytest.raises(ValueError, match=r"records no time step.*time_series=False"):
        numbec.convert_trajectory(src, tmp_path / "a.zarr")
    assert not (tmp_path / "a.zarr").exists()
    numbec.convert_trajectory(src, tmp_path / "b.zarr", time_series=False)
    assert "timestep" not in numbec.open_trajectory(tmp_path / "b.zarr").attrs
