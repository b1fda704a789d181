"""Numba kernels of forward-mode (tangent) derivatives: expansion coefficients, descriptors.

Given a direction ``u_p`` (3,) Å per pair p (the rate of change of the pair vector
``d_p = r_j + S - r_i``; for atomic velocities v, ``u_p = v_j - v_i``), the tangent of the
coefficients ``c_{i,Jnlm} = sum_{pairs (i, j image), j in J} h_nl(|d|) Y_lm(d / |d|)`` is

``cdot_{i,Jnlm} = sum_p (h'_nl(|d_p|) (d_p / |d_p|) . u_p) Y_lm + h_nl (dY_lm/dd . u_p)``,

one pass over the pairs for all directions, the transpose of
:func:`numbec.descriptors.expansion_numba.pair_backprop`
(:func:`expansion_tangents`; :func:`pair_backprop_with_tangents` does both in one pass, the
basis functions of each pair evaluated once). Array conventions as in
:mod:`numbec.descriptors.expansion_numba`.

The descriptors are bilinear forms of the coefficients (plus a linear two-body part), so their
tangents are the bilinear forms with one argument replaced by the tangent,
``Xdot = B(cdot, c) + B(c, cdot)``: :func:`power_spectrum_tangents` and
:func:`vector_feature_tangents` evaluate that directly, with the layouts of
:func:`numbec.descriptors.scalar_numba.power_spectrum` and
:func:`numbec.descriptors.vector_numba.vector_features`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from numbec.descriptors.expansion_numba import (
    CARTESIAN_LM1,
    _centre_basis_with_gradients,
    _max_pairs,
    backprop_centre,
    backprop_work_arrays,
)
from numbec.descriptors.pair_block_numba import (
    FASTMATH,
    block_centres,
    centre_block_arrays,
    centre_blocks,
    legendre_tables,
)
from numbec.descriptors.vector_numba import _coupled_rows


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
    c2dot, c3dot = tangent_arrays(directions, n_atoms, groups, n_rad, n_ang, l2_max, l_max)
    tables = legendre_tables(l_max)
    kmax = _max_pairs(offsets)
    n_blocks, size = centre_blocks(n_atoms)
    for block in prange(n_blocks):
        arrays = centre_block_arrays(kmax, l_max, rad_values.shape[1], ang_values.shape[1],
                                     True)
        work = tangent_work_arrays(kmax, l_max, directions.shape[1])
        first, last = block_centres(block, size, n_atoms)
        for i in range(first, last):
            # spline columns of pairs beyond a cutoff are left unset: the sums stop at ends
            p0, k, ux, uy, uz, y, dy, h2, dh2, h3, dh3 = _centre_basis_with_gradients(
                arrays, i, offsets, vectors, distances, l_max, tables, rad_cut, rad_inv,
                rad_values, rad_derivs, ang_cut, ang_inv, ang_values, ang_derivs)
            tangent_centre(i, p0, k, ux, uy, uz, y, dy, h2, dh2, h3, dh3, directions, groups,
                           ends, n_rad, n_ang, l_max, l2_max, work, c2dot, c3dot)
    return c2dot, c3dot


@njit(cache=True, parallel=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def pair_backprop_with_tangents(a2, a3, directions, offsets, groups, ends, vectors, distances,
                                rad_cut, rad_inv, rad_values, rad_derivs, n_rad, l_max,
                                ang_cut, ang_inv, ang_values, ang_derivs, n_ang):
    """:func:`numbec.descriptors.expansion_numba.pair_backprop` (its arguments, then
    ``directions`` after the adjoints) and :func:`expansion_tangents` along ``directions``
    in one pass over the pairs: the basis functions of every pair (with gradients) are
    evaluated once for both, a tenth to a fifth of the two kernels' time (one thread,
    2026-12-05: 192-atom liquid water, one channel and three directions, 9.7-10.4 ms apart
    and 7.7-8.3 ms together; four channels and four directions 16.4-17.1 and 15.1-15.7 ms;
    72-atom quartz, one channel, three directions, 2.7 and 2.1 ms).
    Returns ``g`` (P, C, 3), ``c2dot``, ``c3dot`` as the two kernels do, bit for bit (the
    same per-centre code). ``l2_max`` is that of the adjoint ``a2``.
    """
    n_atoms = offsets.shape[0] - 1
    l2_max = int(np.sqrt(a2.shape[3]) + 0.5) - 1
    g = np.empty((vectors.shape[0], a2.shape[2], 3))
    c2dot, c3dot = tangent_arrays(directions, n_atoms, groups, n_rad, n_ang, l2_max, l_max)
    tables = legendre_tables(l_max)
    kmax = _max_pairs(offsets)
    n_blocks, size = centre_blocks(n_atoms)
    for block in prange(n_blocks):
        arrays = centre_block_arrays(kmax, l_max, rad_values.shape[1], ang_values.shape[1],
                                     True)
        back_work = backprop_work_arrays(kmax, l_max)
        work = tangent_work_arrays(kmax, l_max, directions.shape[1])
        first, last = block_centres(block, size, n_atoms)
        for i in range(first, last):
            p0, k, ux, uy, uz, y, dy, h2, dh2, h3, dh3 = _centre_basis_with_gradients(
                arrays, i, offsets, vectors, distances, l_max, tables, rad_cut, rad_inv,
                rad_values, rad_derivs, ang_cut, ang_inv, ang_values, ang_derivs)
            backprop_centre(i, p0, k, ux, uy, uz, y, dy, h2, dh2, h3, dh3, a2, a3, groups,
                            ends, n_rad, n_ang, l_max, back_work, g)
            tangent_centre(i, p0, k, ux, uy, uz, y, dy, h2, dh2, h3, dh3, directions, groups,
                           ends, n_rad, n_ang, l_max, l2_max, work, c2dot, c3dot)
    return g, c2dot, c3dot


@njit(cache=True, inline="always", error_model="numpy")
def tangent_arrays(directions, n_atoms, groups, n_rad, n_ang, l2_max, l_max):
    """The outputs ``c2dot`` (T, N, S*n_rad, (l2_max+1)**2) and ``c3dot`` (T, N, S*n_ang,
    (l_max+1)**2) of :func:`expansion_tangents`, unset."""
    n_species = groups.shape[1] - 1
    n_t = directions.shape[1]
    return (np.empty((n_t, n_atoms, n_species * n_rad, (l2_max + 1) ** 2)),
            np.empty((n_t, n_atoms, n_species * n_ang, (l_max + 1) ** 2)))


@njit(cache=True, inline="always", error_model="numpy")
def tangent_work_arrays(kmax, l_max, n_t):
    """Scratch of :func:`tangent_centre` for centres of at most ``kmax`` pairs and T
    directions: ``ydr``, ``yr`` (kmax, LM3 T), per pair and (lm, t) with t fastest,
    ``Y_lm (d/|d|) . u_t`` and ``dY_lm/dd . u_t`` (so that the sums over the pairs run over
    contiguous (m, t) blocks); a pair's directions by component ``d0``, ``d1``, ``d2`` and
    ``rate`` (T,) (its rows are then written with t innermost); the sums of four radial
    functions (4, (2 l_max + 1) T)."""
    n_lm3 = (l_max + 1) ** 2
    return (np.empty((kmax, n_lm3 * n_t)), np.empty((kmax, n_lm3 * n_t)), np.empty(n_t),
            np.empty(n_t), np.empty(n_t), np.empty(n_t),
            np.empty((4, (2 * l_max + 1) * n_t)))


@njit(cache=True, inline="always", fastmath=FASTMATH, error_model="numpy")
def tangent_centre(i, p0, k, ux, uy, uz, y, dy, h2, dh2, h3, dh3, directions, groups, ends,
                   n_rad, n_ang, l_max, l2_max, work, c2dot, c3dot):
    """The tangents of :func:`expansion_tangents` of centre i (k pairs from p0) into
    ``c2dot``, ``c3dot``, from its basis functions (:func:`fill_centre_block`) and the
    scratch ``work`` (:func:`tangent_work_arrays`)."""
    ydr, yr, d0, d1, d2, rate, acc = work
    n_species = groups.shape[1] - 1
    n_t = directions.shape[1]
    n_lm3 = (l_max + 1) ** 2
    n_l2 = h2.shape[0] // n_rad
    for q in range(k):
        p = p0 + q
        for t in range(n_t):
            d0[t] = directions[p, t, 0]
            d1[t] = directions[p, t, 1]
            d2[t] = directions[p, t, 2]
            rate[t] = ux[q] * d0[t] + uy[q] * d1[t] + uz[q] * d2[t]
        for lm in range(n_lm3):
            yv = y[lm, q]
            g0 = dy[lm, 0, q]
            g1 = dy[lm, 1, q]
            g2 = dy[lm, 2, q]
            row_dr = ydr[q, lm * n_t:(lm + 1) * n_t]
            row_r = yr[q, lm * n_t:(lm + 1) * n_t]
            for t in range(n_t):
                row_dr[t] = yv * rate[t]
                row_r[t] = g0 * d0[t] + g1 * d1[t] + g2 * d2[t]
    for jc in range(n_species):
        q0 = groups[i, jc] - p0
        for two_body in (True, False):
            q1 = ends[i, jc, 0 if two_body else 1] - p0
            n_count = n_rad if two_body else n_ang
            l_top = l2_max if two_body else l_max
            step = n_l2 if two_body else l_max + 1
            h = h2 if two_body else h3
            dh = dh2 if two_body else dh3
            for l in range(l_top + 1):
                width = (2 * l + 1) * n_t
                lo = l * l * n_t
                for n0 in range(0, n_count, 4):
                    # four radial functions per pass over the pairs: each pair's
                    # (m, t) block is read once for four n, and the loop overhead
                    # of the short (m, t) rows is paid once for four (one
                    # direction on 192-atom water, one thread: 5.8 -> 4.7 ms;
                    # three: 8.1 -> 6.7 ms). Past the last n the last row is
                    # repeated, and those sums are not stored.
                    nb = min(4, n_count - n0)
                    c0 = n0 * step + l
                    c1 = (n0 + min(1, nb - 1)) * step + l
                    c2 = (n0 + min(2, nb - 1)) * step + l
                    c3 = (n0 + min(3, nb - 1)) * step + l
                    acc[:, :width] = 0.0
                    r0 = acc[0]
                    r1 = acc[1]
                    r2 = acc[2]
                    r3 = acc[3]
                    for q in range(q0, q1):
                        a = ydr[q, lo:lo + width]
                        b = yr[q, lo:lo + width]
                        e0 = dh[c0, q]
                        e1 = dh[c1, q]
                        e2 = dh[c2, q]
                        e3 = dh[c3, q]
                        f0 = h[c0, q]
                        f1 = h[c1, q]
                        f2 = h[c2, q]
                        f3 = h[c3, q]
                        for x in range(width):
                            av = a[x]
                            bv = b[x]
                            r0[x] += e0 * av + f0 * bv
                            r1[x] += e1 * av + f1 * bv
                            r2[x] += e2 * av + f2 * bv
                            r3[x] += e3 * av + f3 * bv
                    # (m, t) unflattened by nested loops: no integer division
                    for j in range(nb):
                        row = acc[j]
                        r = jc * n_count + n0 + j
                        for m in range(2 * l + 1):
                            lm = l * l + m
                            for t in range(n_t):
                                if two_body:
                                    c2dot[t, i, r, lm] = row[m * n_t + t]
                                else:
                                    c3dot[t, i, r, lm] = row[m * n_t + t]


@njit(cache=True, parallel=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def power_spectrum_tangents(c2dot, c3, c3dot, w2, gram_index, gram_swapped, weight):
    """Tangents (T, N, n2 + K) of the scalar descriptors of
    :func:`numbec.descriptors.scalar_numba.power_spectrum` along the coefficient tangents
    c2dot (T, N, S*n_rad, LM2), c3dot (T, N, S*n_ang, LM3) at c3 (N, S*n_ang, LM3).

    Per (tangent, centre) and l, ``H_l[r, s] = sum_m cdot[r, l m] c[s, l m]``; the Gram
    tangent is ``H_l[r, s] + H_l[s, r]`` (one product for both halves of the bilinear form).
    gram_index (K,) int64: ``(l R + r) R + s`` of feature k in the flattened H (R = S*n_ang);
    gram_swapped (K,) int64: ``(l R + s) R + r``, its transpose.
    """
    n_t, n_atoms, n_rows, n_lm3 = c3dot.shape
    l_max = int(np.sqrt(n_lm3) + 0.5) - 1
    n2 = c2dot.shape[2]
    n_k = gram_index.shape[0]
    n_pairs = n_rows * n_rows
    out = np.empty((n_t, n_atoms, n2 + n_k))
    for ti in prange(n_t * n_atoms):
        t = ti // n_atoms
        i = ti - t * n_atoms
        for r in range(n2):
            out[t, i, r] = w2 * c2dot[t, i, r, 0]
        ct = np.empty((n_lm3, n_rows))
        dt = np.empty((n_lm3, n_rows))
        for r in range(n_rows):
            for lm in range(n_lm3):
                ct[lm, r] = c3[i, r, lm]
                dt[lm, r] = c3dot[t, i, r, lm]
        h = np.empty((l_max + 1) * n_pairs)
        for l in range(l_max + 1):
            for ra in range(n_rows):
                lo = l * n_pairs + ra * n_rows
                g = h[lo:lo + n_rows]
                cv = dt[l * l, ra]
                x = ct[l * l]
                for rb in range(n_rows):
                    g[rb] = cv * x[rb]
                for lm in range(l * l + 1, (l + 1) * (l + 1)):
                    cv = dt[lm, ra]
                    x = ct[lm]
                    for rb in range(n_rows):
                        g[rb] += cv * x[rb]
        o = out[t, i, n2:]
        for k in range(n_k):
            o[k] = weight[k] * (h[gram_index[k]] + h[gram_swapped[k]])
    return out


@njit(cache=True, parallel=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def vector_feature_tangents(c2dot, c3, c3dot, w2, dense_index, weight, cg_start, cg_cart, cg_m,
                            cg_mp, cg_val):
    """Tangents (T, N, 3, n2 + K) of the vector descriptors of
    :func:`numbec.descriptors.vector_numba.vector_features` along c2dot (T, N, S*n_rad, 4),
    c3dot (T, N, S*n_ang, LM3) at c3 (N, S*n_ang, LM3):
    ``Tdot[a, l, A, B] = sum_m cdot[A, l m] W[l, a, m, B] + c[A, l m] Wdot[l, a, m, B]``.
    """
    n_t, n_atoms, n_rows, n_lm3 = c3dot.shape
    l_max = int(np.sqrt(n_lm3) + 0.5) - 1
    n2 = c2dot.shape[2]
    n_k = dense_index.shape[0]
    n_pairs = n_rows * n_rows
    out = np.empty((n_t, n_atoms, 3, n2 + n_k))
    n_blocks, size = centre_blocks(n_atoms)
    for block in prange(n_blocks):
        ct = np.empty((n_lm3, n_rows))
        w_mat = np.empty((l_max, 3, 2 * l_max - 1, n_rows))
        dt = np.empty((n_lm3, n_rows))
        wdot = np.empty((l_max, 3, 2 * l_max - 1, n_rows))
        t_mat = np.empty((3, l_max * n_pairs))
        first, last = block_centres(block, size, n_atoms)
        for i in range(first, last):
            # the coupled rows of c, the same for every direction: once per centre
            _coupled_rows(i, c3, l_max, cg_start, cg_cart, cg_m, cg_mp, cg_val, ct, w_mat)
            for t in range(n_t):
                for r in range(n2):
                    for a in range(3):
                        out[t, i, a, r] = w2 * c2dot[t, i, r, CARTESIAN_LM1[a]]
                _coupled_rows(t, c3dot[:, i], l_max, cg_start, cg_cart, cg_m, cg_mp, cg_val, dt,
                              wdot)
                for l in range(l_max):
                    oa = l * l
                    for a in range(3):
                        for ra in range(n_rows):
                            lo = l * n_pairs + ra * n_rows
                            tt = t_mat[a, lo:lo + n_rows]
                            cv = ct[oa, ra]
                            dv = dt[oa, ra]
                            w0 = w_mat[l, a, 0]
                            d0 = wdot[l, a, 0]
                            for rb in range(n_rows):
                                tt[rb] = dv * w0[rb] + cv * d0[rb]
                            for m in range(1, 2 * l + 1):
                                cv = ct[oa + m, ra]
                                dv = dt[oa + m, ra]
                                wm = w_mat[l, a, m]
                                dm = wdot[l, a, m]
                                for rb in range(n_rows):
                                    tt[rb] += dv * wm[rb] + cv * dm[rb]
                for a in range(3):
                    ta = t_mat[a]
                    oa_ = out[t, i, a, n2:]
                    for k in range(n_k):
                        oa_[k] = weight[k] * ta[dense_index[k]]
    return out


@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def pair_directions(offsets, neighbors, vectors, velocities, weighted):
    """(P, T + 3 T, 3) (or (P, T, 3) without ``weighted``) float64 pair directions from
    per-atom velocities (T, N, 3): first ``w[t, j] - w[t, i]``, then
    ``[T + 3 t + a] = -(d_p)_a w[t, j]`` for pair p = (centre i, neighbour image j) with
    pair vector d_p (``vectors`` (P, 3) Å); pairs grouped by centre (``offsets`` (N + 1,))."""
    n_atoms = offsets.shape[0] - 1
    n_t = velocities.shape[0]
    out = np.empty((neighbors.shape[0], n_t * (4 if weighted else 1), 3))
    for i in prange(n_atoms):
        for p in range(offsets[i], offsets[i + 1]):
            j = neighbors[p]
            for t in range(n_t):
                for b in range(3):
                    out[p, t, b] = velocities[t, j, b] - velocities[t, i, b]
                if weighted:
                    for a in range(3):
                        for b in range(3):
                            out[p, n_t + 3 * t + a, b] = -vectors[p, a] * velocities[t, j, b]
    return out
