"""Dipoles of the water dimer from models trained on BECs alone (docs/method.md#dipole-model).

The predecessor paper reports about 1 % error of the water-dimer dipole for the lambda = 1 model
trained on BECs only ("derivative learning"): the dipole is never shown to the model, it follows
from the learned function. Reference: GFN2-xTB (tblite) dipoles and exact atomic polar tensors
by central differences of the dipole (numbec.demo), on thermally displaced geometries of one
relaxed dimer. Prints one markdown table: BEC RMSE and dipole error on the test geometries,
per model (dipole error = norm of predicted minus xTB dipole; relative: divided by the norm
of the xTB dipole). Needs tblite (``pip install numbec[demo]``).

    python benchmarks/water_dimer_dipole.py [--train 30] [--test 15] [--sigma 0.06]
    python benchmarks/water_dimer_dipole.py --quick    # smoke run: 8 train, 4 test, n_sparse 8
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from numbec import CombinedModel, DipoleModel, MonopoleModel
from numbec.demo import finite_difference_apt, water_cluster, xtb_calculator
from numbec.descriptors import DescriptorSettings

#: The demo's small basis (clusters of a few molecules).
SETTINGS = DescriptorSettings(species=(1, 8), cutoff_radial=6.0, cutoff_angular=4.5, sigma=0.5,
                              n_radial=6, n_angular=6, l_max=3)


def reference_frames(n: int, sigma: float, seed: int) -> list:
    """``n`` displaced copies of a relaxed (H2O)2 with xTB APTs in arrays['bec'] and the xTB
    dipole in info['xtb_dipole'] (not 'dipole', so that fit() does not see it)."""
    calc = xtb_calculator()
    dimer = water_cluster(2, seed=seed, calc=calc)
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = dimer.copy()
        atoms.positions += rng.normal(0.0, sigma, atoms.positions.shape)
        atoms.calc = calc
        bec, dipole = finite_difference_apt(atoms)
        atoms.calc = None
        atoms.arrays["bec"] = bec
        atoms.info["xtb_dipole"] = dipole
        frames.append(atoms)
    return frames


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=None, help="default 30 (--quick: 8)")
    parser.add_argument("--test", type=int, default=None, help="default 15 (--quick: 4)")
    parser.add_argument("--sigma", type=float, default=0.06, help="displacement std, Å")
    parser.add_argument("--n-sparse", type=int, default=None, help="default 20 (--quick: 8)")
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer dimers")
    args = parser.parse_args(argv)
    for key, full, quick in (("train", 30, 8), ("test", 15, 4), ("n_sparse", 20, 8)):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)

    t0 = time.perf_counter()
    frames = reference_frames(args.train + args.test, args.sigma, seed=4)
    train, test = frames[:args.train], frames[args.train:]
    print(f"xTB reference: {len(frames)} dimers in {time.perf_counter() - t0:.0f} s; "
          f"|P| = {np.mean([np.linalg.norm(a.info['xtb_dipole']) for a in test]):.3f} e·Å "
          f"(mean over test)")
    ref_bec = np.concatenate([a.arrays["bec"] for a in test])
    print("\n| model | BEC RMSE (e) | dipole error RMSE (e·Å) | relative dipole error, mean "
          "| fit (s) |")
    print("|---|---|---|---|---|")
    for cls in (MonopoleModel, DipoleModel, CombinedModel):
        t0 = time.perf_counter()
        model = cls(settings=SETTINGS, n_sparse=args.n_sparse).fit(train)
        fit_time = time.perf_counter() - t0
        pred = [model.predict(a) for a in test]
        bec = np.concatenate([p["bec"] for p in pred])
        d_err = np.array([p["dipole"] - a.info["xtb_dipole"] for p, a in zip(pred, test,
                                                                            strict=True)])
        rel = np.linalg.norm(d_err, axis=1) / np.array(
            [np.linalg.norm(a.info["xtb_dipole"]) for a in test])
        print(f"| {cls.__name__} | {np.sqrt(np.mean((bec - ref_bec) ** 2)):.4f} "
              f"| {np.sqrt(np.mean(np.sum(d_err ** 2, axis=1))):.4f} | {np.mean(rel):.3%} "
              f"| {fit_time:.1f} |")


if __name__ == "__main__":
    main()
