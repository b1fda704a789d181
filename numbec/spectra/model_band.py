"""Model-uncertainty band of an IR spectrum from dM/dt of posterior weight samples.

A kernel model's BECs are linear in its weights, and the (recalibrated) Bayesian posterior of
the weights is Gaussian (:mod:`numbec.models.uncertainty`). ``numbec.predict(...,
posterior_samples=S)`` streams ``dipole_derivative_samples`` (frame, sample, pol) e·Å/fs: dM/dt
of S weight vectors drawn from that posterior. The spectrum is quadratic in dM/dt, so its
distribution is not Gaussian; the band is taken from the spectra of the samples themselves:
each sample's series goes through exactly the estimator of
:func:`numbec.spectra.ir_spectrum` (same blocks, lag window, quantum correction, grid), and
per frequency the band reports the 16th and 84th percentiles and the standard deviation over
the samples.

What the band covers: the spread of spectra the model would give with weights it cannot tell
apart given its training data (the epistemic error of the regression, scaled by the
cross-validated variance scale). Not covered: the error of the representation that no
weight vector can fix beyond what the recalibration absorbs, the finite length of the
trajectory (that is the block standard error ``*_stderr``), and the reference method (DFT or
xTB) itself.
"""

from __future__ import annotations

import numpy as np

from numbec.spectra.quantum import correction_factor

__all__ = ["BAND_PERCENTILES", "band_statistics", "sample_spectra"]

#: Percentiles of the band (those of a normal distribution's mean -/+ one standard deviation).
BAND_PERCENTILES = (15.865525393145708, 84.13447460685429)


def sample_spectra(samples, block_spectrum, *, blocks, prefactor, temperature,
                   quantum_correction, transfer=None) -> np.ndarray:
    """Spectrum of every sample, averaged over ``blocks`` like the main spectrum.

    samples : (S, n_frames, 3) or (S, Q, n_frames, 3) float64 e·Å/fs (Q series per sample,
    e.g. the total and its species parts). block_spectrum : function of one block of one
    sample ((n_block, 3) or (Q, n_block, 3)) returning ``(omega, spectrum)``, spectrum
    (n_frequencies,) or (R, n_frequencies): the estimator of the main spectrum
    (``numbec.spectra.ir._block_spectra``). prefactor : cross-section prefactor (cm^2 per
    (e·Å/fs)^2·fs). transfer : optional function of omega dividing the spectrum
    (central-difference correction). Returns (S, n_frequencies) or (S, R, n_frequencies)
    float64, cm^2.
    """
    samples = np.asarray(samples, dtype=np.float64)
    block_len = samples.shape[-2] // blocks
    total = None
    for b in range(blocks):
        rows = []
        for s in range(samples.shape[0]):
            omega, spectrum = block_spectrum(
                samples[s, ..., b * block_len:(b + 1) * block_len, :])
            rows.append(spectrum)
        spectra = prefactor * correction_factor(quantum_correction, omega,
                                                temperature) * np.array(rows)
        if transfer is not None:
            spectra = spectra / transfer(omega)
        total = spectra if total is None else total + spectra
    return total / blocks


def band_statistics(spectra) -> dict:
    """Per frequency over the samples (axis 0 of (S, ...) spectra): ``p16``, ``p84``
    (:data:`BAND_PERCENTILES`) and ``std`` (sample standard deviation, ddof 1; 0 for a single
    sample), each of the shape of one sample's spectra."""
    spectra = np.asarray(spectra, dtype=np.float64)
    lo, hi = np.percentile(spectra, BAND_PERCENTILES, axis=0)
    std = spectra.std(axis=0, ddof=1) if spectra.shape[0] > 1 else np.zeros(spectra.shape[1:])
    return {"p16": lo, "p84": hi, "std": std}
