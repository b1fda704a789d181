"""Model-uncertainty band of IR spectra from dM/dt of posterior weight samples."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from numbec.spectra import ir_spectrum
from numbec.spectra.model_band import BAND_PERCENTILES


def _series(n=2000, dt=1.0, seed=0):
    """dM/dt of two damped-free oscillators plus noise, (n, 3) e·Å/fs."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) * dt
    w1, w2 = 2 * np.pi * 0.03, 2 * np.pi * 0.09
    return (np.outer(np.cos(w1 * t), [0.1, 0.0, 0.02]) + np.outer(np.sin(w2 * t), [0, 0.05, 0])
            + rng.normal(0.0, 0.005, (n, 3)))


@pytest.mark.parametrize("window", ["parzen", "hann"])  # Welch and correlation estimators
def test_band_has_zero_width_for_identical_samples(window):
    dd = _series()
    samples = np.repeat(dd[:, None, :], 4, axis=1)
    spec = ir_spectrum(dd, timestep=1.0, temperature=300.0, samples=samples, blocks=4,
                       window=window, correlation_time=200.0)
    sigma = spec["cross_section"].values
    for stat in ("p16", "p84"):
        np.testing.assert_allclose(spec[f"cross_section_model_{stat}"].values, sigma,
                                   rtol=1e-10, atol=1e-12 * sigma.max())
    assert np.abs(spec["cross_section_model_std"].values).max() <= 1e-10 * sigma.max()
    assert spec.attrs["n_posterior_samples"] == 4
    assert "cross_section_stderr" in spec  # the block error bar stays


def test_band_of_scaled_samples_is_the_percentile_of_the_squared_scales():
    # the spectrum is quadratic in dM/dt: sample s = a_s dd has spectrum a_s^2 S
    dd = _series()
    a = np.linspace(0.5, 1.5, 11)
    samples = a[None, :, None] * dd[:, None, :]
    spec = ir_spectrum(dd, timestep=1.0, temperature=300.0, samples=samples)
    sigma = spec["cross_section"].values
    lo, hi = np.percentile(a ** 2, BAND_PERCENTILES)
    # (a windowed estimate can dip below zero; there the order of the percentiles flips)
    want_lo, want_hi = np.minimum(lo * sigma, hi * sigma), np.maximum(lo * sigma, hi * sigma)
    np.testing.assert_allclose(spec["cross_section_model_p16"].values, want_lo,
                               rtol=1e-9, atol=1e-12 * sigma.max())
    np.testing.assert_allclose(spec["cross_section_model_p84"].values, want_hi,
                               rtol=1e-9, atol=1e-12 * sigma.max())
    np.testing.assert_allclose(spec["cross_section_model_std"].values,
                               np.std(a ** 2, ddof=1) * np.abs(sigma), rtol=1e-9,
                               atol=1e-12 * sigma.max())


def test_band_from_a_prediction_dataset_with_volume():
    dd = _series(n=1000)
    rng = np.random.default_rng(1)
    samples = dd[:, None, :] * (1.0 + 0.1 * rng.normal(size=(1, 8, 1)))
    ds = xr.Dataset({"dipole_derivative": (("frame", "pol"), dd),
                     "dipole_derivative_samples": (("frame", "sample", "pol"), samples)},
                    attrs={"timestep": 1.0, "temperature": 300.0, "volume": 500.0})
    spec = ir_spectrum(ds)
    assert {"absorption_model_p16", "absorption_model_p84", "absorption_model_std",
            "cross_section_model_std"} <= set(spec.data_vars)
    assert (spec["absorption_model_p84"] >= spec["absorption_model_p16"]).all()
    bad = samples.copy()
    bad[3, 2, 0] = np.nan
    with pytest.raises(ValueError, match="frame 3"):
        ir_spectrum(ds.assign(dipole_derivative_samples=(("frame", "sample", "pol"), bad)))
    with pytest.raises(ValueError, match="samples"):
        ir_spectrum(dd, timestep=1.0, temperature=300.0, samples=samples[:10])


def test_plot_draws_the_model_band_next_to_the_standard_error():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from numbec.plot import plot_spectrum

    dd = _series()
    samples = dd[:, None, :] * np.linspace(0.8, 1.2, 5)[None, :, None]
    spec = ir_spectrum(dd, timestep=1.0, temperature=300.0, samples=samples, blocks=4,
                       correlation_time=200.0)
    ax = plot_spectrum(spec)
    labels = [c.get_label() for c in ax.collections]
    assert "standard error" in labels and "model band (16-84 %)" in labels
    band = ax.collections[labels.index("model band (16-84 %)")]
    top = band.get_paths()[0].vertices[:, 1].max()
    assert top == pytest.approx(spec["cross_section_model_p84"].values.max(), rel=1e-6)


def _species_dataset(parts, samples_by_species, numbers, volume=None):
    """A prediction-like dataset: dM/dt per species ``parts`` (P, n, 3) of species
    ``numbers`` (the species coordinate), samples (S, P, n, 3) stored (frame, sample,
    species, pol)."""
    attrs = {"timestep": 1.0, "temperature": 300.0}
    if volume:
        attrs["volume"] = volume
    return xr.Dataset(
        {"dipole_derivative": (("frame", "pol"), parts.sum(axis=0)),
         "dipole_derivative_by_species": (("species", "frame", "pol"), parts),
         "dipole_derivative_samples": (("frame", "sample", "pol"),
                                       samples_by_species.sum(axis=1).transpose(1, 0, 2)),
         "dipole_derivative_by_species_samples": (
             ("frame", "sample", "species", "pol"),
             samples_by_species.transpose(2, 0, 1, 3))},
        coords={"species": ("species", list(numbers))}, attrs=attrs)


def _two_species_parts(n=1500):
    dd = _series(n=n)
    other = _series(n=n, seed=3)[:, ::-1] * 0.7
    return np.stack([dd, other])  # (2, n, 3): O then H


@pytest.mark.parametrize("window", ["parzen", "hann"])
@pytest.mark.parametrize("volume", [None, 400.0])
def test_partial_band_of_independently_scaled_species_parts(window, volume):
    # sample s scales the O part by a_s and the H part by b_s: its partial spectra are
    # a_s^2 S_O, b_s^2 S_H and a_s b_s S_OH (quadratic estimator), percentiles by hand
    parts = _two_species_parts()
    rng = np.random.default_rng(4)
    a, b = rng.uniform(0.5, 1.5, 9), rng.uniform(0.2, 2.0, 9)
    samples = np.stack([a[:, None, None] * parts[0], b[:, None, None] * parts[1]], axis=1)
    ds = _species_dataset(parts, samples, [8, 1], volume=volume)
    spec = ir_spectrum(ds, partials=True, window=window, correlation_time=200.0, blocks=4)
    name = "absorption_partial" if volume else "cross_section_partial"
    assert list(spec["partial"].values) == ["O", "H", "O-H"]
    assert f"{'cross_section' if volume else 'absorption'}_partial_model_p16" not in spec
    factors = {"O": a ** 2, "H": b ** 2, "O-H": a * b}
    top = np.abs(spec[name].values).max()
    for lab, f in factors.items():
        part = spec[name].sel(partial=lab).values
        lo, hi = np.percentile(f, BAND_PERCENTILES)
        np.testing.assert_allclose(spec[f"{name}_model_p16"].sel(partial=lab).values,
                                   np.minimum(lo * part, hi * part), rtol=1e-9,
                                   atol=1e-12 * top)
        np.testing.assert_allclose(spec[f"{name}_model_p84"].sel(partial=lab).values,
                                   np.maximum(lo * part, hi * part), rtol=1e-9,
                                   atol=1e-12 * top)
        np.testing.assert_allclose(spec[f"{name}_model_std"].sel(partial=lab).values,
                                   np.std(f, ddof=1) * np.abs(part), rtol=1e-9,
                                   atol=1e-12 * top)


def test_partial_band_has_zero_width_for_identical_samples():
    parts = _two_species_parts(n=800)
    samples = np.repeat(parts[None], 4, axis=0)
    spec = ir_spectrum(_species_dataset(parts, samples, [8, 1]), partials="species",
                       correlation_time=200.0)
    part = spec["cross_section_partial"].values
    for stat in ("p16", "p84"):
        np.testing.assert_allclose(spec[f"cross_section_partial_model_{stat}"].values, part,
                                   rtol=1e-10, atol=1e-12 * np.abs(part).max())
    assert np.abs(spec["cross_section_partial_model_std"].values).max() <= 1e-10 * np.abs(
        part).max()


def test_partial_band_of_one_species_equals_the_total_band():
    dd = _series(n=1000)
    rng = np.random.default_rng(2)
    samples = (dd[None] * (1.0 + 0.2 * rng.normal(size=(6, 1, 1)))
               + 0.01 * rng.normal(size=(6, 1000, 3)))[:, None]      # (S, 1, n, 3)
    spec = ir_spectrum(_species_dataset(dd[None], samples, [8]), partials=True,
                       correlation_time=100.0, blocks=4)
    assert list(spec["partial"].values) == ["O"]
    for stat in ("p16", "p84", "std"):
        np.testing.assert_allclose(spec[f"cross_section_partial_model_{stat}"].values[0],
                                   spec[f"cross_section_model_{stat}"].values, rtol=1e-12,
                                   atol=0.0)
        assert np.ptp(spec[f"cross_section_model_{stat}"].values) > 0


def test_species_samples_are_checked():
    parts = _two_species_parts(n=400)
    samples = np.repeat(parts[None], 3, axis=0) * np.array([0.9, 1.0, 1.1])[:, None, None,
                                                                           None]
    ds = _species_dataset(parts, samples, [8, 1])
    wrong = ds.copy()
    wrong["dipole_derivative_by_species_samples"] = ds[
        "dipole_derivative_by_species_samples"] * 1.5      # no longer sums to the samples
    with pytest.raises(ValueError, match="do not sum to dipole_derivative_samples"):
        ir_spectrum(wrong, partials=True, correlation_time=100.0)
    bad = ds["dipole_derivative_by_species_samples"].values.copy()
    bad[7, 1, 0, 2] = np.inf
    with pytest.raises(ValueError, match="frame 7"):
        ir_spectrum(ds.assign(dipole_derivative_by_species_samples=(
            ("frame", "sample", "species", "pol"), bad)), partials=True, correlation_time=100.0)
    # without partials the species samples are not needed: total band only
    spec = ir_spectrum(ds, correlation_time=100.0)
    assert "cross_section_model_p16" in spec and "partial" not in spec.coords


def test_plot_draws_the_partial_model_bands(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from numbec.plot import plot_spectrum

    parts = _two_species_parts(n=800)
    samples = parts[None] * np.linspace(0.7, 1.3, 5)[:, None, None, None]
    spec = ir_spectrum(_species_dataset(parts, samples, [8, 1]), partials=True,
                       correlation_time=200.0)
    ax = plot_spectrum(spec, partials=True)
    hatched = [c for c in ax.collections if c.get_hatch()]
    assert len(hatched) == 1 + 3  # the total's band and one per partial
    tops = sorted(c.get_paths()[0].vertices[:, 1].max() for c in hatched[1:])
    want = sorted(spec["cross_section_partial_model_p84"].values.max(axis=1))
    np.testing.assert_allclose(tops, want, rtol=1e-6)


def test_cli_ir_writes_and_draws_the_partial_model_bands(tmp_path):
    pytest.importorskip("matplotlib")
    from numbec.cli import main
    from numbec.spectra.reference import read_spectrum_csv

    parts = _two_species_parts(n=800)
    samples = parts[None] * np.linspace(0.7, 1.3, 5)[:, None, None, None]
    _species_dataset(parts, samples, [8, 1]).to_netcdf(tmp_path / "pred.nc")
    assert main(["ir", str(tmp_path / "pred.nc"), "-o", str(tmp_path / "ir.csv"),
                 "--partials", "--correlation-time", "200", "--plot",
                 str(tmp_path / "ir.png")]) == 0
    assert (tmp_path / "ir.png").stat().st_size > 0
    back = read_spectrum_csv(tmp_path / "ir.csv")
    api = ir_spectrum(tmp_path / "pred.nc", partials=True, correlation_time=200.0)
    np.testing.assert_allclose(back["cross_section_partial_model_p84"].values,
                               api["cross_section_partial_model_p84"].values, rtol=1e-8)


def test_partial_band_of_a_streamed_prediction_is_that_of_its_samples():
    # numbec.predict(..., posterior_samples=S) writes the species parts of every sample; the
    # partial band must be the percentiles of the partial spectra of each sample on its own
    from test_forward_mode import _model, _trajectory

    from numbec import predict
    from numbec.models import CombinedModel

    rng = np.random.default_rng(5)
    model = _model(CombinedModel, rng, False)
    res = predict(model, _trajectory(rng, False, n_frames=24), posterior_samples=5, seed=2,
                  progress=False)
    kw = {"partials": True, "correlation_time": 4.0, "temperature": 300.0}
    spec = ir_spectrum(res, **kw)
    assert list(spec["partial"].values) == ["H", "O", "H-O"]
    samples = res["dipole_derivative_samples"].values
    per = res["dipole_derivative_by_species_samples"].values
    each = []
    for s in range(samples.shape[1]):
        one = xr.Dataset(
            {"dipole_derivative": (("frame", "pol"), samples[:, s]),
             "dipole_derivative_by_species": (("species", "frame", "pol"),
                                              per[:, s].transpose(1, 0, 2))},
            coords={"species": res["species"].values}, attrs={"timestep": 0.5})
        each.append(ir_spectrum(one, **kw)["cross_section_partial"].values)
    lo, hi = np.percentile(np.array(each), BAND_PERCENTILES, axis=0)
    top = np.abs(np.array(each)).max()
    np.testing.assert_allclose(spec["cross_section_partial_model_p16"].values, lo, rtol=1e-9,
                               atol=1e-12 * top)
    np.testing.assert_allclose(spec["cross_section_partial_model_p84"].values, hi, rtol=1e-9,
                               atol=1e-12 * top)
    assert (hi - lo).max() > 1e-6 * top  # a real spread, not a degenerate case
