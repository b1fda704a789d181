"""Input preparation shared by the scalar and vector descriptors: checks, neighbour list,
species channels, radial tables and the neighbour-density expansion coefficients."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from numbec._arrays import same_memory
from numbec.descriptors import expansion_numba as _ex
from numbec.descriptors import tangent_numba as _tn
from numbec.descriptors.neighbors import NeighborList, neighbor_list, serial_if_small
from numbec.descriptors.radial_basis import RadialTable, radial_table
from numbec.descriptors.settings import DescriptorSettings

__all__ = ["Expansion", "expand", "species_channels"]

#: One adjoint channel is back-propagated with the channels-in-blocks kernel (pair by pair)
#: when the centres have fewer pairs than this on average, else one pass per channel over the
#: groups of pairs. CPU time of the pair part per frame, 1 thread, one channel, 2026-12-03
#: (numba 0.68, loaded machine): water dimer (5 pairs per centre) 45-55 us per channel vs
#: 18-20 us in blocks, (H2O)6 (17) 145-220 vs 105-150 us, liquid water, 192 atoms (85) 5.5
#: vs 12.5 ms.
BLOCK_BACKPROP_BELOW = 32
#: The same for several channels (the dipole and combined models): one pass per channel
#: where the centres have at least this many pairs on average. CPU time, 1 thread, four
#: channels, l2_max = 1, 2026-12-03 (after the four-n passes of ``pair_backprop``): liquid
#: water, 192 atoms (85 pairs per centre) 12.8 ms per channel pass vs 14.8 ms in blocks,
#: alpha-quartz, 72 atoms (68) 5.6 vs 5.5 ms.
BLOCK_BACKPROP_CHANNELS_BELOW = 64
#: From this many channels (the combined model's four: charges and three dipole components)
#: the channel blocks run in every structure, whatever its pairs per centre. CPU time of the
#: pair part, 1 thread, four channels, l2_max = 1, 2026-12-05 (after the sums over n of
#: ``pair_backprop_channel_blocks`` became contiguous four-channel updates): liquid water,
#: 192 atoms (85 pairs per centre) 9.2 ms per channel pass vs 7.6 ms in blocks, alpha-quartz,
#: 72 atoms (68) 2.5 vs 2.1 ms; with two or three channels one pass per channel stays
#: faster there (water 5.3 vs 7.3 ms and 6.9 vs 7.3 ms).
BLOCK_BACKPROP_FROM_CHANNELS = 4
#: Largest block of a pair Jacobian (bytes) that the ``jacobian_blocks`` generators of the
#: scalar and vector descriptors make at once: below the 30 MiB to which
#: :func:`numbec._heap.keep_freed_memory` raises glibc's mmap threshold, so consecutive
#: blocks reuse heap memory instead of faulting in fresh pages.
JACOBIAN_BLOCK_BYTES = 24 * 2**20


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
    pairs : the neighbour list, its pairs ordered by centre and then neighbour species channel.
    channel : (N,) int64 species channel of each atom.
    groups : (N, S+1) int64, pairs of centre i with neighbours of channel J are
        ``groups[i, J]:groups[i, J + 1]``, those within the smaller cutoff first, then those
        within the larger one; ``ends`` (N, S, 2) int64: the
        first ``ends[i, J, 0] - groups[i, J]`` of them are within the radial cutoff, the first
        ``ends[i, J, 1] - groups[i, J]`` within the angular one.
    """

    settings: DescriptorSettings
    pairs: NeighborList
    channel: np.ndarray
    groups: np.ndarray
    ends: np.ndarray
    radial: RadialTable
    angular: RadialTable
    c2: np.ndarray
    c3: np.ndarray
    #: Tangent directions planned for the next back-propagation and, once it has run, its
    #: tangents (:meth:`plan_tangents`): per structure, not part of its value.
    tangent_plan: dict = field(default_factory=dict, repr=False, compare=False)

    def pair_args(self) -> tuple:
        """Neighbour-list and table arguments of the pair kernels (after c2/c3 or adjoints)."""
        s = self.settings
        nl = self.pairs
        return (nl.offsets, nl.neighbors, nl.vectors, nl.distances, self.channel,
                self.radial.cutoff, self.radial.inv_spacing, self.radial.values,
                self.radial.derivatives, s.n_radial, s.l_max, self.angular.cutoff,
                self.angular.inv_spacing, self.angular.values, self.angular.derivatives,
                s.n_angular)

    def block_args(self) -> tuple:
        """Arguments of the pair-block kernels (``expansion_coefficients``, ``pair_backprop``)."""
        s = self.settings
        nl = self.pairs
        radial = self.radial.up_to(int(round(self.c2.shape[2] ** 0.5)) - 1)
        return (nl.offsets, self.groups, self.ends, nl.vectors, nl.distances, radial.cutoff,
                radial.inv_spacing, radial.values, radial.derivatives,
                s.n_radial, s.l_max, self.angular.cutoff, self.angular.inv_spacing,
                self.angular.values, self.angular.derivatives, s.n_angular)

    def adjoint_arrays(self, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Zeroed coefficient adjoints a2 (N, S*n_radial, C, LM2) and a3 (N, S*n_angular, C,
        LM3) for C channels: the descriptors' ``add_adjoint`` methods add into them and
        :meth:`backprop` turns them into pair gradients."""
        n = self.c2.shape[0]
        return (np.zeros((n, self.c2.shape[1], n_channels, self.c2.shape[2])),
                np.zeros((n, self.c3.shape[1], n_channels, self.c3.shape[2])))

    def check_adjoint_arrays(self, a2, a3, channel: int, n_channels: int) -> None:
        """ValueError unless a2, a3 are float64 C-contiguous adjoint arrays of this expansion
        with room for channels ``channel .. channel + n_channels - 1``."""
        for name, arr, coef in (("a2", a2, self.c2), ("a3", a3, self.c3)):
            if (not isinstance(arr, np.ndarray) or arr.dtype != np.float64 or arr.ndim != 4
                    or not arr.flags.c_contiguous or arr.shape[::3] != coef.shape[::2]
                    or arr.shape[1] != coef.shape[1]):
                raise ValueError(f"{name} must be a C-contiguous float64 array of shape "
                                 f"{(coef.shape[0], coef.shape[1], 'C', coef.shape[2])} "
                                 "(Expansion.adjoint_arrays)")
        if a2.shape[2] != a3.shape[2] or not 0 <= channel <= a2.shape[2] - n_channels:
            raise ValueError(f"channels {channel}..{channel + n_channels - 1} do not fit "
                             f"adjoint arrays with {a2.shape[2]} channels")

    def backprop(self, a2: np.ndarray, a3: np.ndarray) -> np.ndarray:
        """Per-pair gradients (P, C, 3) from coefficient adjoints a2, a3 (N, rows, C, LM);
        with tangents planned (:meth:`plan_tangents`) and one pass per channel, also those
        tangents, in the same pass over the pairs."""
        # channels in blocks of four, pair by pair (pair_backprop_channel_blocks), except
        # for fewer than four channels in structures whose centres have many pairs, where
        # one pass per channel vectorises over long groups of pairs (BLOCK_BACKPROP_BELOW,
        # BLOCK_BACKPROP_CHANNELS_BELOW, BLOCK_BACKPROP_FROM_CHANNELS); planned tangents
        # there share the pass of the latter
        n_channels = a2.shape[2]
        below = BLOCK_BACKPROP_BELOW if n_channels == 1 else BLOCK_BACKPROP_CHANNELS_BELOW
        many_pairs = self.pairs.n_pairs >= below * self.pairs.n_atoms
        plan = self.tangent_plan
        with serial_if_small(self.pairs.n_pairs):
            if many_pairs and "directions" in plan and "c2dot" not in plan:
                g, plan["c2dot"], plan["c3dot"] = _tn.pair_backprop_with_tangents(
                    a2, a3, plan["directions"], *self.block_args())
                return g
            if many_pairs and n_channels < BLOCK_BACKPROP_FROM_CHANNELS:
                return _ex.pair_backprop(a2, a3, *self.block_args())
            return _ex.pair_backprop_channel_blocks(a2, a3, *self.block_args())

    def plan_tangents(self, directions: np.ndarray) -> None:
        """Have the next :meth:`backprop` compute the coefficient tangents along
        ``directions`` (P, T, 3) float64 C-contiguous (:mod:`numbec.descriptors.tangent`)
        in its own pass over the pairs, which then evaluates the basis functions of every pair
        once for both (about 2 ms of a 192-atom water frame); :meth:`coefficient_tangents`
        with the same array returns them. Only the one-pass-per-channel kernel does this (the
        structures whose centres have many pairs); elsewhere the tangents are computed
        apart, with the same result."""
        n_pairs = self.pairs.neighbors.size
        if (not isinstance(directions, np.ndarray) or directions.dtype != np.float64
                or directions.ndim != 3 or directions.shape[::2] != (n_pairs, 3)
                or not directions.flags.c_contiguous):
            raise ValueError(f"directions must be a C-contiguous float64 array of shape (P, T, "
                             f"3) with P = {n_pairs} pairs")
        self.tangent_plan.clear()
        self.tangent_plan["directions"] = directions

    def coefficient_tangents(self, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``c2dot`` (T, N, S*n_radial, LM2), ``c3dot`` (T, N, S*n_angular, LM3): the tangents
        of c2 and c3 along ``directions`` (P, T, 3) float64 C-contiguous
        (:func:`numbec.descriptors.tangent_numba.expansion_tangents`), those of the planned
        back-propagation when it ran with this very array or a view of all of it
        (:meth:`plan_tangents`; handed over once)."""
        plan = self.tangent_plan
        if same_memory(plan.get("directions"), directions):
            done = plan.pop("c2dot", None), plan.pop("c3dot", None)
            plan.clear()
            if done[0] is not None:
                return done
        s = self.settings
        nl = self.pairs
        l2_max = int(np.sqrt(self.c2.shape[2]) + 0.5) - 1
        with serial_if_small(nl.n_pairs):
            return _tn.expansion_tangents(
                directions, nl.offsets, self.groups, self.ends, nl.vectors, nl.distances,
                l2_max, self.radial.cutoff, self.radial.inv_spacing, self.radial.values,
                self.radial.derivatives, s.n_radial, s.l_max, self.angular.cutoff,
                self.angular.inv_spacing, self.angular.values, self.angular.derivatives,
                s.n_angular)

    def jacobian_blocks(self, kernel, features: tuple, pair_bytes: int, max_bytes: int):
        """A pair Jacobian a block of whole centres at a time: ``kernel`` (the scalar or
        vector Jacobian kernel, taking ``c2, c3, offsets, neighbors, vectors, distances,
        channel, tables..., features...``) run on consecutive blocks whose pairs take at most
        ``max_bytes`` at ``pair_bytes`` each (at least one centre per block).

        Yields ``(lo, jac)``: ``jac`` holds the rows of pairs ``lo .. lo + len(jac) - 1``.
        """
        nl = self.pairs
        offsets = nl.offsets
        tables = self.pair_args()[4:]  # after offsets, neighbors, vectors, distances
        max_pairs = max(int(max_bytes // pair_bytes), 1)
        c0, n = 0, offsets.size - 1
        while c0 < n:
            lo = int(offsets[c0])
            c1 = max(int(np.searchsorted(offsets, lo + max_pairs, side="right")) - 1, c0 + 1)
            hi = int(offsets[c1])
            with serial_if_small(hi - lo):
                jac = kernel(self.c2[c0:c1], self.c3[c0:c1], offsets[c0:c1 + 1] - lo,
                             nl.neighbors[lo:hi], nl.vectors[lo:hi], nl.distances[lo:hi],
                             *tables, *features)
            yield lo, jac
            c0 = c1

    def scatter_monopole(self, g: np.ndarray) -> np.ndarray:
        """``out[j, c, a, b] = sum_{pairs p = (i, j image)} (r_i - r_j^image)_a g[p, c, b]``:
        (P, C, 3) pair gradients -> (N, C, 3, 3)."""
        nl = self.pairs
        return _ex.scatter_monopole(np.ascontiguousarray(g), nl.offsets, nl.neighbors,
                                    nl.vectors)

    def scatter_with_self(self, g: np.ndarray) -> np.ndarray:
        """Total derivatives including the centre terms: (P, C, 3) -> (N, C, 3)."""
        nl = self.pairs
        return _ex.scatter_with_self(np.ascontiguousarray(g), nl.offsets, nl.neighbors)

def expand(positions, numbers, cell, pbc, settings: DescriptorSettings,
           l2_max: int, pairs: NeighborList | None = None,
           atom_order: np.ndarray | None = None) -> Expansion:
    """Neighbour list and coefficients c2 (l <= l2_max), c3 (l <= settings.l_max).

    ``pairs``: a neighbour list already made for these positions with ``settings.cutoff``
    (e.g. :func:`neighbor_list_frames` of a chunk of frames); ``cell`` and ``pbc`` are then
    not used. ``atom_order`` (N,) int64, with ``pairs``: ``positions`` and ``numbers`` are the
    atoms of ``pairs`` in this order (atom k is atom ``atom_order[k]`` of the list), and the
    pairs are renumbered to match in the same pass that groups them by species (the result
    of :func:`numbec.descriptors.neighbors.permute_atoms`, without its copies)."""
    if not isinstance(settings, DescriptorSettings):
        raise TypeError("settings must be a DescriptorSettings")
    channel = species_channels(numbers, settings)
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (channel.size, 3):
        raise ValueError(f"positions must have shape ({channel.size}, 3) to match numbers, got "
                         f"{positions.shape}")
    given_pairs = pairs
    if pairs is None:
        pairs = neighbor_list(positions, cell, pbc, settings.cutoff)
    elif pairs.n_atoms != channel.size or pairs.cutoff != settings.cutoff:
        raise ValueError(f"the neighbour list has {pairs.n_atoms} atoms and cutoff "
                         f"{pairs.cutoff} Å; the structure has {channel.size} atoms and the "
                         f"descriptors need {settings.cutoff} Å")
    if atom_order is None:
        atom_order = np.arange(channel.size, dtype=np.int64)
    elif given_pairs is None:
        raise ValueError("atom_order renumbers a given neighbour list: pass pairs= too")
    elif np.shape(atom_order) != (channel.size,):
        raise ValueError(f"atom_order must have shape ({channel.size},), got "
                         f"{atom_order.shape}")
    with serial_if_small(pairs.n_pairs):
        *arrays, groups, ends = _ex.group_pairs_by_species(
            pairs.offsets, pairs.neighbors, pairs.shifts, pairs.vectors, pairs.distances,
            np.asarray(atom_order, dtype=np.int64), channel, settings.n_species,
            settings.cutoff_radial, settings.cutoff_angular)
    pairs = NeighborList(*arrays, pairs.cutoff)
    radial = radial_table(settings.cutoff_radial, settings.sigma, settings.n_radial, 1)
    angular = radial_table(settings.cutoff_angular, settings.sigma, settings.n_angular,
                           settings.l_max)
    with serial_if_small(pairs.n_pairs):
        c2, c3 = _ex.expansion_coefficients(
            pairs.offsets, groups, ends, pairs.vectors, pairs.distances, l2_max, radial.cutoff,
            radial.inv_spacing, radial.up_to(l2_max).values, radial.up_to(l2_max).derivatives,
            settings.n_radial,
            settings.l_max, angular.cutoff, angular.inv_spacing, angular.values,
            angular.derivatives, settings.n_angular)
    return Expansion(settings, pairs, channel, groups, ends, radial, angular, c2, c3)
