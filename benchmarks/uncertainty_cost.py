"""Cost and accuracy of the streamed (low-rank, adjoint-channel) BEC uncertainty.

Usage::

    python benchmarks/uncertainty_cost.py                  # quartz and xTB water, K = 8..64
    python benchmarks/uncertainty_cost.py --systems quartz --ranks 8,16

For a combined model (``--kind monopole`` or ``dipole``: that model instead; quartz: every 8th
frame of 0-149, 100 sparse points per species, descriptors of benchmarks/models.py; xTB: 5 or
32 of the demo's reference clusters, 60 sparse points) it times, on the first test frames
(best of 5, one BLAS thread), a plain prediction,
the exact ``bec_std`` (design rows) and :func:`numbec.models.uncertainty.predict_uncertainty`
at each rank K (one descriptor pass, K + 1 weight vectors as adjoint channels), and gives the
largest relative deviation of the per-frame uncertainty ``sqrt(mean bec_std^2)`` from the
exact one and the fraction of the test frames' variance the factor's K / 4 leading
directions carry (ordered on those frames, as ``numbec.predict`` orders them on its
trajectory; the other columns are random probes of the rest,
:func:`numbec.models.uncertainty.posterior_factor`).

The second table times the forward-mode dM/dt uncertainty
(:mod:`numbec.models.forward_mode`, what ``numbec.predict(..., posterior_samples=S)`` runs
per frame): the plain prediction plus the exact per-frame ``dipole_derivative_std`` alone,
and with S = 16 and 64 full-posterior samples, per species too (the default) and total only
(``species_samples=False``), against the plain prediction; random thermal velocities (the
cost does not depend on them); frames below ``BATCH_BELOW_ATOMS`` atoms also in batches
against the batched plain prediction. ``--samples`` and ``--repeat`` (rounds, best of)
shorten it. ``--cpu-time``: one Numba thread and the process's CPU time instead of the wall
clock, the cost of a frame on one core as the stream computes frames (one frame per thread)
and much less sensitive to other jobs on the machine than the wall clock.
``--forward-only`` skips the low-rank table; ``--compare-with REV`` adds "before" rows: the
forward mode of git revision REV, imported next to the current code and timed in the same
turns.

``--atom-std``: the per-atom ``charge_std`` / ``local_dipole_std`` (``predict(...,
atom_std=True)``, :mod:`numbec.models.atom_std`): their cost against the plain prediction
(per frame, and batched for small frames; timed as the forward-mode table, ``--cpu-time``
applies), and Spearman's rho over the atoms of all test frames between each scalar and the
exact per-atom ``bec_std`` (root mean square over its 9 components) and the actual per-atom
BEC error (RMS over the 9 components, raw reference), pooled and within each species.

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
if "--cpu-time" in sys.argv:  # before numba is imported
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration import _fit, load_xtb  # noqa: E402
from models import SYSTEMS, load_split  # noqa: E402

#: ``--cpu-time``: the forward-mode table times CPU seconds (one Numba thread).
CPU_TIME = "--cpu-time" in sys.argv


def _older_numbec(rev: str, where: str):
    """The numbec package of git revision ``rev`` extracted into ``where`` as ``numbec_<rev>``
    (imports renamed), importable next to this checkout: the "before" of the forward-mode
    table, timed in the same process and in turns with the current code. Returns the
    package name."""
    import re
    import subprocess
    import tarfile
    from io import BytesIO

    name = "numbec_" + re.sub(r"\W", "_", rev)
    repo = Path(__file__).resolve().parent.parent
    data = subprocess.run(["git", "archive", rev, "numbec"], cwd=repo, check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(where, filter="data")
    root = Path(where) / name
    (Path(where) / "numbec").rename(root)
    for path in root.rglob("*.py"):
        text = path.read_text()
        text = re.sub(r"\bnumbec\.", name + ".", text)
        text = text.replace("from numbec import", f"from {name} import")
        text = re.sub(r"^(\s*)import numbec$", rf"\1import {name}", text, flags=re.M)
        path.write_text(text)
    sys.path.insert(0, str(where))
    return name


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

    from numbec.stream import direction_frame_indices

    # as numbec.predict does: the directions ordered on evenly spaced frames of the set
    chosen = [args(frames[i]) for i in direction_frame_indices(len(frames))]
    factors = {k: unc.posterior_factor(model, k, frames=chosen) for k in ranks}
    for k in ranks:  # factors and kernels built outside the timings
        unc.predict_uncertainty(model, *args(frames[0]), factor=factors[k])
    plain = _best(lambda a: model.predict_arrays(*args(a)), frames)
    exact_t = _best(lambda a: model.predict_arrays(*args(a), uncertainty=True), frames, 2)
    exact = np.array([np.sqrt(np.mean(model.predict_arrays(*args(a), uncertainty=True)
                                      ["bec_std"] ** 2)) for a in frames])
    print(f"| {name} | {model.n_columns} | {1e3 * plain / len(frames):.1f} ms "
          f"| exact | {exact_t / plain:.1f}x | 0 % | 1 |")
    for k in ranks:
        t = _best(lambda a, k=k: unc.predict_uncertainty(model, *args(a),
                                                         factor=factors[k]), frames)
        low = np.array([unc.predict_uncertainty(model, *args(a), factor=factors[k])
                        ["frame_std"] for a in frames])
        dev = 100 * np.max(np.abs(low / exact - 1))
        cap = factors[k].captured
        print(f"| {name} | {model.n_columns} | | K = {k} | {t / plain:.1f}x | {dev:.1f} % "
              f"| {cap:.3f} |", flush=True)


def time_in_turns(variants: dict, repeat: int) -> dict:
    """Best time (s) of each callable in ``variants`` over ``repeat`` rounds, all timed in
    turns within each round after one warm-up call each (CPU time of the process with
    ``--cpu-time``, else wall time)."""
    for fn in variants.values():
        fn()
    best = dict.fromkeys(variants, np.inf)
    clock = time.process_time if CPU_TIME else time.perf_counter
    for _ in range(repeat):
        for what, fn in variants.items():
            t0 = clock()
            fn()
            best[what] = min(best[what], clock() - t0)
    return best


def batched_chunks(inputs) -> list:
    """``inputs`` (tuples positions, numbers, cell, pbc[, velocities]) grouped by their atoms,
    each group repeated to at least 32 frames: tuples of stacked positions (F, N, 3), numbers,
    stacked cells (F, 3, 3) or None, pbc[, stacked velocities (F, N, 3)]."""
    groups = {}
    for x in inputs:
        groups.setdefault(x[1].tobytes(), []).append(x)
    chunks = []
    for group in groups.values():
        group = group * -(-32 // len(group))
        cells = np.stack([x[2] for x in group]) if group[0][3].any() else None
        chunk = (np.stack([x[0] for x in group]), group[0][1], cells, group[0][3])
        if len(group[0]) > 4:
            chunk += (np.stack([x[4] for x in group]),)
        chunks.append(chunk)
    return chunks


def measure_forward(name, model, frames, samples=(16, 64), repeat=7, before=None):
    """Plain prediction against the forward-mode variants, timed in turns (round r times
    every variant once) so that a change of the machine's load hits them alike; best round
    of each. Frames below ``numbec.parallel.BATCH_BELOW_ATOMS`` atoms are also timed the way
    the stream computes plain small frames, in batches (``predict_frames`` against
    ``predict_frames_with_velocities``, the test frames of the same atoms repeated to 32).
    ``before``: the package name of an older numbec (:func:`_older_numbec`), whose forward
    mode is timed in the same turns ("before" rows) on the same model, saved and loaded back
    there."""
    import importlib
    import tempfile

    from numbec.models.forward_mode import DipoleDerivativeSamplesModel
    from numbec.parallel import BATCH_BELOW_ATOMS

    rng = np.random.default_rng(0)
    inputs = [(a.positions, a.numbers, np.asarray(a.cell), a.pbc,
               rng.normal(0.0, 0.01, (len(a), 3))) for a in frames]
    variants = {"plain": lambda: [model.predict_arrays(*x[:4]) for x in inputs]}
    batched = max(len(a) for a in frames) < BATCH_BELOW_ATOMS
    if batched:  # frames of the same atoms together, each group repeated to >= 32 frames
        chunks = batched_chunks(inputs)
        n_batched = sum(c[0].shape[0] for c in chunks)
        variants["plain, batched"] = lambda: [model.predict_frames(*c[:4]) for c in chunks]
    if before is not None:
        with tempfile.TemporaryDirectory() as tmp:
            old_model = importlib.import_module(f"{before}.models.base").load_model(
                model.save(Path(tmp) / "model.npz"))
        old_wrapper = importlib.import_module(
            f"{before}.models.forward_mode").DipoleDerivativeSamplesModel
    for s, per_species in [(0, False)] + [(s, p) for s in samples for p in (True, False)]:
        what = ("+ dipole_derivative_std" if s == 0 else f"+ std and S = {s} samples"
                + (", per species" if per_species else ", total only"))
        if before is not None and (per_species or s == 0):
            old = old_wrapper(old_model, n_samples=s, seed=0)
            variants[what + ", before"] = (lambda w=old:
                                           [w.predict_arrays_with_velocities(*x) for x in inputs])
            if batched and hasattr(old, "predict_frames_with_velocities"):
                variants[what + ", before, batched"] = (
                    lambda w=old: [w.predict_frames_with_velocities(*c) for c in chunks])
        wrapped = DipoleDerivativeSamplesModel(model, n_samples=s, seed=0,
                                               species_samples=per_species)
        wrapped.predict_arrays_with_velocities(*inputs[0])  # compile, Cholesky factor
        variants[what] = (lambda w=wrapped:
                          [w.predict_arrays_with_velocities(*x) for x in inputs])
        if batched:
            variants[what + ", batched"] = (
                lambda w=wrapped: [w.predict_frames_with_velocities(*c) for c in chunks])
    best = time_in_turns(variants, repeat)
    plain = best.pop("plain") / len(inputs)
    plain_batched = best.pop("plain, batched", np.nan) / (n_batched if batched else 1)
    print(f"| {name} | {model.n_columns} | {1e3 * plain:.1f} ms | plain | 1 |")
    if batched:
        print(f"| {name} | {model.n_columns} | {1e3 * plain_batched:.2f} ms | plain, batched "
              f"| 1 |")
    for what, t in best.items():
        per_frame = t / n_batched if what.endswith("batched") else t / len(inputs)
        ratio = per_frame / (plain_batched if what.endswith("batched") else plain)
        print(f"| {name} | {model.n_columns} | | {what} | {ratio:.2f}x |", flush=True)


def measure_atom_std(name, model, frames, repeat=7):
    """Plain prediction against ``atom_std=True`` (``charge_std``, ``local_dipole_std``:
    :mod:`numbec.models.atom_std`), per frame (``predict_arrays``) and, for frames below
    ``BATCH_BELOW_ATOMS`` atoms, in batches (``predict_frames``, the test frames of the same
    atoms repeated to 32), timed in turns as :func:`measure_forward` times them."""
    from numbec.parallel import BATCH_BELOW_ATOMS

    inputs = [(a.positions, a.numbers, np.asarray(a.cell), a.pbc) for a in frames]
    variants = {"plain": lambda: [model.predict_arrays(*x) for x in inputs],
                "atom_std": lambda: [model.predict_arrays(*x, atom_std=True) for x in inputs]}
    batched = max(len(a) for a in frames) < BATCH_BELOW_ATOMS
    if batched:
        chunks = batched_chunks(inputs)
        n_batched = sum(c[0].shape[0] for c in chunks)
        variants["plain, batched"] = lambda: [model.predict_frames(*c) for c in chunks]
        variants["atom_std, batched"] = lambda: [model.predict_frames(*c, atom_std=True)
                                                 for c in chunks]
    best = time_in_turns(variants, repeat)
    plain = best["plain"] / len(inputs)
    print(f"| {name} | {model.n_columns} | {1e3 * plain:.1f} ms | per frame "
          f"| {best['atom_std'] / best['plain']:.2f}x |")
    if batched:
        print(f"| {name} | {model.n_columns} | {1e3 * best['plain, batched'] / n_batched:.2f} ms"
              f" | batched | {best['atom_std, batched'] / best['plain, batched']:.2f}x |",
              flush=True)


def atom_std_ranking(name, model, frames):
    """How the per-atom scalars rank the atoms of the test frames (Spearman's rho) like the
    exact per-atom ``bec_std`` (``sqrt(mean over the 9 components of bec_std^2)``,
    :func:`numbec.models.uncertainty.exact_bec_std`) and like the actual per-atom BEC error
    (RMS over the 9 components against the raw reference): pooled over all atoms, and the
    mean over the species of the rho within each species."""
    from scipy.stats import spearmanr

    from numbec.models.uncertainty import exact_bec_std

    rows = {"charge_std": [], "local_dipole_std": []}
    exact, err, species = [], [], []
    for a in frames:
        x = (a.positions, a.numbers, np.asarray(a.cell), a.pbc)
        out = model.predict_arrays(*x, atom_std=True)
        for key in rows:
            if key in out:
                rows[key].append(out[key])
        exact.append(np.sqrt(np.mean(exact_bec_std(model, *x) ** 2, axis=(1, 2))))
        ref = np.asarray(a.arrays["bec"], dtype=np.float64)
        err.append(np.sqrt(np.mean((out["bec"] - ref) ** 2, axis=(1, 2))))
        species.append(a.numbers)
    exact, err, species = (np.concatenate(v) for v in (exact, err, species))

    def rho(u, v):
        pooled = spearmanr(u, v).statistic
        within = np.mean([spearmanr(u[species == z], v[species == z]).statistic
                          for z in np.unique(species)])
        return f"{pooled:.2f} ({within:.2f})"

    for key, values in rows.items():
        if values:
            u = np.concatenate(values)
            print(f"| {name} | {key} | {u.size} | {rho(u, exact)} | {rho(u, err)} |")
    print(f"| {name} | exact bec_std | {exact.size} | 1 | {rho(exact, err)} |", flush=True)


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
    parser.add_argument("--compare-with", metavar="REV",
                        help="also time the forward mode of git revision REV (before rows)")
    parser.add_argument("--samples", default="16,64",
                        help="posterior sample counts S of the forward-mode table")
    parser.add_argument("--repeat", type=int, default=7,
                        help="rounds of the forward-mode table (best of)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="forward-mode table: one Numba thread, CPU time of the process")
    parser.add_argument("--kind", choices=("combined", "monopole", "dipole"),
                        default="combined", help="model fitted (default: combined)")
    parser.add_argument("--atom-std", action="store_true",
                        help="only the per-atom charge_std / local_dipole_std tables: cost "
                             "against the plain prediction, rank correlation with the exact "
                             "per-atom bec_std and with the per-atom BEC errors")
    parser.add_argument("--dd-calibration", action="store_true",
                        help="only the calibration of dipole_derivative_std (refits)")
    args = parser.parse_args(argv)
    ranks = [int(k) for k in args.ranks.split(",")]
    models = []
    for system in args.systems.split(","):
        if system == "quartz":
            train, test, _ = load_split("quartz", True)
            hyper = dict(SYSTEMS["quartz"]["model"], n_sparse=100)
            model = _fit(args.kind, train[::2], hyper, SYSTEMS["quartz"]["descriptors"])
            models.append((f"quartz {args.kind}, 19 frames", model, test[:args.frames],
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
                model = _fit(args.kind, [train[i] for i in idx],
                             {"zeta": 4, "n_sparse": 60, "seed": 7}, desc)
                models.append((f"xTB {args.kind}, {n} clusters", model, test,
                               [train[i] for i in idx], test))
    if args.atom_std:
        print("| system | C | plain per frame | path | atom_std cost vs plain |")
        print("|---" * 5 + "|")
        for name, model, frames, *_ in models:
            load = os.getloadavg()[0]
            measure_atom_std(name, model, frames, repeat=args.repeat)
            print(f"(load average {load:.1f} -> {os.getloadavg()[0]:.1f}, "
                  f"{time.strftime('%H:%M', time.gmtime())} UTC)", flush=True)
        print()
        print("| system | per-atom scalar | atoms | Spearman vs exact bec_std (within "
              "species) | vs per-atom BEC error |")
        print("|---" * 5 + "|")
        for name, model, _, _, test in models:
            atom_std_ranking(name, model, test)
        return 0
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
    import tempfile

    with tempfile.TemporaryDirectory() as where:
        before = _older_numbec(args.compare_with, where) if args.compare_with else None
        for name, model, frames, *_ in models:
            load = os.getloadavg()[0]
            measure_forward(name, model, frames, before=before, repeat=args.repeat,
                            samples=[int(s) for s in args.samples.split(",") if s])
            print(f"(load average {load:.1f} -> {os.getloadavg()[0]:.1f}, "
                  f"{time.strftime('%H:%M', time.gmtime())} UTC)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
