"""Uncertainty of the kernel models: channel BECs, low-rank posterior, sampling, calibration."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_model_checks import SETTINGS, predict, training_frames

from numbec.models import CombinedModel, DipoleModel, MonopoleModel, load_model
from numbec.models import uncertainty as unc

MODELS = (MonopoleModel, DipoleModel, CombinedModel)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def _bayesian_model(cls, rng, periodic, zeta=3, n_frames=4):
    frames = training_frames(rng, periodic, n_frames)
    model = cls(settings=SETTINGS, zeta=zeta, n_sparse=3).fit(frames)
    return model, frames


def _design_rows(model, atoms):
    phi, _ = model._design(atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc,
                           "test")
    return phi.reshape(len(atoms), 3, 3, -1)


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("zeta", [1, 3])
def test_direction_becs_equal_design_rows_times_weights(cls, periodic, zeta, rng):
    model, frames = _bayesian_model(cls, rng, periodic, zeta)
    atoms = training_frames(rng, periodic, 1)[0]
    wm = rng.normal(0.0, 1.0, (5, model.n_columns))
    got = unc.direction_becs(model, atoms.positions, atoms.numbers, np.asarray(atoms.cell),
                             atoms.pbc, wm)
    want = np.einsum("nijc,kc->knij", _design_rows(model, atoms), wm)
    np.testing.assert_allclose(got, want, atol=1e-10 * np.abs(want).max())
    # the model's own weights plus the baseline give every output of its prediction
    out = unc.predict_uncertainty(model, atoms.positions, atoms.numbers,
                                  np.asarray(atoms.cell), atoms.pbc, rank=4)
    plain = predict(model, atoms)
    for key, value in plain.items():
        np.testing.assert_allclose(out[key], value, atol=1e-10, err_msg=key)
    charged = unc.predict_uncertainty(model, atoms.positions, atoms.numbers,
                                      np.asarray(atoms.cell), atoms.pbc, rank=4, total_charge=1.0)
    for key, value in predict(model, atoms, total_charge=1.0).items():
        np.testing.assert_allclose(charged[key], value, atol=1e-10, err_msg=key)


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("periodic", [False, True])
def test_full_rank_channel_std_equals_design_row_formula(cls, periodic, rng):
    model, _ = _bayesian_model(cls, rng, periodic)
    model.variance_scale = 2.5  # the recalibration enters both the same way
    atoms = training_frames(rng, periodic, 1)[0]
    args = (atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)
    exact = predict(model, atoms, uncertainty=True)["bec_std"]
    # independent check of the design-row formula itself
    phi = _design_rows(model, atoms)
    var = np.einsum("nijc,cd,nijd->nij", phi, model.covariance, phi) + model.sigma_v2
    np.testing.assert_allclose(exact, np.sqrt(2.5 * var), rtol=1e-10)
    full = unc.predict_uncertainty(model, *args, rank=None)
    np.testing.assert_allclose(full["bec_std"], exact, rtol=1e-8)
    # a truncated factor (one leading direction, four probes) is not exact but of the right
    # size; the probes keep it unbiased whichever vector of the near-degenerate top of the
    # spectrum (combined model: 3.15, 3.13, 3.13 x 1e-6) leads
    low = unc.predict_uncertainty(model, *args, rank=5)
    epi_exact = exact ** 2 - 2.5 * model.sigma_v2
    epi_low = low["bec_std"] ** 2 - 2.5 * model.sigma_v2
    assert 0.2 < epi_low.sum() / epi_exact.sum() < 5.0


def test_factor_reproduces_covariance_at_full_rank(rng):
    model, _ = _bayesian_model(CombinedModel, rng, False)
    fac = unc.posterior_factor(model, rank=None)
    np.testing.assert_allclose(fac.factor @ fac.factor.T, model.covariance,
                               atol=1e-10 * np.abs(model.covariance).max())
    assert fac.captured == pytest.approx(1.0)
    # the captured fraction grows with the rank and the leading columns carry the most
    caps = [unc.posterior_factor(model, rank=k, probes=False).captured for k in (1, 3, 6)]
    assert caps[0] < caps[1] < caps[2] <= 1.0 + 1e-12


def test_probes_estimate_the_remaining_covariance_without_bias():
    """``E[Z Z^T] = S Pi S`` (Pi the projector off the J leading basis vectors) over draws of
    the orthonormal probes (Monte Carlo, 20000 draws: the mean is within 2 % of the largest
    entry; unscaled probes would be off by n / P = 2), and the probes do not depend on the
    basis in which the rest of the spectrum happens to come out."""
    gen5 = np.random.default_rng(5)
    a = gen5.normal(size=(8, 8))
    lam, vecs = np.linalg.eigh(a @ a.T)
    root = (vecs * np.sqrt(lam)) @ vecs.T
    basis = np.linalg.qr(gen5.normal(size=(8, 8)))[0]
    lead = basis[:, :2]  # J = 2, n = 6, P = 3
    draws, gen, acc = 20000, np.random.default_rng(1), np.zeros((8, 8))
    for _ in range(draws):
        z = unc._probe_columns(root, lead, 3, gen)
        assert z.shape == (8, 3)
        acc += z @ z.T
    want = root @ (np.eye(8) - lead @ lead.T) @ root
    np.testing.assert_allclose(acc / draws, want, atol=0.02 * np.abs(want).max())
    # one draw: Q has orthonormal columns orthogonal to the leading ones
    z = unc._probe_columns(root, lead, 3, np.random.default_rng(2))
    q = np.linalg.solve(root, z) / np.sqrt(6 / 3)
    np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-10)
    np.testing.assert_allclose(lead.T @ q, 0.0, atol=1e-10)
    # the same leading subspace in another basis (signs, rotation): the same probes
    turn = np.linalg.qr(gen5.normal(size=(2, 2)))[0]
    np.testing.assert_allclose(unc._probe_columns(root, -lead @ turn, 3,
                                                  np.random.default_rng(2)), z, atol=1e-12)


@pytest.mark.parametrize("cls", MODELS)
def test_directions_ordered_on_frames_carry_their_variance(cls, rng):
    """With ``frames`` the leading J directions are the top eigenvectors of ``S M S`` (M the
    frames' mean Gram matrix per component), so they carry the largest share of the
    frames' epistemic variance any J weight directions can (Ky Fan), at least that of the
    training-ordered ones; the probes keep the estimate unbiased, and all C directions are
    exact."""
    model = cls(settings=SETTINGS, zeta=3, n_sparse=6).fit(training_frames(rng, False, 5))
    model.variance_scale = 2.0
    c = model.covariance.shape[0]
    others = [(a.positions, a.numbers, np.asarray(a.cell), a.pbc)
              for a in training_frames(np.random.default_rng(11), False, 2)]
    metric = unc.frames_metric(model, others)
    rows = [_design_rows(model, a).reshape(-1, c)
            for a in training_frames(np.random.default_rng(11), False, 2)]
    np.testing.assert_allclose(metric, sum(r.T @ r / r.shape[0] for r in rows), rtol=1e-12,
                               atol=1e-14 * np.abs(metric).max())
    variance = lambda lf: np.trace(lf.T @ metric @ lf)  # of the frames, mean per component
    exact = 2.0 * np.trace(metric @ model.covariance)
    lam, vecs = np.linalg.eigh(model.covariance)
    root = (vecs * np.sqrt(np.clip(lam, 0.0, None))) @ vecs.T
    best = np.sort(np.linalg.eigvalsh(root @ metric @ root))[::-1]
    for j in (1, 3, 6):
        adapted = unc.posterior_factor(model, j, probes=False, frames=others)
        trained = unc.posterior_factor(model, j, probes=False)
        assert adapted.n_direction_frames == 2 and trained.n_direction_frames == 0
        assert variance(adapted.factor) == pytest.approx(2.0 * best[:j].sum(), rel=1e-8)
        assert variance(adapted.factor) >= variance(trained.factor) * (1 - 1e-12)
    full = unc.posterior_factor(model, None, frames=others)
    np.testing.assert_allclose(full.factor @ full.factor.T, 2.0 * model.covariance,
                               atol=1e-10 * np.abs(model.covariance).max())
    # leading directions plus probes: unbiased over probe draws for a frame not among them
    spectrum = unc._posterior_spectrum(model, others)
    phi = _design_rows(model, training_frames(rng, False, 1)[0]).reshape(-1, c)
    want = np.einsum("rc,cd,rd->", phi, model.covariance, phi)
    gen = np.random.default_rng(0)
    lead_part = ((phi @ spectrum.directions[:, :2]) ** 2).sum()
    draws = [lead_part + ((phi @ unc._probe_columns(spectrum.root, spectrum.basis[:, :2], 6,
                                                    gen)) ** 2).sum() for _ in range(2000)]
    assert np.mean(draws) == pytest.approx(want, rel=0.05)
    # the factor is cached per frames: other frames give other directions
    one = unc.posterior_factor(model, 8, frames=others[:1])
    assert unc.posterior_factor(model, 8, frames=others[:1]) is one
    assert not np.allclose(one.factor, unc.posterior_factor(model, 8, frames=others).factor,
                           rtol=1e-6, atol=0.0)
    assert exact > 0


@pytest.mark.parametrize("cls", MODELS)
def test_streamed_variance_is_leading_directions_plus_probes(cls, rng):
    """The rank-K factor is ``[D_1 .. D_J, Z_1 .. Z_P]`` (J, P = split_rank): the leading
    posterior directions and probes of the rest drawn from the fixed seed, times
    ``sqrt(s)``; its frame variance averaged over probe draws is the exact one."""
    model = cls(settings=SETTINGS, zeta=3, n_sparse=6).fit(training_frames(rng, False, 5))
    model.variance_scale = 2.0
    c = model.covariance.shape[0]
    assert c > 8
    assert unc.split_rank(8, c) == (2, 6) and unc.split_rank(3, c) == (0, 3)
    assert unc.split_rank(c, c) == unc.split_rank(c + 5, c) == (c, 0)
    fac = unc.posterior_factor(model, rank=8)
    assert (fac.rank, fac.leading, fac.probes) == (8, 2, 6)
    spectrum = unc._posterior_spectrum(model)
    directions, mu = spectrum.directions, spectrum.mu
    probes = unc._probe_columns(spectrum.root, spectrum.basis[:, :2], 6,
                                np.random.default_rng(unc.PROBE_SEED))
    np.testing.assert_allclose(fac.factor, np.sqrt(2.0) * np.hstack([directions[:, :2], probes]),
                               rtol=1e-12, atol=1e-14 * np.abs(fac.factor).max())
    assert fac.captured == pytest.approx(mu[:2].sum() / mu.sum(), rel=1e-12)
    model._posterior_factor_cache = None  # rebuilt: the same probes
    np.testing.assert_array_equal(unc.posterior_factor(model, rank=8).factor, fac.factor)
    lead = unc.posterior_factor(model, rank=8, probes=False)
    assert lead.leading == 8 and lead.probes == 0
    np.testing.assert_allclose(lead.factor, np.sqrt(2.0) * directions[:, :8], rtol=1e-12)
    # unbiased for a frame the model has not seen: mean over 2000 probe draws within 5 %
    # (5 standard errors or more)
    atoms = training_frames(rng, False, 1)[0]
    phi = _design_rows(model, atoms).reshape(len(atoms) * 9, -1)
    exact = np.einsum("rc,cd,rd->", phi, model.covariance, phi)
    gen = np.random.default_rng(0)
    lead_part = ((phi @ directions[:, :2]) ** 2).sum()
    draws = [lead_part + ((phi @ unc._probe_columns(spectrum.root, spectrum.basis[:, :2], 6,
                                                    gen)) ** 2).sum() for _ in range(2000)]
    assert np.mean(draws) == pytest.approx(exact, rel=0.05)
    assert lead_part < 0.95 * exact  # the leading directions alone fall short


def test_sampled_weights_have_posterior_mean_and_covariance(rng):
    model, _ = _bayesian_model(MonopoleModel, rng, True)
    model.variance_scale = 3.0
    samples = unc.sample_weights(model, 40000, seed=3)
    cov = 3.0 * model.covariance
    sd = np.sqrt(np.diag(cov))
    # mean within 5 standard errors, covariance (as correlation) within 0.03
    assert np.all(np.abs(samples.mean(axis=0) - model.weights) < 5 * sd / np.sqrt(40000))
    emp = np.cov(samples.T)
    np.testing.assert_allclose(np.sqrt(np.diag(emp)), sd, rtol=0.03)
    np.testing.assert_allclose(emp / np.outer(sd, sd), cov / np.outer(sd, sd), atol=0.03)
    np.testing.assert_array_equal(samples[:5], unc.sample_weights(model, 5, seed=3)[:5])
    assert not np.array_equal(samples[:5], unc.sample_weights(model, 5, seed=4))


def test_samples_are_becs_of_sampled_weights(rng):
    model, _ = _bayesian_model(CombinedModel, rng, False)
    atoms = training_frames(rng, False, 1)[0]
    args = (atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)
    out = unc.predict_uncertainty(model, *args, rank=6, n_samples=3, seed=1)
    fac = unc.posterior_factor(model, rank=6)
    weights = model.weights + out["xi"] @ fac.factor.T
    direct = unc.direction_becs(model, *args, weights)
    mean = unc.direction_becs(model, *args, model.weights[None])
    np.testing.assert_allclose(out["bec_samples"] - out["bec"][None], direct - mean,
                               atol=1e-10)


def test_calibration_metrics_on_known_gaussian(rng):
    n = 20000
    std = rng.uniform(0.5, 2.0, (n, 3, 3))
    ref = np.zeros((n, 3, 3))
    pred = rng.normal(0.0, std)
    res = unc.calibration_metrics(pred, std, ref, frame_sizes=[100] * (n // 100))
    assert res["coverage_68"] == pytest.approx(0.6827, abs=0.01)
    assert res["coverage_95"] == pytest.approx(0.95, abs=0.005)
    assert res["z_rms"] == pytest.approx(1.0, abs=0.01)
    expected_nll = np.mean(0.5 * np.log(2 * np.pi * std ** 2)) + 0.5
    assert res["nll"] == pytest.approx(expected_nll, abs=0.02)
    # frames whose errors scale with their predicted std: perfect rank order
    scale = np.repeat(np.linspace(0.1, 3.0, 50), 10)
    std2 = np.broadcast_to(scale[:, None, None], (500, 3, 3))
    pred2 = std2 * rng.choice([-1.0, 1.0], (500, 3, 3))
    res2 = unc.calibration_metrics(pred2, std2, np.zeros_like(pred2), [10] * 50)
    assert res2["frame_rank_correlation"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="> 0"):
        unc.calibration_metrics(pred, np.zeros_like(std), ref)


def test_coverage_interval_matches_the_binomial_spread(rng):
    """The resampling range of a coverage is as wide as the sampling law says: for
    independent components about 1.96 binomial standard errors each side; for frames whose
    components are all inside or all outside together, the binomial of the frames (many
    times wider), which is why frames, not components, are resampled."""
    n_frames, per_frame = 200, 100
    std = rng.uniform(0.5, 2.0, (n_frames * per_frame, 3, 3))
    pred = rng.normal(0.0, std)
    res = unc.calibration_metrics(pred, std, np.zeros_like(pred), [per_frame] * n_frames)
    for key, p in (("coverage_68", 0.6827), ("coverage_95", 0.95)):
        low, high = res[key + "_interval"]
        assert low < res[key] < high
        half = 1.959964 * np.sqrt(p * (1 - p) / pred.size)
        assert (high - low) / 2 == pytest.approx(half, rel=0.2), key

    # whole frames in or out: 90 % of 60 frames have errors of 0.5 std, the rest of 3 std
    inside = rng.random(60) < 0.9
    scale = np.repeat(np.where(inside, 0.5, 3.0), 10)
    errors = scale[:, None, None] * np.ones((600, 3, 3))
    res = unc.calibration_metrics(errors, np.ones_like(errors), np.zeros_like(errors),
                                  [10] * 60)
    cov = res["coverage_95"]
    assert cov == pytest.approx(inside.mean())
    low, high = res["coverage_95_interval"]
    half = 1.959964 * np.sqrt(cov * (1 - cov) / 60)
    assert (high - low) / 2 == pytest.approx(half, rel=0.25)
    # the same data give the same range (fixed seed), and two frames give none
    again = unc.calibration_metrics(errors, np.ones_like(errors), np.zeros_like(errors),
                                    [10] * 60)
    assert again["coverage_95_interval"] == res["coverage_95_interval"]
    two = unc.calibration_metrics(errors[:20], np.ones((20, 3, 3)), np.zeros((20, 3, 3)),
                                  [10, 10])
    assert np.isnan(two["coverage_95_interval"]).all()
    assert two["coverage_95_block"] is None
    with pytest.raises(ValueError, match="1-d"):
        unc.coverage_intervals(np.ones((2, 2)), np.ones((2, 2)))
    # the block length reported is the one the range was drawn with: 4 (cube root of 60)
    # for frames whose hits are independent
    hits = np.where(inside, 10, 0)
    assert res["coverage_95_block"] == unc.resampling_block(hits / 10.0) == 4
    assert unc.coverage_intervals(hits, np.full(60, 10), block=4) == res["coverage_95_interval"]
    assert unc.coverage_intervals(hits, np.full(60, 10), block=1) != res["coverage_95_interval"]
    for bad in (0, 61):
        with pytest.raises(ValueError, match="block must be between 1 and the 60 frames"):
            unc.coverage_intervals(hits, np.full(60, 10), block=bad)


def test_coverage_interval_of_correlated_frames_is_as_wide_as_their_runs(rng):
    """Frames of one MD share their errors with their neighbours: here whole runs of 20
    frames are inside or outside together, so the coverage is a binomial of the 40 runs, not
    of the 800 frames. The range must be about as wide as the runs' binomial (the block
    bootstrap, blocks of about two runs); drawing frames one by one would give about
    sqrt(1/20) = 0.22 of it."""
    counts = np.full(800, 10)
    ratios = []
    for _ in range(4):
        runs = rng.random(40) < 0.7
        hits = np.where(np.repeat(runs, 20), 10, 0)
        assert 30 <= unc.resampling_block(hits / 10.0) <= 50
        low, high = unc.coverage_intervals(hits, counts)
        p = runs.mean()
        ratios.append((high - low) / 2 / (1.959964 * np.sqrt(p * (1 - p) / runs.size)))
    assert 0.7 < np.mean(ratios) < 1.15, ratios


def test_resampling_block_lengths():
    """F^(1/3) frames for uncorrelated frames, four autocorrelation times for correlated
    ones, three blocks at least, 1 for too few frames to say anything."""
    rng = np.random.default_rng(3)
    assert unc.resampling_block(rng.random(1000)) == 10
    assert unc.resampling_block(np.ones(1000)) == 10        # no variance: no correlation time
    # runs of 10: tau about 5 (the estimate sums noise past the runs, so a spread above 20)
    lengths = [unc.resampling_block(np.repeat(rng.random(100), 10)) for _ in range(20)]
    assert min(lengths) >= 18 and 18 <= np.median(lengths) <= 25 and max(lengths) <= 40
    assert unc.resampling_block(np.repeat(rng.random(3), 10)) == 10   # F // 3
    assert unc.resampling_block(rng.random(8)) == 2
    assert unc.resampling_block([0.5, 1.0]) == 1


def test_recalibration_scale_is_saved_and_old_files_load(rng, tmp_path):
    model, frames = _bayesian_model(MonopoleModel, rng, True, n_frames=4)
    before = predict(model, frames[0], uncertainty=True)["bec_std"]
    unc.recalibrate(model, frames, folds=2, method="coverage")  # one scale of the variance
    s = model.variance_scale
    assert s > 0 and s != 1.0
    # samples use the weight scale of the same cross-validation
    fit = model.training["variance_scale_fit"]
    assert unc.sample_scale(model) == fit["weight_scale"] > 0
    w = unc.sample_weights(model, 20000, seed=0)
    np.testing.assert_allclose(np.var(w, axis=0), fit["weight_scale"] * np.diag(model.covariance),
                               rtol=0.05)
    np.testing.assert_allclose(predict(model, frames[0], uncertainty=True)["bec_std"],
                               np.sqrt(s) * before, rtol=1e-12)
    path = tmp_path / "m.npz"
    model.save(path)
    assert load_model(path).variance_scale == s
    # a file without the entry (written before recalibration existed) loads with scale 1
    meta, arrays = model.state()
    meta.pop("variance_scale")
    old = MonopoleModel._from_state(meta, arrays)
    assert old.variance_scale == 1.0
    # the record of the fit is read back (sample_scale, the CLI): a non-object is refused
    from numbec.models.base import ModelFileError

    bad = dict(meta, training=dict(meta["training"], variance_scale_fit=[1.0]))
    with pytest.raises(ModelFileError, match="variance_scale_fit"):
        MonopoleModel._from_state(bad, arrays)


def test_streamed_wrapper_is_deterministic_and_consistent(rng):
    model, _ = _bayesian_model(CombinedModel, rng, False)
    atoms = training_frames(rng, False, 1)[0]
    args = (atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)
    wrapped = unc.StreamedUncertaintyModel(model, rank=5, n_samples=4, seed=11)
    assert wrapped.outputs[-1] == "bec_samples" and wrapped.species == model.species
    assert not hasattr(wrapped, "predict_frames")  # batching would drop the samples
    a = wrapped.predict_arrays(*args, uncertainty=True)
    b = wrapped.predict_arrays(*args)
    assert "bec_std" in a and "bec_std" not in b
    np.testing.assert_array_equal(a["bec_samples"], b["bec_samples"])
    other = unc.StreamedUncertaintyModel(model, rank=5, n_samples=4, seed=12)
    assert not np.allclose(other.predict_arrays(*args)["bec_samples"], a["bec_samples"])
    # sample s is the BEC of one fixed weight vector: the same for every frame
    fac = unc.posterior_factor(model, rank=5)
    xi = np.random.default_rng(11).standard_normal((4, 5))
    weights = model.weights + xi @ fac.factor.T
    atoms2 = training_frames(rng, False, 1)[0]
    args2 = (atoms2.positions, atoms2.numbers, np.asarray(atoms2.cell), atoms2.pbc)
    mean = unc.direction_becs(model, *args2, model.weights[None])
    np.testing.assert_allclose(wrapped.predict_arrays(*args2)["bec_samples"]
                               - predict(model, atoms2)["bec"][None],
                               unc.direction_becs(model, *args2, weights) - mean, atol=1e-10)
    assert wrapped.state()[0]["streamed_uncertainty"] == {"rank": 5, "samples": 4, "seed": 11}


def _cluster_trajectory(rng, n_frames=10, dt=0.5):
    """Two vibrating water molecules (no cell) in the Trajectory store layout."""
    import xarray as xr
    from kernel_model_checks import water_cluster

    r0 = water_cluster(rng)
    amp = rng.normal(0, 0.05, (len(r0), 3))
    omega = 2 * np.pi / 20.0
    t = np.arange(n_frames) * dt
    pos = r0.positions + amp * np.sin(omega * t)[:, None, None]
    vel = amp * omega * np.cos(omega * t)[:, None, None]
    data = {"positions": (("frame", "atom", "xyz"), pos),
            "cell": (("frame", "cell_vector", "xyz"), np.zeros((n_frames, 3, 3))),
            "numbers": (("atom",), r0.numbers.astype(np.int64)),
            "pbc": (("xyz",), np.zeros(3, bool)),
            "velocities": (("frame", "atom", "xyz"), vel)}
    return xr.Dataset(data, coords={"time": ("frame", t)},
                      attrs={"timestep": dt, "temperature": 300.0})


def test_predict_streams_posterior_samples_and_channel_std(rng, tmp_path):
    from numbec import ir_spectrum, predict

    model, _ = _bayesian_model(CombinedModel, rng, False)
    ds = _cluster_trajectory(rng)
    exact = predict(model, ds, uncertainty=True, progress=False)
    # full rank: the channel bec_std equals the design-row one
    full = predict(model, ds, uncertainty=True, uncertainty_rank=10_000, progress=False)
    np.testing.assert_allclose(full["bec_std"].values, exact["bec_std"].values, rtol=1e-8)
    np.testing.assert_allclose(full["bec"].values, exact["bec"].values, atol=1e-10)
    # the samples come from the full posterior in forward mode (tests/test_forward_mode.py);
    # uncertainty_rank only sets how bec_std is computed
    res = predict(model, ds, posterior_samples=5, uncertainty=True, uncertainty_rank=6, seed=3,
                  chunk_frames=4, progress=False)
    samples = res["dipole_derivative_samples"]
    assert samples.dims == ("frame", "sample", "pol") and samples.shape == (10, 5, 3)
    assert res.attrs["posterior_samples"] == 5 and res.attrs["uncertainty_rank"] == 6
    assert res.attrs["model_class"] == "CombinedModel"
    # the directions are ordered on 4 evenly spaced frames of the trajectory
    assert list(res.attrs["uncertainty_direction_frames"]) == [0, 3, 6, 9]
    frame = lambda f: (ds["positions"].values[f], ds["numbers"].values, np.zeros((3, 3)),
                       np.zeros(3, bool))
    factor = unc.posterior_factor(model, 6, frames=[frame(f) for f in (0, 3, 6, 9)])
    assert factor.n_direction_frames == 4 and model.covariance.shape[0] > 6
    for f in (0, 5, 9):
        out = unc.predict_uncertainty(model, *frame(f), factor=factor)
        np.testing.assert_allclose(res["bec_std"].values[f], out["bec_std"], rtol=1e-12)
        trained = unc.predict_uncertainty(model, *frame(f), rank=6)  # another factor
        assert not np.allclose(res["bec_std"].values[f], trained["bec_std"], rtol=1e-6)
    stored = predict(model, ds, posterior_samples=5, uncertainty=True, uncertainty_rank=6,
                     seed=3, chunk_frames=3, out=tmp_path / "p.zarr", progress=False)
    np.testing.assert_allclose(stored["dipole_derivative_samples"].values, samples.values,
                               atol=1e-12)
    spec = ir_spectrum(stored, correlation_time=2.0)
    assert "cross_section_model_p84" in spec
    with pytest.raises(ValueError, match="velocities"):
        predict(model, ds.drop_vars("velocities"), posterior_samples=2, progress=False)


def test_streamed_uncertainty_names_a_bad_direction_frame(rng):
    from numbec import predict

    model, _ = _bayesian_model(CombinedModel, rng, False)
    ds = _cluster_trajectory(rng)
    positions = ds["positions"].values.copy()
    positions[3, 1, 2] = np.nan  # frame 3 is one of the frames the directions are ordered on
    bad = ds.assign(positions=(ds["positions"].dims, positions))
    with pytest.raises(ValueError, match=r"<dataset>: frame 3: position of atom 1 is NaN"):
        predict(model, bad, uncertainty=True, uncertainty_rank=6, progress=False)


def test_recalibration_needs_two_folds_and_frames(rng):
    model, frames = _bayesian_model(MonopoleModel, rng, True, n_frames=3)
    with pytest.raises(ValueError, match="folds=1"):
        unc.fit_variance_scale(model, frames, folds=1)
    with pytest.raises(ValueError, match="1 frames"):
        unc.fit_variance_scale(model, frames[:1], folds=5)


def test_recalibrated_reads_every_trace_of_a_recalibration():
    """A model counts as recalibrated with a recorded cross-validated fit, or with any scale
    set (files of older numbec carry the scale without the record); never with neither."""
    from types import SimpleNamespace

    from numbec.models.variance_scales import recalibrated

    raw = dict(training={}, variance_scale=1.0, noise_scale=None, residual_scale=0.0)
    assert not recalibrated(SimpleNamespace(**raw))
    for change in ({"training": {"variance_scale_fit": {"method": "two_part"}}},
                   {"variance_scale": 2.5}, {"noise_scale": 0.1}, {"residual_scale": 1e-3}):
        assert recalibrated(SimpleNamespace(**dict(raw, **change))), change
