"""predict's check of a trajectory's environments against the model's training environments
(numbec.models.representation: reference_residuals, environment_check)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import numbec
from numbec.models import MonopoleModel
from numbec.models.kernels import int_power
from numbec.models.representation import (
    BEYOND_FRACTION,
    NystromResidual,
    environment_check,
    reference_residuals,
)
from numbec.stream import predict

SUBSET = Path(numbec.__file__).parent / "data" / "sio2_quartz_subset.xyz"


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.fixture(scope="module")
def subset():
    return numbec.read_bec(SUBSET, index=":")


@pytest.fixture(scope="module")
def model(subset):
    return MonopoleModel(n_sparse=40).fit(subset[:8])


def _frames(atoms_list):
    return [(a.positions, a.numbers, np.asarray(a.cell), a.pbc) for a in atoms_list]


def _trajectory(atoms_list):
    import xarray as xr

    n = len(atoms_list)
    return xr.Dataset(
        {"positions": (("frame", "atom", "xyz"), np.stack([a.positions for a in atoms_list])),
         "cell": (("frame", "cell_vector", "xyz"), np.stack([np.asarray(a.cell)
                                                             for a in atoms_list])),
         "numbers": ("atom", atoms_list[0].numbers), "pbc": ("xyz", atoms_list[0].pbc)},
        coords={"time": ("frame", np.arange(n) * 1.0)}, attrs={"timestep": 1.0})


def test_leave_one_out_residual_of_a_sparse_point_is_its_residual_against_the_others(rng):
    """1 / (K^+)_jj is the Nystrom residual of sparse point j against the other sparse
    points, computed directly; the other environments get their residual against all."""
    pool = rng.normal(size=(30, 8))
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    chosen = np.array([0, 3, 7, 11, 19])
    zeta = 2
    got = reference_residuals(pool, chosen, zeta)
    assert got.shape == (30,)
    refs = pool[chosen]
    for slot in range(chosen.size):
        others = np.delete(refs, slot, axis=0)
        k = int_power(others @ refs[slot], zeta)
        direct = 1.0 - k @ np.linalg.solve(int_power(others @ others.T, zeta), k)
        assert got[25 + slot] == pytest.approx(direct, rel=1e-8)
    rest = np.delete(pool, chosen, axis=0)
    k = int_power(rest @ refs.T, zeta)
    direct = 1.0 - np.einsum("ab,ab->a", k, np.linalg.solve(int_power(refs @ refs.T, zeta),
                                                            k.T).T)
    np.testing.assert_allclose(got[:25], direct, rtol=1e-8, atol=1e-12)


def test_training_frames_pass_and_rattled_frames_are_reported(model, subset, rng, tmp_path,
                                                              capsys):
    """Frames of the training distribution put about 1 % of their atoms beyond the training
    quantile (here at most a few %); frames rattled by 0.15 Å, most of them, and predict
    warns naming the species, the frame and the atom, and records the check."""
    ref = model.training["environment_residual"]
    assert set(ref) == {"O", "Si"} and all(0 <= v["q"] <= v["max"] <= 1 for v in ref.values())
    alike = environment_check(model, _frames(subset[8:16]), range(8, 16))
    assert alike["extrapolated"] == []
    assert all(alike[s]["beyond"] < BEYOND_FRACTION for s in ("O", "Si"))
    rattled = [a.copy() for a in subset[8:12]]
    for a in rattled:
        a.positions += rng.normal(scale=0.15, size=a.positions.shape)
    report = environment_check(model, _frames(rattled), [8, 9, 10, 11])
    assert set(report["extrapolated"]) == {"O", "Si"}
    assert all(report[s]["beyond"] > 0.5 for s in ("O", "Si"))
    # predict checks one frame in ten: 2 of these 20
    trajectory = [a.copy() for a in subset]
    for a in trajectory:
        a.positions += rng.normal(scale=0.15, size=a.positions.shape)
    with pytest.warns(UserWarning, match=r"<dataset>: in 2 evenly spaced frames \(of 20\).*"
                                         r"O: \d+ % of 96 atoms \(worst: frame (0|19), atom"):
        out = predict(model, _trajectory(trajectory), progress=False, dipole_derivative=False,
                      out=tmp_path / "p.zarr")
    recorded = json.loads(out.attrs["environment_check"])
    assert recorded["frames"] == [0, 19] and set(recorded["extrapolated"]) == {"O", "Si"}
    # numbec info shows the check of a prediction store
    from numbec.cli import main

    assert main(["info", str(tmp_path / "p.zarr")]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "environments EXTRAPOLATION for" in printed
    for symbol in ("O", "Si"):
        assert f"{symbol} {100 * recorded[symbol]['beyond']:.1f} %" in printed
    assert "2 frames checked" in printed


def test_the_reference_survives_the_model_file_and_old_files_skip_the_check(model, subset,
                                                                           tmp_path):
    import warnings

    path = tmp_path / "m.npz"
    model.save(path)
    loaded = numbec.load_model(path)
    assert loaded.training["environment_residual"] == model.training["environment_residual"]
    broken = dict(loaded.training["environment_residual"], O={"q": "x"})
    loaded.training = dict(loaded.training, environment_residual=broken)
    with pytest.raises(ValueError, match=r"environment_residual'\]\['O'\] is not a valid"):
        environment_check(loaded, _frames(subset[:1]))
    loaded.training = {k: v for k, v in loaded.training.items() if k != "environment_residual"}
    assert environment_check(loaded, _frames(subset[:2])) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = predict(loaded, _trajectory(subset[:3]), progress=False, dipole_derivative=False)
    assert "environment_check" not in out.attrs


def test_quartz_at_600_k_is_reported_for_a_model_trained_at_300_k(shared_data):
    """The real case: SiO2.xyz frames 0-101 are 300 K, the rest 600 K. A model trained on
    300 K frames sees the 600 K test frames (150-200) as beyond its training environments
    (33-36 % of their atoms when measured); one whose training frames include 600 K ones
    does not (1-3 %). Needs the full quartz set."""
    from conftest import HAVE_FULL_DATA, missing_data

    if not HAVE_FULL_DATA:
        missing_data("the full quartz data set (201 frames; the shipped subset has 6)")
    frames = numbec.read_bec(shared_data / "sio2_quartz_qe" / "SiO2.xyz", index=":")
    test = _frames(frames[150:201:5])
    cold = MonopoleModel(n_sparse=100).fit(frames[0:100:3])
    mixed = MonopoleModel(n_sparse=100).fit(frames[0:150:3])
    hot = environment_check(cold, test)
    assert set(hot["extrapolated"]) == {"O", "Si"}
    assert min(hot["O"]["beyond"], hot["Si"]["beyond"]) > 0.2
    seen = environment_check(mixed, test)
    assert seen["extrapolated"] == []
    assert max(seen["O"]["beyond"], seen["Si"]["beyond"]) < 0.05
    assert NystromResidual(mixed).zeta == mixed.zeta
