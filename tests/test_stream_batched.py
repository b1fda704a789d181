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


@pytest.mark.parametrize("periodic", [False, True], ids=["molecule", "periodic"])
@pytest.mark.parametrize("cls", [MonopoleModel, DipoleModel, CombinedModel],
                         ids=lambda c: c.__name__)
def test_batched_stream_equals_frame_by_frame(cls, periodic, monkeypatch, tmp_path):
    rng = np.random.default_rng(4)
    model = fitted_random_model(cls, rng, periodic)
    ds = _trajectory(rng, periodic)
    calls = []
    original = type(model).predict_frames

    def counting(self, positions, *args, **kwargs):
        calls.append(len(positions))
        return original(self, positions, *args, **kwargs)

    monkeypatch.setattr(type(model), "predict_frames", counting)
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
