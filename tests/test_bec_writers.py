"""BEC writers for phonopy (BORN), i-PI (bec.txt) and extxyz flavours; ``numbec born``.

The phonopy checks go through phonopy itself: it reads the written BORN and its
non-analytical correction (LO-TO splitting at Gamma along several q directions) must be
the one the reference BORN gives.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from numbec.io.bec_writers import (
    EXTXYZ_FLAVOURS,
    read_ipi_bec,
    write_extxyz_flavour,
    write_ipi_bec,
    write_phonopy_born,
)

phonopy = pytest.importorskip("phonopy")

DIRECTIONS = ([1, 0, 0], [0, 0, 1], [1, 1, 1], [1, 2, 0])
#: phonopy's unit conversion of the NAC term for VASP units (Hartree * Bohr); the example
#: BORN files of NaCl carry the older 14.400 on their first line.
NAC_FACTOR = 14.39965172592227


def _copy_example(shared_data, name, tmp_path):
    src = shared_data / "phonopy_born" / name
    out = tmp_path / name
    out.mkdir()
    for file in ("phonopy_disp.yaml", "FORCE_SETS", "POSCAR-unitcell"):
        shutil.copy(src / file, out / file)
    return src, out


def _nac_frequencies(folder, born):
    """Gamma frequencies (THz) with phonopy's NAC along DIRECTIONS, shape (4, 3P)."""
    from phonopy.file_IO import parse_BORN

    phonon = phonopy.load(str(folder / "phonopy_disp.yaml"),
                          force_sets_filename=str(folder / "FORCE_SETS"), is_nac=False,
                          primitive_matrix="auto", log_level=0)
    params = parse_BORN(phonon.primitive, filename=str(born))
    params["factor"] = NAC_FACTOR
    phonon.nac_params = params
    out = []
    for q in DIRECTIONS:
        phonon.run_qpoints([[0, 0, 0]], nac_q_direction=q)
        out.append(phonon.qpoints.frequencies[0])
    return np.array(out)


@pytest.mark.parametrize("name", ["NaCl", "SnO2", "Al2O3"])
def test_phonopy_reads_written_born_and_gives_reference_nac(shared_data, tmp_path, name):
    from numbec.io.phonopy_born import read_phonopy_born

    src, out = _copy_example(shared_data, name, tmp_path)
    cell = read_phonopy_born(src / "BORN")[0]  # reference BECs expanded to every atom
    reference = _nac_frequencies(src, src / "BORN")
    # without the sum-rule projection the written file is the reference, digit for digit
    write_phonopy_born(out / "BORN", cell, eps_inf=cell.info["eps_inf"], asr=False)
    np.testing.assert_allclose(_nac_frequencies(out, out / "BORN"), reference, atol=2e-7)
    # an ASR violation of 0.3 e on every atom is projected out again
    info = write_phonopy_born(out / "BORN", cell, cell.arrays["bec"] + 0.3,
                              eps_inf=cell.info["eps_inf"])
    assert np.abs(info["asr_violation"] - 0.3 * len(cell)).max() < 0.01
    got = _nac_frequencies(out, out / "BORN")
    # the reference charges break the ASR by up to 3e-4 e (NaCl: 1.08703 vs -1.08672)
    np.testing.assert_allclose(got, reference, atol=2e-4)
    lo_to = reference.max(axis=1) - np.sort(reference, axis=1)[:, -4]
    assert lo_to.max() > 0.5  # there is a splitting to reproduce (THz)


@pytest.mark.filterwarnings("ignore:Symmetry of Born effective charge is largely broken")
def test_symmetrisation_removes_symmetry_breaking_noise(shared_data, tmp_path):
    from numbec.io.phonopy_born import read_phonopy_born

    src, out = _copy_example(shared_data, "NaCl", tmp_path)
    cell = read_phonopy_born(src / "BORN")[0]
    rng = np.random.default_rng(0)
    noisy = cell.arrays["bec"] + 0.05 * rng.normal(size=(len(cell), 3, 3))
    info = write_phonopy_born(out / "BORN", cell, noisy, eps_inf=2.4)
    z = info["bec"]
    # rock salt: every Na and Cl site is cubic, so its charge is a multiple of the identity
    for a in range(len(cell)):
        np.testing.assert_allclose(z[a], np.trace(z[a]) / 3 * np.eye(3), atol=1e-12)
    na = cell.numbers == 11
    expected = np.mean([np.trace(t) / 3 for t in noisy[na]]) - np.mean(
        [np.trace(t) / 3 for t in noisy])
    assert z[na][0, 0, 0] == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(z.sum(axis=0), 0.0, atol=1e-12)
    assert list(info["independent_atoms"]) == [0, 4]
    assert 0.01 < info["symmetrisation_change"] < 0.3


def test_born_command_with_a_fitted_model_gives_reference_nac(shared_data, tmp_path):
    """numbec born: a model fitted to MgO's charges -> BORN -> phonopy LO-TO as reference."""
    from numbec.cli import main
    from numbec.io.phonopy_born import read_phonopy_born
    from numbec.models import SpeciesMeanModel

    src, out = _copy_example(shared_data, "MgO", tmp_path)
    cell = read_phonopy_born(src / "BORN")[0]
    model = SpeciesMeanModel.fit([cell])
    model.save(tmp_path / "mgo.npz")
    eps = cell.info["eps_inf"]
    code = main(["born", str(tmp_path / "mgo.npz"), str(out / "POSCAR-unitcell"),
                 "--epsilon-inf", str(eps[0, 0]), "-o", str(out / "BORN")])
    assert code == 0
    reference = _nac_frequencies(src, src / "BORN")
    got = _nac_frequencies(out, out / "BORN")
    np.testing.assert_allclose(got, reference, atol=2e-4)
    # with a 0.1 e error in the charges the LO frequency visibly moves: the test can fail
    model.mean_bec *= 1.05
    model.save(tmp_path / "mgo.npz")
    main(["born", str(tmp_path / "mgo.npz"), str(out / "POSCAR-unitcell"),
          "--epsilon-inf", str(eps[0, 0]), "-o", str(out / "BORN")])
    assert np.abs(_nac_frequencies(out, out / "BORN") - reference).max() > 0.1


def test_born_command_errors(tmp_path, capsys):
    from ase.build import bulk

    from numbec.cli import main
    from numbec.models import FixedBECModel

    atoms = bulk("NaCl", "rocksalt", a=5.6)
    FixedBECModel(atoms.numbers, np.zeros((2, 3, 3))).save(tmp_path / "m.npz")
    atoms.write(tmp_path / "POSCAR", format="vasp")
    assert main(["born", str(tmp_path / "m.npz"), str(tmp_path / "POSCAR")]) == 1
    assert "--epsilon-inf" in capsys.readouterr().err
    assert main(["born", str(tmp_path / "m.npz"), str(tmp_path / "POSCAR"),
                 "--epsilon-inf", "0.5"]) == 1
    assert "eigenvalues >= 1" in capsys.readouterr().err
    assert main(["born", str(tmp_path / "m.npz"), str(tmp_path / "missing")]) == 1
    capsys.readouterr()
    (tmp_path / "empty.xyz").write_text('0\nLattice="5 0 0 0 5 0 0 0 5" '
                                        'Properties=species:S:1:pos:R:3 pbc="T T T"\n')
    assert main(["born", str(tmp_path / "m.npz"), str(tmp_path / "empty.xyz"),
                 "--format", "extxyz", "-o", str(tmp_path / "z.xyz")]) == 1
    assert "empty.xyz: the structure (--index -1) has no atoms" in capsys.readouterr().err
    with pytest.raises(ValueError, match="the structure has no atoms"):
        FixedBECModel(atoms.numbers, np.zeros((2, 3, 3))).predict(atoms[:0])


def test_ipi_bec_text_layout_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(3, 3, 3))
    path = write_ipi_bec(tmp_path / "bec.txt", z)
    rows = np.loadtxt(path)
    assert rows.shape == (9, 3)
    # i-PI: row 3a + j is the displacement R_(a,j), column i the dipole component P_i
    for a in range(3):
        for j in range(3):
            np.testing.assert_array_equal(rows[3 * a + j], z[a, :, j])
    np.testing.assert_array_equal(read_ipi_bec(path, n_atoms=3), z)
    (tmp_path / "bad.txt").write_text("1 2 3\n4 5 6\n")
    with pytest.raises(ValueError, match=r"bad.txt: i-PI BECs are a \(3N, 3\) matrix"):
        read_ipi_bec(tmp_path / "bad.txt")


@pytest.mark.parametrize("flavour", sorted(EXTXYZ_FLAVOURS))
def test_extxyz_flavours_round_trip(tmp_path, flavour):
    from ase.build import molecule

    import numbec
    from numbec.io.extxyz import iter_extxyz

    atoms = molecule("H2O")
    z = np.random.default_rng(2).normal(size=(3, 3, 3))
    atoms.arrays["bec"] = z
    path = write_extxyz_flavour(tmp_path / f"{flavour}.xyz", [atoms], flavour,
                                field=[0.0, 0.0, 0.1])
    key, layout = EXTXYZ_FLAVOURS[flavour]
    frame = next(iter_extxyz(path))
    raw = frame.arrays[key].reshape(3, 3, 3)
    np.testing.assert_array_equal(raw, z)  # pol-disp: row-major, row = polarisation
    assert frame.info["layout"] == layout
    if flavour == "mace-field":
        np.testing.assert_array_equal(frame.info["REF_electric_field"], [0.0, 0.0, 0.1])
    back = numbec.read_bec(path, key=key)[0]
    np.testing.assert_array_equal(back.arrays["bec"], z)


@pytest.mark.parametrize("fmt", ["ipi", "extxyz", "allegro-pol", "mace-field"])
def test_born_command_other_formats(tmp_path, fmt):
    from ase.build import bulk

    from numbec import read_bec
    from numbec.cli import main
    from numbec.models import FixedBECModel

    atoms = bulk("NaCl", "rocksalt", a=5.6)
    z = np.random.default_rng(3).normal(size=(2, 3, 3))
    FixedBECModel(atoms.numbers, z).save(tmp_path / "m.npz")
    atoms.write(tmp_path / "POSCAR", format="vasp")
    out = tmp_path / ("bec.txt" if fmt == "ipi" else "bec.xyz")
    assert main(["born", str(tmp_path / "m.npz"), str(tmp_path / "POSCAR"), "--format", fmt,
                 "-o", str(out)]) == 0
    if fmt == "ipi":
        back = read_ipi_bec(out, n_atoms=2)
    else:
        key = EXTXYZ_FLAVOURS["numbec" if fmt == "extxyz" else fmt][0]
        back = read_bec(out, key=key)[0].arrays["bec"]
    np.testing.assert_allclose(back, z, rtol=1e-15)  # unsymmetrised, as predicted



@pytest.mark.parametrize("fmt", ["extxyz", "allegro-pol", "mace-field"])
def test_born_output_holds_only_the_prediction(tmp_path, fmt):
    """An input with reference BECs of its own (the DFT born_charge of a training file):
    the output does not carry them, and read_bec of it gives the prediction."""
    from ase.build import bulk

    from numbec import read_bec
    from numbec.cli import main
    from numbec.io.extxyz import BEC_KEYS, iter_extxyz
    from numbec.models import FixedBECModel

    atoms = bulk("NaCl", "rocksalt", a=5.6)
    z = np.random.default_rng(4).normal(size=(2, 3, 3))
    FixedBECModel(atoms.numbers, z).save(tmp_path / "m.npz")
    atoms.arrays["born_charge"] = np.full((2, 9), 7.0)  # the stale reference
    atoms.arrays["REF_becs"] = np.full((2, 9), 8.0)
    atoms.write(tmp_path / "in.xyz", format="extxyz")
    out = tmp_path / "out.xyz"
    assert main(["born", str(tmp_path / "m.npz"), str(tmp_path / "in.xyz"), "--format", fmt,
                 "-o", str(out)]) == 0
    key = EXTXYZ_FLAVOURS["numbec" if fmt == "extxyz" else fmt][0]
    assert [k for k in next(iter_extxyz(out)).arrays if k in BEC_KEYS] == [key]
    np.testing.assert_allclose(read_bec(out)[0].arrays["bec"], z, rtol=1e-15)


def test_born_errors_about_the_structure_name_its_file(tmp_path, capsys):
    from ase.build import bulk

    from numbec.cli import main
    from numbec.models import FixedBECModel

    atoms = bulk("NaCl", "rocksalt", a=5.6)
    FixedBECModel(atoms.numbers, np.zeros((2, 3, 3))).save(tmp_path / "m.npz")
    other = bulk("KCl", "rocksalt", a=6.3)
    other.write(tmp_path / "kcl.xyz", format="extxyz")
    atoms.positions[1, 2] = np.nan
    atoms.write(tmp_path / "nan.xyz", format="extxyz")
    for name, what in (("kcl.xyz", "not seen in training"), ("nan.xyz", "NaN")):
        assert main(["born", str(tmp_path / "m.npz"), str(tmp_path / name), "--format",
                     "extxyz", "-o", str(tmp_path / "o.xyz")]) == 1
        err = capsys.readouterr().err
        assert f"error: {tmp_path / name}: " in err and what in err, err


def test_writers_are_atomic_and_name_a_missing_directory(tmp_path):
    """The writers go through numbec.io._files.atomic_write: a missing output directory is
    an error naming it (not the temporary file), a compressed extxyz is still compressed,
    and nothing but the output is left behind."""
    import gzip

    from ase.build import molecule

    z = np.random.default_rng(3).normal(size=(3, 3, 3))
    with pytest.raises(FileNotFoundError, match="nodir does not exist"):
        write_ipi_bec(tmp_path / "nodir" / "bec.txt", z)
    atoms = molecule("H2O")
    atoms.arrays["bec"] = z
    with pytest.raises(FileNotFoundError, match="nodir does not exist"):
        write_extxyz_flavour(tmp_path / "nodir" / "b.xyz", [atoms])
    path = write_extxyz_flavour(tmp_path / "b.xyz.gz", [atoms])
    with gzip.open(path, "rt") as fh:
        assert fh.readline().strip() == "3"
    write_ipi_bec(tmp_path / "bec.txt", z)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.xyz.gz", "bec.txt"]
