"""Forward-mode (directional) derivatives of the descriptors: ``Xdot_i = sum_j dX_i/dr_j . v_j``.

A directional derivative along atomic velocities costs about one adjoint channel: one pass
over the pairs (:func:`numbec.descriptors.tangent_numba.expansion_tangents`) gives the tangent
of the expansion coefficients, and since the scalar and vector descriptors are quadratic
forms of the coefficients (plus a linear two-body part), their tangents follow exactly from
the value kernels by polarisation: for ``X = B(c, c)``,
``Xdot = B(c, cdot) + B(cdot, c) = (X(c + cdot) - X(c - cdot)) / 2`` (no finite-difference
error; ``cdot`` is rescaled to the size of ``c`` first so that nothing cancels).

Directions are given per pair (``u_p`` (3,) Å, the rate of the pair vector
``d_p = r_j + S - r_i``): :func:`relative_directions` makes ``u_p = w_j - w_i`` from per-atom
velocities w, :func:`weighted_directions` makes ``u^a_p = -(d_p)_a w_j``, the directions of
the charge-transfer term ``sum_i d_ij (x) dq_i/dr_j`` of a periodic cell's BECs
(docs/method.md, "Adjoint derivatives").
"""

from __future__ import annotations

import numpy as np

from numbec.descriptors import scalar_numba as _sc
from numbec.descriptors import tangent_numba as _tn
from numbec.descriptors import vector_numba as _vn
from numbec.descriptors.expansion import Expansion
from numbec.descriptors.neighbors import serial_if_small

__all__ = ["descriptor_tangents", "relative_directions", "weighted_directions"]


def _pair_centres(ex: Expansion) -> np.ndarray:
    return np.repeat(np.arange(ex.pairs.n_atoms), np.diff(ex.pairs.offsets))


def relative_directions(ex: Expansion, velocities) -> np.ndarray:
    """(P, T, 3) float64 ``u_p = w[t, j] - w[t, i]`` for pair p = (centre i, neighbour
    image j) from velocities ``w`` (T, N, 3) (Å per unit of the tangent parameter)."""
    w = np.asarray(velocities, dtype=np.float64)
    nl = ex.pairs
    return np.ascontiguousarray((w[:, nl.neighbors] - w[:, _pair_centres(ex)]).transpose(1, 0, 2))


def weighted_directions(ex: Expansion, velocities) -> np.ndarray:
    """(P, 3 T, 3) float64 ``u_p[3 t + a] = -(d_p)_a w[t, j]`` (d_p = ``pairs.vectors[p]``,
    Å; w (T, N, 3)): the tangent along these gives ``sum_p (r_i - r_j^image)_a dy_i/dd_p .
    w_j``, the charge-transfer part of ``sum_j Z_j w_j`` for a local charge y_i."""
    w = np.asarray(velocities, dtype=np.float64)
    nl = ex.pairs
    wj = w[:, nl.neighbors].transpose(1, 0, 2)                   # (P, T, 3)
    out = -nl.vectors[:, None, :, None] * wj[:, :, None, :]     # (P, T, a, 3)
    return np.ascontiguousarray(out.reshape(nl.neighbors.size, -1, 3))


def descriptor_tangents(ex: Expansion, directions, vector: int = 0):
    """Tangents of the scalar (and vector) descriptors along T sets of pair directions.

    ex : the Expansion of the structure (``l2_max = 1`` when ``vector``);
    directions : (P, T, 3) float64 (:func:`relative_directions`, :func:`weighted_directions`);
    vector : the number of leading directions whose vector-descriptor tangent is wanted too
    (True: all).
    Returns ``xdot`` (T, N, D) float64, ``dX_i/dt`` in the units of X per unit of the tangent
    parameter, and ``vdot`` (T_v, N, 3, Dv) of the first T_v = ``vector`` directions (None
    for 0).
    """
    from numbec.descriptors.scalar import angular_feature_table, angular_gram_index
    from numbec.descriptors.vector import _dense_feature_args

    directions = np.ascontiguousarray(directions, dtype=np.float64)
    nl = ex.pairs
    if directions.ndim != 3 or directions.shape[::2] != (nl.neighbors.size, 3):
        raise ValueError(f"directions must have shape (P, T, 3) with P = {nl.neighbors.size} "
                         f"pairs, got {directions.shape}")
    s = ex.settings
    l2_max = int(np.sqrt(ex.c2.shape[2]) + 0.5) - 1
    n_t, n = directions.shape[1], ex.c2.shape[0]
    with serial_if_small(nl.n_pairs):
        c2dot, c3dot = _tn.expansion_tangents(
            directions, nl.offsets, ex.groups, ex.ends, nl.vectors, nl.distances, l2_max,
            ex.radial.cutoff, ex.radial.inv_spacing, ex.radial.values, ex.radial.derivatives,
            s.n_radial, s.l_max, ex.angular.cutoff, ex.angular.inv_spacing,
            ex.angular.values, ex.angular.derivatives, s.n_angular)
        # one scale per tangent for both coefficient sets: the polarisation needs the same
        # cdot in c2 and c3
        lam = _common_scale(ex, c2dot, c3dot)
        c2s = _stack(ex.c2, c2dot, lam)
        c3s = _stack(ex.c3, c3dot, lam)
        w2 = float(np.sqrt(s.radial_weight))
        x = _sc.power_spectrum(c2s, c3s, w2, angular_gram_index(s), angular_feature_table(s)[3])
        xdot = _half_difference(x, n_t, n, lam)
        vdot = None
        n_v = n_t if vector is True else min(int(vector), n_t)
        if n_v:
            lam_v = lam[:n_v]
            v = _vn.vector_features(_stack(ex.c2, c2dot[:n_v], lam_v),
                                    _stack(ex.c3, c3dot[:n_v], lam_v),
                                    *_dense_feature_args(s))
            vdot = _half_difference(v, n_v, n, lam_v)
    return xdot, vdot


def _common_scale(ex, c2dot, c3dot) -> np.ndarray:
    n_t = c2dot.shape[0]
    size = np.sqrt(np.sum(ex.c2 ** 2) + np.sum(ex.c3 ** 2))
    rate = np.sqrt(np.sum(c2dot.reshape(n_t, -1) ** 2, axis=1)
                   + np.sum(c3dot.reshape(n_t, -1) ** 2, axis=1))
    ok = (rate > 0) & (size > 0)
    return np.where(ok, size / np.where(ok, rate, 1.0), 1.0)


def _stack(coef, rate, lam) -> np.ndarray:
    """``c + lam cdot`` of every tangent, then ``c - lam cdot``, stacked along the atom axis:
    (2 T N, rows, LM)."""
    out = np.empty((2,) + rate.shape)
    np.multiply(rate, lam[:, None, None, None], out=out[0])
    np.negative(out[0], out=out[1])
    out += coef
    return out.reshape((-1,) + coef.shape[1:])


def _half_difference(values, n_t, n, lam) -> np.ndarray:
    values = values.reshape((2, n_t, n) + values.shape[1:])
    scale = (0.5 / lam).reshape((n_t,) + (1,) * (values.ndim - 2))
    return (values[0] - values[1]) * scale
