"""Numba kernels of the linked-cell neighbour search (see :mod:`numbec.descriptors.neighbors`).

All kernels work on *fractional* coordinates in an effective cell whose rows are the lattice
vectors (non-periodic directions are replaced by orthonormal vectors by the caller). Bins are
boxes in fractional space; ``bin_reach[k]`` is how many bins the search goes each way along
lattice direction ``k`` (enough that no pair within the cutoff is missed, even when the cutoff
exceeds the cell). A bin offset outside ``[0, n_bins)`` along a periodic direction is wrapped and
becomes an image shift; along a non-periodic direction it is skipped.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True)
def bin_atoms(frac, n_bins):
    """Assign atoms to bins (counting sort).

    frac (N, 3) float64: binning coordinates in [0, 1] (fractional for periodic directions,
    extent-normalised for non-periodic ones); values outside are clipped to the edge bins.
    n_bins (3,) int64.
    Returns ``bin_start`` (n_bins_total + 1,) int64 and ``bin_atoms`` (N,) int64 (atom indices
    sorted by bin, bin ``b`` holding ``bin_atoms[bin_start[b]:bin_start[b+1]]``) and
    ``atom_bin`` (N, 3) int64 the bin of every atom.
    """
    n_atoms = frac.shape[0]
    atom_bin = np.empty((n_atoms, 3), dtype=np.int64)
    total = n_bins[0] * n_bins[1] * n_bins[2]
    counts = np.zeros(total + 1, dtype=np.int64)
    flat = np.empty(n_atoms, dtype=np.int64)
    for a in range(n_atoms):
        for k in range(3):
            b = int(np.floor(frac[a, k] * n_bins[k]))
            if b < 0:
                b = 0
            if b >= n_bins[k]:
                b = n_bins[k] - 1
            atom_bin[a, k] = b
        flat[a] = (atom_bin[a, 0] * n_bins[1] + atom_bin[a, 1]) * n_bins[2] + atom_bin[a, 2]
        counts[flat[a] + 1] += 1
    for b in range(total):
        counts[b + 1] += counts[b]
    fill = counts[:-1].copy()
    sorted_atoms = np.empty(n_atoms, dtype=np.int64)
    for a in range(n_atoms):
        sorted_atoms[fill[flat[a]]] = a
        fill[flat[a]] += 1
    return counts, sorted_atoms, atom_bin


@njit(cache=True, nogil=True)
def _visit_centre(i, positions, cell, cutoff2, n_bins, bin_reach, periodic, bin_start,
                  bin_atoms, atom_bin, write, start, neighbors, shifts, vectors, distances,
                  input_positions, wrap):
    """Count (``write=False``) or write the pairs of centre ``i`` starting at slot ``start``.

    The cutoff test uses the wrapped ``positions``; written shifts and vectors refer to the
    ``input_positions`` (wrapped = input - wrap @ cell), so they are exact for the caller.
    With ``write=False`` and a non-empty ``neighbors``, the neighbour and image shift of the
    first ``neighbors.shape[0]`` pairs are also kept, in ``neighbors`` and ``shifts`` (the
    single pass of :func:`search_pairs`); the count is that of all the pairs."""
    count = 0
    b0 = atom_bin[i, 0]
    b1 = atom_bin[i, 1]
    b2 = atom_bin[i, 2]
    for o0 in range(-bin_reach[0], bin_reach[0] + 1):
        c0 = b0 + o0
        s0 = 0
        if periodic[0]:
            s0 = c0 // n_bins[0]
            c0 = c0 - s0 * n_bins[0]
        elif c0 < 0 or c0 >= n_bins[0]:
            continue
        for o1 in range(-bin_reach[1], bin_reach[1] + 1):
            c1 = b1 + o1
            s1 = 0
            if periodic[1]:
                s1 = c1 // n_bins[1]
                c1 = c1 - s1 * n_bins[1]
            elif c1 < 0 or c1 >= n_bins[1]:
                continue
            for o2 in range(-bin_reach[2], bin_reach[2] + 1):
                c2 = b2 + o2
                s2 = 0
                if periodic[2]:
                    s2 = c2 // n_bins[2]
                    c2 = c2 - s2 * n_bins[2]
                elif c2 < 0 or c2 >= n_bins[2]:
                    continue
                shift_x = s0 * cell[0, 0] + s1 * cell[1, 0] + s2 * cell[2, 0]
                shift_y = s0 * cell[0, 1] + s1 * cell[1, 1] + s2 * cell[2, 1]
                shift_z = s0 * cell[0, 2] + s1 * cell[1, 2] + s2 * cell[2, 2]
                flat = (c0 * n_bins[1] + c1) * n_bins[2] + c2
                for slot in range(bin_start[flat], bin_start[flat + 1]):
                    j = bin_atoms[slot]
                    if j == i and s0 == 0 and s1 == 0 and s2 == 0:
                        continue
                    dx = positions[j, 0] + shift_x - positions[i, 0]
                    dy = positions[j, 1] + shift_y - positions[i, 1]
                    dz = positions[j, 2] + shift_z - positions[i, 2]
                    r2 = dx * dx + dy * dy + dz * dz
                    if r2 < cutoff2:
                        if write:
                            p = start + count
                            neighbors[p] = j
                            t0 = s0 - wrap[j, 0] + wrap[i, 0]
                            t1 = s1 - wrap[j, 1] + wrap[i, 1]
                            t2 = s2 - wrap[j, 2] + wrap[i, 2]
                            shifts[p, 0] = t0
                            shifts[p, 1] = t1
                            shifts[p, 2] = t2
                            for k in range(3):
                                vectors[p, k] = (input_positions[j, k] - input_positions[i, k]
                                                 + t0 * cell[0, k] + t1 * cell[1, k]
                                                 + t2 * cell[2, k])
                            distances[p] = np.sqrt(vectors[p, 0] ** 2 + vectors[p, 1] ** 2
                                                   + vectors[p, 2] ** 2)
                        elif count < neighbors.shape[0]:
                            neighbors[count] = j
                            shifts[count, 0] = s0 - wrap[j, 0] + wrap[i, 0]
                            shifts[count, 1] = s1 - wrap[j, 1] + wrap[i, 1]
                            shifts[count, 2] = s2 - wrap[j, 2] + wrap[i, 2]
                        count += 1
    return count


@njit(cache=True, parallel=True, nogil=True)
def count_pairs(positions, cell, cutoff, n_bins, bin_reach, periodic, bin_start, bin_atoms,
                atom_bin):
    """Number of pairs per centre, (N,) int64 (the counting pass of a two-pass search; the
    reference of :func:`search_pairs` in the tests)."""
    n_atoms = positions.shape[0]
    counts = np.zeros(n_atoms, dtype=np.int64)
    dummy_i = np.empty(0, dtype=np.int64)
    dummy_s = np.empty((0, 3), dtype=np.int64)
    dummy_v = np.empty((0, 3), dtype=np.float64)
    dummy_d = np.empty(0, dtype=np.float64)
    for i in prange(n_atoms):
        counts[i] = _visit_centre(i, positions, cell, cutoff * cutoff, n_bins, bin_reach,
                                  periodic, bin_start, bin_atoms, atom_bin, False, 0,
                                  dummy_i, dummy_s, dummy_v, dummy_d, positions, dummy_s)
    return counts


@njit(cache=True, parallel=True, nogil=True)
def search_pairs(positions, cell, cutoff, n_bins, bin_reach, periodic, bin_start, bin_atoms,
                 atom_bin, input_positions, wrap, capacity):
    """The pairs in one distance test per candidate (instead of a counting pass, then a
    filling pass): every centre keeps the neighbours and image shifts of its first
    ``capacity`` pairs in its own rows of a scratch array while counting them all; the
    result is then gathered from there (:func:`gather_pairs`), and only centres with more
    pairs than ``capacity`` are searched a second time.

    ``positions`` (N, 3) float64 Å: wrapped positions (the cutoff test); ``cell`` (3, 3) Å;
    ``bin_*``, ``atom_bin``: :func:`bin_atoms`; ``input_positions`` (N, 3) Å = positions +
    wrap @ cell, ``wrap`` (N, 3) int64. Returns ``counts`` (N,) int64 pairs per centre,
    ``kept_neighbors`` (N, capacity) int64 and ``kept_shifts`` (N, capacity, 3) int64
    (integer image shifts S of the input positions: the image of j is r_j + S @ cell).
    """
    n_atoms = positions.shape[0]
    counts = np.zeros(n_atoms, dtype=np.int64)
    kept_neighbors = np.empty((n_atoms, capacity), dtype=np.int64)
    kept_shifts = np.empty((n_atoms, capacity, 3), dtype=np.int64)
    dummy_v = np.empty((0, 3), dtype=np.float64)
    dummy_d = np.empty(0, dtype=np.float64)
    for i in prange(n_atoms):
        counts[i] = _visit_centre(i, positions, cell, cutoff * cutoff, n_bins, bin_reach,
                                  periodic, bin_start, bin_atoms, atom_bin, False, 0,
                                  kept_neighbors[i], kept_shifts[i], dummy_v, dummy_d,
                                  input_positions, wrap)
    return counts, kept_neighbors, kept_shifts


@njit(cache=True, parallel=True, nogil=True)
def gather_pairs(positions, cell, cutoff, n_bins, bin_reach, periodic, bin_start, bin_atoms,
                 atom_bin, offsets, input_positions, wrap, kept_neighbors, kept_shifts):
    """The pairs from the output of :func:`search_pairs` (same arguments) in the slots given
    by ``offsets`` (N+1,): neighbours (P,) int64, image shifts S (P, 3) int64, vectors (P, 3)
    float64 Å = r_j + S @ cell - r_i and distances (P,) float64 Å, with r the
    ``input_positions``. The kept pairs are copied; a centre with more pairs than were kept
    is searched again."""
    n_atoms = positions.shape[0]
    n_pairs = offsets[n_atoms]
    capacity = kept_neighbors.shape[1]
    neighbors = np.empty(n_pairs, dtype=np.int64)
    shifts = np.empty((n_pairs, 3), dtype=np.int64)
    vectors = np.empty((n_pairs, 3), dtype=np.float64)
    distances = np.empty(n_pairs, dtype=np.float64)
    for i in prange(n_atoms):
        start = offsets[i]
        count = offsets[i + 1] - start
        if count > capacity:
            _visit_centre(i, positions, cell, cutoff * cutoff, n_bins, bin_reach, periodic,
                          bin_start, bin_atoms, atom_bin, True, start, neighbors, shifts,
                          vectors, distances, input_positions, wrap)
            continue
        for q in range(count):
            p = start + q
            j = kept_neighbors[i, q]
            t0 = kept_shifts[i, q, 0]
            t1 = kept_shifts[i, q, 1]
            t2 = kept_shifts[i, q, 2]
            neighbors[p] = j
            shifts[p, 0] = t0
            shifts[p, 1] = t1
            shifts[p, 2] = t2
            for k in range(3):
                vectors[p, k] = (input_positions[j, k] - input_positions[i, k]
                                 + t0 * cell[0, k] + t1 * cell[1, k] + t2 * cell[2, k])
            distances[p] = np.sqrt(vectors[p, 0] ** 2 + vectors[p, 1] ** 2
                                   + vectors[p, 2] ** 2)
    return neighbors, shifts, vectors, distances


@njit(cache=True, nogil=True)
def cluster_pairs(positions, cutoff, frame_size):
    """All pairs (i, j != i) of non-periodic structures closer than ``cutoff``, by testing
    every pair: O(N^2) in one serial call, for small clusters, where setting up the bins costs
    more than it saves.

    positions (F * frame_size, 3) float64, Å: F frames of ``frame_size`` atoms one after the
    other (F = 1 for one structure); pairs never join atoms of different frames. Returns
    ``offsets`` (N + 1,) int64, ``neighbors`` (P,) int64 (ascending within each centre),
    ``vectors`` (P, 3) float64 Å = r_j - r_i and ``distances`` (P,) float64 Å, in the CSR layout
    of the binned search, N = F * frame_size.
    """
    n_atoms = positions.shape[0]
    cutoff2 = cutoff * cutoff
    offsets = np.zeros(n_atoms + 1, dtype=np.int64)
    for write in range(2):
        if write:
            for i in range(n_atoms):
                offsets[i + 1] += offsets[i]
            n_pairs = offsets[n_atoms]
        else:
            n_pairs = 0
        neighbors = np.empty(n_pairs, dtype=np.int64)
        vectors = np.empty((n_pairs, 3), dtype=np.float64)
        distances = np.empty(n_pairs, dtype=np.float64)
        for i in range(n_atoms):
            p = offsets[i]
            first = (i // frame_size) * frame_size
            for j in range(first, first + frame_size):
                if j == i:
                    continue
                dx = positions[j, 0] - positions[i, 0]
                dy = positions[j, 1] - positions[i, 1]
                dz = positions[j, 2] - positions[i, 2]
                r2 = dx * dx + dy * dy + dz * dz
                if r2 < cutoff2:
                    if write:
                        neighbors[p] = j
                        vectors[p, 0] = dx
                        vectors[p, 1] = dy
                        vectors[p, 2] = dz
                        distances[p] = np.sqrt(r2)
                        p += 1
                    else:
                        offsets[i + 1] += 1
    return offsets, neighbors, vectors, distances
