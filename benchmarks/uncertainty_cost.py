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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default="quartz,xtb")
    parser.add_argument("--ranks", default="8,16,32,64")
    parser.add_argument("--frames", type=int, default=4, help="test frames timed")
    parser.add_argument("--cache", default="numbec-demo/cache")
    args = parser.parse_args(argv)
    ranks = [int(k) for k in args.ranks.split(",")]
    print("| system | C | plain per frame | uncertainty | cost vs plain | max frame dev "
          "| captured |")
    print("|---" * 7 + "|")
    for system in args.systems.split(","):
        if system == "quartz":
            train, test, _ = load_split("quartz", True)
            hyper = dict(SYSTEMS["quartz"]["model"], n_sparse=100)
            model = _fit("combined", train[::2], hyper, SYSTEMS["quartz"]["descriptors"])
            measure("quartz combined, 19 frames", model, test[:args.frames], ranks)
        else:
            from numbec.demo import _settings

            train, test, _ = load_xtb(Path(args.cache))
            desc = {k: v for k, v in _settings().to_dict().items() if k != "species"}
            for n in (5, 32):
                idx = np.linspace(0, len(train) - 1, n).round().astype(int)
                model = _fit("combined", [train[i] for i in idx],
                             {"zeta": 4, "n_sparse": 60, "seed": 7}, desc)
                measure(f"xTB combined, {n} clusters", model, test, ranks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
