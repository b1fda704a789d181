"""CombinedModel: partition Z = Z_mono + Z_dip, exact derivatives, joint fit, save/load."""

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
    water_cluster,
)

from numbec.models import CombinedModel, DipoleModel, MonopoleModel


@pytest.fixture
def rng():
    return np.random.default_rng(5)


def test_molecule_bec_is_derivative_of_dipole_and_partition(rng):
    model = fitted_random_model(CombinedModel, rng, periodic=False)
    out = check_molecule_derivative(model, rng)
    # plumbing check (bec is computed as this sum): the parts reach the output unchanged
    np.testing.assert_allclose(out["bec_monopole"] + out["bec_dipole"], out["bec"], atol=1e-14)
    for key in ("bec_monopole", "bec_dipole"):
        np.testing.assert_allclose(out[key].sum(axis=0), 0.0, atol=1e-10)
        assert np.abs(out[key]).max() > 0.05


def test_partition_equals_the_separate_models(rng):
    """With the weights split, bec_monopole is a MonopoleModel's BEC and bec_dipole a
    DipoleModel's (without its baseline), for molecules and for periodic cells."""
    combined = fitted_random_model(CombinedModel, rng, periodic=True)
    m = combined.sparse_unit.shape[0]
    parts = {}
    for cls, columns in ((MonopoleModel, slice(None, m)), (DipoleModel, slice(m, None))):
        metadata, arrays = combined.state()
        arrays["weights"] = combined.weights[columns]
        arrays["covariance"] = combined.covariance[columns, columns]
        parts[cls] = cls._from_state(metadata, arrays)
    for atoms in (water_cluster(rng, 3), water_cell(rng)):
        out = predict(combined, atoms)
        mono = predict(parts[MonopoleModel], atoms)
        dip = predict(parts[DipoleModel], atoms)
        np.testing.assert_allclose(out["bec_monopole"], mono["bec"], atol=1e-12)
        q0n = combined._baseline(atoms.numbers)
        np.testing.assert_allclose(out["bec_dipole"],
                                   dip["bec"] - q0n[:, None, None] * np.eye(3), atol=1e-12)
        np.testing.assert_allclose(out["charges"], mono["charges"], atol=1e-12)


def test_periodic_invariances_and_asr(rng):
    model = fitted_random_model(CombinedModel, rng, periodic=True)
    ref = check_periodic_invariances(model, rng)
    # plumbing check (bec is computed as this sum)
    np.testing.assert_allclose(ref["bec_monopole"] + ref["bec_dipole"], ref["bec"], atol=1e-14)
    np.testing.assert_allclose(ref["bec_dipole"].sum(axis=0), 0.0, atol=1e-10)


def test_design_matches_adjoint_prediction(rng):
    for periodic in (False, True):
        model = fitted_random_model(CombinedModel, rng, periodic=periodic)
        make = water_cell if periodic else water_cluster
        check_design_matches_prediction(model, make(rng))


@pytest.mark.parametrize("periodic", [False, True])
def test_fit_recovers_teacher(rng, periodic):
    check_teacher_student(CombinedModel, rng, periodic)


def test_joint_fit_not_worse_than_parts(rng):
    """The joint model contains both parts, so its training error (same sparse points,
    ridge) is at most that of either alone."""
    frames = training_frames(rng, periodic=True, n_frames=4)
    kwargs = dict(settings=SETTINGS, zeta=2, n_sparse=3, regression="ridge", ridge=1e-8)
    rmse = {cls: cls(**kwargs).fit(frames).training["train_rmse"]
            for cls in (MonopoleModel, DipoleModel, CombinedModel)}
    assert rmse[CombinedModel] <= min(rmse[MonopoleModel], rmse[DipoleModel]) + 1e-12
    assert rmse[CombinedModel] < 0.05  # the rough targets have 0.05 e noise


def test_save_load(rng, tmp_path):
    model = fitted_random_model(CombinedModel, rng, periodic=True)
    check_save_load(model, tmp_path, rng)


@pytest.mark.parametrize("periodic", [False, True])
def test_mixed_precision_moves_only_the_dipole_part_and_by_float32_rounding(rng, periodic):
    """precision="mixed": the monopole part (charges, bec_monopole) is the float64 result
    exactly, the dipole part differs (so float32 is really used) by float32 rounding only,
    and the sum rule and, for a molecule, bec = d(dipole)/dr still hold."""
    model = fitted_random_model(CombinedModel, rng, periodic=periodic)
    atoms = water_cell(rng) if periodic else water_cluster(rng, 3)
    ref = predict(model, atoms)
    out = predict(model, atoms, precision="mixed")
    np.testing.assert_array_equal(out["charges"], ref["charges"])
    np.testing.assert_array_equal(out["bec_monopole"], ref["bec_monopole"])
    scale = np.abs(ref["bec_dipole"]).max()
    assert scale > 0.05
    diff = np.abs(out["bec_dipole"] - ref["bec_dipole"]).max()
    assert 0 < diff < 1e-5 * scale
    np.testing.assert_allclose(out["bec"].sum(axis=0), 0.0, atol=1e-10)
    if not periodic:
        np.testing.assert_allclose(out["dipole"], ref["dipole"], rtol=1e-5)
    # DipoleModel offers it too; the monopole model has no dipole kernel and refuses
    dipole = fitted_random_model(DipoleModel, rng, periodic=periodic)
    np.testing.assert_allclose(predict(dipole, atoms, precision="mixed")["bec"],
                               predict(dipole, atoms)["bec"], rtol=0, atol=1e-5)
    mono = fitted_random_model(MonopoleModel, rng, periodic=periodic)
    with pytest.raises(ValueError, match="float64 only"):
        predict(mono, atoms, precision="mixed")
    with pytest.raises(ValueError, match="float16"):
        predict(model, atoms, precision="float16")
