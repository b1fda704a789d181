"""Stream BEC predictions over a trajectory on a dask.distributed cluster.

numbec.predict on a lazily opened trajectory store builds one Dask task per frame chunk;
the model is a single node of the graph, so it is sent to every worker once however many
chunks there are. Any Dask scheduler runs the graph: here a LocalCluster on this machine,
and the comments below show how to use a real cluster instead.

  python examples/dask_cluster.py                    # train a small quartz model, 2 workers
  python examples/dask_cluster.py --model m.npz --trajectory traj.zarr --workers 8
  python examples/dask_cluster.py --quick            # the test suite's reduced run

Pointing it at a real cluster (the rest of the script stays the same):

* SLURM/PBS/SGE/LSF through dask-jobqueue (pip install dask-jobqueue)::

      from dask_jobqueue import SLURMCluster
      cluster = SLURMCluster(cores=1, processes=1, memory="4GB", walltime="02:00:00",
                             job_extra_directives=["--partition=compute"],
                             job_script_prologue=["export NUMBA_NUM_THREADS=1",
                                                  "source ~/venvs/numbec/bin/activate"])
      cluster.scale(jobs=32)          # or cluster.adapt(maximum_jobs=64)
      client = Client(cluster)

* an already running scheduler (``dask scheduler`` on one node, ``dask worker
  tcp://host:8786 --nthreads 1`` on the others)::

      client = Client("tcp://host:8786")

Workers must see the trajectory store and the output store at the same path (a shared
file system), and run the same numbec version. Give each worker process one thread and
NUMBA_NUM_THREADS=1 (or a few threads and fewer processes): the per-frame work is small.
The output store is written chunk by chunk by the workers; a run that dies (a job hits its
walltime) is resumed by calling predict again with the same arguments.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

import numbec


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="saved model (.npz); default: fit a small quartz model")
    p.add_argument("--trajectory", help="trajectory store (.zarr); default: bundled quartz")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    p.add_argument("--chunk-frames", type=int, default=5, help="frames per task")
    p.add_argument("--out", default="dask-example", help="output directory")
    p.add_argument("--quick", action="store_true", help="tiny model, 8 frames")
    return p.parse_args(argv)


def example_inputs(out: Path, quick: bool):
    """A small combined model fitted to the bundled quartz BECs, and the same frames as a
    trajectory store (snapshots without velocities: BECs only, no dipole derivative)."""
    from numbec.descriptors import DescriptorSettings
    from numbec.io import example_file

    src = example_file("sio2_quartz_subset")
    frames = numbec.read_bec(src, index=":8" if quick else ":")
    settings = DescriptorSettings(species=(8, 14), cutoff_radial=5.0, cutoff_angular=4.0,
                                  n_radial=4, n_angular=4, l_max=2)
    model = numbec.CombinedModel(settings=settings, n_sparse=15 if quick else 60, seed=0)
    model.fit(frames[::2])
    model_path = model.save(out / "quartz-small.npz")
    store = out / "quartz.zarr"
    if store.exists():
        shutil.rmtree(store)
    numbec.convert_trajectory(src, store, index=":8" if quick else ":", timestep=1.0,
                              progress=False)
    return model_path, store


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.model and args.trajectory:
        model_path, store = Path(args.model), Path(args.trajectory)
    else:
        model_path, store = example_inputs(out, args.quick)
    model = numbec.load_model(model_path)

    from dask.distributed import Client, LocalCluster

    # One thread per worker process, and Numba kept to that thread: the workers' processes
    # inherit this environment.
    os.environ["NUMBA_NUM_THREADS"] = "1"
    os.environ["OMP_NUM_THREADS"] = "1"
    # Dask starts workers with glibc's heap trim threshold at 64 KiB; small frames then fault
    # their batch memory back in every batch (2.5x slower for water dimers). This keeps it
    # at 60 MiB, as in a process of its own (docs/streaming.md, "Freed memory is reused").
    import dask

    with dask.config.set(numbec.parallel.dask_worker_settings()):
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None,
                               local_directory=tempfile.mkdtemp(prefix="dask-"))
    with cluster, Client(cluster) as client:
        print(f"Dask cluster: {len(client.scheduler_info()['workers'])} workers "
              f"(dashboard: {client.dashboard_link})")

        # Open the store lazily: every array is a dask array chunked along frames.
        traj = numbec.open_trajectory(store).chunk({"frame": args.chunk_frames})

        # (a) lazy result: nothing runs until .compute()/.values; the client's scheduler
        #     is used automatically because a Client is active.
        lazy = numbec.predict(model, traj, progress=False)
        bec = lazy["bec"].data.compute()

        # (b) the usual way for long runs: the workers write the output store chunk by
        #     chunk; rerun the same call to resume after an interruption.
        pred_store = out / "pred.zarr"
        if pred_store.exists():
            shutil.rmtree(pred_store)
        stored = numbec.predict(model, traj, out=pred_store, progress=False,
                                model_file=model_path)
        print(f"wrote {pred_store}: {stored.sizes['frame']} frames x "
              f"{stored.sizes['atom']} atoms, variables {', '.join(stored.data_vars)}")

    # The distributed result is the serial one (same arithmetic, chunk by chunk).
    serial = numbec.predict(model, numbec.open_trajectory(store), progress=False)
    diff = float(np.abs(bec - serial["bec"].values).max())
    diff_store = float(np.abs(stored["bec"].values - serial["bec"].values).max())
    print(f"largest difference distributed vs serial: {max(diff, diff_store):.1e} e")
    if max(diff, diff_store) > 1e-10:
        raise SystemExit("distributed and serial predictions differ")
    return {"max_difference": max(diff, diff_store), "frames": int(stored.sizes["frame"])}


if __name__ == "__main__":
    main()
