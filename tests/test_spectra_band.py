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
