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
        for b in range(n_m):
            s0 = sparse_t[b, 0]
            s1 = sparse_t[b, 1]
            s2 = sparse_t[b, 2]
            for a in range(3):
                ta = t[b, a * n_d:(a + 1) * n_d]
                r0 = 0.0
                r1 = 0.0
                r2 = 0.0
                for d in range(n_d):
                    r0 += ta[d] * s0[d]
                    r1 += ta[d] * s1[d]
                    r2 += ta[d] * s2[d]
                out[f, g, a, b, 0] = r0
                out[f, g, a, b, 1] = r1
                out[f, g, a, b, 2] = r2
