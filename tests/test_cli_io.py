"""``numbec convert`` and ``numbec info`` through ``numbec.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms, units

import numbec
from numbec.cli import main

QUARTZ = Path(numbec.__file__).parent / "data" / "sio2_quartz_subset.xyz"


@pytest.fixture
def source(tmp_path):
    rng = np.random.default_rng(3)
    start, velocities = rng.uniform(0, 4, (3, 3)), rng.normal(0, 0.01, (3, 3))  # Å, Å/fs
    frames = []
    for k in range(11):  # moving at their velocities, frames 1 fs apart
        atoms = Atoms("OH2", positions=start + k * velocities, cell=[4, 4, 4], pbc=True)
        atoms.set_velocities(velocities / units.fs)
        frames.append(atoms)
    path = tmp_path / "water.xyz"
    ase.io.write(path, frames)
    return path


def test_convert_and_info(source, tmp_path, capsys):
    store = tmp_path / "w.zarr"
    args = ["convert", str(source), str(store), "--timestep", "0.5", "--chunk-frames", "4"]
    assert main(args + ["--index", "1:"]) == 0
    assert "10 frames x 3 atoms (dt = 0.5 fs)" in capsys.readouterr().out
    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    fields = dict(line.split(None, 1) for line in out.replace("time step", "timestep").splitlines())
    assert fields["frames"] == "10"
    assert fields["atoms"] == "3  (O 1, H 2)"
    assert fields["timestep"] == "0.5 fs"
    assert fields["duration"] == "4.5 fs"
    assert fields["chunking"] == "4 frames per chunk"
    assert fields["velocities"] == "yes"
    assert fields["status"] == "complete"
    assert main(["info", str(store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["frames"] == 10 and info["species"] == {"O": 1, "H": 2}
    ds = numbec.open_trajectory(store)
    np.testing.assert_allclose(ds.positions.values[0], ase.io.read(source, 1).positions)


def test_convert_bundled_data_without_timestep(tmp_path, capsys):
    store = tmp_path / "q.zarr"
    # no time step in the file: refused unless --no-time says it is not a time series
    assert main(["convert", "example:sio2_quartz_subset", str(store), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "records no time step" in err and "--timestep FS" in err and "--no-time" in err
    assert not store.exists()
    assert main(["convert", "example:sio2_quartz_subset", str(store), "--no-progress",
                 "--no-time"]) == 0
    assert "unknown time step" in capsys.readouterr().out
    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    assert "frames       20" in out and "atoms        72  (Si 24, O 48)" in out
    assert "time step    unknown" in out and "velocities   no" in out
    assert f"source       {QUARTZ}" in out
    assert main(["convert", "example:nothing", str(tmp_path / "n.zarr")]) == 1
    assert "no bundled example 'nothing'" in capsys.readouterr().err


def test_convert_append_resumes(source, tmp_path, capsys):
    store = tmp_path / "w.zarr"
    assert main(["convert", str(source), str(store), "--index", ":5", "--timestep", "1"]) == 0
    assert main(["convert", str(source), str(store), "--index", "5:", "--append"]) == 0
    capsys.readouterr()
    assert main(["info", str(store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["frames"] == 11 and info["duration"] == 10.0
    assert [s["frames"] for s in info["segments"]] == [5, 6]


def test_cli_errors(source, tmp_path, capsys):
    store = tmp_path / "w.zarr"
    assert main(["convert", str(source), str(store), "--no-time"]) == 0
    capsys.readouterr()
    assert main(["convert", str(source), str(store), "--no-time"]) == 1
    assert "numbec convert: error:" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "nope.xyz"), str(tmp_path / "x.zarr"),
                 "--no-time"]) == 1
    assert "nope.xyz: no such trajectory file" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "none.zarr")]) == 1
    assert "none.zarr: no such trajectory store" in capsys.readouterr().err
    (store / "zarr.json").write_text("{broken")
    assert main(["info", str(store)]) == 1
    assert "w.zarr: cannot open as a Zarr group" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", str(source), str(store), "--timestep", "abc"])


def test_set_timestep_fixes_a_store_in_place(tmp_path, capsys):
    store = tmp_path / "q.zarr"
    assert main(["convert", "example:sio2_quartz_subset", str(store), "--no-progress",
                 "--no-time"]) == 0
    assert main(["info", "--set-timestep", "2.5", str(store)]) == 0
    assert "time step    2.5 fs" in capsys.readouterr().out
    ds = numbec.open_trajectory(store)
    assert ds.attrs["timestep"] == 2.5
    np.testing.assert_array_equal(ds.time.values, 2.5 * np.arange(20))
    assert main(["info", "--set-timestep", "-1", str(store)]) == 1
    assert "positive number of fs" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-3"])
def test_chunk_frames_below_one_is_an_error_in_convert_and_predict(source, tmp_path, value,
                                                                 capsys):
    for argv in (["convert", str(source), str(tmp_path / "c.zarr"), "--timestep", "1"],
                 ["predict", "m.npz", "t.zarr", "-o", str(tmp_path / "p.zarr")]):
        with pytest.raises(SystemExit):
            main(argv + ["--chunk-frames", value])
        assert "must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "c.zarr").exists()


def test_huge_chunk_request_is_capped_at_the_source(source, tmp_path):
    store = tmp_path / "c.zarr"
    assert main(["convert", str(source), str(store), "--timestep", "1",
                 "--chunk-frames", "1000000000", "--no-progress"]) == 0
    ds = numbec.open_trajectory(store)
    assert ds.sizes["frame"] == 11 and ds.attrs["chunk_frames"] == 11


def test_convert_output_directory_checked_first(source, tmp_path, capsys):
    assert main(["convert", str(source), str(tmp_path / "no" / "dir" / "c.zarr"),
                 "--timestep", "1"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_truncated_compressed_source_names_file_and_frame(source, tmp_path, capsys):
    import gzip

    data = gzip.compress(source.read_bytes())
    cut = tmp_path / "cut.xyz.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert main(["convert", str(cut), str(tmp_path / "c.zarr"), "--timestep", "1",
                 "--chunk-frames", "2", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "cut.xyz.gz: the file is truncated or corrupt after frame" in err
    assert "Traceback" not in err
