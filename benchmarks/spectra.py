"""Benchmark of numbec.ir_spectrum: wall time vs trajectory length, and vs a direct sum.

Usage::

    python benchmarks/spectra.py [--quick]

Prints a markdown table. ``ir_spectrum`` computes the unbiased autocorrelation of dM/dt
by FFT (O(n log n) per block) and one zero-padded cosine transform; the direct reference
sums ``C[k] = 1/(n-k) sum_t Mdot(t).Mdot(t+k)`` lag by lag with ``numpy.dot``
(O(n L), L = number of lags) and applies the same window and transform. Both give the same
spectrum (max relative difference printed). Data: 3 damped oscillators, dt = 0.5 fs,
correlation time 2 ps (L = 4000 lags), Hann window, one block and 10 blocks; and the default
Parzen window (Welch segments, one FFT per half-overlapping segment), one block.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import numbec
from numbec.spectra.correlation import cosine_transform, lag_window
from numbec.spectra.ir import cross_section_prefactor

DT = 0.5
T_CORR = 2000.0


def signal(n, seed=0):
    rng = np.random.default_rng(seed)
    omega = 2 * np.pi * np.fft.rfftfreq(n, DT)
    out = np.zeros((n, 3))
    for nu, gamma in ((400.0, 30.0), (1100.0, 20.0), (3400.0, 60.0)):
        w0, g = nu * 1.8836515673e-4, gamma * 1.8836515673e-4  # cm^-1 -> rad/fs
        psd = 2 * g * omega**2 / ((w0**2 - omega**2) ** 2 + g**2 * omega**2)
        out += np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * np.sqrt(psd / DT), n)[
            :, None] * rng.normal(size=3)
    return out


def direct(mdot, n_lags):
    n = mdot.shape[0]
    c = np.array([np.dot(mdot[: n - k].ravel(), mdot[k:].ravel()) / (n - k)
                  for k in range(n_lags)])
    return cosine_transform(c * lag_window("hann", n_lags), DT, 8)[1]


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = [100_000] if args.quick else [100_000, 1_000_000, 4_000_000]
    n_lags = int(T_CORR / DT)
    kwargs = dict(timestep=DT, temperature=300.0, volume=1000.0, correlation_time=T_CORR,
                  window="hann")
    parzen = {**kwargs, "window": "parzen"}
    numbec.ir_spectrum(signal(10_000), **kwargs)  # warm-up (imports)
    print("| frames | simulated time | ir_spectrum (1 block) | ir_spectrum (10 blocks) "
          "| parzen (1 block) | direct lag sum | direct / numbec | max rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
    for n in sizes:
        mdot = signal(n)
        t1, s = best(lambda m=mdot: numbec.ir_spectrum(m, **kwargs), 3)
        t10, _ = best(lambda m=mdot: numbec.ir_spectrum(m, blocks=10, **kwargs), 3)
        tp, _ = best(lambda m=mdot: numbec.ir_spectrum(m, **parzen), 3)
        if n <= 100_000:
            td, ref = best(lambda m=mdot: direct(m, n_lags), 1)
            sigma = s.cross_section.values
            ref = cross_section_prefactor(300.0) * ref  # harmonic correction: factor 1
            diff = np.abs(ref - sigma).max() / sigma.max()
            direct_cols = f"{td:.3f} s | {td / t1:.0f}x | {diff:.1e}"
        else:
            direct_cols = "- | - | -"
        print(f"| {n:,} | {n * DT / 1000:g} ps | {t1:.3f} s | {t10:.3f} s | {tp:.3f} s "
              f"| {direct_cols} |")


if __name__ == "__main__":
    main()
