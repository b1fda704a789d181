"""Real spherical harmonics and their gradients (Numba).

Convention: orthonormal real harmonics without the Condon-Shortley phase, index
``lm = l * l + l + m`` for ``m = -l..l``;
``Y_l0 = sqrt((2l+1)/4pi) Q_l^0``, ``Y_l,+m = sqrt(2 (2l+1)/4pi (l-m)!/(l+m)!) Q_l^m Re(x+iy)^m``,
``Y_l,-m = ... Im(x+iy)^m``, with ``Q_l^m(z, r)`` the polynomial part of the associated Legendre
function. So ``Y_1,(-1,0,1) = sqrt(3/4pi) (y, z, x) / r``.

On the unit sphere ``Q_l^m`` is a polynomial in z alone; the normalised ``F Q_l^m`` and its
z-derivative follow one three-term recurrence per m (coefficients tabulated by
:func:`sph_harm_prefactors`), and the tangential gradient is that of the extension
``F Q_l^m(z) Re/Im (x+iy)^m`` minus its radial part (see :func:`sph_harm_unit`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

# error_model="numpy": no ZeroDivisionError branches (they block the removal of the array
# reference counting at each call); "contract" lets LLVM fuse multiply-adds. Indices written as
# np.uint64 skip Numba's negative-index wraparound code in the inner loops.
_FLAGS = {"contract"}


@njit(cache=True, error_model="numpy")
def sph_harm_normalisation(l_max):
    """(l_max+1, l_max+1) float64 ``F[l, m]`` (m >= 0): ``Y_l,+-m = F[l, m] Q_l^m(z)
    {cos, sin}(m phi)``, with sqrt(2) included for m > 0 (module docstring)."""
    norm = np.zeros((l_max + 1, l_max + 1))
    for l in range(l_max + 1):
        norm[l, 0] = math.sqrt((2 * l + 1) / (4.0 * math.pi))
        ratio = 1.0
        for m in range(1, l + 1):
            # (l-m)!/(l+m)! built incrementally
            ratio /= (l + m) * (l - m + 1)
            norm[l, m] = math.sqrt(2.0 * (2 * l + 1) / (4.0 * math.pi) * ratio)
    return norm


@njit(cache=True, error_model="numpy", fastmath=_FLAGS)
def sph_harm_prefactors(l_max):
    """((l_max+1)(l_max+2)/2, 2) float64 recurrence coefficients of the normalised Legendre
    functions ``P[l, m] = F[l, m] Q_l^m(z)`` (``F[l, m]`` the normalisation of ``Y_l,+-m`` in
    the module docstring, sqrt(2) included for m > 0), dimensionless.

    One row per (l, m >= 0) in evaluation order m = 0..l_max, and within each m, l = m..l_max.
    Row (m, m): ``[P[m, m], 0]`` with ``P[m, m] = F[m, m] (2m-1)!!`` (a constant);
    row (l > m): ``[a, b]`` with ``a = F[l, m]/F[l-1, m] (2l-1)/(l-m)``,
    ``b = F[l, m]/F[l-2, m] (l+m-1)/(l-m)`` (0 for l = m + 1), so that
    ``P[l, m] = a z P[l-1, m] - b P[l-2, m]``.
    Create once per kernel call and pass to :func:`sph_harm_unit` / :func:`sph_harm_unit_values`
    as ``pref``.
    """
    norm = sph_harm_normalisation(l_max)
    table = np.zeros(((l_max + 1) * (l_max + 2) // 2, 2))
    j = 0
    dfact = 1.0
    for m in range(l_max + 1):
        if m > 0:
            dfact *= 2 * m - 1
        table[j, 0] = norm[m, m] * dfact
        j += 1
        for l in range(m + 1, l_max + 1):
            table[j, 0] = norm[l, m] / norm[l - 1, m] * (2 * l - 1) / (l - m)
            if l >= m + 2:
                table[j, 1] = norm[l, m] / norm[l - 2, m] * (l + m - 1) / (l - m)
            j += 1
    return table


@njit(cache=True, error_model="numpy", fastmath=_FLAGS)
def sph_harm_unit(ux, uy, uz, l_max, pref, q, cm, sm, out_y, out_grad):
    """Real harmonics Y_lm(u) and the tangential gradient on the unit sphere.

    ux, uy, uz : components of a unit vector u.
    pref : ((l_max+1)(l_max+2)/2, 2) table from :func:`sph_harm_prefactors`.
    q : (l_max+1, l_max+2), cm, sm : (l_max+1,) work arrays (kept for the calling convention;
        not used).
    out_y : ((l_max+1)**2,) Y_lm(u).
    out_grad : ((l_max+1)**2, 3) the gradient of Y_lm(d / |d|) with respect to d, times |d|
        (i.e. ``(I - u u^T) grad R_lm(u)``); divide by |d| for the gradient.

    The tangential gradient only depends on the values on the sphere, so it is taken of the
    extension ``g = P(z) C_m`` (cosine; ``S_m`` for the sine), ``C_m + i S_m = (ux + i uy)^m``,
    ``P = P[l, m]``, ``P' = dP/dz`` (its own recurrence): ``grad g = (m P C_{m-1},
    -m P S_{m-1}, P' C_m)`` (sine: ``(m P S_{m-1}, m P C_{m-1}, P' S_m)``), radial part
    ``u . grad g = k C_m`` (``k S_m``) with ``k = m P + z P'``.
    """
    # (c, s) = (C_m, S_m), (c1, s1) = (C_{m-1}, S_{m-1}); the m = 0 terms vanish with c1 = s1 = 0
    c = 1.0
    s = 0.0
    c1 = 0.0
    s1 = 0.0
    j = 0
    for m in range(l_max + 1):
        fm = float(m)
        # l = m: P' = 0; sine first: for m = 0 the cosine overwrites the same index
        p1 = pref[np.uint64(j), 0]
        j += 1
        mp = fm * p1
        idx = np.uint64(m * m)
        out_y[idx] = p1 * s
        out_grad[idx, 0] = mp * (s1 - s * ux)
        out_grad[idx, 1] = mp * (c1 - s * uy)
        out_grad[idx, 2] = -mp * s * uz
        idx = np.uint64(m * m + 2 * m)
        out_y[idx] = p1 * c
        out_grad[idx, 0] = mp * (c1 - c * ux)
        out_grad[idx, 1] = -mp * (s1 + c * uy)
        out_grad[idx, 2] = -mp * c * uz
        d1 = 0.0
        p2 = 0.0
        d2 = 0.0
        for l in range(m + 1, l_max + 1):
            a = pref[np.uint64(j), 0]
            b = pref[np.uint64(j), 1]
            j += 1
            p0 = a * uz * p1 - b * p2
            d0 = a * (p1 + uz * d1) - b * d2
            mp = fm * p0
            k = mp + uz * d0
            kc = k * c
            ks = k * s
            base = l * l + l
            idx = np.uint64(base - m)
            out_y[idx] = p0 * s
            out_grad[idx, 0] = mp * s1 - ks * ux
            out_grad[idx, 1] = mp * c1 - ks * uy
            out_grad[idx, 2] = d0 * s - ks * uz
            idx = np.uint64(base + m)
            out_y[idx] = p0 * c
            out_grad[idx, 0] = mp * c1 - kc * ux
            out_grad[idx, 1] = -mp * s1 - kc * uy
            out_grad[idx, 2] = d0 * c - kc * uz
            p2 = p1
            p1 = p0
            d2 = d1
            d1 = d0
        c1 = c
        s1 = s
        c = ux * c1 - uy * s1
        s = ux * s1 + uy * c1


@njit(cache=True, error_model="numpy", fastmath=_FLAGS)
def sph_harm_unit_values(ux, uy, uz, l_max, pref, q, cm, sm, out_y):
    """Values only of :func:`sph_harm_unit` (same conventions and arguments)."""
    p1 = pref[0, 0]
    p2 = 0.0
    out_y[0] = p1
    j = 1
    for l in range(1, l_max + 1):
        p0 = pref[np.uint64(j), 0] * uz * p1 - pref[np.uint64(j), 1] * p2
        j += 1
        out_y[np.uint64(l * l + l)] = p0
        p2 = p1
        p1 = p0
    c = 1.0
    s = 0.0
    for m in range(1, l_max + 1):
        c, s = ux * c - uy * s, ux * s + uy * c
        p1 = pref[j, 0]
        j += 1
        p2 = 0.0
        out_y[np.uint64(m * m + 2 * m)] = p1 * c
        out_y[np.uint64(m * m)] = p1 * s
        for l in range(m + 1, l_max + 1):
            p0 = pref[np.uint64(j), 0] * uz * p1 - pref[np.uint64(j), 1] * p2
            j += 1
            base = l * l + l
            out_y[np.uint64(base + m)] = p0 * c
            out_y[np.uint64(base - m)] = p0 * s
            p2 = p1
            p1 = p0


@njit(cache=True, parallel=True)
def sph_harm_many(vectors, l_max):
    """Y_lm(r_hat) for many vectors: (P, 3) float64 -> values (P, (l_max+1)**2) and gradients
    with respect to the (not normalised) vector, (P, (l_max+1)**2, 3), 1/Å."""
    n = vectors.shape[0]
    n_lm = (l_max + 1) ** 2
    pref = sph_harm_prefactors(l_max)
    values = np.empty((n, n_lm))
    grads = np.empty((n, n_lm, 3))
    for p in prange(n):
        q = np.empty((l_max + 1, l_max + 2))
        cm = np.empty(l_max + 1)
        sm = np.empty(l_max + 1)
        r = math.sqrt(vectors[p, 0] ** 2 + vectors[p, 1] ** 2 + vectors[p, 2] ** 2)
        sph_harm_unit(vectors[p, 0] / r, vectors[p, 1] / r, vectors[p, 2] / r, l_max, pref, q,
                      cm, sm, values[p], grads[p])
        for k in range(n_lm):
            for b in range(3):
                grads[p, k, b] /= r
    return values, grads
