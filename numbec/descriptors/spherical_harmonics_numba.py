"""Real spherical harmonics and their gradients (Numba).

Convention: orthonormal real harmonics without the Condon-Shortley phase, index
``lm = l * l + l + m`` for ``m = -l..l``;
``Y_l0 = sqrt((2l+1)/4pi) Q_l^0``, ``Y_l,+m = sqrt(2 (2l+1)/4pi (l-m)!/(l+m)!) Q_l^m Re(x+iy)^m``,
``Y_l,-m = ... Im(x+iy)^m``, with ``Q_l^m(z, r)`` the polynomial part of the associated Legendre
function. So ``Y_1,(-1,0,1) = sqrt(3/4pi) (y, z, x) / r``.

The gradient uses the polynomial (solid-harmonic) identities
``dQ_l^m/dx = -x Q_{l-1}^{m+1}``, ``dQ_l^m/dy = -y Q_{l-1}^{m+1}``, ``dQ_l^m/dz = (l+m) Q_{l-1}^m``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(cache=True)
def sph_harm_prefactors(l_max):
    """(l_max+1, l_max+1) float64 normalisation F[l, m] (m >= 0) of the real harmonics."""
    pref = np.zeros((l_max + 1, l_max + 1))
    for l in range(l_max + 1):
        pref[l, 0] = math.sqrt((2 * l + 1) / (4.0 * math.pi))
        ratio = 1.0
        for m in range(1, l + 1):
            # (l-m)!/(l+m)! built incrementally
            ratio /= (l + m) * (l - m + 1)
            pref[l, m] = math.sqrt(2.0 * (2 * l + 1) / (4.0 * math.pi) * ratio)
    return pref


@njit(cache=True)
def sph_harm_unit(ux, uy, uz, l_max, pref, q, cm, sm, out_y, out_grad):
    """Real harmonics Y_lm(u) and the tangential gradient on the unit sphere.

    ux, uy, uz : components of a unit vector u.
    pref : (l_max+1, l_max+1) from :func:`sph_harm_prefactors`.
    q : (l_max+1, l_max+2) work array; cm, sm : (l_max+1,) work arrays.
    out_y : ((l_max+1)**2,) Y_lm(u).
    out_grad : ((l_max+1)**2, 3) the gradient of Y_lm(d / |d|) with respect to d, times |d|
        (i.e. ``(I - u u^T) grad R_lm(u)``); divide by |d| for the gradient.
    """
    cm[0] = 1.0
    sm[0] = 0.0
    for m in range(1, l_max + 1):
        cm[m] = ux * cm[m - 1] - uy * sm[m - 1]
        sm[m] = ux * sm[m - 1] + uy * cm[m - 1]
    for l in range(l_max + 1):
        for m in range(l_max + 2):
            q[l, m] = 0.0
    for m in range(l_max + 1):
        dfact = 1.0
        for k in range(1, 2 * m, 2):
            dfact *= k
        q[m, m] = dfact
        if m + 1 <= l_max:
            q[m + 1, m] = (2 * m + 1) * uz * dfact
        for l in range(m + 2, l_max + 1):
            q[l, m] = ((2 * l - 1) * uz * q[l - 1, m] - (l + m - 1) * q[l - 2, m]) / (l - m)
    for l in range(l_max + 1):
        base = l * l + l
        # m = 0
        f = pref[l, 0]
        out_y[base] = f * q[l, 0]
        gx = 0.0
        gy = 0.0
        gz = 0.0
        if l >= 1:
            gx = -ux * q[l - 1, 1] * f
            gy = -uy * q[l - 1, 1] * f
            gz = l * q[l - 1, 0] * f
        # project out the radial part: grad - l * Y * u (Euler, degree-l homogeneity)
        yv = out_y[base]
        out_grad[base, 0] = gx - l * yv * ux
        out_grad[base, 1] = gy - l * yv * uy
        out_grad[base, 2] = gz - l * yv * uz
        for m in range(1, l + 1):
            f = pref[l, m]
            qlm = q[l, m]
            qx = 0.0
            qz = 0.0
            if l >= 1:
                qx = -q[l - 1, m + 1]  # d/dx = ux * qx, d/dy = uy * qx
                qz = (l + m) * q[l - 1, m]
            # cosine (m > 0)
            yc = f * qlm * cm[m]
            gx = f * (ux * qx * cm[m] + qlm * m * cm[m - 1])
            gy = f * (uy * qx * cm[m] - qlm * m * sm[m - 1])
            gz = f * qz * cm[m]
            idx = base + m
            out_y[idx] = yc
            out_grad[idx, 0] = gx - l * yc * ux
            out_grad[idx, 1] = gy - l * yc * uy
            out_grad[idx, 2] = gz - l * yc * uz
            # sine (m < 0)
            ys = f * qlm * sm[m]
            gx = f * (ux * qx * sm[m] + qlm * m * sm[m - 1])
            gy = f * (uy * qx * sm[m] + qlm * m * cm[m - 1])
            gz = f * qz * sm[m]
            idx = base - m
            out_y[idx] = ys
            out_grad[idx, 0] = gx - l * ys * ux
            out_grad[idx, 1] = gy - l * ys * uy
            out_grad[idx, 2] = gz - l * ys * uz


@njit(cache=True)
def sph_harm_unit_values(ux, uy, uz, l_max, pref, q, cm, sm, out_y):
    """Values only of :func:`sph_harm_unit` (same conventions and work arrays)."""
    cm[0] = 1.0
    sm[0] = 0.0
    for m in range(1, l_max + 1):
        cm[m] = ux * cm[m - 1] - uy * sm[m - 1]
        sm[m] = ux * sm[m - 1] + uy * cm[m - 1]
    dfact = 1.0
    for m in range(l_max + 1):
        if m > 0:
            dfact *= 2 * m - 1
        q[m, m] = dfact
        if m + 1 <= l_max:
            q[m + 1, m] = (2 * m + 1) * uz * dfact
        for l in range(m + 2, l_max + 1):
            q[l, m] = ((2 * l - 1) * uz * q[l - 1, m] - (l + m - 1) * q[l - 2, m]) / (l - m)
    for l in range(l_max + 1):
        base = l * l + l
        out_y[base] = pref[l, 0] * q[l, 0]
        for m in range(1, l + 1):
            f = pref[l, m] * q[l, m]
            out_y[base + m] = f * cm[m]
            out_y[base - m] = f * sm[m]


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
