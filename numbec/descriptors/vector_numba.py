"""Numba kernels of the lambda = 1 (vector) descriptor, its Jacobian and adjoint.

Layout (see :mod:`numbec.descriptors.vector`): ``X[i, a, J * n_rad + n] = w2 c2[i, Jn, lm1(a)]``
(a = x, y, z; lm1 = 3, 1, 2 since Y_1 is ordered (y, z, x)) for the first n2 = S * n_rad
features, then for product feature k
``X[i, a, n2 + k] = w[k] sum_{e in coupling(l)} C_e c3[i, A_k, l*l + m_e]
* c3[i, B_k, (l+1)**2 + m'_e]``
with the sparse real coupling table (cart_e = a, m_e, m'_e as offsets within l and l + 1).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from numbec.descriptors.expansion_numba import CARTESIAN_LM1, pair_coefficient_derivatives
from numbec.descriptors.pair_block_numba import FASTMATH, block_centres, centre_blocks
from numbec.descriptors.spherical_harmonics_numba import sph_harm_prefactors


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _coupled_rows(i, c3, l_max, cg_start, cg_cart, cg_m, cg_mp, cg_val, c3t, w_mat):
    """c3t[lm, r] = c3[i, r, lm] and
    w_mat[l, a, m, r] = sum_{e in l, cart_e = a, m_e = m} C_e c3[i, r, (l+1)**2 + m'_e]."""
    n_rows = c3.shape[1]
    for r in range(n_rows):
        for lm in range(c3.shape[2]):
            c3t[lm, r] = c3[i, r, lm]
    w_mat[:] = 0.0
    for l in range(l_max):
        ob = (l + 1) * (l + 1)
        for e in range(cg_start[l], cg_start[l + 1]):
            a = cg_cart[e]
            m = cg_m[e]
            ib = ob + cg_mp[e]
            val = cg_val[e]
            for r in range(n_rows):
                w_mat[l, a, m, r] += val * c3t[ib, r]


@njit(cache=True, parallel=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def vector_features(c2, c3, w2, dense_index, weight, cg_start, cg_cart, cg_m, cg_mp, cg_val):
    """Vector descriptors (N, 3, n2 + K) from c2 (N, S*n_rad, 4) and c3 (N, S*n_ang, LM3).

    Per centre, ``T[a, l, A, B] = sum_m c3[A, l m] W[l, a, m, B]`` with
    ``W[l, a, m, B] = sum_{m'} C^a_{m m'} c3[B, (l+1) m']`` for all row pairs at once; product
    feature k is ``weight[k] T[a].flat[dense_index[k]]`` (``dense_index[k] = (l_k R + A_k) R
    + B_k``, R = S*n_ang rows, :func:`numbec.descriptors.vector.vector_feature_table`).
    """
    n_atoms = c3.shape[0]
    n_rows = c3.shape[1]
    n_lm3 = c3.shape[2]
    l_max = int(np.sqrt(n_lm3) + 0.5) - 1
    n2 = c2.shape[1]
    n_k = dense_index.shape[0]
    n_pairs = n_rows * n_rows
    out = np.empty((n_atoms, 3, n2 + n_k))
    n_blocks, size = centre_blocks(n_atoms)
    for block in prange(n_blocks):
        c3t = np.empty((n_lm3, n_rows))
        w_mat = np.empty((l_max, 3, 2 * l_max - 1, n_rows))
        t_mat = np.empty((3, l_max * n_pairs))
        first, last = block_centres(block, size, n_atoms)
        for i in range(first, last):
            for r in range(n2):
                for a in range(3):
                    out[i, a, r] = w2 * c2[i, r, CARTESIAN_LM1[a]]
            _coupled_rows(i, c3, l_max, cg_start, cg_cart, cg_m, cg_mp, cg_val, c3t, w_mat)
            for l in range(l_max):
                oa = l * l
                for a in range(3):
                    for ra in range(n_rows):
                        lo = l * n_pairs + ra * n_rows
                        t = t_mat[a, lo:lo + n_rows]
                        cv = c3t[oa, ra]
                        w0 = w_mat[l, a, 0]
                        for rb in range(n_rows):
                            t[rb] = cv * w0[rb]
                        for m in range(1, 2 * l + 1):
                            cv = c3t[oa + m, ra]
                            wm = w_mat[l, a, m]
                            for rb in range(n_rows):
                                t[rb] += cv * wm[rb]
            for a in range(3):
                ta = t_mat[a]
                oa_ = out[i, a, n2:]
                for k in range(n_k):
                    oa_[k] = weight[k] * ta[dense_index[k]]
    return out


@njit(cache=True, parallel=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def vector_adjoint(c2, c3, v, w2, dense_index, weight, cg_start, cg_cart, cg_m, cg_mp,
                   cg_val, a2, a3, c0):
    """Add the adjoints of ``y_{c,a} = sum_k V[i, c, k] X[i, a, k]`` to channel ``c0 + 3c + a``.

    v : (N, C, Dv). a2 : (N, S*n_rad, C_total, 4), a3 : (N, S*n_ang, C_total, LM3) (see
    :func:`numbec.descriptors.scalar_numba.power_spectrum_adjoint`). dense_index, weight:
    as in :func:`vector_features`.
    With ``Vw[l, A, B] = w_k V_k`` (k the feature of rows A, B and l):
    ``dy/dc3[A, l m] = sum_B Vw[l, A, B] W[l, a, m, B]`` and
    ``dy/dc3[B, (l+1) m'] = sum_e C_e Z[l, m_e, B]``, ``Z[l, m, B] = sum_A Vw[l, A, B] c3[A, l m]``.
    """
    n_atoms = c3.shape[0]
    n_rows = c3.shape[1]
    n_lm3 = c3.shape[2]
    l_max = int(np.sqrt(n_lm3) + 0.5) - 1
    n_sets = v.shape[1]
    n2 = c2.shape[1]
    n_k = dense_index.shape[0]
    n_blocks, size = centre_blocks(n_atoms)
    for block in prange(n_blocks):
        c3t = np.empty((n_lm3, n_rows))
        w_mat = np.empty((l_max, 3, 2 * l_max - 1, n_rows))
        vw_flat = np.empty(l_max * n_rows * n_rows)
        vw = vw_flat.reshape((l_max, n_rows, n_rows))
        z_mat = np.empty((2 * l_max - 1, n_rows))
        first, last = block_centres(block, size, n_atoms)
        for i in range(first, last):
            _coupled_rows(i, c3, l_max, cg_start, cg_cart, cg_m, cg_mp, cg_val, c3t, w_mat)
            for c in range(n_sets):
                vc = v[i, c]
                for r in range(n2):
                    for a in range(3):
                        a2[i, r, c0 + 3 * c + a, CARTESIAN_LM1[a]] += w2 * vc[r]
                for k in range(n_k):
                    vw_flat[dense_index[k]] = weight[k] * vc[n2 + k]
                for l in range(l_max):
                    oa = l * l
                    ob = (l + 1) * (l + 1)
                    for a in range(3):
                        ch = c0 + 3 * c + a
                        for ra in range(n_rows):
                            vrow = vw[l, ra]
                            for m in range(2 * l + 1):
                                wm = w_mat[l, a, m]
                                s = 0.0
                                for rb in range(n_rows):
                                    s += vrow[rb] * wm[rb]
                                a3[i, ra, ch, oa + m] += s
                    for m in range(2 * l + 1):
                        zm = z_mat[m]
                        cv = c3t[oa + m, 0]
                        v0 = vw[l, 0]
                        for rb in range(n_rows):
                            zm[rb] = v0[rb] * cv
                        for ra in range(1, n_rows):
                            cv = c3t[oa + m, ra]
                            vr = vw[l, ra]
                            for rb in range(n_rows):
                                zm[rb] += vr[rb] * cv
                    for e in range(cg_start[l], cg_start[l + 1]):
                        ch = c0 + 3 * c + cg_cart[e]
                        m = cg_m[e]
                        ib = ob + cg_mp[e]
                        val = cg_val[e]
                        zm = z_mat[m]
                        for rb in range(n_rows):
                            a3[i, rb, ch, ib] += val * zm[rb]


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def vector_jacobian(c2, c3, offsets, neighbors, vectors, distances, channel, rad_cut, rad_inv,
                    rad_values, rad_derivs, n_rad, l_max, ang_cut, ang_inv, ang_values,
                    ang_derivs, n_ang, w2, row_a, row_b, l_of, weight, cg_start, cg_cart, cg_m,
                    cg_mp, cg_val):
    """Full Jacobian (P, 3, 3, Dv): [p, a, b, k] = dX^a_{i,k}/dr_{j,b}, pair p = (i, j image).

    Per pair, the partial contractions with the centre's coefficients
    ``U[a, b, l, n, r] = sum_e C_e dc_{n, l m_e, b} c3[i, r, (l+1) m'_e]`` and
    ``V[a, b, l, n, r] = sum_e C_e c3[i, r, l m_e] dc_{n, (l+1) m'_e, b}`` are formed first
    (dense loops over all rows r); each product feature then reads at most two entries.
    """
    n_atoms = offsets.shape[0] - 1
    n2 = c2.shape[1]
    n_rows = c3.shape[1]
    n_k = row_a.shape[0]
    n_lm3 = (l_max + 1) ** 2
    jac = np.empty((neighbors.shape[0], 3, 3, n2 + n_k))
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
        dc2 = np.empty((n_rad, 4, 3))
        dc3 = np.empty((n_ang, n_lm3, 3))
        c3t = np.empty((n_lm3, n_rows))
        for r in range(n_rows):
            for lm in range(n_lm3):
                c3t[lm, r] = c3[i, r, lm]
        u_mat = np.empty((3, 3, l_max, n_ang, n_rows))
        v_mat = np.empty((3, 3, l_max, n_ang, n_rows))
        for p in range(offsets[i], offsets[i + 1]):
            pair_coefficient_derivatives(
                p, vectors, distances, l_max, pref, q, cm, sm, y, dy, rad_cut, rad_inv,
                rad_values, rad_derivs, h2, dh2, ang_cut, ang_inv, ang_values, ang_derivs, h3,
                dh3, n_rad, 1, n_ang, dc2, dc3)
            jc = channel[neighbors[p]]
            for a in range(3):
                for b in range(3):
                    for k in range(n2):
                        jac[p, a, b, k] = 0.0
                    for n in range(n_rad):
                        jac[p, a, b, jc * n_rad + n] = w2 * dc2[n, CARTESIAN_LM1[a], b]
            u_mat[:] = 0.0
            v_mat[:] = 0.0
            for l in range(l_max):
                oa = l * l
                ob = (l + 1) * (l + 1)
                for e in range(cg_start[l], cg_start[l + 1]):
                    a = cg_cart[e]
                    ia = oa + cg_m[e]
                    ib = ob + cg_mp[e]
                    val = cg_val[e]
                    for b in range(3):
                        for n in range(n_ang):
                            fu = val * dc3[n, ia, b]
                            fv = val * dc3[n, ib, b]
                            for r in range(n_rows):
                                u_mat[a, b, l, n, r] += fu * c3t[ib, r]
                                v_mat[a, b, l, n, r] += fv * c3t[ia, r]
            lo = jc * n_ang
            hi = lo + n_ang
            for a in range(3):
                for b in range(3):
                    for k in range(n_k):
                        ra = row_a[k]
                        rb = row_b[k]
                        l = l_of[k]
                        s = 0.0
                        if lo <= ra < hi:
                            s += u_mat[a, b, l, ra - lo, rb]
                        if lo <= rb < hi:
                            s += v_mat[a, b, l, rb - lo, ra]
                        jac[p, a, b, n2 + k] = weight[k] * s
    return jac
