"""Streaming small frames through the batched path (``model.predict_frames``): the same
dataset as frame-by-frame prediction, for every kernel model, molecules and periodic cells,
serial and on frame threads, in memory and in a store; errors name the trajectory frame."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_model_checks import fitted_random_model, water_cell, water_cluster

from numbec import parallel
from numbec import stream as stream_module
from numbec.io.trajectory import trajectory_dataset
from numbec.models import CombinedModel, DipoleModel, MonopoleModel
from numbec.stream import predict


def _trajectory(rng, periodic, n_frames=23):
    base = (water_cell if periodic else water_cluster)(rng)
    positions = base.positions + rng.normal(0.0, 0.08, (n_frames,) + base.positions.shape)
    cell = np.broadcast_to(np.asarray(base.cell) if periodic else np.zeros((3, 3)),
                           (n_frames, 3, 3)).copy()
    velocities = rng.normal(0.0, 0.01, positions.shape)
    return trajectory_dataset(positions, cell, base.numbers, base.pbc,
                              np.arange(n_frames, dtype=float), velocities,
                              attrs={"timestep": 1.0})


def _compare(a, b):
    assert set(a.data_vars) == set(b.data_vars)
    for name in a.data_vars:
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=0, atol=1e-11,
                                   err_msg=name)


def _count_batches(model, monkeypatch) -> list:
    """The number of frames of every ``predict_frames`` call of ``model``'s class, from now."""
    calls = []
    original = type(model).predict_frames

    def counting(self, positions, *args, **kwargs):
        calls.append(len(positions))
        return original(self, positions, *args, **kwargs)

    monkeypatch.setattr(type(model), "predict_frames", counting)
    return calls


@pytest.mark.parametrize("periodic", [False, True], ids=["molecule", "periodic"])
@pytest.mark.parametrize("cls", [MonopoleModel, DipoleModel, CombinedModel],
                         ids=lambda c: c.__name__)
def test_batched_stream_equals_frame_by_frame(cls, periodic, monkeypatch, tmp_path):
    rng = np.random.default_rng(4)
    model = fitted_random_model(cls, rng, periodic)
    ds = _trajectory(rng, periodic)
    calls = _count_batches(model, monkeypatch)
    # batches of 5 frames: a chunk of 10 frames is two batches and the last chunk one of 3
    monkeypatch.setattr(parallel, "BATCH_ATOMS", 5 * ds.sizes["atom"])
    batched = {threads: predict(model, ds, chunk_frames=10, threads=threads, progress=False)
               for threads in (1, 2)}
    stored = predict(model, ds, chunk_frames=10, out=tmp_path / "p.zarr", progress=False)
    assert calls and max(calls) == 5 and sum(calls) == 3 * ds.sizes["frame"]
    # frame by frame: the batched path switched off
    calls.clear()
    monkeypatch.setattr(parallel, "BATCH_BELOW_ATOMS", 0)
    single = predict(model, ds, chunk_frames=10, threads=1, progress=False)
    assert calls == [1] * ds.sizes["frame"]  # predict_arrays is predict_frames of one frame
    for result in (*batched.values(), stored):
        _compare(result, single)


def test_batched_stream_names_the_trajectory_frame(monkeypatch):
    rng = np.random.default_rng(8)
    model = fitted_random_model(MonopoleModel, rng, False)
    ds = _trajectory(rng, False)
    positions = ds["positions"].values.copy()
    positions[17, 2] = positions[17, 1]  # two atoms on top of each other in frame 17
    ds["positions"].values[:] = positions
    monkeypatch.setattr(parallel, "BATCH_ATOMS", 4 * ds.sizes["atom"])
    for threads in (1, 2):
        with pytest.raises(ValueError, match=r"frame 17: atoms 1 and 2 .*overlap"):
            predict(model, ds, chunk_frames=10, threads=threads, progress=False)


def test_large_frames_and_uncertainty_stay_frame_by_frame():
    class Spec:
        uncertainty = False

    model = MonopoleModel()
    assert stream_module._batched(model, Spec, parallel.BATCH_BELOW_ATOMS - 1)
    assert not stream_module._batched(model, Spec, parallel.BATCH_BELOW_ATOMS)
    Spec.uncertainty = True
    assert not stream_module._batched(model, Spec, 3)


@pytest.mark.parametrize("mode", ["numba", "serial", "batch threads"])
def test_automatic_threads_probe_then_run_the_rest_alike(mode, monkeypatch):
    """With threads=None a chunk of many batches times three ways of running them and runs
    the rest the chosen way: every way gives the numbers of one thread, and every frame is
    computed exactly once."""
    rng = np.random.default_rng(6)
    model = fitted_random_model(CombinedModel, rng, False)
    ds = _trajectory(rng, False)
    monkeypatch.setattr(parallel, "BATCH_ATOMS", ds.sizes["atom"])  # 23 batches of one frame
    serial = predict(model, ds, threads=1, progress=False)
    probed = []

    def choose(seconds):
        probed.append(dict(seconds))
        return mode

    monkeypatch.setattr(parallel, "fastest_batch_mode", choose)
    monkeypatch.setattr(parallel, "frame_threads", lambda *args: 2)
    calls = _count_batches(model, monkeypatch)
    auto = predict(model, ds, threads=None, progress=False)
    assert len(probed) == 1 and set(probed[0]) == {"numba", "serial", "batch threads"}
    assert all(s > 0 for s in probed[0].values())
    assert sum(calls) == ds.sizes["frame"] and len(calls) == 23
    _compare(auto, serial)
    # a call of many batches in short chunks probes once, in its first chunk, and runs its
    # other chunks the chosen way (here chunks of 8, 8 and 7 batches)
    probed.clear()
    calls.clear()
    ways = []
    run_in_order = stream_module._run_in_order

    def recording(task, items, n_threads):
        ways.append((len(items), n_threads))
        return run_in_order(task, items, n_threads)

    monkeypatch.setattr(stream_module, "_run_in_order", recording)
    chunked = predict(model, ds, threads=None, chunk_frames=8, progress=False)
    assert len(probed) == 1 and sum(calls) == 23
    _compare(chunked, serial)
    # chunk 1: the probe's concurrent batches (4 of its 8, whole rounds of two: one
    # warm-up, one on Numba's threads and one on one thread before them; the one left over
    # runs the chosen way); chunks 2 and 3 whole, the chosen way
    chosen = 2 if mode == "batch threads" else 1
    assert ways == [(4, 2), (1, chosen), (8, chosen), (7, chosen)], ways
    # a call of fewer batches than PROBE_FROM_BATCHES runs them one at a time, unprobed
    probed.clear()
    n = parallel.PROBE_FROM_BATCHES - 1
    short = predict(model, ds.isel(frame=slice(0, n)), threads=None, progress=False)
    assert not probed
    _compare(short, serial.isel(frame=slice(0, n)))


def test_fastest_batch_mode_needs_a_clear_gain():
    fastest = parallel.fastest_batch_mode
    gain = parallel.MIN_THREAD_GAIN
    assert fastest({"numba": 1.0, "serial": 1.0, "batch threads": 1.0}) == "numba"
    assert fastest({"numba": 1.0, "serial": 0.99 / gain, "batch threads": 1.0}) == "serial"
    assert fastest({"numba": 1.0, "serial": 1.01 / gain, "batch threads": 1.0}) == "numba"
    assert fastest({"numba": 1.0, "serial": 0.8, "batch threads": 0.5}) == "batch threads"
    assert fastest({"numba": 1.0, "serial": 0.8, "batch threads": 0.78}) == "serial"
