"""The offline demo (numbec.demo, ``numbec demo``): its numerical pieces against analytic
cases, and a quick end-to-end run whose xTB reference checks the physics of the pipeline."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from numbec import demo
from numbec.cli import main


class _AnalyticDipole(Calculator):
    """Dipole ``P = sum_a q_a r_a + c * sum_a r_a |r_a|^2`` with a known derivative."""

    implemented_properties = ["dipole"]

    def __init__(self, charges, c):
        super().__init__()
        self.q = np.asarray(charges, dtype=float)
        self.c = c

    def calculate(self, atoms=None, properties=("dipole",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        r = self.atoms.positions
        self.results["dipole"] = self.q @ r + self.c * (r * (r**2).sum(1)[:, None]).sum(0)


def test_finite_difference_apt_matches_analytic_derivative():
    rng = np.random.default_rng(3)
    atoms = Atoms("OH2", positions=rng.normal(size=(3, 3)))
    q, c = np.array([-0.8, 0.4, 0.4]), 0.05
    atoms.calc = _AnalyticDipole(q, c)
    bec, dipole = demo.finite_difference_apt(atoms, h=1e-3)
    r = atoms.positions
    # d/dr_{a,j} of c r_a,i |r_a|^2 = c (delta_ij |r_a|^2 + 2 r_a,i r_a,j): row i = dipole
    expected = q[:, None, None] * np.eye(3) + c * (
        (r**2).sum(1)[:, None, None] * np.eye(3) + 2.0 * r[:, :, None] * r[:, None, :]
    )
    np.testing.assert_allclose(bec, expected, atol=1e-6)
    np.testing.assert_allclose(dipole, q @ r + c * (r * (r**2).sum(1)[:, None]).sum(0))
    np.testing.assert_array_equal(atoms.positions, r)  # geometry restored


def test_xtb_apts_obey_translational_and_rotational_sum_rules():
    """Exact APTs of a neutral molecule: sum_a Z[a] = 0 (translation) and
    sum_a Z[a] (w x r_a) = w x P for every rotation axis w (a rigid rotation rotates P)."""
    pytest.importorskip("tblite.ase")
    atoms = demo.water_cluster(2, seed=1, calc=demo.xtb_calculator())
    bec, dipole = demo.finite_difference_apt(atoms, h=0.005)
    assert np.abs(bec.sum(axis=0)).max() < 1e-3
    r = atoms.positions - atoms.positions.mean(axis=0)
    for w in np.eye(3):
        lhs = np.einsum("aij,aj->i", bec, np.cross(w, r))
        np.testing.assert_allclose(lhs, np.cross(w, dipole), atol=5e-4)  # transposed: 0.03
    # and the O atoms are negative, the H atoms positive (isotropic part)
    iso = np.trace(bec, axis1=1, axis2=2) / 3
    assert (iso[atoms.numbers == 8] < -0.3).all() and (iso[atoms.numbers == 1] > 0.1).all()


def test_exact_dipole_derivative_is_fourth_order():
    omega = 2 * np.pi / 9.0  # rad/fs: the O-H stretch period is ~9 fs
    errors = []
    for dt in (0.5, 0.25):
        t = np.arange(0, 200, dt)
        m = np.stack([np.sin(omega * t), np.cos(omega * t), 0 * t], axis=1)
        d = demo.exact_dipole_derivative(m, dt)
        assert np.isnan(d[:2]).all() and np.isnan(d[-2:]).all()
        exact = omega * np.stack([np.cos(omega * t), -np.sin(omega * t), 0 * t], axis=1)
        errors.append(np.abs(d[2:-2] - exact[2:-2]).max() / omega)
    assert errors[0] < 2e-3
    assert 13.0 < errors[0] / errors[1] < 19.0  # error ~ dt^4


def test_spectral_agreement_scale_and_peaks():
    f = np.arange(0.0, 4500.0, 5.0)
    band = lambda f0, w: np.exp(-0.5 * ((f - f0) / w) ** 2)
    ref = band(600, 100) + 2 * band(1600, 30) + 5 * band(3400, 80)
    same = demo.spectral_agreement(f, ref, 3.0 * ref)
    assert same["cosine"] == pytest.approx(1.0)
    assert same["intensity_ratio"] == pytest.approx(3.0)
    assert same["bands"]["bend"]["peak"] == same["bands"]["bend"]["peak_reference"] == 1600
    weak = ref - 4 * band(3400, 80)  # stretch band at 1/5 of its intensity
    other = demo.spectral_agreement(f, ref, weak)
    assert other["bands"]["stretch"]["intensity_ratio"] == pytest.approx(0.2, rel=1e-3)
    assert other["bands"]["bend"]["intensity_ratio"] == pytest.approx(1.0, rel=1e-3)
    assert other["cosine"] < 0.95
    shifted = demo.spectral_agreement(f, ref, np.interp(f - 50.0, f, ref))
    assert shifted["bands"]["stretch"]["peak"] == 3450


def test_missing_tblite_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tblite", None)
    monkeypatch.setitem(sys.modules, "tblite.ase", None)
    assert main(["demo", "--quick", "--out", str(tmp_path / "d")]) != 0
    err = capsys.readouterr().err
    assert 'pip install "numbec[demo]"' in err
    assert not (tmp_path / "d").exists()  # failed before doing anything


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, capsys):
    pytest.importorskip("tblite.ase")
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    for name in ("ir.png", "spectra.csv", "results.json"):
        assert (out / name).stat().st_size > 0
    res = json.loads((out / "results.json").read_text())

    exact = res["exact"]
    # xTB APTs of a neutral cluster obey the acoustic sum rule (to the SCF noise)
    assert exact["asr_max_e"] < 1e-3
    # chain rule: sum_a Z_a v_a from the exact APTs and the store's velocities (Å/fs, after
    # the ASE unit conversion) equals the time derivative of the xTB dipole
    assert exact["apt_velocity_vs_dipole_derivative_relative_rmse"] < 0.03
    assert 150.0 < exact["temperature_K"] < 600.0

    models = res["models"]
    assert set(models) >= {"species-mean"}
    learned = [name for name in ("monopole", "dipole", "combined") if name in models]
    assert learned, "no learned model ran"
    baseline = models["species-mean"]["bec_rmse_e"]
    assert 0.03 < baseline < 0.3  # water APTs vary with geometry: the mean is a poor model
    for name in learned:
        r = models[name]
        # on frames of an independent trajectory, learned APTs beat the species mean clearly
        assert r["bec_rmse_e"] < 0.7 * baseline, (name, r["bec_rmse_e"], baseline)
        assert r["bec_rmse_e"] < 0.08, name
        assert r["dipole_derivative_relative_rmse"] < models["species-mean"][
            "dipole_derivative_relative_rmse"]
        spectrum = r["spectrum"]
        assert spectrum["cosine"] > 0.9, name
        bend = spectrum["bands"]["bend"]
        assert 0.75 < bend["intensity_ratio"] < 1.3, name
        assert abs(bend["peak"] - bend["peak_reference"]) <= 40.0, name
    if "combined" in models:  # the O-H stretch needs the charge flux along H-bonded bonds
        stretch = models["combined"]["spectrum"]["bands"]["stretch"]
        assert 0.6 < stretch["intensity_ratio"] < 1.6
        assert abs(stretch["peak"] - stretch["peak_reference"]) <= 60.0

    # calibration of bec_std at the test frames with exact APTs, for every kernel model
    for name in learned:
        cal = models[name]["calibration"]
        for key in ("coverage_68", "coverage_95"):
            assert 0.0 <= cal[key] <= 1.0, (name, key, cal[key])
            low, high = cal[key + "_interval"]
            assert low <= cal[key] <= high, (name, key)
        assert cal["coverage_68"] <= cal["coverage_95"], name
        assert -1.0 <= cal["frame_rank_correlation"] <= 1.0, name
        assert cal["variance_scale"] > 0.0
    if "combined" in models:
        # recalibrated on the training structures (cross-validation), not left at 1
        assert models["combined"]["calibration"]["variance_scale"] != 1.0
        # a calibrated 95 % interval neither covers almost nothing nor is absurdly wide
        assert 0.5 <= models["combined"]["calibration"]["coverage_95"] <= 1.0

        band = res["model_band"]
        assert band["model"] == "combined" and band["n_posterior_samples"] == 16
        f = np.asarray(band["frequency_cm-1"])
        lo = np.asarray(band["cross_section_model_p16_cm2"])
        hi = np.asarray(band["cross_section_model_p84_cm2"])
        std = np.asarray(band["cross_section_model_std_cm2"])
        exact_spec = np.asarray(band["cross_section_exact_cm2"])
        assert f.shape == lo.shape == hi.shape == std.shape == exact_spec.shape
        assert (lo <= hi).all() and (std >= 0).all()
        assert band["area_band_halfwidth"] > 0.0  # posterior samples differ
        # where the signal is, the band is a fraction of the spectrum, not wider than it
        assert 0.0 < band["relative_width"] < 0.5
        # the exact spectrum's area within a few band widths of the predicted one (the
        # half width summed over frequencies bounds the spread of the predicted area)
        assert abs(band["area_exact"] - band["area_predicted"]) \
            <= 3.0 * band["area_band_halfwidth"], band
        assert 0.0 <= band["coverage"] <= 1.0
        header = (out / "spectra.csv").read_text().splitlines()[0]
        assert "combined_model_p16 [cm^2]" in header and "combined_model_p84 [cm^2]" in header
        assert header.startswith("# frequency [cm^-1],")  # every column carries its unit

    # second run: everything from the cache, identical numbers
    capsys.readouterr()
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "reference APTs: cached" in log and "test MD: cached" in log
    again = json.loads((out / "results.json").read_text())
    for name in models:
        assert again["models"][name]["bec_rmse_e"] == models[name]["bec_rmse_e"]
        assert again["models"][name]["spectrum"] == models[name]["spectrum"]
        assert again["models"][name].get("calibration", {}).get("coverage_95") == \
            models[name].get("calibration", {}).get("coverage_95")
    if "model_band" in res:
        assert again["model_band"]["cross_section_model_p84_cm2"] == \
            res["model_band"]["cross_section_model_p84_cm2"]
