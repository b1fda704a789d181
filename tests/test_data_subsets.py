"""The reference data shipped in ``tests/data`` and the rule for data that are missing."""

from __future__ import annotations

import pytest
from conftest import (
    DATASETS,
    FULL_DATA,
    HAVE_FULL_DATA,
    SHIPPED_DATA,
    SHIPPED_FRAMES,
    missing_data,
)


def test_every_shipped_data_set_has_its_licence():
    shipped = [d for d in SHIPPED_DATA.iterdir() if d.is_dir() and d.name in DATASETS]
    assert {d.name for d in shipped} == {"sio2_quartz_qe", "batio3_qe", "phonopy_born"}
    for folder in shipped:
        licence = (folder / "LICENSE").read_text()
        assert "MIT License" in licence or "Redistribution and use" in licence, folder
    assert "zro2" not in " ".join(str(p) for p in SHIPPED_DATA.rglob("*")).lower()
    readme = (SHIPPED_DATA / "README.md").read_text()
    assert "Nat. Commun. 16, 4031" in readme and "phonopy" in readme


@pytest.mark.parametrize("rel", sorted(SHIPPED_FRAMES))
def test_shipped_subsets_are_the_first_frames_unchanged(rel):
    """The subsets are cut, never edited: byte-identical to the head of the full file."""
    text = (SHIPPED_DATA / rel).read_text()
    lines = text.splitlines()
    frames, k = 0, 0
    while k < len(lines):
        k += int(lines[k]) + 2
        frames += 1
    assert frames == SHIPPED_FRAMES[rel]
    if HAVE_FULL_DATA:  # (a fresh clone has only the subsets: nothing to compare with)
        assert (FULL_DATA / rel).read_text().startswith(text)


def test_missing_data_skips_with_what_it_is_or_fails_in_ci(monkeypatch):
    monkeypatch.delenv("NUMBEC_REQUIRE_DATA", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no licence stated"):
        missing_data(DATASETS["zro2_vasp_dfpt"])
    monkeypatch.setenv("NUMBEC_REQUIRE_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match="NUMBEC_REQUIRE_DATA is set"):
        missing_data(DATASETS["zro2_vasp_dfpt"])


def test_an_absent_data_set_skips_the_test_that_asks_for_it(shared_data, monkeypatch):
    monkeypatch.delenv("NUMBEC_REQUIRE_DATA", raising=False)
    with pytest.raises(pytest.skip.Exception, match="nonexistent_set"):
        shared_data / "nonexistent_set" / "file"
    assert (shared_data / "phonopy_born" / "NaCl" / "BORN").is_file()
