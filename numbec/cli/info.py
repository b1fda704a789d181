"""``numbec info STORE``: what a trajectory or prediction store holds."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="describe a trajectory or prediction store",
        description="Trajectory stores ('numbec convert'): frames, atoms, species, time step, "
        "duration, chunking and completeness; exit status 1 when the time coordinate "
        "contradicts the time step (NaN, going backwards, another spacing). Prediction "
        "stores ('numbec predict'): the trajectory and model they come from, how many "
        "frames are predicted (of a run still going or interrupted, too), the variables, "
        "the uncertainty asked for and the environment check's result.",
    )
    parser.add_argument("store", metavar="STORE", help="trajectory or prediction store "
                        "directory")
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")
    parser.add_argument("--set-timestep", type=float, metavar="FS",
                        help="first set a trajectory store's time step (fs between stored "
                             "frames) in place, e.g. for a store converted with --no-time")
    parser.set_defaults(func=run)


def _store_format(path) -> str | None:
    """The ``format`` attribute of the Zarr group at ``path``, or None when there is none
    (the trajectory reader then says what is wrong)."""
    try:
        import zarr

        return zarr.open_group(str(path), mode="r", use_consolidated=False).attrs.get("format")
    except Exception:  # noqa: BLE001 - judged by the reader of the store
        return None


def run(args) -> int:
    from numbec.io.prediction import PREDICTION_FORMAT
    from numbec.io.trajectory import set_timestep, trajectory_summary

    if _store_format(args.store) == PREDICTION_FORMAT:
        if args.set_timestep is not None:
            raise ValueError(f"{args.store} is a prediction store: --set-timestep applies to "
                             "trajectory stores (set it on the trajectory, then predict again)")
        return _prediction_info(args)
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


def _prediction_info(args) -> int:
    import textwrap

    from numbec.io.prediction import prediction_summary

    info = prediction_summary(args.store)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    model = info["model_class"] or "unknown"
    details = [f"file {info['model_file']}" if info["model_file"] else "not from a file"]
    if info["model_sha256"]:
        details.append(f"sha256 {info['model_sha256'][:12]}")
    lines = [
        f"store        {info['store']}",
        f"kind         prediction (format {info['format_version']}, numbec "
        f"{info['numbec_version']}, created {info['created']})",
        f"trajectory   {info['input']}",
        f"model        {model} ({', '.join(details)})",
    ]
    if info["initialised"]:
        species = ", ".join(f"{sym} {count}" for sym, count in info["species"].items())
        dt = info["timestep"]
        lines += [
            f"frames       {info['frames_done']} of {info['frames']} predicted "
            f"({info['chunks_done']} of {info['chunks']} chunks of {info['chunk_frames']} "
            "frames)",
            f"atoms        {info['atoms']}  ({species})",
            f"time step    {'unknown' if dt is None else f'{dt:g} fs'}",
            textwrap.fill(", ".join(info["variables"]), width=100,
                          initial_indent="variables    ", subsequent_indent=" " * 13),
            f"storage      {info['storage_dtype']}"
            + ("" if info["precision"] == "float64" else f", {info['precision']} precision"),
            f"uncertainty  {_uncertainty_text(info)}",
            f"charge       {info['total_charge']:g} e",
            f"velocities   {info['velocities_source'] or 'none (no dM/dt)'}",
            textwrap.fill(_environment_text(info["environment_check"]), width=100,
                          initial_indent="environments ", subsequent_indent=" " * 13),
        ]
    lines.append(f"status       {_status_text(info)}")
    print("\n".join(lines))
    return 0


def _uncertainty_text(info) -> str:
    parts = []
    if info["uncertainty"]:
        rank = info["uncertainty_rank"]
        parts.append("per-atom bec_std " + (f"(rank {rank})" if rank else "(exact)"))
    parts += [name for name in ("charge_std", "local_dipole_std", "dipole_derivative_std")
              if name in info["variables"]]
    if info["posterior_samples"]:
        parts.append(f"{info['posterior_samples']} posterior samples of dM/dt")
    return ", ".join(parts) or "none"


def _environment_text(check) -> str:
    if check is None:
        return "not checked (a model without the training reference, or an older numbec)"
    shares = ", ".join(f"{sym} {100 * entry['beyond']:.1f} %" for sym, entry in check.items()
                       if isinstance(entry, dict) and "beyond" in entry)
    verdict = ("EXTRAPOLATION for " + ", ".join(check.get("extrapolated", []))
               if check.get("extrapolated") else "like the training environments")
    return (f"{verdict} ({len(check.get('frames', []))} frames checked; atoms beyond the "
            f"training 99th percentile: {shares})")


def _status_text(info) -> str:
    if info["complete"]:
        return "complete"
    writer = info["writer"]
    if writer:
        return (f"being written by pid {writer['pid']} on {writer['host']} "
                f"({writer['command']}, since {writer['started']})")
    if not info["initialised"]:
        return ("INCOMPLETE: the run stopped while laying out the store; run the same "
                "'numbec predict' command again")
    missing = info["chunks"] - info["chunks_done"]
    return (f"INCOMPLETE: {missing} of {info['chunks']} chunks missing; run the same "
            "'numbec predict' command again to resume")
