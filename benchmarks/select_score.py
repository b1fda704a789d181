"""Scoring speed of ``numbec select``: low-rank (default) against exact design-row scores.

Usage::

    python benchmarks/select_score.py                      # 12 frames, ranks 16 and 32
    python benchmarks/select_score.py --frames 17 --ranks 8,16,32,64 --sparse 60

A small combined model (frames 0-2 of the bundled 20-frame quartz subset, ``--sparse`` sparse
points per species, the descriptors of tests/test_selection.py) scores frames 3.. of the subset
(72 atoms, periodic) with :func:`numbec.selection.frame_score` (design rows) and
:func:`numbec.selection.frame_score_lowrank` at each rank K (one BLAS thread, best of 3, after a
warm-up frame so that numba compilation is not timed). Prints frames/s, the speed-up over the exact
score and Spearman's rank correlation of the scores with the exact ones; a plain BEC
prediction (``model.predict``) gives the scale. The last row, ``+ residual``, is what strategy
``hybrid`` adds per frame to the posterior-variance score (a plain prediction for the signal
variance, the descriptors and the Nyström residual against the sparse points). The rows
``select K=..`` and ``select exact`` time a whole ``numbec.select(model, frames, --select)``
(scoring pass and greedy stage) and give its rate in frames of the pool per second.
"""

from __future__ import annotations

import argparse
import os
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402


def _rank(x):
    return np.argsort(np.argsort(x))


def main(argv=None) -> None:
    import numbec
    from numbec.descriptors import DescriptorSettings
    from numbec.selection import (
        frame_residual,
        frame_score,
        frame_score_lowrank,
        signal_variance,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12,
                        help="frames scored, at most 17 (default 12)")
    parser.add_argument("--ranks", default="16,32", help="comma-separated ranks K")
    parser.add_argument("--sparse", type=int, default=20,
                        help="sparse points per species (default 20; the cost of the exact "
                             "score grows with the number of weights, the low-rank one not)")
    parser.add_argument("--select", type=int, default=3,
                        help="frames picked by the timed select calls (default 3)")
    args = parser.parse_args(argv)

    settings = DescriptorSettings(species=(8, 14), cutoff_radial=5.0, cutoff_angular=4.0,
                                  n_radial=6, n_angular=4, l_max=2)
    quartz = numbec.read_bec(numbec.io.example_file("sio2_quartz_subset"))
    model = numbec.CombinedModel(settings=settings, n_sparse=args.sparse).fit(quartz[:3])
    frames = quartz[3:3 + args.frames]
    if len(frames) < args.frames:
        raise SystemExit(f"the subset has only {len(frames)} frames after frame 2")

    def timed(score):
        score(frames[0])  # warm-up: numba compilation, cached factors
        best = np.inf
        for _ in range(3):  # best of 3: the machine is shared
            t0 = time.perf_counter()
            values = [score(a) for a in frames]
            best = min(best, time.perf_counter() - t0)
        return np.asarray(values), len(frames) / best

    def exact(a):
        return frame_score(model, a.positions, a.numbers, np.asarray(a.cell), a.pbc)

    ref, ref_rate = timed(exact)
    print(f"combined model, {model.covariance.shape[0]} weights, {len(frames[0])} atoms, "
          f"{len(frames)} frames")
    print(f"{'score':>12} {'frames/s':>9} {'speed-up':>9} {'spearman':>9}")
    _, plain_rate = timed(model.predict)
    print(f"{'plain BEC':>12} {plain_rate:9.2f} {plain_rate / ref_rate:9.2f} {'':>9}")
    print(f"{'exact':>12} {ref_rate:9.2f} {1.0:9.2f} {1.0:9.3f}")
    for k in (int(r) for r in args.ranks.split(",")):
        def fast(a, k=k):
            return frame_score_lowrank(model, a.positions, a.numbers, np.asarray(a.cell),
                                       a.pbc, rank=k)
        values, rate = timed(fast)
        rho = float(np.corrcoef(_rank(values), _rank(ref))[0, 1])
        print(f"{'lowrank K=' + str(k):>12} {rate:9.2f} {rate / ref_rate:9.2f} {rho:9.3f}")

    def extra(a):  # what strategy 'hybrid' adds per frame: prediction, descriptors, residual
        bec = model.predict(a)["bec"]
        rho = frame_residual(model, a.positions, a.numbers, np.asarray(a.cell), a.pbc)
        return signal_variance(bec, a.numbers) * float(rho.mean())

    _, rate = timed(extra)
    print(f"{'+ residual':>12} {rate:9.2f} {rate / ref_rate:9.2f} {'-':>9}")

    from numbec.selection import select

    for label, kw in ((f"select K={k}", {"uncertainty_rank": k}), ("select exact",
                                                                   {"score": "exact"})):
        best = np.inf
        for _ in range(3):
            t0 = time.perf_counter()
            select(model, frames, min(args.select, len(frames)), **kw)
            best = min(best, time.perf_counter() - t0)
        rate = len(frames) / best
        print(f"{label:>12} {rate:9.2f} {rate / ref_rate:9.2f} {'-':>9}")


if __name__ == "__main__":
    main()
