"""Numba kernels shared by the scalar and vector descriptors: per-pair basis functions, the
neighbour-density expansion coefficients, the back-propagation of coefficient adjoints through
every pair, and the scatter of pair contributions onto atoms.

Array conventions (all float64 unless stated):

- Neighbour list in CSR form: ``offsets`` (N+1,) int64, ``neighbors`` (P,) int64, ``vectors``
  (P, 3) Å (r_j + image shift - r_i), ``distances`` (P,) Å; ``channel`` (N,) int64 maps each
  atom to its species channel 0..S-1.
- Two-body expansion ``c2`` (N, S * n_rad, LM2): index ``[i, J * n_rad + n, lm]`` with
  ``LM2 = (l2_max + 1)**2`` (l2_max = 0 for the scalar descriptor, 1 for the vector one); radial
  table columns ``n * 2 + l`` (tabulated for l = 0, 1).
- Three-body expansion ``c3`` (N, S * n_ang, LM3): ``[i, J * n_ang + n, l*l + l + m]``,
  ``LM3 = (l_max + 1)**2``; angular table columns ``n * (l_max + 1) + l``.
- ``c_{i,Jnlm} = sum_{pairs (i, j image), j in J, d_ij < R} h_nl(d_ij) Y_lm(d_ij / |d_ij|)``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from numbec.descriptors.radial_basis_numba import hermite_eval
from numbec.descriptors.spherical_harmonics_numba import sph_harm_prefactors, sph_harm_unit

#: lm index (within l = 1, offset 1) of the Cartesian components x, y, z: Y_1 is (y, z, x).
CARTESIAN_LM1 = np.array([3, 1, 2], dtype=np.int64)


@njit(cache=True)
def pair_basis(p, vectors, distances, l_max, pref, q, cm, sm, y, dy, rad_cut, rad_inv,
               rad_values, rad_derivs, h2, dh2, ang_cut, ang_inv, ang_values, ang_derivs, h3,
               dh3):
    """Basis functions of pair ``p``: fills Y_lm (LM3,), dY_lm/dd (LM3, 3) [1/Å], radial
    h2/dh2 and angular h3/dh3 spline values; returns (in_radial, in_angular, ux, uy, uz)."""
    d = distances[p]
    ux = vectors[p, 0] / d
    uy = vectors[p, 1] / d
    uz = vectors[p, 2] / d
    sph_harm_unit(ux, uy, uz, l_max, pref, q, cm, sm, y, dy)
    inv_d = 1.0 / d
    for k in range(dy.shape[0]):
        dy[k, 0] *= inv_d
        dy[k, 1] *= inv_d
        dy[k, 2] *= inv_d
    in_rad = d < rad_cut
    in_ang = d < ang_cut
    if in_rad:
        hermite_eval(d, rad_inv, rad_values, rad_derivs, h2, dh2)
    if in_ang:
        hermite_eval(d, ang_inv, ang_values, ang_derivs, h3, dh3)
    return in_rad, in_ang, ux, uy, uz


@njit(cache=True, parallel=True)
def expansion_coefficients(offsets, neighbors, vectors, distances, channel, n_species,
                           l2_max, rad_cut, rad_inv, rad_values, rad_derivs, n_rad,
                           l_max, ang_cut, ang_inv, ang_values, ang_derivs, n_ang):
    """Expansion coefficients c2 (N, S*n_rad, (l2_max+1)**2) and c3 (N, S*n_ang, (l_max+1)**2)."""
    n_atoms = offsets.shape[0] - 1
    n_lm2 = (l2_max + 1) ** 2
    n_lm3 = (l_max + 1) ** 2
    c2 = np.zeros((n_atoms, n_species * n_rad, n_lm2))
    c3 = np.zeros((n_atoms, n_species * n_ang, n_lm3))
    pref = sph_harm_prefactors(l_max)
    for i in prange(n_atoms):
        q = np.empty((l_max + 1, l_max + 2))
        cm = np.empty(l_max + 1)
        sm = np.empty(l_max + 1)
        y = np.empty(n_lm3)
        dy = np.empty((n_lm3, 3))
        h2 = np.empty(rad_values.shape[1])
        dh2 = np.empty(rad_values.shape[1])
        h3 = np.empty(ang_values.shape[1])
        dh3 = np.empty(ang_values.shape[1])
        for p in range(offsets[i], offsets[i + 1]):
            in_rad, in_ang, ux, uy, uz = pair_basis(
                p, vectors, distances, l_max, pref, q, cm, sm, y, dy, rad_cut, rad_inv,
                rad_values, rad_derivs, h2, dh2, ang_cut, ang_inv, ang_values, ang_derivs, h3,
                dh3)
            jc = channel[neighbors[p]]
            if in_rad:
                for n in range(n_rad):
                    row = jc * n_rad + n
                    for l in range(l2_max + 1):
                        hv = h2[n * 2 + l]
                        for lm in range(l * l, (l + 1) * (l + 1)):
                            c2[i, row, lm] += hv * y[lm]
            if in_ang:
                for n in range(n_ang):
                    row = jc * n_ang + n
                    for l in range(l_max + 1):
                        hv = h3[n * (l_max + 1) + l]
                        for lm in range(l * l, (l + 1) * (l + 1)):
                            c3[i, row, lm] += hv * y[lm]
    return c2, c3


@njit(cache=True, parallel=True)
def pair_backprop(a2, a3, offsets, neighbors, vectors, distances, channel, rad_cut, rad_inv,
                  rad_values, rad_derivs, n_rad, l_max, ang_cut, ang_inv, ang_values,
                  ang_derivs, n_ang):
    """Per-pair gradients g[p, c, b] = sum_{Jnlm} A[i, c, Jnlm] dc_{ij,Jnlm}/dr_{j,b}.

    a2 : (N, C, S*n_rad, LM2) adjoint of c2; a3 : (N, C, S*n_ang, LM3) adjoint of c3.
    Returns g (P, C, 3), 1/Å times the units of A*c: the derivative of the contracted
    quantity of centre i with respect to the position of the neighbour image of pair p.
    """
    n_atoms = offsets.shape[0] - 1
    n_ch = a2.shape[1]
    n_lm2 = a2.shape[3]
    n_lm3 = (l_max + 1) ** 2
    l2_max = 0 if n_lm2 == 1 else 1
    g = np.zeros((neighbors.shape[0], n_ch, 3))
    pref = sph_harm_prefactors(l_max)
    for i in prange(n_atoms):
        q = np.empty((l_max + 1, l_max + 2))
        cm = np.empty(l_max + 1)
        sm = np.empty(l_max + 1)
        y = np.empty(n_lm3)
        dy = np.empty((n_lm3, 3))
        h2 = np.empty(rad_values.shape[1])
        dh2 = np.empty(rad_values.shape[1])
        h3 = np.empty(ang_values.shape[1])
        dh3 = np.empty(ang_values.shape[1])
        for p in range(offsets[i], offsets[i + 1]):
            in_rad, in_ang, ux, uy, uz = pair_basis(
                p, vectors, distances, l_max, pref, q, cm, sm, y, dy, rad_cut, rad_inv,
                rad_values, rad_derivs, h2, dh2, ang_cut, ang_inv, ang_values, ang_derivs, h3,
                dh3)
            jc = channel[neighbors[p]]
            for c in range(n_ch):
                # accumulate sum_nl [dh_nl u S0_nl + h_nl S_nl], S0 = sum_m A Y, S = sum_m A dY
                gx = 0.0
                gy = 0.0
                gz = 0.0
                if in_rad:
                    for n in range(n_rad):
                        row = jc * n_rad + n
                        for l in range(l2_max + 1):
                            s0 = 0.0
                            sx = 0.0
                            sy = 0.0
                            sz = 0.0
                            for lm in range(l * l, (l + 1) * (l + 1)):
                                av = a2[i, c, row, lm]
                                s0 += av * y[lm]
                                sx += av * dy[lm, 0]
                                sy += av * dy[lm, 1]
                                sz += av * dy[lm, 2]
                            hv = h2[n * 2 + l]
                            dhv = dh2[n * 2 + l] * s0
                            gx += dhv * ux + hv * sx
                            gy += dhv * uy + hv * sy
                            gz += dhv * uz + hv * sz
                if in_ang:
                    for n in range(n_ang):
                        row = jc * n_ang + n
                        for l in range(l_max + 1):
                            s0 = 0.0
                            sx = 0.0
                            sy = 0.0
                            sz = 0.0
                            for lm in range(l * l, (l + 1) * (l + 1)):
                                av = a3[i, c, row, lm]
                                s0 += av * y[lm]
                                sx += av * dy[lm, 0]
                                sy += av * dy[lm, 1]
                                sz += av * dy[lm, 2]
                            col = n * (l_max + 1) + l
                            hv = h3[col]
                            dhv = dh3[col] * s0
                            gx += dhv * ux + hv * sx
                            gy += dhv * uy + hv * sy
                            gz += dhv * uz + hv * sz
                g[p, c, 0] = gx
                g[p, c, 1] = gy
                g[p, c, 2] = gz
    return g


@njit(cache=True)
def pair_coefficient_derivatives(p, vectors, distances, l_max, pref, q, cm, sm, y, dy, rad_cut,
                                 rad_inv, rad_values, rad_derivs, h2, dh2, ang_cut, ang_inv,
                                 ang_values, ang_derivs, h3, dh3, n_rad, l2_max, n_ang, dc2,
                                 dc3):
    """dc_{ij,nlm}/dr_j of pair p into dc2 (n_rad, LM2, 3) and dc3 (n_ang, LM3, 3), 1/Å;
    zero where the pair is beyond the respective cutoff."""
    in_rad, in_ang, ux, uy, uz = pair_basis(
        p, vectors, distances, l_max, pref, q, cm, sm, y, dy, rad_cut, rad_inv, rad_values,
        rad_derivs, h2, dh2, ang_cut, ang_inv, ang_values, ang_derivs, h3, dh3)
    for n in range(n_rad):
        for l in range(l2_max + 1):
            hv = h2[n * 2 + l]
            dhv = dh2[n * 2 + l]
            for lm in range(l * l, (l + 1) * (l + 1)):
                if in_rad:
                    dc2[n, lm, 0] = dhv * ux * y[lm] + hv * dy[lm, 0]
                    dc2[n, lm, 1] = dhv * uy * y[lm] + hv * dy[lm, 1]
                    dc2[n, lm, 2] = dhv * uz * y[lm] + hv * dy[lm, 2]
                else:
                    dc2[n, lm, 0] = 0.0
                    dc2[n, lm, 1] = 0.0
                    dc2[n, lm, 2] = 0.0
    for n in range(n_ang):
        for l in range(l_max + 1):
            col = n * (l_max + 1) + l
            hv = h3[col]
            dhv = dh3[col]
            for lm in range(l * l, (l + 1) * (l + 1)):
                if in_ang:
                    dc3[n, lm, 0] = dhv * ux * y[lm] + hv * dy[lm, 0]
                    dc3[n, lm, 1] = dhv * uy * y[lm] + hv * dy[lm, 1]
                    dc3[n, lm, 2] = dhv * uz * y[lm] + hv * dy[lm, 2]
                else:
                    dc3[n, lm, 0] = 0.0
                    dc3[n, lm, 1] = 0.0
                    dc3[n, lm, 2] = 0.0


@njit(cache=True)
def scatter_monopole(g, offsets, neighbors, vectors):
    """out[j, a, b] = sum_{pairs p = (i, j image)} (r_i - r_j^image)_a g[p, 0, b], (N, 3, 3)."""
    n_atoms = offsets.shape[0] - 1
    out = np.zeros((n_atoms, 3, 3))
    for i in range(n_atoms):
        for p in range(offsets[i], offsets[i + 1]):
            j = neighbors[p]
            for a in range(3):
                for b in range(3):
                    out[j, a, b] -= vectors[p, a] * g[p, 0, b]
    return out


@njit(cache=True)
def scatter_with_self(g, offsets, neighbors):
    """out[j, c, b] = sum_{pairs p with neighbour j} g[p, c, b] - sum_{pairs p of centre j}
    g[p, c, b]: the total derivative including the implied centre term, (N, C, 3)."""
    n_atoms = offsets.shape[0] - 1
    n_ch = g.shape[1]
    out = np.zeros((n_atoms, n_ch, 3))
    for i in range(n_atoms):
        for p in range(offsets[i], offsets[i + 1]):
            j = neighbors[p]
            for c in range(n_ch):
                for b in range(3):
                    out[j, c, b] += g[p, c, b]
                    out[i, c, b] -= g[p, c, b]
    return out
