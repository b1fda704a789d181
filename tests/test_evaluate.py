"""numbec.evaluate: metrics against analytic values, per species/component splits, baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms

import numbec
from numbec.models import SpeciesMeanModel, UnknownSpeciesError, evaluate
from numbec.models.base import BECModel


class OffsetModel(BECModel):
    """Returns the frame's own reference BECs plus ``offset(atoms)`` (N, 3, 3)."""

    def __init__(self, offset, species=(8, 14)):
        self.offset = offset
        self.species = tuple(species)

    def predict(self, atoms, uncertainty=False):
        self.check_inputs(atoms.positions, atoms.numbers)
        return {"bec": atoms.arrays["bec"] + self.offset(atoms)}

    def predict_arrays(self, positions, numbers, cell, pbc, uncertainty=False):
        raise NotImplementedError

    def _state(self):
        return {}, {}

    @classmethod
    def _from_state(cls, metadata, arrays):
        return cls(lambda a: 0.0)


def _frames(n=3, seed=0, asr_violation=0.0):
    """SiO2-like frames: 2 Si + 4 O, random BECs; ``bec.sum(0)`` = asr_violation * ones."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = Atoms("Si2O4", positions=rng.uniform(0, 5, (6, 3)), cell=[5, 5, 5], pbc=True)
        bec = rng.normal(size=(6, 3, 3))
        bec[:2] += 3.0 * np.eye(3)
        bec[2:] -= 1.5 * np.eye(3)
        bec -= bec.mean(axis=0)  # exact ASR
        bec += asr_violation / 6
        atoms.arrays["bec"] = bec
        atoms.info["source"] = f"made-up.xyz@{k}"
        frames.append(atoms)
    return frames


def _all_ref(frames):
    return np.concatenate([f.arrays["bec"] for f in frames])


def test_constant_offset_gives_known_rmse_mae_r2():
    frames = _frames()
    c = 0.07
    res = evaluate(OffsetModel(lambda a: np.full((len(a), 3, 3), c)), frames, baseline=False)
    assert res["rmse"] == pytest.approx(c, rel=1e-12)
    assert res["mae"] == pytest.approx(c, rel=1e-12)
    assert res["max_error"] == pytest.approx(c, rel=1e-12)
    ref = _all_ref(frames)
    assert res["r2"] == pytest.approx(1.0 - c**2 / ref.var(), rel=1e-12)
    assert res["n_frames"] == 3 and res["n_atoms"] == 18 and res["n_values"] == 162
    for entry in [*res["per_species"].values(), *res["per_component"].values(),
                  *res["per_cartesian"].values()]:
        assert entry["rmse"] == pytest.approx(c, rel=1e-12)
    assert "baseline" not in res
    json.dumps(res)  # serialisable


def test_two_error_levels_separate_rmse_from_mae():
    # half the atoms off by 0.1, half by -0.3: rmse = sqrt(0.05), mae = 0.2, max = 0.3
    def offset(atoms):
        out = np.empty((len(atoms), 3, 3))
        out[:3], out[3:] = 0.1, -0.3
        return out

    res = evaluate(OffsetModel(offset), _frames(), baseline=False)
    assert res["rmse"] == pytest.approx(np.sqrt(0.05), rel=1e-12)
    assert res["mae"] == pytest.approx(0.2, rel=1e-12)
    assert res["max_error"] == pytest.approx(0.3, rel=1e-12)


def test_per_species_split():
    c = 0.2  # error on Si only (2 of 6 atoms)
    res = evaluate(OffsetModel(lambda a: c * (a.numbers == 14)[:, None, None] * np.ones((3, 3))),
                   _frames(), baseline=False)
    assert set(res["per_species"]) == {"Si", "O"}
    assert res["per_species"]["Si"]["rmse"] == pytest.approx(c, rel=1e-12)
    assert res["per_species"]["O"]["rmse"] == 0.0
    assert res["per_species"]["Si"]["n_atoms"] == 6 and res["per_species"]["O"]["n_atoms"] == 12
    assert res["rmse"] == pytest.approx(c * np.sqrt(2 / 6), rel=1e-12)


def test_diagonal_and_cartesian_split_follow_pol_disp_rows():
    # error only in Z[a, 0, 1] = dP_x/dr_y  ->  "xy", off-diagonal
    def offset(atoms):
        out = np.zeros((len(atoms), 3, 3))
        out[:, 0, 1] = 0.3
        return out

    res = evaluate(OffsetModel(offset), _frames(), baseline=False)
    assert res["per_component"]["diagonal"]["rmse"] == 0.0
    assert res["per_component"]["off_diagonal"]["rmse"] == pytest.approx(0.3 / np.sqrt(6))
    assert res["per_cartesian"]["xy"]["rmse"] == pytest.approx(0.3)
    assert res["per_cartesian"]["yx"]["rmse"] == 0.0
    assert res["rmse"] == pytest.approx(0.3 / 3)


def test_reference_is_compared_raw_not_asr_projected():
    frames = _frames(asr_violation=0.6)
    res = evaluate(OffsetModel(lambda a: 0.0), frames, baseline=False)
    assert res["rmse"] == 0.0 and res["reference"] == "raw"
    assert res["reference_asr_max"] == pytest.approx(0.6, rel=1e-9)


def _species_mean_frames(eps):
    """Frames whose species means are +-I and whose deviation from them is +-eps everywhere."""
    frames = []
    for sign in (1.0, -1.0):
        atoms = Atoms("NaCl", positions=[[0, 0, 0], [2, 0, 0]], cell=[4, 4, 4], pbc=True)
        dev = sign * eps * np.ones((3, 3))
        atoms.arrays["bec"] = np.stack([np.eye(3) + dev, -np.eye(3) - dev])
        frames.append(atoms)
    return frames


def test_species_mean_baseline_has_known_error():
    eps = 0.25
    frames = _species_mean_frames(eps)
    perfect = OffsetModel(lambda a: 0.0, species=(11, 17))
    res = evaluate(perfect, frames)
    assert res["rmse"] == 0.0
    assert res["baseline"]["rmse"] == pytest.approx(eps, rel=1e-12)
    assert res["baseline"]["per_species"]["Na"]["mae"] == pytest.approx(eps, rel=1e-12)
    assert "evaluated frames" in res["baseline_note"]
    # fitted on other (training) frames: means 2I and -2I -> error 1 +- eps on the diagonal
    train = _species_mean_frames(0.0)
    for atoms in train:
        atoms.arrays["bec"] *= 2.0
    res = evaluate(perfect, frames, baseline_frames=train)
    diag = res["baseline"]["per_component"]["diagonal"]
    assert diag["rmse"] == pytest.approx(np.sqrt(((1 + eps) ** 2 + (1 - eps) ** 2) / 2))
    assert res["baseline"]["per_component"]["off_diagonal"]["rmse"] == pytest.approx(eps)
    assert "2 given baseline frames" in res["baseline_note"]


def test_model_carrying_its_own_baseline_and_explicit_baseline_model():
    frames = _species_mean_frames(0.1)
    model = OffsetModel(lambda a: 0.0, species=(11, 17))
    model.baseline_model = SpeciesMeanModel([11, 17], [np.eye(3) * 0.5, -np.eye(3) * 0.5])
    res = evaluate(model, frames)
    assert "own baseline" in res["baseline_note"]
    expected = np.sqrt((0.6**2 + 0.4**2) / 2 * 3 / 9 + 0.1**2 * 6 / 9)
    assert res["baseline"]["rmse"] == pytest.approx(expected, rel=1e-12)
    res = evaluate(model, frames, baseline=SpeciesMeanModel.fit(frames))
    assert res["baseline"]["rmse"] == pytest.approx(0.1, rel=1e-12)


def test_exported_from_package():
    assert numbec.evaluate is evaluate


def test_frame_without_bec_is_named():
    frames = _frames()
    del frames[1].arrays["bec"]
    with pytest.raises(ValueError, match=r"frame 1 \(made-up.xyz@1\): no reference BECs"):
        evaluate(OffsetModel(lambda a: 0.0), frames)


def test_bec_count_mismatch_is_named():
    frames = _frames()
    frames[2].arrays["bec"] = frames[2].arrays["bec"][:5]
    with pytest.raises(ValueError, match=r"frame 2 \(made-up.xyz@2\): 5 reference BEC .* 6 atoms"):
        evaluate(OffsetModel(lambda a: 0.0), frames)


def test_unknown_species_and_bad_predictions_are_named():
    frames = _frames()
    with pytest.raises(UnknownSpeciesError, match=r"frame 0 .*Si \(Z=14\) not seen"):
        evaluate(OffsetModel(lambda a: 0.0, species=(8,)), frames)
    nan = OffsetModel(lambda a: np.where(np.arange(len(a))[:, None, None] == 4, np.nan, 0.0))
    with pytest.raises(ValueError, match="frame 0 .*NaN/inf BEC for atom 4"):
        evaluate(nan, frames)
    with pytest.raises(ValueError, match="no frames"):
        evaluate(nan, [])


class NoisyModel(OffsetModel):
    """Reference plus Gaussian errors of a known, per-frame std; reports that std."""

    outputs = ("bec", "bec_std")

    def __init__(self, stds, claimed, seed=0):
        super().__init__(lambda a: 0.0)
        self.stds, self.claimed = list(stds), list(claimed)
        self.rng = np.random.default_rng(seed)

    def predict(self, atoms, uncertainty=False):
        k = int(atoms.info["source"].split("@")[1])
        shape = (len(atoms), 3, 3)
        out = {"bec": atoms.arrays["bec"] + self.rng.normal(0.0, self.stds[k], shape)}
        if uncertainty:
            out["bec_std"] = np.full(shape, self.claimed[k])
        return out


def test_calibration_of_a_calibrated_and_an_overconfident_model():
    frames = _frames(n=60, seed=3)
    stds = np.linspace(0.05, 1.0, 60)
    good = evaluate(NoisyModel(stds, stds), frames, baseline=False)["calibration"]
    assert good["coverage_95"] == pytest.approx(0.95, abs=0.02)
    assert good["coverage_68"] == pytest.approx(0.683, abs=0.03)
    assert good["frame_rank_correlation"] > 0.9
    bad = evaluate(NoisyModel(stds, stds / 3), frames, baseline=False)["calibration"]
    assert bad["coverage_95"] < 0.65 and bad["nll"] > good["nll"] + 1.0
    assert "calibration" not in evaluate(OffsetModel(lambda a: 0.0), frames, baseline=False)


def test_kernel_models_report_how_far_the_frames_lie_from_the_training_ones(tmp_path, capsys):
    """evaluate's ``environments``: frames like the training frames put few atoms beyond the
    training 99th percentile of the Nystrom residual, frames rattled by 0.15 Å most of
    theirs, and the table says those are extrapolations. Models without the reference
    (SpeciesMeanModel) report nothing."""
    from pathlib import Path

    from numbec.cli import main
    from numbec.models import MonopoleModel

    subset = numbec.read_bec(Path(numbec.__file__).parent / "data" / "sio2_quartz_subset.xyz",
                             index=":")
    model = MonopoleModel(n_sparse=40).fit(subset[:8])
    alike = evaluate(model, subset[8:14], baseline=False)["environments"]
    assert alike["extrapolated"] == [] and alike["O"]["beyond"] < 0.1
    rng = np.random.default_rng(3)
    rattled = [a.copy() for a in subset[8:10]]
    for a in rattled:
        a.positions += rng.normal(scale=0.15, size=a.positions.shape)
    far = evaluate(model, rattled, baseline=False)["environments"]
    assert set(far["extrapolated"]) == {"O", "Si"} and far["O"]["beyond"] > 0.5
    assert "environments" not in evaluate(SpeciesMeanModel.fit(subset[:8]), rattled,
                                          baseline=False)
    model.save(tmp_path / "m.npz")
    numbec.write_bec(tmp_path / "rattled.xyz", rattled)
    assert main(["evaluate", str(tmp_path / "m.npz"), str(tmp_path / "rattled.xyz"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "atoms beyond the training environments" in out
    assert "these frames are extrapolations for O, Si" in out or \
        "these frames are extrapolations for Si, O" in out
