"""Recalibration of the predicted BEC uncertainty: the two-part scale (the default), the
split-conformal coverage scale, the Gaussian maximum-likelihood scale, and what is stored in
model files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from kernel_model_checks import SETTINGS, predict, training_frames
from scipy import stats

from numbec.models import MonopoleModel, load_model
from numbec.models import uncertainty as unc

OLD = Path(__file__).parent / "data" / "models_38415df"


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def test_coverage_scale_of_gaussian_and_heavy_tailed_errors(rng):
    # Gaussian errors with twice the predicted std: both scales are 4
    z = rng.normal(0.0, 2.0, 200_000)
    assert unc.coverage_scale(z, 0.95) == pytest.approx(4.0, rel=0.02)
    assert np.mean(z ** 2) == pytest.approx(4.0, rel=0.02)
    # heavy tails: 95 % of the errors N(0, 1), 5 % N(0, 25). The second moment (the ML scale
    # of a Gaussian) is 2.2; the 95 % interval needs only (q / 1.96)^2 with q solving
    # 0.95 P(|N| > q) + 0.05 P(|N| > q / 5) = 0.05, about 1.44
    from scipy.optimize import brentq

    n = 400_000
    z = np.where(rng.uniform(size=n) < 0.95, 1.0, 5.0) * rng.normal(size=n)
    q = brentq(lambda x: 0.95 * 2 * stats.norm.sf(x) + 0.05 * 2 * stats.norm.sf(x / 5) - 0.05,
               1.0, 10.0)
    want = (q / stats.norm.ppf(0.975)) ** 2
    s = unc.coverage_scale(z, 0.95)
    assert s == pytest.approx(want, rel=0.02)
    assert np.mean(z ** 2) == pytest.approx(2.2, rel=0.02) and want < 1.5
    # by construction the scaled interval holds at least 95 % (and at most 1/n more)
    small = z[:999]
    covered = np.mean(np.abs(small) <= stats.norm.ppf(0.975) * np.sqrt(
        unc.coverage_scale(small, 0.95)) * (1 + 1e-12))
    assert 0.95 <= covered <= 0.95 + 2.0 / small.size

def test_two_part_scales_recover_known_factors(rng):
    n = 100_000
    epi, noise = rng.uniform(0.0, 2.0, n), np.full(n, 0.3)
    err = rng.normal(0.0, np.sqrt(3.0 * epi + 0.5 * noise))
    a, b = unc.two_part_scales(err, epi, noise)
    assert a == pytest.approx(3.0, rel=0.05) and b == pytest.approx(0.5, rel=0.1)


def _fitted(rng, n_frames=4):
    frames = training_frames(rng, True, n_frames)
    return MonopoleModel(settings=SETTINGS, zeta=3, n_sparse=3).fit(frames), frames


def test_recalibration_methods_from_the_same_held_out_errors(rng, tmp_path):
    model, frames = _fitted(rng)
    held = unc.held_out_errors(model, frames, folds=2)
    # the held-out variances are those of the fold models (fitted without the block)
    sub = unc._fold_model(model, frames[2:]).fit(frames[2:])
    out = sub.predict(frames[0], uncertainty=True)
    n0 = out["bec"].size
    np.testing.assert_allclose(held["err"][:n0], (out["bec"] - frames[0].arrays["bec"]).ravel(),
                               atol=1e-10)
    np.testing.assert_allclose((held["epistemic"] + held["noise"])[:n0],
                               out["bec_std"].ravel() ** 2, rtol=1e-8)
    z = held["err"] / np.sqrt(held["epistemic"] + held["noise"])
    before = predict(model, frames[0], uncertainty=True)["bec_std"]
    # the default is the two-part scale (epistemic and noise apart)
    model.save(tmp_path / "copy.npz")
    default = unc.recalibrate(load_model(tmp_path / "copy.npz"), frames, held_out=held)
    two = unc.scales_from_held_out(held, "two_part")
    assert default.training["variance_scale_fit"]["method"] == "two_part"
    assert (default.variance_scale, default.noise_scale) == (two["scale"], two["noise_scale"])
    unc.recalibrate(model, frames, folds=2, method="coverage")
    fit = model.training["variance_scale_fit"]
    assert fit["method"] == "coverage"
    assert model.variance_scale == fit["scale"] == pytest.approx(unc.coverage_scale(z, 0.95))
    assert fit["scale_likelihood"] == pytest.approx(np.mean(z ** 2))
    assert np.mean(z ** 2 <= 1.959964 ** 2 * model.variance_scale * (1 + 1e-9)) >= 0.95
    np.testing.assert_allclose(predict(model, frames[0], uncertainty=True)["bec_std"],
                               np.sqrt(model.variance_scale) * before, rtol=1e-12)
    # the stored number is the factor of the variance whatever the method: it round-trips
    path = tmp_path / "m.npz"
    model.save(path)
    back = load_model(path)
    assert back.variance_scale == model.variance_scale
    assert back.training["variance_scale_fit"]["method"] == "coverage"
    old = unc.recalibrate(load_model(path), frames, folds=2, method="likelihood")
    assert old.variance_scale == pytest.approx(np.mean(z ** 2))
    with pytest.raises(ValueError, match="method"):
        unc.fit_variance_scale(model, frames, method="student")


def test_worst_block_scale_covers_every_block_where_the_pooled_scale_does_not(rng):
    # three held-out blocks: two whose errors match the predicted std, one (the "600 K"
    # block) with errors twice as large at the same predicted std
    n = 20_000
    sizes = {0: n, 1: n, 2: n // 2}
    block = np.concatenate([np.full(m, k) for k, m in sizes.items()])
    epi, noise = rng.uniform(0.0, 0.02, block.size), np.full(block.size, 0.01)
    z = rng.normal(size=block.size) * np.where(block == 2, 2.0, 1.0)
    held = {"err": z * np.sqrt(epi + noise), "epistemic": epi, "noise": noise,
            "block": block, "folds": 3}
    fit = unc.scales_from_held_out(held, "worst_block")
    assert fit["method"] == "worst_block"
    for k in range(3):
        assert fit["block_scales"][k] == pytest.approx(unc.coverage_scale(z[block == k]),
                                                       rel=1e-12)
    assert fit["block_scales"][0] == pytest.approx(1.0, rel=0.05)
    assert fit["block_scales"][2] == pytest.approx(4.0, rel=0.05)
    assert fit["scale"] == fit["scale_worst_block"] == max(fit["block_scales"])
    # unscaled: the hard block holds P(|N(0, 4)| < 1.96) = P(|N| < 0.98) of its errors
    assert fit["block_coverage_95_unscaled"][2] == pytest.approx(
        2 * stats.norm.cdf(1.959964 / 2) - 1, abs=0.02)

    def covered(scale, k):
        return np.mean(np.abs(z[block == k]) <= 1.959964 * np.sqrt(scale) * (1 + 1e-12))

    pooled = unc.scales_from_held_out(held, "coverage")["scale"]
    assert covered(pooled, 2) < 0.90  # the pooled scale under-covers the hard block ...
    assert all(covered(fit["scale"], k) >= 0.95 for k in range(3))  # ... worst_block does not
    # without block labels (an older held-out dict) the method refuses, the others work
    old = {key: v for key, v in held.items() if key != "block"}
    with pytest.raises(ValueError, match="worst_block"):
        unc.scales_from_held_out(old, "worst_block")
    assert "block_scales" not in unc.scales_from_held_out(old, "coverage")


def test_held_out_errors_label_each_value_with_its_block(rng):
    model, frames = _fitted(rng, n_frames=4)
    held = unc.held_out_errors(model, frames, folds=2)
    per_frame = len(frames[0]) * 9
    assert held["block"].dtype == np.int64 and held["block"].shape == held["err"].shape
    np.testing.assert_array_equal(held["block"], np.repeat([0, 1], 2 * per_frame))
    unc.recalibrate(model, frames, method="worst_block", held_out=held)
    fit = model.training["variance_scale_fit"]
    assert model.variance_scale == max(fit["block_scales"]) and len(fit["block_scales"]) == 2


@pytest.mark.parametrize("name", ["MonopoleModel", "DipoleModel", "CombinedModel"])
def test_files_without_the_new_fields_load_and_predict_as_before(name):
    # written at commit 38415df, before recalibration existed: scale 1, no method recorded
    model = load_model(OLD / f"{name}.npz")
    assert unc.variance_scale(model) == 1.0
    assert "variance_scale_fit" not in model.training
    assert unc.sample_scale(model) == 1.0
    assert model.residual_scale == 0.0 and unc.residual_scale(model) == 0.0


def test_two_part_recalibration_scales_the_two_variances_apart(rng, tmp_path):
    from numbec.models import regression

    model, frames = _fitted(rng)
    atoms = frames[0]
    phi, _ = model._design(atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc,
                           "test")
    epi = regression.predictive_variance(phi.reshape(len(atoms) * 9, -1), model.covariance,
                                         model.sigma_v2, include_noise=False)
    held = unc.held_out_errors(model, frames, folds=2)
    unc.recalibrate(model, frames, method="two_part", held_out=held)
    s, s_v = model.variance_scale, model.noise_scale
    fit = model.training["variance_scale_fit"]
    assert fit["method"] == "two_part" and [s, s_v] == fit["two_part_scales"]
    a, b = unc.two_part_scales(held["err"], held["epistemic"], held["noise"],
                               unc.MIN_NOISE_SCALE)
    assert s / s_v == pytest.approx(a / b, rel=1e-12) and b >= unc.MIN_NOISE_SCALE
    # the common factor makes the held-out 95 % interval hold 95 %
    z = held["err"] / np.sqrt(s * held["epistemic"] + s_v * held["noise"])
    rank = int(np.ceil((z.size + 1) * 0.95))
    assert np.sort(np.abs(z))[rank - 1] == pytest.approx(1.959964, rel=1e-6)
    np.testing.assert_allclose(predict(model, atoms, uncertainty=True)["bec_std"].ravel() ** 2,
                               s * epi + s_v * model.sigma_v2, rtol=1e-10)
    # the full-rank channel uncertainty uses both factors the same way
    out = unc.predict_uncertainty(model, atoms.positions, atoms.numbers,
                                  np.asarray(atoms.cell), atoms.pbc, rank=None)
    np.testing.assert_allclose(out["bec_std"].ravel() ** 2, s * epi + s_v * model.sigma_v2,
                               rtol=1e-8)
    path = tmp_path / "m.npz"
    model.save(path)
    back = load_model(path)
    assert (back.variance_scale, back.noise_scale) == (s, s_v)
    np.testing.assert_allclose(predict(back, atoms, uncertainty=True)["bec_std"],
                               predict(model, atoms, uncertainty=True)["bec_std"], rtol=1e-12)
    # a single-scale recalibration scales the noise with the rest again
    unc.recalibrate(model, frames, method="coverage", held_out=held)
    assert model.noise_scale is None and unc.noise_scale(model) == model.variance_scale
    meta, arrays = back.state()
    for bad in (-1.0, float("nan"), "2"):
        with pytest.raises(Exception, match="noise_scale"):
            MonopoleModel._from_state(dict(meta, noise_scale=bad), arrays)


def test_residual_scales_recover_known_factors(rng):
    # held-out errors whose variance is 2 var + 0.5 r, r a frame residual of 0 to 0.02
    n = 200_000
    var = rng.uniform(1e-4, 2e-3, n)
    r = np.repeat(rng.uniform(0.0, 0.02, n // 100), 100)
    err = rng.normal(0.0, np.sqrt(2.0 * var + 0.5 * r))
    s, c = unc.residual_scales(err, var, r)
    assert s == pytest.approx(2.0, rel=0.05) and c == pytest.approx(0.5, rel=0.05)
    # no residual term in the data: c goes to 0 and s is the one-scale ML
    err = rng.normal(0.0, np.sqrt(3.0 * var))
    s, c = unc.residual_scales(err, var, r)
    assert s == pytest.approx(3.0, rel=0.03) and c * r.mean() < 0.02 * 3.0 * var.mean()
    # the floor of s holds even where the residual explains all of the error
    s, c = unc.residual_scales(rng.normal(0.0, np.sqrt(0.5 * r + 1e-12)), var, r, 0.01)
    assert s >= 0.01 and c == pytest.approx(0.5, rel=0.1)
    with pytest.raises(ValueError, match="residual_scales: need .*frame_residual >= 0"):
        unc.residual_scales(err, var, -r)
    with pytest.raises(ValueError, match="residual_scales: need variance > 0"):
        unc.residual_scales(err, -var, r)
    with pytest.raises(ValueError, match="residual_scales: .* equal non-empty shapes"):
        unc.residual_scales(err[:-1], var, r)


def test_residual_method_covers_a_hard_block_the_pooled_scale_does_not(rng):
    # three held-out blocks with the same Bayesian variance; the frames of the third ("600 K")
    # are further from the sparse points (r 4x larger) and their errors larger by as much
    n = 20_000
    sizes = {0: n, 1: n, 2: n // 2}
    block = np.concatenate([np.full(m, k) for k, m in sizes.items()])
    epi, noise = rng.uniform(0.0, 2e-4, block.size), np.full(block.size, 1e-4)
    frame_r = np.repeat(np.where(np.arange(block.size // 50) < 2 * n // 50, 1e-3, 4e-3), 50)
    frame_r *= rng.uniform(0.8, 1.2, frame_r.size // 50).repeat(50)
    err = rng.normal(0.0, np.sqrt(epi + noise + 0.1 * frame_r))
    held = {"err": err, "epistemic": epi, "noise": noise, "block": block, "folds": 3,
            "frame_residual": frame_r, "residual": frame_r}
    fit = unc.scales_from_held_out(held, "residual")
    s, c = fit["residual_scales"]
    assert fit["method"] == "residual" and (fit["scale"], fit["residual_scale"]) == (s, c)
    assert s == pytest.approx(1.0, rel=0.15) and c == pytest.approx(0.1, rel=0.15)

    def covered(std, k):
        return np.mean(np.abs(err[block == k]) <= 1.959964 * std[block == k])

    pooled = unc.scales_from_held_out(held, "coverage")["scale"]
    assert covered(np.sqrt(pooled * (epi + noise)), 2) < 0.90  # the pooled scale under-covers
    std = np.sqrt(s * (epi + noise) + c * frame_r)
    assert all(0.93 <= covered(std, k) <= 0.97 for k in range(3))  # residual: every block
    # held-out errors without frame residuals (older numbec): the method refuses
    old = {key: v for key, v in held.items() if "residual" not in key}
    with pytest.raises(ValueError, match="residual"):
        unc.scales_from_held_out(old, "residual")
    assert "residual_scales" not in unc.scales_from_held_out(old, "coverage")


def test_residual_recalibration_adds_c_times_the_frame_residual(rng, tmp_path):
    from numbec.models import regression
    from numbec.selection import frame_residual

    model, frames = _fitted(rng)
    atoms = frames[0]
    args = (atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)
    before = predict(model, atoms, uncertainty=True)["bec_std"]
    held = unc.held_out_errors(model, frames, folds=2)
    # each held-out value carries its atom's residual against the fold model, and the mean
    # over its frame
    sub = unc._fold_model(model, frames[2:]).fit(frames[2:])
    r0 = frame_residual(sub, *args)
    n0 = len(atoms) * 9
    np.testing.assert_allclose(held["residual"][:n0], np.repeat(r0, 9), rtol=1e-12)
    np.testing.assert_allclose(held["frame_residual"][:n0], r0.mean(), rtol=1e-12)
    assert held["residual"].shape == held["err"].shape
    # c = 0 (every other method, and models never recalibrated): bec_std as before
    unc.recalibrate(model, frames, method="coverage", held_out=held)
    assert model.residual_scale == 0.0 and unc.residual_variance(model, *args) == 0.0
    np.testing.assert_allclose(predict(model, atoms, uncertainty=True)["bec_std"],
                               np.sqrt(model.variance_scale) * before, rtol=1e-12)
    unc.recalibrate(model, frames, method="residual", held_out=held)
    fit = model.training["variance_scale_fit"]
    s, c = fit["residual_scales"]
    assert fit["method"] == "residual" and (model.variance_scale, model.residual_scale) == (s, c)
    assert s >= unc.MIN_BAYES_SCALE * (1 - 1e-12) and c >= 0.0
    # the common factor makes the held-out 95 % interval hold 95 %
    z = held["err"] / np.sqrt(s * (held["epistemic"] + held["noise"])
                              + c * held["frame_residual"])
    rank = int(np.ceil((z.size + 1) * 0.95))
    assert np.sort(np.abs(z))[rank - 1] == pytest.approx(1.959964, rel=1e-6)
    model.residual_scale = c = 0.5  # a term large enough to see in every component
    phi, _ = model._design(*args, "test")
    epi = regression.predictive_variance(phi.reshape(len(atoms) * 9, -1), model.covariance,
                                         model.sigma_v2, include_noise=False)
    r_frame = frame_residual(model, *args).mean()
    assert r_frame > 0
    want = s * (epi + model.sigma_v2) + c * r_frame
    np.testing.assert_allclose(predict(model, atoms, uncertainty=True)["bec_std"].ravel() ** 2,
                               want, rtol=1e-10)
    model._posterior_factor_cache = None
    out = unc.predict_uncertainty(model, *args, rank=None)
    np.testing.assert_allclose(out["bec_std"].ravel() ** 2, want, rtol=1e-8)
    # the streamed model (numbec.predict's low-rank path) carries the term too
    streamed = unc.StreamedUncertaintyModel(model, rank=model.n_columns)
    np.testing.assert_allclose(
        streamed.predict_arrays(*args, uncertainty=True)["bec_std"].ravel() ** 2, want,
        rtol=1e-8)
    # the model file keeps c; a file without it (every other method) has c = 0
    path = tmp_path / "m.npz"
    model.save(path)
    back = load_model(path)
    assert (back.variance_scale, back.residual_scale) == (s, c)
    np.testing.assert_allclose(predict(back, atoms, uncertainty=True)["bec_std"],
                               predict(model, atoms, uncertainty=True)["bec_std"], rtol=1e-12)
    meta, arrays = back.state()
    assert meta["residual_scale"] == c
    plain = dict(meta)
    del plain["residual_scale"]
    assert MonopoleModel._from_state(plain, arrays).residual_scale == 0.0
    for bad in (-1.0, float("nan"), "2", True):
        with pytest.raises(Exception, match="residual_scale"):
            MonopoleModel._from_state(dict(meta, residual_scale=bad), arrays)
