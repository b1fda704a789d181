"""Calibration of the predicted BEC uncertainty (bec_std) and of its streamed low-rank form.

Usage::

    python benchmarks/calibration.py                  # the table of docs/benchmarks_models.md
    python benchmarks/calibration.py --quick          # fewer frames, small models (minutes)
    python benchmarks/calibration.py --systems quartz,xtb --models combined --sizes small

Systems: the splits of ``benchmarks/models.py`` (quartz: train 0-149, test 150-200; ZrO2:
OUTCAR.1-80 / 81-119; BaTiO3: first 40 / rest; read from ``../shared/data`` or
``$NUMBEC_SHARED_DATA``) and ``xtb``: GFN2-xTB water clusters with exact finite-difference
APTs (needs tblite; cached in ``--cache``): train on the demo's 40 reference clusters
(``numbec.demo.generate_reference``, (H2O)_n, n = 2-6, 400 K), test on :data:`XTB_TEST`, 18
snapshots of six independent 300 K MDs of clusters of 2-7 molecules from seeds no training
cluster uses, labelled the same way (frames of different clusters, so that the frame rank
correlation measures something).

For every system, model and training size (``small``: 5 training frames; ``large``: the
training range at the stride of ``benchmarks/models.py``) the model is fitted, the held-out
errors of a ``--folds``-fold cross-validation over the training frames only are computed once
(:func:`numbec.models.uncertainty.held_out_errors`), and the test frames are predicted with
the exact ``bec_std`` (design rows). Printed per row: test RMSE (e); coverage of the nominal
68 % / 95 % intervals and NLL (nats per component) of the plain Bayesian variance (``raw``);
the three recalibrations learned from the same held-out errors: the Gaussian
maximum-likelihood scale (``ML``, ``method="likelihood"``), a two-part maximum-likelihood
variance ``a phi^T Sigma phi + b sigma_v^2`` (``2-part``, not offered by the library) and the
split-conformal coverage scale (``cov``, the library's default, ``method="coverage"``) with its
coverages and NLL (``cal``); the per-block columns and ``method="worst_block"``; the
residual recalibration (``method="residual"``: ``s (phi^T Sigma phi + sigma_v^2) + c
r_frame``, with the mean frame residual of the held-out and the test frames, its held-out
95 % coverage per block, test coverages, NLL and frame rank correlation); the frame rank
correlation (Spearman, predicted frame uncertainty
vs actual frame RMSE; a scale does not change it); the streamed low-rank uncertainty
(:func:`numbec.models.uncertainty.predict_uncertainty`, rank ``--rank``): the largest
relative deviation of the per-frame uncertainty from the exact one over the test frames and
(unless ``--no-cost``) its cost relative to a plain prediction (best of 3 per frame, summed);
then the multiplicative residual form ``(phi^T Sigma phi + sigma_v^2) (s + c r_frame)``
(``mult.``, not in the library; fitted like ``residual``: :func:`_residual_factor_scales`,
then the common coverage factor) with its test coverages, NLL and frame rank correlation; and
the held-out NLL and frame rank correlation of the default, the additive ``residual`` and the
multiplicative form on the held-out errors that fitted them (training frames only); last,
under ``method="two_part"``, the largest deviation of the streamed low-rank per-frame
uncertainty from the exact one (its epistemic factor ``s`` is the ``variance_scale`` that the
low-rank uncertainty and ``atom_std`` use), for the library's factor (leading directions and
random probes) and for the leading directions alone, the test 95 % coverage of the streamed
per-component ``bec_std`` both ways, and ``s`` against the weight scale ``s_w`` of the
posterior samples (:func:`numbec.models.uncertainty.sample_scale`). The ``cov`` columns use
``method="coverage"`` explicitly (the library's default before ``two_part``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# per-frame matrices are small: a threaded BLAS on a shared machine only adds contention
# (numbec.predict limits it the same way)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import CLASSES, SYSTEMS, _capped_n_sparse, load_split  # noqa: E402
from xtb_clusters import XTB_TEST, independent_clusters  # noqa: E402, F401

SMALL = 5


def load_xtb(cache: Path):
    """Training frames (the demo's 40 reference clusters, (H2O)_n with n = 2-6) and test
    frames (:data:`XTB_TEST`: 18 snapshots of six independent MDs of other clusters, n = 2-7)
    of GFN2-xTB water clusters."""
    from numbec import demo

    cache.mkdir(parents=True, exist_ok=True)
    train = demo.generate_reference(demo.DemoConfig.full(), cache, log=lambda *a: None)
    test = independent_clusters(cache, log=lambda *a: None)
    return train, test, f"train {len(train)} clusters, test {len(test)} (independent MDs)"


def _fit(kind, train, hyper, descriptors):
    import numbec
    from numbec.descriptors import DescriptorSettings

    species = sorted({int(z) for a in train for z in a.numbers})
    kw = dict(hyper)
    kw["n_sparse"] = _capped_n_sparse(train, int(kw["n_sparse"]))
    settings = DescriptorSettings(species=tuple(species), **descriptors)
    return getattr(numbec, CLASSES[kind])(settings=settings, **kw).fit(train)


def _best_of(fn, repeat=3):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _residual_factor_scales(err, variance, frame_residual,
                           min_scale: float = 0.0) -> tuple[float, float]:
    """Maximum-likelihood ``(s, c)`` of a Gaussian predictive variance
    ``variance (s + c r)`` for held-out errors: ``err`` (n,) e, ``variance`` (n,) e^2 (the
    Bayesian ``phi^T Sigma phi + sigma_v^2``), ``frame_residual`` ``r`` (n,) dimensionless
    (>= 0), with ``s >= min_scale`` and ``c >= 0`` (both dimensionless; ``c`` per unit
    residual). The frame's residual multiplies its Bayesian variance, so the shape of the
    variance within a frame is kept. Minimises ``mean(ln v + err^2 / v)`` by L-BFGS-B from
    several starts, with ``r`` normalised by its mean for the conditioning. The
    multiplicative alternative to :func:`numbec.models.uncertainty.residual_scales` (the
    additive form of ``method="residual"``); not in the library (docs/benchmarks_models.md,
    section 6)."""
    from scipy.optimize import minimize

    from numbec.models.uncertainty import residual_fit_inputs

    e2, var, r = residual_fit_inputs(err, variance, frame_residual, "_residual_factor_scales")
    z2 = e2 / var
    m = float(np.mean(z2))
    if r.mean() == 0.0:  # no residual anywhere: the one-scale ML, floored
        return max(m, min_scale), 0.0
    rn = r / r.mean()  # c' = c mean(r): both unknowns of the order of the ML scale

    def nll(x):
        f = x[0] + x[1] * rn
        g = 1.0 / f - z2 / f ** 2
        return float(np.mean(np.log(f) + z2 / f)), np.array([np.mean(g), np.mean(g * rn)])

    best = None
    for frac in (0.0, 0.5, 0.9, 1.0):  # share of the ML scale given to the residual term
        x0 = [max((1.0 - frac) * m, min_scale, 1e-6), max(frac * m, 1e-6)]
        res = minimize(nll, x0, jac=True, method="L-BFGS-B",
                       bounds=[(max(min_scale, 1e-12), None), (0.0, None)])
        if best is None or res.fun < best.fun:
            best = res
    return float(best.x[0]), float(best.x[1] / r.mean())


def _metrics_under(unc, pred, ref, sizes, epi, noise, a, b=None):
    """Calibration metrics with the variance ``a epi + b noise`` (``b`` None: ``a``)."""
    std = np.sqrt(a * epi + (a if b is None else b) * noise)
    return unc.calibration_metrics(pred, std, ref, sizes)


def row(kind, train, test, hyper, descriptors, folds, rank, cost=True) -> dict:
    from numbec.models import uncertainty as unc

    t0 = time.perf_counter()
    model = _fit(kind, train, hyper, descriptors)
    held = unc.held_out_errors(model, train, folds)
    unc.recalibrate(model, train, held_out=held, method="coverage")  # the cov columns
    info = model.training["variance_scale_fit"]
    two = unc.two_part_scales(held["err"], held["epistemic"], held["noise"])
    # the two-part shape with the noise floored at 1 % of sigma_v^2, then one common factor
    # that makes the held-out 95 % interval hold 95 %
    a_f, b_f = unc.two_part_scales(held["err"], held["epistemic"], held["noise"], 0.01)
    c_f = unc.coverage_scale(held["err"] / np.sqrt(a_f * held["epistemic"]
                                                   + b_f * held["noise"]), 0.95)
    two_cov = (c_f * a_f, c_f * b_f)
    fit_s = time.perf_counter() - t0
    scale = model.variance_scale
    preds, stds, refs, sizes, frame_exact, frame_low = [], [], [], [], [], []
    t_plain = t_low = 0.0
    for atoms in test:
        args = (atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)
        out = model.predict_arrays(*args, uncertainty=True)
        preds.append(out["bec"])
        stds.append(out["bec_std"])
        refs.append(np.asarray(atoms.arrays["bec"], dtype=np.float64))
        sizes.append(len(atoms))
        frame_exact.append(float(np.sqrt(np.mean(out["bec_std"] ** 2))))
        frame_low.append(unc.predict_uncertainty(model, *args, rank=rank)["frame_std"])
        if cost:
            t_plain += _best_of(lambda a=args: model.predict_arrays(*a))
            t_low += _best_of(lambda a=args: unc.predict_uncertainty(model, *a, rank=rank))
    pred, std, ref = (np.concatenate(x) for x in (preds, stds, refs))
    noise = np.full(std.shape, model.sigma_v2)
    epi = np.clip(std ** 2 / scale - noise, 0.0, None)
    raw = _metrics_under(unc, pred, ref, sizes, epi, noise, 1.0)
    cal = unc.calibration_metrics(pred, std, ref, sizes)
    lik = _metrics_under(unc, pred, ref, sizes, epi, noise, info["scale_likelihood"])
    two_m = _metrics_under(unc, pred, ref, sizes, epi, noise, *two)
    two_cov_m = _metrics_under(unc, pred, ref, sizes, epi, noise, *two_cov)
    worst = _metrics_under(unc, pred, ref, sizes, epi, noise, info["scale_worst_block"])
    # method="residual": s (phi^T Sigma phi + sigma_v^2) + c r_frame, r_frame of each test
    # frame from the fitted model (the same held-out errors gave s and c)
    s_r, c_r = info["residual_scales"]
    r_test = np.concatenate([np.full((len(a), 3, 3), unc.mean_frame_residual(
        model, a.positions, a.numbers, np.asarray(a.cell), a.pbc)) for a in test])
    resid = unc.calibration_metrics(pred, np.sqrt(s_r * (epi + noise) + c_r * r_test), ref,
                                    sizes)
    held_var = s_r * (held["epistemic"] + held["noise"]) + c_r * held["frame_residual"]
    held_z = np.abs(held["err"]) / np.sqrt(held_var)
    resid_blocks = [float(np.mean(held_z[held["block"] == k] <= 1.959963984540054))
                    for k in np.unique(held["block"])]
    # multiplicative residual form: (phi^T Sigma phi + sigma_v^2) (s + c r_frame), (s, c) by
    # ML on the same held-out errors, then the common factor of the held-out 95 % coverage
    held_bayes = held["epistemic"] + held["noise"]
    s_m, c_m = _residual_factor_scales(held["err"], held_bayes, held["frame_residual"],
                                          unc.MIN_BAYES_SCALE)
    k_m = unc.coverage_scale(held["err"] / np.sqrt(held_bayes * (s_m + c_m
                                                                 * held["frame_residual"])))
    k_m = 1.0 if not np.isfinite(k_m) else k_m
    s_m, c_m = k_m * s_m, k_m * c_m
    mult = unc.calibration_metrics(pred, np.sqrt((epi + noise) * (s_m + c_m * r_test)), ref,
                                   sizes)
    # held-out metrics of the three stored forms (frames in training order: the blocks are
    # contiguous), the same held-out errors that fitted them
    h_sizes = [len(a) for a in train]
    h_err = held["err"].reshape(-1, 3, 3)
    h_zero = np.zeros_like(h_err)

    def held_metrics(var):
        return unc.calibration_metrics(h_err, np.sqrt(var).reshape(-1, 3, 3), h_zero, h_sizes)

    held_cov = held_metrics(scale * held_bayes)
    held_add = held_metrics(held_var)
    held_mult = held_metrics(held_bayes * (s_m + c_m * held["frame_residual"]))
    dev = np.abs(np.array(frame_low) / np.array(frame_exact) - 1.0)
    # method="two_part" on the same held-out errors: its factor of phi^T Sigma phi is the
    # variance_scale the low-rank uncertainty and atom_std use; its streamed low-rank frame
    # uncertainty against the exact one, and that factor against the samples' weight scale
    two_low = _two_part_lowrank(model, train, held, test, epi, noise, rank, pred, ref, sizes)
    return {"rmse": float(np.sqrt(np.mean((pred - ref) ** 2))), "raw": raw, "cal": cal,
            "likelihood": lik, "two_part": two_m, "two_part_scales": two,
            "two_part_coverage": two_cov_m, "two_part_coverage_scales": two_cov,
            "scale": scale, "scale_likelihood": info["scale_likelihood"],
            "held_out_coverage_95": info["coverage_95_unscaled"],
            "worst_block": worst, "scale_worst_block": info["scale_worst_block"],
            "block_scales": info["block_scales"],
            "block_coverage_95_unscaled": info["block_coverage_95_unscaled"],
            "residual": resid, "residual_scales": [s_r, c_r],
            "residual_block_coverage_95": resid_blocks,
            "multiplicative": mult, "multiplicative_scales": [s_m, c_m],
            "held_out_coverage": held_cov, "held_out_residual": held_add,
            "held_out_multiplicative": held_mult,
            "frame_residual_held_out": float(np.mean(held["frame_residual"])),
            "frame_residual_test": float(np.mean(r_test)),
            "n_train": len(train), "n_test": len(test), "fit_s": fit_s,
            "lowrank_max_dev": float(dev.max()),
            "lowrank_cost": t_low / t_plain if cost else float("nan"),
            "rank": rank, **two_low}


def _leading_only_std(model, atoms, rank, noise_variance):
    """(N, 3, 3) e: the streamed ``bec_std`` of the ``rank`` leading posterior directions
    alone, divided by the fraction of the training-row variance they carry (the library's
    estimate before the random probes of :func:`numbec.models.uncertainty.posterior_factor`),
    for comparison."""
    from numbec.models import uncertainty as unc

    fac = unc.posterior_factor(model, rank, probes=False)
    becs = unc.direction_becs(model, atoms.positions, atoms.numbers, np.asarray(atoms.cell),
                              atoms.pbc, fac.factor.T)
    return np.sqrt((becs ** 2).sum(axis=0) / fac.captured + noise_variance)


def _two_part_lowrank(model, train, held, test, epi, noise, rank, pred, ref, sizes) -> dict:
    """Under ``method="two_part"`` (the library's default): the largest relative deviation of
    the streamed low-rank per-frame uncertainty (leading directions and random probes) from
    the exact one over the test frames, and that of the leading directions alone
    (:func:`_leading_only_std`), the test coverage of the streamed per-component ``bec_std``
    (both ways), the epistemic factor ``s`` (``variance_scale``) and the weight scale ``s_w``
    of the posterior samples (:func:`numbec.models.uncertainty.sample_scale`). Leaves the
    model recalibrated with ``method="coverage"``, as it came."""
    from numbec.models import uncertainty as unc

    unc.recalibrate(model, train, held_out=held, method="two_part")
    s, s_v, s_w = model.variance_scale, unc.noise_scale(model), unc.sample_scale(model)
    nv = s_v * model.sigma_v2
    var = (s * epi + s_v * noise).reshape(-1, 9)
    dev, dev_lead, low_std, lead_std, start = [], [], [], [], 0
    for atoms in test:
        exact = float(np.sqrt(np.mean(var[start:start + len(atoms)])))
        start += len(atoms)
        low = unc.predict_uncertainty(model, atoms.positions, atoms.numbers,
                                      np.asarray(atoms.cell), atoms.pbc, rank=rank)
        low_std.append(low["bec_std"])
        dev.append(abs(low["frame_std"] / exact - 1.0))
        lead = _leading_only_std(model, atoms, rank, nv)
        lead_std.append(lead)
        dev_lead.append(abs(float(np.sqrt(np.mean(lead ** 2))) / exact - 1.0))
    streamed = unc.calibration_metrics(pred, np.concatenate(low_std), ref, sizes)
    leading = unc.calibration_metrics(pred, np.concatenate(lead_std), ref, sizes)
    unc.recalibrate(model, train, held_out=held, method="coverage")
    return {"two_part_lowrank_max_dev": float(max(dev)),
            "two_part_lowrank_max_dev_leading": float(max(dev_lead)),
            "two_part_streamed": streamed, "two_part_streamed_leading": leading,
            "two_part_scale": s, "two_part_noise_scale": s_v, "weight_scale": s_w}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default="quartz,zro2,batio3,xtb")
    parser.add_argument("--models", default="monopole,dipole,combined")
    parser.add_argument("--sizes", default="small,large")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--n-sparse", type=int, default=None,
                        help="sparse points per species (default: benchmarks/models.py's)")
    parser.add_argument("--quick", action="store_true",
                        help="every 4th training / 3rd test frame, at most 50 sparse points")
    parser.add_argument("--max-test", type=int, default=None, help="at most this many test "
                        "frames (evenly spaced)")
    parser.add_argument("--no-cost", action="store_true", help="skip timing the low-rank "
                        "uncertainty against a plain prediction")
    parser.add_argument("--cache", default="numbec-demo/cache", help="xTB data cache")
    parser.add_argument("--json", default=None, help="also write all rows to this file")
    args = parser.parse_args(argv)
    print("| system | model | train | test | RMSE e | cov68 raw | cov95 raw | NLL raw "
          "| s (ML) | cov95 ML | NLL ML | a, b (2-part ML) | cov95 2-part | NLL 2-part "
          "| a, b (2-part cov) | cov95 2-part cov | NLL 2-part cov "
          "| s (cov) | cov68 cal | cov95 cal | NLL cal "
          "| held-out cov95 raw per block | s (worst block) | cov95 worst block "
          "| mean r_frame held-out / test | s, c (residual) | held-out cov95 residual per block "
          "| cov68 residual | cov95 residual | NLL residual | frame rank corr residual "
          "| frame rank corr | low-rank max dev | low-rank cost "
          "| s, c (mult.) | cov68 mult. | cov95 mult. | NLL mult. | frame rank corr mult. "
          "| held-out NLL cov / add. / mult. | held-out rank corr cov / add. / mult. "
          "| 2-part: low-rank max dev, probes / leading only "
          "| streamed cov95 probes / leading only | 2-part s / s_w |")
    print("|---" * 44 + "|")
    rows = []
    for system in args.systems.split(","):
        if system == "xtb":
            from numbec.demo import _settings

            train_all, test, _ = load_xtb(Path(args.cache))
            hyper = {"zeta": 4, "n_sparse": 60, "seed": 7}
            descriptors = {k: v for k, v in _settings().to_dict().items() if k != "species"}
        else:
            train_all, test, _ = load_split(system, args.quick)
            hyper = {k: v for k, v in SYSTEMS[system]["model"].items()}
            descriptors = SYSTEMS[system]["descriptors"]
        if args.n_sparse or args.quick:
            hyper["n_sparse"] = args.n_sparse or min(50, hyper["n_sparse"])
        if args.max_test and len(test) > args.max_test:
            idx = np.linspace(0, len(test) - 1, args.max_test).round().astype(int)
            test = [test[i] for i in idx]
        for size in args.sizes.split(","):
            if size == "small":
                idx = np.linspace(0, len(train_all) - 1, SMALL).round().astype(int)
                train = [train_all[i] for i in idx]
            else:
                train = train_all
            for kind in args.models.split(","):
                r = row(kind, train, test, hyper, descriptors, args.folds, args.rank,
                        not args.no_cost)
                r.update(system=system, model=kind, size=size)
                rows.append(r)
                raw, cal, lik, two = r["raw"], r["cal"], r["likelihood"], r["two_part"]
                a, b = r["two_part_scales"]
                a_c, b_c = r["two_part_coverage_scales"]
                twc = r["two_part_coverage"]
                held_keys = ("held_out_coverage", "held_out_residual", "held_out_multiplicative")
                held_nll = " / ".join(f"{r[k]['nll']:.3f}" for k in held_keys)
                held_rank = " / ".join(f"{r[k]['frame_rank_correlation']:.2f}"
                                       for k in held_keys)
                print(f"| {system} | {kind} | {r['n_train']} | {r['n_test']} | {r['rmse']:.4f} "
                      f"| {100 * raw['coverage_68']:.1f} | {100 * raw['coverage_95']:.1f} "
                      f"| {raw['nll']:.2f} | {r['scale_likelihood']:.3g} "
                      f"| {100 * lik['coverage_95']:.1f} | {lik['nll']:.2f} "
                      f"| {a:.3g}, {b:.3g} | {100 * two['coverage_95']:.1f} | {two['nll']:.2f} "
                      f"| {a_c:.3g}, {b_c:.3g} | {100 * twc['coverage_95']:.1f} "
                      f"| {twc['nll']:.2f} "
                      f"| {r['scale']:.3g} "
                      f"| {100 * cal['coverage_68']:.1f} | {100 * cal['coverage_95']:.1f} "
                      f"| {cal['nll']:.2f} "
                      f"| {' / '.join(f'{100 * c:.0f}' for c in r['block_coverage_95_unscaled'])} "
                      f"| {r['scale_worst_block']:.3g} "
                      f"| {100 * r['worst_block']['coverage_95']:.1f} "
                      f"| {r['frame_residual_held_out']:.3g} / {r['frame_residual_test']:.3g} "
                      f"| {r['residual_scales'][0]:.3g}, {r['residual_scales'][1]:.3g} "
                      f"| {' / '.join(f'{100 * c:.0f}' for c in r['residual_block_coverage_95'])} "
                      f"| {100 * r['residual']['coverage_68']:.1f} "
                      f"| {100 * r['residual']['coverage_95']:.1f} "
                      f"| {r['residual']['nll']:.2f} "
                      f"| {r['residual']['frame_rank_correlation']:.2f} "
                      f"| {cal['frame_rank_correlation']:.2f} "
                      f"| {100 * r['lowrank_max_dev']:.1f} % | {r['lowrank_cost']:.2f}x "
                      f"| {r['multiplicative_scales'][0]:.3g}, "
                      f"{r['multiplicative_scales'][1]:.3g} "
                      f"| {100 * r['multiplicative']['coverage_68']:.1f} "
                      f"| {100 * r['multiplicative']['coverage_95']:.1f} "
                      f"| {r['multiplicative']['nll']:.2f} "
                      f"| {r['multiplicative']['frame_rank_correlation']:.2f} "
                      f"| {held_nll} | {held_rank} "
                      f"| {100 * r['two_part_lowrank_max_dev']:.1f} / "
                      f"{100 * r['two_part_lowrank_max_dev_leading']:.1f} % "
                      f"| {100 * r['two_part_streamed']['coverage_95']:.1f} / "
                      f"{100 * r['two_part_streamed_leading']['coverage_95']:.1f} "
                      f"| {r['two_part_scale']:.3g} / {r['weight_scale']:.3g} |",
                      flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
