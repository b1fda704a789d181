"""The scale factors a model's recalibration puts on its predictive variance.

``bec_std^2 = s phi^T Sigma phi + s_v sigma_v^2 + c r_frame`` (docs/models.md,
"Calibration and recalibration"): :func:`variance_scale` ``s``, :func:`noise_scale` ``s_v``,
:func:`residual_scale` ``c``, and :func:`sample_scale` for the posterior samples of the
spectrum's band. They are learned by :func:`numbec.models.uncertainty.recalibrate` and
saved with the model; a model never recalibrated has ``s = s_v = 1``, ``c = 0``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["noise_scale", "recalibrated", "residual_scale", "sample_scale",
           "variance_scale"]


def variance_scale(model) -> float:
    """The model's recalibration factor of the predictive variance (1 if never recalibrated)."""
    return float(getattr(model, "variance_scale", 1.0) or 1.0)


def noise_scale(model) -> float:
    """The model's factor of the noise variance ``sigma_v^2`` in the predictive variance:
    ``model.noise_scale`` when the recalibration set it apart (``method="two_part"``), else
    :func:`variance_scale` (one scale of the whole variance, as in files without it)."""
    value = getattr(model, "noise_scale", None)
    return variance_scale(model) if value is None else float(value)


def sample_scale(model) -> float:
    """Scale of the weight covariance for posterior samples: ``weight_scale`` of the model's
    cross-validation (saved in ``training["variance_scale_fit"]``) when it has one, else
    :func:`variance_scale`. The samples carry no per-component noise, so the weight
    posterior alone has to account for the held-out error; with the noise term the spectrum's
    band under-covered the exact spectrum (docs/benchmarks_models.md)."""
    fit = (getattr(model, "training", None) or {}).get("variance_scale_fit") or {}
    value = fit.get("weight_scale")
    return float(value) if value and np.isfinite(value) and value > 0 else variance_scale(model)


def residual_scale(model) -> float:
    """The model's factor ``c`` (e^2) of the frame's mean Nyström residual in the predictive
    variance (``method="residual"``; 0, no such term, for every other method and for files
    without it): ``bec_std^2 = s phi^T Sigma phi + s_v sigma_v^2 + c r_frame``."""
    return float(getattr(model, "residual_scale", 0.0) or 0.0)


def recalibrated(model) -> bool:
    """Whether the model's predictive variance was recalibrated: it holds the record of a
    cross-validated fit (``training["variance_scale_fit"]``) or any scale other than that of
    a model never recalibrated (``s = 1``, no separate ``s_v``, ``c = 0``)."""
    fit = (getattr(model, "training", None) or {}).get("variance_scale_fit")
    return (isinstance(fit, dict) or variance_scale(model) != 1.0
            or getattr(model, "noise_scale", None) is not None or residual_scale(model) != 0.0)
