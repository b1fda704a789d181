"""Vector (lambda = 1) descriptor: equivariance, derivatives, adjoint."""

from __future__ import annotations

import math

import numpy as np
import pytest

from numbec.descriptors import DescriptorSettings, compute_vector_descriptors
from numbec.descriptors.radial_basis import smeared_radial_integral
from numbec.descriptors.vector import vector_coupling_table

SETTINGS = DescriptorSettings(species=(1, 8), cutoff_radial=4.0, cutoff_angular=3.5, sigma=0.5,
                              n_radial=3, n_angular=3, l_max=3, radial_weight=0.3)
TRICLINIC = np.array([[3.1, 0.2, 0.1], [0.4, 3.3, -0.2], [0.3, 0.1, 2.9]])


def _rotation(seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def _structure(kind, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "cluster":
        return rng.uniform(-1.5, 1.5, size=(5, 3)), np.array([8, 1, 1, 8, 1]), None, False
    if kind == "triclinic":
        return rng.uniform(0, 1, size=(4, 3)) @ TRICLINIC, np.array([1, 8, 1, 8]), TRICLINIC, True
    cell = np.array([[2.2, 0.0, 0.0], [0.7, 2.0, 0.0], [0.2, -0.3, 2.1]])
    return rng.uniform(0, 1, size=(2, 3)) @ cell, np.array([8, 1]), cell, True


def _total_jacobian(desc):
    n, _, dv = desc.values.shape
    jac = np.zeros((n, n, 3, 3, dv))  # [i, j, a, b, k]
    for p, (i, j) in enumerate(zip(desc.pairs.centers, desc.pairs.neighbors, strict=True)):
        jac[i, j] += desc.gradients[p]
        jac[i, i] -= desc.gradients[p]
    return jac


def test_dimension_and_two_body_block_is_the_smeared_neighbour_direction():
    s = SETTINGS
    assert s.n_vector_features == 2 * 3 + 4 * 9 * 3
    assert DescriptorSettings(species=(1, 8)).n_vector_features == 1040
    positions = np.array([[0.0, 0.0, 0.0], [0.5, -1.1, 0.8]])
    desc = compute_vector_descriptors(positions, [1, 8], None, False, s)
    assert desc.values.shape == (2, 3, s.n_vector_features)
    vec = positions[1] - positions[0]
    d = np.linalg.norm(vec)
    h, _ = smeared_radial_integral(np.array([d]), s.cutoff_radial, s.sigma, s.n_radial, 1)
    expected = math.sqrt(s.radial_weight) * np.outer(vec / d, h[0, :, 1]) * math.sqrt(
        3 / (4 * math.pi))
    # atom 0 sees one O: channel J = 1 (species order 1, 8)
    np.testing.assert_allclose(desc.values[0][:, s.n_radial:2 * s.n_radial], expected, rtol=1e-8)
    np.testing.assert_array_equal(desc.values[0][:, :s.n_radial], 0.0)


def test_coupling_table_is_normalised_and_l0_couples_to_cartesian_components():
    start, cart, m, mp, value = vector_coupling_table(3)
    for l in range(3):
        sl = slice(start[l], start[l + 1])
        for a in range(3):
            sel = cart[sl] == a
            assert np.sum(value[sl][sel] ** 2) == pytest.approx(1.0, abs=1e-12)
    # l = 0 times l' = 1: component a picks Y_1 of that Cartesian direction (y, z, x order)
    sl = slice(start[0], start[1])
    assert sorted(zip(cart[sl].tolist(), mp[sl].tolist(), strict=True)) == [(0, 2), (1, 0),
                                                                             (2, 1)]


@pytest.mark.parametrize("kind", ["cluster", "triclinic"])
def test_rotates_as_a_vector_and_is_translation_and_permutation_invariant(kind):
    positions, numbers, cell, pbc = _structure(kind, seed=3)
    ref = compute_vector_descriptors(positions, numbers, cell, pbc, SETTINGS).values
    assert np.abs(ref).max() > 1e-3
    rot = _rotation(5)
    rot_cell = None if cell is None else cell @ rot.T
    rotated = compute_vector_descriptors(positions @ rot.T + [1.0, -2.0, 0.5], numbers, rot_cell,
                                         pbc, SETTINGS).values
    np.testing.assert_allclose(rotated, np.einsum("ab,ibk->iak", rot, ref), atol=1e-12)
    perm = np.argsort(numbers, kind="stable")[::-1]
    permuted = compute_vector_descriptors(positions[perm], numbers[perm], cell, pbc,
                                          SETTINGS).values
    np.testing.assert_allclose(permuted, ref[perm], atol=1e-13)
    if kind == "cluster":
        inverted = compute_vector_descriptors(-positions, numbers, cell, pbc, SETTINGS).values
        np.testing.assert_allclose(inverted, -ref, atol=1e-13)  # polar vector


@pytest.mark.parametrize("kind", ["cluster", "triclinic", "tiny_cell"])
def test_jacobian_matches_central_finite_differences(kind):
    positions, numbers, cell, pbc = _structure(kind, seed=1)
    desc = compute_vector_descriptors(positions, numbers, cell, pbc, SETTINGS, gradients=True)
    analytic = _total_jacobian(desc)
    h = 1e-5
    fd = np.zeros_like(analytic)
    for a in range(len(positions)):
        for b in range(3):
            plus = positions.copy()
            plus[a, b] += h
            minus = positions.copy()
            minus[a, b] -= h
            xp = compute_vector_descriptors(plus, numbers, cell, pbc, SETTINGS).values
            xm = compute_vector_descriptors(minus, numbers, cell, pbc, SETTINGS).values
            fd[:, a, :, b, :] = (xp - xm) / (2 * h)
    scale = np.abs(analytic).max()
    assert scale > 1e-3
    assert np.abs(fd - analytic).max() / scale < 1e-6


def test_vector_contraction_equals_explicit_jacobian_contraction():
    positions, numbers, cell, pbc = _structure("tiny_cell", seed=2)
    desc = compute_vector_descriptors(positions, numbers, cell, pbc, SETTINGS, gradients=True)
    weights = np.random.default_rng(0).normal(size=(len(positions), SETTINGS.n_vector_features))
    expected = np.einsum("ijabk,ik->jab", _total_jacobian(desc), weights)
    np.testing.assert_allclose(desc.vector_contraction(weights), expected, rtol=0,
                               atol=1e-10 * np.abs(expected).max())
    # translation invariance: the derivatives of sum_i mu_i over all atoms cancel
    np.testing.assert_allclose(desc.vector_contraction(weights).sum(axis=0), 0.0,
                               atol=1e-12 * np.abs(expected).max())
    stacked = desc.vector_contraction(np.stack([weights, -3 * weights], axis=1))
    assert stacked.shape == (len(positions), 2, 3, 3)
    np.testing.assert_allclose(stacked[:, 1], -3 * expected, rtol=0,
                               atol=1e-10 * np.abs(expected).max())
    with pytest.raises(ValueError, match="shape"):
        desc.vector_contraction(weights[:, :-1])


def test_l0_products_equal_scalar_times_cartesian_dipole_coefficients():
    """For l = 0 the coupled product is c^J_{n00} c^J'_{n'1a} (a Cartesian), built here from
    direct quadrature of the smeared radial integral, independently of the kernels."""
    s = SETTINGS
    positions, numbers, _, _ = _structure("cluster", seed=6)
    desc = compute_vector_descriptors(positions, numbers, None, False, s)
    n_ang, n2 = s.n_angular, s.n_radial_features
    for i in range(len(positions)):
        c00 = np.zeros((2, n_ang))
        c1 = np.zeros((2, n_ang, 3))  # Cartesian x, y, z
        for j in range(len(positions)):
            vec = positions[j] - positions[i]
            d = np.linalg.norm(vec)
            if j == i or d >= s.cutoff_angular:
                continue
            h, _ = smeared_radial_integral(np.array([d]), s.cutoff_angular, s.sigma, n_ang, 1)
            J = 0 if numbers[j] == 1 else 1
            c00[J] += h[0, :, 0] / math.sqrt(4 * math.pi)
            c1[J] += np.outer(h[0, :, 1], vec / d) * math.sqrt(3 / (4 * math.pi))
        for ja in range(2):
            for jb in range(2):
                for na in range(n_ang):
                    for nb in range(n_ang):
                        k = (((ja * 2 + jb) * n_ang + na) * n_ang + nb) * s.l_max  # l = 0
                        expected = math.sqrt(1 - s.radial_weight) * c00[ja, na] * c1[jb, nb]
                        np.testing.assert_allclose(desc.values[i, :, n2 + k], expected,
                                                   rtol=1e-7, atol=1e-10)
