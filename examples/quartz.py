"""Learn the Born effective charges of alpha-quartz and look at how the charge is partitioned.

Data: the 20-frame subset of the allegro-pol SiO2 data set bundled with numbec (72-atom
alpha-quartz supercells from MD, Quantum ESPRESSO PBE, Berry-phase finite fields; MIT
licence, cite Falletta et al., Nat. Commun. 16, 4031 (2025); see
numbec/data/SIO2_LICENSE_AND_CITATION.txt). With ``--data SiO2.xyz`` the full 201-frame
file is used instead.

What it does
  1. read the BECs (canonical layout Z[a, i, j] = dP_i / dr_{a,j}, e);
  2. split the frames into a training and a test set (every k-th frame is a test frame);
  3. fit a combined (monopole + dipole) kernel model on the training frames;
  4. evaluate on the test frames against the species-mean baseline (numbec.evaluate);
  5. split each predicted BEC into its monopole part (charges + charge transfer) and its
     dipole part (local dipoles), per species;
  6. parity plot of predicted vs reference BEC components (parity.png).

Run
  python examples/quartz.py                          # bundled subset, ~1 min
  python examples/quartz.py --data SiO2.xyz
      # the full allegro-pol quartz set (numbec/data/SIO2_LICENSE_AND_CITATION.txt):
      # all 201 frames (151 train, 50 test): test RMSE 0.014 e (O 0.012, Si 0.017) vs
      # 0.417 e for the species mean; ~12 min on a busy 2-core machine
  python examples/quartz.py --quick                  # reduced run (the test suite's)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

import numbec
from numbec.descriptors import DescriptorSettings
from numbec.io import example_file


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="extxyz with born_charge:R:9 (default: bundled subset)")
    p.add_argument("--test-every", type=int, default=4,
                   help="every k-th frame is a test frame (default 4)")
    p.add_argument("--n-sparse", type=int, default=100,
                   help="sparse environments per species (default 100)")
    p.add_argument("--out", default="quartz-example", help="output directory")
    p.add_argument("--quick", action="store_true",
                   help="reduced run: 8 frames, small basis, few sparse points")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. read: layout "pol-disp" (row = field direction) is what this file has, and the
    #    default of read_bec; a transposed file would need layout="disp-pol"
    path = args.data or example_file("sio2_quartz_subset")
    frames = numbec.read_bec(path, index=":8" if args.quick else ":")
    print(f"{len(frames)} frames of {len(frames[0])} atoms from {path}")

    # 2. train/test split by frame (neighbouring MD frames are correlated: hold out whole
    #    frames, never atoms)
    test = frames[:: args.test_every]
    train = [f for k, f in enumerate(frames) if k % args.test_every]

    # 3. the model. Descriptor hyperparameters as in the method papers, smaller in --quick.
    if args.quick:
        settings = DescriptorSettings(species=(8, 14), cutoff_radial=5.0, cutoff_angular=4.0,
                                      n_radial=4, n_angular=4, l_max=2)
        n_sparse = 20
    else:
        settings = DescriptorSettings(species=(8, 14), cutoff_radial=6.0, cutoff_angular=5.0,
                                      n_radial=8, n_angular=6, l_max=4)
        n_sparse = args.n_sparse
    model = numbec.CombinedModel(settings=settings, n_sparse=n_sparse, seed=0)
    model.fit(train, progress=not args.quick)
    model.save(out / "quartz-combined.npz")  # npz + JSON header; numbec.load_model reads it

    # 4. evaluate on held-out frames; the baseline predicts each atom by its species' mean
    #    tensor (fitted on the training frames)
    metrics = numbec.evaluate(model, test, baseline_frames=train)
    print(f"test BEC RMSE {metrics['rmse']:.4f} e (species-mean baseline "
          f"{metrics['baseline']['rmse']:.4f} e), R2 {metrics['r2']:.4f}")
    for symbol, m in metrics["per_species"].items():
        print(f"  {symbol:2s} RMSE {m['rmse']:.4f} e  (baseline "
              f"{metrics['baseline']['per_species'][symbol]['rmse']:.4f} e)")

    # 5. charge partition: Z = Z_monopole + Z_dipole per atom. The isotropic part
    #    tr(Z)/3 of each piece, averaged per species. The split is model dependent (many
    #    charge sets give the same BECs): read it as a description, not a measurement.
    partition = {}
    parts = {"total": [], "monopole": [], "dipole": [], "charge": []}
    numbers = []
    for atoms in test:
        pred = model.predict(atoms)
        parts["total"].append(np.trace(pred["bec"], axis1=1, axis2=2) / 3)
        parts["monopole"].append(np.trace(pred["bec_monopole"], axis1=1, axis2=2) / 3)
        parts["dipole"].append(np.trace(pred["bec_dipole"], axis1=1, axis2=2) / 3)
        parts["charge"].append(pred["charges"])
        numbers.append(atoms.numbers)
    numbers = np.concatenate(numbers)
    print("isotropic BEC per species (e): total = monopole + dipole; static charge q")
    for z in np.unique(numbers):
        symbol = chemical_symbols[z]
        sel = numbers == z
        row = {k: float(np.concatenate(v)[sel].mean()) for k, v in parts.items()}
        partition[symbol] = row
        print(f"  {symbol:2s} {row['total']:+.3f} = {row['monopole']:+.3f} "
              f"{row['dipole']:+.3f};  q = {row['charge']:+.3f}")

    # 6. parity plot (matplotlib is optional: pip install "numbec[plot]")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no parity plot")
    else:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ref = np.concatenate([a.arrays["bec"] for a in test])
        pred = np.concatenate([model.predict(a)["bec"] for a in test])
        for z, color in zip(np.unique(numbers), ("C3", "C0", "C2"), strict=False):
            sel = numbers == z
            ax.scatter(ref[sel].ravel(), pred[sel].ravel(), s=4, color=color,
                       label=chemical_symbols[z])
        lim = [ref.min() - 0.2, ref.max() + 0.2]
        ax.plot(lim, lim, color="black", lw=0.8)
        ax.set(xlim=lim, ylim=lim, xlabel="reference Z (e)", ylabel="predicted Z (e)",
               title=f"quartz, test RMSE {metrics['rmse']:.3f} e")
        ax.legend(frameon=False)
        fig.tight_layout()
        fig.savefig(out / "parity.png", dpi=120)
        plt.close(fig)
        print(f"wrote {out / 'parity.png'}")

    summary = {"rmse": metrics["rmse"], "baseline_rmse": metrics["baseline"]["rmse"],
               "per_species": {k: v["rmse"] for k, v in metrics["per_species"].items()},
               "partition": partition, "n_train": len(train), "n_test": len(test)}
    (out / "quartz.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
