"""Benchmark of streaming prediction (numbec.predict): throughput, memory, schedulers.

Prints markdown tables:

1. throughput in atom-frames/s of full BEC prediction (bec + dipole derivative) for the
   available models on a 192-atom water box and the 72-atom alpha-quartz cell
   (../shared/data/sio2_quartz_qe/SiO2.xyz), with 1 and 2 cores, next to featomic's SOAP
   power spectrum values + position gradients on the same frames;
2. peak resident memory of ``predict(..., out=store)`` for a short and a 10x longer
   trajectory (should not grow with the length);
3. wall time of the same run serially and on a dask.distributed LocalCluster (2 workers).

Every measurement runs in its own subprocess (so that NUMBA_NUM_THREADS / RAYON_NUM_THREADS
take effect and peak RSS is per measurement).

    python benchmarks/stream.py            # full: 2,000 vs 20,000 frames
    python benchmarks/stream.py --quick    # reduced sizes, ~2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
QUARTZ = Path(os.environ.get("NUMBEC_SHARED_DATA", REPO.parent / "shared" / "data")) / (
    "sio2_quartz_qe/SiO2.xyz"
)
WATER_BOX = 12.42  # Å: 64 molecules at 0.997 g/cm^3
MODELS = ("SpeciesMeanModel", "MonopoleModel", "CombinedModel")


# ------------------------------------------------------------------------- systems
def water_frame(rng):
    """One 192-atom water box (positions (192, 3) Å, numbers, cell (3, 3))."""
    angle = np.deg2rad(104.5)
    local = np.array([[0, 0, 0], [0.9572, 0, 0],
                      [0.9572 * np.cos(angle), 0.9572 * np.sin(angle), 0]])
    grid = (np.stack(np.meshgrid(*(np.arange(4),) * 3, indexing="ij"), -1).reshape(-1, 3)
            + 0.5) * WATER_BOX / 4
    positions = []
    for centre in grid:
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        positions.append(centre + local @ q.T)
    numbers = np.tile([8, 1, 1], 64)
    return np.concatenate(positions), numbers, WATER_BOX * np.eye(3)


def system_frames(system, n_frames, seed=0):
    """(positions (F, N, 3), velocities (F, N, 3), numbers (N,), cells (F, 3, 3))."""
    rng = np.random.default_rng(seed)
    if system == "water":
        base, numbers, cell = water_frame(rng)
        positions = base + rng.normal(0, 0.05, (n_frames,) + base.shape)
        cells = np.tile(cell, (n_frames, 1, 1))
    else:
        import ase.io

        frames = ase.io.read(QUARTZ, index=":")
        take = [frames[k % len(frames)] for k in range(n_frames)]
        positions = np.stack([a.positions for a in take])
        cells = np.stack([np.asarray(a.cell) for a in take])
        numbers = take[0].numbers
    velocities = rng.normal(0, 0.01, positions.shape)
    return positions, velocities, np.asarray(numbers, dtype=np.int64), cells


def as_dataset(positions, velocities, numbers, cells, timestep=0.5, chunks=None):
    import xarray as xr

    n = positions.shape[0]
    ds = xr.Dataset(
        {
            "positions": (("frame", "atom", "xyz"), positions),
            "velocities": (("frame", "atom", "xyz"), velocities),
            "cell": (("frame", "cell_vector", "xyz"), cells),
            "numbers": (("atom",), numbers),
            "pbc": (("xyz",), np.ones(3, bool)),
        },
        coords={"time": ("frame", np.arange(n) * timestep)},
        attrs={"timestep": timestep, "source": "benchmark"},
    )
    return ds.chunk({"frame": chunks}) if chunks else ds


def lazy_water(n_frames, chunk):
    """A dask-backed synthetic water trajectory generated chunk by chunk (no big arrays)."""
    import dask.array as da
    import xarray as xr

    base, numbers, cell = water_frame(np.random.default_rng(0))
    shape = (n_frames,) + base.shape
    chunks = (chunk, base.shape[0], 3)

    def block(kind, block_info=None):
        (start, stop), _, _ = block_info[None]["array-location"]
        rng = np.random.default_rng([start, kind])
        noise = rng.normal(0, 0.05 if kind == 0 else 0.01, (stop - start,) + base.shape)
        return base + noise if kind == 0 else noise

    positions = da.map_blocks(block, 0, chunks=da.core.normalize_chunks(chunks, shape),
                              dtype=np.float64)
    velocities = da.map_blocks(block, 1, chunks=da.core.normalize_chunks(chunks, shape),
                               dtype=np.float64)
    cells = da.broadcast_to(cell, (n_frames, 3, 3), chunks=(chunk, 3, 3))
    return xr.Dataset(
        {
            "positions": (("frame", "atom", "xyz"), positions),
            "velocities": (("frame", "atom", "xyz"), velocities),
            "cell": (("frame", "cell_vector", "xyz"), cells),
            "numbers": (("atom",), numbers),
            "pbc": (("xyz",), np.ones(3, bool)),
        },
        coords={"time": ("frame", np.arange(n_frames) * 0.5)},
        attrs={"timestep": 0.5, "source": "benchmark-lazy-water"},
    )


# ------------------------------------------------------------------------- models
def build_model(name, system):
    """A model of class ``name`` for ``system``; raises ImportError if not available."""
    from numbec.models import SpeciesMeanModel

    if system == "water":
        species, mean = [1, 8], np.stack([0.4 * np.eye(3), -0.8 * np.eye(3)])
    else:
        import ase.io

        frames = ase.io.read(QUARTZ, index=":20")
        z = np.concatenate([a.numbers for a in frames])
        bec = np.concatenate([a.arrays["born_charge"].reshape(-1, 3, 3) for a in frames])
        species = [8, 14]
        mean = np.stack([bec[z == s].mean(axis=0) for s in species])
    if name == "SpeciesMeanModel":
        return SpeciesMeanModel(species, mean)
    import numbec.models as models

    if not hasattr(models, name):
        raise ImportError(f"numbec.models.{name} not available")
    return _fit_learned(getattr(models, name), system)


def _fit_learned(cls, system):  # pragma: no cover - depends on the models helper's API
    """Fit a learned model on a few frames (labels: DFT BECs for quartz, rigid ions for
    water); throughput does not depend on the label values."""
    import ase.io

    if system == "water":
        positions, _, numbers, cells = system_frames("water", 4, seed=1)
        frames = []
        import ase

        for p, c in zip(positions, cells, strict=True):
            atoms = ase.Atoms(numbers=numbers, positions=p, cell=c, pbc=True)
            q = np.where(numbers == 8, -0.8, 0.4)
            atoms.arrays["bec"] = q[:, None, None] * np.eye(3)
            frames.append(atoms)
    else:
        frames = ase.io.read(QUARTZ, index=":8")
        for a in frames:
            a.arrays["bec"] = a.arrays["born_charge"].reshape(-1, 3, 3)
    return cls.fit(frames) if hasattr(cls, "fit") else cls().fit(frames)


# ------------------------------------------------------------------------- measurements
def measure_throughput(system, model_name, n_frames):
    from numbec.stream import predict

    model = build_model(model_name, system)
    data = system_frames(system, n_frames)
    ds = as_dataset(*data)
    predict(model, ds.isel(frame=slice(0, 2)), progress=False)  # Numba compilation
    t0 = time.perf_counter()
    predict(model, ds, progress=False, chunk_frames=min(n_frames, 256))
    wall = time.perf_counter() - t0
    return {"atom_frames_per_s": n_frames * data[2].size / wall, "wall_s": wall}


def featomic_calculator():
    from featomic import SoapPowerSpectrum

    return SoapPowerSpectrum(
        cutoff={"radius": 5.0, "smoothing": {"type": "ShiftedCosine", "width": 0.5}},
        density={"type": "Gaussian", "width": 0.3},
        basis={"type": "TensorProduct", "max_angular": 4,
               "radial": {"type": "Gto", "max_radial": 5}},
    )


def measure_featomic(system, n_frames):
    import ase

    calc = featomic_calculator()
    positions, _, numbers, cells = system_frames(system, n_frames)
    frames = [ase.Atoms(numbers=numbers, positions=p, cell=c, pbc=True)
              for p, c in zip(positions, cells, strict=True)]
    calc.compute(frames[:1], gradients=["positions"])
    t0 = time.perf_counter()
    for k in range(0, n_frames, 4):
        calc.compute(frames[k:k + 4], gradients=["positions"])
    wall = time.perf_counter() - t0
    return {"atom_frames_per_s": n_frames * numbers.size / wall, "wall_s": wall}


def measure_memory(n_frames, chunk, out):
    import resource

    from numbec.models import SpeciesMeanModel
    from numbec.stream import predict

    model = SpeciesMeanModel([1, 8], np.stack([0.4 * np.eye(3), -0.8 * np.eye(3)]))
    ds = lazy_water(n_frames, chunk)
    import dask

    t0 = time.perf_counter()
    with dask.config.set(scheduler="synchronous"):
        predict(model, ds, out=out, progress=False, dtype=np.float32)
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_mib": peak_kib / 1024, "wall_s": wall}


def measure_cluster(n_frames, chunk, out, workers):
    from numbec.models import SpeciesMeanModel
    from numbec.stream import predict

    model = SpeciesMeanModel([1, 8], np.stack([0.4 * np.eye(3), -0.8 * np.eye(3)]))
    ds = lazy_water(n_frames, chunk)
    if workers == 0:
        import dask

        t0 = time.perf_counter()
        with dask.config.set(scheduler="synchronous"):
            predict(model, ds, out=out, progress=False, dtype=np.float32)
        return {"wall_s": time.perf_counter() - t0, "startup_s": 0.0}
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    env = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, env=env) as cluster, Client(cluster):
        t1 = time.perf_counter()
        predict(model, ds, out=out, progress=False, dtype=np.float32)
        t2 = time.perf_counter()
    return {"wall_s": t2 - t1, "startup_s": t1 - t0}


# ------------------------------------------------------------------------- driver
def child(kind, cores=1, **kwargs):
    """Run one measurement in a fresh interpreter with ``cores`` threads; parse its JSON."""
    env = dict(os.environ)
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        env[var] = str(cores)
    cmd = [sys.executable, __file__, "--child", kind, "--kwargs", json.dumps(kwargs)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail}
    return json.loads(lines[-1])


def fmt(value, spec="{:,.0f}"):
    return "n/a" if value is None else spec.format(value)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes")
    parser.add_argument("--child")
    parser.add_argument("--kwargs", default="{}")
    args = parser.parse_args()
    if args.child:
        kwargs = json.loads(args.kwargs)
        result = {"throughput": measure_throughput, "featomic": measure_featomic,
                  "memory": measure_memory, "cluster": measure_cluster}[args.child](**kwargs)
        print(json.dumps(result))
        return

    quick = args.quick
    n_predict = 100 if quick else 1000
    n_featomic = 8 if quick else 40
    memory_frames = (1000, 10000) if quick else (2000, 20000)
    cluster_frames = 2000 if quick else 20000
    chunk = 250 if quick else 500

    import platform

    print(f"numbec streaming benchmark ({'quick' if quick else 'full'}); "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores\n")
    print("### Throughput (atom-frames/s; BEC + dipole derivative, in-memory input)\n")
    print(f"{n_predict} frames per model, featomic SOAP power spectrum (r_c = 5 Å, "
          f"n_max = 6, l_max = 4) values + position gradients on {n_featomic} frames.\n")
    print("| system | model | 1 core | 2 cores |")
    print("|---|---|---:|---:|")
    for system in ("water", "quartz"):
        label = "water 192 atoms" if system == "water" else "alpha-quartz 72 atoms"
        rows = [(name, "throughput", {"system": system, "model_name": name,
                                      "n_frames": n_predict}) for name in MODELS]
        rows.append(("featomic values+gradients", "featomic",
                     {"system": system, "n_frames": n_featomic}))
        for name, kind, kwargs in rows:
            cells = []
            for cores in (1, 2):
                res = child(kind, cores, **kwargs)
                cells.append(fmt(res.get("atom_frames_per_s")))
                if "error" in res and cores == 1:
                    print(f"<!-- {name} {system}: {res['error']} -->", file=sys.stderr)
            print(f"| {label} | {name} | {cells[0]} | {cells[1]} |")

    print(f"\n### Peak memory of predict(out=store), synthetic lazy water (192 atoms), "
          f"chunks of {chunk} frames, float32 output\n")
    print("| frames | peak RSS (MiB) | wall (s) |")
    print("|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in memory_frames:
            res = child("memory", 1, n_frames=n, chunk=chunk, out=f"{tmp}/mem{n}.zarr")
            print(f"| {n:,} | {fmt(res.get('peak_rss_mib'), '{:.0f}')} | "
                  f"{fmt(res.get('wall_s'), '{:.1f}')} |")

        print(f"\n### Serial vs dask.distributed LocalCluster, {cluster_frames:,} frames of "
              f"water, predict(out=store)\n")
        print("| scheduler | wall (s) | cluster start-up (s) |")
        print("|---|---:|---:|")
        for workers, label in ((0, "serial (synchronous)"),
                               (2, "LocalCluster, 2 processes x 1 thread")):
            res = child("cluster", 1 if workers else 1, n_frames=cluster_frames, chunk=chunk,
                        out=f"{tmp}/cl{workers}.zarr", workers=workers)
            print(f"| {label} | {fmt(res.get('wall_s'), '{:.1f}')} | "
                  f"{fmt(res.get('startup_s'), '{:.1f}')} |")


if __name__ == "__main__":
    main()
