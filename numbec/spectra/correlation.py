"""Correlation functions and their windowed cosine transforms (the numerics of IR spectra).

Index conventions
-----------------
A time series is an array ``x[n, c]`` of ``n`` frames (spacing ``dt`` fs) and ``c``
Cartesian components. Its correlation with ``y`` at lag ``k >= 0`` is

``C_xy[k] = 1 / (n - k) * sum_{t=0}^{n-k-1} sum_c x[t, c] y[t + k, c]``

(the *unbiased* estimator: every lag is an average over the ``n - k`` time origins that
exist). It is computed by FFT with zero padding to at least ``2 n`` points, so the
circular FFT correlation equals the linear one.

The spectrum of an even correlation function ``g`` (an autocorrelation, or the symmetric
sum ``C_xy + C_yx`` of a cross term) is

``S(omega) = integral dt exp(-i omega t) g(t)``
``         = dt * (g[0] + 2 sum_{k>=1} w[k] g[k] cos(omega k dt))``

with a lag window ``w`` (``w[0] = 1``, tapering to 0 at the correlation time). It is
evaluated on the grid ``omega_j = 2 pi j / (P dt)`` by one real FFT of length ``P``
(``P`` = ``zero_padding`` times the number of lags, rounded up to a fast FFT length).

That estimate can dip below zero for real data: the unbiased ``C`` is not a
positive-definite sequence, and the transforms of these windows have negative side lobes.
The windows of :data:`NON_NEGATIVE_WINDOWS` are computed differently
(:func:`segment_spectra`, Welch's method): the mean over half-overlapping segments of
``T`` frames of ``|FFT(h x)|^2 dt / sum h^2``, with ``h`` a taper of ``T`` points. Each
term is a squared modulus, so the spectrum is ``>= 0`` for any data; for stationary data
its expectation is the lag-window formula above with ``w`` the normalised autocorrelation
of ``h`` (:func:`lag_window` gives that ``w``), and the band areas are those of ``w[0] = 1``
(docs/method.md#ir-spectrum-from-a-trajectory).
"""

from __future__ import annotations

import numpy as np
from scipy import fft as _fft

#: Lag windows accepted by :func:`lag_window`; the first is the default.
WINDOWS = ("parzen", "hann", "blackman", "gaussian", "cos2", "none")
#: Windows computed by :func:`segment_spectra`: spectra >= 0 for any data; their taper.
NON_NEGATIVE_WINDOWS = ("parzen",)


def lag_window(name: str, n_lags: int) -> np.ndarray:
    """One-sided lag window ``w[k]``, ``k = 0 .. n_lags - 1``, float64, ``w[0] = 1``.

    With ``s = k / n_lags`` (0 at lag 0, 1 at the correlation time):

    ``"parzen"``    the autocorrelation of a discrete triangle of ``n_lags`` points
                    (:func:`taper`), normalised to ``w[0] = 1`` (the discrete Parzen
                    window, a cubic B-spline in ``s``): its transform is the squared
                    transform of the triangle, ``>= 0``, side lobes falling as ``omega^-4``
    ``"hann"``      ``(1 + cos(pi s)) / 2`` (the right half of a Hann window of width 2 T)
    ``"blackman"``  ``0.42 + 0.5 cos(pi s) + 0.08 cos(2 pi s)``
    ``"gaussian"``  ``exp(-(3 s)^2 / 2)`` (standard deviation T/3; 0.011 at T, truncated)
    ``"cos2"``      flat (1) for ``s < 1/2``, then ``cos^2(pi (s - 1/2))`` down to 0 at T:
                    a cosine-squared taper of the last half (sharper peaks than Hann,
                    more side lobes)
    ``"none"``      1 (the correlation is simply truncated at T; sinc side lobes)
    """
    if name not in WINDOWS:
        raise ValueError(f"unknown window {name!r}; choose one of {', '.join(WINDOWS)}")
    n_lags = int(n_lags)
    if n_lags < 1:
        raise ValueError(f"the window needs at least one lag, got {n_lags}")
    s = np.arange(n_lags, dtype=np.float64) / n_lags
    if name in NON_NEGATIVE_WINDOWS:
        size = _fft.next_fast_len(2 * n_lags, real=True)
        power = np.abs(_fft.rfft(taper(name, n_lags), n=size)) ** 2
        w = _fft.irfft(power, n=size)[:n_lags]
        return np.clip(w / w[0], 0.0, None)  # the true values are >= 0; clip FFT rounding
    if name == "hann":
        return 0.5 * (1.0 + np.cos(np.pi * s))
    if name == "blackman":
        return 0.42 + 0.5 * np.cos(np.pi * s) + 0.08 * np.cos(2.0 * np.pi * s)
    if name == "gaussian":
        return np.exp(-0.5 * (3.0 * s) ** 2)
    if name == "cos2":
        return np.where(s < 0.5, 1.0, np.cos(np.pi * (s - 0.5)) ** 2)
    return np.ones(n_lags)


def taper(name: str, n_points: int) -> np.ndarray:
    """Data taper ``h`` (n_points,) float64 of a window of :data:`NON_NEGATIVE_WINDOWS`:
    ``"parzen"``: the triangle ``min(t + 1, n_points - t)``."""
    if name not in NON_NEGATIVE_WINDOWS:
        raise ValueError(f"window {name!r} has no data taper; tapers exist for "
                         f"{', '.join(NON_NEGATIVE_WINDOWS)}")
    t = np.arange(int(n_points))
    return np.minimum(t + 1, n_points - t).astype(np.float64)


def segment_spectra(series, n_lags: int, dt: float, zero_padding: int,
                    window: str = "parzen"):
    """Cross-spectra of several vector time series by Welch's method (non-negative).

    Parameters
    ----------
    series : array, shape (S, n, c), float64
        ``S`` time series of ``n`` frames and ``c`` components each.
    n_lags : int
        Segment length ``T`` in frames (``2 <= n_lags <= n``); consecutive segments overlap
        by half (starts spread evenly over the block, so no frame is left out).
    dt : float
        Frame spacing (fs).
    zero_padding : int
        As :func:`cosine_transform`: the same transform length and frequency grid.
    window : str
        One of :data:`NON_NEGATIVE_WINDOWS` (its :func:`taper`).

    Returns
    -------
    omega : array, shape (P // 2 + 1,), float64, rad/fs (the grid of :func:`cosine_transform`).
    spectra : array, shape (S, S, P // 2 + 1), float64
        ``dt / sum h^2 * mean_segments Re sum_c conj(X_a,c) X_b,c``, ``X = FFT(h x)``, unit of
        ``x^2`` times fs: the diagonal is ``>= 0``; ``spectra[a, b] + spectra[b, a]`` is the
        transform of ``C_ab + C_ba`` (a symmetrised cross term).
    """
    x = np.asarray(series, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"series must be (S, n_frames, components), got shape {x.shape}")
    n = x.shape[1]
    n_lags = int(n_lags)
    if not 2 <= n_lags <= n:
        raise ValueError(f"segment length {n_lags} must be between 2 and the {n} frames")
    zero_padding = int(zero_padding)
    if zero_padding < 1:
        raise ValueError(f"zero_padding must be an integer >= 1, got {zero_padding}")
    size = _fft.next_fast_len(max(2 * n_lags, zero_padding * n_lags), real=True)
    h = taper(window, n_lags)
    n_segments = 1 + int(np.ceil(2 * (n - n_lags) / n_lags))
    starts = np.round(np.linspace(0, n - n_lags, n_segments)).astype(np.int64)
    total = np.zeros((x.shape[0], x.shape[0], size // 2 + 1))
    for s in starts:
        f = _fft.rfft(x[:, s:s + n_lags] * h[None, :, None], n=size, axis=1)  # (S, F, c)
        total += np.einsum("afc,bfc->abf", f.conj(), f).real
    omega = 2.0 * np.pi * np.arange(size // 2 + 1) / (size * dt)
    return omega, total * (dt / (starts.size * float(h @ h)))


def correlations(series, n_lags: int) -> np.ndarray:
    """All auto- and cross-correlations of several vector time series (unbiased, by FFT).

    Parameters
    ----------
    series : array, shape (S, n, c), float64
        ``S`` time series of ``n`` frames and ``c`` components each.
    n_lags : int
        Number of lags ``k = 0 .. n_lags - 1`` to return (``<= n``).

    Returns
    -------
    array, shape (S, S, n_lags), float64
        ``C[a, b, k] = 1/(n - k) sum_t sum_c x_a[t, c] x_b[t + k, c]``.
    """
    x = np.asarray(series, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"series must be (S, n_frames, components), got shape {x.shape}")
    n = x.shape[1]
    if not 1 <= n_lags <= n:
        raise ValueError(f"n_lags = {n_lags} must be between 1 and the {n} frames")
    size = _fft.next_fast_len(2 * n, real=True)
    f = _fft.rfft(x, n=size, axis=1)  # (S, F, c)
    prod = np.einsum("afc,bfc->abf", f.conj(), f)
    raw = _fft.irfft(prod, n=size, axis=2)[:, :, :n_lags]
    return raw / (n - np.arange(n_lags))


def cosine_transform(g, dt: float, zero_padding: int):
    """Windowed spectrum of even correlation functions on a zero-padded frequency grid.

    Parameters
    ----------
    g : array, shape (..., L), float64
        Even correlation functions at lags ``0 .. L-1``, window already applied.
    dt : float
        Lag spacing (fs).
    zero_padding : int
        Grid refinement: the transform length is ``P >= zero_padding * L``, so the
        frequency spacing is ``1 / (P dt)`` (about ``1 / (zero_padding * T_corr)``).

    Returns
    -------
    omega : array, shape (P // 2 + 1,), float64
        Angular frequencies in rad/fs, ``2 pi j / (P dt)``.
    spectrum : array, shape (..., P // 2 + 1), float64
        ``dt * (g[0] + 2 sum_{k>=1} g[k] cos(omega k dt))``, unit of ``g`` times fs.
    """
    g = np.asarray(g, dtype=np.float64)
    n_lags = g.shape[-1]
    zero_padding = int(zero_padding)
    if zero_padding < 1:
        raise ValueError(f"zero_padding must be an integer >= 1, got {zero_padding}")
    size = _fft.next_fast_len(max(2 * n_lags, zero_padding * n_lags), real=True)
    re = _fft.rfft(g, n=size, axis=-1).real
    spectrum = dt * (2.0 * re - g[..., :1])
    omega = 2.0 * np.pi * np.arange(size // 2 + 1) / (size * dt)
    return omega, spectrum


def window_fwhm(name: str, n_lags: int, dt: float) -> float:
    """Full width at half maximum (rad/fs) of the spectral kernel of a lag window.

    The kernel is the transform of ``w`` (lags ``-T..T``); an undamped oscillation shows
    up as this kernel, so it is the effective resolution of the spectrum.
    """
    w = lag_window(name, n_lags)
    omega, kernel = cosine_transform(w, dt, zero_padding=64)
    half = 0.5 * kernel[0]
    below = np.nonzero(kernel < half)[0]
    if below.size == 0:  # pragma: no cover - only for absurdly short windows
        return float("nan")
    j = int(below[0])
    # linear interpolation between grid points j-1 and j
    frac = (kernel[j - 1] - half) / (kernel[j - 1] - kernel[j])
    return float(2.0 * (omega[j - 1] + frac * (omega[j] - omega[j - 1])))
