"""Uncertainty of the kernel BEC models: calibration, recalibration, and a low-rank posterior.

The kernel models are linear in their weights ``w`` (C,): the BECs of a structure are
``Z = Z0 + Phi w`` with ``Phi`` (N*9, C) the design rows and ``Z0`` the baseline charges. The
Bayesian regression gives a Gaussian posterior ``w ~ N(w_mean, Sigma)`` (docs/method.md,
"Bayesian regression"), hence the predictive variance of a BEC component
``phi^T Sigma phi + sigma_v^2`` and, for any weight vector ``u``, the BECs ``Phi u`` of "a model
with weights u" through the same adjoint channels as a plain prediction.

This module holds

- :func:`calibration_metrics`: coverage of the nominal 68 % / 95 % intervals, Gaussian negative
  log likelihood and the rank correlation between each frame's predicted uncertainty and its
  actual error;
- :func:`fit_variance_scale` / :func:`recalibrate`: a K-fold cross-validated scale ``s`` of the
  predictive variance learned from the training frames only (``Var -> s Var``; by default the
  two-part scale ``s phi^T Sigma phi + s_v sigma_v^2`` whose held-out 95 % interval holds
  95 % of the held-out errors), stored in the model file (``variance_scale``, ``noise_scale``;
  absent in older files, then 1 and the whole variance scaled alike);
  with ``method="residual"`` also a variance term ``c r_frame`` that grows with the frame's
  mean Nyström residual against the sparse points (``residual_scale``; absent: 0);
- :class:`PosteriorFactor` / :func:`posterior_factor`: ``Sigma ~ L L^T`` with ``L`` (C, K) the
  leading directions of the posterior covariance in the metric of the training design and
  random probes of the rest, so that ``phi^T L L^T phi`` estimates ``phi^T Sigma phi`` without
  bias for every row;
- :func:`direction_becs`: the BECs ``Phi u_k`` of several weight vectors from one descriptor
  pass (extra adjoint channels);
- :func:`predict_uncertainty`: per-atom ``bec_std`` and a per-frame uncertainty from the
  low-rank factor at a fraction of the cost of the design rows;
- :func:`sample_weights`: weight vectors drawn from the (recalibrated) posterior.

These are the entry points for uncertainty-driven selection (per-frame predicted uncertainty:
:func:`predict_uncertainty` ``["frame_std"]``; posterior covariance: :func:`posterior_factor`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from numbec._arrays import same_memory
from numbec.models.representation import mean_frame_residual, residual_variance
from numbec.models.variance_scales import (
    noise_scale,
    residual_scale,
    sample_scale,
    variance_scale,
)

__all__ = [
    "PosteriorFactor",
    "StreamedUncertaintyModel",
    "channel_outputs",
    "calibration_metrics",
    "coverage_intervals",
    "direction_becs",
    "exact_bec_std",
    "PROBE_SEED",
    "split_rank",
    "noise_scale",
    "coverage_scale",
    "fit_variance_scale",
    "held_out_errors",
    "posterior_factor",
    "predict_uncertainty",
    "recalibrate",
    "residual_scale",
    "residual_fit_inputs",
    "residual_scales",
    "residual_variance",
    "mean_frame_residual",
    "scales_from_held_out",
    "sample_scale",
    "sample_weights",
    "two_part_scales",
    "variance_scale",
]

#: Half widths of the central 68.27 % and 95 % intervals of a standard normal variable.
_Z68, _Z95 = 1.0, 1.959963984540054
_DIAG = (np.arange(3), np.arange(3))


# ---------------------------------------------------------------------- calibration metrics
def calibration_metrics(predicted, std, reference, frame_sizes=None) -> dict:
    """Calibration of predicted standard deviations against actual errors.

    Parameters
    ----------
    predicted, reference : array_like (M, 3, 3) float64, e
        Predicted and reference BECs of all atoms of all frames, concatenated.
    std : array_like (M, 3, 3) float64, e
        Predicted standard deviation of every component (``bec_std``), > 0.
    frame_sizes : sequence of int, optional
        Atoms per frame (summing to M), for the per-frame rank correlation.

    Returns
    -------
    dict
        ``coverage_68``, ``coverage_95``: fraction of components with ``|err| <= 1 std`` and
        ``|err| <= 1.96 std`` (nominal 0.6827 and 0.95); ``nll``: mean Gaussian negative log
        likelihood per component, ``0.5 ln(2 pi std^2) + err^2 / (2 std^2)`` (nats; lower is
        better); ``z_rms``: RMS of ``err / std`` (1 for a calibrated model); ``mean_std`` (e);
        with ``frame_sizes``: ``frame_rank_correlation``, Spearman's rho between each frame's
        predicted uncertainty ``sqrt(mean std^2)`` and its actual RMSE over its components
        (nan for fewer than 3 frames), ``n_frames``, and ``coverage_68_interval``,
        ``coverage_95_interval``: [low, high], the central 95 % range of each coverage over
        the test frames resampled (:func:`coverage_intervals`; [nan, nan] for
        fewer than 3 frames). The components of a frame share its errors, so the frame, not
        the component, is what is resampled, in blocks of consecutive frames (in the order
        given) as long as the frames' hits stay correlated, since neighbouring frames of one
        MD share their errors too: ``coverage_68_block``, ``coverage_95_block`` (int, frames
        per block, :func:`resampling_block`; None for fewer than 3 frames).
    """
    pred = np.asarray(predicted, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    if not (pred.shape == ref.shape == std.shape):
        raise ValueError(f"predicted {pred.shape}, std {std.shape} and reference {ref.shape} "
                         "must have the same shape")
    if not (np.isfinite(std).all() and (std > 0).all()):
        raise ValueError("std must be finite and > 0 everywhere")
    err = (pred - ref).reshape(pred.shape[0], -1) if pred.ndim > 1 else pred - ref
    sd = std.reshape(err.shape)
    z = np.abs(err) / sd
    out = {
        "coverage_68": float(np.mean(z <= _Z68)),
        "coverage_95": float(np.mean(z <= _Z95)),
        "nll": float(np.mean(0.5 * np.log(2.0 * np.pi * sd ** 2) + 0.5 * z ** 2)),
        "z_rms": float(np.sqrt(np.mean(z ** 2))),
        "mean_std": float(np.mean(sd)),
    }
    if frame_sizes is not None:
        sizes = np.asarray(frame_sizes, dtype=np.int64)
        if sizes.sum() != err.shape[0]:
            raise ValueError(f"frame sizes sum to {sizes.sum()}, not {err.shape[0]} atoms")
        edges = np.concatenate([[0], np.cumsum(sizes)])
        spans = list(zip(edges[:-1], edges[1:], strict=True))
        pred_u = np.array([np.sqrt(np.mean(sd[a:b] ** 2)) for a, b in spans])
        actual = np.array([np.sqrt(np.mean(err[a:b] ** 2)) for a, b in spans])
        out["frame_rank_correlation"] = _spearman(pred_u, actual)
        out["n_frames"] = int(sizes.size)
        counts = sizes * (z.shape[1] if z.ndim > 1 else 1)
        for name, half in (("coverage_68", _Z68), ("coverage_95", _Z95)):
            hits = np.array([np.count_nonzero(z[a:b] <= half) for a, b in spans])
            block = resampling_block(hits / np.maximum(counts, 1))
            out[name + "_interval"] = coverage_intervals(hits, counts, block=block)
            out[name + "_block"] = block if sizes.size >= 3 else None
    return out


#: Resamples and seed of :func:`coverage_intervals` (fixed: the same data give the same range).
BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED = 2000, 20261205


def coverage_intervals(hits, counts, level: float = 0.95, block: int | None = None) -> list:
    """Central ``level`` range of a coverage over frames resampled in blocks.

    Parameters
    ----------
    hits : (F,) int, the components of each frame inside their interval, frames in the
        order of the trajectory (or of the test set).
    counts : (F,) int, the components of each frame.
    level : float, the probability inside the returned range.
    block : int, consecutive frames per resampled block (1 <= block <= F); None:
        :func:`resampling_block` of the frames' hit fractions.

    Returns
    -------
    [low, high] floats: percentiles of ``sum(hits) / sum(counts)`` over
    :data:`BOOTSTRAP_RESAMPLES` circular block bootstraps of the F frames (seed
    :data:`BOOTSTRAP_SEED`; blocks of :func:`resampling_block` consecutive frames, so that
    frames whose errors are correlated, such as neighbouring frames of one MD, are drawn
    together and widen the range as they should; independent frames give the range of
    frames drawn one by one); [nan, nan] for fewer than 3 frames, which say nothing about
    the spread.
    """
    hits = np.asarray(hits, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    if hits.shape != counts.shape or hits.ndim != 1:
        raise ValueError(f"hits {hits.shape} and counts {counts.shape} must be equal 1-d shapes")
    if hits.size < 3:
        return [float("nan"), float("nan")]
    n = hits.size
    length = resampling_block(hits / np.maximum(counts, 1.0)) if block is None else int(block)
    if not 1 <= length <= n:
        raise ValueError(f"block must be between 1 and the {n} frames, got {block}")
    n_blocks = -(-n // length)
    offsets = np.arange(length)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    ratios = np.empty(BOOTSTRAP_RESAMPLES)
    # groups of resamples keep the index array small for long test sets
    group = max(1, min(BOOTSTRAP_RESAMPLES, 2_000_000 // (n_blocks * length)))
    for lo in range(0, BOOTSTRAP_RESAMPLES, group):
        hi = min(lo + group, BOOTSTRAP_RESAMPLES)
        starts = rng.integers(0, n, size=(hi - lo, n_blocks))
        pick = ((starts[:, :, None] + offsets) % n).reshape(hi - lo, -1)[:, :n]
        ratios[lo:hi] = hits[pick].sum(axis=1) / counts[pick].sum(axis=1)
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    return [float(low), float(high)]


def resampling_block(series) -> int:
    """Consecutive frames per block of :func:`coverage_intervals` for a per-frame series
    (F,) (each frame's fraction of hits).

    ``max(round(F^(1/3)), ceil(4 tau))``, at most F // 3 (three blocks at least). F^(1/3) is
    the classic block length of a block bootstrap of a variance (Hall, Horowitz and Jing,
    Biometrika 82, 561 (1995)). ``tau = 1/2 + sum_k rho_k`` is the integrated
    autocorrelation time of the series (its autocorrelations summed up to the first that
    is not positive): frames correlated over runs of L frames have tau about L / 2, and a
    block bootstrap falls short of their variance by about L / (3 block), so blocks of 4 tau
    (about 2 L) leave the range about a tenth too narrow (frames in runs of 20: 5-21 % in six
    draws, against about 78 % when the frames are drawn one by one). 1 for fewer than 3
    frames.
    """
    x = np.asarray(series, dtype=np.float64)
    n = x.size
    if n < 3:
        return 1
    length = max(1, int(round(n ** (1.0 / 3.0))))
    x = x - x.mean()
    var = float(x @ x)
    if var > 0.0:
        spectrum = np.fft.rfft(x, 2 * n)   # zero-padded: the linear, not circular, sums
        rho = np.fft.irfft(spectrum * spectrum.conj(), 2 * n)[1:n // 2] / var
        stop = np.flatnonzero(rho <= 0.0)
        tau = 0.5 + float(rho[:stop[0] if stop.size else rho.size].sum())
        length = max(length, int(np.ceil(4.0 * tau)))
    return int(max(1, min(length, n // 3)))


def _spearman(a, b) -> float:
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


# ---------------------------------------------------------------------- recalibration
def exact_bec_std(model, positions, numbers, cell, pbc) -> np.ndarray:
    """``bec_std`` (N, 3, 3) e from the full design rows and the full covariance (the cost of
    one training step), recalibrated: ``sqrt(s phi^T Sigma phi + s_v sigma_v^2 + c r_frame)``
    (:func:`variance_scale`, :func:`noise_scale`, :func:`residual_variance`)."""
    return model.predict_arrays(positions, numbers, cell, pbc, uncertainty=True)["bec_std"]


def _fold_model(model, frames):
    """An unfitted copy of ``model``'s type and hyperparameters, ``n_sparse`` capped at the
    environments of each species in ``frames``."""
    hyper = dict(model.hyperparameters())
    counts = {}
    for atoms in frames:
        for z, c in zip(*np.unique(atoms.numbers, return_counts=True), strict=True):
            counts[int(z)] = counts.get(int(z), 0) + int(c)
    n_sparse = hyper["n_sparse"]
    hyper["n_sparse"] = {z: min(c, int(n_sparse[str(z)]) if isinstance(n_sparse, dict)
                                else int(n_sparse)) for z, c in counts.items()}
    return type(model)(settings=model.settings, **hyper)


#: Recalibration methods of :func:`fit_variance_scale` (``method=``).
SCALE_METHODS = ("coverage", "two_part", "likelihood", "worst_block", "residual")
#: ``method="two_part"``: the noise variance keeps at least this fraction of sigma_v^2 (a
#: component without epistemic variance would otherwise get a zero-width interval).
MIN_NOISE_SCALE = 0.01
#: ``method="residual"``: the Bayesian variance keeps at least this factor (a frame whose
#: environments are all sparse points has ``r = 0``; it must not get a zero-width interval).
MIN_BAYES_SCALE = 0.01


def held_out_errors(model, frames, folds: int = 5, progress: bool | None = None) -> dict:
    """Held-out errors and predictive variances of a K-fold cross-validation.

    The frames are split into ``folds`` contiguous blocks (MD frames are correlated in time;
    interleaved folds would make the held-out frames look like training frames). For each
    block a model with the same hyperparameters is fitted on the other blocks and predicts the
    held-out block with its exact ``bec_std``, compared with the raw reference BECs (as
    :func:`numbec.evaluate` does).

    Returns dict ``err`` (n,) float64 e, the errors of all held-out BEC components;
    ``epistemic`` (n,) e^2, ``phi^T Sigma phi`` of the fold model; ``noise`` (n,) e^2, its
    ``sigma_v^2``; ``block`` (n,) int64, the index (0 to folds - 1, in frame order) of the
    block each value was held out in; ``residual`` (n,) float64 in [0, 1], dimensionless, the
    Nyström residual ``r_a`` of the value's atom against the fold model's sparse points
    (:func:`numbec.models.representation.frame_residual`); ``frame_residual`` (n,), the mean
    of ``r_a`` over the atoms of the value's frame (:func:`mean_frame_residual`, used by
    ``method="residual"``); ``folds`` (int). Needs at least 2 frames. ``progress``: the
    progress bars of the fold models' fits (None: on for a terminal, as ``fit``).
    """
    frames = list(frames)
    if int(folds) < 2 or len(frames) < 2:
        raise ValueError(f"fit_variance_scale: need at least 2 folds and 2 frames, got "
                         f"folds={folds} and {len(frames)} frames")
    folds = min(int(folds), len(frames))
    edges = np.linspace(0, len(frames), folds + 1).round().astype(int)
    from numbec.models.representation import frame_residual

    err, epi, noise, block, resid, frame_r = [], [], [], [], [], []
    for k, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        train = frames[:a] + frames[b:]
        sub = _fold_model(model, train).fit(train, progress=progress)
        for atoms in frames[a:b]:
            out = sub.predict(atoms)
            epi_exact = _held_out_epistemic(sub, atoms)
            epi.append(epi_exact)
            r = frame_residual(sub, atoms.positions, atoms.numbers, np.asarray(atoms.cell),
                               atoms.pbc)
            resid.append(np.repeat(r, 9))  # components in atom-major order, as err
            frame_r.append(np.full(r.size * 9, float(r.mean())))
            ref = np.asarray(atoms.arrays["bec"], dtype=np.float64)  # raw, as evaluate
            err.append((out["bec"] - ref).ravel())
            noise.append(np.full(epi_exact.size, float(sub.sigma_v2)))
            block.append(np.full(epi_exact.size, k, dtype=np.int64))
    return {"err": np.concatenate(err), "epistemic": np.concatenate(epi),
            "noise": np.concatenate(noise), "block": np.concatenate(block),
            "residual": np.concatenate(resid), "frame_residual": np.concatenate(frame_r),
            "folds": folds}


def _held_out_epistemic(model, atoms) -> np.ndarray:
    """(N * 9,) e^2: the epistemic variances ``phi^T Sigma phi`` of the BEC components of
    ``atoms`` (atom-major, as ``bec.ravel()``) under a model with variance scale 1, what
    ``bec_std^2 - sigma_v^2`` of ``predict(..., uncertainty=True)`` is, from the design rows
    directly: the difference would lose the digits of an epistemic part far below the
    noise."""
    from numbec.models import regression

    n = len(atoms)
    pbc = np.broadcast_to(np.asarray(atoms.pbc, dtype=bool), (3,))
    phi, _ = model._design(np.asarray(atoms.positions, dtype=np.float64),
                           np.asarray(atoms.numbers, dtype=np.int64), np.asarray(atoms.cell),
                           pbc, "held-out")
    return np.clip(regression.predictive_variance(phi.reshape(n * 9, -1), model.covariance,
                                                  model.sigma_v2, include_noise=False),
                   0.0, None)


def coverage_scale(z, coverage: float = 0.95) -> float:
    """Split-conformal variance scale: ``s = (q / z_c)^2`` with ``q`` the
    ``ceil((n + 1) c) / n`` empirical quantile of the normalised held-out errors
    ``z = |err| / std`` (n values) and ``z_c`` the half width of the central ``c`` interval
    of a standard normal; the interval ``+- z_c sqrt(s) std`` then holds a fraction ``c``
    of held-out errors (at least ``c`` of new ones exchangeable with them)."""
    from scipy.stats import norm

    z = np.sort(np.abs(np.asarray(z, dtype=np.float64).ravel()))
    if z.size == 0:
        raise ValueError("coverage_scale: no held-out values")
    rank = min(z.size, int(np.ceil((z.size + 1) * coverage)))
    q = z[rank - 1]
    z_c = float(norm.ppf(0.5 + 0.5 * coverage))
    return float((q / z_c) ** 2) if q > 0 else float("nan")


def two_part_scales(err, epistemic, noise, min_noise: float = 0.0) -> tuple[float, float]:
    """Maximum-likelihood factors ``(a, b)`` of a predictive variance ``a epistemic +
    b noise`` (Gaussian) for held-out errors (all (n,) arrays, e and e^2), ``b >=
    min_noise``. Not stored in model files; benchmarks/calibration.py reports it as an
    alternative."""
    from scipy.optimize import minimize

    err2 = np.asarray(err, dtype=np.float64) ** 2
    epi, noise = np.asarray(epistemic, np.float64), np.asarray(noise, np.float64)

    def nll(log_ab):
        var = np.exp(log_ab[0]) * epi + (np.exp(log_ab[1]) + min_noise) * noise
        return float(np.mean(np.log(var) + err2 / var))

    start = np.log(max(np.mean(err2 / (epi + noise)), 1e-12)) * np.ones(2)
    res = minimize(nll, start, method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-10})
    return float(np.exp(res.x[0])), float(np.exp(res.x[1]) + min_noise)


def residual_fit_inputs(err, variance, frame_residual, caller: str):
    """Checked float64 arrays ``(err^2, variance, frame_residual)`` (n,) for a fit of held-out
    errors against a variance with a residual term (:func:`residual_scales`); ``caller`` names
    the fit in the error raised for unequal or empty shapes, ``variance <= 0``, a negative
    residual or a non-finite error."""
    e2 = np.asarray(err, dtype=np.float64) ** 2
    var = np.asarray(variance, dtype=np.float64)
    r = np.asarray(frame_residual, dtype=np.float64)
    if not (e2.shape == var.shape == r.shape) or e2.size == 0:
        raise ValueError(f"{caller}: err {e2.shape}, variance {var.shape} and "
                         f"frame_residual {r.shape} must be equal non-empty shapes")
    if not ((var > 0).all() and (r >= 0).all() and np.isfinite(e2).all()):
        raise ValueError(f"{caller}: need variance > 0, frame_residual >= 0, finite err")
    return e2, var, r


def residual_scales(err, variance, frame_residual,
                    min_scale: float = 0.0) -> tuple[float, float]:
    """Maximum-likelihood ``(s, c)`` of a Gaussian predictive variance ``s variance + c r``
    for held-out errors: ``err`` (n,) e, ``variance`` (n,) e^2 (the Bayesian
    ``phi^T Sigma phi + sigma_v^2``), ``frame_residual`` ``r`` (n,) dimensionless (>= 0), with
    ``s >= min_scale`` and ``c >= 0`` (e^2). Minimises ``mean(ln v + err^2 / v)`` by L-BFGS-B
    from several starts (the likelihood can be flat in ``c`` when ``r`` hardly varies)."""
    from scipy.optimize import minimize

    e2, var, r = residual_fit_inputs(err, variance, frame_residual, "residual_scales")
    # unknowns in units of the data: s and c' = c mean(r) / mean(var)
    unit_c = float(var.mean() / r.mean()) if r.mean() > 0 else 0.0

    def nll(x):
        v = x[0] * var + x[1] * unit_c * r
        g = 1.0 / v - e2 / v ** 2
        return float(np.mean(np.log(v) + e2 / v)), np.array(
            [np.mean(g * var), np.mean(g * unit_c * r)])

    if unit_c == 0.0:  # no residual anywhere: the one-scale ML, floored
        return max(float(np.mean(e2 / var)), min_scale), 0.0
    m = float(np.mean(e2 / var))
    best = None
    for frac in (1.0, 0.5, 0.1, 0.0):  # share of the ML scale given to the residual term
        x0 = [max((1.0 - frac) * m, min_scale, 1e-6), max(frac * m, 1e-6)]
        res = minimize(nll, x0, jac=True, method="L-BFGS-B",
                       bounds=[(max(min_scale, 1e-12), None), (0.0, None)])
        if best is None or res.fun < best.fun:
            best = res
    return float(best.x[0]), float(best.x[1] * unit_c)


def fit_variance_scale(model, frames, folds: int = 5, method: str = "two_part",
                       progress: bool | None = None) -> dict:
    """Cross-validated scale ``s`` of the predictive variance, from training frames only.

    The held-out errors ``err`` and variances ``std^2`` of a ``folds``-fold cross-validation
    over contiguous blocks of ``frames`` (:func:`held_out_errors`) give, by ``method``:

    ``"two_part"`` (default)
        separate factors of the two parts of the variance, ``s phi^T Sigma phi + s_v
        sigma_v^2``: their shape by maximum likelihood (:func:`two_part_scales`, ``s_v``
        at least :data:`MIN_NOISE_SCALE` before the next step), then one common factor
        that makes the held-out 95 % interval hold 95 % (:func:`coverage_scale`).
        ``scale`` is ``s``, ``noise_scale`` is ``s_v``. On the four benchmark sets the 95 %
        test coverage is in [90, 98] % on 23 of 24 rows (``coverage``: 15), with the better
        test NLL on all 24 (docs/benchmarks_models.md, "Calibration").
    ``"coverage"``
        the split-conformal scale :func:`coverage_scale` at 95 %: ``+- 1.96 sqrt(s) std``
        holds 95 % of the held-out errors (one scale of the whole variance; the default
        before two_part). The normalised errors ``err / std`` are
        heavy-tailed (68 % coverage well above nominal where the 95 % one is about right),
        so a scale that fits their second moment is dominated by the tails and overshoots
        the 95 % interval (docs/benchmarks_models.md, "Calibration").
    ``"likelihood"``
        ``s = mean(err^2 / std^2)``, the maximum-likelihood scale of a Gaussian (the only
        method of older numbec; models saved with it keep their scale).
    ``"worst_block"``
        the largest of the coverage scales of the held-out blocks taken one at a time: the
        95 % interval holds at least 95 % of the errors of *every* block. For training
        frames that are not alike (e.g. MD at two temperatures) the Bayesian variance can
        miss that some are harder: one pooled scale then averages an easy block with a hard
        one and under-covers frames like the hard one (quartz trained on 300 K and 600 K
        frames, tested at 600 K: docs/benchmarks_models.md, "Calibration"). Conservative
        (wider) wherever the blocks are alike; needs at least 2 blocks.
    ``"residual"``
        a variance that grows with how unlike the sparse points a frame is:
        ``s phi^T Sigma phi + s sigma_v^2 + c r_frame``, ``r_frame`` the mean Nyström
        residual of the frame's atoms (:func:`mean_frame_residual`; each held-out frame's
        with its fold model). Its shape ``(s, c)`` by maximum likelihood
        (:func:`residual_scales`, ``s`` at least :data:`MIN_BAYES_SCALE`), then one common
        factor that makes the held-out 95 % interval hold 95 % (:func:`coverage_scale`).
        ``scale`` is ``s``, ``residual_scale`` is ``c`` (e^2). For training frames of mixed
        difficulty the Bayesian variance is the same for an easy and a hard frame; the
        residual of the harder (e.g. hotter) frames is larger (docs/benchmarks_models.md,
        "Calibration"). Needs held-out errors with ``frame_residual``.

    Returns dict ``scale`` (that of ``method``), ``noise_scale`` (``"two_part"`` only),
    ``method``, ``scale_coverage``, ``scale_likelihood``, ``two_part_scales`` ``[s, s_v]``,
    ``folds``, ``n_values``, the held-out ``coverage_68_unscaled`` and
    ``coverage_95_unscaled``, ``block_scales`` (the coverage scale of each block) and
    ``block_coverage_95_unscaled``, ``scale_worst_block``, ``residual_scales`` ``[s, c]``
    (when the held-out errors have ``frame_residual``), and ``weight_scale = sum(err^2) /
    sum(phi^T Sigma phi)``: the scale of the weight posterior alone that accounts for the
    whole held-out error (used for posterior samples and the spectrum's model band, which
    carry no per-component noise term; see :func:`sample_scale`). Needs at least 2 frames.
    """
    if method not in SCALE_METHODS:
        raise ValueError(f"method must be one of {SCALE_METHODS}, got {method!r}")
    return scales_from_held_out(held_out_errors(model, frames, folds, progress), method)


def scales_from_held_out(held: dict, method: str = "two_part") -> dict:
    """The dict of :func:`fit_variance_scale` from the output of :func:`held_out_errors`."""
    err, epi = held["err"], held["epistemic"]
    z2 = err ** 2 / (epi + held["noise"])
    scales = {"coverage": coverage_scale(np.sqrt(z2), 0.95), "likelihood": float(np.mean(z2))}
    if not np.isfinite(scales["coverage"]):  # all held-out errors zero: nothing to scale
        scales["coverage"] = scales["likelihood"]
    blocks = _block_scales(held, np.sqrt(z2))
    scales["worst_block"] = max(blocks["block_scales"]) if blocks else float("nan")
    if method == "worst_block" and not blocks:
        raise ValueError("method='worst_block' needs held-out errors with their blocks "
                         "(held_out_errors of numbec >= this version)")
    if method == "residual" and "frame_residual" not in held:
        raise ValueError("method='residual' needs held-out errors with their frame "
                         "residuals (held_out_errors of numbec >= this version)")
    res = {}
    if "frame_residual" in held:
        var, rf = epi + held["noise"], np.asarray(held["frame_residual"], dtype=np.float64)
        s_r, c_r = residual_scales(err, var, rf, MIN_BAYES_SCALE)
        k = coverage_scale(err / np.sqrt(s_r * var + c_r * rf), 0.95)
        k = 1.0 if not np.isfinite(k) else k
        res = {"residual_scales": [k * s_r, k * c_r]}
        scales["residual"] = k * s_r
    a, b = two_part_scales(err, epi, held["noise"], MIN_NOISE_SCALE)
    common = coverage_scale(err / np.sqrt(a * epi + b * held["noise"]), 0.95)
    if not np.isfinite(common):
        common = 1.0
    two = [common * a, common * b]
    scales["two_part"] = two[0]
    err2, epi_sum = float(err @ err), float(epi.sum())
    extra = {"noise_scale": two[1]} if method == "two_part" else {}
    if method == "residual":
        extra = {"residual_scale": res["residual_scales"][1]}
    return {"scale": scales[method], **extra, "method": method,
            "scale_coverage": scales["coverage"], "scale_likelihood": scales["likelihood"],
            "two_part_scales": two, "folds": held["folds"],
            "n_values": int(z2.size), "scale_worst_block": scales["worst_block"], **blocks,
            **res,
            "coverage_68_unscaled": float(np.mean(z2 <= _Z68 ** 2)),
            "coverage_95_unscaled": float(np.mean(z2 <= _Z95 ** 2)),
            "weight_scale": err2 / epi_sum if epi_sum > 0 else float(np.mean(z2))}


def _block_scales(held: dict, z) -> dict:
    """Coverage scale and unscaled 95 % coverage of each held-out block (empty dict when
    ``held`` has no ``block``). A block whose errors are all zero gets scale 0."""
    if "block" not in held:
        return {}
    block = np.asarray(held["block"])
    scales, cover = [], []
    for k in np.unique(block):
        zk = z[block == k]
        s = coverage_scale(zk, 0.95)
        scales.append(0.0 if not np.isfinite(s) else s)
        cover.append(float(np.mean(zk <= _Z95)))
    return {"block_scales": scales, "block_coverage_95_unscaled": cover}


def recalibrate(model, frames, folds: int = 5, method: str = "two_part", held_out=None,
                progress: bool | None = None):
    """Set ``model.variance_scale`` from :func:`fit_variance_scale` on its training ``frames``
    (saved with the model, details in ``training["variance_scale_fit"]``); returns the
    model. ``held_out``: the :func:`held_out_errors` of these frames when already computed
    (``frames`` and ``folds`` are then not used). ``progress``: as in :func:`held_out_errors`.
    Drops a cached :class:`PosteriorFactor`."""
    info = fit_variance_scale(model, frames, folds, method, progress) if held_out is None else \
        scales_from_held_out(held_out, method)
    model.variance_scale = info["scale"]
    model.noise_scale = info.get("noise_scale")  # None: the noise scales with the rest
    model.residual_scale = float(info.get("residual_scale", 0.0))  # 0: no residual term
    model.training = dict(getattr(model, "training", {}) or {}, variance_scale_fit=info)
    model._posterior_factor_cache = None  # the factor carries the scale
    return model


# ---------------------------------------------------------------------- low-rank posterior
#: Seed of the random probes of :func:`posterior_factor`. Fixed, so that a model's streamed
#: uncertainty is the same in every run, on every worker and after a resume.
PROBE_SEED = 0

#: How many evenly spaced frames of a trajectory :func:`numbec.predict` passes to
#: :func:`posterior_factor` to order the directions of the streamed uncertainty.
DIRECTION_FRAMES = 4


@dataclass
class PosteriorFactor:
    """Low-rank factor of the (recalibrated) posterior covariance, ``Sigma ~ L L^T``.

    factor : (C, K) float64, units of the weights. The first ``leading`` columns are the
        leading directions of the posterior in the metric of the training design (decreasing
        predictive variance on training-like rows); the other ``probes`` columns are random
        probes of the remaining covariance, so that ``phi^T L L^T phi`` is an unbiased
        estimate of ``phi^T Sigma phi`` for any row ``phi`` (exact at full rank).
    captured : float, in [0, 1]: fraction of ``tr(G Sigma)`` the leading columns carry (G the
        training Gram matrix), i.e. of the mean epistemic variance over training-like rows
        (0 when there are none, at K < 4).
    leading : int, the number of leading columns (K when the factor has no probes).
    noise_variance : float, e^2: ``s_v sigma_v^2`` (:func:`noise_scale`), added to every
        component's variance.
    n_direction_frames : int, the number of frames whose Gram matrix ordered the directions
        (0: the training Gram matrix did; ``captured`` then refers to those frames).
    """

    factor: np.ndarray
    captured: float
    leading: int
    noise_variance: float
    n_direction_frames: int = 0

    @property
    def rank(self) -> int:
        return self.factor.shape[1]

    @property
    def probes(self) -> int:
        return self.rank - self.leading


def _training_metric(model, cov) -> np.ndarray:
    """The Gram matrix ``A = Phi^T Phi`` of the training design up to a positive factor,
    recovered from the posterior precision ``Sigma^-1 = A / sigma_v^2 + diag(alpha)``."""
    train = getattr(model, "training", {}) or {}
    m = model.sparse_unit.shape[0]
    groups = np.concatenate([np.zeros(m if model._monopole else 0, dtype=np.int64),
                             np.ones(3 * m if model._dipole else 0, dtype=np.int64)])
    sw2 = train.get("sigma_w2_groups")
    if sw2 is not None and len(sw2) == groups.max() + 1:
        alpha = 1.0 / np.asarray(sw2, dtype=np.float64)[groups]
    elif train.get("sigma_w2"):
        alpha = np.full(cov.shape[0], 1.0 / float(train["sigma_w2"]))
    else:
        return np.eye(cov.shape[0])
    lam, vecs = np.linalg.eigh(cov)
    lam = np.clip(lam, lam.max() * 1e-15, None)
    precision = (vecs / lam) @ vecs.T
    gram = precision - np.diag(alpha)
    lam_g, vec_g = np.linalg.eigh(0.5 * (gram + gram.T))
    return (vec_g * np.clip(lam_g, 0.0, None)) @ vec_g.T


def frames_metric(model, frames) -> np.ndarray:
    """(C, C) float64: ``sum_f Phi_f^T Phi_f / (9 N_f)``, the mean Gram matrix per BEC
    component of the design rows of ``frames`` (a sequence of ``(positions (N, 3) Å, numbers
    (N,), cell (3, 3) Å, pbc (3,))``), so that ``tr(metric Sigma)`` is the mean epistemic
    variance of their components. One exact design pass per frame (its memory: ``9 N C``
    floats)."""
    frames = list(frames)
    if not frames:
        raise ValueError("frames must hold at least one structure")
    c = np.asarray(model.covariance).shape[0]
    metric = np.zeros((c, c))
    for k, (positions, numbers, cell, pbc) in enumerate(frames):
        phi, _ = model._design(np.asarray(positions, dtype=np.float64),
                               np.asarray(numbers, dtype=np.int64),
                               np.asarray(cell, dtype=np.float64), np.asarray(pbc, dtype=bool),
                               f"frame {k} of the direction frames")
        phi = phi.reshape(-1, c)
        metric += (phi.T @ phi) / phi.shape[0]
    return metric


def _frames_key(frames) -> str:
    """A digest of the arrays of ``frames``: factors made from other frames differ."""
    digest = hashlib.sha256()
    for frame in frames:
        for array in frame:
            digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    return digest.hexdigest()


@dataclass
class _PosteriorSpectrum:
    """The directions of :func:`posterior_factor` before any scale.

    directions : (C, C) float64, columns ``D_k = S e_k`` ordered by decreasing ``mu``.
    mu : (C,) float64 >= 0, the predictive variance each direction carries on training-like
        rows (units of ``tr(G Sigma)``), or on the components of the given frames.
    root : (C, C) float64, ``S``, the symmetric square root of ``Sigma``.
    basis : (C, C) float64, the orthonormal ``e_k`` in the same order.
    """

    directions: np.ndarray
    mu: np.ndarray
    root: np.ndarray
    basis: np.ndarray


def _posterior_spectrum(model, frames=None) -> _PosteriorSpectrum:
    """The C directions ``S e_k`` of :func:`posterior_factor`, ``e_k`` the eigenvectors of
    ``S G S`` (G the training Gram matrix, or with ``frames`` their :func:`frames_metric`).
    Cached per weights, covariance and frames."""
    key = None if frames is None else _frames_key(frames)
    cached = getattr(model, "_posterior_spectrum_cache", None)
    if (cached is not None and cached[0] is model.weights
            and cached[1] is model.covariance and cached[2] == key):
        return cached[3]
    cov = np.asarray(model.covariance, dtype=np.float64)
    lam, vecs = np.linalg.eigh(cov)
    root = (vecs * np.sqrt(np.clip(lam, 0.0, None))) @ vecs.T        # S, symmetric
    metric = _training_metric(model, cov) if frames is None else frames_metric(model, frames)
    mu, e = np.linalg.eigh(root @ metric @ root)
    order = np.argsort(mu)[::-1]
    out = _PosteriorSpectrum(directions=root @ e[:, order], mu=np.clip(mu[order], 0.0, None),
                             root=root, basis=e[:, order])
    model._posterior_spectrum_cache = (model.weights, model.covariance, key, out)
    return out


def _captured(mu, k: int) -> float:
    """Fraction of ``sum(mu)`` in the first ``k`` values (1 if all are 0)."""
    total = float(mu.sum())
    return float(mu[:k].sum() / total) if total > 0 else 1.0


def split_rank(rank: int, n_weights: int) -> tuple[int, int]:
    """``(leading, probes)`` of a rank-``rank`` factor of ``n_weights`` weights: a quarter of
    the columns (rounded down) are leading directions, the rest random probes; at
    ``rank >= n_weights`` all directions, exact."""
    if rank >= n_weights:
        return n_weights, 0
    leading = rank // 4
    return leading, rank - leading


def _probe_columns(root: np.ndarray, leading: np.ndarray, n_probes: int, rng) -> np.ndarray:
    """(C, P) random probes ``Z = S Q sqrt(n / P)`` of the covariance ``S Pi S`` that the
    leading directions leave, ``Pi = I - B B^T`` (``root`` S (C, C); ``leading`` B (C, J),
    orthonormal; n = C - J > P). Q (C, P): orthonormal columns spanning a uniformly random
    P-dimensional subspace of the range of Pi (a Gaussian matrix projected by Pi, then
    orthonormalised), so ``E[Q Q^T] = (P / n) Pi`` and ``E[Z Z^T] = S Pi S``. Drawn in the
    weight space, not in a basis of the rest: a basis of near-degenerate eigenvectors is
    fixed only up to rounding, which would redraw the probes from one machine to the next.
    Orthonormal rather than Gaussian probes: the estimate ``sum_p (phi . Z_p)^2`` has less
    spread."""
    c = root.shape[0]
    omega = rng.standard_normal((c, n_probes))
    omega -= leading @ (leading.T @ omega)
    q, _ = np.linalg.qr(omega)
    return root @ q * np.sqrt((c - leading.shape[1]) / n_probes)


def posterior_factor(model, rank: int | None = 32, probes: bool = True,
                     frames=None) -> PosteriorFactor:
    """A rank-``rank`` factor ``L`` of the recalibrated posterior covariance, ``Sigma ~ L L^T``.

    With ``Sigma = S S^T`` (symmetric square root) and ``G`` the training Gram matrix, the
    eigenvectors ``e_k`` of ``S^T G S`` give the directions ``D_k = S e_k``, ordered by the
    predictive variance they carry on rows like the training rows; all C of them reproduce
    ``Sigma`` exactly (``phi^T Sigma phi = sum_k (phi . D_k)^2`` for any row).
    ``frames`` (a few structures like those to be predicted, as ``(positions, numbers, cell,
    pbc)``; :func:`numbec.predict` passes :data:`DIRECTION_FRAMES` evenly spaced frames of
    the trajectory) replaces ``G`` by their Gram matrix (:func:`frames_metric`), so that
    the leading directions are those that carry the most variance on such frames. It matters
    where the predicted frames put their variance in directions that the training frames
    hardly excite: a cubic ZrO2 cell, whose BEC variance lies in nearly one direction, got a
    streamed uncertainty 25 % off with the training directions (docs/benchmarks_models.md,
    section 6).

    With ``probes`` (the streamed uncertainty and posterior samples) the factor is
    ``[D_1 .. D_J, Z_1 .. Z_P]`` with J, P = :func:`split_rank`: the J leading directions
    and P random probes ``Z`` of the rest (:func:`_probe_columns`, drawn from
    :data:`PROBE_SEED`), so that ``phi^T L L^T phi`` is an unbiased estimate of
    ``phi^T Sigma phi`` for every row, seen or not. The leading directions alone miss what
    frames unlike the training frames put in the other directions (which carry most of the
    variance when the posterior spectrum decays slowly); the probes spread the estimate over
    all of them, and a frame's mean over its 9 N components averages their noise.
    Without ``probes`` (uncertainty-driven selection, which needs a subspace): the ``rank``
    leading directions, ``phi^T L L^T phi <= phi^T Sigma phi``.

    ``rank=None`` or >= C: full rank (exact). Includes the recalibration scale
    (:func:`variance_scale`). Cached per model, weights and frames.
    """
    c = np.asarray(model.covariance).shape[0]
    k = c if rank is None else min(int(rank), c)
    if k < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    leading, n_probes = split_rank(k, c) if probes else (k, 0)
    frames = None if frames is None else list(frames)
    key = (id(model.weights), leading, n_probes, variance_scale(model), noise_scale(model),
           None if frames is None else _frames_key(frames))
    cached = getattr(model, "_posterior_factor_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    spectrum = _posterior_spectrum(model, frames)
    columns = spectrum.directions[:, :leading]
    if n_probes:
        rng = np.random.default_rng(PROBE_SEED)
        columns = np.concatenate([columns, _probe_columns(
            spectrum.root, spectrum.basis[:, :leading], n_probes, rng)], axis=1)
    out = PosteriorFactor(factor=np.ascontiguousarray(np.sqrt(variance_scale(model)) * columns),
                          captured=_captured(spectrum.mu, leading), leading=leading,
                          noise_variance=noise_scale(model) * float(model.sigma_v2),
                          n_direction_frames=0 if frames is None else len(frames))
    model._posterior_factor_cache = (key, out)
    return out


def sample_weights(model, n_samples: int, seed=None, rank: int | None = None) -> np.ndarray:
    """(S, C) weight vectors drawn from the recalibrated posterior ``N(w, s_w Sigma)``,
    ``s_w`` = :func:`sample_scale` (with
    ``rank``: from the low-rank factor, ``w + L xi``, xi ~ N(0, I_K)). ``seed``: an int or a
    numpy Generator; the same seed gives the same samples."""
    rng = np.random.default_rng(seed)
    factor = posterior_factor(model, rank).factor
    xi = rng.standard_normal((int(n_samples), factor.shape[1]))
    xi *= np.sqrt(sample_scale(model) / variance_scale(model))
    return model.weights[None, :] + xi @ factor.T


# ---------------------------------------------------------------------- channel BECs
def direction_becs(model, positions, numbers, cell, pbc, weight_matrix) -> np.ndarray:
    """BECs ``Phi u_k`` (K, N, 3, 3) e of K weight vectors ``u_k`` (rows of ``weight_matrix``,
    (K, C)) of a fitted kernel model, without the baseline charges: one descriptor pass, one
    back-propagation with ``K * (1 + 3)`` adjoint channels (monopole charge, dipole vector).
    Linear in each ``u_k``; ``Phi @ model.weights`` plus the baseline is ``predict(...)["bec"]``.
    """
    return channel_outputs(model, positions, numbers, cell, pbc, weight_matrix)["bec"]


@dataclass
class PreparedStructure:
    """One descriptor pass of a structure, shared by :func:`channel_outputs` and the
    forward-mode rows (:func:`numbec.models.forward_mode.dipole_derivative_rows`).

    positions (N, 3) Å, numbers (N,) int64, pbc (3,) bool; desc, vdesc: scalar and (dipole
    kernel) vector descriptors; periodic: the sum-rule projection applies (False for
    molecules and for periodic cells holding one finite cluster); unwrapped (N, 3) Å: the
    positions of the molecule (None if periodic); unit (N, D), norms (N,): the normalised
    scalar descriptors (:func:`numbec.models.kernels.normalize`); species_kernels: the
    model's ``_species_kernels`` blocks.
    """

    positions: np.ndarray
    numbers: np.ndarray
    pbc: np.ndarray
    desc: object
    vdesc: object
    periodic: bool
    unwrapped: np.ndarray | None
    unit: np.ndarray
    norms: np.ndarray
    species_kernels: list


def prepare_structure(model, positions, numbers, cell, pbc) -> PreparedStructure:
    """The descriptor pass of one structure for a fitted kernel model (checked inputs); the
    molecule/cell decision is that of ``predict_arrays``."""
    from numbec.descriptors import compute_descriptors, compute_scalar_and_vector_descriptors
    from numbec.models import kernels
    from numbec.models._kernel_model import _unwrapped_cluster

    model._check_fitted()
    model.check_inputs(positions, numbers)
    positions = np.asarray(positions, dtype=np.float64)
    numbers = np.asarray(numbers, dtype=np.int64)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if model._dipole:
        desc, vdesc = compute_scalar_and_vector_descriptors(positions, numbers, cell, pbc,
                                                            model.settings)
    else:
        desc, vdesc = compute_descriptors(positions, numbers, cell, pbc, model.settings), None
    # as predict_arrays: a periodic cell holding one finite cluster is a molecule
    periodic, unwrapped = bool(pbc.any()), positions
    if periodic:
        unwrapped = _unwrapped_cluster(desc.pairs, positions, cell)
        periodic = unwrapped is None
    unit, norms = kernels.normalize(desc.values, "predict", allow_isolated=True)
    return PreparedStructure(positions, numbers, pbc, desc, vdesc, periodic, unwrapped, unit,
                             norms, model._species_kernels(numbers, unit))


def channel_outputs(model, positions, numbers, cell, pbc, weight_matrix,
                    prepared: PreparedStructure | None = None) -> dict:
    """All weight-linear outputs of K weight vectors (rows of ``weight_matrix``, (K, C)) from
    one descriptor pass, without the baseline: ``bec`` (K, N, 3, 3) e; models with both parts
    ``bec_monopole`` (K, N, 3, 3) (``bec_dipole = bec - bec_monopole``); monopole models
    ``charges`` (K, N) e (neutral kernel charges); ``pbc`` all False: ``dipole`` (K, 3) e·Å;
    ``asr_violation`` (K, 3, 3) e, the acoustic sum before the projection of periodic cells.
    The molecule/cell decision is that of ``predict_arrays`` (a periodic cell holding one
    finite cluster is treated as a molecule). ``prepared``: the structure's descriptor pass
    (:func:`prepare_structure`) when the caller has it already."""
    from numbec.models import kernels_numba as _kn

    if prepared is None:
        prepared = prepare_structure(model, positions, numbers, cell, pbc)
    positions, numbers, pbc = prepared.positions, prepared.numbers, prepared.pbc
    desc, vdesc, unit, norms = prepared.desc, prepared.vdesc, prepared.unit, prepared.norms
    periodic, unwrapped = prepared.periodic, prepared.unwrapped
    wm = np.atleast_2d(np.asarray(weight_matrix, dtype=np.float64))
    if wm.shape[1] != model.n_columns:
        raise ValueError(f"weight_matrix must have {model.n_columns} columns, got {wm.shape}")
    n_w, n = wm.shape[0], numbers.size
    mono, dip = model._monopole, model._dipole
    m = model.sparse_unit.shape[0]
    wb = _sparse_dipole_weights(model, wm) if dip else None
    ex = desc.expansion
    per = int(mono) + (3 if dip else 0)          # channels per weight vector
    n_mono = n_w if mono else 0                  # monopole channels first, then 3 per vector
    q = np.zeros((n, n_w))
    scalar_grad = np.empty((n, n_w * per, unit.shape[1]))
    u = np.empty((n, n_w, vdesc.values.shape[-1])) if dip else None
    zeta = model.zeta
    for rows, cols, cos in prepared.species_kernels:
        nr, mz = cos.shape
        dk = np.zeros((nr, n_w, per, mz))
        radial = np.zeros((nr, n_w, per))
        k_dip = np.empty((nr, mz))
        no_coef = coef = np.zeros((0, 3, 0))
        if dip:
            wb_block, wb_t = _dipole_weight_blocks(model, wm, wb, cols)
        if dip and zeta >= 2:  # V_i^a . wb_kb for all vectors in one product
            v = vdesc.values[rows].reshape(3 * nr, -1)
            coef = (v @ wb_block.T).reshape(nr, 3, n_w, mz)
        for k in range(n_w):
            w_k = wm[k, :m][cols] if mono else np.zeros(0)
            q_k = np.empty(nr)
            _kn.species_kernel_derivatives(cos, zeta, w_k, coef[:, :, k] if coef.size else no_coef,
                                         dk[:, k], q_k, k_dip, radial[:, k])
            q[rows, k] = q_k
        if dip:  # u_ik = sum_b c_ib^(zeta-1) wb_kb, all vectors in one product
            u[rows] = (k_dip @ wb_t).reshape(nr, n_w, -1)
        grad = (dk.reshape(-1, mz) @ model.sparse_unit[cols]).reshape(nr, n_w * per, -1)
        _kn.finish_gradient(grad, radial.reshape(nr, n_w * per), unit[rows], norms[rows])
        grad = grad.reshape(nr, n_w, per, -1)
        if mono:
            scalar_grad[rows, :n_w] = grad[:, :, 0]
        if dip:  # channel n_mono + 3 k + a; one component at a time: no reshaped copy
            for a in range(3):
                scalar_grad[rows, n_mono + a::3] = grad[:, :, per - 3 + a]
    a2, a3 = ex.adjoint_arrays(n_w * per)
    if dip:
        vdesc.add_adjoint(u, a2, a3, n_mono)
    desc.add_adjoint(scalar_grad, a2, a3, 0)
    pair_grad = ex.backprop(a2, a3)
    bec = np.zeros((n_w, n, 3, 3))
    out = {}
    dipole = np.zeros((n_w, 3))
    if mono:
        qn = q - q.mean(axis=0)
        z = ex.scatter_monopole(pair_grad[:, :n_w]).transpose(1, 0, 2, 3)
        z[:, :, _DIAG[0], _DIAG[1]] += qn.T[:, :, None]
        if not periodic:
            dq = ex.scatter_with_self(pair_grad[:, :n_w]).transpose(1, 0, 2)   # (K, N, 3)
            rel = unwrapped - unwrapped.mean(axis=0)
            z += rel[None, :, :, None] * dq[:, :, None, :]
            dipole += qn.T @ positions
        bec += z
        out["charges"] = qn.T
        if dip:
            out["bec_monopole"] = z.copy()
    if dip:
        z = ex.scatter_with_self(pair_grad[:, n_mono:]).reshape(n, n_w, 3, 3)
        bec += z.transpose(1, 0, 2, 3)
        if not periodic:
            dipole += np.einsum("iad,ikd->ka", vdesc.values, u)
    out["asr_violation"] = bec.sum(axis=1)
    if periodic:
        bec = asr_project_stack(bec)
        if "bec_monopole" in out:
            out["bec_monopole"] = asr_project_stack(out["bec_monopole"])
    if not pbc.any():
        out["dipole"] = dipole
    out["bec"] = bec
    return out


def _sparse_dipole_weights(model, wm) -> np.ndarray:
    """``wb[k, b] = sum_nu u_{k, b nu} V_b^nu / s**2`` (K, M, Dv) of the dipole weights of each
    row of ``wm``; cached for the weight matrix of :func:`predict_uncertainty` (built once
    per posterior factor, never modified) and for the model's own weights alone (those of
    ``predict_arrays``: :func:`plain_outputs`, every frame of a stream with posterior
    samples; about 1 ms per frame at 200 sparse points per species), computed afresh for
    any other matrix."""
    if wm.shape[0] == 1 and same_memory(wm[0], model.weights):
        return model._dipole_sparse_weights()[None]
    own = getattr(model, "_weight_matrix_cache", None)
    own = own is not None and own[1] is wm
    cached = getattr(model, "_direction_wb_cache", None)
    if own and cached is not None and cached[0] is wm:
        return cached[1]
    m = model.sparse_unit.shape[0]
    wd = wm[:, (m if model._monopole else 0):].reshape(wm.shape[0], m, 3)
    wb = np.einsum("kbn,bnd->kbd", wd, model.sparse_vectors) / model.vector_scale
    if own:
        model._direction_wb_cache = (wm, wb)
    return wb


def _dipole_weight_blocks(model, wm, wb, cols):
    """The sparse dipole weights of one species in the two layouts of the kernel products:
    ``(K mz, Dv)`` (weight vector major) and ``(mz, K Dv)`` (sparse point major). Both are
    copies of ``wb`` (K, M, Dv), some 10 MB each at K = 32 on quartz, so for the cached weight
    matrix of :func:`predict_uncertainty` they are made once per species, not per frame."""
    n_w, mz = wb.shape[0], np.arange(wb.shape[1])[cols].size
    own = getattr(model, "_weight_matrix_cache", None)
    own = own is not None and own[1] is wm
    key = (cols.start, cols.stop) if isinstance(cols, slice) else tuple(np.asarray(cols))
    cache = getattr(model, "_dipole_block_cache", None)
    if own and cache is not None and cache[0] is wm and key in cache[1]:
        return cache[1][key]
    block = np.ascontiguousarray(wb[:, cols]).reshape(n_w * mz, -1)
    by_point = block.reshape(n_w, mz, -1).transpose(1, 0, 2).reshape(mz, -1)
    if own:
        if cache is None or cache[0] is not wm:
            cache = (wm, {})
            model._dipole_block_cache = cache
        cache[1][key] = (block, by_point)
    return block, by_point


def asr_project_stack(bec) -> np.ndarray:
    """:func:`numbec.conventions.asr_project` of each of K BEC sets (K, N, 3, 3)."""
    return bec - bec.mean(axis=1, keepdims=True)


def _with_baseline(model, parts, numbers, positions, total_charge) -> dict:
    """The outputs of ``predict_arrays`` from channel 0 of :func:`channel_outputs` (the
    model's own weights) plus the baseline charges."""
    from numbec.models.base import total_charge_value

    q0n = model._baseline(np.asarray(numbers)) + total_charge_value(total_charge) / len(numbers)
    base = np.zeros((len(numbers), 3, 3))
    base[:, _DIAG[0], _DIAG[1]] = q0n[:, None]  # sums to Q I: the projection keeps it
    bec = base + parts["bec"][0]
    out = {"bec": bec}
    if "bec_monopole" in parts:
        out["bec_monopole"] = base + parts["bec_monopole"][0]
        out["bec_dipole"] = bec - out["bec_monopole"]
    if "charges" in parts:
        out["charges"] = q0n + parts["charges"][0]
    if "dipole" in parts:
        out["dipole"] = q0n @ np.asarray(positions, dtype=np.float64) + parts["dipole"][0]
    out["asr_violation"] = parts["asr_violation"][0]
    return out


def plain_outputs(model, prepared: PreparedStructure, total_charge: float = 0.0) -> dict:
    """The outputs of ``model.predict_arrays`` (without ``bec_std``) from a prepared
    descriptor pass (:func:`prepare_structure`), equal to them to rounding."""
    parts = channel_outputs(model, None, None, None, None, model.weights[None], prepared)
    return _with_baseline(model, parts, prepared.numbers, prepared.positions, total_charge)


def predict_uncertainty(model, positions, numbers, cell, pbc, rank: int | None = 32,
                        n_samples: int = 0, seed=None, total_charge: float = 0.0,
                        prepared: PreparedStructure | None = None,
                        factor: PosteriorFactor | None = None) -> dict:
    """BECs with a streamed uncertainty from the low-rank posterior (one descriptor pass).

    Returns dict with every output of ``model.predict_arrays`` (``bec`` (N, 3, 3) e, and as
    the model has them ``bec_monopole``, ``bec_dipole``, ``charges``, ``dipole``); ``bec_std``
    (N, 3, 3) e,
    ``sqrt(sum_k (Phi L_k)^2 + s_v sigma_v^2 + c r_frame)`` (:func:`residual_variance`; the
    last term only for ``method="residual"``); ``frame_std`` float e, the per-frame predicted
    uncertainty ``sqrt(mean bec_std^2)``; ``bec_directions`` (K, N, 3, 3) e, the BECs of the
    factor columns ``Phi L_k`` (for sampling: ``bec + sum_k xi_k bec_directions[k]`` is a BEC
    of a posterior weight sample); with ``n_samples``: ``bec_samples`` (S, N, 3, 3) e and the
    coefficients ``xi`` (S, K) used: standard normal times ``sqrt(sample_scale /
    variance_scale)``, so that the samples follow ``N(w, s_w Sigma)`` (:func:`sample_scale`).
    ``prepared``: the structure's descriptor pass (:func:`prepare_structure`), if made.
    ``factor``: the :func:`posterior_factor` to use (e.g. one made with ``frames``); default
    ``posterior_factor(model, rank)``.
    """
    fac = posterior_factor(model, rank) if factor is None else factor
    cached = getattr(model, "_weight_matrix_cache", None)
    if cached is None or cached[0] is not fac:  # one matrix per factor: cached products
        cached = (fac, np.ascontiguousarray(np.concatenate([model.weights[None, :],
                                                            fac.factor.T])))
        model._weight_matrix_cache = cached
    parts = channel_outputs(model, positions, numbers, cell, pbc, cached[1], prepared)
    out = _with_baseline(model, parts, numbers, positions, total_charge)
    dirs = parts["bec"][1:]
    extra = 0.0
    if residual_scale(model):
        if prepared is None:
            prepared = prepare_structure(model, positions, numbers, cell, pbc)
        extra = residual_variance(model, numbers=prepared.numbers, unit=prepared.unit)
    std = np.sqrt(np.einsum("knij,knij->nij", dirs, dirs) + fac.noise_variance + extra)
    out.update(bec_std=std, frame_std=float(np.sqrt(np.mean(std ** 2))), bec_directions=dirs)
    bec = out["bec"]
    if n_samples:
        xi = np.random.default_rng(seed).standard_normal((int(n_samples), fac.rank))
        xi *= np.sqrt(sample_scale(model) / variance_scale(model))
        out["xi"] = xi
        out["bec_samples"] = bec[None] + np.einsum("sk,knij->snij", xi, dirs)
    return out


class StreamedUncertaintyModel:
    """A fitted kernel model whose ``bec_std`` and posterior samples come from the low-rank
    factor through adjoint channels (:func:`predict_uncertainty`), for :func:`numbec.predict`.

    model : fitted MonopoleModel, DipoleModel or CombinedModel. rank : K of
    :func:`posterior_factor`. n_samples : S posterior weight samples (0: none), drawn once
    from ``seed``, the same for every frame (sample s is one weight vector over the whole
    trajectory). ``predict_arrays`` returns the model's outputs, ``bec_std`` with
    ``uncertainty=True``, and ``bec_samples`` (S, N, 3, 3) e when S > 0. Everything else
    (species, cutoff, saved state) is the wrapped model's; the state's metadata gains
    ``streamed_uncertainty`` (rank, samples, seed, and the digest of the direction frames)
    so that stores of other settings differ. frames : optional structures ``(positions,
    numbers, cell, pbc)`` like those to be predicted, on which the factor's directions are
    ordered (:func:`posterior_factor`); the factor is made once, here.
    """

    precisions = ("float64",)

    def __init__(self, model, rank: int = 32, n_samples: int = 0, seed: int = 0,
                 frames=None):
        if not hasattr(model, "covariance"):
            raise TypeError(f"{type(model).__name__} has no posterior covariance; streamed "
                            "uncertainty needs a fitted kernel model")
        if int(n_samples) < 0 or int(rank) < 1:
            raise ValueError(f"need rank >= 1 and n_samples >= 0, got {rank}, {n_samples}")
        self.model, self.rank, self.n_samples, self.seed = model, int(rank), int(n_samples), \
            int(seed)
        frames = None if frames is None else list(frames)
        self.frames_digest = None if frames is None else _frames_key(frames)
        self.factor = posterior_factor(model, self.rank, frames=frames)

    def __getattr__(self, name):  # species, cutoff, concurrent_frames, ...
        # the wrapped model's batched or exact paths would silently drop the samples
        if name in ("model", "predict_frames", "predict"):
            raise AttributeError(name)
        return getattr(self.model, name)

    @property
    def class_name(self) -> str:
        """The wrapped model's class name (recorded as the prediction's ``model_class``)."""
        return type(self.model).__name__

    @property
    def saved_model(self):
        """The wrapped model, as saved in its file (its state hash is the prediction's
        ``model_sha256``)."""
        return self.model

    @property
    def outputs(self) -> tuple:
        return tuple(self.model.outputs) + (("bec_samples",) if self.n_samples else ())

    def predict_arrays(self, positions, numbers, cell, pbc, uncertainty=False, *,
                       precision="float64", total_charge=0.0, atom_std=False) -> dict:
        if precision != "float64":
            raise ValueError("streamed uncertainty computes in float64 only")
        prepared = (prepare_structure(self.model, positions, numbers, cell, pbc)
                    if atom_std else None)
        out = predict_uncertainty(self.model, positions, numbers, cell, pbc,
                                  n_samples=self.n_samples, seed=self.seed,
                                  total_charge=total_charge, prepared=prepared,
                                  factor=self.factor)
        if atom_std:
            from numbec.models.atom_std import prepared_output_std

            out.update(prepared_output_std(self.model, prepared))
        for key in ("frame_std", "bec_directions", "xi") + (() if uncertainty
                                                           else ("bec_std",)):
            out.pop(key, None)
        return out

    def state(self):
        metadata, arrays = self.model.state()
        metadata = dict(metadata, streamed_uncertainty={
            "rank": self.rank, "samples": self.n_samples, "seed": self.seed,
            **({} if self.frames_digest is None
               else {"direction_frames_sha256": self.frames_digest})})
        return metadata, arrays

    _state = state  # the name numbec.stream.model_fingerprint used before state()
