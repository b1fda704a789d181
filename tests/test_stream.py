"""Streaming prediction: physics of the dipole derivative, chunking, schedulers, resume, lock."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

import numbec
from numbec import stream
from numbec.io import prediction as prediction_store
from numbec.models.base import BECModel, UnknownSpeciesError
from numbec.models.baseline import FixedBECModel, SpeciesMeanModel
from numbec.stream import OutputLockedError, OutputMismatchError, predict

BOX = 6.0
NUMBERS = np.array([8, 1, 1, 8, 1, 1])
OMEGA = 2 * np.pi / 8.0  # rad/fs


class ToyModel(BECModel):
    """Geometry-dependent toy model with an analytic dipole and BECs.

    ``M_i = sum_a q0_a r_{a,i} + sum_a c_i sin(k . r_a)`` with ``k`` a reciprocal
    lattice vector of the cubic box, so the BECs
    ``Z[a, i, j] = q0_a delta_ij + c_i k_j cos(k . r_a)`` are periodic (independent of
    wrapping) while ``M`` itself jumps by ``q0_a L`` when an atom is wrapped.
    Charges ``q_a = q0_a + eps cos(k . r_a)``; the partition is
    ``bec_monopole = q_a delta``, ``bec_dipole = Z - bec_monopole``.
    """

    outputs = ("bec", "charges", "dipole", "bec_monopole", "bec_dipole", "bec_std")
    species = (1, 8)

    def __init__(self, q_h=0.4, q_o=-0.8, fail_at_call=None, delay=0.0):
        self.q0 = {1: q_h, 8: q_o}
        self.k = 2 * np.pi / BOX * np.array([1.0, 2.0, 0.0])
        self.c = np.array([0.3, -0.2, 0.5])
        self.eps = 0.05
        self.calls = 0
        self.fail_at_call = fail_at_call
        self.delay = delay  # seconds per frame (not part of the state: same fingerprint)

    def predict_arrays(self, positions, numbers, cell, pbc, uncertainty=False):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.fail_at_call is not None and self.calls >= self.fail_at_call:
            raise RuntimeError("simulated crash")
        self.check_inputs(positions, numbers)
        q0 = np.array([self.q0[int(z)] for z in numbers])
        phase = positions @ self.k
        bec = q0[:, None, None] * np.eye(3) + np.einsum(
            "i,j,a->aij", self.c, self.k, np.cos(phase)
        )
        charges = q0 + self.eps * np.cos(phase)
        mono = charges[:, None, None] * np.eye(3)
        out = {"bec": bec, "charges": charges, "bec_monopole": mono, "bec_dipole": bec - mono}
        if not np.any(pbc):
            out["dipole"] = q0 @ positions + self.c * np.sin(phase).sum()
        if uncertainty:
            out["bec_std"] = 0.01 * np.abs(bec)
        return out

    def _state(self):
        return {"q0": {str(k): v for k, v in self.q0.items()}}, {"k": self.k, "c": self.c}

    @classmethod
    def _from_state(cls, metadata, arrays):  # pragma: no cover - not saved in tests
        return cls(metadata["q0"]["1"], metadata["q0"]["8"])


def analytic_path(t):
    """Positions (T, N, 3) Å and velocities (T, N, 3) Å/fs of a smooth trajectory.

    Atom 0 drifts by 0.35 Å/fs along x so that it leaves the box.
    """
    rng = np.random.default_rng(7)
    r0 = rng.uniform(0.5, BOX - 0.5, (NUMBERS.size, 3))
    r0[0] = [BOX - 1.0, 3.0, 3.0]
    v0 = rng.normal(0.0, 0.02, (NUMBERS.size, 3))
    v0[0] = [0.35, 0.0, 0.0]
    amp = rng.normal(0.0, 0.15, (NUMBERS.size, 3))
    phi = rng.uniform(0, 2 * np.pi, (NUMBERS.size, 3))
    t = np.asarray(t, dtype=np.float64)[:, None, None]
    pos = r0 + v0 * t + amp * np.sin(OMEGA * t + phi)
    vel = v0 + amp * OMEGA * np.cos(OMEGA * t + phi)
    return pos, vel


def make_trajectory(n_frames=24, dt=0.5, periodic=True, wrap=True, velocities=True,
                    chunks=None, numbers=NUMBERS, path=analytic_path):
    """A dataset in the Trajectory store layout (see the Trajectory store contract);
    ``path(t)`` gives positions and velocities."""
    time = np.arange(n_frames) * dt
    pos, vel = path(time)
    if wrap:
        pos = np.mod(pos, BOX)
    data = {
        "positions": (("frame", "atom", "xyz"), pos, {"units": "Angstrom"}),
        "cell": (("frame", "cell_vector", "xyz"), np.tile(BOX * np.eye(3), (n_frames, 1, 1)),
                 {"units": "Angstrom"}),
        "numbers": (("atom",), np.asarray(numbers, dtype=np.int64)),
        "pbc": (("xyz",), np.full(3, periodic)),
    }
    if velocities:
        data["velocities"] = (("frame", "atom", "xyz"), vel, {"units": "Angstrom/fs"})
    ds = xr.Dataset(data, coords={"time": ("frame", time, {"units": "fs"})},
                    attrs={"timestep": dt, "source": "analytic-toy", "temperature": 300.0})
    if chunks:
        ds = ds.chunk({"frame": chunks})
    return ds


def toy_dipole(model, positions):
    return np.array([model.predict_arrays(p, NUMBERS, BOX * np.eye(3), np.zeros(3, bool))
                     ["dipole"] for p in positions])


# ------------------------------------------------------------------------ physics
def test_dipole_derivative_is_time_derivative_of_model_dipole():
    ds = make_trajectory(periodic=False, wrap=False)
    model = ToyModel()
    res = predict(model, ds, chunk_frames=7, progress=False)
    h = 1e-4
    t = ds["time"].values
    m_plus = toy_dipole(model, analytic_path(t + h)[0])
    m_minus = toy_dipole(model, analytic_path(t - h)[0])
    fd = (m_plus - m_minus) / (2 * h)
    np.testing.assert_allclose(res["dipole_derivative"].values, fd, rtol=1e-6, atol=1e-9)
    assert np.abs(fd).max() > 0.1  # not a trivially zero case
    assert res["dipole"].attrs["units"] == "e*Angstrom"
    assert res.attrs["dipole_method"].startswith("model")
    np.testing.assert_allclose(res["dipole"].values, toy_dipole(model, analytic_path(t)[0]))
    assert "volume" not in res.attrs


def test_learned_combined_model_dipole_derivative_is_time_derivative(tmp_path):
    """A real CombinedModel (tiny basis, random weights of order one) through predict:
    dM/dt = sum_a Z_a v_a matches the finite-difference time derivative of the model's
    own dipole; the monopole/dipole partition sums to the total; lazy threaded == eager."""
    import dask
    from kernel_model_checks import fitted_random_model, water_cluster

    from numbec.models import CombinedModel

    rng = np.random.default_rng(5)
    model = fitted_random_model(CombinedModel, rng, periodic=False)
    r0 = water_cluster(rng).positions  # two water molecules, O H H O H H like NUMBERS
    amp, phi = rng.normal(0, 0.1, r0.shape), rng.uniform(0, 2 * np.pi, r0.shape)

    def vibrating(tt):
        arg = OMEGA * np.asarray(tt)[:, None, None] + phi
        return r0 + amp * np.sin(arg), amp * OMEGA * np.cos(arg)

    ds = make_trajectory(n_frames=12, periodic=False, wrap=False, path=vibrating)
    res = predict(model, ds, chunk_frames=5, progress=False)
    assert {"charges", "bec_monopole", "bec_dipole", "dipole_derivative_monopole"} <= set(res)
    assert res.attrs["dipole_method"].startswith("model")

    def dipole(tt):
        return np.array([model.predict_arrays(p, NUMBERS, BOX * np.eye(3), np.zeros(3, bool))
                         ["dipole"] for p in vibrating(tt)[0]])

    t, h = ds["time"].values, 1e-4
    fd = (dipole(t + h) - dipole(t - h)) / (2 * h)
    assert np.abs(fd).max() > 0.05
    np.testing.assert_allclose(res["dipole_derivative"].values, fd, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res["dipole"].values, dipole(t), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        res["dipole_derivative_monopole"] + res["dipole_derivative_dipole"],
        res["dipole_derivative"], rtol=1e-12, atol=1e-12)
    with dask.config.set(scheduler="threads", num_workers=2):
        lazy = predict(model, ds.chunk({"frame": 5}), progress=False).compute()
    _assert_same(res, lazy)
    # frames of a chunk on concurrent threads (Numba kernels released from the GIL): the
    # same numbers as one frame after the other
    for threads in (1, 3):
        _assert_same(res, predict(model, ds, chunk_frames=12, progress=False, threads=threads))
    # precision="mixed" goes to the model and into the provenance: charges as in float64,
    # BECs and dM/dt to float32 rounding
    mixed = predict(model, ds, chunk_frames=5, progress=False, precision="mixed")
    assert mixed.attrs["precision"] == "mixed" and "precision" not in res.attrs
    np.testing.assert_array_equal(mixed["charges"].values, res["charges"].values)
    assert 0 < np.abs(mixed["bec"] - res["bec"]).max() < 1e-5 * np.abs(res["bec"]).max()
    np.testing.assert_allclose(mixed["dipole_derivative"], res["dipole_derivative"], rtol=1e-4,
                               atol=1e-6)
    # resuming a float64 store in mixed precision would mix the two: refused
    predict(model, ds.isel(frame=slice(0, 5)), out=tmp_path / "p.zarr", progress=False)
    with pytest.raises(OutputMismatchError, match="precision"):
        predict(model, ds.isel(frame=slice(0, 5)), out=tmp_path / "p.zarr", progress=False,
                precision="mixed")
    # the predictive standard deviation is streamed too: that of each frame, positive
    std = predict(model, ds.isel(frame=slice(0, 2)), progress=False, uncertainty=True)
    expected = model.predict_arrays(ds["positions"].values[1], NUMBERS, BOX * np.eye(3),
                                    np.zeros(3, bool), uncertainty=True)["bec_std"]
    np.testing.assert_allclose(std["bec_std"].values[1], expected, rtol=1e-12)
    assert np.all(std["bec_std"].values > 0)
    # the exact bec_std over a long trajectory (one training step per frame) is named with
    # the cheaper options, before anything is computed; a short one, or a rank, is quiet
    from numbec.stream import EXACT_UNCERTAINTY_WARN_FRAMES

    long = ds.isel(frame=np.arange(EXACT_UNCERTAINTY_WARN_FRAMES + 1) % ds.sizes["frame"])
    long = long.assign_coords(time=("frame", np.arange(long.sizes["frame"]) * 0.5))
    long = long.chunk({"frame": 500})
    with pytest.warns(UserWarning, match=f"each of the {EXACT_UNCERTAINTY_WARN_FRAMES + 1} "
                      "frames.*uncertainty_rank=32.*atom_std=True"):
        lazy = predict(model, long, progress=False, uncertainty=True)
    assert "bec_std" in lazy and lazy["bec_std"].chunks is not None  # nothing computed yet
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predict(model, long, progress=False, uncertainty=True, uncertainty_rank=4)
        predict(model, long.isel(frame=slice(0, EXACT_UNCERTAINTY_WARN_FRAMES)),
                progress=False, uncertainty=True)


def test_fixed_bec_dipole_derivative_exact_for_linear_dipole():
    # constant non-symmetric BECs: M = sum_a Z_a r_a exactly, so dM/dt = sum_a Z_a v_a
    rng = np.random.default_rng(3)
    bec = rng.normal(size=(NUMBERS.size, 3, 3))
    ds = make_trajectory(periodic=False, wrap=False)
    res = predict(FixedBECModel(NUMBERS, bec), ds, progress=False)
    h = 1e-3
    t = ds["time"].values
    m = lambda tt: np.einsum("aij,taj->ti", bec, analytic_path(tt)[0])
    fd = (m(t + h) - m(t - h)) / (2 * h)
    np.testing.assert_allclose(res["dipole_derivative"].values, fd, rtol=1e-5, atol=1e-8)
    # with a transposed (disp-pol) tensor the result would differ: the test sees the layout
    wrong = np.einsum("aji,taj->ti", bec, ds["velocities"].values)
    assert not np.allclose(wrong, fd, rtol=1e-3)


def test_by_species_and_partition_sum_to_total():
    res = predict(ToyModel(), make_trajectory(), chunk_frames=5, progress=False)
    assert list(res["species"].values) == [1, 8]
    np.testing.assert_allclose(res["dipole_derivative_by_species"].sum("species"),
                               res["dipole_derivative"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        res["dipole_derivative_monopole"] + res["dipole_derivative_dipole"],
        res["dipole_derivative"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(res["bec_monopole"] + res["bec_dipole"], res["bec"],
                               rtol=1e-12, atol=1e-14)
    # the oxygen part is the sum over oxygen atoms only
    bec, vel = res["bec"].values, make_trajectory()["velocities"].values
    oxygen = np.einsum("faij,faj->fi", bec[:, NUMBERS == 8], vel[:, NUMBERS == 8])
    np.testing.assert_allclose(res["dipole_derivative_by_species"].sel(species=8), oxygen,
                               rtol=1e-12)


def test_periodic_dipole_is_continuous_and_matches_model_up_to_constant():
    dt = 0.25
    periodic = predict(ToyModel(), make_trajectory(n_frames=60, dt=dt, chunks=9),
                       progress=False).compute()
    reference = predict(ToyModel(), make_trajectory(n_frames=60, dt=dt, periodic=False,
                                                    wrap=False), progress=False)
    assert periodic.attrs["dipole_method"].startswith("integrated")
    assert periodic.attrs["volume"] == pytest.approx(BOX**3)
    assert periodic.attrs["temperature"] == 300.0
    d = periodic["dipole"].values
    m = reference["dipole"].values
    assert np.all(d[0] == 0.0)
    # trapezoid error ~ T dt^2 |M'''| / 12: well below 1e-2 of the signal's range here
    err = np.abs((d - d[0]) - (m - m[0])).max()
    assert err < 1e-2 * np.ptp(m, axis=0).max()
    # the wrapped positions make the naive dipole jump by q L; the integral does not
    wrapped = toy_dipole(ToyModel(), make_trajectory(n_frames=60, dt=dt)["positions"].values)
    assert np.abs(np.diff(wrapped, axis=0)).max() > 1.0
    assert np.abs(np.diff(d, axis=0)).max() < 0.2
    # halving the time step cuts the integration error ~4x (second order)
    fine = predict(ToyModel(), make_trajectory(n_frames=119, dt=dt / 2), progress=False)
    err_fine = np.abs((fine["dipole"].values[::2] - m) - (0 - m[0])).max()
    assert err_fine < 0.4 * err


def test_chunking_does_not_change_results():
    ds = make_trajectory(n_frames=23)
    a = predict(ToyModel(), ds, chunk_frames=23, progress=False)
    b = predict(ToyModel(), ds, chunk_frames=4, progress=False)
    for name in a.data_vars:
        np.testing.assert_allclose(b[name].values, a[name].values, rtol=1e-12, atol=1e-13)


def test_uncertainty_and_float32_storage():
    res = predict(ToyModel(), make_trajectory(), progress=False, uncertainty=True,
                  dtype=np.float32)
    assert res["bec_std"].dtype == np.float32 and res["bec"].dtype == np.float32
    np.testing.assert_allclose(res["bec_std"], 0.01 * np.abs(res["bec"]), rtol=1e-6)
    with pytest.raises(ValueError, match="does not predict uncertainties"):
        predict(SpeciesMeanModel([1, 8], np.zeros((2, 3, 3))), make_trajectory(),
                uncertainty=True, progress=False)


def test_attrs_units_and_convention():
    res = predict(SpeciesMeanModel([1, 8], np.stack([0.4 * np.eye(3), -0.8 * np.eye(3)])),
                  make_trajectory(), progress=False)
    assert res["bec"].dims == ("frame", "atom", "pol", "disp")
    assert res["bec"].attrs["units"] == "e"
    assert res["dipole_derivative"].attrs["units"] == "e*Angstrom/fs"
    assert "dP_pol / dr_{atom, disp}" in res.attrs["bec_convention"]
    assert res.attrs["timestep"] == 0.5
    assert res.attrs["model_class"] == "SpeciesMeanModel"
    np.testing.assert_array_equal(res["time"].values, np.arange(24) * 0.5)
    assert "charges" not in res and "bec_monopole" not in res


# ------------------------------------------------------------------------ schedulers
def _assert_same(a, b):
    assert set(a.data_vars) == set(b.data_vars)
    for name in a.data_vars:
        np.testing.assert_allclose(np.asarray(b[name].values), np.asarray(a[name].values),
                                   rtol=1e-12, atol=1e-14, err_msg=name)


def test_lazy_result_matches_eager_on_local_schedulers():
    import dask

    serial = predict(ToyModel(), make_trajectory(), chunk_frames=5, progress=False)
    lazy = predict(ToyModel(), make_trajectory(chunks=5), progress=False)
    assert lazy["bec"].chunks[0] == (5, 5, 5, 5, 4)
    for scheduler in ("synchronous", "threads"):
        with dask.config.set(scheduler=scheduler):
            _assert_same(serial, lazy.compute())


def test_blas_on_one_thread_while_predicting_then_restored(tmp_path):
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():
        return {i["num_threads"] for i in threadpoolctl.threadpool_info()
                if i["user_api"] == "blas"}

    class Probe(ToyModel):
        seen = []

        def predict_arrays(self, *args, **kwargs):
            self.seen.append(blas_threads())
            return super().predict_arrays(*args, **kwargs)

    import dask

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        if blas_threads() != {2}:
            pytest.skip("BLAS cannot run two threads here")
        with dask.config.set(scheduler="threads", num_workers=2):  # model in pool threads
            predict(Probe(), make_trajectory(chunks=6), out=tmp_path / "p.zarr",
                    progress=False)
        predict(Probe(), make_trajectory(n_frames=3), progress=False)
        assert len(Probe.seen) == 27 and all(s == {1} for s in Probe.seen), Probe.seen
        assert blas_threads() == {2}  # the caller's setting is back
        Probe.seen.clear()
        predict(Probe(), make_trajectory(n_frames=3), progress=False, blas_threads=None)
        assert Probe.seen == [{2}] * 3


class CountingToyModel(ToyModel):
    """Counts how often it is pickled (in this process)."""

    pickled = 0

    def __getstate__(self):
        type(self).pickled += 1
        return self.__dict__


def test_model_is_one_node_of_the_graph():
    lazy = predict(ToyModel(), make_trajectory(chunks=5), progress=False)
    graph = dict(lazy.__dask_graph__())
    model_keys = [k for k in graph if str(k).startswith("numbec-model-")]
    assert len(model_keys) == 1
    assert len([k for k in graph if str(k).startswith("numbec-predict-")]) == 5


@pytest.mark.slow
def test_distributed_local_cluster_matches_serial(tmp_path):
    distributed = pytest.importorskip("distributed")
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    serial = predict(ToyModel(), make_trajectory(), chunk_frames=6, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster):
            lazy = predict(ToyModel(), make_trajectory(chunks=6), progress=False)
            _assert_same(serial, lazy.compute())
            # the model is serialised a fixed number of times, not once per chunk task
            pickles = []
            for chunks in (12, 1):
                CountingToyModel.pickled = 0
                predict(CountingToyModel(), make_trajectory(chunks=chunks),
                        progress=False)["bec"].compute()
                pickles.append(CountingToyModel.pickled)
            assert pickles[0] == pickles[1] < 24, pickles
            stored = predict(ToyModel(), make_trajectory(chunks=6), out=tmp_path / "p.zarr",
                             progress=False)
            _assert_same(serial, stored)


# ------------------------------------------------------------------------ output store
def test_store_matches_in_memory_result(tmp_path):
    ds = make_trajectory(n_frames=22)
    ref = predict(ToyModel(), ds, chunk_frames=5, progress=False)
    stored = predict(ToyModel(), ds, out=tmp_path / "p.zarr", chunk_frames=5, progress=False)
    _assert_same(ref, stored)
    assert stored["bec"].encoding["chunks"][0] == 5
    assert stored.attrs["complete"] is True
    assert "_progress" not in stored and "chunks_done" not in stored
    np.testing.assert_array_equal(stored["time"].values, ds["time"].values)
    assert "time" in stored.coords and stored["species"].values.tolist() == [1, 8]
    assert stored.attrs["volume"] == pytest.approx(BOX**3)
    lazy_in = predict(ToyModel(), make_trajectory(n_frames=22, chunks=5),
                      out=tmp_path / "q.zarr", progress=False)
    _assert_same(ref, lazy_in)
    assert not (tmp_path / "p.zarr.lock").exists()


def test_resume_after_crash_computes_only_missing_chunks(tmp_path):
    ds = make_trajectory(n_frames=20)
    out = tmp_path / "p.zarr"
    crashing = ToyModel(fail_at_call=2 * 4 + 3)  # dies inside the third chunk of 4 frames
    with pytest.raises(RuntimeError, match="simulated crash"):
        predict(crashing, ds, out=out, chunk_frames=4, progress=False)
    done = zarr.open_group(str(out))["_progress"]["chunks_done"][:]
    assert done.tolist() == [True, True, False, False, False]
    assert not (tmp_path / "p.zarr.lock").exists()  # released on error

    resumed = ToyModel()
    result = predict(resumed, ds, out=out, chunk_frames=4, progress=False)
    assert resumed.calls == 3 * 4
    _assert_same(predict(ToyModel(), ds, chunk_frames=4, progress=False), result)

    again = ToyModel()
    predict(again, ds, out=out, chunk_frames=4, progress=False)
    assert again.calls == 0


def test_resume_after_sigkill_of_a_real_run(tmp_path):
    """A separate process is SIGKILLed mid-run (no clean-up code runs); the next run
    removes its stale lock, computes only the chunks not flagged done, and the result
    equals an uninterrupted run."""
    n_frames, chunk = 48, 4
    n_chunks = n_frames // chunk
    out = tmp_path / "p.zarr"
    script = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_stream import ToyModel, make_trajectory\n"
        "from numbec.stream import predict\n"
        f"predict(ToyModel(delay=0.02), make_trajectory(n_frames={n_frames}), "
        f"out={str(out)!r}, chunk_frames={chunk}, progress=False)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script])
    flags = out / "_progress" / "chunks_done" / "c"
    deadline = time.monotonic() + 120
    try:
        while not (flags.is_dir() and len(list(flags.iterdir())) >= 2):
            assert child.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.005)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert (tmp_path / "p.zarr.lock").exists()  # a killed run cannot release its lock
    done = prediction_store.chunks_done(zarr.open_group(str(out), mode="r"), n_chunks)
    assert 2 <= done.sum() < n_chunks, done
    # numbec info tells how far the run got, and that no one is writing it any more
    summary = prediction_store.prediction_summary(out)
    assert summary["frames_done"] == chunk * done.sum() and summary["frames"] == n_frames
    assert summary["writer"] is None and not summary["complete"]

    ds = make_trajectory(n_frames=n_frames)
    model = ToyModel()
    with pytest.warns(UserWarning, match="stale lock"):
        result = predict(model, ds, out=out, chunk_frames=chunk, progress=False)
    assert model.calls == chunk * (n_chunks - done.sum())
    _assert_same(predict(ToyModel(), ds, chunk_frames=chunk, progress=False), result)
    summary = prediction_store.prediction_summary(out)
    assert summary["complete"] and summary["frames_done"] == n_frames


def test_partially_written_chunk_is_never_trusted(tmp_path, monkeypatch):
    ds = make_trajectory(n_frames=12)
    out = tmp_path / "p.zarr"
    clean = predict(ToyModel(), ds, chunk_frames=4, progress=False)

    # die after chunk 1's data are written but before its completion flag
    real_fsync = prediction_store.fsync_tree

    def dying_fsync(path):
        if "/c/1" in str(path):
            raise KeyboardInterrupt("killed while flushing chunk 1")
        return real_fsync(path)

    monkeypatch.setattr(prediction_store, "fsync_tree", dying_fsync)
    with pytest.raises(KeyboardInterrupt):
        predict(ToyModel(), ds, out=out, chunk_frames=4, progress=False)
    monkeypatch.setattr(prediction_store, "fsync_tree", real_fsync)
    root = zarr.open_group(str(out), mode="r+")
    assert root["_progress"]["chunks_done"][:].tolist() == [True, False, False]
    # chunk 1 holds data but is not trusted; scribble over it to be sure it is rewritten
    root["bec"][4:8] = 99.0
    model = ToyModel()
    result = predict(model, ds, out=out, chunk_frames=4, progress=False)
    assert model.calls == 8
    _assert_same(clean, result)


def test_run_killed_while_laying_out_the_store_starts_again(tmp_path, monkeypatch):
    ds = make_trajectory(n_frames=8)
    out = tmp_path / "p.zarr"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed during layout")

    monkeypatch.setattr(xr.Dataset, "to_zarr", killed)
    with pytest.raises(KeyboardInterrupt):
        predict(ToyModel(), ds, out=out, chunk_frames=4, progress=False)
    monkeypatch.undo()
    model = ToyModel()
    result = predict(model, ds, out=out, chunk_frames=4, progress=False)
    assert model.calls == 8
    _assert_same(predict(ToyModel(), ds, chunk_frames=4, progress=False), result)


def test_damaged_completion_flag_counts_as_not_done(tmp_path):
    ds = make_trajectory(n_frames=12)
    out = tmp_path / "p.zarr"
    predict(ToyModel(), ds, out=out, chunk_frames=4, progress=False)
    flag = out / "_progress" / "chunks_done" / "c" / "2"
    assert flag.is_file()
    flag.write_bytes(b"\x00garbage")
    model = ToyModel()
    predict(model, ds, out=out, chunk_frames=4, progress=False)
    assert model.calls == 4


def test_second_concurrent_run_refuses(tmp_path):
    ds = make_trajectory(n_frames=8)
    out = tmp_path / "p.zarr"
    seen = {}

    class Intruder(ToyModel):
        def predict_arrays(self, *args, **kwargs):
            if not seen:
                try:
                    predict(ToyModel(), ds, out=out, chunk_frames=4, progress=False)
                except OutputLockedError as exc:
                    seen["error"] = str(exc)
            return super().predict_arrays(*args, **kwargs)

    predict(Intruder(), ds, out=out, chunk_frames=4, progress=False)
    assert "locked by pid" in seen["error"]
    assert f"pid {os.getpid()}" in seen["error"]


def test_stale_lock_of_dead_process_is_removed(tmp_path):
    out = tmp_path / "p.zarr"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (tmp_path / "p.zarr.lock").write_text(json.dumps({"pid": dead.pid,
                                                      "host": socket.gethostname()}))
    with pytest.warns(UserWarning, match="stale lock"):
        predict(ToyModel(), make_trajectory(n_frames=4), out=out, progress=False)


def test_resume_refuses_store_of_other_model_or_input(tmp_path):
    ds = make_trajectory(n_frames=8)
    out = tmp_path / "p.zarr"
    predict(ToyModel(), ds, out=out, chunk_frames=4, progress=False)
    with pytest.raises(OutputMismatchError, match="another model"):
        predict(ToyModel(q_h=0.5), ds, out=out, chunk_frames=4, progress=False)
    moved = ds.copy(deep=True)
    moved["positions"][-1, 0, 0] += 0.1
    with pytest.raises(OutputMismatchError, match="numbers_positions"):
        predict(ToyModel(), moved, out=out, chunk_frames=4, progress=False)
    with pytest.raises(OutputMismatchError, match="chunk_frames"):
        predict(ToyModel(), ds, out=out, chunk_frames=2, progress=False)
    # a model without mixed precision says so before anything is written
    with pytest.raises(ValueError, match="precision='mixed': ToyModel offers float64"):
        predict(ToyModel(), ds, out=tmp_path / "q.zarr", progress=False, precision="mixed")
    assert not (tmp_path / "q.zarr").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.txt").write_text("x")
    with pytest.raises(OutputMismatchError, match="not a numbec prediction store"):
        predict(ToyModel(), ds, out=foreign, progress=False)


# ------------------------------------------------------------------------ bad input
def test_no_velocities_warns_or_errors():
    ds = make_trajectory(velocities=False)
    with pytest.warns(UserWarning, match="no velocities"):
        res = predict(ToyModel(), ds, progress=False)
    assert "dipole_derivative" not in res and "dipole" not in res and "bec" in res
    with pytest.raises(ValueError, match="needs velocities"):
        predict(ToyModel(), ds, progress=False, dipole_derivative=True)


def test_missing_timestep_is_an_error():
    ds = make_trajectory().drop_vars("time")
    del ds.attrs["timestep"]
    with pytest.raises(ValueError, match="no timestep.*'numbec info --set-timestep FS "
                                         "analytic-toy'"):
        predict(ToyModel(), ds, progress=False)


def test_frames_that_are_not_a_time_series_get_becs_but_no_spectrum(tmp_path):
    """A store converted with --no-time (no time step, no velocities): BECs and charges as
    for the same frames with a time step, a NaN time axis, and a clear refusal to make a
    spectrum of them."""
    from numbec.spectra import ir_spectrum

    timed = make_trajectory(velocities=False)
    frames = timed.drop_vars("time")
    del frames.attrs["timestep"]
    with pytest.warns(UserWarning, match="no velocities"):
        expected = predict(ToyModel(), timed, progress=False)
    for out in (None, tmp_path / "p.zarr"):
        with pytest.warns(UserWarning, match="no velocities"):
            res = predict(ToyModel(), frames, progress=False, out=out)
        np.testing.assert_array_equal(res.bec.values, expected.bec.values)
        assert np.isnan(res.time.values).all()
        with pytest.raises(ValueError, match="not a time series .*--no-time"):
            ir_spectrum(res, temperature=300.0)


class _NeighborsModel(ToyModel):
    """The toy model behind a neighbour search of a batch of one frame, as the kernel
    models' ``predict_arrays`` do (their errors then say "frame 0: ...")."""

    def predict_arrays(self, positions, numbers, cell, pbc, uncertainty=False):
        from numbec.descriptors.neighbors import neighbor_list_frames

        neighbor_list_frames(positions[None], np.asarray(cell)[None], pbc, 2.0)
        return super().predict_arrays(positions, numbers, cell, pbc, uncertainty)


def test_bad_cell_error_names_the_trajectory_frame_once():
    ds = make_trajectory(n_frames=12)
    cell = ds["cell"].values.copy()
    cell[9, 2] = cell[9, 0]  # degenerate lattice vectors in frame 9
    ds["cell"] = (ds["cell"].dims, cell)
    with pytest.raises(ValueError) as info:
        predict(_NeighborsModel(), ds, chunk_frames=4, progress=False)
    assert str(info.value).startswith("analytic-toy: frame 9: the periodic lattice vectors "
                                      "are degenerate")
    assert "frame 1:" not in str(info.value)


def _unfinished_store(tmp_path, monkeypatch):
    """A store whose conversion died after 8 of 14 frames (chunks of 4), and its source."""
    import ase
    import ase.io

    from numbec.io import trajectory as trajmod

    ds = make_trajectory(n_frames=14)
    frames = []
    for pos, vel in zip(ds["positions"].values, ds["velocities"].values, strict=True):
        atoms = ase.Atoms(numbers=NUMBERS, positions=pos, cell=BOX * np.eye(3), pbc=True)
        atoms.set_velocities(vel / ase.units.fs)
        frames.append(atoms)
    src, store = tmp_path / "md.traj", tmp_path / "md.zarr"
    ase.io.write(src, frames)
    original = trajmod.iter_source_frames

    def crashing(path, index=":"):
        for k, frame in enumerate(original(path, index)):
            if k == 10:
                raise RuntimeError("killed")
            yield frame

    monkeypatch.setattr(trajmod, "iter_source_frames", crashing)
    with pytest.raises(RuntimeError, match="killed"):
        numbec.convert_trajectory(src, store, chunk_frames=4, timestep=0.5)
    monkeypatch.undo()
    return src, store


def test_unfinished_trajectory_store_is_refused_unless_allowed(tmp_path, monkeypatch):
    src, store = _unfinished_store(tmp_path, monkeypatch)
    out = tmp_path / "p.zarr"
    message = (f"md.zarr: the trajectory store is incomplete: 8 frames converted so far, its "
               f"conversion was interrupted or is still running; finish it with 'numbec "
               f"convert {src} {store} --append', or predict the frames converted so far with "
               "allow_incomplete=True")
    for trajectory in (store, numbec.open_trajectory(store)):
        with pytest.raises(ValueError, match=re.escape(message)):
            predict(ToyModel(), trajectory, out=out, progress=False)
    assert not out.exists()
    partial = predict(ToyModel(), store, out=out, progress=False, allow_incomplete=True)
    assert partial.sizes["frame"] == 8
    assert partial.attrs["input_complete"] is False and partial.attrs["input_frames"] == 8
    assert prediction_store.prediction_summary(out)["input_complete"] is False
    with pytest.warns(UserWarning, match=re.escape(
            "p.zarr: predicted from a trajectory store whose conversion had not finished (8 "
            "frames then); the spectrum covers only those frames")):
        numbec.ir_spectrum(out, blocks=1)
    numbec.convert_trajectory(src, store, append=True)
    full = predict(ToyModel(), store, out=tmp_path / "full.zarr", progress=False)
    assert full.sizes["frame"] == 14 and "input_complete" not in full.attrs
    assert prediction_store.prediction_summary(tmp_path / "full.zarr")["input_complete"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*conversion had not finished")
        numbec.ir_spectrum(tmp_path / "full.zarr", blocks=1)


def test_unknown_species_names_atom():
    numbers = NUMBERS.copy()
    numbers[4] = 17
    with pytest.raises(UnknownSpeciesError, match=r"atom 4 is Cl \(Z=17\)"):
        predict(ToyModel(), make_trajectory(numbers=numbers), progress=False)


@pytest.mark.parametrize("chunks", [None, 5])
def test_nan_position_names_frame_and_atom(chunks):
    ds = make_trajectory(n_frames=12)
    ds["positions"][7, 2, 1] = np.nan
    if chunks:
        ds = ds.chunk({"frame": chunks})
    with pytest.raises(ValueError, match="frame 7: position of atom 2 is NaN"):
        predict(ToyModel(), ds, progress=False).compute()


class _FailsOnOneFrame(ToyModel):
    def __init__(self, bad_positions):
        super().__init__()
        self.bad_positions = bad_positions

    def predict_arrays(self, positions, numbers, cell, pbc, uncertainty=False):
        if np.array_equal(positions, self.bad_positions):
            raise ValueError("cannot predict this geometry")
        return super().predict_arrays(positions, numbers, cell, pbc, uncertainty)


def test_model_error_on_concurrent_frame_threads_names_the_frame():
    ds = make_trajectory(n_frames=12)
    model = _FailsOnOneFrame(ds["positions"].values[7])
    for threads in (1, 4):
        with pytest.raises(ValueError, match="frame 7: cannot predict this geometry"):
            predict(model, ds, progress=False, threads=threads)
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        predict(ToyModel(), ds, progress=False, threads=0)


class _ConcurrentToyModel(ToyModel):
    concurrent_frames = True  # as the kernel models: frames may run on concurrent threads


@pytest.mark.parametrize("delay", [0.0, 0.06])
def test_automatic_threads_only_for_frames_long_enough_to_gain(delay, monkeypatch):
    """threads=None: frames shorter than MIN_THREADED_FRAME_S (small molecules, mostly Python
    holding the GIL) run one after the other, where two threads were slower; longer frames run
    concurrently. The numbers are the same either way. (The threshold is raised from 3 to
    30 ms here so that a toy frame of 0.1 ms stays under it on a loaded machine.)"""
    monkeypatch.setattr(stream, "MIN_THREADED_FRAME_S", 0.03)
    import concurrent.futures

    import numba

    from numbec.descriptors.neighbors import neighbor_list

    rng = np.random.default_rng(0)
    neighbor_list(rng.uniform(0, 12, (200, 3)), 12 * np.eye(3), True, 3.0)  # a parallel kernel
    if numba.get_num_threads() < 2 or numba.threading_layer() not in ("omp", "tbb"):
        pytest.skip("frames run serially without two Numba threads of a thread-safe layer")
    pools = []

    class RecordingPool(concurrent.futures.ThreadPoolExecutor):
        def __init__(self, *args, **kwargs):
            pools.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", RecordingPool)
    ds = make_trajectory(n_frames=8)
    serial = predict(_ConcurrentToyModel(delay=delay), ds, progress=False, threads=1)
    assert pools == []
    auto = predict(_ConcurrentToyModel(delay=delay), ds, progress=False)
    _assert_same(serial, auto)
    assert (len(pools) == 1) == (delay > 0)


def _lazy_big_trajectory(n_frames, chunk, n_atoms=150):
    """A dask-backed trajectory generated chunk by chunk (nothing large exists up front)."""
    import dask.array as da

    shape = (n_frames, n_atoms, 3)
    chunks = da.core.normalize_chunks((chunk, n_atoms, 3), shape)

    def block(kind, block_info=None):
        (start, stop), _, _ = block_info[None]["array-location"]
        rng = np.random.default_rng([start, kind])
        return rng.uniform(0, BOX, (stop - start, n_atoms, 3))

    numbers = np.tile([8, 1, 1], n_atoms // 3)
    return xr.Dataset(
        {
            "positions": (("frame", "atom", "xyz"), da.map_blocks(block, 0, chunks=chunks,
                                                                  dtype=float)),
            "velocities": (("frame", "atom", "xyz"), da.map_blocks(block, 1, chunks=chunks,
                                                                   dtype=float)),
            "cell": (("frame", "cell_vector", "xyz"),
                     da.broadcast_to(BOX * np.eye(3), (n_frames, 3, 3), chunks=(chunk, 3, 3))),
            "numbers": (("atom",), numbers),
            "pbc": (("xyz",), np.ones(3, bool)),
        },
        attrs={"timestep": 1.0, "source": "lazy"},
    )


def test_store_memory_does_not_grow_with_trajectory_length(tmp_path):
    import tracemalloc

    import dask

    model = SpeciesMeanModel([1, 8], np.stack([0.4 * np.eye(3), -0.8 * np.eye(3)]))
    peaks = []
    # the first run pays for imports and caches; the long run is measured twice and the
    # lower peak kept: a one-off growth of an interpreter-wide table (the dict of interned
    # strings, which pathlib and zarr feed, doubled by 3.7 MB once in one run) is no
    # memory of the prediction
    for run, n_chunks in enumerate((3, 3, 30, 30)):
        ds = _lazy_big_trajectory(40 * n_chunks, 40)
        with dask.config.set(scheduler="synchronous"):
            tracemalloc.start()
            predict(model, ds, out=tmp_path / f"m{run}.zarr", progress=False)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
    chunk_bytes = 40 * 150 * 9 * 8  # one chunk of bec
    total_bytes = 30 * chunk_bytes
    # 10x more frames: peak grows by far less than the data (which would add ~27 chunks)
    assert min(peaks[2:]) - peaks[1] < 0.25 * total_bytes, peaks


def test_store_converted_by_convert_trajectory(tmp_path):
    """End to end: ASE trajectory -> numbec.convert_trajectory -> predict(store path)."""
    import ase
    import ase.io

    from numbec import convert_trajectory

    ds = make_trajectory(n_frames=14, chunks=None)
    frames = []
    for pos, vel in zip(ds["positions"].values, ds["velocities"].values, strict=True):
        atoms = ase.Atoms(numbers=NUMBERS, positions=pos, cell=BOX * np.eye(3), pbc=True)
        atoms.set_velocities(vel / ase.units.fs)  # Å/fs -> Å per ASE time unit
        frames.append(atoms)
    ase.io.write(tmp_path / "md.traj", frames)
    store = tmp_path / "md.zarr"
    convert_trajectory(tmp_path / "md.traj", store, chunk_frames=5, timestep=0.5)

    expected = predict(ToyModel(), ds, chunk_frames=5, progress=False)
    lazy = predict(ToyModel(), store, progress=False)
    assert lazy["bec"].chunks[0] == (5, 5, 4)  # aligned with the store's chunks
    _assert_same(expected, lazy.compute())
    stored = predict(ToyModel(), str(store), out=tmp_path / "pred.zarr", progress=False)
    _assert_same(expected, stored)
    assert stored.attrs["input"] == str(store.resolve())
    # the same store opened by hand is recognised as the same input: nothing to redo
    model = ToyModel()
    predict(model, numbec.open_trajectory(store), out=tmp_path / "pred.zarr", progress=False)
    assert model.calls == 0


# ------------------------------------------------------------------------ stores of 38415df
#: What numbec at commit 38415df (before the Prediction store got its own module) wrote for
#: ``predict(ToyModel(), make_trajectory(n_frames=12), out=..., chunk_frames=4)``: the
#: resume fingerprint and the layout (array -> shape, chunks, dtype, dims, units). A store of
#: that version resumes exactly when both are unchanged (checked by hand at the change: such a
#: store, killed after one chunk, was finished by the new code and equalled a fresh run).
FINGERPRINT_38415DF = {
    "chunk_frames": 4, "dtype": "<f8", "input": "analytic-toy",
    "model": {"class": "ToyModel",
              "sha256": "211c41799b7e1b7fc3c5f1e582b79a78dbf0e3a1a192f5040b7e8b9383071ea9"},
    "n_atoms": 6, "n_frames": 12,
    "numbers_positions_sha256":
        "5dd3f0523d3411d7707c84a4dc7588511c1bef791f3888a62a597658a648edb4",
    "timestep": 0.5, "uncertainty": False,
    "variables": ["bec", "bec_monopole", "bec_dipole", "charges", "dipole_derivative",
                  "dipole_derivative_by_species", "dipole_derivative_monopole",
                  "dipole_derivative_dipole", "dipole"],
    "velocities_source": "trajectory",
}
_BEC4 = [[12, 6, 3, 3], [4, 6, 3, 3], "float64", ["frame", "atom", "pol", "disp"], "e"]
_VEC4 = [[12, 3], [4, 3], "float64", ["frame", "pol"], "e*Angstrom/fs"]
LAYOUT_38415DF = {
    "_progress/chunks_done": [[3], [1], "bool", [], None],
    "_progress/dd_first": [[3, 3], [1, 3], "float64", [], None],
    "_progress/dd_last": [[3, 3], [1, 3], "float64", [], None],
    "_progress/dipole_local": [[12, 3], [4, 3], "float64", [], None],
    "bec": _BEC4, "bec_dipole": _BEC4, "bec_monopole": _BEC4,
    "charges": [[12, 6], [4, 6], "float64", ["frame", "atom"], "e"],
    "dipole": [[12, 3], [4, 3], "float64", ["frame", "pol"], "e*Angstrom"],
    "dipole_derivative": _VEC4, "dipole_derivative_dipole": _VEC4,
    "dipole_derivative_monopole": _VEC4,
    "dipole_derivative_by_species": [[12, 2, 3], [4, 2, 3], "float64",
                                     ["frame", "species", "pol"], "e*Angstrom/fs"],
    "species": [[2], [2], "int64", ["species"], None],
    "time": [[12], [12], "float64", ["frame"], "fs"],
}
ATTRS_38415DF = {
    "bec_convention", "complete", "created", "dipole_method", "fingerprint", "format",
    "format_version", "initialised", "input", "model_class", "model_file", "model_sha256",
    "numbec_version", "pbc", "storage_dtype", "temperature", "temperature_units", "timestep",
    "timestep_units", "uncertainty", "velocities_source", "volume", "volume_units"}


def store_layout(path):
    """{array path: [shape, chunks, dtype, dimension names, units]} and the group's
    attribute names of a Zarr v3 store."""
    root = zarr.open_group(str(path), mode="r")
    layout = {}

    def walk(group, prefix):
        for name, array in group.arrays():
            layout[prefix + name] = [list(array.shape), list(array.chunks), str(array.dtype),
                                     list(array.metadata.dimension_names or []),
                                     array.attrs.get("units")]
        for name, sub in group.groups():
            walk(sub, prefix + name + "/")

    walk(root, "")
    return layout, set(root.attrs)


def test_prediction_store_of_38415df_resumes(tmp_path):
    ds = make_trajectory(n_frames=12)
    out = tmp_path / "p.zarr"
    with pytest.raises(RuntimeError, match="simulated crash"):
        predict(ToyModel(fail_at_call=6), ds, out=out, chunk_frames=4, progress=False)
    root = zarr.open_group(str(out), mode="r")
    assert json.loads(root.attrs["fingerprint"]) == FINGERPRINT_38415DF
    layout, attrs = store_layout(out)
    assert {k: layout[k] for k in LAYOUT_38415DF} == LAYOUT_38415DF
    assert ATTRS_38415DF <= attrs
    # a store holding the old arrays only (new coordinates removed) still resumes
    for extra in set(layout) - set(LAYOUT_38415DF):
        import shutil

        shutil.rmtree(out / extra)
    model = ToyModel()
    result = predict(model, ds, out=out, chunk_frames=4, progress=False)
    assert model.calls == 8
    _assert_same(predict(ToyModel(), ds, chunk_frames=4, progress=False), result)


def test_selecting_frames_of_a_lazy_result_computes_only_their_chunks():
    """The integrated dipole of chunk c needs chunks 0..c only: a slice of the first frames
    runs the model on the chunks holding them and on no later one."""
    import dask

    model = ToyModel()
    lazy = predict(model, make_trajectory(n_frames=24, chunks=5), progress=False)
    assert lazy.attrs["dipole_method"].startswith("integrated") and model.calls == 0
    with dask.config.set(scheduler="synchronous"):
        head = lazy.isel(frame=slice(0, 7)).compute()
        assert model.calls == 10  # chunks 0 and 1 of 5 frames
        model.calls = 0
        tail = lazy.isel(frame=slice(20, 24))["bec"].compute()
        assert model.calls == 4  # the last chunk alone: bec does not need the offsets
    full = predict(ToyModel(), make_trajectory(n_frames=24), chunk_frames=5, progress=False)
    _assert_same(full.isel(frame=slice(0, 7)), head)
    np.testing.assert_array_equal(full["bec"][20:].values, tail.values)


def test_prediction_coordinates_label_axes_and_atoms(tmp_path):
    ds = make_trajectory(n_frames=6)
    for result in (predict(ToyModel(), ds, progress=False),
                   predict(ToyModel(), ds, out=tmp_path / "p.zarr", progress=False)):
        assert result["pol"].values.tolist() == ["x", "y", "z"]
        assert result["disp"].values.tolist() == ["x", "y", "z"]
        assert result["symbol"].values.tolist() == ["O", "H", "H", "O", "H", "H"]
        by_symbol = result["charges"].groupby("symbol").mean()
        np.testing.assert_allclose(
            by_symbol.sel(symbol="H").values,
            result["charges"].values[:, NUMBERS == 1].mean(axis=1))
        assert result["bec"].sel(pol="x", disp="y").shape == (6, 6)


@pytest.mark.parametrize("content", [b"", b"\x00garbage{"])
def test_empty_or_garbled_lock_never_blocks_predict(tmp_path, content):
    out = tmp_path / "p.zarr"
    (tmp_path / "p.zarr.lock").write_bytes(content)  # e.g. left by a full disk
    predict(ToyModel(), make_trajectory(n_frames=4), out=out, progress=False)
    assert not (tmp_path / "p.zarr.lock").exists()


def test_full_disk_names_the_prediction_store(tmp_path, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prediction_store, "write_chunk", full)
    with pytest.raises(OSError, match=r"p\.zarr: cannot write \(No space left on device\); "
                                      "the chunks written so far are kept"):
        predict(ToyModel(), make_trajectory(n_frames=4), out=tmp_path / "p.zarr",
                progress=False)


def test_full_disk_while_rewriting_metadata_keeps_the_store(tmp_path, monkeypatch):
    """A store's metadata (zarr.json) are rewritten in place whenever an attribute changes
    (the end of a run marks it complete). A write that fails half-way, as on a full disk,
    must leave the old file whole: zarr >= 3.1.3 writes every file of a local store under a
    temporary name and renames it (older zarr truncated zarr.json first, and the store could
    no longer be opened or resumed), hence the requirement in pyproject.toml."""
    import errno
    import pathlib

    import zarr

    from numbec.io.prediction import open_prediction, prediction_summary

    out = tmp_path / "p.zarr"
    predict(ToyModel(), make_trajectory(n_frames=4), out=out, progress=False)
    before = (out / "zarr.json").read_bytes()

    class HalfWritten:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            view = memoryview(data).cast("B")
            self.handle.write(view[: len(view) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()
            return False

        def __getattr__(self, name):
            return getattr(self.handle, name)

    real_open = pathlib.Path.open

    def failing_open(self, mode="r", *args, **kwargs):
        handle = real_open(self, mode, *args, **kwargs)
        return HalfWritten(handle) if "w" in mode else handle

    root = zarr.open_group(str(out), mode="r+", use_consolidated=False)
    monkeypatch.setattr(pathlib.Path, "open", failing_open)
    with pytest.raises(OSError, match="No space left"):
        root.attrs["note"] = "x" * 4096
    monkeypatch.setattr(pathlib.Path, "open", real_open)
    assert (out / "zarr.json").read_bytes() == before
    assert prediction_summary(out)["complete"]
    assert open_prediction(out).sizes["frame"] == 4


LAZY_BLAS_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import dask, threadpoolctl
from test_stream import ToyModel, make_trajectory
from numbec.stream import predict

def blas_threads():
    return {i["num_threads"] for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas"}

seen = []

class Probe(ToyModel):
    def predict_arrays(self, *args, **kwargs):
        seen.append(blas_threads())
        return super().predict_arrays(*args, **kwargs)

from numbec import parallel

scans = []
controller = parallel._blas_controller


def counting(refresh=False):
    scans.append(refresh)
    return controller(refresh)


parallel._blas_controller = counting
with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
    if blas_threads() != {2}:
        print("SKIP")
        sys.exit(0)
    lazy = predict(Probe(), make_trajectory(chunks=6), progress=False)
    for scheduler in ("threads", "synchronous"):
        with dask.config.set(scheduler=scheduler, num_workers=2):
            lazy.compute()
    print(len(seen), sorted(str(s) for s in set(map(frozenset, seen))), blas_threads())
    print(sum(scans), len(scans) - sum(scans))
"""


def test_lazy_result_computed_later_runs_blas_on_one_thread():
    """The thread policy travels with every chunk task: a lazy result computed after
    predict() returned (threaded and synchronous schedulers) runs BLAS on one thread, as the
    CLI does, and the caller's setting is back afterwards. In a fresh interpreter: within
    the test session another test's thread settings can leak into OpenBLAS's state."""
    pytest.importorskip("threadpoolctl")
    proc = subprocess.run([sys.executable, "-c", LAZY_BLAS_SCRIPT, str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    if proc.stdout.strip() == "SKIP":
        pytest.skip("BLAS cannot run two threads here")
    assert proc.stdout.split("\n")[0] == "48 ['frozenset({1})'] {2}", proc.stdout
    # the BLAS libraries are looked for once per compute (the graph's callback in the
    # computing thread), and the 8 chunk tasks (4 chunks, computed twice) reuse what it found
    assert proc.stdout.split("\n")[1] == "2 8", proc.stdout


def test_run_over_a_zarr_store_keeps_registered_dask_callbacks(tmp_path, monkeypatch):
    """A stored run over a Zarr-backed input reads each chunk's inputs in the chunk threads.
    Dask swaps its global set of callbacks out and back in around a computation that does
    not name its callbacks, so overlapping reads put back each other's empty set: before the
    fix a registered callback (a user's ProgressBar) was gone after 10 of 10 such runs."""
    import contextlib
    import threading

    import dask
    import dask.local
    from dask.callbacks import Callback

    ds = make_trajectory(n_frames=40)
    ds.to_zarr(tmp_path / "md.zarr", encoding={
        name: {"chunks": (4,) + ds[name].shape[1:]}
        for name in ("positions", "velocities", "cell")})
    global_reads = []
    swap = dask.local.local_callbacks

    @contextlib.contextmanager
    def recording(callbacks=None):
        if callbacks is None:
            global_reads.append(threading.current_thread() is threading.main_thread())
        with swap(callbacks) as active:
            yield active

    class UserCallback(Callback):
        def _start(self, dsk):
            pass

    monkeypatch.setattr(dask.local, "local_callbacks", recording)
    user = UserCallback()
    user.register()
    try:
        with dask.config.set(scheduler="threads", num_workers=2):
            stored = predict(ToyModel(), xr.open_zarr(tmp_path / "md.zarr"), chunk_frames=4,
                             threads=2, out=tmp_path / "pred.zarr", progress=False)
        assert user._callback in Callback.active
    finally:
        Callback.active.discard(user._callback)
    # the deterministic part: no chunk thread touched the global callbacks
    assert all(global_reads), f"{global_reads.count(False)} reads swapped them off the main thread"
    _assert_same(predict(ToyModel(), ds, chunk_frames=4, progress=False), stored)


def test_lazy_blas_callback_registered_again_if_dropped():
    """Anything that drops Dask's global callbacks (computations overlapping in other
    threads) would otherwise leave lazy results without their BLAS limit for good."""
    from dask.callbacks import Callback

    from numbec import parallel

    predict(ToyModel(), make_trajectory(n_frames=8, chunks=4), progress=False)
    assert parallel._lazy_callback._callback in Callback.active
    Callback.active.discard(parallel._lazy_callback._callback)
    predict(ToyModel(), make_trajectory(n_frames=8, chunks=4), progress=False)
    assert parallel._lazy_callback._callback in Callback.active

def test_threading_layer_without_concurrent_kernels_warns_once(monkeypatch):
    import numba

    from numbec import parallel

    monkeypatch.setattr(numba, "threading_layer", lambda: "workqueue")
    monkeypatch.setattr(parallel, "_warned_layer", False)
    with pytest.warns(RuntimeWarning, match="'workqueue'.*one after another"):
        assert parallel.frame_threads(2, True, 8) == 1
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parallel.frame_threads(2, True, 8) == 1
    assert parallel.frame_threads(1, True, 8) == 1




# ------------------------------------------------------------------------ sum rule, charge
def _vibrating_water(rng, positions):
    amp, phi = rng.normal(0, 0.1, positions.shape), rng.uniform(0, 2 * np.pi, positions.shape)

    def vibrating(tt):
        arg = OMEGA * np.asarray(tt)[:, None, None] + phi
        return positions + amp * np.sin(arg), amp * OMEGA * np.cos(arg)

    return vibrating


def test_sum_rule_violation_of_every_frame_is_stored(tmp_path):
    """A periodic CombinedModel's per-frame ``asr_violation`` (sum of the local-formula BECs
    before projection) reaches the prediction, eager, lazy and stored alike: the value the
    model gives for that frame, varying with the geometry; the stored BECs obey the rule."""
    import dask
    from kernel_model_checks import fitted_random_model, water_cluster

    from numbec.models import CombinedModel

    rng = np.random.default_rng(11)
    model = fitted_random_model(CombinedModel, rng, periodic=True)
    assert "asr_violation" in model.outputs
    path = _vibrating_water(rng, water_cluster(rng).positions + 1.0)
    ds = make_trajectory(n_frames=6, periodic=True, wrap=False, path=path)
    res = predict(model, ds, chunk_frames=4, progress=False)
    violation = res["asr_violation"]
    assert violation.dims == ("frame", "pol", "disp") and violation.attrs["units"] == "e"
    expected = np.array([model.predict_arrays(p, NUMBERS, BOX * np.eye(3), np.ones(3, bool))
                         ["asr_violation"] for p in ds["positions"].values])
    np.testing.assert_allclose(violation.values, expected, rtol=1e-12, atol=1e-14)
    assert np.abs(expected).max() > 1e-3  # the projection has something to remove here
    assert np.ptp(expected, axis=0).max() > 1e-4  # and it changes from frame to frame
    np.testing.assert_allclose(res["bec"].sum("atom").values, 0.0, atol=1e-12)
    with dask.config.set(scheduler="threads", num_workers=2):
        _assert_same(res, predict(model, ds.chunk({"frame": 4}), progress=False).compute())
    _assert_same(res, predict(model, ds, out=tmp_path / "p.zarr", chunk_frames=4,
                              progress=False))


class _ToyWithSumRule(ToyModel):
    outputs = ToyModel.outputs + ("asr_violation",)

    def predict_arrays(self, positions, numbers, cell, pbc, uncertainty=False):
        out = super().predict_arrays(positions, numbers, cell, pbc, uncertainty)
        out["asr_violation"] = out["bec"].sum(axis=0)
        return out


def test_store_written_before_the_sum_rule_variable_resumes_without_it(tmp_path,
                                                                       monkeypatch):
    ds = make_trajectory(n_frames=12)
    out = tmp_path / "p.zarr"
    plan_variables = stream._plan_variables

    def without_asr(*args):  # the variables of a run before the diagnostic existed
        names, method = plan_variables(*args)
        return tuple(n for n in names if n != "asr_violation"), method

    monkeypatch.setattr(stream, "_plan_variables", without_asr)
    with pytest.raises(RuntimeError, match="simulated crash"):
        predict(_ToyWithSumRule(fail_at_call=6), ds, out=out, chunk_frames=4, progress=False)
    monkeypatch.undo()
    model = _ToyWithSumRule()
    result = predict(model, ds, out=out, chunk_frames=4, progress=False)
    assert model.calls == 8 and "asr_violation" not in result
    fresh = predict(_ToyWithSumRule(), ds, out=tmp_path / "new.zarr", chunk_frames=4,
                    progress=False)
    assert "asr_violation" in fresh
    _assert_same(fresh.drop_vars("asr_violation"), result)


def test_charged_molecule_becs_sum_to_the_total_charge(tmp_path, monkeypatch):
    """A molecule's BECs are the exact derivatives of its dipole, so translation invariance
    gives sum_a Z_a = Q I with no projection: Q = 1 e passed through predict must give I in
    every frame (and a zero sum-rule violation), Q = 0 gives 0."""
    from kernel_model_checks import fitted_random_model, water_cluster

    from numbec.models import CombinedModel

    rng = np.random.default_rng(13)
    model = fitted_random_model(CombinedModel, rng, periodic=False)
    path = _vibrating_water(rng, water_cluster(rng).positions)
    ds = make_trajectory(n_frames=5, periodic=False, wrap=False, path=path)
    charged = predict(model, ds, chunk_frames=3, progress=False, total_charge=1.0)
    neutral = predict(model, ds, chunk_frames=3, progress=False)
    np.testing.assert_allclose(charged["bec"].sum("atom").values,
                               np.broadcast_to(np.eye(3), (5, 3, 3)), atol=1e-9)
    np.testing.assert_allclose(neutral["bec"].sum("atom").values, 0.0, atol=1e-9)
    np.testing.assert_allclose(charged["asr_violation"].values, 0.0, atol=1e-9)
    assert charged.attrs["total_charge"] == 1.0 and neutral.attrs["total_charge"] == 0.0
    # frame by frame (predict_arrays) as in batches (predict_frames): the same numbers
    with monkeypatch.context() as m:
        m.setattr(stream.parallel, "BATCH_BELOW_ATOMS", 0)
        _assert_same(charged, predict(model, ds, chunk_frames=3, progress=False,
                                      total_charge=1.0))
    # the charge is part of what a resumed store must agree on
    out = tmp_path / "q0.zarr"
    predict(model, ds, out=out, chunk_frames=3, progress=False)
    with pytest.raises(OutputMismatchError, match="total_charge"):
        predict(model, ds, out=out, chunk_frames=3, progress=False, total_charge=1.0)
    stored = predict(model, ds, out=tmp_path / "q1.zarr", chunk_frames=3, progress=False,
                     total_charge=1.0)
    assert stored.attrs["total_charge"] == 1.0
    _assert_same(charged, stored)
    # a model without the keyword is refused for a charged run, before anything is written
    with pytest.raises(ValueError, match="does not accept a total charge"):
        predict(ToyModel(), ds, out=tmp_path / "toy.zarr", progress=False, total_charge=1.0)
    assert not (tmp_path / "toy.zarr").exists()
    with pytest.raises(ValueError, match="finite"):
        predict(model, ds, progress=False, total_charge=float("nan"))


def test_blas_libraries_are_scanned_once_per_predict_call(monkeypatch):
    """Finding the loaded BLAS libraries takes milliseconds: predict scans once per call and
    its chunk tasks reuse the result (a scan per chunk made a water-dimer run 7 % slower)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    scans = []

    class Counting(threadpoolctl.ThreadpoolController):
        def __init__(self):
            scans.append(1)
            super().__init__()

    monkeypatch.setattr(threadpoolctl, "ThreadpoolController", Counting)
    predict(ToyModel(), make_trajectory(n_frames=12), chunk_frames=2, progress=False)
    assert len(scans) == 1
    predict(ToyModel(), make_trajectory(n_frames=4), chunk_frames=2, progress=False)
    assert len(scans) == 2


def test_a_clusters_nan_cell_is_ignored_by_every_uncertainty_path():
    """A non-periodic frame's cell is never used: NaN there gives the numbers of a zero
    cell in the plain, exact-uncertainty and low-rank paths alike (they once differed: the
    plain path took it, the others refused it); NaN in a periodic row is an error that
    names the frame."""
    from kernel_model_checks import fitted_random_model, water_cluster

    from numbec.models import MonopoleModel

    rng = np.random.default_rng(5)
    model = fitted_random_model(MonopoleModel, rng, periodic=False)
    path = _vibrating_water(rng, water_cluster(rng).positions + 1.0)
    ds = make_trajectory(n_frames=4, periodic=False, wrap=False, path=path)
    nan_cell = ds.assign(cell=ds["cell"] * np.nan)
    for kw in ({}, {"uncertainty": True}, {"uncertainty": True, "uncertainty_rank": 8}):
        zero = predict(model, ds.assign(cell=ds["cell"] * 0.0), progress=False, **kw)
        nan = predict(model, nan_cell, progress=False, **kw)
        for name in ("bec", "bec_std"):
            if name in zero:
                np.testing.assert_array_equal(nan[name].values, zero[name].values)
    periodic = fitted_random_model(MonopoleModel, rng, periodic=True)
    box = make_trajectory(n_frames=4, periodic=True, wrap=False, path=path)
    cell = box["cell"].values.copy()
    cell[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"analytic-toy: frame 2: the cell is NaN"):
        predict(periodic, box.assign(cell=(box["cell"].dims, cell)), progress=False,
                uncertainty=True)
