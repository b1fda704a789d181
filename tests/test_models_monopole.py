"""MonopoleModel: exact derivatives, invariances, neutrality, training, uncertainty, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_model_checks import (
    SETTINGS,
    check_design_matches_prediction,
    check_molecule_derivative,
    check_periodic_invariances,
    check_save_load,
    check_teacher_student,
    fitted_random_model,
    predict,
    training_frames,
    water_cell,
    water_chain,
    water_cluster,
    with_rough_becs,
)

from numbec.conventions import asr_project
from numbec.descriptors import compute_descriptors
from numbec.models import ModelFileError, MonopoleModel, UnknownSpeciesError, load_model


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize("zeta", [1, 3])
def test_molecule_bec_is_derivative_of_dipole(rng, zeta):
    model = fitted_random_model(MonopoleModel, rng, periodic=False, zeta=zeta)
    out = check_molecule_derivative(model, rng)
    # neutral charges and the dipole they carry
    # plumbing check: the charges are neutralised by construction
    np.testing.assert_allclose(out["charges"].sum(), 0.0, atol=1e-12)
    atoms = water_cluster(np.random.default_rng(7 + 1), 3)
    out = predict(model, atoms)
    np.testing.assert_allclose(out["dipole"], out["charges"] @ atoms.positions, atol=1e-12)


def test_periodic_invariances_and_asr(rng):
    model = fitted_random_model(MonopoleModel, rng, periodic=True)
    ref = check_periodic_invariances(model, rng)
    # plumbing check: the charges are neutralised by construction
    np.testing.assert_allclose(ref["charges"].sum(), 0.0, atol=1e-12)


def _raw_charges(model, positions, atoms):
    """Independent evaluation of q_i = q0_J(i) + sum_b w_b (x_i . x_b)**zeta (not neutral)."""
    x = compute_descriptors(positions, atoms.numbers, atoms.cell.array, atoms.pbc,
                            model.settings).values
    x = x / np.linalg.norm(x, axis=1)[:, None]
    same = atoms.numbers[:, None] == model.sparse_species[None, :]
    k = np.where(same, (x @ model.sparse_unit.T) ** model.zeta, 0.0)
    return model.q0[np.searchsorted(model.species, atoms.numbers)] + k @ model.weights


def test_periodic_bec_is_asr_projection_of_local_formula(rng):
    """Periodic BECs = ASR projection of ``q_j I + sum_i d_ij (x) dq_i/dr_j`` with the raw
    charges evaluated independently and differentiated by central differences. The cell is
    larger than twice the cutoff, so each pair has one image: d_ij is the minimum image; the
    chain of three molecules runs around the cell along x, so it is periodic, not a cluster."""
    model = fitted_random_model(MonopoleModel, rng, periodic=True)
    atoms = water_chain(rng)
    cell = atoms.cell.array
    n, h = len(atoms), 1e-4
    q = _raw_charges(model, atoms.positions, atoms)
    local = q[:, None, None] * np.eye(3)
    for j in range(n):
        d = atoms.positions - atoms.positions[j]
        frac = np.linalg.solve(cell.T, d.T).T
        d = (frac - np.round(frac)) @ cell
        for b in range(3):
            pos = atoms.positions.copy()
            pos[j, b] += h
            qp = _raw_charges(model, pos, atoms)
            pos[j, b] -= 2 * h
            qm = _raw_charges(model, pos, atoms)
            local[j, :, b] += d.T @ ((qp - qm) / (2 * h))
    out = predict(model, atoms)
    assert np.abs(local - local.mean(axis=0)).max() > 0.1
    np.testing.assert_allclose(out["bec"], asr_project(local), atol=1e-7)
    # the reported violation is what the projection removed
    np.testing.assert_allclose(out["asr_violation"], local.sum(axis=0) - q.sum() * np.eye(3),
                               atol=1e-7)
    assert np.abs(out["asr_violation"]).max() > 1e-3
    np.testing.assert_allclose(out["charges"], q - q.mean(), atol=1e-12)


def test_design_matches_adjoint_prediction(rng):
    for periodic in (False, True):
        model = fitted_random_model(MonopoleModel, rng, periodic=periodic)
        make = water_cell if periodic else water_cluster
        check_design_matches_prediction(model, make(rng))


@pytest.mark.parametrize("periodic", [False, True])
def test_fit_recovers_teacher(rng, periodic):
    check_teacher_student(MonopoleModel, rng, periodic)


def test_fit_charges_from_dipoles_and_becs(rng):
    """Fixed-charge molecules (q_O = -0.8, q_H = 0.4, BEC = q I, dipole = sum q r): the fit
    reproduces BECs, charges and dipoles of new geometries."""
    frames = []
    for _ in range(3):
        atoms = water_cluster(rng, 2)
        q = np.where(atoms.numbers == 8, -0.8, 0.4)
        atoms.arrays["bec"] = q[:, None, None] * np.eye(3)
        atoms.info["dipole"] = q @ atoms.positions
        frames.append(atoms)
    model = MonopoleModel(settings=SETTINGS, n_sparse=3, zeta=2).fit(frames)
    np.testing.assert_allclose(model.q0, [0.4, -0.8], atol=1e-12)  # species order H, O
    atoms = water_cluster(rng, 3)
    out = predict(model, atoms, uncertainty=True)
    q = np.where(atoms.numbers == 8, -0.8, 0.4)
    np.testing.assert_allclose(out["charges"], q, atol=1e-6)
    np.testing.assert_allclose(out["bec"], q[:, None, None] * np.eye(3), atol=1e-6)
    np.testing.assert_allclose(out["dipole"], q @ atoms.positions, atol=1e-6)
    assert out["bec_std"].shape == (len(atoms), 3, 3)


def test_neutrality_rows_make_raw_charges_neutral(rng, monkeypatch):
    """With the optional neutrality rows the fitted kernel charges of periodic training frames
    sum to about zero."""
    import numbec.models._kernel_model as km

    frames = training_frames(rng, periodic=True, n_frames=4)
    for atoms in frames:  # BECs from a non-neutral charge model: q = 0.3 + geometry term
        atoms.arrays["bec"] = asr_project(atoms.arrays["bec"] + 0.3 * np.eye(3))

    def total(model):
        return [float(model._charge_row(a, "test")[0] @ model.weights) for a in frames]

    monkeypatch.setattr(km, "NEUTRALITY_ROW_WEIGHT", 10.0)
    model = MonopoleModel(settings=SETTINGS, n_sparse=4, zeta=2, regression="ridge",
                          ridge=1e-6).fit(frames)
    assert model.training["n_rows"] == 4 * 6 * 9 + 4
    np.testing.assert_allclose(total(model), 0.0, atol=1e-3)


def test_uncertainty_grows_away_from_training_data(rng):
    frames = training_frames(rng, periodic=False, n_frames=4)
    model = MonopoleModel(settings=SETTINGS, n_sparse=4, zeta=2).fit(frames)
    near = predict(model, frames[0], uncertainty=True)["bec_std"]
    assert np.all(near >= np.sqrt(model.sigma_v2) * (1 - 1e-12))
    squeezed = frames[0].copy()
    squeezed.positions *= 0.75  # much shorter bonds than in training
    far = predict(model, squeezed, uncertainty=True)["bec_std"]
    assert far.mean() > near.mean()


@pytest.mark.parametrize("method", ["cur", "fps"])
def test_sparse_methods_and_per_species_counts(rng, method):
    frames = training_frames(rng, periodic=True)
    model = MonopoleModel(settings=SETTINGS, n_sparse={"H": 5, 8: 2}, sparse_method=method,
                          zeta=2).fit(frames)
    assert np.sum(model.sparse_species == 1) == 5
    assert np.sum(model.sparse_species == 8) == 2
    assert model.weights.shape == (7,)
    assert model.training["n_frames"] == 3 and model.training["n_atoms"] == 18
    np.testing.assert_allclose(np.linalg.norm(model.sparse_unit, axis=1), 1.0)


def test_default_settings_take_training_species(rng):
    frames = training_frames(rng, periodic=False, n_frames=2)
    model = MonopoleModel(n_sparse=2, zeta=2)
    assert model.settings is None
    model.fit(frames)
    assert model.settings.species == (1, 8) and model.species == (1, 8)
    assert model.cutoff == model.settings.cutoff


def test_save_load(rng, tmp_path):
    model = fitted_random_model(MonopoleModel, rng, periodic=True)
    check_save_load(model, tmp_path, rng)
    # a damaged state (weights of the wrong length) is a clear error
    path = tmp_path / "bad.npz"
    metadata, arrays = model.state()
    arrays["weights"] = arrays["weights"][:-1]
    import json

    header = {"format": "numbec-model", "format_version": 1, "model": "MonopoleModel",
              "metadata": metadata}
    np.savez(path, __numbec__=np.array(json.dumps(header)), **arrays)
    with pytest.raises(ModelFileError, match="bad.npz: MonopoleModel: array 'weights' has shape"):
        load_model(path)


# --------------------------------------------------------------------------- bad input
def test_unknown_species_in_prediction(rng):
    model = fitted_random_model(MonopoleModel, rng, periodic=False)
    atoms = water_cluster(rng)
    atoms.numbers[0] = 6
    with pytest.raises(UnknownSpeciesError, match="C"):
        predict(model, atoms)


def test_nan_positions(rng):
    model = fitted_random_model(MonopoleModel, rng, periodic=False)
    atoms = water_cluster(rng)
    atoms.positions[2, 1] = np.nan
    with pytest.raises(ValueError, match="atom 2"):
        predict(model, atoms)
    frames = training_frames(rng, periodic=False)
    frames[1].positions[4, 0] = np.inf
    with pytest.raises(ValueError, match="frame 1: position of atom 4"):
        MonopoleModel(settings=SETTINGS, n_sparse=2).fit(frames)


def test_frame_without_becs(rng):
    frames = training_frames(rng, periodic=True)
    del frames[2].arrays["bec"]
    with pytest.raises(ValueError, match="frame 2: no 'bec'"):
        MonopoleModel(settings=SETTINGS, n_sparse=2).fit(frames)


def test_bad_bec_arrays(rng):
    frames = training_frames(rng, periodic=True)
    frames[1].arrays["bec"] = np.full((6, 3, 3), np.nan)
    with pytest.raises(ValueError, match="frame 1: BEC of atom 0"):
        MonopoleModel(settings=SETTINGS, n_sparse=2).fit(frames)
    frames = training_frames(rng, periodic=True)
    frames[2].new_array("bec_wrong", np.zeros((6, 4)))
    frames[2].arrays["bec"] = frames[2].arrays.pop("bec_wrong")
    with pytest.raises(ValueError, match=r"frame 2: BEC array of shape \(6, 4\)"):
        MonopoleModel(settings=SETTINGS, n_sparse=2).fit(frames)


def test_refit_on_other_species(rng):
    """Default settings follow the species of each fit, not of the first one."""
    model = MonopoleModel(n_sparse=2, zeta=2)
    model.fit(training_frames(rng, periodic=False, n_frames=2))
    frames = training_frames(rng, periodic=False, n_frames=2)
    for atoms in frames:
        atoms.numbers[atoms.numbers == 8] = 7
    model.fit(frames)
    assert model.settings.species == (1, 7) == model.species


def test_too_few_environments_lower_n_sparse_for_that_species(rng):
    frames = training_frames(rng, periodic=False, n_frames=2)  # 4 O, 8 H
    with pytest.warns(UserWarning, match=r"O \(Z=8\): n_sparse = 5 .* only 4 environments"):
        model = MonopoleModel(settings=SETTINGS, n_sparse=5, regression="ridge").fit(frames)
    assert model.training["n_sparse_used"] == {"H": 5, "O": 4}
    assert np.sum(model.sparse_species == 8) == 4 and np.sum(model.sparse_species == 1) == 5
    with pytest.raises(ValueError, match="no entry for species O"):
        MonopoleModel(settings=SETTINGS, n_sparse={"H": 2}).fit(frames)


def test_species_outside_descriptor_settings(rng):
    frames = training_frames(rng, periodic=False, n_frames=2)
    frames[0].numbers[0] = 6
    with pytest.raises(UnknownSpeciesError, match="C"):
        MonopoleModel(settings=SETTINGS, n_sparse=2).fit(frames)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="zeta"):
        MonopoleModel(zeta=0)
    with pytest.raises(ValueError, match="sparse_method"):
        MonopoleModel(sparse_method="random")
    with pytest.raises(ValueError, match="regression"):
        MonopoleModel(regression="lasso")
    with pytest.raises(ValueError, match="n_sparse"):
        MonopoleModel(n_sparse=0)
    with pytest.raises(RuntimeError, match="not fitted"):
        MonopoleModel().predict(with_rough_becs(water_cluster(np.random.default_rng(0)),
                                                np.random.default_rng(0)))
