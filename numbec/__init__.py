"""numbec: machine-learned Born effective charges and infrared spectra.

The public API is re-exported here and imported lazily, so ``import numbec`` stays
fast and Numba compiles only what a program actually uses.

Data in        :func:`read_bec`, :func:`write_bec`, :func:`convert_trajectory`,
               :func:`open_trajectory`
Models         :class:`MonopoleModel`, :class:`DipoleModel`, :class:`CombinedModel`,
               :func:`load_model`, :func:`evaluate`
Streaming      :func:`predict`
Spectra        :func:`ir_spectrum`
Next frames    :func:`select`, :func:`active_learning`

The BEC convention everywhere: ``Z[a, i, j] = dP_i / dr_{a,j}`` in e (see
:mod:`numbec.conventions`).
"""

from __future__ import annotations

# the thread policy: sets OMP_WAIT_POLICY before any numbec kernel starts the OpenMP runtime
import numbec.parallel  # noqa: F401, E402
from numbec._lazy import lazy_exports

__version__ = "0.1.0.dev0"

_LAZY = {
    "read_bec": "numbec.io.bec",
    "write_bec": "numbec.io.bec",
    "convert_trajectory": "numbec.io.trajectory",
    "open_trajectory": "numbec.io.trajectory",
    "MonopoleModel": "numbec.models",
    "DipoleModel": "numbec.models",
    "CombinedModel": "numbec.models",
    "SpeciesMeanModel": "numbec.models",
    "FixedBECModel": "numbec.models",
    "load_model": "numbec.models",
    "evaluate": "numbec.models",
    "predict": "numbec.stream",
    "ir_spectrum": "numbec.spectra",
    "select": "numbec.selection",
    "active_learning": "numbec.learning_loop",
}

__all__ = sorted(_LAZY) + ["__version__"]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
