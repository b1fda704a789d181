"""``numbec info PATH``: what a trajectory store, prediction store or model file holds."""

from __future__ import annotations

import json
import os
import zipfile


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="describe a trajectory store, prediction store or model file",
        description="Trajectory stores ('numbec convert'): frames, atoms, species, time step, "
        "duration, chunking and completeness; exit status 1 when the time coordinate "
        "contradicts the time step (NaN, going backwards, another spacing). Prediction "
        "stores ('numbec predict'): the trajectory and model they come from, how many "
        "frames are predicted (of a run still going or interrupted, too), the variables, "
        "the uncertainty asked for and the environment check's result. Model files "
        "('numbec train'): class, species, descriptor settings, sparse points, training "
        "set, calibration, and the hash of the model's state that prediction stores record "
        "as model_sha256.",
    )
    parser.add_argument("store", metavar="PATH", help="trajectory or prediction store "
                        "directory, or model file (.npz)")
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")
    parser.add_argument("--set-timestep", type=float, metavar="FS",
                        help="first set a trajectory store's time step (fs between stored "
                             "frames) in place, e.g. for a store converted with --no-time")
    parser.set_defaults(func=run)


def run(args) -> int:
    from numbec.io.prediction import PREDICTION_FORMAT, group_attrs
    from numbec.io.trajectory import set_timestep, trajectory_summary

    if os.path.isfile(args.store) and (args.store.endswith(".npz")
                                       or zipfile.is_zipfile(args.store)):  # a model file
        if args.set_timestep is not None:
            raise ValueError(f"{args.store} is a model file: --set-timestep applies to "
                             "trajectory stores")
        return _model_info(args)
    if group_attrs(args.store).get("format") == PREDICTION_FORMAT:
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
        f"trajectory   {info['input']}" + ("" if info["input_complete"] else
                                               "  (still being converted when predicted)"),
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
            _wrapped("variables", ", ".join(info["variables"])),
            f"storage      {info['storage_dtype']}"
            + ("" if info["precision"] == "float64" else f", {info['precision']} precision"),
            f"uncertainty  {_uncertainty_text(info)}",
            f"charge       {info['total_charge']:g} e",
            f"velocities   {info['velocities_source'] or 'none (no dM/dt)'}",
            _wrapped("environments", _environment_text(info["environment_check"])),
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


def _model_info(args) -> int:
    from numbec.models.summary import model_summary

    info = model_summary(args.store)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    lines = [
        f"file         {info['file']}",
        f"kind         model (numbec {info['numbec_version']}, created {info['created']})",
        f"model        {info['model_class']}",
        f"state sha256 {info['state_sha256']}",
        "             (the model_sha256 of the prediction stores made with it)",
        f"species      {', '.join(info['species'])}",
        _wrapped("outputs", ", ".join(info["outputs"])),
    ]
    if "training" in info:
        d = info["descriptors"]
        hyper = info["hyperparameters"]
        train = info["training"]
        rmse, noise = train["train_rmse"], train["noise_std"]
        lines += [
            _wrapped("descriptors", f"cutoffs {d['cutoff_radial']:g} / {d['cutoff_angular']:g} "
                     f"Å (radial / angular), sigma {d['sigma']:g} Å, {d['n_radial']} radial and "
                     f"{d['n_angular']} angular functions, l_max {d['l_max']}"),
            f"kernel       zeta {hyper['zeta']}, sparse points "
            + ", ".join(f"{s} {n}" for s, n in info["sparse_points"].items())
            + f" ({hyper['sparse_method']}), {hyper['regression']} regression",
            f"training     {train['n_frames']} frames, {train['n_atoms']} atoms"
            + ("" if rmse is None else f"; training RMSE {rmse:.4f} e")
            + ("" if noise is None else f", fitted noise {noise:.4f} e"),
            _wrapped("calibration", _calibration_text(info["calibration"])),
            _wrapped("environments", "reference stored: predict checks its frames against "
                     "the training environments" if info["environment_reference"]
                     else "no reference (a numbec before the environment check): predict "
                     "cannot check its frames"),
        ]
    print("\n".join(lines))
    return 0


def _wrapped(label: str, text: str) -> str:
    """``label`` in a 13-column margin, ``text`` wrapped to 100 columns beside it."""
    import textwrap

    return textwrap.fill(text, width=100, initial_indent=f"{label:<13}",
                         subsequent_indent=" " * 13, break_on_hyphens=False)


def _calibration_text(cal) -> str:
    if cal is None:
        return "none (the raw Bayesian variance)"
    if cal["noise_scale"] is not None:
        text = (f"{cal['method'] or 'two-part'}: epistemic variance x {cal['variance_scale']:.3g}"
                f", noise variance x {cal['noise_scale']:.3g}")
    else:
        text = f"{cal['method'] or 'one scale'}: variance x {cal['variance_scale']:.3g}"
    if cal["folds"]:
        text += f", learned by {cal['folds']}-fold cross-validation on the training frames"
    held = cal["held_out_coverage_95"]
    if held is not None:
        text += f" (held-out 95 % coverage before: {100 * held:.1f} %"
        blocks = cal.get("held_out_block_coverage_95")
        if blocks and len(blocks) > 1:
            from numbec.cli.train import block_coverage_text

            text += ", per block in frame order: " + block_coverage_text(blocks)
        text += ")"
    return text
