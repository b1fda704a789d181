"""Per-atom posterior std of the local outputs (``atom_std=True``: ``charge_std``,
``local_dipole_std``; :mod:`numbec.models.atom_std`) against rows built independently."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_model_checks import (
    fitted_random_model,
    predict,
    training_frames,
    water_cell,
    water_cluster,
)
from scipy.spatial.transform import Rotation

from numbec import parallel
from numbec.descriptors import compute_descriptors, compute_vector_descriptors
from numbec.models import CombinedModel, DipoleModel, MonopoleModel, SpeciesMeanModel, atom_std

MODELS = (MonopoleModel, DipoleModel, CombinedModel)


def _with_covariance(model, rng, scale=1.7):
    """A random positive definite covariance (strong correlations) and a variance scale."""
    c = model.n_columns
    a = rng.normal(size=(c, c)) + 3.0 * rng.normal(size=(c, 1))
    model.covariance = (a @ a.T) / c + 0.01 * np.eye(c)
    model.variance_scale = scale
    return model


def _model(cls, rng, periodic, zeta=3):
    return _with_covariance(fitted_random_model(cls, rng, periodic, zeta=zeta), rng)


def _charge_rows(model, atoms):
    """(N, M) rows of the neutral kernel charges by unit weight vectors, through the
    model's public ``charges`` output (linear in the weights)."""
    m = model.sparse_unit.shape[0]
    w0 = model.weights.copy()
    base = predict(model, atoms)["charges"]
    rows = np.empty((len(atoms), m))
    try:
        for b in range(m):
            model.weights = w0.copy()
            model.weights[b] += 1.0
            rows[:, b] = predict(model, atoms)["charges"] - base
    finally:
        model.weights = w0
    return rows


def _local_dipoles(model, atoms, weights):
    """(S, N, 3) local dipoles mu_i of S weight vectors from the per-structure descriptor
    functions and the kernel formula of docs/method.md (not the batched prediction path)."""
    m = model.sparse_unit.shape[0]
    s = model.vector_scale
    desc = compute_descriptors(atoms.positions, atoms.numbers, np.asarray(atoms.cell),
                               atoms.pbc, model.settings).values
    v = compute_vector_descriptors(atoms.positions, atoms.numbers, np.asarray(atoms.cell),
                                   atoms.pbc, model.settings).values
    norms = np.linalg.norm(desc, axis=1, keepdims=True)
    unit = desc / np.where(norms > 0, norms, 1.0)
    same = atoms.numbers[:, None] == model.sparse_species[None, :]
    kernel = np.where(same, (unit @ model.sparse_unit.T) ** (model.zeta - 1), 0.0)  # (N, M)
    off = m if model._monopole else 0
    wd = np.atleast_2d(weights)[:, off:].reshape(-1, m, 3)                   # (S, M, 3)
    # mu_i^a = sum_{b nu} k_ib (V_i^a / s . sparse_vectors[b, nu]) w_{b nu}
    vv = np.einsum("iak,bnk->iabn", v / s, model.sparse_vectors)
    return np.einsum("ib,iabn,sbn->sia", kernel, vv, wd)


def _dipole_rows(model, atoms):
    """(N, 3, C) rows of the local dipoles by unit weight vectors."""
    eye = np.eye(model.n_columns)
    return np.moveaxis(_local_dipoles(model, atoms, eye), 0, -1)


@pytest.mark.parametrize("periodic", [False, True], ids=["molecule", "periodic"])
@pytest.mark.parametrize("cls", (MonopoleModel, CombinedModel), ids=lambda c: c.__name__)
def test_charge_std_equals_explicit_rows(cls, periodic):
    rng = np.random.default_rng(11)
    model = _model(cls, rng, periodic)
    atoms = (water_cell if periodic else water_cluster)(rng)
    out = predict(model, atoms, atom_std=True)
    g = _charge_rows(model, atoms)
    m = g.shape[1]
    # the full covariance (charge block), scaled as bec_std's epistemic part
    ref = np.sqrt(model.variance_scale * np.einsum("ib,bc,ic->i", g,
                                                   model.covariance[:m, :m], g))
    assert ref.min() > 1e-3  # not trivial
    np.testing.assert_allclose(out["charge_std"], ref, rtol=1e-9)
    # the neutral rows of a frame sum to zero: every atom sees the other species' columns
    np.testing.assert_allclose(g.sum(axis=0), 0.0, atol=1e-10)
    assert ("local_dipole_std" in out) == model._dipole


@pytest.mark.parametrize("periodic", [False, True], ids=["molecule", "periodic"])
@pytest.mark.parametrize("cls", (DipoleModel, CombinedModel), ids=lambda c: c.__name__)
def test_local_dipole_std_equals_explicit_rows(cls, periodic):
    rng = np.random.default_rng(12)
    model = _model(cls, rng, periodic)
    atoms = (water_cell if periodic else water_cluster)(rng)
    out = predict(model, atoms, atom_std=True)
    g = _dipole_rows(model, atoms)                                           # (N, 3, C)
    cov = model.variance_scale * model.covariance   # full: cross-blocks are zero rows of g
    ref = np.sqrt(np.einsum("iac,cd,iad->i", g, cov, g))
    assert ref.min() > 1e-3
    np.testing.assert_allclose(out["local_dipole_std"], ref, rtol=1e-9)
    assert ("charge_std" in out) == model._monopole


def test_local_dipoles_add_up_to_the_model_dipole():
    """The independent mu_i of the tests are the model's: for a molecule of a DipoleModel
    their sum is the dipole minus the baseline charges' part."""
    rng = np.random.default_rng(13)
    model = _model(DipoleModel, rng, False)
    atoms = water_cluster(rng, 3)
    mu = _local_dipoles(model, atoms, model.weights)[0]
    base = model._baseline(atoms.numbers) @ atoms.positions
    np.testing.assert_allclose(mu.sum(axis=0) + base, predict(model, atoms)["dipole"],
                               atol=1e-10)


def test_sampled_weights_give_the_same_std():
    """Sample standard deviation over weights drawn from N(w, s_w Sigma)."""
    rng = np.random.default_rng(14)
    model = _model(CombinedModel, rng, False)
    atoms = water_cluster(rng)
    out = predict(model, atoms, atom_std=True)
    n = 4000
    chol = np.linalg.cholesky(model.variance_scale * model.covariance)
    samples = model.weights[None] + rng.standard_normal((n, model.n_columns)) @ chol.T
    g = _charge_rows(model, atoms)
    m = g.shape[1]
    q = samples[:, :m] @ g.T                                                 # (S, N)
    np.testing.assert_allclose(q.std(axis=0), out["charge_std"], rtol=0.08)
    mu = _local_dipoles(model, atoms, samples)                               # (S, N, 3)
    spread = np.sqrt(mu.var(axis=0).sum(axis=1))
    np.testing.assert_allclose(spread, out["local_dipole_std"], rtol=0.08)


@pytest.mark.parametrize("periodic", [False, True], ids=["molecule", "periodic"])
@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_batched_equals_frame_by_frame(cls, periodic, monkeypatch):
    rng = np.random.default_rng(15)
    model = _model(cls, rng, periodic)
    base = (water_cell if periodic else water_cluster)(rng)
    positions = np.stack([base.positions + rng.normal(0.0, 0.08, base.positions.shape)
                          for _ in range(7)])
    cells = np.stack([np.asarray(base.cell) * (1.0 + 0.01 * k) for k in range(7)])
    monkeypatch.setattr(parallel, "BATCH_ATOMS", 3 * len(base))  # batches of 3 frames
    monkeypatch.setattr(atom_std, "ATOM_BLOCK", 5)  # product blocks across frames
    batch = model.predict_frames(positions, base.numbers, cells if periodic else None,
                                 base.pbc, atom_std=True)
    names = {"charge_std"} if cls is MonopoleModel else (
        {"local_dipole_std"} if cls is DipoleModel else {"charge_std", "local_dipole_std"})
    assert names <= set(batch)
    for f in range(7):
        atoms = base.copy()
        atoms.positions = positions[f]
        if periodic:
            atoms.cell = cells[f]
        single = predict(model, atoms, atom_std=True)
        for key in names:
            assert batch[key].shape == (7, len(base))
            np.testing.assert_allclose(batch[key][f], single[key], rtol=0, atol=1e-12,
                                       err_msg=f"{key}, frame {f}")
    plain = model.predict_frames(positions, base.numbers, cells if periodic else None,
                                 base.pbc)
    assert not names & set(plain)  # off by default
    for key, value in plain.items():
        np.testing.assert_array_equal(batch[key], value)


@pytest.mark.parametrize("periodic", [False, True], ids=["molecule", "periodic"])
def test_rotation_invariance(periodic):
    rng = np.random.default_rng(16)
    model = _model(CombinedModel, rng, periodic)
    atoms = (water_cell if periodic else water_cluster)(rng)
    out = predict(model, atoms, atom_std=True)
    rot = Rotation.from_euler("xyz", [0.7, -1.1, 2.3]).as_matrix()
    turned = atoms.copy()
    turned.positions = atoms.positions @ rot.T
    if periodic:
        turned.cell = np.asarray(atoms.cell) @ rot.T
    out_r = predict(model, turned, atom_std=True)
    for key in ("charge_std", "local_dipole_std"):
        np.testing.assert_allclose(out_r[key], out[key], rtol=1e-9)


def test_permutation_permutes():
    rng = np.random.default_rng(17)
    model = _model(CombinedModel, rng, False)
    atoms = water_cluster(rng, 3)
    out = predict(model, atoms, atom_std=True)
    perm = rng.permutation(len(atoms))
    out_p = predict(model, atoms[perm], atom_std=True)
    for key in ("charge_std", "local_dipole_std"):
        np.testing.assert_allclose(out_p[key], out[key][perm], rtol=1e-10)


def test_zero_covariance_gives_zero():
    rng = np.random.default_rng(18)
    model = _model(CombinedModel, rng, True)
    model.covariance = np.zeros_like(model.covariance)
    out = predict(model, water_cell(rng), atom_std=True)
    assert np.all(out["charge_std"] == 0.0) and np.all(out["local_dipole_std"] == 0.0)


def test_variance_scale_scales_and_isolated_atom():
    """The std scales with sqrt(s_w); an isolated atom has no kernel dipole (0) but its
    neutral charge still moves with the others' (g_i = -mean row)."""
    rng = np.random.default_rng(19)
    model = _model(CombinedModel, rng, False)
    atoms = water_cluster(rng)
    atoms += water_cluster(rng, 1)[:1]  # an oxygen far away
    atoms.positions[-1] = [40.0, 40.0, 40.0]
    out = predict(model, atoms, atom_std=True)
    model.variance_scale *= 4.0
    out4 = predict(model, atoms, atom_std=True)
    for key in ("charge_std", "local_dipole_std"):
        np.testing.assert_allclose(out4[key], 2.0 * out[key], rtol=1e-12)
    assert out["local_dipole_std"][-1] == 0.0 and out["charge_std"][-1] > 0.0


def test_negative_variance_is_named():
    rng = np.random.default_rng(20)
    model = _model(MonopoleModel, rng, False)
    model.covariance = -model.covariance
    with pytest.raises(ValueError, match=r"frame 0: atom \d+: the posterior variance of its "
                                         "charge"):
        predict(model, water_cluster(rng), atom_std=True)


def test_model_without_kernels_is_refused_by_predict():
    import xarray as xr

    from numbec import predict as stream_predict

    rng = np.random.default_rng(21)
    frames = training_frames(rng, False)
    model = SpeciesMeanModel.fit(frames)
    atoms = frames[0]
    ds = xr.Dataset({"positions": (("frame", "atom", "xyz"), atoms.positions[None]),
                     "cell": (("frame", "cell_vector", "xyz"), np.zeros((1, 3, 3))),
                     "numbers": (("atom",), atoms.numbers),
                     "pbc": (("xyz",), np.zeros(3, dtype=bool))}, attrs={"timestep": 1.0})
    with pytest.raises(ValueError, match="SpeciesMeanModel has no per-atom posterior std"):
        stream_predict(model, ds, atom_std=True, dipole_derivative=False)


# ---------------------------------------------------------------------- numbec.predict
def _trajectory(rng, periodic, n_frames=11, velocities=True):
    import xarray as xr

    base = (water_cell if periodic else water_cluster)(rng)
    positions = np.stack([base.positions + rng.normal(0.0, 0.05, base.positions.shape)
                          for _ in range(n_frames)])
    data = {"positions": (("frame", "atom", "xyz"), positions),
            "cell": (("frame", "cell_vector", "xyz"),
                     np.tile(np.asarray(base.cell), (n_frames, 1, 1))),
            "numbers": (("atom",), base.numbers.astype(np.int64)),
            "pbc": (("xyz",), np.full(3, periodic))}
    if velocities:
        data["velocities"] = (("frame", "atom", "xyz"),
                              rng.normal(0.0, 0.01, positions.shape))
    return base, xr.Dataset(data, coords={"time": ("frame", 0.5 * np.arange(n_frames))},
                            attrs={"timestep": 0.5, "source": "atom-std-toy"})


def _frame_by_frame(model, base, ds):
    outs = [model.predict_arrays(p, base.numbers, np.asarray(base.cell), base.pbc,
                                 atom_std=True) for p in ds["positions"].values]
    return {k: np.stack([o[k] for o in outs]) for k in ("charge_std", "local_dipole_std")
            if k in outs[0]}


@pytest.mark.parametrize("periodic", [False, True], ids=["molecule", "periodic"])
def test_stream_in_memory_every_path(periodic):
    """Batched plain frames, the per-frame exact bec_std path, the low-rank bec_std and the
    forward-mode dM/dt wrappers (per frame and batched) all stream the same numbers."""
    from numbec import predict as stream_predict

    rng = np.random.default_rng(22)
    model = _model(CombinedModel, rng, periodic)
    base, ds = _trajectory(rng, periodic)
    ref = _frame_by_frame(model, base, ds)
    runs = {
        "batched": dict(dipole_derivative=False),
        "mixed precision": dict(dipole_derivative=False, precision="mixed"),
        "exact bec_std": dict(dipole_derivative=False, uncertainty=True),
        "low rank": dict(dipole_derivative=False, uncertainty=True, uncertainty_rank=4),
        "forward mode, batched": dict(posterior_samples=2),
        "forward mode, per frame": dict(uncertainty=True),
        "forward mode, low rank": dict(uncertainty=True, uncertainty_rank=4),
    }
    for what, options in runs.items():
        res = stream_predict(model, ds, progress=False, chunk_frames=4, atom_std=True,
                             **options)
        assert res.attrs["atom_std"] is True
        for key in ref:
            assert res[key].dims == ("frame", "atom")
            np.testing.assert_allclose(res[key].values, ref[key], rtol=0, atol=1e-12,
                                       err_msg=f"{key}, {what}")
        assert res["charge_std"].attrs["units"] == "e"
        assert res["local_dipole_std"].attrs["units"] == "e*Angstrom"
    lazy = stream_predict(model, ds.chunk({"frame": 4}), progress=False, atom_std=True,
                          dipole_derivative=False)
    for key in ref:
        np.testing.assert_allclose(lazy[key].compute().values, ref[key], rtol=0, atol=1e-12)
    plain = stream_predict(model, ds, progress=False, dipole_derivative=False)
    assert "charge_std" not in plain and "atom_std" not in plain.attrs


def test_stream_store_resume_and_refusals(tmp_path, monkeypatch):
    import numbec.stream as stream
    from numbec import predict as stream_predict
    from numbec.stream import OutputMismatchError

    rng = np.random.default_rng(23)
    model = _model(MonopoleModel, rng, False)
    base, ds = _trajectory(rng, False)
    ref = _frame_by_frame(model, base, ds)
    out = tmp_path / "p.zarr"
    # a run killed while writing its second chunk, then resumed
    write = stream.store_format.write_chunk

    def crash_on_second(out_, variables, integrated, c, *args):
        if c == 1:
            raise RuntimeError("simulated crash")
        return write(out_, variables, integrated, c, *args)

    monkeypatch.setattr(stream.store_format, "write_chunk", crash_on_second)
    with pytest.raises(RuntimeError, match="simulated crash"):
        stream_predict(model, ds, out=out, chunk_frames=4, progress=False, atom_std=True)
    monkeypatch.setattr(stream.store_format, "write_chunk", write)
    res = stream_predict(model, ds, out=out, chunk_frames=4, progress=False, atom_std=True)
    assert "local_dipole_std" not in res  # a monopole model has no local dipole
    np.testing.assert_allclose(res["charge_std"].values, ref["charge_std"], rtol=0,
                               atol=1e-12)
    assert res.attrs["atom_std"] is True
    # the other setting into either store is refused
    with pytest.raises(OutputMismatchError, match="variables"):
        stream_predict(model, ds, out=out, chunk_frames=4, progress=False)
    plain = tmp_path / "plain.zarr"
    stream_predict(model, ds, out=plain, chunk_frames=4, progress=False)
    with pytest.raises(OutputMismatchError, match="variables"):
        stream_predict(model, ds, out=plain, chunk_frames=4, progress=False, atom_std=True)


def test_cli_atom_std(tmp_path, capsys):
    import xarray as xr
    from test_cli_predict import write_trajectory_store

    from numbec.cli import main

    rng = np.random.default_rng(24)
    model = _model(MonopoleModel, rng, True)
    path = model.save(tmp_path / "model.npz")
    traj = tmp_path / "traj.zarr"
    write_trajectory_store(traj, n_frames=4)
    out = tmp_path / "p.zarr"
    assert main(["predict", str(path), str(traj), "-o", str(out), "--atom-std",
                 "--no-progress"]) == 0
    res = xr.open_zarr(out)
    assert res.attrs["atom_std"] is True and res["charge_std"].shape == (4, 6)
    assert np.all(res["charge_std"].values > 0)
    mean = SpeciesMeanModel([1, 8], np.stack([np.eye(3), -np.eye(3)]))
    mean_path = mean.save(tmp_path / "mean.npz")
    assert main(["predict", str(mean_path), str(traj), "-o", str(tmp_path / "m.zarr"),
                 "--atom-std", "--no-progress"]) == 1
    assert "no per-atom posterior std" in capsys.readouterr().err
