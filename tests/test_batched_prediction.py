"""The batched prediction path (``predict_frames``): a chunk of small frames computed as one
structure must give the numbers of the per-frame path, frame by frame, for every model, for
molecules and periodic cells, and name the frame of bad input."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_model_checks import fitted_random_model, predict, water_cell, water_cluster

from numbec import parallel
from numbec.models import CombinedModel, DipoleModel, MonopoleModel, SpeciesMeanModel

MODELS = (MonopoleModel, DipoleModel, CombinedModel)


def _frames(rng, periodic, n_frames):
    make = water_cell if periodic else water_cluster
    frames = [make(rng) for _ in range(n_frames)]
    # the same atoms in every frame (as in a trajectory), differently displaced
    base = frames[0]
    positions = np.stack([base.positions + rng.normal(0.0, 0.08, base.positions.shape)
                          for _ in range(n_frames)])
    cells = np.stack([np.asarray(base.cell) * (1.0 + 0.01 * k) for k in range(n_frames)])
    return base, positions, cells


@pytest.mark.parametrize("periodic", [False, True], ids=["molecule", "periodic"])
@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_batch_equals_frame_by_frame(cls, periodic, monkeypatch):
    rng = np.random.default_rng(7)
    model = fitted_random_model(cls, rng, periodic)
    base, positions, cells = _frames(rng, periodic, 7)
    # batches of 3 frames: the split into batches and the joining are exercised too
    monkeypatch.setattr(parallel, "BATCH_ATOMS", 3 * len(base))
    batch = model.predict_frames(positions, base.numbers, cells if periodic else None,
                                 base.pbc)
    for f in range(len(positions)):
        atoms = base.copy()
        atoms.positions = positions[f]
        if periodic:
            atoms.cell = cells[f]
        single = predict(model, atoms)
        assert set(single) == set(batch)
        for key, value in single.items():
            np.testing.assert_allclose(batch[key][f], value, rtol=0, atol=1e-12,
                                       err_msg=f"{key}, frame {f}")
    if periodic:  # each frame's BECs obey the sum rule on their own
        np.testing.assert_allclose(batch["bec"].sum(axis=1), 0.0, atol=1e-12)


def test_frames_never_see_each_other():
    """Frames placed on top of each other must not become neighbours of each other."""
    rng = np.random.default_rng(3)
    model = fitted_random_model(CombinedModel, rng, False)
    base = water_cluster(rng)
    positions = np.stack([base.positions, base.positions + 0.3])  # overlapping frames
    batch = model.predict_frames(positions, base.numbers, None, False)
    moved = base.copy()
    moved.positions += 0.3
    np.testing.assert_allclose(batch["bec"][1], predict(model, moved)["bec"], atol=1e-12)


def test_bad_frame_is_named():
    rng = np.random.default_rng(5)
    model = fitted_random_model(MonopoleModel, rng, False)
    base, positions, _ = _frames(rng, False, 5)
    positions[3, 2, 1] = np.nan
    with pytest.raises(ValueError, match="frame 3: positions of atom 2"):
        model.predict_frames(positions, base.numbers, None, False)
    positions[3, 2] = positions[3, 1]
    with pytest.raises(ValueError, match="frame 3: atoms 1 and 2"):
        model.predict_frames(positions, base.numbers, None, False)


def test_default_batch_of_models_without_one():
    """Models without a batched path stack their per-frame predictions."""
    rng = np.random.default_rng(2)
    base, positions, _ = _frames(rng, False, 3)
    frames = [base.copy() for _ in range(2)]
    for atoms in frames:
        q = np.where(atoms.numbers == 8, -0.8, 0.4)
        atoms.arrays["bec"] = q[:, None, None] * np.eye(3)
    model = SpeciesMeanModel.fit(frames)
    batch = model.predict_frames(positions, base.numbers, None, False)
    assert batch["bec"].shape == (3, len(base), 3, 3)
    for f in range(3):
        single = model.predict_arrays(positions[f], base.numbers, None, False)
        np.testing.assert_array_equal(batch["bec"][f], single["bec"])


@pytest.mark.parametrize("cls", [MonopoleModel, CombinedModel], ids=lambda c: c.__name__)
def test_molecules_in_a_box_and_charged_frames(cls, monkeypatch):
    """Frames of one molecule in a large periodic box get the molecular treatment frame by
    frame (wrapped differently in every frame), and a total charge reaches every frame."""
    rng = np.random.default_rng(11)
    model = fitted_random_model(cls, rng, False)
    base, positions, _ = _frames(rng, False, 5)
    cells = np.stack([np.eye(3) * 30.0] * 5)
    # wrap some atoms of some frames across the box: the molecule stays one cluster
    boxed = positions.copy()
    boxed[1, 0] += cells[1, 0]
    boxed[3, 2:] -= cells[3, 1]
    monkeypatch.setattr(parallel, "BATCH_ATOMS", 2 * len(base))
    batch = model.predict_frames(boxed, base.numbers, cells, True, total_charge=1.0)
    free = model.predict_frames(positions, base.numbers, None, False, total_charge=1.0)
    np.testing.assert_allclose(batch["bec"], free["bec"], atol=1e-10)
    np.testing.assert_allclose(batch["bec"].sum(axis=1), np.broadcast_to(np.eye(3), (5, 3, 3)),
                               atol=1e-10)
    if "charges" in batch:
        np.testing.assert_allclose(batch["charges"].sum(axis=1), 1.0, atol=1e-12)
