"""Image-resolved neighbour lists with Numba linked cells, linear in the number of atoms.

``neighbor_list(positions, cell, pbc, cutoff)`` returns every pair (i, j, image) with
``|r_j + S @ cell - r_i| < cutoff`` (S integer image shift, ``S = 0`` along non-periodic
directions) except ``(i, i, 0)``. Each periodic image is a separate pair, so a cutoff larger than
half the cell (or than the cell) gives several pairs for the same ``j``, including images of the
centre itself (``j == i``).

Storage is CSR: pairs of centre ``i`` are ``offsets[i]:offsets[i + 1]``.

How it works: periodic coordinates are wrapped into the cell, atoms are sorted into bins in
fractional space (bin thickness along each plane normal about half the cutoff when the cell
allows it; non-periodic directions are binned over the atoms' extent), and each centre visits
``2 * reach + 1`` bins per direction, where reach covers the cutoff even when it is larger than
the cell. Pairs are counted in a first parallel pass and written in a second, so centres run in
parallel without locks. Kernels run on one thread for small structures (:func:`serial_if_small`),
and small clusters skip the bins and test every pair (:data:`DIRECT_BELOW`).
Bad input (non-finite positions, degenerate periodic cell, overlapping atoms, non-positive
cutoff) raises ValueError naming the atom or quantity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from numbec.conventions import first_non_finite
from numbec.descriptors import neighbors_numba as _nb
from numbec.parallel import SERIAL_BELOW, serial_if_small

__all__ = ["SERIAL_BELOW", "NeighborList", "neighbor_list", "neighbor_list_frames",
           "permute_atoms", "serial_if_small"]

#: Clusters (no periodic direction) with fewer atoms than this test every pair directly, in one
#: small serial kernel, instead of binning: a water dimer's list took 300 µs with the bins,
#: most of it the Python set-up of the search.
DIRECT_BELOW = 256


@dataclass(frozen=True)
class NeighborList:
    """Neighbour pairs of a structure in CSR layout.

    Attributes
    ----------
    offsets : (N + 1,) int64
        Pairs of centre ``i`` are ``offsets[i]:offsets[i + 1]``.
    neighbors : (P,) int64
        Neighbour atom index ``j`` of each pair (may equal the centre for its own image).
    shifts : (P, 3) int64
        Integer image shift ``S`` of each pair relative to the *input* positions.
    vectors : (P, 3) float64, Å
        ``r_j + S @ cell - r_i`` (input positions, cell rows = lattice vectors).
    distances : (P,) float64, Å
        Lengths of ``vectors``.
    cutoff : float, Å
    """

    offsets: np.ndarray
    neighbors: np.ndarray
    shifts: np.ndarray
    vectors: np.ndarray
    distances: np.ndarray
    cutoff: float

    @property
    def n_atoms(self) -> int:
        return self.offsets.shape[0] - 1

    @property
    def n_pairs(self) -> int:
        return self.neighbors.shape[0]

    @property
    def centers(self) -> np.ndarray:
        """(P,) int64 centre index ``i`` of each pair."""
        return np.repeat(np.arange(self.n_atoms, dtype=np.int64), np.diff(self.offsets))


def _check_inputs(positions, cell, pbc, cutoff):
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {positions.shape}")
    bad = first_non_finite(positions, 1)
    if bad is not None:
        raise ValueError(f"positions of atom {bad[0]} are not finite: {positions[bad[0]]}")
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    if cell is None:
        if pbc.any():
            raise ValueError("a periodic structure needs a cell")
        cell = np.zeros((3, 3))
    cell = np.asarray(cell, dtype=np.float64)
    if cell.shape != (3, 3):
        raise ValueError(f"cell must have shape (3, 3) (rows = lattice vectors), got {cell.shape}")
    finite = np.isfinite(cell).all(axis=1)
    if not finite[pbc].all():
        row = int(np.flatnonzero(pbc & ~finite)[0])
        raise ValueError(f"cell vector {row} (periodic) contains NaN or inf: {cell[row]}")
    if not finite.all():
        # rows along free directions are ignored (_effective_cell); a cluster's NaN cell too
        cell = np.where(finite[:, None], cell, 0.0)
    cutoff = float(cutoff)
    if not (np.isfinite(cutoff) and cutoff > 0.0):
        raise ValueError(f"cutoff must be a positive number of Å, got {cutoff}")
    return positions, cell, pbc, cutoff


def _effective_cell(cell, pbc):
    """Cell whose periodic rows are the lattice vectors and whose non-periodic rows are
    orthonormal vectors perpendicular to the periodic ones (any input there is ignored)."""
    eff = np.array(cell, dtype=np.float64)
    periodic = np.flatnonzero(pbc)
    free = np.flatnonzero(~pbc)
    if periodic.size:
        vecs = eff[periodic]
        if np.linalg.matrix_rank(vecs, tol=1e-8 * max(1.0, np.abs(vecs).max())) < periodic.size:
            raise ValueError(f"the periodic lattice vectors are degenerate: cell = {cell.tolist()}")
    if periodic.size == 3:
        if np.linalg.det(eff) == 0.0:
            raise ValueError("the cell is singular")
        return eff
    if periodic.size == 0:
        return np.eye(3)
    if periodic.size == 2:
        normal = np.cross(eff[periodic[0]], eff[periodic[1]])
        eff[free[0]] = normal / np.linalg.norm(normal)
        return eff
    a = eff[periodic[0]] / np.linalg.norm(eff[periodic[0]])
    trial = np.eye(3)[np.argmin(np.abs(a))]
    e1 = np.cross(a, trial)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(a, e1)
    eff[free[0]] = e1
    eff[free[1]] = e2
    return eff


def neighbor_list(positions, cell, pbc, cutoff) -> NeighborList:
    """All image-resolved pairs within ``cutoff``.

    Parameters
    ----------
    positions : (N, 3) float64, Å
        Cartesian positions; need not be wrapped into the cell.
    cell : (3, 3) float64, Å, rows are lattice vectors (ignored along non-periodic directions;
        may be None or zero for a cluster).
    pbc : (3,) bool or bool
    cutoff : float, Å

    Returns
    -------
    NeighborList
    """
    positions, cell, pbc, cutoff = _check_inputs(positions, cell, pbc, cutoff)
    n_atoms = positions.shape[0]
    if n_atoms == 0:
        return NeighborList(np.zeros(1, np.int64), np.zeros(0, np.int64),
                            np.zeros((0, 3), np.int64), np.zeros((0, 3)), np.zeros(0), cutoff)
    if not pbc.any() and n_atoms < DIRECT_BELOW:
        offsets, neighbors, vectors, distances = _nb.cluster_pairs(positions, cutoff, n_atoms)
        shifts = np.zeros((neighbors.shape[0], 3), dtype=np.int64)
    else:
        offsets, neighbors, shifts, vectors, distances = _binned_pairs(positions, cell, pbc,
                                                                        cutoff)
    _check_overlap(offsets, neighbors, shifts, distances)
    return NeighborList(offsets, neighbors, shifts, vectors, distances, cutoff)


def _check_overlap(offsets, neighbors, shifts, distances, frame_size=0):
    """ValueError naming the first pair of atoms closer than 1e-6 Å (and its frame when the
    pairs are those of consecutive frames of ``frame_size`` atoms)."""
    overlap = np.flatnonzero(distances < 1e-6)
    if not overlap.size:
        return
    p = overlap[0]
    i = int(np.searchsorted(offsets, p, side="right") - 1)
    j = int(neighbors[p])
    where = ""
    if frame_size:
        where = f"frame {i // frame_size}: "
        i, j = i % frame_size, j % frame_size
    raise ValueError(f"{where}atoms {i} and {j} (image {shifts[p].tolist()}) overlap: "
                     f"distance {distances[p]:.3g} Å")


def neighbor_list_frames(positions, cells, pbc, cutoff) -> NeighborList:
    """Pairs of F frames of the same N atoms as those of one structure of F * N atoms.

    Atom ``a`` of frame ``f`` is atom ``f * N + a`` of the result, and no pair joins two
    frames: the descriptors, kernels and adjoints of a whole chunk of small frames then run as
    one call each instead of one Python round per frame (the batched prediction path).

    Parameters
    ----------
    positions : (F, N, 3) float64, Å
    cells : (F, 3, 3) float64, Å, rows are lattice vectors, or None for clusters
    pbc : (3,) bool or bool, shared by the frames
    cutoff : float, Å

    Returns
    -------
    NeighborList over F * N atoms. Clusters below :data:`DIRECT_BELOW` atoms per frame take
    every pair in one call; other structures get one neighbour search per frame, joined.

    Raises
    ------
    ValueError
        Non-finite positions (naming frame and atom), overlapping atoms, a bad cell or cutoff.
    """
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 3 or positions.shape[2] != 3:
        raise ValueError(f"positions must have shape (F, N, 3), got {positions.shape}")
    n_frames, n_atoms = positions.shape[:2]
    bad = ~np.isfinite(positions).all(axis=2)
    if bad.any():
        f, a = (int(k) for k in np.argwhere(bad)[0])
        raise ValueError(f"frame {f}: positions of atom {a} are not finite: {positions[f, a]}")
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    flat = np.ascontiguousarray(positions.reshape(n_frames * n_atoms, 3))
    if not pbc.any() and 0 < n_atoms < DIRECT_BELOW:
        _, _, _, cutoff = _check_inputs(flat[:1], None, pbc, cutoff)
        offsets, neighbors, vectors, distances = _nb.cluster_pairs(flat, cutoff, n_atoms)
        shifts = np.zeros((neighbors.shape[0], 3), dtype=np.int64)
        _check_overlap(offsets, neighbors, shifts, distances, n_atoms)
        return NeighborList(offsets, neighbors, shifts, vectors, distances, cutoff)
    lists = []
    for f in range(n_frames):
        try:
            lists.append(neighbor_list(positions[f], None if cells is None else cells[f], pbc,
                                       cutoff))
        except ValueError as err:
            raise ValueError(f"frame {f}: {err}") from None
    counts = np.concatenate([[0]] + [np.diff(nl.offsets) for nl in lists])
    return NeighborList(
        np.cumsum(counts), np.concatenate([nl.neighbors + f * n_atoms
                                           for f, nl in enumerate(lists)]),
        np.concatenate([nl.shifts for nl in lists]), np.concatenate([nl.vectors for nl in lists]),
        np.concatenate([nl.distances for nl in lists]), lists[0].cutoff)


def permute_atoms(pairs: NeighborList, order: np.ndarray) -> NeighborList:
    """The same pairs with the atoms renumbered: new atom ``k`` is old atom ``order[k]``.

    ``order`` : (N,) int64, a permutation of the atoms. The pairs of each centre keep their
    order, and vectors, distances and shifts are those of the pair (a relabelling changes no
    geometry). The batched prediction puts the atoms of each species next to each other, so
    that its kernel products work on contiguous blocks instead of gathered copies.
    """
    order = np.asarray(order, dtype=np.int64)
    if np.array_equal(order, np.arange(order.size)):
        return pairs
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    counts = np.diff(pairs.offsets)[order]
    offsets = np.zeros(order.size + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    take = np.repeat(pairs.offsets[order] - offsets[:-1], counts) + np.arange(offsets[-1])
    return NeighborList(offsets, inverse[pairs.neighbors[take]], pairs.shifts[take],
                        pairs.vectors[take], pairs.distances[take], pairs.cutoff)


def _binned_pairs(positions, cell, pbc, cutoff):
    """offsets, neighbors, shifts, vectors, distances by the linked-cell search (checked
    inputs, at least one atom)."""
    n_atoms = positions.shape[0]
    eff = _effective_cell(cell, pbc)
    frac = positions @ np.linalg.inv(eff)
    wrap = np.where(pbc, np.floor(frac), 0.0)
    frac_wrapped = frac - wrap
    # floor can leave 1.0 after subtraction for tiny negative values; clip keeps bins valid
    frac_wrapped = np.where(pbc, np.clip(frac_wrapped, 0.0, np.nextafter(1.0, 0.0)),
                            frac_wrapped)
    wrapped_positions = np.ascontiguousarray(frac_wrapped @ eff)

    plane_spacing = 1.0 / np.linalg.norm(np.linalg.inv(eff).T, axis=1)
    lower = frac_wrapped.min(axis=0)
    extent = frac_wrapped.max(axis=0) - lower
    thickness = np.where(pbc, plane_spacing, extent * plane_spacing)
    # bins of about half the cutoff: fewer distance tests than cutoff-wide bins
    n_bins = np.maximum(1, np.floor(2.0 * thickness / cutoff)).astype(np.int64)
    # keep the number of bins of the order of the number of atoms
    max_bins = max(27, 2 * n_atoms)
    while np.prod(n_bins) > max_bins:
        n_bins = np.maximum(1, n_bins // 2)
    width = thickness / n_bins
    with np.errstate(divide="ignore"):
        reach = np.where(width > 0, np.floor(cutoff / np.where(width > 0, width, 1.0)) + 1, 0)
    reach = reach.astype(np.int64)
    reach = np.where(pbc, reach, np.minimum(reach, n_bins - 1)).astype(np.int64)

    binning = frac_wrapped.copy()
    for k in np.flatnonzero(~pbc):
        binning[:, k] = (frac_wrapped[:, k] - lower[k]) / extent[k] if extent[k] > 0 else 0.0
    binning = np.ascontiguousarray(binning)

    bin_start, bin_atoms, atom_bin = _nb.bin_atoms(binning, n_bins)
    # vectors are written from the input positions (with the matching integer shifts), so
    # they are exactly consistent with them; along non-periodic rows eff differs from cell
    # but the shifts there are zero
    vector_cell = np.where(pbc[:, None], cell, eff)
    search = (wrapped_positions, vector_cell, cutoff, n_bins, reach, pbc, bin_start,
              bin_atoms, atom_bin)
    wrap = wrap.astype(np.int64)
    # room for the pairs of an atom at 1.5 times the mean density of the binned volume (a
    # centre with more is searched again): one distance test per candidate pair
    volume = abs(np.linalg.det(eff)) * np.prod(np.where(pbc, 1.0, np.maximum(
        extent, cutoff / plane_spacing)))
    expected = n_atoms * 4.0 / 3.0 * np.pi * cutoff ** 3 / volume
    capacity = int(min(1.5 * expected + 16, 1e6 / max(n_atoms, 1) + 16))
    with serial_if_small(n_atoms, "atoms"):
        counts, kept_neighbors, kept_shifts = _nb.search_pairs(*search, positions, wrap,
                                                               capacity)
        offsets = np.zeros(n_atoms + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        neighbors, shifts, vectors, distances = _nb.gather_pairs(
            *search, offsets, positions, wrap, kept_neighbors, kept_shifts)
    return offsets, neighbors, shifts, vectors, distances
