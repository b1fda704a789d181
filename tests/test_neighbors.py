"""Neighbour lists against ASE's reference implementation."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.neighborlist import neighbor_list as ase_neighbor_list

import numbec.descriptors.neighbors
from numbec.descriptors.neighbors import neighbor_list


def _sorted_ase(positions, cell, pbc, cutoff):
    atoms = Atoms(numbers=np.ones(len(positions), int), positions=positions, cell=cell, pbc=pbc)
    i, j, shifts, vectors = ase_neighbor_list("ijSD", atoms, cutoff)
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], j, i))
    return i[order], j[order], shifts[order], vectors[order]


def _assert_same_as_ase(positions, cell, pbc, cutoff):
    nl = neighbor_list(positions, cell, pbc, cutoff)
    i, j, shifts, vectors = _sorted_ase(positions, cell, pbc, cutoff)
    centers = nl.centers
    order = np.lexsort((nl.shifts[:, 2], nl.shifts[:, 1], nl.shifts[:, 0], nl.neighbors,
                        centers))
    assert nl.n_pairs == len(i)
    np.testing.assert_array_equal(centers[order], i)
    np.testing.assert_array_equal(nl.neighbors[order], j)
    np.testing.assert_array_equal(nl.shifts[order], shifts)
    np.testing.assert_allclose(nl.vectors[order], vectors, atol=1e-12)
    np.testing.assert_allclose(nl.distances, np.linalg.norm(nl.vectors, axis=1), rtol=1e-14)
    # CSR: pairs of each centre are contiguous
    assert np.all(np.diff(centers) >= 0)
    assert nl.offsets[-1] == nl.n_pairs
    return nl


@pytest.mark.parametrize("seed", range(4))
def test_random_triclinic_cells_match_ase(seed):
    rng = np.random.default_rng(seed)
    cell = np.eye(3) * rng.uniform(4.0, 7.0) + rng.normal(scale=1.2, size=(3, 3))
    positions = rng.uniform(-0.5, 1.5, size=(20, 3)) @ cell  # not wrapped
    for pbc in ([True, True, True], [True, False, True], [False, False, True]):
        _assert_same_as_ase(positions, cell, pbc, rng.uniform(2.0, 6.0))


def test_tiny_cell_big_cutoff_counts_every_image_including_own():
    rng = np.random.default_rng(7)
    cell = np.array([[2.1, 0.0, 0.0], [0.9, 1.9, 0.0], [0.3, -0.4, 2.4]])
    positions = rng.uniform(0, 1, size=(2, 3)) @ cell
    nl = _assert_same_as_ase(positions, cell, True, 7.5)
    own = nl.neighbors == nl.centers
    assert own.sum() > 100  # many images of each atom itself
    # one atom: only its own images, and they come in +-S pairs
    nl1 = _assert_same_as_ase(positions[:1], cell, True, 5.0)
    np.testing.assert_allclose(nl1.vectors.sum(axis=0), 0.0, atol=1e-9)


@pytest.mark.parametrize("direct_below", [0, 10**6], ids=["binned", "every-pair"])
def test_cluster_matches_ase_and_ignores_cell(direct_below, monkeypatch):
    """Both searches of a cluster: the bins and the direct test of every pair (small clusters)."""
    monkeypatch.setattr(numbec.descriptors.neighbors, "DIRECT_BELOW", direct_below)
    rng = np.random.default_rng(3)
    positions = rng.uniform(-4, 4, size=(40, 3))
    nl = _assert_same_as_ase(positions, np.zeros((3, 3)), False, 3.0)
    nl2 = neighbor_list(positions, None, False, 3.0)
    np.testing.assert_array_equal(nl.neighbors, nl2.neighbors)
    # planar cluster (zero extent along one axis) and a single atom
    flat = positions.copy()
    flat[:, 2] = 0.0
    _assert_same_as_ase(flat, np.zeros((3, 3)), False, 2.5)
    assert neighbor_list(positions[:1], None, False, 3.0).n_pairs == 0
    with pytest.raises(ValueError, match="atoms 0 and 1 .* overlap"):
        neighbor_list(np.zeros((2, 3)), None, False, 2.0)


def test_larger_periodic_box_uses_several_bins():
    rng = np.random.default_rng(11)
    cell = np.diag([14.0, 15.0, 16.0]) + rng.normal(scale=0.5, size=(3, 3))
    positions = rng.uniform(0, 1, size=(300, 3)) @ cell
    _assert_same_as_ase(positions, cell, True, 3.5)


def test_bad_input_is_rejected_with_a_clear_message():
    positions = np.zeros((3, 3))
    positions[1] = [1.0, 0.0, 0.0]
    positions[2] = [np.nan, 0.0, 0.0]
    with pytest.raises(ValueError, match="atom 2"):
        neighbor_list(positions, np.eye(3) * 5, True, 2.0)
    with pytest.raises(ValueError, match="overlap"):
        neighbor_list(np.zeros((2, 3)), np.eye(3) * 5, True, 2.0)
    with pytest.raises(ValueError, match="cutoff"):
        neighbor_list(np.zeros((1, 3)), np.eye(3) * 5, True, -1.0)
    with pytest.raises(ValueError, match="degenerate"):
        neighbor_list(np.zeros((1, 3)), np.zeros((3, 3)), True, 2.0)


def test_permute_atoms_is_the_list_of_the_permuted_structure():
    """Renumbering the atoms of a list gives the list of the renumbered structure: the same
    (centre, neighbour, shift) pairs with the same vectors, centres in the new order."""
    from numbec.descriptors.neighbors import permute_atoms

    rng = np.random.default_rng(3)
    cell = np.diag([5.0, 5.5, 6.0])
    positions = rng.uniform(0, 5, (20, 3))
    pbc = np.array([True, True, False])
    order = rng.permutation(20)
    permuted = permute_atoms(neighbor_list(positions, cell, pbc, 3.0), order)
    direct = neighbor_list(positions[order], cell, pbc, 3.0)
    np.testing.assert_array_equal(permuted.offsets, direct.offsets)

    def pairs(nl):
        rows = np.column_stack([nl.centers, nl.neighbors, nl.shifts])
        key = np.lexsort(rows.T[::-1])
        return rows[key], nl.vectors[key]

    (rows_p, vec_p), (rows_d, vec_d) = pairs(permuted), pairs(direct)
    np.testing.assert_array_equal(rows_p, rows_d)
    np.testing.assert_allclose(vec_p, vec_d, atol=1e-12)
    assert permute_atoms(direct, np.arange(20)) is direct


def test_a_nan_cell_row_counts_only_along_a_periodic_direction():
    """The cell rows of free directions are ignored, NaN included (a cluster written with a
    NaN cell); a NaN row along a periodic direction is an error naming the row."""
    positions = np.array([[0.0, 0.0, 0.0], [1.0, 0.2, 0.0], [0.0, 1.1, 0.3]])
    cell = 5.0 * np.eye(3)
    slab = np.array([True, True, False])
    reference = neighbor_list(positions, cell, slab, 3.0)
    holed = cell.copy()
    holed[2] = np.nan
    got = neighbor_list(positions, holed, slab, 3.0)
    np.testing.assert_array_equal(got.neighbors, reference.neighbors)
    np.testing.assert_array_equal(got.vectors, reference.vectors)
    holed = cell.copy()
    holed[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"cell vector 1 \(periodic\) contains NaN"):
        neighbor_list(positions, holed, slab, 3.0)
