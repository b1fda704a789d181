"""The prediction expansion's pair grouping: renumbering fused with the species grouping
(``expand(atom_order=)``), the l = 0 radial table of the scalar-only expansion, and the batch
size of the models with the dipole kernel."""

import numpy as np
import pytest

from numbec import parallel
from numbec.descriptors import DescriptorSettings
from numbec.descriptors.expansion import expand
from numbec.descriptors.neighbors import neighbor_list, permute_atoms
from numbec.descriptors.radial_basis import radial_table
from numbec.models import CombinedModel, MonopoleModel

SETTINGS = DescriptorSettings(species=(1, 8), cutoff_radial=4.0, cutoff_angular=3.0,
                              sigma=0.5, n_radial=4, n_angular=4, l_max=3)


def _structure(rng, n=24):
    cell = np.diag([6.0, 6.5, 7.0])
    positions = rng.uniform(0, 6, (n, 3))
    numbers = rng.choice([1, 8], n)
    return positions, numbers, cell, np.array([True, True, False])


@pytest.mark.parametrize("l2_max", [0, 1])
def test_expand_with_atom_order_equals_expanding_the_permuted_list(l2_max):
    """One Numba pass renumbers and groups the pairs: the arrays are those of permute_atoms
    followed by the grouping, bit for bit, and the coefficients those of the permuted
    structure's own neighbour list (pairs of a centre in another order: to round-off)."""
    rng = np.random.default_rng(5)
    positions, numbers, cell, pbc = _structure(rng)
    order = rng.permutation(numbers.size)
    pairs = neighbor_list(positions, cell, pbc, SETTINGS.cutoff)
    fused = expand(positions[order], numbers[order], None, pbc, SETTINGS, l2_max, pairs=pairs,
                   atom_order=order)
    separate = expand(positions[order], numbers[order], None, pbc, SETTINGS, l2_max,
                      pairs=permute_atoms(pairs, order))
    for name in ("offsets", "neighbors", "shifts", "vectors", "distances"):
        np.testing.assert_array_equal(getattr(fused.pairs, name),
                                      getattr(separate.pairs, name), err_msg=name)
    for name in ("groups", "ends", "c2", "c3"):
        np.testing.assert_array_equal(getattr(fused, name), getattr(separate, name),
                                      err_msg=name)
    own = expand(positions[order], numbers[order], cell, pbc, SETTINGS, l2_max)
    np.testing.assert_allclose(fused.c2, own.c2, rtol=0, atol=1e-13)
    np.testing.assert_allclose(fused.c3, own.c3, rtol=0, atol=1e-13)
    _check_bands(fused, SETTINGS)


def _check_bands(ex, settings):
    """Each species group holds the pairs within both cutoffs, then within the larger one
    only, then beyond both, each band in the neighbour list's order (the counting sort), and
    its ends sit at the two cutoffs."""
    nl, channel = ex.pairs, ex.channel
    near = min(settings.cutoff_radial, settings.cutoff_angular)
    far = max(settings.cutoff_radial, settings.cutoff_angular)
    for i in range(nl.n_atoms):
        assert ex.groups[i, 0] == nl.offsets[i]
        assert ex.groups[i, -1] == nl.offsets[i + 1]
        for j in range(settings.n_species):
            g0, g1 = ex.groups[i, j], ex.groups[i, j + 1]
            d = nl.distances[g0:g1]
            assert np.all(channel[nl.neighbors[g0:g1]] == j)
            band = np.where(d < near, 0, np.where(d < far, 1, 2))
            assert np.all(np.diff(band) >= 0)
            assert ex.ends[i, j, 0] == g0 + np.sum(d < settings.cutoff_radial)
            assert ex.ends[i, j, 1] == g0 + np.sum(d < settings.cutoff_angular)
            assert np.all(d[:ex.ends[i, j, 0] - g0] < settings.cutoff_radial)
            assert np.all(d[:ex.ends[i, j, 1] - g0] < settings.cutoff_angular)


def _shuffled_within_centres(pairs, rng):
    """The same neighbour list with the pairs of every centre in a random order."""
    from numbec.descriptors.neighbors import NeighborList

    perm = np.concatenate([pairs.offsets[i] + rng.permutation(pairs.offsets[i + 1]
                                                               - pairs.offsets[i])
                           for i in range(pairs.n_atoms)]).astype(np.int64)
    return NeighborList(pairs.offsets, pairs.neighbors[perm], pairs.shifts[perm],
                        pairs.vectors[perm], pairs.distances[perm], pairs.cutoff)


@pytest.mark.parametrize("cutoffs", [(4.0, 3.0), (3.0, 4.0), (3.5, 3.5)])
def test_groups_hold_the_cutoff_bands_in_input_order(cutoffs):
    """Either cutoff may be the larger one. Within a band the pairs keep the order of the
    neighbour list (a counting sort: reproducible), and the coefficients and the pair
    gradients do not depend on that order (to round-off)."""
    settings = DescriptorSettings(species=(1, 8), cutoff_radial=cutoffs[0],
                                  cutoff_angular=cutoffs[1], sigma=0.5, n_radial=4,
                                  n_angular=4, l_max=3)
    rng = np.random.default_rng(11)
    positions, numbers, cell, pbc = _structure(rng, 30)
    pairs = neighbor_list(positions, cell, pbc, settings.cutoff)
    ex = expand(positions, numbers, cell, pbc, settings, 1, pairs=pairs)
    _check_bands(ex, settings)
    near, far = min(cutoffs), max(cutoffs)
    nl = ex.pairs
    for i in range(nl.n_atoms):
        o0, o1 = pairs.offsets[i], pairs.offsets[i + 1]
        source = [(int(j), tuple(s)) for j, s in zip(pairs.neighbors[o0:o1],
                                                      pairs.shifts[o0:o1], strict=True)]
        grouped = [(int(j), tuple(s)) for j, s in zip(nl.neighbors[o0:o1], nl.shifts[o0:o1],
                                                       strict=True)]
        assert sorted(source) == sorted(grouped)
        rank = np.array([source.index(p) for p in grouped])
        d = nl.distances[o0:o1]
        band = np.where(d < near, 0, np.where(d < far, 1, 2))
        key = ex.channel[nl.neighbors[o0:o1]] * 3 + band
        for b in np.unique(key):
            assert np.all(np.diff(rank[key == b]) > 0)
    other = expand(positions, numbers, cell, pbc, settings, 1,
                   pairs=_shuffled_within_centres(pairs, rng))
    assert not np.array_equal(other.pairs.neighbors, nl.neighbors)
    np.testing.assert_allclose(other.c2, ex.c2, rtol=0, atol=1e-13)
    np.testing.assert_allclose(other.c3, ex.c3, rtol=0, atol=1e-13)
    a2, a3 = ex.adjoint_arrays(2)
    a2[:] = rng.normal(size=a2.shape)
    a3[:] = rng.normal(size=a3.shape)
    np.testing.assert_allclose(other.scatter_with_self(other.backprop(a2, a3)),
                               ex.scatter_with_self(ex.backprop(a2, a3)), rtol=0, atol=1e-12)


def test_atom_order_needs_a_neighbour_list():
    rng = np.random.default_rng(1)
    positions, numbers, cell, pbc = _structure(rng, 6)
    with pytest.raises(ValueError, match="pairs="):
        expand(positions, numbers, cell, pbc, SETTINGS, 0, atom_order=np.arange(6))


def test_radial_table_up_to_l0_holds_the_l0_columns():
    full = radial_table(4.0, 0.5, 4, 1)
    lower = full.up_to(0)
    np.testing.assert_array_equal(lower.values, full.values[:, 0::2])
    np.testing.assert_array_equal(lower.derivatives, full.derivatives[:, 0::2])
    assert lower.l_max == 0 and full.l_max == 1
    assert full.up_to(0) is lower and full.up_to(1) is full


def test_dipole_kernel_models_take_smaller_batches(monkeypatch):
    assert parallel.batch_frames(6, MonopoleModel().batch_atoms) == parallel.BATCH_ATOMS // 6
    assert parallel.batch_frames(6, CombinedModel().batch_atoms) == (
        parallel.VECTOR_BATCH_ATOMS // 6)
    # a smaller BATCH_ATOMS (as the batching tests set it) caps every model
    monkeypatch.setattr(parallel, "BATCH_ATOMS", 12)
    assert parallel.batch_frames(6, CombinedModel().batch_atoms) == 2
