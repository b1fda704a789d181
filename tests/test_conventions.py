"""The one BEC convention: layout conversion, ASR projection, unit constants."""

import numpy as np
import pytest

from numbec import conventions as cv


def test_layout_transpose_round_trip():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 3, 3))
    flat = z.reshape(5, 9)
    assert np.array_equal(cv.to_canonical(flat, "pol-disp"), z)
    assert np.array_equal(cv.to_canonical(flat, "disp-pol"), np.swapaxes(z, 1, 2))
    assert np.array_equal(cv.from_canonical(cv.to_canonical(flat, "disp-pol"), "disp-pol"), z)
    # ASE's (3N, 3) layout is the same numbers as (N, 9)
    assert np.array_equal(cv.to_canonical(z.reshape(15, 3)), z)


def test_bad_layouts_are_named():
    with pytest.raises(cv.LayoutError, match="unknown BEC layout 'row'"):
        cv.to_canonical(np.zeros((2, 9)), "row")
    with pytest.raises(cv.LayoutError, match=r"\(4, 7\)"):
        cv.as_bec_array(np.zeros((4, 7)))
    with pytest.raises(cv.LayoutError, match="3 atoms, structure has 4"):
        cv.as_bec_array(np.zeros((3, 9)), n_atoms=4)
    bad = np.zeros((3, 9))
    bad[2, 4] = np.nan
    with pytest.raises(ValueError, match="frame 7: BEC of atom 2"):
        cv.as_bec_array(bad, where="frame 7")


def test_asr_projection_removes_the_sum_and_nothing_else():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(6, 3, 3))
    p = cv.asr_project(z)
    assert np.abs(cv.acoustic_sum(p)).max() < 1e-14
    # what is removed from every atom is the mean tensor, nothing else
    removed = z - p
    np.testing.assert_allclose(removed, np.broadcast_to(z.mean(axis=0), z.shape), atol=1e-15)
    # projecting twice changes nothing; an ASR-satisfying input is left alone
    assert np.allclose(cv.asr_project(p), p, atol=1e-15)
    # a charged structure: the sum becomes Q I, again by removing one tensor from every atom
    q = cv.asr_project(z, total_charge=-2.0)
    np.testing.assert_allclose(cv.acoustic_sum(q), -2.0 * np.eye(3), atol=1e-14)
    np.testing.assert_allclose(z - q, np.broadcast_to((z.sum(0) + 2.0 * np.eye(3)) / 6,
                                                      z.shape), atol=1e-15)


def test_unit_constants_against_textbook_values():
    assert cv.THZ_TO_INVCM == pytest.approx(33.35641, rel=1e-6)
    assert cv.MEV_TO_INVCM == pytest.approx(8.065544, rel=1e-6)
    import ase.units

    assert cv.ASE_TIME_UNITS_PER_FS == pytest.approx(ase.units.fs)
    assert cv.ASE_TIME_UNITS_PER_FS == pytest.approx(0.098227, rel=1e-4)
