"""Cost and accuracy of the streamed (low-rank, adjoint-channel) BEC uncertainty.

Usage::

    python benchmarks/uncertainty_cost.py                  # quartz and xTB water, K = 8..64
    python benchmarks/uncertainty_cost.py --systems quartz --ranks 8,16

For a combined model (quartz: every 8th frame of 0-149, 100 sparse points per species,
descriptors of benchmarks/models.py; xTB: 5 or 32 of the demo's reference clusters, 60 sparse
points) it times, on the first test frames (best of 5, one BLAS thread), a plain prediction,
the exact ``bec_std`` (design rows) and :func:`numbec.models.uncertainty.predict_uncertainty`
at each rank K (one descriptor pass, K + 1 weight vectors as adjoint channels), and gives the
largest relative deviation of the per-frame uncertainty ``sqrt(mean bec_std^2)`` from the
exact one and the fraction of the training-metric variance the K directions carry.

The second table times the forward-mode dM/dt uncertainty
(:mod:`numbec.models.forward_mode`, what ``numbec.predict(..., posterior_samples=S)`` runs
per frame): the plain prediction plus the exact per-frame ``dipole_derivative_std`` alone,
and with S = 16 and 64 full-posterior samples (per species too), against the plain
prediction; random thermal velocities (the cost does not depend on them). ``--forward-only``
skips the low-rank table.

``--dd-calibration``: is ``dipole_derivative_std`` (with the weight scale ``s_w`` of the
cross-validated recalibration, fitted on the training frames only) calibrated for dM/dt?
Each model is recalibrated (5 folds), then for every test frame and 5 draws of 300 K
Maxwell-Boltzmann velocities the predicted dM/dt is compared with ``sum_j Z_ref_j v_j`` of
the sum-rule-projected reference BECs: RMS of ``z = err / std`` (1 if calibrated) and the
coverage of the nominal 68 % / 95 % intervals, with ``s_w`` and with the unscaled posterior.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration import _fit, load_xtb  # noqa: E402
from models import SYSTEMS, load_split  # noqa: E402


def _best(fn, frames, repeat=5):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for atoms in frames:
            fn(atoms)
        best = min(best, time.perf_counter() - t0)
    return best


def measure(name, model, frames, ranks):
    from numbec.models import uncertainty as unc

    def args(a):
        return a.positions, a.numbers, np.asarray(a.cell), a.pbc

    for k in ranks:  # factors and kernels built outside the timings
        unc.predict_uncertainty(model, *args(frames[0]), rank=k)
    plain = _best(lambda a: model.predict_arrays(*args(a)), frames)
    exact_t = _best(lambda a: model.predict_arrays(*args(a), uncertainty=True), frames, 2)
    exact = np.array([np.sqrt(np.mean(model.predict_arrays(*args(a), uncertainty=True)
                                      ["bec_std"] ** 2)) for a in frames])
    print(f"| {name} | {model.n_columns} | {1e3 * plain / len(frames):.1f} ms "
          f"| exact | {exact_t / plain:.1f}x | 0 % | 1 |")
    for k in ranks:
        t = _best(lambda a, k=k: unc.predict_uncertainty(model, *args(a), rank=k), frames)
        low = np.array([unc.predict_uncertainty(model, *args(a), rank=k)["frame_std"]
                        for a in frames])
        dev = 100 * np.max(np.abs(low / exact - 1))
        cap = unc.posterior_factor(model, k).captured
        print(f"| {name} | {model.n_columns} | | K = {k} | {t / plain:.1f}x | {dev:.1f} % "
              f"| {cap:.3f} |", flush=True)


def measure_forward(name, model, frames, samples=(16, 64), repeat=7):
    """Plain prediction against the forward-mode variants, timed in turns (round r times
    every variant once) so that a change of the machine's load hits them alike; best round
    of each."""
    from numbec.models.forward_mode import DipoleDerivativeSamplesModel

    rng = np.random.default_rng(0)
    inputs = [(a.positions, a.numbers, np.asarray(a.cell), a.pbc,
               rng.normal(0.0, 0.01, (len(a), 3))) for a in frames]
    variants = {"plain": lambda x: model.predict_arrays(*x[:4])}
    for s in (0,) + tuple(samples):
        wrapped = DipoleDerivativeSamplesModel(model, n_samples=s, seed=0)
        wrapped.predict_arrays_with_velocities(*inputs[0])  # compile, Cholesky factor
        what = "+ dipole_derivative_std" if s == 0 else f"+ std and S = {s} samples"
        variants[what] = wrapped.predict_arrays_with_velocities
    best = dict.fromkeys(variants, np.inf)
    for _ in range(repeat):
        for what, fn in variants.items():
            t0 = time.perf_counter()
            for x in inputs:
                fn(*x) if what != "plain" else fn(x)
            best[what] = min(best[what], time.perf_counter() - t0)
    plain = best.pop("plain")
    print(f"| {name} | {model.n_columns} | {1e3 * plain / len(frames):.1f} ms | plain | 1 |")
    for what, t in best.items():
        print(f"| {name} | {model.n_columns} | | {what} | {t / plain:.2f}x |", flush=True)


def dd_calibration(name, model, train, frames, draws=5):
    from ase.data import atomic_masses

    from numbec.conventions import asr_project
    from numbec.models.forward_mode import dipole_derivative_uncertainty
    from numbec.models.uncertainty import recalibrate, sample_scale

    recalibrate(model, train, folds=5)
    s_w = sample_scale(model)
    rng = np.random.default_rng(1)
    z = []
    for atoms in frames:
        sigma = 0.0982269 * np.sqrt(0.025852 / atomic_masses[atoms.numbers])  # Å/fs, 300 K
        ref = asr_project(np.asarray(atoms.arrays["bec"], dtype=np.float64))
        for _ in range(draws):
            v = sigma[:, None] * rng.standard_normal((len(atoms), 3))
            out = dipole_derivative_uncertainty(model, atoms.positions, atoms.numbers,
                                                np.asarray(atoms.cell), atoms.pbc, v)
            err = out["dipole_derivative"] - np.einsum("jab,jb->a", ref, v)
            z.append(err / out["dipole_derivative_std"])
    z = np.concatenate(z)
    for label, scale in (("s_w", 1.0), ("unscaled", np.sqrt(s_w))):
        zz = np.abs(z) * scale
        print(f"| {name} | {label} = {s_w if label == 's_w' else 1.0:.3g} | {z.size} "
              f"| {np.sqrt(np.mean(zz ** 2)):.2f} | {100 * np.mean(zz <= 1.0):.0f} % "
              f"| {100 * np.mean(zz <= 1.959964):.0f} % |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default="quartz,xtb")
    parser.add_argument("--ranks", default="8,16,32,64")
    parser.add_argument("--frames", type=int, default=4, help="test frames timed")
    parser.add_argument("--cache", default="numbec-demo/cache")
    parser.add_argument("--forward-only", action="store_true",
                        help="only the forward-mode dM/dt table")
    parser.add_argument("--dd-calibration", action="store_true",
                        help="only the calibration of dipole_derivative_std (refits)")
    args = parser.parse_args(argv)
    ranks = [int(k) for k in args.ranks.split(",")]
    models = []
    for system in args.systems.split(","):
        if system == "quartz":
            train, test, _ = load_split("quartz", True)
            hyper = dict(SYSTEMS["quartz"]["model"], n_sparse=100)
            model = _fit("combined", train[::2], hyper, SYSTEMS["quartz"]["descriptors"])
            models.append(("quartz combined, 19 frames", model, test[:args.frames],
                           train[::2], test))
        else:
            from numbec.demo import _settings

            if not (Path(args.cache) / "xtb").exists() and not Path(args.cache).exists():
                print(f"(no demo cache at {args.cache}: xTB rows skipped)")
                continue
            train, test, _ = load_xtb(Path(args.cache))
            desc = {k: v for k, v in _settings().to_dict().items() if k != "species"}
            for n in (5, 32):
                idx = np.linspace(0, len(train) - 1, n).round().astype(int)
                model = _fit("combined", [train[i] for i in idx],
                             {"zeta": 4, "n_sparse": 60, "seed": 7}, desc)
                models.append((f"xTB combined, {n} clusters", model, test,
                               [train[i] for i in idx], test))
    if args.dd_calibration:
        print("| system | weight scale | values | z RMS | cov68 | cov95 |")
        print("|---" * 6 + "|")
        for name, model, _, train, test in models:
            dd_calibration(name, model, train, test)
        return 0
    if not args.forward_only:
        print("| system | C | plain per frame | uncertainty | cost vs plain | max frame dev "
              "| captured |")
        print("|---" * 7 + "|")
        for name, model, frames, *_ in models:
            measure(name, model, frames, ranks)
        print()
    print("| system | C | plain per frame | forward-mode dM/dt | cost vs plain |")
    print("|---" * 5 + "|")
    for name, model, frames, *_ in models:
        measure_forward(name, model, frames)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
