"""Physics cases of the kernel models: the local dipole sum of periodic cells against finite
differences, molecules in large periodic boxes, isolated atoms, charged structures, and the
sum-rule diagnostic."""

import warnings

import numpy as np
import pytest
from kernel_model_checks import (
    SETTINGS,
    fitted_random_model,
    predict,
    training_frames,
    water_chain,
    water_cluster,
)

from numbec.descriptors import compute_descriptors, compute_vector_descriptors
from numbec.models import CombinedModel, DipoleModel, MonopoleModel

KERNEL_MODELS = (MonopoleModel, DipoleModel, CombinedModel)


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def _kernel_sums(model, positions, atoms):
    """Raw kernel charges q_i (N,) and the sum of the local dipoles sum_i mu_i (3,) of one
    structure, evaluated from the definitions (model docstring), not the model's code:
    ``q_i = sum_b w_b k_ib**zeta``, ``mu_i^a = sum_b sum_n (V_i^a . V_b^n) / s**2
    k_ib**(zeta - 1) w_bn`` with ``k_ib = x_i . x_b`` over sparse points of i's species."""
    cell, pbc, numbers = atoms.cell.array, atoms.pbc, atoms.numbers
    x = compute_descriptors(positions, numbers, cell, pbc, model.settings).values
    x = x / np.linalg.norm(x, axis=1)[:, None]
    same = numbers[:, None] == model.sparse_species[None, :]
    k = np.where(same, x @ model.sparse_unit.T, 0.0)
    m = model.sparse_unit.shape[0]
    q = k ** model.zeta @ model.weights[:m] if model._monopole else np.zeros(len(atoms))
    mu = np.zeros(3)
    if model._dipole:
        w_dip = model.weights[-3 * m:].reshape(m, 3)
        v = compute_vector_descriptors(positions, numbers, cell, pbc, model.settings).values
        # sparse_vectors holds V_b / s
        vv = np.einsum("iak,bnk->iabn", v, model.sparse_vectors) / model.vector_scale
        mu = np.einsum("iabn,ib,bn->a", vv, np.where(same, k ** (model.zeta - 1), 0.0), w_dip)
    return q, mu


@pytest.mark.parametrize("cls", [DipoleModel, CombinedModel])
def test_periodic_local_dipole_sum_matches_finite_differences(cls, rng):
    """Periodic cell: BECs before the sum-rule projection (``bec + asr_violation / N``) equal
    ``q'_j I + sum_i d_ij (x) dq_i/dr_j + d(sum_i mu_i)/dr_j`` with q and mu evaluated from the
    definitions and differentiated by central differences. Catches a dropped dV/dr term of
    the dipole kernel in periodic cells (0.6 e)."""
    model = fitted_random_model(cls, rng, periodic=True)
    atoms = water_chain(rng)
    cell, n, h = atoms.cell.array, len(atoms), 1e-4
    q, _ = _kernel_sums(model, atoms.positions, atoms)
    q0 = model.q0[np.searchsorted(model.species, atoms.numbers)]
    local = ((q0 - q0.mean()) + (q - q.mean()))[:, None, None] * np.eye(3)
    for j in range(n):
        d = atoms.positions - atoms.positions[j]
        frac = np.linalg.solve(cell.T, d.T).T
        d = (frac - np.round(frac)) @ cell  # minimum image: the cell exceeds twice the cutoff
        for b in range(3):
            pos = atoms.positions.copy()
            pos[j, b] += h
            qp, mup = _kernel_sums(model, pos, atoms)
            pos[j, b] -= 2 * h
            qm, mum = _kernel_sums(model, pos, atoms)
            local[j, :, b] += d.T @ ((qp - qm) / (2 * h)) + (mup - mum) / (2 * h)
    out = predict(model, atoms)
    before_projection = out["bec"] + out["asr_violation"][None] / n
    assert np.abs(local).max() > 0.3
    np.testing.assert_allclose(before_projection, local, atol=2e-7)
    np.testing.assert_allclose(out["asr_violation"], local.sum(axis=0), atol=2e-7)


@pytest.mark.parametrize("cls", KERNEL_MODELS)
def test_molecule_in_a_large_periodic_box_is_a_molecule(cls, rng):
    """No pair within the cutoff involves a periodic image: the BECs and charges equal those
    of pbc=False, also when the molecule is wrapped across the cell boundary."""
    model = fitted_random_model(cls, rng, periodic=False)
    free = water_cluster(rng, 2)
    ref = predict(model, free)
    assert np.abs(ref["bec"]).max() > 0.1
    for shift in ([0.0, 0.0, 0.0], -free.positions[1]):  # inside the box; across its corner
        boxed = free.copy()
        boxed.positions += shift
        boxed.set_cell(np.diag([30.0, 31.0, 32.0]) + 0.5)
        boxed.pbc = True
        boxed.wrap()
        out = predict(model, boxed)
        assert "dipole" not in out
        for key in ("bec", "charges", "bec_monopole", "bec_dipole", "asr_violation"):
            if key in ref:
                np.testing.assert_allclose(out[key], ref[key], atol=1e-10, err_msg=key)
    np.testing.assert_allclose(ref["asr_violation"], 0.0, atol=1e-10)


def test_separate_clusters_in_a_box_keep_the_periodic_scheme_and_warn(rng):
    model = fitted_random_model(MonopoleModel, rng, periodic=False)
    two = water_cluster(rng, 1) + water_cluster(rng, 1)
    two.positions[3:] += [12.0, 0.0, 0.0]
    two.set_cell(np.eye(3) * 25.0)
    two.pbc = True
    with pytest.warns(UserWarning, match="2 separate clusters"):
        out = predict(model, two)
    np.testing.assert_allclose(out["bec"].sum(axis=0), 0.0, atol=1e-12)


@pytest.mark.parametrize("cls", KERNEL_MODELS)
def test_isolated_atom_gets_its_baseline_and_the_rest_is_exact(cls, rng):
    """An O atom 20 Å away from a cluster: prediction instead of an error; its BEC is its
    (shifted) baseline charge times I; the molecule's BECs stay the derivative of the dipole."""
    from kernel_model_checks import finite_difference_bec

    model = fitted_random_model(cls, rng, periodic=False)
    atoms = water_cluster(rng, 2)
    atoms += atoms[:1]
    atoms.positions[-1] += [20.0, 0.0, 0.0]
    out = predict(model, atoms)
    iso = out["bec"][-1]
    np.testing.assert_allclose(iso, iso[0, 0] * np.eye(3), atol=1e-12)
    if "charges" in out:
        assert iso[0, 0] == pytest.approx(out["charges"][-1], abs=1e-12)
    else:  # only the baseline
        q0 = model.q0[np.searchsorted(model.species, atoms.numbers)]
        assert iso[0, 0] == pytest.approx(q0[-1] - q0.mean(), abs=1e-12)
    np.testing.assert_allclose(out["bec"], finite_difference_bec(model, atoms), atol=1e-6)
    alone = atoms[-1:]
    np.testing.assert_allclose(predict(model, alone)["bec"], 0.0, atol=1e-12)


@pytest.mark.parametrize("cls", KERNEL_MODELS)
def test_charged_structures_obey_sum_z_equals_q(cls, rng):
    from kernel_model_checks import finite_difference_bec

    model = fitted_random_model(cls, rng, periodic=True)
    neutral_cell = predict(model, water_chain(np.random.default_rng(3)))
    charged = water_chain(np.random.default_rng(3))
    charged.info["charge"] = -1.0
    out = model.predict(charged)
    n = len(charged)
    np.testing.assert_allclose(out["bec"].sum(axis=0), -np.eye(3), atol=1e-12)
    # the charge is spread evenly: every atom's BEC moves by Q/N I
    np.testing.assert_allclose(out["bec"] - neutral_cell["bec"],
                               np.broadcast_to(-np.eye(3) / n, (n, 3, 3)), atol=1e-12)
    if "charges" in out:
        assert out["charges"].sum() == pytest.approx(-1.0, abs=1e-12)
    ion = water_cluster(rng, 2)
    ion.info["charge"] = 1.0
    got = model.predict(ion)
    np.testing.assert_allclose(got["bec"].sum(axis=0), np.eye(3), atol=1e-10)

    class Charged:  # the finite differences of the dipole of the ion
        def predict_arrays(self, *args):
            return model.predict_arrays(*args, total_charge=1.0)

    np.testing.assert_allclose(got["bec"], finite_difference_bec(Charged(), ion), atol=1e-6)
    with pytest.raises(ValueError, match="charge"):
        model.predict_arrays(ion.positions, ion.numbers, ion.cell.array, ion.pbc,
                             total_charge=np.nan)
    ion.info["charge"] = "plus one"
    with pytest.raises(ValueError, match="not a number"):
        model.predict(ion)


def test_training_on_charged_frames_uses_their_charge(rng):
    frames = training_frames(rng, True)
    for atoms in frames:
        atoms.info["charge"] = 2.0
        atoms.arrays["bec"] = atoms.arrays["bec"] + 2.0 / len(atoms) * np.eye(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the violation relative to Q I is zero: no warning
        model = MonopoleModel(settings=SETTINGS, zeta=2, n_sparse=2).fit(frames)
    assert model.training["asr_violation_max"] < 1e-12
    np.testing.assert_allclose(model.predict(frames[0])["bec"].sum(axis=0), 2.0 * np.eye(3),
                               atol=1e-12)
    for atoms in frames:
        del atoms.info["charge"]
    with pytest.warns(UserWarning, match="give its charge in atoms.info"):
        MonopoleModel(settings=SETTINGS, zeta=2, n_sparse=2).fit(frames)


def test_geometry_errors_in_training_name_the_frame_and_file(rng):
    frames = training_frames(rng, False)
    for k, atoms in enumerate(frames):
        atoms.info["source"] = f"train.xyz@{k}"
    frames[1].positions[1] = frames[1].positions[0]
    with pytest.raises(ValueError, match=r"frame 1 \(train.xyz@1\): atoms 0 and 1 .* overlap"):
        MonopoleModel(settings=SETTINGS, n_sparse=2).fit(frames)
    frames = training_frames(rng, True)
    frames[2].info["source"] = "cell.xyz@2"
    frames[2].set_cell(np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"frame 2 \(cell.xyz@2\): "):
        MonopoleModel(settings=SETTINGS, n_sparse=2).fit(frames)
