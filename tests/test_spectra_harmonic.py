"""Harmonic route vs closed forms, and classical MD on phonopy force fields vs the harmonic route.

Data: the phonopy examples in ../shared/data/phonopy_born (BSD-3): force constants from
FORCE_SETS, Born charges from BORN. MD: velocity Verlet on the harmonic force field of
phonopy's supercell with constant BECs; ``dM/dt = sum_a Z_a v_a``.
"""

from __future__ import annotations

import numpy as np
import pytest

import numbec
from numbec.models.baseline import FixedBECModel
from numbec.spectra.ir import integrated_intensity, spectral_peaks

pytest.importorskip("phonopy")

from numbec.spectra.harmonic import (  # noqa: E402
    KM_PER_MOL_PER_E2_AMU,
    gamma_modes,
    harmonic_ir,
    harmonic_md,
    harmonic_spectrum,
    load_phonopy,
    mode_effective_charges,
    supercell_bec,
)


@pytest.fixture(scope="module")
def nacl(shared_data):
    return load_phonopy(shared_data / "phonopy_born" / "NaCl")


@pytest.fixture(scope="module")
def sno2(shared_data):
    return load_phonopy(shared_data / "phonopy_born" / "SnO2")


def test_km_per_mol_constant():
    # literature: 1 (D/Å)^2/amu = 42.2561 km/mol and 1 D = 0.2081943 e·Å
    assert KM_PER_MOL_PER_E2_AMU == pytest.approx(42.2561 / 0.2081943**2, rel=1e-5)


def test_nacl_mode_charge_equals_diatomic_closed_form(nacl):
    phonon, bec = nacl
    freq, vec, masses = gamma_modes(phonon)
    # phonopy's own Gamma frequencies (THz) agree with ours
    phonon.run_qpoints([[0, 0, 0]])
    np.testing.assert_allclose(freq, phonon.qpoints.frequencies[0] * 33.35641, atol=1e-3)
    h = harmonic_ir(phonon, bec)
    z_na, z_cl = bec[0, 0, 0], bec[1, 0, 0]  # isotropic in rock salt
    m_na, m_cl = masses
    # TO mode of a diatomic: e_Na = sqrt(m_Cl/M), e_Cl = -sqrt(m_Na/M) along one axis
    mu = (z_na * m_cl - z_cl * m_na) / np.sqrt((m_na + m_cl) * m_na * m_cl)
    to = freq > 100
    np.testing.assert_allclose(h.intensity.values[to], mu**2, rtol=1e-10)
    assert np.all(h.intensity.values[~to] < 1e-6)  # acoustic: only the tiny ASR violation
    assert h.attrs["volume"] == pytest.approx(phonon.primitive.volume)


def test_mode_charges_obey_completeness_sum_rule(sno2):
    phonon, bec = sno2
    freq, vec, masses = gamma_modes(phonon)
    mu = mode_effective_charges(bec, vec, masses)
    # sum_m mu_m mu_m^T = sum_a Z_a Z_a^T / M_a for a complete orthonormal mode set
    expected = np.einsum("aij,akj,a->ik", bec, bec, 1 / masses)
    np.testing.assert_allclose(mu.T @ mu, expected, rtol=1e-10, atol=1e-12)
    # rotating the crystal rotates the mode charges and keeps the intensities
    rot = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    bec_rot = np.einsum("ik,akl,jl->aij", rot, bec, rot)
    mu_rot = mode_effective_charges(bec_rot, vec @ rot.T, masses)
    np.testing.assert_allclose(mu_rot, mu @ rot.T, atol=1e-12)


@pytest.mark.parametrize("lineshape", ["gaussian", "window"])
def test_other_line_shapes_have_unit_area(lineshape):
    nu, inten = np.array([400.0, 1000.0]), np.array([0.3, 0.1])
    s = harmonic_spectrum(nu, inten, 70.0, width=6.0, lineshape=lineshape,
                          frequency=np.arange(0, 3000, 0.1) if lineshape == "gaussian" else None,
                          correlation_time=2000, timestep=1.0)
    for lo, hi, i in ((0, 700, 0.3), (700, 3000, 0.1)):
        assert integrated_intensity(s, lo, hi) == pytest.approx(i * KM_PER_MOL_PER_E2_AMU,
                                                                rel=2e-3)
    positions, _ = spectral_peaks(s)
    np.testing.assert_allclose(np.sort(positions), nu, atol=0.05)


def test_broadened_sticks_integrate_to_intensities():
    nu, inten, volume = np.array([300.0, 700.0]), np.array([0.2, 0.05]), 50.0
    top = 20000.0
    s = harmonic_spectrum(nu, inten, volume, width=4.0, frequency=np.arange(0, top, 0.05),
                          lineshape="lorentzian")
    # the share of each unit Lorentzian (half width 2) inside [0, top]
    inside = (np.arctan((top - nu) / 2) + np.arctan(nu / 2)) / np.pi
    expected = (inten * inside).sum() * KM_PER_MOL_PER_E2_AMU
    assert integrated_intensity(s) == pytest.approx(expected, rel=1e-5)
    # the default damped-oscillator lines: unit area over [0, inf), by quadrature
    from scipy.integrate import quad

    def oscillator(x, x0, gamma=4.0):
        return 2 / np.pi * gamma * x**2 / ((x0**2 - x**2) ** 2 + (gamma * x) ** 2)

    for x0 in nu:
        area = (quad(oscillator, 0, 2 * x0, args=(x0,), points=[x0], limit=500)[0]
                + quad(oscillator, 2 * x0, np.inf, args=(x0,), limit=500)[0])
        assert area == pytest.approx(1.0, rel=1e-6)
    inside = [quad(oscillator, 0, top, args=(x0,), points=[x0], limit=500)[0] for x0 in nu]
    damped = harmonic_spectrum(nu, inten, volume, width=4.0, frequency=np.arange(0, top, 0.05))
    assert integrated_intensity(damped) == pytest.approx(
        (inten * inside).sum() * KM_PER_MOL_PER_E2_AMU, rel=1e-5)
    km = integrated_intensity(s, 0, 500)
    assert km == pytest.approx(0.2 * KM_PER_MOL_PER_E2_AMU, rel=0.01)
    # absorption = cross-section / V, so integral * V * N_A gives km/mol again
    area = integrated_intensity(s, variable="absorption") * volume * 1e-24 * 6.02214076e23
    assert area * 1e-5 == pytest.approx(expected, rel=1e-5)


def verlet_frequency(nu, dt):
    """Frequency (cm^-1) at which velocity Verlet with step dt (fs) oscillates."""
    w = 2 * np.pi * 2.99792458e10 * nu * 1e-15  # rad/fs
    return 2 / dt * np.arcsin(w * dt / 2) / (2 * np.pi * 2.99792458e10 * 1e-15)


def md_spectrum(phonon, bec, dt, n_steps, correlation_time, through_predict=False,
                window="parzen"):
    sc = phonon.supercell
    traj = harmonic_md(phonon.force_constants, sc.masses, sc.positions, sc.cell, sc.numbers,
                       temperature=300.0, timestep=dt, n_steps=n_steps, seed=1)
    z = supercell_bec(phonon, bec)
    if through_predict:
        pred = numbec.predict(FixedBECModel(sc.numbers, z), traj, progress=False)
        return numbec.ir_spectrum(pred, correlation_time=correlation_time, window=window)
    dd = np.einsum("aij,faj->fi", z, traj.velocities.values)
    return numbec.ir_spectrum(dd, timestep=dt, temperature=300.0, volume=sc.volume,
                              correlation_time=correlation_time, window=window)


def compare_md_harmonic(s, h, dt, n_cells, peak_tol, intensity_tol):
    """Every IR-active Gamma mode group: a peak at its (Verlet) frequency, same band area."""
    inten = h.intensity.values
    active = inten > 1e-3 * inten.max()
    nus = h.mode_frequency.values[active]
    groups = np.unique(np.round(nus, 1))
    positions, heights = spectral_peaks(s, min_height=0.01)
    assert positions.size == groups.size, (positions, groups)
    edges = np.r_[0.0, 0.5 * (groups[1:] + groups[:-1]), s.frequency.values[-1]]
    for i, nu in enumerate(groups):
        expected = verlet_frequency(nu, dt)
        assert np.min(np.abs(positions - expected)) < peak_tol, (nu, positions)
        stick = inten[active][np.abs(nus - nu) < 0.2].sum() * KM_PER_MOL_PER_E2_AMU
        md = integrated_intensity(s, edges[i], edges[i + 1]) / n_cells  # per primitive cell
        assert md == pytest.approx(stick, rel=intensity_tol), (nu, md, stick)


def test_nacl_md_through_predict_matches_harmonic_route(nacl):
    phonon, bec = nacl
    s = md_spectrum(phonon, bec, dt=2.0, n_steps=8000, correlation_time=4000,
                    through_predict=True)
    assert s.attrs["volume"] == pytest.approx(phonon.supercell.volume)
    assert s.attrs["temperature"] == 300.0
    n_cells = len(phonon.supercell) // len(phonon.primitive)
    # observed: peak 0.001 cm^-1 from the Verlet frequency (0.02 from phonopy's), area 0.02 %
    compare_md_harmonic(s, harmonic_ir(phonon, bec), 2.0, n_cells, peak_tol=0.05,
                        intensity_tol=0.005)
    assert_pointwise(s, phonon, bec, dt=2.0, tolerance=0.005)  # observed 0.07 %


def test_sno2_md_peaks_and_intensity_ratios_match_harmonic_route(sno2):
    phonon, bec = sno2
    s = md_spectrum(phonon, bec, dt=1.0, n_steps=20000, correlation_time=4000)
    n_cells = len(phonon.supercell) // len(phonon.primitive)
    # four IR-active groups (Eu 219, Eu 272, A2u 450, Eu 579 cm^-1), intensities 836 : 198
    # : 1554 : 1817 km/mol; observed: peaks within 0.05 cm^-1 of the Verlet frequencies,
    # areas within 0.35 %
    compare_md_harmonic(s, harmonic_ir(phonon, bec), 1.0, n_cells, peak_tol=0.1,
                        intensity_tol=0.01)
    assert_pointwise(s, phonon, bec, dt=1.0, tolerance=0.01)  # observed 0.27 %


def assert_pointwise(s, phonon, bec, dt, tolerance):
    """MD spectrum = harmonic sticks (at the Verlet frequencies) with the MD line shape,
    point by point on the same grid, in absolute units (primitive-cell volume)."""
    freq, vec, masses = gamma_modes(phonon)
    mu = mode_effective_charges(bec, vec, masses)
    h = harmonic_spectrum(verlet_frequency(np.clip(freq, 0, None), dt), (mu**2).sum(axis=1),
                          phonon.primitive.volume, lineshape="window", window=s.attrs["window"],
                          correlation_time=s.attrs["correlation_time"], timestep=dt)
    np.testing.assert_allclose(h.frequency, s.frequency, rtol=1e-12)
    peak = s.absorption.values.max()
    assert np.abs(h.absorption.values - s.absorption.values).max() < tolerance * peak


def test_harmonic_ir_errors(tmp_path):
    with pytest.raises(ValueError, match="needs bec"):
        harmonic_ir(frequencies=[100.0], eigenvectors=np.eye(3)[None], masses=[1.0])
    with pytest.raises(ValueError, match="same atoms"):
        mode_effective_charges(np.zeros((2, 3, 3)), np.zeros((6, 3, 3)), np.ones(2))
    with pytest.raises(FileNotFoundError, match="phonopy_disp.yaml"):
        load_phonopy(tmp_path)
