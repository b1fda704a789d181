"""Calibration of the predicted BEC uncertainty (bec_std) and of its streamed low-rank form.

Usage::

    python benchmarks/calibration.py                  # the tables of docs/benchmarks_models.md
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
(:func:`numbec.models.uncertainty.held_out_errors`, contiguous blocks), and the test frames
are predicted with the exact ``bec_std`` (design rows). Two tables:

1. The library's default recalibration (``method="two_part"``): test RMSE (e); coverage of
   the nominal 68 % and 95 % intervals; NLL (nats per component); frame rank correlation
   (Spearman, each frame's predicted uncertainty ``sqrt(mean bec_std^2)`` against its
   RMSE); the central 95 % range of the 95 % coverage over the test frames resampled in
   blocks of consecutive frames (:func:`numbec.models.uncertainty.coverage_intervals`: how
   much the coverage of a test set this size moves with the draw of its frames, neighbouring
   frames of one MD drawn together); whether the 95 % coverage is
   in [90, 98] %; then the streamed low-rank
   ``bec_std`` (:func:`numbec.models.uncertainty.predict_uncertainty`, rank ``--rank``:
   leading directions and random probes, the directions ordered on
   :data:`~numbec.models.uncertainty.DIRECTION_FRAMES` evenly spaced test frames, as
   ``numbec.predict`` orders them on its trajectory) with its coverages, the largest relative
   deviation of its per-frame uncertainty from the exact one over the test frames (and the
   same with the directions ordered on the training rows) and (unless
   ``--no-cost``) its cost relative to a plain prediction (best of 3 per frame, summed);
   last the epistemic and noise factors ``s``, ``s_v`` and the weight scale ``s_w`` of the
   posterior samples (:func:`numbec.models.uncertainty.sample_scale`).
2. Every recalibration the library offers, learned from the same held-out errors: the test
   95 % coverage and NLL with the plain Bayesian variance (``raw``) and with
   ``method="likelihood"``, ``"coverage"``, ``"worst_block"``, ``"residual"`` and
   ``"two_part"``; the raw held-out 95 % coverage of each block (what the recalibrations
   see) and the frame rank correlation under ``"residual"`` (the others keep the raw
   ranking, since a frame's mean variance stays a monotone function of its raw one).
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


def row(kind, train, test, hyper, descriptors, folds, rank, cost=True) -> dict:
    """Fit, cross-validate and predict one (system, model, size); see the module docstring."""
    from numbec.models import uncertainty as unc

    t0 = time.perf_counter()
    model = _fit(kind, train, hyper, descriptors)  # not recalibrated: variance scale 1
    held = unc.held_out_errors(model, train, folds)
    fit_s = time.perf_counter() - t0
    preds, raw_std, refs, sizes, residuals = [], [], [], [], []
    for atoms in test:
        args = (atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)
        out = model.predict_arrays(*args, uncertainty=True)
        preds.append(out["bec"])
        raw_std.append(out["bec_std"])
        refs.append(np.asarray(atoms.arrays["bec"], dtype=np.float64))
        sizes.append(len(atoms))
        residuals.append(np.full((len(atoms), 3, 3), unc.mean_frame_residual(model, *args)))
    pred, std, ref, r_test = (np.concatenate(x) for x in (preds, raw_std, refs, residuals))
    # the two parts of the raw variance: phi^T Sigma phi and sigma_v^2
    noise = np.full(std.shape, model.sigma_v2)
    epi = np.clip(std ** 2 - noise, 0.0, None)
    info = unc.scales_from_held_out(held, "two_part")
    s_r, c_r = info["residual_scales"]
    a, b = info["two_part_scales"]
    variances = {"raw": epi + noise,
                 "likelihood": info["scale_likelihood"] * (epi + noise),
                 "coverage": info["scale_coverage"] * (epi + noise),
                 "worst_block": info["scale_worst_block"] * (epi + noise),
                 "residual": s_r * (epi + noise) + c_r * r_test,
                 "two_part": a * epi + b * noise}
    methods = {name: unc.calibration_metrics(pred, np.sqrt(var), ref, sizes)
               for name, var in variances.items()}
    # the streamed low-rank bec_std of the model recalibrated as the library does by default
    unc.recalibrate(model, train, held_out=held, method="two_part")
    exact_var = variances["two_part"].reshape(-1, 9)
    # as numbec.predict does: the directions ordered on evenly spaced frames of the set
    pick = np.unique(np.linspace(0, len(test) - 1, unc.DIRECTION_FRAMES).round().astype(int))
    factor = unc.posterior_factor(model, rank, frames=[
        (a.positions, a.numbers, np.asarray(a.cell), a.pbc) for a in (test[i] for i in pick)])
    trained = unc.posterior_factor(model, rank)  # directions ordered on the training rows
    low_std, dev, dev_trained, start = [], [], [], 0
    t_plain = t_low = 0.0
    for atoms in test:
        args = (atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc)
        low = unc.predict_uncertainty(model, *args, factor=factor)
        low_std.append(low["bec_std"])
        exact = float(np.sqrt(np.mean(exact_var[start:start + len(atoms)])))
        start += len(atoms)
        dev.append(abs(low["frame_std"] / exact - 1.0))
        dev_trained.append(abs(unc.predict_uncertainty(model, *args, factor=trained)
                               ["frame_std"] / exact - 1.0))
        if cost:
            t_plain += _best_of(lambda a=args: model.predict_arrays(*a))
            t_low += _best_of(lambda a=args: unc.predict_uncertainty(model, *a,
                                                                     factor=factor))
    return {"rmse": float(np.sqrt(np.mean((pred - ref) ** 2))), "methods": methods,
            "streamed": unc.calibration_metrics(pred, np.concatenate(low_std), ref, sizes),
            "streamed_max_frame_dev": float(max(dev)),
            "streamed_max_frame_dev_training_directions": float(max(dev_trained)),
            "streamed_cost": t_low / t_plain if cost else float("nan"),
            "scales": {"likelihood": info["scale_likelihood"],
                       "coverage": info["scale_coverage"],
                       "worst_block": info["scale_worst_block"],
                       "residual": [s_r, c_r], "two_part": [a, b],
                       "weight_scale": unc.sample_scale(model)},
            "block_coverage_95_unscaled": info.get("block_coverage_95_unscaled", []),
            "n_train": len(train), "n_test": len(test), "fit_s": fit_s, "rank": rank}


def _percent_range(interval) -> str:
    """``low-high`` in % of a coverage's range over resampled test frames."""
    low, high = interval
    return "n/a" if np.isnan(low) else f"{100 * low:.1f}-{100 * high:.1f}"


#: Columns of the second table, in order: the recalibrations of ``row()["methods"]``.
METHODS = ("raw", "likelihood", "coverage", "worst_block", "residual", "two_part")


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
    print(f"### Default recalibration (`two_part`), exact and streamed (rank {args.rank})\n")
    print("| system | model | train | test | RMSE e | cov68 | cov95 | cov95 over resampled "
          "test frames | NLL | frame rank corr | in target | streamed cov68 | streamed cov95 "
          "| streamed max frame dev | (training directions) | streamed cost "
          "| s / s_v / s_w |")
    print("|---" * 17 + "|")
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
                two, low = r["methods"]["two_part"], r["streamed"]
                sc = r["scales"]
                cost = "n/a" if args.no_cost else f"{r['streamed_cost']:.2f}x"
                target = "yes" if 0.90 <= two["coverage_95"] <= 0.98 else "**no**"
                print(f"| {system} | {kind} | {r['n_train']} | {r['n_test']} | {r['rmse']:.4f} "
                      f"| {100 * two['coverage_68']:.1f} | {100 * two['coverage_95']:.1f} "
                      f"| {_percent_range(two['coverage_95_interval'])} | {two['nll']:.2f} "
                      f"| {two['frame_rank_correlation']:.2f} | {target} "
                      f"| {100 * low['coverage_68']:.1f} | {100 * low['coverage_95']:.1f} "
                      f"| {100 * r['streamed_max_frame_dev']:.1f} % "
                      f"| {100 * r['streamed_max_frame_dev_training_directions']:.1f} % "
                      f"| {cost} | {sc['two_part'][0]:.3g} / "
                      f"{sc['two_part'][1]:.3g} / {sc['weight_scale']:.3g} |", flush=True)
    print("\n### Every recalibration from the same held-out errors: test cov95 % (NLL)\n")
    print("| system | model | train | held-out cov95 raw per block | "
          + " | ".join(METHODS) + " | frame rank corr residual |")
    print("|---" * (5 + len(METHODS)) + "|")
    for r in rows:
        blocks = " / ".join(f"{100 * c:.0f}" for c in r["block_coverage_95_unscaled"])
        cells = " | ".join(f"{100 * r['methods'][m]['coverage_95']:.1f} "
                           f"({r['methods'][m]['nll']:.2f})" for m in METHODS)
        print(f"| {r['system']} | {r['model']} | {r['n_train']} | {blocks} | {cells} "
              f"| {r['methods']['residual']['frame_rank_correlation']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
