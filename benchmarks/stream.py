"""Benchmark of streaming prediction (numbec.predict): throughput, memory, schedulers.

Usage::

    python benchmarks/stream.py            # the table in docs/streaming.md
    python benchmarks/stream.py --quick    # smoke run: few frames, small models
    python benchmarks/stream.py --model-dir DIR  # fit once, reuse next time
    python benchmarks/stream.py --only paths     # eager / out= / lazy / cluster / CLI
    python benchmarks/stream.py --only throughput  # the throughput, ceiling, stage tables
    python benchmarks/stream.py --only uncertainty # cost of the streamed uncertainty

Prints markdown tables:

1. Throughput in atom-frames/s of full BEC prediction (``predict`` on an in-memory
   trajectory: bec, the dipole derivative sum_a Z_a v_a and the integrated dipole) on the
   192-atom water box of ``benchmarks/descriptors.py`` and the 72-atom alpha-quartz cell
   (``../shared/data/sio2_quartz_qe/SiO2.xyz``), with 1 and 2 cores, next to featomic's
   SoapPowerSpectrum values + position gradients on the same frames, measured in the same
   run; the ratio columns divide the two at the same core count. featomic and the numbec
   models are measured in alternating rounds (``--rounds``), so that the machine's drifting
   load reaches both sides of a ratio alike; the best round of each is kept and the range of
   the per-round ratios is printed next to the ratio. The combined model runs twice: in
   float64 (the default) and with ``precision="mixed"`` (its dipole kernel's matrix products
   in float32). Below it, the ceiling that the dense matrix products alone set, and the
   time of each stage of a frame. Then the cost of the streamed uncertainty on the same
   systems (``--only uncertainty``): ``predict`` with ``atom_std``, ``posterior_samples``
   (total only and per species) and the low-rank ``bec_std`` at K = 16 and 32, each against
   the plain prediction timed in turns with it in one process (CPU time, one thread).
2. Peak resident memory (``ru_maxrss``) of ``predict(..., out=store)`` on a dask-backed
   trajectory of 2,000 and 20,000 frames (should not grow with the length).
3. Wall time of one ``predict(..., out=store)`` of a learned model serially and on a
   ``dask.distributed.LocalCluster`` of 2 worker processes (start-up of the cluster and a
   warm-up prediction on every worker, which loads the Numba kernels, timed apart).
4. One prediction of a water trajectory store, five ways side by side (``--only paths`` runs
   this table alone): eager (the store loaded into memory), ``out=``, lazy then
   ``.compute()`` on the threaded scheduler and on a 2-process ``LocalCluster``, and the
   ``numbec predict`` CLI (a subprocess, start-up included). Target: each within 1.2x of the
   fastest.

Models: ``SpeciesMeanModel`` (no descriptors; measures the streaming machinery alone) and,
when numbec provides them, ``MonopoleModel`` and ``CombinedModel``, fitted here on a few
frames with the default hyperparameters (``DescriptorSettings()`` defaults: n_radial =
n_angular = 8, l_max = 4, cutoff_radial 6 Å, cutoff_angular 5 Å, sigma 0.5 Å; n_sparse =
200 per species, zeta = 4). Speed does not depend on the fitted weights, only on these
sizes. Labels: DFT BECs for quartz; for water (no DFT data here) rigid-ion charges
O -0.8 e, H 0.4 e plus 0.05 e Gaussian noise. The models are saved and every measurement
loads them from file (``numbec.load_model``) once before it is timed, as ``numbec predict``
does once per run.

featomic: ``SoapPowerSpectrum`` with cutoff 5 Å (ShiftedCosine width 0.5), Gaussian
density width 0.5 Å, TensorProduct basis max_angular 4, Gto max_radial 7 (8 radial
functions): the sizes of numbec's angular descriptor.

Every measurement runs in its own subprocess (so that NUMBA_NUM_THREADS /
RAYON_NUM_THREADS / OMP_NUM_THREADS take effect and ru_maxrss is per measurement); each
throughput is the best of ``--repeat`` timings inside that process, after a warm-up
(Numba compilation, loaded from the on-disk cache after the first run).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from descriptors import cpu_model, timed, water_box  # noqa: E402  (the same 192-atom box)

SHARED = Path(os.environ.get("NUMBEC_SHARED_DATA", REPO.parent / "shared" / "data"))
QUARTZ = SHARED / "sio2_quartz_qe" / "SiO2.xyz"
MODELS = ("SpeciesMeanModel", "MonopoleModel", "CombinedModel")
#: Rows of the throughput table: (label, model, precision of predict). The combined model runs
#: a second time with precision="mixed" (its dipole kernel's products in float32).
ROWS = tuple((name, name, "float64") for name in MODELS) + (
    ("CombinedModel, mixed precision", "CombinedModel", "mixed"),)
#: Copies of the 192-atom water box along x (``--water-atoms``); read by the measurement
#: processes from the environment so that every child uses the same box.
WATER_COPIES = int(os.environ.get("NUMBEC_BENCH_WATER_COPIES", "1"))
SYSTEMS = {"water": f"water, {192 * WATER_COPIES} atoms", "quartz": "alpha-quartz, 72 atoms"}
N_SPARSE, ZETA = 200, 4
THREAD_VARS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "MKL_NUM_THREADS", "RAYON_NUM_THREADS")


# ------------------------------------------------------------------------- systems
def system_frames(system, n_frames, seed=0, copies=None):
    """Frames of ``system``: positions (F, N, 3) Å, velocities (F, N, 3) Å/fs,
    numbers (N,) int64, cells (F, 3, 3) Å.

    water: the water box (``copies`` times along x, default :data:`WATER_COPIES`) with 0.05 Å
    Gaussian displacements per frame; quartz: the DFT
    snapshots of SiO2.xyz in order (repeated if ``n_frames`` > 201). Velocities are
    Gaussian, 0.01 Å/fs (their values do not change the cost)."""
    rng = np.random.default_rng(seed)
    if system == "water":
        base, numbers, cell = water_box()
        # --water-atoms: the box repeated along x (same density, same local structure)
        copies = WATER_COPIES if copies is None else copies
        base = np.concatenate([base + k * cell[0] for k in range(copies)])
        numbers = np.tile(numbers, copies)
        cell = cell * np.array([[copies], [1], [1]])
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


def as_dataset(positions, velocities, numbers, cells, timestep=0.5):
    """An in-memory dataset in the Trajectory store layout."""
    import xarray as xr

    return xr.Dataset(
        {
            "positions": (("frame", "atom", "xyz"), positions),
            "velocities": (("frame", "atom", "xyz"), velocities),
            "cell": (("frame", "cell_vector", "xyz"), cells),
            "numbers": (("atom",), numbers),
            "pbc": (("xyz",), np.ones(3, bool)),
        },
        coords={"time": ("frame", np.arange(positions.shape[0]) * timestep)},
        attrs={"timestep": timestep, "source": "benchmark"},
    )


def lazy_water(n_frames, chunk):
    """A dask-backed water trajectory generated chunk by chunk (no array of the whole
    trajectory ever exists): the water box plus 0.05 Å noise, velocities 0.01 Å/fs."""
    import dask.array as da
    import xarray as xr

    base, numbers, cell = water_box()
    shape = (n_frames,) + base.shape
    chunks = da.core.normalize_chunks((chunk, base.shape[0], 3), shape)

    def block(kind, block_info=None):
        (start, stop), _, _ = block_info[None]["array-location"]
        noise = np.random.default_rng([start, kind]).normal(
            0, 0.05 if kind == 0 else 0.01, (stop - start,) + base.shape)
        return base + noise if kind == 0 else noise

    return xr.Dataset(
        {
            "positions": (("frame", "atom", "xyz"),
                          da.map_blocks(block, 0, chunks=chunks, dtype=np.float64)),
            "velocities": (("frame", "atom", "xyz"),
                           da.map_blocks(block, 1, chunks=chunks, dtype=np.float64)),
            "cell": (("frame", "cell_vector", "xyz"),
                     da.broadcast_to(cell, (n_frames, 3, 3), chunks=(chunk, 3, 3))),
            "numbers": (("atom",), numbers),
            "pbc": (("xyz",), np.ones(3, bool)),
        },
        coords={"time": ("frame", np.arange(n_frames) * 0.5)},
        attrs={"timestep": 0.5, "source": f"benchmark-lazy-water-{n_frames}"},
    )


# ------------------------------------------------------------------------- models
def training_frames(system):
    """A few labelled frames (list of ase.Atoms with arrays["bec"]) for fitting."""
    import ase

    if system == "quartz":
        from numbec.io import read_bec

        return read_bec(str(QUARTZ), index="::20")  # 11 frames: 264 Si, 528 O
    positions, _, numbers, cells = system_frames("water", 4, seed=1, copies=1)
    rng = np.random.default_rng(2)
    frames = []
    for p, c in zip(positions, cells, strict=True):
        atoms = ase.Atoms(numbers=numbers, positions=p, cell=c, pbc=True)
        q = np.where(numbers == 8, -0.8, 0.4)
        atoms.arrays["bec"] = q[:, None, None] * np.eye(3) + rng.normal(0, 0.05, (len(q), 3, 3))
        frames.append(atoms)
    return frames


def fit_models(directory, reuse=False, quick=False):
    """Fit every available model for both systems; save to ``directory``.

    With ``reuse``, a model file already in ``directory`` is used as it is. ``quick`` (the
    smoke run): 20 sparse points per species and 3 training frames, saved under other names
    (the timings are then not those of the default model). Returns
    {"<system>/<model>": {"file": path, "fit_s": seconds or None} or {"error": message}}.
    """
    import numbec.models as models
    from numbec.descriptors import DescriptorSettings

    results = {}
    for system in SYSTEMS:
        frames = training_frames(system)[:3] if quick else training_frames(system)
        species = sorted({int(z) for a in frames for z in a.numbers})
        for name in MODELS:
            key = f"{system}/{name}"
            path = Path(directory) / f"{system}-{name}{'-quick' if quick else ''}.npz"
            if reuse and path.exists():
                results[key] = {"file": str(path), "fit_s": None}
                continue
            cls = getattr(models, name, None)
            if cls is None:
                results[key] = {"error": f"numbec.models.{name} not available"}
                continue
            t0 = time.perf_counter()
            try:
                if name == "SpeciesMeanModel":
                    model = cls.fit(frames)
                else:
                    model = cls(settings=DescriptorSettings(species=species),
                                zeta=ZETA, n_sparse=20 if quick else N_SPARSE).fit(frames)
            except Exception as exc:  # noqa: BLE001 - reported in the table
                results[key] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            model.save(path)
            results[key] = {"file": str(path), "fit_s": time.perf_counter() - t0}
    return results


# ------------------------------------------------------------------------- measurements
def measure_throughput(system, model_file, n_frames, repeat, precision="float64"):
    """Rate of ``predict`` on ``n_frames`` in-memory frames. The model is loaded from its
    file once, before the timing, as ``numbec predict`` does once per run: loading it (about
    30 ms, 1 ms per frame of these short runs) is a start-up cost that a real trajectory of
    10^5 frames amortises; the rest of ``predict``'s per-call work (the model hash for the
    provenance, chunk set-up) is timed."""
    from numbec.models import load_model
    from numbec.stream import predict

    model = load_model(model_file)
    data = system_frames(system, n_frames)
    ds = as_dataset(*data)
    predict(model, ds.isel(frame=slice(0, 2)), progress=False,
            precision=precision)  # warm-up, compilation
    wall = timed(lambda: predict(model, ds, progress=False, chunk_frames=n_frames,
                                 precision=precision, model_file=model_file), repeat)
    return {"atom_frames_per_s": n_frames * data[2].size / wall, "wall_s": wall}


#: Columns of the streamed-uncertainty table: (label, keywords of ``predict``), each timed
#: against the plain prediction of the same process.
UNCERTAINTY_VARIANTS = (
    ("plain", {}),
    ("atom_std", {"atom_std": True}),
    ("S = 16 total only", {"posterior_samples": 16, "species_samples": False}),
    ("S = 16 per species", {"posterior_samples": 16}),
    ("bec_std K = 16", {"uncertainty": True, "uncertainty_rank": 16}),
    ("bec_std K = 32", {"uncertainty": True, "uncertainty_rank": 32}),
)


def measure_uncertainty(system, model_file, n_frames, repeat):
    """CPU ms per frame of ``predict`` with each of :data:`UNCERTAINTY_VARIANTS` (one thread:
    run with 1 core), best of ``repeat`` rounds in which the variants take turns, so that a
    drifting load reaches all of them alike. CPU time of the process, not wall time: the
    cost of a frame on one core, steadier on a shared machine.

    The cost of a frame in a long stream, without what ``predict`` does once per call (the
    model's hash, drawing the posterior samples, setting up the chunk): the difference
    between a call on ``2 n_frames`` frames and one on the first ``n_frames``, divided by
    ``n_frames``. The frames of the shorter trajectory on which ``uncertainty_rank`` orders
    its directions (``numbec.stream.direction_frame_indices``) are those of the longer one,
    so that both calls use the posterior factor that ``predict`` computes once per model and
    trajectory (4 exact design passes) and keeps on the model (one model object per variant);
    each variant runs once on both before the timing (Numba kernels, that factor)."""
    from numbec.models import load_model
    from numbec.stream import direction_frame_indices, predict

    # one model object per variant: predict keeps the posterior factor of a rank on the
    # model, and K = 16 and 32 taking turns on one object would compute it in every call
    models = {label: load_model(model_file) for label, _ in UNCERTAINTY_VARIANTS}
    positions, velocities, numbers, cells = system_frames(system, 2 * n_frames)
    first = [array[:n_frames].copy() for array in (positions, velocities, cells)]
    short, long = direction_frame_indices(n_frames), direction_frame_indices(2 * n_frames)
    for part, array in zip(first, (positions, velocities, cells), strict=True):
        part[short] = array[long]
    data = {n_frames: as_dataset(first[0], first[1], numbers, first[2]),
            2 * n_frames: as_dataset(positions, velocities, numbers, cells)}

    def run(n, label, kwargs):
        predict(models[label], data[n], progress=False, chunk_frames=n,
                model_file=model_file, threads=1, **kwargs)

    for label, kwargs in UNCERTAINTY_VARIANTS:  # warm-up
        run(n_frames, label, kwargs)
        run(2 * n_frames, label, kwargs)
    best_s = {(label, n): np.inf for label, _ in UNCERTAINTY_VARIANTS for n in data}
    for _ in range(repeat):
        for label, kwargs in UNCERTAINTY_VARIANTS:
            for n in data:
                start = time.process_time()
                run(n, label, kwargs)
                best_s[label, n] = min(best_s[label, n], time.process_time() - start)
    return {"ms_per_frame": {
        label: 1e3 * (best_s[label, 2 * n_frames] - best_s[label, n_frames]) / n_frames
        for label, _ in UNCERTAINTY_VARIANTS}}


def dense_products_seconds(model, numbers, repeat, precision="float64", copies=1):
    """Seconds of one round of the dense kernel products of a structure of atoms ``numbers``
    repeated ``copies`` times (a batch of small frames), with random matrices of the model's
    shapes, one BLAS thread, best of ``max(repeat, 5)``.

    Per species block of r atoms and m sparse points (D scalar, Dv vector features):
    x_i . x_b (r x D x m), the kernel gradient (r x m x D); for the dipole model also
    u_i = sum_b K wb_b (r x m x Dv), V_i . wb_b (3r x Dv x m) and its kernel gradient
    (3r x m x D); with ``precision="mixed"`` these last three in float32.
    """
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    d = model.sparse_unit.shape[1]
    products = []
    for z in np.unique(numbers):
        r = int(np.sum(numbers == z)) * int(copies)
        m = int(np.sum(model.sparse_species == z))
        shapes = [(r, d, m), (r, m, d)]
        dipole = []
        if getattr(model, "sparse_vectors", None) is not None:
            dv = model.sparse_vectors.shape[-1]
            dipole = [(r, m, dv), (3 * r, dv, m), (3 * r, m, d)]
        single = np.float32 if precision == "mixed" else np.float64
        products += [(rng.random((a, b)), rng.random((b, c))) for a, b, c in shapes]
        products += [(rng.random((a, b)).astype(single), rng.random((b, c)).astype(single))
                     for a, b, c in dipole]

    def all_products():
        for a, b in products:
            a @ b

    with threadpool_limits(1, "blas"):
        all_products()
        return timed(all_products, max(repeat, 5))


def measure_dense_bound(system, model_file, repeat, precision="float64"):
    """Upper bound on the throughput of ``model_file`` set by its dense kernel products alone
    (:func:`dense_products_seconds` of one frame): atom-frames/s if a frame cost nothing
    else."""
    from numbec.models import load_model

    numbers = system_frames(system, 1)[2]
    wall = dense_products_seconds(load_model(model_file), numbers, repeat, precision)
    return {"atom_frames_per_s": numbers.size / wall, "ms_per_frame": wall * 1e3}


def featomic_calculator():
    from featomic import SoapPowerSpectrum

    return SoapPowerSpectrum(
        cutoff={"radius": 5.0, "smoothing": {"type": "ShiftedCosine", "width": 0.5}},
        density={"type": "Gaussian", "width": 0.5},
        basis={"type": "TensorProduct", "max_angular": 4,
               "radial": {"type": "Gto", "max_radial": 7}},
    )


def measure_featomic(system, n_frames, repeat):
    import ase

    calc = featomic_calculator()
    positions, _, numbers, cells = system_frames(system, n_frames)
    frames = [ase.Atoms(numbers=numbers, positions=p, cell=c, pbc=True)
              for p, c in zip(positions, cells, strict=True)]
    calc.compute(frames[:1], gradients=["positions"])  # warm-up
    wall = timed(lambda: calc.compute(frames, gradients=["positions"]), repeat)
    return {"atom_frames_per_s": n_frames * numbers.size / wall, "wall_s": wall}


def measure_memory(n_frames, chunk, out):
    """Peak RSS of one predict(out=store) of the streaming machinery (SpeciesMeanModel)."""
    import resource

    import dask

    from numbec.models import SpeciesMeanModel
    from numbec.stream import predict

    model = SpeciesMeanModel([1, 8], np.stack([0.4 * np.eye(3), -0.8 * np.eye(3)]))
    ds = lazy_water(n_frames, chunk)
    t0 = time.perf_counter()
    with dask.config.set(scheduler="synchronous"):
        predict(model, ds, out=out, progress=False, dtype=np.float32)
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_mib": peak_kib / 1024, "wall_s": wall}


def measure_cluster(model_file, n_frames, chunk, out, workers):
    """Wall time of predict(out=store) on a lazy water trajectory: ``workers`` = 0 runs
    serially (Dask synchronous scheduler), else on a LocalCluster of that many processes."""
    from numbec.stream import predict

    ds = lazy_water(n_frames, chunk)
    two_frames = as_dataset(*system_frames("water", 2))
    if workers == 0:
        import dask

        t0 = time.perf_counter()
        warm_up(model_file, two_frames)
        t1 = time.perf_counter()
        with dask.config.set(scheduler="synchronous"):
            predict(model_file, ds, out=out, progress=False)
        return {"wall_s": time.perf_counter() - t1, "startup_s": t1 - t0}
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    env = {var: "1" for var in THREAD_VARS}
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, env=env) as cluster, Client(cluster) as client:
        # every worker: imports, Numba kernels from the cache
        client.run(warm_up, model_file, two_frames)
        t1 = time.perf_counter()
        predict(model_file, ds, out=out, progress=False)
        t2 = time.perf_counter()
    return {"wall_s": t2 - t1, "startup_s": t1 - t0}


def measure_stages(system, model_file, repeat):
    """Milliseconds per frame of the stages of one kernel-model prediction (one thread).

    Times, on the first frame of ``system`` with its atoms species by species (as the model
    orders them), the steps of ``predict_arrays`` one by one (best of ``max(repeat, 20)``
    each): the neighbour list, the species grouping of the pairs and the expansion
    coefficients, the descriptor values, the kernel part (the products with the sparse set and
    the element-wise algebra between them), the coefficient adjoints of the descriptors, their
    back-propagation through the pairs, the scatter of the pair gradients onto atoms, and the
    whole call (whose remainder is the sum rule, the per-frame steps and Python glue). Times
    are CPU time of this process (one thread), not wall time: on a shared machine other
    processes' time slices would otherwise land in whichever stage they interrupt. Uses
    numbec internals: it is a profile, not an API.
    """
    from threadpoolctl import threadpool_limits

    from numbec.descriptors.expansion import expand
    from numbec.descriptors.neighbors import neighbor_list
    from numbec.descriptors.scalar import descriptors_from_expansion
    from numbec.descriptors.vector import vector_descriptors_from_expansion
    from numbec.models import kernels, load_model

    model = load_model(model_file)
    positions, _, numbers, cells = system_frames(system, 1)
    order = np.argsort(numbers, kind="stable")
    positions, numbers = positions[:, order], numbers[order]
    args = (positions[0], numbers, cells[0], np.ones(3, bool))
    dipole = getattr(model, "sparse_vectors", None) is not None
    n_ch = int(model._monopole) + (3 if dipole else 0)
    settings = model.settings
    n = max(repeat, 20)
    out = {}

    def timed(func, repeat):  # noqa: F811 - CPU time, best of repeat
        best = np.inf
        for _ in range(repeat):
            start = time.process_time()
            func()
            best = min(best, time.process_time() - start)
        return best

    with threadpool_limits(1, "blas"):
        out["total"] = timed(lambda: model.predict_arrays(*args), n)
        geometry = (args[0], args[2], args[3], settings.cutoff)
        out["neighbours"] = timed(lambda: neighbor_list(*geometry), n)
        pairs = neighbor_list(*geometry)
        out["expansion"] = timed(lambda: expand(*args, settings, int(dipole), pairs=pairs), n)
        ex = expand(*args, settings, int(dipole), pairs=pairs)

        def values():
            return (descriptors_from_expansion(ex),
                    vector_descriptors_from_expansion(ex) if dipole else None)

        out["descriptors"] = timed(values, n)
        desc, vdesc = values()
        unit, norms = kernels.normalize(desc.values, "benchmark")

        def kernel_part():
            blocks = model._species_kernels(numbers, unit)
            return model._kernel_terms(blocks, unit, norms, vdesc, n_ch)

        out["kernel"] = timed(kernel_part, n)
        _, scalar_grad, u = kernel_part()

        def adjoints():
            a2, a3 = ex.adjoint_arrays(n_ch)
            if dipole:
                vdesc.add_adjoint(u[:, None, :], a2, a3, n_ch - 3)
            desc.add_adjoint(scalar_grad, a2, a3, 0)
            return a2, a3

        out["adjoints"] = timed(adjoints, n)
        a2, a3 = adjoints()
        out["backprop"] = timed(lambda: ex.backprop(a2, a3), n)
        pair_grad = ex.backprop(a2, a3)

        def scatter():
            if model._monopole:
                ex.scatter_monopole(pair_grad[:, :1])
            if dipole:
                ex.scatter_with_self(pair_grad[:, n_ch - 3:])

        out["scatter"] = timed(scatter, n)
    out = {key: 1e3 * value for key, value in out.items()}
    out["rest"] = out["total"] - sum(v for k, v in out.items() if k != "total")
    return out


def warm_up(model_file, frames):
    """Import numbec and load its Numba kernels (from the on-disk cache) by predicting
    ``frames`` (a small in-memory trajectory). Self-contained: runs on Dask workers."""
    from numbec.stream import predict

    predict(model_file, frames, progress=False)


def make_store(path, n_frames, chunk):
    """A water trajectory store of ``n_frames`` frames (chunks of ``chunk``) at ``path``."""
    import ase
    import ase.io

    from numbec.io.trajectory import convert_trajectory

    positions, velocities, numbers, cells = system_frames("water", n_frames)
    frames = []
    for p, v, c in zip(positions, velocities, cells, strict=True):
        atoms = ase.Atoms(numbers=numbers, positions=p, cell=c, pbc=True)
        atoms.set_velocities(v / ase.units.fs)  # Å/fs -> ASE units
        frames.append(atoms)
    xyz = Path(path).with_suffix(".xyz")
    ase.io.write(xyz, frames)
    convert_trajectory(xyz, path, chunk_frames=chunk, timestep=0.5, progress=False)
    return {"path": str(path)}


#: The ways of running one prediction that the paths table compares.
PATHS = ("eager", "out", "lazy-threads", "lazy-cluster", "cli")


def measure_path(path_kind, model_file, store, out):
    """Wall time of one prediction of the trajectory store ``store`` by path ``kind``:
    eager (the store loaded into memory first), out= (into a new store), lazy then
    .compute() on Dask's threaded scheduler or on a 2-process LocalCluster, or the CLI
    (``numbec predict``, a subprocess; its time includes start-up and loading). Kernels are
    loaded by a warm-up prediction before the clock starts (on every worker for the
    cluster; the CLI pays for its own)."""
    import dask

    from numbec.io.trajectory import open_trajectory
    from numbec.stream import predict

    kind = path_kind
    two_frames = as_dataset(*system_frames("water", 2))
    if kind == "cli":
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "numbec.cli", "predict", model_file, store,
                        "-o", out, "--no-progress"], check=True, capture_output=True)
        return {"wall_s": time.perf_counter() - t0}
    if kind == "lazy-cluster":
        from distributed import Client, LocalCluster

        env = {var: "1" for var in THREAD_VARS}
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None, env=env) as cluster, \
                Client(cluster) as client:
            client.run(warm_up, model_file, two_frames)
            t0 = time.perf_counter()
            predict(model_file, store, progress=False).compute()
            return {"wall_s": time.perf_counter() - t0}
    warm_up(model_file, two_frames)
    t0 = time.perf_counter()
    if kind == "eager":
        predict(model_file, open_trajectory(store).load(), progress=False)
    elif kind == "out":
        predict(model_file, store, out=out, progress=False)
    else:
        with dask.config.set(scheduler="threads"):
            predict(model_file, store, progress=False).compute()
    return {"wall_s": time.perf_counter() - t0}


CHILDREN = {"fit": fit_models, "throughput": measure_throughput, "bound": measure_dense_bound,
            "stages": measure_stages, "uncertainty": measure_uncertainty,
            "featomic": measure_featomic, "memory": measure_memory,
            "cluster": measure_cluster, "store": make_store, "path": measure_path}


# ------------------------------------------------------------------------- driver
def child(kind, cores=1, **kwargs):
    """Run one measurement in a fresh interpreter with ``cores`` threads; parse its JSON."""
    env = dict(os.environ, **{var: str(cores) for var in THREAD_VARS})
    cmd = [sys.executable, __file__, "--child", kind, "--kwargs", json.dumps(kwargs)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(f"<!-- {kind} {kwargs}: {tail} -->", file=sys.stderr)
        return {"error": tail}
    return json.loads(lines[-1])


def best(values):
    """The highest of the rates that were measured (None if none was)."""
    values = [v for v in values if v is not None]
    return max(values) if values else None


def fmt(value, spec="{:,.0f}"):
    return "n/a" if value is None else spec.format(value)


def throughput_table(files, n_frames, n_featomic, repeat, rounds):
    print("### Throughput (atom-frames/s, higher is better)\n")
    print(f"numbec: `predict` on {n_frames} in-memory frames (bec + dipole derivative + "
          f"integrated dipole), best of {repeat}. featomic: SoapPowerSpectrum values + "
          f"position gradients on the first {n_featomic} of the same frames, best of "
          f"{repeat}. Every measurement is a fresh process; featomic and the numbec models "
          f"take turns, {rounds} rounds, and each rate is the best round. x featomic = "
          f"numbec / featomic at the same core count (best over best), with the range of "
          f"the ratios within each round in brackets.\n")
    print("| system | model | 1 core | 2 cores | x featomic (1 core) | x featomic (2 cores) |")
    print("|---|---|---:|---:|---:|---:|")
    bounds = {}
    for system, label in SYSTEMS.items():
        rows = [(row, name, precision) for row, name, precision in ROWS
                if "file" in files.get(f"{system}/{name}", {})]
        # rates[row][cores] = one rate per round; featomic and the models alternate so that
        # the machine's drifting load hits both sides of every ratio alike
        rates = {row: {1: [], 2: []} for row in ["featomic"] + [r[0] for r in rows]}
        for _ in range(rounds):
            for cores in (1, 2):
                rates["featomic"][cores].append(child(
                    "featomic", cores, system=system, n_frames=n_featomic,
                    repeat=repeat).get("atom_frames_per_s"))
                for row, name, precision in rows:
                    rates[row][cores].append(child(
                        "throughput", cores, system=system,
                        model_file=files[f"{system}/{name}"]["file"], n_frames=n_frames,
                        repeat=repeat, precision=precision).get("atom_frames_per_s"))
        ref = {cores: best(rates["featomic"][cores]) for cores in (1, 2)}
        for name, *_ in ROWS:
            if name not in rates:
                print(f"| {label} | {name} | n/a | n/a | | |")
                continue
            cells = []
            for cores in (1, 2):
                rate = best(rates[name][cores])
                per_round = [r / f for r, f in zip(rates[name][cores],
                                                    rates["featomic"][cores], strict=True)
                             if r is not None and f is not None]
                ratio = None if rate is None or ref[cores] is None else rate / ref[cores]
                spread = (f" ({min(per_round):.1f}-{max(per_round):.1f})"
                          if len(per_round) > 1 else "")
                cells.append((fmt(rate), fmt(ratio, "{:,.1f}") + spread))
            print(f"| {label} | {name} | {cells[0][0]} | {cells[1][0]} | {cells[0][1]} | "
                  f"{cells[1][1]} |")
        print(f"| {label} | featomic values+gradients | {fmt(ref[1])} | {fmt(ref[2])} | "
              f"1 | 1 |")
        bounds[system] = ref[1]
    print("\n### Ceiling set by the kernel's dense matrix products (1 core)\n")
    print("The model's per-frame matrix products alone (`measure_dense_bound`: the shapes of "
          "the fitted model, random entries, one BLAS thread), as if the descriptors, their "
          "adjoints and everything else cost nothing.\n")
    print("| system | model | products (ms/frame) | ceiling (atom-frames/s) | "
          "ceiling x featomic (1 core) |")
    print("|---|---|---:|---:|---:|")
    for system, label in SYSTEMS.items():
        for name, model, precision in ROWS[1:]:
            entry = files.get(f"{system}/{model}", {})
            if "file" not in entry:
                continue
            res = child("bound", 1, system=system, model_file=entry["file"], repeat=repeat,
                        precision=precision)
            rate, ref = res.get("atom_frames_per_s"), bounds.get(system)
            print(f"| {label} | {name} | {fmt(res.get('ms_per_frame'), '{:.1f}')} | "
                  f"{fmt(rate)} | "
                  f"{fmt(None if rate is None or ref is None else rate / ref, '{:.1f}')} |")
    stages_table(files, repeat)


STAGES = (("neighbours", "neighbour list"),
          ("expansion", "species grouping of the pairs, expansion coefficients"),
          ("descriptors", "scalar (and vector) descriptor values"),
          ("kernel", "kernel: products with the sparse set + element-wise algebra"),
          ("adjoints", "coefficient adjoints of the descriptors"),
          ("backprop", "back-propagation through the pairs"),
          ("scatter", "scatter of the pair gradients onto atoms"),
          ("rest", "Python glue, sum rule, per-frame steps (the whole call minus the above)"),
          ("total", "whole predict_arrays"))


def stages_table(files, repeat):
    print("\n### Where a frame's time goes (ms per frame, 1 core, first frame)\n")
    print("`measure_stages`: the steps of one `predict_arrays`, each timed alone in a loop "
          "(CPU time, best of 20); the last-but-one row is the whole call minus the others, "
          "so it also carries their noise and what a step costs more when the one before it "
          "has taken the caches.\n")
    columns = [(system, name) for system in SYSTEMS for name in MODELS[1:]
               if "file" in files.get(f"{system}/{name}", {})]
    results = [child("stages", 1, system=system, repeat=repeat,
                     model_file=files[f"{system}/{name}"]["file"]) for system, name in columns]
    print("| stage | " + " | ".join(f"{system} {name}" for system, name in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for key, label in STAGES:
        print(f"| {label} | " + " | ".join(fmt(r.get(key), "{:.2f}") for r in results) + " |")


def uncertainty_table(files, n_frames, repeat):
    print("\n### Streamed uncertainty: cost against the plain prediction (1 core)\n")
    print(f"`predict` with each uncertainty option, in turns with the plain prediction in one "
          f"process (`measure_uncertainty`: one Numba and one BLAS thread, CPU time, best of "
          f"{repeat} rounds): the cost of a frame of a long stream, i.e. a call on "
          f"{2 * n_frames} in-memory frames minus one on {n_frames}, per frame (what a call "
          f"does once, such as hashing the model, cancels). plain: ms per frame; the other "
          f"columns: x plain. atom_std: `charge_std` (and `local_dipole_std`), exact; S = 16: "
          f"`dipole_derivative_std` (exact, forward mode) and 16 posterior samples of dM/dt, "
          f"total only or also per species; bec_std K: the low-rank per-atom `bec_std` "
          f"(K + 1 weight vectors as adjoint channels) with `dipole_derivative_std`.\n")
    labels = [label for label, _ in UNCERTAINTY_VARIANTS]
    print("| system | model | " + " | ".join(labels) + " |")
    print("|---|---|" + "---:|" * len(labels))
    for system, system_label in SYSTEMS.items():
        for name in MODELS[1:]:
            entry = files.get(f"{system}/{name}", {})
            if "file" not in entry:
                continue
            res = child("uncertainty", 1, system=system, model_file=entry["file"],
                        n_frames=n_frames, repeat=repeat).get("ms_per_frame", {})
            plain = res.get("plain")
            cells = [fmt(plain, "{:.1f}")] + [
                fmt(None if plain is None or res.get(label) is None else res[label] / plain,
                    "{:.2f}x") for label in labels[1:]]
            print(f"| {system_label} | {name} | " + " | ".join(cells) + " |")


def memory_table(tmp, frames, chunk):
    print(f"\n### Peak memory of predict(out=store), dask-backed water trajectory, "
          f"chunks of {chunk} frames, float32 output, SpeciesMeanModel\n")
    print("| frames | peak RSS (MiB) | wall (s) |")
    print("|---:|---:|---:|")
    for n in frames:
        res = child("memory", 1, n_frames=n, chunk=chunk, out=f"{tmp}/mem{n}.zarr")
        print(f"| {n:,} | {fmt(res.get('peak_rss_mib'), '{:.0f}')} | "
              f"{fmt(res.get('wall_s'), '{:.1f}')} |")


def cluster_table(tmp, files, n_frames, chunk):
    name = next((m for m in reversed(MODELS[:2]) if "file" in files.get(f"water/{m}", {})),
                None)
    if name is None:
        print("\n(no model to run serial vs LocalCluster)")
        return
    model_file = files[f"water/{name}"]["file"]
    print(f"\n### Serial vs dask.distributed LocalCluster: predict(out=store), {name}, "
          f"{n_frames} frames of water in chunks of {chunk}\n")
    print("| scheduler | wall (s) | start-up + warm-up (s) |")
    print("|---|---:|---:|")
    for label, workers, cores in (("serial, 1 thread", 0, 1), ("serial, 2 threads", 0, 2),
                                  ("LocalCluster, 2 processes x 1 thread", 2, 1)):
        res = child("cluster", cores, model_file=model_file, n_frames=n_frames, chunk=chunk,
                    out=f"{tmp}/cl{workers}-{cores}.zarr", workers=workers)
        print(f"| {label} | {fmt(res.get('wall_s'), '{:.1f}')} | "
              f"{fmt(res.get('startup_s'), '{:.1f}')} |")


def paths_table(tmp, files, n_frames, chunk, rounds):
    """Every way of running one prediction, side by side (issue: the lazy path was 10x
    slower than the CLI). Target: each within 1.2x of the fastest."""
    name = next((m for m in reversed(MODELS[:2]) if "file" in files.get(f"water/{m}", {})),
                None)
    if name is None:
        print("\n(no model for the paths table)")
        return
    model_file = files[f"water/{name}"]["file"]
    store = f"{tmp}/paths-water.zarr"
    child("store", 1, path=store, n_frames=n_frames, chunk=chunk)
    print(f"\n### One prediction, five ways: {name}, {n_frames} frames of water (192 atoms) "
          f"in chunks of {chunk}, 2 cores, best of {rounds} rounds\n")
    print("| path | wall (s) | x fastest |")
    print("|---|---:|---:|")
    walls = {}
    for r in range(rounds):
        for kind in PATHS:
            res = child("path", os.cpu_count() or 1, path_kind=kind, model_file=model_file,
                        store=store, out=f"{tmp}/path-{kind}-{r}.zarr")
            if res.get("wall_s") is not None:
                walls[kind] = min(walls.get(kind, np.inf), res["wall_s"])
    fastest = min(walls.values()) if walls else None
    labels = {"eager": "eager (in-memory input)", "out": "predict(..., out=store)",
              "lazy-threads": "lazy, .compute() on the threaded scheduler",
              "lazy-cluster": "lazy, .compute() on a 2-process LocalCluster",
              "cli": "numbec predict (CLI, incl. start-up)"}
    for kind in PATHS:
        wall = walls.get(kind)
        ratio = None if wall is None else wall / fastest
        print(f"| {labels[kind]} | {fmt(wall, '{:.2f}')} | {fmt(ratio, '{:.2f}')} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: few frames, small models (20 sparse points per "
                        "species), one round; its numbers are not the benchmark's")
    parser.add_argument("--repeat", type=int, default=2,
                        help="timings per measurement process (the best is kept)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="alternating rounds of featomic and numbec processes per system "
                        "(the best round of each is kept; default 3, 1 with --quick)")
    parser.add_argument("--model-dir", help="keep the fitted models here and reuse them "
                        "on the next run (default: a temporary directory, fitted every run)")
    parser.add_argument("--only", choices=("paths", "throughput", "uncertainty"),
                        help="run only this table (paths: one prediction, five ways; "
                        "throughput: the throughput, ceiling and stage tables; uncertainty: "
                        "the cost of the streamed uncertainty options)")
    parser.add_argument("--water-atoms", type=int, choices=(192, 384), default=None,
                        help="size of the water box (384: the 192-atom box twice along x; "
                        "the models are fitted on the 192-atom frames either way)")
    parser.add_argument("--child", choices=sorted(CHILDREN))
    parser.add_argument("--kwargs", default="{}")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](**json.loads(args.kwargs))))
        return
    if args.water_atoms and args.water_atoms // 192 != WATER_COPIES:
        # run again with the box size in the environment, which the children inherit
        env = dict(os.environ, NUMBEC_BENCH_WATER_COPIES=str(args.water_atoms // 192))
        sys.exit(subprocess.run([sys.executable, *sys.argv], env=env).returncode)

    n_frames, n_featomic, cluster_frames = (8, 2, 16) if args.quick else (40, 8, 96)
    load = os.getloadavg()[0]
    print(f"numbec streaming benchmark ({'quick' if args.quick else 'full'}): "
          f"`python benchmarks/stream.py{' --quick' if args.quick else ''}"
          f"{f' --repeat {args.repeat}' if args.repeat != 2 else ''}"
          f"{f' --rounds {args.rounds}' if args.rounds else ''}"
          f"{f' --only {args.only}' if args.only else ''}"
          f"{f' --water-atoms {args.water_atoms}' if args.water_atoms else ''}`; "
          f"{cpu_model()}, {os.cpu_count()} cores, load average {load:.1f}\n")
    with tempfile.TemporaryDirectory() as tmp:
        if args.model_dir:
            Path(args.model_dir).mkdir(parents=True, exist_ok=True)
        files = child("fit", 2, directory=args.model_dir or tmp, reuse=bool(args.model_dir),
                      quick=args.quick)
        for key, entry in files.items():
            if "error" in entry:
                print(f"<!-- {key}: {entry['error']} -->")
            elif entry.get("fit_s") is not None:
                print(f"<!-- fitted {key} in {entry['fit_s']:.1f} s -->")
        print()
        rounds = args.rounds or (1 if args.quick else 3)
        if args.only == "paths":
            paths_table(tmp, files, 24 if args.quick else 200, 6 if args.quick else 25, rounds)
            return
        # at least 4 frames: the low-rank directions are ordered on 4 of them in both calls
        uncertainty_args = (files, 4, 1) if args.quick else (files, 8, args.repeat)
        if args.only == "uncertainty":
            uncertainty_table(*uncertainty_args)
            return
        throughput_table(files, n_frames, n_featomic, args.repeat, rounds)
        if args.only == "throughput":
            return
        uncertainty_table(*uncertainty_args)
        memory_table(tmp, (100, 400) if args.quick else (2000, 20000),
                     chunk=50 if args.quick else 500)
        cluster_table(tmp, files, cluster_frames, chunk=cluster_frames // 4)
        paths_table(tmp, files, 24 if args.quick else 200, 6 if args.quick else 25, rounds)


if __name__ == "__main__":
    main()
