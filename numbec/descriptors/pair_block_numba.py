"""Basis functions of all the pairs of one centre at once, vectorised over the pairs (Numba).

The prediction kernels (expansion coefficients and the adjoint back-propagation) evaluate the
spherical harmonics and the radial splines of every pair. Done one pair at a time, the work is
a chain of short loops (lengths 1 to 2 l_max + 1) that the compiler cannot vectorise; here every
inner loop runs over the pairs of one centre (tens to a few hundred), so it does.

Block layout (``k`` = number of pairs of the centre, pair index last everywhere):

- ``ux, uy, uz, inv_d`` (k,): unit vector components and 1/|d| (1/Å);
- ``y`` (LM, k): real harmonics ``Y_lm(u)``, ``lm = l*l + l + m`` (the convention of
  :mod:`numbec.descriptors.spherical_harmonics_numba`);
- ``dy`` (LM, 3, k): ``dY_lm(d / |d|)/dd``, 1/Å;
- ``h``, ``dh`` (K, k): spline values and d-derivatives of the K tabulated radial columns,
  exactly zero for pairs at or beyond the table's cutoff (so such pairs add nothing).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from numbec.descriptors.radial_basis_numba import hermite_weights
from numbec.descriptors.spherical_harmonics_numba import sph_harm_normalisation

#: Fast-math flags that allow reductions to be vectorised (re-association, contraction to FMA)
#: without assuming finite values, so NaN and inf still propagate to the checks.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


@njit(cache=True)
def legendre_tables(l_max):
    """Recurrence tables of the normalised associated Legendre polynomials.

    Returns ``norm`` (l_max+1, l_max+1): ``F[l, m]`` of ``Y_l,+-m = F[l, m] Q_l^m(z) {cos, sin}
    (m phi)`` (including sqrt(2) for m > 0); ``diag`` (l_max+1,): ``Q_m^m = (2m-1)!!``;
    ``ca``, ``cb`` (l_max+1, l_max+1): ``Q_l^m = ca[l, m] z Q_{l-1}^m - cb[l, m] Q_{l-2}^m``.
    """
    norm = sph_harm_normalisation(l_max)
    diag = np.zeros(l_max + 1)
    ca = np.zeros((l_max + 1, l_max + 1))
    cb = np.zeros((l_max + 1, l_max + 1))
    dfact = 1.0
    for m in range(l_max + 1):
        if m > 0:
            dfact *= 2 * m - 1
        diag[m] = dfact
    for l in range(l_max + 1):
        for m in range(l + 1):
            if l > m:
                ca[l, m] = (2 * l - 1) / (l - m)
                cb[l, m] = (l + m - 1) / (l - m)
    return norm, diag, ca, cb


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def unit_vectors(vectors, distances, p0, p1, ux, uy, uz, inv_d):
    """Fill ux, uy, uz, inv_d (k,) for the pairs p0 <= p < p1."""
    for q in range(p1 - p0):
        inv = 1.0 / distances[p0 + q]
        inv_d[q] = inv
        ux[q] = vectors[p0 + q, 0] * inv
        uy[q] = vectors[p0 + q, 1] * inv
        uz[q] = vectors[p0 + q, 2] * inv


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def harmonics_block(ux, uy, uz, inv_d, k, l_max, norm, diag, ca, cb, leg, cm, sm, y, dy,
                    gradients):
    """Real harmonics of k unit vectors into y (LM, >= k); with ``gradients`` also dy (LM, 3,
    >= k), the gradient with respect to the (unnormalised) pair vector.

    Work arrays: leg (l_max+1, l_max+2, >= k) (Legendre polynomials Q_l^m, zero for m > l),
    cm, sm (l_max+1, >= k) (Re, Im of (ux + i uy)^m).
    """
    for q in range(k):
        cm[0, q] = 1.0
        sm[0, q] = 0.0
    for m in range(1, l_max + 1):
        for q in range(k):
            cm[m, q] = ux[q] * cm[m - 1, q] - uy[q] * sm[m - 1, q]
            sm[m, q] = ux[q] * sm[m - 1, q] + uy[q] * cm[m - 1, q]
    for m in range(l_max + 1):
        dm = diag[m]
        for q in range(k):
            leg[m, m, q] = dm
        if m + 1 <= l_max:
            c1 = (2 * m + 1) * dm
            for q in range(k):
                leg[m + 1, m, q] = c1 * uz[q]
        for l in range(m + 2, l_max + 1):
            a = ca[l, m]
            b = cb[l, m]
            for q in range(k):
                leg[l, m, q] = a * uz[q] * leg[l - 1, m, q] - b * leg[l - 2, m, q]
    # Q_l^m = 0 for m > l (the gradient below reads Q_{l-1}^{l} and Q_{l-1}^{l+1})
    for l in range(l_max + 1):
        for m in range(l + 1, l_max + 2):
            for q in range(k):
                leg[l, m, q] = 0.0
    for l in range(l_max + 1):
        base = l * l + l
        f = norm[l, 0]
        for q in range(k):
            y[base, q] = f * leg[l, 0, q]
        for m in range(1, l + 1):
            f = norm[l, m]
            for q in range(k):
                fq = f * leg[l, m, q]
                y[base + m, q] = fq * cm[m, q]
                y[base - m, q] = fq * sm[m, q]
        if not gradients:
            continue
        # tangential gradient (I - u u^T) grad of the solid harmonic, divided by |d|:
        # dQ_l^m/dx = -x Q_{l-1}^{m+1}, dQ_l^m/dy = -y Q_{l-1}^{m+1}, dQ_l^m/dz = (l+m) Q_{l-1}^m
        f = norm[l, 0]
        for q in range(k):
            yv = y[base, q]
            if l >= 1:
                qx = -f * leg[l - 1, 1, q]
                gz = l * f * leg[l - 1, 0, q]
            else:
                qx = 0.0
                gz = 0.0
            s = inv_d[q]
            dy[base, 0, q] = (ux[q] * qx - l * yv * ux[q]) * s
            dy[base, 1, q] = (uy[q] * qx - l * yv * uy[q]) * s
            dy[base, 2, q] = (gz - l * yv * uz[q]) * s
        for m in range(1, l + 1):
            f = norm[l, m]
            for q in range(k):
                qlm = f * leg[l, m, q]
                qx = -f * leg[l - 1, m + 1, q]
                qz = (l + m) * f * leg[l - 1, m, q]
                s = inv_d[q]
                c = cm[m, q]
                sn = sm[m, q]
                c1 = cm[m - 1, q]
                s1 = sm[m - 1, q]
                yc = y[base + m, q]
                ys = y[base - m, q]
                dy[base + m, 0, q] = (ux[q] * qx * c + qlm * m * c1 - l * yc * ux[q]) * s
                dy[base + m, 1, q] = (uy[q] * qx * c - qlm * m * s1 - l * yc * uy[q]) * s
                dy[base + m, 2, q] = (qz * c - l * yc * uz[q]) * s
                dy[base - m, 0, q] = (ux[q] * qx * sn + qlm * m * s1 - l * ys * ux[q]) * s
                dy[base - m, 1, q] = (uy[q] * qx * sn + qlm * m * c1 - l * ys * uy[q]) * s
                dy[base - m, 2, q] = (qz * sn - l * ys * uz[q]) * s


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def splines_block(distances, p0, p1, cutoff, inv_spacing, values, derivatives, h, dh,
                  gradients, zero_beyond=True):
    """Cubic Hermite spline values h (K, >= k) and, with ``gradients``, d-derivatives dh of
    the K tabulated columns for the pairs p0 <= p < p1; zero at or beyond ``cutoff``, or left
    unset there with ``zero_beyond=False`` (for callers that never read those pairs).

    The interpolant of :func:`numbec.descriptors.radial_basis_numba.hermite_eval` (same
    weights), written into column q of h, dh.
    """
    n_intervals = values.shape[0] - 1
    n_col = values.shape[1]
    for q in range(p1 - p0):
        d = distances[p0 + q]
        if not d < cutoff:
            if zero_beyond:
                for c in range(n_col):
                    h[c, q] = 0.0
                if gradients:
                    for c in range(n_col):
                        dh[c, q] = 0.0
            continue
        k, a_dy, a_m0, a_m1, b_dy, b_m0, b_m1 = hermite_weights(d, inv_spacing, n_intervals)
        y0 = values[k]
        y1 = values[k + 1]
        m0 = derivatives[k]
        m1 = derivatives[k + 1]
        if gradients:
            for c in range(n_col):
                y = y0[c]
                dy = y1[c] - y
                g0 = m0[c]
                g1 = m1[c]
                h[c, q] = y + a_dy * dy + a_m0 * g0 + a_m1 * g1
                dh[c, q] = b_dy * dy + b_m0 * g0 + b_m1 * g1
        else:
            for c in range(n_col):
                y = y0[c]
                h[c, q] = y + a_dy * (y1[c] - y) + a_m0 * m0[c] + a_m1 * m1[c]


#: Most centres in a block of the pair kernels' parallel loops: the work arrays of a block
#: (:func:`centre_block_arrays`, the kernels' own scratch) are allocated once per block
#: rather than once per centre. A water-dimer centre has 5 pairs, and the dozen allocations
#: of its basis functions took as long as computing them (a batch of 64 dimers, one thread:
#: the basis functions with gradients of its 384 centres took 0.46 ms allocated per centre,
#: 0.37 ms per block of 32, 2026-12-04).
CENTRES_PER_BLOCK = 16
#: Fewest blocks where a structure has enough centres: smaller blocks where it has few, so
#: that up to 8 threads get equal shares (five blocks of 16 for the 72 atoms of a quartz
#: cell would give one of two threads 48 centres and the other 24). Not from the thread
#: count itself: a kernel that reads it cannot be cached.
MIN_BLOCKS = 64


@njit(cache=True, error_model="numpy")
def centre_blocks(n_atoms):
    """``(n_blocks, size)``: blocks of ``size`` centres (the last one shorter) covering
    ``n_atoms``: at most :data:`CENTRES_PER_BLOCK` centres each, and at least
    :data:`MIN_BLOCKS` blocks where there are that many centres."""
    size = max(1, min(CENTRES_PER_BLOCK, n_atoms // MIN_BLOCKS))
    return -(-n_atoms // size), size


@njit(cache=True, error_model="numpy")
def block_centres(block, size, n_atoms):
    """First and one-past-last centre of ``block`` (:func:`centre_blocks`)."""
    first = block * size
    return first, min(n_atoms, first + size)


@njit(cache=True, error_model="numpy")
def centre_block_arrays(kmax, l_max, n_rad_cols, n_ang_cols, gradients):
    """Work arrays of :func:`fill_centre_block` for centres of at most ``kmax`` pairs:
    ``(ux, uy, uz, inv_d, leg, cm, sm, y, dy, h2, dh2, h3, dh3)`` (shapes in the module
    docstring; without ``gradients`` ``dy`` is a placeholder and ``dh2``, ``dh3`` are
    ``h2``, ``h3``)."""
    n_lm = (l_max + 1) ** 2
    h2 = np.empty((n_rad_cols, kmax))
    h3 = np.empty((n_ang_cols, kmax))
    if gradients:
        dy = np.empty((n_lm, 3, kmax))
        dh2 = np.empty((n_rad_cols, kmax))
        dh3 = np.empty((n_ang_cols, kmax))
    else:
        dy = np.empty((1, 3, 1))
        dh2 = h2
        dh3 = h3
    return (np.empty(kmax), np.empty(kmax), np.empty(kmax), np.empty(kmax),
            np.empty((l_max + 1, l_max + 2, kmax)), np.empty((l_max + 1, kmax)),
            np.empty((l_max + 1, kmax)), np.empty((n_lm, kmax)), dy, h2, dh2, h3, dh3)


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def fill_centre_block(arrays, vectors, distances, p0, p1, l_max, tables, rad_cut, rad_inv,
                      rad_values, rad_derivs, ang_cut, ang_inv, ang_values, ang_derivs,
                      gradients, zero_beyond=True):
    """All basis functions of the pairs p0 <= p < p1 (one centre) into ``arrays``
    (:func:`centre_block_arrays` with at least p1 - p0 columns and the same ``gradients``);
    returns ``ux, uy, uz, y, dy, h2, dh2, h3, dh3`` (views of ``arrays``). ``tables`` =
    :func:`legendre_tables`. With ``zero_beyond=False`` the spline columns of pairs beyond
    a table's cutoff are left unset (the grouped kernels stop at ``ends`` and never read
    them; a third of the pairs of liquid water are beyond the angular cutoff)."""
    norm, diag, ca, cb = tables
    ux, uy, uz, inv_d, leg, cm, sm, y, dy, h2, dh2, h3, dh3 = arrays
    unit_vectors(vectors, distances, p0, p1, ux, uy, uz, inv_d)
    harmonics_block(ux, uy, uz, inv_d, p1 - p0, l_max, norm, diag, ca, cb, leg, cm, sm, y,
                    dy, gradients)
    splines_block(distances, p0, p1, rad_cut, rad_inv, rad_values, rad_derivs, h2, dh2,
                  gradients, zero_beyond)
    splines_block(distances, p0, p1, ang_cut, ang_inv, ang_values, ang_derivs, h3, dh3,
                  gradients, zero_beyond)
    return ux, uy, uz, y, dy, h2, dh2, h3, dh3
