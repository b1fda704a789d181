"""Forward-mode (directional) derivatives of the descriptors: ``Xdot_i = sum_j dX_i/dr_j . v_j``.

A directional derivative along atomic velocities costs about one adjoint channel: one pass
over the pairs (:func:`numbec.descriptors.tangent_numba.expansion_tangents`) gives the tangent
of the expansion coefficients, and since the scalar and vector descriptors are quadratic
forms of the coefficients (plus a linear two-body part), their tangents follow exactly from
the bilinear forms with one argument replaced by the tangent: for ``X = B(c, c)``,
``Xdot = B(cdot, c) + B(c, cdot)``, evaluated in one product
(:func:`numbec.descriptors.tangent_numba.power_spectrum_tangents`,
:func:`~numbec.descriptors.tangent_numba.vector_feature_tangents`; exact, no finite
differences).

Directions are given per pair (``u_p`` (3,) Å, the rate of the pair vector
``d_p = r_j + S - r_i``): :func:`relative_directions` makes ``u_p = w_j - w_i`` from per-atom
velocities w, :func:`weighted_directions` makes ``u^a_p = -(d_p)_a w_j``, the directions of
the charge-transfer term ``sum_i d_ij (x) dq_i/dr_j`` of a periodic cell's BECs
(docs/method.md, "Adjoint derivatives").
"""

from __future__ import annotations

import functools

import numpy as np

from numbec.descriptors import tangent_numba as _tn
from numbec.descriptors.expansion import Expansion
from numbec.descriptors.neighbors import serial_if_small

__all__ = ["descriptor_tangents", "pair_directions", "relative_directions", "weighted_directions"]


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


def pair_directions(ex: Expansion, velocities, weighted: bool) -> np.ndarray:
    """(P, T, 3) :func:`relative_directions` of velocities w (T, N, 3) followed, with
    ``weighted``, by the (P, 3 T, 3) :func:`weighted_directions`, in one pass over the
    pairs."""
    nl = ex.pairs
    w = np.ascontiguousarray(velocities, dtype=np.float64)
    with serial_if_small(nl.n_pairs):
        return _tn.pair_directions(nl.offsets, nl.neighbors, nl.vectors, w, bool(weighted))


@functools.lru_cache(maxsize=32)
def _gram_indices(settings) -> tuple:
    """Arguments of :func:`numbec.descriptors.tangent_numba.power_spectrum_tangents`: the
    position (K,) int64 of every angular feature in the flattened per-l Gram matrices
    (:func:`numbec.descriptors.scalar.angular_gram_index`), of its transpose, and the
    feature weights (K,) float64."""
    from numbec.descriptors.scalar import angular_feature_table, angular_gram_index

    row_a, row_b, l_of, weight = angular_feature_table(settings)
    n_rows = settings.n_species * settings.n_angular
    return (angular_gram_index(settings), (l_of * n_rows + row_b) * n_rows + row_a, weight)


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
    from numbec.descriptors.vector import _dense_feature_args

    directions = np.ascontiguousarray(directions, dtype=np.float64)
    nl = ex.pairs
    if directions.ndim != 3 or directions.shape[::2] != (nl.neighbors.size, 3):
        raise ValueError(f"directions must have shape (P, T, 3) with P = {nl.neighbors.size} "
                         f"pairs, got {directions.shape}")
    s = ex.settings
    n_t = directions.shape[1]
    c2dot, c3dot = ex.coefficient_tangents(directions)
    with serial_if_small(nl.n_pairs):
        w2 = float(np.sqrt(s.radial_weight))
        xdot = _tn.power_spectrum_tangents(c2dot, ex.c3, c3dot, w2, *_gram_indices(s))
        vdot = None
        n_v = n_t if vector is True else min(int(vector), n_t)
        if n_v:
            vdot = _tn.vector_feature_tangents(c2dot[:n_v], ex.c3, c3dot[:n_v],
                                               *_dense_feature_args(s))
    return xdot, vdot
