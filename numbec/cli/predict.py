"""``numbec predict MODEL TRAJ.zarr -o OUT.zarr``: stream BEC predictions into a Zarr store.

Parallelism (``--workers N``):

* ``N = 1`` (default): one process, chunks one after the other (Dask "synchronous"); the
  frames of a chunk run concurrently on ``NUMBA_NUM_THREADS`` threads (all cores unless set)
  for the kernel models.
* ``N > 1``: a ``dask.distributed.LocalCluster`` of ``N`` worker *processes* with one
  thread each (the model is shipped to each worker once; ``NUMBA_NUM_THREADS=1`` in the
  workers so they do not oversubscribe the cores; glibc's heap trim threshold 60 MiB instead
  of Dask's 64 KiB, see :mod:`numbec._heap`).
* ``N > 1`` with ``--threads``: Dask's threaded scheduler with ``N`` threads in this
  process (no start-up cost; pays off where the model releases the GIL, as Numba and
  BLAS kernels do).

Without velocities in the trajectory there is no dipole derivative (a warning says so);
``--velocities-from-positions`` derives them by second-order central differences.

The run is resumable: start the same command again after a crash or Ctrl-C and only the
unfinished chunks are computed. A second run on the same output refuses while the first
holds the lock ``OUT.zarr.lock`` (an operating-system lock, released when its process ends
in any way). ``--overwrite`` replaces an existing prediction store instead.
"""

from __future__ import annotations

import contextlib
import sys


def register(subparsers):
    parser = subparsers.add_parser(
        "predict",
        help="predict BECs and dipole derivatives along a trajectory store",
        description=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("model", help="saved model (.npz)")
    parser.add_argument("trajectory", help="trajectory store (.zarr, from numbec convert)")
    parser.add_argument("-o", "--out", required=True, help="output Zarr store")
    parser.add_argument("--chunk-frames", type=positive_int, default=None,
                        help="frames per chunk (default: the trajectory's chunks)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing prediction store made by another model, "
                             "input or settings (without it, a store of the same run is "
                             "resumed and any other one refused)")
    parser.add_argument("--workers", type=int, default=1,
                        help="parallel workers (processes; threads with --threads)")
    parser.add_argument("--threads", action="store_true",
                        help="use N threads in this process instead of N worker processes")
    parser.add_argument("--float32", action="store_true", help="store outputs as float32")
    parser.add_argument("--precision", choices=("float64", "mixed"), default="float64",
                        help="arithmetic of the model: float64 (default), or mixed (the "
                             "dipole kernel's matrix products in float32; DipoleModel and "
                             "CombinedModel, about 15%% faster, BECs within ~1e-5 e)")
    parser.add_argument("--uncertainty", action="store_true",
                        help="also predict bec_std (models with uncertainties) and, for "
                             "kernel models with velocities, dipole_derivative_std (the exact "
                             "epistemic standard deviation of dM/dt); the exact bec_std costs "
                             "about one training step per frame: for long trajectories add "
                             "--uncertainty-rank 32")
    parser.add_argument("--atom-std", action="store_true",
                        help="also store charge_std (e) and local_dipole_std (e*Angstrom) per "
                             "frame and atom: the exact posterior std of each atom's charge "
                             "and local dipole (kernel models; cheap, not the BEC's std)")
    parser.add_argument("--posterior-samples", type=int, default=0, metavar="S",
                        help="also store dM/dt, total and per species, of S weight vectors "
                             "drawn from the model's full posterior "
                             "(dipole_derivative_samples, dipole_derivative_by_species_samples, "
                             "and dipole_derivative_std; numbec ir then draws a "
                             "model-uncertainty band); forward mode, exact, about one extra "
                             "pass over the pairs; kernel models, needs velocities")
    parser.add_argument("--no-species-samples", action="store_true",
                        help="with --posterior-samples: only the total dM/dt samples, not "
                             "dipole_derivative_by_species_samples (the partial spectra then "
                             "have no model band); about the cost of the std alone instead "
                             "of one design row per species")
    parser.add_argument("--uncertainty-rank", type=int, default=None, metavar="K",
                        help="with --uncertainty: bec_std from a rank-K factor of the "
                             "posterior (K/4 leading directions, ordered on 4 evenly spaced "
                             "frames of the trajectory, and random probes of the rest: an "
                             "unbiased estimate; extra adjoint channels, much cheaper than "
                             "the exact bec_std)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the posterior samples")
    parser.add_argument("--charge", type=float, default=0.0, metavar="Q",
                        help="total charge of every frame in e (ions, charged molecules): "
                             "the BECs then sum to Q I; default 0 (neutral)")
    parser.add_argument("--velocities-from-positions", action="store_true",
                        help="derive velocities by central differences of the positions "
                             "(for trajectories stored without velocities)")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="predict the frames converted so far of a trajectory store "
                             "whose conversion was interrupted or is still running (recorded "
                             "in the output's attributes input_complete and input_frames; "
                             "numbec ir warns about such a prediction)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.set_defaults(func=run)
    return parser


@contextlib.contextmanager
def _scheduler(workers: int, threads: bool):
    import dask

    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if workers == 1:
        with dask.config.set(scheduler="synchronous"):
            yield "serial"
    elif threads:
        with dask.config.set(scheduler="threads", num_workers=workers):
            yield f"{workers} threads"
    else:
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:  # pragma: no cover
            raise ValueError(
                "--workers N > 1 needs dask.distributed (pip install distributed), "
                "or add --threads"
            ) from exc
        from numbec.parallel import SINGLE_THREAD_ENV, dask_worker_settings

        with dask.config.set(dask_worker_settings()), \
                LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                             dashboard_address=None, env=dict(SINGLE_THREAD_ENV)) as cluster, \
                Client(cluster):
            yield f"LocalCluster with {workers} worker processes"


def run(args) -> int:
    import numpy as np

    from numbec.io._files import check_output_location
    from numbec.io.trajectory import open_trajectory
    from numbec.models import load_model
    from numbec.models.variance_scales import recalibrated
    from numbec.stream import predict

    # everything that can be checked before the work starts: output location, input kind
    check_output_location(args.out, "prediction store")
    trajectory = open_trajectory(args.trajectory)
    model = load_model(args.model)
    if ((args.uncertainty or args.posterior_samples or args.atom_std)
            and hasattr(model, "covariance") and not recalibrated(model)):
        import warnings

        # models trained before numbec train calibrated by default, or fitted in Python
        warnings.warn(
            f"{args.model}: the model was not recalibrated, so its uncertainties use the raw "
            "Bayesian variance, whose 95 % interval held 90-98 % of the test errors on 14 of "
            "the 24 benchmark test sets (23 of 24 recalibrated); train it again with numbec "
            "train (which calibrates by default) or numbec.models.uncertainty.recalibrate "
            f"('numbec info {args.model}' shows a model's calibration)", stacklevel=2)
    if args.velocities_from_positions:
        from numbec.io.trajectory import velocities_from_positions

        # recorded as the velocities' source from their "method" attribute
        trajectory["velocities"] = velocities_from_positions(trajectory)
    with _scheduler(args.workers, args.threads) as how:
        result = predict(
            model,
            trajectory,
            out=args.out,
            chunk_frames=args.chunk_frames,
            progress=False if args.no_progress else None,
            overwrite=args.overwrite,
            dtype=np.float32 if args.float32 else np.float64,
            uncertainty=args.uncertainty,
            model_file=args.model,
            precision=args.precision,
            **({"total_charge": args.charge} if args.charge else {}),
            **({"posterior_samples": args.posterior_samples,
                "uncertainty_rank": args.uncertainty_rank, "seed": args.seed}
               if args.posterior_samples or args.uncertainty_rank else {}),
            **({"species_samples": False} if args.no_species_samples else {}),
            **({"atom_std": True} if args.atom_std else {}),
            **({"allow_incomplete": True} if args.allow_incomplete else {}),
        )
    names = ", ".join(result.data_vars)
    print(f"{args.out}: {result.sizes['frame']} frames x {result.sizes['atom']} atoms "
          f"({how}); variables: {names}", file=sys.stdout)
    return 0


def positive_int(text: str) -> int:
    """argparse type of ``--chunk-frames`` (predict and convert): an integer >= 1."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
