"""Independent xTB water-cluster test sets shared by the benchmarks.

Snapshots of Langevin MDs of (H2O)_n clusters, each its own relaxed cluster and trajectory
from seeds that neither the demo's reference clusters (seed 7) nor the active-learning pool
(seeds ``[11, n]``) use, labelled with exact GFN2-xTB atomic polar tensors by central finite
differences of the dipole (:func:`numbec.demo.generate_reference`; needs tblite). Cached as
extxyz in the given directory, so each set is labelled once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

#: Six independent Langevin MDs at 300 K of clusters of 2-7 molecules (seed 2026), 3
#: snapshots 100 steps (50 fs) apart from each: 18 frames (``benchmarks/calibration.py``).
XTB_TEST = {"train_sizes": (2, 3, 4, 5, 6, 7), "snapshots_per_size": 3,
            "train_temperature": 300.0, "sample_every": 100, "seed": 2026}


def independent_clusters(cache: Path, copies: int = 1, snapshots: int | None = None,
                         log=print) -> list:
    """Snapshots of ``6 * copies`` independent MDs of :data:`XTB_TEST` clusters.

    ``copies`` repeats the cluster sizes 2-7, each repeat a new cluster geometry and
    trajectory (``generate_reference`` seeds every entry by its position); ``snapshots``
    (default :data:`XTB_TEST`'s 3) per MD, 50 fs apart. ``copies=1`` with the default
    snapshots is the calibration benchmark's test set; larger sets contain it (the first six
    MDs are the same, and their first three snapshots the same frames).

    Returns
    -------
    list of ase.Atoms, MD by MD in the order of the sizes: ``arrays["bec"]`` (N, 3, 3) e,
    canonical ``Z[a, i, j] = dP_i / dr_{a,j}``; ``info["dipole"]`` (3,) e*Angstrom.
    """
    from numbec import demo

    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    settings = dict(XTB_TEST, train_sizes=tuple(XTB_TEST["train_sizes"]) * int(copies))
    if snapshots is not None:
        settings["snapshots_per_size"] = int(snapshots)
    config = dataclasses.replace(demo.DemoConfig.full(), **settings)
    Path(cache).mkdir(parents=True, exist_ok=True)
    return demo.generate_reference(config, Path(cache), log=log)
