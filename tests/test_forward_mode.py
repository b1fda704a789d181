"""Forward-mode dM/dt uncertainty: descriptor tangents, design rows of dM/dt, full-posterior
samples and their streaming (numbec.models.forward_mode)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from kernel_model_checks import (
    SETTINGS,
    randomized,
    training_frames,
    water_cell,
    water_chain,
    water_cluster,
)

from numbec.descriptors import DescriptorSettings, compute_scalar_and_vector_descriptors
from numbec.descriptors.tangent import descriptor_tangents, relative_directions
from numbec.models import CombinedModel, DipoleModel, MonopoleModel
from numbec.models import forward_mode as fm
from numbec.models import uncertainty as unc

MODELS = (MonopoleModel, DipoleModel, CombinedModel)


def boxed_cluster(rng):
    """A water cluster in a periodic 12 Å box, wrapped so that it is cut by the boundary:
    one finite cluster, treated as a molecule with unwrapped positions."""
    atoms = water_cluster(rng)
    atoms.set_cell(np.diag([12.0, 12.5, 13.0]))
    atoms.pbc = True
    atoms.positions -= atoms.positions[0] - 0.3   # straddles the corner at the origin
    atoms.wrap()
    return atoms


STRUCTURES = {"molecule": water_cluster, "cell": water_cell, "chain": water_chain,
              "boxed": boxed_cluster}


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def _args(atoms):
    return atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc


def _model(cls, rng, periodic, zeta=3):
    frames = training_frames(rng, periodic, 4)
    return cls(settings=SETTINGS, zeta=zeta, n_sparse=3).fit(frames)


def _plain_dipole_derivative(model, atoms, v, total_charge=0.0, mask=None):
    bec = model.predict_arrays(*_args(atoms), total_charge=total_charge)["bec"]
    if mask is not None:
        bec, v = bec[mask], v[mask]
    return np.einsum("jab,jb->a", bec, v)


#: Radial counts that are not multiples of four: the tangent kernel sums four radial functions
#: per pass over the pairs, and these leave one and two over.
ODD_SETTINGS = DescriptorSettings(species=(1, 8), cutoff_radial=3.5, cutoff_angular=3.0,
                                  sigma=0.5, n_radial=5, n_angular=6, l_max=3,
                                  radial_weight=0.3)


@pytest.mark.parametrize("settings", [SETTINGS, ODD_SETTINGS], ids=["n4", "n5-6"])
def test_descriptor_tangent_equals_central_differences(settings, rng):
    for atoms in (water_cluster(rng), water_cell(rng)):
        v = rng.normal(size=atoms.positions.shape)
        args = (atoms.numbers, np.asarray(atoms.cell), atoms.pbc, settings)
        desc, _ = compute_scalar_and_vector_descriptors(atoms.positions, *args)
        ex = desc.expansion
        xdot, vdot = descriptor_tangents(ex, relative_directions(ex, v[None]), vector=True)
        h = 1e-4
        plus = compute_scalar_and_vector_descriptors(atoms.positions + h * v, *args)
        minus = compute_scalar_and_vector_descriptors(atoms.positions - h * v, *args)
        fd_x = (plus[0].values - minus[0].values) / (2 * h)
        fd_v = (plus[1].values - minus[1].values) / (2 * h)
        # central differences are O(h^2) ~ 1e-7 relative here
        np.testing.assert_allclose(xdot[0], fd_x, atol=1e-6 * np.abs(fd_x).max())
        np.testing.assert_allclose(vdot[0], fd_v, atol=1e-6 * np.abs(fd_v).max())
        # linear in the direction, exactly (the polarisation identity has no step error)
        v2 = rng.normal(size=v.shape)
        both, _ = descriptor_tangents(ex, relative_directions(ex, np.stack([v, v2, 2 * v - v2])))
        np.testing.assert_allclose(both[2], 2 * both[0] - both[1],
                                   atol=1e-12 * np.abs(both).max())


def test_bilinear_descriptor_tangents_equal_the_polarisation_identity(rng):
    """The one-product tangent kernels against ``(X(c + cdot) - X(c - cdot)) / 2`` of the
    value kernels (exact for forms quadratic in c), for random coefficient tangents."""
    from numbec.descriptors import scalar_numba, tangent, tangent_numba, vector_numba
    from numbec.descriptors.scalar import angular_feature_table, angular_gram_index
    from numbec.descriptors.vector import _dense_feature_args

    atoms = water_cell(rng)
    desc, _ = compute_scalar_and_vector_descriptors(
        atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc, SETTINGS)
    ex = desc.expansion
    c2dot = rng.normal(size=(3,) + ex.c2.shape)
    c3dot = rng.normal(size=(3,) + ex.c3.shape)
    table = (float(np.sqrt(SETTINGS.radial_weight)), angular_gram_index(SETTINGS),
             angular_feature_table(SETTINGS)[3])
    vargs = _dense_feature_args(SETTINGS)
    xdot = tangent_numba.power_spectrum_tangents(c2dot, ex.c3, c3dot, table[0],
                                                 *tangent._gram_indices(SETTINGS))
    vdot = tangent_numba.vector_feature_tangents(c2dot, ex.c3, c3dot, *vargs)
    for t in range(3):
        plus = (ex.c2 + c2dot[t], ex.c3 + c3dot[t])
        minus = (ex.c2 - c2dot[t], ex.c3 - c3dot[t])
        ref = 0.5 * (scalar_numba.power_spectrum(*plus, *table)
                     - scalar_numba.power_spectrum(*minus, *table))
        np.testing.assert_allclose(xdot[t], ref, atol=1e-12 * np.abs(ref).max())
        ref = 0.5 * (vector_numba.vector_features(*plus, *vargs)
                     - vector_numba.vector_features(*minus, *vargs))
        np.testing.assert_allclose(vdot[t], ref, atol=1e-12 * np.abs(ref).max())
        assert np.abs(ref).max() > 0


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("structure", list(STRUCTURES))
@pytest.mark.parametrize("zeta", [1, 3])
def test_rows_times_weights_equal_plain_dipole_derivative(cls, structure, zeta, rng):
    periodic = structure in ("cell", "chain")
    model = randomized(_model(cls, rng, periodic, zeta), rng)
    atoms = STRUCTURES[structure](rng)
    v = rng.normal(0.0, 0.01, atoms.positions.shape)
    rows = fm.dipole_derivative_rows(model, *_args(atoms), v, total_charge=0.5)
    want = _plain_dipole_derivative(model, atoms, v, total_charge=0.5)
    got = rows["rows"].sum(axis=0) @ model.weights + rows["baseline"].sum(axis=0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * np.abs(want).max())
    # per species: the sum of Z_j v_j over the atoms of that species
    assert rows["species"].tolist() == [1, 8]
    for g, z in enumerate(rows["species"]):
        part = rows["rows"][g] @ model.weights + rows["baseline"][g]
        np.testing.assert_allclose(
            part, _plain_dipole_derivative(model, atoms, v, 0.5, atoms.numbers == z),
            rtol=0, atol=1e-10 * np.abs(want).max())


@pytest.mark.parametrize("cls", MODELS)
def test_rows_do_not_depend_on_how_atoms_are_wrapped(cls, rng):
    model = randomized(_model(cls, rng, True), rng)
    atoms = water_chain(rng)
    v = rng.normal(0.0, 0.01, atoms.positions.shape)
    moved = atoms.copy()
    shifts = rng.integers(-1, 2, (len(atoms), 3))
    moved.positions += shifts @ np.asarray(atoms.cell)
    a = fm.dipole_derivative_rows(model, *_args(atoms), v)
    b = fm.dipole_derivative_rows(model, *_args(moved), v)
    scale = np.abs(a["rows"]).max()
    np.testing.assert_allclose(b["rows"], a["rows"], rtol=0, atol=1e-10 * scale)


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("periodic", [False, True])
def test_rows_equal_velocity_contracted_design_rows_and_std_formula(cls, periodic, rng):
    model = _model(cls, rng, periodic)
    model.training = dict(model.training, variance_scale_fit={"weight_scale": 2.5})
    atoms = training_frames(rng, periodic, 1)[0]
    v = rng.normal(0.0, 0.01, atoms.positions.shape)
    phi, _ = model._design(*_args(atoms), "test")
    design = np.einsum("jabc,jb->ac", phi.reshape(len(atoms), 3, 3, -1), v)
    rows = fm.dipole_derivative_rows(model, *_args(atoms), v, by_species=False)["rows"][0]
    np.testing.assert_allclose(rows, design, rtol=0, atol=1e-10 * np.abs(design).max())
    out = fm.dipole_derivative_uncertainty(model, *_args(atoms), v)
    var = 2.5 * np.einsum("ac,cd,ad->a", design, model.covariance, design)
    np.testing.assert_allclose(out["dipole_derivative_std"], np.sqrt(var), rtol=1e-8)
    np.testing.assert_allclose(out["dipole_derivative"], _plain_dipole_derivative(model, atoms, v),
                               rtol=1e-10)


def test_weight_samples_follow_the_full_posterior(rng):
    model = _model(CombinedModel, rng, False)
    model.training = dict(model.training, variance_scale_fit={"weight_scale": 3.0})
    n = 40_000
    w = fm.full_posterior_samples(model, n, seed=5)
    assert w.shape == (n, model.n_columns)
    np.testing.assert_array_equal(w, fm.full_posterior_samples(model, n, seed=5))
    cov = 3.0 * model.covariance
    sd = np.sqrt(np.diag(cov))
    # mean: each component within 4.5 standard errors (fails with probability ~1e-4)
    assert np.all(np.abs(w.mean(axis=0) - model.weights) <= 4.5 * sd / np.sqrt(n))
    # covariance: each entry within 5 standard errors of a Gaussian sample covariance
    got = np.cov(w, rowvar=False)
    se = np.sqrt((np.outer(sd ** 2, sd ** 2) + cov ** 2) / n)
    assert np.all(np.abs(got - cov) <= 5.0 * se)
    # a wrong scale is caught: the samples do not follow the unscaled posterior
    assert np.any(np.abs(got - model.covariance) > 5.0 * se)


@pytest.mark.parametrize("semidefinite", [False, True])
def test_triangular_factor_product_equals_the_dense_product(semidefinite, rng):
    model = _model(CombinedModel, rng, True)
    if semidefinite:  # no Cholesky factor: the symmetric root, a dense product
        lam, vecs = np.linalg.eigh(model.covariance)
        model.covariance = (vecs * np.where(np.arange(lam.size) % 2, lam, 0.0)) @ vecs.T
    rows = rng.normal(size=(7, model.n_columns))
    dense = rows @ fm.posterior_cholesky(model)
    assert model._posterior_cholesky_cache[2] is not semidefinite
    np.testing.assert_allclose(fm._times_posterior_factor(model, rows), dense, rtol=0,
                               atol=1e-12 * np.abs(dense).max())


def test_zero_posterior_variance_gives_zero_width(rng):
    model = randomized(_model(CombinedModel, rng, True), rng)
    model.covariance = np.zeros_like(model.covariance)
    atoms = water_cell(rng)
    v = rng.normal(0.0, 0.01, atoms.positions.shape)
    samples = fm.full_posterior_samples(model, 6, seed=1)
    np.testing.assert_array_equal(samples, np.repeat(model.weights[None], 6, axis=0))
    out = fm.dipole_derivative_uncertainty(model, *_args(atoms), v, samples)
    assert np.all(out["dipole_derivative_std"] == 0.0)
    np.testing.assert_allclose(out["dipole_derivative_samples"],
                               np.repeat(out["dipole_derivative"][None], 6, axis=0),
                               rtol=1e-12, atol=1e-15)


def _trajectory(rng, periodic, n_frames=8, dt=0.5):
    """Two vibrating water molecules (a cluster or a periodic cell) in the Trajectory layout."""
    import xarray as xr

    r0 = water_cell(rng) if periodic else water_cluster(rng)
    amp = rng.normal(0, 0.05, (len(r0), 3))
    omega = 2 * np.pi / 20.0
    t = np.arange(n_frames) * dt
    pos = r0.positions + amp * np.sin(omega * t)[:, None, None]
    vel = amp * omega * np.cos(omega * t)[:, None, None]
    cell = np.repeat(np.asarray(r0.cell)[None], n_frames, axis=0)
    data = {"positions": (("frame", "atom", "xyz"), pos),
            "cell": (("frame", "cell_vector", "xyz"), cell),
            "numbers": (("atom",), r0.numbers.astype(np.int64)),
            "pbc": (("xyz",), np.full(3, periodic)),
            "velocities": (("frame", "atom", "xyz"), vel)}
    return xr.Dataset(data, coords={"time": ("frame", t)},
                      attrs={"timestep": dt, "temperature": 300.0})


@pytest.mark.parametrize("periodic", [False, True])
def test_predict_streams_forward_mode_samples(periodic, rng, tmp_path, monkeypatch):
    from numbec import predict

    model = _model(CombinedModel, rng, periodic)
    ds = _trajectory(rng, periodic)
    res = predict(model, ds, posterior_samples=4, seed=3, chunk_frames=3, progress=False)
    samples = res["dipole_derivative_samples"]
    per = res["dipole_derivative_by_species_samples"]
    std = res["dipole_derivative_std"]
    assert samples.dims == ("frame", "sample", "pol") and samples.shape == (8, 4, 3)
    assert per.dims == ("frame", "sample", "species", "pol") and per.shape == (8, 4, 2, 3)
    assert std.dims == ("frame", "pol")
    for var in (samples, per, std):
        assert var.attrs["units"] == "e*Angstrom/fs"
    assert res["species"].values.tolist() == [1, 8]
    assert res.attrs["posterior_samples"] == 4
    np.testing.assert_allclose(per.sum("species"), samples, atol=1e-13)
    # independently: sample s is sum_j Z_j(w_s) v_j with the BECs of weight vector w_s
    weights = fm.full_posterior_samples(model, 4, seed=3)
    numbers, pbc = ds["numbers"].values, ds["pbc"].values
    q0n = model._baseline(numbers)
    for f in (0, 4, 7):
        pos, cell, vel = (ds[k].values[f] for k in ("positions", "cell", "velocities"))
        becs = unc.direction_becs(model, pos, numbers, cell, pbc, weights)
        want = np.einsum("sjab,jb->sa", becs, vel) + q0n @ vel
        np.testing.assert_allclose(samples.values[f], want, rtol=0,
                                   atol=1e-10 * np.abs(want).max())
        np.testing.assert_allclose(res["dipole_derivative"].values[f],
                                   _plain_dipole_derivative(model, _atoms(pos, numbers, cell,
                                                                          pbc), vel),
                                   rtol=1e-10)
    # lazily (dask-backed input): the same numbers
    lazy = predict(model, ds.chunk({"frame": 3}), posterior_samples=4, seed=3, progress=False)
    for name in ("dipole_derivative_samples", "dipole_derivative_by_species_samples",
                 "dipole_derivative_std"):
        np.testing.assert_array_equal(lazy[name].values, res[name].values, err_msg=name)
    # frame by frame (batching off): the batched numbers to rounding
    import numbec.parallel

    with monkeypatch.context() as m:
        m.setattr(numbec.parallel, "BATCH_BELOW_ATOMS", 0)
        single = predict(model, ds, posterior_samples=4, seed=3, chunk_frames=3,
                         progress=False)
    for name in ("dipole_derivative_samples", "dipole_derivative_by_species_samples",
                 "dipole_derivative_std", "dipole_derivative", "bec"):
        np.testing.assert_allclose(single[name].values, res[name].values, rtol=1e-12,
                                   atol=1e-14 * np.abs(res[name].values).max(), err_msg=name)
    # into a store, killed in the second chunk and resumed: the in-memory numbers
    # (small frames go in one batch per chunk: the second call of the batched rows)
    out = tmp_path / "p.zarr"
    real, calls = fm._frame_rows, []

    def crashing(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(fm, "_frame_rows", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        predict(model, ds, posterior_samples=4, seed=3, chunk_frames=3, out=out, progress=False)
    monkeypatch.setattr(fm, "_frame_rows", real)
    stored = predict(model, ds, posterior_samples=4, seed=3, chunk_frames=3, out=out,
                     progress=False)
    for name in ("dipole_derivative_samples", "dipole_derivative_by_species_samples",
                 "dipole_derivative_std", "dipole_derivative", "bec"):
        np.testing.assert_array_equal(stored[name].values, res[name].values, err_msg=name)
    # another seed is another run: never resumed into this store
    from numbec.stream import OutputMismatchError

    with pytest.raises(OutputMismatchError):
        predict(model, ds, posterior_samples=4, seed=4, chunk_frames=3, out=out, progress=False)


@pytest.mark.parametrize("batched", [True, False])
def test_samples_without_species_parts_equal_their_sum(batched, rng, tmp_path, monkeypatch):
    """``species_samples=False`` streams the total samples from one design row per frame:
    the sum of the per-species samples to rounding, no per-species variable; a store of one
    setting is never resumed with the other."""
    import numbec.parallel
    from numbec import predict
    from numbec.stream import OutputMismatchError

    if not batched:
        monkeypatch.setattr(numbec.parallel, "BATCH_BELOW_ATOMS", 0)
    model = _model(CombinedModel, rng, True)
    ds = _trajectory(rng, True, n_frames=4)
    full = predict(model, ds, posterior_samples=3, seed=2, progress=False)
    out = tmp_path / "total.zarr"
    total = predict(model, ds, posterior_samples=3, seed=2, species_samples=False, out=out,
                    progress=False)
    assert "dipole_derivative_by_species_samples" not in total
    want = full["dipole_derivative_by_species_samples"].sum("species").values
    scale = np.abs(want).max()
    np.testing.assert_allclose(total["dipole_derivative_samples"].values, want, rtol=0,
                               atol=1e-12 * scale)
    for name in ("dipole_derivative_std", "dipole_derivative", "bec"):
        np.testing.assert_allclose(total[name].values, full[name].values, rtol=1e-12,
                                   atol=1e-14 * np.abs(full[name].values).max(), err_msg=name)
    # the same setting resumes (nothing left to do), the other one is another run
    again = predict(model, ds, posterior_samples=3, seed=2, species_samples=False, out=out,
                    progress=False)
    np.testing.assert_array_equal(again["dipole_derivative_samples"].values,
                                  total["dipole_derivative_samples"].values)
    with pytest.raises(OutputMismatchError):
        predict(model, ds, posterior_samples=3, seed=2, out=out, progress=False)
    both = tmp_path / "species.zarr"
    predict(model, ds, posterior_samples=3, seed=2, out=both, progress=False)
    with pytest.raises(OutputMismatchError):
        predict(model, ds, posterior_samples=3, seed=2, species_samples=False, out=both,
                progress=False)


def test_cli_no_species_samples(rng, tmp_path, capsys):
    """``numbec predict --posterior-samples S --no-species-samples``: total samples only;
    the store is not resumed by a run with the per-species samples."""
    import xarray as xr
    from test_cli_predict import write_trajectory_store

    from numbec.cli import main

    path = _model(CombinedModel, rng, True).save(tmp_path / "model.npz")
    traj = tmp_path / "traj.zarr"
    write_trajectory_store(traj, n_frames=4)
    out = tmp_path / "p.zarr"
    args = ["predict", str(path), str(traj), "-o", str(out), "--no-progress",
            "--posterior-samples", "2"]
    with pytest.warns(UserWarning, match="model.npz: the model was not recalibrated"):
        assert main(args + ["--no-species-samples"]) == 0
    result = xr.open_zarr(out)
    assert result["dipole_derivative_samples"].shape == (4, 2, 3)
    assert "dipole_derivative_by_species_samples" not in result
    capsys.readouterr()
    assert main(args) == 1
    assert str(out) in capsys.readouterr().err
    # a recalibrated model carries its scales: no warning
    from numbec.models.uncertainty import recalibrate

    calibrated = _model(CombinedModel, rng, True)
    recalibrate(calibrated, training_frames(rng, True, 4), folds=2).save(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not recalibrated")
        assert main(args + ["--no-species-samples", "--overwrite"]) == 0


def test_species_samples_setting_changes_the_state_only_when_off(rng):
    """Stores written before the opt-out existed keep their fingerprint: the default adds
    nothing to the saved state."""
    model = _model(MonopoleModel, rng, False)
    on = fm.DipoleDerivativeSamplesModel(model, n_samples=2, seed=1).state()[0]
    off = fm.DipoleDerivativeSamplesModel(model, n_samples=2, seed=1,
                                          species_samples=False).state()[0]
    assert on["forward_mode_samples"] == {"samples": 2, "seed": 1}
    assert off["forward_mode_samples"] == {"samples": 2, "seed": 1, "species_samples": False}
    assert "dipole_derivative_by_species_samples" not in fm.DipoleDerivativeSamplesModel(
        model, n_samples=2, species_samples=False).outputs


def test_wrapper_and_saved_model_hashes_share_array_digests(rng, monkeypatch):
    """predict hashes a wrapper (the resume fingerprint) and the model it wraps (the
    provenance): with shared digests each array is hashed once, and both hashes are those
    of separate calls."""
    from numbec.io import prediction

    model = _model(MonopoleModel, rng, False)
    wrapper = fm.DipoleDerivativeSamplesModel(model, n_samples=2, seed=1)
    alone = (prediction.model_fingerprint(wrapper), prediction.model_fingerprint(model))
    hashed = []
    original = prediction.sha256_arrays
    monkeypatch.setattr(prediction, "sha256_arrays",
                        lambda *a: hashed.append(len(a)) or original(*a))
    digests = {}
    shared = (prediction.model_fingerprint(wrapper, digests),
              prediction.model_fingerprint(model, digests))
    assert shared == alone and alone[0]["sha256"] != alone[1]["sha256"]
    assert len(hashed) == len(model.state()[1])  # every array once, not twice


def _atoms(positions, numbers, cell, pbc):
    from ase import Atoms

    return Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)


def test_uncertainty_alone_streams_the_exact_dipole_derivative_std(rng):
    from numbec import predict

    model = _model(MonopoleModel, rng, False)
    ds = _trajectory(rng, False, n_frames=3)
    res = predict(model, ds, uncertainty=True, progress=False)
    assert "bec_std" in res and "dipole_derivative_samples" not in res
    for f in range(3):
        pos, vel = ds["positions"].values[f], ds["velocities"].values[f]
        phi, _ = model._design(pos, ds["numbers"].values, np.zeros((3, 3)), np.zeros(3, bool),
                               "test")
        a = np.einsum("jabc,jb->ac", phi.reshape(len(pos), 3, 3, -1), vel)
        want = np.sqrt(unc.sample_scale(model)
                       * np.einsum("ac,cd,ad->a", a, model.covariance, a))
        np.testing.assert_allclose(res["dipole_derivative_std"].values[f], want, rtol=1e-8)


@pytest.mark.parametrize("periodic", [False, True])
def test_channel_becs_of_atoms_sorted_by_species_equal_design_rows(periodic, rng):
    # atoms grouped by species: the species blocks are slices, a path of its own in
    # uncertainty.channel_outputs (writes into views) next to the index arrays of water
    model = _model(CombinedModel, rng, periodic)
    atoms = training_frames(rng, periodic, 1)[0]
    atoms = atoms[np.argsort(atoms.numbers, kind="stable")]
    wm = rng.normal(0.0, 1.0, (3, model.n_columns))
    got = unc.direction_becs(model, *_args(atoms), wm)
    phi, _ = model._design(*_args(atoms), "test")
    want = np.einsum("nijc,kc->knij", phi.reshape(len(atoms), 3, 3, -1), wm)
    np.testing.assert_allclose(got, want, atol=1e-10 * np.abs(want).max())


def _frames_of(structure, rng, n_frames=3):
    """F frames of one structure (the same atoms, displaced, wrapped back into the cell)."""
    base = STRUCTURES[structure](rng)
    frames = []
    for _ in range(n_frames):
        atoms = base.copy()
        atoms.positions += rng.normal(0.0, 0.03, atoms.positions.shape)
        if atoms.pbc.any():
            atoms.wrap()
        frames.append(atoms)
    return frames


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_batched_rows_and_samples_equal_frame_by_frame(cls, structure, rng):
    periodic = structure in ("cell", "chain")
    model = randomized(_model(cls, rng, periodic), rng)
    frames = _frames_of(structure, rng)
    positions = np.stack([a.positions for a in frames])
    cells = np.stack([np.asarray(a.cell) for a in frames])
    pbc, numbers = frames[0].pbc, frames[0].numbers
    v = rng.normal(0.0, 0.01, positions.shape)
    batch = fm.dipole_derivative_rows_frames(model, positions, numbers, cells, pbc, v,
                                             total_charge=0.5)
    scale = np.abs(batch["rows"]).max()
    assert scale > 0
    for k, atoms in enumerate(frames):
        one = fm.dipole_derivative_rows(model, *_args(atoms), v[k], total_charge=0.5)
        np.testing.assert_allclose(batch["rows"][k], one["rows"], rtol=0, atol=1e-12 * scale)
        np.testing.assert_allclose(batch["baseline"][k], one["baseline"], rtol=0,
                                   atol=1e-12 * np.abs(one["baseline"]).max())
    # the wrapper: batched std, samples and plain outputs against frame by frame
    wrapped = fm.DipoleDerivativeSamplesModel(model, n_samples=4, seed=3)
    got = wrapped.predict_frames_with_velocities(positions, numbers, cells, pbc, v,
                                                 total_charge=0.5)
    for k, atoms in enumerate(frames):
        want = wrapped.predict_arrays_with_velocities(*_args(atoms), v[k], total_charge=0.5)
        assert set(want) == set(got)
        for key, value in want.items():  # asr_violation is ~0: measured against the BECs
            size = max(np.abs(value).max(), np.abs(want["bec"]).max())
            np.testing.assert_allclose(got[key][k], value, rtol=0, atol=1e-12 * size)


def test_pair_directions_kernel_equals_the_numpy_directions(rng):
    from numbec.descriptors.tangent import pair_directions, weighted_directions

    atoms = water_cell(rng)
    desc, _ = compute_scalar_and_vector_descriptors(
        atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc, SETTINGS)
    ex = desc.expansion
    w = rng.normal(size=(2,) + atoms.positions.shape)
    want = np.concatenate([relative_directions(ex, w), weighted_directions(ex, w)], axis=1)
    np.testing.assert_array_equal(pair_directions(ex, w, True), want)
    np.testing.assert_array_equal(pair_directions(ex, w, False), want[:, :2])


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("structure", ["cell", "boxed"])
def test_shared_batch_descriptors_equal_separate_passes(cls, structure, rng, monkeypatch):
    """The batched wrapper takes the plain outputs and the rows from one descriptor pass per
    batch (``predict_frames(..., batch_pass=)``): the same numbers as the plain
    ``predict_frames`` and the rows of their own pass (:func:`dipole_derivative_rows_frames`),
    batch by batch."""
    import numbec.parallel

    periodic = structure == "cell"
    model = randomized(_model(cls, rng, periodic), rng)
    frames = _frames_of(structure, rng)
    positions = np.stack([a.positions for a in frames])
    cells = np.stack([np.asarray(a.cell) for a in frames])
    pbc, numbers = frames[0].pbc, frames[0].numbers
    v = rng.normal(0.0, 0.01, positions.shape)
    wrapped = fm.DipoleDerivativeSamplesModel(model, n_samples=3, seed=5)
    for batch in (len(frames), 2):  # one batch, and several
        monkeypatch.setattr(numbec.parallel, "BATCH_ATOMS", batch * numbers.size)
        monkeypatch.setattr(numbec.parallel, "VECTOR_BATCH_ATOMS", batch * numbers.size)
        step = numbec.parallel.batch_frames(numbers.size, model.batch_atoms)
        assert (step >= len(frames)) == (batch == len(frames))
        got = wrapped.predict_frames_with_velocities(positions, numbers, cells, pbc, v,
                                                     total_charge=0.5)
        plain = model.predict_frames(positions, numbers, cells, pbc, total_charge=0.5)
        for key, value in plain.items():
            np.testing.assert_array_equal(got[key], value, err_msg=key)
        for start in range(0, len(frames), step):
            part = slice(start, start + step)
            rows = fm.dipole_derivative_rows_frames(model, positions[part], numbers,
                                                    cells[part], pbc, v[part],
                                                    total_charge=0.5)
            np.testing.assert_array_equal(got["dipole_derivative_std"][part],
                                          fm._frames_std(model, rows["rows"]))
            per = fm._frames_samples(rows, wrapped.weight_samples)
            np.testing.assert_allclose(  # the sums of their definitions
                per, np.einsum("fgac,sc->fsga", rows["rows"], wrapped.weight_samples)
                + rows["baseline"][:, None], rtol=0, atol=1e-13 * np.abs(per).max())
            np.testing.assert_array_equal(got["dipole_derivative_by_species_samples"][part],
                                          per)


@pytest.mark.parametrize("settings", [SETTINGS, ODD_SETTINGS], ids=["n4", "n5-6"])
@pytest.mark.parametrize("channels", [1, 4])
def test_backprop_with_tangents_equals_the_two_kernels(settings, channels, rng):
    """One pass over the pairs for the back-propagation and the tangents (the basis functions
    evaluated once): bit for bit the two kernels' results, with the vector descriptors'
    l2_max = 1 and radial counts that leave remainders of the blocks of four."""
    from numbec.descriptors import expansion_numba, tangent_numba

    atoms = water_cell(rng)
    desc, _ = compute_scalar_and_vector_descriptors(
        atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc, settings)
    ex = desc.expansion
    a2, a3 = ex.adjoint_arrays(channels)
    a2[:] = rng.normal(size=a2.shape)
    a3[:] = rng.normal(size=a3.shape)
    directions = rng.normal(size=(ex.pairs.n_pairs, 3, 3))
    g, c2dot, c3dot = tangent_numba.pair_backprop_with_tangents(a2, a3, directions,
                                                                *ex.block_args())
    np.testing.assert_array_equal(g, expansion_numba.pair_backprop(a2, a3, *ex.block_args()))
    want = ex.coefficient_tangents(directions)
    np.testing.assert_array_equal(c2dot, want[0])
    np.testing.assert_array_equal(c3dot, want[1])
    assert np.abs(c3dot).max() > 0 and np.abs(g).max() > 0


@pytest.mark.parametrize("cls", MODELS)
def test_rows_share_the_plain_back_propagation_pass(cls, rng, monkeypatch):
    """Frame by frame, a plain prediction with rows plans its tangents for the
    back-propagation, which computes them in its own pass over the pairs where it makes one
    pass per channel: the same numbers, bit for bit, as the rows' own tangent pass, and the
    tangent pass is not run again."""
    from numbec.descriptors import expansion
    from numbec.descriptors import tangent_numba as tn

    model = randomized(_model(cls, rng, True), rng)
    atoms = water_cell(rng)
    v = rng.normal(0.0, 0.01, atoms.positions.shape)
    wrapped = fm.DipoleDerivativeSamplesModel(model, n_samples=3, seed=5)
    calls = {"fused": 0, "tangents": 0}
    real_fused, real_tangents = tn.pair_backprop_with_tangents, tn.expansion_tangents

    def fused(*a):
        calls["fused"] += 1
        return real_fused(*a)

    def tangents(*a):
        calls["tangents"] += 1
        return real_tangents(*a)

    monkeypatch.setattr(tn, "pair_backprop_with_tangents", fused)
    monkeypatch.setattr(tn, "expansion_tangents", tangents)
    # this small cell's centres have few pairs: one pass per channel made the choice here
    monkeypatch.setattr(expansion, "BLOCK_BACKPROP_BELOW", 0)
    monkeypatch.setattr(expansion, "BLOCK_BACKPROP_CHANNELS_BELOW", 0)
    got = wrapped.predict_arrays_with_velocities(*_args(atoms), v, total_charge=0.5)
    assert calls == {"fused": 1, "tangents": 0}
    monkeypatch.setattr(expansion.Expansion, "plan_tangents", lambda self, d: None)
    apart = wrapped.predict_arrays_with_velocities(*_args(atoms), v, total_charge=0.5)
    assert calls == {"fused": 1, "tangents": 1}
    assert set(got) == set(apart)
    for key, value in apart.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    # and the rows are those of dipole_derivative_uncertainty
    ref = fm.dipole_derivative_uncertainty(model, *_args(atoms), v, wrapped.weight_samples,
                                           total_charge=0.5)
    for key in ("dipole_derivative_std", "dipole_derivative_samples",
                "dipole_derivative_by_species_samples"):
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)


def test_planned_tangents_are_checked_and_handed_over_once(rng):
    atoms = water_cell(rng)
    desc, _ = compute_scalar_and_vector_descriptors(
        atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc, SETTINGS)
    ex = desc.expansion
    with pytest.raises(ValueError, match="C-contiguous float64 array of shape"):
        ex.plan_tangents(np.zeros((ex.pairs.n_pairs + 1, 2, 3)))
    with pytest.raises(ValueError, match="C-contiguous float64 array of shape"):
        ex.plan_tangents(np.zeros((ex.pairs.n_pairs, 3, 2)).transpose(0, 2, 1))
    directions = rng.normal(size=(ex.pairs.n_pairs, 2, 3))
    ex.plan_tangents(directions)
    a2, a3 = ex.adjoint_arrays(1)
    a3[:] = rng.normal(size=a3.shape)
    from numbec.descriptors import expansion_numba

    g = expansion_numba.pair_backprop(a2, a3, *ex.block_args())
    from numbec.descriptors import expansion

    # the kernel choice of backprop: forced to one pass per channel
    old = expansion.BLOCK_BACKPROP_BELOW
    expansion.BLOCK_BACKPROP_BELOW = 0
    try:
        np.testing.assert_array_equal(ex.backprop(a2, a3), g)
    finally:
        expansion.BLOCK_BACKPROP_BELOW = old
    first = ex.coefficient_tangents(directions)
    assert ex.tangent_plan == {}
    again = ex.coefficient_tangents(directions)     # computed apart: equal, new arrays
    assert again[1] is not first[1]
    np.testing.assert_array_equal(again[1], first[1])
