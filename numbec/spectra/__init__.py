"""Infrared spectra: from dM/dt time series (MD) and from harmonic phonons.

:func:`ir_spectrum`           windowed FFT of <Mdot(0) . Mdot(t)>, absolute units (method.md §8)
:func:`integrated_intensity`  band integrals (km/mol or cm^-2)

See ``docs/spectra.md``. phonopy and matplotlib are imported only where needed.
"""

from __future__ import annotations

from numbec.spectra.correlation import WINDOWS, lag_window
from numbec.spectra.ir import integrated_intensity, ir_spectrum
from numbec.spectra.quantum import QUANTUM_CORRECTIONS

__all__ = [
    "QUANTUM_CORRECTIONS",
    "WINDOWS",
    "integrated_intensity",
    "ir_spectrum",
    "lag_window",
]
