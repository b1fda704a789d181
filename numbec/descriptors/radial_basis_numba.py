"""Cubic Hermite spline evaluation of the tabulated radial functions (Numba)."""

from __future__ import annotations

from numba import njit


@njit(cache=True)
def hermite_eval(d, inv_spacing, values, derivatives, out_h, out_dh):
    """Spline values and d-derivatives of all tabulated columns at distance d.

    d : float, Å, 0 <= d <= cutoff.
    inv_spacing : float, 1/Å, grid spacing inverse.
    values, derivatives : (G, K) float64 tabulated h and dh/dd.
    out_h, out_dh : (K,) float64 outputs; out_dh is the exact derivative of the interpolant.
    """
    n_intervals = values.shape[0] - 1
    s = d * inv_spacing
    k = int(s)
    if k >= n_intervals:
        k = n_intervals - 1
    t = s - k
    t2 = t * t
    t3 = t2 * t
    spacing = 1.0 / inv_spacing
    a0 = 2.0 * t3 - 3.0 * t2 + 1.0
    a1 = (t3 - 2.0 * t2 + t) * spacing
    a2 = -2.0 * t3 + 3.0 * t2
    a3 = (t3 - t2) * spacing
    b0 = (6.0 * t2 - 6.0 * t) * inv_spacing
    b1 = 3.0 * t2 - 4.0 * t + 1.0
    b2 = (-6.0 * t2 + 6.0 * t) * inv_spacing
    b3 = 3.0 * t2 - 2.0 * t
    for c in range(values.shape[1]):
        y0 = values[k, c]
        y1 = values[k + 1, c]
        m0 = derivatives[k, c]
        m1 = derivatives[k + 1, c]
        out_h[c] = a0 * y0 + a1 * m0 + a2 * y1 + a3 * m1
        out_dh[c] = b0 * y0 + b1 * m0 + b2 * y1 + b3 * m1


@njit(cache=True)
def hermite_values(d, inv_spacing, values, derivatives, out_h):
    """Values only of :func:`hermite_eval` (same interpolant)."""
    n_intervals = values.shape[0] - 1
    s = d * inv_spacing
    k = int(s)
    if k >= n_intervals:
        k = n_intervals - 1
    t = s - k
    t2 = t * t
    t3 = t2 * t
    spacing = 1.0 / inv_spacing
    a0 = 2.0 * t3 - 3.0 * t2 + 1.0
    a1 = (t3 - 2.0 * t2 + t) * spacing
    a2 = -2.0 * t3 + 3.0 * t2
    a3 = (t3 - t2) * spacing
    for c in range(values.shape[1]):
        out_h[c] = (a0 * values[k, c] + a1 * derivatives[k, c] + a2 * values[k + 1, c]
                    + a3 * derivatives[k + 1, c])
