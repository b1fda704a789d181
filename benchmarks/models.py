"""Accuracy and training time of the kernel BEC models on the real reference data sets.

Usage::

    python benchmarks/models.py                   # the tables of docs/benchmarks_models.md
    python benchmarks/models.py --quick           # fewer frames and sparse points (minutes)
    python benchmarks/models.py --systems quartz --models monopole,combined --json out.json

Systems (``../shared/data``, or ``$NUMBEC_SHARED_DATA``; read in place, nothing is copied):

``quartz``  alpha-quartz SiO2 (QE, 72 atoms): train on frames 0-149, test on 150-200.
``zro2``    ZrO2 (VASP DFPT OUTCARs, 96 atoms): train on OUTCAR.1-80, test on OUTCAR.81-119.
``batio3``  BaTiO3 (QE, 135 atoms): train on the first 40 frames, test on the rest.

For each system the species-mean baseline (:class:`~numbec.models.SpeciesMeanModel` fitted on
the training frames) and the monopole, dipole and combined models are fitted on the same
training frames with the same hyperparameters (:data:`SYSTEMS`, overridable from the command
line) and evaluated with :func:`numbec.evaluate` on the test frames: test RMSE, MAE and R^2 of
all BEC components (e) overall and per species, the wall time of ``fit`` and of predicting the
test set. The reference BECs are compared raw (not ASR-projected; see numbec.models.evaluate).

Learning curve: test RMSE of one model (``--curve-model``) on quartz against the number of
training frames (``--curve-sizes``), evenly spaced over frames 0-149 (``n_sparse`` is capped at
the number of training environments of each species); its last point is the quartz fit of the
side-by-side table.

Training frames: every ``train_stride``-th frame of the training range (per system in
:data:`SYSTEMS`, ``--train-stride`` overrides). ``--quick`` trains on at most every 4th
training frame, tests on every 3rd test frame, with at most 100 sparse points per species and
a 3-point learning curve. The smoke run of tests/test_benchmarks.py (about 30 s) adds
``--train-stride 20 --n-sparse 20 --curve-sizes 3,6 --curve-model monopole``.

The machine may be shared: wall times depend on the load (printed at the start); Numba
compilation is warmed up before the first timed fit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NUMBEC_SHARED_DATA", REPO.parent / "shared" / "data"))

MODELS = ("monopole", "dipole", "combined")
CLASSES = {"monopole": "MonopoleModel", "dipole": "DipoleModel", "combined": "CombinedModel"}

#: Per system: data, train/test split, training-frame stride and hyperparameters (model
#: keywords and descriptor settings). Sized so that the whole run fits in about an hour on 2
#: shared cores; see docs/benchmarks_models.md for what was tried.
#: Shared by all systems: the smaller angular basis (n_angular 6, l_max 3) lost no accuracy on
#: quartz and halves the dipole/combined design time.
MODEL = {"zeta": 4, "sparse_method": "cur", "regression": "bayesian"}
DESCRIPTORS = {"cutoff_radial": 6.0, "cutoff_angular": 5.0, "sigma": 0.5,
               "n_radial": 8, "n_angular": 6, "l_max": 3, "radial_weight": 0.1}

SYSTEMS = {
    "quartz": {
        "title": "alpha-quartz SiO2 (QE)",
        "data": "sio2_quartz_qe/SiO2.xyz",
        "train": slice(0, 150),
        "train_stride": 3,
        "test": slice(150, 201),
        "model": {**MODEL, "n_sparse": 150},
        "descriptors": DESCRIPTORS,
    },
    "zro2": {
        "title": "ZrO2 (VASP DFPT)",
        "data": "zro2_vasp_dfpt/OUTCAR.{}.xz",
        "train": range(1, 81),
        "train_stride": 1,
        "test": range(81, 120),
        "model": {**MODEL, "n_sparse": 100},
        "descriptors": DESCRIPTORS,
    },
    "batio3": {
        "title": "BaTiO3 (QE)",
        "data": "batio3_qe/BaTiO3.xyz",
        "train": slice(0, 40),
        "train_stride": 2,
        "test": slice(40, None),
        "model": {**MODEL, "n_sparse": 100},
        "descriptors": DESCRIPTORS,
    },
}

CURVE_SIZES = (5, 10, 20)
QUICK_CURVE_SIZES = (5, 10, 20)


def _slice_text(sel) -> str:
    if isinstance(sel, range):
        return f"{sel.start}-{sel.stop - 1}"
    stop = "end" if sel.stop is None else sel.stop - 1
    return f"{sel.start}-{stop}"


def load_split(name: str, quick: bool, train_stride: int | None = None):
    """(train frames, test frames, description) of system ``name``, read from SHARED.

    Training frames: every ``train_stride``-th of the training range (default: the system's
    ``train_stride``; ``quick``: at least 4); test frames: all (``quick``: every 3rd).
    """
    import numbec

    spec = SYSTEMS[name]
    train_sel, test_sel = spec["train"], spec["test"]
    stride = train_stride or spec.get("train_stride", 1)
    test_stride = 1
    if quick:
        stride, test_stride = max(stride, 4), 3
    if isinstance(train_sel, range):  # one file per frame
        path = str(SHARED / spec["data"])
        train = numbec.read_bec([path.format(i) for i in train_sel[::stride]])
        test = numbec.read_bec([path.format(i) for i in test_sel[::test_stride]])
    else:
        frames = numbec.read_bec(SHARED / spec["data"])
        train, test = frames[train_sel][::stride], frames[test_sel][::test_stride]
    every = lambda k: f" (every {k}{'th' if k > 3 else 'rd' if k == 3 else 'nd'})" if k > 1 else ""
    text = (f"train {len(train)} frames from {_slice_text(train_sel)}{every(stride)}, "
            f"test {len(test)} frames from {_slice_text(test_sel)}{every(test_stride)}")
    return train, test, text


def _settings(species, descriptors):
    from numbec.descriptors.settings import DescriptorSettings

    return DescriptorSettings(species=tuple(species), **descriptors)


def _capped_n_sparse(frames, n_sparse: int) -> dict:
    counts: dict[int, int] = {}
    for atoms in frames:
        for z in atoms.numbers:
            counts[int(z)] = counts.get(int(z), 0) + 1
    return {z: min(n_sparse, c) for z, c in counts.items()}


def fit_and_test(kind: str, train, test, model_kw: dict, descriptors: dict) -> dict:
    """Fit model ``kind`` on ``train``, evaluate on ``test``; metrics and timings."""
    import numbec
    from numbec.models import SpeciesMeanModel

    if kind == "mean":
        start = time.perf_counter()
        model = SpeciesMeanModel.fit(train)
        fit_s = time.perf_counter() - start
        extra = {}
    else:
        species = sorted({int(z) for a in train for z in a.numbers})
        kw = dict(model_kw)
        kw["n_sparse"] = _capped_n_sparse(train, int(kw["n_sparse"]))
        model = getattr(numbec, CLASSES[kind])(settings=_settings(species, descriptors), **kw)
        start = time.perf_counter()
        model.fit(train)
        fit_s = time.perf_counter() - start
        extra = {"training": getattr(model, "training", {}), "n_sparse": kw["n_sparse"]}
    res = numbec.evaluate(model, test, baseline=False, calibration=False)
    res.pop("per_cartesian", None)
    res.update(fit_seconds=fit_s, **extra)
    return res


def warm_up(models) -> None:
    """Compile (or load from the cache) the Numba kernels outside the timed fits."""
    import numbec
    from numbec.io import example_file

    frames = numbec.read_bec(example_file("sio2_quartz_subset"), index="0:2")
    tiny = {"n_radial": 2, "n_angular": 2, "l_max": 1, "cutoff_radial": 3.0,
            "cutoff_angular": 3.0}
    for kind in models:
        fit_and_test(kind, frames, frames, {"zeta": 2, "n_sparse": 4}, tiny)


def _table(title: str, rows: dict, species) -> str:
    head = "| model | fit s | predict s | RMSE | MAE | R2 |" + "".join(
        f" RMSE {s} | MAE {s} | R2 {s} |" for s in species)
    sep = "|---" * (6 + 3 * len(species)) + "|"
    lines = [f"### {title}", "", head, sep]
    for name, r in rows.items():
        cells = [name, f"{r['fit_seconds']:.1f}", f"{r['predict_seconds']:.1f}",
                 f"{r['rmse']:.4f}", f"{r['mae']:.4f}", f"{r['r2']:.4f}"]
        for s in species:
            e = r["per_species"][s]
            cells += [f"{e['rmse']:.4f}", f"{e['mae']:.4f}", f"{e['r2']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_system(name: str, models, args) -> dict:
    spec = SYSTEMS[name]
    train, test, split = load_split(name, args.quick, args.train_stride)
    model_kw = {**spec["model"], **_overrides(args, MODEL_KEYS)}
    descriptors = {**spec["descriptors"], **_overrides(args, DESCRIPTOR_KEYS)}
    if args.quick:
        model_kw["n_sparse"] = min(int(model_kw["n_sparse"]), 100)
    print(f"\n{spec['title']}: {split}", flush=True)
    print(f"  model: {model_kw}\n  descriptors: {descriptors}", flush=True)
    rows = {}
    for kind in ("mean", *models):
        rows[kind] = fit_and_test(kind, train, test, model_kw, descriptors)
        r = rows[kind]
        print(f"  {kind:<9} fit {r['fit_seconds']:7.1f} s  test RMSE {r['rmse']:.4f} e  "
              f"MAE {r['mae']:.4f} e  R2 {r['r2']:.4f}", flush=True)
    from ase.data import chemical_symbols

    species = [chemical_symbols[z] for z in sorted({int(z) for a in test for z in a.numbers})]
    print("\n" + _table(f"{spec['title']} — {split}", rows, species) + "\n", flush=True)
    return {"split": split, "n_train": len(train), "n_test": len(test), "model": model_kw,
            "descriptors": descriptors, "results": rows}


def learning_curve(args, table: dict | None = None) -> dict:
    spec = SYSTEMS["quartz"]
    train, test, split = load_split("quartz", False, 1)
    if args.quick:
        test = test[::3]
    sizes = args.curve_sizes or (QUICK_CURVE_SIZES if args.quick else CURVE_SIZES)
    model_kw = {**spec["model"], **_overrides(args, MODEL_KEYS)}
    descriptors = {**spec["descriptors"], **_overrides(args, DESCRIPTOR_KEYS)}
    if args.quick:
        model_kw["n_sparse"] = min(int(model_kw["n_sparse"]), 100)
    print(f"\nLearning curve, quartz, {args.curve_model}: test on {len(test)} frames "
          f"(150-200{', every 3rd' if args.quick else ''})", flush=True)
    points = []
    for n in sizes:
        idx = np.unique(np.linspace(0, len(train) - 1, n).round().astype(int))
        subset = [train[i] for i in idx]
        r = fit_and_test(args.curve_model, subset, test, model_kw, descriptors)
        base = fit_and_test("mean", subset, test, model_kw, descriptors)
        points.append({"n_train": len(subset), "rmse": r["rmse"], "mae": r["mae"],
                       "r2": r["r2"], "baseline_rmse": base["rmse"],
                       "fit_seconds": r["fit_seconds"], "n_sparse": r["n_sparse"],
                       "per_species_rmse": {s: e["rmse"] for s, e in r["per_species"].items()}})
        print(f"  {len(subset):4d} frames: RMSE {r['rmse']:.4f} e (fit {r['fit_seconds']:.1f} s)",
              flush=True)
    if table and args.curve_model in table["results"] and not args.quick:
        # the side-by-side table's fit (same hyperparameters, same test frames) as last point
        r = table["results"][args.curve_model]
        points.append({"n_train": table["n_train"], "rmse": r["rmse"], "mae": r["mae"],
                       "r2": r["r2"], "baseline_rmse": table["results"]["mean"]["rmse"],
                       "fit_seconds": r["fit_seconds"], "n_sparse": r["n_sparse"],
                       "per_species_rmse": {s: e["rmse"] for s, e in r["per_species"].items()},
                       "note": "the fit of the side-by-side table (" + table["split"] + ")"})
    lines = [f"### Learning curve: quartz, {args.curve_model}, test frames 150-200", "",
             "| training frames | test RMSE | MAE | R2 | species-mean RMSE | fit s |",
             "|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p['n_train']} | {p['rmse']:.4f} | {p['mae']:.4f} | {p['r2']:.4f} "
                     f"| {p['baseline_rmse']:.4f} | {p['fit_seconds']:.1f} |")
    print("\n" + "\n".join(lines) + "\n", flush=True)
    return {"model": args.curve_model, "model_kw": model_kw, "descriptors": descriptors,
            "points": points}


MODEL_KEYS = ("zeta", "n_sparse", "sparse_method", "regression", "ridge")
DESCRIPTOR_KEYS = ("cutoff_radial", "cutoff_angular", "sigma", "n_radial", "n_angular",
                   "l_max", "radial_weight")


def _overrides(args, keys) -> dict:
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced run (see module doc)")
    parser.add_argument("--systems", default="quartz,zro2,batio3",
                        help="comma-separated subset of quartz,zro2,batio3")
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated subset of monopole,dipole,combined")
    parser.add_argument("--curve-model", default="combined", choices=MODELS,
                        help="model of the quartz learning curve (default: combined)")
    parser.add_argument("--no-curve", action="store_true", help="skip the learning curve")
    parser.add_argument("--curve-sizes", type=lambda t: [int(x) for x in t.split(",")],
                        default=None, metavar="N,N,...",
                        help=f"training-set sizes of the learning curve (default: "
                             f"{','.join(map(str, CURVE_SIZES))})")
    parser.add_argument("--json", metavar="OUT", help="also write all results as JSON")
    parser.add_argument("--train-stride", type=int, default=None,
                        help="use every k-th training frame (default: per system, SYSTEMS)")
    for key in MODEL_KEYS + DESCRIPTOR_KEYS:
        kind = str if key in ("sparse_method", "regression") else (
            int if key in ("zeta", "n_sparse", "n_radial", "n_angular", "l_max") else float)
        parser.add_argument("--" + key.replace("_", "-"), type=kind, default=None,
                            help="override for every system (default: per system, SYSTEMS)")
    args = parser.parse_args(argv)
    systems = [s for s in args.systems.split(",") if s]
    models = [m for m in args.models.split(",") if m]
    for s in systems:
        if s not in SYSTEMS:
            parser.error(f"unknown system {s!r}; use {', '.join(SYSTEMS)}")
    for m in models:
        if m not in MODELS:
            parser.error(f"unknown model {m!r}; use {', '.join(MODELS)}")
    if not SHARED.is_dir():
        parser.error(f"reference data not found at {SHARED} (set NUMBEC_SHARED_DATA)")

    import numbec

    load = os.getloadavg()
    print(f"numbec {numbec.__version__}, python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"command: {' '.join(sys.argv)}", flush=True)
    t0 = time.perf_counter()
    warm_up(sorted(set(models) | ({args.curve_model} if not args.no_curve else set())))
    print(f"warm-up (Numba compile or cache load): {time.perf_counter() - t0:.1f} s", flush=True)
    out = {"command": sys.argv, "quick": args.quick, "load_average": load, "systems": {}}
    for name in systems:
        out["systems"][name] = run_system(name, models, args)
        if name == "quartz" and not args.no_curve:  # the curve right after its system
            out["learning_curve"] = learning_curve(args, out["systems"]["quartz"])
        if args.json:  # write as we go: a long run keeps what it finished
            Path(args.json).write_text(json.dumps(out, indent=1))
    if "quartz" not in systems and not args.no_curve:
        out["learning_curve"] = learning_curve(args)
    out["total_seconds"] = time.perf_counter() - t0
    print(f"total wall time {out['total_seconds']:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
