"""The single-pass neighbour search (search_pairs + gather_pairs) against a two-pass one
(count_pairs, then every centre searched again to write its pairs, as the search did before):
the same pairs in the same order, bit for bit, also for centres with more pairs than the
single pass keeps."""

from __future__ import annotations

import numpy as np
import pytest

from numbec.descriptors import neighbors
from numbec.descriptors import neighbors_numba as nb


def _two_pass(monkeypatch, positions, cell, pbc, cutoff):
    """The neighbour list with the counting pass, then the filling pass."""

    def search_by_counting(pos, vector_cell, cut, n_bins, reach, periodic, bin_start,
                           bin_atoms, atom_bin, input_positions, wrap, capacity):
        eff = neighbors._effective_cell(cell, np.broadcast_to(pbc, (3,)))
        counts = nb.count_pairs(pos, eff, cut, n_bins, reach, periodic, bin_start, bin_atoms,
                                atom_bin)
        n = pos.shape[0]
        return counts, np.empty((n, 0), np.int64), np.empty((n, 0, 3), np.int64)

    with monkeypatch.context() as m:
        m.setattr(neighbors._nb, "search_pairs", search_by_counting)
        return neighbors.neighbor_list(positions, cell, pbc, cutoff)


def _with_capacity(monkeypatch, capacity, positions, cell, pbc, cutoff):
    search = nb.search_pairs

    def fixed(*args):
        return search(*args[:-1], capacity)

    with monkeypatch.context() as m:
        m.setattr(neighbors._nb, "search_pairs", fixed)
        return neighbors.neighbor_list(positions, cell, pbc, cutoff)


def _assert_identical(a, b):
    for name in ("offsets", "neighbors", "shifts", "vectors", "distances"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("pbc", [[True, True, True], [True, False, True], [False] * 3])
def test_single_pass_equals_two_passes_bit_for_bit(monkeypatch, seed, pbc):
    rng = np.random.default_rng(seed)
    cell = np.eye(3) * rng.uniform(5.0, 8.0) + rng.normal(scale=1.0, size=(3, 3))
    positions = rng.uniform(-0.3, 1.3, size=(300, 3)) @ cell  # not wrapped
    cutoff = rng.uniform(2.5, 5.0)
    reference = _two_pass(monkeypatch, positions, cell, pbc, cutoff)
    assert reference.n_pairs > 0
    _assert_identical(neighbors.neighbor_list(positions, cell, pbc, cutoff), reference)
    # centres beyond the kept capacity are searched again: every centre, some, none
    counts = np.diff(reference.offsets)
    for capacity in (0, int(np.median(counts)), int(counts.max()) + 1):
        _assert_identical(_with_capacity(monkeypatch, capacity, positions, cell, pbc, cutoff),
                          reference)


def test_small_cell_many_images(monkeypatch):
    """More images of each atom than the density estimate expects is still exact."""
    cell = np.array([[2.1, 0.0, 0.0], [0.9, 1.9, 0.0], [0.3, -0.4, 2.4]])
    positions = np.random.default_rng(3).uniform(0, 1, size=(3, 3)) @ cell
    reference = _two_pass(monkeypatch, positions, cell, True, 7.5)
    _assert_identical(neighbors.neighbor_list(positions, cell, True, 7.5), reference)
    _assert_identical(_with_capacity(monkeypatch, 5, positions, cell, True, 7.5), reference)
