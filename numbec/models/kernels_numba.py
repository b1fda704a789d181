"""Numba kernels of the element-wise kernel algebra of a prediction, for the atoms of one
species against the sparse points of that species (a "species kernel").

The matrix products against the sparse set stay in BLAS (numpy); what lies between them is
element-wise work over (atoms x sparse points x channels). Done in NumPy it is a dozen passes
with temporaries, each of which holds the GIL for its call overhead, so frames computed on
concurrent threads serialise there; here it is one pass that releases the GIL.

Channels (index c of ``dk``): 0 the kernel charge ``q_i = sum_b w_b c_ib**zeta`` (monopole
model, if present), then the last three the Cartesian components of the dipole model's
``mu_i = V_i . sum_b c_ib**(zeta-1) wb_b`` (if present), with ``c_ib = x_i . x_b``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from numbec.descriptors.pair_block_numba import FASTMATH


@njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def species_kernel_derivatives(cos, zeta, w, coef, dk, q, kernel_pow, radial):
    """Kernel values and derivatives of one species kernel.

    cos : (r, m) c_ib. zeta : int >= 1. w : (m,) monopole weights, or (0,) without the monopole
    model. coef : (r, 3, m) ``V_i^a . wb_b`` of the dipole model, or (0, 3, 0) without it (or
    for zeta = 1, where its kernel factor is constant).
    Outputs: dk (r, C, m) ``d k_{icb} / d c_ib``: channel 0 ``zeta c^(zeta-1) w_b`` (monopole),
    channels C-3..C-1 ``(zeta-1) c^(zeta-2) coef[i, a, b]`` (dipole; not written without coef,
    so the caller passes zeros there);
    q (r,) ``sum_b c^zeta w_b``; kernel_pow (r, m) ``c^(zeta-1)``; radial (r, C)
    ``sum_b dk_{icb} c_ib`` (the part of the gradient along x_i).
    """
    n_rows, m = cos.shape
    n_ch = dk.shape[1]
    mono = w.shape[0] > 0
    dip = coef.shape[0] > 0
    ch_dip = n_ch - 3  # first dipole channel
    low = np.empty(m)
    # one simple loop over the sparse points per quantity: each vectorises
    for i in range(n_rows):
        cr = cos[i]
        cd = kernel_pow[i]
        for b in range(m):
            low[b] = 1.0
        for _ in range(zeta - 2):
            for b in range(m):
                low[b] *= cr[b]
        if zeta >= 2:
            for b in range(m):
                cd[b] = low[b] * cr[b]
        else:
            for b in range(m):
                cd[b] = 1.0
        if mono:
            d0 = dk[i, 0]
            q_i = 0.0
            r0 = 0.0
            for b in range(m):
                v = cd[b] * w[b]
                q_i += v * cr[b]
                d0[b] = zeta * v
                r0 += zeta * v * cr[b]
            q[i] = q_i
            radial[i, 0] = r0
        else:
            q[i] = 0.0
        if dip:
            f = zeta - 1.0
            for a in range(3):
                da = dk[i, ch_dip + a]
                ca = coef[i, a]
                ra = 0.0
                for b in range(m):
                    v = f * low[b] * ca[b]
                    da[b] = v
                    ra += v * cr[b]
                radial[i, ch_dip + a] = ra
        elif n_ch >= 3 and ch_dip >= int(mono):
            for a in range(3):
                radial[i, ch_dip + a] = 0.0


@njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def finish_gradient(grad, radial, unit, norms):
    """In place: ``grad[i, c, :] = (grad[i, c, :] - radial[i, c] unit[i, :]) / norms[i]``
    (grad (r, C, D) holds ``sum_b dk_{icb} x_b``), the descriptor gradient of a kernel sum."""
    for i in range(grad.shape[0]):
        inv = 1.0 / norms[i]
        for ch in range(grad.shape[1]):
            rc = radial[i, ch]
            g = grad[i, ch]
            x = unit[i]
            for k in range(g.shape[0]):
                g[k] = (g[k] - rc * x[k]) * inv
