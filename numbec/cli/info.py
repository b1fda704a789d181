"""``numbec info STORE``: what a trajectory store holds."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="describe a trajectory store",
        description="Frames, atoms, species, time step, duration, chunking and completeness "
        "of a trajectory store written by 'numbec convert'. Exit status 1 when its time "
        "coordinate contradicts its time step (NaN, going backwards, another spacing).",
    )
    parser.add_argument("store", metavar="STORE", help="trajectory store directory")
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")
    parser.add_argument("--set-timestep", type=float, metavar="FS",
                        help="first set the store's time step (fs between stored frames) in "
                             "place, e.g. for a store converted with --no-time")
    parser.set_defaults(func=run)


def run(args) -> int:
    from numbec.io.trajectory import set_timestep, trajectory_summary

    if args.set_timestep is not None:
        set_timestep(args.store, args.set_timestep)
    info = trajectory_summary(args.store)
    if args.json:
        print(json.dumps(info, indent=2))
        return _time_status(info)
    species = ", ".join(f"{sym} {count}" for sym, count in info["species"].items())
    dt = info["timestep"]
    duration = info["duration"]
    dt_text = "unknown" if dt is None else f"{dt:g} fs"
    duration_text = "unknown" if duration is None else f"{duration:g} fs"
    state = "complete" if info["complete"] else "INCOMPLETE (resume with 'numbec convert --append')"
    lines = [
        f"store        {info['store']}",
        f"source       {info['source']}",
        f"frames       {info['frames']}",
        f"atoms        {info['atoms']}  ({species})",
        f"time step    {dt_text}",
        f"duration     {duration_text}",
        f"chunking     {info['chunk_frames']} frames per chunk",
        f"velocities   {'yes' if info['velocities'] else 'no'}",
        f"pbc          {' '.join('T' if p else 'F' for p in info['pbc'])}",
        f"status       {state}",
    ]
    print("\n".join(lines))
    return _time_status(info)


def _time_status(info) -> int:
    """Exit status 1, with the reason on stderr, when predict and ir would refuse the
    store's time coordinate; the facts above are printed first, as they help find why."""
    if info["time_error"] is None:
        return 0
    import sys

    print(f"numbec info: error: {info['time_error']}", file=sys.stderr)
    return 1
