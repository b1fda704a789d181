"""``numbec ir``: converted trajectory -> numbec.predict store -> spectrum CSV/netCDF/PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from ase import Atoms
from ase.io import write

import numbec
from numbec.cli import main
from numbec.conventions import ASE_TIME_UNITS_PER_FS, INVCM_TO_RAD_PER_FS
from numbec.io.prediction import open_prediction
from numbec.models.baseline import FixedBECModel
from numbec.spectra.reference import read_reference, read_spectrum_csv

NU0 = 300.0  # cm^-1
DT = 1.0  # fs
CELL = 3.0 * np.eye(3)


@pytest.fixture(scope="module")
def prediction(tmp_path_factory):
    """A rigid-ion diatomic crystal vibrating at NU0 along x and y, converted and predicted."""
    tmp = tmp_path_factory.mktemp("ir")
    masses = np.array([22.99, 35.45])
    w = NU0 * INVCM_TO_RAD_PER_FS
    t = np.arange(1200) * DT
    a, b = 0.158, 0.095  # Å: a kinetic temperature of about 300 K, the tests' nominal one
    frames = []
    for k, time in enumerate(t):
        rel = np.array([a * np.cos(w * time), b * np.sin(w * time + 1.0), 0.0])
        relv = np.array([-a * w * np.sin(w * time), b * w * np.cos(w * time + 1.0), 0.0])
        share = masses[::-1] / masses.sum()  # centre of mass at rest
        pos = np.array([[0.0, 0.0, 0.0], [1.5, 1.5, 1.5]]) + np.outer([share[0], -share[1]],
                                                                       rel)
        vel = np.outer([share[0], -share[1]], relv)  # Å/fs
        atoms = Atoms("NaCl", positions=pos, cell=CELL, pbc=True, masses=masses)
        atoms.set_velocities(vel / ASE_TIME_UNITS_PER_FS)
        atoms.info["step"] = k
        frames.append(atoms)
    write(tmp / "traj.xyz", frames)
    assert main(["convert", str(tmp / "traj.xyz"), str(tmp / "traj.zarr"), "--timestep",
                 str(DT), "--no-progress"]) == 0
    bec = np.array([np.eye(3) * 1.1, -np.eye(3) * 1.1])
    numbec.predict(FixedBECModel([11, 17], bec), tmp / "traj.zarr", out=tmp / "pred.zarr",
                   progress=False)
    return tmp


def test_csv_output_matches_api_and_peak(prediction, capsys):
    out = prediction / "s.csv"
    assert main(["ir", str(prediction / "pred.zarr"), "-o", str(out), "--temperature", "300",
                 "--correlation-time", "1000", "--max-frequency", "2000"]) == 0
    printed = capsys.readouterr().out
    assert "strongest peaks" in printed and "300." in printed
    back = read_spectrum_csv(out)
    api = numbec.ir_spectrum(xr.open_zarr(prediction / "pred.zarr"), temperature=300,
                             correlation_time=1000, max_frequency=2000)
    np.testing.assert_allclose(back.absorption.values, api.absorption.values, rtol=1e-8,
                               atol=1e-9 * float(api.absorption.max()))
    np.testing.assert_allclose(back.frequency_thz.values, api.frequency_thz.values, rtol=1e-9)
    assert back.attrs["temperature"] == 300 and back.attrs["window"] == "parzen"
    assert back.attrs["volume"] == pytest.approx(27.0)
    f = back.frequency.values
    assert abs(f[np.argmax(back.absorption.values)] - NU0) < 2 * (f[1] - f[0])


def test_netcdf_partials_and_plot(prediction):
    pytest.importorskip("matplotlib")
    out, png = prediction / "s.nc", prediction / "ir.png"
    assert main(["ir", str(prediction / "pred.zarr"), "-o", str(out), "--temperature", "300",
                 "--partials", "--blocks", "2", "--window", "blackman", "--plot",
                 str(png)]) == 0
    s = xr.load_dataset(out)
    assert list(s.partial.values) == ["Na", "Cl", "Na-Cl"]
    np.testing.assert_allclose(s.absorption_partial.sum("partial"), s.absorption, rtol=1e-8,
                               atol=1e-9 * float(s.absorption.max()))
    assert s.attrs["n_blocks"] == 2 and s.attrs["window"] == "blackman"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_several_runs_and_kinetic_temperature(prediction):
    pred, traj = str(prediction / "pred.zarr"), str(prediction / "traj.zarr")
    out = prediction / "runs.nc"
    assert main(["ir", pred, pred, "-o", str(out), "--trajectory", traj, traj]) == 0
    s = xr.load_dataset(out)
    assert s.attrs["n_runs"] == 2
    assert float(np.abs(s.absorption_stderr).max()) == 0.0  # identical runs
    # rigid-ion diatomic: <sum m v^2> / (3 kB) from the velocities written in the fixture
    traj_ds = numbec.open_trajectory(traj)
    masses = np.array([22.98976928, 35.453])  # standard masses of Na, Cl (tables differ
    # in the 5th digit, hence rel=1e-4 below)
    m_v2 = np.einsum("a,fai,fai->f", masses, traj_ds.velocities.values,
                     traj_ds.velocities.values).mean()
    kelvin = m_v2 * 1.66053906660e-27 * 1e10 / (3 * 1.380649e-23)
    assert s.attrs["temperature"] == pytest.approx(kelvin, rel=1e-4)


def test_plot_with_quartz_references(prediction, shared_data):
    pytest.importorskip("matplotlib")
    qe = shared_data / "sio2_quartz_qe"
    sticks = read_reference(qe / "SiO2-IR-dfpt.dat")
    # README: strongest modes 1041.5, 1041.6, 1048.3 cm^-1
    strongest = np.sort(sticks.mode_frequency.values[np.argsort(-sticks.intensity.values)[:3]])
    np.testing.assert_allclose(strongest, [1041.47, 1041.61, 1048.33])
    # QE's IR column is in (D/Å)^2/amu: 44.4849 (D/Å)^2/amu = 1879.8 km/mol
    assert float(sticks.intensity_km_mol.sel(mode=24)) == pytest.approx(44.4849 * 42.2561,
                                                                        rel=1e-5)
    curve = read_reference(qe / "SiO2-epsim-dfpt.dat")
    assert curve.attrs["spectrum"] == "absorption"
    f = curve.frequency.values
    np.testing.assert_allclose(curve.absorption.values, 2 * np.pi * f * curve.imag_dielectric)
    assert abs(f[np.argmax(curve.imag_dielectric.values)] - 1045) < 10
    for ref, name in ((qe / "SiO2-IR-dfpt.dat", "sticks.png"),
                      (qe / "SiO2-epsim-dfpt.dat", "curve.png")):
        png = prediction / name
        assert main(["ir", str(prediction / "pred.zarr"), "-o", str(prediction / "r.csv"),
                     "--temperature", "300", "--plot", str(png), "--reference", str(ref)]) == 0
        assert png.stat().st_size > 10_000


def test_a_spectrum_without_peaks_says_so(prediction, capsys, monkeypatch):
    import numbec.spectra.ir

    monkeypatch.setattr(numbec.spectra.ir, "spectral_peaks",
                        lambda *args, **kwargs: (np.zeros(0), np.zeros(0)))
    assert main(["ir", str(prediction / "pred.zarr"), "-o", str(prediction / "x.csv"),
                 "--temperature", "300"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("strongest peaks (cm^-1): none found")


def test_errors_are_clear(prediction, capsys):
    assert main(["ir", str(prediction / "pred.zarr"), "-o", str(prediction / "x.csv")]) == 0
    capsys.readouterr()  # the temperature came from the recorded trajectory (test below)
    assert main(["ir", str(prediction / "pred.zarr"), "-o", str(prediction / "x.txt"),
                 "--temperature", "300"]) == 1
    assert ".csv or .nc" in capsys.readouterr().err
    assert main(["ir", str(prediction / "missing.zarr"), "-o", "x.csv"]) == 1
    assert "no such prediction store" in capsys.readouterr().err
    # of two stores, only the missing one is named
    assert main(["ir", str(prediction / "pred.zarr"), str(prediction / "missing.zarr"),
                 "-o", "x.csv"]) == 1
    assert capsys.readouterr().err == (f"numbec ir: error: {prediction / 'missing.zarr'}: "
                                       "no such prediction store\n")
    assert main(["ir", str(prediction / "pred.zarr"), "-o", str(prediction / "x.csv"),
                 "--temperature", "300", "--partials", "partition"]) == 1
    assert "combined" in capsys.readouterr().err


def test_csv_round_trip_with_partials_and_plot_errors(prediction):
    pytest.importorskip("matplotlib")
    from numbec.plot import plot_spectrum

    out = prediction / "p.csv"
    assert main(["ir", str(prediction / "pred.zarr"), "-o", str(out), "--temperature", "300",
                 "--partials", "species"]) == 0
    back = read_spectrum_csv(out)
    api = numbec.ir_spectrum(str(prediction / "pred.zarr"), temperature=300, partials=True)
    assert list(back.partial.values) == ["Na", "Cl", "Na-Cl"]
    np.testing.assert_allclose(back.absorption_partial.values, api.absorption_partial.values,
                               rtol=1e-8, atol=1e-9 * float(api.absorption.max()))
    assert back.absorption_partial.attrs["units"] == "cm^-1"
    no_partials = numbec.ir_spectrum(str(prediction / "pred.zarr"), temperature=300)
    with pytest.raises(ValueError, match="partials"):
        plot_spectrum(no_partials, partials=True)
    with pytest.raises(ValueError, match="unit"):
        plot_spectrum(no_partials, unit="Hz")
    ax = plot_spectrum(back, partials=True, unit="THz")
    assert ax.get_xlabel() == "frequency (THz)" and len(ax.get_lines()) >= 4


def test_plot_crops_to_the_signal_and_labels_system_and_model(prediction):
    pytest.importorskip("matplotlib")
    from numbec.plot import plot_spectrum, signal_extent

    s = numbec.ir_spectrum(str(prediction / "pred.zarr"), temperature=300)
    nyquist = float(s.frequency.max())
    assert nyquist > 16000  # 1 fs step: the axis used to run to here
    extent = signal_extent(s)
    # the 300 cm^-1 line with its window tails (FWHM attrs) fits, the empty rest does not
    assert NU0 + s.attrs["resolution_fwhm"] < extent <= 1000
    ax = plot_spectrum(s)
    assert ax.get_xlim() == (0.0, extent)
    _, labels = ax.get_legend_handles_labels()
    assert labels[0] == "NaCl, FixedBECModel" and "spectrum" not in labels
    assert s.attrs["system"] == "NaCl" and s.attrs["model"] == "FixedBECModel"
    # THz axis: the same place
    ax = plot_spectrum(s, unit="THz")
    assert ax.get_xlim()[1] == pytest.approx(extent / 33.35641, rel=1e-4)
    # --max-frequency overrides the figure and the file
    png, out = prediction / "crop.png", prediction / "crop.csv"
    assert main(["ir", str(prediction / "pred.zarr"), "-o", str(out), "--temperature", "300",
                 "--plot", str(png), "--max-frequency", "2500"]) == 0
    assert read_spectrum_csv(out).frequency.max() <= 2500


def test_csv_headers_carry_units(prediction):
    out = prediction / "units.csv"
    assert main(["ir", str(prediction / "pred.zarr"), "-o", str(out), "--temperature",
                 "300", "--partials"]) == 0
    lines = out.read_text().splitlines()
    header = next(line for line in lines if not line.startswith("#")).split(",")
    assert all(h.endswith("]") and " [" in h for h in header), header
    assert "imag_dielectric [1]" in header and "absorption [cm^-1]" in header
    attrs = [line[2:].split(": ")[0] for line in lines if line.startswith("# ")]
    for quantity in ("temperature", "timestep", "volume", "correlation_time", "resolution"):
        assert f"{quantity}_units" in attrs, quantity


def _copy_prediction(prediction, name):
    import shutil

    bad = prediction / name
    if bad.exists():
        shutil.rmtree(bad)
    shutil.copytree(prediction / "pred.zarr", bad)
    return bad


@pytest.mark.parametrize("name, value", [("volume", -500.0), ("volume", 0.0),
                                         ("temperature", -300.0), ("timestep", "1 fs")])
def test_store_attributes_are_checked_and_the_store_named(prediction, capsys, name, value):
    import zarr

    bad = _copy_prediction(prediction, f"bad_{name}.zarr")
    group = zarr.open_group(str(bad), mode="r+")
    group.attrs[name] = value
    zarr.consolidate_metadata(str(bad))
    args = ["ir", str(bad), "-o", str(prediction / "x.csv")]
    if name != "temperature":
        args += ["--temperature", "300"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"{bad}: attrs['{name}']" in err, err
    assert "traj.zarr" not in err


def test_prediction_store_of_another_format_version_is_refused(prediction, capsys):
    import zarr

    bad = _copy_prediction(prediction, "version7.zarr")
    zarr.open_group(str(bad), mode="r+").attrs["format_version"] = 7
    zarr.consolidate_metadata(str(bad))
    assert main(["ir", str(bad), "-o", str(prediction / "x.csv"), "--temperature", "300"]) == 1
    assert (f"{bad}: prediction store format_version 7 is not supported (this numbec reads "
            "version 1)") in capsys.readouterr().err


def test_errors_name_the_prediction_store_not_the_trajectory(prediction, capsys):
    import zarr

    bad = _copy_prediction(prediction, "nan.zarr")
    dd = zarr.open_group(str(bad), mode="r+")["dipole_derivative"]
    values = dd[:]
    values[10, 1] = np.nan
    dd[:] = values
    assert main(["ir", str(bad), "-o", str(prediction / "x.csv"), "--temperature", "300"]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: dM/dt of frame 10 is NaN or inf" in err, err


@pytest.mark.parametrize("flag", ["--max-frequency", "--temperature", "--volume",
                                  "--correlation-time", "--timestep"])
def test_impossible_options_are_clean_errors(prediction, capsys, flag):
    assert main(["ir", str(prediction / "pred.zarr"), "-o", str(prediction / "x.csv"),
                 "--temperature", "300", flag, "-1"]) == 1
    assert f"{flag} must be a number > 0, got -1" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"\x00\x01\x02garbage\x00" * 50,
                                     b"100 0.5\n200 \xff\xfe\n", b"# numbec x\nfrequency\n\x01"])
def test_garbage_reference_files_are_named(prediction, capsys, content):
    pytest.importorskip("matplotlib")
    ref = prediction / "garbage.dat"
    ref.write_bytes(content)
    assert main(["ir", str(prediction / "pred.zarr"), "-o", str(prediction / "x.csv"),
                 "--temperature", "300", "--plot", str(prediction / "g.png"),
                 "--reference", str(ref)]) == 1
    err = capsys.readouterr().err
    assert f"{ref}:" in err and "Traceback" not in err, err



def _own_prediction(tmp_path, prediction):
    """A copy of the fixture's trajectory store and a prediction store made from the copy
    (so that the copy can be moved or changed)."""
    import shutil

    traj = tmp_path / "traj.zarr"
    shutil.copytree(prediction / "traj.zarr", traj)
    bec = np.array([np.eye(3) * 1.1, -np.eye(3) * 1.1])
    numbec.predict(FixedBECModel([11, 17], bec), traj, out=tmp_path / "pred.zarr",
                   progress=False)
    return traj, tmp_path / "pred.zarr"


def test_the_recorded_trajectory_gives_the_kinetic_temperature(prediction, capsys):
    """Without --temperature and --trajectory, the spectrum of a prediction store takes the
    kinetic temperature of the store it was made from: the same spectrum as with
    --trajectory given, and the provenance names where the temperature came from."""
    import json

    pred, traj = str(prediction / "pred.zarr"), str(prediction / "traj.zarr")
    implicit, explicit = prediction / "implicit.nc", prediction / "explicit.nc"
    assert main(["ir", pred, "-o", str(implicit)]) == 0
    assert main(["ir", pred, "-o", str(explicit), "--trajectory", traj]) == 0
    a, b = xr.load_dataset(implicit), xr.load_dataset(explicit)
    assert a.attrs["temperature"] == b.attrs["temperature"]
    np.testing.assert_array_equal(a.absorption.values, b.absorption.values)
    source = json.loads(a.attrs["provenance"])["temperature_sources"][0]
    assert "kinetic" in source and "traj.zarr" in source and "attrs['input']" in source
    # species partials from bec need velocities: the recorded store gives them too
    stored = open_prediction(prediction / "pred.zarr")
    without = stored.drop_vars(["dipole_derivative_by_species", "species"])
    from_bec = numbec.ir_spectrum(without, temperature=300, partials="species")
    given = numbec.ir_spectrum(without, temperature=300, partials="species",
                               trajectory=traj)
    np.testing.assert_array_equal(from_bec.absorption_partial, given.absorption_partial)


def test_a_moved_trajectory_store_is_named_in_the_error(prediction, tmp_path, capsys):
    traj, pred = _own_prediction(tmp_path, prediction)
    traj.rename(tmp_path / "moved.zarr")
    assert main(["ir", str(pred), "-o", str(tmp_path / "x.csv")]) == 1
    err = capsys.readouterr().err
    assert "temperature unknown" in err and str(traj.resolve()) in err, err
    assert "use --temperature in K, or --trajectory " in err and "=" not in err, err
    assert "is not there any more" in err and "Traceback" not in err, err
    with pytest.raises(ValueError, match="species partials need the velocities"):
        numbec.ir_spectrum(open_prediction(pred).drop_vars(
            ["dipole_derivative_by_species", "species"]), temperature=300, partials="species")


def test_a_trajectory_store_that_changed_is_not_used(prediction, tmp_path, capsys):
    """Another trajectory written at the same path (same size, other positions) is
    refused: its velocities would give another run's temperature."""
    import zarr

    traj, pred = _own_prediction(tmp_path, prediction)
    positions = zarr.open_group(str(traj), mode="r+")["positions"]
    values = positions[:]
    values[-1, 0, 0] += 0.01
    positions[:] = values
    assert main(["ir", str(pred), "-o", str(tmp_path / "x.csv")]) == 1
    err = capsys.readouterr().err
    assert "now holds another trajectory" in err and "temperature unknown" in err, err
    # an in-memory prediction records no store: the error is the plain one
    ds = numbec.predict(FixedBECModel([11, 17], np.array([np.eye(3), -np.eye(3)])),
                        numbec.open_trajectory(prediction / "traj.zarr"), progress=False)
    from numbec.spectra.ir import recorded_trajectory

    assert recorded_trajectory(ds) == (None, None)


@pytest.mark.parametrize("suffix", [".csv", ".nc", ".png"])
def test_a_failed_write_keeps_the_previous_outputs(prediction, tmp_path, capsys, monkeypatch,
                                                   suffix):
    """A write that fails half-way (a full disk, a file-size limit) leaves the spectrum and
    figure of the previous run as they were, and the error names the output file."""
    import errno
    from pathlib import Path

    pytest.importorskip("matplotlib")
    import matplotlib.figure

    from numbec.spectra import reference

    out = tmp_path / ("ir.nc" if suffix == ".nc" else "ir.csv")
    png = tmp_path / "ir.png"
    args = ["ir", str(prediction / "pred.zarr"), "-o", str(out), "--temperature", "300",
            "--plot", str(png)]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in (out, png)}

    def full_disk():
        raise OSError(errno.EFBIG, "File too large")

    def savetxt(fh, *args, **kwargs):
        fh.write("1,2,3\n")
        full_disk()

    def to_netcdf(self, path, *args, **kwargs):
        Path(path).write_bytes(b"junk")
        full_disk()

    def savefig(self, path, *args, **kwargs):
        Path(path).write_bytes(b"junk")
        full_disk()

    if suffix == ".csv":
        monkeypatch.setattr(reference.np, "savetxt", savetxt)
    elif suffix == ".nc":
        monkeypatch.setattr(xr.Dataset, "to_netcdf", to_netcdf)
    else:
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    failed = png if suffix == ".png" else out
    assert f"error: {failed}: cannot write (File too large)" in err, err
    assert "pred.zarr" not in err, err
    assert {p.name: p.read_bytes() for p in (out, png)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)


def test_a_prediction_without_dmdt_names_the_way_to_get_it(prediction):
    """A prediction made from a trajectory without velocities: the error says how to
    derive them (the option of numbec predict exists)."""
    from numbec.cli import build_parser

    ds = open_prediction(prediction / "pred.zarr")
    ds = ds.drop_vars([v for v in ds.data_vars if v.startswith(("dipole", "bec_dipole"))])
    with pytest.raises(ValueError, match="numbec predict --velocities-from-positions"):
        numbec.ir_spectrum(ds, temperature=300)
    predict_parser = build_parser("predict").commands["predict"]
    assert any("--velocities-from-positions" in a.option_strings
               for a in predict_parser._actions)


def test_the_recorded_trajectory_checks_a_nominal_temperature(prediction, capsys):
    """docs/spectra.md: a nominal temperature far from the kinetic one is warned about;
    the trajectory store the prediction records is used for that like --trajectory."""
    pred, traj = str(prediction / "pred.zarr"), str(prediction / "traj.zarr")
    for extra in ([], ["--trajectory", traj]):
        with pytest.warns(UserWarning, match="T = 3000 K .*but the trajectory velocities"):
            assert main(["ir", pred, "-o", str(prediction / "nominal.csv"),
                         "--temperature", "3000", *extra]) == 0


def test_a_nominal_temperature_is_checked_on_evenly_spaced_frames(prediction, monkeypatch):
    """Checking a nominal temperature reads at most TEMPERATURE_CHECK_FRAMES evenly spaced
    frames of the trajectory's velocities, not all of them; the kinetic temperature that
    replaces a missing one still uses every frame."""
    from numbec.io.trajectory import open_trajectory
    from numbec.spectra import ir as ir_module
    from numbec.spectra.temperature import kinetic_temperature_statistics

    traj = open_trajectory(prediction / "traj.zarr")
    ds = open_prediction(prediction / "pred.zarr")
    monkeypatch.setattr(ir_module, "TEMPERATURE_CHECK_FRAMES", 4)
    stride = -(-traj.sizes["frame"] // 4)
    assert stride > 1
    sampled = kinetic_temperature_statistics(traj.isel(frame=slice(None, None, stride)))
    every = kinetic_temperature_statistics(traj)
    with pytest.warns(UserWarning, match="T = 3000 K"):
        checked = numbec.ir_spectrum(ds, temperature=3000.0, trajectory=traj)
    record, = json.loads(checked.attrs["provenance"])["kinetic_temperatures"]
    assert record["mean"] == pytest.approx(sampled.mean, rel=1e-12)
    assert record["mean"] != pytest.approx(every.mean, rel=1e-9)
    kinetic = numbec.ir_spectrum(ds.assign_attrs(temperature=None), trajectory=traj)
    record, = json.loads(kinetic.attrs["provenance"])["kinetic_temperatures"]
    assert record["mean"] == pytest.approx(every.mean, rel=1e-12)


def test_kinetic_temperature_from_positions_is_the_central_difference_factor(prediction):
    """For one harmonic vibration, central differences of frames dt apart scale every
    velocity by sin(w dt) / (w dt): the temperature from the positions is the velocities'
    one times its square, at 1 fs and at 5 fs (every fifth frame), on the same frames."""
    from numbec.io.trajectory import open_trajectory
    from numbec.spectra.temperature import (
        kinetic_temperature_from_positions,
        kinetic_temperature_statistics,
    )

    traj = open_trajectory(prediction / "traj.zarr")
    w = NU0 * INVCM_TO_RAD_PER_FS
    for stride in (1, 5):
        frames = traj.isel(frame=slice(None, None, stride))
        dt = stride * DT
        derived = kinetic_temperature_from_positions(frames, dt, max_frames=10**6)
        exact = kinetic_temperature_statistics(frames.isel(frame=slice(1, -1)))
        factor = (np.sin(w * dt) / (w * dt)) ** 2
        assert derived.from_positions and not exact.from_positions
        assert derived.degrees_of_freedom == exact.degrees_of_freedom
        assert derived.mean == pytest.approx(exact.mean * factor, rel=1e-6)
        assert factor < 1 - 0.02 * (stride > 1)  # the coarse frames see a lower temperature
    with pytest.raises(ValueError, match="at least 3"):
        kinetic_temperature_from_positions(traj.isel(frame=slice(0, 2)), DT)


def _store_without_velocities(prediction, tmp_path, timestep):
    """The fixture's MD converted without its velocities (as from an XDATCAR), with the
    given time step between frames, and predicted with --velocities-from-positions."""
    from ase.io import read

    frames = read(prediction / "traj.xyz", ":")
    for atoms in frames:
        atoms.set_momenta(None)
    tmp_path.mkdir()
    xyz, traj, pred = tmp_path / "md.xyz", tmp_path / "md.zarr", tmp_path / "pred.zarr"
    write(xyz, frames)
    assert main(["convert", str(xyz), str(traj), "--timestep", str(timestep),
                 "--no-progress"]) == 0
    model = tmp_path / "model.npz"
    FixedBECModel([11, 17], np.array([np.eye(3) * 1.1, -np.eye(3) * 1.1])).save(model)
    assert main(["predict", str(model), str(traj), "-o", str(pred),
                 "--velocities-from-positions", "--no-progress"]) == 0
    return pred


def test_velocities_from_positions_check_the_time_step(prediction, tmp_path, capsys):
    """Without stored velocities (XDATCAR), a nominal temperature is checked against the
    central differences of the positions: quiet for the right time step, a warning naming
    the time step when it is given twice too short (the frequencies double with it), and no
    temperature at all is refused rather than taken from the differences."""
    import warnings

    right = _store_without_velocities(prediction, tmp_path / "right", DT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["ir", str(right), "-o", str(tmp_path / "right.csv"),
                     "--temperature", "300"]) == 0
    halved = _store_without_velocities(prediction, tmp_path / "halved", DT / 2)
    with pytest.warns(UserWarning, match=r"velocities from the positions give 1[12]\d\d\.\d .*"
                                         r"time step between stored frames is likely wrong"):
        assert main(["ir", str(halved), "-o", str(tmp_path / "halved.csv"),
                     "--temperature", "300"]) == 0
    capsys.readouterr()
    assert main(["ir", str(right), "-o", str(tmp_path / "none.csv")]) == 1
    assert "central differences of the positions" in capsys.readouterr().err


def test_derived_velocities_given_as_trajectory_do_not_set_the_temperature(prediction):
    """A trajectory whose velocities come from velocities_from_positions is a check of a
    nominal temperature, never the temperature itself (it underestimates it)."""
    from numbec.io.trajectory import open_trajectory, velocities_from_positions

    traj = open_trajectory(prediction / "traj.zarr")
    ds = open_prediction(prediction / "pred.zarr").assign_attrs(temperature=None)
    derived = traj.drop_vars("velocities").assign(velocities=velocities_from_positions(traj))
    with pytest.raises(ValueError, match="central differences of the positions"):
        numbec.ir_spectrum(ds, trajectory=derived)
    with pytest.warns(UserWarning, match="velocities from the positions give"):
        numbec.ir_spectrum(ds, trajectory=derived, temperature=3000.0)


def test_info_describes_netcdf_spectra_and_prediction_exports(prediction, capsys, tmp_path):
    """``numbec info FILE.nc``: a spectrum of ``numbec ir`` and a prediction exported with
    to_netcdf are named as what they are (not as trajectory files to convert), with their
    variables, units and provenance; a damaged file gets an error naming it."""
    spectrum = tmp_path / "s.nc"
    assert main(["ir", str(prediction / "pred.zarr"), "-o", str(spectrum), "--temperature",
                 "300"]) == 0
    capsys.readouterr()
    assert main(["info", str(spectrum)]) == 0
    printed = capsys.readouterr().out
    assert "IR spectrum" in printed and "absorption" in printed and "convert" not in printed
    assert main(["info", str(spectrum), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    written = xr.load_dataset(spectrum)
    assert info["kind"] == "spectrum"
    assert info["variables"]["absorption"]["dims"] == ["frequency"]
    assert info["variables"]["absorption"]["units"] == written.absorption.attrs["units"]
    assert info["dims"]["frequency"] == written.sizes["frequency"]
    assert info["attrs"]["temperature"] == pytest.approx(300.0)
    assert info["attrs"]["volume"] == pytest.approx(27.0)

    export = tmp_path / "pred.nc"
    source = open_prediction(prediction / "pred.zarr")
    source.to_netcdf(export)
    assert main(["info", str(export), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "prediction"
    assert info["attrs"]["model_sha256"] == source.attrs["model_sha256"]
    assert info["variables"]["bec"]["dims"] == list(source.bec.dims)
    assert info["variables"]["bec"]["shape"] == list(source.bec.shape)

    other = tmp_path / "other.data"      # any name: recognised by its first bytes
    xr.Dataset({"t": ("x", np.arange(3.0))}, attrs={"volume": np.nan}).to_netcdf(other)
    assert main(["info", str(other), "--json"]) == 0

    def strict(name):
        raise ValueError(f"{name} is not JSON")

    info = json.loads(capsys.readouterr().out, parse_constant=strict)
    assert info["kind"] == "netcdf" and info["attrs"]["volume"] is None
    assert main(["info", str(other), "--set-timestep", "1"]) == 1
    assert "netCDF file" in capsys.readouterr().err

    amber = tmp_path / "md.nc"          # an MD trajectory in AMBER's netCDF convention
    xr.Dataset({"coordinates": (("frame", "atom", "spatial"), np.zeros((3, 2, 3)))},
               attrs={"Conventions": "AMBER"}).to_netcdf(amber)
    assert main(["info", str(amber)]) == 0
    assert f"numbec convert {amber} STORE.zarr" in capsys.readouterr().out
    hdf5 = tmp_path / "md.h5"           # HDF5 under another name: left to the trajectory path
    hdf5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    assert main(["info", str(hdf5)]) == 1
    assert "numbec convert" in capsys.readouterr().err

    damaged = tmp_path / "damaged.nc"
    damaged.write_bytes(b"CDF\x01" + b"\x00" * 5)
    assert main(["info", str(damaged)]) == 1
    err = capsys.readouterr().err
    assert str(damaged) in err and "cannot read this netCDF file" in err
