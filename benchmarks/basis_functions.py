"""Cost per neighbour pair of the per-pair basis functions of the descriptors.

Usage::

    NUMBA_NUM_THREADS=1 python benchmarks/basis_functions.py [--repeat 20] [--l-max 4]
    python benchmarks/basis_functions.py --quick     # smoke run: 3 timed runs per function

Inputs are the real neighbour pairs of the 72-atom alpha-quartz cell (first frame of
``../shared/data/sio2_quartz_qe/SiO2.xyz``, default ``DescriptorSettings(species=(8, 14))``:
radial cutoff 6 Å, angular cutoff 5 Å, 8 radial and 8 angular functions), in neighbour-list
order. Each function is called once per pair in a compiled loop; the table prints ns per pair,
best of ``--repeat`` runs (least sensitive to other jobs on a shared machine), median in
brackets. Spline rows use only the pairs inside that table's cutoff.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
from numba import njit

from numbec.descriptors.radial_basis_numba import hermite_eval, hermite_values
from numbec.descriptors.spherical_harmonics_numba import (
    sph_harm_prefactors,
    sph_harm_unit,
    sph_harm_unit_values,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NUMBEC_SHARED_DATA", REPO.parent / "shared" / "data"))


@njit
def loop_sph(vectors, distances, l_max, gradient):
    pref = sph_harm_prefactors(l_max)
    q = np.empty((l_max + 1, l_max + 2))
    cm = np.empty(l_max + 1)
    sm = np.empty(l_max + 1)
    y = np.empty((l_max + 1) ** 2)
    dy = np.empty(((l_max + 1) ** 2, 3))
    total = 0.0
    for p in range(distances.shape[0]):
        d = distances[p]
        ux, uy, uz = vectors[p, 0] / d, vectors[p, 1] / d, vectors[p, 2] / d
        if gradient:
            sph_harm_unit(ux, uy, uz, l_max, pref, q, cm, sm, y, dy)
            total += dy[-1, 2]
        else:
            sph_harm_unit_values(ux, uy, uz, l_max, pref, q, cm, sm, y)
        total += y[-1]
    return total


@njit
def loop_hermite(distances, inv_spacing, values, derivatives, derivative):
    h = np.empty(values.shape[1])
    dh = np.empty(values.shape[1])
    total = 0.0
    for p in range(distances.shape[0]):
        if derivative:
            hermite_eval(distances[p], inv_spacing, values, derivatives, h, dh)
            total += dh[-1]
        else:
            hermite_values(distances[p], inv_spacing, values, derivatives, h)
        total += h[-1]
    return total


def best_ns(func, n_pairs, repeat):
    func()  # compile / warm up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append((time.perf_counter() - start) / n_pairs * 1e9)
    return min(times), statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=None,
                        help="timed runs per function (default 20; --quick: 3)")
    parser.add_argument("--l-max", type=int, default=4, help="spherical harmonics degree")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 timed runs")
    args = parser.parse_args()
    if args.repeat is None:
        args.repeat = 3 if args.quick else 20
    quartz = SHARED / "sio2_quartz_qe" / "SiO2.xyz"
    if not quartz.is_file():
        parser.error(f"reference data not found: {quartz} (set NUMBEC_SHARED_DATA)")

    import numbec
    from numbec.descriptors import DescriptorSettings, compute_descriptors

    atoms = numbec.read_bec(str(quartz), index="0:1")[0]
    settings = DescriptorSettings(species=(8, 14), l_max=args.l_max)
    desc = compute_descriptors(atoms.positions, atoms.numbers, np.asarray(atoms.cell), atoms.pbc,
                               settings)
    vec, dist = desc.pairs.vectors, desc.pairs.distances
    ex = desc._expansion
    rows = [
        (f"sph_harm_unit (l_max={args.l_max})", dist.size,
         lambda: loop_sph(vec, dist, args.l_max, True)),
        (f"sph_harm_unit_values (l_max={args.l_max})", dist.size,
         lambda: loop_sph(vec, dist, args.l_max, False)),
    ]
    for name, table in (("angular", ex.angular), ("radial", ex.radial)):
        inside = np.ascontiguousarray(dist[dist < table.cutoff])
        k = table.values.shape[1]
        for fname, deriv in (("hermite_eval", True), ("hermite_values", False)):
            rows.append((f"{fname} ({name}, {k} columns)", inside.size,
                         lambda t=table, x=inside, dv=deriv: loop_hermite(
                             x, t.inv_spacing, t.values, t.derivatives, dv)))
    print(f"{dist.size} pairs, NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', 'unset')}, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print("| function | ns per pair, best (median) |")
    print("|---|---|")
    for name, n, func in rows:
        best, median = best_ns(func, n, args.repeat)
        print(f"| {name} | {best:.1f} ({median:.1f}) |")


if __name__ == "__main__":
    main()
