"""From your own VASP calculations to an IR spectrum: OUTCARs -> model -> MD -> spectrum.

Inputs (adapt the paths to your project)
  --outcars   DFPT/finite-field OUTCARs with a "BORN EFFECTIVE CHARGES" block (LEPSILON =
              .TRUE. or LCALCEPS = .TRUE.), one structure each; a glob such as
              "dfpt/*/OUTCAR" or "OUTCAR.*.xz" (compressed files are read directly).
              VASP prints BECs with row = field direction, numbec's canonical
              layout Z[a, i, j] = dP_i / dr_{a,j}: nothing to transpose.
  --trajectory  an MD trajectory of the same material: XDATCAR, vasprun.xml or OUTCAR of an
              IBRION = 0 run (anything ASE reads, or extxyz / ASE .traj).
  --timestep  time between stored frames in fs: POTIM x NBLOCK for an XDATCAR
              (vasprun.xml/OUTCAR store every step: POTIM). VASP files do not record it in a
              form numbec trusts, so give it explicitly.
  --temperature  K, for the quantum correction and the absolute intensity.

VASP writes no velocities to XDATCAR/vasprun.xml, so they are derived from the positions by
central differences (second order; store every step, or every 2nd at most, for O-H
stretches). The IR spectrum is alpha(omega) n(omega) in cm^-1 for the cell volume of the MD.

Steps
  1. read the reference BECs              numbec.read_bec
  2. fit and check a model                numbec.CombinedModel(...).fit, numbec.evaluate
  3. trajectory -> chunked Zarr store     numbec.convert_trajectory
  4. stream BEC predictions               numbec.predict (resumable output store)
  5. IR spectrum and figure               numbec.ir_spectrum, numbec.plot.plot_spectrum

The same from the shell:
  numbec train "OUTCAR.*.xz" --model combined -o model.npz
  numbec evaluate model.npz "test/OUTCAR.*"
  numbec convert XDATCAR traj.zarr --timestep 2
  numbec predict model.npz traj.zarr -o pred.zarr --velocities-from-positions
  numbec ir pred.zarr --temperature 300 -o ir.csv --plot ir.png

Run (the test suite uses --quick with a synthetic trajectory)
  python examples/vasp_workflow.py --outcars "dfpt/OUTCAR.*" --trajectory XDATCAR \\
      --timestep 2 --temperature 300
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

import numbec
from numbec.descriptors import DescriptorSettings


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--outcars", required=True, help="glob or file of OUTCARs with BECs")
    p.add_argument("--trajectory", required=True, help="XDATCAR, vasprun.xml, OUTCAR, ...")
    p.add_argument("--timestep", type=float, required=True, help="fs between stored frames")
    p.add_argument("--temperature", type=float, required=True, help="MD temperature, K")
    p.add_argument("--max-outcars", type=int, help="use only the first N OUTCARs")
    p.add_argument("--test-every", type=int, default=5,
                   help="every k-th OUTCAR is held out for testing (default 5)")
    p.add_argument("--n-sparse", type=int, default=200, help="sparse points per species")
    p.add_argument("--cutoff", type=float, default=5.0, help="angular cutoff, Å (radial +1)")
    p.add_argument("--out", default="vasp-example", help="output directory")
    p.add_argument("--quick", action="store_true", help="small basis, few sparse points")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. reference BECs: one ase.Atoms per OUTCAR, arrays["bec"] (N, 3, 3) e, canonical
    frames = numbec.read_bec(args.outcars)[: args.max_outcars]
    asr = max(float(np.abs(f.arrays["bec"].sum(axis=0)).max()) for f in frames)
    print(f"{len(frames)} structures with BECs; largest acoustic-sum violation {asr:.1e} e")

    # 2. model: train on most structures, keep every k-th for an honest test. The species
    #    come from the data; the cutoffs should cover the first two neighbour shells.
    test = frames[:: args.test_every] if len(frames) > 2 else frames[-1:]
    train = [f for f in frames if not any(f is t for t in test)] or frames
    species = sorted({int(z) for f in frames for z in f.numbers})
    if args.quick:
        settings = DescriptorSettings(species=species, cutoff_radial=args.cutoff,
                                      cutoff_angular=args.cutoff - 0.5, n_radial=4,
                                      n_angular=4, l_max=2)
        n_sparse = 15
    else:
        settings = DescriptorSettings(species=species, cutoff_radial=args.cutoff + 1.0,
                                      cutoff_angular=args.cutoff)
        n_sparse = args.n_sparse
    model = numbec.CombinedModel(settings=settings, n_sparse=n_sparse, seed=0)
    model.fit(train, progress=not args.quick)
    model_path = model.save(out / "model.npz")
    metrics = numbec.evaluate(model, test, baseline_frames=train)
    print(f"test BEC RMSE {metrics['rmse']:.3f} e on {len(test)} held-out structures "
          f"(species-mean baseline {metrics['baseline']['rmse']:.3f} e); model: {model_path}")

    # 3. trajectory -> Zarr store (streams frame by frame; constant memory for long runs;
    #    convert_trajectory(..., append=True) resumes an interrupted conversion)
    store = out / "traj.zarr"
    if store.exists():
        shutil.rmtree(store)
    n = numbec.convert_trajectory(args.trajectory, store, timestep=args.timestep,
                                  progress=False)
    traj = numbec.open_trajectory(store)  # lazy xarray Dataset, dims frame/atom/xyz
    print(f"{n} MD frames, {args.timestep:g} fs apart")
    if "velocities" not in traj:  # XDATCAR/vasprun.xml: derive them (Å/fs)
        from numbec.io import velocities_from_positions

        traj["velocities"] = velocities_from_positions(traj)

    # 4. stream the predictions into a store; rerunning after a crash resumes
    pred_store = out / "pred.zarr"
    if pred_store.exists():
        shutil.rmtree(pred_store)
    pred = numbec.predict(model, traj, out=pred_store, progress=not args.quick,
                          model_file=model_path)
    charges = pred["charges"].mean("frame").values if "charges" in pred else None

    # 5. spectrum: volume from the MD cell, harmonic quantum correction, Parzen window
    spectrum = numbec.ir_spectrum(pred, temperature=args.temperature)
    freq = spectrum["frequency"].values
    alpha = spectrum["absorption"].values
    np.savetxt(out / "ir.csv", np.column_stack([freq, alpha]), delimiter=",",
               header="frequency_cm-1,absorption_cm-1", fmt="%.6g")
    peak = float(freq[1:][np.argmax(alpha[1:])])
    print(f"strongest IR absorption at {peak:.0f} cm^-1; wrote {out / 'ir.csv'}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from numbec.plot import plot_spectrum
    except ImportError:
        print("matplotlib (or numbec.plot) not available: no figure")
    else:
        ax = plot_spectrum(spectrum)
        ax.figure.savefig(out / "ir.png", dpi=120)
        plt.close(ax.figure)
        print(f"wrote {out / 'ir.png'}")

    summary = {"n_structures": len(frames), "test_rmse": metrics["rmse"],
               "baseline_rmse": metrics["baseline"]["rmse"], "n_frames": n,
               "peak_cm-1": peak,
               "mean_charges": None if charges is None else charges.tolist()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
