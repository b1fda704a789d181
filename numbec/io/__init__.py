"""Data in and out: BEC files (:func:`read_bec`, :func:`write_bec`) and the chunked
Zarr trajectory store (:func:`convert_trajectory`, :func:`open_trajectory`).

BECs are always returned in the canonical layout ``Z[a, i, j] = dP_i/dr_{a,j}``
(e; row = polarisation) of :mod:`numbec.conventions`.
"""

from __future__ import annotations

from numbec._lazy import lazy_exports

_LAZY = {
    "read_bec": "numbec.io.bec",
    "write_bec": "numbec.io.bec",
    "detect_format": "numbec.io.bec",
    "convert_trajectory": "numbec.io.trajectory",
    "open_trajectory": "numbec.io.trajectory",
    "velocities_from_positions": "numbec.io.trajectory",
    "trajectory_summary": "numbec.io.trajectory",
    "example_file": "numbec.io._files",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
