"""BEC readers and writer on the real reference files, plus every bad-input error.

The VASP OUTCAR format is tested on synthetic OUTCARs (``tests/outcar_factory.py``), which
run everywhere; the ZrO2 OUTCARs, which cannot be shipped, check the reader on real VASP
output when the full reference data are there.
"""

from __future__ import annotations

import gzip
import lzma
import re
from pathlib import Path

import ase
import ase.io
import ase.units
import numpy as np
import pytest
from conftest import frames_expected
from outcar_factory import make_outcar, write_outcar

import numbec
from numbec.conventions import LayoutError
from numbec.io.bec import detect_format
from numbec.io.extxyz import iter_extxyz

ZRO2 = "zro2_vasp_dfpt"


def _outcar_text(shared_data, n=1):
    return lzma.open(shared_data / ZRO2 / f"OUTCAR.{n}.xz", "rt").read()


def _last_lattice(text):
    """Final 'direct lattice vectors' block parsed independently of ASE (Å, rows)."""
    pos = text.rfind("direct lattice vectors")
    rows = text[pos:].splitlines()[1:4]
    return np.array([[float(x) for x in r.split()[:3]] for r in rows])


# --- VASP OUTCAR -------------------------------------------------------------------------


def test_all_zro2_outcars(shared_data):
    frames = numbec.read_bec(str(shared_data / ZRO2 / "OUTCAR.*.xz"))
    assert len(frames) == 119
    # natural order: OUTCAR.1, OUTCAR.2, ..., OUTCAR.119
    numbers = [int(re.search(r"OUTCAR\.(\d+)", a.info["source"]).group(1)) for a in frames]
    assert numbers == list(range(1, 120))
    zr_iso, o_iso = [], []
    for atoms in frames:
        bec = atoms.arrays["bec"]
        assert bec.shape == (96, 3, 3)
        assert np.abs(bec.sum(axis=0)).max() < 1e-3  # acoustic sum rule of DFPT
        assert atoms.get_chemical_symbols().count("Zr") == 32
        assert atoms.get_chemical_symbols().count("O") == 64
        assert atoms.cell.volume > 900.0
        iso = np.trace(bec, axis1=1, axis2=2) / 3
        zr_iso.extend(iso[atoms.numbers == 40])
        o_iso.extend(iso[atoms.numbers == 8])
    # README: isotropic charges Zr 5.31 +- 0.19 e, O -2.66 +- 0.10 e
    assert np.mean(zr_iso) == pytest.approx(5.31, abs=0.05)
    assert np.mean(o_iso) == pytest.approx(-2.66, abs=0.05)
    assert np.std(zr_iso) == pytest.approx(0.19, abs=0.05)
    # charge neutrality of the mean tensors: 32 Zr + 64 O
    assert abs(32 * np.mean(zr_iso) + 64 * np.mean(o_iso)) < 0.01


@pytest.mark.parametrize("n", [1, 35, 116])
def test_outcar_cell_and_block_match_independent_parse(shared_data, n):
    text = _outcar_text(shared_data, n)
    atoms = numbec.read_bec(shared_data / ZRO2 / f"OUTCAR.{n}.xz")[0]
    np.testing.assert_allclose(atoms.cell[:], _last_lattice(text), atol=1e-6)
    # the last row printed for ion 96 in the block: "3  Z_z,x Z_z,y Z_z,z" (row = field)
    block = text[text.rfind("BORN EFFECTIVE CHARGES") :]
    ion96 = block[block.index("ion   96") :].splitlines()
    row_z = [float(x) for x in ion96[3].split()[1:]]
    row_x = [float(x) for x in ion96[1].split()[1:]]
    np.testing.assert_allclose(atoms.arrays["bec"][95, 2], row_z)
    np.testing.assert_allclose(atoms.arrays["bec"][95, 0], row_x)


# --- VASP OUTCAR format, on synthetic OUTCARs (tests/outcar_factory.py) ------------------


def _check_read(atoms, synthetic, path):
    """``atoms`` holds the final structure and the BEC block ``synthetic`` was written with."""
    assert atoms.get_chemical_symbols() == synthetic.symbols
    np.testing.assert_allclose(atoms.cell[:], synthetic.cell, rtol=0, atol=1e-12)
    np.testing.assert_allclose(atoms.positions, synthetic.positions, rtol=0, atol=1e-12)
    np.testing.assert_allclose(atoms.arrays["bec"], synthetic.bec, rtol=0, atol=1e-12)
    assert atoms.info["source"] == f"{path}@-1"
    assert atoms.info["bec_layout_in_file"] == "pol-disp"


@pytest.mark.parametrize("name", ["OUTCAR", "OUTCAR.gz", "OUTCAR.xz", "OUTCAR.bz2"])
@pytest.mark.parametrize("variant", [
    {},  # VASP 6 LEPSILON, one ionic step
    {"steps": 3},  # a relaxation: the last structure goes with the BECs
    {"header": "vasp5"},  # 'BORN EFFECTIVE CHARGES (in e, cummulative output)'
    {"header": "rpa"},  # only the charges without local-field effects
    {"rpa_block": "before"},  # LCALCEPS prints both: the ones with local-field effects count
    {"rpa_block": "after", "steps": 2},
])
def test_outcar_reads_what_was_written(tmp_path, name, variant):
    synthetic = make_outcar(seed=7, **variant)
    path = write_outcar(tmp_path / name, synthetic.text)
    atoms = numbec.read_bec(path)[0]
    _check_read(atoms, synthetic, path)
    if synthetic.bec_rpa is not None:  # the other block differs, so taking it would fail
        assert np.abs(synthetic.bec_rpa - synthetic.bec).max() > 0.1
    # the structure agrees with ASE's own reader of the (uncompressed) file
    plain = write_outcar(tmp_path / "plain.out", synthetic.text)
    ref = ase.io.read(plain, format="vasp-out", index=-1)
    np.testing.assert_array_equal(atoms.positions, ref.positions)
    np.testing.assert_array_equal(atoms.cell[:], ref.cell[:])


def test_outcar_glob_in_numbered_order_and_lists_in_given_order(tmp_path):
    species = [(("Ti", 2), ("O", 4)), (("Zr", 3), ("O", 6))]
    written = [make_outcar(seed=k, species=species[k % 2]) for k in range(1, 12)]
    paths = [write_outcar(tmp_path / f"OUTCAR.{k}.xz", synthetic.text)
             for k, synthetic in enumerate(written, start=1)]
    # natural order: OUTCAR.1, OUTCAR.2, ..., OUTCAR.10, OUTCAR.11
    frames = numbec.read_bec(str(tmp_path / "OUTCAR.*.xz"))
    assert len(frames) == 11
    for atoms, synthetic, path in zip(frames, written, paths, strict=True):
        _check_read(atoms, synthetic, path)
    # an explicit list keeps its order
    again = numbec.read_bec([paths[3], paths[0]])
    _check_read(again[0], written[3], paths[3])
    _check_read(again[1], written[0], paths[0])


def test_outcar_transposition(tmp_path):
    synthetic = make_outcar(seed=35)
    path = write_outcar(tmp_path / "OUTCAR", synthetic.text)
    canon = numbec.read_bec(path)[0].arrays["bec"]
    other = numbec.read_bec(path, layout="disp-pol")[0].arrays["bec"]
    np.testing.assert_array_equal(other, np.swapaxes(canon, 1, 2))
    # the charges are really asymmetric, so the test can fail
    assert np.abs(canon - np.swapaxes(canon, 1, 2)).max() > 0.05


def test_unknown_layout(tmp_path):
    path = write_outcar(tmp_path / "OUTCAR", make_outcar().text)
    with pytest.raises(LayoutError, match="unknown BEC layout 'row-col'"):
        numbec.read_bec(path, layout="row-col")


# --- broken OUTCARs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def outcar_parts():
    """A 12-atom synthetic OUTCAR cut into (before the BEC block, the block, after it)."""
    text = make_outcar(seed=1).text
    start = text.rfind(" BORN EFFECTIVE CHARGES")
    end = text.index("\n\n\n", start)
    return text[:start], text[start:end], text[end:]


def _write(tmp_path, text, name="OUTCAR"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_outcar_missing_block(tmp_path, outcar_parts):
    head, _, tail = outcar_parts
    path = _write(tmp_path, head + tail)
    with pytest.raises(ValueError, match=r"OUTCAR.*no 'BORN EFFECTIVE CHARGES' block"):
        numbec.read_bec(path)


@pytest.mark.parametrize("name", ["OUTCAR", "OUTCAR.gz", "OUTCAR.xz"])
def test_outcar_truncated_block(tmp_path, outcar_parts, name):
    head, block, tail = outcar_parts
    cut = block.index(" ion    7")
    path = write_outcar(tmp_path / name, head + block[:cut])  # the file ends after ion 6
    with pytest.raises(ValueError, match=rf"{name}.*6 ions but the structure has 12"):
        numbec.read_bec(path)
    # cut in the middle of an ion's three rows
    path = write_outcar(tmp_path / name, head + block[: cut + 60])
    with pytest.raises(ValueError, match=rf"{name}.*truncated or malformed at ion 7"):
        numbec.read_bec(path)


def test_outcar_wrong_number_of_rows(tmp_path, outcar_parts):
    head, block, tail = outcar_parts
    lines = block.splitlines()
    k = lines.index(" ion    7")
    del lines[k + 3]  # ion 7 keeps only rows 1 and 2
    path = _write(tmp_path, head + "\n".join(lines) + tail)
    with pytest.raises(ValueError, match=r"malformed at ion 7"):
        numbec.read_bec(path)


@pytest.mark.parametrize("row, line, message", [
    # the row label is the field direction: rows out of order
    (1, "    2     1.00000     0.00000     0.00000", r"malformed at ion 5 \(expected row 1"),
    (0, " ion    6", r"lists ion 6 where ion 5 was expected"),
    (2, "    2     1.00000       a.bcd     0.00000", r"BEC of ion 5, row 2 is not numeric"),
    # four numbers without the field-direction label
    (1, "     1.00000     0.00000     0.00000     0.0", r"malformed at ion 5 \(expected row 1"),
])
def test_outcar_malformed_block(tmp_path, outcar_parts, row, line, message):
    head, block, tail = outcar_parts
    lines = block.splitlines()
    lines[lines.index(" ion    5") + row] = line
    path = _write(tmp_path, head + "\n".join(lines) + tail)
    with pytest.raises(ValueError, match=rf"OUTCAR: .*{message}"):
        numbec.read_bec(path)


def test_outcar_block_without_ions(tmp_path, outcar_parts):
    head, block, tail = outcar_parts
    path = _write(tmp_path, head + "\n".join(block.splitlines()[:2]) + tail)
    with pytest.raises(ValueError, match=r"OUTCAR: 'BORN EFFECTIVE CHARGES' block has no ion"):
        numbec.read_bec(path)


def test_outcar_nan(tmp_path, outcar_parts):
    head, block, tail = outcar_parts
    lines = block.splitlines()
    k = lines.index(" ion   12")
    row = lines[k + 2].split()
    lines[k + 2] = f"    2          NaN{row[2]:>12}{row[3]:>12}"
    path = _write(tmp_path, head + "\n".join(lines) + tail)
    with pytest.raises(ValueError, match=r"OUTCAR.*atom 11 .*NaN"):
        numbec.read_bec(path)


def test_outcar_more_ions_than_atoms(tmp_path, outcar_parts):
    head, block, tail = outcar_parts
    extra = "\n ion   13\n    1 1.0 0.0 0.0\n    2 0.0 1.0 0.0\n    3 0.0 0.0 1.0"
    path = _write(tmp_path, head + block + extra + tail)
    with pytest.raises(ValueError, match=r"13 ions but the structure has 12"):
        numbec.read_bec(path)


def test_outcar_without_a_structure(tmp_path, outcar_parts):
    head, block, tail = outcar_parts
    cut = head.index(" POSITION  ")  # the run stopped before its first ionic step ended
    path = _write(tmp_path, head[:cut] + block + tail)
    with pytest.raises(ValueError, match=r"OUTCAR: cannot read the structure"):
        numbec.read_bec(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="OUTCAR.nothere"):
        numbec.read_bec(tmp_path / "OUTCAR.nothere")
    with pytest.raises(FileNotFoundError, match="pattern matches no file"):
        numbec.read_bec(str(tmp_path / "OUTCAR.*"))
    bad = tmp_path / "OUTCAR.xz"
    bad.write_bytes(b"\xfd7zXZ\x00" + b"garbage" * 10)
    with pytest.raises(OSError, match="OUTCAR.xz"):
        numbec.read_bec(bad)
    with pytest.raises(ValueError, match="cannot tell the BEC file format"):
        numbec.read_bec(_write(tmp_path, "x", "data.bin"))
    with pytest.raises(ValueError, match="unknown BEC file format"):
        numbec.read_bec(_write(tmp_path, "x", "data.bin"), format="castep")


def test_detect_format():
    assert detect_format("run/OUTCAR.12.xz") == "outcar"
    assert detect_format("vasprun.xml.gz") == "vasprun"
    assert detect_format("a/b/train.extxyz.bz2") == "extxyz"
    assert detect_format("MgO/BORN") == "born"


# --- extxyz ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel, n_frames, n_atoms",
    [("sio2_quartz_qe/SiO2.xyz", 201, 72), ("batio3_qe/BaTiO3.xyz", 59, 135)],
)
def test_extxyz_reference_sets(shared_data, rel, n_frames, n_atoms):
    path = shared_data / rel
    frames = numbec.read_bec(path)
    n_frames = frames_expected(rel, n_frames)  # fewer in the subset shipped in tests/data
    assert len(frames) == n_frames
    ref = ase.io.read(path, index=":")  # ASE's own extxyz reader as the reference
    for k in (0, n_frames // 2, n_frames - 1):
        atoms = frames[k]
        assert atoms.arrays["bec"].shape == (n_atoms, 3, 3)
        np.testing.assert_array_equal(atoms.positions, ref[k].positions)
        np.testing.assert_array_equal(atoms.cell[:], ref[k].cell[:])
        # row-major born_charge:R:9, row = field
        np.testing.assert_array_equal(
            atoms.arrays["bec"], ref[k].arrays["born_charge"].reshape(-1, 3, 3)
        )
        np.testing.assert_array_equal(
            atoms.info["polarization"], ref[k].calc.results["polarization"]
        )
        assert atoms.info["source"].endswith(f"@{k}")
    asr = max(np.abs(a.arrays["bec"].sum(axis=0)).max() for a in frames)
    assert asr < 1e-6


def test_batio3_anomalous_ti_charge(shared_data):
    frames = numbec.read_bec(shared_data / "batio3_qe/BaTiO3.xyz", index="0:5")
    ti = np.concatenate(
        [np.trace(a.arrays["bec"], axis1=1, axis2=2)[a.numbers == 22] / 3 for a in frames]
    )
    assert 5.0 < ti.mean() < 5.8  # README: Z_Ti ~ 5.4 e (nominal ionic charge +4)


def test_extxyz_transposition_and_comment_override(shared_data, tmp_path):
    path = shared_data / "sio2_quartz_qe/SiO2.xyz"
    canon = numbec.read_bec(path, index="3")[0]
    other = numbec.read_bec(path, index="3", layout="disp-pol")[0]
    np.testing.assert_array_equal(other.arrays["bec"], np.swapaxes(canon.arrays["bec"], 1, 2))
    assert np.abs(canon.arrays["bec"] - other.arrays["bec"]).max() > 0.1
    # a file that declares layout=disp-pol on its comment line is read that way by default
    text = path.read_text().split("\n")
    n = int(text[0])
    frame = [text[0], text[1] + ' layout="disp-pol"'] + text[2 : 2 + n]
    (tmp_path / "t.xyz").write_text("\n".join(frame) + "\n")
    got = numbec.read_bec(tmp_path / "t.xyz")[0]
    np.testing.assert_array_equal(
        got.arrays["bec"], np.swapaxes(numbec.read_bec(path, index=0)[0].arrays["bec"], 1, 2)
    )
    assert got.info["bec_layout_in_file"] == "disp-pol"
    # an explicit layout that agrees is fine; one that contradicts the file is an error
    # naming both (it used to be overridden silently: test RMSE 0.13 e instead of 0.05 e)
    same = numbec.read_bec(tmp_path / "t.xyz", layout="disp-pol")[0]
    np.testing.assert_array_equal(same.arrays["bec"], got.arrays["bec"])
    with pytest.raises(ValueError, match="layout=disp-pol but layout=pol-disp was given"):
        numbec.read_bec(tmp_path / "t.xyz", layout="pol-disp")


def test_extxyz_key_argument(shared_data, tmp_path):
    path = shared_data / "batio3_qe/BaTiO3.xyz"
    frames = numbec.read_bec(path, index="0:2")
    with pytest.raises(ValueError, match="no per-atom array 'zstar'"):
        numbec.read_bec(path, index="0:2", key="zstar")
    with pytest.raises(ValueError, match="'forces' has shape .*9 columns"):
        numbec.read_bec(path, index="0:2", key="forces")
    again = numbec.read_bec(path, index="0:2", key="born_charge")
    np.testing.assert_array_equal(again[1].arrays["bec"], frames[1].arrays["bec"])


@pytest.mark.parametrize("name", ["rt.xyz", "rt.extxyz.gz", "rt.xyz.xz"])
def test_write_read_round_trip(shared_data, tmp_path, name):
    for k in range(3):
        write_outcar(tmp_path / f"OUTCAR.{k}.xz", make_outcar(seed=110 + k).text)
    frames = numbec.read_bec(str(tmp_path / "OUTCAR.[0-2].xz"), index=-1)
    frames += numbec.read_bec(shared_data / "sio2_quartz_qe/SiO2.xyz", index="0:2")
    frames[-1].info["stress"] = np.arange(9.0).reshape(3, 3)  # not symmetric: order matters
    numbec.write_bec(tmp_path / name, frames)
    back = numbec.read_bec(tmp_path / name)
    assert len(back) == len(frames)
    for a, b in zip(frames, back, strict=True):
        np.testing.assert_allclose(b.arrays["bec"], a.arrays["bec"], rtol=1e-15, atol=0)
        np.testing.assert_allclose(b.positions, a.positions, rtol=1e-15, atol=1e-15)
        np.testing.assert_array_equal(b.numbers, a.numbers)
        np.testing.assert_allclose(b.cell[:], a.cell[:], rtol=1e-15, atol=1e-15)
        assert b.info["bec_layout_in_file"] == "pol-disp"
        for key in ("polarization", "stress"):
            if key in a.info:
                np.testing.assert_array_equal(b.info[key], a.info[key])
    text = (lzma.open if name.endswith("xz") else gzip.open if name.endswith("gz") else open)(
        tmp_path / name, "rt"
    ).readline()
    assert text.strip() == "12"


def test_write_needs_bec(tmp_path):
    from ase.build import bulk

    with pytest.raises(ValueError, match="frame 0 has no arrays\\['bec'\\]"):
        numbec.write_bec(tmp_path / "x.xyz", [bulk("Cu")])



def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    """A write that fails half-way (a full disk) leaves the earlier file whole."""
    import errno

    from ase.build import bulk

    from numbec.io import extxyz

    atoms = bulk("Cu")
    atoms.arrays["bec"] = np.eye(3)[None].copy()
    path = tmp_path / "x.xyz"
    numbec.write_bec(path, [atoms])
    before = path.read_bytes()
    opened = extxyz.open_text_for_writing

    class FullDisk:
        def __init__(self, name):
            self.fh = opened(name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def writelines(self, texts):
            self.fh.write(texts[0][:10])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(extxyz, "open_text_for_writing", FullDisk)
    with pytest.raises(OSError, match=r"x\.xyz: cannot write \(No space left on device\)"):
        numbec.write_bec(path, [atoms])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.xyz"]


def _small_frame(
    tmp_path, bec_row="1 0 0 0 1 0 0 0 1", pos="0 0 0", header="2", species="H", extra=""
):
    text = (
        f"{header}\n"
        'Lattice="5 0 0 0 5 0 0 0 5" Properties=species:S:1:pos:R:3:bec:R:9 pbc="T T T"'
        f"{extra}\n"
        f"{species} {pos} {bec_row}\n"
        "H 1 1 1 -1 0 0 0 -1 0 0 0 -1\n"
    )
    path = tmp_path / "small.xyz"
    path.write_text(text)
    return path


def test_extxyz_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match=r"small.xyz, frame 0.*atom 0 .*NaN"):
        numbec.read_bec(_small_frame(tmp_path, bec_row="nan 0 0 0 1 0 0 0 1"))
    with pytest.raises(ValueError, match=r"small.xyz, frame 0: position of atom 0"):
        numbec.read_bec(_small_frame(tmp_path, pos="0 inf 0"))
    with pytest.raises(ValueError, match=r"small.xyz, frame 0: atom 0 has 12 columns"):
        numbec.read_bec(_small_frame(tmp_path, bec_row="1 0 0 0 1 0 0 0"))
    with pytest.raises(ValueError, match=r"small.xyz, frame 0: truncated frame"):
        numbec.read_bec(_small_frame(tmp_path, header="3"))
    with pytest.raises(ValueError, match=r"small.xyz, frame 0: unknown chemical species 'Xq'"):
        numbec.read_bec(_small_frame(tmp_path, species="Xq"))
    with pytest.raises(ValueError, match=r"small.xyz, frame 0: expected the number of atoms"):
        numbec.read_bec(_small_frame(tmp_path, header="two"))
    with pytest.raises(LayoutError, match=r"small.xyz, frame 0: comment-line unknown BEC layout"):
        numbec.read_bec(_small_frame(tmp_path, extra=" layout=zz"))
    ok = numbec.read_bec(_small_frame(tmp_path))[0]
    assert np.abs(ok.arrays["bec"].sum(axis=0)).max() == 0.0


def test_frame_without_atoms_is_refused(tmp_path):
    path = _small_frame(tmp_path)
    path.write_text(path.read_text() + '0\nLattice="5 0 0 0 5 0 0 0 5" '
                    'Properties=species:S:1:pos:R:3:bec:R:9 pbc="T T T"\n')
    with pytest.raises(ValueError, match=r"small.xyz, frame 1: the structure has no atoms"):
        numbec.read_bec(path)


def test_extxyz_frames_with_different_sizes_are_each_read(shared_data, tmp_path):
    # frames of different size are legal in a BEC data set; each keeps its own atoms
    a = (shared_data / "sio2_quartz_qe/SiO2.xyz").read_text().split("\n")
    b = (shared_data / "batio3_qe/BaTiO3.xyz").read_text().split("\n")
    (tmp_path / "mix.xyz").write_text("\n".join(a[:74] + b[:137]) + "\n")
    frames = list(iter_extxyz(tmp_path / "mix.xyz"))
    assert [len(f.numbers) for f in frames] == [72, 135]


# --- phonopy BORN ------------------------------------------------------------------------


def _symmetry_ops(atoms):
    import spglib

    cell = (atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers)
    ds = spglib.get_symmetry(cell, symprec=1e-5)
    return ds["rotations"], ds["translations"]


@pytest.mark.parametrize("name, n_atoms", [("MgO", 8), ("NaCl", 8), ("SnO2", 6), ("Al2O3", 30)])
def test_phonopy_born_expansion(shared_data, name, n_atoms):
    path = shared_data / "phonopy_born" / name / "BORN"
    atoms = numbec.read_bec(path)[0]
    bec = atoms.arrays["bec"]
    assert bec.shape == (n_atoms, 3, 3)
    lines = path.read_text().splitlines()
    eps = np.array(lines[1].split(), float).reshape(3, 3)
    np.testing.assert_allclose(atoms.info["eps_inf"], eps)
    # the file's first independent tensor is atom 0's, unchanged (row = field)
    np.testing.assert_allclose(bec[0], np.array(lines[2].split(), float).reshape(3, 3))
    # ASR to the rounding of the file (MgO: 1.97155 vs -1.97212 -> 2.3e-3 over 8 atoms)
    assert np.abs(bec.sum(axis=0)).max() < 5e-3
    # every symmetry operation maps atom a onto b with Z_b = R Z_a R^T (R Cartesian)
    lattice = atoms.cell[:].T  # columns = lattice vectors
    frac = atoms.get_scaled_positions()
    rotations, translations = _symmetry_ops(atoms)
    for rot, trans in zip(rotations, translations, strict=True):
        r_cart = lattice @ rot @ np.linalg.inv(lattice)
        image = frac @ rot.T + trans
        for a in range(n_atoms):
            diff = frac - image[a]
            diff -= np.round(diff)
            b = int(np.argmin(np.linalg.norm(diff @ atoms.cell[:], axis=1)))
            np.testing.assert_allclose(bec[b], r_cart @ bec[a] @ r_cart.T, atol=1e-6)


def test_phonopy_cubic_charges_are_isotropic(shared_data):
    for name in ("MgO", "NaCl"):
        bec = numbec.read_bec(shared_data / "phonopy_born" / name / "BORN")[0].arrays["bec"]
        iso = np.trace(bec, axis1=1, axis2=2) / 3
        np.testing.assert_allclose(bec, iso[:, None, None] * np.eye(3), atol=1e-12)


def test_phonopy_anisotropic_charges(shared_data):
    for name in ("SnO2", "Al2O3"):
        bec = numbec.read_bec(shared_data / "phonopy_born" / name / "BORN")[0].arrays["bec"]
        # different tensors on symmetry-equivalent atoms: the expansion rotated them
        cations = bec[: 2 if name == "SnO2" else 12]
        assert np.abs(cations - cations[0]).max() > 0.05
        # rotations preserve the invariants: trace and determinant
        np.testing.assert_allclose(
            np.trace(cations, axis1=1, axis2=2), np.trace(cations[0]), rtol=1e-10
        )
        np.testing.assert_allclose(np.linalg.det(cations), np.linalg.det(cations[0]), rtol=1e-8)


def test_phonopy_born_wrong_cell(shared_data, tmp_path):
    born = shared_data / "phonopy_born" / "Al2O3" / "BORN"
    cell = shared_data / "phonopy_born" / "MgO" / "POSCAR-unitcell"
    from numbec.io.phonopy_born import read_phonopy_born

    lines = born.read_text().splitlines()
    (tmp_path / "BORN.extra").write_text("\n".join(lines + [lines[-1]]) + "\n")
    with pytest.raises(ValueError, match="BORN.extra: not a BORN file for the 8-atom cell"):
        read_phonopy_born(tmp_path / "BORN.extra", unitcell=cell)
    (tmp_path / "BORN").write_text(born.read_text())
    with pytest.raises(FileNotFoundError, match="no unit cell found"):
        numbec.read_bec(tmp_path / "BORN")


# --- vasprun.xml and QE ph.x through ASE -------------------------------------------------


@pytest.fixture
def vasprun_dfpt(tmp_path):
    """ASE's own DFPT vasprun.xml test file (NaCl), with ion 1 made anisotropic."""
    ref = Path(ase.__file__).parent / "test" / "testdata" / "vasp" / "vasprun_dfpt.xml"
    if not ref.is_file():
        pytest.skip("ASE test data not installed")
    text = ref.read_text()
    start = text.index('<array name="born_charges"')
    old = "<v>       1.14672091       0.00000000      -0.00000000 </v>"
    assert text.index(old, start) > start
    head, tail = text[:start], text[start:].replace(old, "<v> 1.1 0.3 -0.2 </v>", 1)
    path = tmp_path / "vasprun.xml"
    path.write_text(head + tail)
    return path


def test_vasprun_bec_rows_are_field_directions(vasprun_dfpt):
    atoms = numbec.read_bec(vasprun_dfpt)[0]
    assert atoms.get_chemical_symbols() == ["Na", "Cl"]
    # first <v> of ion 1 is the field-x row: Z[0, x, :]
    np.testing.assert_allclose(atoms.arrays["bec"][0, 0], [1.1, 0.3, -0.2])
    np.testing.assert_allclose(atoms.arrays["bec"][1], -1.14672091 * np.eye(3), atol=1e-8)
    np.testing.assert_allclose(atoms.info["eps_inf"], 2.6958435 * np.eye(3), atol=1e-7)
    other = numbec.read_bec(vasprun_dfpt, layout="disp-pol")[0]
    np.testing.assert_allclose(other.arrays["bec"][0, :, 0], [1.1, 0.3, -0.2])


PH_OUT = """
     Program PHONON v.7.2 starts on  1Jan2024 at 10:00:00

     Calculation of q =    0.0000000   0.0000000   0.0000000

     celldm(1)=   10.670000  celldm(2)=   0.000000  celldm(3)=   0.000000
     celldm(4)=   0.000000  celldm(5)=   0.000000  celldm(6)=   0.000000

     crystal axes: (cart. coord. in units of alat)
               a(1) = (  -0.500000   0.000000   0.500000 )
               a(2) = (   0.000000   0.500000   0.500000 )
               a(3) = (  -0.500000   0.500000   0.000000 )

     Cartesian axes

     site n.  atom      mass           positions (alat units)
        1     Na  22.9900   tau(    1) = (    0.00000    0.00000    0.00000  )
        2     Cl  35.4500   tau(    2) = (    0.50000    0.00000    0.00000  )

     End of electric fields calculation

          Dielectric constant in cartesian axis

          (       2.490059398       0.000000000       0.000000000 )
          (       0.000000000       2.490059398      -0.000000000 )
          (       0.000000000      -0.000000000       2.490059398 )

          Effective charges (d Force / dE) in cartesian axis

           atom      1   Na
      Ex  (        1.06061        0.20000        0.00000 )
      Ey  (        0.00000        1.06061        0.00000 )
      Ez  (        0.00000        0.00000        1.06061 )
           atom      2   Cl
      Ex  (       -1.06061       -0.20000        0.00000 )
      Ey  (        0.00000       -1.06061       -0.00000 )
      Ez  (       -0.00000       -0.00000       -1.06061 )


     Diagonalizing the dynamical matrix

     q = (    0.000000000   0.000000000   0.000000000 )

 **************************************************************************
     freq (    1) =       0.173268 [THz] =       5.779601 [cm-1]
 **************************************************************************
"""


def test_qe_ph_output(tmp_path):
    """QE prints Z*(E_alpha, F_beta) with one line per field direction (Ex, Ey, Ez)."""
    path = tmp_path / "ph.out"
    path.write_text(PH_OUT)
    atoms = numbec.read_bec(path)[0]
    assert atoms.get_chemical_symbols() == ["Na", "Cl"]
    np.testing.assert_allclose(atoms.arrays["bec"][0, 0], [1.06061, 0.2, 0.0])
    np.testing.assert_allclose(atoms.arrays["bec"][1, 1], [0.0, -1.06061, 0.0])
    np.testing.assert_allclose(atoms.info["eps_inf"], 2.490059398 * np.eye(3), atol=1e-8)
    # Cl sits at alat/2 along x (ASE wraps it into the fcc cell: compare modulo lattice)
    alat = 10.67 * ase.units.Bohr
    shift = np.linalg.solve(atoms.cell[:].T, atoms.positions[1] - [alat / 2, 0, 0])
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-4)
    (tmp_path / "ph_noz.out").write_text(PH_OUT.split("Effective charges")[0])
    with pytest.raises(ValueError, match="ph_noz.out: no effective charges"):
        numbec.read_bec(tmp_path / "ph_noz.out", format="qe-ph")


def test_format_override_and_path_lists(shared_data, tmp_path):
    synthetic = make_outcar(seed=3)
    log = write_outcar(tmp_path / "run3.log", synthetic.text)
    with pytest.raises(ValueError, match="run3.log: cannot tell the BEC file format"):
        numbec.read_bec(log)
    _check_read(numbec.read_bec(log, format="outcar")[0], synthetic, log)
    # an explicit list keeps its order and mixes formats
    outcar = write_outcar(tmp_path / "OUTCAR.3.xz", synthetic.text)
    mixed = numbec.read_bec([shared_data / "phonopy_born/MgO/BORN", outcar])
    assert [len(a) for a in mixed] == [8, 12]


GARBAGE = {
    "binary": bytes(range(256)) * 40,
    "random bytes": np.random.default_rng(5).bytes(5000),
    "control characters": b"\x1b[2J\x07 2\x1b[31m\n" * 40,
    "bad utf-8": b"2\nLattice=\"5 0 0 0 5 0 0 0 5\" \xff\xfe\xfd\nH 0 0 0\n" * 3,
    "text": "this is not a BEC file\n" * 30,
}


#: The garbage that is binary data, and the readers that open their file as text (numbec's).
BINARY = ("binary", "random bytes", "control characters")
TEXT_READERS = [("OUTCAR", None), ("data.xyz", None), ("run.dat", "extxyz"),
                ("run.dat", "outcar"), ("run.dat", "qe-ph")]


@pytest.mark.parametrize("kind", sorted(GARBAGE))
@pytest.mark.parametrize("name, fmt", TEXT_READERS + [("BORN", None), ("vasprun.xml", None)])
def test_garbage_files_give_one_clean_error_naming_the_file(tmp_path, kind, name, fmt):
    """Binary, non-UTF-8 and nonsense text in every reader: a ValueError or OSError whose
    message names the file, never a UnicodeDecodeError or an unrelated traceback."""
    if name == "BORN":
        pytest.importorskip("phonopy")
        (tmp_path / "POSCAR-unitcell").write_text(
            "NaCl\n1.0\n5.6 0 0\n0 5.6 0\n0 0 5.6\nNa Cl\n1 1\nDirect\n0 0 0\n0.5 0.5 0.5\n")
    path = tmp_path / name
    content = GARBAGE[kind]
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises((ValueError, OSError)) as info:
        numbec.read_bec(path, format=fmt)
    assert not isinstance(info.value, UnicodeDecodeError)
    message = str(info.value)
    assert str(path) in message, (type(info.value), message)
    # printable text: no control characters, no undecodable bytes shown as they were read
    assert message.isprintable() and "\ufffd" not in message, repr(message)
    if kind in BINARY and (name, fmt) in TEXT_READERS:
        assert "not a text file (binary data at byte" in message, message


def test_text_with_a_few_stray_bytes_is_still_text(tmp_path):
    """A Latin-1 comment (``Å`` as one byte) is not binary data: the file is read."""
    path = _small_frame(tmp_path)
    path.write_bytes(path.read_bytes().replace(b'pbc="T T T"', b'pbc="T T T" note="5 \xc5"'))
    frame = numbec.read_bec(path)[0]
    assert frame.info["note"] == "5 \ufffd" and frame.arrays["bec"].shape == (2, 3, 3)


def test_quoted_file_content_is_short_and_printable():
    from numbec.io._files import quote

    assert quote("  12 atoms \n") == "'12 atoms'"
    assert quote("\x00\x1b[31m\ufffdÅ") == r"'\x00\x1b[31m\ufffdÅ'"
    assert quote("x" * 100, limit=10) == "'xxxxxxxxxx'... (100 characters)"


def test_cli_layout_contradicting_the_file_is_an_error(tmp_path, capsys):
    from numbec.cli import main

    path = _small_frame(tmp_path, extra=' layout="disp-pol"')
    assert main(["train", str(path), "-o", str(tmp_path / "m.npz"), "--layout",
                 "pol-disp"]) == 1
    err = capsys.readouterr().err
    assert "layout=disp-pol" in err and "layout=pol-disp was given" in err, err
