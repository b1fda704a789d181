"""Quantum corrections of classical IR spectra.

A classical trajectory gives the classical spectrum ``I_cl(omega)`` of the dipole. The
quantum absorption (SI) is

``alpha n = pi omega / (3 hbar c V eps0) (1 - exp(-x)) I_qm(omega)``,  ``x = hbar omega / (kB T)``,

with ``I(omega) = 1/(2 pi) integral dt exp(-i omega t) <M(0) . M(t)>`` and
``I_qm ~= Q(x) I_cl``. Written with the dipole *derivative*
(``omega^2 I_M = I_Mdot``) this is

``alpha n = 1 / (6 eps0 V c kB T) * F(x) * integral dt exp(-i omega t) <Mdot(0) . Mdot(t)>``

with ``F(x) = Q(x) (1 - exp(-x)) / x``:

==============  =========================  ====================================
correction      ``Q(x)``                   ``F(x)`` (factor applied here)
==============  =========================  ====================================
``harmonic``    ``x / (1 - exp(-x))``      ``1`` (exact for harmonic systems;
                                           identical to the classical limit)
``standard``    ``2 / (1 + exp(-x))``      ``tanh(x/2) / (x/2)``
``schofield``   ``exp(x / 2)``             ``sinh(x/2) / (x/2)``
``none``        ``1``                      ``(1 - exp(-x)) / x``
==============  =========================  ====================================

so ``harmonic`` (the default) is the formula of docs/method.md#ir-spectrum-from-a-trajectory.
Every correction needs the temperature.
"""

from __future__ import annotations

import numpy as np

from numbec.conventions import BOLTZMANN, FEMTOSECOND, HBAR

#: Names accepted by :func:`correction_factor`.
QUANTUM_CORRECTIONS = ("harmonic", "standard", "schofield", "none")


def correction_factor(name: str, omega, temperature: float) -> np.ndarray:
    """Factor ``F(x)`` multiplying the classical-limit spectrum (see the module docstring).

    Parameters
    ----------
    name : {"harmonic", "standard", "schofield", "none"}
    omega : array, float64, rad/fs
        Angular frequencies (>= 0).
    temperature : float, K

    Returns
    -------
    array like ``omega``, float64, dimensionless; ``F -> 1`` as ``omega -> 0``.
    """
    if name not in QUANTUM_CORRECTIONS:
        raise ValueError(
            f"unknown quantum correction {name!r}; choose one of {', '.join(QUANTUM_CORRECTIONS)}"
        )
    omega = np.asarray(omega, dtype=np.float64)
    if name == "harmonic":
        return np.ones_like(omega)
    if not (temperature and np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"quantum correction {name!r} needs a temperature > 0 K")
    x = HBAR * omega / FEMTOSECOND / (BOLTZMANN * float(temperature))
    half = 0.5 * x
    safe = np.where(half > 0, half, 1.0)
    if name == "standard":
        f = np.tanh(safe) / safe
    elif name == "schofield":
        f = np.sinh(np.minimum(safe, 700.0)) / safe
    else:  # none
        f = -np.expm1(-2.0 * safe) / (2.0 * safe)
    return np.where(half > 0, f, 1.0)
