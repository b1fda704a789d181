"""Active learning with xTB as the labeller: which water-cluster frames are worth an APT?

The loop numbec runs when the reference calculation is a Python function: train a model on a
few labelled frames, score the unlabelled pool with the model's posterior uncertainty, label
the chosen frames (here: exact GFN2-xTB atomic polar tensors by finite differences of the
dipole, 6 N single points each, as ``numbec demo`` computes them), retrain, repeat. With
DFT the labeller is your DFPT run and the loop is the command-line workflow of
docs/active_learning.md (numbec select -> DFPT -> numbec train).

What it does
  1. an unlabelled pool: snapshots of Langevin MDs (400 K) of (H2O)_n clusters, n = 2-6
     (positions only: nothing is labelled before it is chosen);
  2. a test set: exact APTs of snapshots of an independent 300 K MD of (H2O)_5;
  3. numbec.active_learning with the uncertainty strategy and with random selection, the
     same initial frames, xTB labelling on demand (a labelled frame is cached and reused by
     the other run);
  4. test BEC RMSE against the number of labelled frames for both (active_learning.png,
     active_learning.json).

Run
  python examples/active_learning_xtb.py            # ~5 min on 2 cores (xTB labelling)
  python examples/active_learning_xtb.py --quick    # reduced run (the test suite's)

Needs tblite (``pip install "numbec[demo]"``) and matplotlib.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import numbec
from numbec import demo
from numbec.descriptors import DescriptorSettings
from numbec.learning_loop import kernel_trainer


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="active-learning-example", help="output directory")
    p.add_argument("--per-size", type=int, default=16, help="pool snapshots per cluster size")
    p.add_argument("--start", type=int, default=4, help="initially labelled frames")
    p.add_argument("--step", type=int, default=4, help="frames labelled per round")
    p.add_argument("--max", type=int, default=24, help="labelled frames in the end")
    p.add_argument("--quick", action="store_true",
                   help="reduced run: 4 snapshots per size, 3 + 3 per round up to 9")
    return p.parse_args(argv)


def md_snapshots(n_molecules, n_snapshots, temperature, seed, calc, every=25):
    """Positions of an xTB Langevin MD of (H2O)_n every ``every`` steps of 0.5 fs."""
    rng = np.random.default_rng(seed)
    atoms = demo.water_cluster(n_molecules, seed=int(rng.integers(2**31)), calc=calc)
    demo._thermal_momenta(atoms, temperature, rng)
    dyn = demo._langevin(atoms, 0.5, temperature, rng)
    frames = []
    for _ in range(n_snapshots):
        dyn.run(every)
        snap = atoms.copy()  # no calculator, no momenta: an unlabelled structure
        snap.set_momenta(None)
        frames.append(snap)
    return frames


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.quick:
        args.per_size, args.start, args.step, args.max = 4, 3, 3, 9
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    calc = demo.xtb_calculator()
    t0 = time.perf_counter()

    # 1-2. pool (unlabelled) and test set (labelled)
    pool = []
    for n in (2, 3, 4, 5, 6):
        pool += md_snapshots(n, args.per_size, 400.0, seed=[21, n], calc=calc)
    test = md_snapshots(5, 2 if args.quick else 6, 300.0, seed=[99, 5], calc=calc, every=60)
    for atoms in test:
        atoms.calc = calc
        atoms.arrays["bec"], atoms.info["dipole"] = demo.finite_difference_apt(atoms)
        atoms.calc = None
    print(f"pool {len(pool)} unlabelled snapshots, test {len(test)} labelled "
          f"({time.perf_counter() - t0:.0f} s)")

    # 3. the labeller: exact xTB APTs of one pool frame, computed once
    labelled = {}

    def label(k, atoms):
        if k not in labelled:
            frame = atoms.copy()
            frame.calc = calc
            frame.arrays["bec"], frame.info["dipole"] = demo.finite_difference_apt(frame)
            frame.calc = None
            labelled[k] = frame
        return labelled[k]

    settings = DescriptorSettings(species=(1, 8), cutoff_radial=6.0, cutoff_angular=4.5,
                                  sigma=0.5, n_radial=6, n_angular=6, l_max=3)
    train = kernel_trainer("monopole", n_sparse=30 if args.quick else 60, settings=settings)
    curves = {}
    for strategy in ("uncertainty", "random"):
        result = numbec.active_learning(pool, label, train, strategy=strategy,
                                        n_initial=args.start, n_per_round=args.step,
                                        n_max=args.max, test=test, log=print)
        n, err = result.learning_curve()
        sizes = [len(pool[k]) // 3 for k in result.labelled]
        curves[strategy] = {"frames": n.tolist(), "test_rmse": err.tolist(),
                            "labelled": result.labelled, "cluster_sizes": sizes}
        print(f"{strategy}: labelled clusters of n = {sizes}")
    summary = {"pool": len(pool), "test": len(test), "xtb_labels": len(labelled),
               "curves": curves, "seconds": time.perf_counter() - t0}
    (out / "active_learning.json").write_text(json.dumps(summary, indent=1) + "\n")

    # 4. the learning curves
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for strategy, curve in curves.items():
        ax.plot(curve["frames"], curve["test_rmse"], "o-", label=strategy)
    ax.set_xlabel("labelled frames")
    ax.set_ylabel("test BEC RMSE (e)")
    ax.set_title("water clusters, GFN2-xTB APTs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "active_learning.png", dpi=120)
    print(f"{out}: active_learning.png, active_learning.json "
          f"({len(labelled)} xTB labels, {summary['seconds']:.0f} s)")
    return summary


if __name__ == "__main__":
    main()
