"""Does the model band of the IR spectrum cover the exact spectrum? (GFN2-xTB water clusters)

Usage::

    python benchmarks/xtb_band.py                       # sizes 5,10,20,40; docs table
    python benchmarks/xtb_band.py --sizes 5,40 --plot docs/images/xtb_band_{n}.png
    python benchmarks/xtb_band.py --max-frames 400      # shorter MD slice (reduced run)

Data: the demo's xTB data (``numbec.demo``, cached in ``--cache``, needs tblite): 40 training
clusters (H2O)_n, n = 2-6, with exact finite-difference APTs and dipoles, and an independent
NVE MD of (H2O)_6 (``--md-steps`` of 0.5 fs after 400 Langevin steps) with the exact dM/dt
from the xTB dipole at every step.

For each training size n (evenly spaced over the 40 clusters) the combined model is fitted
(the demo's descriptors, n_sparse 60), its variance scale learned by 5-fold cross-validation
on those n clusters (``numbec.models.uncertainty.recalibrate``), and dM/dt predicted over the
MD with ``--samples`` weight samples from the full posterior, as ``numbec.predict(...,
posterior_samples=S)`` draws them (:func:`numbec.models.forward_mode.full_posterior_samples`,
forward mode along the velocities; the samples use the weight scale ``s_w`` of the
cross-validation, :func:`numbec.models.uncertainty.sample_scale`).
The spectra (``numbec.ir_spectrum``, 300 K, Parzen window, correlation time min(1 ps, half
the run)) of the prediction, its samples and the exact dM/dt are compared over the
frequencies where the exact spectrum exceeds ``--threshold`` of its maximum (0-4200 cm^-1):

``cov68``  fraction of those frequencies where the exact spectrum lies in the 16-84 % band
           (nominal 68 %);
``cov95``  ... within the predicted spectrum +- 1.96 sample standard deviations (nominal 95 %);
``width``  median relative band width ``(p84 - p16) / predicted``;
``error``  median ``|predicted - exact| / predicted``;
``dd rel. RMSE``  relative RMSE of the predicted dM/dt against the exact one.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

# per-frame matrices are small: a threaded BLAS on a shared machine only adds contention
# (numbec.predict limits it the same way)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402


def load(cache: Path, max_frames: int | None, md_steps: int):
    import dataclasses

    import ase.io
    from ase import units

    from numbec import demo

    cfg = dataclasses.replace(demo.DemoConfig.full(), md_steps=md_steps, thermal_steps=400)
    cache.mkdir(parents=True, exist_ok=True)
    train = demo.generate_reference(cfg, cache, log=lambda *a: None)
    md = demo.run_md(cfg, cache, log=lambda *a: None)
    frames = ase.io.read(md["traj"], index=":" if max_frames is None else f":{max_frames}")
    velocities = np.stack([a.get_velocities() for a in frames]) * units.fs  # Å/fs
    exact = md["dipole_dt"][:len(frames)]
    return train, frames, velocities, exact, md["frame_dt"]


def fit(train, n_sparse=60, seed=7):
    import numbec
    from numbec.demo import _settings
    from numbec.models.uncertainty import recalibrate

    counts = {}
    for atoms in train:
        for z in atoms.numbers:
            counts[int(z)] = counts.get(int(z), 0) + 1
    model = numbec.CombinedModel(settings=_settings(), zeta=4, seed=seed,
                                 n_sparse={z: min(n_sparse, c) for z, c in counts.items()})
    model.fit(train)
    return recalibrate(model, train, folds=5)


def predict_samples(model, frames, velocities, n_samples, seed):
    """dM/dt (F, 3) and its samples (F, S, 3) e·Å/fs, as ``numbec.predict(...,
    posterior_samples=S, seed=seed)`` computes them: S weight vectors from the full
    posterior (forward mode along the velocities, :mod:`numbec.models.forward_mode`)."""
    from numbec.models import forward_mode as fm

    weights = fm.full_posterior_samples(model, n_samples, seed)
    dd = np.empty((len(frames), 3))
    samples = np.empty((len(frames), n_samples, 3))
    for f, atoms in enumerate(frames):
        out = fm.dipole_derivative_uncertainty(model, atoms.positions, atoms.numbers,
                                               np.zeros((3, 3)), np.zeros(3, dtype=bool),
                                               velocities[f], weights)
        dd[f] = out["dipole_derivative"]
        samples[f] = out["dipole_derivative_samples"]
    return dd, samples


def spectra(dd, samples, exact, dt):
    import numbec

    kw = {"timestep": dt, "temperature": 300.0,
          "correlation_time": min(1000.0, 0.5 * len(dd) * dt)}
    pred = numbec.ir_spectrum(dd, samples=samples, **kw)
    ref = numbec.ir_spectrum(exact, **kw)
    return pred, ref


def score(pred, ref, threshold) -> dict:
    f = pred["frequency"].values
    y = pred["cross_section"].values
    x = ref["cross_section"].values
    lo, hi = pred["cross_section_model_p16"].values, pred["cross_section_model_p84"].values
    sd = pred["cross_section_model_std"].values
    sel = (f <= 4200.0) & (x > threshold * x[f <= 4200.0].max())
    return {"cov68": float(np.mean((x[sel] >= lo[sel]) & (x[sel] <= hi[sel]))),
            "cov95": float(np.mean(np.abs(x[sel] - y[sel]) <= 1.959964 * sd[sel])),
            "width": float(np.median((hi[sel] - lo[sel]) / y[sel])),
            "error": float(np.median(np.abs(y[sel] - x[sel]) / y[sel])),
            "n_freq": int(sel.sum())}


def plot(pred, ref, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from numbec.plot import plot_spectrum

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    plot_spectrum(pred, ax=ax, label="predicted (combined)", max_frequency=4200)
    ax.plot(ref["frequency"].values, ref["cross_section"].values, "k--", lw=1.0,
            label="exact xTB dipole")
    ax.set_xlim(0, 4200)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> int:
    from numbec.models.uncertainty import sample_scale

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="5,10,20,40")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.05)
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--md-steps", type=int, default=2000,
                        help="NVE steps of the (H2O)_6 test MD (0.5 fs; the demo's has 5000)")
    parser.add_argument("--cache", default="numbec-demo/cache")
    parser.add_argument("--plot", default=None, help="PNG path with {n} for the size")
    parser.add_argument("--plot-sizes", default="5,40", help="sizes to draw")
    args = parser.parse_args(argv)
    train_all, frames, velocities, exact, dt = load(Path(args.cache), args.max_frames,
                                                         args.md_steps)
    print(f"MD: {len(frames)} frames of {len(frames[0])} atoms, {dt:g} fs apart; "
          f"{args.samples} samples from the full posterior")
    print("| training frames | scale s | weight scale s_w | dd rel. RMSE | cov68 | cov95 "
          "| band width | error | frequencies | predict s |")
    print("|---" * 10 + "|")
    for n in (int(s) for s in args.sizes.split(",")):
        idx = np.linspace(0, len(train_all) - 1, n).round().astype(int)
        model = fit([train_all[i] for i in idx])
        t0 = time.perf_counter()
        dd, samples = predict_samples(model, frames, velocities, args.samples, args.seed)
        seconds = time.perf_counter() - t0
        pred, ref = spectra(dd, samples, exact, dt)
        s = score(pred, ref, args.threshold)
        rel = float(np.sqrt(np.mean((dd - exact) ** 2) / np.mean(exact ** 2)))
        s_w = sample_scale(model)
        print(f"| {n} | {model.variance_scale:.3g} | {s_w:.3g} | {rel:.3f} "
              f"| {100 * s['cov68']:.0f} % "
              f"| {100 * s['cov95']:.0f} % | {100 * s['width']:.0f} % "
              f"| {100 * s['error']:.0f} % | {s['n_freq']} | {seconds:.0f} |", flush=True)
        if args.plot and str(n) in args.plot_sizes.split(","):
            plot(pred, ref, args.plot.format(n=n),
                 f"(H2O)6 xTB MD, combined model trained on {n} clusters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
