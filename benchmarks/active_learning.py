"""Retrospective active-learning benchmark: which frames to label, and how much they buy.

Usage::

    python benchmarks/active_learning.py --candidates 40       # all systems (several hours)
    python benchmarks/active_learning.py --systems quartz --strategies hybrid --json h.json
    python benchmarks/active_learning.py --merge u.json h.json r.json   # one table of runs

On pools whose every frame is already labelled, :func:`numbec.active_learning` starts from
``--start`` evenly spaced frames and adds ``--step`` frames per round up to ``--max``, with
each strategy (uncertainty, hybrid, reduction, diverse, random with ``--seeds`` seeds,
stride);
every round's model is scored on a held-out test set. Systems:

``quartz``  alpha-quartz SiO2 (QE): pool = frames 0-149 of SiO2.xyz, test = 150-200.
``zro2``    ZrO2 (VASP DFPT): pool = OUTCAR.1-80, test = OUTCAR.81-119.
``xtb``     water clusters (H2O)_n, n = 2-6, GFN2-xTB (tblite): pool = snapshots 10 fs apart
            of one Langevin MD at 400 K per size, labelled with exact finite-difference APTs;
            BEC test = 3 snapshots each of 18 independent 300 K MDs of 2-7-molecule clusters
            (``--xtb-test-copies`` x the 6 MDs of benchmarks/calibration.py's test set, from
            ``xtb_clusters.py``; 54 frames), never from the pool's MDs; also printed: the
            RMSE on its clusters of 2-6 molecules and at the exact-APT check frames of the
            demo's independent NVE MD, and the error of the IR spectrum along that MD against
            the spectrum of the exact xTB dipole (relative L2 over 0-4200 cm^-1). Generated
            once into ``--cache`` (a few minutes of xTB). The summary also counts the
            cluster sizes each strategy labelled.

Reference data: ``../shared/data`` (or ``$NUMBEC_SHARED_DATA``), read in place.

Target (issue 19): an active strategy reaches the test error that random selection has at
``--max`` frames (mean over seeds) with at most half as many frames. The summary prints, per
strategy, the first training-set size at which its error is at or below that value (and,
in brackets, at or below random's worst and best seed at ``--max``).

Models: ``--model`` combined (default, numbec's), monopole or dipole; per system the
descriptors and sparse points of :data:`SYSTEM_DEFAULTS` (``--n-sparse`` overrides, capped at
the training environments), sized so that one round's fit stays within a minute on a shared
2-core machine; ``--sparse-fraction f``: a sparse set that grows with the labelled frames,
``min(n_sparse, ceil(f x environments))`` per species (every strategy, random included, gets
the same trainer). ``--min-separation k``: no two picked (or already labelled) frames
closer than k pool frames (:func:`numbec.select`'s ``min_separation``; the pools have no
time axis, and neighbouring xTB pool frames are 10 fs apart in one MD). ``--quick``:
quartz/zro2 pools and test sets thinned (every 2nd / 3rd frame),
xTB pool of 60 snapshots and test set of 18, up to 20 frames, 2 random seeds. Each strategy
(and random seed, ``--first-seed``) can run as its own process; ``--merge`` prints their
tables together. The JSON is rewritten after every run, so a killed run keeps what it
measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NUMBEC_SHARED_DATA", REPO.parent / "shared" / "data"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # xtb_clusters

#: Modest descriptors: the benchmark fits one model per round and strategy.
DESCRIPTORS = {"cutoff_radial": 5.0, "cutoff_angular": 4.0, "sigma": 0.5, "n_radial": 6,
               "n_angular": 4, "l_max": 2, "radial_weight": 0.1}
XTB_DESCRIPTORS = {"cutoff_radial": 6.0, "cutoff_angular": 4.5, "sigma": 0.5, "n_radial": 6,
                   "n_angular": 6, "l_max": 3}
#: Per system: descriptors and default n_sparse per species (combined model; chosen so that
#: the fits of a round stay within a minute on a shared 2-core machine).
SYSTEM_DEFAULTS = {"quartz": (DESCRIPTORS, 40), "zro2": (DESCRIPTORS, 30),
                   "xtb": (XTB_DESCRIPTORS, 60)}
#: MD steps (0.5 fs) between the snapshots of the xTB pool's MDs.
POOL_SAMPLE_EVERY = 20
STRATEGIES = ("uncertainty", "hybrid", "reduction", "diverse", "random", "stride")


# ---------------------------------------------------------------------------- data
def load_quartz(quick: bool):
    import numbec

    frames = numbec.read_bec(SHARED / "sio2_quartz_qe" / "SiO2.xyz")
    pool, test = frames[0:150], frames[150:201]
    if quick:
        pool, test = pool[::2], test[::3]
    return pool, test, {}


def load_zro2(quick: bool):
    import numbec

    path = str(SHARED / "zro2_vasp_dfpt" / "OUTCAR.{}.xz")
    pool_ids, test_ids = list(range(1, 81)), list(range(81, 120))
    if quick:
        pool_ids, test_ids = pool_ids[::2], test_ids[::3]
    pool = numbec.read_bec([path.format(i) for i in pool_ids])
    test = numbec.read_bec([path.format(i) for i in test_ids])
    return pool, test, {}


def load_xtb(quick: bool, cache: Path, log=print, test_copies: int | None = None):
    """Pool of xTB-labelled cluster snapshots, the independent BEC test set, and a callback
    with the spectral error along the demo's test MD."""
    from xtb_clusters import independent_clusters

    import numbec
    from numbec import demo
    from numbec.io._files import atomic_write
    from numbec.models.evaluate import bec_metrics
    from numbec.spectra.ir import kinetic_temperature

    cache.mkdir(parents=True, exist_ok=True)
    sizes = (2, 3, 4, 5, 6)
    per_size = 12 if quick else 24
    path = cache / f"xtb-pool-{per_size}.extxyz"
    if path.exists():
        pool = numbec.read_bec(path)
    else:
        calc = demo.xtb_calculator()
        pool = []
        t0 = time.perf_counter()
        for n in sizes:
            rng = np.random.default_rng([11, n])
            atoms = demo.water_cluster(n, seed=int(rng.integers(2**31)), calc=calc)
            demo._thermal_momenta(atoms, 400.0, rng)
            dyn = demo._langevin(atoms, 0.5, 400.0, rng)
            for _ in range(per_size):
                dyn.run(POOL_SAMPLE_EVERY)
                bec, dipole = demo.finite_difference_apt(atoms, 0.005)
                snap = atoms.copy()
                snap.set_momenta(None)
                snap.arrays["bec"] = bec
                snap.info["dipole"] = dipole
                pool.append(snap)
        atomic_write(path, lambda tmp: numbec.write_bec(tmp, pool))
        log(f"xtb pool: {len(pool)} snapshots labelled in {time.perf_counter() - t0:.0f} s")
    # which MD each pool frame comes from and when (the order of the loop above)
    pool_info = {"molecules": [len(a) // 3 for a in pool],
                 "time_fs": [0.5 * POOL_SAMPLE_EVERY * (1 + k % per_size)
                             for k in range(len(pool))]}
    t0 = time.perf_counter()
    copies = test_copies or (1 if quick else 3)
    test = independent_clusters(cache, copies=copies, log=log)
    log(f"xtb test: {len(test)} snapshots of {6 * copies} independent 300 K MDs, (H2O)_n, "
        f"n = 2-7 ({time.perf_counter() - t0:.0f} s)")
    config = demo.DemoConfig.quick() if quick else demo.DemoConfig.full()
    md = demo.run_md(config, cache, log=log)
    checks = demo.exact_check_frames(config, md, cache, log=log)
    store = cache / f"{Path(md['traj']).stem}.zarr"
    if not store.exists():  # converted under a temporary name: never a partial store
        atomic_write(store, lambda tmp: numbec.convert_trajectory(
            md["traj"], tmp, timestep=md["frame_dt"], progress=False))
    temperature = kinetic_temperature(numbec.open_trajectory(store))
    freq, exact = demo._spectrum(md["dipole_dt"], md["frame_dt"], temperature)
    band = freq <= 4200.0
    test_molecules = np.array([len(a) // 3 for a in test])

    def rmse(model, frames):
        pred = np.concatenate([model.predict(a)["bec"] for a in frames])
        ref = np.concatenate([np.asarray(a.arrays["bec"]) for a in frames])
        return float(bec_metrics(pred, ref)["rmse"])

    def spectral_error(model, record):
        pred = numbec.predict(model, store, progress=False)
        _, spec = demo._spectrum(np.asarray(pred["dipole_derivative"].values), md["frame_dt"],
                                 temperature)
        rel = float(np.linalg.norm(spec[band] - exact[band]) / np.linalg.norm(exact[band]))
        by_size = {str(n): rmse(model, [a for a, m in zip(test, test_molecules, strict=True)
                                        if m == n]) for n in np.unique(test_molecules)}
        in_pool = [a for a, m in zip(test, test_molecules, strict=True) if m <= max(sizes)]
        return {"spectrum_rel_l2": rel, "rmse_test_n2_6": rmse(model, in_pool),
                "rmse_md_checks": rmse(model, checks), "rmse_test_by_molecules": by_size}

    return pool, test, {"callback": spectral_error, "pool_info": pool_info}


LOADERS = {"quartz": load_quartz, "zro2": load_zro2, "xtb": load_xtb}


# ---------------------------------------------------------------------------- runs
def run_system(name, args, log=print, checkpoint=None) -> dict:
    import numbec
    from numbec.descriptors import DescriptorSettings
    from numbec.learning_loop import kernel_trainer

    t0 = time.perf_counter()
    if name == "xtb":
        pool, test, extra = load_xtb(args.quick, Path(args.cache), log, args.xtb_test_copies)
    else:
        pool, test, extra = LOADERS[name](args.quick)
    test = test[::args.test_stride]
    descriptors, n_sparse = SYSTEM_DEFAULTS[name]
    n_sparse = args.n_sparse or n_sparse
    species = sorted({int(z) for a in pool for z in a.numbers})
    settings = DescriptorSettings(species=tuple(species), **descriptors)
    fraction = getattr(args, "sparse_fraction", None)
    train = kernel_trainer(args.model, n_sparse=n_sparse, settings=settings,
                           sparse_fraction=fraction)
    sparse = (f"n_sparse {n_sparse}" if fraction is None
              else f"n_sparse min({n_sparse}, ceil({fraction} x environments))")
    log(f"\n## {name}: pool {len(pool)} frames, test {len(test)} frames, model {args.model} "
        f"({sparse}), {args.start} + {args.step}/round up to {args.max} "
        f"(data read in {time.perf_counter() - t0:.0f} s)")
    runs = {}
    for strategy in args.strategies:
        seeds = (range(args.first_seed, args.first_seed + args.seeds) if strategy == "random"
                 else [0])
        for seed in seeds:
            label = strategy if strategy != "random" else f"random/{seed}"
            t1 = time.perf_counter()
            result = numbec.active_learning(
                pool, lambda k, atoms: pool[k], train, strategy=strategy,
                n_initial=args.start, n_per_round=args.step, n_max=args.max, test=test,
                seed=seed, candidates=args.candidates, min_separation=args.min_separation,
                callback=extra.get("callback"),
                log=lambda text, label=label: log(f"    {label}: {text}"))
            runs[label] = [r.to_dict() for r in result.records]
            curve = ", ".join(f"{r.n_train}: {r.test_rmse:.4f}" for r in result.records)
            log(f"  {label:12s} {time.perf_counter() - t1:6.0f} s  {curve}")
            if checkpoint is not None:  # a long run keeps what it has measured
                checkpoint(name, {"pool": len(pool), "test": len(test), "runs": runs,
                                  "pool_info": extra.get("pool_info")})
    return {"pool": len(pool), "test": len(test), "runs": runs,
            "pool_info": extra.get("pool_info")}


#: Secondary errors of the xTB callback (record.extra), printed as a second table.
XTB_CHECKS = {"rmse_test_n2_6": "test clusters of 2-6 molecules (the pool's sizes)",
              "rmse_md_checks": "exact APTs at the check frames of the spectrum's MD"}


def _first_at_or_below(sizes, curve, value):
    hit = [n for n, e in zip(sizes, curve, strict=True) if e <= value]
    return hit[0] if hit else None


def _table(sizes, table, strategies, runs, key, spectrum):
    lines = ["| frames | " + " | ".join(strategies) + " |", "|---|" + "---|" * len(strategies)]
    for i, n in enumerate(sizes):
        cells = []
        for s in strategies:
            row = table[s][key]
            cell = f"{row['mean'][i]:.4f}"
            if s == "random" and len(runs) > 1 and row["max"][i] > row["min"][i]:
                cell += f" ({row['min'][i]:.4f}-{row['max'][i]:.4f})"
            if spectrum and "spectrum_rel_l2" in table[s]:
                cell += f" / {table[s]['spectrum_rel_l2'][i]:.3f}"
            cells.append(cell)
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines


def summarise(name, result, args, log=print) -> dict:
    runs = result["runs"]
    sizes = [r["n_train"] for r in next(iter(runs.values()))]
    table = {}
    for strategy in args.strategies:
        keys = [k for k in runs if k == strategy or k.startswith(strategy + "/")]
        row = {}
        for metric in ("test_rmse", *XTB_CHECKS):
            err = np.array([[r[metric] if metric == "test_rmse" else r["extra"].get(metric)
                             for r in runs[k]] for k in keys], dtype=float)
            if not np.isnan(err).any():
                row[metric] = {"mean": err.mean(axis=0).tolist(), "min": err.min(axis=0).tolist(),
                               "max": err.max(axis=0).tolist()}
        row["rmse"] = row["test_rmse"]["mean"]  # the keys of earlier reports
        row["rmse_min"], row["rmse_max"] = row["test_rmse"]["min"], row["test_rmse"]["max"]
        spec = [[r["extra"].get("spectrum_rel_l2") for r in runs[k]] for k in keys]
        if all(v is not None for s in spec for v in s):
            row["spectrum_rel_l2"] = np.mean(np.array(spec, dtype=float), axis=0).tolist()
        table[strategy] = row
    out = {"sizes": sizes, "strategies": table}
    spectrum = any("spectrum_rel_l2" in r for r in table.values())
    log(f"\n{name}: BEC test RMSE (e)" + (" / spectrum relative L2 error" if spectrum else "")
        + f" against training frames (test: {result['test']} frames)")
    log("\n".join(_table(sizes, table, args.strategies, runs, "test_rmse", spectrum)))
    for metric, what in XTB_CHECKS.items():
        if all(metric in table[s] for s in args.strategies):
            log(f"\n{name}: BEC RMSE (e) on {what}")
            log("\n".join(_table(sizes, table, args.strategies, runs, metric, False)))
    by_size = {}  # strategy -> (rounds, molecules): mean over runs
    for strategy in args.strategies:
        keys = [k for k in runs if k == strategy or k.startswith(strategy + "/")]
        per_run = [[r["extra"].get("rmse_test_by_molecules") for r in runs[k]] for k in keys]
        if all(d is not None for run in per_run for d in run):
            molecules = sorted(per_run[0][0], key=int)
            by_size[strategy] = np.mean([[[d[m] for m in molecules] for d in run]
                                         for run in per_run], axis=0)
    if by_size and len(by_size) == len(args.strategies):
        log(f"\n{name}: BEC test RMSE (e) by cluster size (molecules) of the test frames")
        log("| strategy | frames | " + " | ".join(f"n={m}" for m in molecules) + " |")
        log("|---|---|" + "---|" * len(molecules))
        for i, n in enumerate(sizes):
            if n in (sizes[1], sizes[len(sizes) // 2 - 1], sizes[-1]):
                for strategy, err in by_size.items():
                    log(f"| {strategy} | {n} | " + " | ".join(f"{e:.4f}" for e in err[i])
                        + " |")
        out["rmse_by_molecules"] = {s: {"molecules": [int(m) for m in molecules],
                                        "rmse": e.tolist()} for s, e in by_size.items()}
    info = result.get("pool_info")
    if info:  # what each strategy labelled after the common start set
        picks = {}
        for label, rounds in runs.items():
            added = [k for r in rounds[1:] for k in r["added"]]
            molecules = np.array(info["molecules"])[added]
            times = np.array(info["time_fs"])[added]
            counts = {int(m): int(c) for m, c in zip(*np.unique(molecules, return_counts=True),
                                                     strict=True)}
            picks[label] = {"molecules": counts, "mean_time_fs": float(times.mean())}
            log(f"  {label:12s} labelled (H2O)_n: "
                + ", ".join(f"n={m}: {c}" for m, c in counts.items())
                + f"; mean MD time {times.mean():.0f} fs of {max(info['time_fs']):.0f}")
        out["picks"] = picks
    if "random" in table:
        rand = table["random"]["test_rmse"]
        target, lo, hi = rand["mean"][-1], rand["min"][-1], rand["max"][-1]
        reached = {s: _first_at_or_below(sizes, table[s]["rmse"], target)
                   for s in args.strategies}
        # the seed range of random at the last size: frames to reach its worst and best seed
        reached_range = {s: (_first_at_or_below(sizes, table[s]["rmse"], hi),
                             _first_at_or_below(sizes, table[s]["rmse"], lo))
                         for s in args.strategies}
        half = sizes[-1] // 2
        met = any(reached[s] is not None and reached[s] <= half
                  for s in ("uncertainty", "hybrid", "reduction", "diverse") if s in reached)
        # a curve that does not fall cannot tell strategies apart: the first model is as good
        flat = rand["mean"][0] <= target
        out.update({"target_rmse": target, "target_rmse_seed_range": [lo, hi],
                    "frames_to_reach": reached, "frames_to_reach_seed_range": reached_range,
                    "target_met": met, "learning_curve_flat": flat})
        verdict = "met" if met else "missed"
        if flat:
            verdict += (" trivially: the initial model is already as good as random's last "
                        "(flat learning curve: the model's capacity, not the data, limits it)")

        def frames(n):
            return str(n) if n is not None else ">" + str(sizes[-1])

        log(f"random at {sizes[-1]} frames: {target:.4f} e (seeds {lo:.4f}-{hi:.4f}); frames "
            "to reach it: " + ", ".join(f"{s} {frames(reached[s])}" for s in args.strategies)
            + "; to reach random's worst / best seed: "
            + ", ".join(f"{s} {frames(reached_range[s][0])} / {frames(reached_range[s][1])}"
                        for s in args.strategies)
            + f"; target (active <= {half}): {verdict}")
    return out


def merge(paths) -> int:
    """Summarise the runs of several ``--json`` reports together, system by system (runs of
    the same name: the later file wins). Their settings must agree but for the strategies."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    base = dict(reports[0]["arguments"])
    keys = ("model", "n_sparse", "sparse_fraction", "start", "step", "max", "quick", "test_stride",
            "xtb_test_copies")
    for path, rep in zip(paths, reports, strict=True):
        diff = {k: rep["arguments"].get(k) for k in keys if rep["arguments"].get(k) != base.get(k)}
        if diff:
            raise SystemExit(f"{path}: settings {diff} differ from {paths[0]}")
    systems: dict = {}
    strategies: list = []
    for rep in reports:
        strategies += [s for s in rep["arguments"]["strategies"] if s not in strategies]
        for name, result in rep["systems"].items():
            merged = systems.setdefault(name, {"pool": result["pool"], "test": result["test"],
                                               "pool_info": result.get("pool_info"),
                                               "runs": {}})
            merged["runs"].update(result["runs"])
    args = argparse.Namespace(**{**base, "strategies": [s for s in STRATEGIES
                                                         if s in strategies]})
    for name, result in systems.items():
        present = {k.split("/")[0] for k in result["runs"]}
        args.strategies = [s for s in STRATEGIES if s in present]
        summarise(name, result, args)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default="quartz,zro2,xtb")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--model", choices=("monopole", "dipole", "combined"),
                        default="combined")
    parser.add_argument("--n-sparse", type=int, default=None,
                        help="per species (default: quartz 40, zro2 30, xtb 60)")
    parser.add_argument("--sparse-fraction", type=float, default=None,
                        help="sparse set growing with the labelled data: per species "
                             "min(n_sparse, ceil(f x training environments)), f in (0, 1] "
                             "(default: n_sparse per species, capped at the environments)")
    parser.add_argument("--test-stride", type=int, default=1,
                        help="use every Nth test frame (default 1: all)")
    parser.add_argument("--start", type=int, default=5)
    parser.add_argument("--step", type=int, default=5)
    parser.add_argument("--max", type=int, default=None, help="default 40 (--quick: 20)")
    parser.add_argument("--seeds", type=int, default=None, help="default 3 (--quick: 2)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds of random: first-seed, first-seed + 1, ... (to split "
                             "them over several runs and --merge)")
    parser.add_argument("--candidates", type=int, default=None,
                        help="frames kept after each round's scoring pass for the greedy "
                             "stage (default: numbec.select's, 20 per pick, >= 200: the whole "
                             "pool here, whose exact design rows the greedy stage then builds)")
    parser.add_argument("--min-separation", type=float, default=0.0,
                        help="smallest distance between picked frames, in pool frames (the "
                             "pools have no time axis; numbec.select's min_separation; "
                             "default 0: none)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--xtb-test-copies", type=int, default=None,
                        help="xTB test set: snapshots of 6 x this many independent MDs, 3 "
                             "each (default 3: 54 frames; --quick: 1, 18 frames)")
    parser.add_argument("--cache", default="numbec-al-cache",
                        help="directory of the generated xTB data")
    parser.add_argument("--json", default=None, help="write all rounds to this file")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="print the tables of earlier --json runs together (e.g. the "
                             "strategies run separately) instead of running")
    args = parser.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):  # one line per round, also into a file
        sys.stdout.reconfigure(line_buffering=True)
    if args.merge:
        return merge(args.merge)
    args.strategies = [s for s in args.strategies.split(",") if s]
    unknown = set(args.strategies) - set(STRATEGIES)
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}")
    args.max = args.max or (20 if args.quick else 40)
    args.seeds = args.seeds or (2 if args.quick else 3)
    systems = [s for s in args.systems.split(",") if s]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# active learning benchmark: {', '.join(systems)}; load average {load:.1f}")
    report = {"arguments": {k: v for k, v in vars(args).items()}, "systems": {}}
    t0 = time.perf_counter()
    for name in systems:
        if name not in LOADERS:
            parser.error(f"unknown system {name!r}; use {sorted(LOADERS)}")
        def checkpoint(name, partial):
            report["systems"][name] = partial
            if args.json:
                _write_json(args.json, report)

        result = run_system(name, args, checkpoint=checkpoint)
        result["summary"] = summarise(name, result, args)
        report["systems"][name] = result
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.json:
        _write_json(args.json, report)
    return 0


def _write_json(path, report) -> None:
    """Whole or not at all: a temporary name, then a rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
