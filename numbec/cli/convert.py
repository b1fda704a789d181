"""``numbec convert SRC STORE``: stream a trajectory into a Zarr trajectory store."""

from __future__ import annotations

from numbec.cli.predict import positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a trajectory (extxyz, ASE .traj, XDATCAR, LAMMPS dump, ...) to a store",
        description=(
            "Stream SRC frame by frame into the chunked Zarr v3 trajectory store STORE "
            "(positions Å, velocities Å/fs, cell, numbers, time fs). Compressed extxyz "
            "(.gz/.xz/.bz2) is read in linear time. --append resumes a killed conversion."
        ),
    )
    parser.add_argument(
        "src",
        metavar="SRC",
        help="trajectory file, or example:NAME for data bundled with numbec "
        "(example:sio2_quartz_subset: structures, not a time series, so with --no-time)",
    )
    parser.add_argument("store", metavar="STORE", help="output store directory")
    parser.add_argument(
        "--timestep",
        type=float,
        metavar="FS",
        help="time between consecutive frames of SRC in fs (default: from an ASE MD .traj; "
        "required otherwise, unless --no-time)",
    )
    parser.add_argument(
        "--no-time",
        action="store_true",
        help="the frames are not a time series: store them without a time step (numbec "
        "predict gives their BECs and charges; dM/dt and spectra need a time step: set it "
        "later with numbec info --set-timestep)",
    )
    parser.add_argument(
        "--chunk-frames", type=positive_int, metavar="N",
        help="frames per chunk (default: ~4 MiB)"
    )
    parser.add_argument(
        "--index", default=":", metavar="SLICE", help="frames of SRC, e.g. ':' or '1000::2'"
    )
    parser.add_argument(
        "--append",
        action="store_true",
        help="resume an interrupted conversion or append SRC to an existing store",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from numbec.io._files import check_output_location, resolve_example
    from numbec.io.trajectory import convert_trajectory, trajectory_summary

    if not args.append:
        check_output_location(args.store, "trajectory store")
    done = convert_trajectory(
        resolve_example(args.src),
        args.store,
        chunk_frames=args.chunk_frames,
        timestep=args.timestep,
        index=args.index,
        append=args.append,
        progress=False if args.no_progress else None,
        time_series=not args.no_time,
    )
    info = trajectory_summary(args.store)
    dt = "unknown time step" if info["timestep"] is None else f"dt = {info['timestep']:g} fs"
    print(f"{args.store}: {done} frames x {info['atoms']} atoms ({dt})")
    return 0
