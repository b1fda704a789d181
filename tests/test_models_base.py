"""The model protocol and the saved-model format, on the baseline models."""

import json
import zipfile

import numpy as np
import pytest
from ase.build import molecule

from numbec.models import (
    FixedBECModel,
    ModelFileError,
    SpeciesMeanModel,
    UnknownSpeciesError,
    load_model,
)


def _water_frames(n=4, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        a = molecule("H2O")
        a.positions += rng.normal(scale=0.05, size=a.positions.shape)
        a.arrays["bec"] = rng.normal(size=(3, 3, 3))
        frames.append(a)
    return frames


def test_species_mean_is_the_mean_and_obeys_asr():
    frames = _water_frames()
    model = SpeciesMeanModel.fit(frames)
    o_mean = np.mean([f.arrays["bec"][0] for f in frames], axis=0)
    assert np.allclose(model.mean_bec[model.species.index(8)], o_mean)
    out = model.predict(frames[0])
    assert out["bec"].shape == (3, 3, 3)
    assert np.abs(out["bec"].sum(axis=0)).max() < 1e-12


def test_save_load_round_trip(tmp_path):
    model = SpeciesMeanModel.fit(_water_frames())
    path = model.save(tmp_path / "m")
    assert path.name == "m.npz"
    back = load_model(path)
    assert isinstance(back, SpeciesMeanModel)
    assert np.array_equal(back.mean_bec, model.mean_bec)
    fixed = FixedBECModel([8, 1, 1], np.eye(3)[None].repeat(3, 0))
    assert np.array_equal(load_model(fixed.save(tmp_path / "f.npz")).bec, fixed.bec)


def test_damaged_and_foreign_model_files_are_refused(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(ModelFileError, match="bad.npz: not a numbec model file"):
        load_model(bad)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.zeros(3))
    with pytest.raises(ModelFileError, match="not a numbec model"):
        load_model(foreign)
    path = SpeciesMeanModel.fit(_water_frames()).save(tmp_path / "v.npz")
    with np.load(path) as data:
        header = json.loads(str(data["__numbec__"]))
        arrays = {k: data[k] for k in data.files if k != "__numbec__"}
    header["format_version"] = 999
    np.savez(path, __numbec__=np.array(json.dumps(header)), **arrays)
    with pytest.raises(ModelFileError, match="format version 999"):
        load_model(path)
    truncated = tmp_path / "t.npz"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelFileError, match="t.npz"):
        load_model(truncated)
    assert zipfile.is_zipfile(path)


def test_a_file_that_is_no_model_is_named_without_a_pickle_hint(tmp_path):
    """numpy tries to unpickle a file that is not a zip and then suggests allow_pickle=True;
    load_model must say the file is not a model instead."""
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    noise = tmp_path / "noise.npz"
    noise.write_bytes(np.random.default_rng(0).bytes(20000))
    plain = tmp_path / "array.npy"
    np.save(plain, np.zeros(3))
    objects = SpeciesMeanModel.fit(_water_frames()).save(tmp_path / "objects.npz")
    with np.load(objects) as data:
        entries = {k: data[k] for k in data.files}
    np.savez(objects, extra=np.array([{"a": 1}], dtype=object), **entries)
    for path in (text, noise, plain, objects):
        with pytest.raises(ModelFileError, match="not a numbec model file") as info:
            load_model(path)
        assert str(info.value).startswith(f"{path}: ")
        assert "pickle" not in str(info.value)


def test_unknown_species_and_nan_positions_are_named():
    model = SpeciesMeanModel.fit(_water_frames())
    with pytest.raises(UnknownSpeciesError, match=r"C \(Z=6\).*knows H, O"):
        model.predict(molecule("CH4"))
    a = molecule("H2O")
    a.positions[1, 2] = np.nan
    with pytest.raises(ValueError, match="position of atom 1 is NaN"):
        model.predict(a)
