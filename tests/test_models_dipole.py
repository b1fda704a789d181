"""DipoleModel (lambda = 1): exact derivatives, equivariance, training, save/load."""

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
    randomized,
    training_frames,
    water_cell,
    water_cluster,
)
from scipy.spatial.transform import Rotation

from numbec.models import DipoleModel, UnknownSpeciesError


@pytest.fixture
def rng():
    return np.random.default_rng(11)


@pytest.mark.parametrize("zeta", [1, 2, 4])
def test_molecule_bec_is_derivative_of_dipole(rng, zeta):
    model = fitted_random_model(DipoleModel, rng, periodic=False, zeta=zeta)
    out = check_molecule_derivative(model, rng)
    assert "charges" not in out and "bec_monopole" not in out


def test_local_dipoles_rotate_with_the_molecule(rng):
    """dipole(R r) = R dipole(r) and Z(R r) = R Z R^T, i.e. the kernel is equivariant."""
    model = fitted_random_model(DipoleModel, rng, periodic=False)
    atoms = water_cluster(rng, 3)
    ref = predict(model, atoms)
    rot = Rotation.random(random_state=3).as_matrix()
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rot.T
    out = predict(model, rotated)
    np.testing.assert_allclose(out["dipole"], rot @ ref["dipole"], atol=1e-10)
    np.testing.assert_allclose(out["bec"], np.einsum("ab,nbc,dc->nad", rot, ref["bec"], rot),
                               atol=1e-10)
    # the baseline alone would give a dipole sum q0' r; the vector part must be non-zero
    q0n = model._baseline(atoms.numbers)
    assert np.linalg.norm(ref["dipole"] - q0n @ atoms.positions) > 1e-2


def test_periodic_invariances_and_asr(rng):
    model = fitted_random_model(DipoleModel, rng, periodic=True)
    check_periodic_invariances(model, rng)


@pytest.mark.parametrize("zeta", [1, 3])
def test_design_matches_adjoint_prediction(rng, zeta):
    for periodic in (False, True):
        model = fitted_random_model(DipoleModel, rng, periodic=periodic, zeta=zeta)
        make = water_cell if periodic else water_cluster
        check_design_matches_prediction(model, make(rng))


@pytest.mark.parametrize("cutoffs", [(3.0, 3.5), (3.5, 3.5)])
def test_design_with_other_cutoff_orders(rng, cutoffs):
    """The design skips the Jacobian blocks a pair cannot move (beyond one of the cutoffs);
    with the angular cutoff the larger, or equal cutoffs, it still matches the adjoint path."""
    from dataclasses import replace

    settings = replace(SETTINGS, cutoff_radial=cutoffs[0], cutoff_angular=cutoffs[1])
    for periodic in (False, True):
        frames = training_frames(rng, periodic)
        model = DipoleModel(settings=settings, zeta=3, n_sparse=3, regression="ridge",
                            ridge=1e-3).fit(frames)
        randomized(model, rng)
        check_design_matches_prediction(model, (water_cell if periodic else water_cluster)(rng))


@pytest.mark.parametrize("periodic", [False, True])
def test_fit_recovers_teacher(rng, periodic):
    check_teacher_student(DipoleModel, rng, periodic)


def test_vector_scale_and_sparse_vectors(rng):
    frames = training_frames(rng, periodic=True)
    model = DipoleModel(settings=SETTINGS, n_sparse=2, zeta=2).fit(frames)
    assert model.weights.shape == (3 * 4,)  # 2 sparse points per species, 3 weights each
    assert model.sparse_vectors.shape == (4, 3, SETTINGS.n_vector_features)
    # s is the RMS Frobenius norm of the training vector descriptors
    from numbec.descriptors import compute_vector_descriptors

    sq = [np.sum(compute_vector_descriptors(a.positions, a.numbers, a.cell.array, a.pbc,
                                            SETTINGS).values ** 2, axis=(1, 2)) for a in frames]
    np.testing.assert_allclose(model.vector_scale, np.sqrt(np.mean(np.concatenate(sq))))


def test_save_load(rng, tmp_path):
    model = fitted_random_model(DipoleModel, rng, periodic=False, n_sparse={"H": 3, 8: 2})
    check_save_load(model, tmp_path, rng)
    assert model.hyperparameters()["n_sparse"] == {"1": 3, "8": 2}  # JSON keys


def test_unknown_species(rng):
    model = fitted_random_model(DipoleModel, rng, periodic=True)
    atoms = water_cell(rng)
    atoms.numbers[1] = 7
    with pytest.raises(UnknownSpeciesError, match="N"):
        predict(model, atoms)
