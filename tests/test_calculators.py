"""FieldCalculator: forces of an electric field through learned BECs, inside ASE MD.

The model is a small combined kernel model fitted to exact GFN2-xTB APTs of a dozen water
clusters (about 10 s with tblite); the physics checked: forces are minus the gradient of
``E_base - E . M`` for a molecule, the field forces obey the sum rule and rotate with the
field, constant-field NVE conserves the total energy, a time-dependent field is evaluated at
the time of the positions, and the field forces agree with tblite's own finite-field
response.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("tblite")

from ase import Atoms, units  # noqa: E402
from ase.calculators.lj import LennardJones  # noqa: E402
from ase.md.verlet import VelocityVerlet  # noqa: E402

from numbec.calculators import FieldCalculator, oscillating_field  # noqa: E402


@pytest.fixture(scope="module")
def water(tmp_path_factory):
    """(model, frames): a combined model fitted to xTB APTs of water dimers and trimers."""
    import numbec
    from numbec.demo import DemoConfig, _settings, generate_reference

    cache = tmp_path_factory.mktemp("xtb")
    config = DemoConfig(train_sizes=(2, 3, 3), snapshots_per_size=4, sample_every=20)
    frames = generate_reference(config, cache, log=lambda *a: None)
    model = numbec.CombinedModel(settings=_settings(), zeta=4, n_sparse=20, seed=0)
    model.fit(frames)
    return model, frames


@pytest.fixture(scope="module")
def trimer(water):
    frame = water[1][-1]
    return Atoms(frame.numbers, frame.positions)


def _lj():
    return LennardJones(sigma=0.7, epsilon=0.05, rc=6.0, smooth=True)  # soft: bonds at 1 Å


def test_molecule_forces_are_minus_gradient_of_energy(water, trimer):
    model, _ = water
    field = np.array([0.3, -0.2, 0.5])  # V/Å: large, so the field term dominates
    atoms = trimer.copy()
    atoms.calc = FieldCalculator(_lj(), model, field)
    forces = atoms.get_forces()
    field_forces = atoms.calc.results["field_forces"]
    h = 1e-4
    fd = np.empty_like(forces)
    fd_field = np.empty_like(forces)
    x0 = atoms.get_positions()
    for a in range(len(atoms)):
        for j in range(3):
            e, m = [], []
            for sign in (1, -1):
                x = x0.copy()
                x[a, j] += sign * h
                atoms.set_positions(x)
                e.append(atoms.get_potential_energy())
                m.append(-field @ model.predict(atoms)["dipole"])  # -E.M alone
            fd[a, j] = -(e[0] - e[1]) / (2 * h)
            fd_field[a, j] = -(m[0] - m[1]) / (2 * h)
    atoms.set_positions(x0)
    assert np.abs(field_forces).max() > 0.3
    np.testing.assert_allclose(field_forces, fd_field, atol=2e-7)
    np.testing.assert_allclose(forces, fd, atol=2e-7)


def test_field_forces_sum_to_zero_and_rotate_with_the_field(water, trimer):
    from scipy.spatial.transform import Rotation

    model, _ = water
    field = np.array([0.1, 0.05, -0.2])
    atoms = trimer.copy()
    atoms.calc = FieldCalculator(_lj(), model, field)
    atoms.get_forces()
    f = atoms.calc.results["field_forces"]
    assert np.abs(f).max() > 0.05
    np.testing.assert_allclose(f.sum(axis=0), 0.0, atol=1e-10)  # acoustic sum rule
    # Z^T E with numbec's convention, row i = field: F_aj = sum_i Z_aij E_i
    bec = atoms.calc.results["bec"]
    np.testing.assert_allclose(f[0], bec[0].T @ field, atol=1e-14)
    rot = Rotation.from_rotvec([0.3, -1.1, 0.7]).as_matrix()
    turned = Atoms(trimer.numbers, trimer.positions @ rot.T)
    turned.calc = FieldCalculator(_lj(), model, rot @ field)
    turned.get_forces()
    np.testing.assert_allclose(turned.calc.results["field_forces"], f @ rot.T, atol=1e-8)
    np.testing.assert_allclose(turned.get_potential_energy(), atoms.get_potential_energy(),
                               atol=1e-8)


def _nve_energies(atoms, calc, steps, dt=0.5):
    from numbec.demo import _thermal_momenta

    atoms = atoms.copy()
    atoms.calc = calc
    _thermal_momenta(atoms, 300.0, np.random.default_rng(3))
    dyn = VelocityVerlet(atoms, dt * units.fs)
    total, base_plus_kinetic = [], []

    def record():
        ekin = atoms.get_kinetic_energy()
        total.append(atoms.get_potential_energy() + ekin)
        base_plus_kinetic.append(calc.results["base_energy"] + ekin)

    dyn.attach(record, interval=1)
    dyn.run(steps)
    return np.array(total), np.array(base_plus_kinetic)


def test_constant_field_nve_with_xtb_conserves_total_energy(water, trimer):
    from numbec.demo import xtb_calculator

    model, _ = water
    runs = {}
    for strength in (0.0, 0.2):  # V/Å
        calc = FieldCalculator(xtb_calculator(), model, [0.0, 0.0, strength])
        runs[strength] = _nve_energies(trimer, calc, steps=80, dt=0.25)
    free = np.abs(runs[0.0][0] - runs[0.0][0][0]).max()
    total, base_kin = runs[0.2]
    deviation = np.abs(total - total[0]).max()
    # measured: 6.4e-4 eV with the field, 6.7e-4 eV without (Verlet error at 0.25 fs, 20 fs)
    assert deviation < 1e-3
    assert deviation < 1.2 * free + 1e-4
    # the field does work on the moving charges: E_base + E_kin alone is not conserved
    assert np.abs(base_kin - base_kin[0]).max() > 20 * deviation


def test_time_dependent_field_follows_the_dynamics(water, trimer):
    model, _ = water
    calls = []
    wave = oscillating_field([0.0, 0.3, 0.1], wavenumber=1600.0)

    def field(t):
        calls.append(t)
        return wave(t)

    atoms = trimer.copy()
    calc = FieldCalculator(_lj(), model, field)
    atoms.calc = calc
    from numbec.demo import _thermal_momenta

    _thermal_momenta(atoms, 300.0, np.random.default_rng(0))
    dt = 0.5
    dyn = VelocityVerlet(atoms, dt * units.fs)
    calc.follow(dyn)
    energies, times = [], []

    def record():
        times.append(calc.results["time"])
        assert calc.results["time"] == pytest.approx(dyn.get_time() / units.fs)
        energies.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())

    dyn.attach(record, interval=1)
    dyn.run(200)
    # one field evaluation per step, at the time of the new positions
    np.testing.assert_allclose(calls, np.arange(201) * dt, atol=1e-12)
    np.testing.assert_allclose(times, np.arange(201) * dt, atol=1e-12)
    assert np.ptp(energies) > 1e-3  # a driven system (balance: next test)

    # setting the time by hand recomputes at the same positions
    calc2 = FieldCalculator(_lj(), model, wave)
    probe = trimer.copy()
    probe.calc = calc2
    f0 = probe.get_forces().copy()
    calc2.time = 5.0
    f1 = probe.get_forces()
    assert calc2.results["time"] == 5.0
    assert np.abs(f1 - f0).max() > 1e-3
    np.testing.assert_allclose(calc2.results["field"], wave(5.0))


def test_time_dependent_field_energy_balance(water, trimer):
    """With E(t), d(E_kin + E_base - E.M)/dt = -(dE/dt).M along the trajectory."""
    model, _ = water
    wave = oscillating_field([0.0, 0.4, 0.2], wavenumber=800.0)
    atoms = trimer.copy()
    calc = FieldCalculator(_lj(), model, wave)
    atoms.calc = calc
    dt = 0.25
    dyn = VelocityVerlet(atoms, dt * units.fs)
    calc.follow(dyn)
    totals, dipoles, times = [], [], []

    def record():
        totals.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
        dipoles.append(calc.results["dipole"])
        times.append(calc.results["time"])

    dyn.attach(record, interval=1)
    dyn.run(400)
    totals, dipoles, times = np.array(totals), np.array(dipoles), np.array(times)
    w = 800.0 * 2 * np.pi * 2.99792458e-5  # rad/fs
    dfield = -np.array([0.0, 0.4, 0.2])[None, :] * w * np.sin(w * times)[:, None]
    power = -np.einsum("ti,ti->t", dfield, dipoles)
    pumped = np.concatenate([[0.0], np.cumsum(0.5 * (power[1:] + power[:-1]) * dt)])
    change = totals - totals[0]
    assert np.ptp(change) > 0.02
    np.testing.assert_allclose(change, pumped, atol=0.02 * np.ptp(change))


def test_periodic_cell_reports_base_energy_and_warns(water, trimer):
    model, _ = water
    atoms = trimer.copy()
    atoms.set_cell([12.0, 12.0, 12.0])
    atoms.pbc = True
    atoms.center()
    base = _lj()
    atoms.calc = FieldCalculator(base, model, [0.0, 0.0, 0.1])
    with pytest.warns(RuntimeWarning, match="not conserved"):
        energy = atoms.get_potential_energy()
    reference = atoms.copy()
    reference.calc = _lj()
    assert energy == pytest.approx(reference.get_potential_energy(), abs=1e-12)
    assert "dipole" not in atoms.calc.results
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        atoms.positions[0, 0] += 0.01
        atoms.get_potential_energy()  # warned once per calculator


def test_bad_field_is_a_clear_error(water, trimer):
    model, _ = water
    with pytest.raises(ValueError, match="3 components"):
        FieldCalculator(_lj(), model, [0.0, 1.0])
    atoms = trimer.copy()
    atoms.calc = FieldCalculator(_lj(), model, lambda t: [np.nan, 0, 0])
    with pytest.raises(ValueError, match="at t = 0 fs is not finite"):
        atoms.get_forces()


def _xtb_with_field(atoms, field=None):
    """GFN2-xTB energy (eV) and forces (eV/Å) with a homogeneous field (V/Å) in tblite.

    tblite's ASE calculator passes its ``electric_field`` as a NumPy array to a C pointer
    argument and fails (tblite 0.8.0); its library interface takes a cffi buffer."""
    from ase.units import Bohr, Hartree
    from tblite.interface import Calculator
    from tblite.library import ffi

    calc = Calculator("GFN2-xTB", atoms.numbers, atoms.positions / Bohr)
    calc.set("accuracy", 0.01)
    calc.set("verbosity", 0)
    if field is not None:
        buffer = np.ascontiguousarray(np.asarray(field, float) * Bohr / Hartree)
        calc.add("electric-field", ffi.from_buffer("double[]", buffer))
    res = calc.singlepoint()
    return res.get("energy") * Hartree, -res.get("gradient") * Hartree / Bohr


def test_field_forces_agree_with_tblite_finite_field(water):
    from numbec.demo import finite_difference_apt, water_cluster, xtb_calculator

    model, _ = water
    # a relaxed trimer: not one of the (400 K) training geometries
    atoms = water_cluster(3, seed=11, calc=xtb_calculator(), fmax=0.02, steps=300)
    exact_bec, _ = finite_difference_apt(atoms)
    field = np.array([0.02, -0.01, 0.03])  # V/Å
    _, f0 = _xtb_with_field(atoms)
    _, f1 = _xtb_with_field(atoms, field)
    xtb_response = f1 - f0
    exact = np.einsum("aij,i->aj", exact_bec, field)
    calc = FieldCalculator(_lj(), model, field)
    atoms.calc = calc
    atoms.get_forces()
    learned = calc.results["field_forces"]
    scale = np.abs(xtb_response).max()
    assert scale > 0.01
    # exact APTs: the physical sign and size; the rest is polarisability, O(E^2)
    assert np.abs(xtb_response - exact).max() < 0.005 * scale
    # learned APTs: to the accuracy of the model (here BEC RMSE 0.014 e, max 0.04 e; measured
    # force difference 3.5e-4 eV/Å of 7.9e-3, relative RMS 4 %)
    bec_error = np.abs(calc.results["bec"] - exact_bec).max()
    assert np.abs(xtb_response - learned).max() < bec_error * np.abs(field).sum() + 1e-4
    assert np.abs(xtb_response - learned).max() < 0.1 * scale
