"""Numba kernels of the scalar descriptor: radial part, angular power spectrum, their full
Jacobian and the adjoint (vector-Jacobian) push-back to the expansion coefficients.

Feature layout (see :mod:`numbec.descriptors.scalar`): ``X[i, J * n_rad + n] = w2 c2[i, Jn, 0]``
for the first ``n2 = S * n_rad`` features, then for angular feature k
``X[i, n2 + k] = w[k] sum_m c3[i, a[k], l*l + l + m] c3[i, b[k], l*l + l + m]`` with
``l = l_of[k]``, rows ``a[k] = J n``, ``b[k] = J' n'`` of c3 and the weight w[k] (power-spectrum
prefactor, symmetry factor and sqrt(1 - beta)).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from numbec.descriptors.expansion_numba import l_of_lm, pair_coefficient_derivatives
from numbec.descriptors.pair_block_numba import FASTMATH, block_centres, centre_blocks
from numbec.descriptors.spherical_harmonics_numba import sph_harm_prefactors


@njit(cache=True, parallel=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def power_spectrum(c2, c3, w2, gram_index, weight):
    """Scalar descriptors X (N, n2 + K) from c2 (N, S*n_rad, LM2) and c3 (N, S*n_ang, LM3).

    Per centre and l, the Gram matrix ``G_l[r, s] = sum_m c3[r, l m] c3[s, l m]`` of all row
    pairs (vectorised over s), from which angular feature k is ``weight[k] G.flat[gram_index[k]]``
    with ``gram_index[k] = (l_k R + a_k) R + b_k`` (R = S*n_ang rows,
    :func:`numbec.descriptors.scalar.angular_feature_table`). Computing both triangles costs
    twice the multiplications of the feature list, but in loops that vectorise.
    """
    n_atoms = c3.shape[0]
    n_rows = c3.shape[1]
    n_lm3 = c3.shape[2]
    l_max = int(np.sqrt(n_lm3) + 0.5) - 1
    n2 = c2.shape[1]
    n_k = gram_index.shape[0]
    out = np.empty((n_atoms, n2 + n_k))
    n_blocks, size = centre_blocks(n_atoms)
    for block in prange(n_blocks):
        c3t = np.empty((n_lm3, n_rows))
        gram = np.empty((l_max + 1) * n_rows * n_rows)
        first, last = block_centres(block, size, n_atoms)
        for i in range(first, last):
            for r in range(n2):
                out[i, r] = w2 * c2[i, r, 0]
            for r in range(n_rows):
                for lm in range(n_lm3):
                    c3t[lm, r] = c3[i, r, lm]
            for l in range(l_max + 1):
                for ra in range(n_rows):
                    lo = (l * n_rows + ra) * n_rows
                    g = gram[lo:lo + n_rows]
                    cv = c3t[l * l, ra]
                    x = c3t[l * l]
                    for rb in range(n_rows):
                        g[rb] = cv * x[rb]
                    for lm in range(l * l + 1, (l + 1) * (l + 1)):
                        cv = c3t[lm, ra]
                        x = c3t[lm]
                        for rb in range(n_rows):
                            g[rb] += cv * x[rb]
            o = out[i, n2:]
            for k in range(n_k):
                o[k] = weight[k] * gram[gram_index[k]]
    return out


@njit(cache=True, parallel=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def power_spectrum_adjoint(c2, c3, grad_x, w2, dense_index, dense_weight, a2, a3, c0):
    """Add the adjoints sum_k G_k dX_k/dc2 and sum_k G_k dX_k/dc3 of every centre and channel.

    grad_x : (N, C, D) G[i, c, k] = dy_{i,c}/dX_{i,k}.
    dense_index, dense_weight : ((l_max+1) * R * R,) int64 / float64, for every (l, r, s)
        (R = S*n_ang rows of c3, flattened in that order) the angular feature k with
        rows {r, s} and that l, and its weight ``w_k`` (``2 w_k`` on the diagonal r = s)
        (:func:`numbec.descriptors.scalar.dense_feature_map`).
    a2 : (N, S*n_rad, C_total, LM2), a3 : (N, S*n_ang, C_total, LM3) (the layout of
    :func:`numbec.descriptors.expansion_numba.pair_backprop`); channel c of G
    is added to channel ``c0 + c``, so several contractions can share one back-propagation.

    Per centre, channel and l the angular part is a product with the symmetric matrix
    ``M_l[r, s] = sum_{k: l_k = l} G_k w_k (d_{r a_k} d_{s b_k} + d_{r b_k} d_{s a_k})``:
    ``dy/dc3[r, lm] = sum_s M_l[r, s] c3[s, lm]``; M is gathered from G through the dense map
    (a scatter from the feature list was three quarters of the time).
    """
    n_atoms = c3.shape[0]
    n_rows = c3.shape[1]
    n_lm3 = c3.shape[2]
    l_max = int(np.sqrt(n_lm3) + 0.5) - 1
    n_ch = grad_x.shape[1]
    n2 = c2.shape[1]
    n_dense = dense_index.shape[0]
    n_blocks, size = centre_blocks(n_atoms)
    for block in prange(n_blocks):
        c3t = np.empty((n_lm3, n_rows))
        mat = np.empty((l_max + 1, n_rows, n_rows))
        flat = mat.reshape(n_dense)
        first, last = block_centres(block, size, n_atoms)
        for i in range(first, last):
            for r in range(n_rows):
                for lm in range(n_lm3):
                    c3t[lm, r] = c3[i, r, lm]
            for c in range(n_ch):
                ch = c0 + c
                for r in range(n2):
                    a2[i, r, ch, 0] += w2 * grad_x[i, c, r]
                g = grad_x[i, c, n2:]
                for e in range(n_dense):
                    flat[e] = g[dense_index[e]] * dense_weight[e]
                for l in range(l_max + 1):
                    ml = mat[l]
                    for lm in range(l * l, (l + 1) * (l + 1)):
                        cl = c3t[lm]
                        for r in range(n_rows):
                            mr = ml[r]
                            acc = 0.0
                            for t in range(n_rows):
                                acc += mr[t] * cl[t]
                            a3[i, r, ch, lm] += acc


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def scalar_jacobian(c2, c3, offsets, neighbors, vectors, distances, channel, rad_cut, rad_inv,
                    rad_values, rad_derivs, n_rad, l_max, ang_cut, ang_inv, ang_values,
                    ang_derivs, n_ang, w2, row_a, row_b, l_of, weight):
    """Full Jacobian (P, 3, D): [p, b, k] = dX_{i,k}/dr_{j,b} for pair p = (i, j image), 1/Å
    times descriptor units (the centre derivative is minus the sum over the pairs of i).

    Per pair the contractions ``M[b, l, n, r] = sum_m dc_{nlm,b} c3[i, r, lm]`` (r over all
    rows J' n') are formed first as small dense products; each angular feature then needs
    at most two entries of M.
    """
    n_atoms = offsets.shape[0] - 1
    n2 = c2.shape[1]
    n_rows = c3.shape[1]
    n_k = row_a.shape[0]
    n_lm3 = (l_max + 1) ** 2
    n_pairs = neighbors.shape[0]
    jac = np.empty((n_pairs, 3, n2 + n_k))
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
        dc2 = np.empty((n_rad, 1, 3))
        dc3 = np.empty((n_ang, n_lm3, 3))
        c3t = np.empty((n_lm3, n_rows))  # c3 of this centre, rows contiguous
        for r in range(n_rows):
            for lm in range(n_lm3):
                c3t[lm, r] = c3[i, r, lm]
        mat = np.empty((3, l_max + 1, n_ang, n_rows))
        for p in range(offsets[i], offsets[i + 1]):
            pair_coefficient_derivatives(
                p, vectors, distances, l_max, pref, q, cm, sm, y, dy, rad_cut, rad_inv,
                rad_values, rad_derivs, h2, dh2, ang_cut, ang_inv, ang_values, ang_derivs, h3,
                dh3, n_rad, 0, n_ang, dc2, dc3)
            jc = channel[neighbors[p]]
            for k in range(n2):
                jac[p, 0, k] = 0.0
                jac[p, 1, k] = 0.0
                jac[p, 2, k] = 0.0
            for n in range(n_rad):
                for b in range(3):
                    jac[p, b, jc * n_rad + n] = w2 * dc2[n, 0, b]
            mat[:] = 0.0
            for b in range(3):
                for n in range(n_ang):
                    for lm in range(n_lm3):
                        dv = dc3[n, lm, b]
                        l = lm_l[lm]
                        for r in range(n_rows):
                            mat[b, l, n, r] += dv * c3t[lm, r]
            lo = jc * n_ang
            hi = lo + n_ang
            for k in range(n_k):
                a = row_a[k]
                bb = row_b[k]
                l = l_of[k]
                sx = 0.0
                sy = 0.0
                sz = 0.0
                if lo <= a < hi:
                    sx += mat[0, l, a - lo, bb]
                    sy += mat[1, l, a - lo, bb]
                    sz += mat[2, l, a - lo, bb]
                if lo <= bb < hi:
                    sx += mat[0, l, bb - lo, a]
                    sy += mat[1, l, bb - lo, a]
                    sz += mat[2, l, bb - lo, a]
                w = weight[k]
                jac[p, 0, n2 + k] = w * sx
                jac[p, 1, n2 + k] = w * sy
                jac[p, 2, n2 + k] = w * sz
    return jac
