"""Input preparation shared by the scalar and vector descriptors: checks, neighbour list,
species channels, radial tables and the neighbour-density expansion coefficients."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from numbec.descriptors import expansion_numba as _ex
from numbec.descriptors.radial_basis import RadialTable, radial_table
from numbec.descriptors.settings import DescriptorSettings
from numbec.neighbors import NeighborList, neighbor_list, serial_if_small

__all__ = ["Expansion", "expand", "species_channels"]


def species_channels(numbers, settings: DescriptorSettings) -> np.ndarray:
    """(N,) int64 channel index of each atom in ``settings.species``; ValueError naming the
    first atom whose species is not among them."""
    numbers = np.asarray(numbers)
    if numbers.ndim != 1:
        raise ValueError(f"numbers must have shape (N,), got {numbers.shape}")
    species = np.asarray(settings.species, dtype=np.int64)
    idx = np.searchsorted(species, numbers)
    idx_clipped = np.minimum(idx, species.size - 1)
    bad = np.flatnonzero(species[idx_clipped] != numbers)
    if bad.size:
        a = bad[0]
        raise ValueError(f"atom {a} has species Z={int(numbers[a])}, not among the descriptor "
                         f"species {list(settings.species)}")
    return idx_clipped.astype(np.int64)


@dataclass(frozen=True)
class Expansion:
    """Neighbour list and expansion coefficients of one structure.

    c2 : (N, S*n_radial, (l2_max+1)**2) two-body coefficients (cutoff_radial).
    c3 : (N, S*n_angular, (l_max+1)**2) three-body coefficients (cutoff_angular).
    """

    settings: DescriptorSettings
    pairs: NeighborList
    channel: np.ndarray
    radial: RadialTable
    angular: RadialTable
    c2: np.ndarray
    c3: np.ndarray

    def pair_args(self) -> tuple:
        """Neighbour-list and table arguments of the pair kernels (after c2/c3 or adjoints)."""
        s = self.settings
        nl = self.pairs
        return (nl.offsets, nl.neighbors, nl.vectors, nl.distances, self.channel,
                self.radial.cutoff, self.radial.inv_spacing, self.radial.values,
                self.radial.derivatives, s.n_radial, s.l_max, self.angular.cutoff,
                self.angular.inv_spacing, self.angular.values, self.angular.derivatives,
                s.n_angular)

    def backprop(self, a2: np.ndarray, a3: np.ndarray) -> np.ndarray:
        """Per-pair gradients (P, C, 3) from coefficient adjoints a2, a3 (N, C, ...)."""
        with serial_if_small(self.pairs.n_pairs):
            return _ex.pair_backprop(np.ascontiguousarray(a2), np.ascontiguousarray(a3),
                                     *self.pair_args())


def expand(positions, numbers, cell, pbc, settings: DescriptorSettings,
           l2_max: int) -> Expansion:
    """Neighbour list and coefficients c2 (l <= l2_max), c3 (l <= settings.l_max)."""
    if not isinstance(settings, DescriptorSettings):
        raise TypeError("settings must be a DescriptorSettings")
    channel = species_channels(numbers, settings)
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (channel.size, 3):
        raise ValueError(f"positions must have shape ({channel.size}, 3) to match numbers, got "
                         f"{positions.shape}")
    pairs = neighbor_list(positions, cell, pbc, settings.cutoff)
    radial = radial_table(settings.cutoff_radial, settings.sigma, settings.n_radial, 1)
    angular = radial_table(settings.cutoff_angular, settings.sigma, settings.n_angular,
                           settings.l_max)
    with serial_if_small(pairs.n_pairs):
        c2, c3 = _ex.expansion_coefficients(
            pairs.offsets, pairs.neighbors, pairs.vectors, pairs.distances, channel,
            settings.n_species, l2_max, radial.cutoff, radial.inv_spacing, radial.values,
            radial.derivatives, settings.n_radial, settings.l_max, angular.cutoff,
            angular.inv_spacing, angular.values, angular.derivatives, settings.n_angular)
    return Expansion(settings, pairs, channel, radial, angular, c2, c3)
