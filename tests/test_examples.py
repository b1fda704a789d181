"""Smoke tests of examples/*.py in their reduced (--quick) form, so the examples never rot.

Each example runs as a script in a subprocess (as a user runs it); its JSON summary is
checked for physics that can fail, not only for having run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name, *args, cwd, timeout=600):
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.slow
def test_quartz_example(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "q"
    log = run_example("quartz.py", "--quick", "--out", out, cwd=tmp_path)
    assert "test BEC RMSE" in log
    summary = json.loads((out / "quartz.json").read_text())
    assert (out / "parity.png").stat().st_size > 0
    assert (out / "quartz-combined.npz").exists()
    # held-out frames: even the reduced model beats the species-mean baseline (0.4 e)
    assert summary["rmse"] < 0.8 * summary["baseline_rmse"]
    part = summary["partition"]
    # plumbing check: Z = Z_monopole + Z_dipole by construction, atom by atom and on average
    for row in part.values():
        assert row["total"] == pytest.approx(row["monopole"] + row["dipole"], abs=1e-9)
    # plumbing check: the charges are neutralised by construction, q_Si + 2 q_O = 0 on average
    assert part["Si"]["charge"] + 2 * part["O"]["charge"] == pytest.approx(0.0, abs=1e-8)
    # quartz: Si carries a positive, O a negative isotropic charge of the right size
    assert 2.5 < part["Si"]["total"] < 4.5 and -2.2 < part["O"]["total"] < -1.2


def _synthetic_xdatcar(outcar, path, n_frames=200, timestep=2.0, wavenumber=600.0):
    """An XDATCAR in which every atom of the OUTCAR's structure oscillates at one frequency
    (random phases and directions, 0.03 Å amplitude). Returns the OUTCAR's structure (with
    its reference BECs) and the exact velocities (n_frames, N, 3), Å/fs."""
    import ase.io

    from numbec import read_bec
    from numbec.conventions import INVCM_TO_RAD_PER_FS

    atoms = read_bec(outcar)[0]
    rng = np.random.default_rng(0)
    amplitude = 0.03 * rng.normal(size=(len(atoms), 3))
    phase = rng.uniform(0, 2 * np.pi, size=(len(atoms), 1))
    omega = wavenumber * INVCM_TO_RAD_PER_FS
    frames, velocities = [], []
    for k in range(n_frames):
        frame = atoms.copy()
        frame.positions = atoms.positions + amplitude * np.sin(omega * k * timestep + phase)
        frames.append(frame)
        velocities.append(amplitude * omega * np.cos(omega * k * timestep + phase))
    ase.io.write(path, frames, format="vasp-xdatcar")
    return atoms, np.asarray(velocities)


#: Bound on the relative RMSE of the predicted dM/dt of the synthetic ZrO2 trajectory
#: (held-out structure, quick model trained on three OUTCARs): 0.034 measured 2026-12-03 at
#: commit f60c43e, twice that as margin. BECs of zero give 1, of the wrong sign 2.
DIPOLE_DERIVATIVE_ERROR = 0.07


@pytest.mark.slow
def test_vasp_workflow_example(tmp_path, shared_data):
    outcars = sorted((shared_data / "zro2_vasp_dfpt").glob("OUTCAR.[1-4].xz"))
    assert len(outcars) == 4
    xdatcar = tmp_path / "XDATCAR"
    reference, velocities = _synthetic_xdatcar(outcars[0], xdatcar)
    out = tmp_path / "v"
    # a glob over the shared files (read in place, never copied)
    pattern = str(shared_data / "zro2_vasp_dfpt" / "OUTCAR.[1-4].xz")
    log = run_example("vasp_workflow.py", "--quick", "--outcars", pattern,
                      "--test-every", "4", "--trajectory", xdatcar, "--timestep", "2",
                      "--temperature", "300", "--out", out, cwd=tmp_path)
    assert "strongest IR absorption" in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_structures"] == 4 and summary["n_frames"] == 200
    # the trajectory oscillates about OUTCAR 1, which the example holds out of training: the
    # predicted dM/dt against sum_a Z_ref,a v_a with its DFPT BECs and the exact velocities
    # (the BECs change little over 0.03 Å; the first and last frames use one-sided
    # differences for the velocities, so they are left out)
    import xarray as xr

    predicted = xr.open_zarr(out / "pred.zarr")["dipole_derivative"].values[1:-1]
    exact = np.einsum("aij,taj->ti", reference.arrays["bec"], velocities)[1:-1]
    error = np.sqrt(np.mean((predicted - exact) ** 2) / np.mean(exact ** 2))
    assert error < DIPOLE_DERIVATIVE_ERROR, error
    # ZrO2: Zr carries a positive, O a negative charge
    charges = np.asarray(summary["mean_charges"])
    assert charges.max() > 0 > charges.min()
    assert (out / "ir.csv").exists() and (out / "pred.zarr").is_dir()


@pytest.mark.slow
def test_dask_cluster_example(tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "d"
    log = run_example("dask_cluster.py", "--quick", "--workers", "2", "--out", out,
                      cwd=tmp_path)
    # the script itself fails when the distributed and serial predictions differ
    assert "largest difference distributed vs serial" in log
    assert (out / "pred.zarr").is_dir()


def test_ir_phonopy_md_example(tmp_path):
    """examples/ir_phonopy_md.py --quick on the shipped phonopy examples (NaCl, SnO2): every
    IR-active TO group appears in the MD spectrum where velocity Verlet oscillates, and its
    band carries the harmonic intensity (independent route: phonopy modes and BORN)."""
    log = run_example("ir_phonopy_md.py", "--quick", cwd=tmp_path)
    rows = [line.split() for line in log.splitlines()
            if line.split() and line.split()[0] in ("NaCl", "SnO2")]
    assert {r[0] for r in rows} == {"NaCl", "SnO2"} and len(rows) >= 5
    for name, _, phonopy, verlet, peak, harmonic, md, ratio in rows:
        assert abs(float(peak) - float(verlet)) < 0.5, name  # cm^-1
        assert abs(float(verlet) - float(phonopy)) < 1.0, name
        assert abs(float(md) / float(harmonic) - 1.0) < 0.03, name
        assert float(ratio) == pytest.approx(float(md) / float(harmonic), abs=2e-4)
