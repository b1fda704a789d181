"""Shared test fixtures: where the reference data live.

Tests read first-principles reference data through the ``shared_data`` fixture. It is the
full reference data folder when there is one (``NUMBEC_SHARED_DATA``, else ``shared/data``
beside the repository) and otherwise ``tests/data``: small subsets of the MIT and BSD data
sets that ship with numbec (``tests/data/README.md``). A test that asks for a data set
which is not there -- the ZrO2 OUTCARs, which cannot be shipped -- is skipped with a reason
that says what the data are. With ``NUMBEC_REQUIRE_DATA=1`` (set by ``.ci/run`` through tox)
such a test fails instead: in CI a missing data file is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Licence-compatible subsets that ship with numbec (same layout as the full folder).
SHIPPED_DATA = REPO / "tests" / "data"

#: Environment variable that turns "data not found" skips into failures (CI).
REQUIRE_DATA_ENV = "NUMBEC_REQUIRE_DATA"

#: The data sets, by folder, and what they are (the text of a skip).
DATASETS = {
    "sio2_quartz_qe": "the alpha-quartz SiO2 QE Berry-phase BEC set (allegro-pol, MIT)",
    "batio3_qe": "the BaTiO3 QE Berry-phase BEC set (allegro-pol, MIT)",
    "phonopy_born": "the phonopy examples MgO, NaCl, SnO2, Al2O3 (BSD-3-Clause)",
    "zro2_vasp_dfpt": "the ZrO2 VASP DFPT OUTCARs (96 atoms, 119 structures; no licence "
                      "stated, so numbec cannot ship them)",
}

#: Frames of the shipped subsets (the full files have 201 and 59).
SHIPPED_FRAMES = {"sio2_quartz_qe/SiO2.xyz": 6, "batio3_qe/BaTiO3.xyz": 5}


def _full_data() -> Path:
    env = os.environ.get("NUMBEC_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


FULL_DATA = _full_data()
HAVE_FULL_DATA = FULL_DATA.is_dir()
DATA = FULL_DATA if HAVE_FULL_DATA else SHIPPED_DATA


def data_required() -> bool:
    """True when missing reference data must fail the tests (``NUMBEC_REQUIRE_DATA=1``)."""
    return os.environ.get(REQUIRE_DATA_ENV, "").strip().lower() not in ("", "0", "no", "false")


def missing_data(what: str) -> None:
    """Skip the calling test for want of ``what`` -- or fail it under ``NUMBEC_REQUIRE_DATA``."""
    message = (f"needs {what}, not found in {DATA} (set NUMBEC_SHARED_DATA to the full "
               f"reference data folder)")
    if data_required():
        pytest.fail(f"{message}; {REQUIRE_DATA_ENV} is set, so this is an error",
                    pytrace=False)
    pytest.skip(message)


def frames_expected(rel: str, full: int) -> int:
    """Frames of the reference file ``rel`` in the data in use: ``full``, or the subset's."""
    return full if HAVE_FULL_DATA else SHIPPED_FRAMES[rel]


class _DataFolder(type(Path())):
    """The data folder; ``folder / "zro2_vasp_dfpt"`` skips the test when that set is absent."""

    def __truediv__(self, key):
        child = super().__truediv__(key)
        if Path(self) == DATA:
            dataset = Path(key).parts[0]
            if not (DATA / dataset).exists():
                missing_data(DATASETS.get(dataset, f"reference data {dataset!r}"))
        return child


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The reference data folder: the full one when available, else the shipped subsets."""
    return _DataFolder(DATA)


def pytest_report_header(config):
    if HAVE_FULL_DATA:
        return f"numbec reference data: {FULL_DATA} (full)"
    return (f"numbec reference data: tests/data (shipped subsets; tests needing "
            f"{', '.join(k for k in DATASETS if not (SHIPPED_DATA / k).exists())} are skipped"
            f"{'' if not data_required() else ' -> errors, ' + REQUIRE_DATA_ENV + ' is set'})")
