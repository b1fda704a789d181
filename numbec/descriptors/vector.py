"""Vector (lambda = 1) descriptor for the dipole model (docs/method.md#descriptors).

Per centre i and Cartesian component a = x, y, z (the real Y_1mu are ordered (y, z, x); they
are re-ordered here so that ``values[i, :, k]`` is an ordinary Cartesian vector):

- two-body part, ``n_species * n_radial`` features: ``sqrt(beta) c^J_{i,n1a}`` with the radial
  basis of ``cutoff_radial``;
- product part, ``n_species**2 * n_angular**2 * l_max`` features: for every ordered species
  pair (J, J'), n, n' and l = 0..l_max-1 (the pairing l' = l + 1; l' = l - 1 is the same set
  with the roles of (J, n) and (J', n') exchanged, so it is not repeated),
  ``sqrt(1 - beta) sum_{m m'} C^a_{l m, l+1 m'} c^J_{i,nlm} c^{J'}_{i,n'(l+1)m'}``,
  with the angular-cutoff coefficients. ``C^a`` are the real Gaunt coefficients
  ``int Y_1a Y_lm Y_{l+1,m'} dOmega`` (real Clebsch-Gordan coefficients for l + l' + 1 even, up
  to a constant), scaled so that ``sum_{m m'} (C^a_{mm'})**2 = 1``.
  Order: (J, J') lexicographic, then n, n', then l (fastest).

For 2 species, n_radial = n_angular = 8, l_max = 4: Dv = 16 + 4 * 64 * 4 = 1040.

The descriptor rotates as a vector, ``X(R r) = R X(r)``, and is translation and permutation
invariant. It is a polar vector (odd under inversion) since l + l' is odd.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from numbec.descriptors import vector_numba as _vn
from numbec.descriptors.expansion import JACOBIAN_BLOCK_BYTES, Expansion, expand
from numbec.descriptors.neighbors import NeighborList, serial_if_small
from numbec.descriptors.scalar import descriptors_from_expansion
from numbec.descriptors.settings import DescriptorSettings
from numbec.descriptors.spherical_harmonics_numba import sph_harm_many

__all__ = ["VectorDescriptors", "compute_vector_descriptors",
           "compute_scalar_and_vector_descriptors", "vector_coupling_table"]


@functools.lru_cache(maxsize=8)
def vector_coupling_table(l_max: int):
    """Sparse real coupling of (l, l+1) to a Cartesian vector, l = 0..l_max-1.

    Returns ``start`` (l_max+1,) int64 (entries of l are ``start[l]:start[l+1]``), and per
    entry ``cart`` (0, 1, 2 = x, y, z), ``m`` (0..2l, offset within l), ``mp`` (0..2l+2, offset
    within l + 1) int64 and ``value`` float64.
    """
    # Gauss-Legendre in cos(theta) x uniform phi integrates degree <= 2 l_max + 1 exactly
    n_theta = l_max + 4
    n_phi = 2 * l_max + 6
    ct, wt = np.polynomial.legendre.leggauss(n_theta)
    phi = 2.0 * np.pi * np.arange(n_phi) / n_phi
    st = np.sqrt(1.0 - ct**2)
    points = np.stack([np.outer(st, np.cos(phi)), np.outer(st, np.sin(phi)),
                       np.outer(ct, np.ones(n_phi))], axis=-1).reshape(-1, 3)
    weights = np.repeat(wt, n_phi) * (2.0 * np.pi / n_phi)
    ylm, _ = sph_harm_many(points, l_max)
    y1 = ylm[:, [3, 1, 2]]  # Cartesian x, y, z
    start, cart, m_idx, mp_idx, value = [0], [], [], [], []
    for l in range(l_max):
        yl = ylm[:, l * l:(l + 1) ** 2]
        yl1 = ylm[:, (l + 1) ** 2:(l + 2) ** 2]
        gaunt = np.einsum("p,pa,pm,pn->amn", weights, y1, yl, yl1)
        gaunt /= math.sqrt(np.sum(gaunt[0] ** 2))
        for a, m, mp in zip(*np.nonzero(np.abs(gaunt) > 1e-12), strict=True):
            cart.append(a)
            m_idx.append(m)
            mp_idx.append(mp)
            value.append(gaunt[a, m, mp])
        start.append(len(value))
    out = (np.array(start, np.int64), np.array(cart, np.int64), np.array(m_idx, np.int64),
           np.array(mp_idx, np.int64), np.array(value, np.float64))
    for arr in out:
        arr.flags.writeable = False
    return out


@functools.lru_cache(maxsize=32)
def vector_feature_table(settings: DescriptorSettings):
    """``row_a``, ``row_b`` (rows J n, J' n' of c3), ``l_of`` and ``weight`` (K,) of the product
    part in storage order, and ``dense_index`` (K,) int64 = ``(l_of * R + row_a) * R + row_b``
    (R = S * n_angular), the position of each feature in a dense (l, A, B) array (read-only
    arrays)."""
    s, n_ang, l_max = settings.n_species, settings.n_angular, settings.l_max
    scale = math.sqrt(1.0 - settings.radial_weight)
    rows = [(ja * n_ang + na, jb * n_ang + nb, l)
            for ja in range(s) for jb in range(s)
            for na in range(n_ang) for nb in range(n_ang) for l in range(l_max)]
    row_a, row_b, l_of = (np.array(col, np.int64) for col in zip(*rows, strict=True))
    weight = np.full(len(rows), scale)
    n_rows = s * n_ang
    dense_index = (l_of * n_rows + row_a) * n_rows + row_b
    out = (row_a, row_b, l_of, weight, dense_index)
    for arr in out:
        arr.flags.writeable = False
    assert row_a.size + settings.n_radial_features == settings.n_vector_features
    return out


def _feature_args(settings: DescriptorSettings) -> tuple:
    """Arguments of the Jacobian kernel after the coefficients: w2, row_a, row_b, l_of,
    weight and the coupling table."""
    return ((math.sqrt(settings.radial_weight),) + vector_feature_table(settings)[:4]
            + vector_coupling_table(settings.l_max))


def _dense_feature_args(settings: DescriptorSettings) -> tuple:
    """Arguments of the value and adjoint kernels after the coefficients: w2, dense_index,
    weight and the coupling table."""
    _, _, _, weight, dense_index = vector_feature_table(settings)
    return ((math.sqrt(settings.radial_weight), dense_index, weight)
            + vector_coupling_table(settings.l_max))


@dataclass
class VectorDescriptors:
    """Vector descriptors of one structure.

    Attributes
    ----------
    values : (N, 3, Dv) float64, Cartesian x, y, z components (layout in the module docstring).
    pairs : NeighborList.
    gradients : (P, 3, 3, Dv) float64, 1/Å, or None; ``[p, a, b, k] = dX^a_{i,k}/dr_{j,b}``
        for pair p = (centre i, neighbour image j); the centre term is minus the pair sum.
    settings : DescriptorSettings.
    """

    values: np.ndarray
    pairs: NeighborList
    settings: DescriptorSettings
    gradients: np.ndarray | None = None
    _expansion: Expansion | None = field(default=None, repr=False)

    @property
    def expansion(self) -> Expansion:
        """The neighbour list, species grouping and expansion coefficients behind the values
        (``adjoint_arrays``, ``backprop``, ``scatter_monopole``, ``scatter_with_self``)."""
        return self._expansion

    def vector_contraction(self, weights: np.ndarray) -> np.ndarray:
        """``out[j, a, b] = sum_i sum_k V[i, k] dX^a_{i,k}/dr_{j,b}`` (self terms included):
        d(sum_i mu_i)_a/dr_{j,b} for ``mu_i = sum_k V[i, k] X_i[:, k]``.

        weights : (N, Dv) V -> (N, 3, 3) float64; or (N, C, Dv) for C independent sets of
        weights at once -> (N, C, 3, 3).
        """
        n, _, dv = self.values.shape
        weights = np.ascontiguousarray(weights, dtype=np.float64)
        channels = weights.ndim == 3
        if not (weights.shape == (n, dv) or (channels and weights.shape[::2] == (n, dv))):
            raise ValueError(f"vector weights must have shape {(n, dv)} (N, Dv) or (N, C, Dv), "
                             f"got {weights.shape}")
        if not np.isfinite(weights).all():
            raise ValueError("vector weights contain non-finite values")
        stacked = weights if channels else weights[:, None, :]
        ex = self._expansion
        a2, a3 = ex.adjoint_arrays(3 * stacked.shape[1])
        self.add_adjoint(stacked, a2, a3)
        out = ex.scatter_with_self(ex.backprop(a2, a3)).reshape(n, stacked.shape[1], 3, 3)
        return out if channels else out[:, 0]

    def add_adjoint(self, weights: np.ndarray, a2: np.ndarray, a3: np.ndarray,
                    channel: int = 0) -> None:
        """Add the coefficient adjoints of ``y_{i,c,a} = V[i, c] . X^a_i`` to channel
        ``channel + 3 c + a`` of a2, a3 (from ``Expansion.adjoint_arrays``).

        weights : (N, C, Dv) float64 V, C-contiguous (see ``StructureDescriptors.add_adjoint``
        for sharing one back-propagation).
        """
        n, _, dv = self.values.shape
        weights = np.ascontiguousarray(weights, dtype=np.float64)
        if weights.ndim != 3 or weights.shape[::2] != (n, dv):
            raise ValueError(f"vector weights must have shape (N, C, Dv) = ({n}, C, {dv}), "
                             f"got {weights.shape}")
        if not np.isfinite(weights).all():
            raise ValueError("vector weights contain non-finite values")
        ex = self._expansion
        ex.check_adjoint_arrays(a2, a3, channel, 3 * weights.shape[1])
        with serial_if_small(self.pairs.n_pairs):
            _vn.vector_adjoint(ex.c2, ex.c3, weights, *_dense_feature_args(self.settings), a2,
                               a3, channel)


def compute_vector_descriptors(positions, numbers, cell, pbc, settings: DescriptorSettings,
                               gradients: bool = False) -> VectorDescriptors:
    """Vector descriptors (and optionally their pair Jacobian) of one structure.

    Arguments as :func:`numbec.descriptors.compute_descriptors`.
    """
    ex = expand(positions, numbers, cell, pbc, settings, l2_max=1)
    return vector_descriptors_from_expansion(ex, gradients)


def vector_descriptors_from_expansion(ex: Expansion, gradients: bool = False
                                      ) -> VectorDescriptors:
    """Vector descriptors from an expansion with ``l2_max = 1`` (shared, e.g., with the scalar
    descriptors: :func:`numbec.descriptors.scalar.descriptors_from_expansion`)."""
    if ex.c2.shape[2] != 4:
        raise ValueError("vector descriptors need an expansion with l2_max = 1")
    jac = None
    with serial_if_small(ex.pairs.n_pairs):
        values = _vn.vector_features(ex.c2, ex.c3, *_dense_feature_args(ex.settings))
        if gradients:
            jac = _vn.vector_jacobian(ex.c2, ex.c3, *ex.pair_args(), *_feature_args(ex.settings))
    return VectorDescriptors(values, ex.pairs, ex.settings, jac, ex)


def jacobian_blocks(ex: Expansion, max_bytes: int = JACOBIAN_BLOCK_BYTES):
    """The pair Jacobian of the vector descriptors, a block of whole centres at a time.

    The whole Jacobian is large: (P, 3, 3, Dv) float64 is 350 MiB for the 72-atom quartz cell
    with the default settings (4,858 pairs, Dv = 1,040), and grows with the cell. Blocks of
    at most ``max_bytes`` (at least one centre) bound the memory and reuse it.

    Parameters
    ----------
    ex : Expansion with ``l2_max = 1`` (as for :func:`vector_descriptors_from_expansion`).
    max_bytes : int

    Yields
    ------
    (lo, jac) : int and (hi - lo, 3, 3, Dv) float64, 1/Å: rows ``lo .. hi - 1`` of the
        ``gradients`` of :class:`VectorDescriptors` (pairs of ``ex.pairs``; ``[p, a, b, k] =
        dX^a_{i,k}/dr_{j,b}``). The next block starts at ``hi``; consumers must be done with
        ``jac`` before asking for it.
    """
    if ex.c2.shape[2] != 4:
        raise ValueError("vector descriptors need an expansion with l2_max = 1")
    yield from ex.jacobian_blocks(_vn.vector_jacobian, _feature_args(ex.settings),
                                  9 * ex.settings.n_vector_features * 8, max_bytes)


def compute_scalar_and_vector_descriptors(positions, numbers, cell, pbc,
                                          settings: DescriptorSettings, pairs=None):
    """Scalar and vector descriptors of one structure from one neighbour list and one
    expansion (l2_max = 1): ``(StructureDescriptors, VectorDescriptors)``, both without
    Jacobians. Their ``add_adjoint`` methods can share one back-propagation. ``pairs``: a
    ready neighbour list (see :func:`numbec.descriptors.expansion.expand`)."""
    ex = expand(positions, numbers, cell, pbc, settings, l2_max=1, pairs=pairs)
    return descriptors_from_expansion(ex), vector_descriptors_from_expansion(ex)
