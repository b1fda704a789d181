"""The whole dielectric function from its imaginary part: Kramers-Kronig and optics.

:func:`dielectric_function` takes a spectrum with ``imag_dielectric`` ``eps''(nu~)`` on a
``frequency`` grid in cm^-1 (from :func:`numbec.ir_spectrum` with a volume,
:func:`numbec.spectra.harmonic_spectrum`, or a reference curve of
:func:`numbec.spectra.read_reference`) and a user-given high-frequency (electronic)
dielectric constant ``eps_inf``, and adds

``eps'(nu~) = eps_inf + (2/pi) P integral_0^inf nu' eps''(nu') / (nu'^2 - nu~^2) d(nu')``

(Kramers-Kronig, principal value), the static ``eps0 = eps'(0)``, the complex refractive
index ``n + i k = sqrt(eps' + i eps'')`` (``k >= 0``), the absorption coefficient
``alpha = 4 pi nu~ k`` (cm^-1) and the normal-incidence reflectivity from vacuum
``R = |(n + i k - 1) / (n + i k + 1)|^2``.

Numerics: ``eps''`` is taken piecewise linear between the grid points (the grid need
not be uniform) and the principal-value integral is done exactly segment by segment;
``eps''(0) = 0`` (it is odd in frequency; ``ir_spectrum`` stores NaN there) and
``eps'' = 0`` above the last grid point: cut the grid where the spectrum has decayed.
``imag_dielectric`` of numbec is the orientational average ``Tr(eps'')/3``, so ``eps_inf``
is a number (a (3, 3) tensor is reduced to ``Tr/3``) and every result is the
orientational average of a powder; the reflectivity of a powder average is an
approximation for anisotropic crystals (exact for cubic ones).
"""

from __future__ import annotations

import numpy as np

__all__ = ["dielectric_function", "kramers_kronig_real", "optical_constants"]

#: Output points per block of the O(M^2) principal-value sum (bounds memory to ~50 MB).
_BLOCK = 512


def kramers_kronig_real(frequency, imag, at=None) -> np.ndarray:
    """``(2/pi) P integral_0^W nu' eps''(nu') / (nu'^2 - nu^2) d(nu')`` for piecewise-linear eps''.

    Parameters
    ----------
    frequency : (M,) float, cm^-1 (any unit: the result is dimensionless), increasing,
        >= 0. A grid that does not start at 0 is extended to 0 with ``eps''(0) = 0``.
    imag : (M,) float, ``eps''`` on ``frequency``; NaN at frequency 0 is read as 0.
    at : (K,) float, optional
        Frequencies of the result; default ``frequency``.

    Returns
    -------
    (K,) float64: ``eps'(nu) - eps_inf``.
    """
    w = np.asarray(frequency, dtype=np.float64)
    f = np.asarray(imag, dtype=np.float64).copy()
    if w.ndim != 1 or w.shape != f.shape or w.size < 2:
        raise ValueError(f"frequency {w.shape} and eps'' {f.shape} must be 1-d of equal length "
                         ">= 2")
    if w[0] < 0 or np.any(np.diff(w) <= 0):
        raise ValueError("the frequency grid must be increasing and start at >= 0")
    x = w.copy() if at is None else np.asarray(at, dtype=np.float64)
    f[(w == 0) & np.isnan(f)] = 0.0
    bad = ~np.isfinite(f)
    if bad.any():
        raise ValueError(f"eps'' is NaN or inf at {w[np.argmax(bad)]:g} cm^-1")
    if w[0] > 0:
        w, f = np.concatenate([[0.0], w]), np.concatenate([[0.0], f])
    f[0] = 0.0  # eps'' is odd in frequency
    # On segment k, eps'' = alpha_k + slope_k nu', and
    # P integral_a^b (alpha + slope nu') / (nu' - c)
    #     = slope (b - a) + (alpha + slope c) [ln|nu' - c|]_a^b.
    # Summed over segments by parts, the logarithms are needed at the nodes only:
    # sum_n ln|w_n - c| (A_n + c B_n). The coefficient of the node where w_n = c is
    # eps''(c) - eps''(c) = 0 (continuity), so the singular ln|0| is set to 0.
    slope = np.diff(f) / np.diff(w)
    alpha = f[:-1] - slope * w[:-1]
    pad = np.zeros(1)
    coef_a = np.concatenate([pad, alpha]) - np.concatenate([alpha, pad])
    coef_b = np.concatenate([pad, slope]) - np.concatenate([slope, pad])
    out = np.empty(x.size)
    for start in range(0, x.size, _BLOCK):
        c = x[start:start + _BLOCK]
        total = np.zeros(c.size)
        for cc in (c, -c):  # nu'/(nu'^2 - nu^2) = (1/(nu' - nu) + 1/(nu' + nu)) / 2
            dist = np.abs(w[None, :] - cc[:, None])
            dist[dist == 0.0] = 1.0
            logs = np.log(dist)
            total += logs @ coef_a + cc * (logs @ coef_b)
        out[start:start + _BLOCK] = (total + 2.0 * (f[-1] - f[0])) / np.pi
    return out


def optical_constants(real, imag):
    """``n, k, R`` from ``eps' + i eps''`` (arrays of equal shape).

    ``n + i k = sqrt(eps)`` on the branch with ``k >= 0``; ``R = |(n+ik-1)/(n+ik+1)|^2`` the
    normal-incidence reflectivity from vacuum.
    """
    eps = np.asarray(real, dtype=np.float64) + 1j * np.asarray(imag, dtype=np.float64)
    root = np.sqrt(eps)
    root = np.where(root.imag < 0, -root, root)
    reflectivity = np.abs((root - 1.0) / (root + 1.0)) ** 2
    return root.real, root.imag, reflectivity


def _isotropic(eps_inf):
    value = np.asarray(eps_inf, dtype=np.float64)
    if value.shape == (3, 3):
        value = np.trace(value) / 3.0
    elif value.shape not in ((), (1,)):
        raise ValueError(f"eps_inf must be a number or a (3, 3) tensor, got shape {value.shape}")
    value = float(value.reshape(()))
    if not (np.isfinite(value) and value >= 1.0):
        raise ValueError(f"eps_inf must be a finite number >= 1 (the electronic dielectric "
                         f"constant), got {value}")
    return value


def dielectric_function(spectrum, eps_inf, variable="imag_dielectric", min_frequency=None):
    """Add eps', eps0, n, k, alpha and R to a spectrum that has ``eps''``.

    Parameters
    ----------
    spectrum : xarray.Dataset
        With ``variable`` (dimensionless ``eps''``) on a coordinate ``frequency`` (cm^-1),
        e.g. :func:`numbec.ir_spectrum` of a periodic system (with a volume).
    eps_inf : float or (3, 3) float
        High-frequency (clamped-ion, electronic) dielectric constant; a tensor is reduced to
        ``Tr/3`` (the ``eps''`` of numbec is the orientational average).
    variable : str
        Name of ``eps''`` in ``spectrum``.
    min_frequency : float, cm^-1, optional
        ``eps''`` below it is taken as 0 for the transform. For MD spectra: the windowed
        ``<Mdot(0) . Mdot(t)>`` of a finite correlation time has a non-zero transform at
        zero frequency, which ``eps'' = c alpha n / omega`` turns into a ``1/nu`` tail that
        the static limit weights with another ``1/nu`` (NaCl, 4 ps: +0.11 in eps0 from below
        50 cm^-1; 8 ps: +0.014). Put it below the lowest IR-active mode. The output
        ``imag_dielectric`` is not changed.

    Returns
    -------
    xarray.Dataset
        A copy of ``spectrum`` with, on ``frequency``: ``real_dielectric`` eps' (1),
        ``refractive_index`` n (1), ``extinction_coefficient`` k (1),
        ``absorption_coefficient`` alpha = 4 pi nu~ k (cm^-1; the ``absorption`` of
        ``ir_spectrum`` is alpha*n), ``reflectivity`` R (1, normal incidence from vacuum);
        attrs ``eps_inf``, ``static_dielectric`` (eps0 = eps'(0)), ``kramers_kronig``
        (how it was done).
    """
    import xarray as xr

    if not isinstance(spectrum, xr.Dataset):
        raise TypeError(f"spectrum must be an xarray.Dataset, got {type(spectrum).__name__}")
    if variable not in spectrum:
        hint = (" (ir_spectrum gives eps'' only with a volume: a periodic cell, or "
                "volume=...)" if variable == "imag_dielectric" else "")
        raise ValueError(f"the spectrum has no {variable!r}{hint}; it has "
                         f"{sorted(spectrum.data_vars)}")
    if spectrum.attrs.get("lineshape") == "lorentzian":
        import warnings

        warnings.warn("the spectrum has Lorentzian lines (symmetric in alpha*n), whose eps'' "
                      "grows as 1/nu towards zero frequency: eps0 and the low-frequency eps' "
                      "come out too large; harmonic_spectrum's default lineshape='oscillator' "
                      "has the damped oscillator's eps''", UserWarning, stacklevel=2)
    eps_inf = _isotropic(eps_inf)
    freq = np.asarray(spectrum["frequency"].values, dtype=np.float64)
    imag = np.asarray(spectrum[variable].values, dtype=np.float64)
    if imag.shape != freq.shape:
        raise ValueError(f"{variable!r} must be 1-d on 'frequency', got dims "
                         f"{spectrum[variable].dims}")
    source = imag
    if min_frequency is not None:
        source = np.where(freq < float(min_frequency), 0.0, imag)
    real = eps_inf + kramers_kronig_real(freq, source)
    static = eps_inf + float(kramers_kronig_real(freq, source, at=[0.0])[0])
    imag = np.where((freq == 0) & np.isnan(imag), 0.0, imag)
    n, k, reflectivity = optical_constants(real, imag)
    out = spectrum.copy()
    out["real_dielectric"] = ("frequency", real, {"units": "1", "long_name": "eps'"})
    out["refractive_index"] = ("frequency", n, {"units": "1", "long_name": "n"})
    out["extinction_coefficient"] = ("frequency", k, {"units": "1", "long_name": "k"})
    out["absorption_coefficient"] = ("frequency", 4.0 * np.pi * freq * k, {
        "units": "cm^-1", "long_name": "alpha = 4 pi nu~ k"})
    out["reflectivity"] = ("frequency", reflectivity, {
        "units": "1", "long_name": "normal-incidence reflectivity from vacuum"})
    out.attrs.update(
        eps_inf=eps_inf, static_dielectric=static,
        min_frequency=float("nan") if min_frequency is None else float(min_frequency),
        kramers_kronig=("piecewise-linear eps'' from 0 to "
                        f"{freq[-1]:g} cm^-1, eps'' = 0 above; principal value exact"),
    )
    return out
