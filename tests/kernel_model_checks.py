"""Structures and physics checks shared by the tests of the three kernel BEC models.

Small water clusters (molecules) and small periodic water cells with a reduced descriptor basis
keep every fit and prediction in milliseconds. Models are fitted to rough reference BECs and then
given random weights of order one, so that every term of the model is exercised with a sizeable
amplitude: the checks below hold for any weights, they test the functional form and its
derivatives, not the quality of a fit.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import molecule
from scipy.spatial.transform import Rotation

from numbec.conventions import asr_project
from numbec.descriptors import DescriptorSettings

SETTINGS = DescriptorSettings(species=(1, 8), cutoff_radial=3.5, cutoff_angular=3.0, sigma=0.5,
                              n_radial=4, n_angular=4, l_max=2, radial_weight=0.3)
CELL = np.array([[4.6, 0.2, 0.1], [0.3, 4.4, -0.2], [0.1, 0.2, 4.8]])
#: Prediction keys with one value per structure rather than per atom.
PER_FRAME = ("asr_violation", "dipole")


def water_cluster(rng, n_molecules=2, jitter=0.06) -> Atoms:
    """Non-periodic cluster of water molecules about 2.8 Å apart, randomly displaced."""
    atoms = Atoms()
    for k in range(n_molecules):
        mol = molecule("H2O")
        mol.rotate(rng.uniform(0, 360), rng.normal(size=3), center="COP")
        mol.positions += np.array([2.8 * k, 0.4 * (k % 2), 0.2 * k])
        atoms += mol
    atoms.positions += rng.normal(0.0, jitter, atoms.positions.shape)
    return atoms


def water_cell(rng, jitter=0.06) -> Atoms:
    """Two water molecules in a small triclinic periodic cell (images within the cutoff)."""
    atoms = water_cluster(rng, 2, jitter)
    atoms.positions += np.array([0.8, 0.9, 1.0])
    atoms.set_cell(CELL)
    atoms.pbc = True
    return atoms


def water_chain(rng, jitter=0.06) -> Atoms:
    """Three water molecules 2.8 Å apart in a cell of 8.4 Å along x: the chain of pairs runs
    around the cell (periodic), while the cell exceeds twice the 3.5 Å cutoff (each pair has
    one image within it)."""
    atoms = water_cluster(rng, 3, jitter)
    atoms.set_cell([[8.4, 0.2, 0.1], [0.3, 8.8, -0.4], [0.1, 0.4, 9.6]])
    atoms.pbc = True
    return atoms


def with_rough_becs(atoms, rng) -> Atoms:
    """Attach ASR-projected reference BECs: -0.8 e (O), +0.4 e (H) plus noise."""
    q = np.where(atoms.numbers == 8, -0.8, 0.4)
    z = q[:, None, None] * np.eye(3) + rng.normal(0.0, 0.05, (len(atoms), 3, 3))
    atoms.arrays["bec"] = asr_project(z)
    return atoms


def training_frames(rng, periodic, n_frames=3):
    make = water_cell if periodic else water_cluster
    return [with_rough_becs(make(rng), rng) for _ in range(n_frames)]


def randomized(model, rng, scale=0.3):
    """Give a fitted model random weights (and baseline) of order one; returns the model."""
    model.weights = rng.normal(0.0, scale, model.weights.shape)
    model.q0 = rng.normal(0.0, 0.5, model.q0.shape)
    return model


def fitted_random_model(cls, rng, periodic, zeta=3, n_sparse=3):
    frames = training_frames(rng, periodic)
    model = cls(settings=SETTINGS, zeta=zeta, n_sparse=n_sparse, regression="ridge",
                ridge=1e-3).fit(frames)
    return randomized(model, rng)


def predict(model, atoms, **kwargs):
    return model.predict_arrays(atoms.positions, atoms.numbers, np.asarray(atoms.cell),
                                atoms.pbc, **kwargs)


def finite_difference_bec(model, atoms, h=1e-4):
    """Central finite-difference derivative of the model's dipole: (N, 3, 3), [a, i, j] =
    dP_i/dr_{a,j}."""
    out = np.zeros((len(atoms), 3, 3))
    for a in range(len(atoms)):
        for j in range(3):
            pos = atoms.positions.copy()
            pos[a, j] += h
            plus = model.predict_arrays(pos, atoms.numbers, atoms.cell, atoms.pbc)["dipole"]
            pos[a, j] -= 2 * h
            minus = model.predict_arrays(pos, atoms.numbers, atoms.cell, atoms.pbc)["dipole"]
            out[a, :, j] = (plus - minus) / (2 * h)
    return out


def check_molecule_derivative(model, rng):
    """BECs of a molecule equal the finite-difference derivative of the model's dipole, obey
    the ASR, and the dipole is origin independent."""
    atoms = water_cluster(rng, 3)
    out = predict(model, atoms)
    fd = finite_difference_bec(model, atoms)
    scale = np.abs(out["bec"]).max()
    assert scale > 0.1  # not a trivial model
    np.testing.assert_allclose(out["bec"], fd, atol=1e-6 * scale, rtol=0)
    np.testing.assert_allclose(out["bec"].sum(axis=0), 0.0, atol=1e-10)
    shifted = atoms.copy()
    shifted.positions += np.array([10.0, -3.0, 7.0])
    np.testing.assert_allclose(predict(model, shifted)["dipole"], out["dipole"], atol=1e-10)
    return out


def check_periodic_invariances(model, rng):
    """Periodic cell: ASR to 1e-10; invariance under translation, wrapping and permutation;
    rotation of positions and cell rotates BECs as R Z R^T."""
    atoms = water_cell(rng)
    ref = predict(model, atoms)
    assert "dipole" not in ref
    np.testing.assert_allclose(ref["bec"].sum(axis=0), 0.0, atol=1e-10)
    assert np.abs(ref["bec"]).max() > 0.1

    moved = atoms.copy()
    moved.positions += np.array([0.37, -1.3, 2.2])
    moved.positions[[0, 4]] += np.array([1, -2, 1]) @ atoms.cell.array  # lattice shifts
    moved.positions[2] -= atoms.cell.array[2]
    _assert_same(predict(model, moved), ref)

    wrapped = atoms.copy()
    wrapped.wrap()
    _assert_same(predict(model, wrapped), ref)

    perm = rng.permutation(len(atoms))
    permuted = atoms[perm]
    out = predict(model, permuted)
    for key, value in ref.items():
        expected = value if key in PER_FRAME else value[perm]
        np.testing.assert_allclose(out[key], expected, atol=1e-10, err_msg=key)

    rot = Rotation.random(random_state=rng.integers(1 << 31)).as_matrix()
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rot.T
    rotated.set_cell(atoms.cell.array @ rot.T)
    out = predict(model, rotated)
    for key, value in ref.items():
        if key == "charges":
            expected = value
        elif key in PER_FRAME:
            expected = rot @ value @ rot.T
        else:
            expected = np.einsum("ab,nbc,dc->nad", rot, value, rot)
        np.testing.assert_allclose(out[key], expected, atol=1e-10, err_msg=key)
    return ref


def _assert_same(out, ref):
    assert out.keys() == ref.keys()
    for key, value in ref.items():
        np.testing.assert_allclose(out[key], value, atol=1e-10, err_msg=key)


def check_design_matches_prediction(model, atoms):
    """The training design (Jacobian + BLAS path) times the weights plus the baseline gives the
    predicted BECs (adjoint path) and, for molecules, the dipole."""
    out = predict(model, atoms)
    phi, dip = model._design(atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc,
                             "test")
    q0n = model._baseline(atoms.numbers)
    bec = phi @ model.weights + q0n[:, None, None] * np.eye(3)
    np.testing.assert_allclose(bec, out["bec"], atol=1e-10)
    if dip is not None:
        np.testing.assert_allclose(dip @ model.weights + q0n @ atoms.positions, out["dipole"],
                                   atol=1e-10)


def check_teacher_student(cls, rng, periodic, zeta=3):
    """A model trained on BECs produced by a model of the same form (same frames, hence the
    same sparse environments, same baseline) recovers them on unseen structures."""
    frames = training_frames(rng, periodic, n_frames=4)
    teacher = cls(settings=SETTINGS, zeta=zeta, n_sparse=3).fit(frames)
    randomized(teacher, rng)
    for atoms in frames:
        out = predict(teacher, atoms)
        atoms.arrays["bec"] = out["bec"]
        if not periodic:
            atoms.info["dipole"] = out["dipole"]
    student = cls(settings=SETTINGS, zeta=zeta, n_sparse=3, regression="ridge", ridge=1e-10)
    student._fit_baseline = lambda frames, targets: teacher.q0
    student.fit(frames)
    np.testing.assert_array_equal(student.sparse_unit, teacher.sparse_unit)
    assert student.training["train_rmse"] < 1e-6
    make = water_cell if periodic else water_cluster
    for _ in range(2):
        atoms = make(rng)
        expected = predict(teacher, atoms)["bec"]
        np.testing.assert_allclose(predict(student, atoms)["bec"], expected,
                                   atol=1e-5 * np.abs(expected).max())


def check_save_load(model, tmp_path, rng):
    """Round trip through the .npz file gives identical predictions and metadata."""
    from numbec.models import load_model

    path = model.save(tmp_path / "model")
    loaded = load_model(path)
    assert type(loaded) is type(model)
    assert loaded.hyperparameters() == model.hyperparameters()
    assert loaded.settings == model.settings
    assert loaded.training == model.training
    for atoms in (water_cluster(rng), water_cell(rng)):
        a = predict(model, atoms, uncertainty=True)
        b = predict(loaded, atoms, uncertainty=True)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
