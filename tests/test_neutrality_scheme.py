"""The periodic neutrality scheme does what docs/method.md#neutrality-and-the-acoustic-sum-rule
says. Two SiO3 fragments far apart in a large periodic box keep the periodic scheme (several
clusters; numbec warns), yet every local term equals that of the same atoms with
``pbc=False``: so the periodic BECs must be the exact molecular BECs with the non-local term
``T[j] = (r_j - R_mean) (x) dQ_raw/dr_j`` replaced by its mean over the atoms, and
``sum_j T[j] = (dQ_raw/d eps)^T``. ``dQ_raw/dr`` and ``dQ_raw/d eps`` come from central finite
differences of the model's raw total kernel charge, independently of the adjoint code that
makes the BECs. (Projecting is not dropping the non-local term: dropping alone would leave
``sum_j Z[j] = -(dQ_raw/d eps)^T``.)
"""

from __future__ import annotations

import numpy as np
import pytest

import numbec
from numbec.io._files import example_file
from numbec.models import kernels


@pytest.fixture(scope="module")
def fragments_and_model():
    frames = numbec.read_bec(example_file("sio2_quartz_subset"), index="0:4")
    model = numbec.MonopoleModel(n_sparse=20).fit(frames)
    atoms = frames[0]
    si = int(np.flatnonzero(atoms.numbers == 14)[0])
    vectors = atoms.get_distances(si, range(len(atoms)), mic=True, vector=True)
    nearest = np.argsort(np.linalg.norm(vectors, axis=1))[:4]  # SiO3 fragment
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    pos = np.concatenate([vectors[nearest] + 20.0, vectors[nearest] @ rotation.T + 40.0])
    return model, pos, np.tile(atoms.numbers[nearest], 2), 60.0 * np.eye(3)


def raw_total_charge(model, positions, numbers, cell):
    """Q_raw = sum_i sum_b w_b K(i, b): the kernel charges before they are shifted."""
    _, _, _, cos, mask = model._environment(positions, numbers, cell, [True] * 3, False, "Q")
    m = model.sparse_unit.shape[0]
    k = np.where(mask, kernels.int_power(cos, model.zeta), 0.0)
    return float((k @ model.weights[:m]).sum())


def test_periodic_bec_is_molecular_bec_with_the_nonlocal_term_replaced_by_its_mean(
        fragments_and_model):
    model, pos, numbers, cell = fragments_and_model
    with pytest.warns(UserWarning, match="separate clusters"):
        periodic = model.predict_arrays(pos, numbers, cell, [True] * 3)["bec"]
    molecule = model.predict_arrays(pos, numbers, cell, [False] * 3)["bec"]

    def charge(p):
        return raw_total_charge(model, p, numbers, cell)

    h = 1e-5
    dq = np.zeros_like(pos)
    for j in range(len(numbers)):
        for b in range(3):
            step = np.zeros_like(pos)
            step[j, b] = h
            dq[j, b] = (charge(pos + step) - charge(pos - step)) / (2 * h)
    nonlocal_term = (pos - pos.mean(axis=0))[:, :, None] * dq[:, None, :]
    # the two schemes differ by a visible amount ...
    assert np.abs(periodic - molecule).max() > 1e-2
    # ... which is exactly T[j] - mean(T) (up to finite-difference noise)
    expected = molecule - (nonlocal_term - nonlocal_term.mean(axis=0))
    np.testing.assert_allclose(periodic, expected, atol=1e-7)
    # sum_j T[j] = (dQ_raw/d eps)^T with r -> (I + eps) r: the projection adds its N-th part
    dq_deps = np.zeros((3, 3))
    for b in range(3):
        for a in range(3):
            strain = np.zeros((3, 3))
            strain[b, a] = h
            dq_deps[b, a] = (charge(pos @ (np.eye(3) + strain).T)
                             - charge(pos @ (np.eye(3) - strain).T)) / (2 * h)
    np.testing.assert_allclose(nonlocal_term.sum(axis=0), dq_deps.T, atol=1e-7)


def test_one_fragment_in_a_periodic_box_is_a_molecule(fragments_and_model):
    """One cluster with no image within the cutoff: the exact molecular formula applies."""
    model, pos, numbers, cell = fragments_and_model
    one = slice(0, 4)
    periodic = model.predict_arrays(pos[one], numbers[one], cell, [True] * 3)["bec"]
    molecule = model.predict_arrays(pos[one], numbers[one], cell, [False] * 3)["bec"]
    np.testing.assert_allclose(periodic, molecule, atol=1e-10)
