"""Numba kernel of the forward-mode (tangent) derivative of the expansion coefficients.

Given a direction ``u_p`` (3,) Å per pair p (the rate of change of the pair vector
``d_p = r_j + S - r_i``; for atomic velocities v, ``u_p = v_j - v_i``), the tangent of the
coefficients ``c_{i,Jnlm} = sum_{pairs (i, j image), j in J} h_nl(|d|) Y_lm(d / |d|)`` is

``cdot_{i,Jnlm} = sum_p (h'_nl(|d_p|) (d_p / |d_p|) . u_p) Y_lm + h_nl (dY_lm/dd . u_p)``,

one pass over the pairs per direction, the transpose of
:func:`numbec.descriptors.expansion_numba.pair_backprop`. Array conventions as in
:mod:`numbec.descriptors.expansion_numba`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from numbec.descriptors.expansion_numba import _max_pairs
from numbec.descriptors.pair_block_numba import FASTMATH, centre_block, legendre_tables


@njit(cache=True, parallel=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def expansion_tangents(directions, offsets, groups, ends, vectors, distances, l2_max, rad_cut,
                       rad_inv, rad_values, rad_derivs, n_rad, l_max, ang_cut, ang_inv,
                       ang_values, ang_derivs, n_ang):
    """Tangents of c2 and c3 along T sets of pair directions.

    directions : (P, T, 3) float64, Å (per unit of the tangent parameter), pairs in the
    order of the neighbour list (grouped and sorted as for
    :func:`numbec.descriptors.expansion_numba.expansion_coefficients`).
    Returns ``c2dot`` (T, N, S*n_rad, (l2_max+1)**2) and ``c3dot`` (T, N, S*n_ang,
    (l_max+1)**2), in the units of c2, c3 per unit of the tangent parameter.
    """
    n_atoms = offsets.shape[0] - 1
    n_species = groups.shape[1] - 1
    n_t = directions.shape[1]
    n_lm2 = (l2_max + 1) ** 2
    n_lm3 = (l_max + 1) ** 2
    c2dot = np.empty((n_t, n_atoms, n_species * n_rad, n_lm2))
    c3dot = np.empty((n_t, n_atoms, n_species * n_ang, n_lm3))
    tables = legendre_tables(l_max)
    kmax = _max_pairs(offsets)
    for i in prange(n_atoms):
        p0 = offsets[i]
        k = offsets[i + 1] - p0
        ux, uy, uz, y, dy, h2, dh2, h3, dh3 = centre_block(
            vectors, distances, p0, p0 + k, kmax, l_max, tables, rad_cut, rad_inv,
            rad_values, rad_derivs, ang_cut, ang_inv, ang_values, ang_derivs, True)
        radial_rate = np.empty(kmax)        # (d/|d|) . u_p
        y_rate = np.empty((n_lm3, kmax))    # dY_lm/dd . u_p
        ydr = np.empty((n_lm3, kmax))       # Y_lm (d/|d|) . u_p
        for t in range(n_t):
            for q in range(k):
                p = p0 + q
                radial_rate[q] = (ux[q] * directions[p, t, 0] + uy[q] * directions[p, t, 1]
                                  + uz[q] * directions[p, t, 2])
            for lm in range(n_lm3):
                for q in range(k):
                    p = p0 + q
                    y_rate[lm, q] = (dy[lm, 0, q] * directions[p, t, 0]
                                     + dy[lm, 1, q] * directions[p, t, 1]
                                     + dy[lm, 2, q] * directions[p, t, 2])
                    ydr[lm, q] = y[lm, q] * radial_rate[q]
            for jc in range(n_species):
                g0 = groups[i, jc] - p0
                g1 = ends[i, jc, 0] - p0
                for n in range(n_rad):
                    for l in range(l2_max + 1):
                        col = n * 2 + l
                        for lm in range(l * l, (l + 1) * (l + 1)):
                            acc = 0.0
                            for q in range(g0, g1):
                                acc += dh2[col, q] * ydr[lm, q] + h2[col, q] * y_rate[lm, q]
                            c2dot[t, i, jc * n_rad + n, lm] = acc
                g1 = ends[i, jc, 1] - p0
                for n in range(n_ang):
                    for l in range(l_max + 1):
                        col = n * (l_max + 1) + l
                        for lm in range(l * l, (l + 1) * (l + 1)):
                            acc = 0.0
                            for q in range(g0, g1):
                                acc += dh3[col, q] * ydr[lm, q] + h3[col, q] * y_rate[lm, q]
                            c3dot[t, i, jc * n_ang + n, lm] = acc
    return c2dot, c3dot
