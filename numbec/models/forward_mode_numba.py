"""Numba kernel of the forward-mode design rows (:mod:`numbec.models.forward_mode`): the
dipole-kernel columns of batches of small frames.

The row of dipole column (b, nu) of one frame is ``sum_i [k_ib^(zeta-1) Vdot_i^a +
(zeta-1) k_ib^(zeta-2) kdot_ib V_i^a] . V_b^nu / s**2``, a sum over the few atoms of one
species. Per frame and velocity direction, ``T_b^a = sum_i c_ib X_i^a`` is one matrix product
``(mz, 2 nr) @ (2 nr, 3 Dv)`` and the row a product of each ``T_b^a`` with its own
``V_b^nu``: ``3 mz Dv (2 nr + 3)`` multiply-adds, where contracting every ``V_i^a`` with every
``V_b^nu`` first takes ``9 nr mz Dv`` per direction and once more for V. Done frame by frame
in numpy, T would be a large temporary and the last step thousands of tiny products; here
each frame's T stays in cache and the last step is a loop.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from numbec.descriptors.pair_block_numba import FASTMATH


@njit(cache=True, parallel=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def batched_dipole_columns(pow1, dkdot, values, vdot, sparse_t, out):
    """Dipole-kernel columns of the rows of F frames along G velocity directions.

    pow1 : (F, nr, mz) float64, ``k_ib^(zeta-1)`` of the nr atoms of one species in each
    frame and its mz sparse points; dkdot : (G, F, nr, mz) float64, ``(zeta-1)
    k_ib^(zeta-2) kdot_ib`` along direction g; values : (F, nr, 3 Dv) float64, the vector
    descriptors ``V_i^a`` (a major); vdot : (G, F, nr, 3 Dv) float64, their tangents
    ``Vdot_i^a`` along direction g; sparse_t : (mz, 3, Dv) float64, ``V_b^nu / s`` (nu
    before the descriptor index).
    out : (F, G, 3, mz, 3) float64, written: ``out[f, g, a, b, nu] = sum_i sum_d
    (pow1[f, i, b] vdot[g, f, i, a, d] + dkdot[g, f, i, b] values[f, i, a, d])
    sparse_t[b, nu, d]``.
    """
    n_f, n_r, n_m = pow1.shape
    n_g = dkdot.shape[0]
    n_d = sparse_t.shape[2]
    for fg in prange(n_f * n_g):
        f = fg // n_g
        g = fg - f * n_g
        coef = np.empty((n_m, 2 * n_r))
        stacked = np.empty((2 * n_r, 3 * n_d))
        for i in range(n_r):
            for b in range(n_m):
                coef[b, i] = pow1[f, i, b]
                coef[b, n_r + i] = dkdot[g, f, i, b]
            stacked[i] = vdot[g, f, i]
            stacked[n_r + i] = values[f, i]
        t = np.dot(coef, stacked)                                  # (mz, 3 Dv)
        # the nine (a, nu) sums of a sparse point in one pass over d: six loads per nine
        # multiply-adds, where a pass per a reloads the three V_b^nu (measured 8-17 % faster
        # for 3-8 atoms per species)
        for b in range(n_m):
            s0 = sparse_t[b, 0]
            s1 = sparse_t[b, 1]
            s2 = sparse_t[b, 2]
            t0 = t[b, :n_d]
            t1 = t[b, n_d:2 * n_d]
            t2 = t[b, 2 * n_d:]
            r00 = r01 = r02 = r10 = r11 = r12 = r20 = r21 = r22 = 0.0
            for d in range(n_d):
                x0 = t0[d]
                x1 = t1[d]
                x2 = t2[d]
                y0 = s0[d]
                y1 = s1[d]
                y2 = s2[d]
                r00 += x0 * y0
                r01 += x0 * y1
                r02 += x0 * y2
                r10 += x1 * y0
                r11 += x1 * y1
                r12 += x1 * y2
                r20 += x2 * y0
                r21 += x2 * y1
                r22 += x2 * y2
            out[f, g, 0, b, 0] = r00
            out[f, g, 0, b, 1] = r01
            out[f, g, 0, b, 2] = r02
            out[f, g, 1, b, 0] = r10
            out[f, g, 1, b, 1] = r11
            out[f, g, 1, b, 2] = r12
            out[f, g, 2, b, 0] = r20
            out[f, g, 2, b, 1] = r21
            out[f, g, 2, b, 2] = r22
