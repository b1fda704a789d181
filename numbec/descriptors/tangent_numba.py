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
        # per pair, (lm, t) flattened with t fastest: Y_lm (d/|d|) . u_t and dY_lm/dd . u_t,
        # so that the sums over the pairs below run over contiguous (m, t) blocks
        ydr = np.empty((kmax, n_lm3 * n_t))
        yr = np.empty((kmax, n_lm3 * n_t))
        for q in range(k):
            p = p0 + q
            for t in range(n_t):
                d0 = directions[p, t, 0]
                d1 = directions[p, t, 1]
                d2 = directions[p, t, 2]
                rate = ux[q] * d0 + uy[q] * d1 + uz[q] * d2
                for lm in range(n_lm3):
                    ydr[q, lm * n_t + t] = y[lm, q] * rate
                    yr[q, lm * n_t + t] = dy[lm, 0, q] * d0 + dy[lm, 1, q] * d1 + dy[lm, 2, q] * d2
        acc = np.empty((max(n_rad, n_ang), (2 * l_max + 1) * n_t))
        for jc in range(n_species):
            g0 = groups[i, jc] - p0
            for two_body in (True, False):
                g1 = ends[i, jc, 0 if two_body else 1] - p0
                n_count = n_rad if two_body else n_ang
                l_top = l2_max if two_body else l_max
                for l in range(l_top + 1):
                    # all n at once: each pair's (m, t) block is read once for every n
                    width = (2 * l + 1) * n_t
                    lo = l * l * n_t
                    acc[:n_count, :width] = 0.0
                    for q in range(g0, g1):
                        a = ydr[q, lo:lo + width]
                        b = yr[q, lo:lo + width]
                        for n in range(n_count):
                            if two_body:
                                hv = h2[n * 2 + l, q]
                                dv = dh2[n * 2 + l, q]
                            else:
                                hv = h3[n * (l_max + 1) + l, q]
                                dv = dh3[n * (l_max + 1) + l, q]
                            row = acc[n]
                            for x in range(width):
                                row[x] += dv * a[x] + hv * b[x]
                    for n in range(n_count):
                        for x in range(width):
                            t = x % n_t
                            lm = l * l + x // n_t
                            if two_body:
                                c2dot[t, i, jc * n_rad + n, lm] = acc[n, x]
                            else:
                                c3dot[t, i, jc * n_ang + n, lm] = acc[n, x]
    return c2dot, c3dot
