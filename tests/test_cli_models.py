"""``numbec train`` and ``numbec evaluate`` through ``numbec.cli.main``."""

from __future__ import annotations

import json
import re

import ase.io
import numpy as np
import pytest
from ase import Atoms
from outcar_factory import make_outcar, write_outcar

import numbec
from numbec.cli import main
from numbec.conventions import asr_project
from numbec.io import example_file
from numbec.models import SpeciesMeanModel

QUARTZ = example_file("sio2_quartz_subset")
# a tiny basis: the test is about the command line, not accuracy
TINY = ["--n-radial", "3", "--n-angular", "3", "--l-max", "2", "--cutoff-radial", "4.0",
        "--cutoff-angular", "3.5", "--n-sparse", "12", "--zeta", "2"]


CLASSES = {"monopole": "MonopoleModel", "dipole": "DipoleModel", "combined": "CombinedModel"}


def _json(capsys):
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("kind", ["monopole", "dipole", "combined"])
def test_train_then_evaluate_json(kind, tmp_path, capsys):
    out = tmp_path / "m.npz"
    args = ["train", "example:sio2_quartz_subset", "--index", "0:10", "--model", kind,
            "-o", str(out), *TINY]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "10 frames, 720 atoms (O 480, Si 240)" in text
    assert "training-set RMSE" in text and out.exists()
    model = numbec.load_model(out)
    assert type(model).__name__ == CLASSES[kind]
    # bec_std is calibrated by default: 5-fold cross-validation over the training frames
    assert "calibrating bec_std by 5-fold cross-validation" in text
    assert "held-out blocks in frame order, 95 % coverage before scaling: " in text
    fit = model.training["variance_scale_fit"]
    assert fit["folds"] == 5 and fit["method"] == "two_part"
    assert fit["n_values"] == 720 * 9  # every training component held out once
    assert main(["evaluate", str(out), str(QUARTZ), "--index", "10:", "--json",
                 "--baseline-data", "example:sio2_quartz_subset"]) == 0
    res = _json(capsys)
    for key in ("rmse", "mae", "max_error", "r2", "n_frames", "n_atoms", "per_species",
                "per_component", "baseline", "baseline_note"):
        assert key in res
    assert res["n_frames"] == 10 and res["n_atoms"] == 720
    assert set(res["per_species"]) == {"Si", "O"}
    for entry in res["per_species"].values():
        assert {"rmse", "mae", "max_error", "r2", "n_atoms"} <= set(entry)
    # a learned model beats predicting every atom by its species' mean on unseen frames
    assert res["rmse"] < res["baseline"]["rmse"]
    # the JSON is what the Python API computes for the same model and frames
    frames = numbec.read_bec(QUARTZ, index="10:")
    assert res["rmse"] == pytest.approx(numbec.evaluate(model, frames, baseline=False)["rmse"])


def test_train_calibrates_unless_told_not_to_or_given_one_frame(tmp_path, capsys):
    """--calibrate-folds 0 keeps the raw Bayesian variance; one training frame leaves nothing
    to cross-validate, which the summary says; two frames get two folds."""
    cases = ((["--index", "0:3", "--calibrate-folds", "0"], None, None),
             (["--index", "0:1"], None, "bec_std not calibrated: one training frame"),
             (["--index", "0:2"], 2, "calibrating bec_std by 2-fold"))
    for extra, folds, said in cases:
        out = tmp_path / f"m{len(extra)}{extra[1]}.npz"
        assert main(["train", "example:sio2_quartz_subset", "--model", "monopole", "-o",
                     str(out), *extra, *TINY]) == 0
        text = capsys.readouterr().out
        fit = (numbec.load_model(out).training or {}).get("variance_scale_fit")
        assert (fit is None) if folds is None else (fit["folds"] == folds), extra
        if said is None:
            assert "bec_std" not in text, text
        else:
            assert said in text, text


def test_no_progress_reaches_the_calibration_fits(tmp_path, monkeypatch, capsys):
    """--no-progress turns off the progress bars of the fold models' fits too."""
    from numbec.models._kernel_model import KernelBECModel

    seen = []
    fit = KernelBECModel.fit
    monkeypatch.setattr(KernelBECModel, "fit",
                        lambda self, frames, progress=None: seen.append(progress)
                        or fit(self, frames, progress))
    assert main(["train", "example:sio2_quartz_subset", "--index", "0:3", "--model",
                 "monopole", "-o", str(tmp_path / "m.npz"), "--no-progress", "--no-train-error",
                 *TINY]) == 0
    assert seen == [False] * 4  # the model, then one fit per fold


def test_train_summary_names_held_out_blocks_that_disagree(capsys):
    """The raw coverage of each held-out block is printed; blocks more than 15 points apart
    (quartz at 300 K and 600 K: 79-99 %) get the hint that their average under-covers frames
    like the hardest one, unless the scale already is the hardest block's."""
    from numbec.cli.train import _print_block_spread

    for blocks, method, hint in (([0.99, 0.98, 0.79], "two_part", True),
                                 ([0.96, 0.89, 0.92], "two_part", False),
                                 ([0.99, 0.98, 0.79], "worst_block", False),
                                 ([0.93], "two_part", None)):
        _print_block_spread({"block_coverage_95_unscaled": blocks, "method": method})
        text = capsys.readouterr().out
        if hint is None:  # one block: nothing to compare
            assert text == ""
            continue
        assert " / ".join(f"{100 * b:.0f}" for b in blocks) + " %" in text
        assert ("hardest block (79 %)" in text) == hint, text


def test_evaluate_species_mean_against_numpy(tmp_path, capsys):
    frames = numbec.read_bec(QUARTZ)
    path = SpeciesMeanModel.fit(frames).save(tmp_path / "mean.npz")
    assert main(["evaluate", str(path), "example:sio2_quartz_subset", "--json"]) == 0
    res = _json(capsys)
    # independent computation: per-species mean tensors, ASR-projected per frame
    ref = np.stack([f.arrays["bec"] for f in frames])  # (F, N, 3, 3)
    numbers = frames[0].numbers
    means = {z: ref[:, numbers == z].mean(axis=(0, 1)) for z in (8, 14)}
    pred = asr_project(np.stack([means[z] for z in numbers]))
    err = ref - pred[None]
    assert res["rmse"] == pytest.approx(np.sqrt((err**2).mean()), rel=1e-10)
    assert res["per_species"]["Si"]["mae"] == pytest.approx(
        np.abs(err[:, numbers == 14]).mean(), rel=1e-10)
    assert "evaluated frames themselves" in res["baseline_note"]
    assert main(["evaluate", str(path), "example:sio2_quartz_subset", "--index", "0:3"]) == 0
    table = capsys.readouterr().out
    assert "on 3 frames, 216 atoms" in table
    assert [line.split()[0] for line in table.splitlines()[2:7]] == [
        "all", "O", "Si", "diagonal", "off-diagonal"]


def test_bad_input_gives_exit_code_and_message(tmp_path, capsys):
    model = SpeciesMeanModel([14], [np.eye(3)]).save(tmp_path / "si.npz")
    # species unknown to the model, named with the frame
    assert main(["evaluate", str(model), "example:sio2_quartz_subset"]) == 1
    err = capsys.readouterr().err
    assert "frame 0" in err and "O (Z=8) not seen in training" in err
    # a missing data file
    assert main(["evaluate", str(model), str(tmp_path / "nope.xyz")]) == 1
    assert "nope.xyz" in capsys.readouterr().err
    # a damaged model file
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    assert main(["evaluate", str(bad), "example:sio2_quartz_subset"]) == 1
    assert "bad.npz: not a numbec model file" in capsys.readouterr().err
    # a frame slice that selects nothing
    assert main(["evaluate", str(model), "example:sio2_quartz_subset", "--index", "50:"]) == 1
    assert "no frames with BECs" in capsys.readouterr().err
    # a structure file without BECs
    plain = tmp_path / "plain.xyz"
    first = ase.io.read(QUARTZ, 0)
    ase.io.write(plain, Atoms(first.numbers, first.positions, cell=first.cell, pbc=True))
    out = tmp_path / "m.npz"
    assert main(["train", str(plain), "-o", str(out)]) == 1
    assert "plain.xyz" in capsys.readouterr().err and not out.exists()
    # a per-species sparse count that leaves out a species of the data
    assert main(["train", "example:sio2_quartz_subset", "-o", str(out), "--n-sparse",
                 "Si:5"]) == 1
    assert "--n-sparse gives no count for O" in capsys.readouterr().err
    # unreadable hyperparameters are refused by the parser (exit code 2)
    with pytest.raises(SystemExit) as exc:
        main(["train", "example:sio2_quartz_subset", "-o", str(out), "--n-sparse", "Xx:3"])
    assert exc.value.code == 2
    assert "cannot read 'Xx:3'" in capsys.readouterr().err


def test_train_with_calibration_folds_stores_the_scale_evaluate_reports_it(tmp_path, capsys):
    from numbec.models.uncertainty import fit_variance_scale

    out = tmp_path / "m.npz"
    assert main(["train", "example:sio2_quartz_subset", "--index", "0:6", "--model",
                 "monopole", "-o", str(out), "--calibrate-folds", "3", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "variance scale" in printed
    # the time of the fit and that of the calibration are both reported, apart
    assert re.search(r"fitted in \d+\.\d s .*, calibrated in \d+\.\d s; saved", printed), printed
    model = numbec.load_model(out)
    frames = numbec.read_bec(QUARTZ, index="0:6")
    # the stored scale is the cross-validated one, learned from the training frames only
    fresh = type(model)(settings=model.settings, **model.hyperparameters())
    assert model.variance_scale == pytest.approx(
        fit_variance_scale(fresh.fit(frames), frames, folds=3)["scale"], rel=1e-10)
    assert main(["evaluate", str(out), str(QUARTZ), "--index", "6:9", "--json"]) == 0
    cal = _json(capsys)["calibration"]
    assert {"coverage_68", "coverage_95", "nll", "frame_rank_correlation"} <= set(cal)
    assert 0.0 <= cal["coverage_68"] <= cal["coverage_95"] <= 1.0
    for key in ("coverage_68", "coverage_95"):
        low, high = cal[key + "_interval"]
        assert 0.0 <= low <= cal[key] <= high <= 1.0
    assert main(["evaluate", str(out), str(QUARTZ), "--index", "6:9"]) == 0
    table = capsys.readouterr().out
    low, high = cal["coverage_95_interval"]
    assert f"[{100 * low:.1f}-{100 * high:.1f}]" in table, table
    # the block length of the resampling is printed, as it was used (three frames: one)
    assert cal["coverage_68_block"] == cal["coverage_95_block"] == 1
    assert "resampled in blocks of 1 consecutive frames" in table, table


def test_train_calibration_method_two_part_stores_both_scales(tmp_path, capsys):
    """``--calibration-method two_part`` stores the epistemic and the noise scale learned by
    cross-validation; the choices are exactly the library's methods."""
    from numbec.cli.train import CALIBRATION_METHODS
    from numbec.models.uncertainty import SCALE_METHODS, fit_variance_scale

    assert tuple(CALIBRATION_METHODS) == tuple(SCALE_METHODS)
    out = tmp_path / "m.npz"
    assert main(["train", "example:sio2_quartz_subset", "--index", "0:6", "--model",
                 "monopole", "-o", str(out), "--calibrate-folds", "3", "--calibration-method",
                 "two_part", "--no-train-error", *TINY]) == 0
    assert "noise scale" in capsys.readouterr().out
    model = numbec.load_model(out)
    frames = numbec.read_bec(QUARTZ, index="0:6")
    fresh = type(model)(settings=model.settings, **model.hyperparameters())
    info = fit_variance_scale(fresh.fit(frames), frames, folds=3, method="two_part")
    assert model.variance_scale == pytest.approx(info["scale"], rel=1e-10)
    assert model.noise_scale == pytest.approx(info["noise_scale"], rel=1e-10)
    assert model.training["variance_scale_fit"]["method"] == "two_part"
    with pytest.raises(SystemExit):
        main(["train", "example:sio2_quartz_subset", "-o", str(out), "--calibrate-folds", "3",
              "--calibration-method", "median"])


def test_train_calibration_method_residual_stores_the_residual_term(tmp_path, capsys):
    """``--calibration-method residual`` stores the scale and the factor c of the frame
    residual learned by cross-validation, and the saved model predicts with them."""
    from numbec.models.uncertainty import fit_variance_scale

    out = tmp_path / "m.npz"
    assert main(["train", "example:sio2_quartz_subset", "--index", "0:6", "--model",
                 "monopole", "-o", str(out), "--calibrate-folds", "3", "--calibration-method",
                 "residual", "--no-train-error", *TINY]) == 0
    model = numbec.load_model(out)
    frames = numbec.read_bec(QUARTZ, index="0:6")
    fresh = type(model)(settings=model.settings, **model.hyperparameters())
    info = fit_variance_scale(fresh.fit(frames), frames, folds=3, method="residual")
    assert model.training["variance_scale_fit"]["method"] == "residual"
    assert model.variance_scale == pytest.approx(info["scale"], rel=1e-8)
    assert model.residual_scale == pytest.approx(info["residual_scale"], rel=1e-6, abs=1e-12)


def test_default_model_is_combined_and_evaluate_baseline_is_the_training_mean(tmp_path, capsys):
    """``numbec train`` without --model fits the recommended CombinedModel; ``numbec evaluate``
    compares with the species means of the *training* frames stored in the model file, not a
    baseline fitted on the test frames."""
    out = tmp_path / "m.npz"
    assert main(["train", "example:sio2_quartz_subset", "--index", "0:6", "-o", str(out),
                 "--no-progress", "--no-train-error", *TINY]) == 0
    capsys.readouterr()
    model = numbec.load_model(out)
    assert type(model).__name__ == "CombinedModel"
    assert main(["evaluate", str(out), str(QUARTZ), "--index", "10:14", "--json",
                 "--no-progress"]) == 0
    res = _json(capsys)
    assert "training data" in res["baseline_note"]
    train = numbec.read_bec(QUARTZ, index="0:6")
    test = numbec.read_bec(QUARTZ, index="10:14")
    expected = numbec.evaluate(SpeciesMeanModel.fit(train), test, baseline=False)["rmse"]
    assert res["baseline"]["rmse"] == pytest.approx(expected, rel=1e-12)
    optimistic = numbec.evaluate(SpeciesMeanModel.fit(test), test, baseline=False)["rmse"]
    assert res["baseline"]["rmse"] != pytest.approx(optimistic, rel=1e-6)


def test_train_and_evaluate_on_vasp_outcars(tmp_path, capsys):
    """OUTCARs through the command line (a glob of .xz files, a .gz), on synthetic OUTCARs:
    the numbers the commands report come from the BECs that were written."""
    written = [make_outcar(seed=k) for k in range(4)]
    for k, synthetic in enumerate(written[:3], start=1):
        write_outcar(tmp_path / f"OUTCAR.{k}.xz", synthetic.text)
    (tmp_path / "test").mkdir()
    test = write_outcar(tmp_path / "test" / "OUTCAR.gz", written[3].text)
    model = tmp_path / "m.npz"
    assert main(["train", str(tmp_path / "OUTCAR.*.xz"), "--model", "monopole",
                 "-o", str(model), *TINY, "--n-sparse", "4"]) == 0
    assert "3 frames, 36 atoms (O 24, Zr 12)" in capsys.readouterr().out
    assert main(["evaluate", str(model), str(test), "--json"]) == 0
    res = _json(capsys)
    assert res["n_frames"] == 1 and res["n_atoms"] == 12
    # the species-mean baseline of the training BECs against the test BECs, by hand
    numbers = np.array([8 if s == "O" else 40 for s in written[0].symbols])
    train = np.stack([w.bec for w in written[:3]])
    means = {z: train[:, numbers == z].mean(axis=(0, 1)) for z in (8, 40)}
    pred = asr_project(np.stack([means[z] for z in numbers]))
    expected = np.sqrt(((written[3].bec - pred) ** 2).mean())
    assert res["baseline"]["rmse"] == pytest.approx(expected, rel=1e-10)
    # a truncated BEC block: one line naming the file
    text = written[3].text
    write_outcar(test, text[: text.index(" ion    7")])
    assert main(["evaluate", str(model), str(test)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(test) in err
    assert "6 ions but the structure has 12" in err


def test_evaluate_charge_applies_to_frames_without_their_own(tmp_path, capsys):
    """--charge Q reaches the model for every frame lacking info['charge']: the species-mean
    prediction is then projected onto sum_a Z_a = Q I (independent numpy computation)."""
    frames = numbec.read_bec(QUARTZ, index="0:3")
    path = SpeciesMeanModel.fit(frames).save(tmp_path / "mean.npz")
    assert main(["evaluate", str(path), "example:sio2_quartz_subset", "--index", "0:3",
                 "--json", "--no-baseline", "--charge", "2"]) == 0
    res = _json(capsys)
    ref = np.stack([f.arrays["bec"] for f in frames])
    numbers = frames[0].numbers
    means = {z: ref[:, numbers == z].mean(axis=(0, 1)) for z in (8, 14)}
    pred = asr_project(np.stack([means[z] for z in numbers]), 2.0)
    np.testing.assert_allclose(pred.sum(axis=0), 2.0 * np.eye(3), atol=1e-12)
    assert res["rmse"] == pytest.approx(np.sqrt(((ref - pred[None]) ** 2).mean()), rel=1e-10)


def test_info_describes_a_model_file_and_links_it_to_its_predictions(tmp_path, capsys):
    """numbec info MODEL.npz: class, species, training set and calibration as the file holds
    them, and the state hash that every prediction store made with the model records as
    model_sha256, with or without the uncertainty wrappers of the stream."""
    model_path = tmp_path / "m.npz"
    assert main(["train", str(QUARTZ), "--index", "0:6", "--model", "combined", "-o",
                 str(model_path), "--calibrate-folds", "3", *TINY]) == 0
    store = tmp_path / "q.zarr"
    assert main(["convert", str(QUARTZ), str(store), "--timestep", "1", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["info", str(model_path)]) == 0
    printed = capsys.readouterr().out
    assert "model        CombinedModel" in printed
    assert "species      O, Si" in printed
    assert "training     6 frames, 432 atoms" in printed
    assert "learned by 3-fold cross-validation on the training frames" in " ".join(
        printed.split())
    assert main(["info", str(model_path), "--json"]) == 0
    info = _json(capsys)
    model = numbec.load_model(model_path)
    assert info["calibration"]["variance_scale"] == model.variance_scale
    assert info["calibration"]["noise_scale"] == model.noise_scale
    blocks = model.training["variance_scale_fit"]["block_coverage_95_unscaled"]
    assert info["calibration"]["held_out_block_coverage_95"] == blocks and len(blocks) == 3
    assert ("per block in frame order: " + " / ".join(f"{100 * b:.0f}" for b in blocks)
            in " ".join(printed.split()))
    assert info["sparse_points"] == {
        "O": int(np.sum(model.sparse_species == 8)), "Si": int(np.sum(model.sparse_species == 14))}
    assert info["descriptors"]["l_max"] == 2 and info["environment_reference"]
    for extra in ([], ["--posterior-samples", "2"], ["--uncertainty", "--uncertainty-rank", "2"]):
        out = tmp_path / f"p{len(extra)}.zarr"
        assert main(["predict", str(model_path), str(store), "-o", str(out), "--no-progress",
                     "--velocities-from-positions", *extra]) == 0
        capsys.readouterr()
        assert main(["info", str(out), "--json"]) == 0
        assert _json(capsys)["model_sha256"] == info["state_sha256"], extra
    # the training summary is read like input: a non-number is named, not formatted
    model.training = dict(model.training, train_rmse="small")
    bad = model.save(tmp_path / "bad.npz")
    assert main(["info", str(bad)]) == 1
    assert "training entry 'train_rmse' = 'small' is not a number" in capsys.readouterr().err
    fit = dict(model.training["variance_scale_fit"], block_coverage_95_unscaled=[0.9, "x"])
    model.training = dict(model.training, train_rmse=0.1, variance_scale_fit=fit)
    assert main(["info", str(model.save(tmp_path / "bad2.npz"))]) == 1
    assert ("training entry 'variance_scale_fit.block_coverage_95_unscaled[1]' = 'x' is not a "
            "number") in capsys.readouterr().err
    # a damaged file is refused naming it, as load_model does
    data = bytearray(model_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_path.write_bytes(bytes(data))
    assert main(["info", str(model_path)]) == 1
    assert str(model_path) in capsys.readouterr().err
    model_path.write_bytes(model_path.read_bytes()[:100])  # a truncated copy
    assert main(["info", str(model_path)]) == 1
    assert "not a numbec model file (not an .npz archive" in capsys.readouterr().err
