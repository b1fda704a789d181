"""``numbec predict`` command line: store in, store out, resumable, clear errors."""

from __future__ import annotations

import json
import os
import socket
import sys

import numpy as np
import pytest
import xarray as xr
import zarr

from numbec.cli import main
from numbec.models.baseline import SpeciesMeanModel
from numbec.stream import predict

NUMBERS = np.array([8, 1, 1, 8, 1, 1])
BOX = 7.0


def write_trajectory_store(path, n_frames=10, dt=0.5, chunk=4, velocities=True):
    """Write a store in the Trajectory store contract layout; return the same data as a
    Dataset for comparison. Atoms vibrate, r = r0 + A sin(omega t + phi), wrapped."""
    rng = np.random.default_rng(11)
    omega = 2 * np.pi / 20.0
    r0 = rng.uniform(0, BOX, (NUMBERS.size, 3))
    amp = rng.normal(0, 0.3, (NUMBERS.size, 3))
    phi = rng.uniform(0, 2 * np.pi, (NUMBERS.size, 3))
    t = np.arange(n_frames)[:, None, None] * dt
    positions = np.mod(r0 + amp * np.sin(omega * t + phi), BOX)
    vel = amp * omega * np.cos(omega * t + phi)
    cell = np.tile(BOX * np.eye(3), (n_frames, 1, 1))
    time = np.arange(n_frames) * dt
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    arrays = {
        "positions": (positions, ("frame", "atom", "xyz"), "Angstrom"),
        "cell": (cell, ("frame", "cell_vector", "xyz"), "Angstrom"),
        "numbers": (NUMBERS.astype(np.int64), ("atom",), None),
        "time": (time, ("frame",), "fs"),
        "pbc": (np.ones(3, bool), ("xyz",), None),
    }
    if velocities:
        arrays["velocities"] = (vel, ("frame", "atom", "xyz"), "Angstrom/fs")
    for name, (data, dims, units) in arrays.items():
        chunks = (chunk,) + data.shape[1:] if dims[0] == "frame" else data.shape
        arr = root.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype,
                                dimension_names=dims)
        arr[...] = data
        if units:
            arr.attrs["units"] = units
    root.attrs.update({
        "format": "numbec-trajectory", "format_version": 1, "timestep": dt,
        "source": "synthetic", "numbec_version": "test",
        "units": {"positions": "Angstrom", "velocities": "Angstrom/fs", "time": "fs"},
        "frames_complete": n_frames, "finished": True,
    })
    data_vars = {name: (dims, data) for name, (data, dims, _u) in arrays.items()
                 if name != "time"}
    return xr.Dataset(data_vars, coords={"time": ("frame", time)},
                      attrs={"timestep": dt, "source": str(path)})


@pytest.fixture
def model_file(tmp_path):
    model = SpeciesMeanModel([1, 8], np.stack([np.diag([0.4, 0.5, 0.3]),
                                               -np.diag([0.8, 1.0, 0.6])]))
    return model, model.save(tmp_path / "model.npz")


def test_missing_model_file_is_a_clear_error(tmp_path, capsys):
    code = main(["predict", str(tmp_path / "nope.npz"), str(tmp_path / "t.zarr"),
                 "-o", str(tmp_path / "o.zarr")])
    assert code == 1
    assert "numbec predict: error:" in capsys.readouterr().err


def test_cli_writes_prediction_and_resumes(tmp_path, model_file, capsys):
    model, path = model_file
    traj = tmp_path / "traj.zarr"
    ds = write_trajectory_store(traj)
    out = tmp_path / "out.zarr"
    args = ["predict", str(path), str(traj), "-o", str(out), "--no-progress"]
    assert main(args) == 0
    assert "10 frames x 6 atoms" in capsys.readouterr().out
    result = xr.open_zarr(out)
    expected = predict(model, ds, chunk_frames=4, progress=False)
    for name in ("bec", "dipole_derivative", "dipole_derivative_by_species", "dipole"):
        np.testing.assert_allclose(result[name].values, expected[name].values, rtol=1e-12)
    assert result["bec"].encoding["chunks"][0] == 4  # aligned with the input chunks
    assert result.attrs["model_file"] == str(path)
    assert result.attrs["volume"] == pytest.approx(BOX**3)
    assert main(args) == 0  # complete: nothing to do, no error

    assert main(["predict", str(path), str(traj), "-o", str(tmp_path / "f.zarr"),
                 "--float32", "--workers", "2", "--threads", "--no-progress"]) == 0
    f32 = xr.open_zarr(tmp_path / "f.zarr")
    assert f32["bec"].dtype == np.float32
    np.testing.assert_allclose(f32["bec"].values, expected["bec"].values, rtol=1e-6)


def test_info_describes_a_prediction_store_finished_interrupted_or_being_written(
        tmp_path, model_file, capsys, monkeypatch):
    """numbec info on a prediction store: the trajectory and model it comes from, the frames
    predicted so far (counted from the chunks flagged done), the variables, and whether a
    live process is writing it."""
    from numbec.io import prediction as store_format
    from numbec.io._files import store_lock

    model, path = model_file
    traj = tmp_path / "traj.zarr"
    write_trajectory_store(traj, n_frames=10, chunk=4)
    out = tmp_path / "out.zarr"
    real_write = store_format.write_chunk
    written = []

    def write_then_die(*args, **kwargs):
        if written:
            raise KeyboardInterrupt("killed after the first chunk")
        written.append(real_write(*args, **kwargs))

    monkeypatch.setattr(store_format, "write_chunk", write_then_die)
    assert main(["predict", str(path), str(traj), "-o", str(out), "--no-progress"]) != 0
    assert "interrupted" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kind         prediction (format 1" in printed
    assert f"trajectory   {traj}" in printed
    assert f"model        SpeciesMeanModel (file {path}, sha256 " in printed
    assert "frames       4 of 10 predicted (1 of 3 chunks of 4 frames)" in printed
    assert "atoms        6  (O 2, H 4)" in printed
    assert "INCOMPLETE: 2 of 3 chunks missing; run the same 'numbec predict' command" in printed
    # the spectrum of an unfinished prediction is refused, pointing here
    assert main(["ir", str(out), "--temperature", "300", "-o", str(tmp_path / "ir.csv")]) == 1
    assert f"'numbec info {out}' shows how far it got" in capsys.readouterr().err
    with store_lock(out, "numbec predict"):  # a live writer: this process
        info = store_format.prediction_summary(out)
    assert info["writer"]["pid"] == os.getpid()
    assert info["writer"]["host"] == socket.gethostname()
    assert main(["predict", str(path), str(traj), "-o", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["complete"] and info["frames_done"] == info["frames"] == 10
    assert info["writer"] is None
    stored = xr.open_zarr(out)
    assert set(info["variables"]) == set(stored.data_vars)
    assert all(info["variables"][name]["units"] == stored[name].attrs["units"]
               for name in stored.data_vars)
    assert info["velocities_source"] == stored.attrs["velocities_source"]
    assert info["environment_check"] is None  # a species-mean model has nothing to check
    assert main(["info", "--set-timestep", "1", str(out)]) == 1
    assert "prediction store: --set-timestep applies to trajectory" in capsys.readouterr().err
    # what is read back is checked like input, naming the attribute
    root = zarr.open_group(str(out), mode="r+", use_consolidated=False)
    root.attrs["environment_check"] = json.dumps({"frames": [0], "O": {"beyond": "many"}})
    assert main(["info", str(out)]) == 1
    assert "attribute 'environment_check': species 'O'" in capsys.readouterr().err
    root.attrs["environment_check"] = "{not json"
    assert main(["info", str(out)]) == 1
    assert "'environment_check' is not valid JSON" in capsys.readouterr().err
    del root.attrs["environment_check"]
    root.attrs["posterior_samples"] = "16"
    assert main(["info", str(out)]) == 1
    assert "'posterior_samples' = '16' is not an integer" in capsys.readouterr().err


def test_predict_takes_a_model_file(tmp_path, model_file):
    model, path = model_file
    ds = write_trajectory_store(tmp_path / "traj.zarr")
    from_file = predict(path, ds, progress=False)
    np.testing.assert_array_equal(from_file["bec"].values,
                                  predict(model, ds, progress=False)["bec"].values)
    assert from_file.attrs["model_file"] == str(path)
    assert from_file.attrs["model_class"] == "SpeciesMeanModel"


def test_cli_chunk_frames_and_progress_bar(tmp_path, model_file, capsys, monkeypatch):
    _model, path = model_file
    monkeypatch.setattr("numbec.cli._stderr_is_terminal", lambda: True)  # bars on a terminal
    traj = tmp_path / "traj.zarr"
    write_trajectory_store(traj, n_frames=10, chunk=4)
    assert main(["predict", str(path), str(traj), "-o", str(tmp_path / "quiet.zarr")]) == 0
    assert "numbec predict" not in capsys.readouterr().err  # stderr is no terminal
    out = tmp_path / "out.zarr"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["predict", str(path), str(traj), "-o", str(out), "--chunk-frames", "3"]) == 0
    err = capsys.readouterr().err
    assert "numbec predict" in err and "10/10" in err and "frame" in err  # per frame
    assert xr.open_zarr(out)["bec"].encoding["chunks"][0] == 3


def test_cli_refuses_locked_output(tmp_path, model_file, capsys):
    _model, path = model_file
    traj = tmp_path / "traj.zarr"
    write_trajectory_store(traj)
    out = tmp_path / "out.zarr"
    from numbec.io._files import store_lock

    with store_lock(out, "numbec predict"):  # a second open of the lock file conflicts
        assert main(["predict", str(path), str(traj), "-o", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"locked by pid {os.getpid()} on host {socket.gethostname()}" in err


def test_cli_velocities_from_positions(tmp_path, model_file, capsys):
    _model, path = model_file
    traj = tmp_path / "traj.zarr"
    write_trajectory_store(traj, n_frames=16, velocities=False)
    out = tmp_path / "out.zarr"
    with pytest.warns(UserWarning, match="no velocities"):
        assert main(["predict", str(path), str(traj), "-o", str(out), "--no-progress"]) == 0
    assert "dipole_derivative" not in xr.open_zarr(out)
    # the same output cannot be resumed with other settings ...
    args = ["predict", str(path), str(traj), "-o", str(out), "--no-progress",
            "--velocities-from-positions"]
    assert main(args) == 1
    assert "differs in" in capsys.readouterr().err
    # ... a new one gets dM/dt from central-difference velocities: O((omega dt)^2) error
    args[4] = str(tmp_path / "derived.zarr")
    assert main(args) == 0
    result = xr.open_zarr(tmp_path / "derived.zarr")
    truth = write_trajectory_store(tmp_path / "v.zarr", n_frames=16)["velocities"].values
    exact = np.einsum("faij,faj->fi", result["bec"].values, truth)
    scale = np.abs(exact).max()
    assert scale > 0.05
    np.testing.assert_allclose(result["dipole_derivative"].values, exact, atol=0.01 * scale)
    assert result.attrs["velocities_source"].startswith("central differences")


def test_cli_local_cluster_equals_serial(tmp_path, model_file, capsys):
    """``--workers 2`` runs on a dask.distributed LocalCluster of two processes; the stored
    result equals the in-process prediction exactly."""
    pytest.importorskip("distributed")
    model, path = model_file
    traj = tmp_path / "traj.zarr"
    ds = write_trajectory_store(traj, n_frames=12, chunk=3)
    out = tmp_path / "out.zarr"
    assert main(["predict", str(path), str(traj), "-o", str(out), "--workers", "2",
                 "--no-progress"]) == 0
    assert "LocalCluster with 2 worker processes" in capsys.readouterr().out
    result = xr.open_zarr(out)
    expected = predict(model, ds, chunk_frames=3, progress=False)
    for name in ("bec", "dipole_derivative", "dipole"):
        np.testing.assert_array_equal(result[name].values, expected[name].values)
    assert result.attrs["complete"]


def test_cli_precision_is_passed_and_checked(tmp_path, model_file, capsys):
    """--precision reaches predict: a model without a dipole kernel refuses "mixed" with a
    clear message; float64 is the default and is not recorded as anything else."""
    _, path = model_file
    traj = tmp_path / "traj.zarr"
    write_trajectory_store(traj, n_frames=4)
    code = main(["predict", str(path), str(traj), "-o", str(tmp_path / "m.zarr"),
                 "--precision", "mixed", "--no-progress"])
    assert code == 1
    assert "precision='mixed': SpeciesMeanModel offers float64" in capsys.readouterr().err
    assert main(["predict", str(path), str(traj), "-o", str(tmp_path / "d.zarr"),
                 "--precision", "float64", "--no-progress"]) == 0
    assert "precision" not in xr.open_zarr(tmp_path / "d.zarr").attrs


def test_predict_says_what_its_input_is(tmp_path, model_file, capsys):
    _model, path = model_file
    raw = tmp_path / "md.xyz"
    raw.write_text("1\n\nH 0 0 0\n")
    assert main(["predict", str(path), str(raw), "-o", str(tmp_path / "p.zarr")]) == 1
    err = capsys.readouterr().err
    assert "md.xyz is a trajectory file, not a trajectory store" in err
    assert "numbec convert" in err and not (tmp_path / "p.zarr").exists()
    traj = tmp_path / "traj.zarr"
    write_trajectory_store(traj)
    first = tmp_path / "p.zarr"
    assert main(["predict", str(path), str(traj), "-o", str(first), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["predict", str(path), str(first), "-o", str(tmp_path / "q.zarr")]) == 1
    err = capsys.readouterr().err
    assert "p.zarr is a prediction store (format='numbec-prediction'), not a trajectory" in err
    assert str(traj.resolve()) in err
    assert main(["predict", str(path), str(traj), "-o", str(tmp_path / "no" / "p.zarr")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_overwrite_replaces_a_finished_store(tmp_path, model_file, capsys):
    model, path = model_file
    traj = tmp_path / "traj.zarr"
    write_trajectory_store(traj)
    out = tmp_path / "p.zarr"
    assert main(["predict", str(path), str(traj), "-o", str(out), "--no-progress"]) == 0
    other = SpeciesMeanModel([1, 8], np.stack([np.eye(3), -2 * np.eye(3)]))
    other_path = other.save(tmp_path / "other.npz")
    args = ["predict", str(other_path), str(traj), "-o", str(out), "--no-progress"]
    assert main(args) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    stored = xr.open_zarr(out)
    np.testing.assert_array_equal(stored["bec"].values[0, 0], -2 * np.eye(3))
    # never replaces what is not a prediction store
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    args[args.index(str(out))] = str(foreign)
    assert main(args + ["--overwrite"]) == 1
    assert (foreign / "keep.txt").exists()


def test_cli_charge_reaches_the_model_and_the_resume_check(tmp_path, model_file, capsys):
    """--charge Q: the BECs of every frame sum to Q I, the store records Q, and a store
    predicted with another Q is not resumed."""
    _, path = model_file
    traj = tmp_path / "traj.zarr"
    write_trajectory_store(traj, n_frames=4)
    out = tmp_path / "q.zarr"
    args = ["predict", str(path), str(traj), "-o", str(out), "--no-progress"]
    assert main(args + ["--charge", "1"]) == 0
    result = xr.open_zarr(out)
    np.testing.assert_allclose(result["bec"].sum("atom").values,
                               np.broadcast_to(np.eye(3), (4, 3, 3)), atol=1e-12)
    assert result.attrs["total_charge"] == 1.0
    capsys.readouterr()
    assert main(args) == 1
    assert "total_charge" in capsys.readouterr().err


def test_cli_refuses_an_unfinished_trajectory_store_unless_allowed(tmp_path, model_file,
                                                                   capsys):
    _model, path = model_file
    traj = tmp_path / "traj.zarr"
    write_trajectory_store(traj)
    root = zarr.open_group(str(traj), mode="r+")
    root.attrs.update({"finished": False, "frames_complete": 8,
                       "segments": [{"source": "md.xyz", "index": ":", "start": 0,
                                     "frames": 8}]})
    out = tmp_path / "out.zarr"
    args = ["predict", str(path), str(traj), "-o", str(out), "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert (f"traj.zarr: the trajectory store is incomplete: 8 frames converted so far, its "
            f"conversion was interrupted or is still running; finish it with 'numbec convert "
            f"md.xyz {traj} --append', or predict the frames converted so far with "
            "--allow-incomplete") in err
    assert not out.exists()
    assert main(args + ["--allow-incomplete"]) == 0
    result = xr.open_zarr(out)
    assert result.sizes["frame"] == 8
    assert result.attrs["input_complete"] is False and result.attrs["input_frames"] == 8
