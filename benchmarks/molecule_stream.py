"""Streaming prediction over a small molecule: per-frame cost where the fixed cost of a frame
dominates.

Usage::

    python benchmarks/molecule_stream.py            # 2,000 frames of a water dimer, best of 3
    python benchmarks/molecule_stream.py --quick    # smoke run: 100 frames, one timing

A gas-phase IR spectrum needs 10^5-10^6 frames of a molecule of a few atoms. Each frame's
arithmetic is then tiny (a water dimer has 30 neighbour pairs), so what a frame costs is the
fixed work of a prediction: the calls into the neighbour search, the descriptors, the kernel
products with the sparse set and the back-propagation, and the Python between them. This
script measures it for the models of ``numbec demo`` / ``benchmarks/water_dimer_dipole.py``
(the demo's small basis: n_radial = n_angular = 6, l_max = 3, cutoffs 6 and 4.5 Å; n_sparse =
20 per species, zeta = 4), fitted on 16 displaced dimers with synthetic labels (rigid-ion
charges O -0.8 e, H 0.4 e plus 0.05 e noise: speed does not depend on the fitted weights).

Rows: ``numbec.predict`` on an in-memory trajectory of displaced dimers (bec, dipole,
dipole derivative), on one thread (``threads=1`` with the Numba kernels limited to one thread
as well: ``threads=1`` alone computes one batch at a time with every Numba thread) and with
the automatic choice (``threads=None``: a chunk's
batches are timed three ways -- Numba kernels on all threads, on one thread, batches on
concurrent threads -- and the rest run the fastest way, ``numbec.parallel.fastest_batch_mode``;
frame by frame, concurrent frames only if a frame takes ``numbec.stream.MIN_THREADED_FRAME_S``),
BLAS on one thread; and, where featomic is
installed, featomic's SoapPowerSpectrum values + position gradients of the first 200 of the
same frames with the same sizes (cutoff 4.5 Å, 6 radial functions, max_angular 3), on one
Rayon thread (a child process started with ``RAYON_NUM_THREADS=1``) and on the threads this
process was started with, best of ``max(repeat, 10)`` (featomic's time of a 200-frame call
varies by 2x from call to call on two cores). The ratio compares like with like: a numbec
row on one thread (and a ceiling row) against featomic on one thread, a row on automatic
threads against featomic on all of this process's threads.
Everything else runs in this one process, after a warm-up (Numba compilation or cache load).
The ceiling rows time the kernel's dense matrix products of one batch of frames alone
(``benchmarks/stream.py``'s ``dense_products_seconds``: the model's shapes, random entries,
one BLAS thread), per frame: what a frame would cost if the descriptors, their adjoints and
the Python between the stages cost nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from descriptors import cpu_model, timed  # noqa: E402  (shared by the benchmarks)
from stream import (
    as_dataset,  # noqa: E402  (the in-memory trajectory layout)
    dense_products_seconds,  # noqa: E402  (the ceiling rows)
)

N_SPARSE = 20


def dimer():
    """A water dimer (ase.Atoms, 6 atoms, no cell), O-O about 2.9 Å."""
    from ase.build import molecule

    first, second = molecule("H2O"), molecule("H2O")
    second.positions += [2.9, 0.2, 0.1]
    return first + second


def settings():
    from numbec.descriptors import DescriptorSettings

    return DescriptorSettings(species=(1, 8), cutoff_radial=6.0, cutoff_angular=4.5, sigma=0.5,
                              n_radial=6, n_angular=6, l_max=3)


def training_frames(base, n=16, seed=0):
    from numbec.conventions import asr_project

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = base.copy()
        atoms.positions += rng.normal(0.0, 0.06, atoms.positions.shape)
        q = np.where(atoms.numbers == 8, -0.8, 0.4)
        atoms.arrays["bec"] = asr_project(q[:, None, None] * np.eye(3)
                                          + rng.normal(0.0, 0.05, (len(atoms), 3, 3)))
        frames.append(atoms)
    return frames


def trajectory(base, n_frames, seed=1):
    """In-memory dataset of ``n_frames`` displaced dimers (no periodicity)."""
    rng = np.random.default_rng(seed)
    positions = base.positions + rng.normal(0.0, 0.05, (n_frames,) + base.positions.shape)
    velocities = rng.normal(0.0, 0.01, positions.shape)
    ds = as_dataset(positions, velocities, np.asarray(base.numbers, dtype=np.int64),
                    np.zeros((n_frames, 3, 3)))
    ds["pbc"] = (("xyz",), np.zeros(3, bool))
    return ds


def featomic_ms_one_thread(label, n_frames, repeat):
    """ms per frame of featomic's values + position gradients of ``label``'s frames on one
    Rayon thread (its thread pool is fixed when a process starts: a child process), or None
    without featomic."""
    import subprocess

    env = dict(os.environ, RAYON_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__, "--featomic-child", label, "--frames",
                           str(n_frames), "--repeat", str(repeat)], env=env,
                          capture_output=True, text=True, check=True)
    value = proc.stdout.strip().splitlines()[-1]
    return None if value == "None" else float(value)


def featomic_rate(frames, repeat):
    """atom-frames/s of featomic's values + position gradients, or None without featomic."""
    try:
        from featomic import SoapPowerSpectrum
    except ImportError:
        return None
    calc = SoapPowerSpectrum(
        cutoff={"radius": 4.5, "smoothing": {"type": "ShiftedCosine", "width": 0.5}},
        density={"type": "Gaussian", "width": 0.5},
        basis={"type": "TensorProduct", "max_angular": 3,
               "radial": {"type": "Gto", "max_radial": 5}},
    )
    calc.compute(frames[:1], gradients=["positions"])
    wall = timed(lambda: calc.compute(frames, gradients=["positions"]), repeat)
    return len(frames) * len(frames[0]) / wall


def hexamer():
    """(H2O)6: six water molecules on a 2 x 3 grid about 2.9 Å apart (ase.Atoms, no cell)."""
    from ase.build import molecule

    atoms = molecule("H2O")[:0]
    rng = np.random.default_rng(5)
    for k in range(6):
        mol = molecule("H2O")
        mol.rotate(rng.uniform(0, 360), rng.normal(size=3), center="COP")
        mol.positions += [2.9 * (k % 3), 2.9 * (k // 3), 0.3 * (k % 2)]
        atoms += mol
    return atoms


def lazy_trajectory(base, n_frames, chunk):
    """A dask-backed dataset of ``n_frames`` displaced copies of ``base``, generated chunk by
    chunk (nothing of the size of the trajectory exists up front)."""
    import dask.array as da

    from numbec.io.trajectory import trajectory_dataset

    n = len(base)
    chunks = da.core.normalize_chunks((chunk, n, 3), (n_frames, n, 3))

    def block(kind, block_info=None):
        (start, stop), _, _ = block_info[None]["array-location"]
        rng = np.random.default_rng([start, kind])
        if kind == 0:
            return base.positions + rng.normal(0.0, 0.05, (stop - start, n, 3))
        return rng.normal(0.0, 0.01, (stop - start, n, 3))

    positions = da.map_blocks(block, 0, chunks=chunks, dtype=float)
    velocities = da.map_blocks(block, 1, chunks=chunks, dtype=float)
    cell = da.zeros((n_frames, 3, 3), chunks=(chunk, 3, 3))
    time = np.arange(n_frames, dtype=np.float64)
    return trajectory_dataset(positions, cell, base.numbers, np.zeros(3, bool), time,
                              velocities, attrs={"timestep": 1.0})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 frames, one timing")
    parser.add_argument("--frames", type=int, default=None, help="frames (default 2,000)")
    parser.add_argument("--repeat", type=int, default=None, help="timings (best kept; 3)")
    parser.add_argument("--batched-only", action="store_true",
                        help="skip the frame-by-frame rows (the slow half of the run)")
    parser.add_argument("--million", action="store_true",
                        help="also stream 10^6 water-dimer frames into a Zarr store")
    parser.add_argument("--featomic-child", choices=("dimer", "hexamer"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    n_frames = args.frames or (100 if args.quick else 2000)
    repeat = args.repeat or (1 if args.quick else 3)
    featomic_repeat = max(repeat, 10)
    if args.featomic_child:  # featomic's time in a process of its own (featomic_ms_one_thread)
        import ase

        base = dimer() if args.featomic_child == "dimer" else hexamer()
        positions = trajectory(base, n_frames)["positions"].values[:min(n_frames, 200)]
        rate = featomic_rate([ase.Atoms(numbers=base.numbers, positions=p)
                              for p in positions], featomic_repeat)
        print(None if rate is None else 1e3 * len(base) / rate)
        return

    import ase
    import numba
    from threadpoolctl import threadpool_limits

    import numbec
    import numbec.models as models
    from numbec import parallel

    print(f"numbec molecule streaming benchmark: `python benchmarks/molecule_stream.py"
          f"{' --quick' if args.quick else ''}"
          f"{f' --frames {args.frames}' if args.frames else ''}"
          f"{f' --repeat {args.repeat}' if args.repeat else ''}"
          f"{' --batched-only' if args.batched_only else ''}"
          f"{' --million' if args.million else ''}`; "
          f"{cpu_model()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    batch_below = parallel.BATCH_BELOW_ATOMS
    fitted = {}
    for label, kind, base in (("Water dimer", "dimer", dimer()),
                              ("(H2O)6", "hexamer", hexamer())):
        ds = trajectory(base, n_frames)
        train = training_frames(base)
        frames = [ase.Atoms(numbers=base.numbers, positions=p)
                  for p in ds["positions"].values[:min(n_frames, 200)]]
        rate = featomic_rate(frames, featomic_repeat)
        # featomic's ms per frame on one thread and on all: the ratios of the one-thread rows
        # and of the automatic rows
        featomic_ms = {"all": None if rate is None else 1e3 * len(base) / rate,
                       "one": None if rate is None else featomic_ms_one_thread(
                           kind, n_frames, repeat)}
        print(f"### {label} ({len(base)} atoms, no cell): {n_frames:,} frames, best of "
              f"{repeat}\n")
        print("| what | path | threads | ms per frame | atom-frames/s | x featomic |")
        print("|---|---|---:|---:|---:|---:|")
        with threadpool_limits(1, "blas"):
            for name in ("MonopoleModel", "CombinedModel"):
                model = getattr(models, name)(settings=settings(), n_sparse=N_SPARSE).fit(train)
                fitted[label, name] = model
                numbec.predict(model, ds.isel(frame=slice(0, 4)), progress=False)  # warm-up
                paths = (("batched (default)", batch_below), ("frame by frame", 0))
                for path, below in paths[:1] if args.batched_only else paths:
                    parallel.BATCH_BELOW_ATOMS = below
                    try:
                        for threads in (1, None):
                            # threads=1 computes one batch at a time, but its Numba kernels
                            # would still use every Numba thread: the one-thread row limits
                            # them too, to compare with featomic on one thread
                            with (parallel.numba_threads(1) if threads == 1
                                  else contextlib.nullcontext()):
                                wall = timed(lambda m=model, t=threads, d=ds: numbec.predict(
                                    m, d, progress=False, threads=t), repeat)
                            ms = 1e3 * wall / n_frames
                            ref = featomic_ms["one" if threads == 1 else "all"]
                            ratio = "n/a" if ref is None else f"{ref / ms:.1f}"
                            shown = threads or f"auto ({numba.get_num_threads()})"
                            print(f"| numbec.predict, {name} | {path} | {shown} | {ms:.3f} | "
                                  f"{n_frames * len(base) / wall:,.0f} | {ratio} |")
                    finally:
                        parallel.BATCH_BELOW_ATOMS = batch_below
                # the ceiling: the kernel's dense products of one batch of frames alone, as
                # if the descriptors, their adjoints and the glue cost nothing
                batch = parallel.batch_frames(len(base), model.batch_atoms)
                wall = dense_products_seconds(model, np.asarray(base.numbers), repeat,
                                              copies=batch)
                ms = 1e3 * wall / batch
                ratio = "n/a" if featomic_ms["one"] is None else f"{featomic_ms['one'] / ms:.1f}"
                print(f"| {name}: dense kernel products alone (ceiling) | batches of "
                      f"{batch} frames | 1 | {ms:.3f} | {len(base) / (ms * 1e-3):,.0f} | "
                      f"{ratio} |")
        threads = os.environ.get("RAYON_NUM_THREADS", "all")
        for shown, key in (("1", "one"), (threads, "all")):
            ms = featomic_ms[key]
            if ms is None:
                print(f"| featomic values+gradients | | {shown} | n/a | n/a | |")
            else:
                print(f"| featomic values+gradients | | {shown} | {ms:.3f} | "
                      f"{len(base) / (ms * 1e-3):,.0f} | 1.0 |")
        print()
    if args.million:
        import tempfile
        import time

        n_big = 1_000_000
        print(f"### {n_big:,} water-dimer frames streamed into a Zarr store (automatic "
              "threads, chunks of 20,000 frames, positions generated on the fly)\n")
        print("| model | wall s | us per frame |")
        print("|---|---:|---:|")
        ds = lazy_trajectory(dimer(), n_big, 20_000)
        for name in ("MonopoleModel", "CombinedModel"):
            with tempfile.TemporaryDirectory() as tmp:
                started = time.perf_counter()
                numbec.predict(fitted["Water dimer", name], ds, out=f"{tmp}/pred.zarr",
                               progress=False)
                wall = time.perf_counter() - started
            print(f"| {name} | {wall:.0f} | {1e6 * wall / n_big:.0f} |")


if __name__ == "__main__":
    main()
