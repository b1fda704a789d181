"""Selection of sparse reference environments: CUR leverage scores and farthest points."""

from __future__ import annotations

import numpy as np
import pytest

from numbec.models.kernels import normalize
from numbec.models.sparsify import cur_select, fps_select, select


def _clusters(rng, n_clusters=4, per_cluster=(30, 3, 12, 5), dim=10, spread=0.01):
    """Unit rows in tight clusters around orthogonal directions (very unequal sizes)."""
    centres = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:n_clusters]
    labels = np.repeat(np.arange(n_clusters), per_cluster[:n_clusters])
    rows = centres[labels] + spread * rng.normal(size=(labels.size, dim))
    perm = rng.permutation(labels.size)
    return normalize(rows[perm])[0], labels[perm]


@pytest.mark.parametrize("method", ["cur", "fps"])
def test_one_point_per_cluster(method):
    """Picking as many points as there are clusters takes one from each, also from the
    small ones (random sampling would mostly pick the large cluster)."""
    rng = np.random.default_rng(0)
    unit, labels = _clusters(rng)
    idx = select(unit, 4, method, zeta=2, seed=1)
    assert sorted(labels[idx]) == [0, 1, 2, 3]


def test_cur_beyond_rank_and_distinct():
    rng = np.random.default_rng(1)
    unit, _ = _clusters(rng, dim=3, n_clusters=3, per_cluster=(10, 10, 10))
    idx = cur_select(unit, 12)  # more than the 3 singular vectors
    assert idx.size == 12 and np.unique(idx).size == 12
    np.testing.assert_array_equal(cur_select(unit, 12), idx)  # deterministic


def test_fps_seeded_and_distinct():
    rng = np.random.default_rng(2)
    unit = normalize(rng.normal(size=(40, 6)))[0]
    a = fps_select(unit, 10, zeta=3, seed=5)
    assert np.unique(a).size == 10
    np.testing.assert_array_equal(fps_select(unit, 10, zeta=3, seed=5), a)
    # each new point is the farthest from those chosen before it
    for k in range(1, 10):
        dist = 2 - 2 * (unit @ unit[a[:k]].T) ** 3
        nearest = dist.min(axis=1)
        nearest[a[:k]] = -np.inf
        assert nearest[a[k]] == pytest.approx(nearest.max())


def test_errors():
    unit = normalize(np.random.default_rng(3).normal(size=(5, 4)))[0]
    with pytest.raises(ValueError, match=r"species O \(Z=8\): n_sparse = 6 but only 5"):
        select(unit, 6, "cur", where="species O (Z=8)")
    with pytest.raises(ValueError, match="n_sparse = 6 but only 5"):
        select(unit, 6, "fps")
    with pytest.raises(ValueError, match="unknown sparse selection"):
        select(unit, 2, "random")
    with pytest.raises(ValueError, match=">= 1"):
        cur_select(unit, 0)
