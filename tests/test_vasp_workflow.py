"""The VASP workflow of docs/active_learning.md, command by command, with VASP replaced.

XDATCAR -> ``numbec convert`` -> ``numbec select --strategy stride --format vasp`` ->
(DFPT: an OUTCAR per folder, written from the bundled quartz subset's reference BECs of the
frame each POSCAR holds) -> ``numbec train`` -> ``numbec select`` with the model and
``--exclude`` -> label, retrain -> ``numbec predict --velocities-from-positions`` ->
``numbec ir``. What it proves: the atoms of the POSCARs and OUTCARs (grouped by species)
come back in the trajectory's order through ``frame.json``'s ``atom_order``, so the model
learns the reference BECs, not a shuffled copy; the uncertainty picks never repeat a labelled
frame or break the minimum separation; the predicted trajectory's spectrum is made and its
time step checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase.io import read, write
from outcar_factory import make_outcar, write_outcar

import numbec
from numbec.cli import main

SUBSET = Path(numbec.__file__).parent / "data" / "sio2_quartz_subset.xyz"
DT = 2.0  # fs between the XDATCAR's frames (POTIM x NBLOCK)
SMALL = ["--n-sparse", "30", "--n-radial", "4", "--n-angular", "4", "--l-max", "2",
         "--cutoff-radial", "5.0", "--cutoff-angular", "4.0", "--no-progress"]


def _template(folder: Path) -> Path:
    """INCAR, KPOINTS and a POTCAR in the POSCARs' species order (Si, then O)."""
    folder.mkdir()
    (folder / "INCAR").write_text("IBRION = 8\nLEPSILON = .TRUE.\n")
    (folder / "KPOINTS").write_text("auto\n0\nGamma\n2 2 2\n")
    (folder / "POTCAR").write_text(
        "  PAW_PBE Si 05Jan2001\n   TITEL  = PAW_PBE Si 05Jan2001\n End of Dataset\n"
        "  PAW_PBE O 08Apr2002\n   TITEL  = PAW_PBE O 08Apr2002\n End of Dataset\n")
    return folder


def _run_dfpt(round_folder: Path, reference) -> list[int]:
    """What VASP would do in every frame folder: an OUTCAR with the POSCAR's structure and
    the reference BECs of that trajectory frame, in the POSCAR's atom order."""
    frames = []
    for folder in sorted(round_folder.glob("frame_*")):
        meta = json.loads((folder / "frame.json").read_text())
        poscar = read(folder / "POSCAR", format="vasp")
        ref = reference[meta["frame"]]
        order = meta.get("atom_order", list(range(len(ref))))
        np.testing.assert_allclose(poscar.positions, ref.positions[order], atol=1e-6)
        species: list[list] = []
        for symbol in poscar.get_chemical_symbols():
            if not species or species[-1][0] != symbol:
                species.append([symbol, 0])
            species[-1][1] += 1
        outcar = make_outcar(seed=meta["frame"], species=[tuple(s) for s in species],
                             cell=poscar.cell[:], positions=poscar.positions,
                             bec=ref.arrays["bec"][order])
        write_outcar(folder / "OUTCAR", outcar.text)
        frames.append(meta["frame"])
    return frames


def test_vasp_workflow_from_xdatcar_to_spectrum(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reference = numbec.read_bec(SUBSET, index=":")
    write("XDATCAR", reference, format="vasp-xdatcar")  # an MD without velocities
    assert main(["convert", "XDATCAR", "md.zarr", "--timestep", str(DT), "--no-progress"]) == 0
    _template(tmp_path / "vasp-dfpt")

    # round 0: evenly spaced frames, no model
    assert main(["select", "-", "md.zarr", "-n", "5", "-o", "round0/", "--strategy", "stride",
                 "--format", "vasp", "--template", "vasp-dfpt/"]) == 0
    labelled = _run_dfpt(tmp_path / "round0", reference)
    assert labelled == [0, 5, 10, 14, 19]
    # the OUTCARs give back the trajectory's atoms: the training data are the reference
    for k, path in zip(labelled, sorted(tmp_path.glob("round0/frame_*/OUTCAR")), strict=True):
        order = json.loads((path.parent / "frame.json").read_text())["atom_order"]
        back = numbec.read_bec(path)
        back = back[0] if isinstance(back, list) else back
        np.testing.assert_allclose(back.arrays["bec"], reference[k].arrays["bec"][order],
                                   atol=6e-6)
        assert sorted(order) == list(range(len(reference[k])))
        assert order != sorted(order)  # the subset's atoms are not grouped by species
    assert main(["train", "round0/frame_*/OUTCAR", "--model", "combined", "-o", "model0.npz",
                 *SMALL]) == 0

    # round 1: where the model is least sure, apart from the labelled frames
    assert main(["select", "model0.npz", "md.zarr", "-n", "4", "-o", "round1/", "--format",
                 "vasp", "--template", "vasp-dfpt/", "--min-separation", str(2 * DT),
                 "--exclude", "round0/selection.json"]) == 0
    picked = _run_dfpt(tmp_path / "round1", reference)
    assert len(picked) == 4 and not set(picked) & set(labelled)
    times = np.array(labelled + picked) * DT
    gaps = np.abs(times[:, None] - times[None, :])[~np.eye(times.size, dtype=bool)]
    assert gaps.min() >= 2 * DT
    assert main(["train", "round0/frame_*/OUTCAR", "round1/frame_*/OUTCAR", "--model",
                 "combined", "-o", "model1.npz", *SMALL]) == 0

    # the retrained model predicts unlabelled frames better than the species means
    model = numbec.load_model("model1.npz")
    unseen = [k for k in range(len(reference)) if k not in labelled + picked]
    scores = numbec.evaluate(model, [reference[k] for k in unseen])
    assert scores["rmse"] < 0.2 * scores["baseline"]["rmse"]

    # step 4: predict along the MD and make the spectrum; these frames are snapshots of
    # an MD much further apart than 2 fs, which the time-step check says
    assert main(["predict", "model1.npz", "md.zarr", "-o", "pred.zarr",
                 "--velocities-from-positions", "--no-progress"]) == 0
    with pytest.warns(UserWarning, match="time step between stored frames is likely wrong"):
        assert main(["ir", "pred.zarr", "-o", "ir.csv", "--plot", "ir.png",
                     "--temperature", "300"]) == 0
    assert (tmp_path / "ir.csv").stat().st_size > 0 and (tmp_path / "ir.png").exists()
