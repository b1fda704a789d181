"""Basis functions evaluated for all pairs of a centre at once (pair_block_numba) against the
one-pair kernels, which test_descriptors.py checks against scipy and finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from numbec.descriptors.pair_block_numba import (
    harmonics_block,
    legendre_tables,
    splines_block,
    unit_vectors,
)
from numbec.descriptors.radial_basis import radial_table
from numbec.descriptors.radial_basis_numba import hermite_eval
from numbec.descriptors.spherical_harmonics_numba import sph_harm_many


def _vectors(seed=0, n=40):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, 3)) * 2.0
    # the poles and the axes, where the azimuthal recurrences degenerate
    vectors[:6] = [[0, 0, 1.3], [0, 0, -0.7], [2.0, 0, 0], [0, -1.1, 0], [1, 1, 0], [0, 1, -1]]
    return vectors


@pytest.mark.parametrize("l_max", [0, 1, 2, 4, 6])
def test_harmonics_block_equals_one_pair_harmonics_and_gradients(l_max):
    vectors = _vectors()
    k = vectors.shape[0]
    distances = np.linalg.norm(vectors, axis=1)
    kmax = k + 3  # work arrays may be wider than the block
    ux, uy, uz, inv_d = (np.empty(kmax) for _ in range(4))
    unit_vectors(vectors, distances, 0, k, ux, uy, uz, inv_d)
    n_lm = (l_max + 1) ** 2
    leg = np.empty((l_max + 1, l_max + 2, kmax))
    cm, sm = np.empty((l_max + 1, kmax)), np.empty((l_max + 1, kmax))
    y = np.full((n_lm, kmax), np.nan)
    dy = np.full((n_lm, 3, kmax), np.nan)
    harmonics_block(ux, uy, uz, inv_d, k, l_max, *legendre_tables(l_max), leg, cm, sm, y, dy,
                    True)
    values, grads = sph_harm_many(vectors, l_max)
    np.testing.assert_allclose(y[:, :k].T, values, rtol=0, atol=1e-13)
    np.testing.assert_allclose(dy[:, :, :k].transpose(2, 0, 1), grads, rtol=0, atol=1e-12)
    y_only = np.full((n_lm, kmax), np.nan)
    harmonics_block(ux, uy, uz, inv_d, k, l_max, *legendre_tables(l_max), leg, cm, sm, y_only,
                    np.empty((1, 3, 1)), False)
    np.testing.assert_array_equal(y_only[:, :k], y[:, :k])


def test_splines_block_equals_one_pair_spline_and_is_zero_beyond_the_cutoff():
    table = radial_table(4.0, 0.5, 6, 3)
    distances = np.concatenate([np.linspace(0.3, 3.999, 25), [4.0, 4.7]])
    k = distances.size
    n_col = table.values.shape[1]
    h = np.full((n_col, k), np.nan)
    dh = np.full((n_col, k), np.nan)
    splines_block(distances, 0, k, table.cutoff, table.inv_spacing, table.values,
                  table.derivatives, h, dh, True)
    ref_h, ref_dh = np.empty(n_col), np.empty(n_col)
    for q, d in enumerate(distances):
        if d < table.cutoff:
            hermite_eval(d, table.inv_spacing, table.values, table.derivatives, ref_h, ref_dh)
            np.testing.assert_allclose(h[:, q], ref_h, rtol=0, atol=1e-14)
            np.testing.assert_allclose(dh[:, q], ref_dh, rtol=0, atol=1e-13)
        else:
            assert not h[:, q].any() and not dh[:, q].any()


@pytest.mark.parametrize("n_channels, l2_max", [(1, 0), (1, 1), (3, 1), (4, 0), (4, 1), (5, 1),
                                                (8, 1)])
@pytest.mark.parametrize("periodic, cutoffs", [(True, (4.5, 3.5)), (False, (3.0, 3.8))])
def test_channel_block_backprop_equals_per_channel_backprop(n_channels, l2_max, periodic,
                                                            cutoffs):
    """The two pair back-propagation kernels (one pass per channel, and channels four at a
    time per pair) agree for any channel count, with the two-body part of the scalar (l = 0)
    and of the vector descriptor (l <= 1), with the radial cutoff beyond the angular one and
    the other way round (pairs within only one of the two)."""
    from numbec.descriptors import DescriptorSettings
    from numbec.descriptors import expansion_numba as _ex
    from numbec.descriptors.expansion import expand

    rng = np.random.default_rng(n_channels)
    if periodic:
        from numbec.io import example_file, read_bec

        atoms = read_bec(example_file("sio2_quartz_subset"), index=0)[0]
        positions, numbers, cell = atoms.positions, atoms.numbers, np.asarray(atoms.cell)
    else:  # a three-species cluster
        positions = rng.uniform(0, 6.0, (30, 3))
        numbers = rng.choice([1, 6, 8], 30)
        cell = None
    settings = DescriptorSettings(species=sorted(set(numbers.tolist())), n_radial=5,
                                  n_angular=4, l_max=3, cutoff_radial=cutoffs[0],
                                  cutoff_angular=cutoffs[1])
    ex = expand(positions, numbers, cell, periodic, settings, l2_max=l2_max)
    a2, a3 = ex.adjoint_arrays(n_channels)
    a2[:] = rng.normal(size=a2.shape)
    a3[:] = rng.normal(size=a3.shape)
    per_channel = _ex.pair_backprop(a2, a3, *ex.block_args())
    blocks = _ex.pair_backprop_channel_blocks(a2, a3, *ex.block_args())
    assert np.abs(per_channel).max() > 0.1
    np.testing.assert_allclose(blocks, per_channel, rtol=0,
                               atol=1e-12 * np.abs(per_channel).max())
