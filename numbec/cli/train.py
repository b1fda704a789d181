"""``numbec train DATA... [--model {combined,monopole,dipole}] -o MODEL``: fit a kernel BEC model.

Reads the reference frames with ``numbec.read_bec`` (any format it knows), builds the
descriptor settings for the species found in the data, fits the model and writes it as a
``.npz`` model file (``numbec.load_model`` reads it back). The summary gives the training
time and the training-set error next to a species-mean baseline (``--no-train-error``
skips that extra prediction pass). The default model is ``combined``, the most accurate of the
three (docs/models.md); ``monopole`` is the cheapest.

Hyperparameters and their defaults (docs/method.md, sections Descriptors to Bayesian regression):

* kernel: ``--zeta`` polynomial kernel exponent;
* sparse reference environments per species: ``--n-sparse`` (one count, or per species as
  ``Si:100,O:300``), ``--sparse-method`` cur|fps, ``--seed``;
* regression: ``--regression`` bayesian|ridge (bayesian: evidence maximisation with
  predictive variances), ``--ridge`` regulariser of ridge regression;
* descriptors (Å): ``--cutoff-radial``, ``--cutoff-angular``, ``--sigma``, ``--n-radial``,
  ``--n-angular``, ``--l-max``, ``--radial-weight`` beta of ``[sqrt(beta) X2, sqrt(1-beta) X3]``.

Each option below shows its default, taken from the model and descriptor classes.
"""

from __future__ import annotations

import sys
import time
from dataclasses import fields

from numbec.cli._bec_data import (
    add_data_arguments,
    add_progress_argument,
    describe_frames,
    progress_choice,
    read_frames,
)

#: --model choice -> class name in numbec.models
MODELS = {"monopole": "MonopoleModel", "dipole": "DipoleModel", "combined": "CombinedModel"}

#: Default --model: the one docs/models.md recommends.
DEFAULT_MODEL = "combined"
#: numbec.models.uncertainty.SCALE_METHODS, spelled out so that --help imports no numpy
CALIBRATION_METHODS = ("coverage", "two_part", "likelihood", "worst_block", "residual")
#: Folds of the default recalibration of bec_std (the calibration benchmark's setting,
#: docs/benchmarks_models.md section 6: the 95 % interval within [90, 98] % on 23 of its 24
#: test sets, against 14 for the raw Bayesian variance). At most one per training frame.
AUTO_CALIBRATION_FOLDS = 5
#: Model hyperparameters exposed as flags (constructor keywords of the kernel models).
HYPERPARAMETERS = ("zeta", "n_sparse", "sparse_method", "regression", "ridge", "seed")


#: Defaults of :data:`HYPERPARAMETERS`: those of the kernel models' constructor
#: (``numbec.models._kernel_model.KernelBECModel``), kept here so that ``numbec train --help``
#: does not import Numba; ``tests/test_cli_main.py`` checks that they agree.
MODEL_DEFAULTS = {"zeta": 4, "n_sparse": 200, "sparse_method": "cur", "regression": "bayesian",
                  "ridge": 1e-6, "seed": 0}

#: Descriptor settings exposed as flags (DescriptorSettings fields except species).
DESCRIPTOR_FLAGS = (
    ("cutoff_radial", float, "cutoff R2 of the two-body descriptor, Å"),
    ("cutoff_angular", float, "cutoff R3 of the three-body descriptor, Å"),
    ("sigma", float, "Gaussian smearing width, Å"),
    ("n_radial", int, "radial basis functions of the two-body descriptor"),
    ("n_angular", int, "radial basis functions per l of the three-body descriptor"),
    ("l_max", int, "largest angular momentum of the three-body descriptor"),
    ("radial_weight", float, "weight beta of the two-body part, in [0, 1]"),
)


def _descriptor_defaults() -> dict:
    from numbec.descriptors.settings import DescriptorSettings

    return {f.name: f.default for f in fields(DescriptorSettings)}


def parse_n_sparse(text: str):
    """``"200"`` -> 200; ``"Si:100,O:300"`` or ``"14:100,8:300"`` -> {14: 100, 8: 300}."""
    from ase.data import atomic_numbers

    text = str(text).strip()
    if ":" not in text:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{text!r}: expected an integer or SYMBOL:N,...") from None
        if value < 1:
            raise ValueError(f"must be >= 1, got {value}")
        return value
    out = {}
    for item in text.split(","):
        name, _, count = item.partition(":")
        name = name.strip()
        z = int(name) if name.isdigit() else atomic_numbers.get(name)
        try:
            n = int(count)
        except ValueError:
            n = 0
        if z is None or n < 1:
            raise ValueError(
                f"cannot read {item!r}; expected SYMBOL:N with N >= 1, e.g. Si:100"
            )
        out[int(z)] = n
    return out


def _n_sparse_arg(text: str):
    import argparse

    try:
        return parse_n_sparse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers):
    parser = subparsers.add_parser(
        "train",
        help="fit a monopole, dipole or combined kernel model to reference BECs",
        description=__doc__.split("\n\n", 1)[1],
    )
    add_data_arguments(parser, "training data")
    parser.add_argument("--model", choices=tuple(MODELS), default=DEFAULT_MODEL,
                        help=f"model type (default: {DEFAULT_MODEL})")
    parser.add_argument("-o", "--out", required=True, metavar="MODEL",
                        help="output model file (.npz appended if missing)")
    hyper = parser.add_argument_group("model hyperparameters")
    defaults = MODEL_DEFAULTS
    hyper.add_argument("--zeta", type=int, default=defaults["zeta"],
                       help="polynomial kernel exponent (default: %(default)s)")
    hyper.add_argument("--n-sparse", type=_n_sparse_arg, default=defaults["n_sparse"],
                       metavar="N|SYM:N,...",
                       help="sparse reference environments per species (default: %(default)s)")
    hyper.add_argument("--sparse-method", choices=("cur", "fps"),
                       default=defaults["sparse_method"],
                       help="CUR leverage scores or farthest-point sampling (default: %(default)s)")
    hyper.add_argument("--regression", choices=("bayesian", "ridge"),
                       default=defaults["regression"],
                       help="Bayesian evidence maximisation or fixed ridge (default: %(default)s)")
    hyper.add_argument("--ridge", type=float, default=defaults["ridge"],
                       help="ridge regulariser for --regression ridge (default: %(default)s)")
    hyper.add_argument("--seed", type=int, default=defaults["seed"],
                       help="random seed of the sparse selection (default: %(default)s)")
    desc = parser.add_argument_group("descriptor hyperparameters")
    descriptor_defaults = _descriptor_defaults()
    for name, kind, text in DESCRIPTOR_FLAGS:
        desc.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                          help=f"{text} (default: {descriptor_defaults[name]})")
    parser.add_argument("--calibrate-folds", type=int, default=None, metavar="K",
                        help="learn the scales of the predictive variance (bec_std) by K-fold "
                             "cross-validation over the training frames (K more fits; saved "
                             f"with the model); default {AUTO_CALIBRATION_FOLDS} (fewer with "
                             "fewer training frames); 0: no recalibration (the raw Bayesian "
                             "variance, which under-covers on most benchmark test sets)")
    parser.add_argument("--calibration-method", choices=CALIBRATION_METHODS,
                        default="two_part",
                        help="how --calibrate-folds sets the scale: two_part (separate "
                             "scales of the epistemic and noise parts, then 95 %% of the "
                             "held-out errors inside the 95 %% interval), coverage (one scale "
                             "of the whole variance, 95 %% of the held-out errors inside the "
                             "95 %% interval), likelihood "
                             "(Gaussian maximum likelihood) or worst_block (95 %% of the "
                             "held-out errors of every block: for training frames of mixed "
                             "difficulty, e.g. two temperatures) or residual (a variance "
                             "term growing with the frame's mean Nystrom residual against "
                             "the sparse points); default: %(default)s")
    parser.add_argument("--no-train-error", action="store_true",
                        help="skip the training-set error in the summary")
    add_progress_argument(parser)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.set_defaults(func=run)
    return parser


def build_model(args, frames):
    """The unfitted model ``args`` describe, with descriptor settings for ``frames``' species."""
    import numpy as np

    import numbec.models
    from numbec.descriptors.settings import DescriptorSettings

    species = sorted({int(z) for atoms in frames for z in np.unique(atoms.numbers)})
    overrides = {n: getattr(args, n) for n, _, _ in DESCRIPTOR_FLAGS
                 if getattr(args, n) is not None}
    settings = DescriptorSettings(species=tuple(species), **overrides)
    if isinstance(args.n_sparse, dict):
        from ase.data import chemical_symbols

        missing = sorted(set(species) - set(args.n_sparse))
        if missing:
            names = ", ".join(chemical_symbols[z] for z in missing)
            raise ValueError(f"--n-sparse gives no count for {names} (species in the data)")
    cls = getattr(numbec.models, MODELS[args.model])
    kwargs = {k: getattr(args, k) for k in HYPERPARAMETERS}
    return cls(settings=settings, **kwargs), settings


#: Spread (percentage points) of the held-out blocks' raw 95 % coverage above which the
#: training summary says that one scale fits some training frames better than others. On the
#: calibration benchmark's training sets (docs/benchmarks_models.md section 6) it speaks for
#: quartz with 300 K and 600 K frames (17-22 points), the 5-frame ZrO2 and xTB sets (17-32),
#: not for BaTiO3 (4-9), ZrO2 with 80 frames (10-14) or xTB with 40 (13-14).
BLOCK_SPREAD_POINTS = 15.0


def block_coverage_text(fractions) -> str:
    """``"99 / 99 / 88 %"``: held-out blocks' coverages (fractions), in percent."""
    return " / ".join(f"{100 * float(c):.0f}" for c in fractions) + " %"


def _print_block_spread(info) -> None:
    """The raw 95 % coverage of each held-out block (in frame order), and when they differ
    by more than :data:`BLOCK_SPREAD_POINTS` what that means for the one fitted scale."""
    fractions = info.get("block_coverage_95_unscaled") or []
    if len(fractions) < 2:
        return
    print("    held-out blocks in frame order, 95 % coverage before scaling: "
          + block_coverage_text(fractions))
    blocks = [100 * float(c) for c in fractions]
    if max(blocks) - min(blocks) > BLOCK_SPREAD_POINTS and info["method"] != "worst_block":
        print("    the blocks disagree: the scale is their average, so frames like the "
              f"hardest block ({min(blocks):.0f} %) will be under-covered; if the frames "
              "to predict are like it, --calibration-method worst_block covers them "
              "(docs/benchmarks_models.md, 'Calibration')")


def run(args) -> int:
    from numbec.models import evaluate

    frames = read_frames(args)
    model, settings = build_model(args, frames)
    print(f"training {type(model).__name__} on {describe_frames(frames)}")
    hyper = ", ".join(f"{k}={getattr(args, k)}" for k in HYPERPARAMETERS)
    desc = ", ".join(f"{k}={v}" for k, v in settings.to_dict().items() if k != "species")
    print(f"  hyperparameters: {hyper}")
    print(f"  descriptors: {desc}")
    start = time.perf_counter()
    model.fit(frames, progress=progress_choice(args))
    seconds = time.perf_counter() - start
    calibration = ""
    folds = args.calibrate_folds
    if folds is None:  # the default: calibrated, unless there is nothing to cross-validate
        folds = min(AUTO_CALIBRATION_FOLDS, len(frames)) if len(frames) >= 2 else 0
        print(f"  calibrating bec_std by {folds}-fold cross-validation over the training "
              f"frames ({folds} more fits; --calibrate-folds 0 skips it)" if folds else
              "  bec_std not calibrated: one training frame leaves nothing to cross-validate")
    if folds:
        from numbec.models.uncertainty import recalibrate

        recalibrate(model, frames, folds=folds, method=args.calibration_method,
                    progress=progress_choice(args))
        info = model.training["variance_scale_fit"]
        part = ""
        noise = ""
        if info.get("noise_scale") is not None:
            part, noise = " (epistemic)", f", noise scale {info['noise_scale']:.3g}"
        if info.get("residual_scale"):
            noise += f", residual term {info['residual_scale']:.3g} e^2 x r_frame"
        print(f"  variance scale {model.variance_scale:.3g}{part}{noise} ({info['method']}) "
              f"from {info['folds']}-fold "
              f"cross-validation (held-out 95 % coverage before: "
              f"{100 * info['coverage_95_unscaled']:.1f} %)")
        _print_block_spread(info)
        calibration = f", calibrated in {time.perf_counter() - start - seconds:.1f} s"
    path = model.save(args.out)
    parts = getattr(model, "training", None) or {}
    detail = ""
    if {"time_sparse_s", "time_design_s", "time_solve_s"} <= set(parts):
        detail = (f" (descriptors and sparse points {parts['time_sparse_s']:.1f} s, design "
                  f"{parts['time_design_s']:.1f} s, regression {parts['time_solve_s']:.1f} s)")
    print(f"  fitted in {seconds:.1f} s{detail}{calibration}; saved {path}")
    if not args.no_train_error:
        res = evaluate(model, frames, baseline=True, progress=progress_choice(args),
                       calibration=False)
        base = res["baseline"]
        print(f"  training-set RMSE {res['rmse']:.4f} e, MAE {res['mae']:.4f} e, "
              f"R2 {res['r2']:.4f} (species-mean baseline: RMSE {base['rmse']:.4f} e)")
        for symbol, entry in res["per_species"].items():
            print(f"    {symbol:<3} RMSE {entry['rmse']:.4f} e  MAE {entry['mae']:.4f} e")
    sys.stdout.flush()
    return 0
