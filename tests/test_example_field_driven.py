"""Smoke test of examples/field_driven_water.py in its reduced (--quick) form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "field_driven_water.py"


@pytest.mark.slow
def test_field_driven_water_example(tmp_path):
    pytest.importorskip("tblite")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--quick", "--out", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = {r["wavenumber"]: r for r in json.loads(
        (tmp_path / "field_driven_water.json").read_text())["runs"]}
    for run in runs.values():
        # the field force is Z^T E: the energy gained is the work of the field
        assert run["absorbed"] == pytest.approx(run["work"], rel=0.02, abs=2e-5)
    # driving the H-O-H bend (xTB: ~1600 cm^-1) absorbs far more than off resonance
    assert runs[1600.0]["absorbed"] > 10 * abs(runs[1000.0]["absorbed"])
