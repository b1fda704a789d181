"""Numba kernels shared by the scalar and vector descriptors: per-pair basis functions, the
neighbour-density expansion coefficients, the back-propagation of coefficient adjoints through
every pair, and the scatter of pair contributions onto atoms.

Array conventions (all float64 unless stated):

- Neighbour list in CSR form: ``offsets`` (N+1,) int64, ``neighbors`` (P,) int64, ``vectors``
  (P, 3) Å (r_j + image shift - r_i), ``distances`` (P,) Å; ``channel`` (N,) int64 maps each
  atom to its species channel 0..S-1. The prediction kernels (``expansion_coefficients``,
  ``pair_backprop``) need the pairs of each centre grouped by neighbour channel, those within each
  cutoff first, described by ``groups`` (N, S+1) and ``ends`` (N, S, 2)
  (:func:`group_pairs_by_species`); the Jacobian kernels take any order.
- Two-body expansion ``c2`` (N, S * n_rad, LM2): index ``[i, J * n_rad + n, lm]`` with
  ``LM2 = (l2_max + 1)**2`` (l2_max = 0 for the scalar descriptor, 1 for the vector one); radial
  table columns ``n * 2 + l`` (tabulated for l = 0, 1) in the Jacobian kernels, ``n * L + l``
  with L = columns / n_rad in the prediction kernels (the table may hold l = 0 only,
  :meth:`numbec.descriptors.radial_basis.RadialTable.up_to`).
- Three-body expansion ``c3`` (N, S * n_ang, LM3): ``[i, J * n_ang + n, l*l + l + m]``,
  ``LM3 = (l_max + 1)**2``; angular table columns ``n * (l_max + 1) + l``.
- ``c_{i,Jnlm} = sum_{pairs (i, j image), j in J, d_ij < R} h_nl(d_ij) Y_lm(d_ij / |d_ij|)``.
- Coefficient adjoints ``a2`` (N, S * n_rad, C, LM2) and ``a3`` (N, S * n_ang, C, LM3): C
  channels (independent contracted quantities), index ``[i, J * n_rad + n, c, lm]`` (a3 with
  n_ang).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from numbec.descriptors.pair_block_numba import (
    FASTMATH,
    block_centres,
    centre_block_arrays,
    centre_blocks,
    fill_centre_block,
    legendre_tables,
)
from numbec.descriptors.radial_basis_numba import hermite_eval
from numbec.descriptors.spherical_harmonics_numba import sph_harm_unit

#: lm index (within l = 1, offset 1) of the Cartesian components x, y, z: Y_1 is (y, z, x).
CARTESIAN_LM1 = np.array([3, 1, 2], dtype=np.int64)


@njit(cache=True, error_model="numpy")
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


@njit(cache=True, error_model="numpy")
def l_of_lm(l_max):
    """(LM,) int64 angular momentum l of each lm index."""
    out = np.empty((l_max + 1) ** 2, dtype=np.int64)
    for l in range(l_max + 1):
        for lm in range(l * l, (l + 1) * (l + 1)):
            out[lm] = l
    return out


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _dot(a, b):
    """sum_q a[q] b[q] (1-D views of equal length)."""
    acc = 0.0
    for q in range(a.shape[0]):
        acc += a[q] * b[q]
    return acc


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _axpy2(alpha, x1, x2, y1, y2):
    """y1 += alpha x1 and y2 += alpha x2 (1-D views of equal length)."""
    for q in range(x1.shape[0]):
        y1[q] += alpha * x1[q]
        y2[q] += alpha * x2[q]


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _axpy2x4(a0, a1, a2, a3, h, dh, col, step, q0, q1, s, ds):
    """s[q] += sum_t a_t h[col + t step, q] and ds[q] the same with dh, t = 0..3,
    q0 <= q < q1: four radial functions of one lm at once."""
    h0 = h[col]
    h1 = h[col + step]
    h2 = h[col + 2 * step]
    h3 = h[col + 3 * step]
    d0 = dh[col]
    d1 = dh[col + step]
    d2 = dh[col + 2 * step]
    d3 = dh[col + 3 * step]
    for q in range(q0, q1):
        s[q] += a0 * h0[q] + a1 * h1[q] + a2 * h2[q] + a3 * h3[q]
        ds[q] += a0 * d0[q] + a1 * d1[q] + a2 * d2[q] + a3 * d3[q]


@njit(cache=True, parallel=True, nogil=True)
def group_pairs_by_species(offsets, neighbors, shifts, vectors, distances, order, channel,
                           n_species, rad_cut, ang_cut):
    """The pairs renumbered by an atom order and grouped by centre, then neighbour species
    channel, then cutoff: one pass that writes the pair arrays of the prediction kernels.

    ``offsets`` (N+1,), ``neighbors`` (P,), ``shifts`` (P, 3) int64, ``vectors`` (P, 3),
    ``distances`` (P,): a neighbour list in any pair order; ``order`` (N,) int64: new atom k is
    atom ``order[k]`` of the list (``arange(N)``: no renumbering); ``channel`` (N,) int64: the
    species channel of each *new* atom.

    Returns the new ``offsets``, ``neighbors`` (new atom numbers), ``shifts``, ``vectors``,
    ``distances``, and ``groups`` (N, S+1) int64 and ``ends`` (N, S, 2) int64: the pairs of
    new centre i with a neighbour of channel J are ``groups[i, J]:groups[i, J + 1]``
    (``groups[i, 0] = offsets[i]``, ``groups[i, S] = offsets[i + 1]``), of which
    ``groups[i, J]:ends[i, J, 0]`` are closer than ``rad_cut`` and ``groups[i, J]:ends[i, J,
    1]`` closer than ``ang_cut`` (so the kernels skip the pairs a basis does not reach).
    Within a group the pairs come in three bands, closer than both cutoffs, closer than the
    larger one only, and beyond both, each in the order of the input (a counting sort: the
    kernels need the two prefixes, not an order by distance).
    """
    n_atoms = offsets.shape[0] - 1
    n_pairs = neighbors.shape[0]
    near = min(rad_cut, ang_cut)
    far = max(rad_cut, ang_cut)
    n_bins = 3 * n_species  # bin 3 J + band
    inverse = np.empty(n_atoms, dtype=np.int64)
    new_offsets = np.empty(n_atoms + 1, dtype=np.int64)
    new_offsets[0] = 0
    for k in range(n_atoms):
        inverse[order[k]] = k
        new_offsets[k + 1] = new_offsets[k] + offsets[order[k] + 1] - offsets[order[k]]
    new_neighbors = np.empty(n_pairs, dtype=np.int64)
    new_shifts = np.empty((n_pairs, 3), dtype=np.int64)
    new_vectors = np.empty((n_pairs, 3))
    new_distances = np.empty(n_pairs)
    groups = np.empty((n_atoms, n_species + 1), dtype=np.int64)
    ends = np.empty((n_atoms, n_species, 2), dtype=np.int64)
    for i in prange(n_atoms):
        old = order[i]
        o0 = offsets[old]
        o1 = offsets[old + 1]
        pos = np.zeros(n_bins, dtype=np.int64)
        for p in range(o0, o1):
            d = distances[p]
            band = 0 if d < near else (1 if d < far else 2)
            pos[3 * channel[inverse[neighbors[p]]] + band] += 1
        base = new_offsets[i]
        t0 = base
        for j in range(n_species):
            groups[i, j] = t0
            n_near = pos[3 * j]
            n_mid = pos[3 * j + 1]
            ends[i, j, 0] = t0 + n_near + (n_mid if rad_cut > ang_cut else 0)
            ends[i, j, 1] = t0 + n_near + (n_mid if ang_cut > rad_cut else 0)
            for b in range(3):
                count = pos[3 * j + b]
                pos[3 * j + b] = t0
                t0 += count
        groups[i, n_species] = new_offsets[i + 1]
        for p in range(o0, o1):
            d = distances[p]
            band = 0 if d < near else (1 if d < far else 2)
            j = inverse[neighbors[p]]
            b = 3 * channel[j] + band
            t = pos[b]
            pos[b] = t + 1
            new_neighbors[t] = j
            new_distances[t] = d
            for c in range(3):
                new_shifts[t, c] = shifts[p, c]
                new_vectors[t, c] = vectors[p, c]
    return new_offsets, new_neighbors, new_shifts, new_vectors, new_distances, groups, ends


@njit(cache=True)
def _max_pairs(offsets):
    k = 0
    for i in range(offsets.shape[0] - 1):
        k = max(k, offsets[i + 1] - offsets[i])
    return k


@njit(cache=True, parallel=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def expansion_coefficients(offsets, groups, ends, vectors, distances, l2_max, rad_cut,
                           rad_inv, rad_values, rad_derivs, n_rad, l_max, ang_cut, ang_inv,
                           ang_values, ang_derivs, n_ang):
    """Expansion coefficients c2 (N, S*n_rad, (l2_max+1)**2) and c3 (N, S*n_ang, (l_max+1)**2).

    Pairs must be grouped by neighbour species, those within each cutoff first (``groups``,
    ``ends`` from :func:`group_pairs_by_species`, S = groups.shape[1] - 1); the basis
    functions of all pairs of a centre are evaluated at once
    (:mod:`numbec.descriptors.pair_block_numba`) and each coefficient is one dot product over
    the pairs of a species group within the cutoff.
    """
    n_atoms = offsets.shape[0] - 1
    n_species = groups.shape[1] - 1
    n_lm2 = (l2_max + 1) ** 2
    n_lm3 = (l_max + 1) ** 2
    c2 = np.empty((n_atoms, n_species * n_rad, n_lm2))
    c3 = np.empty((n_atoms, n_species * n_ang, n_lm3))
    n_l2 = rad_values.shape[1] // n_rad  # radial columns per n: the table may stop at l2_max
    tables = legendre_tables(l_max)
    kmax = _max_pairs(offsets)
    n_blocks, size = centre_blocks(n_atoms)
    for block in prange(n_blocks):
        arrays = centre_block_arrays(kmax, l_max, rad_values.shape[1], ang_values.shape[1],
                                     False)
        first, last = block_centres(block, size, n_atoms)
        for i in range(first, last):
            p0 = offsets[i]
            _, _, _, y, _, h2, _, h3, _ = fill_centre_block(
                arrays, vectors, distances, p0, offsets[i + 1], l_max, tables, rad_cut,
                rad_inv, rad_values, rad_derivs, ang_cut, ang_inv, ang_values, ang_derivs,
                False, False)
            for jc in range(n_species):
                g0 = groups[i, jc] - p0
                g1 = ends[i, jc, 0] - p0
                for n in range(n_rad):
                    for l in range(l2_max + 1):
                        col = n * n_l2 + l
                        hr = h2[col, g0:g1]
                        for lm in range(l * l, (l + 1) * (l + 1)):
                            c2[i, jc * n_rad + n, lm] = _dot(hr, y[lm, g0:g1])
                g1 = ends[i, jc, 1] - p0
                for n in range(n_ang):
                    for l in range(l_max + 1):
                        col = n * (l_max + 1) + l
                        hr = h3[col, g0:g1]
                        for lm in range(l * l, (l + 1) * (l + 1)):
                            c3[i, jc * n_ang + n, lm] = _dot(hr, y[lm, g0:g1])
    return c2, c3


@njit(cache=True, inline="always", fastmath=FASTMATH, error_model="numpy")
def _centre_basis_with_gradients(arrays, i, offsets, vectors, distances, l_max, tables, rad_cut,
                                 rad_inv, rad_values, rad_derivs, ang_cut, ang_inv, ang_values,
                                 ang_derivs):
    """First pair p0 and pair count k of centre i, and the basis functions (with
    gradients) of its pairs in ``arrays`` (:func:`fill_centre_block`): the prologue of the
    back-propagation kernels."""
    p0 = offsets[i]
    k = offsets[i + 1] - p0
    ux, uy, uz, y, dy, h2, dh2, h3, dh3 = fill_centre_block(
        arrays, vectors, distances, p0, p0 + k, l_max, tables, rad_cut, rad_inv, rad_values,
        rad_derivs, ang_cut, ang_inv, ang_values, ang_derivs, True, False)
    return p0, k, ux, uy, uz, y, dy, h2, dh2, h3, dh3


@njit(cache=True, parallel=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def pair_backprop(a2, a3, offsets, groups, ends, vectors, distances, rad_cut, rad_inv,
                  rad_values, rad_derivs, n_rad, l_max, ang_cut, ang_inv, ang_values, ang_derivs,
                  n_ang):
    """Per-pair gradients g[p, c, b] = sum_{Jnlm} A[i, Jn, c, lm] dc_{ij,Jnlm}/dr_{j,b}.

    a2 : (N, S*n_rad, C, LM2) adjoint of c2; a3 : (N, S*n_ang, C, LM3) adjoint of c3.
    Pairs grouped by neighbour species, those within each cutoff first, as in
    :func:`expansion_coefficients`.
    Returns g (P, C, 3), 1/Å times the units of A*c: the derivative of the contracted
    quantity of centre i with respect to the position of the neighbour image of pair p.

    With dc_nlm/dd = h'_nl u Y_lm + h_nl dY_lm/dd:
    g = u sum_lm Y_lm (sum_n A_nlm h'_nl) + sum_lm dY_lm/dd (sum_n A_nlm h_nl); the sums over
    n are formed for all pairs of a species group at once (loops over the pairs innermost,
    which the compiler vectorises).
    """
    n_atoms = offsets.shape[0] - 1
    g = np.empty((vectors.shape[0], a2.shape[2], 3))
    tables = legendre_tables(l_max)
    kmax = _max_pairs(offsets)
    n_blocks, size = centre_blocks(n_atoms)
    for block in prange(n_blocks):
        arrays = centre_block_arrays(kmax, l_max, rad_values.shape[1],
                                     ang_values.shape[1], True)
        work = backprop_work_arrays(kmax, l_max)
        first, last = block_centres(block, size, n_atoms)
        for i in range(first, last):
            p0, k, ux, uy, uz, y, dy, h2, dh2, h3, dh3 = _centre_basis_with_gradients(
                arrays, i, offsets, vectors, distances, l_max, tables, rad_cut, rad_inv,
                rad_values, rad_derivs, ang_cut, ang_inv, ang_values, ang_derivs)
            backprop_centre(i, p0, k, ux, uy, uz, y, dy, h2, dh2, h3, dh3, a2, a3, groups,
                            ends, n_rad, n_ang, l_max, work, g)
    return g


@njit(cache=True, inline="always", error_model="numpy")
def backprop_work_arrays(kmax, l_max):
    """Scratch of :func:`backprop_centre` for centres of at most ``kmax`` pairs: the sums
    over n ``s_h``, ``s_dh`` (LM3, kmax) and the four accumulators (4, kmax)."""
    n_lm3 = (l_max + 1) ** 2
    return np.empty((n_lm3, kmax)), np.empty((n_lm3, kmax)), np.empty((4, kmax))


@njit(cache=True, inline="always", fastmath=FASTMATH, error_model="numpy")
def backprop_centre(i, p0, k, ux, uy, uz, y, dy, h2, dh2, h3, dh3, a2, a3, groups, ends, n_rad,
                    n_ang, l_max, work, g):
    """The pair gradients of :func:`pair_backprop` of the k pairs of centre i (first pair
    p0) into g, from its basis functions (:func:`fill_centre_block`) and the scratch
    ``work`` (:func:`backprop_work_arrays`)."""
    s_h, s_dh, acc = work
    n_species = groups.shape[1] - 1
    n_ch = a2.shape[2]
    l2_max = int(np.sqrt(a2.shape[3]) + 0.5) - 1
    n_lm3 = (l_max + 1) ** 2
    n_l2 = h2.shape[0] // n_rad
    for c in range(n_ch):
        s_h[:, :k] = 0.0
        s_dh[:, :k] = 0.0
        for jc in range(n_species):
            g0 = groups[i, jc] - p0
            g1 = ends[i, jc, 0] - p0
            r = jc * n_rad
            for n in range(0, n_rad - 3, 4):
                for l in range(l2_max + 1):
                    col = n * n_l2 + l
                    for lm in range(l * l, (l + 1) * (l + 1)):
                        _axpy2x4(a2[i, r + n, c, lm], a2[i, r + n + 1, c, lm],
                                 a2[i, r + n + 2, c, lm], a2[i, r + n + 3, c, lm], h2, dh2,
                                 col, n_l2, g0, g1, s_h[lm], s_dh[lm])
            for n in range(n_rad - n_rad % 4, n_rad):
                arow = a2[i, r + n, c]
                for l in range(l2_max + 1):
                    col = n * n_l2 + l
                    for lm in range(l * l, (l + 1) * (l + 1)):
                        _axpy2(arow[lm], h2[col, g0:g1], dh2[col, g0:g1],
                               s_h[lm, g0:g1], s_dh[lm, g0:g1])
            g1 = ends[i, jc, 1] - p0
            # four radial functions per pass: a quarter of the loads and stores of the
            # sums (the loops over the pairs are short, so these dominate)
            for n in range(0, n_ang - 3, 4):
                r = jc * n_ang + n
                for l in range(l_max + 1):
                    col = n * (l_max + 1) + l
                    for lm in range(l * l, (l + 1) * (l + 1)):
                        _axpy2x4(a3[i, r, c, lm], a3[i, r + 1, c, lm], a3[i, r + 2, c, lm],
                                 a3[i, r + 3, c, lm], h3, dh3, col, l_max + 1, g0, g1,
                                 s_h[lm], s_dh[lm])
            for n in range(n_ang - n_ang % 4, n_ang):
                arow = a3[i, jc * n_ang + n, c]
                for l in range(l_max + 1):
                    col = n * (l_max + 1) + l
                    for lm in range(l * l, (l + 1) * (l + 1)):
                        _axpy2(arow[lm], h3[col, g0:g1], dh3[col, g0:g1],
                               s_h[lm, g0:g1], s_dh[lm, g0:g1])
        acc[:, :k] = 0.0
        ar = acc[0, :k]
        ax = acc[1, :k]
        ay = acc[2, :k]
        az = acc[3, :k]
        for lm in range(0, n_lm3 - 1, 2):  # two lm per pass over the accumulators
            sh = s_h[lm, :k]
            sdh = s_dh[lm, :k]
            yl = y[lm, :k]
            dyx = dy[lm, 0, :k]
            dyy = dy[lm, 1, :k]
            dyz = dy[lm, 2, :k]
            sh1 = s_h[lm + 1, :k]
            sdh1 = s_dh[lm + 1, :k]
            yl1 = y[lm + 1, :k]
            dyx1 = dy[lm + 1, 0, :k]
            dyy1 = dy[lm + 1, 1, :k]
            dyz1 = dy[lm + 1, 2, :k]
            for q in range(k):
                ar[q] += sdh[q] * yl[q] + sdh1[q] * yl1[q]
                ax[q] += sh[q] * dyx[q] + sh1[q] * dyx1[q]
                ay[q] += sh[q] * dyy[q] + sh1[q] * dyy1[q]
                az[q] += sh[q] * dyz[q] + sh1[q] * dyz1[q]
        if n_lm3 % 2:
            lm = n_lm3 - 1
            sh = s_h[lm, :k]
            sdh = s_dh[lm, :k]
            yl = y[lm, :k]
            dyx = dy[lm, 0, :k]
            dyy = dy[lm, 1, :k]
            dyz = dy[lm, 2, :k]
            for q in range(k):
                ar[q] += sdh[q] * yl[q]
                ax[q] += sh[q] * dyx[q]
                ay[q] += sh[q] * dyy[q]
                az[q] += sh[q] * dyz[q]
        for q in range(k):
            g[p0 + q, c, 0] = ax[q] + ar[q] * ux[q]
            g[p0 + q, c, 1] = ay[q] + ar[q] * uy[q]
            g[p0 + q, c, 2] = az[q] + ar[q] * uz[q]


@njit(cache=True, inline="always", fastmath=FASTMATH, error_model="numpy")
def _add_sums_over_n4(at, row0, n_count, h, dh, col_step, q, l_count, s, ds):
    """``s[4 lm + c] += sum_n at[row0 + n, 4 lm + c] h[n col_step + l, q]`` for the four
    channels c of a block and every lm with l < ``l_count``, and ``ds`` the same with dh.

    ``at`` (rows, 4 LM) holds a centre's adjoints with the four channels innermost, so that
    for one n and l the update is a contiguous run of 4 (2l + 1) elements that the compiler
    vectorises (sums over n kept in registers instead were vectorised over n, through
    gathers, and ran 1.3x slower). The views start at 0 so that no index may be negative."""
    for n in range(n_count):
        arow = at[row0 + n]
        col = n * col_step
        for l in range(l_count):
            hv = h[col + l, q]
            dv = dh[col + l, q]
            lo = l * l * 4
            hi = (l + 1) * (l + 1) * 4
            a = arow[lo:hi]
            sv = s[lo:hi]
            dsv = ds[lo:hi]
            for e in range(hi - lo):
                sv[e] += a[e] * hv
                dsv[e] += a[e] * dv


@njit(cache=True, parallel=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def pair_backprop_channel_blocks(a2, a3, offsets, groups, ends, vectors, distances, rad_cut,
                                  rad_inv, rad_values, rad_derivs, n_rad, l_max, ang_cut, ang_inv,
                                  ang_values, ang_derivs, n_ang):
    """:func:`pair_backprop` with the channels in blocks of four, all handled in one pass
    over each pair; same arguments, result and pair grouping.

    The loop runs over the pairs of a species group; per pair, the sums over n of four
    channels at once (:func:`_add_sums_over_n4`; the adjoints of the centre are first copied
    to (rows, 4 LM) blocks, the lanes past the last channel are computed and not stored),
    then the sums over lm with the harmonics and their gradients. For
    four channels or more it is faster than :func:`pair_backprop`, which goes through the
    pairs once per channel, in molecules, crystals and liquids alike. For fewer channels it is
    faster where the centres have few pairs (molecules, small clusters: the loops over the
    pairs of :func:`pair_backprop` are then a few pairs long) and slower where they have many
    (liquids: the unused lanes cost as much as the used ones);
    :data:`numbec.descriptors.expansion.BLOCK_BACKPROP_BELOW` and the constants after it.
    """
    n_atoms = offsets.shape[0] - 1
    n_species = groups.shape[1] - 1
    n_ch = a2.shape[2]
    n_lm2 = a2.shape[3]
    n_lm3 = (l_max + 1) ** 2
    n_r2 = a2.shape[1]
    n_r3 = a3.shape[1]
    g = np.empty((vectors.shape[0], n_ch, 3))
    tables = legendre_tables(l_max)
    kmax = _max_pairs(offsets)
    n_l2 = rad_values.shape[1] // n_rad
    l2_max = int(np.sqrt(n_lm2) + 0.5) - 1
    n_blocks, size = centre_blocks(n_atoms)
    for block in prange(n_blocks):
        arrays = centre_block_arrays(kmax, l_max, rad_values.shape[1],
                                     ang_values.shape[1], True)
        # lanes past the last channel keep finite values of an earlier centre or channel
        # block: computed, never stored
        at2 = np.zeros((n_r2, n_lm2 * 4))
        at3 = np.zeros((n_r3, n_lm3 * 4))
        s = np.empty(n_lm3 * 4)
        ds = np.empty(n_lm3 * 4)
        first, last = block_centres(block, size, n_atoms)
        for i in range(first, last):
            p0, k, ux, uy, uz, y, dy, h2, dh2, h3, dh3 = _centre_basis_with_gradients(
                arrays, i, offsets, vectors, distances, l_max, tables, rad_cut, rad_inv,
                rad_values, rad_derivs, ang_cut, ang_inv, ang_values, ang_derivs)
            for cb in range(0, n_ch, 4):
                nc = min(4, n_ch - cb)
                for r in range(n_r2):
                    for c in range(nc):
                        for lm in range(n_lm2):
                            at2[r, 4 * lm + c] = a2[i, r, cb + c, lm]
                for r in range(n_r3):
                    for c in range(nc):
                        for lm in range(n_lm3):
                            at3[r, 4 * lm + c] = a3[i, r, cb + c, lm]
                for jc in range(n_species):
                    g0 = groups[i, jc] - p0
                    g1 = groups[i, jc + 1] - p0
                    gr = ends[i, jc, 0] - p0
                    ga = ends[i, jc, 1] - p0
                    for q in range(g0, g1):
                        s[:] = 0.0
                        ds[:] = 0.0
                        if q < gr:
                            _add_sums_over_n4(at2, jc * n_rad, n_rad, h2, dh2, n_l2, q,
                                              l2_max + 1, s, ds)
                        if q < ga:
                            _add_sums_over_n4(at3, jc * n_ang, n_ang, h3, dh3, l_max + 1, q,
                                              l_max + 1, s, ds)
                        r0 = 0.0
                        r1 = 0.0
                        r2 = 0.0
                        r3 = 0.0
                        x0 = 0.0
                        x1 = 0.0
                        x2 = 0.0
                        x3 = 0.0
                        y0 = 0.0
                        y1 = 0.0
                        y2 = 0.0
                        y3 = 0.0
                        z0 = 0.0
                        z1 = 0.0
                        z2 = 0.0
                        z3 = 0.0
                        for lm in range(n_lm3 if q < ga else n_lm2):
                            yv = y[lm, q]
                            xv = dy[lm, 0, q]
                            yy = dy[lm, 1, q]
                            zv = dy[lm, 2, q]
                            e = 4 * lm
                            s0 = s[e]
                            s1 = s[e + 1]
                            s2 = s[e + 2]
                            s3 = s[e + 3]
                            d0 = ds[e]
                            d1 = ds[e + 1]
                            d2 = ds[e + 2]
                            d3 = ds[e + 3]
                            r0 += d0 * yv
                            r1 += d1 * yv
                            r2 += d2 * yv
                            r3 += d3 * yv
                            x0 += s0 * xv
                            x1 += s1 * xv
                            x2 += s2 * xv
                            x3 += s3 * xv
                            y0 += s0 * yy
                            y1 += s1 * yy
                            y2 += s2 * yy
                            y3 += s3 * yy
                            z0 += s0 * zv
                            z1 += s1 * zv
                            z2 += s2 * zv
                            z3 += s3 * zv
                        p = p0 + q
                        g[p, cb, 0] = x0 + r0 * ux[q]
                        g[p, cb, 1] = y0 + r0 * uy[q]
                        g[p, cb, 2] = z0 + r0 * uz[q]
                        if nc > 1:
                            g[p, cb + 1, 0] = x1 + r1 * ux[q]
                            g[p, cb + 1, 1] = y1 + r1 * uy[q]
                            g[p, cb + 1, 2] = z1 + r1 * uz[q]
                        if nc > 2:
                            g[p, cb + 2, 0] = x2 + r2 * ux[q]
                            g[p, cb + 2, 1] = y2 + r2 * uy[q]
                            g[p, cb + 2, 2] = z2 + r2 * uz[q]
                        if nc > 3:
                            g[p, cb + 3, 0] = x3 + r3 * ux[q]
                            g[p, cb + 3, 1] = y3 + r3 * uy[q]
                            g[p, cb + 3, 2] = z3 + r3 * uz[q]
    return g


@njit(cache=True, error_model="numpy")
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


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
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
