"""Cubic Hermite spline evaluation of the tabulated radial functions (Numba).

On the interval ``[k, k+1]`` of the grid (spacing ``1/inv_spacing``), at ``t = d inv_spacing - k``
and with ``dy = y_{k+1} - y_k``, the interpolant and its d-derivative are

    h  = y_k + t^2 (3 - 2t) dy + t (t-1)^2 spacing m_k + t^2 (t-1) spacing m_{k+1},
    h' = 6 t (1-t) inv_spacing dy + (t-1)(3t-1) m_k + t (3t-2) m_{k+1},

(y tabulated values, m tabulated d-derivatives): the usual Hermite basis with
``h00 = 1 - h01``, written on the difference dy so that h' has no cancellation between two
large ``inv_spacing * y`` terms.

error_model="numpy" removes the ZeroDivisionError branch of ``1 / inv_spacing``, which would
otherwise keep the reference counting of the four array arguments at every call.
"""

from __future__ import annotations

from numba import njit


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def hermite_weights(d, inv_spacing, n_intervals):
    """Interval ``k`` of distance d and the weights of the interpolant (module docstring):
    ``h = y_k + a_dy dy + a_m0 m_k + a_m1 m_{k+1}``, ``h' = b_dy dy + b_m0 m_k + b_m1 m_{k+1}``.
    Returns ``(k, a_dy, a_m0, a_m1, b_dy, b_m0, b_m1)``."""
    s = d * inv_spacing
    k = int(s)
    if k >= n_intervals:
        k = n_intervals - 1
    t = s - k
    t2 = t * t
    spacing = 1.0 / inv_spacing
    return (k, t2 * (3.0 - 2.0 * t), t * (t - 1.0) * (t - 1.0) * spacing,
            t2 * (t - 1.0) * spacing, 6.0 * t * (1.0 - t) * inv_spacing,
            (t - 1.0) * (3.0 * t - 1.0), t * (3.0 * t - 2.0))


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def hermite_eval(d, inv_spacing, values, derivatives, out_h, out_dh):
    """Spline values and d-derivatives of all tabulated columns at distance d.

    d : float, Å, 0 <= d <= cutoff.
    inv_spacing : float, 1/Å, grid spacing inverse.
    values, derivatives : (G, K) float64 tabulated h and dh/dd.
    out_h, out_dh : (K,) float64 outputs; out_dh is the exact derivative of the interpolant.
    """
    k, a_dy, a_m0, a_m1, b_dy, b_m0, b_m1 = hermite_weights(d, inv_spacing,
                                                            values.shape[0] - 1)
    y0 = values[k]
    y1 = values[k + 1]
    m0 = derivatives[k]
    m1 = derivatives[k + 1]
    for c in range(out_h.shape[0]):
        # loads before the stores (the outputs could alias the table as far as LLVM knows)
        y = y0[c]
        dy = y1[c] - y
        g0 = m0[c]
        g1 = m1[c]
        out_h[c] = y + a_dy * dy + a_m0 * g0 + a_m1 * g1
        out_dh[c] = b_dy * dy + b_m0 * g0 + b_m1 * g1


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def hermite_values(d, inv_spacing, values, derivatives, out_h):
    """Values only of :func:`hermite_eval` (same interpolant)."""
    k, a_dy, a_m0, a_m1, _, _, _ = hermite_weights(d, inv_spacing, values.shape[0] - 1)
    y0 = values[k]
    y1 = values[k + 1]
    m0 = derivatives[k]
    m1 = derivatives[k + 1]
    for c in range(out_h.shape[0]):
        out_h[c] = y0[c] + a_dy * (y1[c] - y0[c]) + a_m0 * m0[c] + a_m1 * m1[c]
