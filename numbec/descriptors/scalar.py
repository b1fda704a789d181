"""Scalar (rotation-invariant) descriptors: radial part X2 and angular power spectrum X3.

For centre i, neighbour species channel J (the centre's own species does not enter; models
keep separate references per centre species):

- two-body ``X2[J * n_radial + n] = c^J_{i,n00}`` with the radial basis of ``cutoff_radial``
  (``c^J_{i,n00} = sum_{j in J} h_n0(d_ij) Y_00``);
- three-body power spectrum, with ``c`` the coefficients of ``cutoff_angular``,
  ``p^{JJ'}_{nn'l} = sqrt(8 pi^2 / (2l+1)) sum_m c^J_{nlm} c^{J'}_{n'lm}``.
  The self term (j = k in the double sum over neighbours) is KEPT (standard SOAP power
  spectrum; it makes the descriptor a plain function of the density coefficients).
  Only J <= J' (species order of ``settings.species``) and, for J == J', n <= n' are stored;
  off-diagonal entries carry a factor sqrt(2), so that the dot product of two descriptors equals
  the dot product of the full (J, J', n, n') arrays.
  Order: species pairs (J, J') lexicographic, then n, then n', then l (fastest).
- ``X = [sqrt(beta) X2, sqrt(1 - beta) X3]``, beta = ``settings.radial_weight``; not normalised.

For 2 species, n_radial = n_angular = 8, l_max = 4: D = 16 + (2*36 + 64) * 5 = 696.

Each periodic image of a neighbour is a separate term; a centre's own periodic images are
neighbours like any other atom (and enter the channel of its species).

Derivatives: ``gradients[p, b, k] = dX_{i,k}/dr_{j,b}`` for pair p = (centre i, neighbour
image j), moving only that image; the centre derivative is ``-sum_p`` over the pairs of i.
The adjoint contractions push ``G = dy/dX`` back to the expansion coefficients
(dy/dc) and then once through every pair (docs/method.md#adjoint-derivatives); the Jacobian
is never stored.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from numbec.descriptors import scalar_numba as _sc
from numbec.descriptors.expansion import JACOBIAN_BLOCK_BYTES, Expansion, expand
from numbec.descriptors.neighbors import NeighborList, serial_if_small
from numbec.descriptors.settings import DescriptorSettings

__all__ = ["StructureDescriptors", "compute_descriptors", "angular_feature_table",
           "jacobian_blocks"]


@functools.lru_cache(maxsize=32)
def angular_feature_table(settings: DescriptorSettings):
    """Index tables of the angular features, in storage order.

    Returns ``row_a``, ``row_b`` (K,) int64 (rows ``J * n_angular + n`` of c3), ``l_of`` (K,)
    int64 and ``weight`` (K,) float64 = sqrt(1 - beta) sqrt(8 pi^2/(2l+1)) (x sqrt(2) off the
    diagonal). Arrays are read-only.
    """
    s, n_ang, l_max = settings.n_species, settings.n_angular, settings.l_max
    scale = math.sqrt(1.0 - settings.radial_weight)
    row_a, row_b, l_of, weight = [], [], [], []
    for ja in range(s):
        for jb in range(ja, s):
            for na in range(n_ang):
                for nb in range(na if ja == jb else 0, n_ang):
                    sym = 1.0 if (ja == jb and na == nb) else math.sqrt(2.0)
                    for l in range(l_max + 1):
                        row_a.append(ja * n_ang + na)
                        row_b.append(jb * n_ang + nb)
                        l_of.append(l)
                        weight.append(scale * sym * math.sqrt(8.0 * math.pi**2 / (2 * l + 1)))
    out = (np.array(row_a, np.int64), np.array(row_b, np.int64), np.array(l_of, np.int64),
           np.array(weight, np.float64))
    for arr in out:
        arr.flags.writeable = False
    assert out[0].size == settings.n_angular_features
    return out


@functools.lru_cache(maxsize=32)
def angular_gram_index(settings: DescriptorSettings) -> np.ndarray:
    """(K,) int64 ``(l_k R + a_k) R + b_k`` (R = S * n_angular rows of c3): the position of
    each angular feature in the flattened per-l Gram matrices of the rows (read-only)."""
    row_a, row_b, l_of, _ = angular_feature_table(settings)
    n_rows = settings.n_species * settings.n_angular
    out = (l_of * n_rows + row_a) * n_rows + row_b
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=32)
def dense_feature_map(settings: DescriptorSettings):
    """The angular features as dense symmetric matrices: ``index`` (int64) and ``weight``
    (float64), both ((l_max+1) * R * R,) over (l, r, s) flattened (R = S * n_angular rows of c3),
    with ``index`` the feature k of rows {r, s} and that l, and ``weight`` its weight w_k, twice
    on the diagonal r = s (the derivative of ``c_r . c_r``). Every (l, r, s) is a feature.
    Read-only arrays."""
    row_a, row_b, l_of, weight = angular_feature_table(settings)
    n_rows = settings.n_species * settings.n_angular
    index = np.full((settings.l_max + 1, n_rows, n_rows), -1, dtype=np.int64)
    dense = np.zeros((settings.l_max + 1, n_rows, n_rows))
    index[l_of, row_a, row_b] = np.arange(row_a.size)
    index[l_of, row_b, row_a] = np.arange(row_a.size)
    np.add.at(dense, (l_of, row_a, row_b), weight)
    np.add.at(dense, (l_of, row_b, row_a), weight)
    assert (index >= 0).all()
    out = (index.ravel(), dense.ravel())
    for arr in out:
        arr.flags.writeable = False
    return out


def _feature_args(settings: DescriptorSettings) -> tuple:
    return (math.sqrt(settings.radial_weight),) + angular_feature_table(settings)


@dataclass
class StructureDescriptors:
    """Scalar descriptors of one structure.

    Attributes
    ----------
    values : (N, D) float64 scalar descriptors (layout in the module docstring).
    pairs : NeighborList (cutoff = max of the two cutoffs).
    gradients : (P, 3, D) float64, 1/Å, or None; ``[p, b, k] = dX_{i,k}/dr_{j,b}``.
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

    def _check_grad(self, grad_x: np.ndarray, n_channels: int | None) -> np.ndarray:
        n, d = self.values.shape
        grad_x = np.ascontiguousarray(grad_x, dtype=np.float64)
        expected = (n, d) if n_channels is None else (n, n_channels, d)
        if grad_x.shape != expected:
            raise ValueError(f"descriptor gradient must have shape {expected} "
                             f"(N, [C,] D), got {grad_x.shape}")
        if not np.isfinite(grad_x).all():
            raise ValueError("descriptor gradient contains non-finite values")
        return grad_x

    def add_adjoint(self, grad_x: np.ndarray, a2: np.ndarray, a3: np.ndarray,
                    channel: int = 0) -> None:
        """Add the coefficient adjoints of ``y_{i,c} = G[i, c] . X_i`` to channels
        ``channel .. channel + C - 1`` of a2, a3 (from ``Expansion.adjoint_arrays``).

        grad_x : (N, C, D) float64 G. Several contractions (e.g. of scalar and vector
        descriptors sharing one expansion) can add into the same arrays and share one
        back-propagation through the pairs.
        """
        grad_x = np.asarray(grad_x)
        grad_x = self._check_grad(grad_x, grad_x.shape[1] if grad_x.ndim == 3 else -1)
        self._expansion.check_adjoint_arrays(a2, a3, channel, grad_x.shape[1])
        with serial_if_small(self.pairs.n_pairs):
            _sc.power_spectrum_adjoint(self._expansion.c2, self._expansion.c3, grad_x,
                                       math.sqrt(self.settings.radial_weight),
                                       *dense_feature_map(self.settings), a2, a3, channel)

    def _pair_gradients(self, grad_x: np.ndarray) -> np.ndarray:
        ex = self._expansion
        a2, a3 = ex.adjoint_arrays(grad_x.shape[1])
        self.add_adjoint(grad_x, a2, a3)
        return ex.backprop(a2, a3)

    def monopole_contraction(self, grad_x: np.ndarray) -> np.ndarray:
        """BEC charge-transfer term ``out[j, a, b] = sum_i (r_i - r_j^image)_a
        sum_k G[i, k] dX_{i,k}/dr_{j,b}`` (each image a separate term; i = j adds nothing).

        grad_x : (N, D) G[i, k] = dq_i/dX_{i,k} -> (N, 3, 3) float64; or (N, C, D) for C
        independent charge models at once (e.g. design-matrix columns) -> (N, C, 3, 3).
        """
        grad_x = np.asarray(grad_x)
        channels = grad_x.ndim == 3
        grad_x = self._check_grad(grad_x, grad_x.shape[1] if channels else None)
        g = self._pair_gradients(grad_x if channels else grad_x[:, None, :])
        out = self._expansion.scatter_monopole(g)
        return out if channels else out[:, 0]

    def scalar_contraction(self, grad_x: np.ndarray) -> np.ndarray:
        """Total derivatives ``out[j, c, b] = sum_i sum_k G[i, c, k] dX_{i,k}/dr_{j,b}``
        including the centre (self) terms.

        grad_x : (N, C, D).  Returns (N, C, 3) float64 (e.g. forces of C local scalars).
        """
        grad_x = np.asarray(grad_x)
        if grad_x.ndim != 3:
            raise ValueError(f"descriptor gradient must have shape (N, C, D), got {grad_x.shape}")
        grad_x = self._check_grad(grad_x, grad_x.shape[1])
        return self._expansion.scatter_with_self(self._pair_gradients(grad_x))


def compute_descriptors(positions, numbers, cell, pbc, settings: DescriptorSettings,
                        gradients: bool = False, pairs=None) -> StructureDescriptors:
    """Scalar descriptors (and optionally the pair Jacobian) of one structure.

    positions : (N, 3) float64, Å (need not be wrapped); numbers : (N,) int atomic numbers;
    cell : (3, 3) float64, Å, rows = lattice vectors (ignored where pbc is False);
    pbc : (3,) bool; settings : DescriptorSettings; gradients : also compute (P, 3, D);
    pairs : a ready neighbour list (see :func:`numbec.descriptors.expansion.expand`).
    """
    ex = expand(positions, numbers, cell, pbc, settings, l2_max=0, pairs=pairs)
    return descriptors_from_expansion(ex, gradients)


def descriptors_from_expansion(ex: Expansion, gradients: bool = False) -> StructureDescriptors:
    """Scalar descriptors from an expansion of any ``l2_max`` (only the l = 0 two-body
    coefficients enter), e.g. one shared with the vector descriptors."""
    feats = _feature_args(ex.settings)
    w2, _, _, _, weight = feats
    jac = None
    with serial_if_small(ex.pairs.n_pairs):
        values = _sc.power_spectrum(ex.c2, ex.c3, w2, angular_gram_index(ex.settings), weight)
        if gradients:
            if ex.c2.shape[2] != 1:
                raise ValueError("the scalar Jacobian needs an expansion with l2_max = 0")
            jac = _sc.scalar_jacobian(ex.c2, ex.c3, *ex.pair_args(), *feats)
    return StructureDescriptors(values, ex.pairs, ex.settings, jac, ex)


def jacobian_blocks(ex: Expansion, max_bytes: int = JACOBIAN_BLOCK_BYTES):
    """The pair Jacobian of the scalar descriptors, a block of whole centres at a time.

    The whole Jacobian (P, 3, D) float64 is 310 MiB for the 135-atom BaTiO3 cell with the
    default settings (8,900 pairs, D = 1,524 for three species) and grows with the cell;
    blocks of at most ``max_bytes`` (at least one centre) bound the memory and reuse it.

    Parameters
    ----------
    ex : Expansion with ``l2_max = 0`` (as :func:`compute_descriptors` makes it).
    max_bytes : int

    Yields
    ------
    (lo, jac) : int and (hi - lo, 3, D) float64, 1/Å: rows ``lo .. hi - 1`` of the
        ``gradients`` of :class:`StructureDescriptors` (pairs of ``ex.pairs``; ``[p, b, k] =
        dX_{i,k}/dr_{j,b}``). The next block starts at ``hi``; consumers must be done with
        ``jac`` before asking for it.
    """
    if ex.c2.shape[2] != 1:
        raise ValueError("the scalar Jacobian needs an expansion with l2_max = 0")
    yield from ex.jacobian_blocks(_sc.scalar_jacobian, _feature_args(ex.settings),
                                  3 * ex.settings.n_features * 8, max_bytes)
