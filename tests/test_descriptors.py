"""Scalar descriptors: basis functions, analytic derivatives, invariances, adjoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import sph_harm_y, spherical_jn

from numbec.descriptors import DescriptorSettings, compute_descriptors
from numbec.descriptors.radial_basis import bessel_zeros, radial_table, smeared_radial_integral
from numbec.descriptors.radial_basis_numba import hermite_eval, hermite_values
from numbec.descriptors.spherical_harmonics_numba import (
    sph_harm_many,
    sph_harm_prefactors,
    sph_harm_unit_values,
)

SETTINGS = DescriptorSettings(species=(1, 8), cutoff_radial=4.0, cutoff_angular=3.5, sigma=0.5,
                              n_radial=4, n_angular=4, l_max=3, radial_weight=0.3)
TRICLINIC = np.array([[3.1, 0.2, 0.1], [0.4, 3.3, -0.2], [0.3, 0.1, 2.9]])


def _real_ylm_scipy(vectors, l_max):
    """Real harmonics without Condon-Shortley phase from scipy's complex ones."""
    # arctan2 keeps theta accurate next to the poles (arccos(z/r) does not)
    theta = np.arctan2(np.hypot(vectors[:, 0], vectors[:, 1]), vectors[:, 2])
    phi = np.arctan2(vectors[:, 1], vectors[:, 0])
    out = np.empty((len(vectors), (l_max + 1) ** 2))
    for l in range(l_max + 1):
        for m in range(-l, l + 1):
            c = sph_harm_y(l, abs(m), theta, phi) * (-1) ** abs(m)
            val = c.real if m == 0 else math.sqrt(2) * (c.real if m > 0 else c.imag)
            out[:, l * l + l + m] = val
    return out


def _total_jacobian(desc):
    """Dense dX_i/dr_j (N, N, 3, D) from the pair Jacobian, with the implied centre term."""
    n, d = desc.values.shape
    jac = np.zeros((n, n, 3, d))
    centers = desc.pairs.centers
    for p, (i, j) in enumerate(zip(centers, desc.pairs.neighbors, strict=True)):
        jac[i, j] += desc.gradients[p]
        jac[i, i] -= desc.gradients[p]
    return jac


def _finite_difference(positions, numbers, cell, pbc, settings, h=1e-5):
    n = len(positions)
    d = settings.n_features
    fd = np.zeros((n, n, 3, d))
    for a in range(n):
        for b in range(3):
            plus = positions.copy()
            plus[a, b] += h
            minus = positions.copy()
            minus[a, b] -= h
            xp = compute_descriptors(plus, numbers, cell, pbc, settings).values
            xm = compute_descriptors(minus, numbers, cell, pbc, settings).values
            fd[:, a, b] = (xp - xm) / (2 * h)
    return fd


def _rotation(seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


# -------------------------------------------------------------------- basis functions


def test_real_spherical_harmonics_match_scipy_and_their_gradient_matches_fd():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(30, 3)) * 2.0
    values, grads = sph_harm_many(vectors, 5)
    np.testing.assert_allclose(values, _real_ylm_scipy(vectors, 5), atol=1e-13)
    # Y_1 = sqrt(3/4pi) (y, z, x)/r: the convention the vector descriptor relies on
    unit = vectors / np.linalg.norm(vectors, axis=1)[:, None]
    np.testing.assert_allclose(values[:, 1:4], math.sqrt(3 / (4 * math.pi)) * unit[:, [1, 2, 0]],
                               atol=1e-14)
    h = 1e-6
    for b in range(3):
        step = np.zeros(3)
        step[b] = h
        fd = (sph_harm_many(vectors + step, 5)[0] - sph_harm_many(vectors - step, 5)[0]) / (2 * h)
        np.testing.assert_allclose(grads[:, :, b], fd, atol=1e-8)


@pytest.mark.parametrize("l_max", [0, 1, 2, 6])
def test_harmonics_every_l_max_and_poles_values_only_kernel_agrees(l_max):
    """Both kernels vs scipy for small and large l_max, on the poles and axes too; the
    gradient vs central differences of the values."""
    rng = np.random.default_rng(l_max)
    vectors = np.concatenate([rng.normal(size=(12, 3)) * 1.7,
                              [[0, 0, 1.3], [0, 0, -0.8], [2.0, 0, 0], [0, -1.1, 0],
                               [1e-9, 0, 1.0]]])
    values, grads = sph_harm_many(vectors, l_max)
    np.testing.assert_allclose(values, _real_ylm_scipy(vectors, l_max), atol=1e-13)
    pref = sph_harm_prefactors(l_max)
    q = np.empty((l_max + 1, l_max + 2))
    cm = np.empty(l_max + 1)
    sm = np.empty(l_max + 1)
    for v, expected in zip(vectors, values, strict=True):
        u = v / np.linalg.norm(v)
        out = np.full((l_max + 1) ** 2, np.nan)
        sph_harm_unit_values(u[0], u[1], u[2], l_max, pref, q, cm, sm, out)
        np.testing.assert_allclose(out, expected, rtol=1e-14, atol=1e-15)
    h = 1e-6
    for b in range(3):
        step = np.zeros(3)
        step[b] = h
        fd = (sph_harm_many(vectors + step, l_max)[0]
              - sph_harm_many(vectors - step, l_max)[0]) / (2 * h)
        np.testing.assert_allclose(grads[:, :, b], fd, atol=1e-7)


def test_smeared_projection_matches_brute_force_3d_integral():
    """c_nlm of one Gaussian at d equals the 3-D integral of the Gaussian times chi_nl Y_lm."""
    cutoff, sigma = 4.0, 0.5
    zeros = bessel_zeros(3, 4)
    d_vec = np.array([0.6, -0.9, 1.1])
    d = np.linalg.norm(d_vec)
    r, wr = np.polynomial.legendre.leggauss(120)
    r, wr = (r + 1) * cutoff / 2, wr * cutoff / 2
    ct, wt = np.polynomial.legendre.leggauss(40)
    phi = np.arange(48) * 2 * np.pi / 48
    rr, cc, pp = np.meshgrid(r, ct, phi, indexing="ij")
    st = np.sqrt(1 - cc**2)
    points = np.stack([rr * st * np.cos(pp), rr * st * np.sin(pp), rr * cc], -1).reshape(-1, 3)
    weights = (wr[:, None, None] * r[:, None, None] ** 2 * wt[None, :, None]
               * (2 * np.pi / 48) * np.ones_like(rr)).ravel()
    fcut = 0.5 * (np.cos(np.pi * d / cutoff) + 1)
    density = fcut * (2 * np.pi * sigma**2) ** -1.5 * np.exp(
        -((points - d_vec) ** 2).sum(1) / (2 * sigma**2))
    ylm_points = _real_ylm_scipy(points, 3)
    ylm_d = _real_ylm_scipy(d_vec[None], 3)[0]
    h, _ = smeared_radial_integral(np.array([d]), cutoff, sigma, 4, 3)
    radius = np.linalg.norm(points, axis=1)
    for l in range(4):
        for n in range(4):
            norm = math.sqrt(cutoff**3 / 2) * abs(spherical_jn(l + 1, zeros[l, n]))
            chi = spherical_jn(l, zeros[l, n] / cutoff * radius) / norm
            for m in (-l, 0, l):
                brute = np.sum(weights * density * chi * ylm_points[:, l * l + l + m])
                assert h[0, n, l] * ylm_d[l * l + l + m] == pytest.approx(brute, abs=1e-10)


def test_bessel_basis_is_orthonormal_and_vanishes_at_cutoff():
    cutoff = 3.5
    zeros = bessel_zeros(3, 4)
    r, w = np.polynomial.legendre.leggauss(200)
    r, w = (r + 1) * cutoff / 2, w * cutoff / 2
    for l in range(4):
        norm = np.sqrt(cutoff**3 / 2) * np.abs(spherical_jn(l + 1, zeros[l]))
        chi = spherical_jn(l, np.outer(zeros[l] / cutoff, r)) / norm[:, None]
        np.testing.assert_allclose((chi * w * r**2) @ chi.T, np.eye(4), atol=1e-12)
        np.testing.assert_allclose(spherical_jn(l, zeros[l]), 0.0, atol=1e-14)


def test_spline_reproduces_direct_quadrature_between_grid_points():
    table = radial_table(3.5, 0.5, 4, 3)
    d = np.linspace(0.013, 3.49, 97)
    h, dh = smeared_radial_integral(d, 3.5, 0.5, 4, 3)
    out_h = np.empty(16)
    out_dh = np.empty(16)
    for k, dist in enumerate(d):
        hermite_eval(dist, table.inv_spacing, table.values, table.derivatives, out_h, out_dh)
        np.testing.assert_allclose(out_h, h[k].ravel(), atol=1e-9 * np.abs(h).max())
        np.testing.assert_allclose(out_dh, dh[k].ravel(), atol=1e-6 * np.abs(dh).max())


def test_spline_interpolates_the_table_and_its_derivative_is_exact():
    """At grid points (and the cutoff) the spline returns the tabulated h and h'; between them
    out_dh is the derivative of out_h (central differences); the values-only kernel is the
    same interpolant."""
    table = radial_table(3.5, 0.5, 4, 3)
    spacing = 1.0 / table.inv_spacing
    n_grid, n_col = table.values.shape
    out_h, out_dh, out_v = np.empty(n_col), np.empty(n_col), np.empty(n_col)
    for k in (0, 1, 57, n_grid // 2, n_grid - 2, n_grid - 1):
        hermite_eval(k * spacing, table.inv_spacing, table.values, table.derivatives, out_h,
                     out_dh)
        np.testing.assert_allclose(out_h, table.values[k], rtol=1e-12,
                                   atol=1e-14 * np.abs(table.values).max())
        np.testing.assert_allclose(out_dh, table.derivatives[k], rtol=1e-9,
                                   atol=1e-12 * np.abs(table.derivatives).max())
    step = 1e-6 * spacing
    for dist in (0.37 * spacing, 0.2 * 3.5 + 0.61 * spacing, 3.5 - 0.45 * spacing):
        hermite_eval(dist, table.inv_spacing, table.values, table.derivatives, out_h, out_dh)
        hermite_values(dist, table.inv_spacing, table.values, table.derivatives, out_v)
        np.testing.assert_allclose(out_v, out_h, rtol=1e-15, atol=1e-300)
        plus, minus = np.empty(n_col), np.empty(n_col)
        hermite_values(dist + step, table.inv_spacing, table.values, table.derivatives, plus)
        hermite_values(dist - step, table.inv_spacing, table.values, table.derivatives, minus)
        np.testing.assert_allclose(out_dh, (plus - minus) / (2 * step),
                                   atol=1e-6 * np.abs(table.derivatives).max())


# -------------------------------------------------------------------- descriptor values


def test_values_match_independent_power_spectrum():
    """Build c_nlm from direct quadrature and scipy harmonics, then the power spectrum."""
    s = SETTINGS
    rng = np.random.default_rng(4)
    positions = rng.uniform(-1.6, 1.6, size=(5, 3))
    numbers = np.array([8, 1, 1, 8, 1])
    desc = compute_descriptors(positions, numbers, None, False, s)
    assert desc.values.shape == (5, s.n_features)
    for i in range(5):
        c2 = np.zeros((2, s.n_radial))
        c3 = np.zeros((2, s.n_angular, (s.l_max + 1) ** 2))
        for j in range(5):
            if j == i:
                continue
            vec = positions[j] - positions[i]
            d = np.linalg.norm(vec)
            J = 0 if numbers[j] == 1 else 1
            ylm = _real_ylm_scipy(vec[None], s.l_max)[0]
            if d < s.cutoff_radial:
                h2, _ = smeared_radial_integral(np.array([d]), s.cutoff_radial, s.sigma,
                                                s.n_radial, 0)
                c2[J] += h2[0, :, 0] * ylm[0]
            if d < s.cutoff_angular:
                h3, _ = smeared_radial_integral(np.array([d]), s.cutoff_angular, s.sigma,
                                                s.n_angular, s.l_max)
                for l in range(s.l_max + 1):
                    c3[J, :, l * l:(l + 1) ** 2] += np.outer(h3[0, :, l], ylm[l * l:(l + 1) ** 2])
        expected = [math.sqrt(s.radial_weight) * c2.ravel()]
        for ja in range(2):
            for jb in range(ja, 2):
                for na in range(s.n_angular):
                    for nb in range(na if ja == jb else 0, s.n_angular):
                        sym = 1.0 if (ja, na) == (jb, nb) else math.sqrt(2)
                        for l in range(s.l_max + 1):
                            sl = slice(l * l, (l + 1) ** 2)
                            p = math.sqrt(8 * math.pi**2 / (2 * l + 1)) * c3[ja, na, sl] @ c3[
                                jb, nb, sl]
                            expected.append([math.sqrt(1 - s.radial_weight) * sym * p])
        np.testing.assert_allclose(desc.values[i], np.concatenate(expected), rtol=1e-7,
                                   atol=1e-9)


def test_feature_dimension_for_the_documented_default():
    s = DescriptorSettings(species=(1, 8), n_radial=8, n_angular=8, l_max=4)
    assert s.n_features == 696
    assert DescriptorSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="unknown"):
        DescriptorSettings.from_dict({"species": [1], "bogus": 1})


# -------------------------------------------------------------------- derivatives


@pytest.mark.parametrize("case", ["cluster", "triclinic", "tiny_cell_big_cutoff", "slab"])
def test_jacobian_matches_central_finite_differences(case):
    rng = np.random.default_rng(1)
    if case == "cluster":
        positions = rng.uniform(-1.5, 1.5, size=(5, 3))
        numbers = np.array([8, 1, 1, 8, 1])
        cell, pbc = None, False
    elif case == "triclinic":
        positions = rng.uniform(0, 1, size=(4, 3)) @ TRICLINIC
        numbers = np.array([1, 8, 1, 8])
        cell, pbc = TRICLINIC, True
    elif case == "slab":
        positions = rng.uniform(0, 1, size=(4, 3)) @ TRICLINIC
        numbers = np.array([1, 8, 1, 8])
        cell, pbc = TRICLINIC, [True, False, True]
    else:
        cell = np.array([[2.2, 0.0, 0.0], [0.7, 2.0, 0.0], [0.2, -0.3, 2.1]])
        positions = rng.uniform(0, 1, size=(2, 3)) @ cell
        numbers = np.array([8, 1])
        pbc = True
    desc = compute_descriptors(positions, numbers, cell, pbc, SETTINGS, gradients=True)
    if case == "tiny_cell_big_cutoff":
        assert np.sum(desc.pairs.neighbors == desc.pairs.centers) > 10
    analytic = _total_jacobian(desc)
    fd = _finite_difference(positions, numbers, cell, pbc, SETTINGS)
    scale = np.abs(analytic).max()
    assert scale > 1e-3
    assert np.abs(fd - analytic).max() / scale < 1e-6


def test_adjoint_contractions_equal_explicit_jacobian_contractions():
    rng = np.random.default_rng(2)
    cell = np.array([[2.6, 0.0, 0.0], [0.5, 2.4, 0.0], [0.2, -0.3, 2.8]])
    positions = rng.uniform(0, 1, size=(3, 3)) @ cell
    numbers = np.array([8, 1, 1])
    desc = compute_descriptors(positions, numbers, cell, True, SETTINGS, gradients=True)
    n, d = desc.values.shape
    nl = desc.pairs
    centers = nl.centers
    grad_x = rng.normal(size=(n, d))
    expected = np.zeros((n, 3, 3))
    for p in range(nl.n_pairs):
        dq_drj = desc.gradients[p] @ grad_x[centers[p]]
        expected[nl.neighbors[p]] += np.outer(-nl.vectors[p], dq_drj)
    np.testing.assert_allclose(desc.monopole_contraction(grad_x), expected, rtol=0,
                               atol=1e-10 * np.abs(expected).max())
    # several charge models at once: one (N, 3, 3) block per channel
    stacked = desc.monopole_contraction(np.stack([grad_x, 2 * grad_x], axis=1))
    assert stacked.shape == (n, 2, 3, 3)
    np.testing.assert_allclose(stacked[:, 1], 2 * expected, rtol=0,
                               atol=1e-10 * np.abs(expected).max())
    grad_c = rng.normal(size=(n, 3, d))
    expected = np.einsum("ijbk,ick->jcb", _total_jacobian(desc), grad_c)
    np.testing.assert_allclose(desc.scalar_contraction(grad_c), expected, rtol=0,
                               atol=1e-10 * np.abs(expected).max())
    with pytest.raises(ValueError, match="shape"):
        desc.monopole_contraction(grad_x[:, :-1])


# -------------------------------------------------------------------- invariances


def _periodic_structure(seed=5, n=6):
    rng = np.random.default_rng(seed)
    positions = rng.uniform(0, 1, size=(n, 3)) @ TRICLINIC
    numbers = np.array([8, 1, 1, 8, 1, 1])[:n]
    return positions, numbers


def test_rotation_translation_invariance():
    positions, numbers = _periodic_structure()
    ref = compute_descriptors(positions, numbers, TRICLINIC, True, SETTINGS).values
    rot = _rotation(3)
    rotated = compute_descriptors(positions @ rot.T + [0.3, -1.2, 2.0], numbers,
                                  TRICLINIC @ rot.T, True, SETTINGS).values
    np.testing.assert_allclose(rotated, ref, atol=1e-10)
    cluster = compute_descriptors(positions, numbers, None, False, SETTINGS).values
    moved = compute_descriptors(positions @ rot.T + 5.0, numbers, None, False, SETTINGS).values
    np.testing.assert_allclose(moved, cluster, atol=1e-10)
    assert np.abs(cluster - ref).max() > 1e-3  # periodic images do matter


def test_permutation_of_same_species_and_rewrapping():
    positions, numbers = _periodic_structure()
    ref = compute_descriptors(positions, numbers, TRICLINIC, True, SETTINGS).values
    perm = np.array([3, 4, 5, 0, 2, 1])  # swaps O<->O and H<->H
    assert np.all(numbers[perm] == numbers[[3, 4, 5, 0, 2, 1]])
    permuted = compute_descriptors(positions[perm], numbers[perm], TRICLINIC, True,
                                   SETTINGS).values
    np.testing.assert_allclose(permuted, ref[perm], atol=1e-12)
    shifts = np.random.default_rng(0).integers(-3, 4, size=(len(positions), 3))
    rewrapped = compute_descriptors(positions + shifts @ TRICLINIC, numbers, TRICLINIC, True,
                                    SETTINGS).values
    np.testing.assert_allclose(rewrapped, ref, atol=1e-11)


def test_supercell_repeats_the_unit_cell_descriptors():
    positions, numbers = _periodic_structure(seed=8, n=4)
    ref = compute_descriptors(positions, numbers, TRICLINIC, True, SETTINGS).values
    reps = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]])
    big_positions = np.concatenate([positions + r @ TRICLINIC for r in reps])
    big_cell = TRICLINIC * np.array([2, 2, 1])[:, None]
    big = compute_descriptors(big_positions, np.tile(numbers, 4), big_cell, True,
                              SETTINGS).values
    np.testing.assert_allclose(big, np.tile(ref, (4, 1)), atol=1e-11)


def test_values_and_derivatives_vanish_smoothly_at_the_cutoff():
    s = DescriptorSettings(species=(1,), cutoff_radial=3.5, cutoff_angular=3.5, sigma=0.5,
                           n_radial=4, n_angular=4, l_max=3, radial_weight=0.3)
    numbers = np.array([1, 1])

    def pair(d):
        pos = np.array([[0.0, 0.0, 0.0], [d, 0.0, 0.0]])
        desc = compute_descriptors(pos, numbers, None, False, s, gradients=True)
        jac = desc.gradients[0] if desc.pairs.n_pairs else np.zeros((3, s.n_features))
        return desc.values[0], jac

    x_mid, j_mid = pair(1.75)
    for eps in (1e-2, 1e-3):
        x, j = pair(3.5 - eps)
        # f_cut ~ (pi eps / 2R)^2: values and derivatives of order eps^2 and eps
        assert np.abs(x).max() < 10 * eps**2 * np.abs(x_mid).max()
        assert np.abs(j).max() < 10 * eps * np.abs(j_mid).max()
    x_out, j_out = pair(3.5 + 1e-9)
    assert np.all(x_out == 0.0) and np.all(j_out == 0.0)
    # quadratic approach: halving the distance to the cutoff quarters the radial part
    x1, _ = pair(3.5 - 2e-3)
    x2, _ = pair(3.5 - 1e-3)
    ratio = x2[: s.n_radial] / x1[: s.n_radial]
    np.testing.assert_allclose(ratio, 0.25, rtol=1e-2)


def test_unknown_species_names_the_atom():
    with pytest.raises(ValueError, match="atom 1 has species Z=6"):
        compute_descriptors(np.eye(3), np.array([1, 6, 8]), None, False, SETTINGS)


def test_parallel_and_serial_runs_agree_on_a_larger_cell():
    """Above the serial threshold the kernels run in parallel: same numbers as one thread,
    and the adjoint still equals the explicit contraction of the pair Jacobian."""
    import numba

    from numbec.descriptors.neighbors import SERIAL_BELOW

    rng = np.random.default_rng(12)
    cell = np.diag([7.0, 7.5, 8.0]) + rng.normal(scale=0.3, size=(3, 3))
    positions = rng.uniform(0, 1, size=(64, 3)) @ cell
    numbers = rng.choice([1, 8], size=64)
    desc = compute_descriptors(positions, numbers, cell, True, SETTINGS, gradients=True)
    assert desc.pairs.n_pairs >= SERIAL_BELOW["pairs"]
    grad_x = rng.normal(size=desc.values.shape)
    mono = desc.monopole_contraction(grad_x)
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        serial = compute_descriptors(positions, numbers, cell, True, SETTINGS, gradients=True)
        serial_mono = serial.monopole_contraction(grad_x)
    finally:
        numba.set_num_threads(previous)
    np.testing.assert_array_equal(desc.values, serial.values)
    np.testing.assert_array_equal(desc.gradients, serial.gradients)
    np.testing.assert_allclose(mono, serial_mono, rtol=0, atol=1e-12 * np.abs(mono).max())
    nl = desc.pairs
    dq = np.einsum("pbk,pk->pb", desc.gradients, grad_x[nl.centers])
    expected = np.zeros((len(positions), 3, 3))
    np.add.at(expected, nl.neighbors, -nl.vectors[:, :, None] * dq[:, None, :])
    np.testing.assert_allclose(mono, expected, rtol=0, atol=1e-10 * np.abs(expected).max())


@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("which", ["scalar", "vector"])
def test_jacobian_blocks_are_the_jacobian_centre_by_centre(which, periodic):
    """The blocked Jacobians (bounded memory for the training design) are the whole
    Jacobians, bit for bit, cut between centres; a block smaller than one centre's pairs
    holds one centre; an expansion of the other kind is refused."""
    from numbec.descriptors import compute_vector_descriptors
    from numbec.descriptors.expansion import expand
    from numbec.descriptors.scalar import jacobian_blocks as scalar_blocks
    from numbec.descriptors.vector import jacobian_blocks as vector_blocks

    positions, numbers = _periodic_structure(seed=9)
    cell = TRICLINIC if periodic else None
    if which == "scalar":
        desc = compute_descriptors(positions, numbers, cell, periodic, SETTINGS,
                                   gradients=True)
        blocks_of, pair_bytes, other_l2 = scalar_blocks, 3 * SETTINGS.n_features * 8, 1
    else:
        desc = compute_vector_descriptors(positions, numbers, cell, periodic, SETTINGS,
                                          gradients=True)
        blocks_of, pair_bytes, other_l2 = (vector_blocks, 9 * SETTINGS.n_vector_features * 8,
                                           0)
    offsets = desc.pairs.offsets
    limit = 2 * int(np.diff(offsets).max()) + 1  # pairs: two centres fit in a block
    for max_bytes in (1, limit * pair_bytes, 10**12):
        blocks = list(blocks_of(desc.expansion, max_bytes))
        assert {lo for lo, _ in blocks} <= set(offsets.tolist())  # whole centres
        np.testing.assert_array_equal(np.concatenate([jac for _, jac in blocks]),
                                      desc.gradients)
        sizes = [jac.shape[0] for _, jac in blocks]
        if max_bytes == 1:
            assert sizes == [n for n in np.diff(offsets) if n]  # one centre each
        elif max_bytes > 10**9:
            assert len(blocks) == 1
        else:
            assert max(sizes) <= limit and len(blocks) < len(offsets) - 1
    with pytest.raises(ValueError, match="l2_max"):
        next(blocks_of(expand(positions, numbers, cell, periodic, SETTINGS, other_l2)))
