"""Infrared spectra: from dM/dt time series (MD) and from harmonic phonons.

:func:`ir_spectrum`           windowed FFT of <Mdot(0) . Mdot(t)>, absolute units
                              (docs/method.md#ir-spectrum-from-a-trajectory)
:func:`integrated_intensity`  band integrals (km/mol or cm^-2)
:func:`spectral_peaks`        refined peak positions
:func:`harmonic_ir`           phonon route: mode charges, intensities, broadened sticks
:func:`dielectric_function`   eps' (Kramers-Kronig), eps0, n + ik, reflectivity from eps''
:func:`read_reference`        reference spectra: QE IR tables, eps'' / eps' curves, numbec CSV

See ``docs/spectra.md``. phonopy and matplotlib are imported only where needed.
"""

from __future__ import annotations

from numbec.spectra.correlation import WINDOWS, lag_window
from numbec.spectra.dielectric import dielectric_function
from numbec.spectra.harmonic import harmonic_ir, harmonic_spectrum, mode_effective_charges
from numbec.spectra.ir import integrated_intensity, ir_spectrum, spectral_peaks
from numbec.spectra.quantum import QUANTUM_CORRECTIONS
from numbec.spectra.reference import read_reference

__all__ = [
    "QUANTUM_CORRECTIONS",
    "WINDOWS",
    "dielectric_function",
    "harmonic_ir",
    "harmonic_spectrum",
    "integrated_intensity",
    "ir_spectrum",
    "lag_window",
    "mode_effective_charges",
    "read_reference",
    "spectral_peaks",
]
