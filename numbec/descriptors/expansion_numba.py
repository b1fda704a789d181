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

from numbec.descriptors.radial_basis_numba import hermite_eval, hermite_values
from numbec.descriptors.spherical_harmonics_numba import (
    sph_harm_prefactors,
    sph_harm_unit,
    sph_harm_unit_values,
)

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


@njit(cache=True)
def l_of_lm(l_max):
    """(LM,) int64 angular momentum l of each lm index."""
    out = np.empty((l_max + 1) ** 2, dtype=np.int64)
    for l in range(l_max + 1):
        for lm in range(l * l, (l + 1) * (l + 1)):
            out[lm] = l
    return out


@njit(cache=True, parallel=True)
def expansion_coefficients(offsets, neighbors, vectors, distances, channel, n_species,
                           l2_max, rad_cut, rad_inv, rad_values, rad_derivs, n_rad,
                           l_max, ang_cut, ang_inv, ang_values, ang_derivs, n_ang):
    """Expansion coefficients c2 (N, S*n_rad, (l2_max+1)**2) and c3 (N, S*n_ang, (l_max+1)**2)."""
    n_atoms = offsets.shape[0] - 1
    n_lm2 = (l2_max + 1) ** 2
    n_lm3 = (l_max + 1) ** 2
    c2 = np.empty((n_atoms, n_species * n_rad, n_lm2))
    c3 = np.empty((n_atoms, n_species * n_ang, n_lm3))
    pref = sph_harm_prefactors(l_max)
    lm_l = l_of_lm(l_max)
    for i in prange(n_atoms):
        q = np.empty((l_max + 1, l_max + 2))
        cm = np.empty(l_max + 1)
        sm = np.empty(l_max + 1)
        y = np.empty(n_lm3)
        h2 = np.empty(rad_values.shape[1])
        h3 = np.empty(ang_values.shape[1])
        # accumulate in a private block (keeps the sums in cache, no aliasing with outputs)
        acc2 = np.zeros((n_species * n_rad, n_lm2))
        acc3 = np.zeros((n_species * n_ang, n_lm3))
        for p in range(offsets[i], offsets[i + 1]):
            d = distances[p]
            in_rad = d < rad_cut
            in_ang = d < ang_cut
            sph_harm_unit_values(vectors[p, 0] / d, vectors[p, 1] / d, vectors[p, 2] / d, l_max,
                                 pref, q, cm, sm, y)
            if in_rad:
                hermite_values(d, rad_inv, rad_values, rad_derivs, h2)
            if in_ang:
                hermite_values(d, ang_inv, ang_values, ang_derivs, h3)
            jc = channel[neighbors[p]]
            if in_rad:
                for n in range(n_rad):
                    row = jc * n_rad + n
                    for lm in range(n_lm2):
                        acc2[row, lm] += h2[n * 2 + lm_l[lm]] * y[lm]
            if in_ang:
                for n in range(n_ang):
                    row = jc * n_ang + n
                    base = n * (l_max + 1)
                    for lm in range(n_lm3):
                        acc3[row, lm] += h3[base + lm_l[lm]] * y[lm]
        c2[i] = acc2
        c3[i] = acc3
    return c2, c3


@njit(cache=True, parallel=True)
def pair_backprop(a2, a3, offsets, neighbors, vectors, distances, channel, rad_cut, rad_inv,
                  rad_values, rad_derivs, n_rad, l_max, ang_cut, ang_inv, ang_values,
                  ang_derivs, n_ang):
    """Per-pair gradients g[p, c, b] = sum_{Jnlm} A[i, c, Jnlm] dc_{ij,Jnlm}/dr_{j,b}.

    a2 : (N, C, S*n_rad, LM2) adjoint of c2; a3 : (N, C, S*n_ang, LM3) adjoint of c3.
    Returns g (P, C, 3), 1/Å times the units of A*c: the derivative of the contracted
    quantity of centre i with respect to the position of the neighbour image of pair p.

    With dc_nlm/dd = h'_nl u Y_lm + h_nl dY_lm/dd:
    g = u sum_lm Y_lm (sum_n A_nlm h'_nl) + sum_lm dY_lm/dd (sum_n A_nlm h_nl).
    """
    n_atoms = offsets.shape[0] - 1
    n_ch = a2.shape[1]
    n_lm2 = a2.shape[3]
    n_lm3 = (l_max + 1) ** 2
    g = np.zeros((neighbors.shape[0], n_ch, 3))
    pref = sph_harm_prefactors(l_max)
    lm_l = l_of_lm(l_max)
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
        s_h = np.empty(n_lm3)
        s_dh = np.empty(n_lm3)
        # radial functions spread over lm once per pair, shared by all channels
        h2lm = np.zeros((n_rad, n_lm2))
        dh2lm = np.zeros((n_rad, n_lm2))
        h3lm = np.zeros((n_ang, n_lm3))
        dh3lm = np.zeros((n_ang, n_lm3))
        for p in range(offsets[i], offsets[i + 1]):
            in_rad, in_ang, ux, uy, uz = pair_basis(
                p, vectors, distances, l_max, pref, q, cm, sm, y, dy, rad_cut, rad_inv,
                rad_values, rad_derivs, h2, dh2, ang_cut, ang_inv, ang_values, ang_derivs, h3,
                dh3)
            jc = channel[neighbors[p]]
            if in_rad:
                for n in range(n_rad):
                    for lm in range(n_lm2):
                        h2lm[n, lm] = h2[n * 2 + lm_l[lm]]
                        dh2lm[n, lm] = dh2[n * 2 + lm_l[lm]]
            if in_ang:
                for n in range(n_ang):
                    base = n * (l_max + 1)
                    for lm in range(n_lm3):
                        h3lm[n, lm] = h3[base + lm_l[lm]]
                        dh3lm[n, lm] = dh3[base + lm_l[lm]]
            for c in range(n_ch):
                for lm in range(n_lm3):
                    s_h[lm] = 0.0
                    s_dh[lm] = 0.0
                if in_rad:
                    for n in range(n_rad):
                        row = jc * n_rad + n
                        for lm in range(n_lm2):
                            av = a2[i, c, row, lm]
                            s_h[lm] += av * h2lm[n, lm]
                            s_dh[lm] += av * dh2lm[n, lm]
                if in_ang:
                    for n in range(n_ang):
                        row = jc * n_ang + n
                        for lm in range(n_lm3):
                            av = a3[i, c, row, lm]
                            s_h[lm] += av * h3lm[n, lm]
                            s_dh[lm] += av * dh3lm[n, lm]
                radial = 0.0
                gx = 0.0
                gy = 0.0
                gz = 0.0
                for lm in range(n_lm3):
                    radial += s_dh[lm] * y[lm]
                    gx += s_h[lm] * dy[lm, 0]
                    gy += s_h[lm] * dy[lm, 1]
                    gz += s_h[lm] * dy[lm, 2]
                g[p, c, 0] = gx + radial * ux
                g[p, c, 1] = gy + radial * uy
                g[p, c, 2] = gz + radial * uz
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
    """out[j, c, a, b] = sum_{pairs p = (i, j image)} (r_i - r_j^image)_a g[p, c, b],
    (N, C, 3, 3); r_i - r_j^image = -vectors[p]."""
    n_atoms = offsets.shape[0] - 1
    n_ch = g.shape[1]
    out = np.zeros((n_atoms, n_ch, 3, 3))
    for i in range(n_atoms):
        for p in range(offsets[i], offsets[i + 1]):
            j = neighbors[p]
            for c in range(n_ch):
                for a in range(3):
                    for b in range(3):
                        out[j, c, a, b] -= vectors[p, a] * g[p, c, b]
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
